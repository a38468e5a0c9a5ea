//! Supervision of the daemon's tasks: a stage that dies never leaves a battery
//! driven. A bug is stood in for by the test-only `PED_FAULT_PANIC` (honoured
//! by debug builds only): the endpoint task that drives the battery panics
//! right after its first non-zero setpoint. ped must release the battery over
//! a fresh connection, count the failure and stop with an error, so that
//! systemd or Docker restarts it.

use ped::clock::Clock;
use ped::daemon::DaemonError;
use ped::registers::ModelLibrary;
use ped::simulator::{Simulator, REVERT_AFTER};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

const FAULT: &str = "endpoint:BAT";

/// An evening (the battery, a participant, discharges into the household's
/// load) with no revert timer written: only ped can hand the battery back
/// before the simulator's own 15 s default.
fn site() -> String {
    common::control_site(
        &common::site_head("supervision", "supervision"),
        "budget_ms = 500",
        80.0,
        r#"["WSetEna", "WSet"]"#,
        "",
    )
}

const START: &str = "2025-06-21T21:30:00+02:00";

fn bat_kw(sim: &Simulator) -> f64 {
    common::battery_kw(sim, "BAT")
}

/// The real binary: `ped run` against devices served by this process on the
/// same simulated clock; the endpoint task that drives the battery panics,
/// and the supervisor releases the battery over a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_endpoint_task_releases_the_battery_and_ped_exits_non_zero() {
    a_panicking_stage_releases_the_battery_and_ped_exits_non_zero(FAULT).await;
}

/// The same with the planner: the surviving endpoint task releases the battery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_planner_releases_the_battery_and_ped_exits_non_zero() {
    a_panicking_stage_releases_the_battery_and_ped_exits_non_zero("planner").await;
}

async fn a_panicking_stage_releases_the_battery_and_ped_exits_non_zero(fault: &str) {
    let lib = Arc::new(ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}")));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = common::load_site(&lib, dir.path(), &site());
    let origin_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_else(|e| panic!("{e}"))
        .as_secs_f64();
    let clock = Clock::simulated_shared(origin_unix, common::at(START), 60.0);
    let sim = Simulator::start(&site, lib.clone(), clock, 5, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let served = dir.path().join("served.toml");
    std::fs::write(
        &served,
        toml::to_string(&sim.site.config).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let mut child = common::ped()
        .current_dir(dir.path())
        .args([
            "run",
            "--site",
            "served.toml",
            "--out",
            "out",
            "--listen",
            "127.0.0.1:0",
            "--clock-origin",
            &origin_unix.to_string(),
            "--start",
            START,
            "--speed",
            "60",
        ])
        .env("PED_FAULT_PANIC", fault)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn ped: {e}"));

    // ped drives the battery, its endpoint task panics, and ped must stop.
    let started = Instant::now();
    let mut driven = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break s;
        }
        driven |= bat_kw(&sim).abs() > 0.5;
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
            panic!(
                "ped still runs 60 s after its endpoint task panicked (battery at {} kW):\n{}",
                bat_kw(&sim),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited = Instant::now();
    let stderr = child
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(1),
        "ped must exit with an error:\n{stderr}"
    );

    // The release was written before ped exited: the simulated battery is in
    // its own mode at once, long before its own 15 s revert would have come.
    let mut released_after = None;
    while exited.elapsed() < REVERT_AFTER / 2 {
        if bat_kw(&sim).abs() < 1e-9 {
            released_after = Some(exited.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        driven || released_after.is_some(),
        "ped never drove the battery:\n{stderr}"
    );
    let after = released_after.unwrap_or_else(|| {
        panic!(
            "the battery still follows ped's setpoint ({} kW) {:?} after ped exited:\n{stderr}",
            bat_kw(&sim),
            REVERT_AFTER / 2
        )
    });
    assert!(
        after < Duration::from_secs(2),
        "released {after:?} after the exit: that is the device's own timer, not ped"
    );
    assert!(
        driven,
        "the battery was never under ped's control:\n{stderr}"
    );
    drop(sim);
}

/// The library: `run_until` returns the failure, the failure and the release
/// are counted, and a stale device is not reported up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_returns_the_failure_and_counts_it_and_the_release() {
    // The same value as the other test of this binary: the variable is read once.
    std::env::set_var("PED_FAULT_PANIC", FAULT);
    let s = common::simulated(&site(), START, 60.0).await;
    let daemon = s.daemon(s.sim.site.clone()).await;
    let shared = daemon.shared.clone();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        daemon.run_until(std::future::pending()),
    )
    .await
    .unwrap_or_else(|_| panic!("the daemon runs on 60 s after its endpoint task panicked"));
    match outcome {
        Err(DaemonError::TaskFailed { task, why }) => {
            assert!(task.starts_with("endpoint "), "{task}");
            assert!(why.contains("panicked"), "{why}");
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
    let m = &shared.metrics;
    assert_eq!(m.task_failures.with_label_values(&["endpoint"]).get(), 1);
    assert_eq!(m.task_failures.with_label_values(&["planner"]).get(), 0);
    assert_eq!(
        m.device_releases
            .with_label_values(&["BAT", "task_failure"])
            .get(),
        1
    );
    assert!(
        bat_kw(&s.sim).abs() < 1e-9 || {
            tokio::time::sleep(Duration::from_millis(500)).await;
            bat_kw(&s.sim).abs() < 1e-9
        }
    );
}
