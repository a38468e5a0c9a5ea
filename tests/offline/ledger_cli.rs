//! `ped audit verify` as an operator runs it: exit 0 on an intact ledger,
//! exit 1 naming the first broken link after a row is edited with plain SQL.

use crate::common;
use chrono::{DateTime, Utc};
use ped::ledger::{ClosedPeriod, CounterSnapshot, EnergyRow, Ledger, Owner, Quality};

fn period(start: DateTime<Utc>) -> ClosedPeriod {
    ClosedPeriod {
        start,
        end: start + chrono::Duration::minutes(15),
        record_json: format!("{{\"start\":\"{start}\"}}"),
        quality: "measured".into(),
        policy: "prorata".into(),
        energies: vec![EnergyRow {
            owner: Owner::Device,
            id: "PV-01".into(),
            reading: "production_kwh".into(),
            kwh: Some(1.0),
            quality: Quality::Measured,
        }],
        keys: vec![("P-01".into(), "99990000000001".into(), 1000)],
        snapshots: vec![CounterSnapshot {
            device: "PV-01".into(),
            reading: "production_kwh".into(),
            at: start,
            value: 1.0,
        }],
    }
}

fn verify(path: &std::path::Path) -> (bool, String) {
    let out = common::ped()
        .args(["audit", "verify", "--ledger"])
        .arg(path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run ped");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn audit_verify_passes_then_names_the_edited_entry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("ledger.sqlite");
    let mut start = DateTime::parse_from_rfc3339("2025-06-21T10:00:00Z")
        .expect("t")
        .with_timezone(&Utc);
    {
        let mut l = Ledger::open(&path).expect("ledger");
        for _ in 0..4 {
            l.commit_period(&period(start)).expect("commit");
            start += chrono::Duration::minutes(15);
        }
    }
    let (ok, text) = verify(&path);
    assert!(ok, "{text}");
    assert!(
        text.contains("4 audit entries, 4 periods, chain intact"),
        "{text}"
    );

    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET subject = '2025-06-21T09:00:00+00:00' WHERE seq = 2;",
    )
    .expect("tamper");
    drop(conn);
    let (ok, text) = verify(&path);
    assert!(!ok, "{text}");
    assert!(text.contains("BROKEN at audit entry 2"), "{text}");

    let (ok, text) = verify(&tmp.path().join("absent.sqlite"));
    assert!(!ok);
    assert!(text.contains("no such file"), "{text}");
}
