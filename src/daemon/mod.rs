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
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

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
    #[error(transparent)]
    Token(#[from] crate::http::auth::TokenError),
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
        self.metrics.render()
    }
    fn ready(&self) -> Result<(), String> {
        let st = self.status();
        if !st.polled_once {
            return Err("no successful poll yet".into());
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
        let st = self.status();
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
            "devices": st.devices.values().collect::<Vec<_>>(),
            // For the status page: the flows now, the last period in kWh, and
            // its keys by participant (key_units alone are in config order).
            "battery_kw": sum("power_kw", "battery"),
            "p2h_kw": sum("power_kw", "power_to_heat"),
            "heat_kw": sum("heat_kw", "heat_meter"),
            "devices_up": st.devices.values().filter(|d| d.up).count(),
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

/// Where the ledger lives and where the outbox delivers (issue 7).
#[derive(Clone, Default)]
pub struct LedgerOptions {
    /// Overrides `ledger.path` (default `<output_dir>/ledger/ped.sqlite`).
    pub path: Option<PathBuf>,
    /// The outbox's destination; without one, files wait in the outbox.
    pub deliver: Option<Arc<dyn crate::dso::delivery::Deliver>>,
    /// Retry schedule; default 1 min doubling up to 1 h, clock time.
    pub backoff: Option<crate::ledger::outbox::Backoff>,
    /// Test-only knob: the ledger writer pauses this long before every period
    /// it commits, standing in for a slow disk. Polling and control must not
    /// notice (`tests/slow_writer.rs`).
    pub writer_delay: Option<std::time::Duration>,
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
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
        for reason in ["counter_reset", "missing_data"] {
            metrics
                .period_fallbacks
                .with_label_values(&[reason])
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
        let mut tasks = Vec::new();

        {
            let shared = shared.clone();
            let mut rx = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                crate::http::serve(listener, shared, http_settings, stop).await;
            }));
        }
        for (addr, devs) in site.endpoints() {
            let devs: Vec<_> = devs.into_iter().cloned().collect();
            tasks.push(tokio::spawn(endpoint::run(
                endpoint::EndpointTask {
                    addr,
                    devices: devs,
                    lib: lib.clone(),
                    shared: shared.clone(),
                    events: handoff.clone(),
                    setpoints: setpoints_rx.clone(),
                    dry_run: opts.dry_run || !site.config.control.writes_allowed,
                },
                shutdown_rx.clone(),
            )));
        }
        // Opened (and migrated) before the first poll, so the resume point is known.
        let mut sink = aggregate::Sink::open(ledger_path.clone());
        sink.slow = ledger.writer_delay.unwrap_or_default();
        tasks.push(tokio::spawn(aggregate::run(
            shared.clone(),
            handoff,
            periods_tx,
            shutdown_rx.clone(),
            sink,
        )));
        tasks.push(tokio::spawn(dispatch_recorder(
            shared.clone(),
            ledger_path.clone(),
            setpoints_rx.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(outbox_task(
            shared.clone(),
            ledger_path,
            ledger.deliver.clone(),
            ledger.backoff.unwrap_or_default(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(planner::run(
            shared.clone(),
            periods_rx,
            setpoints_tx,
            shutdown_rx,
        )));
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
        })
    }

    /// Stops every task; endpoint tasks release their setpoints first.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        tracing::info!("ped daemon stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Backend;
    use std::collections::BTreeSet;

    /// The demo site on a clock slowed almost to a stop, so "now" is fixed.
    pub(super) fn shared() -> Shared {
        let lib = ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
        let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("site-configs/fontaine-douche.toml");
        let site = crate::config::load(&path, &known).unwrap_or_else(|e| panic!("{e}"));
        let origin = chrono::DateTime::parse_from_rfc3339("2025-06-21T12:00:00+02:00")
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc);
        let mut status = Status::default();
        for d in &site.config.devices {
            status.devices.insert(
                d.id.clone(),
                DeviceStatus {
                    id: d.id.clone(),
                    kind: d.kind.as_str().into(),
                    ..Default::default()
                },
            );
        }
        Shared {
            metrics: Metrics::new(&site.config.site.id).unwrap_or_else(|e| panic!("{e}")),
            site,
            clock: Clock::simulated(origin, 1e-9),
            status: Mutex::new(status),
            output_dir: PathBuf::from("unused"),
        }
    }

    fn plan_at(s: &Shared, age: chrono::Duration) -> PlanView {
        PlanView {
            status: "optimal".into(),
            computed_at: Some(s.clock.now() - age),
            pv_kw: vec![1.0; 96],
            battery_kw: vec![0.0; 96],
            p2h_kw: vec![0.0; 96],
            ..Default::default()
        }
    }

    #[test]
    fn ready_needs_a_poll_and_a_fresh_plan_and_the_metric_agrees() {
        let s = shared();
        let gauge = |s: &Shared| {
            let text = s.metrics();
            text.lines()
                .find(|l| l.starts_with("ped_ready{"))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(s.ready(), Err("no successful poll yet".into()));
        assert_eq!(gauge(&s).as_deref(), Some("0"));
        s.status().polled_once = true;
        assert_eq!(s.ready(), Err("no plan yet".into()));
        let step = s.site.grid.step();
        s.status().plan = Some(plan_at(&s, step));
        assert_eq!(s.ready(), Ok(()));
        assert_eq!(gauge(&s).as_deref(), Some("1"));
        // Older than three settlement steps: stale.
        s.status().plan = Some(plan_at(&s, step * 3 + chrono::Duration::seconds(1)));
        let err = s.ready().unwrap_err();
        assert!(err.starts_with("plan is stale"), "{err}");
        assert_eq!(gauge(&s).as_deref(), Some("0"));
    }

    #[test]
    fn status_json_carries_the_flows_the_keys_by_participant_and_readiness() {
        let s = shared();
        {
            let mut st = s.status();
            st.polled_once = true;
            for d in st.devices.values_mut() {
                d.up = d.kind != "meter" || d.id.ends_with('1');
                let reading = match d.kind.as_str() {
                    "pv_inverter" => "production_kw",
                    "heat_meter" => "heat_kw",
                    _ => "power_kw",
                };
                d.readings.insert(reading.into(), 2.0);
            }
            let participants = &s.site.config.participants;
            st.last_period = Some(PeriodRecord {
                start: s.clock.now(),
                start_local: "2025-06-21T11:45:00+02:00".into(),
                production_kwh: BTreeMap::new(),
                consumption_kwh: participants.iter().map(|p| (p.id.clone(), 1.0)).collect(),
                allocated_kwh: participants.iter().map(|p| (p.id.clone(), 0.5)).collect(),
                key_units: (0..participants.len() as u32).collect(),
                total_production_kwh: 100.0,
                total_consumption_kwh: 200.0,
                self_consumed_kwh: 60.0,
                surplus_kwh: 40.0,
                quality: "measured".into(),
                policy: "prorata".into(),
            });
        }
        let v: serde_json::Value =
            serde_json::from_str(&s.status_json()).unwrap_or_else(|e| panic!("{e}"));
        let count = |kind: &str| {
            s.site
                .config
                .devices
                .iter()
                .filter(|d| d.kind.as_str() == kind)
                .count() as f64
        };
        assert_eq!(v["pv_kw"], 2.0 * count("pv_inverter"));
        assert_eq!(v["battery_kw"], 2.0 * count("battery"));
        assert_eq!(v["p2h_kw"], 2.0 * count("power_to_heat"));
        assert_eq!(v["heat_kw"], 2.0 * count("heat_meter"));
        assert_eq!(v["self_consumption_ratio"], 0.6);
        assert_eq!(v["self_sufficiency_ratio"], 0.3);
        assert_eq!(v["last_period_kwh"]["surplus"], 40.0);
        assert_eq!(v["ready"], "no plan yet");
        let up = s.status().devices.values().filter(|d| d.up).count();
        assert_eq!(v["devices_up"], up);
        assert!(up < s.site.config.devices.len());
        let keys = v["last_keys_by_participant"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"));
        assert_eq!(keys.len(), s.site.config.participants.len());
        let per_one = f64::from(s.site.config.keys.units_per_one);
        for (i, (k, p)) in keys.iter().zip(&s.site.config.participants).enumerate() {
            assert_eq!(k["participant"], p.id.as_str());
            assert_eq!(k["prm"], p.prm.to_string());
            assert_eq!(k["key_ratio"], i as f64 / per_one);
            assert_eq!(k["allocated_kwh"], 0.5);
        }
    }
}
