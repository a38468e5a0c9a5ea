//! The clock every stage reads: the system clock in production, or a simulated
//! clock that runs `speed` times faster than real time from a chosen start.
//!
//! Communication watchdogs (timeouts, revert timers, backoff) stay in real time:
//! they are about the link, not about energy. Settlement periods, plans and
//! energy integration follow this clock.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Simulated {
        origin_real: Instant,
        origin: DateTime<Utc>,
        speed: f64,
    },
    /// A simulated clock that can be stepped forwards or backwards while it runs,
    /// as a gateway's system clock is when NTP steps it: the fault matrix's
    /// clock-jump rows. The offset is leaked once per clock so that `Clock` stays `Copy`.
    Steppable {
        origin_real: Instant,
        origin: DateTime<Utc>,
        speed: f64,
        offset_us: &'static AtomicI64,
    },
    /// A simulated clock that moves only when its driver calls [`Clock::step`]:
    /// tests pace it on the daemon's progress, so a machine that stalls (a
    /// loaded CI runner, a descheduled process) stops simulated time with it
    /// instead of skipping polls. `speed` is the nominal pace, used to turn
    /// real-time watchdogs into clock durations.
    Paced {
        origin: DateTime<Utc>,
        speed: f64,
        offset_us: &'static AtomicI64,
    },
}

/// A usable speed: a speed that is not a positive number runs at real time.
fn nominal(speed: f64) -> f64 {
    if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    }
}

impl Clock {
    pub fn simulated(origin: DateTime<Utc>, speed: f64) -> Clock {
        Clock::Simulated {
            origin_real: Instant::now(),
            origin,
            speed: nominal(speed),
        }
    }

    /// A simulated clock that [`Clock::step`] can move; see [`Clock::Steppable`].
    pub fn steppable(origin: DateTime<Utc>, speed: f64) -> Clock {
        Clock::Steppable {
            origin_real: Instant::now(),
            origin,
            speed: nominal(speed),
            offset_us: Box::leak(Box::new(AtomicI64::new(0))),
        }
    }

    /// A clock that stands still until [`Clock::step`] moves it; see [`Clock::Paced`].
    pub fn paced(origin: DateTime<Utc>, speed: f64) -> Clock {
        Clock::Paced {
            origin,
            speed: nominal(speed),
            offset_us: Box::leak(Box::new(AtomicI64::new(0))),
        }
    }

    /// Moves a steppable or paced clock by `by` (negative: backwards). Returns
    /// false, and does nothing, for the other clocks.
    pub fn step(&self, by: chrono::Duration) -> bool {
        match *self {
            Clock::Steppable { offset_us, .. } | Clock::Paced { offset_us, .. } => {
                offset_us.fetch_add(by.num_microseconds().unwrap_or(0), Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// A simulated clock that several processes can share: it read `start` at
    /// the wall-clock instant `origin_unix` (seconds since the epoch), so each
    /// computes `start + (now − origin) × speed` from the system clock. A
    /// process started later (a daemon restarted after `kill -9`) joins the
    /// same simulated time as the devices it polls.
    pub fn simulated_shared(origin_unix: f64, start: DateTime<Utc>, speed: f64) -> Clock {
        let speed = nominal(speed);
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let since = (now_unix - origin_unix).max(0.0);
        let sim_since = chrono::Duration::microseconds((since * speed * 1e6) as i64);
        // Anchor at this process's start: Instant is monotonic, the wall clock is read once.
        Clock::Simulated {
            origin_real: Instant::now(),
            origin: start + sim_since,
            speed,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match *self {
            Clock::System => Utc::now(),
            Clock::Simulated {
                origin_real,
                origin,
                speed,
            } => {
                let real = origin_real.elapsed().as_secs_f64() * speed;
                origin + chrono::Duration::microseconds((real * 1e6) as i64)
            }
            Clock::Steppable {
                origin_real,
                origin,
                speed,
                offset_us,
            } => {
                let real = origin_real.elapsed().as_secs_f64() * speed;
                origin
                    + chrono::Duration::microseconds(
                        (real * 1e6) as i64 + offset_us.load(Ordering::SeqCst),
                    )
            }
            Clock::Paced {
                origin, offset_us, ..
            } => origin + chrono::Duration::microseconds(offset_us.load(Ordering::SeqCst)),
        }
    }

    pub fn speed(&self) -> f64 {
        match *self {
            Clock::System => 1.0,
            Clock::Simulated { speed, .. }
            | Clock::Steppable { speed, .. }
            | Clock::Paced { speed, .. } => speed,
        }
    }

    /// Clock time that passes during `real`.
    pub fn clock_duration(&self, real: Duration) -> chrono::Duration {
        chrono::Duration::microseconds((real.as_secs_f64() * self.speed() * 1e6) as i64)
    }

    /// Real time until the clock reads `t` (zero if already past).
    pub fn real_until(&self, t: DateTime<Utc>) -> Duration {
        let ahead = (t - self.now()).num_microseconds().unwrap_or(i64::MAX);
        if ahead <= 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(ahead as f64 / 1e6 / self.speed())
    }

    pub async fn sleep_until(&self, t: DateTime<Utc>) {
        // Re-check after waking: the simulated clock's conversion can round down.
        loop {
            let d = self.real_until(t);
            if d.is_zero() {
                return;
            }
            tokio::time::sleep(d.max(Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_clock_runs_faster() {
        let origin = DateTime::parse_from_rfc3339("2025-06-21T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = Clock::simulated(origin, 600.0);
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = (c.now() - origin).num_milliseconds();
        assert!(elapsed >= 30_000, "{elapsed} ms");
        let until = c.real_until(origin + chrono::Duration::minutes(10));
        assert!(until <= Duration::from_secs(1));
    }

    #[test]
    fn steppable_clock_jumps_both_ways() {
        let origin = DateTime::parse_from_rfc3339("2025-06-21T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = Clock::steppable(origin, 1.0);
        assert!(c.step(chrono::Duration::hours(1)));
        let ahead = (c.now() - origin).num_minutes();
        assert_eq!(ahead, 60);
        assert!(c.step(chrono::Duration::minutes(-10)));
        assert_eq!((c.now() - origin).num_minutes(), 50);
        assert!(!Clock::simulated(origin, 1.0).step(chrono::Duration::hours(1)));
        assert!(!Clock::System.step(chrono::Duration::hours(1)));
    }

    #[test]
    fn paced_clock_moves_only_when_stepped() {
        let origin = DateTime::parse_from_rfc3339("2025-06-21T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = Clock::paced(origin, 900.0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.now(), origin);
        assert!(c.step(chrono::Duration::seconds(9)));
        assert_eq!((c.now() - origin).num_seconds(), 9);
        // Watchdogs in real time still map to the nominal pace.
        assert_eq!(
            c.clock_duration(Duration::from_millis(100)).num_seconds(),
            90
        );
    }
}
