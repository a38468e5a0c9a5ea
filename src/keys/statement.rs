//! Monthly statement per participant, from a `ped keys` run: a CSV and a
//! one-page HTML with an inline SVG chart (no script, no external asset, so
//! it prints and mails as is).
//!
//! Savings are priced per allocated kWh at (participant's tariff − local
//! price): against grid-only (nothing allocated) and against the DSO's
//! default pro rata on the same measurements.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate};

use super::{Manifest, ALLOCATION_FILE, MANIFEST_FILE};

#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Bad {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("participant id `{id}` in the manifest cannot be a file name (only letters, digits, `.`, `_`, `-`, not starting with `.`); nothing written (fix: use the manifest ped keys wrote, or rename the participant in the site config and rerun ped keys)")]
    UnsafeId { id: String },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Day {
    pub consumption_kwh: f64,
    pub allocated_kwh: f64,
    pub prorata_kwh: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub id: String,
    pub prm: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub consumption_kwh: f64,
    pub allocated_kwh: f64,
    pub prorata_kwh: f64,
    /// Share of all local energy allocated in the run.
    pub share_of_local: f64,
    /// Share of the participant's consumption covered locally.
    pub coverage: f64,
    pub tariff_eur_per_kwh: f64,
    pub local_price_eur_per_kwh: f64,
    pub savings_vs_grid_eur: f64,
    pub savings_vs_prorata_eur: f64,
    pub days: BTreeMap<NaiveDate, Day>,
}

/// Builds every participant's statement from a keys output directory.
pub fn build(dir: &Path, local_price_eur_per_kwh: f64) -> Result<Vec<Statement>, StatementError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StatementError::Io { path, source }
    };
    let mpath = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&mpath).map_err(io(&mpath))?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| StatementError::Bad {
        path: mpath.clone(),
        line: e.line(),
        reason: e.to_string(),
    })?;
    let apath = dir.join(ALLOCATION_FILE);
    let text = std::fs::read_to_string(&apath).map_err(io(&apath))?;
    let mut days: BTreeMap<String, BTreeMap<NaiveDate, Day>> = BTreeMap::new();
    for (line, rec) in crate::dso::semicolon_records(&text, None).skip(1) {
        let bad = |reason: &str| StatementError::Bad {
            path: apath.clone(),
            line,
            reason: reason.into(),
        };
        let rec = rec.map_err(|e| bad(&e))?;
        let f: Vec<&str> = rec.iter().collect();
        if f.len() != 5 {
            return Err(bad(
                "expected Horodate;PRM;consumption_kwh;allocated_kwh;prorata_kwh",
            ));
        }
        let day = DateTime::parse_from_str(f[0], "%Y-%m-%dT%H:%M:%S%:z")
            .map_err(|_| bad("Horodate is not a local time with offset"))?
            .date_naive();
        let num = |s: &str| s.parse::<f64>().map_err(|_| bad("not a number"));
        let d = days
            .entry(f[1].to_string())
            .or_default()
            .entry(day)
            .or_default();
        d.consumption_kwh += num(f[2])?;
        d.allocated_kwh += num(f[3])?;
        d.prorata_kwh += num(f[4])?;
    }
    let total_local: f64 = days
        .values()
        .flat_map(|d| d.values())
        .map(|d| d.allocated_kwh)
        .sum();
    Ok(m.participants
        .iter()
        .map(|p| {
            let d = days.remove(&p.prm).unwrap_or_default();
            let sum = |f: fn(&Day) -> f64| d.values().map(f).sum::<f64>();
            let (c, a, pr) = (
                sum(|x| x.consumption_kwh),
                sum(|x| x.allocated_kwh),
                sum(|x| x.prorata_kwh),
            );
            let gain = p.tariff_eur_per_kwh - local_price_eur_per_kwh;
            Statement {
                id: p.id.clone(),
                prm: p.prm.clone(),
                from: m.from,
                to: m.to,
                consumption_kwh: c,
                allocated_kwh: a,
                prorata_kwh: pr,
                share_of_local: if total_local > 0.0 {
                    a / total_local
                } else {
                    0.0
                },
                coverage: if c > 0.0 { a / c } else { 0.0 },
                tariff_eur_per_kwh: p.tariff_eur_per_kwh,
                local_price_eur_per_kwh,
                savings_vs_grid_eur: a * gain,
                savings_vs_prorata_eur: (a - pr) * gain,
                days: d,
            }
        })
        .collect())
}

pub fn render_csv(s: &Statement) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "participant;{}", s.id);
    let _ = writeln!(o, "prm;{}", s.prm);
    let _ = writeln!(o, "from;{}", s.from);
    let _ = writeln!(o, "to;{}", s.to);
    let _ = writeln!(o, "consumption_kwh;{:.3}", s.consumption_kwh);
    let _ = writeln!(o, "allocated_local_kwh;{:.3}", s.allocated_kwh);
    let _ = writeln!(o, "share_of_local_energy;{:.6}", s.share_of_local);
    let _ = writeln!(o, "coverage_of_consumption;{:.6}", s.coverage);
    let _ = writeln!(o, "savings_vs_grid_only_eur;{:.2}", s.savings_vs_grid_eur);
    let _ = writeln!(o, "prorata_allocated_kwh;{:.3}", s.prorata_kwh);
    let _ = writeln!(o, "savings_vs_prorata_eur;{:.2}", s.savings_vs_prorata_eur);
    let _ = writeln!(o);
    let _ = writeln!(o, "day;consumption_kwh;allocated_kwh;prorata_kwh");
    for (day, d) in &s.days {
        let _ = writeln!(
            o,
            "{day};{:.3};{:.3};{:.3}",
            d.consumption_kwh, d.allocated_kwh, d.prorata_kwh
        );
    }
    o
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Daily consumption (grey) and allocated local energy (green) as bars.
fn chart(s: &Statement) -> String {
    let (w, h, pad) = (640.0, 220.0, 30.0);
    let n = s.days.len().max(1) as f64;
    let max = s
        .days
        .values()
        .map(|d| d.consumption_kwh.max(d.allocated_kwh))
        .fold(0.0, f64::max)
        .max(1e-9);
    let bw = (w - 2.0 * pad) / n;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="daily consumption and local energy">"##
    );
    let _ = write!(
        svg,
        r##"<line x1="{pad}" y1="{y}" x2="{x2}" y2="{y}" stroke="#333"/>"##,
        y = h - pad,
        x2 = w - pad
    );
    for (k, (day, d)) in s.days.iter().enumerate() {
        let x = pad + k as f64 * bw;
        let hc = (h - 2.0 * pad) * d.consumption_kwh / max;
        let ha = (h - 2.0 * pad) * d.allocated_kwh / max;
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{hc:.1}" fill="#bbb"><title>{day}: {:.1} kWh consumed</title></rect><rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{ha:.1}" fill="#2a9d3f"><title>{day}: {:.1} kWh local</title></rect>"##,
            h - pad - hc,
            (bw * 0.8).max(1.0),
            d.consumption_kwh,
            h - pad - ha,
            (bw * 0.8).max(1.0),
            d.allocated_kwh
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{pad}" y="16" font-size="12">max {max:.1} kWh/day</text></svg>"##
    );
    svg
}

pub fn render_html(s: &Statement) -> String {
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    format!(
        r##"<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>Relevé {id} {from} – {to}</title>
<style>body{{font-family:sans-serif;max-width:700px;margin:2em auto}}td{{padding:2px 12px}}td.n{{text-align:right}}</style></head>
<body>
<h1>Autoconsommation collective — {id}</h1>
<p>PRM {prm}, du {from} au {to}</p>
<table>
<tr><td>Consommation</td><td class="n">{c:.1} kWh</td></tr>
<tr><td>Énergie locale affectée</td><td class="n">{a:.1} kWh</td></tr>
<tr><td>Part de l'énergie locale de l'opération</td><td class="n">{share}</td></tr>
<tr><td>Part de la consommation couverte localement</td><td class="n">{cov}</td></tr>
<tr><td>Économie par rapport au réseau seul</td><td class="n">{sg:.2} €</td></tr>
<tr><td>Économie par rapport à la clé par défaut (prorata)</td><td class="n">{sp:.2} €</td></tr>
</table>
<p>Prix : tarif fournisseur {t:.4} €/kWh, prix local {lp:.4} €/kWh.</p>
<h2>Par jour</h2>
{chart}
<p><span style="color:#888">■</span> consommation <span style="color:#2a9d3f">■</span> énergie locale</p>
</body></html>
"##,
        id = esc(&s.id),
        prm = esc(&s.prm),
        from = s.from,
        to = s.to,
        c = s.consumption_kwh,
        a = s.allocated_kwh,
        share = pct(s.share_of_local),
        cov = pct(s.coverage),
        sg = s.savings_vs_grid_eur,
        sp = s.savings_vs_prorata_eur,
        t = s.tariff_eur_per_kwh,
        lp = s.local_price_eur_per_kwh,
        chart = chart(s),
    )
}

/// Writes `<id>.csv` and `<id>.html` per participant into `out`.
pub fn write_all(out: &Path, statements: &[Statement]) -> Result<Vec<PathBuf>, StatementError> {
    // The ids come from a manifest on disk, which anyone may have edited:
    // each must stay a plain name inside `out`. Checked before any write.
    if let Some(s) = statements
        .iter()
        .find(|s| !crate::dso::is_plain_file_stem(&s.id))
    {
        return Err(StatementError::UnsafeId { id: s.id.clone() });
    }
    std::fs::create_dir_all(out).map_err(|source| StatementError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for s in statements {
        for (ext, text) in [("csv", render_csv(s)), ("html", render_html(s))] {
            let path = out.join(format!("{}.{ext}", s.id));
            std::fs::write(&path, text).map_err(|source| StatementError::Io {
                path: path.clone(),
                source,
            })?;
            files.push(path);
        }
    }
    Ok(files)
}
