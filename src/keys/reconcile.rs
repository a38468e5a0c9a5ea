//! Reconciliation: the DSO's returned settlement series against what ped
//! meant to allocate (the `allocation.csv` of a `ped keys` run).
//!
//! DOMAIN.md §1 says what comes back (per consumer: consumption,
//! self-consumed, complement; per producer: production, self-consumed,
//! surplus) but not the layout. ped assumes an Enedis-like CSV (UTF-8, BOM
//! tolerated, `;`, local time with offset, **end**-of-interval stamps, energy
//! in Wh), one row per meter, role and step:
//!
//! ```text
//! Identifiant PRM;Role;Horodate;Energie totale;Energie autoconsommee;Complement ou surplus
//! 20000000000001;consommateur;2025-10-26T00:15:00+02:00;1234;500;734
//! 30000000000001;producteur;2025-10-26T00:15:00+02:00;900;700;200
//! ```
//!
//! For each consumer, the month's self-consumed energy is compared with ped's
//! allocation; a difference above the tolerance is a report line with status
//! `difference` and sets `ped_reconciliation_difference_joules{participant}`.
//! Rows whose total is not self-consumed + complement/surplus are flagged
//! `inconsistent`; a consumer the DSO did not return is `missing`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::dso::loadcurve::BadLine;
use crate::time::Grid;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{} bad line(s):\n{}", .0.len(), .0.iter().map(|b| format!("  {b}")).collect::<Vec<_>>().join("\n"))]
    BadLines(Vec<BadLine>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Consumer,
    Producer,
}

/// Month totals of one meter and role, kWh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub total_kwh: f64,
    pub self_kwh: f64,
    pub other_kwh: f64,
    pub steps: usize,
    /// Rows where total ≠ self + other (beyond 1 Wh).
    pub inconsistent_steps: usize,
}

/// Sums the DSO's series per (PRM, role) over the steps that start in
/// `[from, to)`. Every bad line is collected before failing.
pub fn read_settlement(
    text: &str,
    file: &Path,
    grid: &Grid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<BTreeMap<(String, Role), Totals>, ReconcileError> {
    let mut bad = Vec::new();
    let mut out: BTreeMap<(String, Role), Totals> = BTreeMap::new();
    let mut records = crate::dso::semicolon_records(text, None);
    match records.next() {
        Some((_, Ok(h)))
            if h.len() == 6
                && h.iter()
                    .collect::<Vec<_>>()
                    .join(";")
                    .starts_with("Identifiant PRM;Role;Horodate") => {}
        _ => bad.push(BadLine {
            file: file.to_path_buf(),
            line: 1,
            reason: "header must be `Identifiant PRM;Role;Horodate;Energie totale;Energie autoconsommee;Complement ou surplus`".into(),
        }),
    }
    for (line, rec) in records {
        let mut why = |reason: String| {
            bad.push(BadLine {
                file: file.to_path_buf(),
                line,
                reason,
            })
        };
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                why(e);
                continue;
            }
        };
        let f: Vec<&str> = rec.iter().collect();
        if f.len() != 6 {
            why(format!("{} fields, expected 6", f.len()));
            continue;
        }
        if let Err(e) = f[0].parse::<crate::ids::Prm>() {
            why(e.to_string());
            continue;
        }
        let role = match f[1] {
            "consommateur" => Role::Consumer,
            "producteur" => Role::Producer,
            r => {
                why(format!("Role `{r}`: expected consommateur or producteur"));
                continue;
            }
        };
        let end = match DateTime::parse_from_str(f[2], "%Y-%m-%dT%H:%M:%S%:z") {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => {
                why(format!("Horodate `{}`: {e}", f[2]));
                continue;
            }
        };
        if grid.format_local(end) != f[2] {
            why(format!(
                "Horodate `{}` should read `{}`",
                f[2],
                grid.format_local(end)
            ));
            continue;
        }
        let mut v = [0.0; 3];
        let mut ok = true;
        for (slot, s) in v.iter_mut().zip(&f[3..]) {
            match s.replace(',', ".").parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => *slot = x / 1000.0,
                _ => {
                    ok = false;
                }
            }
        }
        if !ok {
            why(format!("energies `{}` must be Wh >= 0", f[3..].join(";")));
            continue;
        }
        let start = end - grid.step();
        if start < from || start >= to {
            continue;
        }
        let t = out.entry((f[0].to_string(), role)).or_default();
        t.total_kwh += v[0];
        t.self_kwh += v[1];
        t.other_kwh += v[2];
        t.steps += 1;
        if (v[0] - v[1] - v[2]).abs() > 0.001 {
            t.inconsistent_steps += 1;
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(ReconcileError::BadLines(bad))
    }
}

/// ped's side, per consumer PRM: consumption and allocated kWh over the run,
/// read from a `ped keys` output directory's `allocation.csv`.
pub fn read_intended(dir: &Path) -> Result<BTreeMap<String, (f64, f64)>, ReconcileError> {
    let path = dir.join(super::ALLOCATION_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| ReconcileError::Io {
        path: path.clone(),
        source,
    })?;
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut bad = Vec::new();
    for (line, rec) in crate::dso::semicolon_records(&text, None).skip(1) {
        let f: Vec<&str> = rec.as_ref().map(|r| r.iter().collect()).unwrap_or_default();
        let parsed = (f.len() >= 4)
            .then(|| Some((f[2].parse::<f64>().ok()?, f[3].parse::<f64>().ok()?)))
            .flatten();
        match parsed {
            Some((c, a)) => {
                let e = out.entry(f[1].to_string()).or_default();
                e.0 += c;
                e.1 += a;
            }
            None => bad.push(BadLine {
                file: path.clone(),
                line,
                reason: "expected Horodate;PRM;consumption_kwh;allocated_kwh;…".into(),
            }),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(ReconcileError::BadLines(bad))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub participant: String,
    pub prm: String,
    pub ped_consumption_kwh: f64,
    pub dso_consumption_kwh: Option<f64>,
    pub ped_allocated_kwh: f64,
    pub dso_self_consumed_kwh: Option<f64>,
    /// DSO − ped, self-consumed energy.
    pub difference_kwh: f64,
    pub status: &'static str,
}

/// Tolerance of a participant's month: the larger of an absolute floor and
/// a share of what ped allocated (measured energies are rounded to Wh per
/// step by the DSO, which adds up over a month).
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub kwh: f64,
    pub ratio: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            kwh: 0.5,
            ratio: 0.005,
        }
    }
}

/// One line per consumer in `participants` (id, PRM), then a line for the
/// producers together (`*producers*`), comparing their self-consumed total
/// with everything ped allocated.
pub fn compare(
    participants: &[(String, String)],
    intended: &BTreeMap<String, (f64, f64)>,
    dso: &BTreeMap<(String, Role), Totals>,
    tol: Tolerance,
) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut ped_total = 0.0;
    for (id, prm) in participants {
        let (pc, pa) = intended.get(prm).copied().unwrap_or((0.0, 0.0));
        ped_total += pa;
        let d = dso.get(&(prm.clone(), Role::Consumer));
        let diff = d.map_or(-pa, |d| d.self_kwh - pa);
        let status = match d {
            None => "missing",
            Some(d) if d.inconsistent_steps > 0 => "inconsistent",
            Some(_) if diff.abs() > tol.kwh.max(tol.ratio * pa) => "difference",
            Some(_) => "ok",
        };
        lines.push(Line {
            participant: id.clone(),
            prm: prm.clone(),
            ped_consumption_kwh: pc,
            dso_consumption_kwh: d.map(|d| d.total_kwh),
            ped_allocated_kwh: pa,
            dso_self_consumed_kwh: d.map(|d| d.self_kwh),
            difference_kwh: diff,
            status,
        });
    }
    let producers: Vec<&Totals> = dso
        .iter()
        .filter(|((_, r), _)| *r == Role::Producer)
        .map(|(_, t)| t)
        .collect();
    let dso_self: f64 = producers.iter().map(|t| t.self_kwh).sum();
    let inconsistent = producers.iter().any(|t| t.inconsistent_steps > 0);
    let diff = dso_self - ped_total;
    lines.push(Line {
        participant: "*producers*".into(),
        prm: String::new(),
        ped_consumption_kwh: 0.0,
        dso_consumption_kwh: None,
        ped_allocated_kwh: ped_total,
        dso_self_consumed_kwh: (!producers.is_empty()).then_some(dso_self),
        difference_kwh: diff,
        status: if producers.is_empty() {
            "missing"
        } else if inconsistent {
            "inconsistent"
        } else if diff.abs() > tol.kwh.max(tol.ratio * ped_total) {
            "difference"
        } else {
            "ok"
        },
    });
    lines
}

pub fn render_report(lines: &[Line]) -> String {
    let mut s = String::from(
        "participant;prm;ped_consumption_kwh;dso_consumption_kwh;ped_allocated_kwh;dso_self_consumed_kwh;difference_kwh;status\n",
    );
    // Rounding noise must not print as `-0.000`.
    let kwh = |v: f64| format!("{:.3}", if v.abs() < 5e-4 { 0.0 } else { v });
    let opt = |v: Option<f64>| v.map_or(String::new(), kwh);
    for l in lines {
        let _ = writeln!(
            s,
            "{};{};{};{};{};{};{};{}",
            l.participant,
            l.prm,
            kwh(l.ped_consumption_kwh),
            opt(l.dso_consumption_kwh),
            kwh(l.ped_allocated_kwh),
            opt(l.dso_self_consumed_kwh),
            kwh(l.difference_kwh),
            l.status
        );
    }
    s
}

/// Sets `ped_reconciliation_difference_joules{participant}` for every line.
pub fn record(metrics: &crate::metrics::Metrics, lines: &[Line]) {
    for l in lines {
        metrics
            .reconciliation_difference
            .with_label_values(&[&l.participant])
            .set(l.difference_kwh * crate::units::JOULES_PER_KWH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Grid {
        Grid::new(15, chrono_tz::Europe::Paris).unwrap()
    }

    #[test]
    fn sums_compares_and_flags() {
        let g = grid();
        let text = "\u{feff}Identifiant PRM;Role;Horodate;Energie totale;Energie autoconsommee;Complement ou surplus\n\
            20000000000001;consommateur;2025-10-26T00:15:00+02:00;1000;400;600\n\
            20000000000001;consommateur;2025-10-26T00:30:00+02:00;1000;400;600\n\
            20000000000002;consommateur;2025-10-26T00:15:00+02:00;500;300;100\n\
            30000000000001;producteur;2025-10-26T00:15:00+02:00;1500;1100;400\n\
            30000000000001;producteur;2025-10-27T00:15:00+01:00;1500;1100;400\n";
        let from = DateTime::parse_from_rfc3339("2025-10-26T00:00:00+02:00")
            .unwrap()
            .with_timezone(&Utc);
        let to = DateTime::parse_from_rfc3339("2025-10-27T00:00:00+01:00")
            .unwrap()
            .with_timezone(&Utc);
        let dso = read_settlement(text, Path::new("r.csv"), &g, from, to).unwrap();
        let c1 = &dso[&("20000000000001".to_string(), Role::Consumer)];
        assert_eq!(c1.steps, 2);
        assert!((c1.self_kwh - 0.8).abs() < 1e-12);
        // Outside the month: not counted.
        assert_eq!(
            dso[&("30000000000001".to_string(), Role::Producer)].steps,
            1
        );
        let intended: BTreeMap<String, (f64, f64)> = [
            ("20000000000001".to_string(), (2.0, 0.8)),
            ("20000000000002".to_string(), (0.5, 0.3)),
            ("20000000000003".to_string(), (1.0, 0.0)),
        ]
        .into_iter()
        .collect();
        let parts: Vec<(String, String)> = (1..=3)
            .map(|k| (format!("P{k}"), format!("2000000000000{k}")))
            .collect();
        let tol = Tolerance {
            kwh: 0.01,
            ratio: 0.0,
        };
        let lines = compare(&parts, &intended, &dso, tol);
        let st: Vec<&str> = lines.iter().map(|l| l.status).collect();
        // Producers: 1.1 kWh self-consumed in the month, as ped allocated.
        assert_eq!(st, ["ok", "inconsistent", "missing", "ok"]);
        assert!(lines[3].difference_kwh.abs() < 1e-9);
        let short = BTreeMap::from([("20000000000001".to_string(), (2.0, 0.5))]);
        let off = compare(&parts[..1], &short, &dso, tol);
        assert_eq!(off[0].status, "difference");
        assert!((off[0].difference_kwh - 0.3).abs() < 1e-9);
        assert_eq!(off[1].status, "difference");
        let report = render_report(&lines);
        let first = report.lines().nth(1).unwrap();
        assert_eq!(first, "P1;20000000000001;2.000;2.000;0.800;0.800;0.000;ok");

        let bad = "Identifiant PRM;Role;Horodate;Energie totale;Energie autoconsommee;Complement ou surplus\n\
            2000000000000X;consommateur;2025-10-26T00:15:00+02:00;1;1;0\n\
            20000000000001;client;2025-10-26T00:15:00+02:00;1;1;0\n\
            20000000000001;consommateur;2025-10-26T00:15:00+02:00;-1;1;0\n";
        match read_settlement(bad, Path::new("b.csv"), &g, from, to) {
            Err(ReconcileError::BadLines(b)) => {
                assert_eq!(b.iter().map(|b| b.line).collect::<Vec<_>>(), [2, 3, 4])
            }
            other => panic!("{other:?}"),
        }
    }
}
