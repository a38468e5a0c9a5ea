//! A slow disk must not slow polling or control.
//!
//! The ledger writer is made slower than periods close
//! (`LedgerOptions::writer_delay`, a test-only knob: 1.5 s per period while a
//! period closes every real second), against the simulated district polled at
//! 10 Hz (1,350 polls/s). Before the hand-off was rebuilt, closing periods
//! and writing files ran on the aggregator task behind a 4,096-slot channel:
//! it filled within about 3 s and every endpoint task then blocked in
//! `send().await`, so polls and setpoint refreshes stopped. Now:
//! - every device keeps polling in the last window at no less than half its
//!   rate of the first window (the floor is loose for a loaded 2-core machine;
//!   a stalled poller scores 0);
//! - setpoints keep being written;
//! - periods keep closing while the writer is behind (`ped_periods_closed_total`
//!   runs ahead of the ledger);
//! - once the writer catches up, every closed period is in the ledger,
//!   contiguous, and the audit chain verifies.

use ped::clock::Clock;
use ped::config;
use ped::daemon::{Daemon, LedgerOptions, Options};
use ped::ledger::Ledger;
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn reads(d: &Daemon) -> BTreeMap<String, u64> {
    d.shared
        .site
        .config
        .devices
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                d.shared
                    .metrics
                    .device_reads
                    .with_label_values(&[&c.id])
                    .get(),
            )
        })
        .collect()
}

fn setpoints_ok(d: &Daemon) -> u64 {
    ["BAT-01", "BAT-02"]
        .iter()
        .map(|b| {
            d.shared
                .metrics
                .setpoint_writes
                .with_label_values(&[b, "ok"])
                .get()
        })
        .sum()
}

fn stored(path: &Path) -> usize {
    Ledger::open_read_only(path)
        .and_then(|l| l.periods())
        .map(|p| p.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_ledger_writer_does_not_slow_polling_or_control() {
    let lib = Arc::new(ModelLibrary::embedded().expect("maps"));
    let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("site-configs/fontaine-douche.toml");
    let mut site = config::load(&path, &known).expect("site");
    site.config.polling.interval_ms = 100;
    site.config.polling.timeout_ms = 300;
    let out = tempfile::tempdir().expect("out");
    let ledger = out.path().join("ledger.sqlite");
    let origin = chrono::DateTime::parse_from_rfc3339("2025-06-21T11:00:00+02:00")
        .expect("origin")
        .with_timezone(&chrono::Utc);
    let clock = Clock::simulated(origin, 900.0);
    let sim = Simulator::start(&site, lib.clone(), clock, 2025, true)
        .await
        .expect("simulator");
    let d = Daemon::start_with_ledger(
        sim.site.clone(),
        lib,
        clock,
        Options {
            dry_run: false,
            output_dir: Some(out.path().to_path_buf()),
            http_listen: Some("127.0.0.1:0".into()),
        },
        LedgerOptions {
            path: Some(ledger.clone()),
            writer_delay: Some(Duration::from_millis(1500)),
            ..Default::default()
        },
    )
    .await
    .expect("daemon");
    let m = d.shared.metrics.clone();

    // Window 1: from the first successful polls, 3 s.
    let t = Instant::now();
    while reads(&d).values().sum::<u64>() == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "no poll at all");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r0 = reads(&d);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r1 = reads(&d);
    let sp1 = setpoints_ok(&d);
    // The writer falls further behind at every period; by now the old
    // hand-off's channel would have been full for seconds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r2 = reads(&d);
    let sp2 = setpoints_ok(&d);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r3 = reads(&d);
    let sp3 = setpoints_ok(&d);
    let closed = m.periods_closed.get();
    let in_ledger = stored(&ledger);

    let mut slow = Vec::new();
    for (id, a) in &r0 {
        let first = (r1[id] - a) as f64 / 3.0;
        let last = (r3[id] - r2[id]) as f64 / 3.0;
        if first > 0.0 && last < 0.5 * first {
            slow.push(format!("{id}: {first:.1}/s then {last:.1}/s"));
        }
    }
    assert!(slow.is_empty(), "polling slowed down: {slow:?}");
    let total_last: u64 = r3.iter().map(|(id, n)| n - r2[id]).sum();
    assert!(
        total_last > 100,
        "{total_last} reads in the last 3 s: polling stalled"
    );
    assert!(
        sp3 > sp2 && sp2 > sp1,
        "setpoint refreshes stopped: {sp1} → {sp2} → {sp3}"
    );
    assert!(closed >= 8, "only {closed} periods closed in 12 s at 900x");
    assert!(
        (in_ledger as u64) + 3 <= closed,
        "the writer was not behind ({in_ledger} stored, {closed} closed): the test proves nothing"
    );

    // Stopping lets the writer finish; nothing is lost.
    d.shutdown().await;
    drop(sim);
    let t = Instant::now();
    while (stored(&ledger) as u64) < closed {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} of {closed} closed periods stored after 60 s",
            stored(&ledger)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let l = Ledger::open_read_only(&ledger).expect("ledger");
    let periods = l.periods().expect("periods");
    for w in periods.windows(2) {
        assert_eq!(
            (w[1].start - w[0].start).num_minutes(),
            15,
            "gap after {}",
            w[0].start
        );
    }
    let r = l.verify().expect("verify");
    assert!(r.ok(), "{r:?}");
}
