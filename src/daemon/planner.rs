//! At each settlement step: forecasts + current state → the rolling LP →
//! setpoints for the current step. The solve runs on a blocking thread under
//! the configured wall-clock budget and walks down the fallback ladder
//! (optimal → relaxed → last valid plan shifted → rule-based, see
//! [`plan::solve_ladder`]); a solver thread that does not come back in time
//! is abandoned and the ladder's lower rungs are taken here, so there is
//! always a checked plan.

use super::{PeriodRecord, PlanView, Shared};
use crate::config::{DeviceKind, ParticipantKind};
use crate::devices::Command;
use crate::events::{self, Resolve};
use crate::forecast::{self, SeriesHistory};
use crate::plan::{self, BatteryModel, HeatUnitModel, ParticipantForecast, PlanInput};
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
        let mut input = build_input(&shared, start, &load_hist);
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

/// Measured PV against the plan's forecast for the current step, when they
/// differ by more than a quarter of the larger and 5 % of the installed peak:
/// the plan then under- or over-charges for the rest of the day (it charged
/// too little on mornings that turned out sunnier than forecast), so it is
/// solved again with the clearness just measured instead of waiting for the
/// next step. At most once per step, so a flickering sky cannot make the
/// planner spin.
fn forecast_miss(shared: &Shared, input: &PlanInput) -> Option<(f64, f64)> {
    let plants: Vec<_> = shared.site.devices_of(DeviceKind::PvInverter).collect();
    let kwp: f64 = plants.iter().map(|d| d.kwp.unwrap_or(0.0)).sum();
    let mut got = 0.0;
    for d in &plants {
        got += reading(shared, &d.id, "production_kw")?;
    }
    let want = input.pv_kw.first().copied()?;
    let gap = (got - want).abs();
    (gap > 0.25 * got.max(want) && gap > 0.05 * kwp).then_some((got, want))
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

fn build_input(
    shared: &Shared,
    start: chrono::DateTime<chrono::Utc>,
    load_hist: &HashMap<String, SeriesHistory>,
) -> PlanInput {
    let site = &shared.site;
    let cfg = &site.config;
    let grid = site.grid;
    let steps = (cfg.plan.horizon_hours * 60 / grid.step_minutes()) as usize;
    // Recent clearness: measured PV against the clear-sky estimate of the same plants.
    let now = shared.clock.now();
    let mut measured = 0.0;
    let mut clear = 0.0;
    let mut pv = vec![0.0; steps];
    let plants: Vec<_> = site.devices_of(DeviceKind::PvInverter).collect();
    for d in &plants {
        let kwp = d.kwp.unwrap_or(0.0);
        let (tilt, az) = d.pv_tilt_azimuth();
        measured += reading(shared, &d.id, "production_kw").unwrap_or(0.0);
        clear += forecast::clear_sky_kw(kwp, tilt, az, cfg.site.latitude, cfg.site.longitude, now);
    }
    let clearness = if clear > 0.05 * plants.len() as f64 {
        (measured / clear).clamp(0.1, 1.2)
    } else {
        0.8
    };
    for d in &plants {
        let (tilt, az) = d.pv_tilt_azimuth();
        let f = forecast::pv_forecast(
            d.kwp.unwrap_or(0.0),
            tilt,
            az,
            cfg.site.latitude,
            cfg.site.longitude,
            start,
            steps,
            &grid,
            clearness,
        );
        for (a, b) in pv.iter_mut().zip(f) {
            *a += b;
        }
    }
    // Time-of-use windows in the site's local time, one price per step.
    let tariff_steps = |p: &crate::config::ParticipantConfig| -> Vec<f64> {
        match cfg.site.timezone.parse::<chrono_tz::Tz>() {
            Ok(tz) if !p.tou.is_empty() => (0..steps)
                .map(|k| {
                    let at =
                        start + chrono::Duration::minutes((k as u32 * grid.step_minutes()) as i64);
                    p.tariff_at(at, tz)
                })
                .collect(),
            _ => vec![],
        }
    };
    let is_device = |p: &crate::config::ParticipantConfig| {
        matches!(
            p.kind,
            ParticipantKind::Battery | ParticipantKind::PowerToHeat
        )
    };
    // A battery or P2H participant is the device that names it (`participant
    // = ...` on the device), else the device its `meter` points at. Its load
    // is the plan's own decision, so it is no forecast participant.
    let device_participants = cfg
        .participants
        .iter()
        .filter(|p| is_device(p))
        .filter_map(|p| {
            let kind = match p.kind {
                ParticipantKind::Battery => DeviceKind::Battery,
                _ => DeviceKind::PowerToHeat,
            };
            let device = site
                .devices_of(kind)
                .find(|d| d.participant.as_deref() == Some(p.id.as_str()))
                .or_else(|| site.devices_of(kind).find(|d| d.id == p.meter))?;
            Some(plan::DeviceParticipant {
                id: p.id.clone(),
                device: device.id.clone(),
                tariff_eur_per_kwh: p.tariff_eur_per_kwh,
                priority: p.priority,
                tariff_steps_eur_per_kwh: tariff_steps(p),
            })
        })
        .collect();
    let participants = cfg
        .participants
        .iter()
        .filter(|p| !is_device(p))
        .map(|p| {
            let hist = load_hist.get(&p.id);
            let mut load = hist
                .map(|h| h.forecast(start, steps, &grid))
                .unwrap_or_else(|| vec![0.0; steps]);
            if load.iter().all(|x| *x == 0.0) {
                // No history yet: hold the current power.
                let now_kw = reading(shared, &p.meter, "power_kw").unwrap_or(p.annual_kwh / 8760.0);
                load = vec![now_kw.max(0.0); steps];
            }
            ParticipantForecast {
                id: p.id.clone(),
                load_kw: load,
                tariff_eur_per_kwh: p.tariff_eur_per_kwh,
                priority: p.priority,
                tariff_steps_eur_per_kwh: tariff_steps(p),
            }
        })
        .collect();
    let batteries = site
        .devices_of(DeviceKind::Battery)
        .map(|d| {
            let cap = d.capacity_kwh.unwrap_or(0.0);
            let soc = reading(shared, &d.id, "soc_pct")
                .map(|s| s / 100.0 * cap)
                .unwrap_or(cap * 0.5);
            BatteryModel {
                id: d.id.clone(),
                capacity_kwh: cap,
                soc_kwh: soc.clamp(0.0, cap),
                min_soc_kwh: cap * d.min_soc_ratio.unwrap_or(0.1),
                max_charge_kw: d.max_charge_kw.unwrap_or(0.0),
                max_discharge_kw: d.max_discharge_kw.unwrap_or(0.0),
                charge_eff: 0.95,
                discharge_eff: 0.95,
                end_value_eur_per_kwh: cfg.plan.local_price_eur_per_kwh * 0.9,
            }
        })
        .collect();
    let heat = site
        .devices_of(DeviceKind::PowerToHeat)
        .map(|d| {
            let demand_now = site
                .devices_of(DeviceKind::HeatMeter)
                .filter(|h| h.substation == d.substation)
                .filter_map(|h| reading(shared, &h.id, "heat_kw"))
                .sum::<f64>();
            let cap = d.capacity_kwh.unwrap_or(0.0);
            let rated_kw = d.max_power_kw.unwrap_or(0.0);
            let efficiency = 0.98;
            HeatUnitModel {
                id: d.id.clone(),
                p2h_max_kw: rated_kw,
                efficiency,
                max_heat_kw: d
                    .max_supply_temp_c
                    .map(|limit| {
                        supply_temp_caps(
                            &d.id,
                            rated_kw * efficiency,
                            reading(shared, &d.id, "store_c"),
                            limit,
                            steps,
                        )
                    })
                    .unwrap_or_default(),
                store_capacity_kwh: cap,
                store_kwh: reading(shared, &d.id, "store_kwh")
                    .unwrap_or(0.0)
                    .clamp(0.0, cap),
                loss_ratio_per_hour: 0.005,
                // The store may feed up to half the substation's demand.
                heat_demand_kw: vec![demand_now * 0.5; steps],
                heat_price_eur_per_kwh: cfg.plan.heat_price_eur_per_kwh,
            }
        })
        .collect();
    PlanInput {
        start,
        step_hours: grid.step_hours(),
        pv_kw: pv,
        participants,
        batteries,
        heat,
        local_price_eur_per_kwh: cfg.plan.local_price_eur_per_kwh,
        export_price_eur_per_kwh: vec![cfg.plan.export_price_eur_per_kwh; steps],
        import_price_eur_per_kwh: vec![cfg.plan.import_price_eur_per_kwh; steps],
        device_participants,
    }
}

/// Heat caps per step for a unit whose store feeds a network with a supply
/// temperature limit: the current step's from the store temperature just
/// measured ([`plan::supply_temp_heat_cap_kw`]); later steps are left to the
/// store's energy bound, as there is no temperature forecast, and the cap
/// is measured again at every re-plan.
fn supply_temp_caps(
    id: &str,
    max_heat_kw: f64,
    temp_c: Option<f64>,
    limit_c: f64,
    steps: usize,
) -> Vec<f64> {
    if temp_c.is_none() {
        tracing::warn!(
            device = id,
            limit_c,
            "plan: no store temperature read (map point store_temp); power-to-heat held off under its supply temperature limit"
        );
    }
    let mut caps = vec![max_heat_kw; steps];
    if let Some(first) = caps.first_mut() {
        *first = plan::supply_temp_heat_cap_kw(max_heat_kw, temp_c, limit_c);
    }
    caps
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
                d.kwp.unwrap_or(0.0),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supply_temp_caps_hold_the_first_step_from_the_measured_temperature() {
        assert_eq!(
            supply_temp_caps("P", 98.0, Some(70.0), 90.0, 3),
            vec![98.0; 3]
        );
        assert_eq!(
            supply_temp_caps("P", 98.0, Some(89.0), 90.0, 3),
            vec![19.6, 98.0, 98.0]
        );
        assert_eq!(
            supply_temp_caps("P", 98.0, Some(91.0), 90.0, 2),
            vec![0.0, 98.0]
        );
        // Not read: held off now, planned again once the point is read.
        assert_eq!(supply_temp_caps("P", 98.0, None, 90.0, 2), vec![0.0, 98.0]);
        assert!(supply_temp_caps("P", 98.0, Some(80.0), 90.0, 0).is_empty());
    }
}
