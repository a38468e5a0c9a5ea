//! `ped keys` end to end: Enedis load curves in `tests/data/keys/` (written
//! by `gen_curves.py` there) → key files, manifest and allocation, checked by
//! reading them back and applying the DSO's rule; DST days, bad lines, the
//! Spain format, idempotent reruns and golden files.
//! Regenerate the golden files after an intended change with
//! `PED_BLESS_GOLDEN=1 cargo test --test keys_cli` and review the diff.
//! Test names carry their module (`operations::…`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use ped::allocation::{apply_rule, apply_rule_full, Precision};
use ped::dso::{enedis, spain};
use ped::keys::{sha256_hex, Manifest};
use ped::time::Grid;

#[path = "../common/mod.rs"]
mod common;

mod days;
mod month;
mod operations;
mod optimised;
mod reconcile;

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

fn participant<'a>(m: &'a Manifest, id: &str) -> &'a ped::keys::ParticipantTotal {
    m.participants.iter().find(|p| p.id == id).unwrap()
}

/// `ped keys` arguments for the optimised keys of 2025-10-26.
fn optimised_day_args<'a>(curves: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = day_args("2025-10-26", curves, out, &["--policy", "optimised"]);
    args.extend_from_slice(extra);
    args
}
