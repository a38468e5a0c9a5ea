//! At each settlement step: forecasts + current state → the rolling LP →
//! setpoints for the current step. The solve runs on a blocking thread under
//! the configured wall-clock budget and walks down the fallback ladder
//! (optimal → relaxed → last valid plan shifted → rule-based, see
//! [`plan::solve_ladder`]); a solver thread that does not come back in time
//! is abandoned and the ladder's lower rungs are taken here, so there is
//! always a checked plan.

use super::{PeriodRecord, PlanView, Shared};
use crate::config::DeviceKind;
use crate::devices::Command;
use crate::events::{self, Resolve};
use crate::forecast::{self, SeriesHistory};
use crate::plan::{self, PlanInput};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub async fn run(
    shared: Arc<Shared>,
    mut periods: mpsc::Receiver<PeriodRecord>,
    setpoints: watch::Sender<BTreeMap<String, Command>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let site = &shared.site;
    let grid = site.grid;
    let clock = shared.clock;
    let capacity = 3 * 24 * 60 / grid.step_minutes() as usize;
    let mut load_hist: HashMap<String, SeriesHistory> = site
        .config
        .participants
        .iter()
        .map(|p| (p.id.clone(), SeriesHistory::new(capacity)))
        .collect();
    // Let the first polls land before the first plan.
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(site.config.polling.interval_ms.saturating_mul(3))) => {}
        _ = shutdown.changed() => return,
    }
    let mut last_valid: Option<plan::Plan> = None;
    let mut export_prices = crate::prices::Feed::new(site.config.plan.export_prices_file.clone());
    let tracking_on = site.config.plan.tracking;
    // A control tick every five polls: each one sees fresh meter readings.
    let tick = Duration::from_millis(site.config.polling.interval_ms.max(1).saturating_mul(5));
    // The reason tracking last skipped a tick, to log a change of it once.
    let mut skipped: Option<&'static str> = None;
    if !tracking_on {
        tracing::info!("plan tracking off ([plan] tracking = false): the plan's setpoints stand between re-solves");
    }
    // The step whose plan was already re-solved after a forecast miss.
    let mut missed_start = None;
    for trigger in Resolve::ALL {
        // Exported at 0 from the start, so a rate over it is defined.
        shared
            .metrics
            .plan_resolves
            .with_label_values(&[trigger.as_str()]);
    }
    loop {
        while let Ok(rec) = periods.try_recv() {
            for (pid, kwh) in &rec.consumption_kwh {
                if let Some(h) = load_hist.get_mut(pid) {
                    h.push(rec.start, kwh / grid.step_hours());
                }
            }
        }
        let now = clock.now();
        let start = grid.period_start(now);
        let read = |device: &str, point: &str| reading(&shared, device, point);
        let mut input = plan::site_input::site_input(
            site,
            &plan::site_input::SiteState {
                now,
                start,
                reading: &read,
                load_history: &load_hist,
            },
        );
        if let Err((e, new)) = export_prices.refresh() {
            if new {
                tracing::warn!(error = %e, "plan: export prices not read; keeping the last good ones");
            }
            shared.metrics.export_prices_errors.inc();
        }
        input.export_price_eur_per_kwh = export_prices.steps(
            start,
            chrono::Duration::minutes(i64::from(grid.step_minutes())),
            input.export_price_eur_per_kwh.len(),
            site.config.plan.export_price_eur_per_kwh,
        );
        if let Some(x) = input.export_price_eur_per_kwh.first() {
            shared.metrics.export_price.set(*x);
        }
        let budget = Duration::from_millis(site.config.plan.budget_ms);
        let started = Instant::now();
        let solving = {
            let input = input.clone();
            let last = last_valid.clone();
            tokio::task::spawn_blocking(move || plan::solve_ladder(&input, budget, last.as_ref()))
        };
        let waited = tokio::select! {
            r = tokio::time::timeout(budget.saturating_add(Duration::from_millis(500)), solving) => r,
            _ = shutdown.changed() => return,
        };
        let result = match waited {
            Ok(Ok(Ok(p))) => Ok(p),
            Ok(Ok(Err(e))) => Err(format!("plan error: {e}")),
            Ok(Err(e)) => Err(format!("solver thread failed: {e}")),
            Err(_) => Err(format!(
                "solver exceeded its {} ms budget",
                budget.as_millis()
            )),
        };
        let p = match result {
            Ok(p) => p,
            Err(why) => fallback(&input, last_valid.as_ref(), &why),
        };
        // Nothing is actuated unchecked: a plan that fails here (it cannot,
        // short of a bug) is replaced by the rule-based one.
        let p = match plan::check(&p, &input) {
            Ok(()) => p,
            Err(e) => {
                tracing::error!(error = %e, "plan failed its check before actuation");
                plan::rule_based(&input, &format!("plan failed its check: {e}"))
            }
        };
        if p.status.level() < 2 {
            last_valid = Some(p.clone());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let planned = publish(&shared, &input, &p, &setpoints, elapsed);
        let mut sent = planned.clone();
        // Re-plan at the next step, or earlier after a large forecast miss;
        // track the plan at every control tick in between.
        let next = grid.next_period(start);
        let miss_every = chrono::Duration::seconds((grid.step_minutes() * 10) as i64);
        let mut miss_due = clock.now() + miss_every;
        let reason = loop {
            let now = clock.now();
            if now >= next {
                break Resolve::Step;
            }
            let mut wake = miss_due.min(next);
            if tracking_on {
                wake = wake.min(now + clock.clock_duration(tick));
            }
            tokio::select! {
                _ = clock.sleep_until(wake) => {}
                _ = shutdown.changed() => return,
            }
            if super::fault_panic("planner", None) && batteries_driven(&shared) {
                panic!("PED_FAULT_PANIC: the planner panics while a battery follows its plan");
            }
            if tracking_on && clock.now() < next {
                track_tick(
                    &shared,
                    &input,
                    &p,
                    &planned,
                    &mut sent,
                    &setpoints,
                    &mut skipped,
                );
            }
            if clock.now() < miss_due {
                continue;
            }
            miss_due = clock.now() + miss_every;
            if clock.now() < next && missed_start != Some(start) {
                if let Some((got, want)) = forecast_miss(&shared, &input) {
                    tracing::info!(
                        measured_kw = format!("{got:.1}"),
                        forecast_kw = format!("{want:.1}"),
                        "plan: PV forecast miss, re-solving before the next step"
                    );
                    missed_start = Some(start);
                    break Resolve::ForecastMiss;
                }
            }
        };
        events::emit(&shared.metrics, events::PlanResolved { trigger: reason });
    }
}

/// Measured PV against the plan's forecast for the current step, when it is
/// a miss ([`forecast::pv_missed`]: the plan charged too little on mornings
/// that turned out sunnier than forecast): solved again instead of waiting
/// for the next step. At most once per step, so a flickering sky cannot make
/// the planner spin.
fn forecast_miss(shared: &Shared, input: &PlanInput) -> Option<(f64, f64)> {
    let plants: Vec<_> = shared.site.devices_of(DeviceKind::PvInverter).collect();
    let kwp: f64 = plants.iter().map(|d| d.peak_kw()).sum();
    let mut got = 0.0;
    for d in &plants {
        got += reading(shared, &d.id, "production_kw")?;
    }
    let want = input.pv_kw.first().copied()?;
    forecast::pv_missed(got, want, kwp).then_some((got, want))
}

/// Lower rungs of the ladder when the solver thread itself failed or was
/// abandoned: the last valid plan shifted, else the rule-based plan.
fn fallback(input: &PlanInput, last: Option<&plan::Plan>, why: &str) -> plan::Plan {
    if let Some(last) = last {
        match plan::shift(last, input, why) {
            Ok(p) => {
                tracing::warn!(reason = %why, "plan: last valid plan shifted (fallback level 2)");
                return p;
            }
            Err(e) => tracing::warn!(error = %e, "plan: last plan cannot be shifted"),
        }
    }
    tracing::warn!(reason = %why, "plan: rule-based plan (fallback level 3)");
    plan::rule_based(input, why)
}

fn reading(shared: &Shared, device: &str, name: &str) -> Option<f64> {
    shared
        .status()
        .devices
        .get(device)
        .and_then(|d| d.readings.get(name).copied())
}

/// PV limits for the current step from the plan's curtailment: each plant
/// that ped may limit keeps its share of the forecast, pro rata (plants share
/// the forecast's clearness, so their shares are their clear-sky shares), as
/// a percentage of its rating (`rated_kw` read from model 120, else `kwp`).
/// When the plan does not curtail, the plants are released, so that a limit
/// never outlives the negative price that called for it.
fn curtailment_commands(
    shared: &Shared,
    input: &PlanInput,
    p: &plan::Plan,
) -> Vec<(String, Command)> {
    let site = &shared.site;
    let cfg = &site.config;
    let plants: Vec<_> = site
        .devices_of(DeviceKind::PvInverter)
        .filter(|d| d.writes.iter().any(|w| w == "WMaxLimPct"))
        .collect();
    if plants.is_empty() {
        return Vec::new();
    }
    let pv_kw = input.pv_kw.first().copied().unwrap_or(0.0);
    let cut_kw = p.curtailment_kwh.first().copied().unwrap_or(0.0) / input.step_hours.max(1e-9);
    // Below a watt the plan is not curtailing, whatever the solver's noise.
    if !(pv_kw > 0.0 && cut_kw > 1e-3) {
        return plants
            .iter()
            .map(|d| (d.id.clone(), Command::Release))
            .collect();
    }
    let keep = ((pv_kw - cut_kw) / pv_kw).clamp(0.0, 1.0);
    let now = shared.clock.now();
    let clear: Vec<f64> = plants
        .iter()
        .map(|d| {
            let (tilt, az) = d.pv_tilt_azimuth();
            forecast::clear_sky_kw(
                d.peak_kw(),
                tilt,
                az,
                cfg.site.latitude,
                cfg.site.longitude,
                now,
            )
        })
        .collect();
    let total: f64 = clear.iter().sum();
    plants
        .iter()
        .zip(&clear)
        .map(|(d, c)| {
            let share = if total > 0.0 {
                c / total
            } else {
                1.0 / plants.len() as f64
            };
            let allowed_kw = pv_kw * share * keep;
            let rated = reading(shared, &d.id, "rated_kw")
                .filter(|r| *r > 0.0)
                .or(d.kwp)
                .unwrap_or(0.0);
            let pct = if rated > 0.0 {
                (allowed_kw / rated * 100.0).clamp(0.0, 100.0)
            } else {
                0.0
            };
            (d.id.clone(), Command::PvLimitPct(pct))
        })
        .collect()
}

/// One control tick of plan tracking: measure, track, send the setpoints if
/// they changed. A missing or stale measurement leaves the plan's setpoints
/// (sent again if tracking had moved them), counted and logged once per
/// change of reason.
fn track_tick(
    shared: &Shared,
    input: &PlanInput,
    p: &plan::Plan,
    planned: &BTreeMap<String, Command>,
    sent: &mut BTreeMap<String, Command>,
    setpoints: &watch::Sender<BTreeMap<String, Command>>,
    skipped: &mut Option<&'static str>,
) {
    let m = &shared.metrics;
    let (next, added) = match super::tracking::measured_net_kw(shared) {
        Ok(net) => {
            if skipped.take().is_some() {
                tracing::info!("plan tracking resumes: site surplus measured again");
            }
            super::tracking::tracked_setpoints(shared, input, p, planned, net)
        }
        Err(skip) => {
            events::emit(
                m,
                events::TrackingSkipped {
                    reason: skip.reason,
                    device: &skip.device,
                    log: *skipped != Some(skip.reason),
                },
            );
            *skipped = Some(skip.reason);
            let zero = sp_devices(planned).map(|d| (d, 0.0)).collect();
            (planned.clone(), zero)
        }
    };
    for (dev, kw) in &added {
        m.tracking_watts.with_label_values(&[dev]).set(*kw * 1000.0);
    }
    // A deadband, so that meter noise does not rewrite a setpoint every tick.
    let moved = next.len() != sent.len()
        || next.iter().any(|(d, c)| match (c, sent.get(d)) {
            (Command::BatteryPower(a), Some(Command::BatteryPower(b)))
            | (Command::PowerToHeat(a), Some(Command::PowerToHeat(b))) => (a - b).abs() > 0.1,
            (c, prev) => Some(c) != prev,
        });
    if moved {
        tracing::debug!(setpoints = ?next, "plan tracking: setpoints moved");
        *sent = next.clone();
        let _ = setpoints.send(next);
    }
}

/// Battery and P2H devices in a setpoint map.
fn sp_devices(sp: &BTreeMap<String, Command>) -> impl Iterator<Item = String> + '_ {
    sp.iter()
        .filter(|(_, c)| matches!(c, Command::BatteryPower(_) | Command::PowerToHeat(_)))
        .map(|(d, _)| d.clone())
}

/// A battery reports that it follows a setpoint (for the test-only fault).
fn batteries_driven(shared: &Shared) -> bool {
    shared
        .status()
        .devices
        .values()
        .filter(|d| d.kind == "battery")
        .filter_map(|d| d.readings.get("power_kw"))
        .any(|kw| kw.abs() > 0.5)
}

fn publish(
    shared: &Shared,
    input: &PlanInput,
    p: &plan::Plan,
    setpoints: &watch::Sender<BTreeMap<String, Command>>,
    elapsed: f64,
) -> BTreeMap<String, Command> {
    let m = &shared.metrics;
    let mut sp = BTreeMap::new();
    for (b, kw) in input.batteries.iter().zip(&p.battery_kw) {
        let first = kw.first().copied().unwrap_or(0.0);
        sp.insert(b.id.clone(), Command::BatteryPower(first));
    }
    for (h, kw) in input.heat.iter().zip(&p.p2h_kw) {
        let first = kw.first().copied().unwrap_or(0.0);
        sp.insert(h.id.clone(), Command::PowerToHeat(first));
    }
    sp.extend(curtailment_commands(shared, input, p));
    events::emit(
        m,
        events::PlanPublished {
            plan: p,
            solve_s: elapsed,
            setpoints: &sp,
        },
    );
    // A fresh plan's setpoints stand until tracking moves them.
    for dev in sp_devices(&sp) {
        m.tracking_watts.with_label_values(&[&dev]).set(0.0);
    }
    let _ = setpoints.send(sp.clone());
    let sum_rows = |rows: &Vec<Vec<f64>>| -> Vec<f64> {
        let n = rows.first().map(|r| r.len()).unwrap_or(0);
        (0..n).map(|t| rows.iter().map(|r| r[t]).sum()).collect()
    };
    let first = |row: &Vec<f64>| row.first().copied().unwrap_or(0.0);
    for (q, row) in input.participants.iter().zip(&p.allocation_kwh) {
        m.plan_allocation
            .with_label_values(&[&q.id])
            .set(first(row) * 3.6e6);
    }
    let mut devices = Vec::with_capacity(input.device_participants.len());
    for (d, row) in input
        .device_participants
        .iter()
        .zip(&p.device_allocation_kwh)
    {
        m.plan_allocation
            .with_label_values(&[&d.id])
            .set(first(row) * 3.6e6);
        devices.push(super::PlanDeviceParticipant {
            participant: d.id.clone(),
            device: d.device.clone(),
            now_kwh: first(row),
            horizon_kwh: row.iter().sum(),
        });
    }
    let view = PlanView {
        status: p.status.label().to_string(),
        computed_at: Some(shared.clock.now()),
        objective_eur: p.objective_eur,
        solve_seconds: elapsed,
        pv_kw: input.pv_kw.clone(),
        battery_kw: sum_rows(&p.battery_kw),
        p2h_kw: sum_rows(&p.p2h_kw),
        device_participants: devices,
    };
    let dir = shared.output_dir.join("plans");
    if std::fs::create_dir_all(&dir).is_ok() {
        if let Ok(text) = serde_json::to_string_pretty(&view) {
            let tmp = dir.join("latest.json.tmp");
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, dir.join("latest.json"));
            }
        }
        // The instance beside the plan: `ped plan --replay` solves it again.
        let inst = plan::instance::Instance::Plan {
            input: input.clone(),
        };
        if let Err(e) = inst.write(&dir.join("latest-input.json")) {
            tracing::warn!(error = %e, "plan input not written");
        }
    }
    shared.status().plan = Some(view);
    sp
}
