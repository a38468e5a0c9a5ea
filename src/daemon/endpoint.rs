//! One task per Modbus endpoint: a single connection shared by every unit id
//! behind it, requests serialised on it, reconnect with capped exponential
//! backoff. A device that fails degrades alone; a broken connection (timeout,
//! I/O) is dropped and re-opened, because a late answer would otherwise be
//! taken for the next request's.

use super::{Event, Shared, Snapshot};
use crate::config::{DeviceConfig, DeviceKind};
use crate::devices::{self, Block, Command};
use crate::modbus::{sunspec, ModbusClient, ModbusError};
use crate::registers::ModelLibrary;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub struct EndpointTask {
    pub addr: String,
    pub devices: Vec<DeviceConfig>,
    pub lib: Arc<ModelLibrary>,
    pub shared: Arc<Shared>,
    pub events: mpsc::Sender<Event>,
    pub setpoints: watch::Receiver<BTreeMap<String, Command>>,
    pub dry_run: bool,
}

struct DevState {
    cfg: DeviceConfig,
    blocks: Vec<Block>,
    last: Vec<(Block, Vec<u16>)>,
    /// Last command written and when (real time), to refresh before revert timers lapse.
    written: Option<(Command, Instant)>,
}

/// Setpoints are re-sent at least this often, well inside the devices' revert timers.
const REFRESH: Duration = Duration::from_secs(5);

/// A failed poll degrades its device: metrics, and the aggregator is told.
async fn report_down(task: &EndpointTask, d: &DeviceConfig, e: &ModbusError) {
    let m = &task.shared.metrics;
    m.device_errors.with_label_values(&[&d.id, e.kind()]).inc();
    m.device_up
        .with_label_values(&[&d.id, d.kind.as_str()])
        .set(0);
    let _ = task
        .events
        .send(Event::Down {
            device: d.id.clone(),
            kind: e.kind(),
        })
        .await;
}

pub async fn run(task: EndpointTask, mut shutdown: watch::Receiver<bool>) {
    let polling = task.shared.site.config.polling.clone();
    let interval = Duration::from_millis(polling.interval_ms);
    let timeout = Duration::from_millis(polling.timeout_ms);
    let max_backoff = Duration::from_millis(polling.max_backoff_ms);
    let addr: Option<SocketAddr> = tokio::net::lookup_host(&task.addr)
        .await
        .ok()
        .and_then(|mut a| a.next());
    let mut devs: Vec<DevState> = task
        .devices
        .iter()
        .map(|d| DevState {
            cfg: d.clone(),
            blocks: Vec::new(),
            last: Vec::new(),
            written: None,
        })
        .collect();
    let m = &task.shared.metrics;
    let mut backoff = Duration::from_millis(250);
    'outer: loop {
        if *shutdown.borrow() {
            break;
        }
        let client = match addr {
            Some(a) => ModbusClient::connect(a, timeout).await,
            None => Err(ModbusError::Connect(format!(
                "{} does not resolve",
                task.addr
            ))),
        };
        let mut client = match client {
            Ok(c) => {
                backoff = Duration::from_millis(250);
                for d in &devs {
                    m.device_backoff_seconds
                        .with_label_values(&[&d.cfg.id])
                        .set(0.0);
                }
                c
            }
            Err(e) => {
                tracing::warn!(endpoint = %task.addr, error = %e, backoff_ms = backoff.as_millis() as u64, "endpoint unreachable");
                for d in &devs {
                    report_down(&task, &d.cfg, &e).await;
                    m.device_backoff_seconds
                        .with_label_values(&[&d.cfg.id])
                        .set(backoff.as_secs_f64());
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break 'outer,
                }
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    release_all(&task, &mut client, &mut devs).await;
                    break 'outer;
                }
            }
            let setpoints = task.setpoints.borrow().clone();
            for d in devs.iter_mut() {
                if let Err(e) = poll_device(&task, &mut client, d).await {
                    tracing::debug!(device = %d.cfg.id, error = %e, "poll failed");
                    report_down(&task, &d.cfg, &e).await;
                    // A broken link (the client refuses further requests) is re-opened; an
                    // exception or a decode error degrades this device only.
                    if e.breaks_connection() || !client.is_usable() {
                        continue 'outer;
                    }
                    continue;
                }
                if let Some(cmd) = setpoints.get(&d.cfg.id) {
                    if let Err(e) = actuate(&task, &mut client, d, *cmd).await {
                        if e.breaks_connection() || !client.is_usable() {
                            continue 'outer;
                        }
                    }
                }
            }
        }
    }
}

async fn poll_device(
    task: &EndpointTask,
    client: &mut ModbusClient,
    d: &mut DevState,
) -> Result<(), ModbusError> {
    let m = &task.shared.metrics;
    let started = Instant::now();
    if d.blocks.is_empty() {
        let discovered: Vec<(u16, u16)> = if d.cfg.map == "sunspec" {
            sunspec::discover(client, d.cfg.unit)
                .await?
                .into_iter()
                .map(|m| (m.id, m.addr))
                .collect()
        } else {
            Vec::new()
        };
        d.blocks = devices::blocks_for(&d.cfg, &task.lib, &discovered);
        if d.blocks.is_empty() {
            return Err(ModbusError::Protocol(format!(
                "device {} exposes none of the models ped reads for a {}",
                d.cfg.id,
                d.cfg.kind.as_str()
            )));
        }
        tracing::debug!(device = %d.cfg.id, blocks = ?d.blocks.iter().map(|b| b.map_key.as_str()).collect::<Vec<_>>(), "device discovered");
    }
    let table = |b: &Block| {
        task.lib
            .get(&b.map_key)
            .map(|m| m.table)
            .unwrap_or(crate::registers::Table::Holding)
    };
    let mut read = Vec::with_capacity(d.blocks.len());
    for b in &d.blocks {
        let words = client.read(d.cfg.unit, table(b), b.addr, b.len).await?;
        read.push((b.clone(), words));
    }
    let at = task.shared.clock.now();
    let readings = devices::decode_readings(&d.cfg, &task.lib, &read)
        .map_err(|e| ModbusError::Protocol(format!("decode: {e}")))?;
    d.last = read;
    let id = d.cfg.id.as_str();
    m.device_read_seconds
        .with_label_values(&[id])
        .observe(started.elapsed().as_secs_f64());
    m.device_reads.with_label_values(&[id]).inc();
    m.device_up
        .with_label_values(&[id, d.cfg.kind.as_str()])
        .set(1);
    m.device_last_success
        .with_label_values(&[id])
        .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    let _ = task
        .events
        .send(Event::Snapshot(Snapshot {
            device: d.cfg.id.clone(),
            at,
            readings,
        }))
        .await;
    Ok(())
}

async fn actuate(
    task: &EndpointTask,
    client: &mut ModbusClient,
    d: &mut DevState,
    cmd: Command,
) -> Result<(), ModbusError> {
    let due = match d.written {
        Some((prev, at)) => prev != cmd || at.elapsed() >= REFRESH,
        None => true,
    };
    if !due {
        return Ok(());
    }
    let m = &task.shared.metrics;
    let writes = match devices::command_writes(&d.cfg, &task.lib, &d.last, cmd) {
        Ok(w) => w,
        Err(e) => {
            m.setpoint_writes
                .with_label_values(&[&d.cfg.id, "refused"])
                .inc();
            tracing::warn!(device = %d.cfg.id, error = %e, "setpoint refused by the safety envelope");
            d.written = Some((cmd, Instant::now()));
            return Ok(());
        }
    };
    if task.dry_run {
        for w in &writes {
            tracing::info!(device = %d.cfg.id, point = %w.point, value = w.value, addr = w.addr, "dry run: would write");
        }
        m.setpoint_writes
            .with_label_values(&[&d.cfg.id, "dry_run"])
            .inc();
        d.written = Some((cmd, Instant::now()));
        return Ok(());
    }
    let mode = |key: &str| {
        task.lib
            .get(key)
            .map(|m| m.write)
            .unwrap_or(crate::registers::WriteMode::Multiple)
    };
    let map_key = d
        .last
        .iter()
        .find(|(b, _)| b.sunspec_id == Some(704) || b.sunspec_id.is_none())
        .map(|(b, _)| b.map_key.clone())
        .unwrap_or_default();
    for w in &writes {
        if let Err(e) = client
            .write(d.cfg.unit, w.addr, &w.words, mode(&map_key))
            .await
        {
            m.setpoint_writes
                .with_label_values(&[&d.cfg.id, "error"])
                .inc();
            tracing::warn!(device = %d.cfg.id, point = %w.point, error = %e, "setpoint write failed");
            return Err(e);
        }
    }
    m.setpoint_writes
        .with_label_values(&[&d.cfg.id, "ok"])
        .inc();
    let watts = match cmd {
        Command::BatteryPower(kw) | Command::PowerToHeat(kw) => kw * 1000.0,
        Command::Release => 0.0,
    };
    m.setpoint.with_label_values(&[&d.cfg.id]).set(watts);
    d.written = Some((cmd, Instant::now()));
    Ok(())
}

/// On stop: hand controlled devices back to their own safe behaviour.
async fn release_all(task: &EndpointTask, client: &mut ModbusClient, devs: &mut [DevState]) {
    for d in devs.iter_mut() {
        if d.written.is_some()
            && matches!(d.cfg.kind, DeviceKind::Battery | DeviceKind::PowerToHeat)
        {
            d.written = None;
            if let Err(e) = actuate(task, client, d, Command::Release).await {
                tracing::warn!(device = %d.cfg.id, error = %e, "could not release device on stop");
            } else {
                tracing::info!(device = %d.cfg.id, "released to its own control");
            }
        }
    }
}
