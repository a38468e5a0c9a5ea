//! The daemon's internal events: one type per thing an energy manager may
//! want to see, each writing its log line and its metric together, so that a
//! metric's name, its label values and the wording of the log line cannot
//! drift apart from one place in the code to another. Label values come from
//! enums, never from bare strings at the call site.
//!
//! The pattern follows vector's `internal_events`: the code that notices
//! something builds the event with what it knows and calls [`emit`].

use std::collections::BTreeMap;
use std::time::Duration;

use crate::devices::Command;
use crate::plan::Plan;

use crate::metrics::Metrics;
pub use crate::metrics::{PeriodFallback, ReleaseReason, Resolve, WriteResult};
use crate::modbus::ModbusError;

/// An event that writes its own log line (if any) and metrics.
pub trait InternalEvent {
    fn emit(self, m: &Metrics);
}

/// Emits an event.
pub fn emit(m: &Metrics, e: impl InternalEvent) {
    e.emit(m);
}

// ---------------------------------------------------------------------------
// Polling.

/// A device answered its whole poll plan and its readings decoded.
pub struct PollSucceeded<'a> {
    pub device: &'a str,
    pub kind: &'a str,
    pub elapsed: Duration,
}

impl InternalEvent for PollSucceeded<'_> {
    fn emit(self, m: &Metrics) {
        m.device_read_seconds
            .with_label_values(&[self.device])
            .observe(self.elapsed.as_secs_f64());
        m.device_reads.with_label_values(&[self.device]).inc();
        m.device_up
            .with_label_values(&[self.device, self.kind])
            .set(1);
        m.device_last_success
            .with_label_values(&[self.device])
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        m.device_backoff_seconds
            .with_label_values(&[self.device])
            .set(0.0);
        m.device_consecutive_failures
            .with_label_values(&[self.device])
            .set(0);
    }
}

/// A device's poll failed (or its endpoint could not be reached); it is
/// polled again after `backoff`.
pub struct PollFailed<'a> {
    pub device: &'a str,
    pub kind: &'a str,
    pub error: &'a ModbusError,
    pub failures: u32,
    pub backoff: Duration,
}

impl InternalEvent for PollFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::debug!(device = %self.device, error = %self.error, failures = self.failures, backoff_ms = self.backoff.as_millis() as u64, "poll failed");
        m.device_errors
            .with_label_values(&[self.device, self.error.kind()])
            .inc();
        m.device_up
            .with_label_values(&[self.device, self.kind])
            .set(0);
        m.device_backoff_seconds
            .with_label_values(&[self.device])
            .set(self.backoff.as_secs_f64());
        m.device_consecutive_failures
            .with_label_values(&[self.device])
            .set(i64::from(self.failures));
    }
}

// ---------------------------------------------------------------------------
// Control: setpoints and releases.

fn count_release(m: &Metrics, device: &str, reason: ReleaseReason) {
    m.device_releases
        .with_label_values(&[device, reason.as_str()])
        .inc();
}

fn count_write(m: &Metrics, device: &str, result: WriteResult) {
    m.setpoint_writes
        .with_label_values(&[device, result.as_str()])
        .inc();
}

/// ped released a device on stop or task failure.
pub struct Released<'a> {
    pub device: &'a str,
    pub reason: ReleaseReason,
}

impl InternalEvent for Released<'_> {
    fn emit(self, m: &Metrics) {
        count_release(m, self.device, self.reason);
        tracing::info!(device = %self.device, reason = self.reason.as_str(), "released to its own control");
    }
}

/// The plan is older than the site allows: the endpoint's controlled devices
/// go back to their own safe mode until a fresh plan arrives.
pub struct PlanLost<'a> {
    pub endpoint: &'a str,
    pub last_plan: chrono::DateTime<chrono::Utc>,
    /// The endpoint's devices that had a setpoint.
    pub devices: &'a [&'a str],
}

impl InternalEvent for PlanLost<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(endpoint = %self.endpoint, last_plan = %self.last_plan, "no fresh plan: releasing controlled devices to their safe mode");
        for d in self.devices {
            count_release(m, d, ReleaseReason::PlanLoss);
        }
    }
}

/// A controlled device failed enough polls that its own watchdog has
/// reverted it.
pub struct ContactLost<'a> {
    pub device: &'a str,
}

impl InternalEvent for ContactLost<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(device = %self.device, "contact lost: the device falls back to its own safe mode");
        count_release(m, self.device, ReleaseReason::ContactLost);
    }
}

/// No power setpoint is safe for a device: it is released instead.
pub struct NoSafeSetpoint<'a> {
    pub device: &'a str,
    pub asked_kw: f64,
    pub setpoint_min_kw: Option<f64>,
    pub setpoint_max_kw: Option<f64>,
}

impl InternalEvent for NoSafeSetpoint<'_> {
    fn emit(self, m: &Metrics) {
        count_release(m, self.device, ReleaseReason::NoSafeRange);
        tracing::error!(device = %self.device, asked_kw = self.asked_kw, setpoint_min_kw = ?self.setpoint_min_kw, setpoint_max_kw = ?self.setpoint_max_kw, "no power setpoint is safe: the configured setpoint range and the device's ratings do not overlap; released to its own mode (fix the device's setpoint_min_kw/setpoint_max_kw, `ped check` names them)");
    }
}

/// A device read back something else than ped wrote too many times in a
/// row: released, tried again after `retry`.
pub struct SetpointsNotTaken<'a> {
    pub device: &'a str,
    pub writes: u32,
    pub retry: Duration,
}

impl InternalEvent for SetpointsNotTaken<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(device = %self.device, writes = self.writes, retry_s = self.retry.as_secs_f64(), "the device does not take ped's setpoints (read-back differs): releasing it to its own mode, trying again later");
        count_release(m, self.device, ReleaseReason::ReadbackMismatch);
    }
}

/// A setpoint was written (or, read-only, would have been) and checked.
pub struct SetpointWritten<'a> {
    pub device: &'a str,
    pub result: WriteResult,
}

impl InternalEvent for SetpointWritten<'_> {
    fn emit(self, m: &Metrics) {
        count_write(m, self.device, self.result);
    }
}

/// The safety envelope refused a command for a device.
pub struct SetpointRefused<'a> {
    pub device: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for SetpointRefused<'_> {
    fn emit(self, m: &Metrics) {
        count_write(m, self.device, WriteResult::Refused);
        tracing::warn!(device = %self.device, error = %self.error, "setpoint refused by the safety envelope");
    }
}

/// Writing a setpoint's point failed.
pub struct SetpointWriteFailed<'a> {
    pub device: &'a str,
    pub point: &'a str,
    pub error: &'a ModbusError,
}

impl InternalEvent for SetpointWriteFailed<'_> {
    fn emit(self, m: &Metrics) {
        count_write(m, self.device, WriteResult::Error);
        tracing::warn!(device = %self.device, point = %self.point, error = %self.error, "setpoint write failed");
    }
}

/// A power setpoint limited by the safety envelope.
pub enum Clamp {
    /// To the device's bounds; `log` once per new plan value, not at every
    /// refresh of the same one.
    Bound {
        asked_kw: f64,
        written_kw: f64,
        min_kw: f64,
        max_kw: f64,
        log: bool,
    },
    /// By the ramp limit from the last power written.
    Ramp {
        target_kw: f64,
        written_kw: f64,
        ramp_kw_per_s: f64,
    },
}

pub struct SetpointClamped<'a> {
    pub device: &'a str,
    pub clamp: Clamp,
}

impl InternalEvent for SetpointClamped<'_> {
    fn emit(self, m: &Metrics) {
        let d = self.device;
        match self.clamp {
            Clamp::Bound {
                asked_kw,
                written_kw,
                min_kw,
                max_kw,
                log,
            } => {
                m.setpoint_clamped.with_label_values(&[d, "bound"]).inc();
                if log {
                    tracing::info!(device = %d, asked_kw, written_kw, min_kw, max_kw, "setpoint clamped to bounds");
                }
            }
            Clamp::Ramp {
                target_kw,
                written_kw,
                ramp_kw_per_s,
            } => {
                m.setpoint_clamped.with_label_values(&[d, "ramp"]).inc();
                tracing::debug!(device = %d, target_kw, written_kw, ramp_kw_per_s, "setpoint ramp-limited");
            }
        }
    }
}

/// What a written point read back as, when it is not what was written.
pub enum ReadBack<'a> {
    Differs { written: &'a [u16], read: &'a [u16] },
    Undecodable(&'a dyn std::fmt::Display),
}

pub struct ReadbackDiffers<'a> {
    pub device: &'a str,
    pub point: &'a str,
    pub read_back: ReadBack<'a>,
}

impl InternalEvent for ReadbackDiffers<'_> {
    fn emit(self, m: &Metrics) {
        m.setpoint_readback_mismatch
            .with_label_values(&[self.device])
            .inc();
        match self.read_back {
            ReadBack::Differs { written, read } => {
                tracing::warn!(device = %self.device, point = %self.point, written = ?written, read_back = ?read, "setpoint read-back differs from what was written");
            }
            ReadBack::Undecodable(error) => {
                tracing::warn!(device = %self.device, point = %self.point, error = %error, "setpoint read-back cannot be decoded");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The planner.

pub struct PlanResolved {
    pub trigger: Resolve,
}

impl InternalEvent for PlanResolved {
    fn emit(self, m: &Metrics) {
        m.plan_resolves
            .with_label_values(&[self.trigger.as_str()])
            .inc();
    }
}

/// A plan was published: its first step's setpoints go to the devices.
pub struct PlanPublished<'a> {
    pub plan: &'a Plan,
    pub solve_s: f64,
    pub setpoints: &'a BTreeMap<String, Command>,
}

impl InternalEvent for PlanPublished<'_> {
    fn emit(self, m: &Metrics) {
        let p = self.plan;
        let status = p.status.label();
        m.plan_fallback_level.set(f64::from(p.status.level()));
        m.plan_soft_violations.set(p.violations.len() as f64);
        for s in ["optimal", "relaxed", "shifted", "rule_based"] {
            m.plan_status
                .with_label_values(&[s])
                .set(i64::from(s == status));
        }
        m.plans.with_label_values(&[status]).inc();
        m.plan_solve_seconds.observe(self.solve_s);
        m.plan_objective.set(p.objective_eur);
        for (dev, cmd) in self.setpoints {
            let kw = match cmd {
                Command::BatteryPower(kw) | Command::PowerToHeat(kw) => *kw,
                // A curtailment limit is a percentage, not a power: it has no
                // place in a watts gauge.
                Command::Release | Command::PvLimitPct(_) => continue,
            };
            m.plan_next_setpoint
                .with_label_values(&[dev])
                .set(kw * 1000.0);
        }
        tracing::info!(status = %status, objective_eur = format!("{:.2}", p.objective_eur), solve_s = format!("{:.3}", self.solve_s), setpoints = crate::devices::setpoints_text(self.setpoints), "plan published");
    }
}

/// Tracking between re-solves could not measure the site's surplus: the
/// plan's setpoints stand. `log` when the reason changed.
pub struct TrackingSkipped<'a> {
    pub reason: &'static str,
    pub device: &'a str,
    pub log: bool,
}

impl InternalEvent for TrackingSkipped<'_> {
    fn emit(self, m: &Metrics) {
        m.tracking_skipped.with_label_values(&[self.reason]).inc();
        if self.log {
            tracing::warn!(reason = self.reason, device = %self.device, "plan tracking paused: site surplus not measured, the plan's setpoints stand");
        }
    }
}

// ---------------------------------------------------------------------------
// Settlement and key files.

/// A closed period's keys fell back from the policy's own.
pub struct PeriodFellBack {
    pub reason: PeriodFallback,
}

impl InternalEvent for PeriodFellBack {
    fn emit(self, m: &Metrics) {
        m.period_fallbacks
            .with_label_values(&[self.reason.as_str()])
            .inc();
    }
}

/// Key files passed their format's validator and were written.
pub struct KeyFilesWritten {
    pub files: u64,
}

impl InternalEvent for KeyFilesWritten {
    fn emit(self, m: &Metrics) {
        m.key_files
            .with_label_values(&["enedis"])
            .inc_by(self.files);
        m.key_files_validated
            .with_label_values(&["ok"])
            .inc_by(self.files);
        m.key_files_last_written
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    }
}

/// A key file failed its format's validator and was not written.
pub struct KeyFileInvalid;

impl InternalEvent for KeyFileInvalid {
    fn emit(self, m: &Metrics) {
        m.key_files_validated.with_label_values(&["invalid"]).inc();
    }
}

/// The aggregator fell days behind the pollers: the oldest counter samples
/// were dropped.
pub struct SamplesDropped {
    pub dropped: u64,
}

impl InternalEvent for SamplesDropped {
    fn emit(self, m: &Metrics) {
        m.handoff_samples_dropped.inc_by(self.dropped);
        tracing::warn!(
            dropped = self.dropped,
            "aggregator stalled for days: oldest counter samples dropped"
        );
    }
}

/// A ledger write failed; `first` when it is the first of a run of
/// failures (logged once, counted each time).
pub struct LedgerWriteFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
    pub pending: usize,
    pub first: bool,
}

impl InternalEvent for LedgerWriteFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.ledger_write_errors.inc();
        if self.first {
            tracing::error!(error = %self.error, pending = self.pending, "ledger write failed; control goes on, closed periods wait in memory");
        }
    }
}

// ---------------------------------------------------------------------------
// Supervision.

/// A daemon task ended or panicked before ped was asked to stop.
pub struct TaskFailed<'a> {
    /// The task's kind, a bounded label (`endpoint`, `planner`, …).
    pub task: &'a str,
    /// Which one, for the log (`endpoint 10.0.0.5:502`).
    pub what: &'a str,
    pub why: &'a str,
}

impl InternalEvent for TaskFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.task_failures.with_label_values(&[self.task]).inc();
        tracing::error!(task = %self.what, why = %self.why, "a daemon task stopped: releasing every controlled device, then ped stops with an error so that its service manager restarts it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new("s").unwrap()
    }

    #[test]
    fn a_failed_poll_then_a_good_one_leave_the_device_state_consistent() {
        let m = metrics();
        let e = ModbusError::Timeout;
        for failures in 1..=3 {
            emit(
                &m,
                PollFailed {
                    device: "BAT",
                    kind: "battery",
                    error: &e,
                    failures,
                    backoff: Duration::from_secs(4),
                },
            );
        }
        assert_eq!(
            m.device_errors.with_label_values(&["BAT", "timeout"]).get(),
            3
        );
        assert_eq!(m.device_up.with_label_values(&["BAT", "battery"]).get(), 0);
        assert_eq!(
            m.device_consecutive_failures
                .with_label_values(&["BAT"])
                .get(),
            3
        );
        assert_eq!(
            m.device_backoff_seconds.with_label_values(&["BAT"]).get(),
            4.0
        );
        emit(
            &m,
            PollSucceeded {
                device: "BAT",
                kind: "battery",
                elapsed: Duration::from_millis(20),
            },
        );
        assert_eq!(m.device_up.with_label_values(&["BAT", "battery"]).get(), 1);
        assert_eq!(m.device_reads.with_label_values(&["BAT"]).get(), 1);
        assert_eq!(
            m.device_consecutive_failures
                .with_label_values(&["BAT"])
                .get(),
            0
        );
        assert_eq!(
            m.device_backoff_seconds.with_label_values(&["BAT"]).get(),
            0.0
        );
        assert!(m.device_last_success.with_label_values(&["BAT"]).get() > 0.0);
    }

    #[test]
    fn each_release_is_counted_under_its_own_reason() {
        let m = metrics();
        let releases =
            |d: &str, r: ReleaseReason| m.device_releases.with_label_values(&[d, r.as_str()]).get();
        emit(
            &m,
            PlanLost {
                endpoint: "10.0.0.5:502",
                last_plan: chrono::Utc::now(),
                devices: &["BAT", "P2H"],
            },
        );
        emit(&m, ContactLost { device: "BAT" });
        emit(
            &m,
            NoSafeSetpoint {
                device: "P2H",
                asked_kw: 5.0,
                setpoint_min_kw: Some(10.0),
                setpoint_max_kw: Some(2.0),
            },
        );
        emit(
            &m,
            SetpointsNotTaken {
                device: "BAT",
                writes: 3,
                retry: Duration::from_secs(30),
            },
        );
        emit(
            &m,
            Released {
                device: "BAT",
                reason: ReleaseReason::Stop,
            },
        );
        assert_eq!(releases("BAT", ReleaseReason::PlanLoss), 1);
        assert_eq!(releases("P2H", ReleaseReason::PlanLoss), 1);
        assert_eq!(releases("BAT", ReleaseReason::ContactLost), 1);
        assert_eq!(releases("P2H", ReleaseReason::NoSafeRange), 1);
        assert_eq!(releases("BAT", ReleaseReason::ReadbackMismatch), 1);
        assert_eq!(releases("BAT", ReleaseReason::Stop), 1);
        assert_eq!(releases("BAT", ReleaseReason::TaskFailure), 0);
        assert_eq!(releases("P2H", ReleaseReason::ContactLost), 0);
    }

    #[test]
    fn setpoint_outcomes_and_clamps_use_the_catalogue_labels() {
        let m = metrics();
        let writes = |r: WriteResult| {
            m.setpoint_writes
                .with_label_values(&["BAT", r.as_str()])
                .get()
        };
        emit(
            &m,
            SetpointWritten {
                device: "BAT",
                result: WriteResult::Ok,
            },
        );
        emit(
            &m,
            SetpointRefused {
                device: "BAT",
                error: &"above the device's rating",
            },
        );
        emit(
            &m,
            SetpointWriteFailed {
                device: "BAT",
                point: "WSet",
                error: &ModbusError::Timeout,
            },
        );
        emit(
            &m,
            SetpointClamped {
                device: "BAT",
                clamp: Clamp::Ramp {
                    target_kw: 10.0,
                    written_kw: 2.0,
                    ramp_kw_per_s: 1.0,
                },
            },
        );
        emit(
            &m,
            ReadbackDiffers {
                device: "BAT",
                point: "WSet",
                read_back: ReadBack::Differs {
                    written: &[1, 2],
                    read: &[1, 3],
                },
            },
        );
        assert_eq!(writes(WriteResult::Ok), 1);
        assert_eq!(writes(WriteResult::Refused), 1);
        assert_eq!(writes(WriteResult::Error), 1);
        assert_eq!(writes(WriteResult::DryRun), 0);
        assert_eq!(
            m.setpoint_clamped.with_label_values(&["BAT", "ramp"]).get(),
            1
        );
        assert_eq!(
            m.setpoint_clamped
                .with_label_values(&["BAT", "bound"])
                .get(),
            0
        );
        assert_eq!(
            m.setpoint_readback_mismatch
                .with_label_values(&["BAT"])
                .get(),
            1
        );
        // Every label an event writes is one the catalogue pre-creates, so
        // the dashboards' series exist before the first event.
        let before = metrics();
        before.precreate(["BAT"], None);
        let text = before.render();
        for r in ReleaseReason::ALL {
            assert!(
                text.contains(&format!("reason=\"{}\"", r.as_str())),
                "{}",
                r.as_str()
            );
        }
        for t in Resolve::ALL {
            assert!(text.contains(&format!("reason=\"{}\"", t.as_str())));
        }
    }
}
