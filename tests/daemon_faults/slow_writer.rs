//! A disk that hangs must not slow polling or control.
//!
//! The ledger writer is held (`LedgerOptions::writer_hold`, a test-only knob:
//! it commits nothing until released) while the simulated district is polled
//! at 10 Hz. The clock is paced: simulated time moves only while every device
//! has been read in the last five simulated minutes, so if the held writer
//! stalled polling, time would stop and the test would fail at its cap, on any
//! machine. Checked:
//! - periods keep closing while nothing is stored (`ped_periods_closed_total`
//!   runs ahead of the ledger by eight periods);
//! - every device is read at least once per period meanwhile, and setpoints
//!   keep being written;
//! - once the writer is released, every closed period is in the ledger,
//!   contiguous, and the audit chain verifies.

use ped::clock::Clock;
use ped::daemon::Daemon;
use ped::ledger::Ledger;
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;

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
    common::setpoints_ok(d, &["BAT-01", "BAT-02"])
}

struct Release(Arc<AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn stored(path: &Path) -> usize {
    Ledger::open_read_only(path)
        .and_then(|l| l.periods())
        .map(|p| p.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_ledger_writer_does_not_slow_polling_or_control() {
    let _serial = common::serial().await;
    let lib = Arc::new(ModelLibrary::embedded().expect("maps"));
    let site = common::shipped_site(&lib, "site-configs/fontaine-douche.toml");
    let out = tempfile::tempdir().expect("out");
    let ledger = out.path().join("ledger.sqlite");
    let clock = Clock::paced(common::at("2025-06-21T11:00:00+02:00"), 900.0);
    let sim = Simulator::start(&site, lib.clone(), clock, 2025, true)
        .await
        .expect("simulator");
    let hold = Arc::new(AtomicBool::new(true));
    // A failed assertion must release the writer too, or the runtime's
    // shutdown would wait for it forever.
    let _release = Release(hold.clone());
    let d = common::start_with_ledger(
        sim.site.clone(),
        lib,
        clock,
        out.path(),
        &ledger,
        Some(hold.clone()),
    )
    .await
    .expect("daemon");
    let m = d.shared.metrics.clone();
    let pacer = common::pace_site(clock, d.shared.clone(), &site);

    // Reads and setpoint writes when the 1st, 4th and 8th periods have closed.
    let mut at_closed: Vec<(BTreeMap<String, u64>, u64)> = Vec::new();
    let t = Instant::now();
    for n in [1, 4, 8] {
        while m.periods_closed.get() < n {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "{} periods closed, simulated time at {}: polling or closing is stuck behind the held writer",
                m.periods_closed.get(),
                clock.now()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        at_closed.push((reads(&d), setpoints_ok(&d)));
    }
    let closed = m.periods_closed.get();
    assert_eq!(
        stored(&ledger),
        0,
        "the held writer stored periods: the test proves nothing"
    );

    let (first, sp1) = &at_closed[0];
    let (last, sp8) = &at_closed[2];
    let sp4 = at_closed[1].1;
    // Seven periods of 15 minutes, a reading at least every five minutes.
    for (id, n) in last {
        assert!(
            n - first[id] >= 21,
            "{id}: {} reads over seven periods",
            n - first[id]
        );
    }
    assert!(
        *sp8 > sp4 && sp4 > *sp1,
        "setpoint refreshes stopped: {sp1} → {sp4} → {sp8}"
    );

    // Released, then stopped: the writer finishes; nothing is lost.
    hold.store(false, Ordering::SeqCst);
    pacer.abort();
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
    common::assert_ledger_whole(&ledger, closed);
}
