//! `ped backtest`: replays a district data set (the layout of
//! `district-2025`) through forecast → plan → simulated devices → ex-post
//! allocation keys, and scores the result against baselines computed in the
//! same run.
//!
//! What is simulated and how:
//! - Forecasts are the daemon's (`plan::site_input`), issued from the data
//!   before the replan step only: PV is [`crate::forecast::pv_forecast`] for
//!   every plane of every plant, scaled by
//!   [`crate::forecast::measured_clearness`] of the last step's measured
//!   output against its clear sky; each participant's load is
//!   [`crate::forecast::SeriesHistory::forecast`] on three days of measured
//!   steps (the last step's load held flat while that is all zero); each
//!   substation's heat demand is the last step's, held flat. No weather
//!   (temperature, irradiance forecast) enters the plan, as in the daemon.
//! - The plan's setpoints of each step are applied to the **actual** data by
//!   an in-process device model: batteries (power and energy limits, charge
//!   and discharge efficiency, SoC floor) and the heat store (P2H with its
//!   efficiency, hourly losses, serving at most half its substation's
//!   demand, as the planner assumes). As ped's local controller would, a
//!   charging setpoint is capped by the actual local surplus and a discharge
//!   setpoint by the actual deficit: storage never charges from the grid nor
//!   discharges into export.
//! - Before that, the setpoints are moved by the step's measured error
//!   ([`crate::plan::track`], off with [`Options::tracking`] = false): sun the
//!   forecast missed goes into storage with room instead of out as export.
//!   [`TrackingDiagnosis`] tells, either way, how much of the `ped` run's
//!   export was unplanned surplus that storage had room for.
//! - The keys of each step come from the actual energies: consumers are the
//!   participants, then the batteries (their charge), then the P2H units;
//!   production is PV plus discharge. With the site's optimised policy (and
//!   `keys.month_budget_ms` > 0) each step is solved as its month's next step
//!   with the month so far ([`crate::allocation::keys_for_step_in_month`]),
//!   as the daemon does, so `no_worse_than_pro_rata` holds over each month;
//!   other policies use [`crate::allocation::keys_for_step`].
//! - The LP is re-solved every `replan_every` steps and after a large PV miss
//!   (actual PV off the plan's forecast by more than a quarter of the larger
//!   of the two and 5 % of the peak, as in the daemon).
//!
//! Scenarios (dispatch × keys): `ped` (LP, the site's key policy),
//! `ped_prorata` (LP, pro rata: the same energy, the DSO's default key),
//! `static_keys` (LP, the data set's subscription shares), `greedy_battery`
//! (charge on any surplus, discharge on any deficit), `no_storage`, and
//! `dso_prorata` (no storage, pro rata: the district without ped). Savings
//! are against grid-only supply: allocated kWh × (tariff − local price).

pub mod data;
mod dataset;
mod progress;
mod report;
mod scenarios;
mod scoring;
mod site;
mod storage;
mod summary;
pub mod svg;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::NaiveDate;

use crate::config::SiteConfig;
use crate::dso::loadcurve::LineLog;
use crate::plan;
use crate::plan::site_input::{
    BATTERY_END_VALUE_RATIO, STORE_LOSS_PER_HOUR, STORE_SHARE_OF_DEMAND,
};

pub use dataset::{Checks, DataQuality, Dataset, ParticipantCheck, Problem, ProblemKind};
pub use report::table;
pub use storage::TrackingDiagnosis;
pub use summary::{
    ForecastErrors, ParticipantResult, ScenarioSummary, SolveStats, Summary, WorseOff,
    WORSE_OFF_MIN_KWH, WORSE_OFF_SHARE,
};

use scenarios::{lp_dispatch, scenarios, simple_dispatch, KeyConsumers, Replay};
use scoring::{count_saving_less, participant_results, score_scenario, storage_trace};
use site::{build_site, range};
use storage::Dispatch;

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("cannot read {file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}, line {line}: {message}")]
    Data {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{file}: missing {what}")]
    Missing { file: PathBuf, what: String },
    #[error("{0}")]
    Options(String),
    #[error("cannot write {file}: {source}")]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("plan input rejected at {at}: {source}")]
    Plan { at: String, source: plan::PlanError },
    #[error(transparent)]
    Chart(#[from] svg::ChartError),
    #[error("{} suspect value(s) in the data set, refused with --strict:\n{}", .0.total, .0)]
    Suspect(LineLog),
}

/// The device model's battery efficiency each way and its P2H efficiency:
/// the daemon's defaults for a device that names none (`config::resolved`),
/// which the plan assumes too. The model has one battery efficiency for
/// both ways, so the two defaults must agree.
const BATTERY_EFF: f64 = crate::config::BATTERY_CHARGE_EFFICIENCY;
const _: () = assert!(BATTERY_EFF == crate::config::BATTERY_DISCHARGE_EFFICIENCY);
const P2H_EFF: f64 = crate::config::P2H_EFFICIENCY;

#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    /// First and last local day replayed (inclusive); default: the whole set
    /// after a week of warm-up history.
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    /// 30 (the data set's) or 15 (each half-hour split evenly in two).
    pub step_minutes: u32,
    pub replan_every: usize,
    pub budget: Duration,
    pub out_dir: PathBuf,
    pub progress: bool,
    /// Move the plan's setpoints by the measured error within each step
    /// ([`crate::plan::track`]); off: the plan's powers as they stand.
    pub tracking: bool,
    /// Refuse the run when the replayed range holds a suspect value
    /// (negative, above the ceiling of a reading, not a number) instead of
    /// treating it as missing, as `ped keys --strict` does.
    pub strict: bool,
}

/// Replays the data set through the `ped` dispatch and the baselines, scores
/// them, writes the report files to [`Options::out_dir`] and returns the
/// summary.
pub fn run(cfg: &SiteConfig, opts: &Options) -> Result<Summary, BacktestError> {
    let began = Instant::now();
    if opts.replan_every == 0 {
        return Err(BacktestError::Options(
            "--replan-every must be at least 1".into(),
        ));
    }
    let tz: chrono_tz::Tz = cfg.site.timezone.parse().map_err(|_| {
        BacktestError::Options(format!(
            "site.timezone `{}` is not an IANA zone (fix: e.g. Europe/Paris)",
            cfg.site.timezone
        ))
    })?;
    let ds = Dataset::load(
        &opts.data_dir,
        tz,
        opts.step_minutes,
        &Checks::from_site(cfg),
    )?;
    let site = build_site(cfg, &ds)?;
    let (begin, end) = range(&ds, opts)?;
    let quality = check_quality(&ds, begin, end, opts.strict)?;
    let r = Replay::new(&ds, &site, begin, end);

    let lp_began = Instant::now();
    let lp = lp_dispatch(&r, opts)?;
    let lp_loop_seconds = lp_began.elapsed().as_secs_f64();

    let baselines_began = Instant::now();
    let greedy = simple_dispatch(&r, Dispatch::Greedy);
    let idle = simple_dispatch(&r, Dispatch::Idle);
    let consumers = KeyConsumers::new(&site, ds.participants.len());
    let scenarios = scenarios(&site, &consumers, &lp.run, &greedy, &idle);
    let month_solver = consumers.month_solver(&site);
    let mut summaries = Vec::new();
    let mut per_participant: Vec<Vec<f64>> = Vec::new();
    let mut trace = report::Trace::default();
    for sc in &scenarios {
        let (s, alloc) = score_scenario(&r, sc, &consumers, month_solver.as_ref(), &mut trace)?;
        summaries.push(s);
        per_participant.push(alloc);
    }
    storage_trace(&r, &lp.run.flows, &mut trace);
    let dso = scenarios
        .iter()
        .position(|s| s.name == "dso_prorata")
        .unwrap_or(0);
    let participants = participant_results(&r, &scenarios, &per_participant, dso);
    count_saving_less(&site, &mut summaries, &per_participant, dso);

    let summary = Summary {
        data_dir: opts.data_dir.display().to_string(),
        from: ds.cal.grid.format_local(ds.cal.time(begin)),
        to: ds
            .cal
            .grid
            .format_local(ds.cal.time(end - 1) + ds.cal.grid.step()),
        step_minutes: ds.cal.grid.step_minutes(),
        steps: end - begin,
        horizon_steps: r.horizon,
        replan_every: opts.replan_every,
        budget_ms: opts.budget.as_millis() as u64,
        wall_seconds: began.elapsed().as_secs_f64(),
        lp_loop_seconds,
        baselines_seconds: baselines_began.elapsed().as_secs_f64(),
        scenarios: summaries,
        solve: lp.solve,
        forecast_errors: lp.forecast_errors,
        participants,
        tracking: lp.tracking,
        data_quality: quality,
    };
    report::write_outputs(&summary, &trace, &ds, begin, &opts.out_dir)?;
    Ok(summary)
}

/// The data quality of the replayed range, its problems logged; with
/// `strict`, a suspect value refuses the run.
fn check_quality(
    ds: &Dataset,
    begin: usize,
    end: usize,
    strict: bool,
) -> Result<DataQuality, BacktestError> {
    let (quality, suspects) = ds.quality(begin, end);
    if strict && !suspects.is_empty() {
        return Err(BacktestError::Suspect(suspects));
    }
    for line in &quality.first {
        tracing::warn!(value = %line, "missing or suspect value in the data set");
    }
    let more = quality.missing_values + quality.suspect_values - quality.first.len();
    if quality.missing_values + quality.suspect_values > 0 {
        tracing::warn!(
            missing = quality.missing_values,
            suspect = quality.suspect_values,
            estimated = quality.estimated_values,
            estimated_kwh = format!("{:.1}", quality.estimated_kwh),
            left_at_zero = quality.unestimated_values,
            not_shown = more,
            "data set values treated as missing and estimated as `ped keys` does (all counted in summary.json)"
        );
    }
    if quality.values_outside_membership > 0 {
        tracing::warn!(
            values = quality.values_outside_membership,
            "values outside a participant's membership (site config entry/exit) ignored"
        );
    }
    Ok(quality)
}
