//! `ped keys --statements` and `--cau` never write outside `--out`, whatever
//! a manifest's participant ids or the CAU hold.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keys")
        .join(p)
}

fn keys(args: &[&str]) -> Output {
    common::ped()
        .arg("keys")
        .arg("--site")
        .arg(data("site.toml"))
        .args(args)
        .output()
        .unwrap()
}

fn day(curves: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--from",
        "2025-10-26",
        "--to",
        "2025-10-26",
        "--load-curves",
        curves.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    keys(&args)
}

/// Every file under `dir`, relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_participant_id_from_the_manifest_cannot_escape_out() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = day(&data("curves-2025-10-26"), &run, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = run.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("\"FLAT-1\""), "{text}");
    std::fs::write(&manifest, text.replace("\"FLAT-1\"", "\"../x\"")).unwrap();
    let before = tree(tmp.path());

    let st = tmp.path().join("deep/st");
    let o = keys(&[
        "--statements",
        run.to_str().unwrap(),
        "--out",
        st.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`../x`"), "{err}");
    // Nothing written anywhere: not beside --out, not in it.
    assert_eq!(tree(tmp.path()), before);
}

#[test]
fn a_cau_cannot_escape_out() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("deep/es");
    let cups = data("cups.txt");
    let cups = cups.to_str().unwrap();
    let o = day(
        &data("curves-2025-10-26"),
        &out,
        &["--format", "spain", "--cups", cups, "--cau", "../x"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--cau `../x`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(tree(tmp.path()), Vec::<PathBuf>::new());
    // A plain CAU names the file inside --out.
    let o = day(
        &data("curves-2025-10-26"),
        &out,
        &[
            "--format",
            "spain",
            "--cups",
            cups,
            "--cau",
            "ES0031405712345678JY1A000",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(tree(tmp.path()).iter().all(|p| p.starts_with("deep/es")));
    assert!(tree(&out).iter().any(|p| p
        .to_string_lossy()
        .starts_with("ES0031405712345678JY1A000_")));
}
