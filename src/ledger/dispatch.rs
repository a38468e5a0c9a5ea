//! Plans and setpoints: what the planner published and which setpoints were
//! handed to the devices' endpoints with their results, recorded one by one
//! or as a dispatch decision in one transaction, and counted.

use super::{sqlite_error, ts, Ledger, LedgerError};
use chrono::{DateTime, Utc};
use rusqlite::params;

impl Ledger {
    /// A plan as published (table added by migration 2).
    pub fn record_plan(
        &mut self,
        computed_at: DateTime<Utc>,
        status: &str,
        objective_eur: f64,
        plan_json: &str,
    ) -> Result<(), LedgerError> {
        self.execute(
            "INSERT INTO plans (computed_at, status, objective_eur, plan_json) VALUES (?1, ?2, ?3, ?4)",
            params![ts(computed_at), status, objective_eur, plan_json],
        )
    }

    /// A setpoint write and its result (`ok`, `error`, `refused`, `dry_run`).
    pub fn record_setpoint(
        &mut self,
        at: DateTime<Utc>,
        device: &str,
        watts: f64,
        result: &str,
    ) -> Result<(), LedgerError> {
        self.execute(
            "INSERT INTO setpoints (at, device, watts, result) VALUES (?1, ?2, ?3, ?4)",
            params![ts(at), device, watts, result],
        )
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
        let e = sqlite_error(&path);
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
}
