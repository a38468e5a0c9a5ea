//! Archiving a `ped keys` run: every key file it generated becomes a key-file
//! version in the ledger, with its content hash, the hashes of the inputs it
//! was computed from, and the policy, through [`Ledger::record_key_file`].
//! Rerunning an unchanged month records nothing new; a changed month is a
//! new version of each file that changed, never an overwrite (the table's
//! triggers refuse updates), and the audit chain covers every version.
//!
//! `allocation.csv` and `manifest.json` stay beside the keys but are not
//! archived as key files: a key-file version enters the outbox, and only key
//! files go to the DSO. The manifest's content is in each version's inputs.

use chrono::Utc;
use serde::Serialize;

use super::job::{InputFile, Manifest, MonthFigures, ALLOCATION_FILE, MANIFEST_FILE};
use crate::ledger::{KeyFileVersion, Ledger, LedgerError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot archive key file {name}: {why}")]
    File { name: String, why: String },
    #[error("cannot describe the run for the archive: {0}")]
    Json(#[from] serde_json::Error),
}

/// What a key-file version says it was made from (its `inputs` column).
#[derive(Debug, Serialize)]
struct ArchivedInputs<'a> {
    site: Option<&'a InputFile>,
    load_curves: &'a [InputFile],
    from: String,
    to: String,
    periods: usize,
    first_period: &'a str,
    last_period: &'a str,
    fallback_steps: usize,
    producer: Option<&'a str>,
    /// The month's figures at the end of the run, for a run that continues
    /// the month ([`month_to_date_before`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    month_to_date: Option<&'a MonthFigures>,
}

/// The `policy` column: everything that changes how the keys were computed.
#[derive(Debug, Serialize)]
struct ArchivedPolicy<'a> {
    policy: &'a crate::config::KeyPolicy,
    allocator: &'a str,
    kind: &'a super::job::KeyKind,
    format: &'a super::job::Format,
    units_per_one: u32,
    settlement_minutes: u32,
    timezone: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    month_solver: Option<&'a super::job::MonthNote>,
}

/// Records the key files of a run whose `files` (name, content) were written
/// as `manifest` describes. Every file listed in the manifest must be given
/// with the hash the manifest holds, so what is archived is what was written.
pub fn archive_run(
    ledger: &mut Ledger,
    manifest: &Manifest,
    files: &[(String, Vec<u8>)],
) -> Result<Vec<KeyFileVersion>, ArchiveError> {
    let policy = serde_json::to_string(&ArchivedPolicy {
        policy: &manifest.policy,
        allocator: &manifest.allocator,
        kind: &manifest.kind,
        format: &manifest.format,
        units_per_one: manifest.units_per_one,
        settlement_minutes: manifest.settlement_minutes,
        timezone: &manifest.timezone,
        month_solver: manifest.month_solver.as_ref(),
    })?;
    let now = Utc::now();
    let mut out = Vec::new();
    for f in &manifest.files {
        if f.name == ALLOCATION_FILE || f.name == MANIFEST_FILE {
            continue;
        }
        let content = files
            .iter()
            .find(|(n, _)| *n == f.name)
            .map(|(_, c)| c)
            .ok_or_else(|| ArchiveError::File {
                name: f.name.clone(),
                why: "listed in the manifest but not given".into(),
            })?;
        let sha = super::sha256_hex(content);
        if sha != f.sha256 {
            return Err(ArchiveError::File {
                name: f.name.clone(),
                why: format!("content hash {sha} is not the manifest's {}", f.sha256),
            });
        }
        let inputs = serde_json::to_string(&ArchivedInputs {
            site: manifest.site.as_ref(),
            load_curves: &manifest.inputs,
            from: manifest.from.to_string(),
            to: manifest.to.to_string(),
            periods: manifest.periods,
            first_period: &manifest.first_period,
            last_period: &manifest.last_period,
            fallback_steps: manifest.fallback_steps.len(),
            producer: f.producer.as_deref(),
            month_to_date: manifest.month_to_date.as_ref(),
        })?;
        out.push(ledger.record_key_file(
            &f.name,
            manifest.from,
            manifest.to,
            content,
            &inputs,
            &policy,
            now,
        )?);
    }
    Ok(out)
}

/// The month's figures through the day before `from`, from the newest
/// archived run that ended that day within `from`'s month; `None` when the
/// ledger holds no such run (or only runs archived without figures).
pub fn month_to_date_before(
    ledger: &Ledger,
    from: chrono::NaiveDate,
) -> Result<Option<MonthFigures>, ArchiveError> {
    use chrono::Datelike;
    let (Some(through), Some(month)) = (from.pred_opt(), from.with_day(1)) else {
        return Ok(None);
    };
    if through < month {
        return Ok(None);
    }
    for inputs in ledger.key_file_inputs_ending(through)? {
        let v: serde_json::Value = serde_json::from_str(&inputs)?;
        let Some(f) = v.get("month_to_date") else {
            continue;
        };
        let f: MonthFigures = serde_json::from_value(f.clone())?;
        if f.month == month && f.through == through {
            return Ok(Some(f));
        }
    }
    Ok(None)
}
