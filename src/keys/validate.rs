//! `ped keys --validate`: a file read back and checked against every rule
//! of its format, the format decided by content (an Enedis layout, the
//! Spanish hourly file), not by name; the files `ped keys` writes beside
//! the keys (the allocation, the manifest) are recognised and skipped.

use std::path::Path;

use super::job::{io, KeysError};
use crate::allocation::Precision;
use crate::dso::enedis::{self, Layout};
use crate::dso::{spain, DsoError};
use crate::time::Grid;

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
