//! Enedis load-curve exports ("historique de mesures", DOMAIN.md §1) read
//! into energy per settlement period.
//!
//! One file per PRM and measured quantity: UTF-8 (a BOM is tolerated), `;`,
//! a two-line header `Identifiant PRM;…;Grandeur metier;…;Unite;Pas en minutes`
//! and its values, an optional blank line, then `Horodate;Valeur` and one row
//! per point. A value is the **average power in W** over the interval that
//! **ends** at the stamp (local time with offset); an empty value is a missing
//! point. The step can change inside a file, so each point's interval runs
//! from the previous stamp; the first point uses `Pas en minutes` when given,
//! else the distance to the next stamp.
//!
//! Parsing collects the bad lines (file, line, reason) before failing, so a
//! broken export is fixed in one round trip and nothing is computed from it;
//! the first [`SHOWN_LINES`] are kept in full, the rest only counted.
//!
//! A value that cannot be a reading (negative, above the ceiling of
//! [`Plausibility`], not a number) is not a broken file: it is a **suspect**
//! point, kept as missing and listed with its file and line, so one meter
//! reset does not block an operation's month.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::ids::Prm;
use crate::time::Grid;

/// Steps seen in Enedis exports; anything else between two stamps is a gap.
const STEPS_MINUTES: [i64; 6] = [5, 10, 15, 30, 60, 1440];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quantity {
    Consumption,
    Production,
}

impl Quantity {
    pub fn as_str(self) -> &'static str {
        match self {
            Quantity::Consumption => "consumption",
            Quantity::Production => "production",
        }
    }
}

/// One measured point: average power over `(end - minutes, end]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub end: DateTime<Utc>,
    pub minutes: i64,
    /// `None`: the export has the stamp but no value.
    pub watts: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadCurve {
    pub file: PathBuf,
    pub prm: Prm,
    pub quantity: Quantity,
    pub points: Vec<Point>,
    /// Values that cannot be readings, kept as missing points.
    pub suspects: LineLog,
}

/// What a reading can be: average power from 0 to `max_watts`, or to the
/// meter's own ceiling where its subscribed power is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Plausibility {
    pub max_watts: f64,
    /// Per PRM: a meter cannot average more than its subscribed power over
    /// a step for long; twice that is far beyond any reading.
    pub per_prm: BTreeMap<Prm, f64>,
}

impl Default for Plausibility {
    fn default() -> Self {
        Plausibility {
            max_watts: 10_000_000.0,
            per_prm: BTreeMap::new(),
        }
    }
}

impl Plausibility {
    /// The site's limits: `keys.max_load_curve_kw` for every meter, and twice
    /// its subscribed power for a participant that gives one. `ped keys` and
    /// the backtest's data checks read load curves with the same limits.
    pub fn for_site(cfg: &crate::config::SiteConfig) -> Plausibility {
        Plausibility {
            max_watts: cfg.keys.max_load_curve_kw * 1000.0,
            per_prm: cfg
                .participants
                .iter()
                .filter_map(|p| Some((p.prm.clone(), p.subscribed_kva? * 2000.0)))
                .collect(),
        }
    }

    /// The ceiling for `prm`, and where it comes from.
    pub fn ceiling(&self, prm: Option<&Prm>) -> (f64, &'static str) {
        match prm.and_then(|p| self.per_prm.get(p)) {
            Some(&w) => (w, "twice the participant's subscribed_kva"),
            None => (self.max_watts, "keys.max_load_curve_kw"),
        }
    }
}

/// How many bad or suspect lines are kept in full; the rest are counted.
pub const SHOWN_LINES: usize = 20;

/// Lines with a problem: the first [`SHOWN_LINES`] in full and a count of
/// all, so millions of bad lines cost a counter, not memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineLog {
    pub shown: Vec<BadLine>,
    pub total: usize,
}

impl LineLog {
    pub fn push(&mut self, line: BadLine) {
        self.total += 1;
        if self.shown.len() < SHOWN_LINES {
            self.shown.push(line);
        }
    }
    pub fn append(&mut self, other: LineLog) {
        let hidden = other.total - other.shown.len();
        for l in other.shown {
            self.push(l);
        }
        self.total += hidden;
    }
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl fmt::Display for LineLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, l) in self.shown.iter().enumerate() {
            if k > 0 {
                writeln!(f)?;
            }
            write!(f, "  {l}")?;
        }
        let more = self.total - self.shown.len();
        if more > 0 {
            write!(f, "\n  … and {more} more line(s)")?;
        }
        Ok(())
    }
}

/// A field quoted in a message, cut so a huge field cannot flood the log.
fn quoted(v: &str) -> String {
    const MAX: usize = 32;
    match v.char_indices().nth(MAX) {
        Some((k, _)) => format!("`{}…` ({} bytes)", &v[..k], v.len()),
        None => format!("`{v}`"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadCurveError {
    #[error("{} bad line(s) in the load curves:\n{}", .0.total, .0)]
    BadLines(LineLog),
    #[error("{} suspect value(s) in the load curves, refused with --strict:\n{}", .0.total, .0)]
    Suspect(LineLog),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no load-curve file (*.csv)")]
    NoFile(PathBuf),
    #[error("two {quantity} curves for PRM {prm}: {first} and {second}")]
    Duplicate {
        prm: Prm,
        quantity: &'static str,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Parses one export. `grid` gives the time zone the offsets must match.
pub fn parse(text: &str, file: &Path, grid: &Grid) -> Result<LoadCurve, LineLog> {
    parse_with(text, file, grid, &Plausibility::default())
}

/// Parses one export; values outside `plausible` become suspect points.
pub fn parse_with(
    text: &str,
    file: &Path,
    grid: &Grid,
    plausible: &Plausibility,
) -> Result<LoadCurve, LineLog> {
    let mut bad = LineLog::default();
    let mut suspects = LineLog::default();
    macro_rules! push {
        ($line:expr, $reason:expr $(,)?) => {
            bad.push(BadLine {
                file: file.to_path_buf(),
                line: $line,
                reason: $reason,
            })
        };
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Records are read one at a time (blank lines skipped, LF or CRLF), so a
    // file of millions of bad lines costs the counter, not their text.
    let mut records = csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .flexible(true)
        .quoting(false)
        .from_reader(text.as_bytes())
        .into_records()
        .map(|r| {
            r.map(|rec| (rec.position().map_or(1, |p| p.line() as usize), rec))
                .map_err(|e| {
                    let line = e.position().map_or(1, |p| p.line() as usize);
                    (line, e.to_string())
                })
        });
    let mut take = |bad: &mut LineLog| loop {
        match records.next() {
            Some(Ok(r)) => return Some(r),
            Some(Err((line, e))) => bad.push(BadLine {
                file: file.to_path_buf(),
                line,
                reason: format!("CSV: {e}"),
            }),
            None => return None,
        }
    };
    let empty = csv::StringRecord::new();
    let head = take(&mut bad);
    let header: Vec<&str> = head.as_ref().map_or(&empty, |(_, r)| r).iter().collect();
    let meta = take(&mut bad);
    let values: Vec<&str> = meta.as_ref().map_or(&empty, |(_, r)| r).iter().collect();
    let col = |name: &str| header.iter().position(|h| h.trim() == name);
    let field = |name: &str| col(name).and_then(|k| values.get(k)).map(|v| v.trim());
    for name in ["Identifiant PRM", "Grandeur metier", "Unite"] {
        if col(name).is_none() {
            push!(1, format!("header has no `{name}` column"));
        }
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    let prm = match field("Identifiant PRM").map(str::parse::<Prm>) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            push!(2, format!("Identifiant PRM: {e}"));
            None
        }
        None => {
            push!(2, "no Identifiant PRM value".into());
            None
        }
    };
    let quantity = match field("Grandeur metier") {
        Some("Consommation") => Some(Quantity::Consumption),
        Some("Production") => Some(Quantity::Production),
        other => {
            push!(
                2,
                format!(
                    "Grandeur metier `{}`: expected Consommation or Production",
                    other.unwrap_or("")
                ),
            );
            None
        }
    };
    match field("Unite") {
        Some("W") => {}
        other => push!(
            2,
            format!(
                "Unite `{}`: only average power in W is supported",
                other.unwrap_or("")
            ),
        ),
    }
    let declared_step = match field("Pas en minutes") {
        None | Some("") => None,
        Some(s) => match s.parse::<i64>() {
            Ok(m) if STEPS_MINUTES.contains(&m) => Some(m),
            _ => {
                push!(2, format!("Pas en minutes `{s}` is not a known step"));
                None
            }
        },
    };
    // The data header follows the metadata, after an optional blank line.
    let data_header = take(&mut bad);
    let after_meta = meta.as_ref().map_or(2, |(l, _)| l + 1);
    match &data_header {
        Some((_, h)) if h.iter().take(2).eq(["Horodate", "Valeur"]) => {}
        Some((line, h)) => push!(
            *line,
            format!(
                "expected `Horodate;Valeur`, found {}",
                quoted(&h.iter().collect::<Vec<_>>().join(";"))
            )
        ),
        None => push!(after_meta, "no `Horodate;Valeur` header".into()),
    }
    let first_data_line = data_header.as_ref().map_or(after_meta, |(l, _)| l + 1);
    let mut raw: Vec<(usize, DateTime<Utc>, Option<f64>)> = Vec::new();
    while let Some((line, rec)) = take(&mut bad) {
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let stamp = rec.get(0).unwrap_or("").trim();
        let value = rec.get(1).map(str::trim);
        let end = match DateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%:z") {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => {
                push!(
                    line,
                    format!(
                        "Horodate {} is not a local time with offset: {e}",
                        quoted(stamp)
                    ),
                );
                continue;
            }
        };
        let canonical = grid.format_local(end);
        if canonical != stamp {
            push!(
                line,
                format!(
                    "Horodate `{stamp}` has an offset {} does not have then (expected `{canonical}`)",
                    grid.tz()
                ),
            );
            continue;
        }
        let watts = match value {
            None => {
                push!(line, "no Valeur field".into());
                continue;
            }
            Some("") => None,
            Some(v) => {
                let (ceiling, source) = plausible.ceiling(prm.as_ref());
                let why = match v.replace(',', ".").parse::<f64>() {
                    Ok(w) if w.is_finite() && (0.0..=ceiling).contains(&w) => None,
                    Ok(w) if w < 0.0 => Some("negative power (a meter reset?)".to_string()),
                    Ok(_) => Some(format!(
                        "above {} kW, the ceiling of a reading ({source})",
                        ceiling / 1000.0
                    )),
                    Err(_) => Some("not a number".to_string()),
                };
                match why {
                    None => v.replace(',', ".").parse::<f64>().ok(),
                    Some(why) => {
                        suspects.push(BadLine {
                            file: file.to_path_buf(),
                            line,
                            reason: format!("Valeur {} W: {why}; treated as missing", quoted(v)),
                        });
                        None
                    }
                }
            }
        };
        if let Some(&(prev_line, prev, _)) = raw.last() {
            if end <= prev {
                push!(
                    line,
                    format!(
                        "Horodate `{stamp}` does not come after line {prev_line} ({})",
                        grid.format_local(prev)
                    ),
                );
                continue;
            }
        }
        raw.push((line, end, watts));
    }
    if raw.is_empty() && bad.is_empty() {
        push!(first_data_line, "no measured point".into());
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    let mut points = Vec::with_capacity(raw.len());
    for (n, &(_, end, watts)) in raw.iter().enumerate() {
        let minutes = if n > 0 {
            let gap = (end - raw[n - 1].1).num_minutes();
            if STEPS_MINUTES.contains(&gap) {
                gap
            } else {
                // A jump that is no step is a gap: the point keeps the last
                // step and the time in between stays unmeasured.
                points.last().map_or(gap, |p: &Point| p.minutes.min(gap))
            }
        } else {
            match declared_step {
                Some(m) => m,
                None => raw
                    .get(1)
                    .map(|next| (next.1 - end).num_minutes())
                    .filter(|m| STEPS_MINUTES.contains(m))
                    .unwrap_or(grid.step_minutes().into()),
            }
        };
        points.push(Point {
            end,
            minutes,
            watts,
        });
    }
    match (prm, quantity) {
        (Some(prm), Some(quantity)) => Ok(LoadCurve {
            file: file.to_path_buf(),
            prm,
            quantity,
            points,
            suspects,
        }),
        _ => Err(bad),
    }
}

/// Reads every `*.csv` in `dir` (sorted by name); all bad lines of all files
/// are reported together.
pub fn read_dir(dir: &Path, grid: &Grid) -> Result<Vec<LoadCurve>, LoadCurveError> {
    read_dir_with(dir, grid, &Plausibility::default())
}

/// [`read_dir`] with values outside `plausible` kept as suspect points.
pub fn read_dir_with(
    dir: &Path,
    grid: &Grid,
    plausible: &Plausibility,
) -> Result<Vec<LoadCurve>, LoadCurveError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadCurveError::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadCurveError::NoFile(dir.to_path_buf()));
    }
    let mut curves: Vec<LoadCurve> = Vec::new();
    let mut bad = LineLog::default();
    for f in &files {
        let bytes = std::fs::read(f).map_err(io(f))?;
        let Ok(text) = String::from_utf8(bytes) else {
            bad.push(BadLine {
                file: f.clone(),
                line: 1,
                reason: "not UTF-8".into(),
            });
            continue;
        };
        match parse_with(&text, f, grid, plausible) {
            Ok(c) => {
                if let Some(first) = curves
                    .iter()
                    .find(|o| o.prm == c.prm && o.quantity == c.quantity)
                {
                    return Err(LoadCurveError::Duplicate {
                        prm: c.prm.clone(),
                        quantity: c.quantity.as_str(),
                        first: first.file.clone(),
                        second: c.file.clone(),
                    });
                }
                curves.push(c);
            }
            Err(b) => bad.append(b),
        }
    }
    if bad.is_empty() {
        Ok(curves)
    } else {
        Err(LoadCurveError::BadLines(bad))
    }
}

/// Energy of one curve per settlement period.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub kwh: Vec<f64>,
    /// Why a period's energy is not fully measured (missing points, gaps,
    /// outside the export); `None` when it is.
    pub problem: Vec<Option<String>>,
    /// Periods measured with points longer than the settlement step, whose
    /// energy is spread evenly over the point's interval.
    pub coarse: Vec<bool>,
}

/// Energy per period for `periods` (consecutive starts on `grid`). A point's
/// energy goes to the periods its interval overlaps, in proportion to the
/// overlap, so 5- and 10-minute points add up and hourly points spread.
pub fn settle(curve: &LoadCurve, grid: &Grid, periods: &[DateTime<Utc>]) -> Settled {
    let n = periods.len();
    let mut kwh = vec![0.0; n];
    let mut covered = vec![0i64; n];
    let mut missing = vec![false; n];
    let mut coarse = vec![false; n];
    let index: BTreeMap<DateTime<Utc>, usize> =
        periods.iter().enumerate().map(|(k, &t)| (t, k)).collect();
    let step_s = grid.step().num_seconds();
    for p in &curve.points {
        let start = p.end - chrono::Duration::minutes(p.minutes);
        let mut t = grid.period_start(start);
        while t < p.end {
            let next = grid.next_period(t);
            if let Some(&k) = index.get(&t) {
                let lo = start.max(t);
                let hi = p.end.min(next);
                let secs = (hi - lo).num_seconds();
                if secs > 0 {
                    covered[k] += secs;
                    match p.watts {
                        Some(w) => kwh[k] += w * secs as f64 / 3_600_000.0,
                        None => missing[k] = true,
                    }
                    if p.minutes * 60 > step_s {
                        coarse[k] = true;
                    }
                }
            }
            t = next;
        }
    }
    let problem = (0..n)
        .map(|k| {
            if missing[k] {
                Some(format!("{}: missing point(s)", curve.prm))
            } else if covered[k] < step_s {
                Some(format!(
                    "{}: {} of {} s measured",
                    curve.prm, covered[k], step_s
                ))
            } else if covered[k] > step_s {
                Some(format!("{}: overlapping points", curve.prm))
            } else {
                None
            }
        })
        .collect();
    Settled {
        kwh,
        problem,
        coarse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn grid() -> Grid {
        Grid::new(15, chrono_tz::Europe::Paris).unwrap()
    }
    const HEAD: &str = "\u{feff}Identifiant PRM;Type de donnees;Date de debut;Date de fin;Grandeur physique;Grandeur metier;Etape metier;Unite;Pas en minutes\n\
        12345678900000;Courbe de charge;26/10/2025;27/10/2025;Energie active;Consommation;Comptage Brut;W;\n\
        \n\
        Horodate;Valeur\n";

    fn day(g: &Grid, d: &str) -> Vec<DateTime<Utc>> {
        g.periods_of_local_day(NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap())
            .unwrap()
    }

    #[test]
    fn mixed_steps_aggregate_to_the_settlement_step() {
        let g = grid();
        // 00:00-00:15 as 3 × 5 min at 1200 W (0.3 kWh); 00:15-00:30 as one
        // 15-min point at 400 W (0.1 kWh); 00:30-01:30 as an hourly point at
        // 800 W (0.2 kWh per quarter, coarse); 01:30-01:45 missing.
        let body = "2025-10-26T00:05:00+02:00;1200\n\
                    2025-10-26T00:10:00+02:00;1200\n\
                    2025-10-26T00:15:00+02:00;1200\n\
                    2025-10-26T00:30:00+02:00;400\n\
                    2025-10-26T01:30:00+02:00;800\n\
                    2025-10-26T01:45:00+02:00;\n";
        let c = parse(&format!("{HEAD}{body}"), Path::new("c.csv"), &g).unwrap();
        assert_eq!(c.quantity, Quantity::Consumption);
        assert_eq!(
            c.points.iter().map(|p| p.minutes).collect::<Vec<_>>(),
            [5, 5, 5, 15, 60, 15]
        );
        let periods = day(&g, "2025-10-26");
        assert_eq!(periods.len(), 100);
        let s = settle(&c, &g, &periods);
        assert!((s.kwh[0] - 0.3).abs() < 1e-12);
        assert!((s.kwh[1] - 0.1).abs() < 1e-12);
        for k in 2..6 {
            assert!((s.kwh[k] - 0.2).abs() < 1e-12);
            assert!(s.coarse[k] && s.problem[k].is_none());
        }
        assert!(s.problem[0].is_none() && s.problem[1].is_none());
        assert!(s.problem[6].as_deref().unwrap().contains("missing"));
        assert!(s.problem[7].as_deref().unwrap().contains("0 of 900 s"));
    }

    #[test]
    fn autumn_repeated_hour_is_two_distinct_periods() {
        let g = grid();
        let body = "2025-10-26T02:15:00+02:00;400\n\
                    2025-10-26T02:30:00+02:00;400\n\
                    2025-10-26T02:45:00+02:00;400\n\
                    2025-10-26T02:00:00+01:00;400\n\
                    2025-10-26T02:15:00+01:00;800\n";
        let c = parse(&format!("{HEAD}{body}"), Path::new("c.csv"), &g).unwrap();
        assert!(c.points.iter().all(|p| p.minutes == 15));
        let periods = day(&g, "2025-10-26");
        let s = settle(&c, &g, &periods);
        // Local 02:00+01:00 is period index 12 (00:00..02:00+02 = 8, repeated hour 4 more).
        assert!((s.kwh[12] - 0.2).abs() < 1e-12);
        assert!((s.kwh[11] - 0.1).abs() < 1e-12);
    }

    #[test]
    fn every_bad_line_is_reported() {
        let g = grid();
        let body = "2025-10-26T00:15:00+02:00;100\n\
                    2025-10-26T00:30:00+01:00;100\n\
                    2025-10-26T00:45:00+02:00;100\n\
                    yesterday;100\n\
                    2025-10-26T00:15:00+02:00;100\n\
                    2025-10-26T01:00:00+02:00\n";
        let bad = parse(&format!("{HEAD}{body}"), Path::new("x.csv"), &g).unwrap_err();
        let lines: Vec<usize> = bad.shown.iter().map(|b| b.line).collect();
        assert_eq!(lines, [6, 8, 9, 10], "{bad:?}");
        assert_eq!(bad.total, 4);
        assert!(bad.shown[0].reason.contains("offset"));
        assert!(bad.shown[2].reason.contains("does not come after"));
        assert!(bad.shown[3].reason.contains("no Valeur"));
        assert!(bad.shown[0].to_string().starts_with("x.csv:6: "));
        let bad = parse(
            &HEAD
                .replace("Consommation", "Injection")
                .replace(";W;", ";kW;"),
            Path::new("y.csv"),
            &g,
        )
        .unwrap_err();
        assert_eq!(bad.total, 2);
        assert!(bad.shown.iter().all(|b| b.line == 2));
    }

    #[test]
    fn impossible_values_are_suspect_points_with_file_and_line() {
        let g = grid();
        // A meter reset (large negative), an absurd magnitude, a value above
        // the ceiling, text: each kept as a missing point, the file parses.
        let body = "2025-10-26T00:15:00+02:00;100\n\
                    2025-10-26T00:30:00+02:00;-5939308\n\
                    2025-10-26T00:45:00+02:00;1e300\n\
                    2025-10-26T01:00:00+02:00;250001\n\
                    2025-10-26T01:15:00+02:00;n/a\n\
                    2025-10-26T01:30:00+02:00;250000\n";
        let limit = Plausibility {
            max_watts: 250_000.0,
            ..Default::default()
        };
        let c = parse_with(&format!("{HEAD}{body}"), Path::new("r.csv"), &g, &limit).unwrap();
        let watts: Vec<Option<f64>> = c.points.iter().map(|p| p.watts).collect();
        assert_eq!(
            watts,
            [Some(100.0), None, None, None, None, Some(250_000.0)]
        );
        let lines: Vec<usize> = c.suspects.shown.iter().map(|b| b.line).collect();
        assert_eq!(lines, [6, 7, 8, 9]);
        assert_eq!(c.suspects.total, 4);
        assert!(c.suspects.shown[0].reason.contains("negative"));
        assert!(c.suspects.shown[1].reason.contains("above 250 kW"));
        assert!(c.suspects.shown[3].reason.contains("not a number"));
        assert!(c.suspects.shown[1].to_string().starts_with("r.csv:7: "));
        let s = settle(&c, &g, &day(&g, "2025-10-26"));
        assert!(s.problem[1].is_some() && s.problem[0].is_none());
        // The meter's own ceiling (twice 9 kVA) where it is known.
        let meter = Plausibility {
            per_prm: [("12345678900000".parse().unwrap(), 18_000.0)].into(),
            ..limit
        };
        let body = "2025-10-26T00:15:00+02:00;18000\n2025-10-26T00:30:00+02:00;18001\n";
        let c = parse_with(&format!("{HEAD}{body}"), Path::new("m.csv"), &g, &meter).unwrap();
        assert_eq!(c.points[1].watts, None);
        assert!(
            c.suspects.shown[0].reason.contains("above 18 kW"),
            "{:?}",
            c.suspects
        );
        assert!(c.suspects.shown[0].reason.contains("subscribed_kva"));
        assert!(s.kwh.iter().all(|k| k.is_finite() && *k < 1e6));
    }

    #[test]
    fn bad_lines_are_bounded_and_cut() {
        let g = grid();
        let long = "9".repeat(5000);
        let mut body = String::new();
        for k in 0..5000 {
            body.push_str(&format!("bad{k}{long};1\n"));
        }
        let bad = parse(&format!("{HEAD}{body}"), Path::new("z.csv"), &g).unwrap_err();
        assert_eq!(bad.total, 5000);
        assert_eq!(bad.shown.len(), SHOWN_LINES);
        let text = bad.to_string();
        assert!(text.contains("and 4980 more line(s)"), "{text}");
        // Each shown line quotes at most a few dozen characters of its field.
        assert!(text.len() < SHOWN_LINES * 200, "{} bytes", text.len());
        let mut all = LineLog::default();
        all.append(bad.clone());
        all.append(bad);
        assert_eq!((all.total, all.shown.len()), (10_000, SHOWN_LINES));
    }
}
