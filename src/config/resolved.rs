//! The parameters each stage reads from a device's config, resolved in one
//! place with every default, so that the planner, plan tracking, the
//! simulator and the backtest cannot disagree about a device.
//!
//! `ped check` requires the ratings a kind cannot work without (a battery's
//! capacity and charge limits, a heat unit's rating and store, a PV plant's
//! peak power). Where a config that did not pass the check leaves one out,
//! it resolves to 0: a device ped neither plans with nor simulates as
//! producing anything.

use super::DeviceConfig;

/// The battery reserve below which ped never plans to discharge, as a share
/// of capacity, where the config gives none.
pub const MIN_SOC_RATIO: f64 = 0.1;
/// A battery's one-way efficiencies (AC to stored energy and back).
pub const BATTERY_CHARGE_EFFICIENCY: f64 = 0.95;
pub const BATTERY_DISCHARGE_EFFICIENCY: f64 = 0.95;
/// A power-to-heat unit's electric-to-heat efficiency (resistive element).
pub const P2H_EFFICIENCY: f64 = 0.98;
/// The heat a substation delivers in a year where the config gives none,
/// kWh_th: a large housing block's order of magnitude, for the simulator and
/// the heat forecast.
pub const ANNUAL_HEAT_KWH: f64 = 1.0e6;

/// A battery as every stage sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatteryParams {
    pub capacity_kwh: f64,
    pub min_soc_ratio: f64,
    pub max_charge_kw: f64,
    pub max_discharge_kw: f64,
    pub charge_efficiency: f64,
    pub discharge_efficiency: f64,
}

impl BatteryParams {
    /// The reserve, kWh.
    pub fn min_soc_kwh(&self) -> f64 {
        self.capacity_kwh * self.min_soc_ratio
    }
}

/// A power-to-heat unit and its heat store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeatUnitParams {
    /// Electrical rating, kW.
    pub rated_kw: f64,
    /// Heat store capacity, kWh_th.
    pub store_kwh: f64,
    pub efficiency: f64,
}

impl DeviceConfig {
    /// This device's battery parameters (meaningful for a `battery`).
    pub fn battery(&self) -> BatteryParams {
        BatteryParams {
            capacity_kwh: nonneg(self.capacity_kwh),
            min_soc_ratio: self.min_soc_ratio.unwrap_or(MIN_SOC_RATIO).clamp(0.0, 1.0),
            max_charge_kw: nonneg(self.max_charge_kw),
            max_discharge_kw: nonneg(self.max_discharge_kw),
            charge_efficiency: BATTERY_CHARGE_EFFICIENCY,
            discharge_efficiency: BATTERY_DISCHARGE_EFFICIENCY,
        }
    }

    /// This device's heat unit parameters (meaningful for a `power_to_heat`).
    pub fn heat_unit(&self) -> HeatUnitParams {
        HeatUnitParams {
            rated_kw: nonneg(self.max_power_kw),
            store_kwh: nonneg(self.capacity_kwh),
            efficiency: P2H_EFFICIENCY,
        }
    }

    /// A PV plant's peak power, kWp.
    pub fn peak_kw(&self) -> f64 {
        nonneg(self.kwp)
    }

    /// The heat a substation delivers in a year, kWh_th.
    pub fn annual_heat(&self) -> f64 {
        self.annual_heat_kwh
            .filter(|x| x.is_finite() && *x >= 0.0)
            .unwrap_or(ANNUAL_HEAT_KWH)
    }
}

fn nonneg(v: Option<f64>) -> f64 {
    v.filter(|x| x.is_finite()).unwrap_or(0.0).max(0.0)
}
