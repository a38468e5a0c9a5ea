//! Rolling dispatch plan: a linear programme over the forecast horizon that
//! schedules batteries and power-to-heat and the intended allocation of local
//! production, solved with clarabel under a wall-clock budget. If the solver
//! fails, overruns its budget or returns something that does not pass
//! [`check`](fn@check), a greedy rule-based plan takes its place, so a plan
//! is always published.
//!
//! Model choices worth knowing:
//! - Batteries and power-to-heat charge **only from local production** (PV and
//!   other batteries' discharge), never from the grid: ped's purpose is to
//!   raise self-consumption, and grid charging would need the import price in
//!   the objective (kept in [`PlanInput`] for that later step).
//! - Local production that nobody uses is exported (no curtailment), so
//!   `export = PV + discharge − allocation − charge − P2H` per step.
//! - Batteries and power-to-heat may be **participants** themselves
//!   ([`DeviceParticipant`]): what such a device takes from the pool (its
//!   charge, its P2H electric power; all of it local, see the first point) is
//!   its allocation, valued like anybody's at its tariff − local price. A
//!   battery participant also sells what it discharges back into the pool at
//!   the local price, so that price is a transfer for it, not a loss, but
//!   only on discharge that serves load the PV does not cover (see
//!   [`credit_cap_kw`](value::credit_cap_kw); beyond it the discharge only pushes PV into export);
//!   see [`device_value`] for why its charge value is capped.
//! - Priorities: a lower number is served first (0 before 1), as in
//!   [`crate::allocation::Policy::Optimised`]; they enter the objective only
//!   as a tie-break far below any price.
//!
//! Power in kW (averages over a step), energy in kWh, positive = consumption.

mod assemble;
mod backend;
mod check;
mod ladder;
mod lp;
mod model;
mod validate;
mod value;

pub mod instance;
pub mod site_input;
pub mod synthetic;
pub mod track;

#[cfg(test)]
mod tests;

pub use backend::{Backend, BACKEND};
pub use check::check;
pub use ladder::{rule_based, shift, solve, solve_ladder};
pub use lp::{solve_decomposed, solve_joint_lp};
pub use model::{
    supply_temp_heat_cap_kw, BatteryModel, DeviceParticipant, DeviceRef, HeatUnitModel,
    ParticipantForecast, Plan, PlanError, PlanInput, PlanStatus, SoftViolation, SUPPLY_TEMP_BAND_K,
};
pub use validate::validate;
pub use value::{
    device_value, heat_end_value, objective, CYCLING_COST_EUR_PER_KWH, DISPATCH_TIE_EUR_PER_KWH,
    HEAT_END_VALUE_RATIO,
};

/// Element `t` of a series, 0 past its end or when not finite: `rule_based`
/// must not panic on input that failed validation.
fn at(v: &[f64], t: usize) -> f64 {
    v.get(t)
        .copied()
        .filter(|x| x.is_finite())
        .unwrap_or(0.0)
        .max(0.0)
}

/// A battery may start below its minimum (after a deep discharge): it may
/// then stay there, which keeps the LP feasible.
fn soc_floor(b: &BatteryModel) -> f64 {
    b.min_soc_kwh.min(b.soc_kwh)
}

/// Raw decisions per step, in kW, before repair and accounting.
struct Decisions {
    charge: Vec<Vec<f64>>,
    discharge: Vec<Vec<f64>>,
    p2h: Vec<Vec<f64>>,
    served: Vec<Vec<f64>>,
    alloc: Vec<Vec<f64>>,
    /// Per step, kW.
    curtail: Vec<f64>,
}
