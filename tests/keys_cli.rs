//! `ped keys` end to end: Enedis load curves in `tests/data/keys/` (written
//! by `gen_curves.py` there) → key files, manifest and allocation, checked by
//! reading them back and applying the DSO's rule; DST days, bad lines, the
//! Spain format, idempotent reruns and golden files.
//! Regenerate the golden files after an intended change with
//! `PED_BLESS_GOLDEN=1 cargo test --test keys_cli` and review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use ped::allocation::{apply_rule, apply_rule_full, Precision};
use ped::dso::{enedis, spain};
use ped::keys::{sha256_hex, Manifest};
use ped::time::Grid;

mod common;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keys")
        .join(p)
}

fn keys(args: &[&str]) -> Output {
    let site = data("site.toml");
    common::ped()
        .arg("keys")
        .arg("--site")
        .arg(&site)
        .args(args)
        .output()
        .unwrap()
}

fn keys_with_site(site: &Path, args: &[&str]) -> Output {
    keys_with_site_env(site, args, &[])
}

/// `ped keys` on `site` with `args`, which must succeed: what it printed,
/// stdout then stderr.
fn keys_ok(site: &Path, args: &[&str]) -> String {
    let o = keys_with_site(site, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    text
}

fn keys_with_site_env(site: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    common::ped()
        .arg("keys")
        .arg("--site")
        .arg(site)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The fixture operation of 2025-10-26 with its three consumers copied
/// `copies` times (new PRMs, same curves) and its PV scaled to match, so the
/// month solver has the same structure on a larger instance. Returns a folder
/// holding `site.toml` and `curves/`.
fn scaled_operation(dir: &Path, copies: usize) -> PathBuf {
    let src = data("curves-2025-10-26");
    let curves = dir.join("curves");
    std::fs::create_dir_all(&curves).unwrap();
    let site = std::fs::read_to_string(data("site.toml")).unwrap();
    // Keep [site], [keys], the plants and the battery; replace the consumers.
    let head = &site[..site.find("[[devices]]\nid = \"M-1\"").unwrap()];
    let mut toml = head.to_string();
    let bat = &site[site.find("[[participants]]\nid = \"BAT-1\"").unwrap()..];
    let consumers = [
        ("SCHOOL", "20000000000001", "school", 0.20, 2),
        ("FLAT-1", "20000000000002", "household", 0.25, 1),
        ("FLAT-2", "20000000000003", "household", 0.25, 1),
    ];
    let mut unit = 0;
    for k in 0..copies {
        for (name, prm, ..) in consumers.iter() {
            unit += 1;
            let j = (unit - 1) % 3;
            let new_prm = format!("21{k:09}{j:03}");
            toml.push_str(&format!(
                "[[devices]]\nid = \"M-{unit}\"\nkind = \"meter\"\naddress = \"127.0.0.1:1505\"\nunit = {unit}\nparticipant = \"{name}-{k}\"\n\n"
            ));
            let text = std::fs::read_to_string(src.join(format!("{name}.csv"))).unwrap();
            std::fs::write(
                curves.join(format!("{name}-{k}.csv")),
                text.replacen(prm, &new_prm, 1),
            )
            .unwrap();
        }
    }
    for k in 0..copies {
        for (j, (name, _, kind, tariff, prio)) in consumers.iter().enumerate() {
            toml.push_str(&format!(
                "[[participants]]\nid = \"{name}-{k}\"\nkind = \"{kind}\"\nprm = \"21{k:09}{j:03}\"\nmeter = \"M-{}\"\ntariff_eur_per_kwh = {tariff}\npriority = {prio}\n\n",
                3 * k + j + 1
            ));
        }
    }
    toml.push_str(bat);
    std::fs::write(dir.join("site.toml"), toml).unwrap();
    for f in ["BAT-1-cons.csv", "BAT-1-prod.csv"] {
        std::fs::copy(src.join(f), curves.join(f)).unwrap();
    }
    // The plants grow with the consumers so that sharing still binds.
    for f in ["PV-1.csv", "PV-2.csv"] {
        let text = std::fs::read_to_string(src.join(f)).unwrap();
        let mut after_header = false;
        let scaled: Vec<String> = text
            .lines()
            .map(|l| {
                if after_header {
                    if let Some((stamp, v)) = l.split_once(';') {
                        if let Ok(w) = v.parse::<f64>() {
                            return format!("{stamp};{}", w * copies as f64);
                        }
                    }
                }
                after_header |= l.starts_with("Horodate;");
                l.to_string()
            })
            .collect();
        std::fs::write(curves.join(f), scaled.join("\n") + "\n").unwrap();
    }
    dir.to_path_buf()
}

/// `--from DAY --to DAY --load-curves CURVES --out OUT` and `extra`.
fn day_args<'a>(day: &'a str, curves: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--from",
        day,
        "--to",
        day,
        "--load-curves",
        curves.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

fn run_ok(args: &[&str]) -> String {
    let out = keys(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

fn grid() -> Grid {
    Grid::new(15, chrono_tz::Europe::Paris).unwrap()
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// `allocation.csv` → per step: (consumption, allocated) per PRM column order.
fn allocation(dir: &Path) -> Vec<(String, Vec<f64>, Vec<f64>)> {
    let text = std::fs::read_to_string(dir.join("allocation.csv")).unwrap();
    let mut out: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split(';').collect();
        let (c, a): (f64, f64) = (f[2].parse().unwrap(), f[3].parse().unwrap());
        match out.last_mut() {
            Some(last) if last.0 == f[0] => {
                last.1.push(c);
                last.2.push(a);
            }
            _ => out.push((f[0].to_string(), vec![c], vec![a])),
        }
    }
    out
}

/// Production per step and producer PRM straight from the fixture curves,
/// settled by ped's importer (tested on its own in `dso::loadcurve`).
fn production(dir: &str, day: &str) -> BTreeMap<String, Vec<f64>> {
    let g = grid();
    let periods = g
        .periods_of_local_day(chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap())
        .unwrap();
    ped::dso::loadcurve::read_dir(&data(dir), &g)
        .unwrap()
        .into_iter()
        .filter(|c| c.quantity == ped::dso::loadcurve::Quantity::Production)
        .map(|c| {
            (
                c.prm.to_string(),
                ped::dso::loadcurve::settle(&c, &g, &periods).kwh,
            )
        })
        .collect()
}

fn golden(name: &str, dir: &Path, files: &[String]) {
    let gdir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/keys")
        .join(name);
    for f in files {
        let got = std::fs::read(dir.join(f)).unwrap();
        let path = gdir.join(f);
        if std::env::var_os("PED_BLESS_GOLDEN").is_some() {
            std::fs::create_dir_all(&gdir).unwrap();
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (bless with PED_BLESS_GOLDEN=1)", path.display()));
        assert!(
            got == want,
            "{f} differs from {}; if intended, bless with PED_BLESS_GOLDEN=1",
            path.display()
        );
    }
}

#[test]
fn autumn_dst_day_full_dynamic_with_a_battery_and_a_missing_point() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("oct");
    let curves = data("curves-2025-10-26");
    let text = run_ok(&day_args(
        "2025-10-26",
        &curves,
        &out,
        &[
            "--policy",
            "optimised",
            "--kind",
            "full",
            "--format",
            "enedis",
        ],
    ));
    assert!(text.contains("written: 4 file(s), 100 periods"), "{text}");
    let m = manifest(&out);
    assert_eq!(m.periods, 100);
    // FLAT-2's point ending 12:15+01:00 is empty: that step, and only it, is
    // estimated from FLAT-2's neighbouring points and flagged; no step falls
    // back to the default rule.
    assert!(m.fallback_steps.is_empty(), "{:?}", m.fallback_steps);
    assert_eq!(m.estimated_steps.len(), 1, "{:?}", m.estimated_steps);
    assert_eq!(m.estimated_steps[0].period, "2025-10-26T12:00:00+01:00");
    assert_eq!(m.estimated_steps[0].estimated, ["FLAT-2"]);
    let flat2 = participant(&m, "FLAT-2");
    assert_eq!(flat2.estimated_steps, 1);
    assert!(flat2.estimated_kwh > 0.0);
    assert_eq!(m.suspect_values.count, 0);
    // PV-2's hourly night points are spread over 4 quarter-hours each.
    assert_eq!(m.coarse_steps, 28);
    assert_eq!(m.inputs.len(), 7);
    for f in &m.files {
        let bytes = std::fs::read(out.join(&f.name)).unwrap();
        assert_eq!(sha256_hex(&bytes), f.sha256, "{}", f.name);
    }

    // Read every producer's file back and apply the DSO's full dynamic rule.
    let prec = Precision {
        units_per_one: 1000,
    };
    let prod = production("curves-2025-10-26", "2025-10-26");
    let producers = ["30000000000001", "30000000000002", "30000000000009"];
    let reps: Vec<_> = producers
        .iter()
        .map(|p| {
            let t =
                std::fs::read_to_string(out.join(format!("{p}_20251026_20251026.csv"))).unwrap();
            enedis::validate(&t, &grid(), prec).unwrap()
        })
        .collect();
    assert!(reps.iter().all(|r| r.rows.len() == 100));
    let alloc = allocation(&out);
    assert_eq!(alloc.len(), 100);
    let battery = reps[2]
        .consumers
        .iter()
        .position(|c| c.as_str() == "30000000000009")
        .unwrap();
    for (t, (stamp, cons, allocated)) in alloc.iter().enumerate() {
        assert_eq!(stamp, &grid().format_local(reps[0].rows[t].start));
        let units: Vec<Vec<u32>> = reps.iter().map(|r| r.rows[t].units.clone()).collect();
        let p: Vec<f64> = producers.iter().map(|id| prod[*id][t]).collect();
        let got = apply_rule_full(&units, prec, &p, cons);
        for (g, a) in got.iter().zip(allocated) {
            assert!(
                (g - a).abs() < 1e-5,
                "step {stamp}: rule gives {g}, file says {a}"
            );
        }
        // The battery is a producer row only while it discharges...
        if p[2] == 0.0 {
            assert!(units[2].iter().all(|&u| u == 0), "{stamp}");
        }
        // ...and never gets keys on its own discharge.
        assert_eq!(units[2][battery], 0);
        let total: f64 = got.iter().sum();
        assert!(total <= p.iter().sum::<f64>() + 1e-9);
    }
    // While it charges (11:00-14:00) the battery is a consumer and is served.
    let charging: f64 = alloc
        .iter()
        .filter(|(s, _, _)| s.as_str() >= "2025-10-26T11:00" && s.as_str() < "2025-10-26T14:00")
        .map(|(_, _, a)| a[battery])
        .sum();
    assert!(charging > 1.0, "battery got {charging} kWh while charging");
    let names: Vec<String> = m
        .files
        .iter()
        .filter(|f| f.producer.is_some())
        .map(|f| f.name.clone())
        .collect();
    golden("enedis_full_2025-10-26", &out, &names);
}

#[test]
fn spring_dst_day_simple_dynamic_is_idempotent_and_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mar");
    let curves = data("curves-2025-03-30");
    let args = day_args("2025-03-30", &curves, &out, &["--policy", "prorata"]);
    let text = run_ok(&args);
    assert!(text.contains("written: 4 file(s), 92 periods"), "{text}");
    let m = manifest(&out);
    assert!(m.fallback_steps.is_empty());
    let prec = Precision {
        units_per_one: 1000,
    };
    let first = std::fs::read(out.join("30000000000001_20250330_20250330.csv")).unwrap();
    // Simple dynamic: the same keys for every producer, on the pooled production.
    for p in ["30000000000002", "30000000000009"] {
        assert_eq!(
            first,
            std::fs::read(out.join(format!("{p}_20250330_20250330.csv"))).unwrap()
        );
    }
    let rep = enedis::validate(std::str::from_utf8(&first).unwrap(), &grid(), prec).unwrap();
    assert_eq!(rep.rows.len(), 92);
    let prod = production("curves-2025-03-30", "2025-03-30");
    let alloc = allocation(&out);
    let mut lost = 0.0;
    for (t, (_, cons, allocated)) in alloc.iter().enumerate() {
        let p: f64 = prod.values().map(|v| v[t]).sum();
        let got = apply_rule(&rep.rows[t].units, prec, p, cons);
        for (g, a) in got.iter().zip(allocated) {
            assert!((g - a).abs() < 1e-5);
        }
        let ideal = p.min(cons.iter().sum());
        let total: f64 = got.iter().sum();
        assert!(total >= ideal - cons.len() as f64 * p / 1000.0 - 1e-9);
        lost += ideal - total;
    }
    assert!(lost >= -1e-9);
    golden(
        "enedis_simple_2025-03-30",
        &out,
        &["30000000000001_20250330_20250330.csv".to_string()],
    );

    // Same inputs again: nothing changes.
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    let text = run_ok(&args);
    assert!(text.contains("unchanged"), "{text}");
    assert_eq!(before, std::fs::read(out.join("manifest.json")).unwrap());
    // Different keys for the same month: refused, the old version stays.
    let other: Vec<&str> = args
        .iter()
        .map(|a| if *a == "prorata" { "static" } else { a })
        .collect();
    let o2 = keys(&other);
    assert!(!o2.status.success());
    assert!(String::from_utf8_lossy(&o2.stderr).contains("new version"));
    assert_eq!(before, std::fs::read(out.join("manifest.json")).unwrap());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn bad_lines_are_all_reported_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("jun");
    let o = keys(&[
        "--from",
        "2025-06-21",
        "--to",
        "2025-06-21",
        "--load-curves",
        data("curves-bad").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    // A negative value (FLAT-1.csv:21) is a suspect point, not a bad line.
    assert!(err.contains("3 bad line(s)"), "{err}");
    assert!(!err.contains("FLAT-1.csv:21"), "{err}");
    for needle in [
        "FLAT-1.csv:11: Horodate `2025-06-21T00:30:00+01:00` has an offset",
        "FLAT-1.csv:31: Horodate `21/06/2025 02:00`",
        "SCHOOL.csv:2: Unite `kWh`",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in\n{err}");
    }
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn spain_hourly_coefficients_sum_to_one_on_a_25_hour_day() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("es");
    let cups = data("cups.txt");
    let curves = data("curves-2025-10-26");
    run_ok(&day_args(
        "2025-10-26",
        &curves,
        &out,
        &[
            "--format",
            "spain",
            "--cups",
            cups.to_str().unwrap(),
            "--cau",
            "ES0031000000000001AB1FA000",
        ],
    ));
    let name = "ES0031000000000001AB1FA000_20251026_20251026.txt";
    let text = std::fs::read_to_string(out.join(name)).unwrap();
    let rep = spain::validate(&text).unwrap();
    assert_eq!(rep.rows.len(), 25);
    assert_eq!(rep.cups.len(), 4);
    // 26 October is day 299; hours are real hours since 1 January, and the
    // spring day had 23: the day is hours 7152..=7176, the repeated one included.
    assert_eq!(rep.rows[0].hour_of_year, 298 * 24 - 1 + 1);
    assert_eq!(rep.rows[24].hour_of_year, 7176);
    for r in &rep.rows {
        assert_eq!(
            r.units.iter().map(|&u| u64::from(u)).sum::<u64>(),
            1_000_000
        );
    }
    let v = keys(&["--validate", out.join(name).to_str().unwrap()]);
    assert!(v.status.success());
    golden("spain_2025-10-26", &out, &[name.to_string()]);
}

#[test]
fn validate_names_file_line_and_column_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let good = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/keys/enedis_full_2025-10-26/30000000000001_20251026_20251026.csv");
    let text = std::fs::read_to_string(&good).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    // Line 60: push the third key over 100 % in total.
    let mut f: Vec<String> = lines[59].split(';').map(String::from).collect();
    f[3] = "99,9".into();
    lines[59] = f.join(";");
    let bad = tmp.path().join("30000000000001_bad.csv");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let bad_es = tmp.path().join("x.txt");
    std::fs::write(
        &bad_es,
        "ES0031000000000001AB;1;0,5\nES0031000000000002CD;1;0,500000\n",
    )
    .unwrap();
    let o = keys(&[
        "--validate",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        bad_es.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    common::assert_contains(
        &stdout,
        &[
            "30000000000001_20251026_20251026.csv: ok",
            "30000000000001_bad.csv: line 60, column 1: keys sum to",
            "x.txt: line 1, column 3",
        ],
    );
}

/// A DSO settlement file made from a run's own allocation, as the DSO would
/// return it if it applied ped's keys to the same data (Wh, end stamps);
/// `shift_wh` moves SCHOOL's self-consumption in its largest step.
fn settlement_from(dir: &Path, curves: &str, day: &str, shift_wh: f64) -> String {
    let g = grid();
    let alloc = allocation(dir);
    let prod = production(curves, day);
    let prms = [
        "20000000000001",
        "20000000000002",
        "20000000000003",
        "30000000000009",
    ];
    let biggest = (0..alloc.len())
        .max_by(|&a, &b| alloc[a].2[0].total_cmp(&alloc[b].2[0]))
        .unwrap();
    let mut s = String::from(
        "\u{feff}Identifiant PRM;Role;Horodate;Energie totale;Energie autoconsommee;Complement ou surplus\n",
    );
    for (t, (stamp, cons, allocated)) in alloc.iter().enumerate() {
        let start = chrono::DateTime::parse_from_rfc3339(stamp)
            .unwrap()
            .with_timezone(&chrono::Utc);
        let end = g.format_local(g.next_period(start));
        for (i, prm) in prms.iter().enumerate() {
            let total = (cons[i] * 1000.0).round();
            let mut own = (allocated[i] * 1000.0).round();
            if i == 0 && t == biggest {
                own += shift_wh;
            }
            s += &format!("{prm};consommateur;{end};{total};{own};{}\n", total - own);
        }
        let p_total: f64 = prod.values().map(|v| v[t]).sum();
        let a_total: f64 = allocated.iter().sum();
        for (prm, v) in &prod {
            let p = v[t];
            let own = if p_total > 0.0 {
                (a_total * p / p_total * 1000.0).round()
            } else {
                0.0
            };
            let total = (p * 1000.0).round();
            s += &format!("{prm};producteur;{end};{total};{own};{}\n", total - own);
        }
    }
    s
}

#[test]
fn reconciliation_reports_the_participant_the_dso_settled_differently() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("oct");
    let curves = data("curves-2025-10-26");
    run_ok(&day_args("2025-10-26", &curves, &out, &[]));
    let same = tmp.path().join("dso-same.csv");
    std::fs::write(
        &same,
        settlement_from(&out, "curves-2025-10-26", "2025-10-26", 0.0),
    )
    .unwrap();
    let text = run_ok(&[
        "--reconcile",
        same.to_str().unwrap(),
        "--intended",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        text.lines().filter(|l| l.ends_with(";ok")).count(),
        5,
        "{text}"
    );

    let off = tmp.path().join("dso-off.csv");
    std::fs::write(
        &off,
        settlement_from(&out, "curves-2025-10-26", "2025-10-26", -2000.0),
    )
    .unwrap();
    let report = tmp.path().join("report.csv");
    let prom = tmp.path().join("ped.prom");
    let o = keys(&[
        "--reconcile",
        off.to_str().unwrap(),
        "--intended",
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--metrics-textfile",
        prom.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let r = std::fs::read_to_string(&report).unwrap();
    let school = r.lines().find(|l| l.starts_with("SCHOOL;")).unwrap();
    // -2 kWh, give or take the DSO's rounding to Wh in each of the 100 steps.
    let f: Vec<&str> = school.split(';').collect();
    let d: f64 = f[6].parse().unwrap();
    assert!((d + 2.0).abs() <= 0.05 && f[7] == "difference", "{r}");
    assert!(r
        .lines()
        .find(|l| l.starts_with("FLAT-1;"))
        .unwrap()
        .ends_with(";ok"));
    // The producers' side was settled from ped's allocation: it matches.
    assert!(
        r.lines()
            .find(|l| l.starts_with("*producers*"))
            .unwrap()
            .ends_with(";ok"),
        "{r}"
    );
    let metrics = std::fs::read_to_string(&prom).unwrap();
    // -2 kWh, give or take the DSO's rounding to Wh per step.
    let school: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "ped_reconciliation_difference_joules{participant=\"SCHOOL\",site=\"keys-test\"} ",
            )
        })
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!((school + 7.2e6).abs() < 0.05 * 3.6e6, "{school}");

    let bad = tmp.path().join("dso-bad.csv");
    std::fs::write(&bad, "Identifiant PRM;Role;Horodate;Energie totale;Energie autoconsommee;Complement ou surplus\n20000000000001;client;2025-10-26T00:15:00+02:00;1;1;0\n").unwrap();
    let o = keys(&[
        "--reconcile",
        bad.to_str().unwrap(),
        "--intended",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("dso-bad.csv:2: Role `client`"));
}

#[test]
fn statements_per_participant_add_up_to_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("oct");
    let curves = data("curves-2025-10-26");
    run_ok(&optimised_day_args(&curves, &out, &[]));
    let st = tmp.path().join("st");
    let text = run_ok(&[
        "--statements",
        out.to_str().unwrap(),
        "--out",
        st.to_str().unwrap(),
    ]);
    assert!(text.contains("8 statement file(s)"), "{text}");
    let m = manifest(&out);
    let mut share = 0.0;
    for p in &m.participants {
        let csv = std::fs::read_to_string(st.join(format!("{}.csv", p.id))).unwrap();
        let field = |k: &str| -> f64 {
            csv.lines()
                .find_map(|l| l.strip_prefix(&format!("{k};")))
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!((field("allocated_local_kwh") - p.allocated_kwh).abs() < 1e-3);
        assert!((field("consumption_kwh") - p.consumption_kwh).abs() < 1e-3);
        share += field("share_of_local_energy");
        // Optimised keys serve FLAT-1/FLAT-2 (priority 1) at least as well as pro rata.
        if p.id.starts_with("FLAT") {
            assert!(field("savings_vs_prorata_eur") >= -0.01, "{csv}");
        }
        let html = std::fs::read_to_string(st.join(format!("{}.html", p.id))).unwrap();
        assert!(html.contains("<svg") && html.contains(&p.prm), "{html}");
    }
    assert!((share - 1.0).abs() < 1e-4);
}

/// `ped keys` arguments for the optimised keys of 2025-10-26.
fn optimised_day_args<'a>(curves: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = day_args("2025-10-26", curves, out, &["--policy", "optimised"]);
    args.extend_from_slice(extra);
    args
}

#[test]
fn optimised_keys_use_the_month_solver_and_fall_back_per_step_when_told() {
    let tmp = tempfile::tempdir().unwrap();
    let curves = data("curves-2025-10-26");
    let run = |name: &str, extra: &[&str]| -> (PathBuf, String) {
        let out = tmp.path().join(name);
        let text = run_ok(&optimised_day_args(&curves, &out, extra));
        (out, text)
    };
    let (month, text) = run("month", &[]);
    let m = manifest(&month);
    assert_eq!(m.allocator, "optimised_month");
    let note = m.month_solver.as_ref().expect("month solver note");
    assert!(note.fallback.is_none(), "{note:?}");
    assert!(
        ["greedy", "flow", "sifted_lp", "lp"].contains(&note.method.as_str()),
        "{note:?}"
    );
    assert!(
        text.contains(&format!("month solver: {}", note.method)),
        "{text}"
    );

    // An operation 40 times this one, whose month needs the network flow
    // (its tariffs are flat; greedy would answer at once). The overrun is
    // made by construction: PED_TEST_HOLD_MONTH_SOLVER (debug builds only)
    // holds the solver until its 1 ms budget has run out, whatever the
    // machine's speed.
    let big = scaled_operation(&tmp.path().join("big"), 40);
    let curves_big = big.join("curves");
    let run_big = |out: &Path, extra: &[&str], env: &[(&str, &str)]| -> Output {
        keys_with_site_env(
            &big.join("site.toml"),
            &optimised_day_args(&curves_big, out, extra),
            env,
        )
    };
    let full = tmp.path().join("big-full");
    let out = run_big(&full, &[], &[]);
    assert!(out.status.success(), "{out:?}");
    let note = manifest(&full).month_solver.expect("month solver note");
    assert_eq!(note.method, "flow", "{note:?}");
    let prom = tmp.path().join("keys.prom");
    let fell = tmp.path().join("fallback");
    let out = run_big(
        &fell,
        &[
            "--month-budget-ms",
            "1",
            "--metrics-textfile",
            prom.to_str().unwrap(),
        ],
        &[("PED_TEST_HOLD_MONTH_SOLVER", "1")],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let f = manifest(&fell);
    let note = f.month_solver.as_ref().expect("month solver note");
    assert_eq!(note.method, "per_step");
    assert!(
        note.fallback
            .as_deref()
            .is_some_and(|w| w.contains("budget of 1 ms")),
        "{note:?}"
    );
    assert!(text.contains("month solver: not used"), "{text}");
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains(
            "ped_period_fallbacks_total{reason=\"month_solver\",site=\"keys-test\"} 100\n"
        ),
        "{metrics}"
    );
    // The missing point is estimated in both runs; no step falls back.
    assert!(m.fallback_steps.is_empty() && f.fallback_steps.is_empty());
    assert_eq!((m.estimated_steps.len(), f.estimated_steps.len()), (1, 1));

    // Turned off: per-step keys, no month note, as before the month solver.
    let (off, _) = run("off", &["--month-budget-ms", "0"]);
    let o = manifest(&off);
    assert_eq!(o.allocator, "optimised");
    assert!(o.month_solver.is_none());
}

#[test]
fn validate_decides_by_content_and_skips_the_files_beside_the_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let curves = data("curves-2025-10-26");
    run_ok(&day_args("2025-10-26", &curves, &out, &[]));
    // A Spanish file whose name says CSV, and a stray file that is neither.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/keys/spain_2025-10-26");
    let es = std::fs::read_dir(&golden)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "txt"))
        .unwrap();
    let es_csv = tmp.path().join("coeficientes.csv");
    std::fs::copy(&es, &es_csv).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.push(es_csv);
    let args: Vec<&str> = std::iter::once("--validate")
        .chain(files.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let o = keys(&args);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    common::assert_contains(
        &stdout,
        &[
            "allocation.csv: skipped (ped's per-step allocation",
            "manifest.json: skipped (a JSON document",
            "coeficientes.csv: ok (spain: ",
        ],
    );
    assert_eq!(stdout.matches(": ok (enedis_iso: ").count(), 3, "{stdout}");

    // Content that names no format is checked as its extension says, and fails.
    let stray = tmp.path().join("notes.csv");
    std::fs::write(&stray, "hello;world\n").unwrap();
    let o = keys(&["--validate", stray.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("notes.csv: line 1"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn key_files_are_archived_in_the_ledger_as_versions_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = tmp.path().join("ledger.sqlite");
    let l = ledger.to_str().unwrap();
    let curves = data("curves-2025-10-26");
    let run = |name: &str, policy: &str| -> String {
        let out = tmp.path().join(name);
        run_ok(&day_args(
            "2025-10-26",
            &curves,
            &out,
            &["--policy", policy, "--ledger", l],
        ))
    };
    let text = run("a", "prorata");
    assert!(
        text.contains("3 new key-file version(s), 0 unchanged"),
        "{text}"
    );
    // The same month again, into the same directory and into another one:
    // nothing new in the archive.
    let text = run("a", "prorata");
    assert!(
        text.contains("0 new key-file version(s), 3 unchanged"),
        "{text}"
    );
    let text = run("a-again", "prorata");
    assert!(
        text.contains("0 new key-file version(s), 3 unchanged"),
        "{text}"
    );
    // A changed month (another policy): new versions beside the old ones.
    // Static keys, not optimised ones: with flat tariffs and the pro-rata
    // guarantee the optimised month is pro rata, to the key.
    let text = run("b", "static");
    assert!(text.contains("new key-file version(s)"), "{text}");
    let first = manifest(&tmp.path().join("a"));
    let second = manifest(&tmp.path().join("b"));
    let db = rusqlite::Connection::open(&ledger).unwrap();
    for (f1, f2) in first.files.iter().zip(&second.files) {
        if f1.name == "allocation.csv" {
            continue;
        }
        let rows: Vec<(i64, String, Vec<u8>, String, String)> = db
            .prepare("SELECT version, sha256, content, inputs, policy FROM key_files WHERE name = ?1 ORDER BY version")
            .unwrap()
            .query_map([&f1.name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let want = if f1.sha256 == f2.sha256 { 1 } else { 2 };
        assert_eq!(rows.len(), want, "{}", f1.name);
        assert_eq!(rows[0].0, 1);
        assert_eq!(rows[0].1, f1.sha256);
        assert_eq!(
            sha256_hex(&rows[0].2),
            f1.sha256,
            "stored content is the file"
        );
        assert!(rows[0].3.contains(&first.inputs[0].sha256), "{}", rows[0].3);
        assert!(
            rows[0].4.contains("\"policy\":\"prorata\""),
            "{}",
            rows[0].4
        );
        if want == 2 {
            assert_eq!(rows[1].1, f2.sha256);
            assert!(rows[1].4.contains("\"policy\":\"static\""), "{}", rows[1].4);
        }
    }
    assert!(
        db.query_row("SELECT count(*) FROM key_files", [], |r| r.get::<_, i64>(0))
            .unwrap()
            > 3,
        "the static month changed no file"
    );
    // A stored version cannot be rewritten in place.
    assert!(db
        .execute("UPDATE key_files SET content = x'00' WHERE version = 1", [])
        .is_err());
    drop(db);
    let v = common::ped()
        .args(["audit", "verify", "--ledger", l])
        .output()
        .unwrap();
    assert!(
        v.status.success() && String::from_utf8_lossy(&v.stdout).contains("chain intact"),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

/// Enedis load curves of the fixture operation for the local days
/// 2025-06-`days` (summer time, +02:00): 15-minute points, PV small enough
/// that the pooled production rarely covers the consumers, so per-step
/// greed (households first, the school after) leaves the school below its
/// pro-rata share.
fn june_curves(dir: &Path, days: std::ops::RangeInclusive<u32>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let head = "\u{feff}Identifiant PRM;Type de donnees;Date de debut;Date de fin;Grandeur physique;Grandeur metier;Etape metier;Unite;Pas en minutes\n";
    let pv = |kwp: f64, h: f64| {
        if (7.0..=19.0).contains(&h) {
            kwp * 1000.0 * 0.7 * (std::f64::consts::PI * (h - 7.0) / 12.0).sin().powi(2)
        } else {
            0.0
        }
    };
    let load = |kw: f64, h: f64| {
        1000.0
            * kw
            * (0.6
                + 0.5 * (-(h - 8.0).powi(2) / 2.0).exp()
                + 0.7 * (-(h - 19.5).powi(2) / 3.0).exp())
    };
    type Shape<'a> = Box<dyn Fn(u32, f64) -> f64 + 'a>;
    let curves: Vec<(&str, &str, &str, Shape)> = vec![
        (
            "PV-1",
            "30000000000001",
            "Production",
            Box::new(move |d, h| pv(30.0 + 4.0 * d as f64, h)),
        ),
        (
            "PV-2",
            "30000000000002",
            "Production",
            Box::new(move |_, h| pv(10.0, h)),
        ),
        (
            "BAT-1-prod",
            "30000000000009",
            "Production",
            Box::new(|_, _| 0.0),
        ),
        (
            "BAT-1-cons",
            "30000000000009",
            "Consommation",
            Box::new(|_, _| 0.0),
        ),
        (
            "SCHOOL",
            "20000000000001",
            "Consommation",
            Box::new(move |_, h| load(40.0, h)),
        ),
        (
            "FLAT-1",
            "20000000000002",
            "Consommation",
            Box::new(move |_, h| load(6.0, h)),
        ),
        (
            "FLAT-2",
            "20000000000003",
            "Consommation",
            Box::new(move |_, h| load(5.0, h)),
        ),
    ];
    let (first, last) = (*days.start(), *days.end());
    for (name, prm, quantity, shape) in &curves {
        let mut text = format!(
            "{head}{prm};Courbe de charge;{first:02}/06/2025;{:02}/06/2025;Energie active;{quantity};Comptage Brut;W;\n\nHorodate;Valeur\n",
            last + 1
        );
        for d in days.clone() {
            for k in 0..96u32 {
                let h = (k as f64 + 0.5) / 4.0;
                let end = chrono::NaiveDate::from_ymd_opt(2025, 6, d)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
                    + chrono::Duration::minutes(15 * (k as i64 + 1));
                text.push_str(&format!(
                    "{}+02:00;{}\n",
                    end.format("%Y-%m-%dT%H:%M:%S"),
                    shape(d, h).round()
                ));
            }
        }
        std::fs::write(dir.join(format!("{name}.csv")), text).unwrap();
    }
    dir.to_path_buf()
}

/// Nobody ends the month more than a rounding below its pro-rata value,
/// or the month solver reported that participant's shortfall.
fn assert_month_fair_or_reported(m: &Manifest) {
    let note = m.month_solver.as_ref().expect("month solver note");
    for p in &m
        .month_to_date
        .as_ref()
        .expect("month figures")
        .participants
    {
        let short = p.pro_rata_value_eur - p.value_eur;
        if short <= 0.01 {
            continue;
        }
        let reported = note
            .violations
            .iter()
            .find(|v| v.rule == "pro_rata" && v.participant == p.id)
            .map(|v| v.amount);
        assert!(
            reported.is_some_and(|r| (r - short).abs() < 0.05),
            "{} is {short} € below pro rata over the month, reported {reported:?} ({:?})",
            p.id,
            note.violations
        );
    }
}

fn participant<'a>(m: &'a Manifest, id: &str) -> &'a ped::keys::ParticipantTotal {
    m.participants.iter().find(|p| p.id == id).unwrap()
}

#[test]
fn a_run_from_mid_month_carries_the_month_from_the_ledger_or_the_load_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let all = june_curves(&tmp.path().join("curves-1-4"), 1..=4);
    let late = june_curves(&tmp.path().join("curves-3-4"), 3..=4);
    let ledger = tmp.path().join("ledger.sqlite");
    // The school in the households' tier: the month's pro-rata rule is then
    // not outranked by a tier bonus (as the fixture's tier 2 would be).
    let site = tmp.path().join("site.toml");
    let toml = std::fs::read_to_string(data("site.toml")).unwrap();
    std::fs::write(&site, toml.replacen("priority = 2", "priority = 1", 1)).unwrap();
    let run = |name: &str, from: &str, curves: &Path, extra: &[&str]| -> (Manifest, String) {
        let out = tmp.path().join(name);
        let mut args = vec![
            "--from",
            from,
            "--to",
            if from == "2025-06-01" {
                "2025-06-02"
            } else {
                "2025-06-04"
            },
            "--load-curves",
            curves.to_str().unwrap(),
            "--policy",
            "optimised",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let text = keys_ok(&site, &args);
        (manifest(&out), text)
    };
    let l = ledger.to_str().unwrap();
    // The month's first two days went out as per-step (greedy) keys and were
    // archived: the school ends them below its pro-rata value.
    let (first, _) = run(
        "1-2",
        "2025-06-01",
        &all,
        &["--month-budget-ms", "0", "--ledger", l],
    );
    assert!(first.month_start.is_none());
    let before = first
        .month_to_date
        .clone()
        .expect("figures of a run from the 1st");
    assert_eq!(before.through.to_string(), "2025-06-02");
    assert!((before.production_kwh - first.production_kwh).abs() < 1e-9);
    let school = before
        .participants
        .iter()
        .find(|p| p.id == "SCHOOL")
        .unwrap();
    let behind = school.pro_rata_value_eur - school.value_eur;
    assert!(behind > 1.0, "greed left the school {behind} € behind");

    // Days 3-4 with the ledger: the only place the first days are (the
    // curves hold days 3-4 only).
    let (led, text) = run("ledger", "2025-06-03", &late, &["--ledger", l]);
    let st = led.month_start.as_ref().expect("month start");
    assert_eq!(st.source, "ledger", "{st:?}");
    assert!((st.production_kwh - before.production_kwh).abs() < 1e-9);
    assert!(text.contains("month to date (ledger)"), "{text}");
    let end = led.month_to_date.as_ref().expect("month figures");
    assert!((end.production_kwh - before.production_kwh - led.production_kwh).abs() < 1e-6);
    // The month solver made most of the school's shortfall good over days
    // 3-4; what the month's rules could not give back is reported.
    let s = end.participants.iter().find(|p| p.id == "SCHOOL").unwrap();
    let left = s.pro_rata_value_eur - s.value_eur;
    assert!(left < 0.5 * behind, "{left} € still behind of {behind} €");
    assert_month_fair_or_reported(&led);
    // Without the first days: the month's fairness starts at --from, and
    // the school gets only days 3-4's pro-rata value.
    let (none, text) = run("none", "2025-06-03", &late, &[]);
    let st = none.month_start.as_ref().expect("month start");
    assert_eq!(st.source, "none", "{st:?}");
    assert!(st.note.contains("starts at 2025-06-03"), "{st:?}");
    assert!(
        text.contains("month to date (none)") && text.contains("starts at 2025-06-03"),
        "{text}"
    );
    let extra_kwh =
        participant(&led, "SCHOOL").allocated_kwh - participant(&none, "SCHOOL").allocated_kwh;
    // The shortfall is worth 0.10 €/kWh to the school; over half of it was
    // made good (above).
    assert!(
        extra_kwh > 0.5 * behind / 0.10,
        "school got {extra_kwh} kWh more for a {behind} € shortfall"
    );

    // Load curves that cover the month's first days: those days computed
    // with the same policy. Archived per-step keys above differ from what
    // the month solver gives those days, so this start is its own month.
    let (curv, text) = run("curves", "2025-06-03", &all, &[]);
    let st = curv.month_start.as_ref().expect("month start");
    assert_eq!(st.source, "load_curves", "{st:?}");
    assert!((st.production_kwh - before.production_kwh).abs() < 1e-6);
    assert!(text.contains("month to date (load_curves)"), "{text}");
    // The month solver over days 1-4 in one run and days 1-2 then 3-4 both
    // end the month with nobody below pro rata.
    let whole = {
        let out = tmp.path().join("whole");
        let o = keys_with_site(
            &site,
            &[
                "--from",
                "2025-06-01",
                "--to",
                "2025-06-04",
                "--load-curves",
                all.to_str().unwrap(),
                "--policy",
                "optimised",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{o:?}");
        manifest(&out)
    };
    assert_month_fair_or_reported(&curv);
    assert_month_fair_or_reported(&whole);
    // Every key file of every run passes the validator.
    for name in ["1-2", "ledger", "none", "curves", "whole"] {
        let dir = tmp.path().join(name);
        let files: Vec<String> = manifest(&dir)
            .files
            .iter()
            .filter(|f| f.producer.is_some())
            .map(|f| dir.join(&f.name).to_string_lossy().into_owned())
            .collect();
        let mut args = vec!["--validate"];
        args.extend(files.iter().map(String::as_str));
        let o = keys_with_site(&site, &args);
        assert!(o.status.success(), "{o:?}");
    }
}

/// The fixture's 2025-10-26 in the DSO sample's layout (the default), with a
/// meter reset and an absurd value in SCHOOL's curve and FLAT-1 out of the
/// operation since the day before.
fn operation_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let curves = dir.join("curves");
    std::fs::create_dir_all(&curves).unwrap();
    for e in std::fs::read_dir(data("curves-2025-10-26")).unwrap() {
        let p = e.unwrap().path();
        let mut text = std::fs::read_to_string(&p).unwrap();
        if p.ends_with("SCHOOL.csv") {
            text = text
                .replace(
                    "2025-10-26T14:20:00+01:00;24003",
                    "2025-10-26T14:20:00+01:00;-5939308",
                )
                .replace(
                    "2025-10-26T14:40:00+01:00;24009",
                    "2025-10-26T14:40:00+01:00;1e300",
                );
        }
        std::fs::write(curves.join(p.file_name().unwrap()), text).unwrap();
    }
    let site = std::fs::read_to_string(data("site.toml"))
        .unwrap()
        .replace("layout = \"enedis_iso\"\n", "")
        .replace(
            "[[participants]]\nid = \"FLAT-1\"\n",
            "[[participants]]\nid = \"FLAT-1\"\nexit = \"2025-10-25\"\n",
        );
    assert!(site.contains("exit = \"2025-10-25\""));
    let path = dir.join("site.toml");
    std::fs::write(&path, site).unwrap();
    (path, curves)
}

#[test]
fn operation_layout_with_suspect_values_and_a_member_who_left() {
    let tmp = tempfile::tempdir().unwrap();
    let (site, curves) = operation_fixture(tmp.path());
    let out = tmp.path().join("oct");
    let text = keys_ok(
        &site,
        &day_args("2025-10-26", &curves, &out, &["--policy", "prorata"]),
    );
    assert!(
        text.contains("2 suspect value(s) treated as missing"),
        "{text}"
    );
    let m = manifest(&out);
    let names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["ACC00000042_15_26102025_26102025.txt", "allocation.csv"]
    );
    assert_eq!(m.layout.as_deref(), Some("enedis"));
    assert_eq!(m.operation_id.as_deref(), Some("ACC00000042"));
    // The reset and the absurd value, each with its file and line.
    assert_eq!(m.suspect_values.count, 2, "{:?}", m.suspect_values);
    assert!(m.suspect_values.first[0].contains("SCHOOL.csv:96: Valeur `-5939308` W: negative"));
    assert!(m.suspect_values.first[1].contains("SCHOOL.csv:98: Valeur `1e300` W: above"));
    // The quarter-hours their 10-minute points overlap (14:10-14:20 and
    // 14:30-14:40) are estimated for SCHOOL, not left at 0.
    let school: Vec<&str> = m
        .estimated_steps
        .iter()
        .filter(|s| s.estimated.iter().any(|e| e == "SCHOOL"))
        .map(|s| s.period.as_str())
        .collect();
    assert_eq!(
        school,
        [
            "2025-10-26T14:00:00+01:00",
            "2025-10-26T14:15:00+01:00",
            "2025-10-26T14:30:00+01:00"
        ]
    );
    assert!(m.fallback_steps.is_empty(), "{:?}", m.fallback_steps);
    // FLAT-1 left on the 25th: no column, not in the manifest, not missing.
    assert!(m.participants.iter().all(|p| p.id != "FLAT-1"));
    let key = std::fs::read_to_string(out.join(names[0])).unwrap();
    assert!(key.starts_with("Horodate;20000000000001;20000000000003;30000000000009\n"));
    assert!(key.contains("\n26/10/2025 02:00;") && !key.ends_with('\n'));
    let rep = enedis::validate_with(
        &enedis::Layout::ENEDIS,
        &key,
        &grid(),
        Precision {
            units_per_one: 1000,
        },
    )
    .unwrap();
    assert_eq!(rep.rows.len(), 100);
    let school_key = |stamp: &str| {
        let line = key.lines().find(|l| l.starts_with(stamp)).unwrap();
        line.split(';').nth(1).unwrap().to_string()
    };
    assert_ne!(school_key("26/10/2025 14:15"), "0,0");
    // --validate reads it as the operation layout.
    let o = keys_with_site(&site, &["--validate", out.join(names[0]).to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains(": ok (enedis: 3 consumer(s), 100 step(s)"),
        "{stdout}"
    );

    // --strict refuses the month, naming both lines, and writes nothing.
    let strict = tmp.path().join("strict");
    let o = keys_with_site(
        &site,
        &day_args(
            "2025-10-26",
            &curves,
            &strict,
            &["--policy", "prorata", "--strict"],
        ),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("2 suspect value(s)")
            && err.contains("SCHOOL.csv:96")
            && err.contains("SCHOOL.csv:98"),
        "{err}"
    );
    assert!(!strict.exists());

    // The operation layout without an operation id: the key and the fix.
    let no_id = tmp.path().join("no-id.toml");
    std::fs::write(
        &no_id,
        std::fs::read_to_string(&site)
            .unwrap()
            .replace("operation_id = \"ACC00000042\"\n", ""),
    )
    .unwrap();
    let o = keys_with_site(
        &no_id,
        &day_args("2025-10-26", &curves, &tmp.path().join("x"), &[]),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("keys.operation_id") && err.contains("no-id.toml"),
        "{err}"
    );
}

/// A slice of a realistic operation (tests/data/keys/district-2026: 22
/// participants of district-2026 over the spring DST weekend, gaps across the
/// skipped hour, a member who joins on the 29th and one who leaves after the
/// 28th) with an afternoon-long gap added to H-0001's curve. The DSO's rule
/// applied to ped's key file with the clean data (truth/) gives every other
/// member its exact pro-rata share within max(0.1 kWh, 0.5 %), and H-0001 a
/// key in its gap: it misses only the estimate's error (its Sunday stands in
/// for its Saturday afternoon), not the gap's whole share as with key 0.
#[test]
fn a_realistic_slice_with_gaps_entry_and_exit_keeps_every_member_at_pro_rata() {
    use ped::dso::loadcurve::{self, Quantity};
    let slice = data("district-2026");
    let tmp = tempfile::tempdir().unwrap();
    let curves = tmp.path().join("curves");
    std::fs::create_dir_all(&curves).unwrap();
    for e in std::fs::read_dir(slice.join("curves")).unwrap() {
        let p = e.unwrap().path();
        let mut text = std::fs::read_to_string(&p).unwrap();
        if p.ends_with("H-0001-consumption.csv") {
            // 10:30 .. 17:00 local on the 28th: 13 points missing.
            let mut gap = 0;
            text = text
                .lines()
                .map(|l| {
                    let hour = l.get(11..16).unwrap_or("");
                    if l.starts_with("2026-03-28T") && ("10:30".."17:01").contains(&hour) {
                        gap += 1;
                        format!("{};", &l[..l.find(';').unwrap()])
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n";
            assert_eq!(gap, 14);
        }
        std::fs::write(curves.join(p.file_name().unwrap()), text).unwrap();
    }
    let out = tmp.path().join("keys");
    let site = slice.join("site.toml");
    let o = keys_with_site(
        &site,
        &[
            "--from",
            "2026-03-28",
            "--to",
            "2026-03-29",
            "--load-curves",
            curves.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--policy",
            "prorata",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(&out);
    assert!(m.fallback_steps.is_empty(), "{:?}", m.fallback_steps);
    let est = |id: &str| {
        m.participants
            .iter()
            .find(|p| p.id == id)
            .unwrap()
            .estimated_steps
    };
    assert_eq!((est("H-0001"), est("H-0097"), est("H-0450")), (14, 4, 4));
    let g = Grid::new(30, chrono_tz::Europe::Paris).unwrap();
    let key = std::fs::read_to_string(out.join("ACC00002026_30_28032026_29032026.txt")).unwrap();
    let rep = enedis::validate_with(
        &enedis::Layout::ENEDIS,
        &key,
        &g,
        Precision {
            units_per_one: 1000,
        },
    )
    .unwrap();
    assert_eq!(rep.rows.len(), 48 + 46);
    let periods: Vec<_> = rep.rows.iter().map(|r| r.start).collect();
    // The clean data, as the DSO settles it.
    let truth = loadcurve::read_dir(&slice.join("truth"), &g).unwrap();
    let pool: Vec<f64> = truth
        .iter()
        .filter(|c| c.quantity == Quantity::Production)
        .map(|c| loadcurve::settle(c, &g, &periods).kwh)
        .fold(vec![0.0; periods.len()], |a, b| {
            a.iter().zip(&b).map(|(x, y)| x + y).collect()
        });
    let cons: BTreeMap<String, Vec<f64>> = truth
        .iter()
        .filter(|c| c.quantity == Quantity::Consumption)
        .map(|c| (c.prm.to_string(), loadcurve::settle(c, &g, &periods).kwh))
        .collect();
    let ids: BTreeMap<String, String> = m
        .participants
        .iter()
        .map(|p| (p.prm.clone(), p.id.clone()))
        .collect();
    let day = |t: usize| g.local_day(periods[t]).to_string();
    let member = |id: &str, t: usize| match id {
        "H-0015" => day(t) == "2026-03-28",
        "H-0016" => day(t) == "2026-03-29",
        _ => true,
    };
    let mut got: BTreeMap<&str, f64> = BTreeMap::new();
    let mut pro: BTreeMap<&str, f64> = BTreeMap::new();
    let mut gap_pro = 0.0;
    for (t, row) in rep.rows.iter().enumerate() {
        let members: Vec<(usize, &str)> = rep
            .consumers
            .iter()
            .enumerate()
            .map(|(i, prm)| (i, ids[prm.as_str()].as_str()))
            .filter(|(_, id)| member(id, t))
            .collect();
        let total: f64 = members
            .iter()
            .map(|(i, _)| cons[rep.consumers[*i].as_str()][t])
            .sum();
        let served = pool[t].min(total);
        for (i, id) in &rep
            .consumers
            .iter()
            .enumerate()
            .map(|(i, p)| (i, ids[p.as_str()].as_str()))
            .collect::<Vec<_>>()
        {
            if !member(id, t) {
                assert_eq!(row.units[*i], 0, "{id} is not a member on {}", day(t));
            }
        }
        for (i, id) in members {
            let c = cons[rep.consumers[i].as_str()][t];
            let share = if total > 0.0 { c / total * served } else { 0.0 };
            *got.entry(id).or_default() += (f64::from(row.units[i]) / 1000.0 * pool[t]).min(c);
            *pro.entry(id).or_default() += share;
            let local = periods[t]
                .with_timezone(&g.tz())
                .format("%d %H:%M")
                .to_string();
            if id == "H-0001" && ("28 10:00".."28 16:31").contains(&local.as_str()) {
                gap_pro += share;
                assert!(
                    pool[t] == 0.0 || row.units[i] > 0,
                    "H-0001 at {local}: key 0"
                );
            }
        }
    }
    assert_eq!(got.len(), 22);
    for (id, p) in pro.iter().filter(|(id, _)| **id != "H-0001") {
        let miss = p - got[id];
        assert!(
            miss <= (0.005 * p).max(0.1),
            "{id}: {miss:.3} kWh short of {p:.3} kWh pro rata"
        );
    }
    assert!(pro["H-0016"] > 0.1 && pro["H-0015"] > 0.1);
    let miss = pro["H-0001"] - got["H-0001"];
    assert!(gap_pro > 1.0, "the gap's pro-rata share: {gap_pro:.3} kWh");
    assert!(
        miss < 0.75 * gap_pro,
        "H-0001: {miss:.3} kWh short, the gap's share is {gap_pro:.3} kWh"
    );
}

/// Absurd magnitudes and floods of bad lines: a value of 1e306 W is a suspect
/// point named by file and line (not a valid key, not an error without a
/// place), and 200,000 bad lines are reported as the first few in full and a
/// count, in a few kilobytes of stderr.
#[test]
fn absurd_values_and_floods_of_bad_lines_are_bounded_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let curves = tmp.path().join("curves");
    std::fs::create_dir_all(&curves).unwrap();
    for e in std::fs::read_dir(data("curves-2025-10-26")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace(
                "2025-10-26T14:20:00+01:00;24003",
                "2025-10-26T14:20:00+01:00;1e306",
            )
            .replace(
                "2025-10-26T14:40:00+01:00;24009",
                "2025-10-26T14:40:00+01:00;1e300",
            );
        std::fs::write(curves.join(p.file_name().unwrap()), text).unwrap();
    }
    let out = tmp.path().join("ok");
    run_ok(&day_args(
        "2025-10-26",
        &curves,
        &out,
        &["--policy", "prorata"],
    ));
    let m = manifest(&out);
    assert_eq!(m.suspect_values.count, 2, "{:?}", m.suspect_values);
    assert!(m.suspect_values.first[0].contains("SCHOOL.csv:96: Valeur `1e306` W: above"));
    assert!(m.suspect_values.first[1].contains("SCHOOL.csv:98: Valeur `1e300` W: above"));
    assert!(m.production_kwh.is_finite() && m.self_consumed_kwh < 1e6);

    let flat = curves.join("FLAT-1.csv");
    let mut text = std::fs::read_to_string(&flat).unwrap();
    let junk = format!("{};1\n", "x".repeat(200));
    for _ in 0..200_000 {
        text.push_str(&junk);
    }
    std::fs::write(&flat, text).unwrap();
    let o = keys(&day_args(
        "2025-10-26",
        &curves,
        &tmp.path().join("flood"),
        &["--policy", "prorata"],
    ));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("200000 bad line(s)"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(
        err.contains("… and 199980 more line(s)"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(err.contains("FLAT-1.csv:305: Horodate `xxxx"));
    assert!(o.stderr.len() < 8_000, "{} bytes of stderr", o.stderr.len());
}

/// The fixture's site as two operations: PV-1 for the school, PV-2 and the
/// battery for the flats (and the battery's own charging).
fn two_operations_site(dir: &Path) -> PathBuf {
    let site = std::fs::read_to_string(data("site.toml"))
        .unwrap()
        .replace("layout = \"enedis_iso\"\n", "")
        .replace("operation_id = \"ACC00000042\"\n", "");
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        format!(
            "{site}\n[[operations]]\nid = \"ACC00000051\"\nname = \"Groupe scolaire\"\nproducers = [\"PV-1\"]\nparticipants = [\"SCHOOL\"]\n\n[[operations]]\nid = \"ACC00000052\"\nproducers = [\"PV-2\", \"BAT-1\"]\nparticipants = [\"FLAT-1\", \"FLAT-2\", \"BAT-1\"]\n"
        ),
    )
    .unwrap();
    path
}

/// A key file of the DSO's sample layout → its header's PRMs and each row's
/// keys as ratios.
fn sample_layout_keys(text: &str) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(';')
        .skip(1)
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| {
            l.split(';')
                .skip(1)
                .map(|v| v.replace(',', ".").parse::<f64>().unwrap() / 100.0)
                .collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn each_operation_gets_its_own_keys_from_its_own_producers() {
    use ped::dso::loadcurve::{self, Quantity};
    let tmp = tempfile::tempdir().unwrap();
    let site = two_operations_site(tmp.path());
    let curves = data("curves-2025-10-26");
    let out = tmp.path().join("oct");
    let text = keys_ok(
        &site,
        &day_args("2025-10-26", &curves, &out, &["--policy", "prorata"]),
    );
    // The other operation's curves are in the same export: no warning.
    assert!(!text.contains("neither a producer nor a member"), "{text}");

    // The DSO's rule on each file with the curves: energy per step and PRM.
    let g = grid();
    let periods = g
        .periods_of_local_day(chrono::NaiveDate::from_ymd_opt(2025, 10, 26).unwrap())
        .unwrap();
    let mut kwh: BTreeMap<(String, Quantity), Vec<f64>> = BTreeMap::new();
    for c in loadcurve::read_dir(&curves, &g).unwrap() {
        let e = loadcurve::settle(&c, &g, &periods).kwh;
        kwh.insert((c.prm.to_string(), c.quantity), e);
    }
    let energy = |prm: &str, q: Quantity| kwh[&(prm.to_string(), q)].clone();
    for (op, producers, members) in [
        (
            "ACC00000051",
            vec!["30000000000001"],
            vec!["20000000000001"],
        ),
        (
            "ACC00000052",
            vec!["30000000000002", "30000000000009"],
            vec!["20000000000002", "20000000000003", "30000000000009"],
        ),
    ] {
        let dir = out.join(op);
        let m = manifest(&dir);
        assert_eq!(m.operation_id.as_deref(), Some(op));
        let name = format!("{op}_15_26102025_26102025.txt");
        assert!(m.files.iter().any(|f| f.name == name), "{:?}", m.files);
        let (header, rows) = sample_layout_keys(&std::fs::read_to_string(dir.join(&name)).unwrap());
        assert_eq!(header, members, "{op}");
        assert_eq!(rows.len(), 100, "{op}");
        let (mut served, mut max) = (0.0, 0.0);
        for (t, keys) in rows.iter().enumerate() {
            assert!(keys.iter().sum::<f64>() <= 1.0 + 1e-9, "{op} step {t}");
            let p: f64 = producers
                .iter()
                .map(|prm| energy(prm, Quantity::Production)[t])
                .sum();
            let c: Vec<f64> = members
                .iter()
                .map(|prm| energy(prm, Quantity::Consumption)[t])
                .collect();
            served += keys
                .iter()
                .zip(&c)
                .map(|(k, c)| (k * p).min(*c))
                .sum::<f64>();
            max += p.min(c.iter().sum());
        }
        // Each operation places its own plants' energy, to its own members,
        // as fully as the keys' two decimals allow.
        assert!(max > 1.0, "{op}: nothing to share");
        assert!(
            served <= max + 1e-9 && served >= 0.995 * max,
            "{op}: {served} of {max}"
        );
    }

    // One operation by its id, into --out itself; an unknown id names the known ones.
    let one = tmp.path().join("one");
    let o = keys_with_site(
        &site,
        &day_args("2025-10-26", &curves, &one, &["--operation", "ACC00000052"]),
    );
    assert!(o.status.success(), "{o:?}");
    assert!(one.join("ACC00000052_15_26102025_26102025.txt").exists());
    let o = keys_with_site(
        &site,
        &day_args(
            "2025-10-26",
            &curves,
            &tmp.path().join("x"),
            &["--operation", "ACC00000099"],
        ),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("ACC00000051, ACC00000052"), "{err}");
}
