//! Plan tracking in the daemon, through real sockets: the simulated plant
//! is 60 kWp but ped's config rates it at 15 kWp, so the plan's PV forecast
//! (clearness capped at 1.2) is far below what the plant delivers at a June
//! midday. With tracking, the battery ends up charging well above the plan's
//! step-0 setpoint, taking the surplus the plan would export; with
//! `[plan] tracking = false` it holds the plan's setpoint.

mod common;

use std::time::{Duration, Instant};

fn site_toml(tracking: bool) -> String {
    common::control_site(
        &common::site_head("tracking", "unforecast sun"),
        &format!("budget_ms = 10000\ntracking = {tracking}"),
        60.0,
        r#"["WSetEna", "WSet", "WSetRvrtTms"]"#,
        // SunSpec 704 WSet: positive = discharge.
        r#"sign = "generation_positive""#,
    )
}

/// A gauge's value for `device` in the exposition text.
fn gauge(text: &str, name: &str, device: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("device=\"{device}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

struct Sample {
    /// The plan's step-0 battery setpoint (kW).
    plan_kw: f64,
    /// What tracking adds (kW), from `ped_tracking_watts`.
    added_kw: Option<f64>,
    /// The simulated battery's power (kW, + charge).
    battery_kw: f64,
    /// The plan's PV forecast for the step and the plant's actual output (kW).
    forecast_pv_kw: f64,
    pv_kw: f64,
    /// `ped_tracking_skipped_total{reason="missing"}`.
    skipped_missing: f64,
}

/// Runs ped against the simulated site until `done` holds for a sample (or
/// `within` passes), and returns the samples taken once a plan was out.
async fn run(
    tracking: bool,
    meter_lost: bool,
    within: Duration,
    done: fn(&Sample) -> bool,
) -> Vec<Sample> {
    let s = common::simulated(&site_toml(tracking), "2025-06-21T13:00:00+02:00", 30.0).await;
    let sim = &s.sim;
    assert_eq!(sim.site.config.plan.tracking, tracking);
    // ped underrates the plant: its forecast misses most of the sun.
    let mut ped_site = sim.site.clone();
    for d in ped_site.config.devices.iter_mut() {
        if d.id == "PV" {
            d.kwp = Some(15.0);
        }
        // Nothing listens there: the household's meter is never read.
        if d.id == "M1" && meter_lost {
            d.address = "127.0.0.1:1".into();
        }
    }
    let daemon = s.daemon(ped_site).await;
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = daemon.shared.metrics.render();
        let Some(plan_w) = gauge(&text, "ped_plan_next_setpoint_watts", "BAT") else {
            continue;
        };
        let forecast_pv_kw = {
            let st = daemon.shared.status();
            st.plan
                .as_ref()
                .and_then(|p| p.pv_kw.first().copied())
                .unwrap_or(0.0)
        };
        let t = sim.truth.borrow().clone();
        let s = Sample {
            plan_kw: plan_w / 1000.0,
            added_kw: gauge(&text, "ped_tracking_watts", "BAT").map(|w| w / 1000.0),
            battery_kw: t.battery_kw.get("BAT").copied().unwrap_or(0.0),
            forecast_pv_kw,
            pv_kw: t.pv_kw,
            skipped_missing: common::metric_sum(
                &text,
                "ped_tracking_skipped_total",
                &["reason=\"missing\""],
            ),
        };
        let stop = done(&s);
        samples.push(s);
        if stop {
            break;
        }
    }
    daemon.shutdown().await;
    drop(s);
    eprintln!("tracking = {tracking}:\n{}", show(&samples));
    samples
}

/// The last 2 s of samples taken with a plan out (at least 10 of them),
/// newest first.
fn settled(samples: &[Sample]) -> Vec<&Sample> {
    let settled: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.forecast_pv_kw > 0.0)
        .rev()
        .take(20)
        .collect();
    assert!(settled.len() >= 10, "{}", show(samples));
    settled
}

fn show(samples: &[Sample]) -> String {
    samples
        .iter()
        .rev()
        .take(5)
        .map(|s| {
            format!(
                "plan {:.1} kW, added {:?}, battery {:.1} kW, PV forecast {:.1} / actual {:.1} kW",
                s.plan_kw, s.added_kw, s.battery_kw, s.forecast_pv_kw, s.pv_kw
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unforecast_sun_charges_the_battery_above_the_plan() {
    let samples = run(true, false, Duration::from_secs(15), |s| {
        s.battery_kw > s.plan_kw + 10.0 && s.added_kw.is_some_and(|a| a > 10.0)
    })
    .await;
    let last = samples
        .last()
        .unwrap_or_else(|| panic!("no plan within 15 s"));
    // The premise: the plan saw far less sun than there is.
    assert!(
        last.pv_kw > last.forecast_pv_kw + 15.0,
        "{}",
        show(&samples)
    );
    assert!(
        last.battery_kw > last.plan_kw + 10.0,
        "the battery never charged above the plan's setpoint:\n{}",
        show(&samples)
    );
    // Within the battery's power.
    assert!(last.battery_kw <= 50.0 + 1e-6, "{}", show(&samples));
    // Never below the plan's setpoint at any sample once tracking added.
    for s in &samples {
        if let Some(a) = s.added_kw {
            assert!(a >= -1e-9, "{}", show(&samples));
        }
    }
}

/// The sun is well above the forecast at `s`, yet the battery is not above
/// the plan's setpoint (`why` it should not be).
fn within_plan(s: &Sample, samples: &[Sample], why: &str) {
    assert!(s.pv_kw > s.forecast_pv_kw + 15.0, "{}", show(samples));
    assert!(
        s.battery_kw <= s.plan_kw + 1.0,
        "{why}, yet the battery went above the plan:\n{}",
        show(samples)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracking_off_the_battery_holds_the_plans_setpoint() {
    // Long enough for tracking to have acted (it does within ~3 s above).
    let samples = run(false, false, Duration::from_secs(8), |_| false).await;
    // Once the battery has reached the plan's setpoint, the last 2 s.
    let settled = settled(&samples);
    for s in &settled {
        within_plan(s, &samples, "tracking is off");
        assert!(s.added_kw.unwrap_or(0.0) == 0.0, "{}", show(&samples));
        assert_eq!(s.skipped_missing, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_never_read_means_no_tracking_and_is_counted() {
    let samples = run(true, true, Duration::from_secs(8), |_| false).await;
    let settled = settled(&samples);
    for s in &settled {
        within_plan(s, &samples, "no consumption measured");
        assert_eq!(s.added_kw, Some(0.0), "{}", show(&samples));
    }
    let last = settled[0];
    assert!(
        last.skipped_missing >= 2.0,
        "skips not counted: {}",
        last.skipped_missing
    );
}

#[test]
fn ped_check_names_the_tracking_key_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = dir.path().join("site.toml");
    let bad = site_toml(true).replace("tracking = true", "tracking = \"maybe\"");
    std::fs::write(&site, bad).unwrap_or_else(|e| panic!("{e}"));
    let out = common::ped()
        .args(["check", "--site"])
        .arg(&site)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    for needle in ["plan.tracking", "site.toml", "fix: write true or false"] {
        assert!(text.contains(needle), "{needle} not in: {text}");
    }
    // And the good value passes.
    std::fs::write(&site, site_toml(false)).unwrap_or_else(|e| panic!("{e}"));
    common::output_ok(common::ped().args(["check", "--site"]).arg(&site), "");
}
