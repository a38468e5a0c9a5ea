//! RTU framing over TCP (a transparent serial gateway): ped's client against
//! tokio-modbus's RTU-over-TCP server carrying the same register bank, over
//! real sockets. A serial port cannot be tested here; the frames are the same.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ped::modbus::server::{Bank, Faults, SharedFaults};
use ped::modbus::{discover, Framing, ModbusClient, ModbusError};
use ped::registers::{ModelLibrary, Table, WriteMode};

async fn rtu_server(bank: Bank) -> (std::net::SocketAddr, common::Served) {
    let units = HashMap::from([(7u8, Arc::new(Mutex::new(bank)))]);
    let faults: SharedFaults = Arc::new(Mutex::new(Faults::default()));
    let served = common::serve_local(units, faults, true).await;
    (served.addr, served)
}

fn inverter_bank() -> Bank {
    let lib = ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let inv = lib.sunspec(103).unwrap_or_else(|| panic!("103"));
    let ok = |r: Result<(), ped::registers::RegisterError>| r.unwrap_or_else(|e| panic!("{e}"));
    let mut i = vec![0u16; usize::from(inv.block_len())];
    ok(inv.encode_raw(&mut i, "ID", 103));
    ok(inv.encode_raw(&mut i, "L", i64::from(inv.length)));
    ok(inv.encode_raw(&mut i, "W_SF", -1));
    ok(inv.encode_f64(&mut i, "W", 1234.5));
    let mut image = vec![0x5375, 0x6E53];
    image.extend_from_slice(&i);
    image.extend_from_slice(&[0xFFFF, 0]);
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, 40000, image.len() as u16, false);
    bank.set(Table::Holding, 40000, &image);
    bank.map_range(Table::Holding, 100, 4, true);
    bank
}

#[tokio::test]
async fn rtu_frames_over_tcp_discover_read_and_write() {
    let (addr, _stop) = rtu_server(inverter_bank()).await;
    let mut c = ModbusClient::connect_framed(addr, Duration::from_secs(2), Framing::Rtu)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let models = discover(&mut c, 7).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(models.len(), 1);
    assert_eq!((models[0].id, models[0].addr), (103, 40002));
    let lib = ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let inv = lib.sunspec(103).unwrap_or_else(|| panic!("103"));
    let block = c
        .read(7, Table::Holding, models[0].addr, inv.block_len())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inv.decode_f64(&block, "W").ok().flatten(), Some(1234.5));

    c.write(7, 100, &[1, 2, 3], WriteMode::Multiple)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.write(7, 103, &[9], WriteMode::SingleOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let back = c
        .read(7, Table::Holding, 100, 4)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, vec![1, 2, 3, 9]);

    // An exception travels in RTU framing too, and leaves the link usable.
    let e = c.read(7, Table::Holding, 5000, 1).await.err();
    assert!(
        matches!(e, Some(ModbusError::Exception { code: 0x02, .. })),
        "{e:?}"
    );
    assert!(c.is_usable());
}

#[tokio::test]
async fn tcp_framing_against_an_rtu_gateway_fails_instead_of_misreading() {
    let (addr, _stop) = rtu_server(inverter_bank()).await;
    let mut c = ModbusClient::connect_framed(addr, Duration::from_millis(500), Framing::Tcp)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = c.read(7, Table::Holding, 40000, 2).await;
    assert!(
        r.is_err(),
        "MBAP frames to an RTU gateway must not succeed: {r:?}"
    );
    assert!(
        !c.is_usable(),
        "the link must be dropped after a framing failure"
    );
}
