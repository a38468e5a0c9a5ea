//! One task per Modbus endpoint: a single connection shared by every unit id
//! behind it, requests serialised on it. Scheduling is per device (unit id):
//! each has its own interval and its own capped exponential backoff, so a dead
//! unit behind a gateway costs one timeout per its backoff period and the
//! others keep their rate. A broken connection (timeout, I/O, a response that
//! does not match its request) is dropped and re-opened with capped backoff,
//! because a late answer would otherwise be taken for the next request's.
//!
//! Control goes through a safety envelope: bounds and ramp limits before every
//! write, read-back after it, setpoints refreshed well inside the device's
//! revert timer, and release to the device's own safe mode on stop, on plan
//! loss and after lost contact.

use super::{handoff::Handoff, Shared, Snapshot};
use crate::config::{DeviceConfig, DeviceKind, Transport};
use crate::devices::{self, Command, PollPlan};
use crate::events::{self, ReleaseReason};
use crate::modbus::{sunspec, Framing, Link, ModbusClient, ModbusError, SerialLine};
use crate::registers::ModelLibrary;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct EndpointTask {
    pub addr: String,
    pub devices: Vec<DeviceConfig>,
    pub lib: Arc<ModelLibrary>,
    pub shared: Arc<Shared>,
    /// Never waits: polling must not depend on how fast readings are consumed.
    pub events: Arc<Handoff>,
    pub setpoints: watch::Receiver<BTreeMap<String, Command>>,
    pub dry_run: bool,
    /// Set by the supervisor when another task failed: the releases on the
    /// way out are counted as `task_failure`, not as an ordinary `stop`.
    pub failing: Arc<AtomicBool>,
}

struct DevState {
    cfg: DeviceConfig,
    plan: Option<PollPlan>,
    last: Vec<(devices::Block, Vec<u16>)>,
    /// Last command written and when (real time), to refresh before revert timers lapse.
    written: Option<(Command, Instant)>,
    /// Last power actually written, kW, for the ramp limit; `None` = the device
    /// is in its own mode, taken as 0 kW.
    last_kw: Option<(f64, Instant)>,
    interval: Duration,
    next_due: Instant,
    failures: u32,
    /// Writes in a row whose read-back differed from what was written.
    mismatches: u32,
    /// After a release for read-back mismatches: no setpoint before then.
    held_until: Option<Instant>,
}

/// Default device watchdog when the config gives none; setpoints are re-sent at a third of it.
const DEFAULT_REVERT: Duration = Duration::from_secs(15);
/// Failed polls in a row after which a controlled device counts as lost: it has
/// reverted by itself, and ped starts again from its safe mode when it returns.
const CONTACT_LOST_AFTER: u32 = 3;
/// First reconnect delay of the endpoint's connection.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Writes in a row whose read-back differs, after which the device is taken
/// not to follow ped (another controller, a local mode, a wrong map): it is
/// released rather than driven blind.
const MISMATCHES_BEFORE_RELEASE: u32 = 3;

impl DevState {
    fn new(cfg: DeviceConfig, interval: Duration, next_due: Instant) -> DevState {
        DevState {
            cfg,
            plan: None,
            last: Vec::new(),
            written: None,
            last_kw: None,
            interval,
            next_due,
            failures: 0,
            mismatches: 0,
            held_until: None,
        }
    }

    fn refresh(&self) -> Duration {
        // `check` bounds the setting; one that is not a duration falls back
        // to the default rather than panicking the endpoint task.
        self.cfg
            .revert_timeout_s
            .and_then(crate::config::duration_s)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_REVERT)
            / 3
    }

    fn backoff(&self, max: Duration) -> Duration {
        let exp = self.failures.saturating_sub(1).min(16);
        let cap = max.max(self.interval);
        self.interval
            .checked_mul(2u32.saturating_pow(exp + 1))
            .map_or(cap, |b| b.min(cap))
    }
}

/// `at + by`, or a day after `at` where the sum would overflow an `Instant`
/// (`check` keeps intervals far below that).
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(at)
}

/// A failed poll degrades its device only: its metrics, and the aggregator
/// is told.
fn report_down(task: &EndpointTask, d: &DevState, e: &ModbusError, backoff: Duration) {
    events::emit(
        &task.shared.metrics,
        events::PollFailed {
            device: &d.cfg.id,
            kind: d.cfg.kind.as_str(),
            error: e,
            failures: d.failures,
            backoff,
        },
    );
    task.events.down(&d.cfg.id, e.kind());
}

fn controlled(d: &DeviceConfig) -> bool {
    matches!(
        d.kind,
        DeviceKind::Battery | DeviceKind::PowerToHeat | DeviceKind::PvInverter
    )
}

pub async fn run(task: EndpointTask, mut shutdown: watch::Receiver<bool>) {
    let polling = task.shared.site.config.polling.clone();
    let default_interval = Duration::from_millis(polling.interval_ms);
    let timeout = Duration::from_millis(polling.timeout_ms);
    let max_backoff = Duration::from_millis(polling.max_backoff_ms);
    let plan_loss = chrono::Duration::try_minutes(
        i64::from(task.shared.site.config.site.settlement_minutes)
            * i64::from(task.shared.site.config.control.plan_loss_steps.unwrap_or(2)),
    )
    .unwrap_or(chrono::Duration::MAX);
    let link = link_of(&task).await;
    let start = Instant::now();
    let mut devs: Vec<DevState> = task
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let interval = d
                .interval_ms
                .map(Duration::from_millis)
                .unwrap_or(default_interval);
            // Spread first polls over the interval so units behind a gateway
            // do not all fall due in the same instant.
            let spread = interval.checked_mul(i as u32).unwrap_or(interval)
                / task.devices.len().max(1) as u32;
            let next_due = later(start, spread);
            DevState::new(d.clone(), interval, next_due)
        })
        .collect();
    let m = &task.shared.metrics;
    let mut setpoints_rx = task.setpoints.clone();
    let mut plan_at = task.shared.clock.now();
    let mut plan_lost = false;
    let mut backoff = MIN_BACKOFF;
    'outer: loop {
        if *shutdown.borrow() {
            break;
        }
        let client = match &link {
            Some(l) => ModbusClient::open(l, timeout).await,
            None => Err(ModbusError::Connect(format!(
                "{} does not resolve",
                task.addr
            ))),
        };
        let mut client = match client {
            Ok(c) => {
                backoff = MIN_BACKOFF;
                c
            }
            Err(e) => {
                tracing::warn!(endpoint = %task.addr, error = %e, backoff_ms = backoff.as_millis() as u64, "endpoint unreachable");
                for d in devs.iter_mut() {
                    d.failures += 1;
                    report_down(&task, d, &e, backoff);
                    note_contact(&task, d);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break 'outer,
                }
                backoff = backoff.saturating_mul(2).min(max_backoff.max(MIN_BACKOFF));
                continue;
            }
        };
        loop {
            let next = devs
                .iter()
                .map(|d| d.next_due)
                .min()
                .unwrap_or_else(|| later(Instant::now(), default_interval));
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.changed() => {
                    let reason = if task.failing.load(Ordering::SeqCst) { ReleaseReason::TaskFailure } else { ReleaseReason::Stop };
                    release_all(&task, &mut client, &mut devs, reason).await;
                    break 'outer;
                }
            }
            if setpoints_rx.has_changed().unwrap_or(false) {
                setpoints_rx.borrow_and_update();
                plan_at = task.shared.clock.now();
                if plan_lost {
                    tracing::info!(endpoint = %task.addr, "fresh plan: control resumes");
                }
                plan_lost = false;
            }
            let mut setpoints = setpoints_rx.borrow().clone();
            if !setpoints.is_empty() && task.shared.clock.now() - plan_at > plan_loss {
                if !plan_lost {
                    let released: Vec<&str> = devs
                        .iter()
                        .map(|d| d.cfg.id.as_str())
                        .filter(|id| setpoints.contains_key(*id))
                        .collect();
                    events::emit(
                        m,
                        events::PlanLost {
                            endpoint: &task.addr,
                            last_plan: plan_at,
                            devices: &released,
                        },
                    );
                }
                plan_lost = true;
                for v in setpoints.values_mut() {
                    *v = Command::Release;
                }
            }
            for d in devs.iter_mut() {
                let now = Instant::now();
                if d.next_due > now {
                    continue;
                }
                let mut result = poll_device(&task, &mut client, d).await;
                if let (Err(ModbusError::Io(_)), Some(l)) = (&result, &link) {
                    // A connection the peer closed while it sat idle (a device
                    // restart, a gateway's idle timeout) fails on first use:
                    // retry once on a fresh one before counting a failure.
                    // The old one goes first: a serial port opens exclusively.
                    client.close();
                    if let Ok(c) = ModbusClient::open(l, timeout).await {
                        client = c;
                        result = poll_device(&task, &mut client, d).await;
                    }
                }
                match result {
                    Ok(()) => {
                        d.failures = 0;
                        d.next_due = later(d.next_due, d.interval);
                        if d.next_due <= now {
                            // Late (a slow neighbour, a reconnect): keep the rate, skip the backlog.
                            d.next_due = later(now, d.interval);
                        }
                    }
                    Err(e) => {
                        d.failures += 1;
                        let wait = d.backoff(max_backoff);
                        d.next_due = later(Instant::now(), wait);
                        report_down(&task, d, &e, wait);
                        note_contact(&task, d);
                        // A broken link (the client refuses further requests) is re-opened; an
                        // exception or a decode error degrades this device only.
                        if e.breaks_connection() || !client.is_usable() {
                            continue 'outer;
                        }
                        continue;
                    }
                }
                if let Some(cmd) = setpoints.get(&d.cfg.id) {
                    if let Err(e) = actuate(&task, &mut client, d, *cmd).await {
                        if e.breaks_connection() || !client.is_usable() {
                            continue 'outer;
                        }
                    }
                    if super::fault_panic("endpoint", Some(&d.cfg.id))
                        && d.last_kw.is_some_and(|(kw, _)| kw != 0.0)
                        && driven(&task, &d.cfg.id)
                    {
                        panic!("PED_FAULT_PANIC: endpoint task of {} panics while it drives the device", d.cfg.id);
                    }
                }
            }
        }
    }
}

/// The device reports that it follows a setpoint (its power read back is not 0).
fn driven(task: &EndpointTask, id: &str) -> bool {
    task.shared
        .status()
        .devices
        .get(id)
        .and_then(|d| d.readings.get("power_kw"))
        .is_some_and(|kw| kw.abs() > 0.5)
}

/// How to reach this endpoint: the serial line of its first device for
/// `transport = "rtu"` (`ped check` makes every device on a port agree), else
/// the TCP address, resolved once. `None` when the address does not resolve.
async fn link_of(task: &EndpointTask) -> Option<Link> {
    let first = task.devices.first()?;
    if first.transport == Transport::Rtu {
        let line = first.serial.clone().unwrap_or_default();
        return Some(Link::Serial(SerialLine::from_config(&task.addr, &line)));
    }
    let framing = match first.transport {
        Transport::RtuOverTcp => Framing::Rtu,
        _ => Framing::Tcp,
    };
    let addr: SocketAddr = tokio::net::lookup_host(&task.addr).await.ok()?.next()?;
    Some(Link::Tcp { addr, framing })
}

/// After [`CONTACT_LOST_AFTER`] failed polls a controlled device has reverted
/// by its own watchdog: forget what was written, so that control restarts from
/// its safe mode (full write, ramp from 0) when it answers again.
fn note_contact(task: &EndpointTask, d: &mut DevState) {
    if d.failures == CONTACT_LOST_AFTER && d.written.is_some() {
        events::emit(
            &task.shared.metrics,
            events::ContactLost { device: &d.cfg.id },
        );
        d.written = None;
        d.last_kw = None;
    }
}

async fn poll_device(
    task: &EndpointTask,
    client: &mut ModbusClient,
    d: &mut DevState,
) -> Result<(), ModbusError> {
    let m = &task.shared.metrics;
    let started = Instant::now();
    if d.plan.is_none() {
        let discovered = if d.cfg.map == "sunspec" {
            sunspec::discover(client, d.cfg.unit).await?
        } else {
            Vec::new()
        };
        let ids: Vec<(u16, u16)> = discovered.iter().map(|m| (m.id, m.addr)).collect();
        let mut blocks = devices::blocks_for(&d.cfg, &task.lib, &ids);
        // Each SunSpec block ends where the device says its model ends: a
        // shorter (older) model is followed by the next one, which ped's own
        // longer definition would read and write into.
        for b in blocks.iter_mut() {
            let declared = discovered
                .iter()
                .find(|m| Some(m.id) == b.sunspec_id && m.addr == b.addr)
                .map(|m| m.block_len());
            if let Some(len) = declared.filter(|len| *len < b.len) {
                tracing::info!(device = %d.cfg.id, model = ?b.sunspec_id, declared_words = len, ped_words = b.len, "the device declares a shorter model than ped knows: points past its end are unavailable and never written");
                b.len = len;
            }
        }
        if blocks.is_empty() {
            return Err(ModbusError::Protocol(format!(
                "device {} exposes none of the models ped reads for a {}",
                d.cfg.id,
                d.cfg.kind.as_str()
            )));
        }
        let plan = devices::poll_plan(&d.cfg, &task.lib, blocks)
            .map_err(|e| ModbusError::Decode(format!("poll plan of {}: {e}", d.cfg.id)))?;
        tracing::debug!(device = %d.cfg.id, blocks = ?plan.blocks.iter().map(|b| b.map_key.as_str()).collect::<Vec<_>>(), reads = ?plan.reads, "device discovered, poll plan built");
        d.plan = Some(plan);
    }
    let Some(plan) = d.plan.as_ref() else {
        return Ok(());
    };
    let mut answers = Vec::with_capacity(plan.reads.len());
    for r in &plan.reads {
        answers.push(client.read(d.cfg.unit, r.table, r.addr, r.len).await?);
        m.device_poll_reads.with_label_values(&[&d.cfg.id]).inc();
    }
    let read = devices::assemble(plan, &task.lib, &answers);
    let at = task.shared.clock.now();
    let readings = devices::decode_readings(&d.cfg, &task.lib, &read)
        .map_err(|e| ModbusError::Decode(e.to_string()))?;
    d.last = read;
    let id = d.cfg.id.as_str();
    events::emit(
        m,
        events::PollSucceeded {
            device: id,
            kind: d.cfg.kind.as_str(),
            elapsed: started.elapsed(),
        },
    );
    if let Some(st) = task.shared.status().devices.get_mut(id) {
        st.polled_ok = Some(Instant::now());
    }
    task.events.push(Snapshot {
        device: d.cfg.id.clone(),
        at,
        readings,
    });
    Ok(())
}

/// The allowed range of power setpoints, kW in ped's convention: the
/// intersection of the device's ratings and its configured setpoint limits.
/// `None` when they do not overlap (or a limit is not a number): no power
/// setpoint is safe then, and the device is released instead. Never widened
/// to make room: a range pushed open by one bound writes past the other.
fn bounds(cfg: &DeviceConfig) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = match cfg.kind {
        DeviceKind::Battery => (
            -cfg.max_discharge_kw.unwrap_or(0.0),
            cfg.max_charge_kw.unwrap_or(0.0),
        ),
        DeviceKind::PowerToHeat => (0.0, cfg.max_power_kw.unwrap_or(0.0)),
        _ => (f64::NEG_INFINITY, f64::INFINITY),
    };
    let limits = [cfg.setpoint_min_kw, cfg.setpoint_max_kw];
    if limits.iter().flatten().any(|x| x.is_nan()) {
        return None;
    }
    if let Some(l) = cfg.setpoint_min_kw {
        lo = lo.max(l);
    }
    if let Some(h) = cfg.setpoint_max_kw {
        hi = hi.min(h);
    }
    // A NaN rating fails the comparison: no range.
    (lo <= hi).then_some((lo, hi))
}

/// Applies the safety envelope to a power command: bounds, then the ramp limit
/// from the last power written. Returns the command to write.
fn envelope(task: &EndpointTask, d: &DevState, cmd: Command) -> Command {
    let m = &task.shared.metrics;
    let (kw, make): (f64, fn(f64) -> Command) = match cmd {
        Command::BatteryPower(kw) => (kw, Command::BatteryPower),
        Command::PowerToHeat(kw) => (kw, Command::PowerToHeat),
        other => return other,
    };
    let Some((lo, hi)) = bounds(&d.cfg) else {
        if d.written.map_or(true, |(prev, _)| prev != cmd) {
            events::emit(
                m,
                events::NoSafeSetpoint {
                    device: &d.cfg.id,
                    asked_kw: kw,
                    setpoint_min_kw: d.cfg.setpoint_min_kw,
                    setpoint_max_kw: d.cfg.setpoint_max_kw,
                },
            );
        }
        return Command::Release;
    };
    let clamped = |clamp| {
        events::emit(
            m,
            events::SetpointClamped {
                device: &d.cfg.id,
                clamp,
            },
        )
    };
    let mut out = kw.clamp(lo, hi);
    if out != kw {
        clamped(events::Clamp::Bound {
            asked_kw: kw,
            written_kw: out,
            min_kw: lo,
            max_kw: hi,
            log: d.written.map_or(true, |(prev, _)| prev != cmd),
        });
    }
    if let Some(rate) = d.cfg.ramp_kw_per_s {
        let (prev, at) = d.last_kw.unwrap_or((0.0, Instant::now()));
        // Real time since the last write: the ramp is a physical rate.
        let step = rate * at.elapsed().as_secs_f64();
        let ramped = out.clamp(prev - step, prev + step);
        if ramped != out {
            clamped(events::Clamp::Ramp {
                target_kw: out,
                written_kw: ramped,
                ramp_kw_per_s: rate,
            });
            out = ramped;
        }
    }
    make(out)
}

fn command_kw(cmd: Command) -> Option<f64> {
    match cmd {
        Command::BatteryPower(kw) | Command::PowerToHeat(kw) => Some(kw),
        _ => None,
    }
}

async fn actuate(
    task: &EndpointTask,
    client: &mut ModbusClient,
    d: &mut DevState,
    cmd: Command,
) -> Result<(), ModbusError> {
    // Still ramping towards the target: write again even if the plan did not change.
    let ramping = d.cfg.ramp_kw_per_s.is_some()
        && match command_kw(cmd) {
            Some(target) => match bounds(&d.cfg) {
                Some((lo, hi)) => {
                    let from = d.last_kw.map_or(0.0, |(kw, _)| kw);
                    (target.clamp(lo, hi) - from).abs() > 1e-9
                }
                None => false,
            },
            None => false,
        };
    let due = match d.written {
        // A release needs no refresh: the device's own mode has no watchdog.
        Some((prev, at)) => {
            prev != cmd || ramping || (cmd != Command::Release && at.elapsed() >= d.refresh())
        }
        None => true,
    };
    if !due {
        return Ok(());
    }
    if cmd != Command::Release {
        match d.held_until {
            Some(t) if Instant::now() < t => return Ok(()),
            Some(_) => {
                d.held_until = None;
                tracing::info!(device = %d.cfg.id, "trying the device's setpoint again after releasing it for read-back mismatches");
            }
            None => {}
        }
    }
    let m = &task.shared.metrics;
    let effective = envelope(task, d, cmd);
    let mut writes = match devices::command_writes(&d.cfg, &task.lib, &d.last, effective) {
        Ok(w) => w,
        Err(e) => {
            events::emit(
                m,
                events::SetpointRefused {
                    device: &d.cfg.id,
                    error: &e,
                },
            );
            d.written = Some((cmd, Instant::now()));
            return Ok(());
        }
    };
    // The device's own revert timer is written when it does not hold ped's
    // value yet: on the first command of a connection (the poll before it read
    // the point) and whenever a read shows that someone changed it.
    writes.retain(|w| !(w.timer && devices::device_holds(&d.last, w)));
    if let Some(w) = writes.iter().find(|w| w.timer) {
        tracing::info!(device = %d.cfg.id, point = %w.point, seconds = w.value, "setting the device's own revert timer");
    }
    let kw_written = command_kw(effective);
    if task.dry_run {
        for w in &writes {
            tracing::info!(device = %d.cfg.id, point = %w.point, value = w.value, addr = w.addr, "dry run: would write");
        }
        events::emit(
            m,
            events::SetpointWritten {
                device: &d.cfg.id,
                result: events::WriteResult::DryRun,
            },
        );
        d.written = Some((cmd, Instant::now()));
        d.last_kw = kw_written.map(|kw| (kw, Instant::now()));
        return Ok(());
    }
    for w in &writes {
        if let Err(e) = client
            .write(d.cfg.unit, w.addr, &w.words, write_mode(task, w))
            .await
        {
            events::emit(
                m,
                events::SetpointWriteFailed {
                    device: &d.cfg.id,
                    point: &w.point,
                    error: &e,
                },
            );
            return Err(e);
        }
    }
    let differ = read_back(task, client, d, &writes).await?;
    let watts = kw_written.unwrap_or(0.0) * 1000.0;
    m.setpoint.with_label_values(&[&d.cfg.id]).set(watts);
    d.written = Some((cmd, Instant::now()));
    d.last_kw = kw_written.map(|kw| (kw, Instant::now()));
    // A release that does not read back is not repeated: the device's own
    // revert timer is the last resort then. A setpoint the device did not
    // take is a failed write, not a success.
    events::emit(
        m,
        events::SetpointWritten {
            device: &d.cfg.id,
            result: if differ {
                events::WriteResult::ReadbackMismatch
            } else {
                events::WriteResult::Ok
            },
        },
    );
    if effective == Command::Release {
        return Ok(());
    }
    if !differ {
        d.mismatches = 0;
        return Ok(());
    }
    d.mismatches += 1;
    if d.mismatches >= MISMATCHES_BEFORE_RELEASE {
        events::emit(
            m,
            events::SetpointsNotTaken {
                device: &d.cfg.id,
                writes: d.mismatches,
                retry: d.refresh() / 2,
            },
        );
        d.held_until = Some(later(Instant::now(), d.refresh() / 2));
        d.written = None;
        let release = devices::command_writes(&d.cfg, &task.lib, &d.last, Command::Release);
        match release {
            Ok(ws) => {
                for w in ws.iter().filter(|w| !w.timer) {
                    client
                        .write(d.cfg.unit, w.addr, &w.words, write_mode(task, w))
                        .await?;
                }
                d.written = Some((Command::Release, Instant::now()));
                d.last_kw = None;
            }
            Err(e) => {
                tracing::warn!(device = %d.cfg.id, error = %e, "release refused by the safety envelope");
            }
        }
    }
    Ok(())
}

fn write_mode(task: &EndpointTask, w: &devices::Write) -> crate::registers::WriteMode {
    task.lib
        .get(&w.map_key)
        .map(|m| m.write)
        .unwrap_or(crate::registers::WriteMode::Multiple)
}

/// Reads every written point back and compares it with what was written,
/// within one step of its scale factor (a device may round or clamp).
/// Returns whether any point differs.
async fn read_back(
    task: &EndpointTask,
    client: &mut ModbusClient,
    d: &DevState,
    writes: &[devices::Write],
) -> Result<bool, ModbusError> {
    let mut differ = false;
    for w in writes {
        let Some(map) = task.lib.get(&w.map_key) else {
            continue;
        };
        let back = client
            .read(d.cfg.unit, map.table, w.addr, w.words.len() as u16)
            .await?;
        match devices::readback_matches(&task.lib, &d.last, w, &back) {
            Ok(true) => {}
            Ok(false) => {
                differ = true;
                events::emit(
                    &task.shared.metrics,
                    events::ReadbackDiffers {
                        device: &d.cfg.id,
                        point: &w.point,
                        read_back: events::ReadBack::Differs {
                            written: &w.words,
                            read: &back,
                        },
                    },
                );
            }
            Err(e) => {
                differ = true;
                events::emit(
                    &task.shared.metrics,
                    events::ReadbackDiffers {
                        device: &d.cfg.id,
                        point: &w.point,
                        read_back: events::ReadBack::Undecodable(&e),
                    },
                );
            }
        }
    }
    Ok(differ)
}

/// After the task that polled these devices died: a fresh connection, each
/// controlled device read once (a SunSpec device's model addresses and scale
/// factors are needed to address the release), then released. What that task
/// last wrote is unknown, so every controlled device with writes is released.
pub async fn release_orphans(task: EndpointTask) {
    if task.dry_run {
        return;
    }
    let polling = &task.shared.site.config.polling;
    let timeout = Duration::from_millis(polling.timeout_ms);
    let mut devs: Vec<DevState> = task
        .devices
        .iter()
        .filter(|d| controlled(d) && !d.writes.is_empty())
        .map(|d| DevState::new(d.clone(), Duration::ZERO, Instant::now()))
        .collect();
    if devs.is_empty() {
        return;
    }
    let Some(link) = link_of(&task).await else {
        tracing::error!(endpoint = %task.addr, "cannot release the devices of the stopped endpoint: the address does not resolve");
        return;
    };
    let mut client = match ModbusClient::open(&link, timeout).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(endpoint = %task.addr, error = %e, "cannot release the devices of the stopped endpoint: no connection; they fall back by their own revert timers");
            return;
        }
    };
    for d in devs.iter_mut() {
        if let Err(e) = poll_device(&task, &mut client, d).await {
            tracing::error!(device = %d.cfg.id, error = %e, "cannot read the device to release it; it falls back by its own revert timer");
            continue;
        }
        release_one(&task, &mut client, d, ReleaseReason::TaskFailure).await;
    }
}

/// On stop: hand controlled devices back to their own safe behaviour.
async fn release_all(
    task: &EndpointTask,
    client: &mut ModbusClient,
    devs: &mut [DevState],
    reason: ReleaseReason,
) {
    for d in devs.iter_mut() {
        if d.written.is_some() && controlled(&d.cfg) {
            release_one(task, client, d, reason).await;
        }
    }
}

async fn release_one(
    task: &EndpointTask,
    client: &mut ModbusClient,
    d: &mut DevState,
    reason: ReleaseReason,
) {
    d.written = None;
    if let Err(e) = actuate(task, client, d, Command::Release).await {
        tracing::warn!(device = %d.cfg.id, error = %e, reason = reason.as_str(), "could not release the device");
    } else {
        events::emit(
            &task.shared.metrics,
            events::Released {
                device: &d.cfg.id,
                reason,
            },
        );
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
