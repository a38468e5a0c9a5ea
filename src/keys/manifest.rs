//! `manifest.json`, the record of a run the archive stores as is: what was
//! generated (each output file's hash, size and producer), from what (the
//! site file and load curves, hashed), how (format, kind, policy,
//! precision, allocator, range), the steps that fell back or were
//! estimated, the suspect values, each participant's totals, the month
//! solver's note and the month's figures for the run that continues it.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::job::{
    io, sha256_hex, Computed, Format, InputFile, KeyKind, KeysError, KeysJob, Measured,
    MonthFigures, MonthNote, MonthStart,
};
use crate::config::KeyPolicy;

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

pub const MANIFEST_FILE: &str = "manifest.json";

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
pub(super) fn manifest_of(
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
