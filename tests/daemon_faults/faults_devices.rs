//! Device faults at daemon level, over real sockets: a small site whose devices
//! are served by `modbus::server::serve_with_faults` and driven by this test
//! (power and energy counters follow the simulated clock), with the daemon
//! polling them. Faults are injected and lifted while it runs:
//!
//! - a dead unit id behind a live gateway (never answers: timeouts),
//! - a device that refuses connections, then comes up,
//! - one that stops answering mid-run (connections dropped), then recovers,
//! - a slow one (answers late but inside the timeout),
//! - exception codes for a while,
//! - connections dropped between request and response,
//! - a scale factor that changes at run time (the value must not jump),
//! - a counter that resets,
//! - a "not implemented" sentinel.
//!
//! Each time: the healthy devices keep their poll rate, the faulty one is
//! polled again once it is back, and the period records hold no wrong number
//! (a missing or reset counter flags the period and its energy is left out).

use crate::common::{self, lock, ok};
use ped::clock::Clock;
use ped::daemon::{Daemon, Options};
use ped::modbus::server::{Bank, Faults, SharedBank, SharedFaults};
use ped::registers::{ModelLibrary, RegisterMap, Table};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const INTERVAL_MS: u64 = 100;
/// A quarter-hour per real second when the machine keeps up.
const SPEED: f64 = 900.0;
/// The paced clock's step in real time (9 simulated seconds).
const TICK: Duration = Duration::from_millis(10);
/// How old a healthy device's last reading may be for the clock to move on.
const LEAD_S: i64 = 45;
const METER_KW: f64 = 10.0;
const PV_KW: f64 = 30.0;

/// A SunSpec device image at 40000: marker, model 1, `model`, end marker.
/// Returns the bank and the address of `model`'s ID register.
fn sunspec_device(lib: &ModelLibrary, model: u16) -> (Bank, u16) {
    let common = lib.sunspec(1).unwrap_or_else(|| panic!("model 1"));
    let m = lib
        .sunspec(model)
        .unwrap_or_else(|| panic!("model {model}"));
    let mut c = vec![0u16; usize::from(common.block_len())];
    common.fill_unimplemented(&mut c);
    ok(common.encode_raw(&mut c, "ID", 1));
    ok(common.encode_raw(&mut c, "L", i64::from(common.length)));
    ok(common.encode_string(&mut c, "Mn", "ped-test"));
    let mut b = vec![0u16; usize::from(m.block_len())];
    m.fill_unimplemented(&mut b);
    ok(m.encode_raw(&mut b, "ID", i64::from(model)));
    ok(m.encode_raw(&mut b, "L", i64::from(m.length)));
    let mut image = vec![0x5375, 0x6E53];
    image.extend_from_slice(&c);
    let at = 40000 + image.len() as u16;
    image.extend_from_slice(&b);
    image.extend_from_slice(&[0xFFFF, 0]);
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, 40000, image.len() as u16, false);
    bank.set(Table::Holding, 40000, &image);
    (bank, at)
}

/// One served endpoint and its faults.
struct Endpoint {
    addr: String,
    faults: SharedFaults,
    _served: common::Served,
}

async fn serve_on(
    listener: TcpListener,
    units: HashMap<u8, SharedBank>,
    faults: SharedFaults,
) -> Endpoint {
    let served = common::serve_faulty(listener, units, faults.clone());
    Endpoint {
        addr: served.addr.to_string(),
        faults,
        _served: served,
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"))
}

/// What the driver writes into a device's registers each tick.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Meter,
    Pv,
}

struct Driven {
    id: &'static str,
    role: Role,
    bank: SharedBank,
    block_at: u16,
    /// Added to the counter (kWh): a reset sets it so the counter restarts near 0.
    offset_kwh: f64,
    /// W_SF currently in force on the device.
    w_sf: i16,
}

fn write_values(lib: &ModelLibrary, d: &Driven, hours: f64) {
    let (map, kw, counter): (&RegisterMap, f64, &str) = match d.role {
        Role::Meter => (ok_map(lib, 203), METER_KW, "TotWhImp"),
        Role::Pv => (ok_map(lib, 103), PV_KW, "WH"),
    };
    let mut bank = lock(&d.bank);
    let mut block = bank.get(Table::Holding, d.block_at, map.block_len());
    ok(map.encode_raw(&mut block, "W_SF", i64::from(d.w_sf)));
    ok(map.encode_f64(&mut block, "W", kw * 1000.0));
    let sf = if d.role == Role::Meter {
        "TotWh_SF"
    } else {
        "WH_SF"
    };
    ok(map.encode_raw(&mut block, sf, 0));
    // Counters in Wh, starting well above 0 (0 is the accumulator sentinel).
    let kwh = 1000.0 + kw * hours + d.offset_kwh;
    ok(map.encode_f64(&mut block, counter, (kwh * 1000.0).round()));
    if d.role == Role::Meter {
        ok(map.encode_raw(&mut block, "TotWhExp", 1));
    }
    bank.set(Table::Holding, d.block_at, &block);
}

fn ok_map(lib: &ModelLibrary, id: u16) -> &RegisterMap {
    lib.sunspec(id).unwrap_or_else(|| panic!("model {id}"))
}

fn metric(text: &str, name: &str, device: &str) -> f64 {
    let label = format!("device=\"{device}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_devices_degrade_alone_and_recover() {
    let _serial = common::serial().await;
    let lib = Arc::new(ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}")));

    // Devices: (id, role). Gateway G carries a healthy meter and a dead unit.
    let mut driven: Vec<Driven> = Vec::new();
    let mut bank_for = |id: &'static str, role: Role| -> SharedBank {
        let (bank, at) = sunspec_device(&lib, if role == Role::Pv { 103 } else { 203 });
        let shared = Arc::new(Mutex::new(bank));
        driven.push(Driven {
            id,
            role,
            bank: shared.clone(),
            block_at: at,
            offset_kwh: 0.0,
            w_sf: 0,
        });
        shared
    };
    let one = |b: SharedBank| HashMap::from([(1u8, b)]);
    let fresh = || -> SharedFaults { Arc::new(Mutex::new(Faults::default())) };

    let pv = serve_on(bind().await, one(bank_for("PV", Role::Pv)), fresh()).await;
    let gw_units = HashMap::from([
        (1u8, bank_for("M-OK", Role::Meter)),
        (2u8, bank_for("M-DEAD", Role::Meter)),
    ]);
    let gw = serve_on(bind().await, gw_units, fresh()).await;
    // The refusing device: a port bound but not listening, so connections
    // are refused and no other process can take the port before the device
    // comes up on it.
    let refuse_socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    refuse_socket
        .bind("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let refuse_addr = refuse_socket.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let mut refuse_socket = Some(refuse_socket);
    let refuse_bank = bank_for("M-REFUSE", Role::Meter);
    let stop = serve_on(bind().await, one(bank_for("M-STOP", Role::Meter)), fresh()).await;
    let slow = serve_on(bind().await, one(bank_for("M-SLOW", Role::Meter)), fresh()).await;
    let exc = serve_on(bind().await, one(bank_for("M-EXC", Role::Meter)), fresh()).await;
    let drop_ep = serve_on(bind().await, one(bank_for("M-DROP", Role::Meter)), fresh()).await;
    let reset = serve_on(bind().await, one(bank_for("M-RESET", Role::Meter)), fresh()).await;

    lock(&gw.faults).silent_units = vec![2];
    lock(&slow.faults).delay = Some(Duration::from_millis(60));

    let meters = [
        ("M-OK", gw.addr.clone(), 1),
        ("M-DEAD", gw.addr.clone(), 2),
        ("M-REFUSE", refuse_addr.to_string(), 1),
        ("M-STOP", stop.addr.clone(), 1),
        ("M-SLOW", slow.addr.clone(), 1),
        ("M-EXC", exc.addr.clone(), 1),
        ("M-DROP", drop_ep.addr.clone(), 1),
        ("M-RESET", reset.addr.clone(), 1),
    ];
    let mut toml = format!(
        r#"
[site]
id = "faults"
name = "fault injection"
latitude = 47.32
longitude = 5.0

[polling]
interval_ms = {INTERVAL_MS}
timeout_ms = 250
max_backoff_ms = 1000

[plan]
budget_ms = 10000

[[devices]]
id = "PV"
kind = "pv_inverter"
address = "{}"
prm = "99990000000001"
kwp = 100.0
"#,
        pv.addr
    );
    for (i, (id, addr, unit)) in meters.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[devices]]\nid = \"{id}\"\nkind = \"meter\"\naddress = \"{addr}\"\nunit = {unit}\nparticipant = \"P{i}\"\n"
        ));
    }
    for (i, (id, _, _)) in meters.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[participants]]\nid = \"P{i}\"\nkind = \"household\"\nprm = \"999900000001{i:02}\"\nmeter = \"{id}\"\nannual_kwh = 3000.0\nstatic_share = 0.1\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = common::load_site(&lib, dir.path(), &toml);

    let origin = chrono::DateTime::parse_from_rfc3339("2025-06-21T11:00:00+02:00")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    // Simulated time moves in steps of TICK × SPEED, and only while each
    // healthy device has a reading at most LEAD old: a stalled machine stops
    // the clock instead of stretching the gap between polls.
    let clock = Clock::paced(origin, SPEED);
    let step = clock.clock_duration(TICK);
    let lead = chrono::Duration::seconds(LEAD_S);
    let hours = move || (clock.now() - origin).num_milliseconds() as f64 / 3.6e6;
    for d in &driven {
        write_values(&lib, d, 0.0);
    }
    let out = dir.path().join("out");
    let daemon = Daemon::start(
        site,
        lib.clone(),
        clock,
        Options {
            dry_run: true,
            output_dir: Some(out.clone()),
            http_listen: Some("127.0.0.1:0".into()),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let metrics = || daemon.shared.metrics.render();
    let healthy: Vec<String> = ["M-OK", "PV", "M-RESET", "M-SLOW"]
        .map(String::from)
        .to_vec();

    // Timeline in simulated periods: faults from period 2, lifted at 4.5, end
    // at 9.5 once the devices that came back have been read a few times.
    let period_s = 900.0;
    let at_period =
        |p: f64| origin + chrono::Duration::milliseconds((p * period_s * 1000.0) as i64);
    let started = Instant::now();
    let mut phase = 0;
    let mut refuse_ep: Option<Endpoint> = None;
    let mut reads_at_phase: Vec<(f64, f64)> = Vec::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "simulated time stuck at {}: a healthy device is never read",
            clock.now()
        );
        let now = clock.now();
        if now >= at_period(9.5) && phase == 2 {
            let m = metrics();
            let back =
                |id: &str, before: f64| metric(&m, "ped_device_reads_total", id) >= before + 5.0;
            if back("M-STOP", reads_at_phase[1].0)
                && back("M-EXC", reads_at_phase[1].1)
                && back("M-DROP", reads_at_phase[2].0)
                && back("M-REFUSE", 0.0)
            {
                break;
            }
        }
        if common::read_within(&daemon.shared, clock, &healthy, lead) {
            clock.step(step);
        }
        let h = hours();
        for d in driven.iter_mut() {
            if d.id == "M-RESET" && phase >= 2 && d.offset_kwh == 0.0 {
                // The meter was replaced: its counter restarts near 0.
                d.offset_kwh = -1000.0 - METER_KW * h + 1.0;
            }
            if d.id == "PV" {
                // The inverter changes its W scale factor at run time.
                d.w_sf = if phase % 2 == 1 { 1 } else { 0 };
            }
            write_values(&lib, d, h);
        }
        let now = clock.now();
        if phase == 0 && now >= at_period(2.0) {
            phase = 1;
            lock(&stop.faults).drop_connections = true;
            lock(&exc.faults).exception = Some(0x04);
            lock(&drop_ep.faults).drop_before_answer = true;
            let m = metrics();
            reads_at_phase.push((
                metric(&m, "ped_device_reads_total", "M-OK"),
                metric(&m, "ped_device_reads_total", "M-REFUSE"),
            ));
        } else if phase == 1 && now >= at_period(4.5) {
            phase = 2;
            // Everything comes back; the refusing device comes up for the first time.
            for f in [&stop.faults, &exc.faults, &drop_ep.faults] {
                *lock(f) = Faults::default();
            }
            let l = refuse_socket
                .take()
                .unwrap_or_else(|| panic!("the refusing device comes up once"))
                .listen(64)
                .unwrap_or_else(|e| panic!("listen on {refuse_addr}: {e}"));
            refuse_ep = Some(serve_on(l, one(refuse_bank.clone()), fresh()).await);
            let m = metrics();
            reads_at_phase.push((
                metric(&m, "ped_device_reads_total", "M-STOP"),
                metric(&m, "ped_device_reads_total", "M-EXC"),
            ));
            reads_at_phase.push((
                metric(&m, "ped_device_reads_total", "M-DROP"),
                metric(&m, "ped_device_reads_total", "M-REFUSE"),
            ));
        }
        tokio::time::sleep(TICK).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let text = metrics();
    let status = daemon.shared.status().devices.clone();
    daemon.shutdown().await;
    drop(refuse_ep);

    let reads = |id: &str| metric(&text, "ped_device_reads_total", id);
    let errors = |id: &str, kind: &str| {
        let label = format!("device=\"{id}\",kind=\"{kind}\"");
        text.lines()
            .filter(|l| l.starts_with("ped_device_errors_total") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    for (id, _, _) in &meters {
        eprintln!(
            "{id}: {} reads, errors timeout {} connection {} exception {}",
            reads(id),
            errors(id, "timeout"),
            errors(id, "connection"),
            errors(id, "exception")
        );
    }

    // The healthy meter, behind the same gateway as a dead unit, keeps the
    // rate of the PV, alone on its endpoint and polled on the same interval
    // in the same run (the baseline, whatever this machine's load): each
    // dead-unit timeout costs it at most one delayed poll per backoff period.
    let baseline = reads("PV");
    assert!(
        baseline >= 20.0,
        "PV read {baseline} times in {elapsed:.1} s"
    );
    for id in ["M-OK", "M-RESET"] {
        assert!(
            reads(id) >= 0.6 * baseline,
            "{id}: {} reads against {baseline} for the PV\n{text}",
            reads(id)
        );
    }
    // The dead unit: never read, timeouts counted, and polled far less often than
    // the interval thanks to its backoff.
    assert_eq!(reads("M-DEAD"), 0.0);
    let dead_timeouts = errors("M-DEAD", "timeout");
    assert!(dead_timeouts >= 2.0, "dead unit timeouts: {dead_timeouts}");
    assert!(
        dead_timeouts <= baseline / 4.0,
        "dead unit retried {dead_timeouts} times in {elapsed:.1} s: no backoff?"
    );
    // Refused, then up: connection errors first, reads after it came up.
    assert!(errors("M-REFUSE", "connection") >= 1.0);
    assert_eq!(
        reads_at_phase[0].1, 0.0,
        "refusing device read before it existed"
    );
    assert!(
        reads("M-REFUSE") >= 5.0,
        "M-REFUSE never recovered: {}",
        reads("M-REFUSE")
    );
    // Stopped answering mid-run, exceptions, dropped before the answer: errors of
    // the right kind, then polled again after recovery.
    assert!(errors("M-STOP", "connection") + errors("M-STOP", "timeout") >= 1.0);
    assert!(errors("M-EXC", "exception") >= 1.0);
    assert!(errors("M-DROP", "connection") + errors("M-DROP", "timeout") >= 1.0);
    let (stop_at_2, exc_at_2) = reads_at_phase[1];
    let (drop_at_2, _) = reads_at_phase[2];
    assert!(reads("M-STOP") >= stop_at_2 + 5.0, "M-STOP did not recover");
    assert!(reads("M-EXC") >= exc_at_2 + 5.0, "M-EXC did not recover");
    assert!(reads("M-DROP") >= drop_at_2 + 5.0, "M-DROP did not recover");
    // Slow but inside the timeout: read at its own pace, not treated as dead
    // (a stalled machine may stretch one answer past the timeout, never most).
    assert!(
        reads("M-SLOW") >= 0.3 * baseline,
        "M-SLOW: {} reads against {baseline}",
        reads("M-SLOW")
    );
    assert!(
        errors("M-SLOW", "timeout") * 10.0 <= reads("M-SLOW"),
        "M-SLOW timed out {} times",
        errors("M-SLOW", "timeout")
    );

    // The scale factor changed under the daemon: the value did not jump.
    let pv_kw = status
        .get("PV")
        .and_then(|d| d.readings.get("production_kw").copied());
    assert_eq!(pv_kw, Some(PV_KW), "PV power after scale-factor changes");
    // 103's DCW is "not implemented" (0x8000): no reading, not a number.
    assert!(status
        .get("PV")
        .is_some_and(|d| !d.readings.contains_key("dc_kw")));

    // The period records: every measured energy is right, unknown ones are absent.
    let ledger = std::fs::read_to_string(out.join("ledger/periods.jsonl"))
        .unwrap_or_else(|e| panic!("ledger: {e}"));
    let records: Vec<serde_json::Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(records.len() >= 5, "{} periods closed", records.len());
    let per_period = METER_KW * 0.25;
    // A sample's time can run ahead of its counter by at most LEAD plus two
    // clock steps (the clock waits for the healthy devices beyond that, and
    // the counters are written one step after it moves): that bounds a
    // period's error by construction, whatever the machine's load.
    let lag_h = (LEAD_S as f64 + 2.0 * step.num_milliseconds() as f64 / 1000.0) / 3600.0;
    let tolerance = METER_KW * lag_h + 1e-3;
    let mut ok_total = (0.0, 0);
    let mut reset_flagged = false;
    for r in &records {
        let quality = r["quality"].as_str().unwrap_or("");
        reset_flagged |= quality.contains("M-RESET") && quality.contains("reset")
            || quality.contains("M-RESET: import_kwh went backwards");
        let cons = r["consumption_kwh"]
            .as_object()
            .unwrap_or_else(|| panic!("{r}"));
        for (pid, v) in cons {
            let v = v.as_f64().unwrap_or(f64::NAN);
            assert!(
                (v - per_period).abs() < tolerance,
                "{pid}: {v} kWh archived in {}, expected {per_period} ± {tolerance:.3} ({quality})",
                r["start_local"]
            );
            if pid == "P0" {
                ok_total.0 += v;
                ok_total.1 += 1;
            }
        }
        // The dead unit never has a number.
        assert!(!cons.contains_key("P1"), "dead meter archived: {r}");
        assert!(
            quality != "measured",
            "a period with a dead meter is flagged: {r}"
        );
        if let Some(p) = r["production_kwh"]["PV"].as_f64() {
            assert!(
                (p - PV_KW * 0.25).abs() < PV_KW * lag_h + 1e-3,
                "PV {p} kWh"
            );
        }
    }
    // Over consecutive periods the lags cancel except at both ends: the
    // healthy meter's total is right to within one lag.
    let (sum, n) = ok_total;
    assert!(n >= 5, "M-OK in {n} periods");
    assert!(
        (sum - n as f64 * per_period).abs() < tolerance,
        "M-OK: {sum} kWh over {n} periods, expected {}",
        n as f64 * per_period
    );
    assert!(
        reset_flagged,
        "the counter reset was not flagged:\n{ledger}"
    );
}
