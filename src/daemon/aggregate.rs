//! The aggregator: readings → metrics and status; counter samples →
//! [`crate::settle`], which turns them into energy per settlement period and
//! keys; closed periods → the ledger writer ([`ledger_writer`]), which stores
//! them and builds the key files ([`day_files`]).
//!
//! Every closed period goes to the ledger (one transaction) before anything is
//! built from it: the day's key files are rendered from the ledger's rows, so
//! a restart keeps the whole day. On start the aggregator resumes from the
//! ledger: the next period to close follows the last one stored (those are
//! never recomputed), and each counter restarts from its last stored boundary
//! value, so the period open at the crash is completed from counters.
//!
//! If the ledger cannot be written (read-only, disk full), polling, planning
//! and control go on; closed periods wait in memory (at most
//! [`ledger_writer::MAX_PENDING`], a week of quarter-hours) and are written,
//! in order, when the ledger accepts writes again.

use super::handoff::{Drained, Handoff, Latest};
use super::{PeriodRecord, Shared};
use crate::config::DeviceKind;
use crate::events::{self, PeriodFallback};
use crate::ledger::{ClosedPeriod, CounterSnapshot, EnergyRow, Ledger, Owner, Quality};
use crate::settle::{self, Counters, Month};
use crate::units::JOULES_PER_KWH;
use chrono::{DateTime, Datelike, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

mod day_files;
mod ledger_writer;
#[cfg(test)]
mod tests;

pub(super) use ledger_writer::Sink;
use ledger_writer::{spawn_writer, ToWrite};

pub async fn run(
    shared: Arc<Shared>,
    handoff: Arc<Handoff>,
    periods: mpsc::Sender<PeriodRecord>,
    mut shutdown: watch::Receiver<bool>,
    mut sink: Sink,
) {
    let site = &shared.site;
    let grid = site.grid;
    let clock = shared.clock;
    let mut counters = Counters::new(grid);
    let kinds: HashMap<String, DeviceKind> = site
        .config
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.kind))
        .collect();
    // The first whole period after start; the one running at start is incomplete.
    let mut next = grid.next_period(grid.period_start(clock.now()));
    if let Some(resume) = resume(&shared, &mut sink, &mut counters, &kinds) {
        next = resume;
    }
    let mut month = month_from_sink(&shared, &mut sink, next);
    let (writer, writer_thread) = spawn_writer(shared.clone(), sink);
    let poll = &site.config.polling;
    let grace = clock.clock_duration(Duration::from_millis(
        3 * poll.interval_ms + 2 * poll.timeout_ms,
    ));
    // A period is closed only once every device had the chance to be polled
    // since start: after a restart the first samples complete the open period.
    let mut first_close = clock.now() + grace;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_tick = (clock.now(), std::time::Instant::now());
    loop {
        tokio::select! {
            _ = handoff.wait() => {
                on_drained(&shared, &mut counters, handoff.drain());
            }
            _ = tick.tick() => {
                // Samples taken before the boundary must be in before it closes.
                on_drained(&shared, &mut counters, handoff.drain());
                // A forward clock step (NTP correcting a gateway that booted
                // with a wrong clock) puts the periods it skipped behind "now"
                // at once, before any sample from after the step is in. They
                // wait a grace, as after a restart: the first sample after the
                // step then spans the gap, which flags them `estimated` rather
                // than `missing`.
                let (now, real) = (clock.now(), std::time::Instant::now());
                let expected = clock.clock_duration(real - last_tick.1);
                if now - last_tick.0 - expected > grid.step() {
                    tracing::warn!(from = %grid.format_local(last_tick.0), to = %grid.format_local(now), "clock jumped forward; the periods it skipped are closed from the samples after it, flagged estimated");
                    first_close = first_close.max(now + grace);
                }
                last_tick = (now, real);
                while clock.now() >= grid.next_period(next) + grace && clock.now() >= first_close {
                    let (rec, closed) = close_period(&shared, &counters, &mut month, next);
                    // The planner need not wait for the ledger's fsync; files and
                    // deliveries are built only from what the ledger committed.
                    let _ = periods.try_send(rec);
                    if writer.send(ToWrite { closed }).is_err() {
                        tracing::error!("ledger writer gone; period not stored");
                    }
                    next = grid.next_period(next);
                }
                let now = clock.now();
                let mut st = shared.status();
                st.now = Some(now);
                if let Some(at) = st.plan.as_ref().and_then(|p| p.computed_at) {
                    shared.metrics.plan_age_seconds.set((now - at).num_milliseconds() as f64 / 1000.0);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(writer);
    // The writer finishes what is pending unless the ledger refuses it.
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
}

/// The month so far from the ledger (read-only when it cannot be written).
fn month_from_sink(shared: &Shared, sink: &mut Sink, next: DateTime<Utc>) -> Month {
    if let Some(l) = sink.ledger.as_ref() {
        return month_from_ledger(shared, l, next);
    }
    match Ledger::open_read_only(&sink.path) {
        Ok(l) => month_from_ledger(shared, &l, next),
        Err(_) => Month::new(),
    }
}

/// Where to go on from the ledger: the period after the last stored one,
/// counters seeded from their last stored boundary values.
fn resume(
    shared: &Shared,
    sink: &mut Sink,
    counters: &mut Counters,
    kinds: &HashMap<String, DeviceKind>,
) -> Option<DateTime<Utc>> {
    let grid = shared.site.grid;
    let now = shared.clock.now();
    // A ledger readable but not writable at start (catch-up mode) is still
    // where the resume point is.
    let mut read_only;
    let ledger = match sink.ledger.as_mut() {
        Some(l) => l,
        None => {
            read_only = Ledger::open_read_only(&sink.path).ok()?;
            &mut read_only
        }
    };
    let last = match ledger.last_period() {
        Ok(l) => l?,
        Err(e) => {
            tracing::error!(error = %e, "ledger unreadable; not resuming from it");
            return None;
        }
    };
    let next = grid.next_period(last);
    if next > grid.period_start(now) {
        tracing::warn!(last = %grid.format_local(last), now = %grid.format_local(now), "the ledger holds periods after the clock's now (clock set back, or a simulation re-run on the same ledger); they are not closed again: for a fresh run use another --out or --ledger");
        return Some(next);
    }
    if now - next > chrono::Duration::days(31) {
        tracing::warn!(last = %grid.format_local(last), "last stored period is more than 31 days old; starting afresh, the gap stays unrecorded");
        return None;
    }
    let snaps = ledger.latest_snapshots().unwrap_or_else(|e| {
        tracing::error!(error = %e, "counter snapshots unreadable; the open period is closed without them");
        Vec::new()
    });
    for s in snaps.iter().filter(|s| s.at <= now) {
        counters.seed(
            &settle::Boundary {
                device: s.device.clone(),
                reading: s.reading.clone(),
                at: s.at,
                value: s.value,
            },
            kinds,
        );
    }
    let _ = ledger.audit(
        "resume",
        &last.to_rfc3339(),
        &format!("{} counters seeded", snaps.len()),
    );
    // The crash may have fallen between the day's last period and its files.
    sink.day_complete(shared, last, next);
    tracing::info!(last = %grid.format_local(last), next = %grid.format_local(next), counters = snaps.len(), "resuming from the ledger");
    Some(next)
}

fn on_drained(shared: &Shared, counters: &mut Counters, d: Drained) {
    let m = &shared.metrics;
    if d.dropped > 0 {
        events::emit(m, events::SamplesDropped { dropped: d.dropped });
    }
    for (device, samples) in d.samples {
        for s in samples {
            for (reading, v) in s.values {
                if let Some(delta) = counters.sample(&device, reading, s.at, v) {
                    let dir = match reading {
                        "export_kwh" => "export",
                        "heat_kwh" => "heat",
                        "production_kwh" => "production",
                        _ => "import",
                    };
                    m.device_energy
                        .with_label_values(&[&device, dir])
                        .inc_by(delta.max(0.0) * JOULES_PER_KWH);
                }
            }
        }
    }
    for (device, latest) in d.latest {
        on_latest(shared, device, latest);
    }
}

fn on_latest(shared: &Shared, device: String, latest: Latest) {
    let m = &shared.metrics;
    match latest {
        Latest::Down(kind) => {
            let mut st = shared.status();
            if let Some(d) = st.devices.get_mut(&device) {
                d.up = false;
                d.last_error = Some(kind.to_string());
            }
        }
        Latest::Up(s) => {
            let kind_s = shared
                .status()
                .devices
                .get(&s.device)
                .map(|d| d.kind.clone())
                .unwrap_or_else(|| "unknown".into());
            let kind_s = kind_s.as_str();
            for (name, v) in &s.readings {
                let dev = s.device.as_str();
                match *name {
                    "production_kw" => m
                        .device_power
                        .with_label_values(&[dev, kind_s])
                        .set(v * 1000.0),
                    "power_kw" => m
                        .device_power
                        .with_label_values(&[dev, kind_s])
                        .set(v * 1000.0),
                    "heat_kw" => m.heat_flow.with_label_values(&[dev]).set(v * 1000.0),
                    "soc_pct" => m.battery_soc.with_label_values(&[dev]).set(v / 100.0),
                    "store_kwh" => m
                        .heat_store_energy
                        .with_label_values(&[dev])
                        .set(v * JOULES_PER_KWH),
                    "valve_pct" => m.valve_ratio.with_label_values(&[dev]).set(v / 100.0),
                    "flow_m3h" => m.volume_flow.with_label_values(&[dev]).set(v / 3600.0),
                    n if n.ends_with("_c") => m
                        .temperature
                        .with_label_values(&[dev, n.trim_end_matches("_c")])
                        .set(*v),
                    _ => {}
                }
            }
            let mut st = shared.status();
            st.polled_once = true;
            if let Some(d) = st.devices.get_mut(&s.device) {
                d.up = true;
                d.last_error = None;
                d.read_at = Some(s.at);
                d.readings = s
                    .readings
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect();
            }
        }
    }
}

/// The month up to (not including) `next`, rebuilt from the ledger.
fn month_from_ledger(shared: &Shared, ledger: &Ledger, next: DateTime<Utc>) -> Month {
    let grid = shared.site.grid;
    let mut month = Month::new();
    month.roll(&shared.site, next);
    let day = grid.local_day(next);
    let Some(first) = day.with_day(1) else {
        return month;
    };
    let Ok(from) = grid.local_midnight(first) else {
        return month;
    };
    match ledger.periods_between(from, next) {
        Ok(periods) => {
            for p in &periods {
                month.add_record(&shared.site, &p.record_json);
            }
            if !periods.is_empty() {
                tracing::info!(
                    periods = month.steps(),
                    production_kwh = month.production_kwh(),
                    "month-to-date figures rebuilt from the ledger"
                );
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "month-to-date periods unreadable; the month's fairness starts now");
        }
    }
    month
}

/// The period's export price from `plan.export_prices_file` as the plan saw
/// it (a file that cannot be read now gives the flat price; the planner
/// warns and counts that).
fn export_price_at(cfg: &crate::config::SiteConfig, start: chrono::DateTime<chrono::Utc>) -> f64 {
    let flat = cfg.plan.export_price_eur_per_kwh;
    let Some(file) = &cfg.plan.export_prices_file else {
        return flat;
    };
    match crate::prices::Schedule::load(file) {
        Ok(s) => s.at(start, flat),
        Err(e) => {
            tracing::debug!(error = %e, "period keys: export prices not read; flat price");
            flat
        }
    }
}

/// Closes the period starting at `start`: settles it, records it in the
/// month's figures, counts and logs it, and shows it in the status.
fn close_period(
    shared: &Shared,
    counters: &Counters,
    month: &mut Month,
    start: DateTime<Utc>,
) -> (PeriodRecord, ClosedPeriod) {
    let site = &shared.site;
    let mut en = settle::energies(site, counters, start);
    let mut problems = std::mem::take(&mut en.problems);
    let export_price = |at: DateTime<Utc>| export_price_at(&site.config, at);
    let keys = settle::keys(site, month, start, &en, &export_price, &mut problems);
    for _ in 0..keys.month_solver_fallbacks {
        events::emit(
            &shared.metrics,
            events::PeriodFellBack {
                reason: PeriodFallback::MonthSolver,
            },
        );
    }
    count_quality(shared, en.estimated, &problems);
    let quality = settle::quality(site, start, en.estimated, &problems);
    let rec = period_record(site, start, &en, &keys, quality);
    let closed = closed_period(site, counters, &rec, &en);
    month.add_record(site, &closed.record_json);
    period_metrics(shared, &rec, &en, &keys);
    tracing::info!(
        period = %rec.start_local,
        production_kwh = format!("{:.1}", rec.total_production_kwh),
        consumption_kwh = format!("{:.1}", rec.total_consumption_kwh),
        self_consumed_kwh = format!("{:.1}", rec.self_consumed_kwh),
        surplus_kwh = format!("{:.1}", rec.surplus_kwh),
        quality = %rec.quality,
        "period closed"
    );
    let mut st = shared.status();
    st.periods_closed += 1;
    st.last_period = Some(rec.clone());
    (rec, closed)
}

/// Estimated periods, and periods sent to the default rule by why.
fn count_quality(shared: &Shared, estimated: bool, problems: &[String]) {
    let m = &shared.metrics;
    if estimated {
        m.periods_estimated.inc();
    }
    if !problems.is_empty() {
        let reason = if problems.iter().any(|p| p.contains("reset")) {
            PeriodFallback::CounterReset
        } else {
            PeriodFallback::MissingData
        };
        events::emit(m, events::PeriodFellBack { reason });
    }
}

/// The period as archived: unknown energies are left out of its maps.
fn period_record(
    site: &crate::config::Site,
    start: DateTime<Utc>,
    en: &settle::Energies,
    keys: &settle::PeriodKeys,
    quality: String,
) -> PeriodRecord {
    let cfg = &site.config;
    PeriodRecord {
        start,
        start_local: site.grid.format_local(start),
        production_kwh: en
            .production
            .iter()
            .filter(|(id, _)| !en.unknown.contains(id))
            .map(|(id, e)| (id.clone(), *e))
            .collect(),
        consumption_kwh: cfg
            .participants
            .iter()
            .zip(&en.consumption)
            .filter(|(p, _)| !en.unknown.contains(&p.id))
            .map(|(p, e)| (p.id.clone(), *e))
            .collect(),
        allocated_kwh: settle::by_participant(site, &keys.allocated),
        remainder_kwh: settle::by_participant(site, &keys.carry.kwh),
        behind_pro_rata_kwh: settle::by_participant(site, &keys.carry.behind_pro_rata_kwh),
        pro_rata_kwh: settle::by_participant(site, &keys.carry.pro_rata_kwh),
        key_units: keys.units.clone(),
        total_production_kwh: en.total_production_kwh,
        total_consumption_kwh: en.consumption.iter().sum(),
        self_consumed_kwh: keys.self_consumed_kwh,
        surplus_kwh: keys.surplus_kwh,
        quality,
        policy: cfg.keys.policy.as_str().to_string(),
    }
}

/// What the ledger stores of the period: its record, energies, keys and the
/// counters' values at its two boundaries.
fn closed_period(
    site: &crate::config::Site,
    counters: &Counters,
    rec: &PeriodRecord,
    en: &settle::Energies,
) -> ClosedPeriod {
    let grid = site.grid;
    let start = rec.start;
    ClosedPeriod {
        start,
        end: grid.next_period(start),
        record_json: serde_json::to_string(rec).unwrap_or_default(),
        quality: rec.quality.clone(),
        policy: rec.policy.clone(),
        energies: en.rows.iter().map(energy_row).collect(),
        keys: site
            .config
            .participants
            .iter()
            .zip(&rec.key_units)
            .map(|(p, u)| (p.id.clone(), p.prm.as_str().to_string(), *u))
            .collect(),
        snapshots: counters
            .snapshots_at(&[start, grid.next_period(start)])
            .into_iter()
            .map(|b| CounterSnapshot {
                device: b.device,
                reading: b.reading,
                at: b.at,
                value: b.value,
            })
            .collect(),
    }
}

fn energy_row(e: &settle::Energy) -> EnergyRow {
    EnergyRow {
        owner: match e.owner {
            settle::Owner::Device => Owner::Device,
            settle::Owner::Participant => Owner::Participant,
        },
        id: e.id.clone(),
        reading: e.reading.clone(),
        kwh: e.kwh,
        quality: match e.quality {
            settle::Quality::Measured => Quality::Measured,
            settle::Quality::Estimated => Quality::Estimated,
            settle::Quality::Missing => Quality::Missing,
        },
    }
}

/// The period's gauges and the running totals.
fn period_metrics(
    shared: &Shared,
    rec: &PeriodRecord,
    en: &settle::Energies,
    keys: &settle::PeriodKeys,
) {
    let cfg = &shared.site.config;
    let m = &shared.metrics;
    let (total_p, total_c) = (rec.total_production_kwh, rec.total_consumption_kwh);
    let (self_consumed, surplus) = (rec.self_consumed_kwh, rec.surplus_kwh);
    let units_per_one = f64::from(cfg.keys.units_per_one);
    m.periods_closed.inc();
    m.period_start.set(rec.start.timestamp() as f64);
    m.period_production.set(total_p * JOULES_PER_KWH);
    m.period_consumption.set(total_c * JOULES_PER_KWH);
    m.period_self_consumed.set(self_consumed * JOULES_PER_KWH);
    m.period_surplus.set(surplus * JOULES_PER_KWH);
    m.production_total.inc_by(total_p.max(0.0) * JOULES_PER_KWH);
    m.self_consumed_total
        .inc_by(self_consumed.max(0.0) * JOULES_PER_KWH);
    m.self_consumption_ratio.set(if total_p > 0.0 {
        self_consumed / total_p
    } else {
        0.0
    });
    m.self_sufficiency_ratio.set(if total_c > 0.0 {
        self_consumed / total_c
    } else {
        0.0
    });
    // Each operation's keys share its own production: the sum that must
    // stay at most 1 is each operation's.
    let key_sum: u32 = keys
        .operation_sums
        .iter()
        .copied()
        .max()
        .unwrap_or_default();
    m.key_sum_max_ratio.set(f64::from(key_sum) / units_per_one);
    for (p, u) in cfg.participants.iter().zip(&rec.key_units) {
        m.participant_key_ratio
            .with_label_values(&[&p.id])
            .set(f64::from(*u) / units_per_one);
    }
    for (p, (a, c)) in cfg
        .participants
        .iter()
        .zip(keys.allocated.iter().zip(&en.consumption))
    {
        m.participant_allocated
            .with_label_values(&[&p.id])
            .inc_by(a.max(0.0) * JOULES_PER_KWH);
        m.participant_consumed
            .with_label_values(&[&p.id])
            .inc_by(c.max(0.0) * JOULES_PER_KWH);
    }
}
