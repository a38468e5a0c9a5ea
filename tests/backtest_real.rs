//! `ped backtest` on data as a real operation delivers it: a small data set
//! written by the test (three households, one plant, ten days of 30-minute
//! steps) with an empty cell, a meter reset and a participant who joins in
//! the middle of the replayed range. The run is not refused; the summary
//! counts what was missing, suspect and estimated, nobody has a key outside
//! membership, physical export and unallocated energy are apart, and the
//! worse-off count follows exact pro rata.

use std::path::Path;

use chrono::{Duration, NaiveDate, TimeZone, Utc};

mod common;

const DAYS: i64 = 10;
/// The replayed range: local days 12 to 14 March 2026 (UTC+1).
const FROM: &str = "2026-03-12";
const TO: &str = "2026-03-14";
const ENTRY: &str = "2026-03-13";

/// PV of a step from its local hour: a flat-topped winter day.
fn pv_kwh(local_hour: f64) -> f64 {
    if (10.0..14.0).contains(&local_hour) {
        4.0
    } else if (8.0..16.0).contains(&local_hour) {
        1.0
    } else {
        0.0
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    /// Line of consumption.csv holding the reset.
    reset_line: usize,
}

/// Row `r` starts at 2026-03-04T23:00Z (local midnight of 5 March) + r × 30 min.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 3, 4, 23, 0, 0).unwrap();
    let entry_utc = Utc.with_ymd_and_hms(2026, 3, 12, 23, 0, 0).unwrap();
    let empty_at = Utc.with_ymd_and_hms(2026, 3, 12, 2, 0, 0).unwrap(); // 03:00 local
    let outside_range_gap = Utc.with_ymd_and_hms(2026, 3, 6, 10, 0, 0).unwrap();
    let reset_at = Utc.with_ymd_and_hms(2026, 3, 13, 11, 0, 0).unwrap(); // 12:00 local
    let mut prod = String::from("utc,local,PV-1\n");
    let mut cons = String::from("utc,local,H-A,H-B,H-C\n");
    let mut heat = String::from("utc,local,temp_air_c\n");
    let mut reset_line = 0;
    for r in 0..DAYS * 48 {
        let t = start + Duration::minutes(30 * r);
        let local_hour = ((r % 48) as f64) / 2.0;
        let stamp = t.format("%Y-%m-%dT%H:%M:%SZ");
        prod.push_str(&format!("{stamp},x,{}\n", pv_kwh(local_hour)));
        let a = if t == reset_at {
            reset_line = r as usize + 2;
            "-500".to_string()
        } else {
            "1.0".to_string()
        };
        let b = if t == empty_at || t == outside_range_gap {
            String::new()
        } else {
            "0.5".to_string()
        };
        let c = if t >= entry_utc {
            "0.8".to_string()
        } else {
            String::new()
        };
        cons.push_str(&format!("{stamp},x,{a},{b},{c}\n"));
        heat.push_str(&format!("{stamp},x,5.0\n"));
    }
    let d = dir.path();
    std::fs::write(d.join("production.csv"), prod).unwrap();
    std::fs::write(d.join("consumption.csv"), cons).unwrap();
    std::fs::write(d.join("heat.csv"), heat).unwrap();
    std::fs::write(
        d.join("plants.csv"),
        "id,label,kwp,kva,layout,tilt_deg,azimuth_deg,roof_area_m2,annual_kwh,prm\n\
         PV-1,Roof,20,20,south,20,180,100,20000,99990000000001\n",
    )
    .unwrap();
    // Static shares far from consumption: the static keys leave A and B short.
    std::fs::write(
        d.join("participants.csv"),
        "id,kind,label,profile,annual_kwh,prm,subscription_share,subscribed_kva\n\
         H-A,household,A,H25,8000,99990000000011,0.1,9\n\
         H-B,household,B,H25,4000,99990000000012,0.1,9\n\
         H-C,household,C,H25,6000,99990000000013,0.8,9\n",
    )
    .unwrap();
    std::fs::write(
        d.join("site.toml"),
        format!(
            "[site]\nid = \"real-data\"\nname = \"real data\"\ntimezone = \"Europe/Paris\"\n\
             settlement_minutes = 30\nlatitude = 47.32\nlongitude = 5.0\noutput_dir = \"out\"\n\n\
             [plan]\nhorizon_hours = 12\nbudget_ms = 2000\n\n\
             [keys]\npolicy = \"optimised\"\nunits_per_one = 10000\n\n\
             [[participants]]\nid = \"H-A\"\nkind = \"household\"\nprm = \"99990000000011\"\nmeter = \"M-A\"\ntariff_eur_per_kwh = 0.25\n\n\
             [[participants]]\nid = \"H-B\"\nkind = \"household\"\nprm = \"99990000000012\"\nmeter = \"M-B\"\ntariff_eur_per_kwh = 0.25\n\n\
             [[participants]]\nid = \"H-C\"\nkind = \"household\"\nprm = \"99990000000013\"\nmeter = \"M-C\"\ntariff_eur_per_kwh = 0.25\nentry = \"{ENTRY}\"\n"
        ),
    )
    .unwrap();
    Fixture { dir, reset_line }
}

fn backtest(dir: &Path, extra: &[&str]) -> std::process::Output {
    common::ped()
        .args(["backtest", "--quiet", "--replan-every", "8"])
        .args(["--from", FROM, "--to", TO, "--data"])
        .arg(dir)
        .arg("--site")
        .arg(dir.join("site.toml"))
        .arg("--out")
        .arg(dir.join("out"))
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn gaps_resets_and_an_entry_are_estimated_counted_and_keyed_as_ped_keys_does() {
    let fx = fixture();
    let run = backtest(fx.dir.path(), &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let s: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();

    // One empty cell (B) and one reset (A) in the range; C's empty cells
    // before its entry are not missing, and B's gap on 6 March is outside.
    let q = &s["data_quality"];
    assert_eq!(q["missing_values"], 1, "{q}");
    assert_eq!(q["suspect_values"], 1, "{q}");
    assert_eq!(q["estimated_values"], 2, "{q}");
    assert_eq!(q["unestimated_values"], 0, "{q}");
    assert_eq!(q["values_outside_membership"], 0, "{q}");
    assert_eq!(q["participants_with_entry_or_exit"], 1, "{q}");
    // Flat curves: the estimates are the neighbours' values.
    assert!(
        (q["estimated_kwh"].as_f64().unwrap() - 1.5).abs() < 1e-9,
        "{q}"
    );

    // The energies of the range, as the test wrote them.
    let first = NaiveDate::from_ymd_opt(2026, 3, 12).unwrap();
    let entry = NaiveDate::from_ymd_opt(2026, 3, 13).unwrap();
    let (mut pv, mut export, mut local) = (0.0, 0.0, 0.0);
    for day in 0..3 {
        let date = first + chrono::Days::new(day);
        for k in 0..48 {
            let p = pv_kwh(k as f64 / 2.0);
            let c = 1.0 + 0.5 + if date >= entry { 0.8 } else { 0.0 };
            pv += p;
            export += (p - c).max(0.0);
            local += p.min(c);
        }
    }
    let consumption: Vec<f64> = s["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["consumption_kwh"].as_f64().unwrap())
        .collect();
    assert_eq!(consumption.len(), 3);
    for (got, want) in consumption.iter().zip([144.0, 72.0, 0.8 * 96.0]) {
        assert!((got - want).abs() < 1e-9, "{consumption:?}");
    }

    let scenarios = s["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 6);
    let f = |x: &serde_json::Value, k: &str| x[k].as_f64().unwrap();
    for x in scenarios {
        let name = x["name"].as_str().unwrap();
        // No storage on this site: every scenario has the same physics.
        assert!((f(x, "pv_kwh") - pv).abs() < 1e-9, "{name}");
        assert!((f(x, "export_kwh") - export).abs() < 1e-9, "{name}: {x}");
        assert!(
            (f(x, "consumed_locally_kwh") - local).abs() < 1e-9,
            "{name}: {x}"
        );
        let allocated = f(x, "allocated_kwh") + f(x, "allocated_to_storage_kwh");
        assert!(
            (f(x, "unallocated_kwh") - (local - allocated)).abs() < 1e-9,
            "{name}: {x}"
        );
        assert!(f(x, "unallocated_kwh") > -1e-9, "{name}: {x}");
        assert_eq!(x["keys_outside_membership"], 0, "{name}");
        // C is not a member on the 12th: nothing allocated beyond its consumption.
        let c = &s["participants"][2]["allocated_kwh"][name];
        assert!(c.as_f64().unwrap() <= 0.8 * 96.0 + 1e-9, "{name}: {c}");
    }
    let by = |n: &str| scenarios.iter().find(|x| x["name"] == n).unwrap();
    // Exact pro rata, keys at 0.01 %: nobody short beyond rounding.
    assert_eq!(by("dso_prorata")["participants_worse_than_dso_prorata"], 0);
    assert!(f(by("dso_prorata"), "unallocated_kwh") < 0.01 * local);
    // Static shares of 10 % for A and B, who consume 65 % and 22 % at a
    // deficit: both short every month; C (80 %) takes all it consumes.
    let st = by("static_keys");
    assert_eq!(st["participants_worse_than_dso_prorata"], 2, "{st}");
    let ids: Vec<&str> = st["worse_than_dso_prorata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["H-A", "H-B"]);
    // What C's static 80 % cannot absorb is consumed by A and B but not
    // allocated to them: unallocated, not export.
    assert!(f(st, "unallocated_kwh") > 10.0, "{st}");
}

#[test]
fn strict_refuses_the_reset_with_its_file_and_line() {
    let fx = fixture();
    let run = backtest(fx.dir.path(), &["--strict"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("consumption.csv")
            && stderr.contains(&format!("consumption.csv:{}:", fx.reset_line))
            && stderr.contains("H-A"),
        "{stderr}"
    );
}
