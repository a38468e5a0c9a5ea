//! The planner's data: what it is given ([`PlanInput`] with its batteries,
//! heat units and participants), what it publishes ([`Plan`], its
//! [`PlanStatus`] and soft violations) and how it fails ([`PlanError`]).

use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("invalid plan input: {0}")]
    Invalid(String),
    #[error("plan fails its check at step {step}: {what}")]
    Check { step: usize, what: String },
    #[error("LP solver failed: {0}")]
    Solver(String),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatteryModel {
    pub id: String,
    pub capacity_kwh: f64,
    pub soc_kwh: f64,
    pub min_soc_kwh: f64,
    pub max_charge_kw: f64,
    pub max_discharge_kw: f64,
    pub charge_eff: f64,
    pub discharge_eff: f64,
    pub end_value_eur_per_kwh: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeatUnitModel {
    pub id: String,
    pub p2h_max_kw: f64,
    /// kWh thermal per kWh electric.
    pub efficiency: f64,
    pub store_capacity_kwh: f64,
    pub store_kwh: f64,
    pub loss_ratio_per_hour: f64,
    /// Thermal demand the store may cover, per step (kW).
    pub heat_demand_kw: Vec<f64>,
    /// Price of the network heat that stored heat displaces.
    pub heat_price_eur_per_kwh: f64,
    /// Per step, the most heat (kW thermal) P2H may put into the store;
    /// empty: no limit but `p2h_max_kw`. The planner derives it from the
    /// store's temperature against the network's supply temperature limit
    /// ([`supply_temp_heat_cap_kw`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub max_heat_kw: Vec<f64>,
}

impl HeatUnitModel {
    /// Electric P2H limit at step `t` (kW): the rating, and the heat cap
    /// divided by the efficiency.
    pub fn p2h_limit_kw(&self, t: usize) -> f64 {
        match self.max_heat_kw.get(t) {
            Some(cap) if self.efficiency > 0.0 => self.p2h_max_kw.min(cap / self.efficiency),
            Some(_) => 0.0,
            None => self.p2h_max_kw,
        }
    }
}

/// Kelvins below the supply temperature limit over which power-to-heat is
/// derated linearly to zero, as a boiler's own thermostat does: heating at
/// full power up to the limit would overshoot it within a step.
pub const SUPPLY_TEMP_BAND_K: f64 = 5.0;

/// The most heat (kW thermal) a unit rated `max_heat_kw` may put into a
/// store at `temp_c` when the network's supply temperature limit is
/// `limit_c`: all of it up to [`SUPPLY_TEMP_BAND_K`] below the limit, none at
/// or above it, linear in between. An unknown temperature (`None`, or not
/// finite) gives 0: a limit that cannot be watched must not be overrun.
pub fn supply_temp_heat_cap_kw(max_heat_kw: f64, temp_c: Option<f64>, limit_c: f64) -> f64 {
    match temp_c.filter(|t| t.is_finite()) {
        Some(t) => max_heat_kw.max(0.0) * ((limit_c - t) / SUPPLY_TEMP_BAND_K).clamp(0.0, 1.0),
        None => 0.0,
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParticipantForecast {
    pub id: String,
    pub load_kw: Vec<f64>,
    pub tariff_eur_per_kwh: f64,
    pub priority: u8,
    /// Time-of-use retail price per step (€/kWh); empty: the flat
    /// `tariff_eur_per_kwh` at every step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tariff_steps_eur_per_kwh: Vec<f64>,
}

impl ParticipantForecast {
    /// Retail price at step `t`.
    pub fn tariff_at(&self, t: usize) -> f64 {
        self.tariff_steps_eur_per_kwh
            .get(t)
            .copied()
            .unwrap_or(self.tariff_eur_per_kwh)
    }
}

/// A battery or power-to-heat unit that is a participant of the operation
/// (`kind = "battery"` / `"power_to_heat"` in the site config): its
/// allocation per step is the energy it takes from the pool, which is all
/// of its consumption (devices charge only from local production).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceParticipant {
    pub id: String,
    /// Id of a battery or heat unit of the same input.
    pub device: String,
    pub tariff_eur_per_kwh: f64,
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tariff_steps_eur_per_kwh: Vec<f64>,
}

impl DeviceParticipant {
    pub fn tariff_at(&self, t: usize) -> f64 {
        self.tariff_steps_eur_per_kwh
            .get(t)
            .copied()
            .unwrap_or(self.tariff_eur_per_kwh)
    }
}

/// What a device participant is attached to, resolved by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRef {
    Battery(usize),
    Heat(usize),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlanInput {
    pub start: DateTime<Utc>,
    pub step_hours: f64,
    pub pv_kw: Vec<f64>,
    pub participants: Vec<ParticipantForecast>,
    pub batteries: Vec<BatteryModel>,
    pub heat: Vec<HeatUnitModel>,
    pub local_price_eur_per_kwh: f64,
    pub export_price_eur_per_kwh: Vec<f64>,
    /// Not in the objective yet: nothing in the model imports (see module doc).
    pub import_price_eur_per_kwh: Vec<f64>,
    /// Batteries and heat units that are participants (at most one each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_participants: Vec<DeviceParticipant>,
}

impl PlanInput {
    /// The device each device participant is attached to; `None` for an
    /// unknown id (refused by [`validate`](fn@super::validate)).
    pub fn device_ref(&self, d: &DeviceParticipant) -> Option<DeviceRef> {
        if let Some(k) = self.batteries.iter().position(|b| b.id == d.device) {
            return Some(DeviceRef::Battery(k));
        }
        self.heat
            .iter()
            .position(|u| u.id == d.device)
            .map(DeviceRef::Heat)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PlanStatus {
    Optimal,
    RuleBased {
        reason: String,
    },
    /// The LP as stated failed (infeasible, numerical trouble); this is the
    /// LP with its hard limits made soft (see [`Plan::violations`]).
    Relaxed {
        reason: String,
    },
    /// Both LPs failed or ran out of time: the last valid plan, moved on to
    /// this step and repaired against the current state.
    Shifted {
        reason: String,
    },
}

impl PlanStatus {
    /// Rung of the fallback ladder: 0 optimal, 1 relaxed, 2 shifted, 3 rule-based.
    pub fn level(&self) -> u8 {
        match self {
            PlanStatus::Optimal => 0,
            PlanStatus::Relaxed { .. } => 1,
            PlanStatus::Shifted { .. } => 2,
            PlanStatus::RuleBased { .. } => 3,
        }
    }

    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            PlanStatus::Optimal => "optimal",
            PlanStatus::Relaxed { .. } => "relaxed",
            PlanStatus::Shifted { .. } => "shifted",
            PlanStatus::RuleBased { .. } => "rule_based",
        }
    }
}

/// A soft limit the plan does not meet, and by how much.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SoftViolation {
    /// e.g. `battery bat-1 reserve`.
    pub name: String,
    /// First step where it is violated.
    pub step: usize,
    /// Largest shortfall over the horizon.
    pub amount: f64,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub start: DateTime<Utc>,
    pub step_hours: f64,
    pub status: PlanStatus,
    /// Value of the plan by the LP's objective, whichever way it was made.
    pub objective_eur: f64,
    pub solve_seconds: f64,
    /// [battery][step], + charge, − discharge (kW).
    pub battery_kw: Vec<Vec<f64>>,
    /// [battery][step], state of charge at the **end** of the step.
    pub battery_soc_kwh: Vec<Vec<f64>>,
    pub p2h_kw: Vec<Vec<f64>>,
    /// [heat unit][step], heat taken from the store to cover demand (kW thermal).
    pub heat_served_kw: Vec<Vec<f64>>,
    /// [heat unit][step], store content at the end of the step.
    pub store_kwh: Vec<Vec<f64>>,
    /// [participant][step].
    pub allocation_kwh: Vec<Vec<f64>>,
    /// [device participant][step], as `PlanInput::device_participants`: the
    /// battery's charge or the unit's P2H energy, all taken from the pool.
    #[serde(default)]
    pub device_allocation_kwh: Vec<Vec<f64>>,
    pub import_kwh: Vec<f64>,
    pub export_kwh: Vec<f64>,
    /// Per step, PV left unproduced because exporting would cost money.
    #[serde(default)]
    pub curtailment_kwh: Vec<f64>,
    #[serde(default)]
    pub violations: Vec<SoftViolation>,
}
