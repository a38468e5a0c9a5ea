//! The control safety envelope at daemon level, over real sockets: a site with
//! a PV inverter, a consumer meter and a battery driven through its vendor map
//! (`vendor/sma_battery`), writes allowed. The plan wants to charge the battery
//! from the PV surplus; the envelope must hold the written setpoints inside the
//! configured bounds and ramp, count a device that ignores writes as read-back
//! mismatches, and hand the battery back to its own control on stop.

use crate::common::{self, lock, ok};
use ped::clock::Clock;
use ped::modbus::server::{Bank, Faults, SharedBank, SharedFaults};
use ped::registers::{ModelLibrary, RegisterMap, Table};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RAMP_KW_PER_S: f64 = 1.0;
const MAX_KW: f64 = 3.0;
const MIN_KW: f64 = -2.0;

fn sunspec(lib: &ModelLibrary, model: u16, fill: impl Fn(&RegisterMap, &mut [u16])) -> Bank {
    let common = lib.sunspec(1).unwrap_or_else(|| panic!("1"));
    let m = lib.sunspec(model).unwrap_or_else(|| panic!("{model}"));
    let mut c = vec![0u16; usize::from(common.block_len())];
    common.fill_unimplemented(&mut c);
    ok(common.encode_raw(&mut c, "ID", 1));
    ok(common.encode_raw(&mut c, "L", i64::from(common.length)));
    let mut b = vec![0u16; usize::from(m.block_len())];
    m.fill_unimplemented(&mut b);
    ok(m.encode_raw(&mut b, "ID", i64::from(model)));
    ok(m.encode_raw(&mut b, "L", i64::from(m.length)));
    fill(m, &mut b);
    let mut image = vec![0x5375, 0x6E53];
    image.extend_from_slice(&c);
    image.extend_from_slice(&b);
    image.extend_from_slice(&[0xFFFF, 0]);
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, 40000, image.len() as u16, false);
    bank.set(Table::Holding, 40000, &image);
    bank
}

async fn serve_one(bank: SharedBank, unit: u8, faults: SharedFaults) -> (String, common::Served) {
    let served = common::serve_local(HashMap::from([(unit, bank)]), faults, false).await;
    (served.addr.to_string(), served)
}

fn i32_at(bank: &SharedBank, addr: u16) -> i32 {
    let w = lock(bank).get(Table::Holding, addr, 2);
    ((u32::from(w[0]) << 16) | u32::from(w[1])) as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setpoints_stay_inside_bounds_and_ramp_and_are_released_on_stop() {
    let _serial = common::serial().await;
    let lib = Arc::new(ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}")));

    // PV: 40 kW, counter running; consumer meter: 5 kW. A big surplus to store.
    let pv = Arc::new(Mutex::new(sunspec(&lib, 103, |m, b| {
        ok(m.encode_raw(b, "W_SF", 1));
        ok(m.encode_f64(b, "W", 40_000.0));
        ok(m.encode_raw(b, "WH_SF", 0));
        ok(m.encode_f64(b, "WH", 1_000_000.0));
    })));
    let meter = Arc::new(Mutex::new(sunspec(&lib, 203, |m, b| {
        ok(m.encode_raw(b, "W_SF", 0));
        ok(m.encode_f64(b, "W", 5_000.0));
        ok(m.encode_raw(b, "TotWh_SF", 0));
        ok(m.encode_f64(b, "TotWhImp", 500_000.0));
        ok(m.encode_f64(b, "TotWhExp", 1.0));
    })));
    // Battery: SMA-style native registers, only its points exist.
    let map = lib
        .get("vendor/sma_battery")
        .unwrap_or_else(|| panic!("vendor/sma_battery"));
    let mut block = vec![0u16; usize::from(map.block_len())];
    ok(map.encode_f64(&mut block, "power_kw", 0.0));
    ok(map.encode_f64(&mut block, "soc_pct", 50.0));
    ok(map.encode_f64(&mut block, "import_kwh", 100.0));
    ok(map.encode_f64(&mut block, "export_kwh", 90.0));
    ok(map.encode_raw(&mut block, "mode", 803));
    let bat = Arc::new(Mutex::new(common::map_bank(map, &block)));
    let none = || -> SharedFaults { Arc::new(Mutex::new(Faults::default())) };
    let bat_faults = none();
    let (pv_addr, _s1) = serve_one(pv.clone(), 1, none()).await;
    let (meter_addr, _s2) = serve_one(meter.clone(), 1, none()).await;
    let (bat_addr, _s3) = serve_one(bat.clone(), 3, bat_faults.clone()).await;

    let toml = format!(
        r#"
{head}
[plan]
budget_ms = 10000
{pv}{meter}
[[devices]]
id = "BAT"
kind = "battery"
address = "{bat_addr}"
unit = 3
map = "vendor/sma_battery"
sign = "generation_positive"
writes = ["mode", "power_setpoint_kw"]
prm = "99990000000002"
participant = "BAT-P"
capacity_kwh = 100.0
max_charge_kw = 50.0
max_discharge_kw = 50.0
setpoint_min_kw = {MIN_KW}
setpoint_max_kw = {MAX_KW}
ramp_kw_per_s = {RAMP_KW_PER_S}
revert_timeout_s = 1.5
{participants}"#,
        head = common::site_head("control", "control envelope"),
        pv = common::pv_toml(&pv_addr, 60.0),
        meter = common::meter_toml(&meter_addr),
        participants = common::participants_toml(40000.0),
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = common::load_site(&lib, dir.path(), &toml);
    let clock = Clock::simulated(common::at("2025-06-21T12:00:00+02:00"), 60.0);
    let daemon =
        common::start_daemon(site, lib.clone(), clock, dir.path().join("out"), false).await;
    let shared = daemon.shared.clone();

    // Record every setpoint written, with the real time it was seen.
    let started = Instant::now();
    let mut written: Vec<(f64, f64)> = Vec::new(); // (seconds since start, kW in ped's convention)
    let mut first_write: Option<f64> = None;
    while started.elapsed() < Duration::from_millis(4_500) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = started.elapsed().as_secs_f64();
        for (addr, words) in lock(&bat).take_writes() {
            if addr == 40149 && words.len() == 2 {
                let raw = ((u32::from(words[0]) << 16) | u32::from(words[1])) as i32;
                // Device convention: positive = discharge; ped's: positive = charge.
                written.push((t, -f64::from(raw) / 1000.0));
                first_write.get_or_insert(t);
            }
        }
    }
    assert_eq!(
        i32_at(&bat, 40151),
        802,
        "the battery was not taken into remote control"
    );
    assert!(written.len() >= 3, "setpoints written: {written:?}");
    let first = first_write.unwrap_or(0.0);
    for (t, kw) in &written {
        assert!(
            (MIN_KW - 1e-9..=MAX_KW + 1e-9).contains(kw),
            "{kw} kW written at {t:.2} s, outside [{MIN_KW}, {MAX_KW}]"
        );
        // Ramp from 0 at the first write: never faster than the limit (plus one
        // poll interval of slack for when the write landed).
        assert!(
            kw.abs() <= RAMP_KW_PER_S * (t - first + 0.25) + 1e-6,
            "{kw} kW at {t:.2} s ramps faster than {RAMP_KW_PER_S} kW/s: {written:?}"
        );
    }
    let text = shared.metrics.render();
    let count = |name: &str, label: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        count("ped_setpoint_clamped_total", "limit=\"ramp\"") >= 1.0,
        "{text}"
    );
    assert_eq!(
        count("ped_setpoint_readback_mismatch_total", "device=\"BAT\""),
        0.0
    );

    // A device that acknowledges writes but ignores them: read-back catches it.
    lock(&bat_faults).ignore_writes = true;
    lock(&bat).set(Table::Holding, 40151, &[0, 803]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let text = shared.metrics.render();
    let mismatches: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("ped_setpoint_readback_mismatch_total") && l.contains("device=\"BAT\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(mismatches >= 1.0, "ignored writes not detected:\n{text}");
    lock(&bat_faults).ignore_writes = false;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(i32_at(&bat, 40151), 802, "control not re-established");

    // Lost contact: the battery reverts by its own watchdog; when it answers
    // again ped takes control afresh and ramps from 0, not from the old value.
    lock(&bat_faults).drop_connections = true;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    lock(&bat).take_writes();
    lock(&bat).set(Table::Holding, 40151, &[0, 803]);
    lock(&bat).set(Table::Holding, 40149, &[0, 0]);
    lock(&bat_faults).drop_connections = false;
    let back = Instant::now();
    let mut after: Vec<(f64, f64)> = Vec::new();
    while back.elapsed() < Duration::from_millis(2_500) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        for (addr, words) in lock(&bat).take_writes() {
            if addr == 40149 && words.len() == 2 {
                let raw = ((u32::from(words[0]) << 16) | u32::from(words[1])) as i32;
                after.push((back.elapsed().as_secs_f64(), -f64::from(raw) / 1000.0));
            }
        }
    }
    let text = shared.metrics.render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("ped_device_releases_total")
                && l.contains("reason=\"contact_lost\"")
                && !l.ends_with(" 0")),
        "{text}"
    );
    let (t0, kw0) = after.first().copied().unwrap_or_else(|| {
        let bat: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("BAT") && !l.starts_with("ped_device_read_duration"))
            .collect();
        panic!("no write after recovery:\n{}", bat.join("\n"))
    });
    assert!(
        kw0.abs() <= RAMP_KW_PER_S * 0.25 + 1e-6,
        "first setpoint after lost contact {kw0} kW at {t0:.2} s: not ramped from 0 ({after:?})"
    );
    assert_eq!(
        i32_at(&bat, 40151),
        802,
        "control not re-established after contact"
    );

    // Stop: the battery goes back to its own control.
    daemon.shutdown().await;
    assert_eq!(i32_at(&bat, 40151), 803, "not released on stop");
    let text = shared.metrics.render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("ped_device_releases_total")
                && l.contains("reason=\"stop\"")
                && l.ends_with(" 1")),
        "{text}"
    );
}
