//! `kill -9` at seeded random moments, then restart, against devices that
//! keep running in their own process on the same simulated clock
//! (`ped simulate --devices-only --clock-origin`, `ped run --clock-origin`).
//!
//! After every kill the ledger is read: periods closed before the kill must be
//! byte-identical afterwards. At the end: periods contiguous (none lost, the
//! primary key forbids twice), each producer's period energy equal to the
//! difference of the counter snapshots stored at its two boundaries (so the
//! energies telescope: the period open at a crash is completed from counters,
//! nothing counted twice), `ped audit verify` passes, and every key file
//! version reached the spool exactly once per idempotency key.
//!
//! `cargo test` runs 3 kills; `scripts/crash-matrix.sh` runs 20 or more
//! (`PED_CRASH_RUNS`, `PED_CRASH_SEED`).

use crate::common::{self, Kill};
use ped::ledger::{outbox, Ledger, Owner};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const START: &str = "2025-06-21T22:30:00+02:00";
const SPEED: &str = "900";

/// A small seeded generator: the kill moments must be reproducible from the seed.
struct Lcg(u64);
impl Lcg {
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn daemon(dir: &Path, origin: &str, log: &str) -> Kill {
    common::spawn(
        common::ped()
            .args(common::run_args(origin, START, SPEED))
            .args(["--ledger", "ledger.sqlite", "--listen", "127.0.0.1:0"])
            .args(["--deliver-dir", "spool"])
            .env("RUST_LOG", "info"),
        dir,
        log,
    )
}

fn read_periods(path: &Path) -> BTreeMap<i64, String> {
    if !path.exists() {
        return BTreeMap::new();
    }
    let l = Ledger::open_read_only(path).expect("ledger opens after kill -9");
    l.periods()
        .expect("periods readable")
        .into_iter()
        .map(|p| (p.start.timestamp(), p.content_hash))
        .collect()
}

fn run_matrix(runs: usize, seed: u64) {
    let (tmp, origin, _devices) = common::fontaine_devices(START, SPEED);
    let dir = tmp.path().to_path_buf();
    // Shorter timeouts: the close grace (3 polls + 2 timeouts) stays well under a period.
    let text = std::fs::read_to_string(dir.join("site.toml")).expect("site.toml");
    std::fs::write(
        dir.join("site.toml"),
        text.replace("timeout_ms = 500", "timeout_ms = 200"),
    )
    .expect("site.toml");

    let ledger = dir.join("ledger.sqlite");
    let mut rng = Lcg(seed);
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    let mut kills = Vec::new();
    for run in 0..runs {
        let d = daemon(&dir, &origin, &format!("run{run}.log"));
        let wait = Duration::from_secs_f64(1.5 + 2.5 * rng.next_f64());
        std::thread::sleep(wait);
        drop(d); // SIGKILL
        kills.push(wait.as_millis());
        let now = read_periods(&ledger);
        for (start, hash) in &seen {
            assert_eq!(
                now.get(start),
                Some(hash),
                "run {run}: period {start} closed before a kill changed or vanished"
            );
        }
        seen = now;
    }
    // The last run stops only once the outbox is empty (or after 30 s).
    {
        let _d = daemon(&dir, &origin, "final.log");
        let t = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let done = Ledger::open_read_only(&ledger)
                .ok()
                .and_then(|mut l| outbox::entries(&mut l).ok())
                .map(|e| !e.is_empty() && e.iter().all(|e| e.state == "sent"))
                .unwrap_or(false);
            if done && t.elapsed() > Duration::from_secs(3) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "outbox not delivered in 30 s"
            );
        }
    }

    let mut l = Ledger::open_read_only(&ledger).expect("ledger");
    let periods = l.periods().expect("periods");
    assert!(
        periods.len() >= 5,
        "only {} periods closed over {runs} runs",
        periods.len()
    );
    for (start, hash) in &seen {
        assert!(
            periods
                .iter()
                .any(|p| p.start.timestamp() == *start && &p.content_hash == hash),
            "period {start} changed after the last kill"
        );
    }
    for w in periods.windows(2) {
        assert_eq!(
            (w[1].start - w[0].start).num_minutes(),
            15,
            "gap or overlap between {} and {}",
            w[0].start,
            w[1].start
        );
    }
    let mut checked = 0;
    for p in &periods {
        let end = p.start + chrono::Duration::minutes(15);
        for e in l.energies(p.start).expect("energies") {
            let (Owner::Device, Some(kwh)) = (e.owner, e.kwh) else {
                continue;
            };
            let a = l.snapshot(&e.id, &e.reading, p.start).expect("snapshot");
            let b = l.snapshot(&e.id, &e.reading, end).expect("snapshot");
            let (Some(a), Some(b)) = (a, b) else {
                panic!(
                    "{} {} in period {}: energy without boundary snapshots",
                    e.id, e.reading, p.start
                );
            };
            assert!(
                (kwh - (b - a)).abs() < 1e-6,
                "{} period {}: {kwh} kWh but counters moved {}",
                e.id,
                p.start,
                b - a
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no producer energy checked");

    common::output_ok(
        common::ped()
            .args(["audit", "verify", "--ledger"])
            .arg(&ledger),
        "",
    );

    // Restarts went on from the ledger (not from scratch).
    let resumes: i64 = rusqlite::Connection::open(&ledger)
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM audit WHERE kind = 'resume'",
                [],
                |r| r.get(0),
            )
        })
        .expect("audit");
    assert!(resumes >= 1, "no restart resumed from the ledger");

    let entries = outbox::entries(&mut l).expect("outbox");
    let log = std::fs::read_to_string(dir.join("spool/deliveries.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let keys: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let sent: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.state == "sent")
        .map(|e| e.idempotency_key.as_str())
        .collect();
    assert!(!sent.is_empty(), "no key file delivered");
    assert_eq!(
        keys, sent,
        "delivered keys differ from the outbox's sent entries"
    );
    // A repeat is possible only if a kill fell between the channel's Ok and the
    // commit of `sent`; it carries the same idempotency key (checked above).
    let repeats = lines.len() - keys.len();
    assert!(
        repeats <= runs,
        "{repeats} repeated deliveries for {runs} kills"
    );
    let versions: BTreeSet<(String, i64)> = entries
        .iter()
        .map(|e| (e.file_name.clone(), e.version))
        .collect();
    assert_eq!(versions.len(), entries.len(), "a file version queued twice");
    println!(
        "crash matrix: {runs} kills at {kills:?} ms, {resumes} resumes, {} periods, {checked} energies checked, {} files delivered, {repeats} repeats",
        periods.len(),
        sent.len()
    );
}

#[test]
fn kill9_at_seeded_moments_loses_and_repeats_nothing() {
    let _serial = common::serial_blocking();
    let runs = std::env::var("PED_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed = std::env::var("PED_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    run_matrix(runs, seed);
}
