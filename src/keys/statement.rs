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
use plotters::prelude::*;

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

/// Daily consumption (grey) and allocated local energy (green) as bars,
/// drawn with plotters' SVG backend.
fn chart(s: &Statement) -> String {
    let mut svg = String::new();
    // Plotters draws into the string: it can only fail on a layout bug, and
    // the statement is still worth writing without its chart.
    if let Err(e) = draw_chart(s, &mut svg) {
        return format!("<p>{}</p>", esc(&format!("chart not drawn: {e}")));
    }
    // The SVG inline in the page: its XML declaration-free root is enough,
    // plus a label for screen readers.
    svg.replacen(
        "<svg ",
        r#"<svg role="img" aria-label="daily consumption and local energy" "#,
        1,
    )
}

fn draw_chart(s: &Statement, out: &mut String) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let days: Vec<(&NaiveDate, &Day)> = s.days.iter().collect();
    let n = days.len().max(1);
    let max = s
        .days
        .values()
        .map(|d| d.consumption_kwh.max(d.allocated_kwh))
        .fold(0.0, f64::max)
        .max(1e-9);
    let root = SVGBackend::with_string(out, (680, 260)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..max * 1.05)?;
    let label = |x: &f64| {
        let k = x.round();
        match days.get(k.max(0.0) as usize) {
            Some((day, _)) if (x - k).abs() < 1e-9 && k >= 0.0 => day.format("%m-%d").to_string(),
            _ => String::new(),
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.min(8))
        .x_label_formatter(&label)
        .y_desc("kWh/day")
        .y_labels(5)
        .max_light_lines(1)
        .label_style(
            ("sans-serif", 14)
                .into_font()
                .color(&RGBColor(0x44, 0x44, 0x44)),
        )
        .draw()?;
    let bar = |k: usize, v: f64, color: RGBColor| {
        let x = k as f64;
        Rectangle::new([(x - 0.4, 0.0), (x + 0.4, v)], color.filled())
    };
    chart.draw_series(
        days.iter()
            .enumerate()
            .map(|(k, (_, d))| bar(k, d.consumption_kwh, RGBColor(0xbb, 0xbb, 0xbb))),
    )?;
    chart.draw_series(
        days.iter()
            .enumerate()
            .map(|(k, (_, d))| bar(k, d.allocated_kwh, RGBColor(0x2a, 0x9d, 0x3f))),
    )?;
    root.present()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(days: u32) -> Statement {
        let from = NaiveDate::from_ymd_opt(2025, 10, 1).unwrap();
        let days: BTreeMap<NaiveDate, Day> = (0..days)
            .map(|k| {
                let c = 8.0 + 3.0 * f64::from(k % 7);
                (
                    from + chrono::Days::new(u64::from(k)),
                    Day {
                        consumption_kwh: c,
                        allocated_kwh: c * 0.4,
                        prorata_kwh: c * 0.35,
                    },
                )
            })
            .collect();
        Statement {
            id: "FLAT-1".into(),
            prm: "20000000000001".into(),
            from,
            to: from + chrono::Days::new(u64::from(days.len() as u32)),
            consumption_kwh: days.values().map(|d| d.consumption_kwh).sum(),
            allocated_kwh: days.values().map(|d| d.allocated_kwh).sum(),
            prorata_kwh: days.values().map(|d| d.prorata_kwh).sum(),
            share_of_local: 0.1,
            coverage: 0.4,
            tariff_eur_per_kwh: 0.2,
            local_price_eur_per_kwh: 0.1,
            savings_vs_grid_eur: 1.0,
            savings_vs_prorata_eur: 0.1,
            days,
        }
    }

    #[test]
    fn chart_has_two_bars_a_day_and_round_ticks() {
        let s = statement(31);
        let svg = chart(&s);
        assert!(svg.starts_with("<svg role=\"img\""), "{svg}");
        let bars = |fill: &str| {
            svg.lines()
                .filter(|l| l.starts_with("<rect") && l.contains(fill))
                .count()
        };
        assert_eq!(bars("fill=\"#BBBBBB\""), 31);
        assert_eq!(bars("fill=\"#2A9D3F\""), 31);
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim()))
            .collect();
        // Round kWh ticks (the days peak at 26 kWh), dates as month-day.
        for tick in ["0", "10", "20"] {
            assert!(
                texts.iter().any(|t| t.trim_end_matches(".0") == tick),
                "{tick} in {texts:?}"
            );
        }
        assert!(texts.contains(&"10-01"), "{texts:?}");
        let html = render_html(&s);
        assert!(html.contains("<svg role=\"img\"") && html.contains("</svg>"));
        if let Some(dir) = std::env::var_os("PED_CHART_DIR") {
            std::fs::write(std::path::Path::new(&dir).join("statement.svg"), &svg).unwrap();
        }
    }
}
