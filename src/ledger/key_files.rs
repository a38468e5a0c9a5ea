//! Key file versions: recording a validated key file as a new version (or
//! as a no-op when its content is already the latest), queuing it in the
//! delivery outbox in the same audited transaction, and reading back which
//! periods earlier versions were built from.

use super::audit::append_audit;
use super::{sha256_hex, sqlite_error, ts, KeyFileVersion, Ledger, LedgerError};
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{params, OptionalExtension};

impl Ledger {
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
        let e = sqlite_error(&path);
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
        self.query_rows(
            "SELECT inputs FROM key_files WHERE last_day = ?1 ORDER BY created_at DESC, rowid DESC",
            [last_day.to_string()],
            |r| r.get::<_, String>(0),
        )
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
}
