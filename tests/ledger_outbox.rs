//! The delivery outbox against a destination that is really unavailable: the
//! DSO drop folder's path is a regular file for a simulated week, so every
//! delivery fails with the operating system's own error. The worker runs on a
//! simulated clock (10-minute steps over 7 days and 3 hours).

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ped::dso::delivery::{Deliver, Delivery, DeliveryError};
use ped::ledger::outbox::{self, AttemptResult, Backoff, SpoolDir};
use ped::ledger::Ledger;
use std::collections::BTreeMap;
use std::path::Path;

mod common;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("timestamp")
        .with_timezone(&Utc)
}

fn content(day: NaiveDate, producer: &str) -> Vec<u8> {
    format!("Horodate;99990000000001\n{day}T00:00:00+02:00;{producer}\n").into_bytes()
}

fn log_keys(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("deliveries.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn dso_down_for_a_week_then_everything_delivered_exactly_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ledger = Ledger::open(&tmp.path().join("l.sqlite")).expect("ledger");
    let dso = tmp.path().join("dso");
    // The outage: a file where the drop folder should be.
    std::fs::write(&dso, b"not a folder").expect("outage");
    let channel = SpoolDir { dir: dso.clone() };
    let backoff = Backoff {
        base: Duration::minutes(1),
        cap: Duration::hours(1),
    };
    let producers = ["99991022270205", "99990614719005"];
    let first_day = NaiveDate::from_ymd_opt(2025, 6, 21).expect("day");
    let start = t("2025-06-21T22:00:00Z");
    let back_up = start + Duration::days(7);
    let end = back_up + Duration::hours(3);
    let mut now = start;
    let mut next_day = 0;
    let mut results: BTreeMap<&'static str, u32> = BTreeMap::new();
    while now < end {
        // Each local day's files are recorded as the day completes.
        while next_day < 7 && now >= start + Duration::days(next_day) + Duration::minutes(5) {
            let day = first_day + Duration::days(next_day);
            for p in producers {
                let name = format!("{p}_{}_{}.csv", day.format("%Y%m%d"), day.format("%Y%m%d"));
                let v = ledger
                    .record_key_file(&name, day, day, &content(day, p), "[]", "optimised", now)
                    .expect("record");
                assert!(v.new);
            }
            next_day += 1;
        }
        if now >= back_up && dso.is_file() {
            std::fs::remove_file(&dso).expect("end of outage");
        }
        for a in outbox::deliver_due(&mut ledger, &channel, now, &backoff).expect("outbox") {
            *results.entry(a.result.as_str()).or_default() += 1;
            if now < back_up {
                assert_eq!(
                    a.result,
                    AttemptResult::Retry,
                    "delivered during the outage"
                );
            }
        }
        if now + Duration::minutes(10) >= back_up && now < back_up {
            let c = outbox::counts(&mut ledger).expect("counts");
            assert_eq!(
                (c.pending, c.sent, c.failed),
                (14, 0, 0),
                "before the DSO is back"
            );
            // Capped backoff: about one attempt an hour, not one per step, not one a day.
            let e = outbox::entries(&mut ledger).expect("entries");
            assert!(
                (150..=185).contains(&e[0].attempts),
                "first file tried {} times over 7 days",
                e[0].attempts
            );
        }
        now += Duration::minutes(10);
    }
    let c = outbox::counts(&mut ledger).expect("counts");
    assert_eq!((c.pending, c.sent, c.failed), (0, 14, 0));
    let keys = log_keys(&dso);
    assert_eq!(keys.len(), 14, "each file exactly once: {keys:?}");
    let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), 14);
    // What arrived is byte for byte what was recorded.
    for day in 0..7 {
        let day = first_day + Duration::days(day);
        for p in producers {
            let name = format!("{p}_{}_{}.csv", day.format("%Y%m%d"), day.format("%Y%m%d"));
            let arrived = std::fs::read_dir(&dso)
                .expect("dso")
                .filter_map(Result::ok)
                .find(|f| f.file_name().to_string_lossy().ends_with(&name))
                .unwrap_or_else(|| panic!("{name} not delivered"));
            assert_eq!(
                std::fs::read(arrived.path()).expect("read"),
                content(day, p)
            );
        }
    }
    assert!(results["transient_error"] > 1000, "{results:?}");
    assert!(ledger.verify().expect("verify").ok());
}

/// A receiver that acknowledges, then ped loses power before it commits `sent`.
struct AckThenPowerCut<'a>(&'a SpoolDir);
impl Deliver for AckThenPowerCut<'_> {
    fn channel(&self) -> &'static str {
        "spool"
    }
    fn deliver(&self, d: &Delivery) -> Result<String, DeliveryError> {
        let receipt = self.0.deliver(d)?;
        panic!("power cut after receipt {receipt}");
    }
}

#[test]
fn a_crash_between_ack_and_commit_repeats_with_the_same_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("l.sqlite");
    let spool = SpoolDir {
        dir: tmp.path().join("dso"),
    };
    let now = t("2025-06-22T00:05:00Z");
    let day = NaiveDate::from_ymd_opt(2025, 6, 21).expect("day");
    {
        let mut l = Ledger::open(&path).expect("ledger");
        l.record_key_file(
            "F_20250621_20250621.csv",
            day,
            day,
            b"rows",
            "[]",
            "prorata",
            now,
        )
        .expect("record");
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            outbox::deliver_due(&mut l, &AckThenPowerCut(&spool), now, &Backoff::default())
        }));
        assert!(cut.is_err(), "the power cut happened");
    }
    // Restart: the entry is still pending and goes again, under the same key.
    let mut l = Ledger::open(&path).expect("ledger after restart");
    assert_eq!(outbox::counts(&mut l).expect("counts").pending, 1);
    let a = outbox::deliver_due(&mut l, &spool, now, &Backoff::default()).expect("outbox");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].result, AttemptResult::Sent);
    let keys = log_keys(&spool.dir);
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0], keys[1],
        "a repeat carries the same idempotency key"
    );
    // Nothing more to send.
    let later = now + Duration::days(1);
    assert!(
        outbox::deliver_due(&mut l, &spool, later, &Backoff::default())
            .expect("outbox")
            .is_empty()
    );
    assert!(l.verify().expect("verify").ok());
}

#[test]
fn a_permanent_refusal_is_failed_and_not_retried() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut l, now) = common::ledger_with_one_key_file(&tmp.path().join("l.sqlite"));
    const REFUSES: common::Failing = common::Failing {
        channel: "refuses",
        error: || DeliveryError::Permanent("HTTP 400: unknown PRM".into()),
    };
    let a = outbox::deliver_due(&mut l, &REFUSES, now, &Backoff::default()).expect("outbox");
    assert_eq!(a[0].result, AttemptResult::Failed);
    let a = outbox::deliver_due(
        &mut l,
        &REFUSES,
        now + Duration::days(1),
        &Backoff::default(),
    )
    .expect("outbox");
    assert!(a.is_empty());
    assert_eq!(outbox::counts(&mut l).expect("counts").failed, 1);
}
