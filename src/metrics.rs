//! Prometheus registry and metric names. Base units (watts, joules, celsius,
//! ratios, seconds), `_total` for counters, labels only where bounded (`device`
//! and `participant` are bounded by the site config).

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric registration failed: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// Every metric ped exports. Cheap to clone (the prometheus types are handles).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    // Devices.
    pub device_up: IntGaugeVec,
    pub device_reads: IntCounterVec,
    pub device_errors: IntCounterVec,
    pub device_last_success: GaugeVec,
    pub device_read_seconds: HistogramVec,
    pub device_backoff_seconds: GaugeVec,
    pub device_power: GaugeVec,
    pub device_energy: CounterVec,
    pub battery_soc: GaugeVec,
    pub heat_store_energy: GaugeVec,
    pub temperature: GaugeVec,
    pub valve_ratio: GaugeVec,
    pub heat_flow: GaugeVec,
    // Settlement.
    pub periods_closed: IntCounter,
    pub period_start: Gauge,
    pub period_production: Gauge,
    pub period_consumption: Gauge,
    pub period_self_consumed: Gauge,
    pub period_surplus: Gauge,
    pub self_consumption_ratio: Gauge,
    pub self_sufficiency_ratio: Gauge,
    pub participant_allocated: CounterVec,
    pub participant_consumed: CounterVec,
    pub period_fallbacks: IntCounterVec,
    pub production_total: prometheus::Counter,
    pub self_consumed_total: prometheus::Counter,
    // Plan.
    pub plan_solve_seconds: Histogram,
    pub plan_objective: Gauge,
    pub plan_status: IntGaugeVec,
    pub plans: IntCounterVec,
    pub plan_age_seconds: Gauge,
    pub setpoint: GaugeVec,
    pub setpoint_writes: IntCounterVec,
    // Keys.
    pub key_files: IntCounterVec,
    pub key_sum_max_ratio: Gauge,
    // What the dashboards and alerts read.
    pub plan_next_setpoint: GaugeVec,
    pub key_files_validated: IntCounterVec,
    pub key_files_last_written: Gauge,
    pub participant_key_ratio: GaugeVec,
    pub ready: prometheus::IntGauge,
    pub volume_flow: GaugeVec,
    // Control safety envelope and per-device poll state.
    pub setpoint_readback_mismatch: IntCounterVec,
    pub setpoint_clamped: IntCounterVec,
    pub device_releases: IntCounterVec,
    pub device_consecutive_failures: IntGaugeVec,
    pub device_poll_reads: IntCounterVec,
    // Ledger and outbox.
    pub ledger_write_errors: IntCounter,
    pub ledger_pending_periods: Gauge,
    pub outbox_files: IntGaugeVec,
    pub deliveries: IntCounterVec,
    // Plan fallback ladder.
    pub plan_fallback_level: Gauge,
    pub plan_soft_violations: Gauge,
    // Reconciliation with the DSO's settlement.
    pub reconciliation_difference: GaugeVec,
    // Plan re-solves by trigger.
    pub plan_resolves: IntCounterVec,
    // Hand-off between periods and gaps in the counters.
    pub handoff_samples_dropped: IntCounter,
    pub periods_estimated: IntCounter,
    // Plan allocation per participant, devices included.
    pub plan_allocation: GaugeVec,
    // Export prices over time (`[plan] export_prices_file`).
    pub export_price: Gauge,
    pub export_prices_errors: IntCounter,
    // Plan tracking between re-solves.
    pub tracking_watts: GaugeVec,
    pub tracking_skipped: IntCounterVec,
    // Supervision of the daemon's tasks.
    pub task_failures: IntCounterVec,
}

impl Metrics {
    pub fn new(site: &str) -> Result<Metrics, MetricsError> {
        let mut labels = std::collections::HashMap::new();
        labels.insert("site".to_string(), site.to_string());
        let registry = Registry::new_custom(Some("ped".into()), Some(labels))?;
        let r = &registry;
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: T,
        ) -> Result<T, MetricsError> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let gv = |name: &str, help: &str, l: &[&str]| -> Result<GaugeVec, MetricsError> {
            reg(r, GaugeVec::new(Opts::new(name, help), l)?)
        };
        let g = |name: &str, help: &str| -> Result<Gauge, MetricsError> {
            reg(r, Gauge::new(name, help)?)
        };
        let icv = |name: &str, help: &str, l: &[&str]| -> Result<IntCounterVec, MetricsError> {
            reg(r, IntCounterVec::new(Opts::new(name, help), l)?)
        };
        let igv = |name: &str, help: &str, l: &[&str]| -> Result<IntGaugeVec, MetricsError> {
            reg(r, IntGaugeVec::new(Opts::new(name, help), l)?)
        };
        let cv = |name: &str, help: &str, l: &[&str]| -> Result<CounterVec, MetricsError> {
            reg(r, CounterVec::new(Opts::new(name, help), l)?)
        };
        let m = Metrics {
            build_info: igv("build_info", "Always 1; labels carry the version.", &["version"])?,
            device_up: igv("device_up", "1 if the device's last poll succeeded.", &["device", "kind"])?,
            device_reads: icv("device_reads_total", "Successful polls of a device.", &["device"])?,
            device_errors: icv(
                "device_errors_total",
                "Failed polls by kind: timeout, connection, exception, protocol, decode.",
                &["device", "kind"],
            )?,
            device_last_success: gv(
                "device_last_success_timestamp_seconds",
                "Unix time of the device's last successful poll.",
                &["device"],
            )?,
            device_read_seconds: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new("device_read_duration_seconds", "Duration of one device poll.")
                        .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]),
                    &["device"],
                )?,
            )?,
            device_backoff_seconds: gv(
                "device_backoff_seconds",
                "Current backoff of a device: its own after failed polls, its endpoint's after a failed connect (0 when healthy).",
                &["device"],
            )?,
            device_power: gv(
                "device_power_watts",
                "Active power of a device; ped's sign: positive = consumption or charging, PV production positive.",
                &["device", "kind"],
            )?,
            device_energy: cv(
                "device_energy_joules_total",
                "Energy counted by a device's own counter since ped started, by direction.",
                &["device", "direction"],
            )?,
            battery_soc: gv("battery_state_of_charge_ratio", "Battery state of charge, 0..1.", &["device"])?,
            heat_store_energy: gv("heat_store_energy_joules", "Heat stored in a thermal store.", &["device"])?,
            temperature: gv("temperature_celsius", "Temperatures read from devices.", &["device", "point"])?,
            valve_ratio: gv("valve_position_ratio", "Control valve position, 0..1.", &["device"])?,
            heat_flow: gv("heat_power_watts", "Thermal power delivered by a substation.", &["device"])?,
            periods_closed: reg(r, IntCounter::new("periods_closed_total", "Settlement periods closed.")?)?,
            period_start: g("period_start_timestamp_seconds", "Start of the last closed settlement period.")?,
            period_production: g("period_production_joules", "Local production (PV + battery discharge) in the last closed period.")?,
            period_consumption: g("period_consumption_joules", "Participants' consumption in the last closed period.")?,
            period_self_consumed: g("period_self_consumed_joules", "Energy allocated to participants in the last closed period.")?,
            period_surplus: g("period_surplus_joules", "Production not allocated (sold as surplus) in the last closed period.")?,
            self_consumption_ratio: g("self_consumption_ratio", "Self-consumed over produced, last closed period.")?,
            self_sufficiency_ratio: g("self_sufficiency_ratio", "Self-consumed over consumed, last closed period.")?,
            participant_allocated: cv(
                "participant_allocated_energy_joules_total",
                "Local energy allocated to a participant by the exported keys.",
                &["participant"],
            )?,
            participant_consumed: cv(
                "participant_consumed_energy_joules_total",
                "Energy a participant consumed in closed periods.",
                &["participant"],
            )?,
            period_fallbacks: icv(
                "period_fallbacks_total",
                "Periods whose keys fell back to the default rule, by reason.",
                &["reason"],
            )?,
            production_total: reg(r, prometheus::Counter::new("production_energy_joules_total", "Local production over closed periods.")?)?,
            self_consumed_total: reg(r, prometheus::Counter::new("self_consumed_energy_joules_total", "Self-consumed energy over closed periods.")?)?,
            plan_solve_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("plan_solve_duration_seconds", "Wall-clock time of one plan solve.")
                        .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
                )?,
            )?,
            plan_objective: g("plan_objective_euros", "Objective value of the current plan over its horizon.")?,
            plan_status: igv("plan_status", "1 for the status of the current plan.", &["status"])?,
            plans: icv("plans_total", "Plans published, by status.", &["status"])?,
            plan_age_seconds: g("plan_age_seconds", "Age of the current plan, clock seconds.")?,
            setpoint: gv("setpoint_watts", "Setpoint currently sent to a device (ped's sign).", &["device"])?,
            setpoint_writes: icv("setpoint_writes_total", "Setpoint writes, by result.", &["device", "result"])?,
            key_files: icv("key_files_written_total", "DSO key files written, by format.", &["format"])?,
            key_sum_max_ratio: g("key_sum_max_ratio", "Largest per-step key sum of the last closed period (≤ 1).")?,
            plan_next_setpoint: gv(
                "plan_next_setpoint_watts",
                "First step of the current plan for a controllable device (ped's sign), before the safety envelope.",
                &["device"],
            )?,
            key_files_validated: icv(
                "key_files_validated_total",
                "DSO key files checked against the layout before writing, by result (ok, invalid).",
                &["result"],
            )?,
            key_files_last_written: g(
                "key_files_last_written_timestamp_seconds",
                "Unix time at which key files were last written.",
            )?,
            participant_key_ratio: gv(
                "participant_key_ratio",
                "Key of a participant in the last step of the last closed period, 0..1.",
                &["participant"],
            )?,
            ready: reg(r, prometheus::IntGauge::new("ready", "1 when /ready answers 200: config loaded, a poll done, the plan fresh.")?)?,
            volume_flow: gv(
                "heat_meter_flow_cubic_meters_per_second",
                "Water flow measured by a heat meter.",
                &["device"],
            )?,
            setpoint_readback_mismatch: icv("setpoint_readback_mismatch_total", "Setpoints whose read-back differs from what was written by more than one scale-factor step.", &["device"])?,
            setpoint_clamped: icv("setpoint_clamped_total", "Setpoints clamped by the safety envelope, by limit (bound, ramp).", &["device", "limit"])?,
            device_releases: icv("device_releases_total", "Controlled devices handed back to their own safe mode, by reason (stop, plan_loss, contact_lost, task_failure, readback_mismatch, no_safe_range).", &["device", "reason"])?,
            device_consecutive_failures: igv("device_consecutive_failures", "Failed polls in a row (0 when the last poll succeeded); drives the device's backoff.", &["device"])?,
            device_poll_reads: icv("device_poll_requests_total", "Read requests sent by the device's poll plan.", &["device"])?,
            ledger_write_errors: reg(r, IntCounter::new("ledger_write_errors_total", "Failed ledger writes (read-only file, disk full, ...).")?)?,
            ledger_pending_periods: g("ledger_pending_periods", "Closed periods kept in memory because the ledger could not be written.")?,
            outbox_files: igv("outbox_files", "Key files in the delivery outbox, by state.", &["state"])?,
            deliveries: icv("deliveries_total", "Delivery attempts, by channel and result.", &["channel", "result"])?,
            plan_fallback_level: g(
                "plan_fallback_level",
                "Rung of the plan fallback ladder of the current plan: 0 optimal, 1 relaxed, 2 last plan shifted, 3 rule-based.",
            )?,
            plan_soft_violations: g("plan_soft_violations", "Soft limits the current plan violates.")?,
            reconciliation_difference: gv(
                "reconciliation_difference_joules",
                "DSO's self-consumed energy minus ped's allocation over the last reconciled run.",
                &["participant"],
            )?,
            plan_resolves: icv("plan_resolves_total", "Plans solved again, by trigger: step (the next settlement step), forecast_miss (measured PV far from the plan's forecast).", &["reason"])?,
            handoff_samples_dropped: reg(r, IntCounter::new("handoff_samples_dropped_total", "Counter samples dropped because the aggregator fell days behind the pollers (oldest first).")?)?,
            periods_estimated: reg(r, IntCounter::new("periods_estimated_total", "Closed periods whose energies were interpolated across a gap (ped down, clock jump) rather than measured.")?)?,
            plan_allocation: gv(
                "plan_allocation_joules",
                "Energy the current plan allocates to a participant in the current settlement step; batteries and power-to-heat included (their planned charge or P2H, all taken from local production).",
                &["participant"],
            )?,
            export_price: g(
                "export_price_eur_per_kwh",
                "Export price of the current settlement step used by the plan (from plan.export_prices_file, else the flat plan.export_price_eur_per_kwh).",
            )?,
            export_prices_errors: reg(r, IntCounter::new("export_prices_errors_total", "Reads of plan.export_prices_file that failed (unreadable or invalid); the plan keeps the last good prices.")?)?,
            tracking_watts: gv(
                "tracking_watts",
                "Power that plan tracking adds to the plan's step-0 setpoint of a battery or power-to-heat unit (measured surplus above the plan's), before the safety envelope; 0 when the plan's setpoint stands.",
                &["device"],
            )?,
            tracking_skipped: icv(
                "tracking_skipped_total",
                "Control ticks at which plan tracking did not run and the plan's setpoints stood, by reason: missing (a PV or consumption meter not read or down), stale (its last reading too old).",
                &["reason"],
            )?,
            task_failures: icv(
                "task_failures_total",
                "Daemon tasks that stopped on their own (a panic or an unexpected end), by task; every controlled device is then released and ped exits with an error.",
                &["task"],
            )?,
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(m)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Creates at 0 the labelled series whose label values are known before
    /// anything happens, so that a dashboard panel or an alert on "how many
    /// times did X happen" reads 0, not "no data", on a site where X never
    /// happened (`scripts/promql-dashboards.py` fails on empty expressions).
    /// `controlled`: devices ped may write to; `delivery_channel`: the
    /// outbox's channel, if it has one.
    pub fn precreate<'a>(
        &self,
        controlled: impl IntoIterator<Item = &'a str>,
        delivery_channel: Option<&str>,
    ) {
        for trigger in Resolve::ALL {
            self.plan_resolves.with_label_values(&[trigger.as_str()]);
        }
        for reason in TRACKING_SKIP_REASONS {
            self.tracking_skipped.with_label_values(&[reason]);
        }
        for task in TASKS {
            self.task_failures.with_label_values(&[task]);
        }
        for state in ["pending", "sent", "failed"] {
            self.outbox_files.with_label_values(&[state]);
        }
        if let Some(channel) = delivery_channel {
            for result in ["ok", "transient_error", "permanent_error"] {
                self.deliveries.with_label_values(&[channel, result]);
            }
        }
        for d in controlled {
            self.setpoint_readback_mismatch.with_label_values(&[d]);
            for limit in ["bound", "ramp"] {
                self.setpoint_clamped.with_label_values(&[d, limit]);
            }
            for reason in ReleaseReason::ALL {
                self.device_releases
                    .with_label_values(&[d, reason.as_str()]);
            }
        }
    }
}

/// Why a controlled device was handed back to its own control
/// (`ped_device_releases_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// ped was asked to stop.
    Stop,
    /// A daemon task failed; supervision releases every device.
    TaskFailure,
    /// No fresh plan for longer than the site allows.
    PlanLoss,
    /// The device stopped answering; its own watchdog has reverted it.
    ContactLost,
    /// The device does not take ped's setpoints (read-back differs).
    ReadbackMismatch,
    /// The configured setpoint range and the device's ratings do not overlap.
    NoSafeRange,
}

impl ReleaseReason {
    pub const ALL: [ReleaseReason; 6] = [
        ReleaseReason::Stop,
        ReleaseReason::TaskFailure,
        ReleaseReason::PlanLoss,
        ReleaseReason::ContactLost,
        ReleaseReason::ReadbackMismatch,
        ReleaseReason::NoSafeRange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Stop => "stop",
            ReleaseReason::TaskFailure => "task_failure",
            ReleaseReason::PlanLoss => "plan_loss",
            ReleaseReason::ContactLost => "contact_lost",
            ReleaseReason::ReadbackMismatch => "readback_mismatch",
            ReleaseReason::NoSafeRange => "no_safe_range",
        }
    }
}

/// How a setpoint write ended (`ped_setpoint_writes_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    /// Written and read back as written.
    Ok,
    /// Written, but the device reads back something else.
    ReadbackMismatch,
    /// The site is read-only: logged, not written.
    DryRun,
    /// The write itself failed.
    Error,
    /// The safety envelope refused the command.
    Refused,
}

impl WriteResult {
    pub const ALL: [WriteResult; 5] = [
        WriteResult::Ok,
        WriteResult::ReadbackMismatch,
        WriteResult::DryRun,
        WriteResult::Error,
        WriteResult::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WriteResult::Ok => "ok",
            WriteResult::ReadbackMismatch => "readback_mismatch",
            WriteResult::DryRun => "dry_run",
            WriteResult::Error => "error",
            WriteResult::Refused => "refused",
        }
    }
}

/// What made the planner solve again (`ped_plan_resolves_total{trigger}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// The next plan step began.
    Step,
    /// Measured PV left the forecast behind.
    ForecastMiss,
}

impl Resolve {
    pub const ALL: [Resolve; 2] = [Resolve::Step, Resolve::ForecastMiss];

    pub fn as_str(self) -> &'static str {
        match self {
            Resolve::Step => "step",
            Resolve::ForecastMiss => "forecast_miss",
        }
    }
}

/// Why a closed period's keys are not the policy's own
/// (`ped_period_fallbacks_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodFallback {
    /// A counter went backwards (reset, rollover): the period's keys are pro rata.
    CounterReset,
    /// An energy is unknown: the period's keys are pro rata.
    MissingData,
    /// The month-aware solve failed: per-period optimised keys instead.
    MonthSolver,
}

impl PeriodFallback {
    pub const ALL: [PeriodFallback; 3] = [
        PeriodFallback::CounterReset,
        PeriodFallback::MissingData,
        PeriodFallback::MonthSolver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PeriodFallback::CounterReset => "counter_reset",
            PeriodFallback::MissingData => "missing_data",
            PeriodFallback::MonthSolver => "month_solver",
        }
    }
}

/// The daemon's supervised tasks (`ped_task_failures_total`).
pub const TASKS: [&str; 6] = [
    "http",
    "endpoint",
    "aggregator",
    "dispatch_recorder",
    "outbox",
    "planner",
];

/// Why plan tracking can skip a control tick (`ped_tracking_skipped_total`).
pub const TRACKING_SKIP_REASONS: [&str; 2] = ["missing", "stale"];

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn registry_renders_with_prefix_and_site_label() {
        let m = Metrics::new("test-site").unwrap();
        m.device_up
            .with_label_values(&["PV-01", "pv_inverter"])
            .set(1);
        let text = m.render();
        assert!(
            text.contains(
                "ped_device_up{device=\"PV-01\",kind=\"pv_inverter\",site=\"test-site\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("ped_build_info"));
    }

    #[test]
    fn precreated_series_read_zero_and_only_for_controlled_devices() {
        let m = Metrics::new("s").unwrap();
        m.precreate(["BAT-01"], Some("https"));
        let text = m.render();
        for line in [
            "ped_setpoint_clamped_total{device=\"BAT-01\",limit=\"ramp\",site=\"s\"} 0",
            "ped_device_releases_total{device=\"BAT-01\",reason=\"contact_lost\",site=\"s\"} 0",
            "ped_setpoint_readback_mismatch_total{device=\"BAT-01\",site=\"s\"} 0",
            "ped_plan_resolves_total{reason=\"forecast_miss\",site=\"s\"} 0",
            "ped_tracking_skipped_total{reason=\"stale\",site=\"s\"} 0",
            "ped_outbox_files{state=\"failed\",site=\"s\"} 0",
            "ped_deliveries_total{channel=\"https\",result=\"permanent_error\",site=\"s\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("PV-01"), "{text}");
        let without = Metrics::new("s").unwrap();
        without.precreate([], None);
        assert!(!without.render().contains("ped_deliveries_total{"));
    }
}
