//! Control safety rows of the fault matrix: settings that cannot invert a
//! setpoint or panic ped, and a device's declared SunSpec model length.
//! Each test went through ped as an installer meets it: `ped check` (the real
//! binary), or the daemon against devices on real sockets.

use ped::modbus::server::Bank;
use ped::registers::{ModelLibrary, Table};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

fn head() -> String {
    format!(
        r#"
{head}
[keys]
operation_id = "ACC00000001"

[plan]
budget_ms = 500
"#,
        head = common::site_head("safety", "control safety")
    )
}

/// The PV, the household's meter and both participants: the battery's
/// device comes after them.
fn pv_and_household() -> String {
    format!(
        "{}{}{}",
        common::pv_toml("127.0.0.1:1", 80.0),
        common::meter_toml("127.0.0.1:2"),
        common::participants_toml(20000.0)
    )
}

/// A 50 kW battery at `address`, with `extra` keys.
fn battery(address: &str, extra: &str) -> String {
    common::battery_toml(address, r#"["WSetEna", "WSet"]"#, extra)
}

fn check(toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("site.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    let out = common::ped()
        .args(["check", "--site", path.to_str().unwrap_or_default()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The values the review found passing `ped check` and then inverting a
/// setpoint, panicking ped, or broadcasting to every unit on a line.
#[test]
fn check_refuses_inverted_ranges_unbounded_durations_broadcast_units_and_nan() {
    let toml = format!(
        "{}\n[delivery]\nkind = \"folder\"\ndir = \"spool\"\nbackoff_base_s = 10000000000000\nbackoff_cap_s = 100000000000000000\n{}{}",
        head().replace("[control]\n", "[control]\nplan_loss_steps = 0\n")
            .replace("interval_ms = 100", "interval_ms = 9223372036854775807"),
        pv_and_household(),
        battery(
            "127.0.0.1:3",
            "setpoint_min_kw = 60.0\nrevert_timeout_s = 1e20\nunit = 0\ntilt_deg = nan"
        )
    );
    let toml = toml.replace("annual_kwh = 20000.0", "annual_kwh = nan");
    let (code, out) = check(&toml);
    assert_eq!(code, Some(1), "{out}");
    for key in [
        "devices[2].setpoint_min_kw",
        "devices[2].revert_timeout_s",
        "devices[2].unit",
        "devices[2].tilt_deg",
        "participants[0].annual_kwh",
        "polling.interval_ms",
        "control.plan_loss_steps",
        "delivery.backoff_base_s",
        "delivery.backoff_cap_s",
    ] {
        let at = out
            .find(key)
            .unwrap_or_else(|| panic!("`{key}` not named:\n{out}"));
        let after = &out[at..];
        let fix = after.lines().nth(2).unwrap_or_default();
        assert!(fix.trim_start().starts_with("fix: "), "{key}: {after}");
    }
}

/// A bracketed IPv6 address is an address; a controlled battery whose own
/// revert timer is not in `writes` passes with a warning naming the point.
#[test]
fn check_accepts_an_ipv6_address_and_warns_about_an_unarmed_revert_timer() {
    let toml = format!(
        "{}{}{}",
        head(),
        pv_and_household(),
        battery("[::1]:502", "")
    );
    let (code, out) = check(&toml);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning: devices[2].writes") && out.contains("add \"WSetRvrtTms\""),
        "{out}"
    );
    let armed = toml.replace(
        "writes = [\"WSetEna\", \"WSet\"]",
        "writes = [\"WSetEna\", \"WSet\", \"WSetRvrtTms\"]",
    );
    let (code, out) = check(&armed);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");
}

/// A site edited past `check` (a minimum above the charge rating): the
/// battery must stay in its own mode, not be driven at its rating with the
/// sign of the plan's command inverted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_setpoint_range_leaves_the_battery_in_its_own_mode() {
    let toml = format!(
        "{}{}{}",
        head(),
        pv_and_household(),
        battery("127.0.0.1:3", "")
    );
    // An evening: the plan discharges the battery into the household's load.
    let s = common::simulated(&toml, "2025-06-21T21:30:00+02:00", 60.0).await;
    let mut site = s.sim.site.clone();
    site.config.devices[2].setpoint_min_kw = Some(80.0);
    let daemon = s.daemon(site).await;
    let started = Instant::now();
    let mut worst: f64 = 0.0;
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let kw = common::battery_kw(&s.sim, "BAT");
        worst = worst.max(kw.abs());
    }
    let text = daemon.shared.metrics.render();
    daemon.shutdown().await;
    assert!(worst < 1e-9, "the battery was driven at {worst} kW");
    assert!(
        common::metric_sum(
            &text,
            "ped_device_releases_total",
            &["device=\"BAT\"", "reason=\"no_safe_range\""]
        ) >= 1.0,
        "{text}"
    );
}

/// A SunSpec battery whose 704 (controls) is an older, shorter revision that
/// ends before `WSet`, with the 802 (battery) model right after it, served
/// by the register-bank server: the daemon neither reads `WSet` out of 802
/// nor writes a setpoint into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_sunspec_model_is_neither_read_nor_written_past_its_declared_end() {
    let lib = Arc::new(ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}")));
    let model = |id: u16| {
        lib.sunspec(id)
            .cloned()
            .unwrap_or_else(|| panic!("model {id}"))
    };
    let (m1, m704, m802) = (model(1), model(704), model(802));
    let wset = m704.point("WSet").map(|p| p.offset).unwrap_or_default();
    let short = wset - 2;
    let mut words = vec![0x5375, 0x6E53];
    for (m, id, len) in [(&m1, 1u16, m1.length), (&m704, 704, short)] {
        let mut b = vec![0u16; usize::from(len) + 2];
        let n = b.len().min(usize::from(m.block_len()));
        m.fill_unimplemented(&mut b[..n]);
        b[0] = id;
        b[1] = len;
        words.extend(b);
    }
    let at802 = 40000 + words.len() as u16;
    let mut b802 = vec![0u16; usize::from(m802.block_len())];
    m802.fill_unimplemented(&mut b802);
    b802[0] = 802;
    b802[1] = m802.length;
    for (p, v) in [("SoC_SF", 0), ("SoC", 55), ("WHRtg", 200)] {
        m802.encode_raw(&mut b802, p, v)
            .unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    words.extend(b802);
    words.extend([0xFFFF, 0]);
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, 40000, words.len() as u16, true);
    bank.set(Table::Holding, 40000, &words);
    let bank = Arc::new(std::sync::Mutex::new(bank));
    let served = common::serve_local(
        std::collections::HashMap::from([(1u8, bank.clone())]),
        Default::default(),
        false,
    )
    .await;
    let addr = served.addr;

    let toml = format!(
        "{}{}{}",
        head(),
        pv_and_household(),
        battery(&addr.to_string(), "")
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = common::load_site(&lib, dir.path(), &toml);
    let clock = ped::clock::Clock::simulated(common::at("2025-06-21T21:30:00+02:00"), 60.0);
    let daemon =
        common::start_daemon(site, lib.clone(), clock, dir.path().join("out"), false).await;
    let started = Instant::now();
    let readings = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let plan = daemon.shared.status().plan.is_some();
        let r = daemon.shared.status().devices["BAT"].readings.clone();
        if plan && r.contains_key("soc_pct") && started.elapsed() > Duration::from_secs(2) {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no plan or no reading of BAT: {r:?}"
        );
    };
    let text = daemon.shared.metrics.render();
    daemon.shutdown().await;
    assert_eq!(readings.get("soc_pct"), Some(&55.0), "{readings:?}");
    assert_eq!(
        readings.get("setpoint_kw"),
        None,
        "WSet is past the declared 704, read out of 802: {readings:?}"
    );
    let written = bank.lock().unwrap_or_else(|e| e.into_inner()).take_writes();
    assert!(
        written
            .iter()
            .all(|(a, w)| u32::from(*a) + w.len() as u32 <= u32::from(at802)),
        "a write landed in model 802 (from {at802}): {written:?}"
    );
    assert!(
        common::metric_sum(
            &text,
            "ped_setpoint_writes_total",
            &["device=\"BAT\"", "result=\"refused\""]
        ) >= 1.0,
        "{text}"
    );
}
