//! The binary's edge: `ped check` names every problem with its key and a fix.

mod common;

use common::ped;

fn manifest(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_fontaine_douche_site() {
    let out = common::output_ok(
        ped().args([
            "check",
            "--site",
            &manifest("site-configs/fontaine-douche.toml"),
        ]),
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("135 devices, 120 participants"), "{stdout}");
}

#[test]
fn check_names_each_problem_and_fails() {
    let out = ped()
        .args(["check", "--site", &manifest("tests/data/broken-site.toml")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for needle in [
        "site.settlement_minutes",
        "devices[0].address (id `PV-1`)",
        "devices[1].map (id `HEAT-1`)",
        "unknown device model `vendor/no_such_controller`",
        "participants[0].prm (id `H-1`)",
        "duplicate PRM 99990000000001",
        "participants[1].meter (id `H-2`)",
    ] {
        assert!(
            stdout.contains(needle),
            "`{needle}` missing from:\n{stdout}"
        );
    }
    assert!(stdout.matches("fix:").count() >= 5, "{stdout}");
    // Piped output is for files and other programs: no terminal colour codes.
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\x1b'));
}

#[test]
fn check_reports_a_parse_error_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("typo.toml");
    std::fs::write(
        &f,
        "[site]\nid = \"x\"\nname = \"x\"\nlatitude = 1\nlongitude = 1\nlattitude = 2\n",
    )
    .unwrap();
    let out = ped()
        .args(["check", "--site", f.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("typo.toml") && stderr.contains("lattitude"),
        "{stderr}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let out = ped()
        .args(["check", "--site", "/nonexistent/site.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/site.toml"));
}

#[test]
fn simulate_runs_the_demo_and_stops_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let out = ped()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "simulate",
            "--duration",
            "150m",
            "--speed",
            "1800",
            "--start",
            "2025-10-26T01:00:00+02:00",
            "--ephemeral-ports",
            "--listen",
            "127.0.0.1:0",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    common::assert_contains(&stderr, &["135 devices", "period closed"]);
    assert!(!stderr.contains('\x1b'), "colour codes in a log file");
    // Setpoints read as an energy manager would: `BAT-01=+12.5 kW`, not Rust values.
    let plan_line = stderr
        .lines()
        .find(|l| l.contains("plan published"))
        .unwrap_or_else(|| panic!("no plan published:\n{stderr}"));
    assert!(plan_line.contains(" kW"), "{plan_line}");
    assert!(!plan_line.contains("BatteryPower("), "{plan_line}");
    // Autumn DST night: the repeated 02:00 hour is in the files with both offsets.
    let files: Vec<_> = std::fs::read_dir(dir.path().join("keys/2025-10-26"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 10, "8 PV plants and 2 batteries");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.contains("2025-10-26T02:00:00+02:00") || text.contains("2025-10-26T02:15:00+02:00"),
        "{text}"
    );
}
