//! Plan benchmarks: the fast allocation solver against the generic LP on the
//! same instances, the joint dispatch + allocation plan, and (when the
//! `benches/pulp_allocation.py` venv is there) PuLP + CBC on the same
//! allocation instance, dumped to JSON. Prints a table; figures go in
//! BENCHMARKS.md.

use std::time::{Duration, Instant};

use ped::plan::{self, allocate, synthetic};

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
fn pulp(p: &allocate::AllocationProblem) -> Option<(f64, String, f64)> {
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
    // `flat`: each participant's tariff is its mean over the horizon, as in
    // `ped keys` (one tariff per consumer): the network-flow path. The
    // synthetic instances otherwise give everybody a time-of-use tariff,
    // which goes through the sifted LP.
    for (np, n, rules, flat) in [
        (120, 96, true, false),
        (120, 96, true, true),
        (120, 192, true, false),
        (120, 192, true, true),
        (1000, 96, true, false),
        (1000, 96, true, true),
        (1000, 96, false, false),
    ] {
        let mut p = synthetic::allocation(np, n, 1);
        if !rules {
            // Fairness rows off: the per-step knapsack alone.
            p.fairness.no_worse_than_pro_rata = false;
            p.fairness.floor_ratio = None;
        }
        if flat {
            for q in &mut p.participants {
                let mean = q.tariff_eur_per_kwh.iter().sum::<f64>() / n as f64;
                q.tariff_eur_per_kwh.iter_mut().for_each(|x| *x = mean);
            }
        }
        let np = format!(
            "{np}{}{}",
            if rules { "" } else { " (no fairness rows)" },
            if flat { " flat" } else { " TOU" }
        );
        let (mut s, fast) = time(runs, || allocate::solve_allocation(&p).expect("fast"));
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
            let (mut s, lp) = time(1, || allocate::solve_allocation_lp(&p).expect("lp"));
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
