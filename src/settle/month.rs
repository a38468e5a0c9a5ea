//! The month-to-date figures that month-aware keys need, added period by
//! period from the archived period records.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};

use crate::allocation;
use crate::config::Site;

/// The local month's figures so far, for optimised keys that honour the
/// month's fairness rules (`[keys] floor_ratio`, `no_worse_than_pro_rata`)
/// across periods rather than within each period alone.
///
/// Every closed period is added from its archived record (the JSON the
/// ledger stores), both live and when the month is rebuilt from the ledger
/// at start, so a restart mid-month carries exactly the same figures as an
/// uninterrupted run. The account restarts at each local month.
pub struct Month {
    /// Local (year, month) the account is for.
    key: Option<(i32, u32)>,
    /// One account per operation of the site, its members in the order of
    /// [`crate::config::Operation::participants`].
    pub(crate) accounts: Vec<allocation::MonthToDateAccount>,
    /// Rounding remainders after the last period added, by participant
    /// order of the site config.
    pub(crate) carry: allocation::Remainders,
}

/// The parts of a period record the month's account needs.
#[derive(serde::Deserialize)]
struct RecordFigures {
    start: DateTime<Utc>,
    #[serde(default)]
    consumption_kwh: BTreeMap<String, f64>,
    #[serde(default)]
    allocated_kwh: BTreeMap<String, f64>,
    #[serde(default)]
    total_production_kwh: f64,
    #[serde(default)]
    production_kwh: BTreeMap<String, f64>,
    #[serde(default)]
    remainder_kwh: BTreeMap<String, f64>,
    #[serde(default)]
    behind_pro_rata_kwh: BTreeMap<String, f64>,
    #[serde(default)]
    pro_rata_kwh: BTreeMap<String, f64>,
}

impl Month {
    pub fn new() -> Month {
        Month {
            key: None,
            accounts: Vec::new(),
            carry: allocation::Remainders::default(),
        }
    }

    fn key_of(grid: &crate::time::Grid, start: DateTime<Utc>) -> (i32, u32) {
        let d = grid.local_day(start);
        (d.year(), d.month())
    }

    /// The accounts for the period starting at `start`: emptied when the
    /// period opens a new local month.
    pub fn roll(&mut self, site: &Site, start: DateTime<Utc>) {
        let key = Month::key_of(&site.grid, start);
        let sizes: Vec<usize> = site
            .operations()
            .iter()
            .map(|o| o.participants.len())
            .collect();
        let same = self.accounts.len() == sizes.len()
            && self
                .accounts
                .iter()
                .zip(&sizes)
                .all(|(a, n)| a.participants.len() == *n);
        if self.key != Some(key) || !same {
            self.key = Some(key);
            self.accounts = sizes
                .iter()
                .map(|n| allocation::MonthToDateAccount::new(*n))
                .collect();
            self.carry = allocation::Remainders::new(site.config.participants.len());
        }
    }

    /// The whole site's month so far: every operation's account together.
    pub fn steps(&self) -> usize {
        self.accounts.first().map_or(0, |a| a.steps)
    }

    /// Adds a closed period from its archived record. Participants are
    /// matched by id, so a record stored under another participant list
    /// still counts for those present; a participant absent from the record
    /// (its meter unknown that period) counts as zero, as its keys did.
    pub fn add_record(&mut self, site: &Site, record_json: &str) {
        let rec: RecordFigures = match serde_json::from_str(record_json) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "period record unreadable; left out of the month's fairness figures");
                return;
            }
        };
        self.roll(site, rec.start);
        let cfg = &site.config;
        let tz = site.grid.tz();
        let get = |m: &BTreeMap<String, f64>, id: &str| m.get(id).copied().unwrap_or(0.0);
        let operations = site.operations();
        let producers = site.producers();
        for (op, account) in operations.iter().zip(self.accounts.iter_mut()) {
            let members: Vec<&crate::config::ParticipantConfig> = op
                .participants
                .iter()
                .map(|&i| &cfg.participants[i])
                .collect();
            let consumption: Vec<f64> = members
                .iter()
                .map(|p| get(&rec.consumption_kwh, &p.id))
                .collect();
            let allocated: Vec<f64> = members
                .iter()
                .map(|p| get(&rec.allocated_kwh, &p.id))
                .collect();
            let values: Vec<f64> = members
                .iter()
                .map(|p| p.tariff_at(rec.start, tz) - cfg.plan.local_price_eur_per_kwh)
                .collect();
            // A single operation shares all production, also in records
            // stored before producers were listed per operation.
            let production = if operations.len() == 1 {
                rec.total_production_kwh
            } else {
                op.producers
                    .iter()
                    .map(|&i| get(&rec.production_kwh, &producers[i].id))
                    .sum()
            };
            if let Err(e) = account.add_step(production, &consumption, &allocated, &values) {
                tracing::warn!(operation = op.label(), error = %e, "period left out of the month's fairness figures");
            }
        }
        // The remainders as the period left them (a record without them
        // leaves the carry as it was).
        if !rec.remainder_kwh.is_empty() {
            let by_participant = |m: &BTreeMap<String, f64>| -> Vec<f64> {
                cfg.participants.iter().map(|p| get(m, &p.id)).collect()
            };
            self.carry = allocation::Remainders {
                kwh: by_participant(&rec.remainder_kwh),
                behind_pro_rata_kwh: by_participant(&rec.behind_pro_rata_kwh),
                pro_rata_kwh: by_participant(&rec.pro_rata_kwh),
            };
        }
    }

    /// The pooled production of the month so far, over every operation.
    pub fn production_kwh(&self) -> f64 {
        self.accounts.iter().map(|a| a.production_kwh).sum()
    }
}

impl Default for Month {
    fn default() -> Self {
        Month::new()
    }
}
