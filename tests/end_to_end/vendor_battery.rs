//! A device type added as data only: a battery with SMA-style native control
//! registers (`models/vendor/sma_battery.toml`) named in a site config, read
//! and controlled through the generic battery binding, over real Modbus TCP.
//! No Rust code knows this map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common;
use ped::devices::{self, Command};
use ped::modbus::server::SharedBank;
use ped::modbus::ModbusClient;
use ped::registers::{ModelLibrary, Table};

const UNIT: u8 = 3;

#[tokio::test]
async fn vendor_battery_map_is_read_and_controlled_without_code() {
    let _serial = common::serial().await;
    let lib = ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let map = lib
        .get("vendor/sma_battery")
        .unwrap_or_else(|| panic!("vendor/sma_battery"));

    // The device: SMA register numbers, only the registers of the map's points exist.
    let mut block = vec![0u16; usize::from(map.block_len())];
    let ok = |r: Result<(), ped::registers::RegisterError>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(map.encode_f64(&mut block, "power_kw", 12.5)); // discharging 12.5 kW (device convention)
    ok(map.encode_f64(&mut block, "soc_pct", 64.0));
    ok(map.encode_f64(&mut block, "import_kwh", 5120.0));
    ok(map.encode_f64(&mut block, "export_kwh", 4410.5));
    ok(map.encode_raw(&mut block, "mode", 803));
    // The setpoint that has it discharge 12.5 kW, also in the device's convention.
    ok(map.encode_f64(&mut block, "power_setpoint_kw", 12.5));
    let bank: SharedBank = Arc::new(Mutex::new(common::map_bank(map, &block)));
    let served = common::serve_local(
        HashMap::from([(UNIT, bank.clone())]),
        Default::default(),
        false,
    )
    .await;
    let addr = served.addr;

    // The site config names the map; `ped check`'s validation accepts it.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = common::load_site(
        &lib,
        dir.path(),
        &format!(
            r#"
[site]
id = "vendor-battery"
name = "vendor battery"
latitude = 47.3
longitude = 5.0

[control]
writes_allowed = true

[[devices]]
id = "BAT"
kind = "battery"
address = "{addr}"
unit = {UNIT}
map = "vendor/sma_battery"
sign = "generation_positive"
writes = ["mode", "power_setpoint_kw"]
prm = "99990000000009"
participant = "BAT-P"
capacity_kwh = 200.0
max_charge_kw = 50.0
max_discharge_kw = 50.0

[[devices]]
id = "PV"
kind = "pv_inverter"
address = "{addr}"
unit = 1
prm = "99990000000001"
kwp = 100.0

[[participants]]
id = "BAT-P"
kind = "battery"
prm = "99990000000009"
meter = "BAT"
"#
        ),
    );
    let dev = &site.config.devices[0];
    assert_eq!(dev.id, "BAT");

    // Poll: the plan reads only the points' registers (no read spans the
    // 30775..40152 hole, which this device would answer with an exception).
    let blocks = devices::blocks_for(dev, &lib, &[]);
    let plan = devices::poll_plan(dev, &lib, blocks).unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.reads.iter().all(|r| r.len <= 125));
    assert!(plan.reads.len() >= 3, "{:?}", plan.reads);
    let mut client = ModbusClient::connect(addr, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut answers = Vec::new();
    for r in &plan.reads {
        answers.push(
            client
                .read(UNIT, r.table, r.addr, r.len)
                .await
                .unwrap_or_else(|e| panic!("{r:?}: {e}")),
        );
    }
    let read = devices::assemble(&plan, &lib, &answers);
    let readings = devices::decode_readings(dev, &lib, &read).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(readings.get("soc_pct"), Some(&64.0));
    // Generation-positive device, ped's convention: discharging is negative.
    assert_eq!(readings.get("power_kw"), Some(&-12.5));
    // The setpoint reads in the same convention as the power it sets.
    assert_eq!(readings.get("setpoint_kw"), Some(&-12.5));
    assert_eq!(readings.get("import_kwh"), Some(&5120.0));
    assert_eq!(readings.get("export_kwh"), Some(&4410.5));

    // Control: charge 20 kW. The mode point's named value (802) is written,
    // the setpoint in the device's convention (negative = charge) and W.
    let writes = devices::command_writes(dev, &lib, &read, Command::BatteryPower(20.0))
        .unwrap_or_else(|e| panic!("{e}"));
    for w in &writes {
        client
            .write(UNIT, w.addr, &w.words, map.write)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let back = client
            .read(UNIT, Table::Holding, w.addr, w.words.len() as u16)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            devices::readback_matches(&lib, &read, w, &back).ok(),
            Some(true)
        );
    }
    let regs = |a: u16, n: u16| {
        bank.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(Table::Holding, a, n)
    };
    assert_eq!(regs(40151, 2), vec![0, 802]);
    let setpoint = ((u32::from(regs(40149, 2)[0]) << 16) | u32::from(regs(40149, 2)[1])) as i32;
    assert_eq!(setpoint, -20_000);

    // Release: back to the device's own control (803).
    let writes = devices::command_writes(dev, &lib, &read, Command::Release)
        .unwrap_or_else(|e| panic!("{e}"));
    for w in &writes {
        client
            .write(UNIT, w.addr, &w.words, map.write)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(regs(40151, 2), vec![0, 803]);

    // A point outside `writes` is refused before anything reaches the wire.
    let mut locked = dev.clone();
    locked.writes = vec!["mode".into()];
    assert!(matches!(
        devices::command_writes(&locked, &lib, &read, Command::BatteryPower(5.0)),
        Err(devices::CommandError::NotAllowed { .. })
    ));
}
