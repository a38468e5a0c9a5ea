//! Units and sign convention, stated once.
//!
//! Inside ped, power is in **kW** and energy in **kWh** (`f64`, names suffixed
//! `_kw` / `_kwh`), temperatures in °C (`_c`), ratios in 0..=1 (`_ratio`).
//!
//! Sign convention inside ped: **positive = consumption** from the point of view
//! of the grid connection. A battery charging has positive power, a battery
//! discharging negative; a PV inverter's production is reported as a positive
//! `production_kw` (a separate quantity, never a negative consumption). Each
//! device's own convention is converted at the device edge (`devices`), from the
//! `sign` setting of the device in the site config.

use serde::{Deserialize, Serialize};

/// How a device reports the sign of its active power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SignConvention {
    /// Positive = power flowing into the device (consumption, charging): ped's own convention.
    #[default]
    ConsumptionPositive,
    /// Positive = power flowing out of the device (generation, discharging), as SunSpec 802 `W`.
    GenerationPositive,
}

impl SignConvention {
    /// Converts a device's raw power to ped's convention (positive = consumption).
    pub fn to_ped(self, raw: f64) -> f64 {
        match self {
            SignConvention::ConsumptionPositive => raw,
            SignConvention::GenerationPositive => -raw,
        }
    }
    /// Converts ped's convention back to the device's own, for setpoints.
    pub fn to_device(self, ped: f64) -> f64 {
        self.to_ped(ped)
    }
}

pub const W_PER_KW: f64 = 1000.0;
pub const WH_PER_KWH: f64 = 1000.0;
/// Prometheus base unit for energy is the joule.
pub const JOULES_PER_KWH: f64 = 3.6e6;

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sign_conversion_round_trips() {
        let s = SignConvention::GenerationPositive;
        assert_eq!(s.to_ped(5.0), -5.0);
        assert_eq!(s.to_device(s.to_ped(5.0)), 5.0);
        assert_eq!(SignConvention::ConsumptionPositive.to_ped(3.0), 3.0);
    }
}
