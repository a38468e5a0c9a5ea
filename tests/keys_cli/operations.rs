//! Real operations: the operation layout with suspect values and a member who left, a realistic slice with gaps, entry and exit, bounded reports of absurd values and floods of bad lines, and several operations on one site.

use super::*;

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
