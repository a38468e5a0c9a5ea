//! The report: summary.json, participants.csv and the charts written to the
//! output folder, and the text table printed by `ped backtest`.

use std::path::Path;

use chrono::Datelike;

use super::{svg, BacktestError, Dataset, Summary};

/// Per-step series of the `ped` scenario, for the charts.
#[derive(Default)]
pub(super) struct Trace {
    pub(super) pv: Vec<f64>,
    pub(super) load: Vec<f64>,
    pub(super) battery: Vec<f64>,
    pub(super) p2h: Vec<f64>,
    pub(super) export: Vec<f64>,
    pub(super) soc_pct: Vec<f64>,
    pub(super) store_pct: Vec<f64>,
}

pub(super) fn write_file(path: &Path, text: &str) -> Result<(), BacktestError> {
    std::fs::write(path, text).map_err(|source| BacktestError::Write {
        file: path.to_path_buf(),
        source,
    })
}

/// The 7-day window (starting at a local midnight) with the most or the
/// least PV; the whole run when it is shorter.
pub(super) fn week_window(ds: &Dataset, begin: usize, pv: &[f64], most: bool) -> (usize, usize) {
    let week = 7 * ds.cal.slots_per_day();
    if pv.len() <= week {
        return (0, pv.len());
    }
    let mut best: Option<(f64, usize)> = None;
    for s in (0..pv.len() - week).filter(|&j| ds.cal.slot(begin + j) == 0) {
        let e: f64 = pv[s..s + week].iter().sum();
        let better = best.map_or(true, |(b, _)| if most { e > b } else { e < b });
        if better {
            best = Some((e, s));
        }
    }
    let s = best.map(|b| b.1).unwrap_or(0);
    (s, s + week)
}

pub(super) fn write_outputs(
    s: &Summary,
    trace: &Trace,
    ds: &Dataset,
    begin: usize,
    out: &Path,
) -> Result<(), BacktestError> {
    std::fs::create_dir_all(out).map_err(|source| BacktestError::Write {
        file: out.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_string_pretty(s).map_err(|e| BacktestError::Write {
        file: out.join("summary.json"),
        source: std::io::Error::other(e),
    })?;
    write_file(&out.join("summary.json"), &json)?;

    let names: Vec<&str> = s.scenarios.iter().map(|x| x.name.as_str()).collect();
    let mut csv = String::from("id,kind,tariff_eur_per_kwh,priority,consumption_kwh");
    for n in &names {
        csv.push_str(&format!(",{n}_allocated_kwh,{n}_savings_eur"));
    }
    csv.push_str(",ratio_to_dso_prorata\n");
    for p in &s.participants {
        csv.push_str(&format!(
            "{},{},{:.4},{},{:.3}",
            p.id, p.kind, p.tariff_eur_per_kwh, p.priority, p.consumption_kwh
        ));
        for n in &names {
            csv.push_str(&format!(
                ",{:.3},{:.2}",
                p.allocated_kwh.get(*n).copied().unwrap_or(0.0),
                p.savings_eur.get(*n).copied().unwrap_or(0.0)
            ));
        }
        csv.push_str(&format!(",{:.4}\n", p.ratio_to_prorata));
    }
    write_file(&out.join("participants.csv"), &csv)?;

    for (file, most, label) in [
        ("week-summer.svg", true, "sunniest"),
        ("week-winter.svg", false, "dullest"),
    ] {
        let (a, b) = week_window(ds, begin, &trace.pv, most);
        let ticks: Vec<(usize, String)> = (a..b)
            .filter(|&j| ds.cal.slot(begin + j) == 0)
            .map(|j| {
                let d = ds.cal.grid.local_day(ds.cal.time(begin + j));
                (
                    j - a,
                    format!("{} {:02}-{:02}", d.weekday(), d.month(), d.day()),
                )
            })
            .collect();
        let title = format!(
            "ped backtest: the {label} week of the run, from {}",
            ds.cal.grid.local_day(ds.cal.time(begin + a))
        );
        let svg = svg::line_panels(
            &title,
            &[
                (
                    "kW",
                    vec![
                        svg::Series {
                            name: "PV",
                            color: "#e6a700",
                            values: &trace.pv[a..b],
                        },
                        svg::Series {
                            name: "consumption",
                            color: "#1f77b4",
                            values: &trace.load[a..b],
                        },
                        svg::Series {
                            name: "battery (+charge)",
                            color: "#2ca02c",
                            values: &trace.battery[a..b],
                        },
                        svg::Series {
                            name: "power-to-heat",
                            color: "#d62728",
                            values: &trace.p2h[a..b],
                        },
                        svg::Series {
                            name: "export",
                            color: "#7f7f7f",
                            values: &trace.export[a..b],
                        },
                    ],
                ),
                (
                    "%",
                    vec![
                        svg::Series {
                            name: "battery SoC",
                            color: "#2ca02c",
                            values: &trace.soc_pct[a..b],
                        },
                        svg::Series {
                            name: "heat store",
                            color: "#d62728",
                            values: &trace.store_pct[a..b],
                        },
                    ],
                ),
            ],
            &ticks,
        )?;
        write_file(&out.join(file), &svg)?;
    }
    let get = |n: &str| -> Vec<f64> {
        s.participants
            .iter()
            .map(|p| p.savings_eur.get(n).copied().unwrap_or(0.0))
            .collect()
    };
    let gain: Vec<f64> = get("ped")
        .iter()
        .zip(get("dso_prorata"))
        .map(|(ours, dso)| ours - dso)
        .collect();
    // Worse off as counted in the table: less money by more than a cent
    // (the keys' rounding moves fractions of a cent and is not a loss).
    let worse: Vec<bool> = gain.iter().map(|g| *g < -0.01).collect();
    let marked_means = "save less than under the DSO's pro rata without storage";
    // The charts name the local days only: a full timestamp would not fit
    // their titles.
    let day = |ts: &str| ts.get(..10).unwrap_or(ts).to_string();
    let (from, to) = (day(&s.from), day(&s.to));
    let title =
        format!("Savings per participant, ped minus DSO pro rata without storage, {from} to {to}");
    let svg = svg::Distribution {
        title: &title,
        x_label: "participants, sorted by that difference",
        y_label: "EUR",
        values: &gain,
        marked: &worse,
        marked_means,
        reference: 0.0,
    }
    .render()?;
    write_file(&out.join("savings.svg"), &svg)?;
    let ratio: Vec<f64> = s.participants.iter().map(|p| p.ratio_to_prorata).collect();
    let title =
        format!("Savings per participant, ped / DSO pro rata without storage, {from} to {to}");
    let svg = svg::Distribution {
        title: &title,
        x_label: "participants, sorted by that ratio",
        y_label: "ratio (1 = as well off)",
        values: &ratio,
        marked: &worse,
        marked_means,
        reference: 1.0,
    }
    .render()?;
    write_file(&out.join("savings-ratio.svg"), &svg)?;
    Ok(())
}

/// The summary table printed on stdout.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "backtest {} → {} ({} steps of {} min, horizon {} steps, replan every {} steps, {:.0} s)\n\n",
        s.from, s.to, s.steps, s.step_minutes, s.horizon_steps, s.replan_every, s.wall_seconds
    ));
    o.push_str(&format!(
        "{:<15} {:>6} {:>5} {:>6} {:>6} {:>12} {:>12} {:>12} {:>11} {:>8} {:>10} {:>9}\n",
        "scenario",
        "disp",
        "keys",
        "SCR %",
        "SSR %",
        "savings €",
        "export kWh",
        "unalloc kWh",
        "storage kWh",
        "cycles",
        "heat PV kWh",
        "worse off"
    ));
    for x in &s.scenarios {
        o.push_str(&format!(
            "{:<15} {:>6} {:>5} {:>6.2} {:>6.2} {:>12.0} {:>12.0} {:>12.1} {:>11.0} {:>8.1} {:>10.0} {:>9}\n",
            x.name,
            x.dispatch,
            &x.keys[..x.keys.len().min(5)],
            100.0 * x.self_consumption_rate,
            100.0 * x.self_sufficiency,
            x.savings_eur,
            x.export_kwh,
            x.unallocated_kwh,
            x.allocated_to_storage_kwh,
            x.battery_full_cycles,
            x.heat_from_pv_kwh,
            x.participants_worse_than_dso_prorata
        ));
    }
    o.push_str(
        "export: production no one in the district consumed; unalloc: consumed in the district but not allocated by the DSO's rule with the rounded keys\n\
         worse off: participants short of exact pro rata of the same production and consumption, in a month, by more than max(0.1 kWh, 0.5 %)\n",
    );
    if let Some(x) = s.scenarios.iter().find(|x| x.name == "ped") {
        if !x.worse_than_dso_prorata.is_empty() {
            let shown: Vec<String> = x
                .worse_than_dso_prorata
                .iter()
                .take(5)
                .map(|w| {
                    format!(
                        "{} {} {:.1} of {:.1} kWh ({} steps estimated)",
                        w.id, w.month, w.allocated_kwh, w.prorata_kwh, w.estimated_steps
                    )
                })
                .collect();
            o.push_str(&format!(
                "ped, short of exact pro rata ({} participants; the first in summary.json): {}\n",
                x.participants_worse_than_dso_prorata,
                shown.join("; ")
            ));
        }
    }
    let q = &s.data_quality;
    o.push_str(&format!(
        "data: {} missing and {} suspect values (negative, above the ceiling of a reading, not a number), {} estimated ({:.1} kWh) as `ped keys` does, {} left at 0; {} participants with an entry or exit day, {} values outside membership ignored\n",
        q.missing_values,
        q.suspect_values,
        q.estimated_values,
        q.estimated_kwh,
        q.unestimated_values,
        q.participants_with_entry_or_exit,
        q.values_outside_membership
    ));
    let f = &s.forecast_errors;
    o.push_str(&format!(
        "\nforecast errors (every horizon point): PV MAE {:.1} kW nMAE {:.3}; consumption MAE {:.3} kW nMAE {:.3}; heat MAE {:.1} kW nMAE {:.3}\n",
        f.pv.mae, f.pv.nmae, f.consumption.mae, f.consumption.nmae, f.heat.mae, f.heat.nmae
    ));
    let v = &s.solve;
    o.push_str(&format!(
        "solves {} ({} optimal, {} fallback, {} after a PV miss): p50 {:.3} s, p95 {:.3} s, p99 {:.3} s, max {:.3} s\n",
        v.solves, v.optimal, v.fallback, v.replans_on_miss, v.p50_s, v.p95_s, v.p99_s, v.max_s
    ));
    let d = &s.tracking;
    o.push_str(&format!(
        "ped dispatch, plan tracking {}: export {:.0} kWh; at the {} steps with more surplus than planned, {:.0} kWh of it exported, {:.0} kWh while storage had room ({:.0} kWh the batteries); setpoints moved {:.0} kWh\n",
        if d.enabled { "on" } else { "off" },
        d.export_kwh,
        d.steps_unplanned_surplus,
        d.export_of_unplanned_surplus_kwh,
        d.export_storage_had_room_for_kwh,
        d.export_batteries_had_room_for_kwh,
        d.setpoints_moved_kwh
    ));
    let ratios: Vec<f64> = s.participants.iter().map(|p| p.ratio_to_prorata).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    o.push_str(&format!(
        "savings ratio ped / DSO pro rata per participant: min {min:.2}, max {max:.2}\n"
    ));
    o
}
