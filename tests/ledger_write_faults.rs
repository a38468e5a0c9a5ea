//! The ledger stops accepting writes while the daemon runs against the
//! simulated district: ped keeps polling and writing setpoints, reports the
//! fault (`ped_ledger_write_errors_total`, `ped_ledger_pending_periods`),
//! keeps the closed periods in memory and writes them, in order, once it can.
//!
//! The faults are the kernel's own, not a hook in ped: tests run as root here,
//! so `chmod` would not stop a write; instead the ledger's files are made
//! immutable (`chattr +i`, refused even to root: EPERM), or the ledger lives
//! on a small tmpfs that a filler file fills up (ENOSPC). Both need root (the
//! CI and dev machines run as root) and fail loudly otherwise.

mod common;

use ped::clock::Clock;
use ped::daemon::Daemon;
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sh(cmd: &str, args: &[&str]) {
    common::output_ok(Command::new(cmd).args(args), " (this test needs root)");
}

/// Undoes a fault even if the test panics.
struct Undo(Vec<(String, Vec<String>)>);
impl Drop for Undo {
    fn drop(&mut self) {
        for (cmd, args) in self.0.drain(..).rev() {
            let _ = Command::new(&cmd).args(&args).status();
        }
    }
}

async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reads(d: &Daemon) -> u64 {
    d.shared
        .metrics
        .device_reads
        .with_label_values(&["PV-01"])
        .get()
}
fn setpoints_ok(d: &Daemon) -> u64 {
    common::setpoints_ok(d, &["BAT-01", "BAT-02"])
}

fn plans(d: &Daemon) -> u64 {
    ["optimal", "rule_based"]
        .iter()
        .map(|s| d.shared.metrics.plans.with_label_values(&[s]).get())
        .sum()
}

/// Runs the district, breaks the ledger with `inject`, checks ped carries on,
/// heals it with `heal`, checks it catches up.
async fn run_with_fault(ledger: PathBuf, inject: impl FnOnce(&Path), heal: impl FnOnce(&Path)) {
    let lib = Arc::new(ModelLibrary::embedded().expect("maps"));
    let site = common::shipped_site(&lib, "site-configs/fontaine-douche.toml");
    let out = tempfile::tempdir().expect("out");
    let clock = Clock::simulated(common::at("2025-06-21T11:00:00+02:00"), 900.0);
    let sim = Simulator::start(&site, lib.clone(), clock, 2025, true)
        .await
        .expect("simulator");
    let d = common::start_with_ledger(sim.site.clone(), lib, clock, out.path(), &ledger, None)
        .await
        .expect("daemon");
    let m = d.shared.metrics.clone();
    wait_until("2 periods closed", 30, || m.periods_closed.get() >= 2).await;
    assert_eq!(m.ledger_write_errors.get(), 0);

    inject(&ledger);
    let closed_at_fault = m.periods_closed.get();
    let (reads0, sp0, plans0) = (reads(&d), setpoints_ok(&d), plans(&d));
    // Plans come once per period but a solve can take seconds on a loaded
    // machine: wait for one plan published (and written) during the fault.
    wait_until("3 periods closed and a plan during the fault", 60, || {
        m.periods_closed.get() >= closed_at_fault + 3 && plans(&d) > plans0
    })
    .await;
    wait_until("setpoints written during the fault", 10, || {
        setpoints_ok(&d) > sp0
    })
    .await;
    assert!(m.ledger_write_errors.get() > 0, "write errors not reported");
    assert!(
        m.ledger_pending_periods.get() >= 2.0,
        "pending periods: {}",
        m.ledger_pending_periods.get()
    );
    assert!(reads(&d) > reads0 + 10, "polling stopped during the fault");
    let text = m.render();
    assert!(text.contains("ped_ledger_pending_periods"), "{text}");

    heal(&ledger);
    let plans1 = plans(&d);
    wait_until("the ledger to catch up and a plan after", 60, || {
        m.ledger_pending_periods.get() == 0.0 && plans(&d) > plans1
    })
    .await;
    // The recorder writes right after the plan is published.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = m.periods_closed.get();
    d.shutdown().await;
    drop(sim);

    let l = common::assert_ledger_whole(&ledger, closed);
    let (plans, setpoints) = l.dispatch_counts().expect("dispatch");
    assert!(
        plans > 0 && setpoints > 0,
        "{plans} plans, {setpoints} setpoints recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_ledger_is_caught_up_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.sqlite");
    let undo = std::sync::Mutex::new(Undo(Vec::new()));
    run_with_fault(
        ledger,
        |l| {
            let files: Vec<String> = ["", "-wal"]
                .iter()
                .map(|s| format!("{}{s}", l.display()))
                .collect();
            for f in &files {
                sh("chattr", &["+i", f]);
                undo.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .0
                    .push(("chattr".into(), vec!["-i".into(), f.clone()]));
            }
        },
        |_| {
            let mut u = undo.lock().unwrap_or_else(|e| e.into_inner());
            for (cmd, args) in u.0.drain(..) {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                sh(&cmd, &a);
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_caught_up_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let m = mnt.display().to_string();
    sh("mount", &["-t", "tmpfs", "-o", "size=8m", "tmpfs", &m]);
    let _umount = Undo(vec![("umount".into(), vec!["-l".into(), m.clone()])]);
    let filler = mnt.join("filler");
    run_with_fault(
        mnt.join("ledger.sqlite"),
        |_| {
            // Fill what is left, as another process on the same disk would.
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).expect("filler");
            let block = vec![0u8; 64 * 1024];
            loop {
                if f.write_all(&block).and_then(|_| f.sync_all()).is_err() {
                    break;
                }
            }
        },
        |_| std::fs::remove_file(&filler).expect("free the disk"),
    )
    .await;
}
