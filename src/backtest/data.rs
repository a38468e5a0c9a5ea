//! Reading a district data set in the layout of `district-2025` (see its
//! README): wide CSV time series keyed by `utc`, and the participant and
//! plant tables. A malformed line (wrong field count, bad time stamp) is an
//! error naming the file and the line; in the energy series an empty or
//! non-numeric cell is read as a missing value and listed, for the caller
//! to estimate as `ped keys` does.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::BacktestError;
use crate::forecast::PvPlane;

/// A wide time series file: one row per step, one column per series.
#[derive(Debug, Clone)]
pub struct Wide {
    pub file: PathBuf,
    pub utc: Vec<DateTime<Utc>>,
    pub columns: Vec<String>,
    /// [column][row]; NaN where the cell is empty or not a number (only
    /// when read with `missing_allowed`).
    pub values: Vec<Vec<f64>>,
    /// 1-based line of each row, for messages.
    pub lines: Vec<usize>,
    /// Cells that held text that is not a number: (column, row, text).
    pub not_numbers: Vec<(usize, usize, String)>,
}

impl Wide {
    pub fn column(&self, name: &str) -> Result<&[f64], BacktestError> {
        self.columns
            .iter()
            .position(|c| c == name)
            .map(|i| self.values[i].as_slice())
            .ok_or_else(|| BacktestError::Missing {
                file: self.file.clone(),
                what: format!("column `{name}`"),
            })
    }
}

fn read_text(path: &Path) -> Result<String, BacktestError> {
    std::fs::read_to_string(path).map_err(|source| BacktestError::Io {
        file: path.to_path_buf(),
        source,
    })
}

fn bad(file: &Path, line: usize, message: impl Into<String>) -> BacktestError {
    BacktestError::Data {
        file: file.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// A data row: its 1-based line number and its fields.
type Row = (usize, Vec<String>);

/// Header and rows of a plain CSV (no quoting: the data set has none), each
/// row with its 1-based line number; rows with the wrong field count are errors.
fn rows(path: &Path, text: &str) -> Result<(Vec<String>, Vec<Row>), BacktestError> {
    let mut lines = text.lines().enumerate();
    let header: Vec<String> = match lines.next() {
        Some((_, h)) => h
            .trim_end_matches('\r')
            .split(',')
            .map(str::to_string)
            .collect(),
        None => return Err(bad(path, 1, "empty file, expected a header line")),
    };
    let mut out = Vec::new();
    for (i, l) in lines {
        let l = l.trim_end_matches('\r');
        if l.is_empty() {
            continue;
        }
        let f: Vec<String> = l.split(',').map(str::to_string).collect();
        if f.len() != header.len() {
            return Err(bad(
                path,
                i + 1,
                format!("{} fields, the header has {}", f.len(), header.len()),
            ));
        }
        out.push((i + 1, f));
    }
    Ok((header, out))
}

fn number(path: &Path, line: usize, col: &str, s: &str) -> Result<f64, BacktestError> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(bad(
            path,
            line,
            format!("`{col}` = `{s}` is not a finite number"),
        )),
    }
}

/// Reads a wide series file whose first two columns are `utc` and `local`;
/// every other column numeric, the rows in increasing UTC order. With
/// `missing_allowed`, an empty or non-numeric cell becomes NaN (and the
/// latter is listed in [`Wide::not_numbers`]) instead of an error.
pub fn read_wide(path: &Path, missing_allowed: bool) -> Result<Wide, BacktestError> {
    let text = read_text(path)?;
    let (header, body) = rows(path, &text)?;
    if header.len() < 3 || header[0] != "utc" || header[1] != "local" {
        return Err(bad(
            path,
            1,
            "header must start with `utc,local,` and name at least one series",
        ));
    }
    let columns: Vec<String> = header[2..].to_vec();
    let mut values = vec![Vec::with_capacity(body.len()); columns.len()];
    let mut utc = Vec::with_capacity(body.len());
    let mut lines = Vec::with_capacity(body.len());
    let mut not_numbers = Vec::new();
    for (line, f) in &body {
        let t = DateTime::parse_from_rfc3339(&f[0])
            .map_err(|e| bad(path, *line, format!("`utc` = `{}`: {e}", f[0])))?
            .with_timezone(&Utc);
        if utc.last().is_some_and(|p| *p >= t) {
            return Err(bad(
                path,
                *line,
                format!("`utc` = `{}` is not after the previous row", f[0]),
            ));
        }
        utc.push(t);
        let row = lines.len();
        lines.push(*line);
        for (j, col) in columns.iter().enumerate() {
            let cell = &f[j + 2];
            let v = match number(path, *line, col, cell) {
                Ok(v) => v,
                Err(_) if missing_allowed && cell.trim().is_empty() => f64::NAN,
                Err(_) if missing_allowed => {
                    not_numbers.push((j, row, cell.clone()));
                    f64::NAN
                }
                Err(e) => return Err(e),
            };
            values[j].push(v);
        }
    }
    if utc.is_empty() {
        return Err(bad(path, 2, "no data row"));
    }
    Ok(Wide {
        file: path.to_path_buf(),
        utc,
        columns,
        values,
        lines,
        not_numbers,
    })
}

/// One row of `participants.csv`.
#[derive(Debug, Clone)]
pub struct ParticipantRow {
    pub id: String,
    pub kind: String,
    pub prm: String,
    pub subscription_share: f64,
}

fn field<'a>(
    path: &Path,
    header: &[String],
    row: &'a [String],
    line: usize,
    name: &str,
) -> Result<&'a str, BacktestError> {
    header
        .iter()
        .position(|h| h == name)
        .map(|i| row[i].as_str())
        .ok_or_else(|| bad(path, line, format!("missing column `{name}`")))
}

pub fn read_participants(path: &Path) -> Result<Vec<ParticipantRow>, BacktestError> {
    let text = read_text(path)?;
    let (header, body) = rows(path, &text)?;
    body.iter()
        .map(|(line, r)| {
            let share = field(path, &header, r, *line, "subscription_share")?;
            Ok(ParticipantRow {
                id: field(path, &header, r, *line, "id")?.to_string(),
                kind: field(path, &header, r, *line, "kind")?.to_string(),
                prm: field(path, &header, r, *line, "prm")?.to_string(),
                subscription_share: number(path, *line, "subscription_share", share)?,
            })
        })
        .collect()
}

/// One row of `plants.csv`, its planes resolved (an east-west plant lists
/// both halves as `10/10`, `90/270`: half the peak power on each).
#[derive(Debug, Clone)]
pub struct PlantRow {
    pub id: String,
    pub kwp: f64,
    pub planes: Vec<PvPlane>,
}

pub fn read_plants(path: &Path) -> Result<Vec<PlantRow>, BacktestError> {
    let text = read_text(path)?;
    let (header, body) = rows(path, &text)?;
    body.iter()
        .map(|(line, r)| {
            let line = *line;
            let kwp = number(path, line, "kwp", field(path, &header, r, line, "kwp")?)?;
            let list = |name: &str| -> Result<Vec<f64>, BacktestError> {
                field(path, &header, r, line, name)?
                    .split('/')
                    .map(|s| number(path, line, name, s))
                    .collect()
            };
            let tilts = list("tilt_deg")?;
            let azimuths = list("azimuth_deg")?;
            if tilts.len() != azimuths.len() {
                return Err(bad(
                    path,
                    line,
                    format!("{} tilts for {} azimuths", tilts.len(), azimuths.len()),
                ));
            }
            let n = tilts.len() as f64;
            Ok(PlantRow {
                id: field(path, &header, r, line, "id")?.to_string(),
                kwp,
                planes: tilts
                    .iter()
                    .zip(&azimuths)
                    .map(|(&t, &a)| PvPlane {
                        kwp: kwp / n,
                        tilt_deg: t,
                        azimuth_deg: a,
                    })
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "production.csv",
            "utc,local,PV-01\n2025-01-01T00:00:00Z,x,1\n2025-01-01T00:30:00Z,x,abc\n",
        );
        let e = read_wide(&p, false).unwrap_err().to_string();
        assert!(
            e.contains("production.csv") && e.contains("line 3") && e.contains("abc"),
            "{e}"
        );
        let p = write(d.path(), "c.csv", "utc,local,A\n2025-01-01T00:00:00Z,x\n");
        let e = read_wide(&p, false).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("2 fields"), "{e}");
        let p = write(
            d.path(),
            "o.csv",
            "utc,local,A\n2025-01-01T00:30:00Z,x,1\n2025-01-01T00:00:00Z,x,1\n",
        );
        assert!(read_wide(&p, false)
            .unwrap_err()
            .to_string()
            .contains("not after"));
    }

    #[test]
    fn empty_and_non_numeric_cells_are_missing_when_allowed() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "consumption.csv",
            "utc,local,A,B\n2025-01-01T00:00:00Z,x,1,\n2025-01-01T00:30:00Z,x,abc,2\n",
        );
        assert!(read_wide(&p, false).is_err());
        let w = read_wide(&p, true).unwrap();
        assert!(w.values[1][0].is_nan() && w.values[0][1].is_nan());
        assert_eq!((w.values[0][0], w.values[1][1]), (1.0, 2.0));
        assert_eq!(w.not_numbers, vec![(0, 1, "abc".to_string())]);
        assert_eq!(w.lines, vec![2, 3]);
    }

    #[test]
    fn east_west_plants_have_two_halves() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "plants.csv",
            "id,kwp,tilt_deg,azimuth_deg\nPV-01,420,10/10,90/270\nPV-02,250,15,180\n",
        );
        let v = read_plants(&p).unwrap();
        assert_eq!(v[0].planes.len(), 2);
        assert_eq!(v[0].planes[1].azimuth_deg, 270.0);
        assert_eq!(v[0].planes[0].kwp, 210.0);
        assert_eq!(v[1].planes.len(), 1);
    }
}
