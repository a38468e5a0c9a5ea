//! `ped scan` against a served device whose SunSpec base is 0 (not 40000) and
//! whose chain ends with an exception instead of the 0xFFFF end marker, over
//! each transport ped speaks: Modbus TCP, RTU through a TCP gateway, and RTU
//! on a serial port (a pseudo-terminal made in-process, opened by its path
//! exactly as /dev/ttyUSB0 would be).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ped::modbus::server::{serve_rtu_serial, Bank, SharedFaults};
use ped::registers::{ModelLibrary, Table};

mod common;

/// Common model 1 (manufacturer "ScanCo") and an inverter 103 at 8760 W, from
/// register 0, with no end marker: the next header read gets exception 0x02.
fn device() -> HashMap<u8, ped::modbus::server::SharedBank> {
    let lib = ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let ok = |r: Result<(), ped::registers::RegisterError>| r.unwrap_or_else(|e| panic!("{e}"));
    let common = lib.sunspec(1).unwrap_or_else(|| panic!("1"));
    let inv = lib.sunspec(103).unwrap_or_else(|| panic!("103"));
    let mut c = vec![0u16; usize::from(common.block_len())];
    common.fill_unimplemented(&mut c);
    ok(common.encode_raw(&mut c, "ID", 1));
    ok(common.encode_raw(&mut c, "L", i64::from(common.length)));
    ok(common.encode_string(&mut c, "Mn", "ScanCo"));
    let mut i = vec![0u16; usize::from(inv.block_len())];
    inv.fill_unimplemented(&mut i);
    ok(inv.encode_raw(&mut i, "ID", 103));
    ok(inv.encode_raw(&mut i, "L", i64::from(inv.length)));
    ok(inv.encode_raw(&mut i, "W_SF", 1));
    ok(inv.encode_f64(&mut i, "W", 8760.0));
    let mut image = vec![0x5375, 0x6E53];
    image.extend_from_slice(&c);
    image.extend_from_slice(&i);
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, 0, image.len() as u16, false);
    bank.set(Table::Holding, 0, &image);
    HashMap::from([(2u8, Arc::new(Mutex::new(bank)))])
}

async fn scan(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || common::ped().arg("scan").args(&args).output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_found(stdout: &str) {
    common::assert_contains(
        stdout,
        &["2 SunSpec model(s)", "model  103", "ScanCo", "8760 W"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_base_0_and_stops_at_the_exception() {
    let served = common::serve_local(device(), SharedFaults::default(), false).await;
    let addr = served.addr;
    let stdout = scan(vec![addr.to_string(), "--unit".into(), "2".into()]).await;
    assert_found(&stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_speaks_rtu_through_a_tcp_gateway_and_fails_without_the_flag() {
    let served = common::serve_local(device(), SharedFaults::default(), true).await;
    let addr = served.addr;
    let stdout = scan(vec![
        addr.to_string(),
        "--unit".into(),
        "2".into(),
        "--rtu-over-tcp".into(),
    ])
    .await;
    assert_found(&stdout);
    // Modbus TCP framing to an RTU gateway finds nothing: the flag matters.
    let a = addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        common::ped()
            .args(["scan", &a, "--unit", "2", "--timeout-ms", "300"])
            .output()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || !text.contains("model  103"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_reads_a_serial_port_by_its_path() {
    use tokio_serial::SerialPort as _;
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap_or_else(|e| panic!("{e}"));
    let path = slave.name().unwrap_or_else(|| panic!("pty without a name"));
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_rtu_serial(
        master,
        device(),
        SharedFaults::default(),
        async move {
            let _ = rx.await;
        },
    ));
    let stdout = scan(vec![
        path.clone(),
        "--unit".into(),
        "2".into(),
        "--baud".into(),
        "9600".into(),
        "--parity".into(),
        "none".into(),
    ])
    .await;
    assert_found(&stdout);
    assert!(stdout.starts_with(&format!("{path} unit 2")), "{stdout}");
    drop(slave);

    // A bad line setting names the flag and the values it takes.
    let out = common::ped()
        .args(["scan", &path, "--parity", "mark"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--parity mark: expected none, even or odd"),
        "{stderr}"
    );
}
