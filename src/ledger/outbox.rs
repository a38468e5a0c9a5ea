//! The delivery outbox: key files that passed validation wait here until a
//! [`Deliver`] channel accepts them, with retries and capped exponential
//! backoff in clock time.
//!
//! Exactly-once as far as ped can make it: an entry is marked `sent` in a
//! commit made only after the channel returned `Ok`. If ped dies between the
//! channel's `Ok` and that commit, the entry is still `pending` after the
//! restart and is delivered again **with the same idempotency key** (file
//! name + content hash), so a receiver that keeps the keys it has seen can
//! drop the repeat; one that does not will see the same bytes twice, never
//! different ones.

use super::{sqlite_error, Ledger, LedgerError};
use crate::dso::delivery::{Deliver, Delivery, DeliveryError};
use chrono::{DateTime, Utc};
use rusqlite::params;
use std::io::Write as _;
use std::path::PathBuf;

/// Retry schedule in clock time: `base × 2^(attempts-1)`, at most `cap`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: chrono::Duration,
    pub cap: chrono::Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: chrono::Duration::minutes(1),
            cap: chrono::Duration::hours(1),
        }
    }
}

impl Backoff {
    /// From `delivery.backoff_base_s` and `backoff_cap_s`; values beyond what a
    /// duration can hold (hundreds of millions of years) become that bound.
    pub fn from_secs(base_s: u64, cap_s: u64) -> Backoff {
        let secs = |s: u64| {
            i64::try_from(s)
                .ok()
                .and_then(chrono::Duration::try_seconds)
                .unwrap_or(chrono::Duration::MAX)
        };
        Backoff {
            base: secs(base_s),
            cap: secs(cap_s),
        }
    }

    pub fn after(&self, attempts: u32) -> chrono::Duration {
        let exp = attempts.saturating_sub(1).min(20);
        self.base
            .checked_mul(1i32 << exp)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// When to try again after `attempts` failures at `now`: never earlier
    /// than `now`, and the latest instant a timestamp holds if the wait
    /// reaches beyond it (the failure is recorded either way).
    pub fn next_attempt(&self, now: DateTime<Utc>, attempts: u32) -> DateTime<Utc> {
        now.checked_add_signed(self.after(attempts))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Sent,
    Retry,
    Failed,
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Sent => "ok",
            AttemptResult::Retry => "transient_error",
            AttemptResult::Failed => "permanent_error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub file_name: String,
    pub channel: &'static str,
    pub result: AttemptResult,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: u64,
    pub sent: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub file_name: String,
    pub version: i64,
    pub idempotency_key: String,
    pub state: String,
    pub attempts: u32,
    /// Why the last attempt failed, as the channel reported it (credentials
    /// already scrubbed by the channel).
    pub last_error: Option<String>,
}

/// Delivers every entry due at `now`, oldest first. Each outcome is committed
/// before the next entry is tried.
pub fn deliver_due(
    ledger: &mut Ledger,
    deliver: &dyn Deliver,
    now: DateTime<Utc>,
    backoff: &Backoff,
) -> Result<Vec<Attempt>, LedgerError> {
    let path = ledger.path().to_path_buf();
    let e = sqlite_error(&path);
    let due: Vec<(i64, String, String, u32, Vec<u8>)> = {
        let conn = ledger.conn();
        let mut st = conn
            .prepare(
                "SELECT o.id, o.file_name, o.idempotency_key, o.attempts, k.content
                 FROM outbox o JOIN key_files k ON k.name = o.file_name AND k.version = o.version
                 WHERE o.state = 'pending' AND o.next_attempt <= ?1 ORDER BY o.id",
            )
            .map_err(e)?;
        let rows = st
            .query_map([now.timestamp()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(e)?;
        rows.collect::<Result<_, _>>().map_err(e)?
    };
    let mut out = Vec::with_capacity(due.len());
    // Failures are committed together at the end (one fsync, not one per
    // file): losing them to a crash only makes the next attempt come sooner.
    // A success is committed at once, before the next file is tried.
    let mut failures: Vec<(i64, u32, Option<DateTime<Utc>>, String)> = Vec::new();
    for (id, file_name, key, attempts, content) in due {
        let d = Delivery {
            file_name: file_name.clone(),
            content,
            idempotency_key: key,
        };
        let attempts = attempts + 1;
        let result = match deliver.deliver(&d) {
            Ok(receipt) => {
                let tx = ledger.conn().transaction().map_err(e)?;
                tx.execute(
                    "UPDATE outbox SET state = 'sent', attempts = ?2, receipt = ?3, sent_at = ?4, last_error = NULL WHERE id = ?1",
                    params![id, attempts, receipt, now.to_rfc3339()],
                )
                .map_err(e)?;
                super::audit::append_audit(
                    &tx,
                    "delivered",
                    &format!("{file_name} via {}", deliver.channel()),
                    &d.idempotency_key,
                )
                .map_err(e)?;
                tx.commit().map_err(e)?;
                tracing::info!(file = %file_name, channel = deliver.channel(), attempts, receipt = %receipt, "key file delivered");
                AttemptResult::Sent
            }
            Err(DeliveryError::Transient(why)) => {
                let next = backoff.next_attempt(now, attempts);
                failures.push((id, attempts, Some(next), why.clone()));
                tracing::warn!(file = %file_name, channel = deliver.channel(), attempts, error = %why, next = %next, "delivery failed, will retry");
                AttemptResult::Retry
            }
            Err(DeliveryError::Permanent(why)) => {
                failures.push((id, attempts, None, why.clone()));
                tracing::error!(file = %file_name, channel = deliver.channel(), attempts, error = %why, "delivery refused for good; needs a person");
                AttemptResult::Failed
            }
        };
        out.push(Attempt {
            file_name,
            channel: deliver.channel(),
            result,
        });
    }
    if !failures.is_empty() {
        let tx = ledger.conn().transaction().map_err(e)?;
        for (id, attempts, next, why) in failures {
            match next {
                Some(next) => tx.execute(
                    "UPDATE outbox SET attempts = ?2, next_attempt = ?3, last_error = ?4 WHERE id = ?1",
                    params![id, attempts, next.timestamp(), why],
                ),
                None => tx.execute(
                    "UPDATE outbox SET state = 'failed', attempts = ?2, last_error = ?3 WHERE id = ?1",
                    params![id, attempts, why],
                ),
            }
            .map_err(e)?;
        }
        tx.commit().map_err(e)?;
    }
    Ok(out)
}

pub fn counts(ledger: &mut Ledger) -> Result<OutboxCounts, LedgerError> {
    let rows = ledger.query_rows(
        "SELECT state, count(*) FROM outbox GROUP BY state",
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)),
    )?;
    let mut c = OutboxCounts::default();
    for (s, n) in rows {
        match s.as_str() {
            "pending" => c.pending = n,
            "sent" => c.sent = n,
            _ => c.failed = n,
        }
    }
    Ok(c)
}

pub fn entries(ledger: &mut Ledger) -> Result<Vec<OutboxEntry>, LedgerError> {
    ledger.query_rows(
        "SELECT id, file_name, version, idempotency_key, state, attempts, last_error FROM outbox ORDER BY id",
        [],
        |r| {
            Ok(OutboxEntry {
                id: r.get(0)?,
                file_name: r.get(1)?,
                version: r.get(2)?,
                idempotency_key: r.get(3)?,
                state: r.get(4)?,
                attempts: r.get(5)?,
                last_error: r.get(6)?,
            })
        },
    )
}

/// A local spool folder as a destination: each delivery is written
/// atomically as `<dir>/<key-hash-prefix>_<file name>` and a line
/// `<idempotency key> <file name>` is appended (and synced) to
/// `<dir>/deliveries.log`, so a test or an operator can count what arrived.
/// For a real DSO endpoint, use the delivery channels of `dso::delivery`.
pub struct SpoolDir {
    pub dir: PathBuf,
}

impl Deliver for SpoolDir {
    fn channel(&self) -> &'static str {
        "spool"
    }

    fn deliver(&self, d: &Delivery) -> Result<String, DeliveryError> {
        let t =
            |e: std::io::Error| DeliveryError::Transient(format!("{}: {e}", self.dir.display()));
        std::fs::create_dir_all(&self.dir).map_err(t)?;
        let prefix: String = d
            .idempotency_key
            .rsplit(':')
            .next()
            .unwrap_or("")
            .chars()
            .take(12)
            .collect();
        let name = format!("{prefix}_{}", d.file_name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(t)?;
        f.write_all(&d.content).map_err(t)?;
        f.sync_all().map_err(t)?;
        std::fs::rename(&tmp, self.dir.join(&name)).map_err(t)?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("deliveries.log"))
            .map_err(t)?;
        writeln!(log, "{} {}", d.idempotency_key, d.file_name).map_err(t)?;
        log.sync_data().map_err(t)?;
        Ok(self.dir.join(name).display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let b = Backoff {
            base: chrono::Duration::minutes(1),
            cap: chrono::Duration::minutes(30),
        };
        assert_eq!(b.after(1), chrono::Duration::minutes(1));
        assert_eq!(b.after(2), chrono::Duration::minutes(2));
        assert_eq!(b.after(5), chrono::Duration::minutes(16));
        assert_eq!(b.after(6), chrono::Duration::minutes(30));
        assert_eq!(b.after(1000), chrono::Duration::minutes(30));
    }

    #[test]
    fn huge_settings_saturate_instead_of_overflowing() {
        let b = Backoff::from_secs(u64::MAX, u64::MAX);
        assert_eq!(b.after(1), chrono::Duration::MAX);
        let now = Utc::now();
        assert_eq!(b.next_attempt(now, 3), DateTime::<Utc>::MAX_UTC);
        let b = Backoff::from_secs(10_000_000_000_000, 10_000_000_000_000);
        assert_eq!(b.after(7), chrono::Duration::seconds(10_000_000_000_000));
        assert_eq!(b.next_attempt(now, 1), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            Backoff::from_secs(60, 3600).next_attempt(now, 2),
            now + chrono::Duration::minutes(2)
        );
    }
}
