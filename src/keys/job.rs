//! `ped keys`: a month (or any run of local days) of keys from the DSO's own
//! load curves, in one of the DSO formats, written all or nothing. This file
//! is the outline: the job's options ([`KeysJob`], for a site or one of its
//! operations), its errors, and the runs ([`run`], [`run_in_month`]) that
//! chain the steps the sibling files hold: read and settle the load curves
//! and estimate each member's missing points from its own curve
//! ([`measure_load_curves`], `input.rs`); give the steps nothing can
//! estimate the DSO's default rule (pro rata), let a [`MonthAllocator`]
//! decide the other steps and quantise per step ([`compute`],
//! `allocate.rs`); carry a month that started before `--from`
//! ([`month_start`], `month.rs`); render and read back every file and write
//! them with a `manifest.json` into a temporary directory renamed into place
//! at the end ([`write_streamed`], `output.rs`, `manifest.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::month::{first_of_month, report_rounding_shortfalls};
use crate::allocation::{
    self, AllocationError, MonthAllocator, PerStepAllocator, Policy, Precision,
};
use crate::config::{KeyPolicy, Site};
use crate::dso::enedis::Layout;
use crate::dso::loadcurve::{LoadCurveError, Plausibility};
use crate::dso::DsoError;
use crate::ids::Prm;
use crate::time::Grid;

// The steps live in sibling files; re-exported so the whole job is one
// path (`keys::job::…`, and `keys::…` through `mod.rs`).
pub use super::allocate::{compute, month_solver, Computed, MonthNote};
pub use super::input::{estimate_gaps, measure_load_curves, read_cups_map, InputFile, Measured};
pub use super::manifest::{
    manifest, EstimatedStep, Fallback, Manifest, OutputFile, ParticipantTotal, SuspectValues,
    MANIFEST_FILE,
};
pub use super::month::{
    account_from, month_figures, month_start, MonthFigures, MonthStart, ParticipantMonth,
};
pub use super::output::{render_files, write_out, write_streamed, Written, ALLOCATION_FILE};
pub use super::validate::{validate_file, validate_file_in, Checked};

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

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeysError {
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
            plausibility: Plausibility::for_site(cfg),
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
