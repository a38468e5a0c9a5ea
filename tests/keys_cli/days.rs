//! One day of keys: the DST days with a battery and a missing point, idempotent runs, bad lines, the Spanish hourly file and `--validate`'s messages.

use super::*;

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
