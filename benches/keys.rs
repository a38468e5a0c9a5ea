//! `cargo bench --bench keys`: a month of keys (2,976 quarter-hours) for 120
//! and 1,000 participants, pro rata (the baseline) against optimised, simple
//! dynamic keys (and full dynamic with 10 producers): allocation,
//! quantisation with residue, rendering and read-back validation of one
//! Enedis file. Each case runs in a child process of this binary, so its
//! peak memory (VmHWM) is its own.
//!
//! `optimised` is the per-step policy (`PerStepAllocator`); `month` is the
//! month solver (`MonthSolverAllocator`, `allocation::solver::solve_allocation`
//! over the whole month with the fairness rows: floor at half the
//! subscription, nobody worse off than pro rata) under a wall-clock budget of
//! `PED_KEYS_BENCH_MONTH_BUDGET_S` seconds (default 300); past it the case
//! reports the per-step fallback, as `ped keys` would.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use chrono::NaiveDate;
use ped::allocation::{MonthAllocator, MonthSolverAllocator, PerStepAllocator, Precision};
use ped::config::KeyPolicy;
use ped::ids::Prm;
use ped::keys::{self, Consumer, Format, KeyKind, KeysJob, Measured};
use ped::time::Grid;

const PRODUCERS: usize = 10;

fn job(n: usize, policy: KeyPolicy, kind: KeyKind) -> KeysJob {
    let grid = Grid::new(15, chrono_tz::Europe::Paris).expect("grid");
    let prm = |k: u64| -> Prm { format!("{:014}", k).parse().expect("prm") };
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    KeysJob {
        grid,
        from: NaiveDate::from_ymd_opt(2025, 7, 1).expect("date"),
        to: NaiveDate::from_ymd_opt(2025, 7, 31).expect("date"),
        consumers: (0..n)
            .map(|i| Consumer {
                id: format!("C{i}"),
                prm: prm(20_000_000_000_000 + i as u64),
                tariff_eur_per_kwh: 0.18 + 0.1 * rnd(),
                priority: 1 + (i % 3) as u8,
                static_share: 1.0 / n as f64,
                entry: None,
                exit: None,
            })
            .collect(),
        producers: (0..PRODUCERS)
            .map(|j| prm(30_000_000_000_000 + j as u64))
            .collect(),
        policy,
        kind,
        format: Format::Enedis,
        precision: Precision::default(),
        cups: BTreeMap::new(),
        cau: "bench".into(),
        site_file: None,
        operation_id: Some("ACC00000001".into()),
        // One file per producer, the heavier of the two layouts.
        layout: ped::dso::enedis::Layout::ENEDIS_ISO,
        plausibility: Default::default(),
        strict: false,
        other_operations: Default::default(),
    }
}

/// A July of measurements: a PV bell per producer, consumption with a daily
/// shape and noise, so steps go from deep deficit to surplus.
fn measured(job: &KeysJob) -> Measured {
    let periods = job.periods().expect("periods");
    let n = job.consumers.len();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let tz = job.grid.tz();
    let mut production = Vec::with_capacity(periods.len());
    let mut consumption = Vec::with_capacity(periods.len());
    for t in &periods {
        use chrono::Timelike;
        let l = t.with_timezone(&tz);
        let h = f64::from(l.hour()) + f64::from(l.minute()) / 60.0;
        let sun = if (7.0..19.0).contains(&h) {
            (std::f64::consts::PI * (h - 7.0) / 12.0).sin().powi(2)
        } else {
            0.0
        };
        // The pool covers the district at noon on a sunny day, not at night.
        let scale = n as f64 * 0.5 / PRODUCERS as f64;
        production.push(
            (0..PRODUCERS)
                .map(|_| scale * sun * (0.5 + 0.5 * rnd()))
                .collect::<Vec<f64>>(),
        );
        let shape =
            0.6 + 0.4 * (-(h - 8.0).powi(2) / 2.0).exp() + 0.6 * (-(h - 19.5).powi(2) / 3.0).exp();
        consumption.push(
            (0..n)
                .map(|_| 0.1 * shape * (0.3 + 1.4 * rnd()))
                .collect::<Vec<f64>>(),
        );
    }
    let n_t = periods.len();
    Measured {
        periods,
        production_kwh: production,
        consumption_kwh: consumption,
        problems: vec![Vec::new(); n_t],
        coarse_steps: 0,
        inputs: Vec::new(),
        members: vec![vec![true; n_t]; n],
        estimated_consumers: vec![Vec::new(); n],
        estimated_consumer_kwh: vec![0.0; n],
        estimated_producers: vec![Vec::new(); PRODUCERS],
        suspects: Default::default(),
    }
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn run_case(n: usize, policy: &str, kind: &str) {
    let pol = match policy {
        "prorata" => KeyPolicy::Prorata,
        _ => KeyPolicy::Optimised,
    };
    let budget_s: f64 = std::env::var("PED_KEYS_BENCH_MONTH_BUDGET_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300.0);
    let kd = if kind == "full" {
        KeyKind::Full
    } else {
        KeyKind::Simple
    };
    let j = job(n, pol, kd);
    let m = measured(&j);
    let t0 = Instant::now();
    let per_step = PerStepAllocator { policy: j.policy() };
    let month = MonthSolverAllocator {
        ids: j.consumers.iter().map(|c| c.id.clone()).collect(),
        local_price_eur_per_kwh: 0.10,
        export_price_eur_per_kwh: 0.06,
        fairness: ped::allocation::solver::Fairness {
            floor_ratio: Some(0.5),
            ..Default::default()
        },
        subscription_share: vec![Some(1.0 / n as f64); n],
        month_to_date: Vec::new(),
        month_to_date_production_kwh: 0.0,
        budget: Some(std::time::Duration::from_secs_f64(budget_s)),
    };
    let alloc: &dyn MonthAllocator = if policy == "month" { &month } else { &per_step };
    let k = keys::compute(&j, &m, alloc).expect("compute");
    let t_keys = t0.elapsed();
    // PED_KEYS_BENCH_WRITE: unset renders every file in memory (as the
    // figures above were measured); `memory` also writes them as `ped keys`
    // did until 2026-11-24 (all texts held, then written); `stream` writes
    // them as `ped keys` does now (one file at a time).
    let write = std::env::var("PED_KEYS_BENCH_WRITE").unwrap_or_default();
    let out_dir = std::env::temp_dir().join(format!("ped-keys-bench-{}", std::process::id()));
    let bytes: usize = match write.as_str() {
        "stream" => {
            let w = keys::write_streamed(&j, &m, &k, &out_dir.join("out"), |_| {}).expect("write");
            let man = match w {
                keys::Written::New(man) | keys::Written::Unchanged(man) => man,
            };
            man.files.iter().map(|f| f.bytes).sum()
        }
        _ => {
            let files = keys::render_files(&j, &m, &k).expect("render");
            if write == "memory" {
                let man = keys::manifest(&j, &m, &k, &files).expect("manifest");
                keys::write_out(&out_dir.join("out"), &files, &man).expect("write");
            }
            files.iter().map(|f| f.1.len()).sum()
        }
    };
    let _ = std::fs::remove_dir_all(&out_dir);
    let total = t0.elapsed();
    let self_consumed: f64 = k.allocated_kwh.iter().flatten().sum();
    println!(
        "{{\"participants\":{n},\"steps\":{},\"policy\":\"{policy}\",\"kind\":\"{kind}\",\"method\":\"{}\",\"fallback\":{},\"keys_s\":{:.3},\"total_s\":{:.3},\"vm_hwm_mib\":{:.1},\"self_consumed_mwh\":{:.3},\"file_bytes\":{bytes}}}",
        m.periods.len(),
        k.month.method,
        k.month.fallback.is_some(),
        t_keys.as_secs_f64(),
        total.as_secs_f64(),
        vm_hwm_kib() as f64 / 1024.0,
        self_consumed / 1000.0
    );
}

fn field(line: &str, key: &str) -> f64 {
    line.split(&format!("\"{key}\":"))
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    if let Ok(case) = std::env::var("PED_KEYS_BENCH_CASE") {
        let mut it = case.split(',');
        let n = it.next().and_then(|v| v.parse().ok()).unwrap_or(120);
        let policy = it.next().unwrap_or("prorata").to_string();
        let kind = it.next().unwrap_or("simple").to_string();
        run_case(n, &policy, &kind);
        return;
    }
    let exe = std::env::current_exe().expect("bench executable");
    println!(
        "month of keys: 2,976 quarter-hours (July 2025, Europe/Paris), {PRODUCERS} producers, {} units per one",
        Precision::default().units_per_one
    );
    // PED_KEYS_BENCH_SIZES=120 runs one size only.
    let sizes: Vec<usize> = std::env::var("PED_KEYS_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![120, 1000]);
    for n in sizes {
        let mut base = None;
        for (policy, kind) in [
            ("prorata", "simple"),
            ("optimised", "simple"),
            ("optimised", "full"),
            ("month", "simple"),
        ] {
            // PED_KEYS_BENCH_POLICIES=prorata,month runs those cases only
            // (pro rata, the baseline, should stay in).
            if std::env::var("PED_KEYS_BENCH_POLICIES")
                .is_ok_and(|v| !v.split(',').any(|x| x.trim() == policy))
            {
                continue;
            }
            let out = Command::new(&exe)
                .env("PED_KEYS_BENCH_CASE", format!("{n},{policy},{kind}"))
                .output()
                .expect("child");
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() {
                eprintln!(
                    "case {n} {policy} {kind} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::process::exit(1);
            }
            let (t, mem) = (field(&line, "total_s"), field(&line, "vm_hwm_mib"));
            let b = *base.get_or_insert((t, mem));
            println!(
                "{n:>5} participants {policy:>9} {kind:>6}: {t:>7.3} s, peak {mem:>7.1} MiB  (x{:.2} time, x{:.2} memory vs pro rata)  {line}",
                t / b.0,
                mem / b.1
            );
        }
    }
}
