//! Modbus RTU on a serial port, without hardware: a pseudo-terminal pair made
//! in-process (openpty through tokio-serial), the register banks served as RTU
//! devices on the master side, ped opening the slave side by its path exactly
//! as it opens /dev/ttyUSB0.
//!
//! - The client: reads and writes on several unit ids of one line, keeps the
//!   configured silence between frames, and a unit that never answers costs
//!   one timeout and a re-open, not the line.
//! - The daemon against ped's simulator: a PV inverter and two meters on one
//!   simulated line read the values the simulator intends, while a dead unit
//!   on the same line degrades only itself.

mod common;

use ped::clock::Clock;
use ped::modbus::server::{serve_rtu_serial, Bank, SharedBank, SharedFaults};
use ped::modbus::{ModbusClient, ModbusError, SerialLine};
use ped::registers::{ModelLibrary, Table, WriteMode};
use ped::simulator::Simulator;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_serial::SerialPort as _;

fn bank(seed: u16) -> SharedBank {
    let mut b = Bank::new();
    b.map_range(Table::Holding, 100, 10, true);
    b.set(
        Table::Holding,
        100,
        &(0..10).map(|i| seed + i).collect::<Vec<_>>(),
    );
    b.map_range(Table::Input, 300, 4, false);
    b.set(Table::Input, 300, &[seed, seed * 2, 7, 9]);
    Arc::new(Mutex::new(b))
}

fn line(path: &str, silence: Duration) -> SerialLine {
    SerialLine {
        path: path.to_string(),
        baud: 19_200,
        parity: tokio_serial::Parity::Even,
        data_bits: tokio_serial::DataBits::Eight,
        stop_bits: tokio_serial::StopBits::One,
        silence,
    }
}

#[tokio::test]
async fn one_serial_line_serves_several_units_and_a_silent_one_costs_only_its_timeout() {
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap_or_else(|e| panic!("{e}"));
    let path = slave.name().unwrap_or_else(|| panic!("pty without a name"));
    let units = HashMap::from([(1u8, bank(1000)), (2u8, bank(2000))]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_rtu_serial(
        master,
        units.clone(),
        SharedFaults::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let silence = Duration::from_millis(15);
    let l = line(&path, silence);
    let mut c =
        ModbusClient::open_serial(&l, Duration::from_millis(300)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.peer(), path);
    let t0 = Instant::now();
    let a = c.read(1, Table::Holding, 100, 10).await;
    let b = c.read(2, Table::Holding, 100, 10).await;
    let i = c.read(2, Table::Input, 300, 4).await;
    assert_eq!(a, Ok((1000..1010).collect::<Vec<u16>>()));
    assert_eq!(b, Ok((2000..2010).collect::<Vec<u16>>()));
    assert_eq!(i, Ok(vec![2000, 4000, 7, 9]));
    // Three requests, each after the line's silence.
    assert!(t0.elapsed() >= silence * 3, "{:?}", t0.elapsed());

    // Function 16 on unit 1, function 06 (single-write device) on unit 2.
    c.write(1, 102, &[11, 12, 13], WriteMode::Multiple)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.write(2, 105, &[55, 56], WriteMode::SingleOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let unit1 = units.get(&1).map(|b| {
        b.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(Table::Holding, 102, 3)
    });
    assert_eq!(unit1, Some(vec![11, 12, 13]));
    assert_eq!(c.read(2, Table::Holding, 105, 2).await, Ok(vec![55, 56]));
    // A register the device does not have: an exception, the link stays usable.
    let e = c.read(1, Table::Holding, 500, 1).await;
    assert!(
        matches!(e, Err(ModbusError::Exception { code: 2, .. })),
        "{e:?}"
    );
    assert!(c.is_usable());

    // Unit 9 is not on the bus: nothing answers, the request times out, and
    // the port is re-opened (exclusively: the old handle must go first).
    let t = Instant::now();
    let dead = c.read(9, Table::Holding, 100, 1).await;
    assert_eq!(dead, Err(ModbusError::Timeout));
    // At its own 300 ms timeout, not hanging: the bound is loose so that a
    // loaded machine cannot fail it, and still far below "never".
    assert!(
        t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    assert!(!c.is_usable());
    c.close();
    let mut c =
        ModbusClient::open_serial(&l, Duration::from_millis(300)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.read(1, Table::Input, 300, 2).await, Ok(vec![1000, 2000]));
    drop(c);
    let _ = stop.send(());
    let _ = server.await;
    drop(slave);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reads_simulated_devices_on_a_serial_line_and_a_dead_unit_degrades_alone() {
    let lib = Arc::new(ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}")));
    // Both meters on the line, at their units, with the line's settings.
    let meter = |id: &str, unit: u8, participant: &str| {
        format!(
            "[[devices]]\nid = \"{id}\"\nkind = \"meter\"\naddress = \"/dev/ped-test-rs485\"\n\
             transport = \"rtu\"\nunit = {unit}\nparticipant = \"{participant}\"\n\
             serial = {{ baud = 115200, parity = \"none\", stop_bits = 2 }}\n"
        )
    };
    let toml = format!(
        r#"
[site]
id = "serial"
name = "one RS-485 line"
latitude = 47.32
longitude = 5.0

[polling]
interval_ms = 100
timeout_ms = 150

[[devices]]
id = "PV"
kind = "pv_inverter"
address = "/dev/ped-test-rs485"
transport = "rtu"
unit = 1
prm = "99990000000001"
kwp = 30.0
serial = {{ baud = 115200, parity = "none", stop_bits = 2 }}

{m1}
{m2}
[[participants]]
id = "P1"
kind = "household"
prm = "99990000000011"
meter = "M1"
annual_kwh = 40000.0

[[participants]]
id = "P2"
kind = "office"
prm = "99990000000012"
meter = "M2"
annual_kwh = 90000.0
"#,
        m1 = meter("M1", 2, "P1"),
        m2 = meter("M2", 3, "P2"),
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = common::load_site(&lib, dir.path(), &toml);
    // Simulated time all but stands still (a microsecond per second), so the
    // values the simulator intends do not move while the daemon reads them.
    let clock = Clock::simulated(common::at("2025-06-21T13:00:00+02:00"), 1e-6);
    let sim = Simulator::start(&site, lib.clone(), clock, 11, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let line_path = sim.site.config.devices[0].address.clone();
    assert!(line_path.starts_with("/dev/pts/"), "{line_path}");

    // The daemon also expects a fourth device on the line that is not there.
    let mut daemon_site = sim.site.clone();
    let mut dead = daemon_site.config.devices[0].clone();
    dead.id = "PV-DEAD".into();
    dead.unit = 9;
    dead.prm = Some("99990000000002".parse().unwrap_or_else(|e| panic!("{e:?}")));
    daemon_site.config.devices.push(dead);

    let daemon = common::start_daemon(
        daemon_site,
        lib.clone(),
        clock,
        dir.path().join("out"),
        true,
    )
    .await;
    let shared = daemon.shared.clone();
    let reads = |text: &str, id: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("ped_device_reads_total") && l.contains(&format!("device=\"{id}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before = shared.metrics.render();
    let window = Duration::from_millis(3_000);
    tokio::time::sleep(window).await;
    let after = shared.metrics.render();
    let truth = sim.truth.borrow().clone();
    let (pv, m1, m2, dead_up) = {
        let st = shared.status();
        let get = |id: &str, key: &str| {
            st.devices
                .get(id)
                .and_then(|d| d.readings.get(key).copied())
        };
        (
            get("PV", "production_kw"),
            get("M1", "power_kw"),
            get("M2", "power_kw"),
            st.devices.get("PV-DEAD").map(|d| d.up),
        )
    };
    daemon.shutdown().await;

    // Values: what the simulator put in the registers, to their resolution.
    let pv = pv.unwrap_or_else(|| panic!("no PV reading"));
    assert!(truth.pv_kw > 1.0, "midday PV expected: {truth:?}");
    assert!(
        (pv - truth.pv_kw).abs() < 0.01,
        "PV {pv} kW, simulator {}",
        truth.pv_kw
    );
    let load = m1.unwrap_or(f64::NAN) + m2.unwrap_or(f64::NAN);
    assert!(
        (load - truth.load_kw).abs() < 0.01,
        "meters {m1:?} + {m2:?} kW, simulator {}",
        truth.load_kw
    );

    // The dead unit is down and timed out; the others kept their rate: each
    // poll reads every planned block, one poll every 100 ms.
    assert_ne!(dead_up, Some(true));
    let timeouts: f64 = after
        .lines()
        .filter(|l| {
            l.starts_with("ped_device_errors_total")
                && l.contains("device=\"PV-DEAD\"")
                && l.contains("kind=\"timeout\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(timeouts >= 2.0, "{after}");
    for id in ["PV", "M1", "M2"] {
        let n = reads(&after, id) - reads(&before, id);
        let polls = window.as_secs_f64() / 0.1;
        // At least 60 % of the undisturbed rate (one read request per poll).
        assert!(
            n >= 0.6 * polls,
            "{id}: {n} reads in {window:?} (nominal {polls})\n{after}"
        );
    }
    assert_eq!(reads(&after, "PV-DEAD"), 0.0);
    drop(sim);
}
