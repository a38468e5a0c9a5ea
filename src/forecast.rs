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

    /// A wide CSV slice of the district data set in `tests/data/forecast/`:
    /// the first UTC instant and the named columns.
    fn slice(file: &str, cols: &[&str]) -> (DateTime<Utc>, Vec<Vec<f64>>) {
        let path = format!("{}/tests/data/forecast/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let idx: Vec<usize> = cols
            .iter()
            .map(|c| head.iter().position(|h| h == c).unwrap())
            .collect();
        let mut start = None;
        let mut out = vec![Vec::new(); cols.len()];
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            start.get_or_insert_with(|| utc(f[0]));
            for (o, &i) in out.iter_mut().zip(&idx) {
                o.push(f[i].parse::<f64>().unwrap());
            }
        }
        (start.unwrap(), out)
    }

    fn cal30(start: DateTime<Utc>, len: usize) -> Calendar {
        Calendar {
            grid: grid(30),
            start,
            len,
        }
    }

    #[test]
    fn french_holidays_of_2025() {
        let d = |m, day| NaiveDate::from_ymd_opt(2025, m, day).unwrap();
        for h in [
            d(1, 1),
            d(4, 21),
            d(5, 1),
            d(5, 8),
            d(5, 29),
            d(6, 9),
            d(7, 14),
            d(8, 15),
            d(11, 1),
            d(11, 11),
            d(12, 25),
        ] {
            assert!(is_french_holiday(h), "{h}");
            assert_eq!(day_class(h), 6);
        }
        for n in [d(4, 20), d(4, 22), d(5, 28), d(6, 10), d(12, 26)] {
            assert!(!is_french_holiday(n), "{n}");
        }
        assert_eq!(day_class(d(6, 10)), 1); // a Tuesday
    }

    #[test]
    fn calendar_round_trips_and_slots_follow_the_wall_clock() {
        let c = cal30(utc("2025-10-25T22:00:00Z"), 100);
        for k in [0, 5, 99] {
            assert_eq!(c.index(c.time(k)), Some(k));
        }
        assert_eq!(c.index(c.time(0) + chrono::Duration::minutes(10)), None);
        assert_eq!(c.index(c.time(100)), None);
        assert_eq!(c.slot(0), 0);
        // 2025-10-26 has 50 half-hours: the repeated 02:00 comes twice.
        assert_eq!(c.slot(4), 4);
        assert_eq!(c.slot(6), 4);
        assert_eq!(c.slot(49), 47);
    }

    #[test]
    fn analogs_are_same_class_days_before_the_issue_time() {
        let (start, cols) = slice("consumption-2025-05.csv", &["T-01"]);
        let c = cal30(start, cols[0].len());
        // Thursday 29 May 2025 (Ascension) 10:00 local: its analogs are Sundays
        // (and holidays), never a school day.
        let t = c.index(utc("2025-05-29T08:00:00Z")).unwrap();
        let a = analog_steps(&c, t, t);
        assert!(!a.is_empty() && a.len() <= PROFILE_DAYS);
        for &k in &a {
            assert!(k < t);
            assert_eq!(day_class(c.grid.local_day(c.time(k))), 6);
            assert_eq!(c.slot(k), c.slot(t));
        }
    }

    fn persistence_error(cal: &Calendar, s: &[f64], from: usize, horizon: usize) -> ForecastError {
        // Yesterday's same slot: the plain baseline the profile must beat.
        let mut acc = ErrorAccumulator::default();
        let day = cal.slots_per_day();
        let mut t0 = from;
        while t0 < cal.len {
            for k in t0..(t0 + horizon).min(cal.len) {
                acc.add(s[k - day.min(k)], s[k]);
            }
            t0 += 4;
        }
        acc.result()
    }

    #[test]
    fn load_forecast_beats_yesterday_on_holidays_and_weekends() {
        let (start, cols) = slice(
            "consumption-2025-05.csv",
            &["H-001", "H-050", "T-01", "T-10"],
        );
        let c = cal30(start, cols[0].len());
        let from = 11 * 48; // May 1st: three weeks of history behind it
        for (name, s) in ["H-001", "H-050", "T-01", "T-10"].iter().zip(&cols) {
            let ours = backtest_load(&c, &[s.as_slice()], from, 48, 4);
            let naive = persistence_error(&c, s, from, 48);
            eprintln!("{name}: ours {ours:?} naive {naive:?}");
            assert!(ours.points > 10_000);
            assert!(ours.mae < naive.mae, "{name}: {ours:?} vs {naive:?}");
        }
        // The school is where the calendar matters most (holidays, Wednesdays).
        let school = backtest_load(&c, &[cols[2].as_slice()], from, 48, 4);
        assert!(school.nmae < 0.6, "{school:?}");
    }

    #[test]
    fn load_forecast_carries_a_recent_deviation_and_stays_non_negative() {
        let c = cal30(utc("2025-06-01T22:00:00Z"), 48 * 15);
        let mut s = vec![1.0; c.len];
        let t0 = 48 * 14;
        for v in &mut s[t0 - 4..t0] {
            *v = 3.0;
        }
        let a = LoadAnalogs::new(&c, t0, 48);
        let f = load_forecast(&s, &a, 0.5);
        assert!(f[0] > 2.5 && f[0] < 3.0, "{}", f[0]);
        assert!((f[47] - 1.0).abs() < 0.01, "{}", f[47]);
        for v in &mut s[t0 - 4..t0] {
            *v = -50.0;
        }
        assert!(load_forecast(&s, &a, 0.5).iter().all(|x| *x >= 0.0));
    }

    fn plant_planes(kwp: f64, tilt: f64, az: &[f64]) -> Vec<PvPlane> {
        az.iter()
            .map(|&a| PvPlane {
                kwp: kwp / az.len() as f64,
                tilt_deg: tilt,
                azimuth_deg: a,
            })
            .collect()
    }

    #[test]
    fn pv_forecast_beats_a_fixed_clearness_on_may() {
        let (start, cols) = slice("production-2025-05.csv", &["PV-01", "PV-02", "PV-08"]);
        let c = cal30(start, cols[0].len());
        let plants = [
            plant_planes(420.0, 10.0, &[90.0, 270.0]),
            plant_planes(250.0, 15.0, &[180.0]),
            plant_planes(250.0, 5.0, &[170.0]),
        ];
        for (p, kwh) in plants.iter().zip(&cols) {
            let clear = clear_sky_series(p, 47.32, 5.0, &c);
            // Energies per half-hour → kW.
            let kw: Vec<f64> = kwh.iter().map(|x| x * 2.0).collect();
            assert!(kw.iter().zip(&clear).all(|(m, c)| *c > 0.0 || *m < 1.0));
            let ours = backtest_pv(&kw, &clear, 3 * 48, 48, 4, 0.5);
            let mut fixed = ErrorAccumulator::default();
            for k in 3 * 48..c.len {
                fixed.add(clear[k] * 0.75, kw[k]);
            }
            let fixed = fixed.result();
            eprintln!("ours {ours:?} fixed {fixed:?}");
            assert!(ours.mae < fixed.mae, "{ours:?} vs {fixed:?}");
            assert!(ours.nmae < 0.6, "{ours:?}");
        }
    }

    #[test]
    fn clearness_is_none_at_night_and_clamped() {
        let clear = vec![0.0, 0.0, 10.0, 10.0];
        assert_eq!(clearness(&[0.0; 4], &clear, 0, 2), None);
        assert_eq!(clearness(&[0.0, 0.0, 5.0, 5.0], &clear, 0, 4), Some(0.5));
        assert_eq!(clearness(&[0.0, 0.0, 50.0, 50.0], &clear, 0, 4), Some(1.2));
    }

    #[test]
    fn degree_days_fit_january_and_beat_yesterday() {
        let (start, cols) = slice("heat-2025-01.csv", &["temp_air_c", "SST-01", "SST-04"]);
        let c = cal30(start, cols[0].len());
        for s in &cols[1..] {
            let m = DegreeDayModel::fit(&c, &cols[0], s, 0, c.len).unwrap();
            assert!((12.0..=20.0).contains(&m.base_temp_c));
            assert!(m.kwh_per_degree_day > 0.0);
            assert!((m.slot_share.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            // Colder is more heat.
            assert!(m.daily_kwh(-5.0) > m.daily_kwh(5.0));
            let ours = backtest_heat(&c, &cols[0], s, 7, 48);
            let naive = persistence_error(&c, s, 7 * 48, 48);
            eprintln!("heat: {m:?}\nours {ours:?} naive {naive:?}");
            assert!(ours.points > 1000);
            assert!(ours.mae < naive.mae, "{ours:?} vs {naive:?}");
            assert!(ours.nmae < 0.2, "{ours:?}");
        }
    }

    #[test]
    fn degree_day_fit_recovers_a_synthetic_law() {
        // 20 days at 48 steps from −4 to 20 °C: heat per day = 100 + 10 × (17 − T)⁺, flat in the day.
        let c = cal30(utc("2025-01-05T23:00:00Z"), 48 * 20);
        let temp: Vec<f64> = (0..c.len)
            .map(|k| 2.0 * f64::from((k / 48) as u32 % 13) - 4.0)
            .collect();
        let heat: Vec<f64> = temp
            .iter()
            .map(|t| (100.0 + 10.0 * (17.0 - t).max(0.0)) / 48.0)
            .collect();
        let m = DegreeDayModel::fit(&c, &temp, &heat, 0, c.len).unwrap();
        assert!((m.base_temp_c - 17.0).abs() < 0.6, "{m:?}");
        let f = m.forecast(&c, &temp, 48 * 10, 48);
        for (a, b) in f.iter().zip(&heat[48 * 10..48 * 11]) {
            assert!((a - b).abs() < 0.05 * b, "{a} vs {b}");
        }
        assert!(DegreeDayModel::fit(&c, &temp, &heat, 0, 48).is_none());
    }
}
