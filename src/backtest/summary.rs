//! The run's figures as written to summary.json: per scenario, per
//! participant, the solves and the forecast errors.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{DataQuality, TrackingDiagnosis};
use crate::forecast::ForecastError;

/// Totals of one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioSummary {
    pub name: String,
    pub dispatch: String,
    pub keys: String,
    pub pv_kwh: f64,
    pub consumption_kwh: f64,
    pub battery_charge_kwh: f64,
    pub battery_discharge_kwh: f64,
    pub p2h_kwh: f64,
    /// Heat made from local PV (P2H electricity × efficiency), kWh thermal.
    pub heat_from_pv_kwh: f64,
    pub heat_served_from_store_kwh: f64,
    /// Energy allocated to the participants (storage excluded).
    pub allocated_kwh: f64,
    pub allocated_to_storage_kwh: f64,
    /// Storage charge the keys did not cover: bought from the grid.
    pub storage_grid_kwh: f64,
    /// Physical export: Σ over steps of max(0, PV + discharge − participants'
    /// consumption − storage charge − P2H).
    pub export_kwh: f64,
    /// Σ over steps of min(PV + discharge, consumption incl. storage): what
    /// the keys could allocate.
    pub consumed_locally_kwh: f64,
    /// `consumed_locally_kwh` − what the DSO's rule allocates with the
    /// exported (rounded) keys: consumed in the district but, for the DSO,
    /// neither self-consumed nor exported by anyone (rounding residue).
    pub unallocated_kwh: f64,
    /// 1 − export / PV (physical export).
    pub self_consumption_rate: f64,
    /// Allocated / consumption of the participants.
    pub self_sufficiency: f64,
    pub savings_eur: f64,
    pub export_revenue_eur: f64,
    pub battery_full_cycles: f64,
    /// Largest |PV + discharge − allocated − export − unallocated| of a
    /// step, and of the keys' own balance, kWh.
    pub max_balance_error_kwh: f64,
    /// Participants who, in at least one local month, get from the DSO's rule
    /// `min(key × P, C)` with this scenario's exported keys less than exact
    /// pro rata of the same production and consumption would give them, by
    /// more than [`WORSE_OFF_MIN_KWH`] and [`WORSE_OFF_SHARE`] of it.
    pub participants_worse_than_dso_prorata: usize,
    /// The first of them (at most [`SHOWN_LINES`]), with their month.
    pub worse_than_dso_prorata: Vec<WorseOff>,
    /// Participants whose savings over the run are below what they save in
    /// the district without ped (`dso_prorata`: no storage, pro rata keys)
    /// by more than a cent.
    pub participants_saving_less_than_without_ped: usize,
    /// Steps × participants with a key while outside their membership
    /// (should be 0).
    pub keys_outside_membership: usize,
}

/// A participant's month short of exact pro rata.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorseOff {
    pub id: String,
    /// Local month, `YYYY-MM`.
    pub month: String,
    pub allocated_kwh: f64,
    pub prorata_kwh: f64,
    /// Steps of the month whose consumption was missing or suspect (and
    /// estimated, unless nothing could estimate it).
    pub estimated_steps: usize,
}

/// A month short of pro rata by less than this (kWh) or than
/// [`WORSE_OFF_SHARE`] of the pro-rata month is rounding, not a loss: the
/// keys are exported to 0.1 % and the DSO applies them as they are.
pub const WORSE_OFF_MIN_KWH: f64 = 0.1;
pub const WORSE_OFF_SHARE: f64 = 0.005;

#[derive(Debug, Clone, Serialize)]
pub struct ParticipantResult {
    pub id: String,
    pub kind: String,
    pub tariff_eur_per_kwh: f64,
    pub priority: u8,
    pub consumption_kwh: f64,
    /// Per scenario name: allocated kWh and savings €.
    pub allocated_kwh: BTreeMap<String, f64>,
    pub savings_eur: BTreeMap<String, f64>,
    /// Savings under `ped` / savings under `dso_prorata`.
    pub ratio_to_prorata: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SolveStats {
    pub solves: usize,
    pub replans_on_miss: usize,
    pub optimal: usize,
    pub fallback: usize,
    pub p50_s: f64,
    pub p95_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    pub mean_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ForecastErrors {
    /// District PV, kW, every horizon point of every issued forecast.
    pub pv: ForecastError,
    /// Each participant's consumption, kW.
    pub consumption: ForecastError,
    /// Heat of the substations with a heat store, kW thermal.
    pub heat: ForecastError,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub data_dir: String,
    pub from: String,
    pub to: String,
    pub step_minutes: u32,
    pub steps: usize,
    pub horizon_steps: usize,
    pub replan_every: usize,
    pub budget_ms: u64,
    pub wall_seconds: f64,
    /// Forecasts, solves and device model of the LP dispatch (data loading excluded).
    pub lp_loop_seconds: f64,
    /// The other dispatches and the keys of every scenario.
    pub baselines_seconds: f64,
    pub scenarios: Vec<ScenarioSummary>,
    pub solve: SolveStats,
    pub forecast_errors: ForecastErrors,
    pub participants: Vec<ParticipantResult>,
    /// The `ped` dispatch's export against its plan's surplus.
    pub tracking: TrackingDiagnosis,
    /// Missing and suspect values of the replayed range and their estimates.
    pub data_quality: DataQuality,
}
