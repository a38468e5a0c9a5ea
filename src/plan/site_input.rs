//! The plan's input built from the site and its state: one pure function,
//! so that the daemon and any replay of it build the same problem from the
//! same config, readings and load history.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{BatteryModel, DeviceParticipant, HeatUnitModel, ParticipantForecast, PlanInput};
use crate::config::{DeviceKind, ParticipantConfig, ParticipantKind, Site};
use crate::forecast::{self, SeriesHistory};

/// What a kWh left in a battery at the end of the horizon is worth, as a
/// share of the local price: a little less than using it now, so the plan
/// does not hoard.
pub const BATTERY_END_VALUE_RATIO: f64 = 0.9;
/// A heat store's standing loss, share of its content per hour.
pub const STORE_LOSS_PER_HOUR: f64 = 0.005;
/// The share of its substation's demand a heat store may serve.
pub const STORE_SHARE_OF_DEMAND: f64 = 0.5;
pub use crate::forecast::DEFAULT_CLEARNESS;

/// The site's state when a plan is built.
pub struct SiteState<'a> {
    /// Now, for the clearness measured from the plants' production.
    pub now: DateTime<Utc>,
    /// The first step of the plan (the current settlement period's start).
    pub start: DateTime<Utc>,
    /// A device's latest reading of a point (`production_kw`, `soc_pct`,
    /// `store_kwh`, …), if any.
    pub reading: &'a dyn Fn(&str, &str) -> Option<f64>,
    /// Each participant's measured load, kW per settlement period.
    pub load_history: &'a HashMap<String, SeriesHistory>,
}

/// The plan's input for `site` in `state`: forecasts (PV from the measured
/// clearness, loads from their history, heat demand held at what the
/// substations draw now), the storage's state and the site's prices.
/// Export prices are the config's flat one: a caller with a price file
/// replaces them.
pub fn site_input(site: &Site, state: &SiteState<'_>) -> PlanInput {
    let reading = state.reading;
    let start = state.start;
    let load_hist = state.load_history;
    let cfg = &site.config;
    let grid = site.grid;
    let steps = (cfg.plan.horizon_hours * 60 / grid.step_minutes()) as usize;
    // Recent clearness: measured PV against the clear-sky estimate of the same plants.
    let now = state.now;
    let mut measured = 0.0;
    let mut clear = 0.0;
    let mut pv = vec![0.0; steps];
    let plants: Vec<_> = site.devices_of(DeviceKind::PvInverter).collect();
    for d in &plants {
        let kwp = d.peak_kw();
        let (tilt, az) = d.pv_tilt_azimuth();
        measured += reading(&d.id, "production_kw").unwrap_or(0.0);
        clear += forecast::clear_sky_kw(kwp, tilt, az, cfg.site.latitude, cfg.site.longitude, now);
    }
    let clearness = forecast::measured_clearness(measured, clear, plants.len());
    for d in &plants {
        let (tilt, az) = d.pv_tilt_azimuth();
        let f = forecast::pv_forecast(
            d.peak_kw(),
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
    let tariff_steps = |p: &ParticipantConfig| -> Vec<f64> {
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
    let is_device = |p: &ParticipantConfig| {
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
            Some(DeviceParticipant {
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
                let now_kw = reading(&p.meter, "power_kw").unwrap_or(p.annual_kwh / 8760.0);
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
            let b = d.battery();
            let cap = b.capacity_kwh;
            let soc = reading(&d.id, "soc_pct")
                .map(|s| s / 100.0 * cap)
                .unwrap_or(cap * 0.5);
            BatteryModel {
                id: d.id.clone(),
                capacity_kwh: cap,
                soc_kwh: soc.clamp(0.0, cap),
                min_soc_kwh: b.min_soc_kwh(),
                max_charge_kw: b.max_charge_kw,
                max_discharge_kw: b.max_discharge_kw,
                charge_eff: b.charge_efficiency,
                discharge_eff: b.discharge_efficiency,
                end_value_eur_per_kwh: cfg.plan.local_price_eur_per_kwh * BATTERY_END_VALUE_RATIO,
            }
        })
        .collect();
    let heat = site
        .devices_of(DeviceKind::PowerToHeat)
        .map(|d| {
            let demand_now = site
                .devices_of(DeviceKind::HeatMeter)
                .filter(|h| h.substation == d.substation)
                .filter_map(|h| reading(&h.id, "heat_kw"))
                .sum::<f64>();
            let unit = d.heat_unit();
            let cap = unit.store_kwh;
            let rated_kw = unit.rated_kw;
            let efficiency = unit.efficiency;
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
                            reading(&d.id, "store_c"),
                            limit,
                            steps,
                        )
                    })
                    .unwrap_or_default(),
                store_capacity_kwh: cap,
                store_kwh: reading(&d.id, "store_kwh").unwrap_or(0.0).clamp(0.0, cap),
                loss_ratio_per_hour: STORE_LOSS_PER_HOUR,
                heat_demand_kw: vec![demand_now * STORE_SHARE_OF_DEMAND; steps],
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
/// measured ([`super::supply_temp_heat_cap_kw`]); later steps are left to the
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
        *first = super::supply_temp_heat_cap_kw(max_heat_kw, temp_c, limit_c);
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::ModelLibrary;
    use chrono::TimeZone;
    use std::collections::BTreeSet;

    fn demo() -> Site {
        let lib = ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
        let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("site-configs/fontaine-douche.toml");
        crate::config::load(&path, &known).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_input_follows_the_sites_config_and_readings() {
        let site = demo();
        let noon = chrono_tz::Europe::Paris
            .with_ymd_and_hms(2025, 6, 21, 12, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let read = |device: &str, point: &str| match (device, point) {
            ("BAT-01", "soc_pct") => Some(40.0),
            ("P2H-01", "store_kwh") => Some(5000.0),
            ("P2H-01", "store_c") => Some(60.0),
            _ => None,
        };
        let history = HashMap::new();
        let input = site_input(
            &site,
            &SiteState {
                now: noon,
                start: noon,
                reading: &read,
                load_history: &history,
            },
        );
        let steps = 24 * 4;
        assert_eq!(input.pv_kw.len(), steps);
        assert_eq!(input.step_hours, 0.25);
        // Nothing produces at noon: the sky is taken as dark as the
        // measurement allows (clearness 0.1). Plants producing their clear-sky
        // power make the forecast ten times that.
        let cfg = &site.config;
        let clear_now = |device: &str, point: &str| {
            let d = site
                .device(device)
                .filter(|d| d.kind == DeviceKind::PvInverter);
            match (d, point) {
                (Some(d), "production_kw") => {
                    let (tilt, az) = d.pv_tilt_azimuth();
                    Some(forecast::clear_sky_kw(
                        d.peak_kw(),
                        tilt,
                        az,
                        cfg.site.latitude,
                        cfg.site.longitude,
                        noon,
                    ))
                }
                _ => read(device, point),
            }
        };
        let sunny = site_input(
            &site,
            &SiteState {
                now: noon,
                start: noon,
                reading: &clear_now,
                load_history: &history,
            },
        );
        assert!(input.pv_kw[0] > 0.0);
        for (dark, clear) in input.pv_kw.iter().zip(&sunny.pv_kw) {
            assert!((clear - 10.0 * dark).abs() < 1e-9 * clear.max(1.0));
        }
        let bat = input
            .batteries
            .iter()
            .find(|b| b.id == "BAT-01")
            .unwrap_or_else(|| panic!("BAT-01 not planned"));
        assert_eq!(bat.capacity_kwh, 500.0);
        assert_eq!(bat.soc_kwh, 200.0);
        assert_eq!(bat.min_soc_kwh, 50.0);
        assert_eq!(bat.max_charge_kw, 250.0);
        assert_eq!(
            bat.end_value_eur_per_kwh,
            site.config.plan.local_price_eur_per_kwh * BATTERY_END_VALUE_RATIO
        );
        // A battery that reports nothing is planned from half full.
        for b in input.batteries.iter().filter(|b| b.id != "BAT-01") {
            assert_eq!(b.soc_kwh, b.capacity_kwh / 2.0, "{}", b.id);
        }
        let p2h = input
            .heat
            .iter()
            .find(|h| h.id == "P2H-01")
            .unwrap_or_else(|| panic!("P2H-01 not planned"));
        // A reading above the store's capacity is held to it.
        assert_eq!(p2h.store_kwh, p2h.store_capacity_kwh);
        assert_eq!(p2h.p2h_max_kw, 150.0);
        assert_eq!(p2h.max_heat_kw.len(), steps);
        // Participants with no history hold their annual mean, devices are
        // planned as device participants, not as loads.
        assert!(input.participants.iter().all(|p| p.load_kw.len() == steps));
        assert!(input.participants.iter().all(|p| p.id != "BAT-01"));
        assert!(input
            .device_participants
            .iter()
            .any(|d| d.id == "BAT-01" && d.device == "BAT-01"));
        let first = &input.participants[0];
        let cfg = cfg
            .participants
            .iter()
            .find(|p| p.id == first.id)
            .unwrap_or_else(|| panic!("{} not in the config", first.id));
        assert!((first.load_kw[0] - cfg.annual_kwh / 8760.0).abs() < 1e-9);
        crate::plan::validate(&input).unwrap_or_else(|e| panic!("{e}"));
    }

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
