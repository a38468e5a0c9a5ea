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

#[tokio::test]
async fn scan_external_sunspec_peer() {
    let Some(addr) = std::env::var("PED_SUNSPEC_PEER")
        .ok()
        .and_then(|s| s.parse::<SocketAddr>().ok())
    else {
        panic!("set PED_SUNSPEC_PEER=host:port");
    };
    let lib = ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let mut client = ModbusClient::connect(addr, Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
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
