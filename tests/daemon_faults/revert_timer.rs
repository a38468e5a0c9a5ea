//! The device's own revert timer: ped writes it (704 `WSetRvrtTms` here) from
//! `revert_timeout_s` before the setpoint, refreshes the setpoint inside it,
//! and when ped dies without releasing anything (its runtime is torn down: no
//! task runs another line, as after kill -9) the simulated battery falls back
//! to its own behaviour after that many seconds, not after the simulator's
//! 15 s default.

use crate::common;
use ped::clock::Clock;
use ped::registers::ModelLibrary;
use ped::simulator::{Simulator, REVERT_AFTER};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMER_S: f64 = 2.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_battery_reverts_on_the_timer_ped_wrote_when_ped_dies() {
    let _serial = common::serial().await;
    let lib = Arc::new(ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}")));
    let toml = common::control_site(
        &common::site_head("revert", "revert timer"),
        "budget_ms = 10000",
        80.0,
        r#"["WSetEna", "WSet", "WSetRvrtTms"]"#,
        &format!("revert_timeout_s = {TIMER_S}"),
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = common::load_site(&lib, dir.path(), &toml);
    // An evening: the battery (a participant) discharges into the
    // household's load the PV no longer covers, so ped has it under control.
    // (At a sunny noon a participant battery has nothing to do: it earns the
    // local price only on discharge that serves load, and charging costs it
    // the local price, see `plan::credit_cap_kw`.)
    let clock = Clock::simulated(common::at("2025-06-21T21:30:00+02:00"), 60.0);
    let sim = Simulator::start(&site, lib.clone(), clock, 5, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // ped in a runtime of its own, so that it can be killed without a word to
    // the devices: shutting that runtime down stops every task at its next
    // await, and no release is ever written.
    let daemon_site = sim.site.clone();
    let daemon_lib = lib.clone();
    let out = dir.path().join("out");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let ped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let daemon = rt.block_on(common::start_daemon(
            daemon_site,
            daemon_lib,
            clock,
            out,
            false,
        ));
        let _ = ready_tx.send(());
        let _ = kill_rx.recv();
        // Leak the daemon: dropping it could run clean-up; a killed process runs none.
        std::mem::forget(daemon);
        rt.shutdown_background();
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("ped did not start: {e}"));

    // ped takes control: the battery moves and stays under control for longer
    // than its own timer, because ped refreshes the setpoint inside it.
    let bat_kw = |sim: &Simulator| common::battery_kw(sim, "BAT");
    let started = Instant::now();
    let mut moving_since: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if bat_kw(&sim).abs() > 0.5 {
            let since = *moving_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs_f64(TIMER_S * 1.5) {
                break;
            }
        } else {
            moving_since = None;
        }
    }
    let held = moving_since.map(|t| t.elapsed()).unwrap_or_default();
    assert!(
        held > Duration::from_secs_f64(TIMER_S * 1.5),
        "the battery was not held under control past its own timer: {held:?}"
    );

    // kill -9.
    let _ = kill_tx.send(());
    let _ = ped.join();
    let killed = Instant::now();
    let mut reverted_after = None;
    while killed.elapsed() < REVERT_AFTER {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if bat_kw(&sim).abs() < 1e-9 {
            reverted_after = Some(killed.elapsed());
            break;
        }
    }
    let after = reverted_after.unwrap_or_else(|| {
        panic!("the battery still follows ped's last setpoint {REVERT_AFTER:?} after ped died")
    });
    // The last refresh came at most a third of the timer before the kill.
    let lo = Duration::from_secs_f64(TIMER_S * 2.0 / 3.0 - 0.2);
    let hi = Duration::from_secs_f64(TIMER_S + 0.5);
    assert!(
        after >= lo && after <= hi,
        "reverted {after:?} after ped died; its own timer is {TIMER_S} s"
    );
    drop(sim);
}
