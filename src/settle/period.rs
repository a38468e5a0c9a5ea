//! One closed settlement period: its energies from the counters, flagged
//! where unknown or estimated, and every operation's keys with the month's
//! figures so far.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::counters::{Counters, Quality};
use super::keys::operation_keys;
use super::month::Month;
use crate::config::{DeviceKind, Site};

/// Whose reading an energy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Device,
    Participant,
}

/// One counter's energy over the period, as archived.
#[derive(Debug, Clone, PartialEq)]
pub struct Energy {
    pub owner: Owner,
    pub id: String,
    pub reading: String,
    /// `None` when unknown ([`Quality::Missing`]).
    pub kwh: Option<f64>,
    pub quality: Quality,
}

/// The period's energies, before keys.
pub struct Energies {
    /// Every producer's energy (zero where unknown).
    pub production: BTreeMap<String, f64>,
    pub total_production_kwh: f64,
    /// Per participant of the site, in config order: what it shares with
    /// the production (zero outside its membership or where unknown).
    pub consumption: Vec<f64>,
    pub rows: Vec<Energy>,
    pub estimated: bool,
    /// Producers and participants whose energy is unknown this period
    /// (missing samples, a counter reset).
    pub unknown: Vec<String>,
    pub problems: Vec<String>,
}

/// The period's energies from the counters.
pub fn energies(site: &Site, counters: &Counters, start: DateTime<Utc>) -> Energies {
    let cfg = &site.config;
    let mut problems: Vec<String> = Vec::new();
    let mut production = BTreeMap::new();
    let mut rows: Vec<Energy> = Vec::new();
    let mut estimated = false;
    // Flagged in the record and left out of its energy maps, so that no
    // stand-in number is archived as if measured.
    let mut unknown: Vec<String> = Vec::new();
    let mut total_p = 0.0;
    for d in site.producers() {
        let reading = if d.kind == DeviceKind::Battery {
            "export_kwh"
        } else {
            "production_kwh"
        };
        let (e, q) = match counters.energy(&d.id, reading, start) {
            Ok(v) => v,
            Err(why) => {
                problems.push(why);
                unknown.push(d.id.clone());
                (0.0, Quality::Missing)
            }
        };
        estimated |= q == Quality::Estimated;
        rows.push(Energy {
            owner: Owner::Device,
            id: d.id.clone(),
            reading: reading.into(),
            kwh: (q != Quality::Missing).then_some(e),
            quality: q,
        });
        total_p += e;
        production.insert(d.id.clone(), e);
    }
    let mut consumption = Vec::with_capacity(cfg.participants.len());
    let day = site.grid.local_day(start);
    for p in &cfg.participants {
        // Outside its membership a participant's meter is archived as read
        // but takes no part in the operation: no consumption to share
        // production with, so no key, and a missing reading of it does not
        // send the period to the default rule.
        let (entry, exit) = p.membership();
        let member = !entry.is_some_and(|d| day < d) && !exit.is_some_and(|d| day > d);
        let (e, q) = match counters.energy(&p.meter, "import_kwh", start) {
            Ok(v) => v,
            Err(_) if !member => (0.0, Quality::Missing),
            Err(why) => {
                problems.push(why);
                unknown.push(p.id.clone());
                (0.0, Quality::Missing)
            }
        };
        let shared_kwh = if member { e } else { 0.0 };
        estimated |= q == Quality::Estimated;
        rows.push(Energy {
            owner: Owner::Participant,
            id: p.id.clone(),
            reading: "import_kwh".into(),
            kwh: (q != Quality::Missing).then_some(e),
            quality: q,
        });
        consumption.push(shared_kwh);
    }
    Energies {
        production,
        total_production_kwh: total_p,
        consumption,
        rows,
        estimated,
        unknown,
        problems,
    }
}

/// Every operation's keys for the period, by participant of the site.
pub struct PeriodKeys {
    pub units: Vec<u32>,
    pub allocated: Vec<f64>,
    pub self_consumed_kwh: f64,
    pub surplus_kwh: f64,
    /// Each operation's sum of key units.
    pub operation_sums: Vec<u32>,
    /// The remainders once the period's keys are applied.
    pub carry: crate::allocation::Remainders,
    /// Operations whose month solver's answer was not used.
    pub month_solver_fallbacks: u32,
}

/// The keys of every operation of the site; a reading that cannot be had
/// sends its operation to pro rata (and adds to `problems`).
pub fn keys(
    site: &Site,
    month: &mut Month,
    start: DateTime<Utc>,
    en: &Energies,
    export_price: &dyn Fn(DateTime<Utc>) -> f64,
    problems: &mut Vec<String>,
) -> PeriodKeys {
    let cfg = &site.config;
    month.roll(site, start);
    let n = cfg.participants.len();
    let mut out = PeriodKeys {
        units: vec![0; n],
        allocated: vec![0.0; n],
        self_consumed_kwh: 0.0,
        surplus_kwh: 0.0,
        operation_sums: Vec::new(),
        // Worked on a copy: the month takes the remainders from the archived
        // record (`Month::add_record`), live and when rebuilt alike.
        carry: month.carry.clone(),
        month_solver_fallbacks: 0,
    };
    let producers = site.producers();
    for (o, op) in site.operations().iter().enumerate() {
        // A producer or member of another operation missing its reading
        // does not send this operation to the default rule.
        let degraded = op
            .producers
            .iter()
            .map(|&i| &producers[i].id)
            .chain(op.participants.iter().map(|&i| &cfg.participants[i].id))
            .any(|id| en.unknown.contains(id));
        let production_kwh: f64 = op
            .producers
            .iter()
            .filter_map(|&i| en.production.get(&producers[i].id))
            .sum();
        let Some(account) = month.accounts.get(o) else {
            continue;
        };
        let k = operation_keys(
            site,
            op,
            start,
            export_price,
            production_kwh,
            &en.consumption,
            degraded,
            account,
            &mut out.carry,
            problems,
        );
        for (j, &i) in op.participants.iter().enumerate() {
            out.units[i] = k.units[j];
            out.allocated[i] = k.allocated[j];
        }
        out.self_consumed_kwh += k.self_consumed_kwh;
        out.surplus_kwh += k.surplus_kwh;
        out.operation_sums.push(k.units.iter().sum::<u32>());
        out.month_solver_fallbacks += u32::from(k.month_solver_fell_back);
    }
    out
}

/// The period's quality as archived: `measured`, `estimated`, or the
/// fallback to pro rata with its problems.
pub fn quality(site: &Site, start: DateTime<Utc>, estimated: bool, problems: &[String]) -> String {
    if problems.is_empty() {
        if estimated {
            "estimated".to_string()
        } else {
            "measured".to_string()
        }
    } else {
        tracing::warn!(period = %site.grid.format_local(start), problems = ?problems, "period flagged; keys fall back to pro-rata");
        format!("fallback: {}", problems.join("; "))
    }
}

/// A per-participant vector as the record's map by participant id.
pub fn by_participant<T: Copy>(site: &Site, v: &[T]) -> BTreeMap<String, T> {
    site.config
        .participants
        .iter()
        .zip(v)
        .map(|(p, e)| (p.id.clone(), *e))
        .collect()
}
