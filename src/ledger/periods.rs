//! Closed periods and counter snapshots: committing a period with its
//! energies, keys and boundary snapshots in one audited transaction (never
//! rewriting one already stored), reading periods, energies, keys and
//! content hashes back, the counters' resume points, and folding old
//! snapshots to one per day.

use super::audit::append_audit;
use super::{
    from_ts, sha256_hex, sqlite_error, ts, ClosedPeriod, CounterSnapshot, EnergyRow, KeyUnitsRow,
    Ledger, LedgerError, Owner, PeriodWrite, Quality, StoredPeriod,
};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

impl Ledger {
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
        let e = sqlite_error(&path);
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
                stored_period,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every stored period, oldest first.
    pub fn periods(&self) -> Result<Vec<StoredPeriod>, LedgerError> {
        self.query_rows(
            "SELECT start, quality, content_hash, record_json FROM periods ORDER BY start",
            [],
            stored_period,
        )
    }

    /// Stored periods with a start in `[from, to)`, oldest first.
    pub fn periods_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredPeriod>, LedgerError> {
        self.query_rows(
            "SELECT start, quality, content_hash, record_json FROM periods WHERE start >= ?1 AND start < ?2 ORDER BY start",
            [ts(from), ts(to)],
            stored_period,
        )
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
        self.query_rows(
            "SELECT owner, id, reading, kwh, quality FROM energies WHERE period = ?1 ORDER BY owner, id, reading",
            [ts(start)],
            |r| {
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
            },
        )
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
        self.query_rows(
            "SELECT start, content_hash FROM periods WHERE start >= ?1 AND start < ?2 ORDER BY start",
            [ts(from), ts(to)],
            |r| Ok((from_ts(r.get(0)?), r.get(1)?)),
        )
    }

    /// The latest boundary snapshot of every counter.
    pub fn latest_snapshots(&self) -> Result<Vec<CounterSnapshot>, LedgerError> {
        self.query_rows(
            "SELECT device, reading, max(at), value FROM counter_snapshots GROUP BY device, reading",
            [],
            |r| {
                Ok(CounterSnapshot {
                    device: r.get(0)?,
                    reading: r.get(1)?,
                    at: from_ts(r.get(2)?),
                    value: r.get(3)?,
                })
            },
        )
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
        let e = sqlite_error(&path);
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
}

/// A `periods` row selected as `start, quality, content_hash, record_json`.
fn stored_period(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredPeriod> {
    Ok(StoredPeriod {
        start: from_ts(r.get(0)?),
        quality: r.get(1)?,
        content_hash: r.get(2)?,
        record_json: r.get(3)?,
    })
}
