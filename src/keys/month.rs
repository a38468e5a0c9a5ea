//! A run that starts mid-month: the month's figures so far per participant
//! ([`MonthFigures`], valued at tariff minus the local price against the
//! pro-rata baseline), where the month before `--from` comes from
//! ([`month_start`]: the ledger's archive, else the load curves of the
//! month's first days, else nowhere), and the report of participants the
//! rounded keys leave short of their pro-rata month beyond the rounding
//! slack.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use super::job::{compute, measure_load_curves, Computed, KeysError, KeysJob, Measured, MonthNote};
use crate::allocation;
use crate::allocation::solver::{Rule, Violation};

/// One participant's month so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantMonth {
    pub id: String,
    pub prm: String,
    pub allocated_kwh: f64,
    /// Σ (tariff − local price) × allocated.
    pub value_eur: f64,
    /// The same under the DSO's default pro-rata key.
    pub pro_rata_value_eur: f64,
}

/// A local month's figures from its first day through `through`: what the
/// month solver needs to go on with the month's fairness rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthFigures {
    /// First day of the local month.
    pub month: NaiveDate,
    /// Last local day covered, inclusive.
    pub through: NaiveDate,
    pub production_kwh: f64,
    pub participants: Vec<ParticipantMonth>,
}

/// Where a mid-month run's figures before `--from` came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthStart {
    /// `ledger` (an archived earlier run), `load_curves` (the month's first
    /// days computed with the same policy) or `none` (fairness starts at `from`).
    pub source: String,
    pub month: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<NaiveDate>,
    pub production_kwh: f64,
    pub note: String,
}

pub(super) fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

/// The job's consumers' month-to-date account from `figs` (matched by id;
/// a consumer the figures do not know starts at zero).
pub fn account_from(job: &KeysJob, figs: &MonthFigures) -> allocation::MonthToDateAccount {
    let mut acc = allocation::MonthToDateAccount::new(job.consumers.len());
    for (c, slot) in job.consumers.iter().zip(acc.participants.iter_mut()) {
        if let Some(p) = figs.participants.iter().find(|p| p.id == c.id) {
            slot.allocated_kwh = p.allocated_kwh;
            slot.value_eur = p.value_eur;
            slot.pro_rata_value_eur = p.pro_rata_value_eur;
        }
    }
    acc.production_kwh = figs.production_kwh;
    acc
}

/// The month of the run's last day at the end of the run: `carried` (the
/// month before `from`, when `from` is in that month) plus the run's steps
/// of that month, each valued at the consumer's tariff minus `local_price`.
pub fn month_figures(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    carried: Option<&MonthFigures>,
    local_price_eur_per_kwh: f64,
) -> Result<MonthFigures, KeysError> {
    let month = first_of_month(job.to);
    let mut acc = match carried {
        Some(f) if f.month == month && first_of_month(job.from) == month => account_from(job, f),
        _ => allocation::MonthToDateAccount::new(job.consumers.len()),
    };
    let values: Vec<f64> = job
        .consumers
        .iter()
        .map(|c| c.tariff_eur_per_kwh - local_price_eur_per_kwh)
        .collect();
    for (t, start) in m.periods.iter().enumerate() {
        if first_of_month(job.grid.local_day(*start)) != month {
            continue;
        }
        let pooled: f64 = m.production_kwh[t].iter().sum();
        acc.add_step(pooled, &m.consumption_kwh[t], &k.allocated_kwh[t], &values)?;
    }
    Ok(MonthFigures {
        month,
        through: job.to,
        production_kwh: acc.production_kwh,
        participants: job
            .consumers
            .iter()
            .zip(&acc.participants)
            .map(|(c, a)| ParticipantMonth {
                id: c.id.clone(),
                prm: c.prm.to_string(),
                allocated_kwh: a.allocated_kwh,
                value_eur: a.value_eur,
                pro_rata_value_eur: a.pro_rata_value_eur,
            })
            .collect(),
    })
}

/// The month before `job.from` from load curves in `dir`, computed with the
/// same solver; `Err(why)` when the curves do not cover those days.
fn month_from_load_curves(
    job: &KeysJob,
    dir: &Path,
    solver: &allocation::MonthSolverAllocator,
) -> Result<MonthFigures, String> {
    let first = first_of_month(job.from);
    let through = job.from.pred_opt().ok_or("date out of range")?;
    let prefix = KeysJob {
        from: first,
        to: through,
        ..job.clone()
    };
    let m = measure_load_curves(&prefix, dir).map_err(|e| e.to_string())?;
    // A day every step of which is flagged is a day the curves do not hold.
    let mut day_has_data: BTreeMap<NaiveDate, bool> = BTreeMap::new();
    for (t, start) in m.periods.iter().enumerate() {
        *day_has_data
            .entry(prefix.grid.local_day(*start))
            .or_default() |= m.problems[t].is_empty();
    }
    let missing: Vec<String> = day_has_data
        .iter()
        .filter(|(_, has)| !**has)
        .map(|(d, _)| d.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the load curves in {} do not cover {}",
            dir.display(),
            missing.join(", ")
        ));
    }
    let fresh = allocation::MonthSolverAllocator {
        month_to_date: Vec::new(),
        month_to_date_production_kwh: 0.0,
        ..solver.clone()
    };
    let k = compute(&prefix, &m, &fresh).map_err(|e| e.to_string())?;
    if let Some(why) = &k.month.fallback {
        tracing::warn!(reason = %why, "the month's first days fell back to per-step keys");
    }
    month_figures(&prefix, &m, &k, None, solver.local_price_eur_per_kwh).map_err(|e| e.to_string())
}

/// Where the month before `job.from` comes from: the ledger's archive of
/// the run that ended the day before, else the load curves of the month's
/// first days, else nowhere (the month's fairness then starts at `from`).
/// `None` for a run from the month's first day.
pub fn month_start(
    job: &KeysJob,
    load_curves: &Path,
    solver: &allocation::MonthSolverAllocator,
    ledger: Option<&crate::ledger::Ledger>,
) -> Option<(MonthStart, Option<MonthFigures>)> {
    let month = first_of_month(job.from);
    if job.from == month {
        return None;
    }
    let through = job.from.pred_opt();
    let mut why_not = Vec::new();
    if let Some(l) = ledger {
        match super::archive::month_to_date_before(l, job.from) {
            Ok(Some(f)) => {
                let start = MonthStart {
                    source: "ledger".into(),
                    month,
                    through,
                    production_kwh: f.production_kwh,
                    note: format!(
                        "month-to-date figures from the archived run that ended {}",
                        f.through
                    ),
                };
                return Some((start, Some(f)));
            }
            Ok(None) => why_not.push(format!(
                "the ledger archives no run of this month ending {}",
                through.map(|d| d.to_string()).unwrap_or_default()
            )),
            Err(e) => why_not.push(format!("the ledger's archive is unreadable: {e}")),
        }
    }
    match month_from_load_curves(job, load_curves, solver) {
        Ok(f) => {
            let start = MonthStart {
                source: "load_curves".into(),
                month,
                through,
                production_kwh: f.production_kwh,
                note: format!(
                    "month-to-date figures computed from the load curves of {month} .. {}, same policy",
                    f.through
                ),
            };
            Some((start, Some(f)))
        }
        Err(why) => {
            why_not.push(why);
            let start = MonthStart {
                source: "none".into(),
                month,
                through: None,
                production_kwh: 0.0,
                note: format!(
                    "the month's fairness starts at {} ({})",
                    job.from,
                    why_not.join("; ")
                ),
            };
            Some((start, None))
        }
    }
}

/// How far below its pro-rata month a participant may end on the rounded
/// keys: max(0.1 kWh, 0.5 %). Keys are whole units of a step's production
/// (0.01 % in the DSO's file), so a participant whose intended month is
/// exactly pro rata (every participant of a deficit month with flat
/// tariffs) ends a fraction of a kWh either side of it; the carried rounding
/// keeps that fraction within this bound.
const ROUNDING_SLACK_KWH: f64 = 0.1;
const ROUNDING_SLACK_SHARE: f64 = 0.005;

/// The month solver meets the pro-rata rule on the intended allocation; the
/// exported keys are rounded to the precision. A participant the rounding
/// leaves below its pro-rata value over the month by more than the rounding
/// slack is reported with what it actually lacks (the solver's own figure,
/// if it had one, is replaced: the PMO settles on the keys, not on the
/// intention).
pub(super) fn report_rounding_shortfalls(note: &mut MonthNote, figures: &MonthFigures) {
    for p in &figures.participants {
        let short = p.pro_rata_value_eur - p.value_eur;
        note.violations
            .retain(|v| !(v.rule == Rule::ProRata && v.participant == p.id));
        let per_kwh = if p.allocated_kwh > 0.0 {
            (p.value_eur / p.allocated_kwh).abs()
        } else {
            0.0
        };
        let slack = (ROUNDING_SLACK_KWH * per_kwh)
            .max(ROUNDING_SLACK_SHARE * p.pro_rata_value_eur.abs())
            // Below a thousandth of a cent the figure is float noise.
            .max(1e-5);
        if short > slack {
            note.violations.push(Violation {
                on_rounded_keys: true,
                ..Violation::new(Rule::ProRata, p.id.clone(), short)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_shortfalls_replace_the_solvers_figures() {
        let part = |id: &str, value: f64, pro: f64| ParticipantMonth {
            id: id.into(),
            prm: "1".into(),
            allocated_kwh: 0.0,
            value_eur: value,
            pro_rata_value_eur: pro,
        };
        let figures = MonthFigures {
            month: NaiveDate::from_ymd_opt(2025, 6, 1).expect("date"),
            through: NaiveDate::from_ymd_opt(2025, 6, 30).expect("date"),
            production_kwh: 1.0,
            participants: vec![
                part("A", 10.0, 10.1),
                part("B", 5.0, 4.0),
                // Within 0.5 %: what rounding to whole units costs.
                part("C", 3.0, 3.012),
            ],
        };
        let mut note = MonthNote {
            method: "flow".into(),
            fallback: None,
            violations: vec![
                Violation::new(Rule::ProRata, "B".into(), 0.5),
                Violation::new(Rule::Floor, "C".into(), 1.0),
            ],
        };
        report_rounding_shortfalls(&mut note, &figures);
        assert_eq!(
            note.violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec![
                "floor C 1.000000 kWh".to_string(),
                "pro_rata A 0.100000 EUR (over the month, on the rounded keys)".to_string()
            ]
        );
    }
}
