//! The data set on the replay grid: its files read and checked as `ped keys`
//! checks load curves (missing and suspect values estimated, membership
//! applied), and the quality figures of the replayed range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Serialize;

use super::{data, BacktestError};
use crate::config::SiteConfig;
use crate::dso::loadcurve::{LineLog, Plausibility, SHOWN_LINES};
use crate::forecast::Calendar;
use crate::keys::estimate_gaps;
use crate::time::Grid;

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
            plausibility: Plausibility::for_site(cfg),
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
