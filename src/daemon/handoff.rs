//! The endpoint tasks' hand-off to the aggregator, built so that polling and
//! control never wait on it.
//!
//! A bounded channel made a slow consumer everyone's problem: when closing a
//! period took longer than the poll budget, the channel filled and every
//! endpoint task blocked in `send().await`, so polling and setpoint refreshes
//! stopped while periods kept closing. Here [`Handoff::push`] is synchronous,
//! takes a short mutex and never waits:
//!
//! - **readings** (for metrics and the status page) go to a latest-value slot
//!   per device: a consumer that falls behind sees the newest, never a backlog;
//! - **counter samples** need order and must not be lost around period
//!   boundaries, so they are queued per device, but thinned as they arrive: a
//!   sample with an older and a newer sample in the *same* settlement period
//!   is dropped, since boundary values are interpolated only between the two
//!   samples that straddle a boundary and a counter's movement telescopes.
//!   Samples that show a counter going backwards are kept (reset evidence).
//!   So a device queues at most about two samples per period however long the
//!   consumer stalls; [`MAX_SAMPLES`] caps even that (a stall of days), the
//!   oldest going first and counted in `ped_handoff_samples_dropped_total`.

use super::Snapshot;
use crate::config::DeviceKind;
use crate::time::Grid;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::Notify;

/// Counter samples queued per device before the oldest is dropped: at two or
/// three per period after thinning, over a week of quarter-hours.
pub const MAX_SAMPLES: usize = 2048;

/// The newest news about a device.
#[derive(Debug, Clone)]
pub enum Latest {
    Up(Snapshot),
    Down(&'static str),
}

/// Counter readings of one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub values: Vec<(&'static str, f64)>,
}

#[derive(Default)]
struct Inner {
    latest: HashMap<String, Latest>,
    samples: HashMap<String, VecDeque<Sample>>,
    dropped: u64,
}

/// What the aggregator takes in one go.
#[derive(Default)]
pub struct Drained {
    pub latest: Vec<(String, Latest)>,
    pub samples: Vec<(String, Vec<Sample>)>,
    /// Samples dropped by the cap since the last drain.
    pub dropped: u64,
}

pub struct Handoff {
    grid: Grid,
    kinds: HashMap<String, DeviceKind>,
    inner: Mutex<Inner>,
    notify: Notify,
}

impl Handoff {
    pub fn new(grid: Grid, kinds: HashMap<String, DeviceKind>) -> Handoff {
        Handoff {
            grid,
            kinds,
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A successful poll. Never blocks beyond the mutex.
    pub fn push(&self, s: Snapshot) {
        let values: Vec<(&'static str, f64)> = self
            .kinds
            .get(&s.device)
            .map(|k| {
                crate::devices::bindings(*k)
                    .iter()
                    .filter(|b| b.counter)
                    .filter_map(|b| s.readings.get(b.reading).map(|v| (b.reading, *v)))
                    .collect()
            })
            .unwrap_or_default();
        {
            let mut inner = self.lock();
            if !values.is_empty() {
                let sample = Sample { at: s.at, values };
                let q = inner.samples.entry(s.device.clone()).or_default();
                let thin = thinnable(&self.grid, q, &sample);
                if thin {
                    q.pop_back();
                }
                q.push_back(sample);
                let over = q.len().saturating_sub(MAX_SAMPLES);
                q.drain(..over);
                inner.dropped += over as u64;
            }
            inner.latest.insert(s.device.clone(), Latest::Up(s));
        }
        self.notify.notify_one();
    }

    /// A failed poll.
    pub fn down(&self, device: &str, kind: &'static str) {
        self.lock()
            .latest
            .insert(device.to_string(), Latest::Down(kind));
        self.notify.notify_one();
    }

    pub fn drain(&self) -> Drained {
        let mut inner = self.lock();
        Drained {
            latest: inner.latest.drain().collect(),
            samples: inner
                .samples
                .iter_mut()
                .filter(|(_, q)| !q.is_empty())
                .map(|(d, q)| (d.clone(), q.drain(..).collect()))
                .collect(),
            dropped: std::mem::take(&mut inner.dropped),
        }
    }

    /// Resolves when something was pushed since the last call.
    pub async fn wait(&self) {
        self.notify.notified().await
    }
}

/// The queue's last sample may go when `new` arrives if the one before it,
/// it and `new` all lie in one settlement period and no counter went
/// backwards across them.
fn thinnable(grid: &Grid, q: &VecDeque<Sample>, new: &Sample) -> bool {
    let n = q.len();
    if n < 2 {
        return false;
    }
    let (prev, last) = (&q[n - 2], &q[n - 1]);
    let p = grid.period_start(prev.at);
    if grid.period_start(last.at) != p || grid.period_start(new.at) != p {
        return false;
    }
    let monotonic = |a: &Sample, b: &Sample| {
        b.values.iter().all(|(name, v)| {
            a.values
                .iter()
                .find(|(n, _)| n == name)
                .map_or(true, |(_, u)| v >= u)
        }) && a.values.len() == b.values.len()
    };
    monotonic(prev, last) && monotonic(last, new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn grid() -> Grid {
        Grid::new(15, chrono_tz::Europe::Paris).expect("grid")
    }

    fn handoff() -> Handoff {
        Handoff::new(grid(), [("M".to_string(), DeviceKind::Meter)].into())
    }

    fn snap(at: DateTime<Utc>, import: f64) -> Snapshot {
        Snapshot {
            device: "M".into(),
            at,
            readings: BTreeMap::from([("import_kwh", import), ("power_kw", import * 2.0)]),
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-06-21T10:00:00Z")
            .expect("t")
            .with_timezone(&Utc)
    }

    #[test]
    fn readings_keep_only_the_latest_and_counters_keep_the_boundary_samples() {
        let h = handoff();
        // One sample a second for 40 minutes (three periods), nobody draining.
        for s in 0..2400 {
            h.push(snap(t0() + chrono::Duration::seconds(s), s as f64));
        }
        let d = h.drain();
        assert_eq!(d.latest.len(), 1);
        match &d.latest[0].1 {
            Latest::Up(s) => assert_eq!(s.readings["import_kwh"], 2399.0),
            Latest::Down(_) => panic!("down"),
        }
        let (_, samples) = &d.samples[0];
        // The first and last of each period survive: at most 2 per period.
        assert!(samples.len() <= 6, "{}", samples.len());
        for b in [900, 1800] {
            let b = t0() + chrono::Duration::seconds(b);
            assert!(samples
                .iter()
                .any(|s| s.at == b - chrono::Duration::seconds(1)));
            assert!(samples.iter().any(|s| s.at == b));
        }
        assert_eq!(d.dropped, 0);
        assert!(h.drain().samples.is_empty());
    }

    #[test]
    fn a_counter_going_backwards_is_not_thinned_away() {
        let h = handoff();
        for (s, v) in [(0, 10.0), (10, 11.0), (20, 0.5), (30, 1.0), (40, 2.0)] {
            h.push(snap(t0() + chrono::Duration::seconds(s), v));
        }
        let d = h.drain();
        let values: Vec<f64> = d.samples[0].1.iter().map(|s| s.values[0].1).collect();
        // 11 → 0.5 is the reset: both sides stay; 1.0 sits between 0.5 and 2.0 and goes.
        assert_eq!(values, vec![10.0, 11.0, 0.5, 2.0]);
    }

    #[test]
    fn a_stall_of_days_is_capped_oldest_first_and_counted() {
        let h = handoff();
        // One sample every 10 minutes for 30 days: no two in one period share it with a third.
        let n = 30 * 24 * 6;
        for k in 0..n {
            h.push(snap(t0() + chrono::Duration::minutes(10 * k), k as f64));
        }
        let d = h.drain();
        assert_eq!(d.samples[0].1.len(), MAX_SAMPLES);
        assert_eq!(d.dropped, (n as usize - MAX_SAMPLES) as u64);
        assert_eq!(
            d.samples[0].1.last().map(|s| s.values[0].1),
            Some((n - 1) as f64)
        );
    }

    #[test]
    fn down_replaces_up_in_the_slot() {
        let h = handoff();
        h.push(snap(t0(), 1.0));
        h.down("M", "timeout");
        let d = h.drain();
        assert!(matches!(d.latest[0].1, Latest::Down("timeout")));
        // The sample itself is not lost with the reading.
        assert_eq!(d.samples[0].1.len(), 1);
    }
}
