//! Month-solver keys with their fallback, `--validate` by content, and key files archived in the ledger as versions.

use super::*;

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
