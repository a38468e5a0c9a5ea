use super::*;
use chrono::NaiveDate;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

pub(crate) fn period(start: &str, kwh: f64) -> ClosedPeriod {
    let start = t(start);
    let end = start + chrono::Duration::minutes(15);
    ClosedPeriod {
        start,
        end,
        record_json: format!("{{\"start\":\"{start}\",\"kwh\":{kwh}}}"),
        quality: "measured".into(),
        policy: "prorata".into(),
        energies: vec![
            EnergyRow {
                owner: Owner::Device,
                id: "PV-01".into(),
                reading: "production_kwh".into(),
                kwh: Some(kwh),
                quality: Quality::Measured,
            },
            EnergyRow {
                owner: Owner::Participant,
                id: "P-01".into(),
                reading: "import_kwh".into(),
                kwh: None,
                quality: Quality::Missing,
            },
        ],
        keys: vec![
            ("P-01".into(), "99990000000001".into(), 400),
            ("P-02".into(), "99990000000002".into(), 600),
        ],
        snapshots: vec![CounterSnapshot {
            device: "PV-01".into(),
            reading: "production_kwh".into(),
            at: end,
            value: 100.0 + kwh,
        }],
    }
}

fn ledger_with_periods(n: usize) -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = Ledger::open(&dir.path().join("l.sqlite")).expect("open");
    let mut s = t("2025-06-21T10:00:00Z");
    for k in 0..n {
        let mut p = period(&s.to_rfc3339(), k as f64);
        p.start = s;
        p.end = s + chrono::Duration::minutes(15);
        assert_eq!(l.commit_period(&p).expect("commit"), PeriodWrite::Inserted);
        s = p.end;
    }
    (dir, l)
}

#[test]
fn wal_and_full_sync_are_set() {
    let (_d, l) = ledger_with_periods(0);
    let mode: String = l
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    let sync: i64 = l
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "FULL");
    assert_eq!(l.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_v1_file_is_migrated_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let mut l = Ledger::open_at(&path, 1).unwrap();
        assert_eq!(l.schema_version().unwrap(), 1);
        l.commit_period(&period("2025-06-21T10:00:00Z", 3.0))
            .unwrap();
        // v2's tables do not exist yet.
        assert!(l.record_plan(Utc::now(), "optimal", 1.0, "{}").is_err());
    }
    let mut l = Ledger::open(&path).unwrap();
    assert_eq!(l.schema_version().unwrap(), 2);
    assert_eq!(l.periods().unwrap().len(), 1);
    l.record_plan(Utc::now(), "optimal", 1.0, "{}").unwrap();
    l.record_setpoint(Utc::now(), "BAT-01", -5000.0, "ok")
        .unwrap();
    assert!(l.verify().unwrap().ok());
}

#[test]
fn a_closed_period_is_never_rewritten() {
    let (_d, mut l) = ledger_with_periods(1);
    let p = period("2025-06-21T10:00:00Z", 0.0);
    assert_eq!(l.commit_period(&p).unwrap(), PeriodWrite::AlreadyStored);
    let changed = period("2025-06-21T10:00:00Z", 9.0);
    assert!(matches!(
        l.commit_period(&changed),
        Err(LedgerError::PeriodConflict { .. })
    ));
    // Even plain SQL is refused by the trigger.
    assert!(l
        .conn
        .execute("UPDATE periods SET quality = 'x'", [])
        .is_err());
    assert_eq!(l.energies(p.start).unwrap().len(), 2);
    assert_eq!(
        l.key_rows(p.start, p.end).unwrap(),
        vec![(p.start, vec![400, 600])]
    );
    assert_eq!(
        l.snapshot("PV-01", "production_kwh", p.end).unwrap(),
        Some(100.0)
    );
}

#[test]
fn verify_passes_on_an_untouched_ledger() {
    let (_d, l) = ledger_with_periods(5);
    let r = l.verify().unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.entries, 5);
    assert_eq!(r.periods, 5);
}

#[test]
fn verify_finds_an_edited_audit_row() {
    let (_d, l) = ledger_with_periods(5);
    l.conn
        .execute_batch(
            "DROP TRIGGER audit_no_update; UPDATE audit SET detail = 'forged' WHERE seq = 3;",
        )
        .unwrap();
    let r = l.verify().unwrap();
    assert_eq!(r.broken.as_ref().map(|b| b.0), Some(3), "{r:?}");
    assert_eq!(r.entries, 2);
}

#[test]
fn verify_finds_a_deleted_audit_row() {
    let (_d, l) = ledger_with_periods(5);
    l.conn
        .execute_batch("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 2;")
        .unwrap();
    let r = l.verify().unwrap();
    let (seq, why) = r.broken.clone().expect("broken");
    assert_eq!(seq, 3, "{why}");
    assert!(why.contains("entry 2 is missing"), "{why}");
}

#[test]
fn verify_finds_an_edited_period_behind_the_triggers_back() {
    let (_d, l) = ledger_with_periods(3);
    l.conn
        .execute_batch(
            "DROP TRIGGER periods_no_update; UPDATE periods SET record_json = '{\"kwh\":1e9}' WHERE start = (SELECT min(start) FROM periods);",
        )
        .unwrap();
    let r = l.verify().unwrap();
    let (_, why) = r.broken.expect("broken");
    assert!(why.contains("edited"), "{why}");
}

#[test]
fn verify_finds_a_deleted_period() {
    let (_d, l) = ledger_with_periods(3);
    l.conn
        .execute_batch(
            "PRAGMA foreign_keys = OFF; DROP TRIGGER periods_no_delete; DELETE FROM periods WHERE start = (SELECT max(start) FROM periods);",
        )
        .unwrap();
    let r = l.verify().unwrap();
    let (_, why) = r.broken.expect("broken");
    assert!(why.contains("deleted"), "{why}");
}

#[test]
fn key_file_versions_are_idempotent_and_never_overwritten() {
    let (_d, mut l) = ledger_with_periods(0);
    let day = NaiveDate::from_ymd_opt(2025, 6, 21).unwrap();
    let now = t("2025-06-22T00:00:00Z");
    let a = l
        .record_key_file("F.csv", day, day, b"v1", "[]", "prorata", now)
        .unwrap();
    assert!(a.new);
    assert_eq!(a.version, 1);
    let again = l
        .record_key_file("F.csv", day, day, b"v1", "[]", "prorata", now)
        .unwrap();
    assert!(!again.new);
    assert_eq!(again.version, 1);
    let b = l
        .record_key_file("F.csv", day, day, b"v2", "[]", "prorata", now)
        .unwrap();
    assert!(b.new);
    assert_eq!(b.version, 2);
    assert_eq!(l.key_file_versions("F.csv").unwrap(), 2);
    let entries = outbox::entries(&mut l).unwrap();
    assert_eq!(entries.len(), 2);
    assert_ne!(entries[0].idempotency_key, entries[1].idempotency_key);
    assert!(l.verify().unwrap().ok());
}

#[test]
fn snapshots_give_the_latest_boundary_per_counter() {
    let (_d, l) = ledger_with_periods(3);
    let s = l.latest_snapshots().unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].at, t("2025-06-21T10:45:00Z"));
    assert_eq!(s[0].value, 102.0);
    assert_eq!(l.last_period().unwrap(), Some(t("2025-06-21T10:30:00Z")));
}

#[test]
fn pruning_folds_old_snapshots_and_keeps_the_resume_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = Ledger::open(&dir.path().join("l.sqlite")).expect("ledger");
    let t0 = t("2025-06-20T00:00:00Z");
    // Three days of quarter-hours; "M" counts throughout, "GONE" stops after day 1.
    for k in 0..(3 * 96) {
        let start = t0 + chrono::Duration::minutes(15 * k);
        let mut p = period(&start.to_rfc3339(), 1.0);
        p.snapshots = vec![CounterSnapshot {
            device: "M".into(),
            reading: "import_kwh".into(),
            at: start,
            value: k as f64,
        }];
        if k < 96 {
            p.snapshots.push(CounterSnapshot {
                device: "GONE".into(),
                reading: "import_kwh".into(),
                at: start,
                value: k as f64,
            });
        }
        l.commit_period(&p).expect("commit");
    }
    let latest_before = l.latest_snapshots().expect("latest");
    let cut = t0 + chrono::Duration::days(2);
    let removed = l.prune_snapshots(cut).expect("prune");
    // M: 192 older than the cut, 2 at midnight kept; GONE: 96, 1 midnight and its latest kept.
    assert_eq!(removed, (192 - 2) + (96 - 2));
    assert_eq!(l.latest_snapshots().expect("latest"), latest_before);
    for (at, kept) in [
        (t0, true),
        (t0 + chrono::Duration::minutes(15), false),
        (t0 + chrono::Duration::days(1), true),
        (
            t0 + chrono::Duration::days(1) + chrono::Duration::minutes(15),
            false,
        ),
        (cut, true),
        (cut + chrono::Duration::hours(5), true),
    ] {
        assert_eq!(
            l.snapshot("M", "import_kwh", at)
                .expect("snapshot")
                .is_some(),
            kept,
            "{at}"
        );
    }
    assert!(l
        .snapshot(
            "GONE",
            "import_kwh",
            t0 + chrono::Duration::minutes(15 * 95)
        )
        .expect("snapshot")
        .is_some());
    // Periods are untouched, the fold is audited, the chain verifies; a second
    // prune has nothing left to do and writes no entry.
    assert_eq!(l.periods().expect("periods").len(), 3 * 96);
    assert!(l.verify().expect("verify").ok());
    assert_eq!(l.prune_snapshots(cut).expect("prune"), 0);
}
