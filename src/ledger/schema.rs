//! The ledger file itself: opening it (read-write, read-only, or just
//! checking that an existing file can be resumed from), the pragmas every
//! connection gets (WAL, `synchronous=FULL`, foreign keys) and the ordered
//! schema migrations that bring any older file up to [`SCHEMA_VERSION`].

use super::{sqlite_error, Ledger, LedgerError};
use chrono::Utc;
use rusqlite::{params, Connection, OpenFlags};
use std::path::Path;

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
        let e = sqlite_error(&path);
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
}
