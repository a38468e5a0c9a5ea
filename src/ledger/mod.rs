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

pub mod outbox;

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
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

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Ordered migrations; `MIGRATIONS[i]` brings a file from version `i` to `i + 1`.
/// Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    // v1: periods, energies, keys, counter snapshots, key files, outbox, audit.
    r#"
    CREATE TABLE periods (
        start INTEGER PRIMARY KEY,          -- UTC unix seconds
        end_ INTEGER NOT NULL,
        quality TEXT NOT NULL,
        policy TEXT NOT NULL,
        record_json TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        closed_at TEXT NOT NULL
    );
    CREATE TABLE energies (
        period INTEGER NOT NULL REFERENCES periods(start),
        owner TEXT NOT NULL CHECK (owner IN ('device', 'participant')),
        id TEXT NOT NULL,
        reading TEXT NOT NULL,
        kwh REAL,
        quality TEXT NOT NULL CHECK (quality IN ('measured', 'estimated', 'missing')),
        PRIMARY KEY (period, owner, id, reading)
    ) WITHOUT ROWID;
    CREATE TABLE keys (
        period INTEGER NOT NULL REFERENCES periods(start),
        pos INTEGER NOT NULL,
        participant TEXT NOT NULL,
        prm TEXT NOT NULL,
        units INTEGER NOT NULL CHECK (units >= 0),
        PRIMARY KEY (period, pos)
    ) WITHOUT ROWID;
    CREATE TABLE counter_snapshots (
        device TEXT NOT NULL,
        reading TEXT NOT NULL,
        at INTEGER NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (device, reading, at)
    ) WITHOUT ROWID;
    CREATE TABLE key_files (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        first_day TEXT NOT NULL,
        last_day TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        content BLOB NOT NULL,
        inputs TEXT NOT NULL,               -- which periods, with their content hashes
        policy TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        file_name TEXT NOT NULL,
        version INTEGER NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,
        last_error TEXT,
        receipt TEXT,
        sent_at TEXT,
        FOREIGN KEY (file_name, version) REFERENCES key_files(name, version)
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER periods_no_update BEFORE UPDATE ON periods BEGIN SELECT RAISE(ABORT, 'closed periods are never rewritten'); END;
    CREATE TRIGGER periods_no_delete BEFORE DELETE ON periods BEGIN SELECT RAISE(ABORT, 'closed periods are never rewritten'); END;
    CREATE TRIGGER key_files_no_update BEFORE UPDATE ON key_files BEGIN SELECT RAISE(ABORT, 'a changed key file is a new version'); END;
    "#,
    // v2: plans and setpoints sent; the outbox worker's query.
    r#"
    CREATE TABLE plans (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        computed_at INTEGER NOT NULL,
        status TEXT NOT NULL,
        objective_eur REAL NOT NULL,
        plan_json TEXT NOT NULL
    );
    CREATE TABLE setpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        device TEXT NOT NULL,
        watts REAL NOT NULL,
        result TEXT NOT NULL
    );
    CREATE INDEX outbox_due ON outbox(state, next_attempt);
    "#,
];

/// The schema version this ped writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

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

impl Ledger {
    /// Opens (creating it and its folder if needed) and migrates to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Self::open_at(path, SCHEMA_VERSION)
    }

    /// Opens and migrates up to `version` only: lets tests make an old file.
    #[doc(hidden)]
    pub fn open_at(path: &Path, version: i64) -> Result<Ledger, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::Folder {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| LedgerError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        let mut l = Ledger {
            conn,
            path: path.to_path_buf(),
        };
        l.pragmas()?;
        l.migrate(version)?;
        Ok(l)
    }

    /// Opens an existing file without writing to it (for `ped audit verify`).
    pub fn open_read_only(path: &Path) -> Result<Ledger, LedgerError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| LedgerError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        let l = Ledger {
            conn,
            path: path.to_path_buf(),
        };
        l.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| l.err(e))?;
        Ok(l)
    }

    /// Checks, without writing to it, that an existing ledger can be resumed
    /// from: a SQLite file of a schema this ped knows whose periods can be read.
    /// A missing file is fine (a fresh start creates it); one that is readable
    /// but not writable is fine too (the daemon starts in catch-up mode). Any
    /// other state would make a fresh start silently lose the history and the
    /// outbox, so it is [`LedgerError::Unusable`] with the cause and the fix.
    pub fn check_usable(path: &Path) -> Result<(), LedgerError> {
        let unusable = |cause: String, fix: &str| LedgerError::Unusable {
            path: path.to_path_buf(),
            cause,
            fix: fix.to_string(),
        };
        const RESTORE: &str = "restore the file from a backup, or move it away to keep it for \
             analysis, or point ped at another file (--ledger or ledger.path) to start a fresh ledger";
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(unusable(format!("cannot be inspected ({e})"), RESTORE)),
        };
        if !meta.is_file() {
            return Err(unusable("not a regular file".into(), RESTORE));
        }
        let mut header = [0u8; 16];
        let read = std::fs::File::open(path).and_then(|mut f| {
            use std::io::Read;
            let mut n = 0;
            while n < header.len() {
                match f.read(&mut header[n..])? {
                    0 => break,
                    k => n += k,
                }
            }
            Ok(n)
        });
        match read {
            // SQLite creates an empty file before its first write; nothing to lose.
            Ok(0) => return Ok(()),
            Ok(16) if &header == b"SQLite format 3\0" => {}
            Ok(_) => {
                return Err(unusable(
                    "not a SQLite database (corrupt or another file)".into(),
                    RESTORE,
                ))
            }
            Err(e) => return Err(unusable(format!("unreadable ({e})"), RESTORE)),
        }
        // `immutable=1`: no lock, no -wal or -shm created beside a file that
        // may be refused. A WAL not yet checkpointed is not read, which is
        // fine for this check: the schema and the periods table are in the
        // main file from the first checkpoint on.
        let escaped: String = path
            .to_string_lossy()
            .chars()
            .map(|c| match c {
                '%' => "%25".to_string(),
                '?' => "%3f".to_string(),
                '#' => "%23".to_string(),
                c => c.to_string(),
            })
            .collect();
        let conn = Connection::open_with_flags(
            format!("file:{escaped}?immutable=1"),
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| unusable(format!("cannot be opened ({e})"), RESTORE))?;
        let l = Ledger {
            conn,
            path: path.to_path_buf(),
        };
        let found = l
            .schema_version()
            .map_err(|e| unusable(format!("schema unreadable ({e})"), RESTORE))?;
        if found > SCHEMA_VERSION {
            return Err(unusable(
                format!("schema version {found} is newer than this ped knows ({SCHEMA_VERSION})"),
                "run the ped version that wrote it (or a newer one); do not downgrade onto this file",
            ));
        }
        if found > 0 {
            l.last_period()
                .map_err(|e| unusable(format!("periods unreadable ({e})"), RESTORE))?;
        }
        Ok(())
    }

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

    fn pragmas(&mut self) -> Result<(), LedgerError> {
        self.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        let exists: bool = self
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| self.err(e))?
            > 0;
        if !exists {
            return Ok(0);
        }
        self.conn
            .query_row(
                "SELECT coalesce(max(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    fn migrate(&mut self, target: i64) -> Result<(), LedgerError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(LedgerError::TooNew {
                path: self.path.clone(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        let path = self.path.clone();
        let e = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        for v in found..target.min(SCHEMA_VERSION) {
            let tx = self.conn.transaction().map_err(e)?;
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
            )
            .map_err(e)?;
            tx.execute_batch(MIGRATIONS[v as usize]).map_err(e)?;
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
                params![v + 1, Utc::now().to_rfc3339()],
            )
            .map_err(e)?;
            tx.commit().map_err(e)?;
            tracing::info!(ledger = %path.display(), version = v + 1, "ledger migrated");
        }
        Ok(())
    }

    /// Writes a closed period, its energies, keys and boundary snapshots and
    /// its audit entry in one transaction. A period already stored is never
    /// rewritten: same content → [`PeriodWrite::AlreadyStored`], different
    /// content → [`LedgerError::PeriodConflict`].
    pub fn commit_period(&mut self, p: &ClosedPeriod) -> Result<PeriodWrite, LedgerError> {
        let hash = sha256_hex(p.record_json.as_bytes());
        if let Some(stored) = self.period(p.start)? {
            if stored.content_hash == hash {
                return Ok(PeriodWrite::AlreadyStored);
            }
            return Err(LedgerError::PeriodConflict {
                path: self.path.clone(),
                start: p.start,
                stored: stored.content_hash,
                new: hash,
            });
        }
        let path = self.path.clone();
        let e = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(e)?;
        let now = Utc::now().to_rfc3339();
        tx.execute(
            "INSERT INTO periods (start, end_, quality, policy, record_json, content_hash, closed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![ts(p.start), ts(p.end), p.quality, p.policy, p.record_json, hash, now],
        )
        .map_err(e)?;
        {
            let mut st = tx
                .prepare_cached("INSERT INTO energies (period, owner, id, reading, kwh, quality) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .map_err(e)?;
            for r in &p.energies {
                st.execute(params![
                    ts(p.start),
                    r.owner.as_str(),
                    r.id,
                    r.reading,
                    r.kwh,
                    r.quality.as_str()
                ])
                .map_err(e)?;
            }
            let mut st = tx
                .prepare_cached("INSERT INTO keys (period, pos, participant, prm, units) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(e)?;
            for (pos, (id, prm, units)) in p.keys.iter().enumerate() {
                st.execute(params![ts(p.start), pos as i64, id, prm, units])
                    .map_err(e)?;
            }
            let mut st = tx
                .prepare_cached("INSERT OR IGNORE INTO counter_snapshots (device, reading, at, value) VALUES (?1, ?2, ?3, ?4)")
                .map_err(e)?;
            for s in &p.snapshots {
                st.execute(params![s.device, s.reading, ts(s.at), s.value])
                    .map_err(e)?;
            }
        }
        append_audit(&tx, "period", &p.start.to_rfc3339(), &hash).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(PeriodWrite::Inserted)
    }

    pub fn period(&self, start: DateTime<Utc>) -> Result<Option<StoredPeriod>, LedgerError> {
        self.conn
            .query_row(
                "SELECT start, quality, content_hash, record_json FROM periods WHERE start = ?1",
                [ts(start)],
                |r| {
                    Ok(StoredPeriod {
                        start: from_ts(r.get(0)?),
                        quality: r.get(1)?,
                        content_hash: r.get(2)?,
                        record_json: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every stored period, oldest first.
    pub fn periods(&self) -> Result<Vec<StoredPeriod>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT start, quality, content_hash, record_json FROM periods ORDER BY start")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(StoredPeriod {
                    start: from_ts(r.get(0)?),
                    quality: r.get(1)?,
                    content_hash: r.get(2)?,
                    record_json: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Stored periods with a start in `[from, to)`, oldest first.
    pub fn periods_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredPeriod>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT start, quality, content_hash, record_json FROM periods WHERE start >= ?1 AND start < ?2 ORDER BY start")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([ts(from), ts(to)], |r| {
                Ok(StoredPeriod {
                    start: from_ts(r.get(0)?),
                    quality: r.get(1)?,
                    content_hash: r.get(2)?,
                    record_json: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Start of the latest closed period.
    pub fn last_period(&self) -> Result<Option<DateTime<Utc>>, LedgerError> {
        self.conn
            .query_row("SELECT max(start) FROM periods", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|o| o.map(from_ts))
            .map_err(|e| self.err(e))
    }

    /// Energy rows of one period.
    pub fn energies(&self, start: DateTime<Utc>) -> Result<Vec<EnergyRow>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT owner, id, reading, kwh, quality FROM energies WHERE period = ?1 ORDER BY owner, id, reading")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([ts(start)], |r| {
                let owner: String = r.get(0)?;
                let q: String = r.get(4)?;
                Ok(EnergyRow {
                    owner: if owner == "device" {
                        Owner::Device
                    } else {
                        Owner::Participant
                    },
                    id: r.get(1)?,
                    reading: r.get(2)?,
                    kwh: r.get(3)?,
                    quality: Quality::parse(&q).unwrap_or(Quality::Missing),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Key rows (`start`, units in participant order) of periods in `[from, to)`.
    pub fn key_rows(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<KeyUnitsRow>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT period, units FROM keys WHERE period >= ?1 AND period < ?2 ORDER BY period, pos")
            .map_err(|e| self.err(e))?;
        let mut out: Vec<KeyUnitsRow> = Vec::new();
        let rows = st
            .query_map([ts(from), ts(to)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (p, u) = row.map_err(|e| self.err(e))?;
            let p = from_ts(p);
            match out.last_mut() {
                Some((s, v)) if *s == p => v.push(u),
                _ => out.push((p, vec![u])),
            }
        }
        Ok(out)
    }

    /// Content hashes of the periods in `[from, to)`, for a key file's inputs.
    pub fn period_hashes(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, String)>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT start, content_hash FROM periods WHERE start >= ?1 AND start < ?2 ORDER BY start")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([ts(from), ts(to)], |r| Ok((from_ts(r.get(0)?), r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// The latest boundary snapshot of every counter.
    pub fn latest_snapshots(&self) -> Result<Vec<CounterSnapshot>, LedgerError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT device, reading, max(at), value FROM counter_snapshots GROUP BY device, reading",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(CounterSnapshot {
                    device: r.get(0)?,
                    reading: r.get(1)?,
                    at: from_ts(r.get(2)?),
                    value: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// A counter's stored boundary value.
    pub fn snapshot(
        &self,
        device: &str,
        reading: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<f64>, LedgerError> {
        self.conn
            .query_row(
                "SELECT value FROM counter_snapshots WHERE device = ?1 AND reading = ?2 AND at = ?3",
                params![device, reading, ts(at)],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Records a validated key file. The same content as the latest version of
    /// `name` is a no-op (regenerating is idempotent); different content is a
    /// new version, never an overwrite. A new version enters the outbox in the
    /// same transaction, keyed by its content hash.
    #[allow(clippy::too_many_arguments)]
    pub fn record_key_file(
        &mut self,
        name: &str,
        first_day: NaiveDate,
        last_day: NaiveDate,
        content: &[u8],
        inputs: &str,
        policy: &str,
        now: DateTime<Utc>,
    ) -> Result<KeyFileVersion, LedgerError> {
        let sha = sha256_hex(content);
        let path = self.path.clone();
        let e = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(e)?;
        let latest: Option<(i64, String)> = tx
            .query_row(
                "SELECT version, sha256 FROM key_files WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e)?;
        if let Some((version, s)) = &latest {
            if *s == sha {
                return Ok(KeyFileVersion {
                    name: name.to_string(),
                    version: *version,
                    sha256: sha,
                    new: false,
                });
            }
        }
        let version = latest.map(|(v, _)| v + 1).unwrap_or(1);
        tx.execute(
            "INSERT INTO key_files (name, version, first_day, last_day, sha256, content, inputs, policy, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![name, version, first_day.to_string(), last_day.to_string(), sha, content, inputs, policy, now.to_rfc3339()],
        )
        .map_err(e)?;
        // The same bytes under another name (or an old version coming back)
        // would reuse the key: the receiver already has them.
        tx.execute(
            "INSERT OR IGNORE INTO outbox (file_name, version, idempotency_key, state, next_attempt) VALUES (?1, ?2, ?3, 'pending', ?4)",
            params![name, version, format!("{name}:{sha}"), ts(now)],
        )
        .map_err(e)?;
        append_audit(&tx, "key_file", &format!("{name} v{version}"), &sha).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(KeyFileVersion {
            name: name.to_string(),
            version,
            sha256: sha,
            new: true,
        })
    }

    /// The `inputs` of every key-file version whose range ends on
    /// `last_day`, newest first.
    pub fn key_file_inputs_ending(&self, last_day: NaiveDate) -> Result<Vec<String>, LedgerError> {
        let mut st = self
            .conn
            .prepare("SELECT inputs FROM key_files WHERE last_day = ?1 ORDER BY created_at DESC, rowid DESC")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([last_day.to_string()], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Number of versions recorded for a key file.
    pub fn key_file_versions(&self, name: &str) -> Result<i64, LedgerError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM key_files WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// A plan as published (table added by migration 2).
    pub fn record_plan(
        &mut self,
        computed_at: DateTime<Utc>,
        status: &str,
        objective_eur: f64,
        plan_json: &str,
    ) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO plans (computed_at, status, objective_eur, plan_json) VALUES (?1, ?2, ?3, ?4)",
                params![ts(computed_at), status, objective_eur, plan_json],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// A setpoint write and its result (`ok`, `error`, `refused`, `dry_run`).
    pub fn record_setpoint(
        &mut self,
        at: DateTime<Utc>,
        device: &str,
        watts: f64,
        result: &str,
    ) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO setpoints (at, device, watts, result) VALUES (?1, ?2, ?3, ?4)",
                params![ts(at), device, watts, result],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// A dispatch decision in one transaction: the plan behind it (if new)
    /// and the setpoints handed to the devices' endpoints.
    pub fn record_dispatch(
        &mut self,
        at: DateTime<Utc>,
        plan: Option<(DateTime<Utc>, &str, f64, &str)>,
        setpoints: &[(String, f64, &str)],
    ) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let e = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(e)?;
        if let Some((computed_at, status, objective, json)) = plan {
            tx.execute(
                "INSERT INTO plans (computed_at, status, objective_eur, plan_json) VALUES (?1, ?2, ?3, ?4)",
                params![ts(computed_at), status, objective, json],
            )
            .map_err(e)?;
        }
        for (device, watts, result) in setpoints {
            tx.execute(
                "INSERT INTO setpoints (at, device, watts, result) VALUES (?1, ?2, ?3, ?4)",
                params![ts(at), device, watts, result],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    /// Numbers of plans and setpoints recorded.
    pub fn dispatch_counts(&self) -> Result<(u64, u64), LedgerError> {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM plans), (SELECT count(*) FROM setpoints)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))
    }

    /// Appends an audit entry on its own (e.g. `start`, `resume`).
    pub fn audit(&mut self, kind: &str, subject: &str, detail: &str) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let e = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(e)?;
        append_audit(&tx, kind, subject, detail).map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Folds counter snapshots older than `before`: of those, only the ones
    /// at a UTC midnight (one per counter and day, enough to recompute daily
    /// totals per device) and each counter's latest (the resume point, even
    /// for a device gone for months) are kept. The energies of closed periods
    /// are stored in their own rows, so nothing a restart or a period's
    /// figures need is lost; the fold is recorded in the audit log. Freed
    /// pages are reused by later periods, so the file stops growing by them.
    /// Returns the number of snapshots removed.
    pub fn prune_snapshots(&mut self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        let path = self.path.clone();
        let e = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(e)?;
        let n = tx
            .execute(
                "DELETE FROM counter_snapshots AS c
                 WHERE c.at < ?1 AND c.at % 86400 != 0
                   AND c.at < (SELECT max(l.at) FROM counter_snapshots AS l
                               WHERE l.device = c.device AND l.reading = c.reading)",
                params![ts(before)],
            )
            .map_err(e)?;
        if n > 0 {
            append_audit(
                &tx,
                "prune",
                &before.to_rfc3339(),
                &format!("{n} counter snapshots folded to daily"),
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(n as u64)
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

    pub(crate) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
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

fn append_audit(
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

#[cfg(test)]
mod tests;
