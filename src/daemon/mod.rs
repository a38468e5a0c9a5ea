//! Wires the stages as tokio tasks with one shutdown signal:
//!
//! - one **endpoint task** per Modbus endpoint (one connection shared by every
//!   unit id behind it): polls its devices, hands [`Snapshot`]s over without
//!   ever waiting (latest-value slots, thinned counter queues: `handoff`),
//!   writes setpoints;
//! - the **aggregator**: readings → metrics and status; energy counters →
//!   energies per settlement period; at each closed period: keys, DSO files,
//!   the period record;
//! - the **ledger writer** (an OS thread): commits closed periods, appends to
//!   the day's key files, records final files; a slow disk delays only it;
//! - the **planner**: at each period start, forecasts + state → LP → setpoints;
//!   between re-solves it tracks the plan at each control tick (`tracking`).
//!
//! Data moves one way through channels; the only shared state is the status
//! snapshot that the HTTP server reads.
//!
//! Every task runs under one supervisor (a `JoinSet` in [`Daemon`]): a task
//! that ends or panics before ped is asked to stop hands every controlled
//! device back to its own safe mode (the surviving endpoint tasks release
//! theirs; the devices of a dead endpoint task are released over a fresh
//! connection), is logged and counted (`ped_task_failures_total`), and
//! [`Daemon::run_until`] returns an error so that ped exits non-zero and its
//! service manager restarts it. A half-running ped that still looks healthy
//! is worse than a restart: it keeps sending setpoints built from readings
//! nobody refreshes.

mod aggregate;
mod endpoint;
mod handoff;
mod planner;
mod tracking;

use crate::clock::Clock;
use crate::config::Site;
use crate::devices::{Command, Readings};
use crate::metrics::Metrics;
use crate::registers::ModelLibrary;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen for HTTP on {addr}: {source} (set http.listen or PED__HTTP__LISTEN to a free port)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot create output folder {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("the {task} task stopped ({why}); every controlled device was released and ped stops with an error so that systemd or Docker restarts it")]
    TaskFailed { task: String, why: String },
    #[error(transparent)]
    Token(#[from] crate::http::auth::TokenError),
}

/// Test-only fault injection, honoured by debug builds only (the binaries
/// `cargo test` runs), ignored by release builds: `PED_FAULT_PANIC=planner`
/// makes the planner panic once a battery follows its plan, `PED_FAULT_PANIC=endpoint:<device>`
/// makes the endpoint task of that device panic once the device follows a
/// non-zero setpoint ped wrote. Stands in for a bug in a stage, so the tests
/// can show what supervision does about one (`tests/supervision.rs`).
#[cfg(debug_assertions)]
pub(crate) fn fault_panic(task: &str, device: Option<&str>) -> bool {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("PED_FAULT_PANIC").ok());
    match (wanted.as_deref(), device) {
        (Some(w), None) => w == task,
        (Some(w), Some(d)) => w.split_once(':') == Some((task, d)),
        (None, _) => false,
    }
}

#[cfg(not(debug_assertions))]
pub(crate) fn fault_panic(_task: &str, _device: Option<&str>) -> bool {
    false
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Log setpoints instead of writing them.
    pub dry_run: bool,
    /// Overrides `site.output_dir`.
    pub output_dir: Option<PathBuf>,
    /// Overrides `http.listen` (e.g. `127.0.0.1:0` in tests).
    pub http_listen: Option<String>,
}

/// Readings of one device at one clock instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub device: String,
    pub at: DateTime<Utc>,
    pub readings: Readings,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct DeviceStatus {
    pub id: String,
    pub kind: String,
    pub up: bool,
    pub readings: BTreeMap<String, f64>,
    pub last_error: Option<String>,
    /// Clock time of the readings, so that control can tell a stale one.
    #[serde(skip)]
    pub read_at: Option<DateTime<Utc>>,
    /// Real time of the last good poll, set by the endpoint task itself: if
    /// that task stops, nothing refreshes it and the device turns stale.
    #[serde(skip)]
    pub polled_ok: Option<Instant>,
    /// After how long without a good poll the device counts as down even
    /// though no failure was reported (a few of its poll intervals).
    #[serde(skip)]
    pub stale_after: std::time::Duration,
}

impl DeviceStatus {
    /// How long the device has gone without a good poll, when that is longer
    /// than its `stale_after`: it was up, and nobody has polled it since.
    pub fn stale_for(&self, now: Instant) -> Option<std::time::Duration> {
        let age = now.saturating_duration_since(self.polled_ok?);
        (self.up && age > self.stale_after).then_some(age)
    }

    /// Up, and its last good poll recent enough.
    pub fn is_up(&self, now: Instant) -> bool {
        self.up && self.stale_for(now).is_none()
    }
}

/// Polls without an answer, beyond the timeouts, after which a device that
/// nobody reported down counts as down anyway.
const STALE_POLLS: u32 = 5;

/// A device's `stale_after`: [`STALE_POLLS`] poll intervals plus two timeouts
/// (a late poll behind a slow neighbour on the same line is not a stale one),
/// never under 10 s, so that a loaded gateway does not flap.
pub(crate) fn stale_after(interval_ms: u64, timeout_ms: u64) -> std::time::Duration {
    let ms = interval_ms
        .saturating_mul(u64::from(STALE_POLLS))
        .saturating_add(timeout_ms.saturating_mul(2))
        .max(10_000);
    std::time::Duration::from_millis(ms)
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PlanView {
    pub status: String,
    pub computed_at: Option<DateTime<Utc>>,
    pub objective_eur: f64,
    pub solve_seconds: f64,
    pub pv_kw: Vec<f64>,
    pub battery_kw: Vec<f64>,
    pub p2h_kw: Vec<f64>,
    /// Batteries and power-to-heat units that are participants, with what
    /// the plan allocates them (their charge or P2H from the pool).
    pub device_participants: Vec<PlanDeviceParticipant>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PlanDeviceParticipant {
    pub participant: String,
    pub device: String,
    /// Allocation in the current step.
    pub now_kwh: f64,
    /// Allocation over the plan's horizon.
    pub horizon_kwh: f64,
}

/// A closed settlement period, as archived.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodRecord {
    pub start: DateTime<Utc>,
    pub start_local: String,
    pub production_kwh: BTreeMap<String, f64>,
    pub consumption_kwh: BTreeMap<String, f64>,
    pub allocated_kwh: BTreeMap<String, f64>,
    /// Each participant's rounding remainder over the local month once this
    /// period's keys are applied, kWh (intended minus allocated, summed since
    /// the month began; positive: owed). The next period's rounding starts
    /// from it, so a restart carries the same remainders.
    pub remainder_kwh: BTreeMap<String, f64>,
    /// Exact pro rata minus allocated, summed since the local month began
    /// (positive: behind the DSO's default so far); the rounding's guarantee
    /// starts from it.
    pub behind_pro_rata_kwh: BTreeMap<String, f64>,
    /// Exact pro rata summed since the local month began.
    pub pro_rata_kwh: BTreeMap<String, f64>,
    pub key_units: Vec<u32>,
    pub total_production_kwh: f64,
    pub total_consumption_kwh: f64,
    pub self_consumed_kwh: f64,
    pub surplus_kwh: f64,
    /// `measured`, or why not (missing counters, fallback to the default rule).
    pub quality: String,
    pub policy: String,
}

#[derive(Debug, Default)]
pub struct Status {
    pub now: Option<DateTime<Utc>>,
    pub devices: BTreeMap<String, DeviceStatus>,
    pub polled_once: bool,
    pub last_period: Option<PeriodRecord>,
    pub plan: Option<PlanView>,
    pub periods_closed: u64,
}

pub struct Shared {
    pub site: Site,
    pub clock: Clock,
    pub metrics: Metrics,
    pub status: Mutex<Status>,
    pub output_dir: PathBuf,
}

impl Shared {
    pub fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl crate::http::Backend for Shared {
    fn metrics(&self) -> String {
        // Evaluated at scrape time so the gauge can never disagree with /ready.
        self.metrics.ready.set(i64::from(self.ready().is_ok()));
        {
            // A device nobody polls any more (its endpoint task stopped) must
            // not keep the 1 its last good poll set.
            let now = Instant::now();
            let st = self.status();
            for d in st.devices.values().filter(|d| d.stale_for(now).is_some()) {
                self.metrics
                    .device_up
                    .with_label_values(&[&d.id, &d.kind])
                    .set(0);
            }
        }
        self.metrics.render()
    }
    fn ready(&self) -> Result<(), String> {
        let st = self.status();
        if !st.polled_once {
            return Err("no successful poll yet".into());
        }
        let now = Instant::now();
        let stale: Vec<String> = st
            .devices
            .values()
            .filter_map(|d| {
                d.stale_for(now)
                    .map(|age| format!("{} ({} s)", d.id, age.as_secs()))
            })
            .collect();
        if !stale.is_empty() {
            return Err(format!(
                "no poll of {} since its last good reading although none failed: its endpoint task is not running",
                stale.join(", ")
            ));
        }
        match &st.plan {
            None => Err("no plan yet".into()),
            Some(p) => {
                let age = p
                    .computed_at
                    .map(|t| self.clock.now() - t)
                    .unwrap_or(chrono::Duration::MAX);
                if age > self.site.grid.step() * 3 {
                    Err(format!("plan is stale ({} s old)", age.num_seconds()))
                } else {
                    Ok(())
                }
            }
        }
    }
    fn status_json(&self) -> String {
        let ready = self.ready();
        let now = Instant::now();
        let st = self.status();
        // `up` means up now: a stale device is shown down, with the reason.
        let devices: Vec<DeviceStatus> = st
            .devices
            .values()
            .map(|d| {
                let mut d = d.clone();
                if let Some(age) = d.stale_for(now) {
                    d.up = false;
                    d.last_error = Some(format!("stale: no poll for {} s", age.as_secs()));
                }
                d
            })
            .collect();
        let sum = |key: &str, kind: &str| -> f64 {
            st.devices
                .values()
                .filter(|d| d.kind == kind)
                .filter_map(|d| d.readings.get(key))
                .sum()
        };
        let v = serde_json::json!({
            "site": self.site.config.site.name,
            "now": self.clock.now().with_timezone(&self.site.grid.tz()).to_rfc3339(),
            "last_period": st.last_period.as_ref().map(|p| p.start_local.clone()),
            "pv_kw": sum("production_kw", "pv_inverter"),
            "load_kw": sum("power_kw", "meter"),
            "self_consumption_ratio": st.last_period.as_ref().and_then(|p| (p.total_production_kwh > 0.0).then(|| p.self_consumed_kwh / p.total_production_kwh)),
            "self_sufficiency_ratio": st.last_period.as_ref().and_then(|p| (p.total_consumption_kwh > 0.0).then(|| p.self_consumed_kwh / p.total_consumption_kwh)),
            "last_keys": st.last_period.as_ref().map(|p| &p.key_units),
            "plan_status": st.plan.as_ref().map(|p| p.status.clone()),
            "plan": st.plan,
            "periods_closed": st.periods_closed,
            "devices": devices,
            // For the status page: the flows now, the last period in kWh, and
            // its keys by participant (key_units alone are in config order).
            "battery_kw": sum("power_kw", "battery"),
            "p2h_kw": sum("power_kw", "power_to_heat"),
            "heat_kw": sum("heat_kw", "heat_meter"),
            "devices_up": devices.iter().filter(|d| d.up).count(),
            "devices_total": st.devices.len(),
            "ready": ready.as_ref().err(),
            "step_minutes": self.site.grid.step().num_minutes(),
            "last_period_kwh": st.last_period.as_ref().map(|p| serde_json::json!({
                "production": p.total_production_kwh,
                "consumption": p.total_consumption_kwh,
                "self_consumed": p.self_consumed_kwh,
                "surplus": p.surplus_kwh,
                "quality": p.quality,
            })),
            "last_keys_by_participant": st.last_period.as_ref().map(|p| {
                let per_one = f64::from(self.site.config.keys.units_per_one);
                self.site.config.participants.iter().zip(&p.key_units).map(|(c, u)| serde_json::json!({
                    "participant": c.id,
                    "prm": c.prm.to_string(),
                    "key_ratio": f64::from(*u) / per_one,
                    "allocated_kwh": p.allocated_kwh.get(&c.id),
                    "consumed_kwh": p.consumption_kwh.get(&c.id),
                })).collect::<Vec<_>>()
            }),
        });
        v.to_string()
    }
}

/// Where the ledger lives and where the outbox delivers.
#[derive(Clone, Default)]
pub struct LedgerOptions {
    /// Overrides `ledger.path` (default `<output_dir>/ledger/ped.sqlite`).
    pub path: Option<PathBuf>,
    /// The outbox's destination; without one, files wait in the outbox.
    pub deliver: Option<Arc<dyn crate::dso::delivery::Deliver>>,
    /// Retry schedule; default 1 min doubling up to 1 h, clock time.
    pub backoff: Option<crate::ledger::outbox::Backoff>,
    /// Test-only knob: while it is set, the ledger writer commits nothing,
    /// standing in for a disk that hangs. Polling, control and the closing of
    /// periods must not notice (`tests/daemon_faults/slow_writer.rs`).
    pub writer_hold: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl std::fmt::Debug for LedgerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerOptions")
            .field("path", &self.path)
            .field("deliver", &self.deliver.as_ref().map(|d| d.channel()))
            .finish()
    }
}

/// Delivers what the outbox holds, every real second, in a blocking task.
async fn outbox_task(
    shared: Arc<Shared>,
    path: PathBuf,
    deliver: Option<Arc<dyn crate::dso::delivery::Deliver>>,
    backoff: crate::ledger::outbox::Backoff,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::ledger::{outbox, Ledger};
    let mut ledger: Option<Ledger> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        let l = match ledger.take() {
            Some(l) => l,
            None => match Ledger::open(&path) {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "outbox: ledger not available yet");
                    continue;
                }
            },
        };
        let now = shared.clock.now();
        let d = deliver.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut l = l;
            let attempts = match &d {
                Some(d) => outbox::deliver_due(&mut l, d.as_ref(), now, &backoff),
                None => Ok(Vec::new()),
            };
            let counts = outbox::counts(&mut l);
            (l, attempts, counts)
        });
        let Ok((l, attempts, counts)) = job.await else {
            continue;
        };
        ledger = Some(l);
        match attempts {
            Ok(a) => {
                for a in a {
                    shared
                        .metrics
                        .deliveries
                        .with_label_values(&[a.channel, a.result.as_str()])
                        .inc();
                }
            }
            Err(e) => tracing::error!(error = %e, "outbox: ledger error"),
        }
        if let Ok(c) = counts {
            let m = &shared.metrics.outbox_files;
            m.with_label_values(&["pending"]).set(c.pending as i64);
            m.with_label_values(&["sent"]).set(c.sent as i64);
            m.with_label_values(&["failed"]).set(c.failed as i64);
        }
    }
}

/// Records each new plan and the setpoints it hands to the endpoints in the
/// ledger (its own connection, in a blocking task). The write results per
/// device stay in `ped_setpoint_writes_total` and the logs.
async fn dispatch_recorder(
    shared: Arc<Shared>,
    path: PathBuf,
    mut setpoints: watch::Receiver<BTreeMap<String, Command>>,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::ledger::Ledger;
    let mut ledger: Option<Ledger> = None;
    let mut last_plan: Option<DateTime<Utc>> = None;
    loop {
        tokio::select! {
            r = setpoints.changed() => if r.is_err() { break },
            _ = shutdown.changed() => break,
        }
        let sp: Vec<(String, f64, &'static str)> = setpoints
            .borrow_and_update()
            .iter()
            .map(|(d, c)| match c {
                Command::BatteryPower(kw) | Command::PowerToHeat(kw) => {
                    (d.clone(), kw * 1000.0, "sent")
                }
                Command::Release => (d.clone(), 0.0, "release"),
                // Recorded in percent of rated power, told apart by its state.
                Command::PvLimitPct(pct) => (d.clone(), *pct, "pv_limit_pct"),
            })
            .collect();
        let plan = shared
            .status()
            .plan
            .clone()
            .filter(|p| p.computed_at.is_some() && p.computed_at != last_plan);
        if let Some(p) = &plan {
            last_plan = p.computed_at;
        }
        let now = shared.clock.now();
        let l = ledger.take();
        let path = path.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut l = match l {
                Some(l) => l,
                None => Ledger::open(&path)?,
            };
            let json = plan
                .as_ref()
                .map(|p| serde_json::to_string(p).unwrap_or_default());
            let plan_row = plan.as_ref().zip(json.as_deref()).map(|(p, j)| {
                (
                    p.computed_at.unwrap_or(now),
                    p.status.as_str(),
                    p.objective_eur,
                    j,
                )
            });
            let r = l.record_dispatch(now, plan_row, &sp);
            r.map(|_| l)
        });
        match job.await {
            Ok(Ok(l)) => ledger = Some(l),
            Ok(Err(e)) => {
                shared.metrics.ledger_write_errors.inc();
                tracing::warn!(error = %e, "plan and setpoints not recorded in the ledger");
            }
            Err(_) => {}
        }
    }
}

/// A running daemon. Dropping it does not stop it: call [`Daemon::shutdown`].
pub struct Daemon {
    pub shared: Arc<Shared>,
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, Stage>,
    /// Set when a task failed: releases are then counted as `task_failure`.
    failing: Arc<AtomicBool>,
    lib: Arc<ModelLibrary>,
    events: Arc<handoff::Handoff>,
    setpoints: watch::Receiver<BTreeMap<String, Command>>,
    dry_run: bool,
}

impl Daemon {
    pub async fn start(
        site: Site,
        lib: Arc<ModelLibrary>,
        clock: Clock,
        opts: Options,
    ) -> Result<Daemon, DaemonError> {
        Self::start_with_ledger(site, lib, clock, opts, LedgerOptions::default()).await
    }

    pub async fn start_with_ledger(
        site: Site,
        lib: Arc<ModelLibrary>,
        clock: Clock,
        opts: Options,
        ledger: LedgerOptions,
    ) -> Result<Daemon, DaemonError> {
        for w in crate::config::warnings(&site.config, &lib) {
            tracing::warn!(key = %w.key, fix = %w.fix, "{}", w.message);
        }
        let metrics = Metrics::new(&site.config.site.id)?;
        metrics.precreate(
            site.config
                .devices
                .iter()
                .filter(|d| site.config.control.writes_allowed && !d.writes.is_empty())
                .map(|d| d.id.as_str()),
            ledger.deliver.as_ref().map(|d| d.channel()),
        );
        let output_dir = opts
            .output_dir
            .clone()
            .unwrap_or_else(|| site.config.site.output_dir.clone());
        let ledger_path = ledger
            .path
            .clone()
            .or_else(|| site.config.ledger.path.clone())
            .unwrap_or_else(|| output_dir.join("ledger").join("ped.sqlite"));
        // Before anything starts: a ledger that exists but cannot be resumed
        // from stops ped rather than being replaced by a fresh one.
        crate::ledger::Ledger::check_usable(&ledger_path)?;
        std::fs::create_dir_all(&output_dir).map_err(|e| DaemonError::Output {
            path: output_dir.clone(),
            source: e,
        })?;
        let http_settings = crate::http::Settings::from_config(&site.config.http)?;
        let listen = opts
            .http_listen
            .clone()
            .unwrap_or_else(|| site.config.http.listen.clone());
        let listener =
            tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| DaemonError::Listen {
                    addr: listen.clone(),
                    source: e,
                })?;
        let http_addr = listener.local_addr().map_err(|e| DaemonError::Listen {
            addr: listen.clone(),
            source: e,
        })?;
        let mut status = Status::default();
        for d in &site.config.devices {
            // Series exist from the start, so that rate() and absent() behave before the first fault.
            for kind in ["timeout", "connection", "exception", "protocol", "decode"] {
                metrics
                    .device_errors
                    .with_label_values(&[&d.id, kind])
                    .inc_by(0);
            }
            metrics
                .device_up
                .with_label_values(&[&d.id, d.kind.as_str()])
                .set(0);
            status.devices.insert(
                d.id.clone(),
                DeviceStatus {
                    id: d.id.clone(),
                    kind: d.kind.as_str().into(),
                    stale_after: stale_after(
                        d.interval_ms.unwrap_or(site.config.polling.interval_ms),
                        site.config.polling.timeout_ms,
                    ),
                    ..Default::default()
                },
            );
        }
        // Same for the bounded label values of site-wide counters: a dashboard's
        // increase() then shows 0 rather than "no data" on a healthy site.
        for result in ["ok", "invalid"] {
            metrics
                .key_files_validated
                .with_label_values(&[result])
                .inc_by(0);
        }
        metrics.key_files.with_label_values(&["enedis"]).inc_by(0);
        for reason in [
            crate::metrics::PeriodFallback::CounterReset,
            crate::metrics::PeriodFallback::MissingData,
        ] {
            metrics
                .period_fallbacks
                .with_label_values(&[reason.as_str()])
                .inc_by(0);
        }
        for status in ["optimal", "rule_based"] {
            metrics.plans.with_label_values(&[status]).inc_by(0);
        }
        let shared = Arc::new(Shared {
            site: site.clone(),
            clock,
            metrics,
            status: Mutex::new(status),
            output_dir,
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let kinds = site
            .config
            .devices
            .iter()
            .map(|d| (d.id.clone(), d.kind))
            .collect();
        let handoff = Arc::new(handoff::Handoff::new(site.grid, kinds));
        let (periods_tx, periods_rx) = mpsc::channel::<PeriodRecord>(64);
        let (setpoints_tx, setpoints_rx) = watch::channel(BTreeMap::<String, Command>::new());
        let mut tasks = JoinSet::new();
        let mut names = std::collections::HashMap::new();
        let failing = Arc::new(AtomicBool::new(false));
        let dry_run = opts.dry_run || !site.config.control.writes_allowed;

        {
            let shared = shared.clone();
            let mut rx = shutdown_rx.clone();
            let h = tasks.spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                crate::http::serve(listener, shared, http_settings, stop).await;
            });
            names.insert(h.id(), Stage::Other("http"));
        }
        for (addr, devs) in site.endpoints() {
            let devs: Vec<_> = devs.into_iter().cloned().collect();
            let h = tasks.spawn(endpoint::run(
                endpoint::EndpointTask {
                    addr: addr.clone(),
                    devices: devs.clone(),
                    lib: lib.clone(),
                    shared: shared.clone(),
                    events: handoff.clone(),
                    setpoints: setpoints_rx.clone(),
                    dry_run,
                    failing: failing.clone(),
                },
                shutdown_rx.clone(),
            ));
            names.insert(
                h.id(),
                Stage::Endpoint {
                    addr,
                    devices: devs,
                },
            );
        }
        // Opened (and migrated) before the first poll, so the resume point is known.
        let mut sink = aggregate::Sink::open(ledger_path.clone());
        sink.hold = ledger.writer_hold.clone();
        let h = tasks.spawn(aggregate::run(
            shared.clone(),
            handoff.clone(),
            periods_tx,
            shutdown_rx.clone(),
            sink,
        ));
        names.insert(h.id(), Stage::Other("aggregator"));
        let h = tasks.spawn(dispatch_recorder(
            shared.clone(),
            ledger_path.clone(),
            setpoints_rx.clone(),
            shutdown_rx.clone(),
        ));
        names.insert(h.id(), Stage::Other("dispatch_recorder"));
        let h = tasks.spawn(outbox_task(
            shared.clone(),
            ledger_path,
            ledger.deliver.clone(),
            ledger.backoff.unwrap_or_default(),
            shutdown_rx.clone(),
        ));
        names.insert(h.id(), Stage::Other("outbox"));
        let h = tasks.spawn(planner::run(
            shared.clone(),
            periods_rx,
            setpoints_tx,
            shutdown_rx,
        ));
        names.insert(h.id(), Stage::Other("planner"));
        tracing::info!(
            site = %site.config.site.id,
            devices = site.config.devices.len(),
            participants = site.config.participants.len(),
            http = %http_addr,
            "ped daemon started"
        );
        Ok(Daemon {
            shared,
            http_addr,
            shutdown: shutdown_tx,
            tasks,
            names,
            failing,
            lib,
            events: handoff,
            setpoints: setpoints_rx,
            dry_run,
        })
    }

    /// Runs until `stop` completes (a signal, the end of a simulation), then
    /// stops cleanly; or until a task stops by itself, and then releases
    /// every controlled device, stops the rest and returns the failure.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        let failed = tokio::select! {
            _ = stop => None,
            f = self.next_failure() => Some(f),
        };
        match failed {
            None => {
                self.shutdown().await;
                Ok(())
            }
            Some(f) => Err(self.fail(f).await),
        }
    }

    /// Waits for the first task that stops: before shutdown, any stop is a failure.
    async fn next_failure(&mut self) -> Failure {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            // No task at all: nothing can fail, wait for the stop signal.
            return std::future::pending().await;
        };
        let (id, why) = match joined {
            Ok((id, ())) => (id, "it ended on its own".to_string()),
            Err(e) => {
                let id = e.id();
                let why = if e.is_panic() {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    format!("panicked: {msg}")
                } else {
                    "it was cancelled".to_string()
                };
                (id, why)
            }
        };
        Failure {
            stage: self.names.remove(&id).unwrap_or(Stage::Other("unknown")),
            why,
        }
    }

    /// What supervision does about a failed task: count and log it, release
    /// every controlled device (the dead endpoint's over a fresh connection,
    /// the others by their own tasks on shutdown), stop the rest.
    async fn fail(mut self, f: Failure) -> DaemonError {
        let task = f.stage.name();
        let what = match &f.stage {
            Stage::Endpoint { addr, .. } => format!("endpoint {addr}"),
            Stage::Other(name) => (*name).to_string(),
        };
        crate::events::emit(
            &self.shared.metrics,
            crate::events::TaskFailed {
                task,
                what: &what,
                why: &f.why,
            },
        );
        self.failing.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        if let Stage::Endpoint { addr, devices } = f.stage {
            let orphans = endpoint::EndpointTask {
                addr,
                devices,
                lib: self.lib.clone(),
                shared: self.shared.clone(),
                events: self.events.clone(),
                setpoints: self.setpoints.clone(),
                dry_run: self.dry_run,
                failing: self.failing.clone(),
            };
            if tokio::time::timeout(RELEASE_WITHIN, endpoint::release_orphans(orphans))
                .await
                .is_err()
            {
                tracing::error!(task = %what, "releasing the devices of the stopped endpoint took too long; they fall back by their own revert timers");
            }
        }
        self.join_rest().await;
        DaemonError::TaskFailed {
            task: what,
            why: f.why,
        }
    }

    /// Stops every task; endpoint tasks release their setpoints first.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.join_rest().await;
        tracing::info!("ped daemon stopped");
    }

    async fn join_rest(&mut self) {
        let mut tasks = std::mem::take(&mut self.tasks);
        let joined = tokio::time::timeout(RELEASE_WITHIN, async {
            while let Some(r) = tasks.join_next_with_id().await {
                if let Err(e) = r {
                    let name = self.names.get(&e.id()).map_or("unknown", Stage::name);
                    tracing::error!(task = name, error = %e, "a daemon task failed while stopping");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "tasks still running after {} s: left behind",
                RELEASE_WITHIN.as_secs()
            );
            tasks.detach_all();
        }
    }
}

/// How long stopping may take: releasing devices over slow links included.
const RELEASE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A supervised task, by what it is.
enum Stage {
    /// An endpoint task and what it polls, to release its devices if it dies.
    Endpoint {
        addr: String,
        devices: Vec<crate::config::DeviceConfig>,
    },
    Other(&'static str),
}

impl Stage {
    /// The `task` label of `ped_task_failures_total`.
    fn name(&self) -> &'static str {
        match self {
            Stage::Endpoint { .. } => "endpoint",
            Stage::Other(n) => n,
        }
    }
}

struct Failure {
    stage: Stage,
    why: String,
}

impl Drop for Daemon {
    /// Dropping a daemon leaves its tasks running, as a `JoinHandle` would.
    fn drop(&mut self) {
        self.tasks.detach_all();
    }
}

#[cfg(test)]
mod tests;
