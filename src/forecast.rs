//! Simple forecasters: persistence for loads and heat demand, clear-sky
//! geometry scaled by recent clearness for PV. Deliberately plain: they give
//! the planner a sane baseline and a yardstick for better models later.
//!
//! Power in kW, averaged over each settlement period; periods keyed by their
//! UTC start.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Days, TimeZone, Timelike, Utc};

use crate::time::Grid;

/// Performance ratio from irradiance on the plane to AC output: wiring,
/// inverter, temperature and soiling losses of a typical roof system.
pub const PERFORMANCE_RATIO: f64 = 0.82;
/// Ground reflectance for the reflected part of the irradiance on a tilted plane.
const ALBEDO: f64 = 0.2;
/// Days searched back for "the same local slot" when yesterday's is missing.
const SEARCH_DAYS: u64 = 7;

/// Past per-period values of one series (kW averages), the latest
/// `capacity_periods` kept.
#[derive(Debug, Clone, Default)]
pub struct SeriesHistory {
    capacity: usize,
    values: BTreeMap<DateTime<Utc>, f64>,
}

impl SeriesHistory {
    pub fn new(capacity_periods: usize) -> Self {
        SeriesHistory {
            capacity: capacity_periods,
            values: BTreeMap::new(),
        }
    }

    /// Records a period's value; a second value for the same period replaces
    /// the first (late meter corrections). Non-finite values are dropped so a
    /// missing reading is "unknown", never a forecast of NaN.
    pub fn push(&mut self, start: DateTime<Utc>, kw: f64) {
        if !kw.is_finite() || self.capacity == 0 {
            return;
        }
        self.values.insert(start, kw);
        while self.values.len() > self.capacity {
            self.values.pop_first();
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn get(&self, start: DateTime<Utc>) -> Option<f64> {
        self.values.get(&start).copied()
    }

    /// Latest value recorded for a period starting before `before`.
    fn last_before(&self, before: DateTime<Utc>) -> Option<f64> {
        self.values.range(..before).next_back().map(|(_, v)| *v)
    }

    /// Value of the same local wall-clock slot on an earlier day, most recent
    /// day first. Local days keep the profile aligned across DST changes; a
    /// slot missing on the spring day falls back to 24 h earlier.
    fn same_slot(&self, t: DateTime<Utc>, from: DateTime<Utc>, grid: &Grid) -> Option<f64> {
        let local = t.with_timezone(&grid.tz()).naive_local();
        (1..=SEARCH_DAYS).find_map(|d| {
            let back = local.checked_sub_days(Days::new(d))?;
            let at = grid
                .tz()
                .from_local_datetime(&back)
                .earliest()
                .map(|x| x.with_timezone(&Utc))
                .unwrap_or(t - chrono::Duration::hours(24 * d as i64));
            (at < from).then(|| self.get(at)).flatten()
        })
    }

    /// Forecast for `steps` periods from the period containing `from`: the
    /// same local slot on the last day that has it, else the last value, else
    /// 0; within the first hour blended 50/50 with the last value, which
    /// knows about today's conditions.
    pub fn forecast(&self, from: DateTime<Utc>, steps: usize, grid: &Grid) -> Vec<f64> {
        let first = grid.period_start(from);
        let last = self.last_before(first);
        (0..steps)
            .map(|k| {
                let t = first + grid.step() * k as i32;
                let base = self.same_slot(t, first, grid).or(last).unwrap_or(0.0);
                let within_hour = (k as f64) * grid.step_hours() < 1.0 - 1e-9;
                match (within_hour, last) {
                    (true, Some(l)) => 0.5 * base + 0.5 * l,
                    _ => base,
                }
            })
            .collect()
    }
}

/// Solar position: (cosine of the zenith angle, azimuth in degrees from north,
/// clockwise) at `t` for a site at `lat`, `lon` (degrees, east positive).
/// Cooper's declination and Spencer-style equation of time: a few tenths of a
/// degree, plenty for a planning forecast.
fn sun_position(lat: f64, lon: f64, t: DateTime<Utc>) -> (f64, f64) {
    let n = f64::from(t.ordinal());
    let decl = (23.45f64).to_radians() * (2.0 * std::f64::consts::PI * (284.0 + n) / 365.0).sin();
    let b = 2.0 * std::f64::consts::PI * (n - 81.0) / 364.0;
    let eot_min = 9.87 * (2.0 * b).sin() - 7.53 * b.cos() - 1.5 * b.sin();
    let utc_h = f64::from(t.hour()) + f64::from(t.minute()) / 60.0 + f64::from(t.second()) / 3600.0;
    let solar_h = utc_h + lon / 15.0 + eot_min / 60.0;
    let omega = (15.0 * (solar_h - 12.0)).to_radians();
    let phi = lat.to_radians();
    let cos_z = phi.sin() * decl.sin() + phi.cos() * decl.cos() * omega.cos();
    let sin_z = (1.0 - cos_z * cos_z).max(0.0).sqrt();
    let az = if sin_z < 1e-9 || phi.cos() < 1e-9 {
        180.0
    } else {
        let c = ((decl.sin() - cos_z * phi.sin()) / (sin_z * phi.cos())).clamp(-1.0, 1.0);
        let a = c.acos().to_degrees();
        // Morning sun is east of the meridian.
        if omega < 0.0 {
            a
        } else {
            360.0 - a
        }
    };
    (cos_z, az)
}

/// Clear-sky AC output (kW) of `kwp` peak watts tilted `tilt_deg` from
/// horizontal and facing `azimuth_deg` (degrees from north, clockwise: 180 =
/// south). Beam irradiance from Meinel's air-mass attenuation with the
/// Kasten-Young air mass, diffuse as a tenth of the beam, isotropic sky and
/// ground reflection; 0 with the sun below the horizon.
pub fn clear_sky_kw(
    kwp: f64,
    tilt_deg: f64,
    azimuth_deg: f64,
    lat: f64,
    lon: f64,
    t: DateTime<Utc>,
) -> f64 {
    if !(kwp.is_finite() && kwp > 0.0) {
        return 0.0;
    }
    let (cos_z, sun_az) = sun_position(lat, lon, t);
    if cos_z <= 0.0 {
        return 0.0;
    }
    let zen_deg = cos_z.acos().to_degrees();
    let air_mass = 1.0 / (cos_z + 0.50572 * (96.07995 - zen_deg).powf(-1.6364));
    let dni = 1353.0 * 0.7f64.powf(air_mass.powf(0.678));
    let dhi = 0.1 * dni;
    let ghi = dni * cos_z + dhi;
    let beta = tilt_deg.to_radians();
    let sin_z = (1.0 - cos_z * cos_z).max(0.0).sqrt();
    let cos_inc =
        cos_z * beta.cos() + sin_z * beta.sin() * (sun_az - azimuth_deg).to_radians().cos();
    let poa = dni * cos_inc.max(0.0)
        + dhi * (1.0 + beta.cos()) / 2.0
        + ALBEDO * ghi * (1.0 - beta.cos()) / 2.0;
    (kwp * poa / 1000.0 * PERFORMANCE_RATIO).max(0.0)
}

/// PV forecast (kW averaged over each period) from the period containing
/// `from`: clear-sky output averaged over three instants of each period,
/// scaled by the recent clearness (measured / clear-sky, clamped to 0..1.2:
/// edge-of-cloud enhancement can exceed clear sky, not by more).
#[allow(clippy::too_many_arguments)]
pub fn pv_forecast(
    kwp: f64,
    tilt_deg: f64,
    azimuth_deg: f64,
    lat: f64,
    lon: f64,
    from: DateTime<Utc>,
    steps: usize,
    grid: &Grid,
    recent_clearness: f64,
) -> Vec<f64> {
    let k = if recent_clearness.is_finite() {
        recent_clearness.clamp(0.0, 1.2)
    } else {
        1.0
    };
    let first = grid.period_start(from);
    let step_s = i64::from(grid.step_minutes()) * 60;
    (0..steps)
        .map(|i| {
            let t = first + grid.step() * i as i32;
            let mean = [1, 3, 5]
                .iter()
                .map(|&sixth| {
                    let at = t + chrono::Duration::seconds(step_s * sixth / 6);
                    clear_sky_kw(kwp, tilt_deg, azimuth_deg, lat, lon, at)
                })
                .sum::<f64>()
                / 3.0;
            mean * k
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    const DIJON: (f64, f64) = (47.32, 5.04);

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    fn grid(step: u32) -> Grid {
        Grid::new(step, chrono_tz::Europe::Paris).unwrap()
    }

    #[test]
    fn clear_sky_is_zero_at_night_and_peaks_near_solar_noon() {
        let (lat, lon) = DIJON;
        assert_eq!(
            clear_sky_kw(1.0, 30.0, 180.0, lat, lon, utc("2025-06-21T00:00:00Z")),
            0.0
        );
        assert_eq!(
            clear_sky_kw(1.0, 30.0, 180.0, lat, lon, utc("2025-12-21T18:00:00Z")),
            0.0
        );
        // Solar noon in Dijon is about 11:40 UTC in June (lon 5° E, EoT ~ −2 min).
        let day = utc("2025-06-21T00:00:00Z");
        let (best, kw) = (0..24 * 12)
            .map(|k| {
                let t = day + chrono::Duration::minutes(5 * k);
                (t, clear_sky_kw(1.0, 30.0, 180.0, lat, lon, t))
            })
            .fold((day, 0.0), |a, b| if b.1 > a.1 { b } else { a });
        let minutes = best.hour() * 60 + best.minute();
        assert!(
            (11 * 60 + 25..=11 * 60 + 55).contains(&minutes),
            "peak at {best}"
        );
        assert!(kw > 0.7 && kw < 1.0, "peak {kw} kW for 1 kWp");
        // An east-facing plane peaks in the morning.
        let east = clear_sky_kw(1.0, 30.0, 90.0, lat, lon, utc("2025-06-21T08:00:00Z"));
        let west = clear_sky_kw(1.0, 30.0, 270.0, lat, lon, utc("2025-06-21T08:00:00Z"));
        assert!(east > west);
    }

    #[test]
    fn annual_energy_is_plausible_for_dijon() {
        let (lat, lon) = DIJON;
        let g = grid(60);
        let from = utc("2025-01-01T00:00:00Z");
        let clear: f64 = pv_forecast(1.0, 30.0, 180.0, lat, lon, from, 8760, &g, 1.0)
            .iter()
            .sum();
        // Clear sky every hour of the year is an upper bound, far above real yield.
        assert!(
            (1600.0..2400.0).contains(&clear),
            "clear-sky year {clear} kWh"
        );
        // Scaled by an average clearness of 0.7 (an assumption, not a measured
        // climatology for Dijon), it must land in the range of real yields.
        let typical = clear * 0.7;
        assert!(
            (1100.0..1600.0).contains(&typical),
            "typical year {typical} kWh"
        );
        let scaled: f64 = pv_forecast(1.0, 30.0, 180.0, lat, lon, from, 8760, &g, 0.7)
            .iter()
            .sum();
        assert!((scaled - typical).abs() < 1e-6);
    }

    #[test]
    fn pv_forecast_clamps_clearness_and_is_zero_at_night() {
        let (lat, lon) = DIJON;
        let g = grid(15);
        let from = utc("2025-06-21T00:00:00Z");
        let a = pv_forecast(10.0, 30.0, 180.0, lat, lon, from, 96, &g, 5.0);
        let b = pv_forecast(10.0, 30.0, 180.0, lat, lon, from, 96, &g, 1.2);
        assert_eq!(a, b);
        assert_eq!(a[0], 0.0);
        assert!(a.iter().all(|x| x.is_finite() && *x >= 0.0));
    }

    #[test]
    fn history_uses_same_local_slot_yesterday_and_blends_first_hour() {
        let g = grid(30);
        let mut h = SeriesHistory::new(1000);
        let day = NaiveDate::from_ymd_opt(2025, 6, 20).unwrap();
        for (k, t) in g.periods_of_local_day(day).unwrap().into_iter().enumerate() {
            h.push(t, k as f64);
        }
        let from = g.local_midnight(day.succ_opt().unwrap()).unwrap();
        let f = h.forecast(from, 48, &g);
        let last = 47.0;
        assert_eq!(f[0], 0.5 * 0.0 + 0.5 * last);
        assert_eq!(f[1], 0.5 * 1.0 + 0.5 * last);
        assert_eq!(f[2], 2.0);
        assert_eq!(f[47], 47.0);
    }

    #[test]
    fn history_falls_back_to_last_value_then_zero() {
        let g = grid(15);
        let from = utc("2025-06-21T10:00:00Z");
        assert_eq!(SeriesHistory::new(10).forecast(from, 3, &g), vec![0.0; 3]);
        let mut h = SeriesHistory::new(10);
        h.push(from - g.step(), 4.0);
        h.push(from - g.step() * 2, f64::NAN);
        assert_eq!(h.len(), 1);
        assert_eq!(h.forecast(from, 6, &g), vec![4.0; 6]);
    }

    #[test]
    fn history_keeps_only_its_capacity() {
        let g = grid(15);
        let t = utc("2025-06-21T10:00:00Z");
        let mut h = SeriesHistory::new(4);
        for k in 0..10 {
            h.push(t + g.step() * k, f64::from(k));
        }
        assert_eq!(h.len(), 4);
        assert_eq!(h.get(t), None);
        assert_eq!(h.get(t + g.step() * 9), Some(9.0));
    }

    #[test]
    fn history_aligns_local_slots_across_dst() {
        // The day after the autumn change: 08:00 local is 07:00 UTC, the day
        // before it was 06:00 UTC. The forecast must follow the wall clock.
        let g = grid(60);
        let mut h = SeriesHistory::new(500);
        let day = NaiveDate::from_ymd_opt(2025, 10, 26).unwrap();
        for t in g.periods_of_local_day(day).unwrap() {
            let local_hour = t.with_timezone(&g.tz()).hour();
            h.push(t, f64::from(local_hour));
        }
        let from = g.local_midnight(day.succ_opt().unwrap()).unwrap();
        let f = h.forecast(from, 24, &g);
        assert_eq!(f[8], 8.0);
        assert_eq!(f[20], 20.0);
    }
}
