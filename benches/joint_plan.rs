//! Joint plan (dispatch + allocation) benchmark: the decomposed LP that
//! `plan::solve` runs against the full joint LP (one variable per participant
//! and step, the oracle) on the same instances, on every backend compiled in
//! (`--features microlp` adds microlp). Prints a markdown table with p50,
//! max, objective and the ratio to the full joint LP measured in the same
//! run; figures go in BENCHMARKS.md. `PED_BENCH_RUNS` (default 7) sets the
//! decomposed runs, `PED_BENCH_FULL_RUNS` (default 3) the full LP's.

use std::time::{Duration, Instant};

use ped::plan::{self, synthetic, Backend};

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn runs(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// (seconds per run, last objective), or the error of the first failed run.
fn time(
    n: usize,
    f: impl Fn() -> Result<plan::Plan, plan::PlanError>,
) -> Result<(Vec<f64>, f64), plan::PlanError> {
    let mut secs = Vec::with_capacity(n);
    let mut obj = f64::NAN;
    for _ in 0..n {
        let t = Instant::now();
        let p = f()?;
        secs.push(t.elapsed().as_secs_f64());
        obj = p.objective_eur;
    }
    Ok((secs, obj))
}

fn main() {
    let fast_runs = runs("PED_BENCH_RUNS", 7);
    let full_runs = runs("PED_BENCH_FULL_RUNS", 3);
    let budget = Duration::from_secs(600);
    println!(
        "| instance | backend | LP | p50 ms | max ms | objective € | full LP p50 / this p50 |"
    );
    println!("|---|---|---|---:|---:|---:|---:|");
    for (np, n) in [(120, 96), (120, 192)] {
        let inp = synthetic::plan_input(np, n, 2, 1);
        for backend in Backend::available() {
            let full = time(full_runs, || plan::solve_joint_lp(&inp, budget, backend));
            let dec = time(fast_runs, || plan::solve_decomposed(&inp, budget, backend));
            let full_p50 = match &full {
                Ok((s, obj)) => {
                    let mut s = s.clone();
                    let p50 = percentile(&mut s, 0.5);
                    println!(
                        "| {np} × {n}, 2 batteries, heat store | {} | full joint | {:.1} | {:.1} | {obj:.6} | 1.0× |",
                        backend.name(),
                        p50 * 1e3,
                        percentile(&mut s, 1.0) * 1e3
                    );
                    Some(p50)
                }
                Err(e) => {
                    println!(
                        "| {np} × {n} | {} | full joint | failed: {e} | | | |",
                        backend.name()
                    );
                    None
                }
            };
            match dec {
                Ok((mut s, obj)) => {
                    let p50 = percentile(&mut s, 0.5);
                    let ratio = full_p50.map_or("—".to_string(), |f| format!("{:.1}×", f / p50));
                    println!(
                        "| {np} × {n}, 2 batteries, heat store | {} | decomposed | {:.1} | {:.1} | {obj:.6} | {ratio} |",
                        backend.name(),
                        p50 * 1e3,
                        percentile(&mut s, 1.0) * 1e3
                    );
                }
                Err(e) => println!(
                    "| {np} × {n} | {} | decomposed | failed: {e} | | | |",
                    backend.name()
                ),
            }
        }
    }
}
