//! A run from mid-month carrying the month's figures from the ledger or from the load curves.

use super::*;

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
