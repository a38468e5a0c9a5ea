//! A small SVG writer for the backtest's charts: line panels over time and a
//! grouped bar chart. Plain strings, no dependency; text is XML-escaped.

use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub values: &'a [f64],
}

/// Axis value with as many decimals as the axis span needs.
fn tick(v: f64, span: f64) -> String {
    if span >= 20.0 {
        format!("{v:.0}")
    } else if span >= 2.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const W: f64 = 1000.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 160.0;
const PANEL_H: f64 = 220.0;
const TOP: f64 = 40.0;
const GAP: f64 = 40.0;

fn range(series: &[Series]) -> (f64, f64) {
    let mut lo = 0.0f64;
    let mut hi = 0.0f64;
    for s in series {
        for &v in s.values.iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    (lo, hi)
}

/// Stacked panels of line series sharing the x axis (one point per step).
/// `panels`: (y-axis label, series). `ticks`: (step index, label) on the x axis.
pub fn line_panels(
    title: &str,
    panels: &[(&str, Vec<Series>)],
    ticks: &[(usize, String)],
) -> String {
    let h = TOP + panels.len() as f64 * (PANEL_H + GAP) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        esc(title)
    );
    let plot_w = W - LEFT - RIGHT;
    for (p, (label, series)) in panels.iter().enumerate() {
        let y0 = TOP + p as f64 * (PANEL_H + GAP);
        let (lo, hi) = range(series);
        let n = series
            .iter()
            .map(|s| s.values.len())
            .max()
            .unwrap_or(0)
            .max(2);
        let x = |k: usize| LEFT + plot_w * k as f64 / (n - 1) as f64;
        let y = |v: f64| y0 + PANEL_H * (1.0 - (v - lo) / (hi - lo));
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
        );
        for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let v = lo + (hi - lo) * frac;
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
                LEFT - 4.0,
                y(v) + 4.0,
                tick(v, hi - lo)
            );
        }
        if lo < 0.0 {
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#bbb" stroke-dasharray="3,3"/>"##,
                LEFT + plot_w,
                y(0.0),
                y(0.0)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
            y0 + PANEL_H / 2.0,
            y0 + PANEL_H / 2.0,
            esc(label)
        );
        for &(k, ref t) in ticks {
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle" fill="#444">{4}</text>"##,
                x(k),
                y0,
                y0 + PANEL_H,
                y0 + PANEL_H + 14.0,
                esc(t)
            );
        }
        for (i, s) in series.iter().enumerate() {
            let mut pts = String::with_capacity(s.values.len() * 14);
            for (k, v) in s.values.iter().enumerate() {
                let v = if v.is_finite() { *v } else { 0.0 };
                let _ = write!(pts, "{:.1},{:.1} ", x(k), y(v));
            }
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.3" points="{}"/>"#,
                esc(s.color),
                pts.trim_end()
            );
            let ly = y0 + 14.0 + 16.0 * i as f64;
            let lx = LEFT + plot_w + 10.0;
            let _ = writeln!(
                out,
                r#"<line x1="{lx:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
                lx + 18.0,
                ly - 4.0,
                ly - 4.0,
                esc(s.color),
                lx + 24.0,
                esc(s.name)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Grouped bars: one group per label, one bar per series in each group.
pub fn grouped_bars(title: &str, y_label: &str, labels: &[String], series: &[Series]) -> String {
    let plot_w = (labels.len() as f64 * 12.0).max(600.0);
    // Room for legend names longer than the line charts'.
    let w = LEFT + plot_w + RIGHT + 80.0;
    let h = TOP + PANEL_H * 1.5 + 70.0;
    let (lo, hi) = range(series);
    let y0 = TOP;
    let ph = PANEL_H * 1.5;
    let y = |v: f64| y0 + ph * (1.0 - (v - lo) / (hi - lo));
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let v = lo + (hi - lo) * frac;
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
            LEFT - 4.0,
            y(v) + 4.0,
            tick(v, hi - lo)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
        y0 + ph / 2.0,
        y0 + ph / 2.0,
        esc(y_label)
    );
    let group = plot_w / labels.len().max(1) as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    for (g, label) in labels.iter().enumerate() {
        let gx = LEFT + g as f64 * group + group * 0.1;
        for (i, s) in series.iter().enumerate() {
            let v = s
                .values
                .get(g)
                .copied()
                .filter(|v| v.is_finite())
                .unwrap_or(0.0);
            let (top, bottom) = if v >= 0.0 {
                (y(v), y(0.0))
            } else {
                (y(0.0), y(v))
            };
            let _ = writeln!(
                out,
                r#"<rect x="{:.2}" y="{top:.2}" width="{bar:.2}" height="{:.2}" fill="{}"><title>{} {}: {v:.2}</title></rect>"#,
                gx + bar * i as f64,
                (bottom - top).max(0.0),
                esc(s.color),
                esc(label),
                esc(s.name)
            );
        }
        if labels.len() <= 40 || g % 5 == 0 {
            let lx = gx + group * 0.4;
            let ly = y0 + ph + 8.0;
            let _ = writeln!(
                out,
                r##"<text x="{lx:.1}" y="{ly:.1}" transform="rotate(60 {lx:.1} {ly:.1})" fill="#444">{}</text>"##,
                esc(label)
            );
        }
    }
    for (i, s) in series.iter().enumerate() {
        let lx = LEFT + plot_w + 10.0;
        let ly = y0 + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="10" fill="{}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 9.0,
            esc(s.color),
            lx + 20.0,
            esc(s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_points_are_finite() {
        let v = [1.0, f64::NAN, -2.0];
        let s = line_panels(
            "a < b & c",
            &[(
                "kW",
                vec![Series {
                    name: "x\"y",
                    color: "red",
                    values: &v,
                }],
            )],
            &[(1, "Mon".into())],
        );
        assert!(s.contains("a &lt; b &amp; c") && s.contains("x&quot;y"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        let b = grouped_bars(
            "t",
            "€",
            &["H-001".into()],
            &[Series {
                name: "ped",
                color: "#1f77b4",
                values: &[3.0],
            }],
        );
        assert_eq!(b.matches("<rect").count(), 4);
    }
}
