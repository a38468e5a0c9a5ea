//! Plan benchmarks: the fast allocation solver against the generic LP on the
//! same instances, the joint dispatch + allocation plan, and (when the
//! `benches/pulp_allocation.py` venv is there) PuLP + CBC on the same
//! allocation instance, dumped to JSON. Prints a table; figures go in
//! BENCHMARKS.md.

use std::time::{Duration, Instant};

use ped::allocation::solver;
use ped::plan::{self, synthetic};

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Vec<f64>, T) {
    let mut out = None;
    let mut secs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        out = Some(f());
        secs.push(t.elapsed().as_secs_f64());
    }
    match out {
        Some(o) => (secs, o),
        None => panic!("no run"),
    }
}

/// PuLP + CBC on the same instance (dumped as `ped plan --dump` does):
/// (seconds, status, score). Needs the venv at `$PED_PULP_VENV` (default
/// `${TMPDIR:-/tmp}/ped-pulp-venv`, `pip install pulp`); without it the bench
/// says so and exits 1 rather than report no baseline.
fn pulp(p: &solver::AllocationProblem) -> Option<(f64, String, f64)> {
    if std::env::var("PED_BENCH_SKIP_PULP").is_ok() {
        return None;
    }
    let tmp = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let venv = std::env::var("PED_PULP_VENV").unwrap_or_else(|_| format!("{tmp}/ped-pulp-venv"));
    let python = format!("{venv}/bin/python");
    let file =
        std::path::PathBuf::from(&tmp).join(format!("ped-bench-alloc-{}.json", std::process::id()));
    plan::instance::Instance::Allocation { problem: p.clone() }
        .write(&file)
        .expect("dump");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pulp_allocation.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(&file)
        .output();
    let _ = std::fs::remove_file(&file);
    let out = match out {
        Ok(o) if o.status.success() => o,
        other => {
            eprintln!("plan bench: PuLP baseline failed ({python}): {other:?}\ncreate it: python3 -m venv {venv} && {venv}/bin/pip install pulp (or set PED_BENCH_SKIP_PULP=1)");
            std::process::exit(1);
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("PuLP output");
    Some((
        v["total_s"].as_f64().unwrap_or(f64::NAN),
        v["status"].as_str().unwrap_or("?").to_string(),
        v["score"].as_f64().unwrap_or(f64::NAN),
    ))
}

fn main() {
    let runs: usize = std::env::var("PED_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let skip_lp = std::env::var("PED_BENCH_SKIP_LP").is_ok();
    println!("| instance | solver | p50 ms | max ms | method | score |");
    println!("|---|---|---:|---:|---|---:|");
    // Tariffs: `night` is the synthetic district's time-of-use tariff, whose
    // off-peak hours (22:00–06:00) have no PV, so every value that matters
    // is flat and the network flow solves it; `midday` adds off-peak hours
    // at 12:00–16:00 under the PV, where production covers the demand, so
    // those values are private to each participant and the flow still
    // solves it; `flat` is each participant's mean tariff, as in `ped keys`;
    // `dynamic` moves every tariff by up to ±2 % each step, which no merging
    // or private term turns into a network: the LP paths.
    for (np, n, rules, tariffs) in [
        (120, 96, true, "night"),
        (120, 96, true, "midday"),
        (120, 96, true, "flat"),
        (120, 192, true, "night"),
        (120, 192, true, "midday"),
        (120, 192, true, "flat"),
        (1000, 96, true, "night"),
        (1000, 96, true, "midday"),
        (1000, 96, true, "flat"),
        (120, 96, true, "dynamic"),
        (1000, 96, true, "dynamic"),
        (1000, 96, false, "night"),
    ] {
        let Some(mut p) = synthetic::allocation_with_tariffs(tariffs, np, n, 1) else {
            panic!("no tariff variant {tariffs}");
        };
        if !rules {
            // Fairness rows off: the per-step knapsack alone.
            p.fairness.no_worse_than_pro_rata = false;
            p.fairness.floor_ratio = None;
        }
        let np = format!(
            "{np}{} {tariffs}",
            if rules { "" } else { " (no fairness rows)" },
        );
        let (mut s, fast) = time(runs, || solver::solve_allocation(&p).expect("fast"));
        println!(
            "| allocation {np} × {n} | fast | {:.1} | {:.1} | {} | {:.6} |",
            percentile(&mut s, 0.5) * 1e3,
            percentile(&mut s, 1.0) * 1e3,
            fast.method,
            fast.score
        );
        let fast_p50 = percentile(&mut s, 0.5);
        if let Some(pulp) = pulp(&p) {
            println!(
                "| allocation {np} × {n} | PuLP + CBC (build + solve) | {:.1} | {:.1} | {} | {:.6} |",
                pulp.0 * 1e3,
                pulp.0 * 1e3,
                pulp.1,
                pulp.2
            );
            println!(
                "| allocation {np} × {n} | ratio PuLP / fast | {:.1}× | | | |",
                pulp.0 / fast_p50
            );
        }
        if !skip_lp {
            let (mut s, lp) = time(1, || solver::solve_allocation_lp(&p).expect("lp"));
            println!(
                "| allocation {np} × {n} | generic LP ({}) | {:.1} | {:.1} | lp | {:.6} |",
                plan::BACKEND,
                percentile(&mut s, 0.5) * 1e3,
                percentile(&mut s, 1.0) * 1e3,
                lp.score
            );
        }
    }
    for (np, n) in [(120, 96), (120, 192)] {
        let inp = synthetic::plan_input(np, n, 2, 1);
        let (mut s, p) = time(runs, || {
            plan::solve(&inp, Duration::from_secs(60)).expect("plan")
        });
        println!(
            "| joint plan {np} × {n}, 2 batteries, heat store | plan::solve | {:.1} | {:.1} | {:?} | {:.6} |",
            percentile(&mut s, 0.5) * 1e3,
            percentile(&mut s, 1.0) * 1e3,
            p.status,
            p.objective_eur
        );
    }
}
