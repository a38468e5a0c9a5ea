//! Device kinds as typed readings and commands over register maps. No I/O here:
//! `daemon` reads the blocks and hands them to [`decode_readings`]; commands
//! become register words with [`command_writes`].
//!
//! Which point of which map feeds which reading is a table per kind
//! ([`bindings`]): a SunSpec device is bound through the models it exposes, a
//! vendor device through the map named in the site config, so a new vendor
//! model is a file in `models/` that uses the same point names.

use crate::config::{DeviceConfig, DeviceKind};
use crate::registers::{ModelLibrary, RegisterMap};
use std::collections::BTreeMap;

/// Where a reading comes from.
#[derive(Debug, Clone, Copy)]
pub enum MapSel {
    /// The first of these SunSpec models the device exposes.
    SunSpec(&'static [u16]),
    /// The vendor map named in the device's config.
    Configured,
}

#[derive(Debug, Clone, Copy)]
pub struct Binding {
    /// Reading name inside ped (stable: metrics and the ledger use it).
    pub reading: &'static str,
    pub map: MapSel,
    pub point: &'static str,
    /// Multiplier from the point's engineering unit to ped's (W → kW: 0.001).
    pub factor: f64,
    /// Power readings follow the device's sign convention.
    pub signed_power: bool,
    /// Monotonic energy counters (used for period energies).
    pub counter: bool,
}

const fn b(reading: &'static str, map: MapSel, point: &'static str, factor: f64) -> Binding {
    Binding {
        reading,
        map,
        point,
        factor,
        signed_power: false,
        counter: false,
    }
}
const fn counter(reading: &'static str, map: MapSel, point: &'static str, factor: f64) -> Binding {
    Binding {
        reading,
        map,
        point,
        factor,
        signed_power: false,
        counter: true,
    }
}
const fn power(reading: &'static str, map: MapSel, point: &'static str, factor: f64) -> Binding {
    Binding {
        reading,
        map,
        point,
        factor,
        signed_power: true,
        counter: false,
    }
}

const INVERTER: &[u16] = &[103, 102, 101];
const METER: &[u16] = &[203, 202, 201, 204];

static PV: &[Binding] = &[
    b("production_kw", MapSel::SunSpec(INVERTER), "W", 0.001),
    counter("production_kwh", MapSel::SunSpec(INVERTER), "WH", 0.001),
    b("dc_kw", MapSel::SunSpec(INVERTER), "DCW", 0.001),
    b("cabinet_c", MapSel::SunSpec(INVERTER), "TmpCab", 1.0),
    b("rated_kw", MapSel::SunSpec(&[120]), "WRtg", 0.001),
    b("limit_pct", MapSel::SunSpec(&[123]), "WMaxLimPct", 1.0),
];
static BATTERY: &[Binding] = &[
    b("soc_pct", MapSel::SunSpec(&[802]), "SoC", 1.0),
    power("power_kw", MapSel::SunSpec(&[802]), "W", 0.001),
    b("capacity_kwh", MapSel::SunSpec(&[802]), "WHRtg", 0.001),
    power("setpoint_kw", MapSel::SunSpec(&[704]), "WSet", 0.001),
    counter("import_kwh", MapSel::SunSpec(METER), "TotWhImp", 0.001),
    counter("export_kwh", MapSel::SunSpec(METER), "TotWhExp", 0.001),
    // A battery with a vendor map: the same readings under ped's point names.
    b("soc_pct", MapSel::Configured, "soc_pct", 1.0),
    power("power_kw", MapSel::Configured, "power_kw", 1.0),
    b("capacity_kwh", MapSel::Configured, "capacity_kwh", 1.0),
    power("setpoint_kw", MapSel::Configured, "power_setpoint_kw", 1.0),
    counter("import_kwh", MapSel::Configured, "import_kwh", 1.0),
    counter("export_kwh", MapSel::Configured, "export_kwh", 1.0),
];
static METER_B: &[Binding] = &[
    b("power_kw", MapSel::SunSpec(METER), "W", 0.001),
    counter("import_kwh", MapSel::SunSpec(METER), "TotWhImp", 0.001),
    counter("export_kwh", MapSel::SunSpec(METER), "TotWhExp", 0.001),
];
static SUBSTATION: &[Binding] = &[
    b("outdoor_c", MapSel::Configured, "outdoor_temp", 1.0),
    b("flow_c", MapSel::Configured, "flow_temp", 1.0),
    b("return_c", MapSel::Configured, "return_temp", 1.0),
    b("valve_pct", MapSel::Configured, "valve_pct", 1.0),
];
static HEAT_METER: &[Binding] = &[
    b("heat_kw", MapSel::Configured, "power_kw", 1.0),
    counter("heat_kwh", MapSel::Configured, "energy_kwh", 1.0),
    b("flow_m3h", MapSel::Configured, "flow_m3h", 1.0),
    b("flow_c", MapSel::Configured, "t1", 1.0),
    b("return_c", MapSel::Configured, "t2", 1.0),
];
static P2H: &[Binding] = &[
    b("power_kw", MapSel::Configured, "power_kw", 1.0),
    b("setpoint_kw", MapSel::Configured, "power_setpoint_kw", 1.0),
    b("store_kwh", MapSel::Configured, "store_energy_kwh", 1.0),
    b(
        "store_capacity_kwh",
        MapSel::Configured,
        "store_capacity_kwh",
        1.0,
    ),
    b("store_c", MapSel::Configured, "store_temp", 1.0),
    counter("elec_kwh", MapSel::Configured, "elec_energy_kwh", 1.0),
    counter("heat_kwh", MapSel::Configured, "heat_energy_kwh", 1.0),
];

pub fn bindings(kind: DeviceKind) -> &'static [Binding] {
    match kind {
        DeviceKind::PvInverter => PV,
        DeviceKind::Battery => BATTERY,
        DeviceKind::Meter => METER_B,
        DeviceKind::HeatSubstation => SUBSTATION,
        DeviceKind::HeatMeter => HEAT_METER,
        DeviceKind::PowerToHeat => P2H,
    }
}

/// A block of registers ped reads from one device: one map placed at one address.
#[derive(Debug, Clone)]
pub struct Block {
    pub map_key: String,
    pub sunspec_id: Option<u16>,
    pub addr: u16,
    pub len: u16,
}

/// The blocks to poll for a device, given the SunSpec models discovered on it
/// (`(model id, address of its ID register)`), or its configured vendor map.
pub fn blocks_for(dev: &DeviceConfig, lib: &ModelLibrary, discovered: &[(u16, u16)]) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for bind in bindings(dev.kind) {
        let block = match bind.map {
            MapSel::SunSpec(ids) => ids.iter().find_map(|id| {
                let (_, addr) = discovered.iter().find(|(m, _)| m == id)?;
                let map = lib.sunspec(*id)?;
                Some(Block {
                    map_key: map.key.clone(),
                    sunspec_id: Some(*id),
                    addr: *addr,
                    len: map.block_len(),
                })
            }),
            MapSel::Configured => lib.get(&dev.map).map(|map| Block {
                map_key: map.key.clone(),
                sunspec_id: None,
                addr: map.base,
                len: map.block_len(),
            }),
        };
        if let Some(bl) = block {
            if !out.iter().any(|o| o.map_key == bl.map_key) {
                out.push(bl);
            }
        }
    }
    out
}

/// Decoded readings of one device, in ped's units and sign convention.
pub type Readings = BTreeMap<&'static str, f64>;

/// Decodes every bound reading that the given blocks cover. Sentinels ("not
/// implemented") leave the reading out: a missing value is never a number.
pub fn decode_readings(
    dev: &DeviceConfig,
    lib: &ModelLibrary,
    blocks: &[(Block, Vec<u16>)],
) -> Result<Readings, crate::registers::RegisterError> {
    let mut out = Readings::new();
    for bind in bindings(dev.kind) {
        if out.contains_key(bind.reading) {
            continue;
        }
        let found = blocks.iter().find(|(bl, _)| match bind.map {
            MapSel::SunSpec(ids) => bl.sunspec_id.is_some_and(|id| ids.contains(&id)),
            MapSel::Configured => bl.sunspec_id.is_none(),
        });
        let Some((bl, words)) = found else { continue };
        let Some(map) = lib.get(&bl.map_key) else {
            continue;
        };
        // Not in the map, or past the model length the device declares (an
        // older, shorter model): unavailable, never decoded from the next model.
        if !within(map, words.len(), bind.point) {
            continue;
        }
        if let Some(v) = map.decode_f64(words, bind.point)? {
            let mut v = v * bind.factor;
            if bind.signed_power {
                v = dev.sign.to_ped(v);
            }
            out.insert(bind.reading, v);
        }
    }
    Ok(out)
}

/// A setpoint in ped's units and convention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    /// Battery power, kW, positive = charge.
    BatteryPower(f64),
    /// Power-to-heat electrical power, kW.
    PowerToHeat(f64),
    /// PV active power limit, percent of the inverter's rating.
    PvLimitPct(f64),
    /// Back to the device's own safe behaviour (no remote setpoint).
    Release,
}

/// What an energy manager reads in a log line: `+12.5 kW` (charging),
/// `-3.0 kW` (discharging), `limited to 40 %`, `released`. Powers are shown to
/// 0.1 kW, the finest step the battery and power-to-heat maps write, so solver
/// noise such as 8.6e-6 kW reads as `+0.0 kW`.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Rounded first, so a tiny negative value does not print as "-0.0".
        let tenths = |kw: f64| (kw * 10.0).round() / 10.0 + 0.0;
        match *self {
            Command::BatteryPower(kw) => write!(f, "{:+.1} kW", tenths(kw)),
            Command::PowerToHeat(kw) => write!(f, "{:.1} kW", tenths(kw)),
            Command::PvLimitPct(pct) => write!(f, "limited to {:.0} %", pct.round() + 0.0),
            Command::Release => f.write_str("released"),
        }
    }
}

/// A set of setpoints as one readable field: `BAT-01=+0.0 kW, PV-03=released`.
pub fn setpoints_text(setpoints: &BTreeMap<String, Command>) -> String {
    setpoints
        .iter()
        .map(|(device, cmd)| format!("{device}={cmd}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One register write: address, words, and the point it sets (for logs and the envelope).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub point: String,
    /// Map the point belongs to (write mode, read-back decoding).
    pub map_key: String,
    pub addr: u16,
    pub words: Vec<u16>,
    pub value: f64,
    /// The device's own revert timer: written only when the device does not
    /// already hold this value (once per connection, again if it changed).
    pub timer: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("device {device} has no {what}")]
    NoMap { device: String, what: String },
    #[error(
        "device {device}: writing `{point}` is not allowed by the site config (add it to `writes`)"
    )]
    NotAllowed { device: String, point: String },
    #[error("device {device}: `{point}` (or its scale factor) lies past the {len} registers of the model the device declares; writing it would land in the next model")]
    BeyondModel {
        device: String,
        point: String,
        len: usize,
    },
    #[error(transparent)]
    Register(#[from] crate::registers::RegisterError),
}

/// Whether `name` and its scale-factor point lie inside the first `len`
/// words of the block: a device may declare a model shorter than ped's map.
fn within(map: &RegisterMap, len: usize, name: &str) -> bool {
    let end = |p: &crate::registers::Point| usize::from(p.offset) + usize::from(p.size);
    let Some(p) = map.point(name) else {
        return false;
    };
    let sf_ok = match &p.scale {
        Some(crate::registers::Scale::Point(sf)) => map.point(sf).map_or(true, |s| end(s) <= len),
        _ => true,
    };
    end(p) <= len && sf_ok
}

/// Register writes for a command, with scale factors taken from the last block
/// read from the device (scale factors apply to writes too). Each written point
/// must be listed in the device's `writes`.
pub fn command_writes(
    dev: &DeviceConfig,
    lib: &ModelLibrary,
    blocks: &[(Block, Vec<u16>)],
    cmd: Command,
) -> Result<Vec<Write>, CommandError> {
    let (map_sel, points): (MapSel, Vec<(&str, f64)>) = match (dev.kind, cmd) {
        (DeviceKind::Battery, Command::BatteryPower(kw)) if dev.map == "sunspec" => (
            MapSel::SunSpec(&[704]),
            // 704's WSet is in W, positive = discharge: the device's own convention.
            vec![("WSetEna", 1.0), ("WSet", dev.sign.to_device(kw) * 1000.0)],
        ),
        (DeviceKind::Battery, Command::Release) if dev.map == "sunspec" => {
            (MapSel::SunSpec(&[704]), vec![("WSetEna", 0.0)])
        }
        // A vendor battery map names its native control points `mode` (0 = its
        // own control, 1 = remote setpoint) and `power_setpoint_kw` (the
        // device's sign convention), like the power-to-heat maps.
        (DeviceKind::Battery, Command::BatteryPower(kw)) => (
            MapSel::Configured,
            vec![("mode", 1.0), ("power_setpoint_kw", dev.sign.to_device(kw))],
        ),
        (DeviceKind::Battery, Command::Release) => (MapSel::Configured, vec![("mode", 0.0)]),
        // Curtailment: 123 (WMaxLimPct + WMaxLim_Ena) where exposed, else 704.
        (DeviceKind::PvInverter, Command::PvLimitPct(pct)) if has_block(blocks, 123) => (
            MapSel::SunSpec(&[123]),
            vec![("WMaxLimPct", pct.clamp(0.0, 100.0)), ("WMaxLim_Ena", 1.0)],
        ),
        (DeviceKind::PvInverter, Command::Release) if has_block(blocks, 123) => {
            (MapSel::SunSpec(&[123]), vec![("WMaxLim_Ena", 0.0)])
        }
        (DeviceKind::PvInverter, Command::PvLimitPct(pct)) => (
            MapSel::SunSpec(&[704]),
            vec![
                ("WMaxLimPct", pct.clamp(0.0, 100.0)),
                ("WMaxLimPctEna", 1.0),
            ],
        ),
        (DeviceKind::PvInverter, Command::Release) => {
            (MapSel::SunSpec(&[704]), vec![("WMaxLimPctEna", 0.0)])
        }
        (DeviceKind::PowerToHeat, Command::PowerToHeat(kw)) => (
            MapSel::Configured,
            vec![("mode", 1.0), ("power_setpoint_kw", kw)],
        ),
        (DeviceKind::PowerToHeat, Command::Release) => (MapSel::Configured, vec![("mode", 0.0)]),
        (k, c) => {
            return Err(CommandError::NoMap {
                device: dev.id.clone(),
                what: format!("command {c:?} for a {}", k.as_str()),
            })
        }
    };
    let (bl, words) = blocks
        .iter()
        .find(|(bl, _)| match map_sel {
            MapSel::SunSpec(ids) => bl.sunspec_id.is_some_and(|id| ids.contains(&id)),
            MapSel::Configured => bl.sunspec_id.is_none(),
        })
        .ok_or_else(|| CommandError::NoMap {
            device: dev.id.clone(),
            what: "control block (not read yet, or not exposed)".into(),
        })?;
    let map = lib.get(&bl.map_key).ok_or_else(|| CommandError::NoMap {
        device: dev.id.clone(),
        what: format!("register map {}", bl.map_key),
    })?;
    // The device's own watchdog goes first, so that the setpoint that follows
    // is already covered by it if ped dies right after writing it. Written only
    // where the site config allows it, like every other point.
    let timer = (cmd != Command::Release)
        .then(|| revert_timer_point(map, points.first().map(|p| p.0)))
        .flatten()
        .filter(|t| dev.writes.iter().any(|w| w == t));
    let mut points = points;
    if let Some(t) = timer {
        points.insert(0, (t, revert_timer_s(dev)));
    }
    let mut out = Vec::new();
    for (point, value) in points {
        if !dev.writes.iter().any(|w| w == point) {
            return Err(CommandError::NotAllowed {
                device: dev.id.clone(),
                point: point.into(),
            });
        }
        if !within(map, words.len(), point) {
            return Err(CommandError::BeyondModel {
                device: dev.id.clone(),
                point: point.into(),
                len: words.len(),
            });
        }
        // A map may name the codes of its mode point (e.g. 802/803 for remote
        // and local control); ped's 1/0 stand for those names.
        let value = match map.point(point).map(|p| &p.values) {
            Some(v) if !v.is_empty() => {
                let name = if value != 0.0 { "remote" } else { "local" };
                match v.get(name) {
                    Some(code) => *code as f64,
                    None => value,
                }
            }
            _ => value,
        };
        let exp = scale_exponent(map, words, point);
        let (offset, w) = map.setpoint_words(point, value, exp)?;
        out.push(Write {
            point: point.into(),
            map_key: map.key.clone(),
            addr: bl.addr.wrapping_add(offset),
            words: w,
            value,
            timer: Some(point) == timer,
        });
    }
    Ok(out)
}

/// The revert-timer point that covers a command's first point, if the map has
/// one: 704 `WSetRvrtTms` (battery power) and `WMaxLimPctRvrtTms`, 123
/// `WMaxLimPct_RvrtTms`, and a vendor map's `revert_seconds`.
fn revert_timer_point(map: &RegisterMap, first: Option<&str>) -> Option<&'static str> {
    let candidates: &[&'static str] = match first {
        Some("WSetEna") | Some("WSet") => &["WSetRvrtTms"],
        Some("WMaxLimPct") | Some("WMaxLimPctEna") | Some("WMaxLim_Ena") => {
            &["WMaxLimPct_RvrtTms", "WMaxLimPctRvrtTms"]
        }
        _ => &["revert_seconds"],
    };
    candidates.iter().copied().find(|c| map.point(c).is_some())
}

/// Seconds for the device's own revert timer: the configured watchdog
/// (`revert_timeout_s`, default 15 s) rounded up to whole seconds, since
/// these points count in seconds.
pub fn revert_timer_s(dev: &DeviceConfig) -> f64 {
    dev.revert_timeout_s.unwrap_or(15.0).ceil().max(1.0)
}

/// Whether the last block read from the device already holds `w`'s words.
pub fn device_holds(blocks: &[(Block, Vec<u16>)], w: &Write) -> bool {
    blocks.iter().any(|(b, words)| {
        let off = usize::from(w.addr.wrapping_sub(b.addr));
        b.map_key == w.map_key
            && off + w.words.len() <= words.len()
            && words[off..off + w.words.len()] == w.words[..]
    })
}

fn has_block(blocks: &[(Block, Vec<u16>)], id: u16) -> bool {
    blocks.iter().any(|(b, _)| b.sunspec_id == Some(id))
}

/// Whether `back`, read from the device after `w` was written, holds the same
/// value: within one step of the point's scale factor for scaled points
/// (devices may round to their own resolution), exactly for unscaled ones. Decoded with the scale factor of the block
/// the write was computed from.
pub fn readback_matches(
    lib: &ModelLibrary,
    blocks: &[(Block, Vec<u16>)],
    w: &Write,
    back: &[u16],
) -> Result<bool, crate::registers::RegisterError> {
    let Some((bl, words)) = blocks.iter().find(|(b, _)| b.map_key == w.map_key) else {
        return Ok(back == w.words.as_slice());
    };
    let Some(map) = lib.get(&bl.map_key) else {
        return Ok(back == w.words.as_slice());
    };
    let off = usize::from(w.addr.wrapping_sub(bl.addr));
    let mut written = words.clone();
    let mut read = words.clone();
    let n = w.words.len();
    if off + n > written.len() || back.len() != n {
        return Ok(false);
    }
    written[off..off + n].copy_from_slice(&w.words);
    read[off..off + n].copy_from_slice(back);
    let a = map.decode_f64(&written, &w.point)?;
    let b = map.decode_f64(&read, &w.point)?;
    // Scaled values may come back rounded to the device's resolution; codes
    // (modes, enables) must come back exactly.
    let scaled = map.point(&w.point).is_some_and(|p| p.scale.is_some());
    let step = if scaled {
        10f64.powi(i32::from(scale_exponent(map, words, &w.point)))
    } else {
        0.0
    };
    Ok(match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= step * 1.000_001,
        (None, None) => true,
        _ => false,
    })
}

fn scale_exponent(map: &RegisterMap, words: &[u16], point: &str) -> i16 {
    use crate::registers::Scale;
    match map.point(point).and_then(|p| p.scale.clone()) {
        Some(Scale::Exponent(e)) => e,
        Some(Scale::Point(sf)) => map
            .point(&sf)
            .and_then(|p| words.get(usize::from(p.offset)))
            .map(|w| *w as i16)
            .filter(|e| (-10..=10).contains(e))
            .unwrap_or(0),
        None => 0,
    }
}

/// The reads that cover what ped uses of a device's blocks, and the blocks they fill.
#[derive(Debug, Clone, Default)]
pub struct PollPlan {
    pub blocks: Vec<Block>,
    pub reads: Vec<crate::modbus::read_plan::Read>,
}

/// Builds the poll plan of a device: every bound point and every point ped may
/// write (for read-back and their scale factors), each with its scale-factor
/// point in the same read, coalesced across the SunSpec chain.
pub fn poll_plan(
    dev: &DeviceConfig,
    lib: &ModelLibrary,
    blocks: Vec<Block>,
) -> Result<PollPlan, crate::modbus::read_plan::PlanError> {
    use crate::modbus::read_plan::{plan, Span, DEFAULT_MAX_GAP};
    use crate::registers::Scale;
    let mut spans = Vec::new();
    for (i, bl) in blocks.iter().enumerate() {
        let Some(map) = lib.get(&bl.map_key) else {
            continue;
        };
        // A SunSpec chain is contiguous: every register between its models
        // exists. A vendor map only vouches for the registers of its points, so
        // a read may bridge a hole only inside a run of declared points.
        let runs = declared_runs(map);
        let group_of = |offset: u16| -> u32 {
            if bl.sunspec_id.is_some() {
                return 0;
            }
            let run = runs
                .iter()
                .position(|&(lo, hi)| offset >= lo && u32::from(offset) < hi);
            ((1 + i) as u32) << 16 | run.unwrap_or(0) as u32
        };
        let bound = bindings(dev.kind).iter().filter(|b| match b.map {
            MapSel::SunSpec(ids) => bl.sunspec_id.is_some_and(|id| ids.contains(&id)),
            MapSel::Configured => bl.sunspec_id.is_none(),
        });
        let names = bound
            .map(|b| b.point)
            .chain(dev.writes.iter().map(String::as_str));
        for name in names {
            let Some(p) = map.point(name) else { continue };
            // Reads stay inside the model length the device declares.
            if !within(map, usize::from(bl.len), name) {
                continue;
            }
            let mut lo = p.offset;
            let mut hi = u32::from(p.offset) + u32::from(p.size);
            if let Some(Scale::Point(sf)) = &p.scale {
                if let Some(s) = map.point(sf) {
                    lo = lo.min(s.offset);
                    hi = hi.max(u32::from(s.offset) + u32::from(s.size));
                }
            }
            spans.push(Span {
                group: group_of(lo),
                table: map.table,
                start: bl.addr.saturating_add(lo),
                len: (hi - u32::from(lo)) as u16,
            });
        }
    }
    let reads = plan(&spans, DEFAULT_MAX_GAP)?;
    Ok(PollPlan { blocks, reads })
}

/// Runs of contiguous (or overlapping) declared points of a map: (first offset, end).
fn declared_runs(map: &RegisterMap) -> Vec<(u16, u32)> {
    let mut pts: Vec<(u16, u32)> = map
        .points
        .iter()
        .map(|p| (p.offset, u32::from(p.offset) + u32::from(p.size)))
        .collect();
    pts.sort_unstable();
    let mut runs: Vec<(u16, u32)> = Vec::new();
    for (lo, hi) in pts {
        match runs.last_mut() {
            Some(r) if u32::from(lo) <= r.1 => r.1 = r.1.max(hi),
            _ => runs.push((lo, hi)),
        }
    }
    runs
}

/// Rebuilds each block (offset 0 = the map's first word) from the answers to
/// `plan.reads`; words outside every read stay 0 and are never decoded, since
/// the plan covers every point that is.
pub fn assemble(
    plan: &PollPlan,
    lib: &ModelLibrary,
    answers: &[Vec<u16>],
) -> Vec<(Block, Vec<u16>)> {
    plan.blocks
        .iter()
        .map(|bl| {
            let table = lib
                .get(&bl.map_key)
                .map(|m| m.table)
                .unwrap_or(crate::registers::Table::Holding);
            let mut words = vec![0u16; usize::from(bl.len)];
            crate::modbus::read_plan::gather(&plan.reads, answers, table, bl.addr, &mut words);
            (bl.clone(), words)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setpoints_read_as_an_energy_manager_would() {
        let sp: BTreeMap<String, Command> = [
            ("BAT-01", Command::BatteryPower(8.599999999999999e-6)),
            ("BAT-02", Command::BatteryPower(-12.345)),
            ("BAT-03", Command::BatteryPower(-0.04)),
            ("P2H-1", Command::PowerToHeat(29.96)),
            ("PV-03", Command::Release),
            ("PV-04", Command::PvLimitPct(39.6)),
        ]
        .into_iter()
        .map(|(d, c)| (d.to_string(), c))
        .collect();
        assert_eq!(
            setpoints_text(&sp),
            "BAT-01=+0.0 kW, BAT-02=-12.3 kW, BAT-03=+0.0 kW, P2H-1=30.0 kW, PV-03=released, PV-04=limited to 40 %"
        );
    }

    fn lib() -> ModelLibrary {
        ModelLibrary::embedded().unwrap()
    }

    fn pv() -> DeviceConfig {
        toml::from_str(
            r#"
id = "PV"
kind = "pv_inverter"
address = "127.0.0.1:502"
writes = ["WMaxLimPct", "WMaxLim_Ena"]
"#,
        )
        .unwrap()
    }

    /// A chain 1, 103, 120, 123 from 40002, as a device lays it out.
    fn chain(lib: &ModelLibrary) -> (Vec<(u16, u16)>, Vec<u16>) {
        let mut image = vec![0x5375u16, 0x6E53];
        let mut found = Vec::new();
        for id in [1u16, 103, 120, 123] {
            let m = lib.sunspec(id).unwrap();
            let mut b = vec![0u16; usize::from(m.block_len())];
            m.fill_unimplemented(&mut b);
            m.encode_raw(&mut b, "ID", i64::from(id)).unwrap();
            m.encode_raw(&mut b, "L", i64::from(m.length)).unwrap();
            match id {
                103 => {
                    m.encode_raw(&mut b, "W_SF", 1).unwrap();
                    m.encode_f64(&mut b, "W", 152_340.0).unwrap();
                    m.encode_raw(&mut b, "WH_SF", 2).unwrap();
                    m.encode_f64(&mut b, "WH", 9_876_500.0).unwrap();
                    m.encode_raw(&mut b, "TmpCab", 412).unwrap();
                    m.encode_raw(&mut b, "Tmp_SF", -1).unwrap();
                }
                120 => {
                    m.encode_raw(&mut b, "WRtg_SF", 2).unwrap();
                    m.encode_f64(&mut b, "WRtg", 250_000.0).unwrap();
                }
                123 => {
                    m.encode_raw(&mut b, "WMaxLimPct_SF", -1).unwrap();
                    m.encode_f64(&mut b, "WMaxLimPct", 100.0).unwrap();
                }
                _ => {}
            }
            found.push((id, 40000 + image.len() as u16));
            image.extend_from_slice(&b);
        }
        image.extend_from_slice(&[0xFFFF, 0]);
        (found, image)
    }

    /// Each block as a device at 40000 holding `image` answers a whole-block read.
    fn read_blocks(blocks: &[Block], image: &[u16]) -> Vec<(Block, Vec<u16>)> {
        blocks
            .iter()
            .map(|b| {
                let o = usize::from(b.addr - 40000);
                (b.clone(), image[o..o + usize::from(b.len)].to_vec())
            })
            .collect()
    }

    #[test]
    fn coalesced_plan_reads_less_and_decodes_the_same() {
        let lib = lib();
        let dev = pv();
        let (found, image) = chain(&lib);
        let blocks = blocks_for(&dev, &lib, &found);
        let full = read_blocks(&blocks, &image);
        let plan = poll_plan(&dev, &lib, blocks.clone()).unwrap();
        let words_per_block: u32 = blocks.iter().map(|b| u32::from(b.len)).sum();
        let words_planned: u32 = plan.reads.iter().map(|r| u32::from(r.len)).sum();
        // 103, 120 and 123 are neighbours in the chain: one or two reads, fewer words.
        assert!(plan.reads.len() < blocks.len(), "{:?}", plan.reads);
        assert!(words_planned < words_per_block);
        assert!(plan.reads.iter().all(|r| r.len <= 125));
        let answers: Vec<Vec<u16>> = plan
            .reads
            .iter()
            .map(|r| {
                let o = usize::from(r.addr - 40000);
                image[o..o + usize::from(r.len)].to_vec()
            })
            .collect();
        let assembled = assemble(&plan, &lib, &answers);
        let a = decode_readings(&dev, &lib, &full).unwrap();
        let b = decode_readings(&dev, &lib, &assembled).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.get("production_kw"), Some(&152.34));
        assert_eq!(b.get("rated_kw"), Some(&250.0));
        assert_eq!(b.get("cabinet_c"), Some(&41.2));
        assert!(!b.contains_key("dc_kw"), "DCW is not implemented");
    }

    #[test]
    fn curtailment_goes_through_123_with_its_scale_factor_and_reads_back() {
        let lib = lib();
        let dev = pv();
        let (found, image) = chain(&lib);
        let blocks = blocks_for(&dev, &lib, &found);
        let read = read_blocks(&blocks, &image);
        let w = command_writes(&dev, &lib, &read, Command::PvLimitPct(62.5)).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].point, "WMaxLimPct");
        assert_eq!(w[0].words, vec![625], "WMaxLimPct_SF = -1");
        assert_eq!(w[1].point, "WMaxLim_Ena");
        assert_eq!(w[1].words, vec![1]);
        // Read-back: equal, one step off (a device rounding), and really different.
        assert!(readback_matches(&lib, &read, &w[0], &[625]).unwrap());
        assert!(readback_matches(&lib, &read, &w[0], &[624]).unwrap());
        assert!(!readback_matches(&lib, &read, &w[0], &[600]).unwrap());
        let rel = command_writes(&dev, &lib, &read, Command::Release).unwrap();
        assert_eq!(rel.len(), 1);
        assert_eq!(
            (rel[0].point.as_str(), rel[0].words.clone()),
            ("WMaxLim_Ena", vec![0])
        );
        // Curtailment is refused without the points in `writes`.
        let mut locked = dev.clone();
        locked.writes.clear();
        assert!(matches!(
            command_writes(&locked, &lib, &read, Command::PvLimitPct(50.0)),
            Err(CommandError::NotAllowed { .. })
        ));
    }

    #[test]
    fn the_devices_own_revert_timer_is_written_first_when_allowed() {
        let lib = lib();
        let mut dev = pv();
        dev.writes.push("WMaxLimPct_RvrtTms".into());
        dev.revert_timeout_s = Some(7.2);
        let (found, image) = chain(&lib);
        let blocks = blocks_for(&dev, &lib, &found);
        let mut read = read_blocks(&blocks, &image);
        let w = command_writes(&dev, &lib, &read, Command::PvLimitPct(40.0)).unwrap();
        let points: Vec<&str> = w.iter().map(|w| w.point.as_str()).collect();
        assert_eq!(points, ["WMaxLimPct_RvrtTms", "WMaxLimPct", "WMaxLim_Ena"]);
        assert!(w[0].timer && !w[1].timer && !w[2].timer);
        assert_eq!(w[0].words, vec![8], "whole seconds, rounded up");
        // Not yet on the device; once a read shows it there, it is not rewritten.
        assert!(!device_holds(&read, &w[0]));
        for (b, words) in read.iter_mut() {
            let off = usize::from(w[0].addr.wrapping_sub(b.addr));
            if b.map_key == w[0].map_key && off < words.len() {
                words[off] = 8;
            }
        }
        assert!(device_holds(&read, &w[0]));
        assert!(!device_holds(&read, &w[1]));
        // A release leaves the timer alone; without the point in `writes` it is
        // not written (the setpoint still is).
        let rel = command_writes(&dev, &lib, &read, Command::Release).unwrap();
        assert!(rel.iter().all(|w| !w.timer));
        dev.writes.retain(|p| p != "WMaxLimPct_RvrtTms");
        let w = command_writes(&dev, &lib, &read, Command::PvLimitPct(40.0)).unwrap();
        assert!(w.iter().all(|w| !w.timer) && w.len() == 2);
    }
}
