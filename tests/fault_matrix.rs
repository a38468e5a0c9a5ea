//! The fault matrix (README, "Fault matrix"): the rows about planning, time and
//! configuration. Each test injects one fault against `ped simulate` (the real
//! binary, real sockets) or the daemon library and checks what must hold.
//! Device, ledger and crash rows live in `tests/faults_*.rs`, `tests/crash_*.rs`
//! and `tests/ledger_*.rs`; `scripts/fault-matrix.sh` runs them all.

use chrono::{DateTime, NaiveDate, Utc};
use ped::allocation::Precision;
use ped::clock::Clock;
use ped::config;
use ped::daemon::Daemon;
use ped::dso::enedis;
use ped::plan::{self, BatteryModel, HeatUnitModel, ParticipantForecast, PlanInput, PlanStatus};
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

const FAULT_SITE: &str = "tests/data/fault-site.toml";

fn manifest(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ped` with a hard real-time limit, so a hung run fails the test instead of hanging CI.
fn ped(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let mut cmd = common::ped();
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ped");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait for ped").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect ped output");
            panic!(
                "ped {args:?} still running after {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("collect ped output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ped simulate` on `site` from `start` for `duration` at `speed`, into `out`.
fn simulate(
    site: &Path,
    start: &str,
    duration: &str,
    speed: &str,
    out: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Run {
    let mut args = vec![
        "simulate",
        "--site",
        site.to_str().expect("utf-8 path"),
        "--start",
        start,
        "--duration",
        duration,
        "--speed",
        speed,
        "--ephemeral-ports",
        "--listen",
        "127.0.0.1:0",
        "--out",
        out.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let r = ped(&args, env, Duration::from_secs(120));
    assert_eq!(r.code, Some(0), "ped simulate failed:\n{}", r.stderr);
    r
}

fn fault_grid() -> ped::time::Grid {
    ped::time::Grid::new(15, chrono_tz::Europe::Paris).unwrap()
}

/// Every key file of `day` under `out`, validated; returns the rows' starts of each file.
fn key_rows(out: &Path, day: &str) -> Vec<(PathBuf, Vec<DateTime<Utc>>)> {
    let dir = out.join("keys").join(day);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        3,
        "PV-1, PV-2 and BAT-1 each have a file: {files:?}"
    );
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let report = enedis::validate(
                &text,
                &fault_grid(),
                Precision {
                    units_per_one: 1000,
                },
            )
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", f.display()));
            let starts: Vec<_> = report.rows.iter().map(|r| r.start).collect();
            (f, starts)
        })
        .collect()
}

fn assert_unique_and_contiguous(starts: &[DateTime<Utc>]) {
    for w in starts.windows(2) {
        assert_eq!(
            w[1] - w[0],
            chrono::Duration::minutes(15),
            "a period lost or counted twice between {} and {}",
            w[0],
            w[1]
        );
    }
}

fn latest_plan_status(out: &Path) -> String {
    let text =
        std::fs::read_to_string(out.join("plans/latest.json")).expect("a plan was published");
    let v: serde_json::Value = serde_json::from_str(&text).expect("plan JSON");
    v["status"].as_str().unwrap_or_default().to_string()
}

// ---- the solver exceeds its budget -------------------------------------------------------

/// The `plan published` events of a run logged with `--log-format json`, as
/// their fields (status, setpoints, …).
fn published_plans(json_log: &str) -> Vec<serde_json::Value> {
    json_log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "plan published")
        .map(|v| v["fields"].clone())
        .collect()
}

/// `plan.budget_ms = 0` leaves no time for the LP, on any machine: every plan
/// must come from the fallback ladder and the periods still close. (A real
/// budget stopping a real solve is `plan::tests::a_real_budget_stops_a_real_long_solve`;
/// a late LP result being discarded is `plan::tests::a_late_lp_result_is_discarded`.)
#[test]
fn solver_over_budget_plans_via_fallback_and_periods_still_close() {
    let out = tempfile::tempdir().unwrap();
    let r = simulate(
        &manifest(FAULT_SITE),
        "2025-06-21T09:50:00+02:00",
        "160m",
        "1800",
        out.path(),
        &[("PED__PLAN__BUDGET_MS", "0")],
        &["--log-format", "json"],
    );
    let plans = published_plans(&r.stderr);
    assert!(plans.len() >= 4, "a plan at every step:\n{}", r.stderr);
    for p in &plans {
        assert_eq!(p["status"], "rule_based", "{p}");
    }
    assert_eq!(latest_plan_status(out.path()), "rule_based");
    for (f, starts) in key_rows(out.path(), "2025-06-21") {
        assert!(
            starts.len() >= 6,
            "{}: {} periods",
            f.display(),
            starts.len()
        );
        assert_eq!(
            starts[0].to_rfc3339(),
            "2025-06-21T08:00:00+00:00",
            "first whole period"
        );
        assert_unique_and_contiguous(&starts);
    }
}

// ---- the problem is infeasible as stated -------------------------------------------------

fn plan_input(steps: usize) -> PlanInput {
    PlanInput {
        start: DateTime::parse_from_rfc3339("2025-06-21T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
        step_hours: 0.25,
        pv_kw: vec![80.0; steps],
        participants: vec![ParticipantForecast {
            id: "H-1".into(),
            load_kw: vec![20.0; steps],
            tariff_eur_per_kwh: 0.25,
            priority: 1,
            tariff_steps_eur_per_kwh: vec![],
        }],
        batteries: vec![BatteryModel {
            id: "BAT-1".into(),
            capacity_kwh: 100.0,
            soc_kwh: 50.0,
            min_soc_kwh: 10.0,
            max_charge_kw: 50.0,
            max_discharge_kw: 50.0,
            charge_eff: 0.95,
            discharge_eff: 0.95,
            end_value_eur_per_kwh: 0.09,
        }],
        heat: vec![HeatUnitModel {
            id: "P2H-1".into(),
            p2h_max_kw: 30.0,
            efficiency: 0.98,
            store_capacity_kwh: 200.0,
            store_kwh: 20.0,
            loss_ratio_per_hour: 0.005,
            heat_demand_kw: vec![10.0; steps],
            heat_price_eur_per_kwh: 0.09,
            max_heat_kw: vec![],
        }],
        local_price_eur_per_kwh: 0.10,
        export_price_eur_per_kwh: vec![0.06; steps],
        import_price_eur_per_kwh: vec![0.25; steps],
        device_participants: vec![],
    }
}

#[test]
fn infeasible_state_is_named_and_a_rule_based_plan_is_still_made() {
    // A battery reporting more energy than it can hold: the LP is not even built,
    // the error names the field and the bound, and the rule-based plan takes over.
    let mut input = plan_input(24);
    input.batteries[0].soc_kwh = 130.0;
    let err = plan::solve(&input, Duration::from_secs(2)).unwrap_err();
    let why = err.to_string();
    assert!(
        why.contains("battery BAT-1 soc_kwh") && why.contains("130") && why.contains("100"),
        "{why}"
    );
    let p = plan::rule_based(&input, &why);
    match &p.status {
        PlanStatus::RuleBased { reason } => assert!(reason.contains("soc_kwh"), "{reason}"),
        s => panic!("expected a rule-based plan, got {s:?}"),
    }
    assert_eq!(p.battery_kw[0].len(), 24);
    for (t, kw) in p.battery_kw[0].iter().enumerate() {
        assert!(
            kw.is_finite() && *kw <= 50.0 + 1e-9 && *kw >= -50.0 - 1e-9,
            "step {t}: {kw}"
        );
    }
    for soc in &p.battery_soc_kwh[0] {
        assert!(soc.is_finite(), "{soc}");
    }
}

#[test]
fn battery_below_its_minimum_and_heat_demand_beyond_the_store_still_plan() {
    // As stated, SoC ≥ min is violated at t = 0 and the demand the store should cover
    // exceeds everything it holds and can take in: the LP must relax, not fail.
    let mut input = plan_input(24);
    input.batteries[0].soc_kwh = 5.0;
    input.heat[0].heat_demand_kw = vec![500.0; 24];
    input.heat[0].store_kwh = 0.0;
    let p = plan::solve(&input, Duration::from_secs(5)).expect("valid input");
    plan::check(&p, &input).expect("the published plan passes its own check");
    for (t, soc) in p.battery_soc_kwh[0].iter().enumerate() {
        assert!(
            *soc >= 5.0 - 1e-6,
            "step {t}: discharged below the starting SoC to {soc}"
        );
    }
    for (t, kw) in p.heat_served_kw[0].iter().enumerate() {
        assert!(
            *kw <= 500.0 + 1e-6,
            "step {t}: served {kw} kW of a 500 kW demand"
        );
    }
}

#[test]
fn simulated_battery_below_its_minimum_soc_keeps_planning_and_closing_periods() {
    // The simulator's battery starts at 50 %; this site's minimum is 90 %.
    let text = std::fs::read_to_string(manifest(FAULT_SITE)).unwrap();
    let text = text.replace("min_soc_ratio = 0.1", "min_soc_ratio = 0.9");
    assert!(text.contains("min_soc_ratio = 0.9"));
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("low-soc.toml");
    std::fs::write(&site, text).unwrap();
    let out = dir.path().join("out");
    let r = simulate(
        &site,
        "2025-06-21T19:50:00+02:00",
        "100m",
        "1800",
        &out,
        &[],
        &["--log-format", "json"],
    );
    let plans = published_plans(&r.stderr);
    assert!(plans.len() >= 3, "{}", r.stderr);
    assert!(plans.iter().all(|p| p["status"].is_string()), "{plans:?}");
    assert!(!latest_plan_status(&out).is_empty());
    for (_, starts) in key_rows(&out, "2025-06-21") {
        assert!(starts.len() >= 3, "{starts:?}");
        assert_unique_and_contiguous(&starts);
    }
}

// ---- both DST transitions ------------------------------------------------------------------

fn whole_local_day(day: &str, start: &str, expected_rows: usize) -> Vec<DateTime<Utc>> {
    let out = tempfile::tempdir().unwrap();
    let d: NaiveDate = day.parse().unwrap();
    let next_day = out
        .path()
        .join("keys")
        .join((d + chrono::Duration::days(1)).to_string());
    // From an hour before local midnight (a loaded machine may take a few hundred ms,
    // i.e. clock minutes, to start the daemon), so that 00:00 is a whole period, until
    // the next day's first period is closed: periods close in order, so the day is then
    // complete however far a loaded machine lets the closing lag behind the clock.
    let mut child = common::ped()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["simulate", "--site"])
        .arg(manifest(FAULT_SITE))
        .args(["--start", start, "--duration", "3d", "--speed", "7200"])
        .args(["--ephemeral-ports", "--listen", "127.0.0.1:0", "--out"])
        .arg(out.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ped simulate");
    let started = Instant::now();
    while !next_day.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("ped simulate exited ({st}) before {day} was complete");
        }
        if started.elapsed() > Duration::from_secs(150) {
            let _ = child.kill();
            panic!("{day} not complete after 150 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let files = key_rows(out.path(), day);
    let mut first: Option<Vec<DateTime<Utc>>> = None;
    for (f, starts) in files {
        assert_eq!(
            starts.len(),
            expected_rows,
            "{}: from {:?} to {:?}",
            f.display(),
            starts.first(),
            starts.last()
        );
        assert_unique_and_contiguous(&starts);
        if let Some(s) = &first {
            assert_eq!(s, &starts, "every producer's file has the same steps");
        }
        first = Some(starts);
    }
    let starts = first.unwrap();
    let grid = fault_grid();
    let d: NaiveDate = day.parse().unwrap();
    assert_eq!(
        starts,
        grid.periods_of_local_day(d).unwrap(),
        "the day's grid, no more, no less"
    );
    // The file's text itself must tell the two 02:xx hours apart by their offsets.
    starts
}

#[test]
fn spring_dst_day_has_92_periods_and_no_local_two_oclock() {
    let starts = whole_local_day("2025-03-30", "2025-03-29T23:00:00+01:00", 92);
    let local: Vec<String> = starts
        .iter()
        .map(|t| fault_grid().format_local(*t))
        .collect();
    assert!(local.iter().all(|s| !s.contains("T02:")), "{local:?}");
    let i = local
        .iter()
        .position(|s| s.starts_with("2025-03-30T01:45"))
        .unwrap();
    assert!(
        local[i].ends_with("+01:00") && local[i + 1].starts_with("2025-03-30T03:00:00+02:00"),
        "{local:?}"
    );
}

#[test]
fn autumn_dst_day_has_100_periods_and_the_repeated_hour_apart_by_offset() {
    let starts = whole_local_day("2025-10-26", "2025-10-25T23:00:00+02:00", 100);
    let local: Vec<String> = starts
        .iter()
        .map(|t| fault_grid().format_local(*t))
        .collect();
    for q in ["00", "15", "30", "45"] {
        for off in ["+02:00", "+01:00"] {
            let want = format!("2025-10-26T02:{q}:00{off}");
            assert_eq!(
                local.iter().filter(|s| **s == want).count(),
                1,
                "{want} in {local:?}"
            );
        }
    }
}

// ---- clock jumps -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_lose_no_period_and_count_none_twice() {
    let lib = Arc::new(ModelLibrary::embedded().unwrap());
    let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
    let mut site = config::load(&manifest(FAULT_SITE), &known).unwrap();
    site.config.polling.interval_ms = 100;
    let out = tempfile::tempdir().unwrap();
    let origin = DateTime::parse_from_rfc3339("2025-06-21T11:05:00+02:00")
        .unwrap()
        .with_timezone(&Utc);
    let speed = 900.0; // a quarter-hour per second
                       // The devices keep true time; only the gateway's clock (the daemon's) is stepped,
                       // as NTP steps a gateway that booted with a wrong clock.
    let truth_clock = Clock::simulated(origin, speed);
    let clock = Clock::steppable(origin, speed);
    let sim = Simulator::start(&site, lib.clone(), truth_clock, 7, true)
        .await
        .unwrap();
    let daemon = common::start_daemon(sim.site.clone(), lib, clock, out.path(), false).await;
    let closed = |d: &Daemon| d.shared.status().periods_closed;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let before_forward = closed(&daemon);
    assert!(before_forward >= 1, "periods close before the jump");
    let jumped_from = clock.now();
    assert!(clock.step(chrono::Duration::hours(1)));
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let after_forward = closed(&daemon);
    // The skipped hour is four periods: they are closed (flagged or interpolated), not lost.
    assert!(
        after_forward >= before_forward + 4,
        "{before_forward} then {after_forward}"
    );
    assert!(clock.step(chrono::Duration::minutes(-10)));
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let end = clock.now();
    let metrics = daemon.shared.metrics.render();
    daemon.shutdown().await;
    drop(sim);

    let (_, starts) = key_rows(out.path(), "2025-06-21").remove(0);
    assert_unique_and_contiguous(&starts);
    assert!(
        starts[0] - origin <= chrono::Duration::minutes(30),
        "the first whole period after start is there: {}",
        starts[0]
    );
    let last = *starts.last().unwrap();
    assert!(
        last + chrono::Duration::minutes(15) <= end,
        "no period closed ahead of the clock"
    );
    // The clock went back: no period may have been closed twice.
    assert_eq!(
        metric(&metrics, "ped_periods_closed_total"),
        Some(starts.len() as f64),
        "each closed period is in the key files exactly once"
    );

    // The periods wholly inside the skipped hour are interpolated across the
    // gap, and say so: the period (its keys) and its energies are `estimated`.
    let ledger =
        ped::ledger::Ledger::open_read_only(&out.path().join("ledger/ped.sqlite")).expect("ledger");
    let stored = ledger.periods().expect("periods");
    let skipped_end = jumped_from + chrono::Duration::hours(1);
    let inside: Vec<_> = stored
        .iter()
        .filter(|p| p.start > jumped_from && p.start + chrono::Duration::minutes(15) <= skipped_end)
        .collect();
    assert!(
        inside.len() >= 3,
        "{} periods inside the skipped hour",
        inside.len()
    );
    for p in &inside {
        assert_eq!(
            p.quality, "estimated",
            "period {} in the skipped hour",
            p.start
        );
        let energies = ledger.energies(p.start).expect("energies");
        assert!(
            energies
                .iter()
                .any(|e| e.quality == ped::ledger::Quality::Estimated),
            "no estimated energy in {}",
            p.start
        );
        assert!(
            energies
                .iter()
                .all(|e| e.quality != ped::ledger::Quality::Measured),
            "a measured energy inside the skipped hour at {}",
            p.start
        );
    }
    let before: Vec<_> = stored
        .iter()
        .filter(|p| p.start + chrono::Duration::minutes(30) <= jumped_from)
        .collect();
    assert!(
        before.iter().all(|p| p.quality != "estimated"),
        "a period before the jump was flagged estimated"
    );
    let flagged = stored.iter().filter(|p| p.quality == "estimated").count();
    assert!(
        metric(&metrics, "ped_periods_estimated_total").unwrap_or(0.0) >= flagged as f64
            && flagged >= inside.len(),
        "ped_periods_estimated_total counts the flagged periods ({flagged})"
    );
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

// ---- a config with every class of mistake -------------------------------------------------

struct BadConfig {
    what: &'static str,
    /// Edits applied to the fault site's text (`from`, `to`), or a whole file.
    edit: fn(&str) -> String,
    env: &'static [(&'static str, &'static str)],
    /// Must all appear in what ped prints: the key and the fix.
    needles: &'static [&'static str],
}

fn bad_configs() -> Vec<BadConfig> {
    vec![
        BadConfig {
            what: "unknown key",
            edit: |s| s.replace("latitude = 47.32", "latitude = 47.32\nlattitude = 47.3"),
            env: &[],
            needles: &["lattitude", "fix: remove or rename the key"],
        },
        BadConfig {
            what: "wrong type",
            edit: |s| s.replace("kwp = 60.0", "kwp = \"sixty\""),
            env: &[],
            needles: &["kwp", "fix:"],
        },
        BadConfig {
            what: "out-of-range value",
            edit: |s| s.replace("settlement_minutes = 15", "settlement_minutes = 20"),
            env: &[],
            needles: &[
                "site.settlement_minutes",
                "fix: use 15 (default since 2025) or 30",
            ],
        },
        BadConfig {
            what: "duplicate id",
            edit: |s| s.replace("id = \"MTR-4\"", "id = \"MTR-3\""),
            env: &[],
            needles: &[
                "devices[6].id (id `MTR-3`)",
                "duplicate device id",
                "fix: give every device its own id",
            ],
        },
        BadConfig {
            what: "dangling reference",
            edit: |s| s.replace("meter = \"MTR-4\"", "meter = \"MTR-404\""),
            env: &[],
            needles: &[
                "participants[3].meter (id `H-4`)",
                "no device `MTR-404`",
                "fix: name the id of the meter",
            ],
        },
        BadConfig {
            what: "bad address",
            edit: |s| s.replace("127.0.0.1:25002", "127.0.0.1:70000"),
            env: &[],
            needles: &["devices[1].address (id `PV-2`)", "fix: write host:port"],
        },
        BadConfig {
            what: "missing models_dir",
            edit: |s| {
                s.replace(
                    "output_dir = \"out\"",
                    "output_dir = \"out\"\nmodels_dir = \"/nonexistent/ped-models\"",
                )
            },
            env: &[],
            needles: &[
                "site.models_dir",
                "/nonexistent/ped-models",
                "fix: point site.models_dir",
            ],
        },
        BadConfig {
            what: "environment override with a bad value",
            edit: |s| s.to_string(),
            env: &[("PED__KEYS__UNITS_PER_ONE", "7")],
            needles: &[
                "keys.units_per_one",
                "7 is not a supported precision",
                "fix: use 1000",
            ],
        },
        BadConfig {
            what: "environment override of the wrong type",
            edit: |s| s.to_string(),
            env: &[("PED__POLLING__INTERVAL_MS", "fast")],
            needles: &["interval_ms", "fix:"],
        },
    ]
}

#[test]
fn every_class_of_config_mistake_is_named_with_key_and_fix_and_nothing_starts() {
    let base = std::fs::read_to_string(manifest(FAULT_SITE)).unwrap();
    let mut failures = Vec::new();
    for case in bad_configs() {
        let dir = tempfile::tempdir().unwrap();
        let text = (case.edit)(&base);
        assert!(
            case.env.len() + usize::from(text != base) > 0,
            "{}: no fault injected",
            case.what
        );
        let site = dir.path().join("site.toml");
        std::fs::write(&site, text).unwrap();
        let site_s = site.to_str().unwrap();
        let out = dir.path().join("out");
        // A port that is free now: if ped got as far as listening, it would take it.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().to_string();
        drop(probe);
        for args in [
            vec!["check", "--site", site_s],
            vec![
                "simulate",
                "--site",
                site_s,
                "--duration",
                "1h",
                "--speed",
                "3600",
                "--listen",
                &port,
                "--out",
                out.to_str().unwrap(),
            ],
            vec!["run", "--site", site_s, "--dry-run"],
        ] {
            let r = ped(&args, case.env, Duration::from_secs(20));
            let all = format!("{}{}", r.stdout, r.stderr);
            if r.code != Some(1) {
                failures.push(format!(
                    "{} / ped {}: exit {:?}\n{all}",
                    case.what, args[0], r.code
                ));
            }
            for n in case.needles {
                if !all.contains(n) {
                    failures.push(format!(
                        "{} / ped {}: `{n}` missing from:\n{all}",
                        case.what, args[0]
                    ));
                }
            }
            for started in ["ped daemon started", "served on 127.0.0.1", "period closed"] {
                if all.contains(started) {
                    failures.push(format!(
                        "{} / ped {}: started anyway ({started})",
                        case.what, args[0]
                    ));
                }
            }
        }
        if out.exists() {
            failures.push(format!(
                "{}: output written to {}",
                case.what,
                out.display()
            ));
        }
        // Still free: nothing listened there (the binding would have failed or persisted).
        if std::net::TcpListener::bind(&port).is_err() {
            failures.push(format!(
                "{}: port {port} is in use after ped exited",
                case.what
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
