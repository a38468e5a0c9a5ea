//! A whole district served as real Modbus devices: TCP (or RTU over TCP) on
//! 127.0.0.1, and `transport = "rtu"` lines on pseudo-terminals whose slave
//! side the daemon opens like any serial port.
//!
//! Each device of the site config gets a register image built from the same
//! maps in `models/` that the daemon reads with (PV inverters and batteries as
//! SunSpec chains at 40000, substations, heat meters and power-to-heat as vendor
//! maps). A tick task advances the physics on the simulated clock: PV from a
//! clear-sky model with seeded clouds, loads from shapes, heat from outdoor
//! temperature, batteries and the heat store following the setpoints written to
//! them. Energy counters integrate power exactly between ticks.

pub mod profiles;

use crate::clock::Clock;
use crate::config::{DeviceConfig, DeviceKind, ParticipantKind, Site, Transport};
use crate::modbus::server::{
    serve, serve_rtu_over_tcp, serve_rtu_serial, Bank, SharedBank, SharedFaults,
};
use crate::registers::{ModelLibrary, RegisterMap, Table};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "cannot listen on {addr}: {source} (another ped simulate running? use --ephemeral-ports)"
    )]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot make a serial line for {path}: {reason} (use --ephemeral-ports, or a path ped may create a symlink at)")]
    Serial { path: String, reason: String },
    #[error("register map `{0}` needed by the simulator is missing from models/")]
    MissingMap(String),
    #[error("device {device}: {source}")]
    Register {
        device: String,
        source: crate::registers::RegisterError,
    },
}

/// A SunSpec chain or a vendor map image at a base address.
struct Image {
    base: u16,
    words: Vec<u16>,
    /// (map key, offset of the model's ID register — or of the vendor map's start — in `words`)
    models: Vec<(String, usize)>,
}

impl Image {
    fn sunspec(lib: &ModelLibrary, ids: &[u16]) -> Result<Image, SimError> {
        let mut words = vec![0x5375, 0x6E53];
        let mut models = Vec::new();
        for id in ids {
            let map = lib
                .sunspec(*id)
                .ok_or_else(|| SimError::MissingMap(format!("sunspec/{id}")))?;
            let off = words.len();
            words.push(*id);
            words.push(map.length);
            words.extend(std::iter::repeat(0).take(usize::from(map.length)));
            // Points the simulator never writes read as "not implemented", not as a measured 0.
            let end = (off + usize::from(map.block_len())).min(words.len());
            map.fill_unimplemented(&mut words[off..end]);
            models.push((map.key.clone(), off));
        }
        words.push(0xFFFF);
        words.push(0);
        Ok(Image {
            base: 40000,
            words,
            models,
        })
    }

    fn vendor(map: &RegisterMap) -> Image {
        Image {
            base: map.base,
            words: vec![0; usize::from(map.block_len())],
            models: vec![(map.key.clone(), 0)],
        }
    }

    fn block_mut<'a>(
        &'a mut self,
        lib: &'a ModelLibrary,
        key: &str,
    ) -> Option<(&'a RegisterMap, &'a mut [u16])> {
        let (_, off) = self.models.iter().find(|(k, _)| k == key)?;
        let map = lib.get(key)?;
        let end = off + usize::from(map.block_len());
        let slice = self.words.get_mut(*off..end)?;
        Some((map, slice))
    }
}

/// Writes engineering values into an image, logging (not failing on) points a map lacks.
struct Writer<'a> {
    lib: &'a ModelLibrary,
    image: &'a mut Image,
    device: &'a str,
}

impl Writer<'_> {
    fn f(&mut self, key: &str, point: &str, v: f64) {
        let dev = self.device;
        if let Some((map, block)) = self.image.block_mut(self.lib, key) {
            if let Err(e) = map.encode_f64(block, point, v) {
                tracing::debug!(device = dev, map = key, point, error = %e, "simulator could not encode");
            }
        }
    }
    fn raw(&mut self, key: &str, point: &str, v: i64) {
        let dev = self.device;
        if let Some((map, block)) = self.image.block_mut(self.lib, key) {
            if let Err(e) = map.encode_raw(block, point, v) {
                tracing::debug!(device = dev, map = key, point, error = %e, "simulator could not encode");
            }
        }
    }
    fn get(&mut self, key: &str, point: &str) -> Option<f64> {
        let (map, block) = self.image.block_mut(self.lib, key)?;
        map.decode_f64(block, point).ok().flatten()
    }
}

enum State {
    Pv {
        last_cmd: Option<Instant>,
        kwp: f64,
        tilt: f64,
        az: f64,
        wh: f64,
        kw: f64,
    },
    Battery {
        cap_kwh: f64,
        max_c: f64,
        max_d: f64,
        min_soc: f64,
        soc_kwh: f64,
        kw: f64,
        imp_wh: f64,
        exp_wh: f64,
        last_cmd: Option<Instant>,
    },
    Meter {
        participant: String,
        kw: f64,
        imp_wh: f64,
    },
    Substation {
        annual_heat: f64,
    },
    HeatMeter {
        annual_heat: f64,
        wh: f64,
    },
    P2h {
        max_kw: f64,
        cap_kwh: f64,
        store_kwh: f64,
        kw: f64,
        elec_wh: f64,
        heat_wh: f64,
        annual_heat: f64,
        last_cmd: Option<Instant>,
    },
}

struct SimDevice {
    cfg: DeviceConfig,
    bank: SharedBank,
    image: Image,
    state: State,
}

/// Setpoints lapse after this much real time without a write: the simulated
/// devices' communication watchdog, as real batteries have.
pub const REVERT_AFTER: Duration = Duration::from_secs(15);

/// What the simulator exposes to tests and the demo.
#[derive(Debug, Clone, Default)]
pub struct SimTruth {
    pub at: Option<DateTime<Utc>>,
    pub pv_kw: f64,
    pub load_kw: f64,
    pub battery_kw: BTreeMap<String, f64>,
    pub battery_soc: BTreeMap<String, f64>,
    pub p2h_kw: f64,
    pub store_kwh: f64,
}

pub struct Simulator {
    /// The site with every device address replaced by where the simulator listens.
    pub site: Site,
    pub truth: watch::Receiver<SimTruth>,
    /// Endpoint address in the original config → address actually listened on.
    pub endpoints: BTreeMap<String, String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Symlinks made at configured serial paths, removed on drop.
    links: Vec<std::path::PathBuf>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for l in &self.links {
            let _ = std::fs::remove_file(l);
        }
    }
}

/// A pseudo-terminal pair for one serial line: the master side is served, the
/// slave's path is what the daemon opens. With `link_at`, a symlink there
/// points to the slave, so a config can keep its own port path.
fn serial_line(
    link_at: Option<&str>,
) -> Result<
    (
        tokio_serial::SerialStream,
        tokio_serial::SerialStream,
        String,
    ),
    SimError,
> {
    use tokio_serial::SerialPort as _;
    let fail = |reason: String| SimError::Serial {
        path: link_at.unwrap_or("a pseudo-terminal").to_string(),
        reason,
    };
    let (master, slave) = tokio_serial::SerialStream::pair().map_err(|e| fail(e.to_string()))?;
    let pts = slave
        .name()
        .ok_or_else(|| fail("the pseudo-terminal has no name".into()))?;
    let Some(at) = link_at else {
        return Ok((master, slave, pts));
    };
    let path = std::path::Path::new(at);
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_symlink() {
            return Err(fail("a file that is not a symlink is in the way".into()));
        }
        std::fs::remove_file(path).map_err(|e| fail(e.to_string()))?;
    }
    std::os::unix::fs::symlink(&pts, path).map_err(|e| fail(e.to_string()))?;
    Ok((master, slave, at.to_string()))
}

/// A device's own revert timer as written to its register, in real seconds
/// (the simulator's devices time their watchdog on the wall clock, like real
/// ones, whatever the simulated clock's speed). 0 or absent: `default`.
fn revert_timer(register: Option<f64>, default: Option<Duration>) -> Option<Duration> {
    match register {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        _ => default,
    }
}

fn participant_kw(
    site: &Site,
    seed: u64,
    t: DateTime<Utc>,
    pid: &str,
    sun_elev: f64,
    heat_by_sub: &HashMap<String, (f64, f64)>,
) -> f64 {
    let Some(p) = site.config.participants.iter().find(|p| p.id == pid) else {
        return 0.0;
    };
    let who = profiles::name_hash(&p.id);
    let mean_kw = p.annual_kwh / 8760.0;
    let local = t.with_timezone(&site.grid.tz());
    let shape = profiles::load_shape(p.kind, local, sun_elev);
    let noise = profiles::load_noise(seed, who, t, p.kind == ParticipantKind::Household);
    let kw = match p.kind {
        ParticipantKind::SubstationAux => {
            let (now, mean) = heat_by_sub.get(&p.id).copied().unwrap_or((1.0, 1.0));
            mean_kw * (0.35 + 0.65 * now / mean.max(1e-9)) * noise
        }
        // Lighting's shape averages ≈ 1.1 over a year (dark half the time).
        ParticipantKind::Lighting => mean_kw * shape / 1.1,
        _ => mean_kw * shape * noise,
    };
    kw.max(0.0)
}

impl Simulator {
    /// Builds and serves every device of `site`. With `ephemeral`, each endpoint
    /// listens on a free port of 127.0.0.1 and the returned site points there.
    pub async fn start(
        site: &Site,
        lib: Arc<ModelLibrary>,
        clock: Clock,
        seed: u64,
        ephemeral: bool,
    ) -> Result<Simulator, SimError> {
        let mut site = site.clone();
        let mut devices: Vec<SimDevice> = Vec::new();
        let mut by_endpoint: BTreeMap<String, HashMap<u8, SharedBank>> = BTreeMap::new();
        for d in &site.config.devices {
            let (image, state) = build_device(d, &lib, &site)?;
            let bank = Arc::new(Mutex::new(Bank::new()));
            {
                let mut b = bank.lock().unwrap_or_else(|e| e.into_inner());
                b.map_range(Table::Holding, image.base, image.words.len() as u16, false);
                // Writable points become writable registers; everything else is read-only.
                for (key, off) in &image.models {
                    if let Some(map) = lib.get(key) {
                        for p in &map.points {
                            if matches!(p.access, crate::registers::Access::Rw) {
                                let addr = image.base as usize + off + usize::from(p.offset);
                                b.map_range(Table::Holding, addr as u16, p.size, true);
                            }
                        }
                    }
                }
                b.set(Table::Holding, image.base, &image.words);
            }
            by_endpoint
                .entry(d.address.clone())
                .or_default()
                .insert(d.unit, bank.clone());
            devices.push(SimDevice {
                cfg: d.clone(),
                bank,
                image,
                state,
            });
        }

        let mut tasks = Vec::new();
        let mut endpoints = BTreeMap::new();
        let mut links = Vec::new();
        for (addr, units) in by_endpoint {
            let transport = site
                .config
                .devices
                .iter()
                .find(|d| d.address == addr)
                .map(|d| d.transport)
                .unwrap_or_default();
            let faults = SharedFaults::default();
            if transport == Transport::Rtu {
                let (master, slave, path) = serial_line((!ephemeral).then_some(addr.as_str()))?;
                if !ephemeral {
                    links.push(std::path::PathBuf::from(&path));
                }
                endpoints.insert(addr.clone(), path);
                tasks.push(tokio::spawn(async move {
                    // Holding the slave side open keeps the line up while the
                    // daemon closes and re-opens the port.
                    let _slave = slave;
                    if let Err(e) =
                        serve_rtu_serial(master, units, faults, std::future::pending::<()>()).await
                    {
                        tracing::error!(error = %e, "simulated serial line stopped");
                    }
                }));
                continue;
            }
            let bind_to = if ephemeral {
                "127.0.0.1:0".to_string()
            } else {
                addr.clone()
            };
            let listener = TcpListener::bind(&bind_to)
                .await
                .map_err(|e| SimError::Bind {
                    addr: bind_to.clone(),
                    source: e,
                })?;
            let actual = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or(bind_to);
            endpoints.insert(addr.clone(), actual);
            tasks.push(tokio::spawn(async move {
                let never = std::future::pending::<()>();
                let served = if transport == Transport::RtuOverTcp {
                    serve_rtu_over_tcp(listener, units, faults, never).await
                } else {
                    serve(listener, units, never).await
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "simulated endpoint stopped");
                }
            }));
        }
        for d in site.config.devices.iter_mut() {
            if let Some(a) = endpoints.get(&d.address) {
                d.address = a.clone();
            }
        }
        for d in devices.iter_mut() {
            if let Some(a) = endpoints.get(&d.cfg.address) {
                d.cfg.address = a.clone();
            }
        }

        let (tx, rx) = watch::channel(SimTruth::default());
        let tick_site = site.clone();
        tasks.push(tokio::spawn(async move {
            let mut devices = devices;
            let mut last = clock.now();
            step_all(&tick_site, &lib, seed, last, 0.0, &mut devices, &tx);
            let mut interval = tokio::time::interval(Duration::from_millis(50));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let now = clock.now();
                let dt_h = (now - last).num_microseconds().unwrap_or(0) as f64 / 3.6e9;
                last = now;
                step_all(
                    &tick_site,
                    &lib,
                    seed,
                    now,
                    dt_h.max(0.0),
                    &mut devices,
                    &tx,
                );
            }
        }));
        Ok(Simulator {
            site,
            truth: rx,
            endpoints,
            tasks,
            links,
        })
    }
}

/// Annual heat of the substation a device belongs to (its controller carries it).
fn substation_annual_heat(site: &Site, d: &DeviceConfig) -> f64 {
    site.devices_of(DeviceKind::HeatSubstation)
        .find(|s| s.substation == d.substation)
        .map_or(crate::config::ANNUAL_HEAT_KWH, |s| s.annual_heat())
}

/// Scale factors of the simulated AC meters (model 203). W in 10 W steps: the
/// largest tertiary loads exceed int16 in watts.
const METER_203_SF: &[(&str, i64)] = &[
    ("A_SF", -1),
    ("V_SF", -1),
    ("Hz_SF", -2),
    ("W_SF", 1),
    ("VA_SF", 1),
    ("VAR_SF", 1),
    ("PF_SF", -2),
    ("TotWh_SF", 0),
    ("TotVAh_SF", 0),
    ("TotVArh_SF", 0),
];

fn build_device(
    d: &DeviceConfig,
    lib: &ModelLibrary,
    site: &Site,
) -> Result<(Image, State), SimError> {
    // Real meters carry lifetime totals; an accumulator at 0 also means "not implemented" in SunSpec.
    let lifetime_wh = 100_000.0 + (profiles::name_hash(&d.id) % 5_000_000) as f64;
    let reg = |e| SimError::Register {
        device: d.id.clone(),
        source: e,
    };
    let vendor = || {
        lib.get(&d.map)
            .map(Image::vendor)
            .ok_or_else(|| SimError::MissingMap(d.map.clone()))
    };
    let common = |img: &mut Image, model: &str| -> Result<(), SimError> {
        if let Some((map, block)) = img.block_mut(lib, "sunspec/1") {
            map.encode_string(block, "Mn", "ped-sim").map_err(reg)?;
            map.encode_string(block, "Md", model).map_err(reg)?;
            map.encode_string(block, "SN", &d.id).map_err(reg)?;
            map.encode_string(block, "Vr", env!("CARGO_PKG_VERSION"))
                .map_err(reg)?;
            map.encode_raw(block, "DA", i64::from(d.unit))
                .map_err(reg)?;
        }
        Ok(())
    };
    // Scale factors chosen so that the device's largest values fit its registers.
    let set_sf = |img: &mut Image, key: &str, sfs: &[(&str, i64)]| -> Result<(), SimError> {
        if let Some((map, block)) = img.block_mut(lib, key) {
            for (p, v) in sfs {
                if map.point(p).is_some() {
                    map.encode_raw(block, p, *v).map_err(reg)?;
                }
            }
        }
        Ok(())
    };
    Ok(match d.kind {
        DeviceKind::PvInverter => {
            let mut img = Image::sunspec(lib, &[1, 103, 120, 123, 160])?;
            common(&mut img, "PV inverter")?;
            let kwp = d.peak_kw();
            let (tilt, az) = d.pv_tilt_azimuth();
            set_sf(
                &mut img,
                "sunspec/103",
                &[
                    ("A_SF", -1),
                    ("V_SF", -1),
                    ("W_SF", 1),
                    ("Hz_SF", -2),
                    ("VA_SF", 1),
                    ("VAr_SF", 1),
                    ("PF_SF", -2),
                    ("WH_SF", 0),
                    ("DCA_SF", -1),
                    ("DCV_SF", -1),
                    ("DCW_SF", 1),
                    ("Tmp_SF", -1),
                ],
            )?;
            set_sf(
                &mut img,
                "sunspec/120",
                &[
                    ("WRtg_SF", 1),
                    ("VARtg_SF", 1),
                    ("VArRtg_SF", 1),
                    ("ARtg_SF", -1),
                    ("PFRtg_SF", -2),
                    ("WHRtg_SF", 0),
                    ("AhrRtg_SF", 0),
                    ("MaxChaRte_SF", 0),
                    ("MaxDisChaRte_SF", 0),
                ],
            )?;
            set_sf(
                &mut img,
                "sunspec/123",
                &[("WMaxLimPct_SF", 0), ("OutPFSet_SF", -3), ("VArPct_SF", 0)],
            )?;
            let mut w = Writer {
                lib,
                image: &mut img,
                device: &d.id,
            };
            w.raw("sunspec/120", "DERTyp", 4);
            w.f("sunspec/120", "WRtg", kwp * 850.0);
            w.f("sunspec/120", "VARtg", kwp * 850.0);
            // Mandatory nameplate points: reactive capability ±44 % (PF 0.9), 400 V three-phase current.
            for (q, sign) in [("Q1", 1.0), ("Q2", 1.0), ("Q3", -1.0), ("Q4", -1.0)] {
                w.f(
                    "sunspec/120",
                    &format!("VArRtg{q}"),
                    sign * kwp * 850.0 * 0.44,
                );
                w.f("sunspec/120", &format!("PFRtg{q}"), sign * 0.9);
            }
            w.f("sunspec/120", "ARtg", kwp * 850.0 / 400.0 / 3f64.sqrt());
            w.raw("sunspec/123", "Conn", 1);
            w.f("sunspec/123", "OutPFSet", 1.0);
            w.raw("sunspec/123", "OutPFSet_Ena", 0);
            w.raw("sunspec/123", "VArPct_Ena", 0);
            for p in ["Evt1", "Evt2", "EvtVnd1", "EvtVnd2", "EvtVnd3", "EvtVnd4"] {
                w.raw("sunspec/103", p, 0);
            }
            w.raw("sunspec/160", "N", 0);
            w.f("sunspec/123", "WMaxLimPct", 100.0);
            w.raw("sunspec/123", "WMaxLim_Ena", 0);
            (
                img,
                State::Pv {
                    last_cmd: None,
                    kwp,
                    tilt,
                    az,
                    wh: lifetime_wh,
                    kw: 0.0,
                },
            )
        }
        DeviceKind::Battery => {
            let mut img = Image::sunspec(lib, &[1, 802, 704, 203])?;
            common(&mut img, "Battery system")?;
            set_sf(
                &mut img,
                "sunspec/802",
                &[
                    ("AHRtg_SF", 0),
                    ("WHRtg_SF", 2),
                    ("WChaDisChaMax_SF", 1),
                    ("DisChaRte_SF", 0),
                    ("SoC_SF", -1),
                    ("DoD_SF", -1),
                    ("SoH_SF", -1),
                    ("V_SF", -1),
                    ("CellV_SF", -3),
                    ("A_SF", -1),
                    ("AMax_SF", 0),
                    ("W_SF", 1),
                ],
            )?;
            set_sf(
                &mut img,
                "sunspec/704",
                &[
                    ("PF_SF", -3),
                    ("WMaxLimPct_SF", 0),
                    ("WSet_SF", 0),
                    ("WSetPct_SF", 0),
                    ("VarSet_SF", 0),
                    ("VarSetPct_SF", 0),
                ],
            )?;
            set_sf(&mut img, "sunspec/203", METER_203_SF)?;
            let bat = d.battery();
            let cap = bat.capacity_kwh;
            let mut w = Writer {
                lib,
                image: &mut img,
                device: &d.id,
            };
            w.f("sunspec/802", "WHRtg", cap * 1000.0);
            w.f("sunspec/802", "WChaRteMax", bat.max_charge_kw * 1000.0);
            w.f(
                "sunspec/802",
                "WDisChaRteMax",
                bat.max_discharge_kw * 1000.0,
            );
            w.f("sunspec/802", "SoCMax", 100.0);
            w.f("sunspec/802", "SoCMin", 0.0);
            w.f("sunspec/802", "SoH", 97.0);
            w.raw("sunspec/802", "Typ", 4);
            // Mandatory status and control points: no alarms, remote control, connected and started.
            w.f("sunspec/802", "AHRtg", cap * 1000.0 / 760.0);
            for p in ["Evt1", "Evt2", "EvtVnd1", "EvtVnd2", "AlmRst", "LocRemCtl"] {
                w.raw("sunspec/802", p, 0);
            }
            w.raw("sunspec/802", "SetOp", 1);
            w.raw("sunspec/802", "SetInvState", 3);
            w.raw("sunspec/203", "Evt", 0);
            (
                img,
                State::Battery {
                    cap_kwh: cap,
                    max_c: bat.max_charge_kw,
                    max_d: bat.max_discharge_kw,
                    min_soc: bat.min_soc_ratio,
                    soc_kwh: cap * 0.5,
                    kw: 0.0,
                    imp_wh: lifetime_wh,
                    exp_wh: lifetime_wh / 2.0,
                    last_cmd: None,
                },
            )
        }
        DeviceKind::Meter => {
            let mut img = Image::sunspec(lib, &[1, 203])?;
            common(&mut img, "AC meter")?;
            if let Some((map, block)) = img.block_mut(lib, "sunspec/203") {
                map.encode_raw(block, "Evt", 0).map_err(reg)?;
            }
            set_sf(&mut img, "sunspec/203", METER_203_SF)?;
            (
                img,
                State::Meter {
                    participant: d.participant.clone().unwrap_or_default(),
                    kw: 0.0,
                    imp_wh: lifetime_wh,
                },
            )
        }
        DeviceKind::HeatSubstation => (
            vendor()?,
            State::Substation {
                annual_heat: d.annual_heat(),
            },
        ),
        DeviceKind::HeatMeter => (
            vendor()?,
            State::HeatMeter {
                annual_heat: substation_annual_heat(site, d),
                wh: lifetime_wh * 10.0,
            },
        ),
        DeviceKind::PowerToHeat => {
            let mut img = vendor()?;
            let unit = d.heat_unit();
            let max_kw = unit.rated_kw;
            let cap = unit.store_kwh;
            let mut w = Writer {
                lib,
                image: &mut img,
                device: &d.id,
            };
            w.f(&d.map, "max_power_kw", max_kw);
            w.f(&d.map, "store_capacity_kwh", cap);
            w.raw(&d.map, "revert_seconds", REVERT_AFTER.as_secs() as i64);
            (
                img,
                State::P2h {
                    max_kw,
                    cap_kwh: cap,
                    store_kwh: cap * 0.3,
                    kw: 0.0,
                    elec_wh: lifetime_wh,
                    heat_wh: lifetime_wh,
                    annual_heat: substation_annual_heat(site, d),
                    last_cmd: None,
                },
            )
        }
    })
}

/// Model 203's mandatory voltages and currents for a balanced three-phase 230/400 V load of `w` watts.
fn meter_voltages_currents(w: &mut Writer<'_>, watts: f64) {
    let phase_a = watts.abs() / 230.0 / 3.0;
    w.f("sunspec/203", "A", 3.0 * phase_a);
    for p in ["AphA", "AphB", "AphC"] {
        w.f("sunspec/203", p, phase_a);
    }
    for p in ["PhV", "PhVphA", "PhVphB", "PhVphC"] {
        w.f("sunspec/203", p, 230.0);
    }
    for p in ["PPV", "PhVphAB", "PhVphBC", "PhVphCA"] {
        w.f("sunspec/203", p, 400.0);
    }
}

/// Advances every device by `dt_h` hours ending at `t`.
fn step_all(
    site: &Site,
    lib: &ModelLibrary,
    seed: u64,
    t: DateTime<Utc>,
    dt_h: f64,
    devices: &mut [SimDevice],
    truth: &watch::Sender<SimTruth>,
) {
    let lat = site.config.site.latitude;
    let lon = site.config.site.longitude;
    let outdoor = profiles::outdoor_c(seed, t);
    // One sun position per tick serves every participant's lighting shape.
    let (sun_elev, _) = profiles::sun_position(t, lat, lon);
    // Heat per substation (now, annual mean), shared by controllers, meters, P2H and aux loads.
    let mut heat_by_sub: HashMap<String, (f64, f64)> = HashMap::new();
    for d in site.devices_of(DeviceKind::HeatSubstation) {
        if let Some(sub) = &d.substation {
            let annual = d.annual_heat();
            heat_by_sub.insert(
                sub.clone(),
                (profiles::heat_kw(seed, t, annual), annual / 8760.0),
            );
        }
    }
    let mut tr = SimTruth {
        at: Some(t),
        ..Default::default()
    };
    // Controlled devices first: meters measure what they do.
    let mut controlled_kw: HashMap<String, f64> = HashMap::new();
    let order: Vec<usize> = {
        let mut v: Vec<usize> = (0..devices.len()).collect();
        v.sort_by_key(|i| matches!(devices[*i].state, State::Meter { .. }));
        v
    };
    for i in order {
        let dev = &mut devices[i];
        let mut bank = dev.bank.lock().unwrap_or_else(|e| e.into_inner());
        // Client writes land in the bank: take them into the image before updating it.
        let written = !bank.take_writes().is_empty();
        let len = dev.image.words.len() as u16;
        dev.image.words = bank.get(Table::Holding, dev.image.base, len);
        let id = dev.cfg.id.clone();
        let mut w = Writer {
            lib,
            image: &mut dev.image,
            device: &id,
        };
        match &mut dev.state {
            State::Pv {
                last_cmd,
                kwp,
                tilt,
                az,
                wh,
                kw,
            } => {
                *wh += *kw * 1000.0 * dt_h;
                let mut p = profiles::pv_kw(seed, t, lat, lon, *kwp, *tilt, *az);
                if written {
                    *last_cmd = Some(Instant::now());
                }
                let mut ena = w.get("sunspec/123", "WMaxLim_Ena").unwrap_or(0.0);
                // 123's own timer (0 = none): the limit lapses unless refreshed.
                let timer = revert_timer(w.get("sunspec/123", "WMaxLimPct_RvrtTms"), None);
                if ena == 1.0
                    && timer.is_some_and(|d| last_cmd.map_or(true, |t0| t0.elapsed() >= d))
                {
                    w.raw("sunspec/123", "WMaxLim_Ena", 0);
                    ena = 0.0;
                }
                if ena == 1.0 {
                    let pct = w.get("sunspec/123", "WMaxLimPct").unwrap_or(100.0);
                    p = p.min(*kwp * 0.85 * pct / 100.0);
                }
                *kw = p;
                tr.pv_kw += p;
                w.f("sunspec/103", "W", p * 1000.0);
                w.f("sunspec/103", "VA", p * 1000.0);
                w.f("sunspec/103", "WH", wh.floor());
                let a = p * 1000.0 / 400.0 / 3f64.sqrt();
                w.f("sunspec/103", "A", 3.0 * a);
                for ph in ["AphA", "AphB", "AphC"] {
                    w.f("sunspec/103", ph, a);
                }
                w.f("sunspec/103", "PhVphA", 230.0);
                w.f("sunspec/103", "PhVphB", 230.0);
                w.f("sunspec/103", "PhVphC", 230.0);
                w.f("sunspec/103", "Hz", 50.0);
                w.f("sunspec/103", "PF", 1.0);
                w.f("sunspec/103", "DCW", p * 1000.0 / 0.965);
                w.f("sunspec/103", "DCV", if p > 0.0 { 620.0 } else { 0.0 });
                w.f("sunspec/103", "TmpCab", outdoor + 10.0 + p / *kwp * 25.0);
                w.raw("sunspec/103", "St", if p > 0.0 { 4 } else { 2 });
            }
            State::Battery {
                cap_kwh,
                max_c,
                max_d,
                min_soc,
                soc_kwh,
                kw,
                imp_wh,
                exp_wh,
                last_cmd,
            } => {
                // Integrate the power held since the last tick.
                let e = *kw * dt_h;
                if e > 0.0 {
                    *soc_kwh += e * crate::config::BATTERY_CHARGE_EFFICIENCY;
                    *imp_wh += e * 1000.0;
                } else {
                    *soc_kwh += e / crate::config::BATTERY_DISCHARGE_EFFICIENCY;
                    *exp_wh += -e * 1000.0;
                }
                *soc_kwh = soc_kwh.clamp(0.0, *cap_kwh);
                if written {
                    *last_cmd = Some(Instant::now());
                }
                let timer = revert_timer(w.get("sunspec/704", "WSetRvrtTms"), Some(REVERT_AFTER));
                let fresh = last_cmd.is_some_and(|t0| timer.map_or(true, |d| t0.elapsed() < d));
                let mut ena = w.get("sunspec/704", "WSetEna").unwrap_or(0.0) == 1.0;
                if ena && !fresh {
                    // Reverted by its own watchdog: the enable drops, as a read shows.
                    w.raw("sunspec/704", "WSetEna", 0);
                    ena = false;
                }
                // 704 WSet: W, positive = discharge.
                let wset = w.get("sunspec/704", "WSet").unwrap_or(0.0);
                let mut p = if fresh && ena { -wset / 1000.0 } else { 0.0 };
                p = p.clamp(-*max_d, *max_c);
                // Stay inside the usable window over the next few seconds of simulated time.
                if p > 0.0 && *soc_kwh >= *cap_kwh * 0.995 {
                    p = 0.0;
                }
                if p < 0.0 && *soc_kwh <= *cap_kwh * *min_soc {
                    p = 0.0;
                }
                *kw = p;
                controlled_kw.insert(dev.cfg.participant.clone().unwrap_or_default(), p.max(0.0));
                tr.battery_kw.insert(id.clone(), p);
                tr.battery_soc.insert(id.clone(), *soc_kwh / *cap_kwh);
                w.f("sunspec/802", "SoC", *soc_kwh / *cap_kwh * 100.0);
                w.f("sunspec/802", "W", -p * 1000.0);
                w.f("sunspec/802", "V", 760.0);
                w.f("sunspec/802", "A", -p * 1000.0 / 760.0);
                w.raw(
                    "sunspec/802",
                    "ChaSt",
                    if p > 0.0 {
                        6
                    } else if p < 0.0 {
                        5
                    } else {
                        4
                    },
                );
                w.raw("sunspec/802", "State", 3);
                w.f("sunspec/203", "W", p * 1000.0);
                w.f("sunspec/203", "Hz", 50.0);
                meter_voltages_currents(&mut w, p * 1000.0);
                w.f("sunspec/203", "TotWhImp", imp_wh.floor());
                w.f("sunspec/203", "TotWhExp", exp_wh.floor());
            }
            State::Meter {
                participant,
                kw,
                imp_wh,
            } => {
                *imp_wh += *kw * 1000.0 * dt_h;
                let p = match controlled_kw.get(participant.as_str()) {
                    Some(c) => *c,
                    None => participant_kw(site, seed, t, participant, sun_elev, &heat_by_sub),
                };
                *kw = p;
                tr.load_kw += p;
                w.f("sunspec/203", "W", p * 1000.0);
                w.f("sunspec/203", "Hz", 50.0);
                meter_voltages_currents(&mut w, p * 1000.0);
                w.f("sunspec/203", "TotWhImp", imp_wh.floor());
                w.f("sunspec/203", "TotWhExp", 0.0);
            }
            State::Substation { annual_heat } => {
                let key = dev.cfg.map.clone();
                let heat = profiles::heat_kw(seed, t, *annual_heat);
                let peak = *annual_heat / 8760.0 * 3.0;
                let flow = (75.0 - 1.1 * outdoor).clamp(55.0, 90.0);
                w.f(&key, "outdoor_temp", outdoor);
                w.f(&key, "flow_temp", flow);
                w.f(
                    &key,
                    "return_temp",
                    flow - 20.0 * (heat / peak).clamp(0.3, 1.0),
                );
                w.f(&key, "valve_pct", (heat / peak * 100.0).clamp(0.0, 100.0));
                w.raw(&key, "operating_mode", 1);
            }
            State::HeatMeter { annual_heat, wh } => {
                let key = dev.cfg.map.clone();
                let heat = profiles::heat_kw(seed, t, *annual_heat);
                *wh += heat * 1000.0 * dt_h;
                let flow = (75.0 - 1.1 * outdoor).clamp(55.0, 90.0);
                let dt = 20.0;
                w.f(&key, "power_kw", heat);
                w.f(&key, "energy_kwh", *wh / 1000.0);
                w.f(&key, "flow_m3h", heat / (1.163 * dt));
                w.f(&key, "t1", flow);
                w.f(&key, "t2", flow - dt);
                w.f(&key, "volume_m3", *wh / 1000.0 / (1.163 * dt));
            }
            State::P2h {
                max_kw,
                cap_kwh,
                store_kwh,
                kw,
                elec_wh,
                heat_wh,
                annual_heat,
                last_cmd,
            } => {
                let key = dev.cfg.map.clone();
                // The store feeds the substation's return up to half of its demand.
                let demand = profiles::heat_kw(seed, t, *annual_heat);
                let out_kw = (demand * 0.5).min(*store_kwh / dt_h.max(1e-6)).max(0.0);
                let loss = *store_kwh * 0.005 * dt_h;
                *store_kwh += *kw * crate::config::P2H_EFFICIENCY * dt_h - out_kw * dt_h - loss;
                *store_kwh = store_kwh.clamp(0.0, *cap_kwh);
                *elec_wh += *kw * 1000.0 * dt_h;
                *heat_wh += out_kw * 1000.0 * dt_h;
                if written {
                    *last_cmd = Some(Instant::now());
                }
                let timer = revert_timer(w.get(&key, "revert_seconds"), Some(REVERT_AFTER));
                let fresh = last_cmd.is_some_and(|t0| timer.map_or(true, |d| t0.elapsed() < d));
                let mode = w.get(&key, "mode").unwrap_or(0.0);
                let set = w.get(&key, "power_setpoint_kw").unwrap_or(0.0);
                let mut p = if fresh && mode == 1.0 {
                    set.clamp(0.0, *max_kw)
                } else {
                    0.0
                };
                if *store_kwh >= *cap_kwh * 0.999 {
                    p = 0.0;
                }
                *kw = p;
                if let Some(pid) = &dev.cfg.participant {
                    controlled_kw.insert(pid.clone(), p);
                }
                tr.p2h_kw += p;
                tr.store_kwh += *store_kwh;
                w.f(&key, "power_kw", p);
                w.f(&key, "store_energy_kwh", *store_kwh);
                w.f(&key, "store_temp", 40.0 + 50.0 * *store_kwh / *cap_kwh);
                w.f(&key, "elec_energy_kwh", *elec_wh / 1000.0);
                w.f(&key, "heat_energy_kwh", *heat_wh / 1000.0);
            }
        }
        bank.set(Table::Holding, dev.image.base, &dev.image.words);
    }
    let _ = truth.send(tr);
}
