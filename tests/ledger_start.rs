//! A ledger that exists but cannot be resumed from stops ped at start, with
//! the file, the cause and the fix, and the file is left as it was: a fresh
//! start would silently lose the history and the outbox. A ledger that is
//! readable but not writable lets ped start and control (catch-up mode), and
//! everything closed meanwhile is written once it can be.
//!
//! The read-only case makes the file immutable (`chattr +i`, refused even to
//! root), as `tests/ledger_write_faults.rs` does: it needs root and fails
//! loudly otherwise.

mod common;

use ped::clock::Clock;
use ped::config;
use ped::daemon::{Daemon, DaemonError};
use ped::ledger::Ledger;
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn site(lib: &ModelLibrary) -> config::Site {
    common::shipped_site(lib, "site-configs/fontaine-douche.toml")
}

fn origin() -> chrono::DateTime<chrono::Utc> {
    common::at("2025-06-21T11:00:00+02:00")
}

async fn start(site: config::Site, out: &Path, ledger: &Path) -> Result<Daemon, DaemonError> {
    let lib = Arc::new(ModelLibrary::embedded().expect("maps"));
    common::start_with_ledger(
        site,
        lib,
        Clock::simulated(origin(), 900.0),
        out,
        ledger,
        None,
    )
    .await
}

/// A new, empty ledger `ped.sqlite` in a temporary folder of its own.
fn fresh_ledger() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ped.sqlite");
    drop(Ledger::open(&ledger).expect("ledger"));
    (dir, ledger)
}

/// Every file whose name starts with the ledger's, with its length and SHA-256.
fn snapshot(ledger: &Path) -> Vec<(PathBuf, usize, String)> {
    let dir = ledger.parent().expect("folder");
    let stem = ledger
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let mut v: Vec<(PathBuf, usize, String)> = std::fs::read_dir(dir)
        .expect("folder")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&stem))
        .map(|e| {
            let p = e.path();
            let bytes = if p.is_file() {
                std::fs::read(&p).expect("read")
            } else {
                Vec::new()
            };
            (p, bytes.len(), ped::ledger::sha256_hex(&bytes))
        })
        .collect();
    v.sort();
    v
}

/// Starting must fail naming the file, `cause` and `fix`, touch nothing, and
/// leave no output folder behind.
async fn refused(ledger: &Path, cause: &str, fix: &str) {
    let lib = ModelLibrary::embedded().expect("maps");
    let out = tempfile::tempdir().expect("out");
    let before = snapshot(ledger);
    let outdir = out.path().join("out");
    let err = match start(site(&lib), &outdir, ledger).await {
        Ok(d) => {
            d.shutdown().await;
            panic!("ped started on {}", ledger.display());
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&ledger.display().to_string()), "{err}");
    assert!(err.contains(cause), "cause {cause:?} not in: {err}");
    assert!(err.contains(fix), "fix {fix:?} not in: {err}");
    assert_eq!(snapshot(ledger), before, "the ledger's files were touched");
    assert!(!outdir.exists(), "output folder created before the refusal");
}

#[tokio::test]
async fn a_corrupt_ledger_stops_the_start_untouched() {
    // A real ledger whose first page was overwritten (as a bad disk would).
    let (_dir, ledger) = fresh_ledger();
    let mut bytes = std::fs::read(&ledger).expect("read");
    bytes[..32].copy_from_slice(&[0x5a; 32]);
    std::fs::write(&ledger, &bytes).expect("write");
    refused(
        &ledger,
        "not a SQLite database",
        "restore the file from a backup",
    )
    .await;
}

#[tokio::test]
async fn a_truncated_ledger_stops_the_start_untouched() {
    let (_dir, ledger) = fresh_ledger();
    let bytes = std::fs::read(&ledger).expect("read");
    // The header survives, the schema pages do not.
    std::fs::write(&ledger, &bytes[..100]).expect("write");
    refused(&ledger, "cannot be used", "--ledger").await;
}

#[tokio::test]
async fn a_ledger_from_a_newer_ped_stops_the_start_untouched() {
    let (_dir, ledger) = fresh_ledger();
    let conn = rusqlite::Connection::open(&ledger).expect("sqlite");
    conn.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (99, 'future')",
        [],
    )
    .expect("insert");
    drop(conn);
    refused(
        &ledger,
        "schema version 99 is newer than this ped knows",
        "do not downgrade",
    )
    .await;
}

#[tokio::test]
async fn an_unreadable_ledger_stops_the_start_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Root reads any file whatever its mode; a folder in the file's place
    // cannot be read as one by anybody.
    let ledger = dir.path().join("ped.sqlite");
    std::fs::create_dir(&ledger).expect("folder");
    refused(&ledger, "not a regular file", "point ped at another file").await;
}

fn chattr(flag: &str, f: &Path) {
    common::output_ok(
        Command::new("chattr").args([flag, &f.display().to_string()]),
        " (this test needs root)",
    );
}

struct Mutable(PathBuf);
impl Drop for Mutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_ledger_at_start_controls_and_catches_up() {
    let lib = Arc::new(ModelLibrary::embedded().expect("maps"));
    let (_dir, ledger) = fresh_ledger();
    // No -wal or -shm left beside it: SQLite would create them, and cannot.
    chattr("+i", &ledger);
    let guard = Mutable(ledger.clone());
    let before = snapshot(&ledger);

    let s = site(&lib);
    let clock = Clock::simulated(origin(), 900.0);
    let sim = Simulator::start(&s, lib.clone(), clock, 2025, true)
        .await
        .expect("simulator");
    let out = tempfile::tempdir().expect("out");
    let d = start(sim.site.clone(), out.path(), &ledger)
        .await
        .expect("ped starts on a read-only ledger");
    let m = d.shared.metrics.clone();
    let setpoints = || common::setpoints_ok(&d, &["BAT-01", "BAT-02"]);
    let t = Instant::now();
    while !(m.periods_closed.get() >= 3 && setpoints() > 0) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} periods closed, {} setpoints written in 60 s",
            m.periods_closed.get(),
            setpoints()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(m.ledger_write_errors.get() > 0, "the fault is not reported");
    assert!(m.ledger_pending_periods.get() >= 1.0);
    // SQLite may create its -wal and -shm beside it; the file itself is untouched.
    assert_eq!(snapshot(&ledger)[0], before[0], "an immutable file changed");

    drop(guard);
    let t = Instant::now();
    while m.ledger_pending_periods.get() > 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not caught up: {} pending",
            m.ledger_pending_periods.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = m.periods_closed.get();
    d.shutdown().await;
    drop(sim);
    common::assert_ledger_whole(&ledger, closed);
}
