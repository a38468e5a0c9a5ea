//! Forecasters, pure and deterministic.
//!
//! - The daemon's simple ones ([`SeriesHistory`], [`pv_forecast`]):
//!   persistence for loads and heat demand, clear-sky geometry scaled by the
//!   recent clearness for PV.
//! - The ones on a regular series ([`Calendar`]), used by the backtest:
//!   PV = clear sky per plant plane ([`clear_sky_series`]) × a clearness that
//!   starts at the last two hours' value and relaxes to the last three days'
//!   ([`pv_blend_forecast`]); consumption = the mean of the same local slot
//!   on the last four days of the same class (weekday, French public holidays
//!   count as Sundays) plus the last two hours' deviation from that profile,
//!   fading over the horizon ([`load_forecast`]); heat = a degree-day
//!   regression of daily heat on the daily mean temperature, base temperature
//!   fitted, spread by the mean intraday shape ([`DegreeDayModel`]).
//!   Each has a walk-forward backtest returning MAE and MAE / mean actual.
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

/// The clearness assumed when the plants make too little to measure it
/// (night, dawn).
pub const DEFAULT_CLEARNESS: f64 = 0.8;

/// A PV miss: measured PV that differs from the plan's forecast for the
/// current step by more than this share of the larger of the two …
pub const MISS_SHARE_OF_PV: f64 = 0.25;
/// … and by more than this share of the installed peak (so that dawn and a
/// winter day's small values do not count).
pub const MISS_SHARE_OF_PEAK: f64 = 0.05;

/// Whether measured PV has left the forecast far enough behind that the
/// plan, which would under- or over-charge for the rest of the day, is
/// solved again with the clearness just measured. The daemon's planner and
/// the backtest's replay decide with this one rule.
pub fn pv_missed(measured_kw: f64, forecast_kw: f64, peak_kw: f64) -> bool {
    let gap = (measured_kw - forecast_kw).abs();
    gap > MISS_SHARE_OF_PV * measured_kw.max(forecast_kw) && gap > MISS_SHARE_OF_PEAK * peak_kw
}

/// The clearness a PV forecast scales clear sky by: the plants' measured
/// output over their clear-sky output at the same time, clamped to 0.1..=1.2,
/// or [`DEFAULT_CLEARNESS`] when clear sky is under 0.05 kW a plant (the sun
/// too low to judge).
pub fn measured_clearness(measured_kw: f64, clear_kw: f64, plants: usize) -> f64 {
    if clear_kw > 0.05 * plants as f64 {
        (measured_kw / clear_kw).clamp(0.1, 1.2)
    } else {
        DEFAULT_CLEARNESS
    }
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

// ---------------------------------------------------------------------------
// Forecasters on a regular series (the backtest and, later, the daemon's
// longer history): values indexed by step on a fixed UTC grid.
// ---------------------------------------------------------------------------

/// Index ↔ instant of a regular series: step `k` starts at `start + k·step`.
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    pub grid: Grid,
    pub start: DateTime<Utc>,
    pub len: usize,
}

impl Calendar {
    pub fn time(&self, k: usize) -> DateTime<Utc> {
        self.start + self.grid.step() * k as i32
    }

    /// Index of the step starting at `t`, if it is on the grid and inside the series.
    pub fn index(&self, t: DateTime<Utc>) -> Option<usize> {
        let secs = (t - self.start).num_seconds();
        let step = i64::from(self.grid.step_minutes()) * 60;
        if secs < 0 || secs % step != 0 {
            return None;
        }
        let k = usize::try_from(secs / step).ok()?;
        (k < self.len).then_some(k)
    }

    /// Local wall-clock slot of the day (0 = the step starting at 00:00 local).
    pub fn slot(&self, k: usize) -> usize {
        let local = self.time(k).with_timezone(&self.grid.tz());
        ((local.hour() * 60 + local.minute()) / self.grid.step_minutes()) as usize
    }

    pub fn slots_per_day(&self) -> usize {
        (24 * 60 / self.grid.step_minutes()) as usize
    }
}

/// Easter Sunday (anonymous Gregorian algorithm).
fn easter(year: i32) -> Option<chrono::NaiveDate> {
    let a = year % 19;
    let b = year / 100;
    let c = year % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    chrono::NaiveDate::from_ymd_opt(year, month as u32, day as u32)
}

/// French public holidays (metropolitan France; not the Alsace-Moselle extras).
pub fn is_french_holiday(day: chrono::NaiveDate) -> bool {
    let fixed = [
        (1, 1),
        (5, 1),
        (5, 8),
        (7, 14),
        (8, 15),
        (11, 1),
        (11, 11),
        (12, 25),
    ];
    if fixed.contains(&(day.month(), day.day())) {
        return true;
    }
    easter(day.year()).is_some_and(|e| {
        [1u64, 39, 50]
            .iter()
            .any(|&off| e.checked_add_days(Days::new(off)) == Some(day))
    })
}

/// Day class for load profiles: Monday = 0 … Sunday = 6; a public holiday
/// behaves like a Sunday (offices, schools and shops closed).
pub fn day_class(day: chrono::NaiveDate) -> u32 {
    if is_french_holiday(day) {
        6
    } else {
        day.weekday().num_days_from_monday()
    }
}

/// Past days of the same class searched for a load profile, and how many are used.
const PROFILE_SEARCH_DAYS: u64 = 35;
const PROFILE_DAYS: usize = 4;
/// Steps of recent history whose deviation from the profile is carried forward.
pub const LOAD_RECENT_HOURS: f64 = 2.0;
/// e-folding time (h) of that deviation over the horizon.
const LOAD_CORRECTION_DECAY_H: f64 = 3.0;

/// For step `target`: earlier steps of the same local slot on the most recent
/// days of the same class (up to [`PROFILE_DAYS`]), all strictly before
/// `before`. Falls back to the same slot on the previous days of any class.
pub fn analog_steps(cal: &Calendar, target: usize, before: usize) -> Vec<usize> {
    let tz = cal.grid.tz();
    let local = cal.time(target).with_timezone(&tz).naive_local();
    let class = day_class(local.date());
    let lookup = |d: u64| -> Option<usize> {
        let back = local.checked_sub_days(Days::new(d))?;
        let t = tz
            .from_local_datetime(&back)
            .earliest()?
            .with_timezone(&Utc);
        cal.index(t).filter(|&k| k < before)
    };
    let mut same: Vec<usize> = (1..=PROFILE_SEARCH_DAYS)
        .filter(|&d| {
            local
                .date()
                .checked_sub_days(Days::new(d))
                .is_some_and(|day| day_class(day) == class)
        })
        .filter_map(lookup)
        .take(PROFILE_DAYS)
        .collect();
    if same.is_empty() {
        same = (1..=SEARCH_DAYS).filter_map(lookup).take(1).collect();
    }
    same
}

/// Same-weekday/holiday profile value of one series at a step, from its analogs.
fn profile_value(values: &[f64], analogs: &[usize]) -> Option<f64> {
    let v: Vec<f64> = analogs
        .iter()
        .filter_map(|&k| values.get(k).copied())
        .filter(|x| x.is_finite())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The analog steps a load forecast issued at `t0` for `horizon` steps needs:
/// one list per step from `t0 − recent` to `t0 + horizon`, shared by every
/// participant (the calendar work is done once per forecast, not per series).
pub struct LoadAnalogs {
    pub t0: usize,
    pub recent: usize,
    pub horizon: usize,
    lists: Vec<Vec<usize>>,
}

impl LoadAnalogs {
    pub fn new(cal: &Calendar, t0: usize, horizon: usize) -> Self {
        let recent = ((LOAD_RECENT_HOURS / cal.grid.step_hours()).round() as usize).min(t0);
        let lists = (t0 - recent..t0 + horizon)
            .map(|k| analog_steps(cal, k, t0.min(k)))
            .collect();
        LoadAnalogs {
            t0,
            recent,
            horizon,
            lists,
        }
    }
}

/// Consumption forecast (same unit as `values`) for the steps `t0..t0+horizon`
/// of one series whose values are known before `t0`: the same-weekday/holiday
/// profile, shifted by the mean deviation of the last hours from that profile,
/// the shift fading over the horizon. Never negative.
pub fn load_forecast(values: &[f64], analogs: &LoadAnalogs, step_hours: f64) -> Vec<f64> {
    let t0 = analogs.t0;
    let last = values[..t0.min(values.len())]
        .iter()
        .rev()
        .find(|x| x.is_finite())
        .copied();
    let mut dev = 0.0;
    let mut n = 0usize;
    for j in 0..analogs.recent {
        let k = t0 - analogs.recent + j;
        if let (Some(p), Some(&v)) = (profile_value(values, &analogs.lists[j]), values.get(k)) {
            if v.is_finite() {
                dev += v - p;
                n += 1;
            }
        }
    }
    let dev = if n > 0 { dev / n as f64 } else { 0.0 };
    (0..analogs.horizon)
        .map(|h| {
            let base = profile_value(values, &analogs.lists[analogs.recent + h])
                .or(last)
                .unwrap_or(0.0);
            let lead = (h as f64 + 0.5) * step_hours;
            (base + dev * (-lead / LOAD_CORRECTION_DECAY_H).exp()).max(0.0)
        })
        .collect()
}

/// An orientation of a PV plant: a share of its peak power on one plane (an
/// east-west roof is two halves).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PvPlane {
    pub kwp: f64,
    pub tilt_deg: f64,
    pub azimuth_deg: f64,
}

/// Clear-sky output (kW averaged over each step) of a plant's planes for every
/// step of a calendar: three instants per step, as [`pv_forecast`].
pub fn clear_sky_series(planes: &[PvPlane], lat: f64, lon: f64, cal: &Calendar) -> Vec<f64> {
    let step_s = i64::from(cal.grid.step_minutes()) * 60;
    (0..cal.len)
        .map(|k| {
            let t = cal.time(k);
            [1, 3, 5]
                .iter()
                .map(|&sixth| {
                    let at = t + chrono::Duration::seconds(step_s * sixth / 6);
                    planes
                        .iter()
                        .map(|p| clear_sky_kw(p.kwp, p.tilt_deg, p.azimuth_deg, lat, lon, at))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / 3.0
        })
        .collect()
}

/// Measured over clear-sky energy on the steps `from..to` (clamped to 0..1.2),
/// `None` when the sun gave too little to judge (night, dawn).
pub fn clearness(measured: &[f64], clear: &[f64], from: usize, to: usize) -> Option<f64> {
    let to = to.min(measured.len()).min(clear.len());
    let (mut m, mut c) = (0.0, 0.0);
    for k in from.min(to)..to {
        if measured[k].is_finite() {
            m += measured[k];
            c += clear[k];
        }
    }
    let peak = clear[from.min(to)..to].iter().cloned().fold(0.0, f64::max);
    (c > 0.0 && peak > 0.0 && c > 0.05 * peak * (to - from) as f64).then(|| (m / c).clamp(0.0, 1.2))
}

/// Hours of recent production that give the "now" clearness, days that give
/// the background clearness, and the e-folding time (h) of the first.
const PV_RECENT_HOURS: f64 = 2.0;
const PV_BACKGROUND_DAYS: usize = 3;
const PV_RECENT_DECAY_H: f64 = 3.0;

/// PV forecast for `t0..t0+horizon` from a plant's clear-sky series and its
/// measured output before `t0`: clear sky × a clearness that starts at the
/// last hours' value and relaxes towards the last days' value.
pub fn pv_blend_forecast(
    measured: &[f64],
    clear: &[f64],
    t0: usize,
    horizon: usize,
    step_hours: f64,
) -> Vec<f64> {
    let recent_steps = (PV_RECENT_HOURS / step_hours).round() as usize;
    let day_steps = (24.0 / step_hours).round() as usize;
    let background = clearness(
        measured,
        clear,
        t0.saturating_sub(PV_BACKGROUND_DAYS * day_steps),
        t0,
    )
    .unwrap_or(0.75);
    let recent = clearness(measured, clear, t0.saturating_sub(recent_steps), t0);
    (0..horizon)
        .map(|h| {
            let c = clear.get(t0 + h).copied().unwrap_or(0.0);
            let k = match recent {
                Some(r) => {
                    let w = (-(h as f64 + 0.5) * step_hours / PV_RECENT_DECAY_H).exp();
                    w * r + (1.0 - w) * background
                }
                None => background,
            };
            (c * k).max(0.0)
        })
        .collect()
}

/// Degree-day model of one substation's heat: daily heat = `base_kwh` +
/// `kwh_per_degree_day` × max(0, `base_temp_c` − daily mean temperature),
/// spread over the day by the mean share of each local slot.
#[derive(Debug, Clone, PartialEq)]
pub struct DegreeDayModel {
    pub base_temp_c: f64,
    pub base_kwh: f64,
    pub kwh_per_degree_day: f64,
    /// Share of a day's heat per local slot; sums to 1.
    pub slot_share: Vec<f64>,
}

/// Base temperatures tried by the fit (°C): the usual 15–18 °C and around.
const BASE_TEMPS: std::ops::RangeInclusive<i32> = 24..=40; // × 0.5 °C: 12..20 °C

/// One local day of history: its steps, mean temperature and total heat.
struct DayAgg {
    steps: Vec<usize>,
    temp: f64,
    heat: f64,
}

fn days_of(cal: &Calendar, temp: &[f64], heat: &[f64], from: usize, to: usize) -> Vec<DayAgg> {
    let mut out: Vec<DayAgg> = Vec::new();
    let mut current: Option<chrono::NaiveDate> = None;
    for k in from..to.min(cal.len) {
        let day = cal.grid.local_day(cal.time(k));
        if current != Some(day) {
            out.push(DayAgg {
                steps: Vec::new(),
                temp: 0.0,
                heat: 0.0,
            });
            current = Some(day);
        }
        if let Some(d) = out.last_mut() {
            d.steps.push(k);
            d.temp += temp.get(k).copied().unwrap_or(0.0);
            d.heat += heat.get(k).copied().unwrap_or(0.0);
        }
    }
    for d in &mut out {
        d.temp /= d.steps.len().max(1) as f64;
    }
    out
}

impl DegreeDayModel {
    /// Least-squares fit on the whole local days within `from..to` (the base
    /// temperature by a grid search from 12 to 20 °C); `None` with fewer than
    /// three whole days.
    pub fn fit(cal: &Calendar, temp: &[f64], heat: &[f64], from: usize, to: usize) -> Option<Self> {
        let full = cal.slots_per_day();
        let days: Vec<DayAgg> = days_of(cal, temp, heat, from, to)
            .into_iter()
            .filter(|d| d.steps.len() + 2 >= full && d.steps.len() <= full + 2)
            .filter(|d| d.temp.is_finite() && d.heat.is_finite())
            .collect();
        if days.len() < 3 {
            return None;
        }
        let mut best: Option<(f64, f64, f64, f64)> = None;
        for half in BASE_TEMPS {
            let tb = f64::from(half) * 0.5;
            let xs: Vec<f64> = days.iter().map(|d| (tb - d.temp).max(0.0)).collect();
            let n = days.len() as f64;
            let mx = xs.iter().sum::<f64>() / n;
            let my = days.iter().map(|d| d.heat).sum::<f64>() / n;
            let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
            let sxy: f64 = xs
                .iter()
                .zip(&days)
                .map(|(x, d)| (x - mx) * (d.heat - my))
                .sum();
            let b = if sxx > 1e-9 {
                (sxy / sxx).max(0.0)
            } else {
                0.0
            };
            let a = (my - b * mx).max(0.0);
            let sse: f64 = xs
                .iter()
                .zip(&days)
                .map(|(x, d)| (a + b * x - d.heat).powi(2))
                .sum();
            if best.map_or(true, |(s, ..)| sse < s) {
                best = Some((sse, tb, a, b));
            }
        }
        let (_, tb, a, b) = best?;
        let mut share = vec![0.0; full];
        let mut total = 0.0;
        for d in &days {
            for &k in &d.steps {
                let v = heat.get(k).copied().unwrap_or(0.0);
                if v.is_finite() {
                    share[cal.slot(k).min(full - 1)] += v;
                    total += v;
                }
            }
        }
        if total > 0.0 {
            share.iter_mut().for_each(|s| *s /= total);
        } else {
            share.iter_mut().for_each(|s| *s = 1.0 / full as f64);
        }
        Some(DegreeDayModel {
            base_temp_c: tb,
            base_kwh: a,
            kwh_per_degree_day: b,
            slot_share: share,
        })
    }

    /// Heat of a day with mean temperature `temp_c`.
    pub fn daily_kwh(&self, temp_c: f64) -> f64 {
        self.base_kwh + self.kwh_per_degree_day * (self.base_temp_c - temp_c).max(0.0)
    }

    /// Forecast of the heat per step (same unit as the fitted series) for
    /// `t0..t0+horizon`, from the temperatures of those days (the weather
    /// forecast; past the series the last known temperature is held).
    pub fn forecast(&self, cal: &Calendar, temp: &[f64], t0: usize, horizon: usize) -> Vec<f64> {
        let mut day_temp: BTreeMap<chrono::NaiveDate, (f64, usize)> = BTreeMap::new();
        let last_known = temp
            .iter()
            .rev()
            .find(|x| x.is_finite())
            .copied()
            .unwrap_or(10.0);
        let steps = self.slot_share.len();
        let day_of = |k: usize| cal.grid.local_day(cal.time(k));
        // Mean temperature of every local day the horizon touches.
        let first_day = day_of(t0);
        let mut k = cal
            .index(cal.grid.local_midnight(first_day).unwrap_or(cal.time(t0)))
            .unwrap_or(0);
        while k < t0 + horizon + steps {
            let t = temp
                .get(k)
                .copied()
                .filter(|x| x.is_finite())
                .unwrap_or(last_known);
            let e = day_temp.entry(day_of(k)).or_insert((0.0, 0));
            e.0 += t;
            e.1 += 1;
            k += 1;
        }
        (t0..t0 + horizon)
            .map(|k| {
                let (sum, n) = day_temp.get(&day_of(k)).copied().unwrap_or((last_known, 1));
                let daily = self.daily_kwh(sum / n.max(1) as f64);
                (daily * self.slot_share[cal.slot(k).min(steps - 1)]).max(0.0)
            })
            .collect()
    }
}

/// Mean absolute error and its normalisation by the mean of the actual values.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ForecastError {
    pub points: usize,
    pub mae: f64,
    /// MAE / mean actual (0 when the actual mean is 0).
    pub nmae: f64,
}

/// Running sums of absolute errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorAccumulator {
    abs: f64,
    actual: f64,
    n: usize,
}

impl ErrorAccumulator {
    pub fn add(&mut self, forecast: f64, actual: f64) {
        if forecast.is_finite() && actual.is_finite() {
            self.abs += (forecast - actual).abs();
            self.actual += actual;
            self.n += 1;
        }
    }

    pub fn add_series(&mut self, forecast: &[f64], actual: &[f64]) {
        for (f, a) in forecast.iter().zip(actual) {
            self.add(*f, *a);
        }
    }

    pub fn merge(&mut self, other: &ErrorAccumulator) {
        self.abs += other.abs;
        self.actual += other.actual;
        self.n += other.n;
    }

    pub fn result(&self) -> ForecastError {
        if self.n == 0 {
            return ForecastError::default();
        }
        let n = self.n as f64;
        let mean = self.actual / n;
        ForecastError {
            points: self.n,
            mae: self.abs / n,
            nmae: if mean.abs() > 0.0 {
                self.abs / n / mean
            } else {
                0.0
            },
        }
    }
}

/// Walk-forward backtest of the PV forecaster: a forecast of `horizon` steps
/// issued every `every` steps from `from`, scored on every step the data has.
pub fn backtest_pv(
    measured: &[f64],
    clear: &[f64],
    from: usize,
    horizon: usize,
    every: usize,
    step_hours: f64,
) -> ForecastError {
    let mut acc = ErrorAccumulator::default();
    let end = measured.len().min(clear.len());
    let mut t0 = from;
    while t0 < end {
        let f = pv_blend_forecast(measured, clear, t0, horizon, step_hours);
        let to = (t0 + horizon).min(end);
        acc.add_series(&f, &measured[t0..to]);
        t0 += every.max(1);
    }
    acc.result()
}

/// Walk-forward backtest of the consumption forecaster over several series.
pub fn backtest_load(
    cal: &Calendar,
    series: &[&[f64]],
    from: usize,
    horizon: usize,
    every: usize,
) -> ForecastError {
    let mut acc = ErrorAccumulator::default();
    let mut t0 = from.max(1);
    while t0 < cal.len {
        let analogs = LoadAnalogs::new(cal, t0, horizon);
        let to = (t0 + horizon).min(cal.len);
        for s in series {
            let f = load_forecast(s, &analogs, cal.grid.step_hours());
            acc.add_series(&f, &s[t0..to.min(s.len())]);
        }
        t0 += every.max(1);
    }
    acc.result()
}

/// Walk-forward backtest of the degree-day model: refitted at each local
/// midnight on everything before it (at least `min_days` days), forecasting
/// the next `horizon` steps.
pub fn backtest_heat(
    cal: &Calendar,
    temp: &[f64],
    heat: &[f64],
    min_days: usize,
    horizon: usize,
) -> ForecastError {
    let mut acc = ErrorAccumulator::default();
    let day_steps = cal.slots_per_day();
    for t0 in (0..cal.len).filter(|&k| cal.slot(k) == 0 && k >= min_days * day_steps) {
        if let Some(m) = DegreeDayModel::fit(cal, temp, heat, 0, t0) {
            let f = m.forecast(cal, temp, t0, horizon);
            let to = (t0 + horizon).min(cal.len).min(heat.len());
            acc.add_series(&f, &heat[t0..to]);
        }
    }
    acc.result()
}

#[cfg(test)]
#[path = "forecast_tests.rs"]
mod tests;
