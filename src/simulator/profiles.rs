//! Deterministic profiles for the simulated district: weather, PV, loads, heat.
//!
//! Everything is a pure function of (time, seed, identity): two runs of the
//! simulator from the same start produce the same district, which is what makes
//! the end-to-end tests reproducible. Shapes are simple on purpose (a clear-sky
//! model with seeded clouds, hand-made load shapes, degree-hour heat); the real
//! year in `../shared/data/district-2025` serves the backtests.

use crate::config::ParticipantKind;
use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use std::f64::consts::PI;

/// splitmix64: a tiny, good-enough hash for seeded noise without a dependency.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform in [0, 1) from a seed and two keys.
pub fn unit(seed: u64, a: u64, b: u64) -> f64 {
    (mix(seed ^ mix(a ^ mix(b))) >> 11) as f64 / (1u64 << 53) as f64
}

pub fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3)
    })
}

fn day_index(t: DateTime<Utc>) -> u64 {
    (t.timestamp().div_euclid(86_400)) as u64
}

/// Sun elevation and azimuth (degrees; azimuth 180 = south) at a place.
pub fn sun_position(t: DateTime<Utc>, lat: f64, lon: f64) -> (f64, f64) {
    let doy = f64::from(t.ordinal());
    let g = 2.0 * PI / 365.0 * (doy - 1.0 + (f64::from(t.hour()) - 12.0) / 24.0);
    let decl = 0.006918 - 0.399912 * g.cos() + 0.070257 * g.sin() - 0.006758 * (2.0 * g).cos()
        + 0.000907 * (2.0 * g).sin()
        - 0.002697 * (3.0 * g).cos()
        + 0.00148 * (3.0 * g).sin();
    let eot = 229.18
        * (0.000075 + 0.001868 * g.cos()
            - 0.032077 * g.sin()
            - 0.014615 * (2.0 * g).cos()
            - 0.040849 * (2.0 * g).sin());
    let minutes = f64::from(t.hour()) * 60.0 + f64::from(t.minute()) + f64::from(t.second()) / 60.0;
    let solar_min = minutes + eot + 4.0 * lon;
    let ha = (solar_min / 4.0 - 180.0).to_radians();
    let phi = lat.to_radians();
    let cos_zen = (phi.sin() * decl.sin() + phi.cos() * decl.cos() * ha.cos()).clamp(-1.0, 1.0);
    let zen = cos_zen.acos();
    let elev = 90.0 - zen.to_degrees();
    // Azimuth from north, clockwise.
    let az_n = {
        let s = zen.sin().max(1e-9);
        let cos_az = ((phi.sin() * cos_zen - decl.sin()) / (phi.cos() * s)).clamp(-1.0, 1.0);
        let a = cos_az.acos().to_degrees();
        if ha > 0.0 {
            (180.0 + a) % 360.0
        } else {
            (540.0 - a) % 360.0
        }
    };
    (elev, az_n)
}

/// Clear-sky plane-of-array irradiance (W/m²) on a tilted plane.
pub fn clear_sky_poa(t: DateTime<Utc>, lat: f64, lon: f64, tilt: f64, azimuth: f64) -> f64 {
    let (elev, az) = sun_position(t, lat, lon);
    if elev <= 0.5 {
        return 0.0;
    }
    let e = elev.to_radians();
    let am = 1.0 / (e.sin() + 0.50572 * (elev + 6.07995).powf(-1.6364));
    let dni = 1353.0 * 0.7f64.powf(am.powf(0.678));
    let dhi = 0.12 * dni * e.sin() + 20.0 * e.sin();
    let beta = tilt.to_radians();
    let cos_inc = e.sin() * beta.cos() + e.cos() * beta.sin() * (az - azimuth).to_radians().cos();
    let ghi = dni * e.sin() + dhi;
    dni * cos_inc.max(0.0) + dhi * (1.0 + beta.cos()) / 2.0 + ghi * 0.2 * (1.0 - beta.cos()) / 2.0
}

/// Seeded clearness index (0.15..1.05): a day-level draw, drier in summer, with
/// passing clouds inside the day.
pub fn clearness(seed: u64, t: DateTime<Utc>) -> f64 {
    let day = day_index(t);
    let summer = (2.0 * PI * (f64::from(t.ordinal()) - 172.0) / 365.0).cos(); // 1 in June
    let u = unit(seed, 0xC10D, day);
    let day_k = (0.35 + 0.5 * u.powf(0.6 - 0.25 * summer)).min(1.0);
    // Ten-minute texture, smoothed between neighbours so that power ramps.
    let slot = (t.timestamp().div_euclid(600)) as u64;
    let frac = (t.timestamp().rem_euclid(600)) as f64 / 600.0;
    let n0 = unit(seed, 0x7E47, slot);
    let n1 = unit(seed, 0x7E47, slot + 1);
    let n = n0 + (n1 - n0) * frac;
    let depth = 0.6 * (1.0 - day_k);
    (day_k * (1.0 - depth * n)).clamp(0.1, 1.05)
}

/// AC power (kW) of a plant.
pub fn pv_kw(seed: u64, t: DateTime<Utc>, lat: f64, lon: f64, kwp: f64, tilt: f64, az: f64) -> f64 {
    let poa = clear_sky_poa(t, lat, lon, tilt, az);
    let k = clearness(seed, t);
    // Performance ratio 0.86, inverter limit at 0.85 kWp (DC/AC ratio ≈ 1.18).
    (kwp * poa / 1000.0 * k * 0.86).min(kwp * 0.85).max(0.0)
}

/// Outdoor temperature (°C): a Dijon-like season, a diurnal swing and seeded day anomalies.
pub fn outdoor_c(seed: u64, t: DateTime<Utc>) -> f64 {
    let doy = f64::from(t.ordinal());
    let season = 11.3 - 9.0 * (2.0 * PI * (doy - 20.0) / 365.0).cos();
    let h = f64::from(t.hour()) + f64::from(t.minute()) / 60.0 + 1.0; // ≈ local solar hour
    let diurnal = 4.5 * (2.0 * PI * (h - 9.0) / 24.0).sin();
    let day = day_index(t);
    let a0 = unit(seed, 0x7E3A, day) - 0.5;
    let a1 = unit(seed, 0x7E3A, day + 1) - 0.5;
    let frac = (t.timestamp().rem_euclid(86_400)) as f64 / 86_400.0;
    season + diurnal + 6.0 * (a0 + (a1 - a0) * frac)
}

/// Heat demand (kW_th) of a substation with the given annual heat.
pub fn heat_kw(seed: u64, t: DateTime<Utc>, annual_heat_kwh: f64) -> f64 {
    let base = 0.15 * annual_heat_kwh / 8760.0;
    // ≈ 64,000 degree-hours (base 16 °C) in a Dijon year.
    let k = 0.85 * annual_heat_kwh / 64_000.0;
    base + k * (16.0 - outdoor_c(seed, t)).max(0.0)
}

fn gauss(x: f64, mu: f64, sigma: f64) -> f64 {
    (-(x - mu) * (x - mu) / (2.0 * sigma * sigma)).exp()
}

/// Relative load shape of a participant kind at local time (mean ≈ 1 over a week).
pub fn load_shape(kind: ParticipantKind, local: DateTime<Tz>, sun_elev: f64) -> f64 {
    let h = f64::from(local.hour()) + f64::from(local.minute()) / 60.0;
    let wd = local.weekday().num_days_from_monday(); // 0 = Monday
    let weekend = wd >= 5;
    match kind {
        ParticipantKind::Household => {
            0.45 + 1.1 * gauss(h, 7.5, 1.0)
                + 0.6 * gauss(h, 12.5, 1.2)
                + 2.0 * gauss(h, 19.5, 1.6)
                + if weekend {
                    0.25 * gauss(h, 11.0, 2.5)
                } else {
                    0.0
                }
        }
        ParticipantKind::School => {
            let open = !weekend && (7.5..17.5).contains(&h) && !(wd == 2 && h >= 12.0);
            if open {
                2.8
            } else {
                0.45
            }
        }
        ParticipantKind::Office | ParticipantKind::Public => {
            if !weekend && (8.0..18.5).contains(&h) {
                2.2
            } else {
                0.5
            }
        }
        ParticipantKind::Shop => {
            if wd != 6 && (7.0..20.0).contains(&h) {
                1.5
            } else {
                0.55
            }
        }
        ParticipantKind::Gym => {
            if (17.0..22.0).contains(&h) {
                2.6
            } else if (9.0..17.0).contains(&h) {
                1.2
            } else {
                0.3
            }
        }
        ParticipantKind::CareHome => 0.8 + 0.5 * gauss(h, 12.0, 3.5),
        ParticipantKind::Lighting => {
            if sun_elev < -3.0 {
                if !(5.0..23.0).contains(&h) {
                    1.1
                } else {
                    2.2
                }
            } else {
                0.0
            }
        }
        // Pumps and controls; the heat-proportional part is added by the caller.
        ParticipantKind::SubstationAux => 1.0,
        ParticipantKind::Battery | ParticipantKind::PowerToHeat => 0.0,
    }
}

/// Seeded multiplicative noise for a participant at five-minute resolution.
pub fn load_noise(seed: u64, who: u64, t: DateTime<Utc>, household: bool) -> f64 {
    let slot = (t.timestamp().div_euclid(300)) as u64;
    let u = unit(seed, who, slot);
    let day = unit(seed, who ^ 0xDA7, day_index(t));
    if household {
        // Appliance events: a few slots a day run two to four times the shape.
        let event = if u > 0.93 {
            1.0 + 3.0 * (u - 0.93) / 0.07
        } else {
            1.0
        };
        (0.75 + 0.5 * unit(seed, who ^ 0x5EED, slot)) * event * (0.8 + 0.4 * day)
    } else {
        0.9 + 0.2 * u
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn sun_is_up_at_noon_and_down_at_midnight_in_dijon() {
        let (e_noon, az_noon) = sun_position(at("2025-06-21T11:40:00Z"), 47.32, 5.0);
        assert!(e_noon > 60.0 && e_noon < 70.0, "{e_noon}");
        assert!((az_noon - 180.0).abs() < 15.0, "{az_noon}");
        let (e_night, _) = sun_position(at("2025-06-21T23:00:00Z"), 47.32, 5.0);
        assert!(e_night < 0.0);
    }

    #[test]
    fn a_year_of_pv_is_plausible_for_burgundy() {
        let mut kwh = 0.0;
        let mut t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        while t.year() == 2025 {
            kwh += pv_kw(7, t, 47.32, 5.0, 1.0, 30.0, 180.0) * 0.25;
            t += chrono::Duration::minutes(15);
        }
        assert!((850.0..1500.0).contains(&kwh), "{kwh} kWh/kWp");
    }

    #[test]
    fn profiles_are_deterministic() {
        let t = at("2025-03-30T10:00:00Z");
        assert_eq!(clearness(1, t), clearness(1, t));
        assert_eq!(outdoor_c(1, t), outdoor_c(1, t));
        assert!(
            heat_kw(1, at("2025-01-15T06:00:00Z"), 1e6)
                > heat_kw(1, at("2025-07-15T14:00:00Z"), 1e6)
        );
    }
}
