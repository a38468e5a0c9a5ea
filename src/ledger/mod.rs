//! The ledger: one SQLite file that is the truth about what ped measured,
//! decided and sent. Closed periods (energies per device and participant with
//! a quality flag, keys), counter snapshots at period boundaries (so a restart
//! can complete the period that was open at the crash), plans and setpoints,
//! key file versions, the delivery outbox, and an append-only, hash-chained
//! audit log.
//!
//! Durability: WAL with `synchronous=FULL`. In WAL mode `NORMAL` only syncs at
//! checkpoints, so a power cut can lose the last committed transactions; a
//! closed period or an audit entry that is lost after the key file built from
//! it was delivered would make the ledger disagree with what the DSO holds.
//! One fsync per settlement period is cheap, so every commit is synced.
//!
//! Rows that record facts (periods, energies, keys, key file versions, audit)
//! are never updated: triggers refuse it, and the audit chain makes a change
//! made behind the triggers' back detectable (`ped audit verify`).

mod audit;
mod dispatch;
mod key_files;
pub mod outbox;
mod periods;
mod schema;

pub use audit::VerifyReport;
pub use schema::SCHEMA_VERSION;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("ledger {path}: cannot create its folder: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger {path} has schema version {found}, newer than this ped knows ({known}): upgrade ped")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("ledger {path} cannot be used: {cause}; nothing in it was changed. Fix: {fix}")]
    Unusable {
        path: PathBuf,
        cause: String,
        fix: String,
    },
    #[error("ledger {path}: period {start} already closed with different content (stored {stored}, new {new}); closed periods are never rewritten")]
    PeriodConflict {
        path: PathBuf,
        start: DateTime<Utc>,
        stored: String,
        new: String,
    },
}

/// How an energy figure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Counter values interpolated between samples less than a period apart.
    Measured,
    /// Interpolated across a gap (ped down, device unreachable) longer than a
    /// period: the total over the gap is right, its split between periods is not known.
    Estimated,
    /// No usable counter (never sampled, reset inside the period).
    Missing,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Measured => "measured",
            Quality::Estimated => "estimated",
            Quality::Missing => "missing",
        }
    }
    pub fn parse(s: &str) -> Option<Quality> {
        match s {
            "measured" => Some(Quality::Measured),
            "estimated" => Some(Quality::Estimated),
            "missing" => Some(Quality::Missing),
            _ => None,
        }
    }
}

/// Whose energy a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Device,
    Participant,
}

impl Owner {
    fn as_str(self) -> &'static str {
        match self {
            Owner::Device => "device",
            Owner::Participant => "participant",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnergyRow {
    pub owner: Owner,
    pub id: String,
    /// The counter it came from, e.g. `production_kwh`, `import_kwh`.
    pub reading: String,
    /// `None` when `quality` is `Missing`.
    pub kwh: Option<f64>,
    pub quality: Quality,
}

/// A counter's value at a period boundary (interpolated between the two
/// samples that straddle it).
#[derive(Debug, Clone, PartialEq)]
pub struct CounterSnapshot {
    pub device: String,
    pub reading: String,
    pub at: DateTime<Utc>,
    pub value: f64,
}

/// Everything about one closed period, written in one transaction.
#[derive(Debug, Clone)]
pub struct ClosedPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The archived record (JSON); its SHA-256 is the period's content hash.
    pub record_json: String,
    /// `measured`, `estimated`, or `fallback: …`.
    pub quality: String,
    pub policy: String,
    pub energies: Vec<EnergyRow>,
    /// `(participant id, PRM, key units)` in the site's participant order.
    pub keys: Vec<(String, String, u32)>,
    pub snapshots: Vec<CounterSnapshot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodWrite {
    Inserted,
    /// Already stored with the same content: nothing written.
    AlreadyStored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPeriod {
    pub start: DateTime<Utc>,
    pub quality: String,
    pub content_hash: String,
    pub record_json: String,
}

/// A key file version as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileVersion {
    pub name: String,
    pub version: i64,
    pub sha256: String,
    /// False when the same content was already the latest version.
    pub new: bool,
}

/// A period's start and its key units in participant order.
pub type KeyUnitsRow = (DateTime<Utc>, Vec<u32>);

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}
fn from_ts(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap_or_default()
}

// Shared by every part of the ledger; the rest of `impl Ledger` lives with
// its tables in the sibling modules.
impl Ledger {
    /// For the benchmark that shows what `synchronous=FULL` costs; ped itself never calls it.
    #[doc(hidden)]
    pub fn set_synchronous(&mut self, mode: &str) -> Result<(), LedgerError> {
        self.conn
            .pragma_update(None, "synchronous", mode)
            .map_err(|e| self.err(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Bytes of the file in use (pages minus the free list), for the benchmark.
    #[doc(hidden)]
    pub fn bytes_in_use(&self) -> Result<u64, LedgerError> {
        let q = |sql: &str| -> Result<i64, LedgerError> {
            self.conn
                .query_row(sql, [], |r| r.get(0))
                .map_err(|e| self.err(e))
        };
        let pages = q("PRAGMA page_count")? - q("PRAGMA freelist_count")?;
        Ok((pages * q("PRAGMA page_size")?).max(0) as u64)
    }

    /// Runs one statement outside a transaction.
    fn execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> Result<(), LedgerError> {
        self.conn
            .execute(sql, params)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Every row of `sql` with `params`, mapped by `row`.
    fn query_rows<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, LedgerError> {
        let mut st = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = st.query_map(params, row).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    pub(crate) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// Maps a SQLite error to the ledger error naming `path`; `Copy`, so one
/// binding serves every `map_err` of a transaction.
pub(crate) fn sqlite_error(path: &Path) -> impl Fn(rusqlite::Error) -> LedgerError + Copy + '_ {
    move |source| LedgerError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
