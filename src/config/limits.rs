//! Upper bounds of durations and counts: generous for any real site, and far
//! below what would overflow a `Duration` or an `Instant` at run time.

/// `polling.interval_ms`, a device's `interval_ms`, `polling.max_backoff_ms`: 1 h.
pub const INTERVAL_MS: u64 = 3_600_000;
/// `polling.timeout_ms`: 1 min.
pub const TIMEOUT_MS: u64 = 60_000;
/// A device's `revert_timeout_s`: 1 h (704 `WSetRvrtTms` holds far more,
/// but a watchdog of hours protects nothing).
pub const REVERT_TIMEOUT_S: f64 = 3_600.0;
/// `control.plan_loss_steps`: a day of 15-minute steps.
pub const PLAN_LOSS_STEPS: u32 = 96;
/// `plan.budget_ms`: 10 min.
pub const PLAN_BUDGET_MS: u64 = 600_000;
/// `delivery.backoff_base_s`, `delivery.backoff_cap_s`: 1 day.
pub const DELIVERY_BACKOFF_S: u64 = 86_400;
/// `ledger.snapshot_retention_days`: 100 years.
pub const RETENTION_DAYS: u32 = 36_500;
