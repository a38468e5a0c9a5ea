//! The client, discovery and server against each other over real TCP on 127.0.0.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ped::modbus::server::{serve, Bank, Faults, SharedBank, SharedFaults};
use ped::modbus::{discover, DiscoveredModel, ModbusClient, ModbusError};
use ped::registers::{ModelLibrary, RegisterMap, Table, WriteMode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

mod common;

const TIMEOUT: Duration = Duration::from_secs(2);
const UNIT: u8 = 1;

async fn start(units: HashMap<u8, SharedBank>, faults: SharedFaults) -> common::Served {
    common::serve_local(units, faults, false).await
}

fn library() -> ModelLibrary {
    ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"))
}

fn model(lib: &ModelLibrary, id: u16) -> &RegisterMap {
    lib.sunspec(id).unwrap_or_else(|| panic!("model {id}"))
}

/// Model 1 + model 103 at `base`, then the end marker unless `end_marker` is false.
fn sunspec_bank(base: u16, end_marker: bool) -> Bank {
    let lib = library();
    let common = model(&lib, 1);
    let inv = model(&lib, 103);
    let ok = |r: Result<(), ped::registers::RegisterError>| r.unwrap_or_else(|e| panic!("{e}"));

    let mut c = vec![0u16; usize::from(common.block_len())];
    ok(common.encode_raw(&mut c, "ID", 1));
    ok(common.encode_raw(&mut c, "L", i64::from(common.length)));
    ok(common.encode_string(&mut c, "Mn", "ped"));
    ok(common.encode_string(&mut c, "Md", "loopback"));

    let mut i = vec![0u16; usize::from(inv.block_len())];
    ok(inv.encode_raw(&mut i, "ID", 103));
    ok(inv.encode_raw(&mut i, "L", i64::from(inv.length)));
    ok(inv.encode_raw(&mut i, "W_SF", 1));
    ok(inv.encode_f64(&mut i, "W", 4520.0));
    ok(inv.encode_raw(&mut i, "WH_SF", 0));
    ok(inv.encode_f64(&mut i, "WH", 123_456.0));
    ok(inv.encode_raw(&mut i, "Hz_SF", -2));
    ok(inv.encode_f64(&mut i, "Hz", 50.01));
    ok(inv.encode_raw(&mut i, "DCW", -32768));

    let mut image = vec![0x5375, 0x6E53];
    image.extend_from_slice(&c);
    image.extend_from_slice(&i);
    if end_marker {
        image.extend_from_slice(&[0xFFFF, 0]);
    }
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, base, image.len() as u16, false);
    bank.set(Table::Holding, base, &image);
    bank
}

fn units(bank: Bank) -> (HashMap<u8, SharedBank>, SharedBank) {
    let shared = Arc::new(Mutex::new(bank));
    (HashMap::from([(UNIT, Arc::clone(&shared))]), shared)
}

/// `bank` served as unit [`UNIT`], with the bank as it changes and a client
/// connected to it.
async fn client_of(bank: Bank) -> (common::Served, SharedBank, ModbusClient) {
    let (u, shared) = units(bank);
    let server = start(u, SharedFaults::default()).await;
    let client = connect(server.addr).await;
    (server, shared, client)
}

async fn connect(addr: SocketAddr) -> ModbusClient {
    ModbusClient::connect(addr, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

#[tokio::test]
async fn discover_and_decode_inverter() {
    let (_server, _, mut client) = client_of(sunspec_bank(40000, true)).await;

    let models = discover(&mut client, UNIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        models,
        vec![
            DiscoveredModel {
                id: 1,
                addr: 40002,
                len: 66
            },
            DiscoveredModel {
                id: 103,
                addr: 40070,
                len: 50
            },
        ]
    );

    let lib = library();
    let inv = model(&lib, 103);
    let block = client
        .read(UNIT, Table::Holding, models[1].addr, inv.block_len())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let val = |n: &str| inv.decode_f64(&block, n).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(val("W"), Some(4520.0));
    assert_eq!(val("WH"), Some(123_456.0));
    assert_eq!(val("Hz"), Some(50.01));
    assert_eq!(val("DCW"), None, "0x8000 means not implemented");

    let common = model(&lib, 1);
    let block = client
        .read(UNIT, Table::Holding, models[0].addr, common.block_len())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        common.decode_string(&block, "Md").ok().flatten().as_deref(),
        Some("loopback")
    );
}

#[tokio::test]
async fn discovery_falls_back_to_base_0_and_ends_at_exception() {
    // Nothing mapped at 40000, and the chain stops without an end marker.
    let (_server, _, mut client) = client_of(sunspec_bank(0, false)).await;
    let models = discover(&mut client, UNIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<u16> = models.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 103]);
    assert_eq!(models[0].addr, 2);
}

#[tokio::test]
async fn discovery_without_marker_is_a_protocol_error() {
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, 40000, 10, false);
    let (_server, _, mut client) = client_of(bank).await;
    let err = discover(&mut client, UNIT).await.err();
    assert!(matches!(err, Some(ModbusError::Protocol(_))), "{err:?}");
}

#[tokio::test]
async fn long_reads_are_split_into_125_word_requests() {
    let mut bank = Bank::new();
    let words: Vec<u16> = (0..300u16).map(|i| i.wrapping_mul(7)).collect();
    bank.map_range(Table::Input, 1000, 300, false);
    bank.set(Table::Input, 1000, &words);
    let (_server, _, mut client) = client_of(bank).await;
    let got = client
        .read(UNIT, Table::Input, 1000, 300)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, words);
    // The server refuses more than 125 in one request, so success proves the split.
    let err = client.read(UNIT, Table::Holding, 1000, 1).await.err();
    assert_eq!(
        err,
        Some(ModbusError::Exception {
            function: 3,
            code: 2
        })
    );
}

#[tokio::test]
async fn writes_with_function_16_and_06_reach_the_bank() {
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, 100, 10, true);
    bank.map_range(Table::Holding, 110, 2, false);
    let (_server, shared, mut client) = client_of(bank).await;

    client
        .write(UNIT, 100, &[1, 2, 3], WriteMode::Multiple)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client
        .write(UNIT, 105, &[7, 8], WriteMode::SingleOnly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client
        .write(UNIT, 109, &[9], WriteMode::Multiple)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let writes = shared
        .lock()
        .map(|mut b| b.take_writes())
        .unwrap_or_default();
    assert_eq!(
        writes,
        vec![
            (100, vec![1, 2, 3]),
            (105, vec![7]),
            (106, vec![8]),
            (109, vec![9]),
        ]
    );
    let regs = shared
        .lock()
        .map(|b| b.get(Table::Holding, 100, 10))
        .unwrap_or_default();
    assert_eq!(regs, vec![1, 2, 3, 0, 0, 7, 8, 0, 0, 9]);

    let err = client
        .write(UNIT, 109, &[1, 1], WriteMode::Multiple)
        .await
        .err();
    assert_eq!(
        err,
        Some(ModbusError::Exception {
            function: 0x10,
            code: 2
        })
    );
    let err = client
        .write(UNIT, 110, &[1], WriteMode::SingleOnly)
        .await
        .err();
    assert_eq!(
        err,
        Some(ModbusError::Exception {
            function: 0x06,
            code: 2
        })
    );
    assert!(shared
        .lock()
        .map(|mut b| b.take_writes().is_empty())
        .unwrap_or(false));
}

#[tokio::test]
async fn unmapped_reads_and_unknown_units_are_exceptions() {
    let (_server, _, mut client) = client_of(sunspec_bank(40000, true)).await;
    let err = client.read(UNIT, Table::Holding, 30000, 2).await.err();
    assert_eq!(
        err,
        Some(ModbusError::Exception {
            function: 3,
            code: 2
        })
    );
    let e = err.unwrap_or(ModbusError::Timeout);
    assert_eq!(e.kind(), "exception");
    // An exception leaves the connection usable.
    assert!(client.read(UNIT, Table::Holding, 40000, 2).await.is_ok());
    let err = client.read(7, Table::Holding, 40000, 2).await.err();
    assert_eq!(
        err,
        Some(ModbusError::Exception {
            function: 3,
            code: 0x0B
        })
    );
}

#[tokio::test]
async fn closed_port_fails_fast_with_connection_error() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    };
    // A refused connection answers at once: the error must come long before
    // the 60 s connect timeout, however loaded the machine is.
    let started = Instant::now();
    let err = ModbusClient::connect(addr, Duration::from_secs(60))
        .await
        .err();
    assert!(matches!(err, Some(ModbusError::Connect(_))), "{err:?}");
    assert_eq!(err.map(|e| e.kind()), Some("connection"));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn silent_server_gives_timeout_and_poisons_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    // Accepts and holds the connection, never answering.
    let holder = tokio::spawn(async move {
        let conn = listener.accept().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(conn);
    });
    let mut client = ModbusClient::connect(addr, Duration::from_millis(300))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let err = client.read(UNIT, Table::Holding, 0, 1).await.err();
    let elapsed = started.elapsed();
    assert_eq!(err, Some(ModbusError::Timeout));
    // The client's own 300 ms timeout, not the holder's 60 s: loose enough for
    // a loaded machine.
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(20),
        "{elapsed:?}"
    );
    assert!(!client.is_usable());
    let err = client.read(UNIT, Table::Holding, 0, 1).await.err();
    assert!(matches!(err, Some(ModbusError::Io(_))), "{err:?}");
    holder.abort();
}

#[tokio::test]
async fn injected_faults_delay_exception_and_drop() {
    let (u, _) = units(sunspec_bank(40000, true));
    let faults: SharedFaults = Arc::new(Mutex::new(Faults::default()));
    let server = start(u, Arc::clone(&faults)).await;

    let mut client = connect(server.addr).await;
    if let Ok(mut f) = faults.lock() {
        f.exception = Some(0x06);
    }
    let err = client.read(UNIT, Table::Holding, 40000, 2).await.err();
    assert_eq!(
        err,
        Some(ModbusError::Exception {
            function: 3,
            code: 6
        })
    );

    if let Ok(mut f) = faults.lock() {
        *f = Faults {
            delay: Some(Duration::from_millis(500)),
            ..Faults::default()
        };
    }
    client.set_timeout(Duration::from_millis(100));
    let err = client.read(UNIT, Table::Holding, 40000, 2).await.err();
    assert_eq!(err, Some(ModbusError::Timeout));

    if let Ok(mut f) = faults.lock() {
        *f = Faults {
            drop_connections: true,
            ..Faults::default()
        };
    }
    let mut client = connect(server.addr).await;
    let err = client.read(UNIT, Table::Holding, 40000, 2).await.err();
    assert!(
        matches!(
            err,
            Some(ModbusError::Io(_)) | Some(ModbusError::Protocol(_))
        ),
        "{err:?}"
    );

    if let Ok(mut f) = faults.lock() {
        *f = Faults::default();
    }
    let mut client = connect(server.addr).await;
    assert!(client.read(UNIT, Table::Holding, 40000, 2).await.is_ok());
}

#[tokio::test]
async fn server_stops_when_shutdown_resolves() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = oneshot::channel::<()>();
    let (u, _) = units(Bank::new());
    let task = tokio::spawn(serve(listener, u, async move {
        let _ = rx.await;
    }));
    let _ = tx.send(());
    let res = tokio::time::timeout(Duration::from_secs(2), task).await;
    assert!(matches!(res, Ok(Ok(Ok(())))), "{res:?}");
    let err = ModbusClient::connect(addr, Duration::from_secs(1))
        .await
        .err();
    assert!(matches!(err, Some(ModbusError::Connect(_))), "{err:?}");
}

#[tokio::test]
async fn runaway_chains_are_protocol_errors() {
    // 65 empty models then an end marker: longer than any real device.
    let mut image = vec![0x5375, 0x6E53];
    for _ in 0..65 {
        image.extend_from_slice(&[64000, 0]);
    }
    image.extend_from_slice(&[0xFFFF, 0]);
    let mut long = Bank::new();
    long.map_range(Table::Holding, 40000, image.len() as u16, false);
    long.set(Table::Holding, 40000, &image);

    // A model whose L runs past register 65535.
    let mut past = Bank::new();
    past.map_range(Table::Holding, 50000, 4, false);
    past.set(Table::Holding, 50000, &[0x5375, 0x6E53, 1, 20000]);

    for bank in [long, past] {
        let (_server, _, mut client) = client_of(bank).await;
        let err = discover(&mut client, UNIT).await.err();
        assert!(matches!(err, Some(ModbusError::Protocol(_))), "{err:?}");
    }
}

/// A peer that answers each request with the wrong transaction id (a stray or
/// late response): the client reports a protocol error and drops the link,
/// since every later answer could belong to another request.
#[tokio::test]
async fn transaction_id_mismatch_is_protocol_and_breaks_the_link() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut req = [0u8; 12];
        if s.read_exact(&mut req).await.is_err() {
            return;
        }
        let tid = u16::from_be_bytes([req[0], req[1]]).wrapping_add(1);
        let t = tid.to_be_bytes();
        // Read holding registers, one register, value 0x1234, under another tid.
        let resp = [t[0], t[1], 0, 0, 0, 5, req[6], 0x03, 2, 0x12, 0x34];
        let _ = s.write_all(&resp).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let mut client = connect(addr).await;
    let err = client.read(UNIT, Table::Holding, 0, 1).await.err();
    assert!(matches!(err, Some(ModbusError::Protocol(_))), "{err:?}");
    assert_eq!(err.map(|e| e.kind()), Some("protocol"));
    assert!(
        !client.is_usable(),
        "a mismatched answer must drop the connection"
    );
}
