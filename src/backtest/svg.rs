//! The backtest's charts, drawn with plotters' SVG backend: line panels over
//! time sharing the x axis, and the sorted distribution of a figure per
//! participant with the worse-off ones marked. Text is left to the viewer's
//! sans-serif font (plotters' built-in layout estimate, no font files).

use plotters::coord::Shift;
use plotters::prelude::*;

/// A chart that plotters could not draw (it draws into a string, so this
/// means a bug in the chart's layout rather than an outside cause).
#[derive(Debug, thiserror::Error)]
#[error("chart `{title}`: {message}")]
pub struct ChartError {
    pub title: String,
    pub message: String,
}

pub struct Series<'a> {
    pub name: &'a str,
    /// `#rrggbb`.
    pub color: &'a str,
    pub values: &'a [f64],
}

const W: u32 = 1000;
const LEFT: u32 = 70;
const RIGHT: u32 = 170;
const PANEL_H: u32 = 240;
const TOP: u32 = 40;
const FONT: &str = "sans-serif";

/// The colour of the worse-off participants.
pub const MARKED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const UNMARKED: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const AXIS_TEXT: RGBColor = RGBColor(0x44, 0x44, 0x44);
const DAY_LINE: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);

fn rgb(hex: &str) -> RGBColor {
    let h = hex.trim_start_matches('#');
    let part = |i: usize| {
        h.get(i..i + 2)
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .unwrap_or(0x80)
    };
    RGBColor(part(0), part(2), part(4))
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// The y range of some values, 0 included, never empty, with a little room.
fn y_range<'a>(values: impl Iterator<Item = &'a f64>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for &v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let pad = 0.04 * (hi - lo);
    (if lo < 0.0 { lo - pad } else { lo })..hi + pad
}

fn err<E: std::fmt::Display>(title: &str) -> impl Fn(E) -> ChartError + '_ {
    move |e| ChartError {
        title: title.to_string(),
        message: e.to_string(),
    }
}

/// Stacked panels of line series sharing the x axis (one point per step).
/// `panels`: (y-axis label, series). `ticks`: (step index, label) on the x
/// axis, e.g. local midnights.
pub fn line_panels(
    title: &str,
    panels: &[(&str, Vec<Series>)],
    ticks: &[(usize, String)],
) -> Result<String, ChartError> {
    let h = TOP + panels.len() as u32 * (PANEL_H + 30) + 10;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err(title))?;
        let body = root.titled(title, (FONT, 18)).map_err(err(title))?;
        let rows = body.split_evenly((panels.len().max(1), 1));
        for ((label, series), area) in panels.iter().zip(&rows) {
            panel(area, label, series, ticks).map_err(err(title))?;
        }
        root.present().map_err(err(title))?;
    }
    Ok(out)
}

fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    label: &str,
    series: &[Series],
    ticks: &[(usize, String)],
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let n = series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let mut chart = ChartBuilder::on(area)
        .margin_top(8)
        .margin_bottom(34)
        .margin_right(RIGHT)
        .y_label_area_size(LEFT)
        .build_cartesian_2d(
            0.0..(n - 1) as f64,
            y_range(series.iter().flat_map(|s| s.values.iter())),
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_desc(label)
        .label_style((FONT, 15).into_font().color(&AXIS_TEXT))
        .max_light_lines(1)
        .draw()?;
    let (lo, hi) = (chart.y_range().start, chart.y_range().end);
    for (k, _) in ticks {
        let x = *k as f64;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, lo), (x, hi)],
            DAY_LINE,
        )))?;
    }
    if lo < 0.0 {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), ((n - 1) as f64, 0.0)],
            RGBColor(0xbb, 0xbb, 0xbb),
        )))?;
    }
    for s in series {
        chart.draw_series(LineSeries::new(
            s.values
                .iter()
                .enumerate()
                .map(|(k, v)| (k as f64, finite(*v))),
            rgb(s.color).stroke_width(1),
        ))?;
    }
    // Day labels under the plot and the legend to its right, in pixels:
    // both sit outside the plotting area, where series are clipped.
    // `backend_coord` is in the whole image's pixels, `area.draw` in the
    // panel's.
    let (ox, oy) = area.get_base_pixel();
    let text = (FONT, 15).into_font().color(&AXIS_TEXT);
    for (k, t) in ticks {
        let (x, y) = chart.backend_coord(&(*k as f64, lo));
        area.draw(&Text::new(
            t.clone(),
            (x - ox - 28, y - oy + 6),
            text.clone(),
        ))?;
    }
    let (x_end, y_top) = chart.backend_coord(&((n - 1) as f64, hi));
    for (i, s) in series.iter().enumerate() {
        let (lx, ly) = (x_end - ox + 12, y_top - oy + 8 + 18 * i as i32);
        area.draw(&PathElement::new(
            vec![(lx, ly + 6), (lx + 18, ly + 6)],
            rgb(s.color).stroke_width(3),
        ))?;
        area.draw(&Text::new(
            s.name.to_string(),
            (lx + 24, ly),
            (FONT, 15).into_font(),
        ))?;
    }
    Ok(())
}

/// A figure per participant drawn sorted, smallest first, those `marked`
/// (worse off) in [`MARKED`] and counted in the caption.
pub struct Distribution<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// One value per participant, any order.
    pub values: &'a [f64],
    /// Per participant, aligned with `values`: whether it is worse off.
    pub marked: &'a [bool],
    /// What being marked means, after "N of M participants".
    pub marked_means: &'a str,
    /// A horizontal reference line (0 € of difference, a ratio of 1).
    pub reference: f64,
}

impl Distribution<'_> {
    /// The values sorted ascending, each with its mark.
    pub fn sorted(&self) -> Vec<(f64, bool)> {
        let mut v: Vec<(f64, bool)> = self
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (finite(*v), self.marked.get(i).copied().unwrap_or(false)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    pub fn marked_count(&self) -> usize {
        self.values
            .iter()
            .enumerate()
            .filter(|(i, _)| self.marked.get(*i).copied().unwrap_or(false))
            .count()
    }

    /// "N of M participants …", the chart's caption.
    pub fn caption(&self) -> String {
        format!(
            "{} of {} participants {} (marked red)",
            self.marked_count(),
            self.values.len(),
            self.marked_means
        )
    }

    pub fn render(&self) -> Result<String, ChartError> {
        let mut out = String::new();
        let title = self.title;
        {
            let root = SVGBackend::with_string(&mut out, (W, 520)).into_drawing_area();
            root.fill(&WHITE).map_err(err(title))?;
            self.draw(&root).map_err(err(title))?;
            root.present().map_err(err(title))?;
        }
        Ok(out)
    }

    fn draw(
        &self,
        root: &DrawingArea<SVGBackend, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
        let sorted = self.sorted();
        let n = sorted.len().max(1);
        let body = root.titled(self.title, (FONT, 20))?;
        body.draw(&Text::new(
            self.caption(),
            (LEFT as i32, 4),
            (FONT, 17).into_font().color(&MARKED),
        ))?;
        let mut chart = ChartBuilder::on(&body)
            .margin_top(26)
            .margin_right(30)
            .x_label_area_size(40)
            .y_label_area_size(LEFT)
            .build_cartesian_2d(
                0.5..n as f64 + 0.5,
                y_range(
                    sorted
                        .iter()
                        .map(|(v, _)| v)
                        .chain(std::iter::once(&self.reference)),
                ),
            )?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .x_labels(10)
            .y_labels(8)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FONT, 15).into_font().color(&AXIS_TEXT))
            .max_light_lines(1)
            .draw()?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.5, self.reference), (n as f64 + 0.5, self.reference)],
            RGBColor(0x88, 0x88, 0x88),
        )))?;
        chart.draw_series(LineSeries::new(
            sorted
                .iter()
                .enumerate()
                .map(|(i, (v, _))| ((i + 1) as f64, *v)),
            UNMARKED.stroke_width(2),
        ))?;
        // Few participants: every one is a dot; many: only the marked ones,
        // whose dots then run together into a red stretch of the curve.
        let radius = if n <= 150 { 3 } else { 2 };
        chart.draw_series(
            sorted
                .iter()
                .enumerate()
                .filter(|(_, (_, m))| *m || n <= 150)
                .map(|(i, (v, m))| {
                    let c = if *m { MARKED } else { UNMARKED };
                    Circle::new(((i + 1) as f64, *v), radius, c.filled())
                }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers among the SVG's text elements (the axis tick labels).
    pub(crate) fn numeric_labels(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let inner = t.split_once('>')?.1.split_once("</text>")?.0.trim();
                inner.parse::<f64>().ok().map(|_| inner.to_string())
            })
            .collect()
    }

    /// A tick label is round: at most two significant digits.
    fn round(label: &str) -> bool {
        let digits: String = label
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect::<String>()
            .trim_start_matches('0')
            .trim_end_matches('0')
            .to_string();
        digits.len() <= 2
    }

    #[test]
    fn text_is_escaped_and_points_are_finite() {
        let v = [1.0, f64::NAN, -2.0];
        let s = line_panels(
            "a < b & c",
            &[(
                "kW",
                vec![Series {
                    name: "x\"y",
                    color: "#ff0000",
                    values: &v,
                }],
            )],
            &[(1, "Mon".into())],
        )
        .unwrap();
        assert!(s.contains("a &lt; b &amp; c") && s.contains("x&quot;y"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("<polyline") && s.contains(">\nMon\n</text>"));
        let labels = numeric_labels(&s);
        assert!(labels.len() >= 3, "{labels:?}");
        assert!(labels.iter().all(|l| round(l)), "{labels:?}");
    }

    fn distribution(n: usize) -> (Vec<f64>, Vec<bool>) {
        // Savings against pro rata: a few cents to tens of euros, the first
        // 3 % below zero.
        let values: Vec<f64> = (0..n)
            .map(|i| {
                let x = i as f64 / n as f64;
                -2.0 + 40.0 * x * x + 0.3 * ((i * 7919) % 13) as f64
            })
            .collect();
        let marked = values.iter().map(|v| *v < -0.01).collect();
        (values, marked)
    }

    #[test]
    fn distribution_marks_and_counts_the_worse_off_with_round_ticks() {
        for n in [400, 1000] {
            let (values, marked) = distribution(n);
            let d = Distribution {
                title: "Savings against DSO pro rata",
                x_label: "participants, sorted",
                y_label: "EUR",
                values: &values,
                marked: &marked,
                marked_means: "save less than under DSO pro rata",
                reference: 0.0,
            };
            let want = marked.iter().filter(|m| **m).count();
            assert!(want > 0 && want < n);
            assert_eq!(d.marked_count(), want);
            let svg = d.render().unwrap();
            assert!(svg.contains(&format!("{want} of {n} participants save less")));
            let red = format!("fill=\"#{:02X}{:02X}{:02X}\"", MARKED.0, MARKED.1, MARKED.2);
            let dots = svg
                .lines()
                .filter(|l| l.starts_with("<circle") && l.contains(&red))
                .count();
            assert_eq!(dots, want, "one red dot each");
            let sorted = d.sorted();
            assert!(sorted.windows(2).all(|w| w[0].0 <= w[1].0));
            assert!(sorted[..want].iter().all(|(_, m)| *m));
            let labels = numeric_labels(&svg);
            assert!(labels.len() >= 6, "{labels:?}");
            assert!(labels.iter().all(|l| round(l)), "{labels:?}");
            if std::env::var_os("PED_CHART_DIR").is_some() {
                let dir = std::path::PathBuf::from(std::env::var_os("PED_CHART_DIR").unwrap());
                std::fs::write(dir.join(format!("savings-{n}.svg")), &svg).unwrap();
            }
        }
    }
}
