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

#[test]
fn a_pv_miss_needs_a_quarter_of_the_larger_and_a_twentieth_of_the_peak() {
    // 1 MWp: the miss must exceed 50 kW and a quarter of the larger value.
    assert!(pv_missed(400.0, 250.0, 1000.0));
    assert!(!pv_missed(400.0, 320.0, 1000.0));
    assert!(!pv_missed(40.0, 0.0, 1000.0));
    assert!(pv_missed(0.0, 60.0, 1000.0));
}

#[test]
fn clearness_is_measured_when_the_sun_is_up_and_assumed_before() {
    assert_eq!(measured_clearness(50.0, 100.0, 2), 0.5);
    assert_eq!(measured_clearness(500.0, 100.0, 2), 1.2);
    assert_eq!(measured_clearness(0.0, 100.0, 2), 0.1);
    assert_eq!(measured_clearness(0.0, 0.05, 2), DEFAULT_CLEARNESS);
}
