//! The key files built from the ledger: the local day's working files,
//! brought up to each period stored, and the final day and month files once
//! they are complete.

use std::collections::BTreeSet;
use std::io::Write as _;

use chrono::{DateTime, NaiveDate, Utc};

use crate::allocation::Precision;
use crate::daemon::Shared;
use crate::dso::{enedis, KeyRow};
use crate::events;
use crate::ids::Prm;
use crate::keys::KeyFileFormat;
use crate::ledger::{ClosedPeriod, Ledger, LedgerError};

/// Once a day is final: counter snapshots older than the retention are
/// folded (`ledger.snapshot_retention_days`). A failure only delays it.
pub(super) fn prune(shared: &Shared, ledger: &mut Ledger, day: NaiveDate) {
    let days = shared.site.config.ledger.snapshot_retention_days;
    if days == 0 {
        return;
    }
    let Ok(end) = shared.site.grid.local_midnight(day) else {
        return;
    };
    let before = end - chrono::Duration::days(i64::from(days));
    match ledger.prune_snapshots(before) {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(before = %before, snapshots = n, "old counter snapshots folded to daily")
        }
        Err(e) => {
            tracing::warn!(error = %e, "counter snapshots not pruned; retried after the next day")
        }
    }
}

/// Brings the local day's working key files up to the period just stored.
///
/// The first period of a day seen by this process rewrites every producer's
/// file from the ledger's rows (atomically: temporary file, sync, rename);
/// later ones append the new period's single line, so closing a period costs
/// one line per producer rather than the whole day. The line is rendered by
/// the same code as the whole file. A crash can at worst tear the last
/// appended line; the first period after a restart rewrites the day whole.
/// What is delivered is never these files but the final ones, rendered and
/// validated from the ledger when the day is complete ([`finalise`]).
pub(super) fn write_day_files(
    shared: &Shared,
    ledger: &Ledger,
    p: &ClosedPeriod,
    days_current: &mut BTreeSet<NaiveDate>,
) {
    let site = &shared.site;
    let grid = site.grid;
    let day = grid.local_day(p.start);
    if days_current.contains(&day) {
        match append_day_row(shared, p, day) {
            Ok(n) => {
                events::emit(&shared.metrics, events::KeyFilesWritten { files: n });
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "key line not appended; rewriting the day's files");
                days_current.remove(&day);
            }
        }
    }
    // Days before this one are complete; only today's can still grow.
    days_current.retain(|d| *d >= day);
    let rows = match range_rows(shared, ledger, day, day) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "key rows not read back from the ledger");
            return;
        }
    };
    if rows.is_empty() {
        return;
    }
    let dir = shared
        .output_dir
        .join("keys")
        .join(day.format("%Y-%m-%d").to_string());
    let precision = Precision {
        units_per_one: site.config.keys.units_per_one,
    };
    let m = &shared.metrics;
    match std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|_| {
            let mut files = Vec::new();
            for slice in slices(shared) {
                let written = enedis::write_simple_dynamic(
                    &dir,
                    &grid,
                    &slice.producers,
                    &slice.consumers(shared),
                    &slice.rows(&rows),
                    precision,
                )
                .map_err(|e| {
                    if matches!(e, crate::dso::DsoError::Invalid { .. }) {
                        events::emit(m, events::KeyFileInvalid);
                    }
                    format!("{}: {e}", slice.label)
                })?;
                files.extend(written);
            }
            Ok(files)
        }) {
        Ok(files) => {
            days_current.insert(day);
            events::emit(
                m,
                events::KeyFilesWritten {
                    files: files.len() as u64,
                },
            );
        }
        Err(e) => tracing::error!(dir = %dir.display(), error = %e, "key files not written"),
    }
}

/// Appends `p`'s line to each producer's working file of `day`; the number of
/// files appended to.
fn append_day_row(shared: &Shared, p: &ClosedPeriod, day: NaiveDate) -> Result<u64, String> {
    let grid = shared.site.grid;
    let precision = Precision {
        units_per_one: shared.site.config.keys.units_per_one,
    };
    let row = KeyRow {
        start: p.start,
        units: p.keys.iter().map(|k| k.2).collect(),
    };
    if row.units.len() != shared.site.config.participants.len() {
        return Err("participant list changed".into());
    }
    let dir = shared
        .output_dir
        .join("keys")
        .join(day.format("%Y-%m-%d").to_string());
    let mut n = 0;
    for slice in slices(shared) {
        let rows = slice.rows(std::slice::from_ref(&row));
        // Rendered and read back by the validator like a whole file (header + the row).
        let day_file = &enedis::Layout::ENEDIS_ISO;
        let text = day_file
            .render_checked(&grid, &slice.consumers(shared), &rows, precision)
            .map_err(|e| e.to_string())?;
        let line = text.split_once('\n').map(|(_, l)| l).unwrap_or_default();
        for producer in &slice.producers {
            let name = day_file
                .file_name(&grid, None, Some(producer), &rows)
                .map_err(|e| e.to_string())?;
            let path = dir.join(&name);
            // Never creates: a missing file means the day must be written whole.
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(line.as_bytes())
                .and_then(|_| f.sync_data())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// One operation's part of the key files: its producers' PRMs, and its
/// members as columns (indices into the site's participants).
struct FileSlice {
    id: Option<String>,
    label: String,
    producers: Vec<Prm>,
    columns: Vec<usize>,
}

impl FileSlice {
    fn consumers(&self, shared: &Shared) -> Vec<Prm> {
        let participants = &shared.site.config.participants;
        self.columns
            .iter()
            .map(|&i| participants[i].prm.clone())
            .collect()
    }

    /// `rows` (one unit per site participant) cut to this operation's columns.
    fn rows(&self, rows: &[KeyRow]) -> Vec<KeyRow> {
        rows.iter()
            .map(|r| KeyRow {
                start: r.start,
                units: self
                    .columns
                    .iter()
                    .map(|&i| r.units.get(i).copied().unwrap_or(0))
                    .collect(),
            })
            .collect()
    }
}

fn slices(shared: &Shared) -> Vec<FileSlice> {
    let producers = shared.site.producers();
    shared
        .site
        .operations()
        .into_iter()
        .map(|op| FileSlice {
            label: op.label().to_string(),
            producers: op
                .producers
                .iter()
                .filter_map(|&i| producers[i].prm.clone())
                .collect(),
            columns: op.participants.clone(),
            id: op.id,
        })
        .collect()
}

/// UTC bounds of the local days `first..=last`.
fn day_bounds(
    grid: &crate::time::Grid,
    first: NaiveDate,
    last: NaiveDate,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let from = grid.local_midnight(first).ok()?;
    let to = grid.local_midnight(last.succ_opt()?).ok()?;
    Some((from, to))
}

fn range_rows(
    shared: &Shared,
    ledger: &Ledger,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<Vec<KeyRow>, LedgerError> {
    let Some((from, to)) = day_bounds(&shared.site.grid, first, last) else {
        return Ok(Vec::new());
    };
    let n = shared.site.config.participants.len();
    Ok(ledger
        .key_rows(from, to)?
        .into_iter()
        // A row stored under another participant list cannot go into this file.
        .filter(|(_, u)| u.len() == n)
        .map(|(start, units)| KeyRow { start, units })
        .collect())
}

/// A day or a month is complete: its key files are validated (rendered, then
/// parsed back by the validator) and recorded as versions, which puts new
/// versions in the outbox. A day's files are working copies in the
/// per-producer layout with offsets; the month's file, the one the DSO takes
/// for the previous month, is in the site's `keys.layout`.
pub(super) fn finalise(
    shared: &Shared,
    ledger: &mut Ledger,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<(), LedgerError> {
    let grid = shared.site.grid;
    let rows = range_rows(shared, ledger, first, last)?;
    if rows.is_empty() {
        return Ok(());
    }
    let keys = &shared.site.config.keys;
    let precision = Precision {
        units_per_one: keys.units_per_one,
    };
    let month = first != last;
    let layout: &dyn KeyFileFormat = if month {
        &enedis::Layout::of(keys.layout).with(&keys.file)
    } else {
        &enedis::Layout::ENEDIS_ISO
    };
    let Some((from, to)) = day_bounds(&grid, first, last) else {
        return Ok(());
    };
    let inputs: Vec<serde_json::Value> = ledger
        .period_hashes(from, to)?
        .into_iter()
        .map(|(s, h)| serde_json::json!({"period": s.to_rfc3339(), "sha256": h}))
        .collect();
    let inputs = serde_json::Value::Array(inputs).to_string();
    let policy = keys.policy.as_str();
    for mut slice in slices(shared) {
        // The month's header lists the members of the month only: a
        // participant who left before it or joins after it has no column.
        if month {
            members_only(shared, &mut slice, first, last);
        }
        let rows = slice.rows(&rows);
        let text = match layout.render_checked(&grid, &slice.consumers(shared), &rows, precision) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(operation = %slice.label, first = %first, last = %last, error = %e, "final key files invalid; not queued for delivery");
                continue;
            }
        };
        // Simple dynamic keys: one file for the operation, or the same text
        // once per producer when files are named after producers.
        let targets = layout.simple_targets(&slice.producers);
        for producer in targets {
            let name = match layout.file_name(&grid, slice.id.as_deref(), producer, &rows) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(operation = %slice.label, first = %first, last = %last, error = %e, "key file not queued: it cannot be named");
                    continue;
                }
            };
            let v = ledger.record_key_file(
                &name,
                first,
                last,
                text.as_bytes(),
                &inputs,
                policy,
                shared.clock.now(),
            )?;
            if v.new {
                tracing::info!(operation = %slice.label, file = %name, version = v.version, sha256 = %v.sha256, "key file version recorded, queued for delivery");
            }
        }
    }
    Ok(())
}

/// Keeps the columns of `slice`'s participants who are members on some day
/// of `first..=last`.
fn members_only(shared: &Shared, slice: &mut FileSlice, first: NaiveDate, last: NaiveDate) {
    let participants = &shared.site.config.participants;
    slice.columns.retain(|&i| {
        let (entry, exit) = participants[i].membership();
        entry.map_or(true, |e| e <= last) && exit.map_or(true, |x| x >= first)
    });
}
