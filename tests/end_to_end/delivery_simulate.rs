//! `ped simulate` delivers through the site's `[delivery]` section as `ped
//! run` does (`delivery_daemon` covers the run path over HTTP): a
//! simulated hour around local midnight completes a day, whose validated key
//! files go through the outbox into the section's spool folder.

use crate::common;
use ped::ledger::{outbox, Ledger};

#[test]
fn ped_simulate_delivers_per_the_site_delivery_section() {
    let _serial = common::serial_blocking();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let spool = dir.join("spool");
    let site = common::repo_path("site-configs/fontaine-douche.toml");
    let text = std::fs::read_to_string(&site).unwrap()
        + &format!(
            "\n[delivery]\nkind = \"folder\"\ndir = \"{}\"\nbackoff_base_s = 60\nbackoff_cap_s = 600\n",
            spool.display()
        );
    std::fs::write(dir.join("site.toml"), text).unwrap();
    // Two simulated hours at ×900 (8 s): the day of 21 June closes at
    // midnight and the outbox has an hour of simulated time to deliver it.
    let out = common::ped()
        .current_dir(&dir)
        .args(["simulate", "--site", "site.toml", "--ephemeral-ports"])
        .args(["--listen", "127.0.0.1:0", "--out", "out"])
        .args(["--speed", "900", "--start", "2025-06-21T23:15:00+02:00"])
        .args(["--duration", "2h"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("outbox delivers per the site's [delivery] section"),
        "{log}"
    );
    let mut ledger = Ledger::open_read_only(&dir.join("out/ledger/ped.sqlite")).unwrap();
    let entries = outbox::entries(&mut ledger).unwrap();
    assert!(!entries.is_empty(), "nothing in the outbox\n{log}");
    assert!(
        entries.iter().all(|e| e.state == "sent"),
        "{entries:?}\n{log}"
    );
    // Each outbox entry is in the spool once, with the bytes the ledger holds.
    let delivered = std::fs::read_to_string(spool.join("deliveries.log")).unwrap();
    assert_eq!(delivered.lines().count(), entries.len(), "{delivered}");
    for e in &entries {
        assert!(
            delivered.contains(&e.idempotency_key),
            "{} not delivered: {delivered}",
            e.file_name
        );
        // Spooled as `<first 12 hex of the hash>_<name>`.
        let sha = e.idempotency_key.rsplit(':').next().unwrap_or("");
        let bytes = std::fs::read(spool.join(format!("{}_{}", &sha[..12], e.file_name))).unwrap();
        assert_eq!(
            ped::ledger::sha256_hex(&bytes),
            sha,
            "{} differs",
            e.file_name
        );
        // What was delivered reads back as valid Enedis keys.
        let text = String::from_utf8(bytes).unwrap();
        let grid = ped::time::Grid::new(15, chrono_tz::Europe::Paris).unwrap();
        ped::dso::enedis::validate(&text, &grid, ped::allocation::Precision::default())
            .unwrap_or_else(|err| panic!("{}: {err}", e.file_name));
    }
}
