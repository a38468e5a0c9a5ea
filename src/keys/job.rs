//! `ped keys`: a month (or any run of local days) of keys from the DSO's own
//! load curves, in one of the DSO formats, written all or nothing.
//!
//! Steps: read and settle the load curves (bad lines reported, nothing
//! computed from a broken export; values that cannot be readings kept as
//! missing and listed); estimate each member's missing points from its own
//! curve (flagged in the manifest); give the steps nothing can estimate the
//! DSO's default rule (pro rata); let a
//! [`MonthAllocator`] decide the other steps; quantise per step (simple or
//! full dynamic); render and read back every file; write them with a
//! `manifest.json` (hashes of inputs and outputs, policy, precision, range)
//! into a temporary directory that is renamed into place at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::KeyFileFormat;
use crate::allocation::solver::{Rule, Violation};
use crate::allocation::{
    self, AllocationError, FullStepInput, MonthAllocator, MonthInput, PerStepAllocator, Policy,
    Precision, StepInput,
};
use crate::config::{KeyPolicy, Site};
use crate::dso::enedis::Layout;
use crate::dso::loadcurve::{self, LineLog, LoadCurveError, Plausibility, Quantity};
use crate::dso::{enedis, spain, DsoError, KeyRow};
use crate::ids::Prm;
use crate::time::Grid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// One coefficient per consumer per step, on the pooled production.
    Simple,
    /// One coefficient per producer × consumer per step.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Enedis,
    Spain,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    LoadCurves(#[from] LoadCurveError),
    #[error("{0}")]
    Dso(#[from] DsoError),
    #[error("{0}")]
    Allocation(#[from] AllocationError),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already holds different keys: a changed month is a new version, write it to another --out")]
    Differs(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeysError {
    let path = path.to_path_buf();
    move |source| KeysError::Io { path, source }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One participant as the keys see it.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub id: String,
    pub prm: Prm,
    pub tariff_eur_per_kwh: f64,
    pub priority: u8,
    pub static_share: f64,
    /// First and last local day in the operation (`None`: open).
    pub entry: Option<NaiveDate>,
    pub exit: Option<NaiveDate>,
}

impl Consumer {
    pub fn member_on(&self, day: NaiveDate) -> bool {
        self.entry.map_or(true, |e| day >= e) && self.exit.map_or(true, |x| day <= x)
    }

    /// A member on at least one day of `from..=to`.
    pub fn member_between(&self, from: NaiveDate, to: NaiveDate) -> bool {
        self.entry.map_or(true, |e| e <= to) && self.exit.map_or(true, |x| x >= from)
    }
}

/// What a key run needs; built from a site with [`KeysJob::from_site`].
#[derive(Debug, Clone)]
pub struct KeysJob {
    pub grid: Grid,
    pub from: NaiveDate,
    /// Last local day, inclusive.
    pub to: NaiveDate,
    pub consumers: Vec<Consumer>,
    /// Producer PRMs: PV plants, then batteries (producers while discharging).
    pub producers: Vec<Prm>,
    pub policy: KeyPolicy,
    pub kind: KeyKind,
    pub format: Format,
    pub precision: Precision,
    /// Spain only: CUPS per consumer PRM, and the installation's CAU.
    pub cups: BTreeMap<Prm, String>,
    pub cau: String,
    /// Hashed into the manifest.
    pub site_file: Option<PathBuf>,
    /// The Enedis operation id (`ACC` + 8 digits): names the files of the
    /// operation layout.
    pub operation_id: Option<String>,
    pub layout: Layout,
    /// What a load-curve value can be; anything else is a suspect point.
    pub plausibility: Plausibility,
    /// Refuse the run when a load curve holds a suspect value.
    pub strict: bool,
    /// PRMs of the site's other operations: their load curves, in the same
    /// export, are not this run's and not worth a warning.
    pub other_operations: BTreeSet<Prm>,
}

impl KeysJob {
    /// The job of the whole site as one operation (its declared operations
    /// ignored); [`KeysJob::for_operation`] for one of them.
    pub fn from_site(site: &Site, from: NaiveDate, to: NaiveDate) -> KeysJob {
        let cfg = &site.config;
        KeysJob {
            grid: site.grid,
            from,
            to,
            // The keys of a run are for the participants that are members
            // on at least one of its days; the others have no column.
            consumers: cfg
                .participants
                .iter()
                .map(|p| {
                    let (entry, exit) = p.membership();
                    Consumer {
                        id: p.id.clone(),
                        prm: p.prm.clone(),
                        tariff_eur_per_kwh: p.tariff_eur_per_kwh,
                        priority: p.priority,
                        static_share: p.static_share,
                        entry,
                        exit,
                    }
                })
                .filter(|c| c.member_between(from, to))
                .collect(),
            producers: site
                .producers()
                .iter()
                .filter_map(|d| d.prm.clone())
                .collect(),
            policy: cfg.keys.policy,
            kind: KeyKind::Simple,
            format: Format::Enedis,
            precision: Precision {
                units_per_one: cfg.keys.units_per_one,
            },
            cups: BTreeMap::new(),
            cau: cfg.site.id.clone(),
            site_file: Some(site.source.clone()),
            operation_id: cfg.keys.operation_id.clone(),
            layout: Layout::of(cfg.keys.layout).with(&cfg.keys.file),
            plausibility: Plausibility {
                max_watts: cfg.keys.max_load_curve_kw * 1000.0,
                per_prm: cfg
                    .participants
                    .iter()
                    .filter_map(|p| Some((p.prm.clone(), p.subscribed_kva? * 2000.0)))
                    .collect(),
            },
            strict: false,
            other_operations: BTreeSet::new(),
        }
    }

    /// The job of one operation of the site: its members' columns, its
    /// producers' energy, named after its id.
    pub fn for_operation(
        site: &Site,
        op: &crate::config::Operation,
        from: NaiveDate,
        to: NaiveDate,
    ) -> KeysJob {
        let mut job = KeysJob::from_site(site, from, to);
        let cfg = &site.config;
        let members: BTreeSet<&str> = op
            .participants
            .iter()
            .map(|&i| cfg.participants[i].id.as_str())
            .collect();
        job.consumers.retain(|c| members.contains(c.id.as_str()));
        let producers = site.producers();
        job.producers = op
            .producers
            .iter()
            .filter_map(|&i| producers[i].prm.clone())
            .collect();
        job.operation_id = op.id.clone();
        job.other_operations = cfg
            .participants
            .iter()
            .filter(|p| !members.contains(p.id.as_str()))
            .map(|p| p.prm.clone())
            .chain(producers.iter().filter_map(|d| d.prm.clone()))
            .filter(|prm| !job.producers.contains(prm))
            .collect();
        job
    }

    pub fn policy(&self) -> Policy {
        match self.policy {
            KeyPolicy::Prorata => Policy::ProRata,
            KeyPolicy::Static => {
                Policy::Static(self.consumers.iter().map(|c| c.static_share).collect())
            }
            KeyPolicy::Optimised => Policy::Optimised {
                tariffs_eur_per_kwh: self
                    .consumers
                    .iter()
                    .map(|c| c.tariff_eur_per_kwh)
                    .collect(),
                priority: self.consumers.iter().map(|c| c.priority).collect(),
            },
        }
    }

    /// The settlement periods of the run, UTC starts.
    pub fn periods(&self) -> Result<Vec<DateTime<Utc>>, KeysError> {
        if self.to < self.from {
            return Err(KeysError::Input(format!(
                "--to {} is before --from {}",
                self.to, self.from
            )));
        }
        let mut out = Vec::new();
        let mut d = self.from;
        while d <= self.to {
            out.extend(
                self.grid
                    .periods_of_local_day(d)
                    .map_err(|e| KeysError::Input(e.to_string()))?,
            );
            d = d
                .succ_opt()
                .ok_or_else(|| KeysError::Input("date out of range".into()))?;
        }
        Ok(out)
    }
}

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

/// Keys of a run, before rendering.
#[derive(Debug, Clone)]
pub struct Computed {
    /// Simple: one row set for all producers; full: one per producer.
    pub rows: Vec<Vec<KeyRow>>,
    /// `[t][i]` intended (after fallbacks) and allocated by the DSO's rule on
    /// the exported keys.
    pub intended_kwh: Vec<Vec<f64>>,
    pub allocated_kwh: Vec<Vec<f64>>,
    pub fallback_steps: Vec<usize>,
    pub allocator: &'static str,
    /// `[t][i]` what the DSO's default (pro rata, unquantised) would give:
    /// the baseline of the participants' statements.
    pub prorata_kwh: Vec<Vec<f64>>,
    pub month: MonthNote,
}

/// How the month allocator reached its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthNote {
    /// `greedy`, `totals`, `flow`, `sifted_lp`, `lp` (month solver) or the per-step policy's name.
    pub method: String,
    /// Why the month solver's answer was not used (budget, solver failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Fairness rules the month could not meet.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::allocation::solver::as_text"
    )]
    pub violations: Vec<Violation>,
}

/// Allocation and quantisation of every step.
pub fn compute(
    job: &KeysJob,
    m: &Measured,
    allocator: &dyn MonthAllocator,
) -> Result<Computed, KeysError> {
    let n_t = m.periods.len();
    let pooled: Vec<f64> = m.production_kwh.iter().map(|r| r.iter().sum()).collect();
    let tariffs: Vec<f64> = job.consumers.iter().map(|c| c.tariff_eur_per_kwh).collect();
    let priority: Vec<u8> = job.consumers.iter().map(|c| c.priority).collect();
    let outcome = allocator.allocate_month(&MonthInput {
        production_kwh: &pooled,
        consumption_kwh: &m.consumption_kwh,
        tariffs_eur_per_kwh: &tariffs,
        priority: &priority,
    })?;
    let month = MonthNote {
        method: outcome.method,
        fallback: outcome.fallback,
        violations: outcome.violations,
    };
    let mut intended = outcome.intended_kwh;
    if intended.len() != n_t {
        return Err(AllocationError::Length {
            expected: n_t,
            got: intended.len(),
        }
        .into());
    }
    let mut fallback_steps = Vec::new();
    for t in 0..n_t {
        if !m.problems[t].is_empty() {
            intended[t] =
                allocation::intended_for_step(pooled[t], &m.consumption_kwh[t], &Policy::ProRata)
                    .map_err(AllocationError::Policy)?;
            fallback_steps.push(t);
        }
    }
    let is_static = job.policy == KeyPolicy::Static;
    let policy = job.policy();
    let n_prod = job.producers.len();
    let mut rows: Vec<Vec<KeyRow>> = match job.kind {
        KeyKind::Simple => vec![Vec::with_capacity(n_t)],
        KeyKind::Full => vec![Vec::with_capacity(n_t); n_prod],
    };
    let mut allocated = Vec::with_capacity(n_t);
    let mut prorata = Vec::with_capacity(n_t);
    // Each consumer's rounding remainder, carried through the local month.
    let mut carry = allocation::Remainders::new(job.consumers.len());
    let mut month_of = None;
    for t in 0..n_t {
        let local_month = {
            let d = job.grid.local_day(m.periods[t]);
            (d.year(), d.month())
        };
        if month_of != Some(local_month) {
            carry = allocation::Remainders::new(job.consumers.len());
            month_of = Some(local_month);
        }
        prorata.push(
            allocation::intended_for_step(pooled[t], &m.consumption_kwh[t], &Policy::ProRata)
                .map_err(AllocationError::Policy)?,
        );
        let start = m.periods[t];
        let c = &m.consumption_kwh[t];
        let fallback = !m.problems[t].is_empty();
        match job.kind {
            KeyKind::Simple => {
                let input = StepInput {
                    production_kwh: pooled[t],
                    consumption_kwh: c.clone(),
                };
                // Static keys are the declared shares, not a quantised allocation.
                let k = if is_static && !fallback {
                    allocation::keys_for_step(&input, &policy, job.precision)?
                } else {
                    allocation::keys_from_intended_carried(
                        &input,
                        &intended[t],
                        job.precision,
                        &mut carry,
                    )?
                };
                rows[0].push(KeyRow {
                    start,
                    units: k.units,
                });
                allocated.push(k.allocated_kwh);
            }
            KeyKind::Full => {
                let input = FullStepInput {
                    production_kwh: m.production_kwh[t].clone(),
                    consumption_kwh: c.clone(),
                };
                let k = if is_static && !fallback {
                    let shares: Vec<f64> = job.consumers.iter().map(|c| c.static_share).collect();
                    let intended: Vec<f64> = shares
                        .iter()
                        .zip(c)
                        .map(|(s, &ci)| (s * pooled[t]).min(ci))
                        .collect();
                    allocation::full_keys_from_intended(&input, &intended, job.precision, false)?
                } else {
                    allocation::full_keys_from_intended(&input, &intended[t], job.precision, true)?
                };
                for (j, units) in k.units.into_iter().enumerate() {
                    rows[j].push(KeyRow { start, units });
                }
                allocated.push(k.allocated_kwh);
            }
        }
    }
    // Outside its membership a participant has no key, whatever rounding
    // residue a step had left to place.
    for (i, member) in m.members.iter().enumerate() {
        for rs in &mut rows {
            for (row, _) in rs.iter_mut().zip(member).filter(|(_, &is)| !is) {
                if let Some(u) = row.units.get_mut(i) {
                    *u = 0;
                }
            }
        }
    }
    Ok(Computed {
        rows,
        intended_kwh: intended,
        allocated_kwh: allocated,
        fallback_steps,
        allocator: allocator.name(),
        prorata_kwh: prorata,
        month,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFile {
    pub name: String,
    pub sha256: String,
    pub bytes: usize,
    /// The producer a key file is for (Enedis); absent for whole-site files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    pub period: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantTotal {
    pub id: String,
    pub prm: String,
    pub consumption_kwh: f64,
    pub intended_kwh: f64,
    pub allocated_kwh: f64,
    pub tariff_eur_per_kwh: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<NaiveDate>,
    /// Steps of the run in which it is a member of the operation.
    #[serde(default)]
    pub member_steps: usize,
    /// Steps whose consumption ped estimated (missing or suspect in the
    /// load curve), and the energy estimated.
    #[serde(default)]
    pub estimated_steps: usize,
    #[serde(default)]
    pub estimated_kwh: f64,
}

/// Values in the load curves that cannot be readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SuspectValues {
    pub count: usize,
    /// The first ones, `file:line: reason`.
    pub first: Vec<String>,
}

/// A step with estimated points: who was estimated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatedStep {
    pub period: String,
    /// Participant ids and producer PRMs.
    pub estimated: Vec<String>,
}

/// What was generated, from what, and how; the archive stores it as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: Format,
    pub kind: KeyKind,
    pub policy: KeyPolicy,
    pub allocator: String,
    pub units_per_one: u32,
    pub settlement_minutes: u32,
    pub timezone: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub periods: usize,
    pub first_period: String,
    pub last_period: String,
    pub site: Option<InputFile>,
    pub inputs: Vec<InputFile>,
    pub files: Vec<OutputFile>,
    pub fallback_steps: Vec<Fallback>,
    pub coarse_steps: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// The key files' layout (`enedis`, `enedis_iso`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    #[serde(default)]
    pub suspect_values: SuspectValues,
    /// Steps in which a member's consumption or a producer's production was
    /// estimated rather than measured.
    #[serde(default)]
    pub estimated_steps: Vec<EstimatedStep>,
    pub production_kwh: f64,
    pub self_consumed_kwh: f64,
    pub participants: Vec<ParticipantTotal>,
    /// Only for month solvers (absent for per-step policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_solver: Option<MonthNote>,
    /// A run that starts after the month's first day: where the month's
    /// figures before `from` came from (absent for runs from the 1st).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_start: Option<MonthStart>,
    /// The month's figures at the end of the run (month solver only), for
    /// the run that continues the month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_to_date: Option<MonthFigures>,
}

/// The name of the per-step allocation file written beside the keys; the
/// reconciliation reads it back.
pub const ALLOCATION_FILE: &str = "allocation.csv";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Hands every key file of the run to `emit` (name, text, producer PRM),
/// one at a time, each rendered and read back with its validator first.
/// Simple keys are one text for every producer, rendered and checked once.
fn each_key_file(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    mut emit: impl FnMut(String, &str, Option<String>) -> Result<(), KeysError>,
) -> Result<(), KeysError> {
    let consumers: Vec<Prm> = job.consumers.iter().map(|c| c.prm.clone()).collect();
    match job.format {
        Format::Enedis => {
            if job.producers.is_empty() {
                return Err(DsoError::Empty("no producer PRM").into());
            }
            let layout: &dyn KeyFileFormat = &job.layout;
            let checked = |rows: &[KeyRow]| -> Result<String, KeysError> {
                Ok(layout.render_checked(&job.grid, &consumers, rows, job.precision)?)
            };
            let operation = job.operation_id.as_deref();
            if job.kind == KeyKind::Simple && layout.simple_targets(&job.producers) == [None] {
                // Simple dynamic keys apply to the pooled production: one
                // file for the operation.
                let text = checked(&k.rows[0])?;
                let name = layout.file_name(&job.grid, operation, None, &k.rows[0])?;
                return emit(name, &text, None);
            }
            let shared = match job.kind {
                KeyKind::Simple => Some(checked(&k.rows[0])?),
                KeyKind::Full => None,
            };
            for (j, producer) in job.producers.iter().enumerate() {
                let rows = match job.kind {
                    KeyKind::Simple => &k.rows[0],
                    KeyKind::Full => &k.rows[j],
                };
                let own;
                let text = match &shared {
                    Some(t) => t,
                    None => {
                        own = checked(rows)?;
                        &own
                    }
                };
                let name = layout.file_name(&job.grid, operation, Some(producer), rows)?;
                emit(name, text, Some(producer.to_string()))?;
            }
        }
        Format::Spain => {
            let (name, text) = spain_file(job, m, k)?;
            emit(name, &text, None)?;
        }
    }
    Ok(())
}

/// Renders every file of the run and reads each back with its validator.
pub fn render_files(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
) -> Result<Vec<(String, String, Option<String>)>, KeysError> {
    let mut files = Vec::new();
    each_key_file(job, m, k, |name, text, producer| {
        files.push((name, text.to_string(), producer));
        Ok(())
    })?;
    let mut alloc = Vec::new();
    allocation_lines(job, m, k, &mut alloc).map_err(io(Path::new(ALLOCATION_FILE)))?;
    let alloc = String::from_utf8(alloc)
        .map_err(|e| KeysError::Input(format!("{ALLOCATION_FILE}: {e}")))?;
    files.push((ALLOCATION_FILE.to_string(), alloc, None));
    Ok(files)
}

/// The Spanish file of the run: hourly coefficients per CUPS, read back.
fn spain_file(job: &KeysJob, m: &Measured, k: &Computed) -> Result<(String, String), KeysError> {
    let cups = job
        .consumers
        .iter()
        .map(|c| {
            job.cups.get(&c.prm).cloned().ok_or_else(|| {
                KeysError::Input(format!(
                    "no CUPS for PRM {} (participant {}): add `{};<CUPS>` to the --cups file",
                    c.prm, c.id, c.prm
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pooled: Vec<f64> = m.production_kwh.iter().map(|r| r.iter().sum()).collect();
    let rows = spain::hourly_rows(
        job.grid.tz(),
        &m.periods,
        &pooled,
        &k.intended_kwh,
        &m.consumption_kwh,
    )?;
    let text = spain::render(&cups, &rows)?;
    spain::validate(&text)?;
    Ok((spain::file_name(&job.cau, job.from, job.to), text))
}

/// `allocation.csv`: per step and consumer, consumption, allocation under
/// the exported keys, and the DSO's default.
fn allocation_lines(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    w: &mut impl std::io::Write,
) -> std::io::Result<()> {
    w.write_all(b"Horodate;PRM;consumption_kwh;allocated_kwh;prorata_kwh\n")?;
    for (t, start) in m.periods.iter().enumerate() {
        let stamp = job.grid.format_local(*start);
        for (i, c) in job.consumers.iter().enumerate() {
            writeln!(
                w,
                "{stamp};{};{:.6};{:.6};{:.6}",
                c.prm, m.consumption_kwh[t][i], k.allocated_kwh[t][i], k.prorata_kwh[t][i]
            )?;
        }
    }
    Ok(())
}

/// Hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: usize,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(2 * digest.len());
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Renders, reads back and writes the run's files into `dir` one at a time,
/// so at most one producer's text is in memory (full dynamic keys of 1,000
/// participants are ~15 MB per producer, `allocation.csv` ~170 MB, written
/// as it is produced). Same files, bytes and checks as [`render_files`].
fn stream_files(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    dir: &Path,
) -> Result<Vec<OutputFile>, KeysError> {
    let write = |name: &str, text: &str| -> Result<(), KeysError> {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).map_err(io(&path))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))
    };
    let mut outputs = Vec::new();
    each_key_file(job, m, k, |name, text, producer| {
        write(&name, text)?;
        outputs.push(OutputFile {
            sha256: sha256_hex(text.as_bytes()),
            bytes: text.len(),
            name,
            producer,
        });
        Ok(())
    })?;
    let path = dir.join(ALLOCATION_FILE);
    let f = std::fs::File::create(&path).map_err(io(&path))?;
    let mut w = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, f),
        hasher: Sha256::new(),
        bytes: 0,
    };
    allocation_lines(job, m, k, &mut w).map_err(io(&path))?;
    std::io::Write::flush(&mut w).map_err(io(&path))?;
    let Hashing {
        inner,
        hasher,
        bytes,
    } = w;
    let f = inner.into_inner().map_err(|e| KeysError::Io {
        path: path.clone(),
        source: e.into_error(),
    })?;
    f.sync_all().map_err(io(&path))?;
    outputs.push(OutputFile {
        name: ALLOCATION_FILE.to_string(),
        sha256: hex(&hasher.finalize()),
        bytes,
        producer: None,
    });
    Ok(outputs)
}

pub fn manifest(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    files: &[(String, String, Option<String>)],
) -> Result<Manifest, KeysError> {
    let outputs = files
        .iter()
        .map(|(name, text, producer)| OutputFile {
            name: name.clone(),
            sha256: sha256_hex(text.as_bytes()),
            bytes: text.len(),
            producer: producer.clone(),
        })
        .collect();
    manifest_of(job, m, k, outputs)
}

/// The manifest of files already written (`outputs` hold their hashes).
fn manifest_of(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    outputs: Vec<OutputFile>,
) -> Result<Manifest, KeysError> {
    let site = match &job.site_file {
        Some(p) => Some(InputFile {
            file: p.display().to_string(),
            sha256: sha256_hex(&std::fs::read(p).map_err(io(p))?),
            prm: String::new(),
            quantity: "site".into(),
        }),
        None => None,
    };
    let n = job.consumers.len();
    let mut cons = vec![0.0; n];
    let mut int = vec![0.0; n];
    let mut alloc = vec![0.0; n];
    for t in 0..m.periods.len() {
        for i in 0..n {
            cons[i] += m.consumption_kwh[t][i];
            int[i] += k.intended_kwh[t][i];
            alloc[i] += k.allocated_kwh[t][i];
        }
    }
    let fmt = |t: &DateTime<Utc>| job.grid.format_local(*t);
    Ok(Manifest {
        format: job.format,
        kind: job.kind,
        policy: job.policy,
        allocator: k.allocator.into(),
        units_per_one: job.precision.units_per_one,
        settlement_minutes: job.grid.step_minutes(),
        timezone: job.grid.tz().to_string(),
        from: job.from,
        to: job.to,
        periods: m.periods.len(),
        first_period: m.periods.first().map(fmt).unwrap_or_default(),
        last_period: m.periods.last().map(fmt).unwrap_or_default(),
        site,
        inputs: m.inputs.clone(),
        files: outputs,
        fallback_steps: k
            .fallback_steps
            .iter()
            .map(|&t| Fallback {
                period: fmt(&m.periods[t]),
                reasons: m.problems[t].clone(),
            })
            .collect(),
        coarse_steps: m.coarse_steps,
        operation_id: job.operation_id.clone(),
        layout: (job.format == Format::Enedis).then(|| job.layout.label().to_string()),
        suspect_values: SuspectValues {
            count: m.suspects.total,
            first: m.suspects.shown.iter().map(|l| l.to_string()).collect(),
        },
        estimated_steps: estimated_steps(job, m),
        production_kwh: m.production_kwh.iter().flatten().sum(),
        self_consumed_kwh: alloc.iter().sum(),
        participants: job
            .consumers
            .iter()
            .enumerate()
            .map(|(i, c)| ParticipantTotal {
                id: c.id.clone(),
                prm: c.prm.to_string(),
                consumption_kwh: cons[i],
                intended_kwh: int[i],
                allocated_kwh: alloc[i],
                tariff_eur_per_kwh: c.tariff_eur_per_kwh,
                entry: c.entry,
                exit: c.exit,
                member_steps: m
                    .members
                    .get(i)
                    .map_or(0, |r| r.iter().filter(|&&b| b).count()),
                estimated_steps: m.estimated_consumers.get(i).map_or(0, Vec::len),
                estimated_kwh: m.estimated_consumer_kwh.get(i).copied().unwrap_or(0.0),
            })
            .collect(),
        month_solver: (k.allocator == MONTH_SOLVER).then(|| k.month.clone()),
        month_start: None,
        month_to_date: None,
    })
}

const MONTH_SOLVER: &str = "optimised_month";

fn estimated_steps(job: &KeysJob, m: &Measured) -> Vec<EstimatedStep> {
    let mut by_step: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (c, ts) in job.consumers.iter().zip(&m.estimated_consumers) {
        for &t in ts {
            by_step.entry(t).or_default().push(c.id.clone());
        }
    }
    for (p, ts) in job.producers.iter().zip(&m.estimated_producers) {
        for &t in ts {
            by_step.entry(t).or_default().push(p.to_string());
        }
    }
    by_step
        .into_iter()
        .map(|(t, estimated)| EstimatedStep {
            period: job.grid.format_local(m.periods[t]),
            estimated,
        })
        .collect()
}

/// The month solver for a site's optimised keys: fairness from `[keys]`,
/// subscription = each participant's `static_share` (when > 0), prices from
/// `[plan]`. None when the policy is not optimised or `keys.month_budget_ms`
/// is 0 (per-step keys then).
pub fn month_solver(site: &Site, job: &KeysJob) -> Option<allocation::MonthSolverAllocator> {
    let k = &site.config.keys;
    if job.policy != KeyPolicy::Optimised || k.month_budget_ms == 0 {
        return None;
    }
    Some(allocation::MonthSolverAllocator {
        ids: job.consumers.iter().map(|c| c.id.clone()).collect(),
        local_price_eur_per_kwh: site.config.plan.local_price_eur_per_kwh,
        export_price_eur_per_kwh: site.config.plan.export_price_eur_per_kwh,
        fairness: crate::allocation::solver::Fairness {
            floor_ratio: k.floor_ratio,
            no_worse_than_pro_rata: k.no_worse_than_pro_rata,
            ..Default::default()
        },
        subscription_share: job
            .consumers
            .iter()
            .map(|c| (c.static_share > 0.0).then_some(c.static_share))
            .collect(),
        month_to_date: Vec::new(),
        month_to_date_production_kwh: 0.0,
        budget: Some(std::time::Duration::from_millis(k.month_budget_ms)),
    })
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// A new directory of files.
    New(Manifest),
    /// `out` already held exactly these files: nothing was touched.
    Unchanged(Manifest),
}

/// Writes the files and the manifest into `out`, all or nothing: into a
/// sibling temporary directory, synced, then renamed to `out`. If `out`
/// exists with the same files (same hashes), the run is idempotent and
/// nothing changes; if it holds anything else, nothing is overwritten.
pub fn write_out(
    out: &Path,
    files: &[(String, String, Option<String>)],
    manifest: &Manifest,
) -> Result<Written, KeysError> {
    if let Some(w) = existing_out(out, manifest)? {
        return Ok(w);
    }
    let tmp = temporary_beside(out)?;
    let result = (|| {
        let json = serde_json::to_string_pretty(manifest)
            .map_err(|e| KeysError::Input(format!("manifest: {e}")))?;
        let mut all: Vec<(String, String)> = files
            .iter()
            .map(|(n, t, _)| (n.clone(), t.clone()))
            .collect();
        all.push((MANIFEST_FILE.to_string(), json + "\n"));
        enedis::write_atomic(&tmp, &all)?;
        std::fs::rename(&tmp, out).map_err(io(out))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(Written::New(manifest.clone()))
}

/// Like [`write_out`], with each file rendered, read back and written in
/// turn (see `stream_files`) rather than all held in memory first. The
/// manifest is built from what was written, then `finish` completes it.
pub fn write_streamed(
    job: &KeysJob,
    m: &Measured,
    k: &Computed,
    out: &Path,
    finish: impl FnOnce(&mut Manifest),
) -> Result<Written, KeysError> {
    let tmp = temporary_beside(out)?;
    let result = (|| {
        let outputs = stream_files(job, m, k, &tmp)?;
        let mut man = manifest_of(job, m, k, outputs)?;
        finish(&mut man);
        if let Some(w) = existing_out(out, &man)? {
            return Ok(w);
        }
        let json = serde_json::to_string_pretty(&man)
            .map_err(|e| KeysError::Input(format!("manifest: {e}")))?;
        enedis::write_atomic(&tmp, &[(MANIFEST_FILE.to_string(), json + "\n")])?;
        std::fs::rename(&tmp, out).map_err(io(out))?;
        Ok(Written::New(man))
    })();
    if !matches!(result, Ok(Written::New(_))) {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// An empty sibling directory of `out` to write into before the rename.
fn temporary_beside(out: &Path) -> Result<PathBuf, KeysError> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let base = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            KeysError::Input(format!("--out {}: not a directory name", out.display()))
        })?;
    let tmp = parent.join(format!(".{base}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    Ok(tmp)
}

/// What an existing `out` means for a run that would write `manifest`:
/// the same files (unchanged, nothing to do), other files (refused), or
/// nothing (an empty directory, removed so the run can take its place).
fn existing_out(out: &Path, manifest: &Manifest) -> Result<Option<Written>, KeysError> {
    if out.exists() {
        let old = std::fs::read(out.join(MANIFEST_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
        let same_files = old.as_ref().is_some_and(|o| {
            o.files == manifest.files
                && o.files.iter().all(|f| {
                    std::fs::read(out.join(&f.name)).is_ok_and(|b| sha256_hex(&b) == f.sha256)
                })
        });
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if same_files {
            if let Some(o) = old {
                return Ok(Some(Written::Unchanged(o)));
            }
        }
        if !empty {
            return Err(KeysError::Differs(out.to_path_buf()));
        }
        std::fs::remove_dir(out).map_err(io(out))?;
    }
    Ok(None)
}

/// The whole run: load curves in `dir` → files in `out`. A run from the
/// month's first day records the month's figures at its end in the
/// manifest (values at `local_price_eur_per_kwh`), so a month solver run
/// that continues the month knows what was allocated before it; a run from
/// mid-month without the month solver does not know the month before it
/// and records none.
pub fn run(
    job: &KeysJob,
    load_curves: &Path,
    out: &Path,
    allocator: Option<&dyn MonthAllocator>,
    local_price_eur_per_kwh: f64,
) -> Result<Written, KeysError> {
    let m = measure_load_curves(job, load_curves)?;
    let default = PerStepAllocator {
        policy: job.policy(),
    };
    let k = compute(job, &m, allocator.unwrap_or(&default))?;
    let figures = if job.from == first_of_month(job.from) {
        Some(month_figures(job, &m, &k, None, local_price_eur_per_kwh)?)
    } else {
        None
    };
    write_streamed(job, &m, &k, out, |man| man.month_to_date = figures)
}

// ---------------------------------------------------------------------------
// A run that starts mid-month.

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

fn first_of_month(d: NaiveDate) -> NaiveDate {
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

/// The whole run with the month solver, for a range that may start
/// mid-month: the month before `from` comes from [`month_start`], the
/// manifest says where from, and it carries the month's figures at the end
/// of the run for the run that continues it.
pub fn run_in_month(
    job: &KeysJob,
    load_curves: &Path,
    out: &Path,
    solver: &allocation::MonthSolverAllocator,
    ledger: Option<&crate::ledger::Ledger>,
) -> Result<Written, KeysError> {
    let m = measure_load_curves(job, load_curves)?;
    let start = month_start(job, load_curves, solver, ledger);
    let carried = start.as_ref().and_then(|(_, f)| f.clone());
    let solver = match &carried {
        Some(f) => {
            let acc = account_from(job, f);
            allocation::MonthSolverAllocator {
                month_to_date: acc.participants,
                month_to_date_production_kwh: acc.production_kwh,
                ..solver.clone()
            }
        }
        None => allocation::MonthSolverAllocator {
            month_to_date: Vec::new(),
            month_to_date_production_kwh: 0.0,
            ..solver.clone()
        },
    };
    let mut k = compute(job, &m, &solver)?;
    let figures = month_figures(
        job,
        &m,
        &k,
        carried.as_ref(),
        solver.local_price_eur_per_kwh,
    )?;
    if solver.fairness.no_worse_than_pro_rata {
        report_rounding_shortfalls(&mut k.month, &figures);
    }
    write_streamed(job, &m, &k, out, |man| {
        man.month_to_date = Some(figures);
        man.month_start = start.map(|(s, _)| s);
    })
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
fn report_rounding_shortfalls(note: &mut MonthNote, figures: &MonthFigures) {
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

/// What `--validate` made of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// A key file that passed every rule of its format; a one-line summary.
    Valid(String),
    /// Not a key file, but one `ped keys` writes beside them (the
    /// allocation, the manifest): nothing to check, and why.
    Skipped(String),
}

/// What a file's content says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Enedis,
    Spain,
    Allocation,
    Manifest,
    Unknown,
}

/// Decides by content, not by name: an Enedis key file starts with
/// `Horodate;<PRM>`, ped's allocation with `Horodate;PRM;`, a Spanish file
/// with a CUPS (`ES…;hour;coefficient`), a manifest with `{`.
fn sniff(text: &str) -> Sniffed {
    let first = text
        .trim_start_matches('\u{feff}')
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let mut fields = first.split(';');
    let head = fields.next().unwrap_or("").trim();
    let second = fields.next().unwrap_or("").trim();
    if first.starts_with('{') {
        Sniffed::Manifest
    } else if head.eq_ignore_ascii_case("Horodate") {
        if second.eq_ignore_ascii_case("PRM") {
            Sniffed::Allocation
        } else {
            Sniffed::Enedis
        }
    } else if head.len() >= 2 && head[..2].eq_ignore_ascii_case("ES") {
        Sniffed::Spain
    } else {
        Sniffed::Unknown
    }
}

/// Reads a file back and checks every rule of its format. The format comes
/// from the content (see `sniff`); a file whose content names no format is
/// checked as its extension says (`.txt` Spain, else Enedis) so the error
/// points at the line and column that break that format.
pub fn validate_file(path: &Path, grid: &Grid, precision: Precision) -> Result<Checked, KeysError> {
    validate_file_in(path, grid, precision, &Layout::ALL)
}

/// [`validate_file`] trying `layouts` (the site's first) for Enedis files.
pub fn validate_file_in(
    path: &Path,
    grid: &Grid,
    precision: Precision,
    layouts: &[Layout],
) -> Result<Checked, KeysError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let text =
        String::from_utf8(bytes).map_err(|_| DsoError::invalid(1, 1, "file is not UTF-8"))?;
    let by_ext = || {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
        {
            Sniffed::Spain
        } else {
            Sniffed::Enedis
        }
    };
    let kind = match sniff(&text) {
        Sniffed::Unknown => by_ext(),
        k => k,
    };
    match kind {
        Sniffed::Allocation => Ok(Checked::Skipped(
            "ped's per-step allocation (Horodate;PRM;…), not a key file".into(),
        )),
        Sniffed::Manifest => Ok(Checked::Skipped(
            "a JSON document (ped's manifest), not a key file".into(),
        )),
        Sniffed::Spain => {
            let r = spain::validate(&text)?;
            Ok(Checked::Valid(format!(
                "spain: {} CUPS, {} hour(s) from hour {}",
                r.cups.len(),
                r.rows.len(),
                r.rows.first().map_or(0, |r| r.hour_of_year)
            )))
        }
        Sniffed::Enedis | Sniffed::Unknown => {
            let (layout, found, r) = enedis::validate_any(&text, grid, layouts)?;
            let note = if found == precision {
                String::new()
            } else {
                format!(
                    "; {} decimal(s), the site's keys.units_per_one = {} writes {}",
                    found.percent_decimals().unwrap_or(0),
                    precision.units_per_one,
                    precision.percent_decimals().unwrap_or(0)
                )
            };
            Ok(Checked::Valid(format!(
                "{}: {} consumer(s), {} step(s) from {} to {}{note}",
                layout.label(),
                r.consumers.len(),
                r.rows.len(),
                r.first_day,
                r.last_day
            )))
        }
    }
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

    fn small(kind: KeyKind) -> (KeysJob, Measured) {
        let grid = Grid::new(15, chrono_tz::Europe::Paris).expect("grid");
        let prm = |k: u64| -> Prm { format!("{k:014}").parse().expect("prm") };
        let job = KeysJob {
            grid,
            from: NaiveDate::from_ymd_opt(2025, 10, 25).expect("date"),
            to: NaiveDate::from_ymd_opt(2025, 10, 26).expect("date"),
            consumers: (0..5)
                .map(|i| Consumer {
                    id: format!("C{i}"),
                    prm: prm(20_000_000_000_000 + i),
                    tariff_eur_per_kwh: 0.18 + 0.02 * i as f64,
                    priority: 1 + (i % 2) as u8,
                    static_share: 0.2,
                    entry: None,
                    exit: None,
                })
                .collect(),
            producers: (0..2).map(|j| prm(30_000_000_000_000 + j)).collect(),
            policy: KeyPolicy::Optimised,
            kind,
            format: Format::Enedis,
            precision: Precision::default(),
            cups: BTreeMap::new(),
            cau: "t".into(),
            site_file: None,
            operation_id: Some("ACC00000001".into()),
            layout: Layout::ENEDIS,
            plausibility: Plausibility::default(),
            strict: false,
            other_operations: Default::default(),
        };
        let periods = job.periods().expect("periods");
        let n_t = periods.len();
        let m = Measured {
            production_kwh: (0..n_t)
                .map(|t| vec![(t % 37) as f64 * 0.05, (t % 11) as f64 * 0.07])
                .collect(),
            consumption_kwh: (0..n_t)
                .map(|t| {
                    (0..5)
                        .map(|i| 0.1 + ((t * (i + 3)) % 13) as f64 * 0.03)
                        .collect()
                })
                .collect(),
            problems: vec![Vec::new(); n_t],
            coarse_steps: 0,
            inputs: Vec::new(),
            members: vec![vec![true; n_t]; 5],
            estimated_consumers: vec![Vec::new(); 5],
            estimated_consumer_kwh: vec![0.0; 5],
            estimated_producers: vec![Vec::new(); 2],
            suspects: LineLog::default(),
            periods,
        };
        (job, m)
    }

    #[test]
    fn gaps_are_estimated_from_the_curve_itself_not_left_at_zero() {
        let grid = Grid::new(30, chrono_tz::Europe::Paris).expect("grid");
        let job = KeysJob {
            from: NaiveDate::from_ymd_opt(2026, 5, 1).expect("date"),
            to: NaiveDate::from_ymd_opt(2026, 5, 31).expect("date"),
            grid,
            ..small(KeyKind::Simple).0
        };
        let periods = job.periods().expect("periods");
        let n = periods.len();
        // A daily shape: 1 kWh per step by day (08:00-20:00), 0.2 at night,
        // 2 kWh on Sundays by day.
        let truth: Vec<f64> = periods
            .iter()
            .map(|t| {
                use chrono::{Datelike, Timelike};
                let l = t.with_timezone(&grid.tz());
                let day = (8..20).contains(&l.hour());
                match (day, l.weekday() == chrono::Weekday::Sun) {
                    (true, true) => 2.0,
                    (true, false) => 1.0,
                    _ => 0.2,
                }
            })
            .collect();
        let mut known = vec![true; n];
        // Three steps on a Friday morning (short: a line between neighbours).
        let short = 7 * 48 + 20;
        known[short..short + 3].fill(false);
        // A whole Sunday (long: the same hour of the Sundays around).
        let sunday = 2 * 48; // 2026-05-03 is a Sunday
        known[sunday..sunday + 48].fill(false);
        // Not a member from the 25th: nothing expected, nothing estimated.
        let mut expected = vec![true; n];
        expected[24 * 48..].fill(false);
        known[27 * 48..27 * 48 + 5].fill(false);
        let mut kwh: Vec<f64> = truth
            .iter()
            .zip(&known)
            .map(|(&v, &k)| if k { v } else { 0.0 })
            .collect();
        let est = estimate_gaps(&mut kwh, &known, &expected, &periods, &grid);
        assert_eq!(est.len(), 3 + 48);
        assert!(est.iter().all(|&t| t < 24 * 48));
        for (t, v) in kwh.iter().enumerate().skip(short).take(3) {
            assert!((v - 1.0).abs() < 1e-12, "step {t}: {v}");
        }
        for t in sunday..sunday + 48 {
            assert!((kwh[t] - truth[t]).abs() < 1e-12, "step {t}: {}", kwh[t]);
        }
        assert!(kwh[27 * 48..27 * 48 + 5].iter().all(|&v| v == 0.0));
        // A curve with nothing measured cannot be estimated.
        let mut none = vec![0.0; n];
        assert!(estimate_gaps(&mut none, &vec![false; n], &expected, &periods, &grid).is_empty());
    }

    #[test]
    fn non_members_get_no_key_and_no_column() {
        let (mut job, mut m) = small(KeyKind::Simple);
        // C4 leaves after the first day; every step of the second day, it
        // consumes nothing and must get 0 even where rounding has residue.
        job.consumers[4].exit = Some(job.from);
        let n_t = m.periods.len();
        for t in 0..n_t {
            let member = job.consumers[4].member_on(job.grid.local_day(m.periods[t]));
            m.members[4][t] = member;
            if !member {
                m.consumption_kwh[t][4] = 0.0;
            }
        }
        let k = compute(
            &job,
            &m,
            &PerStepAllocator {
                policy: job.policy(),
            },
        )
        .expect("keys");
        let day_two: Vec<usize> = (0..n_t).filter(|&t| !m.members[4][t]).collect();
        assert_eq!(day_two.len(), 100, "2025-10-26 has 100 quarter-hours");
        assert!(day_two.iter().all(|&t| k.rows[0][t].units[4] == 0));
        assert!((0..n_t).any(|t| m.members[4][t] && k.rows[0][t].units[4] > 0));
        // A participant who is not a member on any day of the run has no column.
        let mut cfg_job = job.clone();
        cfg_job.consumers[3].entry = NaiveDate::from_ymd_opt(2025, 11, 1);
        let c = &mut cfg_job.consumers[3];
        assert!(!c.member_between(cfg_job.from, cfg_job.to));
        c.entry = Some(cfg_job.to);
        assert!(c.member_between(cfg_job.from, cfg_job.to));
    }

    #[test]
    fn streamed_files_are_the_rendered_files_byte_for_byte() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for kind in [KeyKind::Simple, KeyKind::Full] {
            let (job, m) = small(kind);
            let k = compute(
                &job,
                &m,
                &PerStepAllocator {
                    policy: job.policy(),
                },
            )
            .expect("keys");
            let files = render_files(&job, &m, &k).expect("render");
            let want = manifest(&job, &m, &k, &files).expect("manifest");
            let out = tmp.path().join(format!("{kind:?}"));
            let Written::New(got) = write_streamed(&job, &m, &k, &out, |_| {}).expect("write")
            else {
                panic!("{kind:?}: a fresh directory must be new");
            };
            assert_eq!(got, want, "{kind:?}");
            for (name, text, _) in &files {
                assert_eq!(
                    std::fs::read(out.join(name)).expect("file"),
                    text.as_bytes(),
                    "{kind:?} {name}"
                );
            }
            // Again: unchanged, nothing rewritten, no temporary left behind.
            let again = write_streamed(&job, &m, &k, &out, |_| {}).expect("rerun");
            assert!(matches!(again, Written::Unchanged(_)), "{kind:?}");
            // Other keys into the same directory: refused, nothing left behind.
            let other = compute(
                &job,
                &m,
                &PerStepAllocator {
                    policy: Policy::ProRata,
                },
            )
            .expect("keys");
            let err = write_streamed(&job, &m, &other, &out, |_| {}).unwrap_err();
            assert!(matches!(err, KeysError::Differs(_)), "{err}");
            let stray: Vec<_> = std::fs::read_dir(tmp.path())
                .expect("dir")
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
                .collect();
            assert!(stray.is_empty(), "{stray:?}");
        }
    }
}
