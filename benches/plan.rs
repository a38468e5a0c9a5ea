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

fn main() {
    let runs: usize = std::env::var("PED_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let skip_lp = std::env::var("PED_BENCH_SKIP_LP").is_ok();
    println!("| instance | solver | p50 ms | max ms | method | score |");
    println!("|---|---|---:|---:|---|---:|");
    for (np, n, rules) in [
        (120, 96, true),
        (120, 192, true),
        (1000, 96, true),
        (1000, 96, false),
    ] {
        let mut p = synthetic::allocation(np, n, 1);
        if !rules {
            // Fairness rows off: the per-step knapsack alone.
            p.fairness.no_worse_than_pro_rata = false;
            p.fairness.floor_ratio = None;
        }
        let np = format!("{np}{}", if rules { "" } else { " (no fairness rows)" });
        let (mut s, fast) = time(runs, || allocate::solve_allocation(&p).expect("fast"));
        println!(
            "| allocation {np} × {n} | fast | {:.1} | {:.1} | {} | {:.6} |",
            percentile(&mut s, 0.5) * 1e3,
            percentile(&mut s, 1.0) * 1e3,
            fast.method,
            fast.score
        );
        if !skip_lp {
            let (mut s, lp) = time(1, || allocate::solve_allocation_lp(&p).expect("lp"));
            println!(
                "| allocation {np} × {n} | generic LP (clarabel) | {:.1} | {:.1} | lp | {:.6} |",
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
