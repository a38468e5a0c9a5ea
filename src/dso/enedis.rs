//! Enedis key files for *simple* and *full dynamic* keys, in one of two
//! layouts (the official specification, probably Enedis-OPE-CF_07E, was not
//! found; DOMAIN.md §1).
//!
//! [`Layout::ENEDIS`] (the default) is the layout of the only real file in
//! the DSO's layout found in public: `Horodate;<consumer PRM>;…`, then one row
//! per step, `Horodate` the step **start** in local wall-clock time
//! `DD/MM/YYYY HH:MM` without offset, keys in percent with a decimal comma,
//! `;`, LF, no newline after the last row, no BOM, one file for the operation
//! named `ACC<8 digits>_<step minutes>_<first day DDMMYYYY>_<last day DDMMYYYY>.txt`.
//! Without offsets the repeated autumn hour appears twice, in time order
//! (assumed: the sample does not cover a DST day); the validator resolves it by
//! order. Full dynamic keys (one file per producer) are named
//! `ACC<id>_<producer PRM>_<step>_<first>_<last>.txt` (assumed).
//!
//! [`Layout::ENEDIS_ISO`] is the layout seen in an open-source PMO tool: one
//! file per producer PRM named `<PRM>_<YYYYMMDD>_<YYYYMMDD>.csv`, `Horodate`
//! the step start with its UTC offset, a final LF. Simple dynamic keys apply
//! to the pooled production, so the same rows go into every producer's file.
//! The daemon's working day files use it (a row is appended per period).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::{DsoError, KeyRow};
use crate::allocation::Precision;
use crate::ids::Prm;
use crate::time::Grid;

/// The layouts a site can choose (`keys.layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutName {
    #[default]
    Enedis,
    EnedisIso,
}

/// How a file is named and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// One file per operation (`ACC…`), one per producer for full dynamic keys.
    Operation,
    /// One file per producer PRM, also for simple dynamic keys.
    Producer,
}

/// Every layout choice of a key file, so a change the DSO asks for is a
/// setting rather than a new renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub name: LayoutName,
    /// `true`: `2025-10-26T02:00:00+01:00`; `false`: `26/10/2025 02:00`.
    pub offset: bool,
    /// Whether the last row ends with LF.
    pub final_newline: bool,
    pub naming: Naming,
}

/// `[keys.file]`: each choice of a layout that the DSO's sample does not
/// show, overridable on its own (unset: the layout's own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutOverrides {
    /// Stamps with their UTC offset.
    pub offset: Option<bool>,
    /// A LF after the last row.
    pub final_newline: Option<bool>,
    /// `operation` (one `ACC…` file, one per producer for full dynamic
    /// keys) or `producer` (one file per producer PRM).
    pub naming: Option<Naming>,
}

impl Layout {
    /// `self` with the choices `o` sets.
    pub fn with(self, o: &LayoutOverrides) -> Layout {
        Layout {
            offset: o.offset.unwrap_or(self.offset),
            final_newline: o.final_newline.unwrap_or(self.final_newline),
            naming: o.naming.unwrap_or(self.naming),
            ..self
        }
    }

    pub const ENEDIS: Layout = Layout {
        name: LayoutName::Enedis,
        offset: false,
        final_newline: false,
        naming: Naming::Operation,
    };
    pub const ENEDIS_ISO: Layout = Layout {
        name: LayoutName::EnedisIso,
        offset: true,
        final_newline: true,
        naming: Naming::Producer,
    };
    pub const ALL: [Layout; 2] = [Layout::ENEDIS, Layout::ENEDIS_ISO];

    pub fn of(name: LayoutName) -> Layout {
        match name {
            LayoutName::Enedis => Layout::ENEDIS,
            LayoutName::EnedisIso => Layout::ENEDIS_ISO,
        }
    }

    pub fn label(&self) -> &'static str {
        match self.name {
            LayoutName::Enedis => "enedis",
            LayoutName::EnedisIso => "enedis_iso",
        }
    }

    /// A step start as this layout writes it.
    pub fn stamp(&self, grid: &Grid, t: DateTime<Utc>) -> String {
        if self.offset {
            grid.format_local(t)
        } else {
            t.with_timezone(&grid.tz())
                .format(LOCAL_NO_OFFSET)
                .to_string()
        }
    }
}

const LOCAL_NO_OFFSET: &str = "%d/%m/%Y %H:%M";

/// What a parsed and checked key file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationReport {
    pub consumers: Vec<Prm>,
    pub rows: Vec<KeyRow>,
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
}

fn decimals(precision: Precision) -> Result<u32, DsoError> {
    precision
        .percent_decimals()
        .ok_or(DsoError::Precision(precision.units_per_one))
}

/// `123` units at 1000 per one → `12,3`.
fn format_units(u: u32, decimals: u32) -> String {
    if decimals == 0 {
        return u.to_string();
    }
    let scale = 10u32.pow(decimals);
    format!(
        "{},{:0width$}",
        u / scale,
        u % scale,
        width = decimals as usize
    )
}

/// Checks rows against the grid and the consumers before anything is
/// rendered; `line` in errors is the line the row would occupy.
fn check_rows(
    grid: &Grid,
    consumers: &[Prm],
    rows: &[KeyRow],
    precision: Precision,
) -> Result<(), DsoError> {
    if consumers.is_empty() {
        return Err(DsoError::Empty("no consumer PRM"));
    }
    if rows.is_empty() {
        return Err(DsoError::Empty("no key row"));
    }
    let mut seen = HashSet::new();
    for (k, prm) in consumers.iter().enumerate() {
        if !seen.insert(prm) {
            return Err(DsoError::invalid(
                1,
                k + 2,
                format!("consumer PRM {prm} appears twice"),
            ));
        }
    }
    let mut prev: Option<DateTime<Utc>> = None;
    for (k, row) in rows.iter().enumerate() {
        let line = k + 2;
        if row.units.len() != consumers.len() {
            return Err(DsoError::invalid(
                line,
                1,
                format!("{} keys for {} consumers", row.units.len(), consumers.len()),
            ));
        }
        check_step(grid, prev, row.start, line)?;
        let sum: u64 = row.units.iter().map(|&u| u64::from(u)).sum();
        if sum > u64::from(precision.units_per_one) {
            return Err(DsoError::invalid(
                line,
                1,
                format!(
                    "keys sum to {} units, more than 100 % ({} units)",
                    sum, precision.units_per_one
                ),
            ));
        }
        prev = Some(row.start);
    }
    Ok(())
}

fn check_step(
    grid: &Grid,
    prev: Option<DateTime<Utc>>,
    start: DateTime<Utc>,
    line: usize,
) -> Result<(), DsoError> {
    if grid.period_start(start) != start {
        return Err(DsoError::invalid(
            line,
            1,
            format!(
                "{} is not on the {}-minute grid",
                grid.format_local(start),
                grid.step_minutes()
            ),
        ));
    }
    if let Some(p) = prev {
        let expected = grid.next_period(p);
        if start != expected {
            return Err(DsoError::invalid(
                line,
                1,
                format!(
                    "expected step {} after {}, found {}",
                    grid.format_local(expected),
                    grid.format_local(p),
                    grid.format_local(start)
                ),
            ));
        }
    }
    Ok(())
}

fn csv_error(e: csv::Error) -> DsoError {
    let line = e.position().map_or(1, |p| p.line() as usize);
    DsoError::invalid(line, 1, format!("CSV: {e}"))
}

/// Renders the file text in `layout` (for a simple dynamic key, the same
/// for every producer).
pub fn render_with(
    layout: &Layout,
    grid: &Grid,
    consumers: &[Prm],
    rows: &[KeyRow],
    precision: Precision,
) -> Result<String, DsoError> {
    let d = decimals(precision)?;
    check_rows(grid, consumers, rows, precision)?;
    let width = 26 + consumers.len() * 7;
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .terminator(csv::Terminator::Any(b'\n'))
        .quote_style(csv::QuoteStyle::Never)
        .from_writer(Vec::with_capacity(width * (rows.len() + 1)));
    w.write_record(std::iter::once("Horodate").chain(consumers.iter().map(Prm::as_str)))
        .map_err(csv_error)?;
    let mut record = csv::StringRecord::with_capacity(width, consumers.len() + 1);
    for row in rows {
        record.clear();
        record.push_field(&layout.stamp(grid, row.start));
        for &u in &row.units {
            record.push_field(&format_units(u, d));
        }
        w.write_record(&record).map_err(csv_error)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| DsoError::invalid(1, 1, format!("CSV: {}", e.error())))?;
    let mut out =
        String::from_utf8(bytes).map_err(|e| DsoError::invalid(1, 1, format!("not UTF-8: {e}")))?;
    if !layout.final_newline {
        out.pop();
    }
    Ok(out)
}

/// [`render_with`] in the per-producer layout with offsets.
pub fn render(
    grid: &Grid,
    consumers: &[Prm],
    rows: &[KeyRow],
    precision: Precision,
) -> Result<String, DsoError> {
    render_with(&Layout::ENEDIS_ISO, grid, consumers, rows, precision)
}

/// The first and last local day of `rows`.
fn days(grid: &Grid, rows: &[KeyRow]) -> Result<(NaiveDate, NaiveDate), DsoError> {
    match (rows.first(), rows.last()) {
        (Some(f), Some(l)) => Ok((grid.local_day(f.start), grid.local_day(l.start))),
        _ => Err(DsoError::Empty("no key row")),
    }
}

/// The name of one key file. `producer` is the producer a file is for: every
/// file of the per-producer layout, full dynamic files of the operation
/// layout (`None` for the operation's one simple dynamic file).
pub fn file_name_with(
    layout: &Layout,
    grid: &Grid,
    operation: Option<&str>,
    producer: Option<&Prm>,
    rows: &[KeyRow],
) -> Result<String, DsoError> {
    let (first, last) = days(grid, rows)?;
    match layout.naming {
        Naming::Producer => {
            let producer = producer.ok_or(DsoError::Empty("no producer PRM"))?;
            Ok(format!(
                "{}_{}_{}.csv",
                producer.as_str(),
                first.format("%Y%m%d"),
                last.format("%Y%m%d")
            ))
        }
        Naming::Operation => {
            let op = operation.ok_or(DsoError::Empty(
                "no operation id: set keys.operation_id (ACC + 8 digits) in the site config",
            ))?;
            if !crate::config::valid_operation_id(op) {
                return Err(DsoError::invalid(
                    1,
                    1,
                    format!("operation id `{op}` is not ACC + 8 digits"),
                ));
            }
            let producer = producer.map(|p| format!("_{p}")).unwrap_or_default();
            Ok(format!(
                "{op}{producer}_{}_{}_{}.txt",
                grid.step_minutes(),
                first.format("%d%m%Y"),
                last.format("%d%m%Y")
            ))
        }
    }
}

/// `<producer PRM>_<YYYYMMDD first day>_<YYYYMMDD last day>.csv`, days local.
pub fn file_name(grid: &Grid, producer: &Prm, rows: &[KeyRow]) -> Result<String, DsoError> {
    file_name_with(&Layout::ENEDIS_ISO, grid, None, Some(producer), rows)
}

/// Writes one file per producer into `dir`. The text is validated by parsing
/// it back before any file is written, and each file goes to a temporary name
/// in the same directory, is synced, then renamed, so a reader never sees a
/// half-written key file.
pub fn write_simple_dynamic(
    dir: &Path,
    grid: &Grid,
    producers: &[Prm],
    consumers: &[Prm],
    rows: &[KeyRow],
    precision: Precision,
) -> Result<Vec<PathBuf>, DsoError> {
    if producers.is_empty() {
        return Err(DsoError::Empty("no producer PRM"));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = producers.iter().find(|p| !seen.insert(*p)) {
        return Err(DsoError::DuplicateProducer(dup.clone()));
    }
    let text = render(grid, consumers, rows, precision)?;
    validate(&text, grid, precision)?;
    let files = producers
        .iter()
        .map(|producer| Ok((file_name(grid, producer, rows)?, text.clone())))
        .collect::<Result<Vec<_>, DsoError>>()?;
    write_atomic(dir, &files)
}

/// Writes one file per producer for *full dynamic* keys: producer j's file
/// holds its own row of coefficients per step (a battery's rows are all zero
/// in the steps it charges). Every file is rendered and read back before the
/// first one is written.
pub fn write_full_dynamic(
    dir: &Path,
    grid: &Grid,
    producers: &[(Prm, Vec<KeyRow>)],
    consumers: &[Prm],
    precision: Precision,
) -> Result<Vec<PathBuf>, DsoError> {
    if producers.is_empty() {
        return Err(DsoError::Empty("no producer PRM"));
    }
    let mut seen = HashSet::new();
    if let Some((dup, _)) = producers.iter().find(|(p, _)| !seen.insert(p)) {
        return Err(DsoError::DuplicateProducer(dup.clone()));
    }
    let mut files = Vec::with_capacity(producers.len());
    for (producer, rows) in producers {
        let text = render(grid, consumers, rows, precision)?;
        validate(&text, grid, precision)?;
        files.push((file_name(grid, producer, rows)?, text));
    }
    write_atomic(dir, &files)
}

/// Each file goes to a temporary name in `dir`, is synced, then renamed, so
/// a reader never sees a half-written key file.
pub(crate) fn write_atomic(
    dir: &Path,
    files: &[(String, String)],
) -> Result<Vec<PathBuf>, DsoError> {
    let mut paths = Vec::with_capacity(files.len());
    for (name, text) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DsoError::Io { path, source }
        };
        let written = (|| {
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(text.as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &path).map_err(io(&path))
        })();
        if let Err(e) = written {
            // Best effort: the error that matters is the one returned.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        paths.push(path);
    }
    Ok(paths)
}

/// Parses a value such as `12,3` into units; `None` if it breaks the layout.
fn parse_units(s: &str, decimals: u32) -> Option<u32> {
    let (int, frac) = match s.split_once(',') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || int.len() > 3 {
        return None;
    }
    let int: u32 = int.parse().ok()?;
    let frac_units = match (frac, decimals) {
        (None, 0) => 0,
        (Some(f), d) if d > 0 && f.len() == d as usize && digits(f) => f.parse().ok()?,
        _ => return None,
    };
    Some(int * 10u32.pow(decimals) + frac_units)
}

/// The step start a row's `Horodate` names. Without an offset a wall-clock
/// time of the repeated autumn hour is the step after the previous row, so
/// the order of the rows decides which of the two it is.
fn parse_stamp(
    layout: &Layout,
    grid: &Grid,
    stamp: &str,
    prev: Option<DateTime<Utc>>,
    line: usize,
) -> Result<DateTime<Utc>, DsoError> {
    if layout.offset {
        let start = DateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%:z")
            .map_err(|e| {
                DsoError::invalid(
                    line,
                    1,
                    format!("`{stamp}` is not a local time with offset: {e}"),
                )
            })?
            .with_timezone(&Utc);
        let canonical = grid.format_local(start);
        if canonical != stamp {
            return Err(DsoError::invalid(
                line,
                1,
                format!("`{stamp}` should read `{canonical}` in {}", grid.tz()),
            ));
        }
        return Ok(start);
    }
    let naive = NaiveDateTime::parse_from_str(stamp, LOCAL_NO_OFFSET).map_err(|e| {
        DsoError::invalid(
            line,
            1,
            format!("`{stamp}` is not a local time DD/MM/YYYY HH:MM: {e}"),
        )
    })?;
    if let Some(p) = prev {
        let expected = grid.next_period(p);
        if layout.stamp(grid, expected) == stamp {
            return Ok(expected);
        }
    }
    let start = grid
        .tz()
        .from_local_datetime(&naive)
        .earliest()
        .ok_or_else(|| {
            DsoError::invalid(
                line,
                1,
                format!("`{stamp}` does not exist in {} (DST gap)", grid.tz()),
            )
        })?
        .with_timezone(&Utc);
    if layout.stamp(grid, start) != stamp {
        return Err(DsoError::invalid(
            line,
            1,
            format!("`{stamp}` should read `{}`", layout.stamp(grid, start)),
        ));
    }
    Ok(start)
}

/// Parses a key file of the per-producer layout back and checks it.
pub fn validate(
    text: &str,
    grid: &Grid,
    precision: Precision,
) -> Result<ValidationReport, DsoError> {
    validate_with(&Layout::ENEDIS_ISO, text, grid, precision)
}

/// Parses a key file back and checks it: no BOM, LF only, the layout's final
/// newline (or none), no blank line, header PRMs valid and unique, every row
/// complete, `Horodate` as the layout writes that instant, steps on the grid
/// and contiguous, values >= 0 with exactly the precision's decimals, and
/// each row summing to at most 100 %.
pub fn validate_with(
    layout: &Layout,
    text: &str,
    grid: &Grid,
    precision: Precision,
) -> Result<ValidationReport, DsoError> {
    let d = decimals(precision)?;
    if text.starts_with('\u{feff}') {
        return Err(DsoError::invalid(
            1,
            1,
            "file starts with a byte-order mark",
        ));
    }
    if text.is_empty() {
        return Err(DsoError::invalid(1, 1, "empty file"));
    }
    let line_of = |byte: usize| text[..byte].bytes().filter(|&b| b == b'\n').count() + 1;
    if let Some(k) = text.find('\r') {
        return Err(DsoError::invalid(
            line_of(k),
            1,
            "carriage return (CRLF line ending)",
        ));
    }
    let body = match (layout.final_newline, text.strip_suffix('\n')) {
        (true, Some(b)) => b,
        (true, None) => {
            return Err(DsoError::invalid(
                line_of(text.len()),
                1,
                "last line does not end with LF",
            ))
        }
        (false, Some(_)) => {
            return Err(DsoError::invalid(
                line_of(text.len() - 1),
                1,
                "LF after the last line (this layout has none)",
            ))
        }
        (false, None) => text,
    };
    if body.starts_with('\n') {
        return Err(DsoError::invalid(1, 1, "blank line"));
    }
    if let Some(k) = body.find("\n\n") {
        return Err(DsoError::invalid(line_of(k) + 1, 1, "blank line"));
    }
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .flexible(true)
        .quoting(false)
        .from_reader(body.as_bytes());
    let mut records = reader.records();
    let header = match records.next() {
        Some(r) => r.map_err(csv_error)?,
        None => return Err(DsoError::invalid(1, 1, "empty file")),
    };
    let mut fields = header.iter();
    if fields.next() != Some("Horodate") {
        return Err(DsoError::invalid(
            1,
            1,
            "first header field must be `Horodate`",
        ));
    }
    let mut consumers = Vec::new();
    let mut seen = HashSet::new();
    for (k, f) in fields.enumerate() {
        let col = k + 2;
        let prm: Prm = f
            .parse()
            .map_err(|e| DsoError::invalid(1, col, format!("{e}")))?;
        if !seen.insert(prm.clone()) {
            return Err(DsoError::invalid(
                1,
                col,
                format!("consumer PRM {prm} appears twice"),
            ));
        }
        consumers.push(prm);
    }
    if consumers.is_empty() {
        return Err(DsoError::invalid(1, 2, "no consumer PRM in the header"));
    }

    let mut rows: Vec<KeyRow> = Vec::new();
    for record in records {
        let record = record.map_err(csv_error)?;
        let line = record
            .position()
            .map_or(rows.len() + 2, |p| p.line() as usize);
        if record.len() != consumers.len() + 1 {
            return Err(DsoError::invalid(
                line,
                record.len().min(consumers.len() + 1),
                format!(
                    "{} fields where the header has {}",
                    record.len(),
                    consumers.len() + 1
                ),
            ));
        }
        let prev = rows.last().map(|r| r.start);
        let start = parse_stamp(layout, grid, &record[0], prev, line)?;
        check_step(grid, prev, start, line)?;
        let mut units = Vec::with_capacity(consumers.len());
        for (k, v) in record.iter().skip(1).enumerate() {
            let col = k + 2;
            let u = parse_units(v, d).ok_or_else(|| {
                DsoError::invalid(
                    line,
                    col,
                    format!(
                        "`{v}` is not a percentage >= 0 with {d} decimal(s) and a decimal comma"
                    ),
                )
            })?;
            units.push(u);
        }
        let sum: u64 = units.iter().map(|&u| u64::from(u)).sum();
        if sum > u64::from(precision.units_per_one) {
            return Err(DsoError::invalid(
                line,
                1,
                format!(
                    "keys sum to {} %, more than 100 %",
                    format_units(sum.min(u64::from(u32::MAX)) as u32, d)
                ),
            ));
        }
        rows.push(KeyRow { start, units });
    }
    let (first_day, last_day) =
        days(grid, &rows).map_err(|_| DsoError::invalid(2, 1, "no key row"))?;
    Ok(ValidationReport {
        consumers,
        rows,
        first_day,
        last_day,
    })
}

/// A key file in any of `candidates` (the site's layout first, then the
/// known ones): the first layout whose stamps match the first row's
/// (`T` and an offset, or `DD/MM/YYYY`) and whose final newline matches the
/// file's, the precision from the first key's decimals; then every rule of
/// that layout. For `ped keys --validate`.
pub fn validate_any(
    text: &str,
    grid: &Grid,
    candidates: &[Layout],
) -> Result<(Layout, Precision, ValidationReport), DsoError> {
    let first_row = text.split('\n').nth(1).unwrap_or("");
    let mut f = first_row.split(';');
    let offset = f.next().unwrap_or("").contains('T');
    let final_newline = text.ends_with('\n');
    let units_per_one = match f.next().and_then(|v| v.split_once(',')) {
        None => 100,
        Some((_, frac)) if frac.len() == 1 => 1000,
        Some(_) => 10_000,
    };
    let precision = Precision { units_per_one };
    let by_stamp = candidates.iter().filter(|l| l.offset == offset);
    let layout = by_stamp
        .clone()
        .find(|l| l.final_newline == final_newline)
        .or_else(|| by_stamp.clone().next())
        .copied()
        .unwrap_or(if offset {
            Layout::ENEDIS_ISO
        } else {
            Layout::ENEDIS
        });
    let report = validate_with(&layout, text, grid, precision)?;
    Ok((layout, precision, report))
}

#[cfg(test)]
#[path = "enedis_tests.rs"]
mod tests;
