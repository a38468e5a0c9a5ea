//! Our client against an independently written SunSpec peer (pymodbus serving an
//! image built from the official JSON models): `reference/sunspec_peer_check.py
//! --serve --port N`, then
//! `PED_SUNSPEC_PEER=127.0.0.1:N cargo test --features peer-tests --test sunspec_peer`.
//! Built only with the `peer-tests` feature because it needs Python, pymodbus and
//! that script: `scripts/sunspec-peer.sh` installs them and runs it (from `.ci/run`).

use std::net::SocketAddr;
use std::time::Duration;

use ped::modbus::{discover, ModbusClient};
use ped::registers::{ModelLibrary, Table, WriteMode};

/// The peer's address (`PED_SUNSPEC_PEER`), the embedded maps and a client
/// of the peer.
async fn peer() -> (SocketAddr, ModelLibrary, ModbusClient) {
    let Some(addr) = std::env::var("PED_SUNSPEC_PEER")
        .ok()
        .and_then(|s| s.parse::<SocketAddr>().ok())
    else {
        panic!("set PED_SUNSPEC_PEER=host:port");
    };
    let lib = ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let client = ModbusClient::connect(addr, Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (addr, lib, client)
}

#[tokio::test]
async fn scan_external_sunspec_peer() {
    let (_, lib, mut client) = peer().await;
    let models = discover(&mut client, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<u16> = models.iter().map(|m| m.id).collect();
    assert_eq!(ids.first(), Some(&1), "{ids:?}");
    assert_eq!(models[0].addr, 40002);

    let read = |id: u16| {
        let m = models
            .iter()
            .find(|m| m.id == id)
            .copied()
            .unwrap_or_else(|| panic!("peer lacks model {id}"));
        let map = lib.sunspec(id).unwrap_or_else(|| panic!("no map {id}"));
        assert!(
            m.len >= map.length,
            "model {id}: L {} < {}",
            m.len,
            map.length
        );
        (m, map)
    };
    let (m103, inv) = read(103);
    let (m123, ctl) = read(123);
    let (m802, bat) = read(802);
    let (m203, meter) = read(203);
    let (m1, common) = read(1);

    let b = block(&mut client, m1.addr, common.block_len()).await;
    assert_eq!(
        common.decode_string(&b, "Mn").ok().flatten().as_deref(),
        Some("PeerCorp")
    );
    let b = block(&mut client, m103.addr, inv.block_len()).await;
    let v = |n: &str| inv.decode_f64(&b, n).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v("W"), Some(1234.5));
    assert_eq!(v("Hz"), Some(50.01));
    assert_eq!(v("WH"), Some(9_876_540.0));
    assert_eq!(v("VA"), None);
    let b = block(&mut client, m203.addr, meter.block_len()).await;
    assert_eq!(meter.decode_f64(&b, "W").ok().flatten(), Some(-1500.0));
    let b = block(&mut client, m802.addr, bat.block_len()).await;
    assert_eq!(bat.decode_f64(&b, "SoC").ok().flatten(), Some(65.5));
    assert_eq!(bat.decode_f64(&b, "W").ok().flatten(), Some(-2000.0));

    // Curtail to 50 % with the scale factor read just before, as the daemon must.
    let b = block(&mut client, m123.addr, ctl.block_len()).await;
    let sf = ctl
        .decode_f64(&b, "WMaxLimPct_SF")
        .ok()
        .flatten()
        .unwrap_or(0.0) as i16;
    let (off, words) = ctl
        .setpoint_words("WMaxLimPct", 50.0, sf)
        .unwrap_or_else(|e| panic!("{e}"));
    client
        .write(1, m123.addr + off, &words, WriteMode::Multiple)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = client
        .read(1, Table::Holding, m123.addr, ctl.block_len())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ctl.decode_f64(&b, "WMaxLimPct").ok().flatten(), Some(50.0));
}

async fn block(client: &mut ModbusClient, addr: u16, len: u16) -> Vec<u16> {
    client
        .read(1, Table::Holding, addr, len)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The daemon's own path against the peer: discovery, the coalesced poll plan,
/// decoding through the device bindings, and curtailment through
/// `command_writes` with read-back, for a PV inverter and a meter.
#[tokio::test]
async fn poll_plan_and_control_against_external_peer() {
    use ped::devices::{self, Command};
    let (addr, lib, mut client) = peer().await;
    let found: Vec<(u16, u16)> = discover(&mut client, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|m| (m.id, m.addr))
        .collect();
    let cfg = |kind: &str, writes: &str| -> ped::config::DeviceConfig {
        toml::from_str(&format!(
            "id = \"D\"\nkind = \"{kind}\"\naddress = \"{addr}\"\nwrites = [{writes}]\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let pv = cfg("pv_inverter", "\"WMaxLimPct\", \"WMaxLim_Ena\"");
    let meter = cfg("meter", "");
    let (plan, read, r) = poll(&mut client, &lib, &found, &pv).await;
    // 103, 120 and 123 follow each other in the peer's chain: fewer reads than blocks.
    assert!(plan.reads.len() < plan.blocks.len(), "{:?}", plan.reads);
    assert_eq!(r.get("production_kw"), Some(&1.2345));
    assert_eq!(r.get("production_kwh"), Some(&9876.54));
    let (_, _, m) = poll(&mut client, &lib, &found, &meter).await;
    assert_eq!(m.get("power_kw"), Some(&-1.5));

    let writes = devices::command_writes(&pv, &lib, &read, Command::PvLimitPct(40.0))
        .unwrap_or_else(|e| panic!("{e}"));
    for w in &writes {
        client
            .write(1, w.addr, &w.words, WriteMode::Multiple)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let back = client
            .read(1, Table::Holding, w.addr, w.words.len() as u16)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            devices::readback_matches(&lib, &read, w, &back).ok(),
            Some(true),
            "{}",
            w.point
        );
    }
    let (_, _, r) = poll(&mut client, &lib, &found, &pv).await;
    assert_eq!(r.get("limit_pct"), Some(&40.0));
}

async fn poll(
    client: &mut ModbusClient,
    lib: &ModelLibrary,
    found: &[(u16, u16)],
    dev: &ped::config::DeviceConfig,
) -> (
    ped::devices::PollPlan,
    Vec<(ped::devices::Block, Vec<u16>)>,
    ped::devices::Readings,
) {
    use ped::devices;
    let plan = devices::poll_plan(dev, lib, devices::blocks_for(dev, lib, found))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(plan.reads.iter().all(|r| r.len <= 125));
    let mut answers = Vec::new();
    for r in &plan.reads {
        answers.push(
            client
                .read(1, r.table, r.addr, r.len)
                .await
                .unwrap_or_else(|e| panic!("{r:?}: {e}")),
        );
    }
    let read = devices::assemble(&plan, lib, &answers);
    let readings = devices::decode_readings(dev, lib, &read).unwrap_or_else(|e| panic!("{e}"));
    (plan, read, readings)
}
