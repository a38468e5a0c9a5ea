//! `ped plan`: a dumped instance replays to the same figures, and the fast
//! allocation solver agrees with the LP oracle on it.

use crate::common::{self, ped};

#[test]
fn dump_then_replay_an_allocation_and_a_plan() {
    let dir = tempfile::tempdir().unwrap();
    let alloc = dir.path().join("alloc.json");
    common::output_ok(
        ped()
            .args(["plan", "--synthetic", "12x48", "--allocation", "--dump"])
            .arg(&alloc),
        "",
    );
    let json = std::fs::read_to_string(&alloc).unwrap();
    assert!(
        json.starts_with("{\"kind\":\"allocation\""),
        "{}",
        &json[..40]
    );
    let out = common::output_ok(ped().args(["plan", "--oracle", "--replay"]).arg(&alloc), "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let gap: f64 = stdout
        .split("relative score gap ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gap in {stdout}"));
    assert!(gap <= 1e-6, "{stdout}");

    let plan = dir.path().join("plan.json");
    let out = ped()
        .args(["plan", "--synthetic", "10x48", "--dump"])
        .arg(&plan)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = ped()
        .args(["plan", "--replay"])
        .arg(&plan)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("status optimal (level 0)"), "{stdout}");
    // Storage and P2H are participants of the synthetic district, and the
    // replay says what each is allocated.
    for id in ["BAT-01 (bat-1)", "P2H-01 (p2h-1)"] {
        assert!(
            stdout.contains(&format!("device participant {id}: allocated")),
            "{stdout}"
        );
    }

    // Neither or both sources: an error that says what to give.
    let out = ped().args(["plan"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--synthetic PxN or --replay FILE"));
    let out = ped().args(["plan", "--synthetic", "ten"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("PARTICIPANTSxSTEPS"));
}
