//! The DSO's returned settlement compared with ped's keys, and the participants' statements.

use super::*;

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
