//! End to end through real sockets: the simulator serves the whole Fontaine
//! d'Ouche site over Modbus TCP on 127.0.0.1, the daemon polls it, plans,
//! writes setpoints back, closes settlement periods and writes DSO key files;
//! `/metrics` is read over HTTP. A few simulated hours at high speed.

use ped::allocation::{apply_rule, Precision};
use ped::clock::Clock;
use ped::dso::enedis;
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::sync::Arc;
use std::time::Duration;

use crate::common;

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let out = common::http_get(addr, path, Some(Duration::from_secs(5)))
        .unwrap_or_else(|| panic!("GET {path} from ped's HTTP server failed"));
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

fn metric_value(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_district_end_to_end() {
    let _serial = common::serial().await;
    let lib = Arc::new(ModelLibrary::embedded().unwrap());
    let site = common::shipped_site(&lib, "site-configs/fontaine-douche.toml");
    let out = tempfile::tempdir().unwrap();

    // 11:00 local on midsummer day: PV surplus, so batteries charge and keys matter.
    let origin = common::at("2025-06-21T11:00:00+02:00");
    let speed = 900.0; // a quarter-hour per second, when the machine keeps up
    let clock = Clock::paced(origin, speed);
    let sim = Simulator::start(&site, lib.clone(), clock, 2025, true)
        .await
        .unwrap();
    let daemon = common::start_daemon(sim.site.clone(), lib, clock, out.path(), false).await;
    let http = daemon.http_addr;
    // Simulated time moves only while every device has been read in the last
    // five simulated minutes: however loaded the machine, each period is
    // measured from samples inside it.
    let pacer = common::pace_site(clock, daemon.shared.clone(), &site);

    // Three simulated hours and a bit for the last period to close.
    let until = origin + chrono::Duration::minutes(195);
    let mut battery_moved = false;
    let started = std::time::Instant::now();
    while clock.now() < until {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "simulated time stuck at {}: a device is never read",
            clock.now()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let truth = sim.truth.borrow().clone();
        battery_moved |= truth.battery_kw.values().any(|kw| kw.abs() > 1.0);
    }
    let (code, metrics) = tokio::task::spawn_blocking(move || http_get(http, "/metrics"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let (ready, _) = tokio::task::spawn_blocking(move || http_get(http, "/ready"))
        .await
        .unwrap();
    let (_, status) = tokio::task::spawn_blocking(move || http_get(http, "/status.json"))
        .await
        .unwrap();
    pacer.abort();
    daemon.shutdown().await;

    // Every device was read over TCP.
    for d in &site.config.devices {
        let reads = metric_value(
            &metrics,
            "ped_device_reads_total",
            &format!("device=\"{}\"", d.id),
        )
        .unwrap_or(0.0);
        assert!(reads >= 1.0, "device {} never read", d.id);
    }
    assert_eq!(ready, 200, "/ready should be 200 after polls and a plan");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(
        status["pv_kw"].as_f64().unwrap() > 100.0,
        "midday PV: {status}"
    );

    // The batteries followed the plan's setpoints (written over Modbus).
    assert!(battery_moved, "no battery ever moved");
    assert!(
        metric_value(&metrics, "ped_setpoint_writes_total", "result=\"ok\"").unwrap_or(0.0) >= 1.0
    );

    // Period records: energies add up and the keys respect the DSO's rule.
    let ledger = std::fs::read_to_string(out.path().join("ledger/periods.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() >= 10, "only {} periods closed", records.len());
    let precision = Precision {
        units_per_one: site.config.keys.units_per_one,
    };
    for r in &records {
        let p = r["total_production_kwh"].as_f64().unwrap();
        let sc = r["self_consumed_kwh"].as_f64().unwrap();
        let sp = r["surplus_kwh"].as_f64().unwrap();
        assert!(
            (p - sc - sp).abs() < 1e-6,
            "production {p} != self-consumed {sc} + surplus {sp}"
        );
        assert!(sc <= r["total_consumption_kwh"].as_f64().unwrap() + 1e-9);
        let units: Vec<u32> = r["key_units"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_u64().unwrap() as u32)
            .collect();
        assert!(
            units.iter().sum::<u32>() <= precision.units_per_one,
            "keys sum over 100 %"
        );
        let cons: Vec<f64> = site
            .config
            .participants
            .iter()
            .map(|q| {
                r["consumption_kwh"][&q.id]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{} missing from {r}", q.id))
            })
            .collect();
        let alloc = apply_rule(&units, precision, p, &cons);
        let total: f64 = alloc.iter().sum();
        assert!(
            (total - sc).abs() < 1e-6,
            "DSO rule gives {total}, record says {sc}"
        );
        for (a, c) in alloc.iter().zip(&cons) {
            assert!(*a <= c + 1e-9);
        }
        // Floor rounding costs at most one unit of production per consumer.
        let bound = p * cons.len() as f64 / f64::from(precision.units_per_one);
        assert!(
            sc + bound + 1e-9 >= p.min(cons.iter().sum()),
            "rounding lost more than its bound"
        );
        // The clock waits for the polls, so every period has its samples.
        assert_eq!(r["quality"], "measured", "{r}");
    }
    // Real production: midday in June on 1.9 MWp.
    let pv_total: f64 = records
        .iter()
        .map(|r| r["total_production_kwh"].as_f64().unwrap())
        .sum();
    assert!(pv_total > 500.0, "only {pv_total} kWh produced");

    // One key file per producer, a row per closed period, valid by the format's own validator.
    let day_dir = out.path().join("keys/2025-06-21");
    let files: Vec<_> = std::fs::read_dir(&day_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), site.producers().len());
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let report = enedis::validate(&text, &site.grid, precision).unwrap();
        assert_eq!(report.rows.len(), records.len(), "{}", f.display());
        assert_eq!(report.consumers.len(), site.config.participants.len());
    }

    // The metric families energy managers rely on.
    for family in [
        "ped_build_info",
        "ped_device_up",
        "ped_device_errors_total",
        "ped_device_read_duration_seconds_bucket",
        "ped_device_power_watts",
        "ped_device_energy_joules_total",
        "ped_battery_state_of_charge_ratio",
        "ped_temperature_celsius",
        "ped_heat_power_watts",
        "ped_plan_solve_duration_seconds_bucket",
        "ped_plan_objective_euros",
        "ped_plan_age_seconds",
        "ped_self_consumption_ratio",
        "ped_self_sufficiency_ratio",
        "ped_period_production_joules",
        "ped_participant_allocated_energy_joules_total",
        "ped_key_files_written_total",
        "ped_key_files_validated_total",
        "ped_key_files_last_written_timestamp_seconds",
        "ped_participant_key_ratio",
        "ped_plan_next_setpoint_watts",
        "ped_ready",
        "ped_heat_meter_flow_cubic_meters_per_second",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(family)),
            "metric family {family} missing"
        );
    }
    assert_eq!(metric_value(&metrics, "ped_ready", "site="), Some(1.0));
    // Every file written passed the validator; none failed it.
    let written = metric_value(&metrics, "ped_key_files_written_total", "format=\"enedis\"");
    assert!(written.unwrap_or(0.0) >= 1.0);
    // (ok is counted right after written: a scrape in between sees one period's files fewer.)
    let ok = metric_value(&metrics, "ped_key_files_validated_total", "result=\"ok\"").unwrap();
    let lag = written.unwrap() - ok;
    assert!(
        lag == 0.0 || lag == site.producers().len() as f64,
        "{ok} files validated, {written:?} written"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "ped_key_files_validated_total",
            "result=\"invalid\""
        ),
        Some(0.0)
    );
    // The next planned setpoint of each battery and power-to-heat unit.
    for d in &site.config.devices {
        if matches!(d.kind.as_str(), "battery" | "power_to_heat") {
            assert!(
                metric_value(
                    &metrics,
                    "ped_plan_next_setpoint_watts",
                    &format!("device=\"{}\"", d.id)
                )
                .is_some(),
                "no planned setpoint for {}",
                d.id
            );
        }
    }
    // Batteries and power-to-heat are participants of the plan: each has its
    // planned allocation in the metrics and on the status page, attached to
    // its device.
    let listed = status["plan"]["device_participants"].as_array().unwrap();
    for q in &site.config.participants {
        let device = matches!(q.kind.as_str(), "battery" | "power_to_heat");
        assert!(
            metric_value(
                &metrics,
                "ped_plan_allocation_joules",
                &format!("participant=\"{}\"", q.id)
            )
            .is_some(),
            "no planned allocation for {}",
            q.id
        );
        let shown = listed
            .iter()
            .find(|d| d["participant"].as_str() == Some(q.id.as_str()));
        assert_eq!(shown.is_some(), device, "{}: {listed:?}", q.id);
        if let Some(d) = shown {
            let kind = site
                .config
                .devices
                .iter()
                .find(|x| Some(x.id.as_str()) == d["device"].as_str())
                .map(|x| x.kind.as_str());
            assert_eq!(kind, Some(q.kind.as_str()), "{d}");
            assert!(d["horizon_kwh"].as_f64().unwrap() >= 0.0, "{d}");
        }
    }
    // Keys by participant, in the status and the metrics, are those of the
    // record of the period each says is the last (a period may close between
    // the two reads, so each is matched to its own record).
    let units_of = |r: &serde_json::Value| -> Vec<f64> {
        r["key_units"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_u64().unwrap() as f64 / f64::from(precision.units_per_one))
            .collect()
    };
    let by_local = records
        .iter()
        .find(|r| r["start_local"] == status["last_period"])
        .expect("status's last period is in the ledger");
    let metric_start = metric_value(&metrics, "ped_period_start_timestamp_seconds", "").unwrap();
    let at_metric = records
        .iter()
        .position(|r| {
            chrono::DateTime::parse_from_rfc3339(r["start"].as_str().unwrap())
                .unwrap()
                .timestamp() as f64
                == metric_start
        })
        .expect("the metrics' last period is in the ledger");
    // A scrape is not atomic with a period's close: each participant's gauge
    // holds the keys of that period or of a neighbour.
    let near: Vec<Vec<f64>> = records
        [at_metric.saturating_sub(1)..(at_metric + 2).min(records.len())]
        .iter()
        .map(units_of)
        .collect();
    let keys = status["last_keys_by_participant"].as_array().unwrap();
    assert_eq!(keys.len(), site.config.participants.len());
    let from_status = units_of(by_local);
    for (i, (p, k)) in site.config.participants.iter().zip(keys).enumerate() {
        assert_eq!(k["participant"], p.id.as_str());
        assert!((k["key_ratio"].as_f64().unwrap() - from_status[i]).abs() < 1e-12);
        let m = metric_value(
            &metrics,
            "ped_participant_key_ratio",
            &format!("participant=\"{}\"", p.id),
        )
        .unwrap();
        assert!(
            near.iter().any(|u| (m - u[i]).abs() < 1e-12),
            "{}: {m}, keys around that period {:?}",
            p.id,
            near.iter().map(|u| u[i]).collect::<Vec<_>>()
        );
    }
    // (Under load a poll may time out: count, don't require all.)
    let up = status["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["up"] == true)
        .count();
    assert!(up > 0);
    assert_eq!(status["devices_up"].as_u64(), Some(up as u64));
    assert_eq!(
        status["devices_total"].as_u64(),
        Some(site.config.devices.len() as u64)
    );

    // The README's metric catalogue lists every family ped exports, with its type.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let catalogue: std::collections::HashMap<&str, &str> = readme
        .lines()
        .filter(|l| l.starts_with("| `ped_"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            Some((cols.get(1)?.trim_matches('`'), *cols.get(2)?))
        })
        .collect();
    for l in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut it = l["# TYPE ".len()..].split_whitespace();
        let (name, kind) = (it.next().unwrap(), it.next().unwrap());
        assert_eq!(
            catalogue.get(name),
            Some(&kind),
            "{name} ({kind}) is missing from README.md's metric catalogue or has another type there"
        );
    }
    drop(sim);
}
