//! Energy counters → energy per settlement period: each counter's value is
//! interpolated at every period boundary between the two samples that
//! straddle it. A counter that went backwards (meter reset or rollover)
//! contributes nothing for that span and flags the period; a boundary
//! interpolated across a gap longer than a period is estimated.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::config::DeviceKind;

/// How a period's energy is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Measured,
    /// A boundary interpolated across a gap longer than a period.
    Estimated,
    /// Unknown: no samples around the period, or a counter reset.
    Missing,
}

/// A counter's value at a period boundary, as stored to resume from.
#[derive(Debug, Clone, PartialEq)]
pub struct Boundary {
    pub device: String,
    pub reading: String,
    pub at: DateTime<Utc>,
    pub value: f64,
}

#[derive(Default)]
struct CounterTrack {
    last: Option<(DateTime<Utc>, f64)>,
    boundaries: BTreeMap<DateTime<Utc>, f64>,
    reset_in: Vec<DateTime<Utc>>,
    /// Boundaries interpolated across a gap longer than a period.
    estimated: BTreeSet<DateTime<Utc>>,
}

pub struct Counters {
    grid: crate::time::Grid,
    tracks: HashMap<(String, &'static str), CounterTrack>,
}

impl Counters {
    pub fn new(grid: crate::time::Grid) -> Counters {
        Counters {
            grid,
            tracks: HashMap::new(),
        }
    }

    /// Adds a sample; returns the counter's increase since the last one
    /// (`None` for the first sample, one out of order, or a reset).
    pub fn sample(
        &mut self,
        device: &str,
        reading: &'static str,
        t: DateTime<Utc>,
        v: f64,
    ) -> Option<f64> {
        let grid = self.grid;
        let tr = self
            .tracks
            .entry((device.to_string(), reading))
            .or_default();
        let mut delta = None;
        if let Some((t0, v0)) = tr.last {
            if t <= t0 {
                return None;
            }
            let reset = v < v0;
            // Across a gap longer than a period the total is known but not
            // when within the gap the energy flowed.
            let long_gap = t - t0 > grid.step();
            let mut b = grid.next_period(grid.period_start(t0));
            while b <= t {
                let val = if reset {
                    tr.reset_in.push(grid.period_start(b - grid.step()));
                    v0
                } else {
                    let frac = (b - t0).num_microseconds().unwrap_or(0) as f64
                        / (t - t0).num_microseconds().unwrap_or(1).max(1) as f64;
                    v0 + (v - v0) * frac
                };
                tr.boundaries.insert(b, val);
                if long_gap {
                    tr.estimated.insert(b);
                }
                b = grid.next_period(b);
            }
            if reset {
                // The new counter starts its own history: later boundaries build on it.
                tr.boundaries.retain(|k, _| *k <= t);
            } else {
                delta = Some(v - v0);
            }
        }
        tr.last = Some((t, v));
        // Two days of boundaries are plenty for closing late periods.
        let cutoff = t - chrono::Duration::days(2);
        tr.boundaries.retain(|k, _| *k >= cutoff);
        tr.estimated.retain(|k| *k >= cutoff);
        delta
    }

    /// Restarts a counter from a boundary value stored before a restart.
    pub fn seed(&mut self, s: &Boundary, kinds: &HashMap<String, DeviceKind>) {
        // The tracks are keyed by the binding's static name.
        let Some(reading) = kinds.get(&s.device).and_then(|k| {
            crate::devices::bindings(*k)
                .iter()
                .find(|b| b.counter && b.reading == s.reading)
                .map(|b| b.reading)
        }) else {
            return;
        };
        let tr = self.tracks.entry((s.device.clone(), reading)).or_default();
        if tr.last.is_none() {
            tr.last = Some((s.at, s.value));
            tr.boundaries.insert(s.at, s.value);
        }
    }

    /// Stored boundary values at `at`, for every counter that has one.
    pub fn snapshots_at(&self, at: &[DateTime<Utc>]) -> Vec<Boundary> {
        let mut out = Vec::new();
        for ((device, reading), tr) in &self.tracks {
            for t in at {
                if let Some(v) = tr.boundaries.get(t) {
                    out.push(Boundary {
                        device: device.clone(),
                        reading: reading.to_string(),
                        at: *t,
                        value: *v,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.device, &a.reading, a.at).cmp(&(&b.device, &b.reading, b.at)));
        out
    }

    /// Energy of `[start, start + step)`, or why it is unknown.
    pub fn energy(
        &self,
        device: &str,
        reading: &'static str,
        start: DateTime<Utc>,
    ) -> Result<(f64, Quality), String> {
        let end = self.grid.next_period(start);
        let tr = self
            .tracks
            .get(&(device.to_string(), reading))
            .ok_or_else(|| format!("{device}: no {reading} reading"))?;
        if tr.reset_in.contains(&start) {
            return Err(format!("{device}: {reading} counter reset"));
        }
        match (tr.boundaries.get(&start), tr.boundaries.get(&end)) {
            (Some(a), Some(b)) if b >= a => Ok((
                b - a,
                if tr.estimated.contains(&start) || tr.estimated.contains(&end) {
                    Quality::Estimated
                } else {
                    Quality::Measured
                },
            )),
            (Some(_), Some(_)) => Err(format!("{device}: {reading} went backwards")),
            _ => Err(format!("{device}: {reading} not sampled around the period")),
        }
    }

    /// Forgets a counter, as if its device had never answered.
    #[cfg(test)]
    pub(crate) fn forget(&mut self, device: &str, reading: &'static str) {
        self.tracks.remove(&(device.to_string(), reading));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("timestamp")
            .with_timezone(&Utc)
    }

    fn counters() -> Counters {
        Counters::new(crate::time::Grid::new(15, chrono_tz::Europe::Paris).expect("grid"))
    }

    #[test]
    fn a_restart_completes_the_open_period_from_the_stored_boundary() {
        let mut c = counters();
        let kinds: HashMap<String, DeviceKind> = [("M".to_string(), DeviceKind::Meter)].into();
        // Stored before the crash: the counter read 100 kWh at 10:00.
        c.seed(
            &Boundary {
                device: "M".into(),
                reading: "import_kwh".into(),
                at: t("2025-06-21T10:00:00Z"),
                value: 100.0,
            },
            &kinds,
        );
        // After the restart: samples at 10:10 and 10:20.
        c.sample("M", "import_kwh", t("2025-06-21T10:10:00Z"), 110.0);
        c.sample("M", "import_kwh", t("2025-06-21T10:20:00Z"), 120.0);
        let (e, q) = c
            .energy("M", "import_kwh", t("2025-06-21T10:00:00Z"))
            .expect("energy");
        assert!((e - 15.0).abs() < 1e-9, "{e}");
        assert_eq!(q, Quality::Measured);
        // An unknown counter name is not seeded.
        c.seed(
            &Boundary {
                device: "M".into(),
                reading: "bogus".into(),
                at: t("2025-06-21T10:00:00Z"),
                value: 1.0,
            },
            &kinds,
        );
        assert_eq!(c.tracks.len(), 1);
    }

    #[test]
    fn a_gap_longer_than_a_period_is_estimated_and_conserves_energy() {
        let mut c = counters();
        c.sample("M", "import_kwh", t("2025-06-21T09:55:00Z"), 0.0);
        c.sample("M", "import_kwh", t("2025-06-21T10:05:00Z"), 10.0);
        // ped down from 10:05 to 10:50.
        c.sample("M", "import_kwh", t("2025-06-21T10:50:00Z"), 55.0);
        c.sample("M", "import_kwh", t("2025-06-21T10:55:00Z"), 60.0);
        let mut total = 0.0;
        for (start, quality) in [
            ("2025-06-21T10:00:00Z", Quality::Estimated),
            ("2025-06-21T10:15:00Z", Quality::Estimated),
            ("2025-06-21T10:30:00Z", Quality::Estimated),
        ] {
            let (e, q) = c.energy("M", "import_kwh", t(start)).expect("energy");
            assert_eq!(q, quality, "{start}");
            total += e;
        }
        // 10:00 → 10:45 is exactly the counter's movement between those boundaries.
        assert!((total - 45.0).abs() < 1e-9, "{total}");
        let snaps = c.snapshots_at(&[t("2025-06-21T10:00:00Z"), t("2025-06-21T10:45:00Z")]);
        assert_eq!(snaps.len(), 2);
        assert!((snaps[1].value - snaps[0].value - 45.0).abs() < 1e-9);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Whatever the sampling (irregular steps, gaps of hours, a restart
        /// seeded from a stored boundary), the energies of contiguous periods
        /// add up to the counter's movement between the outer boundaries:
        /// nothing lost, nothing counted twice.
        #[test]
        fn period_energies_telescope(
            steps in proptest::collection::vec((1i64..7200, 0.0f64..50.0), 2..80),
            restart_at in 0usize..80,
        ) {
            let mut c = counters();
            let kinds: HashMap<String, DeviceKind> = [("M".to_string(), DeviceKind::Meter)].into();
            let mut at = t("2025-06-21T10:00:00Z");
            let mut v = 1000.0;
            c.sample("M", "import_kwh", at, v);
            for (k, (dt, dv)) in steps.iter().enumerate() {
                if k == restart_at {
                    // A restart: the track is rebuilt from its latest boundary.
                    let latest = c.tracks[&("M".to_string(), "import_kwh")]
                        .boundaries
                        .iter()
                        .next_back()
                        .map(|(b, val)| (*b, *val));
                    c = counters();
                    if let Some((b, val)) = latest {
                        c.seed(&Boundary { device: "M".into(), reading: "import_kwh".into(), at: b, value: val }, &kinds);
                    }
                }
                at += chrono::Duration::seconds(*dt);
                v += dv;
                c.sample("M", "import_kwh", at, v);
            }
            let tr = &c.tracks[&("M".to_string(), "import_kwh")];
            let bounds: Vec<DateTime<Utc>> = tr.boundaries.keys().copied().collect();
            if bounds.len() >= 2 {
                let (first, last) = (bounds[0], bounds[bounds.len() - 1]);
                let mut total = 0.0;
                let mut p = first;
                while p < last {
                    let (e, _) = c.energy("M", "import_kwh", p).map_err(proptest::test_runner::TestCaseError::fail)?;
                    proptest::prop_assert!(e >= 0.0);
                    total += e;
                    p = c.grid.next_period(p);
                }
                let moved = tr.boundaries[&last] - tr.boundaries[&first];
                proptest::prop_assert!((total - moved).abs() < 1e-6, "{} vs {}", total, moved);
            }
        }
    }
}
