//! `ped audit`: the ledger's audit log.

use super::*;

pub(super) fn verify(ledger: PathBuf) -> Result<()> {
    if !ledger.exists() {
        bail!("--ledger {}: no such file", ledger.display());
    }
    let l = ped::ledger::Ledger::open_read_only(&ledger)?;
    let r = l.verify()?;
    match &r.broken {
        None => {
            println!(
                "{}: ok, {} audit entries, {} periods, chain intact",
                ledger.display(),
                r.entries,
                r.periods
            );
            Ok(())
        }
        Some((seq, why)) => {
            println!(
                "{}: BROKEN at audit entry {seq}: {why} ({} entries before it intact)",
                ledger.display(),
                r.entries
            );
            std::process::exit(1);
        }
    }
}
