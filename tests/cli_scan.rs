//! `ped scan` against a served device whose SunSpec base is 0 (not 40000) and
//! whose chain ends with an exception instead of the 0xFFFF end marker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ped::modbus::server::{serve, Bank};
use ped::registers::{ModelLibrary, Table};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_base_0_and_stops_at_the_exception() {
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
    // No end marker: the next header read gets exception 0x02.
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, 0, image.len() as u16, false);
    bank.set(Table::Holding, 0, &image);

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        HashMap::from([(2u8, Arc::new(Mutex::new(bank)))]),
        async move {
            let _ = rx.await;
        },
    ));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ped"))
            .args(["scan", &addr.to_string(), "--unit", "2"])
            .output()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 SunSpec model(s)"), "{stdout}");
    assert!(stdout.contains("model  103"), "{stdout}");
    assert!(stdout.contains("ScanCo"), "{stdout}");
    assert!(stdout.contains("8760 W"), "{stdout}");
}
