//! The run's inputs: the DSO's load curves in a directory read into the
//! per-step energies of the job's members and producers ([`Measured`]),
//! with each input file hashed for the manifest, suspect values listed, a
//! member's missing points estimated from its own curve ([`estimate_gaps`])
//! and the steps outside a participant's membership expecting nothing; and
//! the `PRM;CUPS` map the Spanish files need ([`read_cups_map`]).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::job::{io, sha256_hex, KeysError, KeysJob};
use crate::dso::loadcurve::{self, LineLog, LoadCurveError, Quantity};
use crate::dso::spain;
use crate::ids::Prm;
use crate::time::Grid;

/// Measured energies per step, as the keys need them.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub periods: Vec<DateTime<Utc>>,
    /// `[t][j]` per producer.
    pub production_kwh: Vec<Vec<f64>>,
    /// `[t][i]` per consumer.
    pub consumption_kwh: Vec<Vec<f64>>,
    /// Why a step is not fully measured; such steps get the default rule.
    pub problems: Vec<Vec<String>>,
    pub coarse_steps: usize,
    pub inputs: Vec<InputFile>,
    /// `[i][t]`: consumer i is a member of the operation at step t. Outside
    /// membership its consumption is 0, expected from nobody, and its key 0.
    pub members: Vec<Vec<bool>>,
    /// `[i]`: the steps whose consumption was estimated, and the energy.
    pub estimated_consumers: Vec<Vec<usize>>,
    pub estimated_consumer_kwh: Vec<f64>,
    /// `[j]`: the steps whose production was estimated.
    pub estimated_producers: Vec<Vec<usize>>,
    /// Values the load curves hold that cannot be readings.
    pub suspects: LineLog,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub file: String,
    pub sha256: String,
    pub prm: String,
    pub quantity: String,
}

/// Gaps up to this long are bridged from the points on either side; longer
/// ones from the same time of day on similar days.
const SHORT_GAP_MINUTES: i64 = 120;

/// Fills the steps of `kwh` that are `expected` but not `known` with an
/// estimate from the same curve: a gap of up to two hours by a straight line
/// between the points on either side (the one side there is at the edge of
/// the run); a longer gap, step by step, by the mean of the same local time
/// of day on the same weekday one to four weeks around, else on the three
/// days around. Returns the steps estimated; a step nothing can estimate
/// stays unknown (no measured point of the curve in the run at all).
pub fn estimate_gaps(
    kwh: &mut [f64],
    known: &[bool],
    expected: &[bool],
    periods: &[DateTime<Utc>],
    grid: &Grid,
) -> Vec<usize> {
    let n = kwh.len();
    let source = |t: usize| known[t] && expected[t];
    let local = |t: usize| periods[t].with_timezone(&grid.tz()).naive_local();
    // The first of two steps with the same wall-clock time (the repeated
    // autumn hour) stands for both.
    let mut at: std::collections::HashMap<chrono::NaiveDateTime, usize> =
        std::collections::HashMap::with_capacity(n);
    for t in (0..n).rev() {
        at.insert(local(t), t);
    }
    let short = (SHORT_GAP_MINUTES / i64::from(grid.step_minutes())).max(1) as usize;
    let mut estimated = Vec::new();
    let mut t = 0;
    while t < n {
        if !expected[t] || known[t] {
            t += 1;
            continue;
        }
        let a = t;
        while t < n && expected[t] && !known[t] {
            t += 1;
        }
        let b = t; // the gap is a..b
        let left = (a > 0 && source(a - 1)).then(|| kwh[a - 1]);
        let right = (b < n && source(b)).then(|| kwh[b]);
        if b - a <= short && (left.is_some() || right.is_some()) {
            let (l, r) = (left.or(right).unwrap_or(0.0), right.or(left).unwrap_or(0.0));
            for (k, slot) in kwh[a..b].iter_mut().enumerate() {
                let x = (k + 1) as f64 / (b - a + 1) as f64;
                *slot = l + (r - l) * x;
            }
            estimated.extend(a..b);
            continue;
        }
        for g in a..b {
            let me = local(g);
            let mean = |offsets: &[i64]| -> Option<f64> {
                let found: Vec<f64> = offsets
                    .iter()
                    .filter_map(|&d| at.get(&(me + chrono::Duration::days(d))))
                    .filter(|&&s| source(s))
                    .map(|&s| kwh[s])
                    .collect();
                (!found.is_empty()).then(|| found.iter().sum::<f64>() / found.len() as f64)
            };
            let value = mean(&[-7, 7, -14, 14, -21, 21, -28, 28])
                .or_else(|| mean(&[-1, 1, -2, 2, -3, 3]))
                .or(match (left, right) {
                    (Some(l), Some(r)) => Some((l + r) / 2.0),
                    (l, r) => l.or(r),
                });
            if let Some(v) = value {
                kwh[g] = v;
                estimated.push(g);
            }
        }
    }
    estimated
}

/// Reads `dir`'s load curves into per-step energies for the job's PRMs. A
/// participant or producer without a curve is an error (the export is
/// incomplete); a curve for a PRM the site does not know is ignored with a
/// warning. A member's missing point is estimated ([`estimate_gaps`]); a
/// step outside a participant's membership expects no data from it.
pub fn measure_load_curves(job: &KeysJob, dir: &Path) -> Result<Measured, KeysError> {
    let periods = job.periods()?;
    let curves = loadcurve::read_dir_with(dir, &job.grid, &job.plausibility)?;
    let mut suspects = LineLog::default();
    let mut by_key: BTreeMap<(Prm, Quantity), &loadcurve::LoadCurve> = BTreeMap::new();
    let mut inputs = Vec::new();
    for c in &curves {
        by_key.insert((c.prm.clone(), c.quantity), c);
        suspects.append(c.suspects.clone());
        let bytes = std::fs::read(&c.file).map_err(io(&c.file))?;
        inputs.push(InputFile {
            file: c
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: sha256_hex(&bytes),
            prm: c.prm.to_string(),
            quantity: c.quantity.as_str().into(),
        });
        let known = job.consumers.iter().any(|k| k.prm == c.prm) || job.producers.contains(&c.prm);
        if !known && !job.other_operations.contains(&c.prm) {
            tracing::warn!(file = %c.file.display(), prm = %c.prm, "load curve for a PRM that is neither a producer nor a member of the operation in this run; ignored");
        }
    }
    if job.strict && !suspects.is_empty() {
        return Err(LoadCurveError::Suspect(suspects).into());
    }
    for l in &suspects.shown {
        tracing::warn!(file = %l.file.display(), line = l.line, reason = %l.reason, "suspect load-curve value");
    }
    if suspects.total > suspects.shown.len() {
        tracing::warn!(
            more = suspects.total - suspects.shown.len(),
            "more suspect load-curve values (counted in manifest.json)"
        );
    }
    let n_t = periods.len();
    let days: Vec<NaiveDate> = periods.iter().map(|&t| job.grid.local_day(t)).collect();
    let members: Vec<Vec<bool>> = job
        .consumers
        .iter()
        .map(|c| days.iter().map(|&d| c.member_on(d)).collect())
        .collect();
    let always = vec![true; n_t];
    let mut problems: Vec<Vec<String>> = vec![Vec::new(); n_t];
    let mut coarse = vec![false; n_t];
    let mut missing = Vec::new();
    let mut settle =
        |prm: &Prm, q: Quantity, who: &str, expected: &[bool]| -> (Vec<f64>, Vec<usize>) {
            match by_key.get(&(prm.clone(), q)) {
                Some(c) => {
                    let s = loadcurve::settle(c, &job.grid, &periods);
                    let mut kwh = s.kwh;
                    let known: Vec<bool> = s.problem.iter().map(Option::is_none).collect();
                    let estimated = estimate_gaps(&mut kwh, &known, expected, &periods, &job.grid);
                    let mut filled = vec![false; n_t];
                    for &t in &estimated {
                        filled[t] = true;
                    }
                    for (t, p) in s.problem.into_iter().enumerate() {
                        if !expected[t] {
                            kwh[t] = 0.0;
                        } else if let Some(p) = p.filter(|_| !filled[t]) {
                            problems[t].push(format!("{} {p}", q.as_str()));
                        }
                    }
                    for (t, c) in s.coarse.into_iter().enumerate() {
                        coarse[t] |= c && expected[t];
                    }
                    (kwh, estimated)
                }
                None => {
                    missing.push(format!("no {} curve for PRM {prm} ({who})", q.as_str()));
                    (vec![0.0; n_t], Vec::new())
                }
            }
        };
    let (prod_cols, estimated_producers): (Vec<Vec<f64>>, Vec<Vec<usize>>) = job
        .producers
        .iter()
        .map(|p| settle(p, Quantity::Production, "producer", &always))
        .unzip();
    let (cons_cols, estimated_consumers): (Vec<Vec<f64>>, Vec<Vec<usize>>) = job
        .consumers
        .iter()
        .zip(&members)
        .map(|(c, m)| settle(&c.prm, Quantity::Consumption, &c.id, m))
        .unzip();
    if !missing.is_empty() {
        return Err(KeysError::Input(format!(
            "{}: {}",
            dir.display(),
            missing.join("; ")
        )));
    }
    let estimated_consumer_kwh = estimated_consumers
        .iter()
        .zip(&cons_cols)
        .map(|(ts, col)| ts.iter().map(|&t| col[t]).sum())
        .collect();
    let transpose = |cols: &[Vec<f64>]| -> Vec<Vec<f64>> {
        (0..n_t)
            .map(|t| cols.iter().map(|c| c[t]).collect())
            .collect()
    };
    Ok(Measured {
        production_kwh: transpose(&prod_cols),
        consumption_kwh: transpose(&cons_cols),
        problems,
        coarse_steps: coarse.iter().filter(|&&c| c).count(),
        periods,
        inputs,
        members,
        estimated_consumers,
        estimated_consumer_kwh,
        estimated_producers,
        suspects,
    })
}

/// Reads a `PRM;CUPS` mapping (one pair a line, `#` comments).
pub fn read_cups_map(path: &Path) -> Result<BTreeMap<Prm, String>, KeysError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut map = BTreeMap::new();
    for (line, rec) in crate::dso::semicolon_records(&text, Some(b'#')) {
        let bad = |why: String| KeysError::Input(format!("{}:{line}: {why}", path.display()));
        let rec = rec.map_err(bad)?;
        let (Some(prm), Some(cups), None) = (rec.get(0), rec.get(1), rec.get(2)) else {
            return Err(bad("expected PRM;CUPS".into()));
        };
        let prm: Prm = prm.parse().map_err(|e| bad(format!("{e}")))?;
        spain::check_cups(cups.trim()).map_err(bad)?;
        map.insert(prm, cups.trim().to_string());
    }
    Ok(map)
}
