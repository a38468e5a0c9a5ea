//! `ped backtest`: replays a district data set (the layout of
//! `district-2025`) through forecast → plan → simulated devices → ex-post
//! allocation keys, and scores the result against baselines computed in the
//! same run.
//!
//! What is simulated and how:
//! - Forecasts are issued from the data before the replan step only (PV from
//!   each plant's measured output, loads per participant, heat per
//!   substation). The heat forecast uses the data set's temperature of the
//!   forecast days as a perfect weather forecast: the data set has no
//!   archived weather forecasts.
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
pub mod svg;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::allocation::{self, Policy, Precision, StepInput};
use crate::config::{DeviceKind, KeyPolicy, SiteConfig};
use crate::dso::loadcurve::{LineLog, Plausibility, SHOWN_LINES};
use crate::forecast::{
    self, Calendar, DegreeDayModel, ErrorAccumulator, ForecastError, LoadAnalogs,
};
use crate::keys::estimate_gaps;
use crate::plan::{self, BatteryModel, HeatUnitModel, ParticipantForecast, PlanInput, PlanStatus};
use crate::time::Grid;

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
    #[error("{} suspect value(s) in the data set, refused with --strict:\n{}", .0.total, .0)]
    Suspect(LineLog),
}

/// Battery charge/discharge efficiency and P2H efficiency the planner assumes
/// (see `daemon::planner`), used by both the plan and the device model.
const BATTERY_EFF: f64 = 0.95;
const P2H_EFF: f64 = 0.98;
const STORE_LOSS_PER_HOUR: f64 = 0.005;
/// Share of the local price a kWh left in a battery is worth to the plan
/// (`BatteryModel::end_value_eur_per_kwh`, as the daemon's planner sets it).
const BATTERY_END_VALUE_RATIO: f64 = 0.9;
/// Part of its substation's demand a heat store may cover.
const STORE_SHARE_OF_DEMAND: f64 = 0.5;
/// A PV miss triggers a re-solve when it exceeds this share of the installed
/// peak and [`MISS_REPLAN_SHARE_OF_PV`] of the larger of actual and forecast
/// PV: the daemon's rule (`daemon::planner`). A fifth of the peak alone never
/// fired in winter, when a day's PV stays below that.
const MISS_REPLAN_SHARE_OF_PEAK: f64 = 0.05;
const MISS_REPLAN_SHARE_OF_PV: f64 = 0.25;

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

/// How the energy series of a data set are checked: what a reading can be
/// (the ceilings `ped keys` applies to load curves) and who is a member of
/// the operation on which days.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    pub plausibility: Plausibility,
    /// Per participant id: its PRM in the site config (for its own ceiling),
    /// its first and last local day in the operation (`None`: open).
    pub participants: BTreeMap<String, ParticipantCheck>,
}

#[derive(Debug, Clone, Default)]
pub struct ParticipantCheck {
    pub prm: Option<crate::ids::Prm>,
    pub entry: Option<NaiveDate>,
    pub exit: Option<NaiveDate>,
}

impl Checks {
    /// The checks of `ped keys` for this site (see `KeysJob::from_site`).
    pub fn from_site(cfg: &SiteConfig) -> Self {
        Checks {
            plausibility: Plausibility {
                max_watts: cfg.keys.max_load_curve_kw * 1000.0,
                per_prm: cfg
                    .participants
                    .iter()
                    .filter_map(|p| Some((p.prm.clone(), p.subscribed_kva? * 2000.0)))
                    .collect(),
            },
            participants: cfg
                .participants
                .iter()
                .map(|p| {
                    let (entry, exit) = p.membership();
                    (
                        p.id.clone(),
                        ParticipantCheck {
                            prm: Some(p.prm.clone()),
                            entry,
                            exit,
                        },
                    )
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// An empty cell where a value was expected.
    Missing,
    /// A value that cannot be a reading: negative (a meter reset), above the
    /// ceiling of a reading, or not a number.
    Suspect,
}

/// One missing or suspect value of the energy series.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Row of the data file (source step).
    pub row: usize,
    pub kind: ProblemKind,
    /// The estimate that replaced it (kWh); `None`: nothing to estimate
    /// from, counted as 0.
    pub estimated_kwh: Option<f64>,
    pub file: PathBuf,
    pub line: usize,
    /// Column and reason, e.g. "H-0028 = -958.7 kWh: negative (a meter reset?)".
    pub reason: String,
}

/// What the replayed range's data held and what was done about it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataQuality {
    /// Empty cells where a value was expected (a member's consumption, a
    /// plant's production).
    pub missing_values: usize,
    /// Values that cannot be readings, treated as missing: negative (a meter
    /// reset), above the ceiling of a reading (`keys.max_load_curve_kw`, or
    /// twice a participant's `subscribed_kva`), not a number.
    pub suspect_values: usize,
    /// Missing and suspect values replaced by an estimate, with the method of
    /// `ped keys` (`keys::estimate_gaps`).
    pub estimated_values: usize,
    pub estimated_kwh: f64,
    /// Missing or suspect values nothing could estimate from, counted as 0.
    pub unestimated_values: usize,
    /// Cells outside a participant's membership (entry/exit in the site
    /// config) that held a value: ignored, the participant consumes nothing
    /// in the operation then.
    pub values_outside_membership: usize,
    /// Participants with an entry or exit day inside the data set.
    pub participants_with_entry_or_exit: usize,
    /// The first problems in full ("file, line N: column = value: reason").
    pub first: Vec<String>,
}

/// The data set on the replay grid, energies converted to kW averages.
pub struct Dataset {
    pub cal: Calendar,
    pub plants: Vec<data::PlantRow>,
    /// [plant][step] kW
    pub pv_kw: Vec<Vec<f64>>,
    pub participants: Vec<data::ParticipantRow>,
    /// [participant][step] kW
    pub load_kw: Vec<Vec<f64>>,
    pub substations: Vec<String>,
    /// [substation][step] kW thermal
    pub heat_kw: Vec<Vec<f64>>,
    pub temp_c: Vec<f64>,
    /// Replay steps per data row.
    pub split: usize,
    /// Participants with an entry or exit day, and for each of them
    /// `[step]` whether it is a member then (everyone else always is).
    pub limited: Vec<(usize, Vec<bool>)>,
    /// Missing and suspect values of production.csv and consumption.csv.
    pub problems: Vec<Problem>,
    /// Data rows of the values present outside a membership (ignored).
    pub outside_membership_rows: Vec<usize>,
}

/// One series of production.csv or consumption.csv cleaned as `ped keys`
/// cleans a load curve: values that cannot be readings become missing, the
/// missing values of the expected steps are estimated
/// ([`estimate_gaps`]), and the steps not expected (outside membership) are 0.
#[allow(clippy::too_many_arguments)]
fn clean_series(
    w: &data::Wide,
    col: usize,
    ceiling: (f64, &'static str),
    expected: &[bool],
    grid: &Grid,
    to_kw: f64,
    not_numbers: &std::collections::HashMap<(usize, usize), String>,
    problems: &mut Vec<Problem>,
    outside: &mut Vec<usize>,
) -> Vec<f64> {
    let raw = &w.values[col];
    let name = &w.columns[col];
    let n = raw.len();
    let mut kwh = vec![0.0; n];
    let mut known = vec![false; n];
    let mut bad: Vec<(usize, ProblemKind, String)> = Vec::new();
    for t in 0..n {
        let v = raw[t];
        let text = if v.is_nan() {
            not_numbers.get(&(col, t)).map(String::as_str)
        } else {
            None
        };
        if !expected[t] {
            if !v.is_nan() || text.is_some() {
                outside.push(t);
            }
            continue;
        }
        let why = match text {
            Some(text) => Some((
                ProblemKind::Suspect,
                format!("{name} = `{text}`: not a number; treated as missing"),
            )),
            None if v.is_nan() => Some((ProblemKind::Missing, format!("{name} is empty"))),
            None if v < 0.0 => Some((
                ProblemKind::Suspect,
                format!("{name} = {v} kWh: negative (a meter reset?); treated as missing"),
            )),
            None if v * to_kw * 1000.0 > ceiling.0 => Some((
                ProblemKind::Suspect,
                format!(
                    "{name} = {v} kWh ({:.0} kW on average): above {} kW, the ceiling of a reading ({}); treated as missing",
                    v * to_kw,
                    ceiling.0 / 1000.0,
                    ceiling.1
                ),
            )),
            None => None,
        };
        match why {
            None => {
                kwh[t] = v;
                known[t] = true;
            }
            Some((kind, reason)) => bad.push((t, kind, reason)),
        }
    }
    if bad.is_empty() {
        return kwh;
    }
    let mut filled = vec![false; n];
    for t in estimate_gaps(&mut kwh, &known, expected, &w.utc, grid) {
        filled[t] = true;
    }
    for (t, kind, reason) in bad {
        let estimated_kwh = filled[t].then_some(kwh[t]);
        if estimated_kwh.is_none() {
            kwh[t] = 0.0;
        }
        problems.push(Problem {
            row: t,
            kind,
            estimated_kwh,
            file: w.file.clone(),
            line: w.lines[t],
            reason,
        });
    }
    kwh
}

fn check_same_rows(a: &data::Wide, b: &data::Wide) -> Result<(), BacktestError> {
    if a.utc != b.utc {
        let line = a
            .utc
            .iter()
            .zip(&b.utc)
            .position(|(x, y)| x != y)
            .unwrap_or(a.utc.len().min(b.utc.len()))
            + 2;
        return Err(BacktestError::Data {
            file: b.file.clone(),
            line,
            message: format!(
                "its rows do not match {} ({} rows against {})",
                a.file.display(),
                b.utc.len(),
                a.utc.len()
            ),
        });
    }
    Ok(())
}

/// Each source row becomes `split` rows of a finer grid: energies divided,
/// so kW averages are repeated.
fn resample(values: &[f64], split: usize, scale: f64) -> Vec<f64> {
    values
        .iter()
        .flat_map(|v| std::iter::repeat(v * scale).take(split))
        .collect()
}

impl Dataset {
    /// Reads the data set; the energy series are checked and cleaned with
    /// `checks` ([`clean_series`]).
    pub fn load(
        dir: &Path,
        tz: chrono_tz::Tz,
        step_minutes: u32,
        checks: &Checks,
    ) -> Result<Self, BacktestError> {
        for f in [
            "production.csv",
            "consumption.csv",
            "heat.csv",
            "participants.csv",
            "plants.csv",
        ] {
            if !dir.join(f).is_file() {
                return Err(BacktestError::Missing {
                    file: dir.join(f),
                    what: "file (expected the layout of district-2025: see its README)".into(),
                });
            }
        }
        let prod = data::read_wide(&dir.join("production.csv"), true)?;
        let cons = data::read_wide(&dir.join("consumption.csv"), true)?;
        let heat = data::read_wide(&dir.join("heat.csv"), false)?;
        check_same_rows(&prod, &cons)?;
        check_same_rows(&prod, &heat)?;
        let source_step = match prod.utc.as_slice() {
            [a, b, ..] => (*b - *a).num_minutes(),
            _ => 30,
        };
        if let Some(k) = prod
            .utc
            .windows(2)
            .position(|w| (w[1] - w[0]).num_minutes() != source_step)
        {
            return Err(BacktestError::Data {
                file: prod.file.clone(),
                line: k + 3,
                message: format!("gap in the series: steps must all be {source_step} minutes"),
            });
        }
        let source_step = u32::try_from(source_step).unwrap_or(0);
        if source_step == 0 || step_minutes == 0 || source_step % step_minutes != 0 {
            return Err(BacktestError::Options(format!(
                "--step {step_minutes}: the data set's step is {source_step} minutes; use it or a divisor of it (15 for 30)"
            )));
        }
        let split = (source_step / step_minutes) as usize;
        let grid = Grid::new(step_minutes, tz)
            .map_err(|e| BacktestError::Options(format!("--step: {e}")))?;
        // kWh per source step → kW.
        let to_kw = 60.0 / f64::from(source_step);
        let plants = data::read_plants(&dir.join("plants.csv"))?;
        let participants = data::read_participants(&dir.join("participants.csv"))?;
        // Gaps are estimated on the data's own step, as `ped keys` does on
        // the settlement step.
        let source_grid = Grid::new(source_step, tz)
            .map_err(|e| BacktestError::Options(format!("data step: {e}")))?;
        let days: Vec<NaiveDate> = prod.utc.iter().map(|t| source_grid.local_day(*t)).collect();
        let mut problems = Vec::new();
        let mut outside = Vec::new();
        let position = |w: &data::Wide, id: &str| -> Result<usize, BacktestError> {
            w.columns
                .iter()
                .position(|c| c == id)
                .ok_or_else(|| BacktestError::Missing {
                    file: w.file.clone(),
                    what: format!("column `{id}`"),
                })
        };
        let texts = |w: &data::Wide| -> std::collections::HashMap<(usize, usize), String> {
            w.not_numbers
                .iter()
                .map(|(c, r, t)| ((*c, *r), t.clone()))
                .collect()
        };
        let (prod_texts, cons_texts) = (texts(&prod), texts(&cons));
        let always = vec![true; prod.utc.len()];
        let pv_kw = plants
            .iter()
            .map(|p| {
                let col = position(&prod, &p.id)?;
                let kwh = clean_series(
                    &prod,
                    col,
                    checks.plausibility.ceiling(None),
                    &always,
                    &source_grid,
                    to_kw,
                    &prod_texts,
                    &mut problems,
                    &mut outside,
                );
                Ok(resample(&kwh, split, to_kw))
            })
            .collect::<Result<Vec<_>, BacktestError>>()?;
        let mut limited = Vec::new();
        let mut load_kw = Vec::with_capacity(participants.len());
        for (i, p) in participants.iter().enumerate() {
            let col = position(&cons, &p.id)?;
            let check = checks.participants.get(&p.id);
            let expected: Vec<bool> = match check {
                Some(c) if c.entry.is_some() || c.exit.is_some() => days
                    .iter()
                    .map(|&d| c.entry.map_or(true, |e| d >= e) && c.exit.map_or(true, |x| d <= x))
                    .collect(),
                _ => always.clone(),
            };
            let kwh = clean_series(
                &cons,
                col,
                checks
                    .plausibility
                    .ceiling(check.and_then(|c| c.prm.as_ref())),
                &expected,
                &source_grid,
                to_kw,
                &cons_texts,
                &mut problems,
                &mut outside,
            );
            if expected.iter().any(|e| !e) {
                limited.push((
                    i,
                    expected
                        .iter()
                        .flat_map(|&e| std::iter::repeat(e).take(split))
                        .collect(),
                ));
            }
            load_kw.push(resample(&kwh, split, to_kw));
        }
        // In file order, so the first ones shown are the first in the files.
        problems.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        let substations: Vec<String> = heat
            .columns
            .iter()
            .filter(|c| c.as_str() != "temp_air_c")
            .cloned()
            .collect();
        let heat_kw = substations
            .iter()
            .map(|s| heat.column(s).map(|v| resample(v, split, to_kw)))
            .collect::<Result<Vec<_>, _>>()?;
        let temp_c = resample(heat.column("temp_air_c")?, split, 1.0);
        let cal = Calendar {
            grid,
            start: prod.utc[0],
            len: prod.utc.len() * split,
        };
        Ok(Dataset {
            cal,
            plants,
            pv_kw,
            participants,
            load_kw,
            substations,
            heat_kw,
            temp_c,
            split,
            limited,
            problems,
            outside_membership_rows: outside,
        })
    }

    /// The problems of the data rows that replay steps `begin..end` cover.
    pub fn quality(&self, begin: usize, end: usize) -> (DataQuality, LineLog) {
        let rows = begin / self.split..end.div_ceil(self.split);
        let mut q = DataQuality {
            participants_with_entry_or_exit: self.limited.len(),
            values_outside_membership: self
                .outside_membership_rows
                .iter()
                .filter(|r| rows.contains(r))
                .count(),
            ..Default::default()
        };
        let mut suspects = LineLog::default();
        for p in self.problems.iter().filter(|p| rows.contains(&p.row)) {
            match p.kind {
                ProblemKind::Missing => q.missing_values += 1,
                ProblemKind::Suspect => {
                    q.suspect_values += 1;
                    suspects.push(crate::dso::loadcurve::BadLine {
                        file: p.file.clone(),
                        line: p.line,
                        reason: p.reason.clone(),
                    });
                }
            }
            match p.estimated_kwh {
                Some(e) => {
                    q.estimated_values += 1;
                    q.estimated_kwh += e;
                }
                None => q.unestimated_values += 1,
            }
            if q.first.len() < SHOWN_LINES {
                q.first.push(format!(
                    "{}, line {}: {}",
                    p.file.display(),
                    p.line,
                    p.reason
                ));
            }
        }
        (q, suspects)
    }
}

/// A battery or heat unit of the site config, as the device model sees it.
#[derive(Debug, Clone)]
struct Battery {
    id: String,
    capacity: f64,
    floor: f64,
    max_charge: f64,
    max_discharge: f64,
}

#[derive(Debug, Clone)]
struct HeatUnit {
    id: String,
    max_kw: f64,
    capacity: f64,
    /// Index of its substation in the data set's heat series.
    substation: usize,
}

/// Everything the replay needs from the site config and the data set.
struct Site {
    lat: f64,
    lon: f64,
    tariff: Vec<f64>,
    priority: Vec<u8>,
    static_share: Vec<f64>,
    batteries: Vec<Battery>,
    heat: Vec<HeatUnit>,
    local_price: f64,
    export_price: f64,
    import_price: f64,
    heat_price: f64,
    horizon_hours: u32,
    policy: KeyPolicy,
    precision: Precision,
    /// `[keys]` fairness, when the site's optimised keys are solved as the
    /// month's next step (`keys.month_budget_ms` > 0), as the daemon does.
    month_fairness: Option<crate::allocation::solver::Fairness>,
}

fn build_site(cfg: &SiteConfig, ds: &Dataset) -> Result<Site, BacktestError> {
    let by_id: BTreeMap<&str, &crate::config::ParticipantConfig> = cfg
        .participants
        .iter()
        .map(|p| (p.id.as_str(), p))
        .collect();
    // Participants the site config does not list get the generator's defaults
    // (scripts/gen-site-config.py): households 0.2516 €/kWh and priority 1,
    // substation auxiliaries 0.18, everything else 0.20 and priority 2.
    let (tariff, priority): (Vec<f64>, Vec<u8>) = ds
        .participants
        .iter()
        .map(|p| match by_id.get(p.id.as_str()) {
            Some(c) => (c.tariff_eur_per_kwh, c.priority),
            None => match p.kind.as_str() {
                "household" => (0.2516, 1),
                "heat_substation" => (0.18, 2),
                _ => (0.20, 2),
            },
        })
        .unzip();
    let batteries = cfg
        .devices
        .iter()
        .filter(|d| d.kind == DeviceKind::Battery)
        .map(|d| {
            let cap = d.capacity_kwh.unwrap_or(0.0).max(0.0);
            Battery {
                id: d.id.clone(),
                capacity: cap,
                floor: cap * d.min_soc_ratio.unwrap_or(0.1).clamp(0.0, 1.0),
                max_charge: d.max_charge_kw.unwrap_or(0.0).max(0.0),
                max_discharge: d.max_discharge_kw.unwrap_or(0.0).max(0.0),
            }
        })
        .collect();
    let heat = cfg
        .devices
        .iter()
        .filter(|d| d.kind == DeviceKind::PowerToHeat)
        .map(|d| {
            let sst = d.substation.clone().unwrap_or_default();
            let substation = ds.substations.iter().position(|s| *s == sst).ok_or_else(|| {
                BacktestError::Options(format!(
                    "device {}: substation `{sst}` is not a column of heat.csv (fix: set devices.substation to one of {:?})",
                    d.id, ds.substations
                ))
            })?;
            Ok(HeatUnit {
                id: d.id.clone(),
                max_kw: d.max_power_kw.unwrap_or(0.0).max(0.0),
                capacity: d.capacity_kwh.unwrap_or(0.0).max(0.0),
                substation,
            })
        })
        .collect::<Result<Vec<_>, BacktestError>>()?;
    Ok(Site {
        lat: cfg.site.latitude,
        lon: cfg.site.longitude,
        tariff,
        priority,
        static_share: ds
            .participants
            .iter()
            .map(|p| p.subscription_share)
            .collect(),
        batteries,
        heat,
        local_price: cfg.plan.local_price_eur_per_kwh,
        export_price: cfg.plan.export_price_eur_per_kwh,
        import_price: cfg.plan.import_price_eur_per_kwh,
        heat_price: cfg.plan.heat_price_eur_per_kwh,
        horizon_hours: cfg.plan.horizon_hours.max(1),
        policy: cfg.keys.policy,
        precision: Precision::new(cfg.keys.units_per_one).unwrap_or_default(),
        month_fairness: (cfg.keys.policy == KeyPolicy::Optimised && cfg.keys.month_budget_ms > 0)
            .then(|| crate::allocation::solver::Fairness {
                floor_ratio: cfg.keys.floor_ratio,
                no_worse_than_pro_rata: cfg.keys.no_worse_than_pro_rata,
                ..Default::default()
            }),
    })
}

/// The dispatches that need no plan (the LP's is the main loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dispatch {
    Greedy,
    Idle,
}

/// State of the simulated storage.
#[derive(Debug, Clone)]
struct DeviceState {
    soc: Vec<f64>,
    store: Vec<f64>,
}

/// What the devices did in one step (kW averages).
#[derive(Debug, Clone, Default)]
struct StepFlows {
    charge: Vec<f64>,
    discharge: Vec<f64>,
    p2h: Vec<f64>,
    served: Vec<f64>,
}

/// Applies setpoints to the actual step: storage charges only from the
/// actual surplus and discharges only into the actual deficit.
#[allow(clippy::too_many_arguments)]
fn device_step(
    site: &Site,
    st: &mut DeviceState,
    h: f64,
    pv: f64,
    load: f64,
    demand: &[f64],
    battery_set: &[f64],
    p2h_set: &[f64],
) -> StepFlows {
    let mut f = StepFlows {
        charge: vec![0.0; site.batteries.len()],
        discharge: vec![0.0; site.batteries.len()],
        p2h: vec![0.0; site.heat.len()],
        served: vec![0.0; site.heat.len()],
    };
    let mut surplus = pv - load;
    for (k, b) in site.batteries.iter().enumerate() {
        let set = battery_set.get(k).copied().unwrap_or(0.0);
        if set > 0.0 {
            let room = (b.capacity - st.soc[k]).max(0.0) / (BATTERY_EFF * h);
            let c = set
                .min(b.max_charge)
                .min(surplus.max(0.0))
                .min(room)
                .max(0.0);
            st.soc[k] = (st.soc[k] + BATTERY_EFF * c * h).min(b.capacity);
            surplus -= c;
            f.charge[k] = c;
        } else if set < 0.0 {
            let most = (st.soc[k] - b.floor).max(0.0) * BATTERY_EFF / h;
            let d = (-set)
                .min(b.max_discharge)
                .min((-surplus).max(0.0))
                .min(most)
                .max(0.0);
            st.soc[k] = (st.soc[k] - d * h / BATTERY_EFF).max(0.0);
            surplus += d;
            f.discharge[k] = d;
        }
    }
    for (k, u) in site.heat.iter().enumerate() {
        let (kept, s, room) = store_step(u, st.store[k], h, demand);
        let room = room / (P2H_EFF * h);
        let set = p2h_set.get(k).copied().unwrap_or(0.0);
        let p = set.min(u.max_kw).min(surplus.max(0.0)).min(room).max(0.0);
        surplus -= p;
        st.store[k] = (kept + (P2H_EFF * p - s) * h).clamp(0.0, u.capacity);
        f.p2h[k] = p;
        f.served[k] = s;
    }
    f
}

/// The tracking problem of one simulated step: the plan's setpoints, the
/// plan's and the measured surplus, and the devices' state and room.
#[allow(clippy::too_many_arguments)]
fn tracking_input(
    site: &Site,
    st: &DeviceState,
    h: f64,
    planned_net_kw: f64,
    measured_net_kw: f64,
    demand: &[f64],
    bset: &[f64],
    hset: &[f64],
) -> TrackingOwned {
    let batteries = site
        .batteries
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let soc = st.soc[i];
            plan::track::TrackedBattery {
                setpoint_kw: bset.get(i).copied().unwrap_or(0.0),
                soc_kwh: soc,
                capacity_kwh: b.capacity,
                max_charge_kw: b.max_charge,
                charge_eff: BATTERY_EFF,
                stored_value_eur_per_kwh: site.local_price * BATTERY_END_VALUE_RATIO,
            }
        })
        .collect();
    let heat = site
        .heat
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let (_, _, room) = store_step(u, st.store[i], h, demand);
            plan::track::TrackedHeat {
                setpoint_kw: hset.get(i).copied().unwrap_or(0.0),
                max_kw: u.max_kw,
                room_kwh: room,
                efficiency: P2H_EFF,
                stored_value_eur_per_kwh: site.heat_price * plan::HEAT_END_VALUE_RATIO,
            }
        })
        .collect();
    TrackingOwned {
        step_hours: h,
        planned_net_kw,
        measured_net_kw,
        export_price_eur_per_kwh: site.export_price,
        batteries,
        heat,
    }
}

/// [`plan::track::Tracking`] with owned device lists.
struct TrackingOwned {
    step_hours: f64,
    planned_net_kw: f64,
    measured_net_kw: f64,
    export_price_eur_per_kwh: f64,
    batteries: Vec<plan::track::TrackedBattery>,
    heat: Vec<plan::track::TrackedHeat>,
}

impl TrackingOwned {
    fn view(&self) -> plan::track::Tracking<'_> {
        plan::track::Tracking {
            step_hours: self.step_hours,
            planned_net_kw: self.planned_net_kw,
            measured_net_kw: self.measured_net_kw,
            export_price_eur_per_kwh: self.export_price_eur_per_kwh,
            batteries: &self.batteries,
            heat: &self.heat,
        }
    }
}

/// Where the `ped` run's export came from: at steps where the actual surplus
/// exceeded the plan's, how much of that unplanned surplus was exported
/// while the batteries or heat stores had power and room left for it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrackingDiagnosis {
    /// Whether the run tracked the plan ([`Options::tracking`]).
    pub enabled: bool,
    /// Export of the device model (PV + discharge − load − charge − P2H).
    pub export_kwh: f64,
    /// Steps whose actual surplus (PV − load) exceeded the plan's.
    pub steps_unplanned_surplus: usize,
    /// Export at those steps, up to the unplanned surplus.
    pub export_of_unplanned_surplus_kwh: f64,
    /// …of which storage had power and room for (batteries and heat).
    pub export_storage_had_room_for_kwh: f64,
    /// …of which the batteries alone had power and room for.
    pub export_batteries_had_room_for_kwh: f64,
    /// Σ |tracked − planned setpoint| × step (kWh).
    pub setpoints_moved_kwh: f64,
}

impl TrackingDiagnosis {
    fn add(
        &mut self,
        site: &Site,
        st: &DeviceState,
        h: f64,
        planned: f64,
        measured: f64,
        f: &StepFlows,
    ) {
        let used: f64 = f.charge.iter().sum::<f64>() + f.p2h.iter().sum::<f64>()
            - f.discharge.iter().sum::<f64>();
        let export = (measured - used).max(0.0);
        self.export_kwh += export * h;
        let unplanned = measured - planned;
        if unplanned <= 0.0 {
            return;
        }
        self.steps_unplanned_surplus += 1;
        let of_unplanned = export.min(unplanned);
        self.export_of_unplanned_surplus_kwh += of_unplanned * h;
        // Room after the step: power left and energy left over the step.
        let bat: f64 = site
            .batteries
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let power = b.max_charge - f.charge[i] + f.discharge[i];
                let energy = (b.capacity - st.soc[i]).max(0.0) / (BATTERY_EFF * h);
                power.min(energy).max(0.0)
            })
            .sum();
        let heat: f64 = site
            .heat
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let power = u.max_kw - f.p2h[i];
                let energy = (u.capacity - st.store[i]).max(0.0) / (P2H_EFF * h);
                power.min(energy).max(0.0)
            })
            .sum();
        self.export_storage_had_room_for_kwh += of_unplanned.min(bat + heat) * h;
        self.export_batteries_had_room_for_kwh += of_unplanned.min(bat) * h;
    }
}

/// A heat store over one step before power-to-heat: what it keeps after
/// losses, what it serves (kW thermal), and its room for heat (kWh thermal).
fn store_step(u: &HeatUnit, store: f64, h: f64, demand: &[f64]) -> (f64, f64, f64) {
    let kept = store * (1.0 - STORE_LOSS_PER_HOUR * h);
    // Heat stored before this step serves this step's demand.
    let want = STORE_SHARE_OF_DEMAND * demand.get(u.substation).copied().unwrap_or(0.0);
    let s = want.min(kept / h).max(0.0);
    let room = (u.capacity - kept + s * h).max(0.0);
    (kept, s, room)
}

/// Totals of one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioSummary {
    pub name: String,
    pub dispatch: String,
    pub keys: String,
    pub pv_kwh: f64,
    pub consumption_kwh: f64,
    pub battery_charge_kwh: f64,
    pub battery_discharge_kwh: f64,
    pub p2h_kwh: f64,
    /// Heat made from local PV (P2H electricity × efficiency), kWh thermal.
    pub heat_from_pv_kwh: f64,
    pub heat_served_from_store_kwh: f64,
    /// Energy allocated to the participants (storage excluded).
    pub allocated_kwh: f64,
    pub allocated_to_storage_kwh: f64,
    /// Storage charge the keys did not cover: bought from the grid.
    pub storage_grid_kwh: f64,
    /// Physical export: Σ over steps of max(0, PV + discharge − participants'
    /// consumption − storage charge − P2H).
    pub export_kwh: f64,
    /// Σ over steps of min(PV + discharge, consumption incl. storage): what
    /// the keys could allocate.
    pub consumed_locally_kwh: f64,
    /// `consumed_locally_kwh` − what the DSO's rule allocates with the
    /// exported (rounded) keys: consumed in the district but, for the DSO,
    /// neither self-consumed nor exported by anyone (rounding residue).
    pub unallocated_kwh: f64,
    /// 1 − export / PV (physical export).
    pub self_consumption_rate: f64,
    /// Allocated / consumption of the participants.
    pub self_sufficiency: f64,
    pub savings_eur: f64,
    pub export_revenue_eur: f64,
    pub battery_full_cycles: f64,
    /// Largest |PV + discharge − allocated − export − unallocated| of a
    /// step, and of the keys' own balance, kWh.
    pub max_balance_error_kwh: f64,
    /// Participants who, in at least one local month, get from the DSO's rule
    /// `min(key × P, C)` with this scenario's exported keys less than exact
    /// pro rata of the same production and consumption would give them, by
    /// more than [`WORSE_OFF_MIN_KWH`] and [`WORSE_OFF_SHARE`] of it.
    pub participants_worse_than_dso_prorata: usize,
    /// The first of them (at most [`SHOWN_LINES`]), with their month.
    pub worse_than_dso_prorata: Vec<WorseOff>,
    /// Participants whose savings over the run are below what they save in
    /// the district without ped (`dso_prorata`: no storage, pro rata keys)
    /// by more than a cent.
    pub participants_saving_less_than_without_ped: usize,
    /// Steps × participants with a key while outside their membership
    /// (should be 0).
    pub keys_outside_membership: usize,
}

/// A participant's month short of exact pro rata.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorseOff {
    pub id: String,
    /// Local month, `YYYY-MM`.
    pub month: String,
    pub allocated_kwh: f64,
    pub prorata_kwh: f64,
    /// Steps of the month whose consumption was missing or suspect (and
    /// estimated, unless nothing could estimate it).
    pub estimated_steps: usize,
}

/// A month short of pro rata by less than this (kWh) or than
/// [`WORSE_OFF_SHARE`] of the pro-rata month is rounding, not a loss: the
/// keys are exported to 0.1 % and the DSO applies them as they are.
pub const WORSE_OFF_MIN_KWH: f64 = 0.1;
pub const WORSE_OFF_SHARE: f64 = 0.005;

#[derive(Debug, Clone, Serialize)]
pub struct ParticipantResult {
    pub id: String,
    pub kind: String,
    pub tariff_eur_per_kwh: f64,
    pub priority: u8,
    pub consumption_kwh: f64,
    /// Per scenario name: allocated kWh and savings €.
    pub allocated_kwh: BTreeMap<String, f64>,
    pub savings_eur: BTreeMap<String, f64>,
    /// Savings under `ped` / savings under `dso_prorata`.
    pub ratio_to_prorata: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SolveStats {
    pub solves: usize,
    pub replans_on_miss: usize,
    pub optimal: usize,
    pub fallback: usize,
    pub p50_s: f64,
    pub p95_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    pub mean_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ForecastErrors {
    /// District PV, kW, every horizon point of every issued forecast.
    pub pv: ForecastError,
    /// Each participant's consumption, kW.
    pub consumption: ForecastError,
    /// Heat of the substations with a heat store, kW thermal.
    pub heat: ForecastError,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub data_dir: String,
    pub from: String,
    pub to: String,
    pub step_minutes: u32,
    pub steps: usize,
    pub horizon_steps: usize,
    pub replan_every: usize,
    pub budget_ms: u64,
    pub wall_seconds: f64,
    /// Forecasts, solves and device model of the LP dispatch (data loading excluded).
    pub lp_loop_seconds: f64,
    /// The other dispatches and the keys of every scenario.
    pub baselines_seconds: f64,
    pub scenarios: Vec<ScenarioSummary>,
    pub solve: SolveStats,
    pub forecast_errors: ForecastErrors,
    pub participants: Vec<ParticipantResult>,
    /// The `ped` dispatch's export against its plan's surplus.
    pub tracking: TrackingDiagnosis,
    /// Missing and suspect values of the replayed range and their estimates.
    pub data_quality: DataQuality,
}

struct Progress {
    enabled: bool,
    tty: bool,
    total: usize,
    shown: usize,
    began: Instant,
}

impl Progress {
    fn new(enabled: bool, total: usize) -> Self {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            total: total.max(1),
            shown: usize::MAX,
            began: Instant::now(),
        }
    }

    fn update(&mut self, done: usize, label: &str) {
        if !self.enabled {
            return;
        }
        // Per mille on a terminal, every 10 % in a log.
        let unit = if self.tty { 1000 } else { 10 };
        let now = done * unit / self.total;
        if now == self.shown {
            return;
        }
        self.shown = now;
        let frac = done as f64 / self.total as f64;
        let el = self.began.elapsed().as_secs_f64();
        let eta = if frac > 0.0 { el / frac - el } else { 0.0 };
        let width = 30;
        let fill = (frac * width as f64) as usize;
        let bar: String = "#".repeat(fill) + &"-".repeat(width - fill.min(width));
        let mut e = std::io::stderr().lock();
        let line = format!(
            "backtest [{bar}] {:5.1}% {done}/{} steps {label} elapsed {el:.0} s eta {eta:.0} s",
            frac * 100.0,
            self.total
        );
        let _ = if self.tty {
            write!(e, "\r{line}")
        } else {
            writeln!(e, "{line}")
        };
        if self.tty && done >= self.total {
            let _ = writeln!(e);
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Per-step series of the `ped` scenario, for the charts.
#[derive(Default)]
struct Trace {
    pv: Vec<f64>,
    load: Vec<f64>,
    battery: Vec<f64>,
    p2h: Vec<f64>,
    export: Vec<f64>,
    soc_pct: Vec<f64>,
    store_pct: Vec<f64>,
}

/// The replay range: local days `from..=to`, default from a week after the
/// data set starts (forecast warm-up) to its end.
fn range(ds: &Dataset, opts: &Options) -> Result<(usize, usize), BacktestError> {
    let g = ds.cal.grid;
    let first_day = g.local_day(ds.cal.start);
    let last_day = g.local_day(ds.cal.time(ds.cal.len - 1));
    let from = opts.from.unwrap_or_else(|| {
        first_day
            .checked_add_days(chrono::Days::new(7))
            .filter(|d| *d <= last_day)
            .unwrap_or(first_day)
    });
    let to = opts.to.unwrap_or(last_day);
    if from < first_day || to > last_day || from > to {
        return Err(BacktestError::Options(format!(
            "--from {from} --to {to}: the data set covers {first_day} to {last_day}"
        )));
    }
    let at = |d: NaiveDate| -> usize {
        g.local_midnight(d)
            .ok()
            .and_then(|t| ds.cal.index(t))
            .unwrap_or(0)
    };
    let begin = at(from);
    let end = match to.succ_opt() {
        Some(n) if n <= last_day => at(n),
        _ => ds.cal.len,
    };
    Ok((begin, end))
}

/// One scenario's dispatch over the range: flows per step plus the trace.
struct DispatchRun {
    flows: Vec<StepFlows>,
    soc_start: Vec<f64>,
    soc_end: Vec<f64>,
}

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
    let (quality, suspects) = ds.quality(begin, end);
    if opts.strict && !suspects.is_empty() {
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
    let h = ds.cal.grid.step_hours();
    let horizon = (f64::from(site.horizon_hours) / h).round() as usize;
    let steps = end - begin;
    let np = ds.participants.len();

    let clear: Vec<Vec<f64>> = ds
        .plants
        .iter()
        .map(|p| forecast::clear_sky_series(&p.planes, site.lat, site.lon, &ds.cal))
        .collect();
    let total_load: Vec<f64> = (0..ds.cal.len)
        .map(|t| ds.load_kw.iter().map(|l| l[t]).sum())
        .collect();
    let total_pv: Vec<f64> = (0..ds.cal.len)
        .map(|t| ds.pv_kw.iter().map(|p| p[t]).sum())
        .collect();
    let peak_kw: f64 = ds.plants.iter().map(|p| p.kwp).sum();

    // --- LP dispatch (the expensive one) -------------------------------
    let lp_began = Instant::now();
    let mut progress = Progress::new(opts.progress, steps);
    let mut solve_times = Vec::new();
    let mut stats = SolveStats::default();
    let mut err_pv = ErrorAccumulator::default();
    let mut err_load = ErrorAccumulator::default();
    let mut err_heat = ErrorAccumulator::default();
    let init = DeviceState {
        soc: site.batteries.iter().map(|b| 0.5 * b.capacity).collect(),
        store: site.heat.iter().map(|u| 0.5 * u.capacity).collect(),
    };
    let mut st = init.clone();
    let mut lp_flows = Vec::with_capacity(steps);
    // The plan, its first step, and its PV minus load forecast per step (the
    // surplus it planned for, which tracking measures the error against).
    let mut current: Option<(usize, plan::Plan, Vec<f64>)> = None;
    let mut diag = TrackingDiagnosis {
        enabled: opts.tracking,
        ..Default::default()
    };
    let mut heat_models: BTreeMap<usize, (NaiveDate, Option<DegreeDayModel>)> = BTreeMap::new();
    for t in begin..end {
        let due = match &current {
            None => true,
            Some((t0, p, _)) => {
                let k = t - t0;
                let plan_len = p.export_kwh.len().max(1);
                let (got, want) = (total_pv[t - 1], forecast_pv_at(p, k.saturating_sub(1)));
                let miss = (got - want).abs();
                if k >= opts.replan_every || k >= plan_len {
                    true
                } else if miss > MISS_REPLAN_SHARE_OF_PEAK * peak_kw
                    && miss > MISS_REPLAN_SHARE_OF_PV * got.max(want)
                {
                    stats.replans_on_miss += 1;
                    true
                } else {
                    false
                }
            }
        };
        if due {
            let day = ds.cal.grid.local_day(ds.cal.time(t));
            let mut demand_fc = Vec::with_capacity(site.heat.len());
            for u in &site.heat {
                let entry = heat_models.entry(u.substation).or_insert((day, None));
                if entry.1.is_none() || entry.0 != day {
                    // Refit once a local day on all history before it.
                    *entry = (
                        day,
                        DegreeDayModel::fit(&ds.cal, &ds.temp_c, &ds.heat_kw[u.substation], 0, t),
                    );
                }
                let f = match &entry.1 {
                    Some(m) => m.forecast(&ds.cal, &ds.temp_c, t, horizon),
                    None => {
                        let last = ds.heat_kw[u.substation][t.saturating_sub(1)];
                        vec![last; horizon]
                    }
                };
                score(&mut err_heat, &f, &ds.heat_kw[u.substation], t);
                demand_fc.push(f);
            }
            let mut pv = vec![0.0; horizon];
            let mut planned_net = vec![0.0; horizon];
            for (p, c) in ds.pv_kw.iter().zip(&clear) {
                let f = forecast::pv_blend_forecast(p, c, t, horizon, h);
                pv.iter_mut().zip(&f).for_each(|(a, b)| *a += b);
            }
            score(&mut err_pv, &pv, &total_pv, t);
            planned_net.copy_from_slice(&pv);
            let analogs = LoadAnalogs::new(&ds.cal, t, horizon);
            let participants = ds
                .participants
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let f = forecast::load_forecast(&ds.load_kw[i], &analogs, h);
                    score(&mut err_load, &f, &ds.load_kw[i], t);
                    planned_net.iter_mut().zip(&f).for_each(|(a, b)| *a -= b);
                    ParticipantForecast {
                        id: p.id.clone(),
                        load_kw: f,
                        tariff_eur_per_kwh: site.tariff[i],
                        priority: site.priority[i],
                        // The replay values energy at the flat tariff (TOU windows not replayed yet).
                        tariff_steps_eur_per_kwh: vec![],
                    }
                })
                .collect();
            let input = PlanInput {
                start: ds.cal.time(t),
                step_hours: h,
                pv_kw: pv,
                participants,
                batteries: site
                    .batteries
                    .iter()
                    .zip(&st.soc)
                    .map(|(b, &soc)| BatteryModel {
                        id: b.id.clone(),
                        capacity_kwh: b.capacity,
                        soc_kwh: soc.clamp(0.0, b.capacity),
                        min_soc_kwh: b.floor,
                        max_charge_kw: b.max_charge,
                        max_discharge_kw: b.max_discharge,
                        charge_eff: BATTERY_EFF,
                        discharge_eff: BATTERY_EFF,
                        end_value_eur_per_kwh: site.local_price * BATTERY_END_VALUE_RATIO,
                    })
                    .collect(),
                heat: site
                    .heat
                    .iter()
                    .zip(&st.store)
                    .zip(&demand_fc)
                    .map(|((u, &store), d)| HeatUnitModel {
                        id: u.id.clone(),
                        p2h_max_kw: u.max_kw,
                        efficiency: P2H_EFF,
                        store_capacity_kwh: u.capacity,
                        store_kwh: store.clamp(0.0, u.capacity),
                        loss_ratio_per_hour: STORE_LOSS_PER_HOUR,
                        heat_demand_kw: d.iter().map(|x| x * STORE_SHARE_OF_DEMAND).collect(),
                        heat_price_eur_per_kwh: site.heat_price,
                        max_heat_kw: vec![],
                    })
                    .collect(),
                local_price_eur_per_kwh: site.local_price,
                export_price_eur_per_kwh: vec![site.export_price; horizon],
                import_price_eur_per_kwh: vec![site.import_price; horizon],
                device_participants: vec![],
            };
            let solving = Instant::now();
            let p = match plan::solve(&input, opts.budget) {
                Ok(p) => p,
                Err(e @ plan::PlanError::Invalid(_)) => {
                    return Err(BacktestError::Plan {
                        at: ds.cal.grid.format_local(ds.cal.time(t)),
                        source: e,
                    })
                }
                Err(e) => plan::rule_based(&input, &e.to_string()),
            };
            solve_times.push(solving.elapsed().as_secs_f64());
            stats.solves += 1;
            match p.status {
                PlanStatus::Optimal => stats.optimal += 1,
                _ => stats.fallback += 1,
            }
            current = Some((t, p, planned_net));
        }
        let (t0, p, planned_net) = current
            .as_ref()
            .ok_or_else(|| BacktestError::Options("no plan".into()))?;
        let k = t - t0;
        let bset: Vec<f64> = p
            .battery_kw
            .iter()
            .map(|r| r.get(k).copied().unwrap_or(0.0))
            .collect();
        let hset: Vec<f64> = p
            .p2h_kw
            .iter()
            .map(|r| r.get(k).copied().unwrap_or(0.0))
            .collect();
        let demand: Vec<f64> = ds.heat_kw.iter().map(|s| s[t]).collect();
        let planned = planned_net.get(k).copied().unwrap_or(0.0);
        let measured = total_pv[t] - total_load[t];
        let (bset, hset) = if opts.tracking {
            let r = plan::track::track(
                &tracking_input(&site, &st, h, planned, measured, &demand, &bset, &hset).view(),
            );
            let moved: f64 = r
                .battery_kw
                .iter()
                .zip(&bset)
                .chain(r.p2h_kw.iter().zip(&hset))
                .map(|(a, b)| (a - b).abs())
                .sum();
            diag.setpoints_moved_kwh += moved * h;
            (r.battery_kw, r.p2h_kw)
        } else {
            (bset, hset)
        };
        let f = device_step(
            &site,
            &mut st,
            h,
            total_pv[t],
            total_load[t],
            &demand,
            &bset,
            &hset,
        );
        diag.add(&site, &st, h, planned, measured, &f);
        lp_flows.push(f);
        progress.update(
            t + 1 - begin,
            &ds.cal.grid.local_day(ds.cal.time(t)).to_string(),
        );
    }
    let lp_loop_seconds = lp_began.elapsed().as_secs_f64();
    let baselines_began = Instant::now();
    let lp = DispatchRun {
        flows: lp_flows,
        soc_start: init.soc.clone(),
        soc_end: st.soc.clone(),
    };
    let simple = |mode: Dispatch| -> DispatchRun {
        let mut st = init.clone();
        let flows = (begin..end)
            .map(|t| {
                let demand: Vec<f64> = ds.heat_kw.iter().map(|s| s[t]).collect();
                let surplus = total_pv[t] - total_load[t];
                let (b, p): (Vec<f64>, Vec<f64>) = match mode {
                    Dispatch::Greedy => (
                        site.batteries
                            .iter()
                            .map(|b| {
                                if surplus > 0.0 {
                                    b.max_charge
                                } else {
                                    -b.max_discharge
                                }
                            })
                            .collect(),
                        site.heat.iter().map(|u| u.max_kw).collect(),
                    ),
                    Dispatch::Idle => (vec![0.0; site.batteries.len()], vec![0.0; site.heat.len()]),
                };
                device_step(
                    &site,
                    &mut st,
                    h,
                    total_pv[t],
                    total_load[t],
                    &demand,
                    &b,
                    &p,
                )
            })
            .collect();
        DispatchRun {
            flows,
            soc_start: init.soc.clone(),
            soc_end: st.soc,
        }
    };
    let greedy = simple(Dispatch::Greedy);
    let idle = simple(Dispatch::Idle);

    // --- Keys on actual energies ----------------------------------------
    let nb = site.batteries.len();
    let nh = site.heat.len();
    // Consumers of the keys: the participants, then storage, served last
    // (tariff 0, the tier after the last participant's).
    let n_all = np + nb + nh;
    let tariffs_all: Vec<f64> = site
        .tariff
        .iter()
        .copied()
        .chain(std::iter::repeat(0.0).take(nb + nh))
        .collect();
    // One tier below the last participant's (a tier of 255 would make the
    // tier bonuses, and the rules' penalties above them, needlessly large).
    let storage_tier = site
        .priority
        .iter()
        .max()
        .copied()
        .unwrap_or(1)
        .saturating_add(1);
    let priority_all: Vec<u8> = site
        .priority
        .iter()
        .copied()
        .chain(std::iter::repeat(storage_tier).take(nb + nh))
        .collect();
    let site_policy = || -> Policy {
        match site.policy {
            KeyPolicy::Prorata => Policy::ProRata,
            KeyPolicy::Static => static_policy(&site, nb + nh),
            KeyPolicy::Optimised => Policy::Optimised {
                tariffs_eur_per_kwh: tariffs_all.clone(),
                priority: priority_all.clone(),
            },
        }
    };
    let policy_name = site.policy.as_str();
    let scenarios: Vec<(&str, &DispatchRun, &str, Policy, &str)> = vec![
        ("ped", &lp, "lp", site_policy(), policy_name),
        ("ped_prorata", &lp, "lp", Policy::ProRata, "prorata"),
        (
            "static_keys",
            &lp,
            "lp",
            static_policy(&site, nb + nh),
            "static",
        ),
        (
            "greedy_battery",
            &greedy,
            "greedy",
            site_policy(),
            policy_name,
        ),
        ("no_storage", &idle, "none", site_policy(), policy_name),
        ("dso_prorata", &idle, "none", Policy::ProRata, "prorata"),
    ];
    let mut summaries = Vec::new();
    let mut per_participant: Vec<Vec<f64>> = Vec::new();
    let mut trace = Trace::default();
    // The site's optimised keys, as the daemon computes them: each step
    // solved as its month's next step, with the month so far.
    let values_all: Vec<f64> = tariffs_all.iter().map(|t| t - site.local_price).collect();
    let month_solver =
        site.month_fairness
            .clone()
            .map(|fairness| allocation::MonthSolverAllocator {
                ids: (0..n_all).map(|i| format!("#{i}")).collect(),
                local_price_eur_per_kwh: site.local_price,
                export_price_eur_per_kwh: site.export_price,
                fairness,
                subscription_share: site
                    .static_share
                    .iter()
                    .map(|s| (*s > 0.0).then_some(*s))
                    .chain(std::iter::repeat(None).take(nb + nh))
                    .collect(),
                month_to_date: Vec::new(),
                month_to_date_production_kwh: 0.0,
                budget: None,
            });
    let tz = ds.cal.grid.tz();
    for (name, run, dispatch, policy, keys) in &scenarios {
        let in_month = match &month_solver {
            Some(m) if *keys == policy_name && site.policy == KeyPolicy::Optimised => Some(m),
            _ => None,
        };
        let mut account = allocation::MonthToDateAccount::new(n_all);
        let mut carry = allocation::Remainders::new(n_all);
        let mut month_of: Option<(i32, u32)> = None;
        let mut s = ScenarioSummary {
            name: name.to_string(),
            dispatch: dispatch.to_string(),
            keys: keys.to_string(),
            ..Default::default()
        };
        let mut alloc = vec![0.0; np];
        let mut month_alloc = vec![0.0; np];
        let mut month_prorata = vec![0.0; np];
        let mut month_label = String::new();
        let mut worse = vec![false; np];
        // Each month's shortfalls against exact pro rata, once it is over.
        let close_month = |label: &str,
                           alloc: &mut [f64],
                           prorata: &mut [f64],
                           s: &mut ScenarioSummary,
                           worse: &mut [bool],
                           range: (usize, usize)| {
            for i in 0..np {
                let short = prorata[i] - alloc[i];
                if short > WORSE_OFF_MIN_KWH.max(WORSE_OFF_SHARE * prorata[i]) {
                    worse[i] = true;
                    if s.worse_than_dso_prorata.len() < SHOWN_LINES {
                        let rows = range.0 / ds.split..range.1.div_ceil(ds.split);
                        let col = ds.participants[i].id.as_str();
                        s.worse_than_dso_prorata.push(WorseOff {
                            id: col.to_string(),
                            month: label.to_string(),
                            allocated_kwh: alloc[i],
                            prorata_kwh: prorata[i],
                            estimated_steps: ds
                                .problems
                                .iter()
                                .filter(|p| {
                                    rows.contains(&p.row)
                                        && p.reason.starts_with(&format!("{col} "))
                                        && p.file.ends_with("consumption.csv")
                                })
                                .count(),
                        });
                    }
                }
            }
            alloc.iter_mut().for_each(|a| *a = 0.0);
            prorata.iter_mut().for_each(|a| *a = 0.0);
        };
        let mut month_began = begin;
        for (j, f) in run.flows.iter().enumerate() {
            let t = begin + j;
            let pv = total_pv[t] * h;
            let discharge: f64 = f.discharge.iter().sum::<f64>() * h;
            let consumption: Vec<f64> = ds
                .load_kw
                .iter()
                .map(|l| l[t] * h)
                .chain(f.charge.iter().map(|c| c * h))
                .chain(f.p2h.iter().map(|p| p * h))
                .collect();
            let input = StepInput {
                production_kwh: pv + discharge,
                consumption_kwh: consumption.clone(),
            };
            let at = |e: allocation::AllocationError| {
                BacktestError::Options(format!(
                    "keys at {}: {e}",
                    ds.cal.grid.format_local(ds.cal.time(t))
                ))
            };
            // Rounding remainders and the month's fairness figures restart
            // with each local month, as in the daemon.
            let local = ds.cal.time(t).with_timezone(&tz);
            let month = (
                chrono::Datelike::year(&local),
                chrono::Datelike::month(&local),
            );
            if month_of != Some(month) {
                if month_of.is_some() {
                    close_month(
                        &month_label,
                        &mut month_alloc,
                        &mut month_prorata,
                        &mut s,
                        &mut worse,
                        (month_began, t),
                    );
                }
                account = allocation::MonthToDateAccount::new(n_all);
                carry = allocation::Remainders::new(n_all);
                month_of = Some(month);
                month_label = format!("{:04}-{:02}", month.0, month.1);
                month_began = t;
            }
            // A participant outside its membership has no key: its static
            // share is withdrawn (the other policies follow consumption, 0).
            let outside: Vec<usize> = ds
                .limited
                .iter()
                .filter(|(_, m)| !m.get(t).copied().unwrap_or(false))
                .map(|(i, _)| *i)
                .collect();
            let step_policy = match policy {
                Policy::Static(shares) if !outside.is_empty() => {
                    let mut shares = shares.clone();
                    for &i in &outside {
                        shares[i] = 0.0;
                    }
                    Some(Policy::Static(shares))
                }
                _ => None,
            };
            let policy = step_policy.as_ref().unwrap_or(policy);
            let keys = match in_month {
                Some(solver) => {
                    let (k, _) = allocation::keys_for_step_in_month(
                        solver,
                        &account,
                        &input,
                        &tariffs_all,
                        &priority_all,
                        site.precision,
                        &mut carry,
                    )
                    .map_err(at)?;
                    account
                        .add_step(
                            input.production_kwh,
                            &consumption,
                            &k.allocated_kwh,
                            &values_all,
                        )
                        .map_err(at)?;
                    k
                }
                None => {
                    allocation::keys_for_step_carried(&input, policy, site.precision, &mut carry)
                        .map_err(at)?
                }
            };
            s.keys_outside_membership += outside
                .iter()
                .filter(|&&i| keys.units.get(i).is_some_and(|&u| u > 0))
                .count();
            let a_part: f64 = keys.allocated_kwh[..np].iter().sum();
            let a_storage: f64 = keys.allocated_kwh[np..].iter().sum();
            let storage_use: f64 = consumption[np..].iter().sum();
            for (i, a) in keys.allocated_kwh[..np].iter().enumerate() {
                alloc[i] += a;
            }
            s.pv_kwh += pv;
            s.consumption_kwh += consumption[..np].iter().sum::<f64>();
            s.battery_charge_kwh += f.charge.iter().sum::<f64>() * h;
            s.battery_discharge_kwh += discharge;
            s.p2h_kwh += f.p2h.iter().sum::<f64>() * h;
            s.heat_served_from_store_kwh += f.served.iter().sum::<f64>() * h;
            s.allocated_kwh += a_part;
            s.allocated_to_storage_kwh += a_storage;
            s.storage_grid_kwh += (storage_use - a_storage).max(0.0);
            let production = pv + discharge;
            let demand: f64 = consumption.iter().sum();
            let local = production.min(demand);
            let export = (production - demand).max(0.0);
            let unallocated = local - keys.self_consumed_kwh;
            s.export_kwh += export;
            s.consumed_locally_kwh += local;
            s.unallocated_kwh += unallocated;
            for i in 0..np {
                month_alloc[i] += keys.allocated_kwh[i];
                if demand > 0.0 {
                    month_prorata[i] += local * consumption[i] / demand;
                }
            }
            let err = (production - keys.self_consumed_kwh - keys.surplus_kwh)
                .abs()
                .max((production - keys.self_consumed_kwh - export - unallocated).abs());
            s.max_balance_error_kwh = s.max_balance_error_kwh.max(err);
            if *name == "ped" {
                let net: f64 = f.charge.iter().sum::<f64>() - f.discharge.iter().sum::<f64>();
                trace.pv.push(total_pv[t]);
                trace.load.push(total_load[t]);
                trace.battery.push(net);
                trace.p2h.push(f.p2h.iter().sum());
                trace.export.push(export / h);
            }
        }
        if month_of.is_some() {
            close_month(
                &month_label,
                &mut month_alloc,
                &mut month_prorata,
                &mut s,
                &mut worse,
                (month_began, end),
            );
        }
        s.participants_worse_than_dso_prorata = worse.iter().filter(|&&w| w).count();
        s.heat_from_pv_kwh = s.p2h_kwh * P2H_EFF;
        s.self_consumption_rate = if s.pv_kwh > 0.0 {
            1.0 - s.export_kwh / s.pv_kwh
        } else {
            0.0
        };
        s.self_sufficiency = if s.consumption_kwh > 0.0 {
            s.allocated_kwh / s.consumption_kwh
        } else {
            0.0
        };
        s.savings_eur = alloc
            .iter()
            .zip(&site.tariff)
            .map(|(a, t)| a * (t - site.local_price))
            .sum();
        s.export_revenue_eur = s.export_kwh * site.export_price;
        let cap: f64 = site.batteries.iter().map(|b| b.capacity).sum();
        s.battery_full_cycles = if cap > 0.0 {
            s.battery_discharge_kwh / cap
        } else {
            0.0
        };
        // Storage energy conservation over the run.
        let stored_delta: f64 = run.soc_end.iter().sum::<f64>() - run.soc_start.iter().sum::<f64>();
        let dyn_delta = BATTERY_EFF * s.battery_charge_kwh - s.battery_discharge_kwh / BATTERY_EFF;
        s.max_balance_error_kwh = s
            .max_balance_error_kwh
            .max((stored_delta - dyn_delta).abs());
        summaries.push(s);
        per_participant.push(alloc);
    }
    // SoC traces of the ped run, replayed from its flows.
    {
        let cap: f64 = site
            .batteries
            .iter()
            .map(|b| b.capacity)
            .sum::<f64>()
            .max(1e-9);
        let store_cap: f64 = site.heat.iter().map(|u| u.capacity).sum::<f64>().max(1e-9);
        let mut soc: f64 = init.soc.iter().sum();
        let mut store: Vec<f64> = init.store.clone();
        for f in &lp.flows {
            soc += BATTERY_EFF * f.charge.iter().sum::<f64>() * h
                - f.discharge.iter().sum::<f64>() * h / BATTERY_EFF;
            for (k, s) in store.iter_mut().enumerate() {
                *s = (*s * (1.0 - STORE_LOSS_PER_HOUR * h)
                    + (P2H_EFF * f.p2h[k] - f.served[k]) * h)
                    .max(0.0);
            }
            trace.soc_pct.push(100.0 * soc / cap);
            trace
                .store_pct
                .push(100.0 * store.iter().sum::<f64>() / store_cap);
        }
    }
    let dso = scenarios
        .iter()
        .position(|s| s.0 == "dso_prorata")
        .unwrap_or(0);
    let participants: Vec<ParticipantResult> = ds
        .participants
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let w = site.tariff[i] - site.local_price;
            let allocated_kwh: BTreeMap<String, f64> = scenarios
                .iter()
                .zip(&per_participant)
                .map(|(s, a)| (s.0.to_string(), a[i]))
                .collect();
            let savings_eur: BTreeMap<String, f64> = allocated_kwh
                .iter()
                .map(|(k, a)| (k.clone(), a * w))
                .collect();
            let base = per_participant[dso][i] * w;
            let ours = per_participant[0][i] * w;
            ParticipantResult {
                id: p.id.clone(),
                kind: p.kind.clone(),
                tariff_eur_per_kwh: site.tariff[i],
                priority: site.priority[i],
                consumption_kwh: (begin..end).map(|t| ds.load_kw[i][t] * h).sum(),
                allocated_kwh,
                savings_eur,
                ratio_to_prorata: if base.abs() > 1e-12 { ours / base } else { 1.0 },
            }
        })
        .collect();
    for (s, alloc) in summaries.iter_mut().zip(&per_participant) {
        // Less money, not fewer kWh: the keys' rounding moves fractions of a
        // cent between participants and is not a loss.
        s.participants_saving_less_than_without_ped = (0..np)
            .filter(|&i| {
                let v = site.tariff[i] - site.local_price;
                v * (alloc[i] - per_participant[dso][i]) < -0.01
            })
            .count();
    }
    solve_times.sort_by(f64::total_cmp);
    stats.p50_s = percentile(&solve_times, 0.5);
    stats.p95_s = percentile(&solve_times, 0.95);
    stats.p99_s = percentile(&solve_times, 0.99);
    stats.max_s = solve_times.last().copied().unwrap_or(0.0);
    stats.mean_s = solve_times.iter().sum::<f64>() / solve_times.len().max(1) as f64;
    let summary = Summary {
        data_dir: opts.data_dir.display().to_string(),
        from: ds.cal.grid.format_local(ds.cal.time(begin)),
        to: ds
            .cal
            .grid
            .format_local(ds.cal.time(end - 1) + ds.cal.grid.step()),
        step_minutes: ds.cal.grid.step_minutes(),
        steps,
        horizon_steps: horizon,
        replan_every: opts.replan_every,
        budget_ms: opts.budget.as_millis() as u64,
        wall_seconds: began.elapsed().as_secs_f64(),
        lp_loop_seconds,
        baselines_seconds: baselines_began.elapsed().as_secs_f64(),
        scenarios: summaries,
        solve: stats,
        forecast_errors: ForecastErrors {
            pv: err_pv.result(),
            consumption: err_load.result(),
            heat: err_heat.result(),
        },
        participants,
        tracking: diag,
        data_quality: quality,
    };
    write_outputs(&summary, &trace, &ds, begin, &opts.out_dir)?;
    Ok(summary)
}

/// The plan's own PV expectation at step `k`: what it allocated, charged,
/// heated and exported must equal the PV plus discharge it assumed.
fn forecast_pv_at(p: &plan::Plan, k: usize) -> f64 {
    let h = p.step_hours.max(1e-9);
    let alloc: f64 = p
        .allocation_kwh
        .iter()
        .map(|r| r.get(k).copied().unwrap_or(0.0))
        .sum();
    let export = p.export_kwh.get(k).copied().unwrap_or(0.0);
    let charge: f64 = p
        .battery_kw
        .iter()
        .map(|r| r.get(k).copied().unwrap_or(0.0))
        .sum();
    let heat: f64 = p
        .p2h_kw
        .iter()
        .map(|r| r.get(k).copied().unwrap_or(0.0))
        .sum();
    (alloc + export) / h + charge + heat
}

fn static_policy(site: &Site, storage: usize) -> Policy {
    Policy::Static(
        site.static_share
            .iter()
            .copied()
            .chain(std::iter::repeat(0.0).take(storage))
            .collect(),
    )
}

fn score(acc: &mut ErrorAccumulator, forecast: &[f64], actual: &[f64], t0: usize) {
    let to = (t0 + forecast.len()).min(actual.len());
    if t0 < to {
        acc.add_series(forecast, &actual[t0..to]);
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), BacktestError> {
    std::fs::write(path, text).map_err(|source| BacktestError::Write {
        file: path.to_path_buf(),
        source,
    })
}

/// The 7-day window (starting at a local midnight) with the most or the
/// least PV; the whole run when it is shorter.
fn week_window(ds: &Dataset, begin: usize, pv: &[f64], most: bool) -> (usize, usize) {
    let week = 7 * ds.cal.slots_per_day();
    if pv.len() <= week {
        return (0, pv.len());
    }
    let mut best: Option<(f64, usize)> = None;
    for s in (0..pv.len() - week).filter(|&j| ds.cal.slot(begin + j) == 0) {
        let e: f64 = pv[s..s + week].iter().sum();
        let better = best.map_or(true, |(b, _)| if most { e > b } else { e < b });
        if better {
            best = Some((e, s));
        }
    }
    let s = best.map(|b| b.1).unwrap_or(0);
    (s, s + week)
}

fn write_outputs(
    s: &Summary,
    trace: &Trace,
    ds: &Dataset,
    begin: usize,
    out: &Path,
) -> Result<(), BacktestError> {
    std::fs::create_dir_all(out).map_err(|source| BacktestError::Write {
        file: out.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_string_pretty(s).map_err(|e| BacktestError::Write {
        file: out.join("summary.json"),
        source: std::io::Error::other(e),
    })?;
    write_file(&out.join("summary.json"), &json)?;

    let names: Vec<&str> = s.scenarios.iter().map(|x| x.name.as_str()).collect();
    let mut csv = String::from("id,kind,tariff_eur_per_kwh,priority,consumption_kwh");
    for n in &names {
        csv.push_str(&format!(",{n}_allocated_kwh,{n}_savings_eur"));
    }
    csv.push_str(",ratio_to_dso_prorata\n");
    for p in &s.participants {
        csv.push_str(&format!(
            "{},{},{:.4},{},{:.3}",
            p.id, p.kind, p.tariff_eur_per_kwh, p.priority, p.consumption_kwh
        ));
        for n in &names {
            csv.push_str(&format!(
                ",{:.3},{:.2}",
                p.allocated_kwh.get(*n).copied().unwrap_or(0.0),
                p.savings_eur.get(*n).copied().unwrap_or(0.0)
            ));
        }
        csv.push_str(&format!(",{:.4}\n", p.ratio_to_prorata));
    }
    write_file(&out.join("participants.csv"), &csv)?;

    for (file, most, label) in [
        ("week-summer.svg", true, "sunniest"),
        ("week-winter.svg", false, "dullest"),
    ] {
        let (a, b) = week_window(ds, begin, &trace.pv, most);
        let ticks: Vec<(usize, String)> = (a..b)
            .filter(|&j| ds.cal.slot(begin + j) == 0)
            .map(|j| {
                let d = ds.cal.grid.local_day(ds.cal.time(begin + j));
                (
                    j - a,
                    format!("{} {:02}-{:02}", d.weekday(), d.month(), d.day()),
                )
            })
            .collect();
        let title = format!(
            "ped backtest: the {label} week of the run, from {} (kW; SoC and heat store in %)",
            ds.cal.grid.format_local(ds.cal.time(begin + a))
        );
        let svg = svg::line_panels(
            &title,
            &[
                (
                    "kW",
                    vec![
                        svg::Series {
                            name: "PV",
                            color: "#e6a700",
                            values: &trace.pv[a..b],
                        },
                        svg::Series {
                            name: "consumption",
                            color: "#1f77b4",
                            values: &trace.load[a..b],
                        },
                        svg::Series {
                            name: "battery (+charge)",
                            color: "#2ca02c",
                            values: &trace.battery[a..b],
                        },
                        svg::Series {
                            name: "power-to-heat",
                            color: "#d62728",
                            values: &trace.p2h[a..b],
                        },
                        svg::Series {
                            name: "export",
                            color: "#7f7f7f",
                            values: &trace.export[a..b],
                        },
                    ],
                ),
                (
                    "%",
                    vec![
                        svg::Series {
                            name: "battery SoC",
                            color: "#2ca02c",
                            values: &trace.soc_pct[a..b],
                        },
                        svg::Series {
                            name: "heat store",
                            color: "#d62728",
                            values: &trace.store_pct[a..b],
                        },
                    ],
                ),
            ],
            &ticks,
        );
        write_file(&out.join(file), &svg)?;
    }
    let labels: Vec<String> = s.participants.iter().map(|p| p.id.clone()).collect();
    let get = |n: &str| -> Vec<f64> {
        s.participants
            .iter()
            .map(|p| p.savings_eur.get(n).copied().unwrap_or(0.0))
            .collect()
    };
    let ours = get("ped");
    let dso = get("dso_prorata");
    let svg = svg::grouped_bars(
        &format!(
            "Savings per participant against grid-only supply, {} to {}",
            s.from, s.to
        ),
        "€",
        &labels,
        &[
            svg::Series {
                name: "ped",
                color: "#1f77b4",
                values: &ours,
            },
            svg::Series {
                name: "DSO pro rata, no storage",
                color: "#ff7f0e",
                values: &dso,
            },
        ],
    );
    write_file(&out.join("savings.svg"), &svg)?;
    let ratio: Vec<f64> = s.participants.iter().map(|p| p.ratio_to_prorata).collect();
    let svg = svg::grouped_bars(
        &format!(
            "Savings under ped / savings under the DSO's pro rata without storage, per participant, {} to {} (1 = as well off)",
            s.from, s.to
        ),
        "ratio",
        &labels,
        &[svg::Series {
            name: "ped / DSO pro rata",
            color: "#1f77b4",
            values: &ratio,
        }],
    );
    write_file(&out.join("savings-ratio.svg"), &svg)?;
    Ok(())
}

/// The summary table printed on stdout.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "backtest {} → {} ({} steps of {} min, horizon {} steps, replan every {} steps, {:.0} s)\n\n",
        s.from, s.to, s.steps, s.step_minutes, s.horizon_steps, s.replan_every, s.wall_seconds
    ));
    o.push_str(&format!(
        "{:<15} {:>6} {:>5} {:>6} {:>6} {:>12} {:>12} {:>12} {:>11} {:>8} {:>10} {:>9}\n",
        "scenario",
        "disp",
        "keys",
        "SCR %",
        "SSR %",
        "savings €",
        "export kWh",
        "unalloc kWh",
        "storage kWh",
        "cycles",
        "heat PV kWh",
        "worse off"
    ));
    for x in &s.scenarios {
        o.push_str(&format!(
            "{:<15} {:>6} {:>5} {:>6.2} {:>6.2} {:>12.0} {:>12.0} {:>12.1} {:>11.0} {:>8.1} {:>10.0} {:>9}\n",
            x.name,
            x.dispatch,
            &x.keys[..x.keys.len().min(5)],
            100.0 * x.self_consumption_rate,
            100.0 * x.self_sufficiency,
            x.savings_eur,
            x.export_kwh,
            x.unallocated_kwh,
            x.allocated_to_storage_kwh,
            x.battery_full_cycles,
            x.heat_from_pv_kwh,
            x.participants_worse_than_dso_prorata
        ));
    }
    o.push_str(
        "export: production no one in the district consumed; unalloc: consumed in the district but not allocated by the DSO's rule with the rounded keys\n\
         worse off: participants short of exact pro rata of the same production and consumption, in a month, by more than max(0.1 kWh, 0.5 %)\n",
    );
    if let Some(x) = s.scenarios.iter().find(|x| x.name == "ped") {
        if !x.worse_than_dso_prorata.is_empty() {
            let shown: Vec<String> = x
                .worse_than_dso_prorata
                .iter()
                .take(5)
                .map(|w| {
                    format!(
                        "{} {} {:.1} of {:.1} kWh ({} steps estimated)",
                        w.id, w.month, w.allocated_kwh, w.prorata_kwh, w.estimated_steps
                    )
                })
                .collect();
            o.push_str(&format!(
                "ped, short of exact pro rata ({} participants; the first in summary.json): {}\n",
                x.participants_worse_than_dso_prorata,
                shown.join("; ")
            ));
        }
    }
    let q = &s.data_quality;
    o.push_str(&format!(
        "data: {} missing and {} suspect values (negative, above the ceiling of a reading, not a number), {} estimated ({:.1} kWh) as `ped keys` does, {} left at 0; {} participants with an entry or exit day, {} values outside membership ignored\n",
        q.missing_values,
        q.suspect_values,
        q.estimated_values,
        q.estimated_kwh,
        q.unestimated_values,
        q.participants_with_entry_or_exit,
        q.values_outside_membership
    ));
    let f = &s.forecast_errors;
    o.push_str(&format!(
        "\nforecast errors (every horizon point): PV MAE {:.1} kW nMAE {:.3}; consumption MAE {:.3} kW nMAE {:.3}; heat MAE {:.1} kW nMAE {:.3}\n",
        f.pv.mae, f.pv.nmae, f.consumption.mae, f.consumption.nmae, f.heat.mae, f.heat.nmae
    ));
    let v = &s.solve;
    o.push_str(&format!(
        "solves {} ({} optimal, {} fallback, {} after a PV miss): p50 {:.3} s, p95 {:.3} s, p99 {:.3} s, max {:.3} s\n",
        v.solves, v.optimal, v.fallback, v.replans_on_miss, v.p50_s, v.p95_s, v.p99_s, v.max_s
    ));
    let d = &s.tracking;
    o.push_str(&format!(
        "ped dispatch, plan tracking {}: export {:.0} kWh; at the {} steps with more surplus than planned, {:.0} kWh of it exported, {:.0} kWh while storage had room ({:.0} kWh the batteries); setpoints moved {:.0} kWh\n",
        if d.enabled { "on" } else { "off" },
        d.export_kwh,
        d.steps_unplanned_surplus,
        d.export_of_unplanned_surplus_kwh,
        d.export_storage_had_room_for_kwh,
        d.export_batteries_had_room_for_kwh,
        d.setpoints_moved_kwh
    ));
    let ratios: Vec<f64> = s.participants.iter().map(|p| p.ratio_to_prorata).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    o.push_str(&format!(
        "savings ratio ped / DSO pro rata per participant: min {min:.2}, max {max:.2}\n"
    ));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(batteries: Vec<Battery>) -> Site {
        Site {
            lat: 47.3,
            lon: 5.0,
            tariff: vec![],
            priority: vec![],
            static_share: vec![],
            batteries,
            heat: vec![HeatUnit {
                id: "P2H".into(),
                max_kw: 10.0,
                capacity: 20.0,
                substation: 0,
            }],
            local_price: 0.1,
            export_price: 0.06,
            import_price: 0.25,
            heat_price: 0.09,
            horizon_hours: 24,
            policy: KeyPolicy::Optimised,
            precision: Precision::default(),
            month_fairness: None,
        }
    }

    fn bat() -> Battery {
        Battery {
            id: "B".into(),
            capacity: 10.0,
            floor: 1.0,
            max_charge: 5.0,
            max_discharge: 5.0,
        }
    }

    #[test]
    fn storage_charges_only_from_surplus_and_discharges_only_into_deficit() {
        let s = site(vec![bat()]);
        let mut st = DeviceState {
            soc: vec![5.0],
            store: vec![0.0],
        };
        // Surplus of 2 kW: a 5 kW charge setpoint charges 2, P2H gets nothing.
        let f = device_step(&s, &mut st, 0.5, 10.0, 8.0, &[0.0], &[5.0], &[10.0]);
        assert_eq!(f.charge[0], 2.0);
        assert_eq!(f.p2h[0], 0.0);
        assert!((st.soc[0] - (5.0 + 0.95 * 2.0 * 0.5)).abs() < 1e-12);
        // Deficit of 1 kW: discharge 1 kW, not the setpoint's 5.
        let f = device_step(&s, &mut st, 0.5, 0.0, 1.0, &[0.0], &[-5.0], &[0.0]);
        assert_eq!(f.discharge[0], 1.0);
        // Never below the floor.
        st.soc[0] = 1.2;
        let f = device_step(&s, &mut st, 0.5, 0.0, 50.0, &[0.0], &[-5.0], &[0.0]);
        assert!((st.soc[0] - 1.0).abs() < 1e-9 && f.discharge[0] < 0.5);
    }

    #[test]
    fn heat_store_serves_half_the_demand_and_loses_heat() {
        let s = site(vec![]);
        let mut st = DeviceState {
            soc: vec![],
            store: vec![10.0],
        };
        let f = device_step(&s, &mut st, 1.0, 0.0, 0.0, &[4.0], &[], &[10.0]);
        assert_eq!(f.served[0], 2.0);
        assert_eq!(f.p2h[0], 0.0);
        assert!((st.store[0] - (10.0 * 0.995 - 2.0)).abs() < 1e-9);
        // Surplus of 30 kW: P2H limited by its power (10 kW) and the store's room.
        let f = device_step(&s, &mut st, 1.0, 30.0, 0.0, &[0.0], &[], &[50.0]);
        assert!(f.p2h[0] <= 10.0 + 1e-12);
        assert!(st.store[0] <= 20.0 + 1e-9);
    }

    /// The plan expected 2 kW of surplus and charges 2 kW; the sun gives 8.
    /// Applied as it stands, the plan exports 6 kW into a half-empty battery;
    /// tracked, the battery takes 5 (its power) and P2H the other 3.
    #[test]
    fn unplanned_sun_goes_to_storage_with_room_when_tracked() {
        let s = site(vec![bat()]);
        let fresh = || DeviceState {
            soc: vec![5.0],
            store: vec![0.0],
        };
        let (pv, load, h) = (10.0, 2.0, 0.5);
        let mut st = fresh();
        let f = device_step(&s, &mut st, h, pv, load, &[0.0], &[2.0], &[0.0]);
        assert_eq!((f.charge[0], f.p2h[0]), (2.0, 0.0));
        let mut st = fresh();
        let tracked = plan::track::track(
            &tracking_input(&s, &st, h, 2.0, pv - load, &[0.0], &[2.0], &[0.0]).view(),
        );
        let f = device_step(
            &s,
            &mut st,
            h,
            pv,
            load,
            &[0.0],
            &tracked.battery_kw,
            &tracked.p2h_kw,
        );
        assert_eq!(f.charge[0], 5.0);
        assert!((f.p2h[0] - 3.0).abs() < 1e-12, "{f:?}");
        let mut diag = TrackingDiagnosis::default();
        diag.add(&s, &st, h, 2.0, pv - load, &f);
        assert_eq!(diag.steps_unplanned_surplus, 1);
        assert!(diag.export_kwh.abs() < 1e-12, "{diag:?}");
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 1.0), 5.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
