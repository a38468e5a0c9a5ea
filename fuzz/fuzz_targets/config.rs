//! The site-config loader over arbitrary TOML text: `load_unvalidated` then `check`
//! (and `validate` when clean). Errors are fine; panics are not, and every problem
//! found must name a key and a fix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ped::config;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        std::env::temp_dir().join(format!("ped-fuzz-config-{}.toml", std::process::id()))
    })
}

fn maps() -> &'static BTreeSet<String> {
    static M: OnceLock<BTreeSet<String>> = OnceLock::new();
    M.get_or_init(|| {
        ped::registers::ModelLibrary::embedded()
            .expect("built-in maps load")
            .keys()
            .map(str::to_string)
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let p = path();
    let Ok(mut f) = std::fs::File::create(p) else {
        return;
    };
    if f.write_all(data).is_err() {
        return;
    }
    drop(f);
    let Ok(raw) = config::load_unvalidated(p) else {
        return;
    };
    let problems = config::check(&raw, maps());
    for pr in &problems {
        assert!(!pr.key.is_empty() && !pr.fix.is_empty(), "{pr:?}");
    }
    if problems.is_empty() {
        let site =
            config::validate(raw, p, maps()).expect("check found nothing, so validate passes");
        let _ = site.endpoints();
        let _ = site.producers();
    }
});
