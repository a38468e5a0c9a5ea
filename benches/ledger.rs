//! `cargo bench --bench ledger`: what closing one settlement period costs in
//! the ledger, for a period the size of the demo site (10 producers, 118
//! participants, 135 counters snapshotted at both boundaries), against the
//! JSON-lines record that was ped's ledger before (append + fsync of the same
//! record), in the same run on the same disk.
//!
//! Rows: (a) `Ledger::commit_period` (WAL, synchronous=FULL: the default);
//! (b) the same with synchronous=NORMAL, to show what FULL costs; (c) the
//! JSON-lines baseline; (d) `ped audit verify` over everything written.
//! `PED_BENCH_PERIODS` (default 300) periods each.

use chrono::{DateTime, Duration, Utc};
use ped::ledger::{ClosedPeriod, CounterSnapshot, EnergyRow, Ledger, Owner, Quality};
use std::io::Write;
use std::time::Instant;

fn period(start: DateTime<Utc>) -> ClosedPeriod {
    let end = start + Duration::minutes(15);
    let mut energies = Vec::new();
    for k in 0..10 {
        energies.push(EnergyRow {
            owner: Owner::Device,
            id: format!("PV-{k:02}"),
            reading: "production_kwh".into(),
            kwh: Some(12.5 + k as f64),
            quality: Quality::Measured,
        });
    }
    for k in 0..118 {
        energies.push(EnergyRow {
            owner: Owner::Participant,
            id: format!("P-{k:03}"),
            reading: "import_kwh".into(),
            kwh: Some(0.8 + k as f64 / 100.0),
            quality: Quality::Measured,
        });
    }
    let mut snapshots = Vec::new();
    for k in 0..135 {
        for at in [start, end] {
            snapshots.push(CounterSnapshot {
                device: format!("D-{k:03}"),
                reading: "import_kwh".into(),
                at,
                value: 1000.0 + k as f64,
            });
        }
    }
    let record = serde_json::json!({
        "start": start,
        "energies": energies.iter().map(|e| (e.id.clone(), e.kwh)).collect::<Vec<_>>(),
        "keys": (0..118).map(|k| k % 9).collect::<Vec<_>>(),
    });
    ClosedPeriod {
        start,
        end,
        record_json: record.to_string(),
        quality: "measured".into(),
        policy: "optimised".into(),
        energies,
        keys: (0..118)
            .map(|k| (format!("P-{k:03}"), format!("9999{k:010}"), (k % 9) as u32))
            .collect(),
        snapshots,
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("PED_BENCH_PERIODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir()?;
    let t0: DateTime<Utc> = "2025-06-21T00:00:00Z".parse()?;
    let periods: Vec<ClosedPeriod> = (0..n)
        .map(|k| period(t0 + Duration::minutes(15 * k as i64)))
        .collect();
    let mut rows = Vec::new();

    for (label, sync) in [
        ("ledger, synchronous=FULL", "FULL"),
        ("ledger, synchronous=NORMAL", "NORMAL"),
    ] {
        let path = dir.path().join(format!("{sync}.sqlite"));
        let mut l = Ledger::open(&path)?;
        l.set_synchronous(sync)?;
        let mut times = Vec::with_capacity(n);
        for p in &periods {
            let t = Instant::now();
            l.commit_period(p)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if sync == "FULL" {
            let t = Instant::now();
            let r = l.verify()?;
            assert!(r.ok(), "{r:?}");
            println!(
                "audit verify over {} entries: {:.1} ms",
                r.entries,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        // Closing the last connection checkpoints the WAL into the file.
        drop(l);
        let size = std::fs::metadata(&path)?.len();
        rows.push((label.to_string(), times, size));
    }

    // (e) Counter-snapshot pruning: the same periods, with the snapshots older
    // than one day folded at each day's end (the daemon uses
    // `ledger.snapshot_retention_days`, 35 by default; one day here so that a
    // short run shows the steady state). Bytes in use = pages − free list,
    // since freed pages are reused by later periods.
    {
        let path = dir.path().join("pruned.sqlite");
        let mut l = Ledger::open(&path)?;
        let unpruned = Ledger::open(&dir.path().join("FULL.sqlite"))?.bytes_in_use()?;
        let mut prune_ms = Vec::new();
        for (k, p) in periods.iter().enumerate() {
            l.commit_period(p)?;
            if (k + 1) % 96 == 0 {
                let t = Instant::now();
                l.prune_snapshots(p.end - Duration::days(1))?;
                prune_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let pruned = l.bytes_in_use()?;
        println!(
            "snapshot pruning over {n} periods: bytes in use {} → {} per period ({:.2}×); prune per day p50 {:.1} ms",
            unpruned / n as u64,
            pruned / n as u64,
            pruned as f64 / unpruned.max(1) as f64,
            if prune_ms.is_empty() { 0.0 } else { pct(&mut prune_ms, 0.5) }
        );
    }

    let path = dir.path().join("periods.jsonl");
    let mut times = Vec::with_capacity(n);
    for p in &periods {
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(f, "{}", p.record_json)?;
        f.sync_data()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    rows.push((
        "JSON lines + fsync (baseline)".into(),
        times,
        std::fs::metadata(&path)?.len(),
    ));

    let base = {
        let mut b = rows[2].1.clone();
        pct(&mut b, 0.5)
    };
    println!("| what | p50 ms | p99 ms | max ms | vs baseline p50 | bytes per period |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, mut t, size) in rows {
        let (p50, p99, max) = (pct(&mut t, 0.5), pct(&mut t, 0.99), pct(&mut t, 1.0));
        println!(
            "| {label} | {p50:.2} | {p99:.2} | {max:.2} | {:.1}× | {} |",
            p50 / base,
            size / n as u64
        );
    }
    Ok(())
}
