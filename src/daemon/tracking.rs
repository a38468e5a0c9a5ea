//! Plan tracking in the daemon: between re-solves, at each control tick, the
//! measured site surplus (PV − consumption of the forecast participants,
//! from the readings the pollers just made) is compared with the plan's
//! step-0 expectation, and [`plan::track::track`] raises battery charge and
//! power-to-heat setpoints by what the plan's setpoints would otherwise
//! export. The result goes out on the setpoint channel like the plan's own,
//! so the endpoint tasks still apply the safety envelope (bounds, ramp) and
//! the read-only rule (`control.writes_allowed`, each device's `writes`).
//!
//! Setpoints never go below the plan's: `track` only raises them, and a
//! stale or missing measurement leaves the plan's setpoints in force.

use super::Shared;
use crate::config::{DeviceKind, ParticipantKind};
use crate::devices::Command;
use crate::plan::{self, track, PlanInput};
use std::collections::BTreeMap;
use std::time::Duration;

/// Why a tick could not measure the site surplus: the reason label of
/// `ped_tracking_skipped_total` and the device at fault.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Skip {
    pub reason: &'static str,
    pub device: String,
}

/// A reading of `device`, `None` when it was never read, the device is down,
/// or the reading is older than three of its polls plus a timeout (in clock
/// time, so an accelerated simulation ages readings at its own speed).
fn fresh(shared: &Shared, device: &str, name: &str) -> Result<f64, Skip> {
    let cfg = &shared.site.config;
    let skip = |reason| Skip {
        reason,
        device: device.to_string(),
    };
    let interval_ms = cfg
        .devices
        .iter()
        .find(|d| d.id == device)
        .and_then(|d| d.interval_ms)
        .unwrap_or(cfg.polling.interval_ms);
    let max_age = shared.clock.clock_duration(Duration::from_millis(
        3 * interval_ms + cfg.polling.timeout_ms,
    ));
    let now = shared.clock.now();
    let st = shared.status();
    let d = st.devices.get(device).ok_or_else(|| skip("missing"))?;
    let v = d
        .readings
        .get(name)
        .copied()
        .filter(|v| v.is_finite())
        .ok_or_else(|| skip("missing"))?;
    if !d.up {
        return Err(skip("missing"));
    }
    match d.read_at {
        Some(at) if now - at <= max_age => Ok(v),
        _ => Err(skip("stale")),
    }
}

/// Measured PV of every plant minus the power of every forecast
/// participant's meter (kW): the quantity the plan's `pv − load` forecasts.
/// Batteries and power-to-heat are left out on both sides, as the plan
/// decides their power.
pub(super) fn measured_net_kw(shared: &Shared) -> Result<f64, Skip> {
    let site = &shared.site;
    let mut net = 0.0;
    for d in site.devices_of(DeviceKind::PvInverter) {
        net += fresh(shared, &d.id, "production_kw")?;
    }
    for p in &site.config.participants {
        if matches!(
            p.kind,
            ParticipantKind::Battery | ParticipantKind::PowerToHeat
        ) {
            continue;
        }
        net -= fresh(shared, &p.meter, "power_kw")?;
    }
    Ok(net)
}

/// The plan's `pv − curtailment − load` for its first step (kW).
pub(super) fn planned_net_kw(input: &PlanInput, p: &plan::Plan) -> f64 {
    let h = input.step_hours.max(1e-9);
    let pv = input.pv_kw.first().copied().unwrap_or(0.0);
    let cut = p.curtailment_kwh.first().copied().unwrap_or(0.0) / h;
    let load: f64 = input
        .participants
        .iter()
        .map(|q| q.load_kw.first().copied().unwrap_or(0.0))
        .sum();
    pv - cut - load
}

/// The tracking problem of this tick. The stored value of a device is the
/// plan's own end-of-horizon value of a stored kWh (`end_value_eur_per_kwh`
/// for a battery, [`plan::heat_end_value`] for a store; `track` applies the
/// charge efficiency), as `ped backtest` uses it (December self-consumption
/// 92.8 → 95.8 %), not the dual price of the device's step-0 charge-level
/// row. That dual would be the exact marginal value, but every rung of the
/// fallback ladder below the optimal one (relaxed, shifted, rule-based) has
/// none, an interior-point dual on a degenerate storage row (a battery the
/// plan is indifferent about) is any point of an interval, and tracking
/// must work on every plan the daemon actuates. The end value is what each
/// of those plans trades a stored kWh against. Known limit: for a battery or
/// P2H unit that is itself a plan participant (fontaine's three), the plan
/// also values its charge as an allocation and its discharge at the local
/// price, which the end value leaves out (README, "Plan tracking").
/// A device whose state is not freshly read gets no room: tracking never
/// fills a store blind.
pub(super) fn problem(
    shared: &Shared,
    input: &PlanInput,
    p: &plan::Plan,
) -> (Vec<track::TrackedBattery>, Vec<track::TrackedHeat>) {
    let first = |rows: &Vec<Vec<f64>>, i: usize| {
        rows.get(i).and_then(|r| r.first()).copied().unwrap_or(0.0)
    };
    let batteries = input
        .batteries
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let soc = fresh(shared, &b.id, "soc_pct")
                .map(|pct| (pct / 100.0 * b.capacity_kwh).clamp(0.0, b.capacity_kwh))
                .unwrap_or(b.capacity_kwh);
            track::TrackedBattery {
                setpoint_kw: first(&p.battery_kw, i),
                soc_kwh: soc,
                capacity_kwh: b.capacity_kwh,
                max_charge_kw: b.max_charge_kw,
                charge_eff: b.charge_eff,
                stored_value_eur_per_kwh: b.end_value_eur_per_kwh,
            }
        })
        .collect();
    let heat = input
        .heat
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let room = fresh(shared, &u.id, "store_kwh")
                .map(|kwh| (u.store_capacity_kwh - kwh).max(0.0))
                .unwrap_or(0.0);
            track::TrackedHeat {
                setpoint_kw: first(&p.p2h_kw, i),
                // The rating, and this step's supply-temperature cap.
                max_kw: u.p2h_limit_kw(0),
                room_kwh: room,
                efficiency: u.efficiency,
                stored_value_eur_per_kwh: plan::heat_end_value(u),
            }
        })
        .collect();
    (batteries, heat)
}

/// The plan's setpoint map with tracked battery and P2H powers, and the kW
/// tracking added per device. A device ped may not write (no `writes`) keeps
/// the plan's setpoint: raising it would only be refused downstream.
pub(super) fn tracked_setpoints(
    shared: &Shared,
    input: &PlanInput,
    p: &plan::Plan,
    planned: &BTreeMap<String, Command>,
    measured_net_kw: f64,
) -> (BTreeMap<String, Command>, Vec<(String, f64)>) {
    let (batteries, heat) = problem(shared, input, p);
    let export = input
        .export_price_eur_per_kwh
        .first()
        .copied()
        .unwrap_or(shared.site.config.plan.export_price_eur_per_kwh);
    let r = track::track(&track::Tracking {
        step_hours: input.step_hours,
        planned_net_kw: planned_net_kw(input, p),
        measured_net_kw,
        export_price_eur_per_kwh: export,
        batteries: &batteries,
        heat: &heat,
    });
    let writable = |id: &str| {
        shared
            .site
            .config
            .devices
            .iter()
            .any(|d| d.id == id && !d.writes.is_empty())
    };
    let mut sp = planned.clone();
    let mut added = Vec::new();
    let moves = input
        .batteries
        .iter()
        .zip(batteries.iter().zip(&r.battery_kw))
        .map(|(b, (t, kw))| (b.id.as_str(), t.setpoint_kw, *kw, true))
        .chain(
            input
                .heat
                .iter()
                .zip(heat.iter().zip(&r.p2h_kw))
                .map(|(u, (t, kw))| (u.id.as_str(), t.setpoint_kw, *kw, false)),
        );
    for (id, plan_kw, kw, battery) in moves {
        let kw = if writable(id) && kw > plan_kw {
            kw
        } else {
            plan_kw
        };
        added.push((id.to_string(), kw - plan_kw));
        let cmd = if battery {
            Command::BatteryPower(kw)
        } else {
            Command::PowerToHeat(kw)
        };
        sp.insert(id.to_string(), cmd);
    }
    (sp, added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BatteryModel, HeatUnitModel, ParticipantForecast};

    /// Every device of the demo site read `age` ago (negative: just now on a
    /// clock that barely moves), PV at 1 kW per plant, each meter at 0.5 kW.
    fn read_all(s: &Shared, age: chrono::Duration) {
        let at = s.clock.now() - age;
        let mut st = s.status();
        for d in st.devices.values_mut() {
            d.up = true;
            d.read_at = Some(at);
            d.readings = [
                ("production_kw", 1.0),
                ("power_kw", 0.5),
                ("soc_pct", 50.0),
                ("store_kwh", 100.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        }
    }

    fn forecast_meters(s: &Shared) -> Vec<String> {
        s.site
            .config
            .participants
            .iter()
            .filter(|p| {
                !matches!(
                    p.kind,
                    ParticipantKind::Battery | ParticipantKind::PowerToHeat
                )
            })
            .map(|p| p.meter.clone())
            .collect()
    }

    #[test]
    fn the_surplus_is_measured_only_from_fresh_readings_of_every_meter() {
        let s = crate::daemon::tests::shared();
        let plants = s.site.devices_of(DeviceKind::PvInverter).count() as f64;
        let meters = forecast_meters(&s);
        assert!(plants > 0.0 && !meters.is_empty());
        read_all(&s, chrono::Duration::seconds(-1));
        let net = measured_net_kw(&s).unwrap_or_else(|e| panic!("{e:?}"));
        assert!((net - (plants - 0.5 * meters.len() as f64)).abs() < 1e-9);
        // One meter's reading an hour old: stale, named.
        s.status()
            .devices
            .get_mut(&meters[0])
            .unwrap_or_else(|| panic!("no {}", meters[0]))
            .read_at = Some(s.clock.now() - chrono::Duration::hours(1));
        assert_eq!(
            measured_net_kw(&s),
            Err(Skip {
                reason: "stale",
                device: meters[0].clone()
            })
        );
        // Down, or never read: missing.
        read_all(&s, chrono::Duration::seconds(-1));
        if let Some(d) = s.status().devices.get_mut(&meters[0]) {
            d.up = false;
        }
        assert_eq!(measured_net_kw(&s).map_err(|e| e.reason), Err("missing"));
        read_all(&s, chrono::Duration::seconds(-1));
        if let Some(d) = s.status().devices.get_mut(&meters[0]) {
            d.readings.clear();
        }
        assert_eq!(measured_net_kw(&s).map_err(|e| e.reason), Err("missing"));
    }

    fn input(s: &Shared) -> PlanInput {
        let batteries = s
            .site
            .devices_of(DeviceKind::Battery)
            .map(|d| {
                let cap = d.capacity_kwh.unwrap_or(0.0);
                BatteryModel {
                    id: d.id.clone(),
                    capacity_kwh: cap,
                    soc_kwh: cap / 2.0,
                    min_soc_kwh: cap * 0.1,
                    max_charge_kw: d.max_charge_kw.unwrap_or(0.0),
                    max_discharge_kw: d.max_discharge_kw.unwrap_or(0.0),
                    charge_eff: 0.95,
                    discharge_eff: 0.95,
                    end_value_eur_per_kwh: 0.09,
                }
            })
            .collect();
        PlanInput {
            start: s.clock.now(),
            step_hours: 0.25,
            pv_kw: vec![10.0; 4],
            participants: vec![ParticipantForecast {
                id: "P".into(),
                load_kw: vec![10.0; 4],
                tariff_eur_per_kwh: 0.2,
                priority: 0,
                tariff_steps_eur_per_kwh: vec![],
            }],
            batteries,
            heat: vec![HeatUnitModel {
                id: "P2H-01".into(),
                p2h_max_kw: 150.0,
                efficiency: 0.98,
                // A supply-temperature cap this step: 49 kW of heat.
                max_heat_kw: vec![49.0, 147.0, 147.0, 147.0],
                store_capacity_kwh: 1200.0,
                store_kwh: 100.0,
                loss_ratio_per_hour: 0.005,
                heat_demand_kw: vec![0.0; 4],
                heat_price_eur_per_kwh: 0.09,
            }],
            local_price_eur_per_kwh: 0.1,
            export_price_eur_per_kwh: vec![0.06; 4],
            import_price_eur_per_kwh: vec![0.25; 4],
            device_participants: vec![],
        }
    }

    #[test]
    fn unplanned_surplus_raises_a_battery_and_never_lowers_the_plan() {
        let s = crate::daemon::tests::shared();
        read_all(&s, chrono::Duration::seconds(-1));
        let inp = input(&s);
        let mut p = plan::rule_based(&inp, "test");
        // The plan: battery 0 idle, battery 1 discharging 20 kW, no surplus.
        for (i, row) in p.battery_kw.iter_mut().enumerate() {
            row[0] = if i == 0 { 0.0 } else { -20.0 };
        }
        p.p2h_kw[0][0] = 0.0;
        let planned: BTreeMap<String, Command> = inp
            .batteries
            .iter()
            .zip(&p.battery_kw)
            .map(|(b, r)| (b.id.clone(), Command::BatteryPower(r[0])))
            .chain([("P2H-01".to_string(), Command::PowerToHeat(0.0))])
            .collect();
        // No surplus measured: the plan's setpoints stand.
        let (sp, added) = tracked_setpoints(&s, &inp, &p, &planned, 0.0);
        assert_eq!(sp, planned);
        assert!(added.iter().all(|(_, a)| *a == 0.0), "{added:?}");
        // 60 kW of surplus the plan did not see: the first battery takes it.
        let (sp, added) = tracked_setpoints(&s, &inp, &p, &planned, 60.0);
        let first = &inp.batteries[0];
        assert_eq!(sp.get(&first.id), Some(&Command::BatteryPower(60.0)));
        assert_eq!(added[0], (first.id.clone(), 60.0));
        for (id, cmd) in &sp {
            match (cmd, planned.get(id)) {
                (Command::BatteryPower(kw), Some(Command::BatteryPower(plan_kw)))
                | (Command::PowerToHeat(kw), Some(Command::PowerToHeat(plan_kw))) => {
                    assert!(kw >= plan_kw, "{id}: {kw} < {plan_kw}")
                }
                other => panic!("{id}: {other:?}"),
            }
        }
        // Within power: 400 kW more than planned fills both batteries, then
        // P2H up to its supply-temperature cap (49 kW heat / 0.98).
        let (sp, _) = tracked_setpoints(&s, &inp, &p, &planned, 400.0);
        for b in &inp.batteries {
            assert_eq!(
                sp.get(&b.id),
                Some(&Command::BatteryPower(b.max_charge_kw)),
                "{sp:?}"
            );
        }
        match sp.get("P2H-01") {
            Some(Command::PowerToHeat(kw)) => assert!((kw - 50.0).abs() < 1e-9, "{sp:?}"),
            other => panic!("{other:?}"),
        }
        // A battery ped may not write keeps the plan's setpoint.
        let mut ro = crate::daemon::tests::shared();
        read_all(&ro, chrono::Duration::seconds(-1));
        for d in ro.site.config.devices.iter_mut() {
            if d.id == first.id {
                d.writes.clear();
            }
        }
        let (sp, added) = tracked_setpoints(&ro, &inp, &p, &planned, 60.0);
        assert_eq!(sp.get(&first.id), planned.get(&first.id));
        assert_eq!(added[0], (first.id.clone(), 0.0));
        // A battery whose state of charge is not freshly read gets no room.
        if let Some(d) = s.status().devices.get_mut(&first.id) {
            d.read_at = Some(s.clock.now() - chrono::Duration::hours(1));
        }
        let (sp, _) = tracked_setpoints(&s, &inp, &p, &planned, 60.0);
        assert_eq!(sp.get(&first.id), planned.get(&first.id));
    }
}
