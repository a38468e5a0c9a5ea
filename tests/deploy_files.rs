//! What can be checked of the Dockerfile and the systemd unit without a Docker
//! engine or a running systemd (neither runs on CI machines; the unit is also
//! checked by `systemd-analyze` in scripts/deploy-check.sh).

use std::path::Path;

mod common;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, args) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push((op.to_uppercase(), args.trim().to_string()));
        cur.clear();
    }
    out
}

/// The instructions of each stage, in order.
fn stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for (op, args) in instructions(text) {
        if op == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("Dockerfile starts with FROM")
            .push((op, args));
    }
    stages
}

fn json_array(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not a JSON array: {args}: {e}"))
}

#[test]
fn dockerfile_copies_only_what_exists_and_is_in_the_context() {
    let docker = read("Dockerfile");
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        ignored.contains(&"target"),
        "target/ must stay out of the build context"
    );
    let mut copied = Vec::new();
    for (op, args) in instructions(&docker) {
        if op != "COPY" || args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                Path::new(ROOT).join(src).exists(),
                "Dockerfile copies {src}, which does not exist"
            );
            assert!(
                !ignored.contains(src),
                "Dockerfile copies {src}, which .dockerignore excludes"
            );
            copied.push(src.to_string());
        }
    }
    // Cargo reads every explicit target of the manifest: each must be in the image.
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    for (kind, dir) in [("test", "tests"), ("bench", "benches")] {
        for t in manifest
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let name = t["name"].as_str().unwrap();
            assert!(
                Path::new(ROOT)
                    .join(dir)
                    .join(format!("{name}.rs"))
                    .exists(),
                "{kind} {name}"
            );
            assert!(copied.iter().any(|c| c == dir), "{dir} not copied");
        }
    }
    for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "models"] {
        assert!(copied.iter().any(|c| c == needed), "{needed} not copied");
    }
}

#[test]
fn dockerfile_builds_with_highs_and_runs_unprivileged_with_volumes_and_a_health_check() {
    let docker = read("Dockerfile");
    let st = stages(&docker);
    assert_eq!(st.len(), 2, "a builder stage and a runtime stage");
    let (build, run) = (&st[0], &st[1]);
    let build_text: String = build.iter().map(|(o, a)| format!("{o} {a}\n")).collect();
    for pkg in ["cmake", "libclang-dev", "g++"] {
        assert!(build_text.contains(pkg), "builder lacks {pkg}");
    }
    assert!(build_text.contains("ARG PED_FEATURES=highs"));
    assert!(build_text.contains("--features \"$PED_FEATURES\""));
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    assert!(
        manifest["features"].get("highs").is_some(),
        "Cargo.toml has no `highs` feature"
    );
    assert!(run[0].1.contains("-slim"), "small runtime image");

    let get = |op: &str| -> Vec<&String> {
        run.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a)
            .collect()
    };
    let user = get("USER");
    assert_eq!(user.len(), 1);
    assert!(!matches!(user[0].as_str(), "root" | "0"), "runs as root");
    let volumes = json_array(get("VOLUME")[0]);
    assert!(volumes.contains(&"/etc/ped".to_string()));
    assert!(volumes.contains(&"/var/lib/ped".to_string()));
    let env = get("ENV")
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        env.contains("PED__SITE__OUTPUT_DIR=/var/lib/ped"),
        "output (keys, ledger) on the volume"
    );
    let listen = env
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("PED__HTTP__LISTEN="))
        .expect("PED__HTTP__LISTEN set");
    let port = listen.rsplit(':').next().unwrap();
    assert!(
        listen.starts_with("0.0.0.0:"),
        "reachable from outside the container"
    );
    assert_eq!(get("EXPOSE"), vec![&port.to_string()]);
    let health = get("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    assert!(
        health[0].contains(&format!("http://127.0.0.1:{port}/health")),
        "{}",
        health[0]
    );

    // ENTRYPOINT + CMD is a command line ped accepts, on a config the image
    // holds: run it here with `check`, mapping /etc/ped to site-configs.
    let entry = json_array(get("ENTRYPOINT")[0]);
    let cmd = json_array(get("CMD")[0]);
    assert_eq!(entry[0], "ped");
    assert_eq!(cmd[0], "run");
    let site_idx = cmd.iter().position(|a| a == "--site").unwrap() + 1;
    let site = cmd[site_idx]
        .strip_prefix("/etc/ped/")
        .expect("config under /etc/ped");
    let local = Path::new(ROOT).join("site-configs").join(site);
    common::output_ok(
        common::ped()
            .args(&entry[1..])
            .args(["check", "--site"])
            .arg(&local),
        "",
    );
}

#[test]
fn systemd_unit_is_hardened_and_its_command_line_is_accepted() {
    let unit = read("deploy/systemd/ped.service");
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "ped"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Environment", "PED__SITE__OUTPUT_DIR=/var/lib/ped"),
    ] {
        assert_eq!(value(k), Some(v), "{k}");
    }
    // ped has no systemd watchdog: the unit must not promise one.
    assert_eq!(value("WatchdogSec"), None);
    // The flags of ExecStart parse, the subcommand swapped for `check` on the demo site.
    let exec = value("ExecStart").unwrap();
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[0], "/usr/local/bin/ped");
    let run = args.iter().position(|a| *a == "run").unwrap();
    common::output_ok(
        common::ped()
            .args(&args[1..run])
            .args(["check", "--site"])
            .arg(Path::new(ROOT).join("site-configs/fontaine-douche.toml")),
        "",
    );
}
