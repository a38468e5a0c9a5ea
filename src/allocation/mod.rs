//! Ex-post allocation keys for one closed settlement period.
//!
//! The DSO applies, per step and consumer, `allocated_i = min(key_i × P, C_i)`
//! where `P` is the pooled production (PV plus battery discharge) and `C_i` the
//! consumer's measured consumption (charging batteries and power-to-heat units
//! are consumers too). Keys leave ped as integers in units of a [`Precision`]
//! (1000 units = 100 % at 0.1 %), so every policy ends with the same
//! quantisation: floor, then hand the residue to whoever can still absorb it.
//!
//! Degenerate steps are valid and defined (pro rata and optimised; static
//! keys stay the declared shares whatever the step):
//! - zero production: every key is 0 (no key changes the outcome, and all-zero
//!   rows make such steps easy to spot in the exported files);
//! - zero total consumption: every key is 0 and all production is surplus.
//!
//! Energies are in kWh for the step.

mod full;
mod month;
mod quantise;
mod step;
#[cfg(test)]
mod tests;

pub mod flow;
pub mod solver;

pub use full::*;
pub use month::*;
pub use quantise::*;
pub use step::*;

/// Energies below this are treated as zero: measured kWh carry far fewer
/// significant digits, and floating error must not buy a key unit.
const EPS_KWH: f64 = 1e-9;
/// Slack when turning an exact share into units, so `0.3 × 1000` computed as
/// `299.99999999` still floors to 300.
const EPS_UNITS: f64 = 1e-7;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AllocationError {
    #[error("production of the step must be finite and >= 0 kWh (got {0})")]
    BadProduction(f64),
    #[error("consumption of consumer #{index} must be finite and >= 0 kWh (got {value})")]
    BadConsumption { index: usize, value: f64 },
    #[error("keys sum to {sum} units, more than 100 % ({units_per_one} units)")]
    SumOver100 { sum: u64, units_per_one: u32 },
    #[error("{got} keys for {expected} consumers")]
    Length { expected: usize, got: usize },
    #[error("precision must be a power of ten of at least 100 units per one (got {0})")]
    BadPrecision(u32),
    #[error("policy does not fit the participants: {0}")]
    Policy(String),
}

/// Export precision of the keys: `units_per_one` integer units make 100 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    pub units_per_one: u32,
}

impl Default for Precision {
    /// 0.01 %: the two decimals of a percent of the only real Enedis key file
    /// found in public. At 0.1 % a household's share in a large operation is
    /// often below one unit.
    fn default() -> Self {
        Precision {
            units_per_one: 10_000,
        }
    }
}

impl Precision {
    /// Only powers of ten map to a fixed number of decimals in a percent value.
    pub fn new(units_per_one: u32) -> Result<Self, AllocationError> {
        let p = Precision { units_per_one };
        p.percent_decimals()
            .map(|_| p)
            .ok_or(AllocationError::BadPrecision(units_per_one))
    }

    /// Decimals of a key written in percent: 1 at 1000 units, 2 at 10000.
    /// `None` when `units_per_one` is not 10^k with k >= 2.
    pub fn percent_decimals(&self) -> Option<u32> {
        let mut u = self.units_per_one;
        let mut k = 0u32;
        while u >= 10 && u % 10 == 0 {
            u /= 10;
            k += 1;
        }
        (u == 1 && k >= 2).then(|| k - 2)
    }

    fn unit_share(&self) -> f64 {
        1.0 / f64::from(self.units_per_one.max(1))
    }
}

/// How a step's production is meant to be shared.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Pro rata of consumption: the DSO's default, already maximal in total.
    ProRata,
    /// Fixed shares per consumer (sum <= 1); what a consumer cannot use is surplus.
    Static(Vec<f64>),
    /// Priority tiers first (a lower number is served first), then higher
    /// tariff first inside a tier, equal tariffs pro rata.
    Optimised {
        tariffs_eur_per_kwh: Vec<f64>,
        priority: Vec<u8>,
    },
}

/// Measured energies of one closed step; consumers in a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInput {
    pub production_kwh: f64,
    pub consumption_kwh: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepKeys {
    /// Exported key per consumer, sum <= `units_per_one`.
    pub units: Vec<u32>,
    /// What the DSO rule gives with these exported keys.
    pub allocated_kwh: Vec<f64>,
    pub self_consumed_kwh: f64,
    /// production − self_consumed, >= 0.
    pub surplus_kwh: f64,
    /// Allocation the policy wanted before quantisation.
    pub intended_kwh: Vec<f64>,
    /// Why the step fell back to pro rata, if it did.
    pub fallback: Option<String>,
}
