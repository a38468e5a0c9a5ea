//! The append-only, hash-chained audit log: appending an entry (on its own
//! or inside another write's transaction), and [`Ledger::verify`], which
//! recomputes the chain and checks every stored period against its audit
//! entry, reporting the first broken link in a [`VerifyReport`].

use super::{sha256_hex, sqlite_error, Ledger, LedgerError};
use chrono::Utc;
use rusqlite::{params, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Ledger {
    /// Appends an audit entry on its own (e.g. `start`, `resume`).
    pub fn audit(&mut self, kind: &str, subject: &str, detail: &str) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let e = sqlite_error(&path);
        let tx = self.conn.transaction().map_err(e)?;
        append_audit(&tx, kind, subject, detail).map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Recomputes the audit chain and checks every period against its audit
    /// entry. Reports the first broken link.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT seq, at, kind, subject, detail, prev_hash, hash FROM audit ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut prev = GENESIS.to_string();
        let mut entries = 0u64;
        let mut period_hash = std::collections::HashMap::new();
        for (expected_seq, row) in (1i64..).zip(rows) {
            let (seq, at, kind, subject, detail, prev_hash, hash) = row.map_err(|e| self.err(e))?;
            if seq != expected_seq {
                return Ok(VerifyReport::broken(
                    entries,
                    seq,
                    format!("entry {expected_seq} is missing (next present is {seq})"),
                ));
            }
            if prev_hash != prev {
                return Ok(VerifyReport::broken(
                    entries,
                    seq,
                    "its previous-hash does not match the entry before it".into(),
                ));
            }
            if entry_hash(seq, &at, &kind, &subject, &detail, &prev_hash) != hash {
                return Ok(VerifyReport::broken(
                    entries,
                    seq,
                    "its content does not match its hash (edited)".into(),
                ));
            }
            if kind == "period" {
                period_hash.insert(subject, detail);
            }
            prev = hash;
            entries += 1;
        }
        let mut periods = 0u64;
        for p in self.periods()? {
            periods += 1;
            let key = p.start.to_rfc3339();
            let actual = sha256_hex(p.record_json.as_bytes());
            match period_hash.get(&key) {
                None => {
                    return Ok(VerifyReport::broken(
                        entries,
                        0,
                        format!("period {key} has no audit entry"),
                    ))
                }
                Some(h) if *h != actual || p.content_hash != actual => {
                    return Ok(VerifyReport::broken(
                        entries,
                        0,
                        format!("period {key} differs from its audit entry (edited)"),
                    ))
                }
                Some(_) => {}
            }
        }
        if period_hash.len() as u64 != periods {
            return Ok(VerifyReport::broken(
                entries,
                0,
                format!(
                    "{} periods audited but {periods} stored (a period row was deleted)",
                    period_hash.len()
                ),
            ));
        }
        Ok(VerifyReport {
            entries,
            periods,
            broken: None,
        })
    }
}

/// The outcome of [`Ledger::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Audit entries checked before the first broken link (all if none).
    pub entries: u64,
    pub periods: u64,
    /// `(seq, why)` of the first broken link; seq 0 for a period that does not match.
    pub broken: Option<(i64, String)>,
}

impl VerifyReport {
    fn broken(entries: u64, seq: i64, why: String) -> VerifyReport {
        VerifyReport {
            entries,
            periods: 0,
            broken: Some((seq, why)),
        }
    }
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

fn entry_hash(seq: i64, at: &str, kind: &str, subject: &str, detail: &str, prev: &str) -> String {
    // Fields are length-prefixed so that moving text between fields changes the hash.
    let mut h = Sha256::new();
    for f in [&seq.to_string()[..], at, kind, subject, detail, prev] {
        h.update((f.len() as u64).to_le_bytes());
        h.update(f.as_bytes());
    }
    let mut s = String::with_capacity(64);
    for b in h.finalize() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub(super) fn append_audit(
    tx: &Transaction<'_>,
    kind: &str,
    subject: &str,
    detail: &str,
) -> Result<(), rusqlite::Error> {
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match last {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS.to_string()),
    };
    let at = Utc::now().to_rfc3339();
    let hash = entry_hash(seq, &at, kind, subject, detail, &prev);
    tx.execute(
        "INSERT INTO audit (seq, at, kind, subject, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![seq, at, kind, subject, detail, prev, hash],
    )?;
    Ok(())
}
