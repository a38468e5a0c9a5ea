//! Curtailment actuated: with a negative export price the plan curtails PV,
//! and the planner turns the curtailment into a 123 `WMaxLimPct` limit per
//! plant (pro rata of its forecast, as a percentage of its rating), written
//! through the safety envelope. The simulated inverters' output drops to what
//! the district uses; `ped simulate --dry-run` logs the limit instead.

mod common;

use std::time::{Duration, Instant};

fn site_toml() -> String {
    format!(
        r#"
{head}
[plan]
budget_ms = 10000
export_price_eur_per_kwh = -0.05

[[devices]]
id = "PV-A"
kind = "pv_inverter"
address = "127.0.0.1:15701"
prm = "99990000000001"
kwp = 60.0
writes = ["WMaxLimPct", "WMaxLim_Ena", "WMaxLimPct_RvrtTms"]

[[devices]]
id = "PV-B"
kind = "pv_inverter"
address = "127.0.0.1:15702"
prm = "99990000000002"
kwp = 30.0
azimuth_deg = 250.0
writes = ["WMaxLimPct", "WMaxLim_Ena", "WMaxLimPct_RvrtTms"]

[[devices]]
id = "M1"
kind = "meter"
address = "127.0.0.1:15703"
participant = "P1"

[[participants]]
id = "P1"
kind = "household"
prm = "99990000000011"
meter = "M1"
annual_kwh = 30000.0
"#,
        head = common::site_head("curtail", "negative export price")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_export_price_limits_the_inverters_and_their_output_drops() {
    let s = common::simulated(&site_toml(), "2025-06-21T13:00:00+02:00", 30.0).await;
    let sim = &s.sim;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let free_pv = sim.truth.borrow().pv_kw;
    assert!(free_pv > 30.0, "a June midday: {free_pv} kW");

    let daemon = s.daemon(sim.site.clone()).await;
    let started = Instant::now();
    // Wait for the limits to settle, not for the first low sample: the two
    // plants are limited one poll apart and the first sample under half can
    // catch one of them still at full output (seen under a loaded test run).
    let mut low = None;
    let mut last = None;
    while started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = sim.truth.borrow().clone();
        if t.pv_kw < 0.5 * free_pv && t.pv_kw < t.load_kw + 5.0 {
            low = Some(t);
            break;
        }
        last = Some(t);
    }
    // A few polls more, so that both limits are read back into the status.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (limits, text) = {
        let st = daemon.shared.status();
        let l: Vec<Option<f64>> = ["PV-A", "PV-B"]
            .iter()
            .map(|id| {
                st.devices
                    .get(*id)
                    .and_then(|d| d.readings.get("limit_pct").copied())
            })
            .collect();
        (l, daemon.shared.metrics.render())
    };
    daemon.shutdown().await;
    let low = low.unwrap_or_else(|| {
        panic!(
            "PV never curtailed to the load within 15 s; last sample {last:?}, now {:?}\n{text}",
            sim.truth.borrow()
        )
    });
    // What is left is about what the district uses (export costs money).
    assert!(
        low.pv_kw < low.load_kw + 5.0,
        "PV {} kW against a load of {} kW",
        low.pv_kw,
        low.load_kw
    );
    for l in &limits {
        let l = l.unwrap_or_else(|| panic!("no limit read back: {limits:?}"));
        assert!((0.0..50.0).contains(&l), "limits {limits:?}");
    }
    let ok_writes = common::metric_sum(&text, "ped_setpoint_writes_total", &["result=\"ok\""]);
    assert!(ok_writes >= 2.0, "{text}");
    drop(s);
}

#[test]
fn simulate_dry_run_logs_the_curtailment_instead_of_writing_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = dir.path().join("site.toml");
    std::fs::write(&site, site_toml()).unwrap_or_else(|e| panic!("{e}"));
    let out = common::ped()
        .args(["simulate", "--site"])
        .arg(&site)
        .args([
            "--dry-run",
            "--duration",
            "20m",
            "--speed",
            "300",
            "--start",
            "2025-06-21T13:00:00+02:00",
            "--ephemeral-ports",
            "--listen",
            "127.0.0.1:0",
            "--out",
        ])
        .arg(dir.path().join("out"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    let logs = format!("{stdout}{stderr}");
    let would: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("dry run: would write") && l.contains("WMaxLimPct"))
        .collect();
    assert!(!would.is_empty(), "{logs}");
    assert!(would.iter().any(|l| l.contains("PV-A")), "{would:?}");
    assert!(would.iter().any(|l| l.contains("PV-B")), "{would:?}");
}

/// The release path: export prices from a file, negative for the first
/// quarter-hour and positive after it. The plan curtails while export costs
/// money and, at the first plan of the next step, releases the limits, so
/// the inverters return to their free output (and nothing is lost to a limit
/// left behind). The file is also re-read: the price gauge follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_released_when_the_export_price_turns_positive() {
    let prices_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let prices = prices_dir.path().join("export-prices.csv");
    std::fs::write(
        &prices,
        "start;eur_per_kwh\n2025-06-21T13:00:00+02:00;-0.05\n2025-06-21T13:15:00+02:00;0.04\n2025-06-21T15:00:00+02:00;0.04\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let toml = site_toml()
        .replace(
            "export_price_eur_per_kwh = -0.05",
            &format!(
                "export_price_eur_per_kwh = 0.06\nexport_prices_file = {:?}",
                prices.to_string_lossy()
            ),
        )
        .replace("1570", "1571");
    // 15 simulated minutes in 7.5 s.
    let s = common::simulated(&toml, "2025-06-21T13:00:00+02:00", 120.0).await;
    let (sim, clock, origin) = (&s.sim, s.clock, s.origin);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let free_pv = sim.truth.borrow().pv_kw;
    let daemon = s.daemon(sim.site.clone()).await;
    let price = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("ped_export_price_eur_per_kwh"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let started = Instant::now();
    let mut curtailed = None;
    let mut released = None;
    let mut prices_seen = Vec::new();
    while started.elapsed() < Duration::from_secs(25) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = sim.truth.borrow().clone();
        let now = clock.now();
        if let Some(x) = price(&daemon.shared.metrics.render()) {
            if prices_seen.last() != Some(&x) {
                prices_seen.push(x);
            }
        }
        if curtailed.is_none() && t.pv_kw < 0.5 * free_pv {
            curtailed = Some((now, t.pv_kw));
        }
        if curtailed.is_some() && t.pv_kw > 0.8 * free_pv {
            released = Some((now, t.pv_kw));
            break;
        }
    }
    let text = daemon.shared.metrics.render();
    daemon.shutdown().await;
    let quarter = origin + chrono::Duration::minutes(15);
    let (c_at, c_kw) =
        curtailed.unwrap_or_else(|| panic!("never curtailed below half of {free_pv} kW\n{text}"));
    assert!(
        c_at < quarter,
        "curtailed at {c_at}, after the negative quarter-hour"
    );
    let (r_at, r_kw) = released.unwrap_or_else(|| {
        panic!(
            "limits never released after {c_at} ({c_kw} kW); PV now {:?}\n{text}",
            sim.truth.borrow()
        )
    });
    assert!(
        r_at >= quarter,
        "released at {r_at}, before the price turned"
    );
    // The next step's plan releases within its first minutes (simulated).
    assert!(
        r_at < quarter + chrono::Duration::minutes(5),
        "released only at {r_at} ({r_kw} kW)"
    );
    // (0 before the first plan.)
    let neg = prices_seen.iter().position(|x| *x == -0.05);
    let pos = prices_seen.iter().position(|x| *x == 0.04);
    assert!(
        neg.is_some() && pos.is_some() && neg < pos,
        "{prices_seen:?}"
    );
    let releases = common::metric_sum(&text, "ped_setpoint_writes_total", &["result=\"ok\""]);
    assert!(releases >= 4.0, "limit and release on both plants:\n{text}");
    drop(s);
}
