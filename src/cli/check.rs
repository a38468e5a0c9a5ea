//! `ped check`: every problem of a site config, with its key and a fix.

use super::*;

pub(super) fn check(site: PathBuf) -> Result<()> {
    let raw = match config::load_unvalidated(&site) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let lib = library(raw.site.models_dir.as_deref())?;
    let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
    let problems = config::check(&raw, &known);
    for w in config::warnings(&raw, &lib) {
        println!(
            "  warning: {}\n      {}\n      fix: {}",
            w.key, w.message, w.fix
        );
    }
    if problems.is_empty() {
        println!(
            "{}: ok ({} devices, {} participants, {}-minute settlement in {})",
            site.display(),
            raw.devices.len(),
            raw.participants.len(),
            raw.site.settlement_minutes,
            raw.site.timezone
        );
        for o in &raw.operations {
            println!(
                "  operation {}{}: {} producer(s), {} participant(s)",
                o.id,
                o.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                o.producers.len(),
                o.participants.len()
            );
        }
        Ok(())
    } else {
        println!("{}: {} problem(s)", site.display(), problems.len());
        for p in &problems {
            println!("  {}\n      {}\n      fix: {}", p.key, p.message, p.fix);
        }
        std::process::exit(1);
    }
}
