//! Site configuration: schema (serde), loading (`config` crate: the file, then
//! `PED__…` environment overrides) and validation that names the key and the fix.
//!
//! Validation happens once, at start: every later stage receives a [`Site`]
//! that is known to be coherent (unique ids and PRMs, resolvable addresses,
//! known register maps, meters that exist).

use crate::ids::{validate_id, Prm};
use crate::time::Grid;
use crate::units::SignConvention;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// One problem found in a site config: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.key, self.message, self.fix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read site config {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("site config {file} cannot be parsed: {message} (fix: {fix})")]
    Parse {
        file: PathBuf,
        message: String,
        fix: String,
    },
    #[error("site config {file} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub site: SiteSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub polling: PollingSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default)]
    pub plan: PlanSection,
    #[serde(default)]
    pub keys: KeysSection,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    #[serde(default)]
    pub participants: Vec<ParticipantConfig>,
    /// The district's collective self-consumption operations; none declared:
    /// one operation of every producer and participant, named by
    /// `keys.operation_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<OperationConfig>,
    #[serde(default)]
    pub ledger: LedgerSection,
    #[serde(default)]
    pub delivery: Option<DeliverySection>,
}

/// `[ledger]`: where the SQLite ledger lives and how long it keeps every
/// counter snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// Default: `<output_dir>/ledger/ped.sqlite`. Relative paths are relative
    /// to the working directory, like `site.output_dir`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Counter snapshots older than this many days are folded to one per
    /// counter and UTC day (each counter's latest is always kept): a restart
    /// needs only the latest, and closed periods keep their own energies.
    /// 35 days cover a monthly key file and its re-computation. 0 keeps all.
    #[serde(default = "default_snapshot_days")]
    pub snapshot_retention_days: u32,
}

fn default_snapshot_days() -> u32 {
    35
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            path: None,
            snapshot_retention_days: default_snapshot_days(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    pub id: String,
    pub name: String,
    #[serde(default = "default_tz")]
    pub timezone: String,
    #[serde(default = "default_step")]
    pub settlement_minutes: u32,
    pub latitude: f64,
    pub longitude: f64,
    /// Where keys, period records and plans are written (relative to the working directory).
    #[serde(default = "default_output")]
    pub output_dir: PathBuf,
    /// Extra register maps, read at start on top of the ones built into the binary.
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
}

fn default_tz() -> String {
    "Europe/Paris".into()
}
fn default_step() -> u32 {
    15
}
fn default_output() -> PathBuf {
    PathBuf::from("out")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// File holding the bearer token that endpoints changing state require
    /// (`http::auth`); without it such endpoints stay disabled.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Connections open at once; the next waits in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a connection has to send a request's headers, and the longest
    /// it may stay idle between two requests (at most 300 used).
    #[serde(default = "default_header_timeout_s")]
    pub header_timeout_s: u64,
    /// Series naming a participant on `/metrics`; beyond loopback they also
    /// need the token.
    #[serde(default = "default_true")]
    pub participant_metrics: bool,
    /// `Host` names accepted (no port); empty: loopback names on a loopback
    /// listener, any name beyond it.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}
impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_listen(),
            token_file: None,
            max_connections: default_max_connections(),
            header_timeout_s: default_header_timeout_s(),
            participant_metrics: true,
            allowed_hosts: Vec::new(),
        }
    }
}
fn default_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_max_connections() -> usize {
    64
}
fn default_header_timeout_s() -> u64 {
    10
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollingSection {
    /// Real-time interval between two polls of a device.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Longest wait between reconnect attempts of a failing endpoint.
    #[serde(default = "default_backoff")]
    pub max_backoff_ms: u64,
}
impl Default for PollingSection {
    fn default() -> Self {
        PollingSection {
            interval_ms: default_interval(),
            timeout_ms: default_timeout(),
            max_backoff_ms: default_backoff(),
        }
    }
}
fn default_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    1000
}
fn default_backoff() -> u64 {
    30_000
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Master switch: without it ped never writes to a device, whatever the devices allow.
    #[serde(default)]
    pub writes_allowed: bool,
    /// Controlled devices are released to their own safe mode when no new plan
    /// has arrived for this many settlement steps. Default 2.
    pub plan_loss_steps: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    #[serde(default = "default_horizon")]
    pub horizon_hours: u32,
    /// Wall-clock budget of one solve.
    #[serde(default = "default_budget")]
    pub budget_ms: u64,
    #[serde(default = "default_local_price")]
    pub local_price_eur_per_kwh: f64,
    #[serde(default = "default_export_price")]
    pub export_price_eur_per_kwh: f64,
    #[serde(default = "default_import_price")]
    pub import_price_eur_per_kwh: f64,
    /// Price of the network heat that power-to-heat displaces.
    #[serde(default = "default_heat_price")]
    pub heat_price_eur_per_kwh: f64,
    /// Export prices over time (`start;eur_per_kwh` rows, e.g. day-ahead
    /// prices), read again before every plan; `export_price_eur_per_kwh`
    /// where it says nothing. Relative to the working directory, like
    /// `site.output_dir`. See `prices`.
    #[serde(default)]
    pub export_prices_file: Option<PathBuf>,
    /// Plan tracking between re-solves: the measured surplus above the
    /// plan's goes to storage (`plan::track`). Default on.
    #[serde(default = "default_tracking")]
    pub tracking: bool,
}
impl Default for PlanSection {
    fn default() -> Self {
        PlanSection {
            horizon_hours: default_horizon(),
            budget_ms: default_budget(),
            local_price_eur_per_kwh: default_local_price(),
            export_price_eur_per_kwh: default_export_price(),
            import_price_eur_per_kwh: default_import_price(),
            heat_price_eur_per_kwh: default_heat_price(),
            export_prices_file: None,
            tracking: default_tracking(),
        }
    }
}
fn default_horizon() -> u32 {
    24
}
fn default_budget() -> u64 {
    5000
}
fn default_local_price() -> f64 {
    0.10
}
fn default_export_price() -> f64 {
    0.06
}
fn default_import_price() -> f64 {
    0.2516
}
fn default_heat_price() -> f64 {
    0.09
}
fn default_tracking() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyPolicy {
    #[default]
    Prorata,
    Static,
    Optimised,
}

impl KeyPolicy {
    /// The name the site config, the records and the files use.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPolicy::Prorata => "prorata",
            KeyPolicy::Static => "static",
            KeyPolicy::Optimised => "optimised",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    #[serde(default)]
    pub policy: KeyPolicy,
    /// Export precision in units per 100 %: 1000 = 0.1 %.
    #[serde(default = "default_precision")]
    pub units_per_one: u32,
    /// Optimised keys: wall-clock budget of the month solver; past it the
    /// run falls back to per-step optimised keys (flagged in the manifest).
    /// 0 turns the month solver off.
    #[serde(default = "default_month_budget_ms")]
    pub month_budget_ms: u64,
    /// Optimised keys: floor on a participant's month share, as a ratio of
    /// its subscribed share (`static_share`); unset: no floor.
    #[serde(default)]
    pub floor_ratio: Option<f64>,
    /// Optimised keys: nobody's month allocation worth less than pro rata.
    #[serde(default = "default_keys_no_worse")]
    pub no_worse_than_pro_rata: bool,
    /// The Enedis id of the operation (`ACC` + 8 digits) the keys are for;
    /// it names the key files of the `enedis` layout.
    #[serde(default)]
    pub operation_id: Option<String>,
    /// A load-curve point above this average power (kW) cannot be a real
    /// reading of any meter of the operation: it is reported and treated as
    /// missing (as is a negative one).
    #[serde(default = "default_max_load_curve_kw")]
    pub max_load_curve_kw: f64,
    /// Layout of the key files `ped keys --format enedis` writes: `enedis`
    /// (the DSO's sample: one file per operation, local time without offset)
    /// or `enedis_iso` (one file per producer, local time with offset).
    #[serde(default)]
    pub layout: crate::dso::enedis::LayoutName,
    /// Single choices of the layout overridden, for when the DSO's
    /// specification turns out to differ from the assumed ones.
    #[serde(default)]
    pub file: crate::dso::enedis::LayoutOverrides,
}
impl Default for KeysSection {
    fn default() -> Self {
        KeysSection {
            policy: KeyPolicy::default(),
            units_per_one: default_precision(),
            month_budget_ms: default_month_budget_ms(),
            floor_ratio: None,
            no_worse_than_pro_rata: default_keys_no_worse(),
            operation_id: None,
            max_load_curve_kw: default_max_load_curve_kw(),
            layout: Default::default(),
            file: Default::default(),
        }
    }
}
fn default_max_load_curve_kw() -> f64 {
    // Above the 5 MW ceiling of an operation's PV and any connection a
    // participant of one has; a meter reset or a unit slip lands far beyond.
    10_000.0
}
fn default_precision() -> u32 {
    10_000
}
fn default_month_budget_ms() -> u64 {
    60_000
}
fn default_keys_no_worse() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    PvInverter,
    Battery,
    HeatSubstation,
    HeatMeter,
    PowerToHeat,
    Meter,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::PvInverter => "pv_inverter",
            DeviceKind::Battery => "battery",
            DeviceKind::HeatSubstation => "heat_substation",
            DeviceKind::HeatMeter => "heat_meter",
            DeviceKind::PowerToHeat => "power_to_heat",
            DeviceKind::Meter => "meter",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    pub kind: DeviceKind,
    pub label: Option<String>,
    /// `host:port` of the Modbus TCP endpoint (a device or a gateway).
    pub address: String,
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// `sunspec` (discovered at 40000, 0, 50000) or the key of a vendor map, e.g. `vendor/trovis5576`.
    #[serde(default = "default_map")]
    pub map: String,
    #[serde(default)]
    pub sign: SignConvention,
    /// Points ped may write on this device (also needs `control.writes_allowed`).
    #[serde(default)]
    pub writes: Vec<String>,
    /// Producer PRM (PV plants, batteries).
    pub prm: Option<Prm>,
    /// For meters: the participant whose consumption this meter measures.
    pub participant: Option<String>,
    /// Substation this device belongs to (heat meters, power-to-heat).
    pub substation: Option<String>,
    // PV nameplate and orientation.
    pub kwp: Option<f64>,
    pub tilt_deg: Option<f64>,
    pub azimuth_deg: Option<f64>,
    // Battery and heat store ratings.
    pub capacity_kwh: Option<f64>,
    pub max_charge_kw: Option<f64>,
    pub max_discharge_kw: Option<f64>,
    pub min_soc_ratio: Option<f64>,
    pub max_power_kw: Option<f64>,
    /// Annual heat delivered (substations), for the simulator and forecasts.
    pub annual_heat_kwh: Option<f64>,
    /// Framing on the wire: `tcp` (Modbus TCP, default), `rtu-over-tcp` (RTU
    /// frames through a transparent serial-to-TCP gateway) or `rtu` (a serial port).
    #[serde(default)]
    pub transport: Transport,
    /// This device's poll interval; default `polling.interval_ms`.
    pub interval_ms: Option<u64>,
    /// Setpoint bounds in kW (ped's convention, positive = charge/consume),
    /// applied before every write on top of the ratings.
    pub setpoint_min_kw: Option<f64>,
    pub setpoint_max_kw: Option<f64>,
    /// Largest setpoint change per second, kW/s.
    pub ramp_kw_per_s: Option<f64>,
    /// The device's own communication watchdog, s: setpoints are re-sent at a
    /// third of it so that it never lapses while ped is in control. Default 15.
    pub revert_timeout_s: Option<f64>,
    /// The serial line, for `transport = "rtu"` (then `address` is the port's
    /// path, e.g. `/dev/ttyUSB0`). Every device on one port gives the same line.
    pub serial: Option<SerialConfig>,
    /// `power_to_heat` only: the highest temperature (°C) its heat store may
    /// reach, which is the supply temperature of the network it feeds. The
    /// planner derates the unit's heat over the last few kelvins below it,
    /// from the store temperature the unit's map reports (`store_temp`).
    pub max_supply_temp_c: Option<f64>,
}

impl DeviceConfig {
    /// Panel tilt and azimuth (degrees, azimuth 180 = south). A plant whose
    /// config leaves them out is taken as a typical south-facing 20° roof;
    /// the forecast, the curtailment split and the simulator must agree on it.
    pub fn pv_tilt_azimuth(&self) -> (f64, f64) {
        (
            self.tilt_deg.unwrap_or(20.0),
            self.azimuth_deg.unwrap_or(180.0),
        )
    }
}

/// Character framing parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// One RS-485 line. Defaults are the Modbus serial line specification's:
/// 19200 baud, even parity, 8 data bits, 1 stop bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_parity")]
    pub parity: Parity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Quiet time before each request, ms. Default: 3.5 characters at `baud`,
    /// and 1.75 ms above 19200 baud (Modbus over serial line, §2.5.1.1).
    pub silence_ms: Option<f64>,
}

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig {
            baud: default_baud(),
            parity: default_parity(),
            data_bits: default_data_bits(),
            stop_bits: default_stop_bits(),
            silence_ms: None,
        }
    }
}

impl SerialConfig {
    /// The inter-frame silence this line keeps between requests.
    pub fn silence(&self) -> std::time::Duration {
        if let Some(ms) = self.silence_ms {
            // `check` keeps it in 0..=1000; a value that slipped past falls
            // back to the specification's 3.5 characters below.
            if let Some(d) = duration_s(ms / 1000.0) {
                return d;
            }
        }
        if self.baud > 19_200 || self.baud == 0 {
            return std::time::Duration::from_micros(1_750);
        }
        // One character is 11 bits on the wire (start, 8 data, parity or a
        // second stop bit, stop).
        std::time::Duration::from_secs_f64(3.5 * 11.0 / f64::from(self.baud))
    }
}

fn default_baud() -> u32 {
    19_200
}
fn default_parity() -> Parity {
    Parity::Even
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    #[default]
    Tcp,
    RtuOverTcp,
    Rtu,
}

fn default_unit() -> u8 {
    1
}
fn default_map() -> String {
    "sunspec".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantKind {
    Household,
    School,
    Gym,
    Public,
    Office,
    Shop,
    CareHome,
    Lighting,
    SubstationAux,
    Battery,
    PowerToHeat,
}

impl ParticipantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantKind::Household => "household",
            ParticipantKind::School => "school",
            ParticipantKind::Gym => "gym",
            ParticipantKind::Public => "public",
            ParticipantKind::Office => "office",
            ParticipantKind::Shop => "shop",
            ParticipantKind::CareHome => "care_home",
            ParticipantKind::Lighting => "lighting",
            ParticipantKind::SubstationAux => "substation_aux",
            ParticipantKind::Battery => "battery",
            ParticipantKind::PowerToHeat => "power_to_heat",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    pub id: String,
    pub kind: ParticipantKind,
    pub label: Option<String>,
    /// Group for dashboards, e.g. the building of a dwelling.
    pub group: Option<String>,
    pub prm: Prm,
    /// Device id of the meter that measures this participant.
    pub meter: String,
    #[serde(default = "default_tariff")]
    pub tariff_eur_per_kwh: f64,
    /// 1 = served first (e.g. social housing).
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Static share (0..1) used by the `static` key policy.
    #[serde(default)]
    pub static_share: f64,
    /// Expected annual consumption, for the simulator's profiles and forecasts' priors.
    #[serde(default)]
    pub annual_kwh: f64,
    /// Time-of-use windows in the site's local time (e.g. French HC
    /// 22:00–06:00); `tariff_eur_per_kwh` applies outside every window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tou: Vec<TouWindow>,
    /// First local day in the operation (`YYYY-MM-DD`); unset: from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Last local day in the operation (`YYYY-MM-DD`); unset: still a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
    /// The supply contract's power (kVA): a load-curve point above twice it
    /// is not a reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed_kva: Option<f64>,
}

/// `[[operations]]`: one collective self-consumption operation as declared
/// to the DSO. The dispatch stays site-wide; production is shared, keys are
/// computed, files named and fairness kept within each operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationConfig {
    /// The Enedis id of the operation, `ACC` + 8 digits.
    pub id: String,
    pub name: Option<String>,
    /// Device ids of the operation's producers (PV plants, batteries).
    pub producers: Vec<String>,
    /// Participant ids; a participant is a member of one operation.
    pub participants: Vec<String>,
}

/// One operation resolved against the site: indices into
/// [`Site::producers`] and [`SiteConfig::participants`], in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Enedis id; `None` for an implicit operation without `keys.operation_id`.
    pub id: Option<String>,
    pub name: String,
    pub producers: Vec<usize>,
    pub participants: Vec<usize>,
}

impl Operation {
    /// What names the operation in logs and statements.
    pub fn label(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }
}

/// A time-of-use window, `from` inclusive to `to` exclusive, both "HH:MM" in
/// the site's time zone; a window with `from` after `to` runs over midnight.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouWindow {
    pub from: String,
    pub to: String,
    pub eur_kwh: f64,
}

/// Minutes after local midnight of "HH:MM" (24:00 allowed as an end).
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

/// `YYYY-MM-DD` strictly (a local calendar day).
pub fn parse_day(s: &str) -> Option<chrono::NaiveDate> {
    (s.len() == 10)
        .then(|| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten()
}

/// `ACC` followed by exactly 8 digits, the form of Enedis operation ids.
pub fn valid_operation_id(s: &str) -> bool {
    s.len() == 11 && s.starts_with("ACC") && s[3..].bytes().all(|b| b.is_ascii_digit())
}

impl ParticipantConfig {
    /// First and last local day in the operation (`None`: open on that side).
    /// Dates that do not parse count as open here; `check` reports them.
    pub fn membership(&self) -> (Option<chrono::NaiveDate>, Option<chrono::NaiveDate>) {
        (
            self.entry.as_deref().and_then(parse_day),
            self.exit.as_deref().and_then(parse_day),
        )
    }

    /// Retail price (€/kWh) at local minute-of-day `minute`: the first TOU
    /// window that holds it, else the flat tariff. Windows that fail to
    /// parse are ignored here (validation reports them).
    pub fn tariff_at_minute(&self, minute: u32) -> f64 {
        for w in &self.tou {
            let (Some(a), Some(b)) = (parse_hhmm(&w.from), parse_hhmm(&w.to)) else {
                continue;
            };
            let inside = if a <= b {
                (a..b).contains(&minute)
            } else {
                minute >= a || minute < b
            };
            if inside {
                return w.eur_kwh;
            }
        }
        self.tariff_eur_per_kwh
    }

    /// Retail price at instant `t` in time zone `tz`.
    pub fn tariff_at(&self, t: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> f64 {
        use chrono::Timelike;
        let local = t.with_timezone(&tz);
        self.tariff_at_minute(local.hour() * 60 + local.minute())
    }
}

fn default_tariff() -> f64 {
    0.2516
}
fn default_priority() -> u8 {
    2
}

/// A validated site: the config plus what validation resolved.
#[derive(Debug, Clone)]
pub struct Site {
    pub config: SiteConfig,
    pub grid: Grid,
    pub source: PathBuf,
}

impl Site {
    pub fn device(&self, id: &str) -> Option<&DeviceConfig> {
        self.config.devices.iter().find(|d| d.id == id)
    }
    pub fn devices_of(&self, kind: DeviceKind) -> impl Iterator<Item = &DeviceConfig> {
        self.config.devices.iter().filter(move |d| d.kind == kind)
    }
    /// Producers in file order: PV plants then batteries (batteries produce while discharging).
    pub fn producers(&self) -> Vec<&DeviceConfig> {
        let mut v: Vec<&DeviceConfig> = self.devices_of(DeviceKind::PvInverter).collect();
        v.extend(self.devices_of(DeviceKind::Battery));
        v
    }
    /// The site's operations: the declared `[[operations]]` or, when none
    /// is, one operation of every producer and participant.
    pub fn operations(&self) -> Vec<Operation> {
        let cfg = &self.config;
        let producers = self.producers();
        if cfg.operations.is_empty() {
            return vec![Operation {
                id: cfg.keys.operation_id.clone(),
                name: cfg.site.name.clone(),
                producers: (0..producers.len()).collect(),
                participants: (0..cfg.participants.len()).collect(),
            }];
        }
        cfg.operations
            .iter()
            .map(|o| Operation {
                id: Some(o.id.clone()),
                name: o.name.clone().unwrap_or_else(|| o.id.clone()),
                producers: (0..producers.len())
                    .filter(|&i| o.producers.contains(&producers[i].id))
                    .collect(),
                participants: (0..cfg.participants.len())
                    .filter(|&i| o.participants.contains(&cfg.participants[i].id))
                    .collect(),
            })
            .collect()
    }
    /// Devices grouped by Modbus endpoint: one connection per endpoint.
    pub fn endpoints(&self) -> BTreeMap<String, Vec<&DeviceConfig>> {
        let mut m: BTreeMap<String, Vec<&DeviceConfig>> = BTreeMap::new();
        for d in &self.config.devices {
            m.entry(d.address.clone()).or_default().push(d);
        }
        m
    }
}

/// Loads a site config: the TOML file, then `PED__SECTION__KEY` environment
/// overrides (e.g. `PED__SITE__SETTLEMENT_MINUTES=30`), then validation.
/// `known_maps` are the register-map keys available (built in and `models_dir`).
pub fn load(path: &Path, known_maps: &BTreeSet<String>) -> Result<Site, ConfigError> {
    let config = load_unvalidated(path)?;
    validate(config, path, known_maps)
}

pub fn load_unvalidated(path: &Path) -> Result<SiteConfig, ConfigError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(ConfigError::Read {
            file: path.to_path_buf(),
            source: e,
        });
    }
    let built = ::config::Config::builder()
        .add_source(::config::File::from(path).format(::config::FileFormat::Toml))
        .add_source(
            ::config::Environment::with_prefix("PED")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            message: e.to_string(),
            fix: "check the TOML syntax at the place named (quotes, brackets, one value per key)"
                .into(),
        })?;
    built
        .try_deserialize::<SiteConfig>()
        .map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            fix: parse_fix(&e.to_string()),
            message: e.to_string(),
        })
}

fn parse_fix(msg: &str) -> String {
    if msg.contains("unknown field") {
        "remove or rename the key; the accepted keys are listed in the message and in site-configs/README.md".into()
    } else if msg.contains("missing field") {
        "add the missing key (see site-configs/README.md for its meaning and unit)".into()
    } else if msg.contains("unknown variant") {
        "use one of the values listed in the message".into()
    } else if msg.contains("expected a boolean") {
        "write true or false, without quotes".into()
    } else if msg.contains("PRM") {
        "a PRM is exactly 14 digits, written as a quoted string".into()
    } else {
        "correct the value's type (number, string, list) as documented in site-configs/README.md"
            .into()
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// `[[operations]]`: valid and unique ids, producers and participants that
/// exist, each in one operation, every participant in one.
fn check_operations(config: &SiteConfig, p: &mut Vec<Problem>) {
    if config.operations.is_empty() {
        return;
    }
    if let Some(id) = &config.keys.operation_id {
        p.push(problem(
            "keys.operation_id",
            format!("`{id}` is set and [[operations]] are declared: which operation is it?"),
            "remove keys.operation_id; each [[operations]] has its own id",
        ));
    }
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut producer_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut member_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, o) in config.operations.iter().enumerate() {
        let key = |f: &str| format!("operations[{i}].{f} (id `{}`)", o.id);
        if !valid_operation_id(&o.id) {
            p.push(problem(
                key("id"),
                format!("`{}` is not an Enedis operation id", o.id),
                "write `ACC` and the operation's 8 digits, e.g. \"ACC00000001\" (see the operation's convention)",
            ));
        }
        if let Some(j) = ids.insert(&o.id, i) {
            p.push(problem(
                key("id"),
                format!("duplicate operation id, also operations[{j}]"),
                "give every operation its own Enedis id",
            ));
        }
        if o.producers.is_empty() {
            p.push(problem(
                key("producers"),
                "no producer: the operation has nothing to share",
                "list the device ids of its PV plants (and batteries)",
            ));
        }
        for d in &o.producers {
            match config.devices.iter().find(|x| &x.id == d) {
                None => p.push(problem(
                    key("producers"),
                    format!("no device `{d}`"),
                    "name the id of a PV inverter or battery from [[devices]]",
                )),
                Some(x) if !matches!(x.kind, DeviceKind::PvInverter | DeviceKind::Battery) => p
                    .push(problem(
                        key("producers"),
                        format!("device `{d}` is a {}, not a producer", x.kind.as_str()),
                        "name a PV inverter or battery",
                    )),
                Some(_) => {
                    if let Some(other) = producer_of.insert(d, &o.id) {
                        p.push(problem(
                            key("producers"),
                            format!("`{d}` is already a producer of {other}"),
                            "a production installation takes part in one operation: keep it in one list",
                        ));
                    }
                }
            }
        }
        if o.participants.is_empty() {
            p.push(problem(
                key("participants"),
                "no participant: nobody to share with",
                "list the ids of its participants from [[participants]]",
            ));
        }
        for q in &o.participants {
            if !config.participants.iter().any(|x| &x.id == q) {
                p.push(problem(
                    key("participants"),
                    format!("no participant `{q}`"),
                    "name an id from [[participants]]",
                ));
            } else if let Some(other) = member_of.insert(q, &o.id) {
                p.push(problem(
                    key("participants"),
                    format!("`{q}` is already a member of {other}"),
                    "a consumer takes part in one operation: keep it in one list",
                ));
            }
        }
        if config.keys.policy == KeyPolicy::Static {
            let sum: f64 = config
                .participants
                .iter()
                .filter(|x| o.participants.contains(&x.id))
                .map(|x| x.static_share)
                .sum();
            if sum > 1.0 + 1e-9 {
                p.push(problem(
                    key("participants"),
                    format!("its members' static shares add up to {sum:.6} > 1"),
                    "scale the shares of the operation's members so that they add up to at most 1",
                ));
            }
        }
    }
    for (i, q) in config.participants.iter().enumerate() {
        if !member_of.contains_key(q.id.as_str()) {
            p.push(problem(
                format!("participants[{i}] (id `{}`)", q.id),
                "is in no operation: its consumption would be shared with nobody",
                "add its id to the participants of one [[operations]], or remove it",
            ));
        }
    }
}

/// Serial-line keys of one device: only with `transport = "rtu"`, within what
/// Modbus RTU allows, and the same line for every device on one port.
fn check_serial<'a>(
    p: &mut Vec<Problem>,
    key: &dyn Fn(&str) -> String,
    d: &'a DeviceConfig,
    i: usize,
    lines: &mut BTreeMap<&'a str, (SerialConfig, usize)>,
) {
    if d.transport != Transport::Rtu {
        if d.serial.is_some() {
            p.push(problem(
                key("serial"),
                "serial line settings on a device that is not on a serial port",
                "remove [devices.serial], or set transport = \"rtu\" and address = the port's path",
            ));
        }
        return;
    }
    if !d.address.starts_with('/') {
        p.push(problem(
            key("address"),
            format!("`{}` is not a serial port path", d.address),
            "with transport = \"rtu\" give the port's absolute path, e.g. address = \"/dev/ttyUSB0\" (or /dev/serial/by-id/...)",
        ));
    }
    let line = d.serial.clone().unwrap_or_default();
    if !(300..=4_000_000).contains(&line.baud) {
        p.push(problem(
            key("serial.baud"),
            format!("{} baud is outside 300..4000000", line.baud),
            "give the bus speed set on the devices, e.g. baud = 9600 or 19200",
        ));
    }
    if line.data_bits != 8 {
        p.push(problem(
            key("serial.data_bits"),
            format!("{} data bits: Modbus RTU frames are 8-bit", line.data_bits),
            "use data_bits = 8 (7 bits is Modbus ASCII, which ped does not speak)",
        ));
    }
    if !(1..=2).contains(&line.stop_bits) {
        p.push(problem(
            key("serial.stop_bits"),
            format!("{} stop bits", line.stop_bits),
            "use stop_bits = 1, or 2 with parity = \"none\"",
        ));
    }
    if let Some(ms) = line.silence_ms {
        if !(ms.is_finite() && (0.0..=1000.0).contains(&ms)) {
            p.push(problem(
                key("serial.silence_ms"),
                format!("{ms} ms is outside 0..1000"),
                "leave it out for 3.5 characters at the line's speed, or give a few ms",
            ));
        }
    }
    match lines.get(d.address.as_str()) {
        Some((other, j)) if *other != line => p.push(problem(
            key("serial"),
            format!(
                "{} shares {} with devices[{j}], whose serial line differs",
                d.id, d.address
            ),
            "one port is one line: give every device on it the same [devices.serial] settings",
        )),
        Some(_) => {}
        None => {
            lines.insert(&d.address, (line, i));
        }
    }
}

/// Checks everything that serde cannot: returns every problem at once.
pub fn check(config: &SiteConfig, known_maps: &BTreeSet<String>) -> Vec<Problem> {
    let mut p = Vec::new();
    let s = &config.site;
    if let Err(e) = validate_id(&s.id) {
        p.push(problem(
            "site.id",
            e.to_string(),
            "use letters, digits, '-' or '_'",
        ));
    }
    let tz: Option<chrono_tz::Tz> = s.timezone.parse().ok();
    if tz.is_none() {
        p.push(problem(
            "site.timezone",
            format!("`{}` is not an IANA time zone", s.timezone),
            "use e.g. \"Europe/Paris\"",
        ));
    }
    if ![15, 30].contains(&s.settlement_minutes) {
        p.push(problem(
            "site.settlement_minutes",
            format!(
                "{} is not a settlement step the DSO uses",
                s.settlement_minutes
            ),
            "use 15 (default since 2025) or 30",
        ));
    }
    if !(-90.0..=90.0).contains(&s.latitude) {
        p.push(problem(
            "site.latitude",
            format!("{} is outside -90..90", s.latitude),
            "give the site's latitude in decimal degrees, e.g. 47.32",
        ));
    }
    if !(-180.0..=180.0).contains(&s.longitude) {
        p.push(problem(
            "site.longitude",
            format!("{} is outside -180..180", s.longitude),
            "give the site's longitude in decimal degrees, e.g. 5.00",
        ));
    }
    if config.http.listen.parse::<SocketAddr>().is_err() {
        p.push(problem(
            "http.listen",
            format!("`{}` is not an ip:port", config.http.listen),
            "use e.g. \"127.0.0.1:9464\"",
        ));
    }
    if let Some(f) = &config.http.token_file {
        // Only that it is there: its content and mode are checked by `http::auth::Token::load`
        // (a higher room) where an endpoint needs it.
        if let Err(e) = std::fs::metadata(f) {
            p.push(problem(
                "http.token_file",
                format!("{}: {e}", f.display()),
                "create it with one line of at least 16 characters (e.g. `openssl rand -hex 32`), chmod 600",
            ));
        }
    }
    if config.polling.interval_ms < 50 || config.polling.timeout_ms < 10 {
        p.push(problem(
            "polling",
            "interval_ms below 50 or timeout_ms below 10",
            "use interval_ms ≥ 50 and timeout_ms ≥ 10",
        ));
    }
    let pl = &config.plan;
    if !(1..=72).contains(&pl.horizon_hours) {
        p.push(problem(
            "plan.horizon_hours",
            format!("{} is outside 1..72", pl.horizon_hours),
            "use 24 to 48",
        ));
    }
    for (k, v) in [
        ("plan.local_price_eur_per_kwh", pl.local_price_eur_per_kwh),
        ("plan.export_price_eur_per_kwh", pl.export_price_eur_per_kwh),
        ("plan.import_price_eur_per_kwh", pl.import_price_eur_per_kwh),
        ("plan.heat_price_eur_per_kwh", pl.heat_price_eur_per_kwh),
    ] {
        if !v.is_finite() || v.abs() > 10.0 {
            p.push(problem(
                k,
                format!("{v} is not a plausible price"),
                "give €/kWh, e.g. 0.10",
            ));
        }
    }
    if let Some(file) = &pl.export_prices_file {
        if let Err(e) = crate::prices::Schedule::load(file) {
            p.push(problem(
                "plan.export_prices_file",
                e.to_string(),
                "see the error's own fix",
            ));
        }
    }
    if ![100, 1000, 10000].contains(&config.keys.units_per_one) {
        p.push(problem(
            "keys.units_per_one",
            format!("{} is not a supported precision", config.keys.units_per_one),
            "use 1000 (0.1 %, default), 100 (1 %) or 10000 (0.01 %)",
        ));
    }
    if let Some(r) = config.keys.floor_ratio {
        if !r.is_finite() || !(0.0..=1.0).contains(&r) {
            p.push(problem(
                "keys.floor_ratio",
                format!("{r} is outside 0..1"),
                "use e.g. 0.5 (half the subscribed share), or remove the key for no floor",
            ));
        }
    }
    if let Some(id) = &config.keys.operation_id {
        if !valid_operation_id(id) {
            p.push(problem(
                "keys.operation_id",
                format!("`{id}` is not an Enedis operation id"),
                "write `ACC` and the operation's 8 digits, e.g. \"ACC00000001\" (see the operation's convention)",
            ));
        }
    }
    if !config.keys.max_load_curve_kw.is_finite() || config.keys.max_load_curve_kw <= 0.0 {
        p.push(problem(
            "keys.max_load_curve_kw",
            format!("{} is not a positive power", config.keys.max_load_curve_kw),
            "give a ceiling in kW above any meter of the operation, e.g. 10000 (default)",
        ));
    }
    if config.keys.month_budget_ms > 3_600_000 {
        p.push(problem(
            "keys.month_budget_ms",
            format!("{} ms is more than an hour", config.keys.month_budget_ms),
            "use 60000 (default) or 0 to turn the month solver off",
        ));
    }

    // Devices.
    let mut device_ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut endpoint_units: BTreeMap<(String, u8), usize> = BTreeMap::new();
    let mut endpoint_transport: BTreeMap<&str, (Transport, usize)> = BTreeMap::new();
    let mut serial_lines: BTreeMap<&str, (SerialConfig, usize)> = BTreeMap::new();
    let mut prms: BTreeMap<&str, String> = BTreeMap::new();
    for (i, d) in config.devices.iter().enumerate() {
        let key = |f: &str| format!("devices[{i}].{f} (id `{}`)", d.id);
        if let Err(e) = validate_id(&d.id) {
            p.push(problem(
                key("id"),
                e.to_string(),
                "use letters, digits, '-' or '_'",
            ));
        }
        if let Some(j) = device_ids.insert(&d.id, i) {
            p.push(problem(
                key("id"),
                format!("duplicate device id, also devices[{j}]"),
                "give every device its own id",
            ));
        }
        // A serial port is named by its path, checked in `check_serial`.
        let resolved = if d.transport == Transport::Rtu {
            Ok(())
        } else {
            resolve_address(&d.address).map(|_| ())
        };
        match resolved {
            Ok(()) => {
                if let Some(j) = endpoint_units.insert((d.address.clone(), d.unit), i) {
                    p.push(problem(
                        key("unit"),
                        format!("unit {} at {} is also devices[{j}]", d.unit, d.address),
                        "give each device behind one gateway its own unit id",
                    ));
                }
            }
            Err(m) => p.push(problem(
                key("address"),
                m,
                "write host:port with a port in 1..65535, e.g. \"192.168.10.21:502\"",
            )),
        }
        if d.map != "sunspec" && !known_maps.contains(&d.map) {
            let list: Vec<&str> = known_maps
                .iter()
                .filter(|k| k.starts_with("vendor/"))
                .map(|s| s.as_str())
                .collect();
            p.push(problem(
                key("map"),
                format!("unknown device model `{}`", d.map),
                format!(
                    "use \"sunspec\" or one of: {} (or add a file to models/)",
                    list.join(", ")
                ),
            ));
        }
        let need = |p: &mut Vec<Problem>, f: &str, v: Option<f64>, hint: &str| match v {
            None => p.push(problem(
                key(f),
                format!("a {} needs `{f}`", d.kind.as_str()),
                hint,
            )),
            Some(x) if !x.is_finite() || x < 0.0 => {
                p.push(problem(key(f), format!("{x} must be ≥ 0"), hint))
            }
            _ => {}
        };
        match d.kind {
            DeviceKind::PvInverter => {
                need(&mut p, "kwp", d.kwp, "give the plant's peak power in kWp");
                if d.prm.is_none() {
                    p.push(problem(
                        key("prm"),
                        "a PV plant needs its producer PRM",
                        "add prm = \"14 digits\"",
                    ));
                }
            }
            DeviceKind::Battery => {
                need(
                    &mut p,
                    "capacity_kwh",
                    d.capacity_kwh,
                    "give the usable capacity in kWh",
                );
                need(
                    &mut p,
                    "max_charge_kw",
                    d.max_charge_kw,
                    "give the charge limit in kW",
                );
                need(
                    &mut p,
                    "max_discharge_kw",
                    d.max_discharge_kw,
                    "give the discharge limit in kW",
                );
                if d.prm.is_none() {
                    p.push(problem(
                        key("prm"),
                        "a battery is a producer and needs its PRM",
                        "add prm = \"14 digits\"",
                    ));
                }
                if d.participant.is_none() {
                    p.push(problem(
                        key("participant"),
                        "a battery is a consumer while charging and needs its participant",
                        "add participant = \"<participant id>\"",
                    ));
                }
            }
            DeviceKind::PowerToHeat => {
                need(
                    &mut p,
                    "max_power_kw",
                    d.max_power_kw,
                    "give the electrical rating in kW",
                );
                need(
                    &mut p,
                    "capacity_kwh",
                    d.capacity_kwh,
                    "give the heat store's capacity in kWh_th",
                );
            }
            _ => {}
        }
        if let Some(t) = d.max_supply_temp_c {
            if d.kind != DeviceKind::PowerToHeat {
                p.push(problem(
                    key("max_supply_temp_c"),
                    format!("a {} has no heat store to limit", d.kind.as_str()),
                    "remove it, or set it on the power_to_heat unit whose store feeds the network",
                ));
            } else if !(t.is_finite() && (30.0..=130.0).contains(&t)) {
                p.push(problem(
                    key("max_supply_temp_c"),
                    format!("{t} °C is not a plausible supply temperature limit"),
                    "give the network's highest supply temperature in °C, within 30..=130 (e.g. 90)",
                ));
            }
        }
        if let Some(r) = d.min_soc_ratio {
            if !(0.0..1.0).contains(&r) {
                p.push(problem(
                    key("min_soc_ratio"),
                    format!("{r} is outside 0..1"),
                    "e.g. 0.1 for a 10 % reserve",
                ));
            }
        }
        match endpoint_transport.get(d.address.as_str()) {
            Some((t, j)) if *t != d.transport => p.push(problem(
                key("transport"),
                format!("{} shares {} with devices[{j}], which uses {t:?}", d.id, d.address),
                "one endpoint speaks one framing: give every device at this address the same transport",
            )),
            Some(_) => {}
            None => {
                endpoint_transport.insert(&d.address, (d.transport, i));
            }
        }
        check_serial(&mut p, &key, d, i, &mut serial_lines);
        if let Some(ms) = d.interval_ms {
            if ms < 50 {
                p.push(problem(
                    key("interval_ms"),
                    format!("{ms} ms is below 50 ms"),
                    "use interval_ms ≥ 50, or leave it out for polling.interval_ms",
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (d.setpoint_min_kw, d.setpoint_max_kw) {
            if lo.is_nan() || hi.is_nan() || lo > hi {
                p.push(problem(
                    key("setpoint_min_kw"),
                    format!("setpoint_min_kw {lo} is above setpoint_max_kw {hi}"),
                    "give setpoint_min_kw ≤ setpoint_max_kw (kW, positive = charge/consume)",
                ));
            }
        }
        for (f, v) in [
            ("ramp_kw_per_s", d.ramp_kw_per_s),
            ("revert_timeout_s", d.revert_timeout_s),
        ] {
            if let Some(x) = v {
                if !(x.is_finite() && x > 0.0) {
                    p.push(problem(
                        key(f),
                        format!("{x} must be > 0"),
                        "give a positive number, or leave it out",
                    ));
                }
            }
        }
        if let Some(prm) = &d.prm {
            if let Some(other) = prms.insert(prm.as_str(), format!("devices[{i}]")) {
                p.push(problem(
                    key("prm"),
                    format!("duplicate PRM {prm}, also {other}"),
                    "every metering point has its own PRM",
                ));
            }
        }
    }

    // Participants.
    let mut part_ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut static_sum = 0.0;
    for (i, q) in config.participants.iter().enumerate() {
        let key = |f: &str| format!("participants[{i}].{f} (id `{}`)", q.id);
        if let Err(e) = validate_id(&q.id) {
            p.push(problem(
                key("id"),
                e.to_string(),
                "use letters, digits, '-' or '_'",
            ));
        }
        if let Some(j) = part_ids.insert(&q.id, i) {
            p.push(problem(
                key("id"),
                format!("duplicate participant id, also participants[{j}]"),
                "give every participant its own id",
            ));
        }
        if let Some(other) = prms.insert(q.prm.as_str(), format!("participants[{i}]")) {
            // A battery legitimately shares one PRM between its producer and consumer roles.
            let is_battery_pair = q.kind == ParticipantKind::Battery
                && config.devices.iter().any(|d| {
                    d.kind == DeviceKind::Battery
                        && d.prm.as_ref() == Some(&q.prm)
                        && d.participant.as_deref() == Some(q.id.as_str())
                });
            if !is_battery_pair {
                p.push(problem(
                    key("prm"),
                    format!("duplicate PRM {}, also {other}", q.prm),
                    "every metering point has its own PRM",
                ));
            }
        }
        match config.devices.iter().find(|d| d.id == q.meter) {
            None => p.push(problem(key("meter"), format!("no device `{}`", q.meter), "name the id of the meter device that measures this participant")),
            Some(d) if !matches!(d.kind, DeviceKind::Meter | DeviceKind::Battery) => p.push(problem(
                key("meter"),
                format!("device `{}` is a {}, not a meter", q.meter, d.kind.as_str()),
                "point at a device of kind \"meter\" (or the battery itself for a battery participant)",
            )),
            _ => {}
        }
        if !q.tariff_eur_per_kwh.is_finite() || !(0.0..=5.0).contains(&q.tariff_eur_per_kwh) {
            p.push(problem(
                key("tariff_eur_per_kwh"),
                format!("{} is not a plausible retail price", q.tariff_eur_per_kwh),
                "give €/kWh, e.g. 0.2516",
            ));
        }
        for (j, w) in q.tou.iter().enumerate() {
            for (name, v) in [("from", &w.from), ("to", &w.to)] {
                if parse_hhmm(v).is_none() {
                    p.push(problem(
                        key(&format!("tou[{j}].{name}")),
                        format!("`{v}` is not a local time HH:MM"),
                        "write e.g. \"22:00\" (00:00 to 24:00, site time zone)",
                    ));
                }
            }
            if w.from == w.to {
                p.push(problem(
                    key(&format!("tou[{j}]")),
                    format!("window {}–{} is empty", w.from, w.to),
                    "give different from and to (a window over midnight has from after to)",
                ));
            }
            if !w.eur_kwh.is_finite() || !(0.0..=5.0).contains(&w.eur_kwh) {
                p.push(problem(
                    key(&format!("tou[{j}].eur_kwh")),
                    format!("{} is not a plausible retail price", w.eur_kwh),
                    "give €/kWh, e.g. 0.2068 for French off-peak (HC)",
                ));
            }
        }
        if let Some(kva) = q.subscribed_kva {
            if !kva.is_finite() || kva <= 0.0 || kva > 100_000.0 {
                p.push(problem(
                    key("subscribed_kva"),
                    format!("{kva} is not a subscribed power"),
                    "give the supply contract's power in kVA, e.g. 9 (or remove the key)",
                ));
            }
        }
        let mut days = [None, None];
        for (slot, (name, v)) in days
            .iter_mut()
            .zip([("entry", &q.entry), ("exit", &q.exit)])
        {
            if let Some(v) = v {
                *slot = parse_day(v);
                if slot.is_none() {
                    p.push(problem(
                        key(name),
                        format!("`{v}` is not a local date YYYY-MM-DD"),
                        if name == "entry" {
                            "write the first day in the operation, e.g. \"2026-03-16\""
                        } else {
                            "write the last day in the operation, e.g. \"2026-07-10\""
                        },
                    ));
                }
            }
        }
        if let [Some(entry), Some(exit)] = days {
            if entry > exit {
                p.push(problem(
                    key("exit"),
                    format!("exit {exit} is before entry {entry}"),
                    "exit is the last day in the operation, on or after entry; swap them if reversed",
                ));
            }
        }
        if !(0.0..=1.0).contains(&q.static_share) {
            p.push(problem(
                key("static_share"),
                format!("{} is outside 0..1", q.static_share),
                "give a share such as 0.0123",
            ));
        }
        static_sum += q.static_share;
    }
    check_operations(config, &mut p);
    if config.keys.policy == KeyPolicy::Static
        && config.operations.is_empty()
        && static_sum > 1.0 + 1e-9
    {
        p.push(problem(
            "participants[*].static_share",
            format!("static shares add up to {static_sum:.6} > 1"),
            "scale the shares so that they add up to at most 1",
        ));
    }
    for (i, d) in config.devices.iter().enumerate() {
        if let Some(pid) = &d.participant {
            if !part_ids.contains_key(pid.as_str()) {
                p.push(problem(
                    format!("devices[{i}].participant (id `{}`)", d.id),
                    format!("no participant `{pid}`"),
                    "name an id from [[participants]]",
                ));
            }
        }
    }
    if config.participants.is_empty() {
        p.push(problem(
            "participants",
            "no participant",
            "add [[participants]] entries",
        ));
    }
    if !config
        .devices
        .iter()
        .any(|d| d.kind == DeviceKind::PvInverter)
    {
        p.push(problem(
            "devices",
            "no PV plant: nothing to share",
            "add a device of kind \"pv_inverter\"",
        ));
    }
    if let Some(path) = &config.ledger.path {
        if path.is_dir() {
            p.push(problem(
                "ledger.path",
                format!("{} is a folder", path.display()),
                "give a file name, e.g. out/ledger/ped.sqlite",
            ));
        } else if let Some(parent) = path.parent().filter(|d| d.is_file()) {
            p.push(problem(
                "ledger.path",
                format!(
                    "{} cannot be created: {} is a file",
                    path.display(),
                    parent.display()
                ),
                "put the ledger in a folder, e.g. out/ledger/ped.sqlite",
            ));
        }
    }
    if let Some(d) = &config.delivery {
        check_delivery(d, &mut p);
    }
    check_control_safety(config, &mut p);
    p
}

/// Upper bounds of durations and counts: generous for any real site, and far
/// below what would overflow a `Duration` or an `Instant` at run time.
pub mod limits {
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
}

/// A duration in seconds from a config value, `None` if it is not a finite,
/// non-negative number a `Duration` can hold (`Duration::from_secs_f64`
/// would panic on it).
pub fn duration_s(s: f64) -> Option<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(s).ok()
}

/// What keeps ped's writes and timers sane: setpoint ranges inside the
/// ratings, every duration and count bounded, no broadcast unit id.
fn check_control_safety(config: &SiteConfig, p: &mut Vec<Problem>) {
    let poll = &config.polling;
    for (k, v, max, fix) in [
        (
            "polling.interval_ms",
            poll.interval_ms,
            limits::INTERVAL_MS,
            "use e.g. interval_ms = 1000 (at most 3600000, one hour)",
        ),
        (
            "polling.timeout_ms",
            poll.timeout_ms,
            limits::TIMEOUT_MS,
            "use e.g. timeout_ms = 1000 (at most 60000)",
        ),
        (
            "polling.max_backoff_ms",
            poll.max_backoff_ms,
            limits::INTERVAL_MS,
            "use e.g. max_backoff_ms = 60000 (at most 3600000, one hour)",
        ),
        (
            "plan.budget_ms",
            config.plan.budget_ms,
            limits::PLAN_BUDGET_MS,
            "use e.g. budget_ms = 5000 (at most 600000, ten minutes)",
        ),
    ] {
        if v > max {
            p.push(problem(k, format!("{v} ms is more than {max} ms"), fix));
        }
    }
    // plan.budget_ms = 0 is allowed: no LP, every plan from the fallback ladder.
    if let Some(n) = config.control.plan_loss_steps {
        if !(1..=limits::PLAN_LOSS_STEPS).contains(&n) {
            p.push(problem(
                "control.plan_loss_steps",
                format!("{n} is outside 1..={}: 0 would release every device at every control tick, and more than a day of steps is no plan-loss guard", limits::PLAN_LOSS_STEPS),
                "use 2 (default: release after two settlement steps without a fresh plan)",
            ));
        }
    }
    if config.ledger.snapshot_retention_days > limits::RETENTION_DAYS {
        p.push(problem(
            "ledger.snapshot_retention_days",
            format!(
                "{} days is more than {}",
                config.ledger.snapshot_retention_days,
                limits::RETENTION_DAYS
            ),
            "use e.g. 400 (a year and some, for reconciliation with the DSO)",
        ));
    }
    if let Some(d) = &config.delivery {
        for (k, v) in [
            ("delivery.backoff_base_s", d.backoff_base_s),
            ("delivery.backoff_cap_s", d.backoff_cap_s),
        ] {
            if v > limits::DELIVERY_BACKOFF_S {
                p.push(problem(
                    k,
                    format!(
                        "{v} s is more than a day: a file would wait that long between attempts"
                    ),
                    "use e.g. backoff_base_s = 60, backoff_cap_s = 3600 (at most 86400)",
                ));
            }
        }
    }
    for (i, d) in config.devices.iter().enumerate() {
        let key = |f: &str| format!("devices[{i}].{f} (id `{}`)", d.id);
        if let Some(ms) = d.interval_ms {
            if ms > limits::INTERVAL_MS {
                p.push(problem(
                    key("interval_ms"),
                    format!("{ms} ms is more than an hour"),
                    "use e.g. interval_ms = 1000 (at most 3600000), or leave it out for polling.interval_ms",
                ));
            }
        }
        if let Some(s) = d.revert_timeout_s {
            if s.is_finite() && s > limits::REVERT_TIMEOUT_S {
                p.push(problem(
                    key("revert_timeout_s"),
                    format!("{s} s is more than an hour: the device would hold ped's last setpoint that long after ped stops"),
                    "use the device's watchdog in seconds, e.g. revert_timeout_s = 60 (at most 3600)",
                ));
            }
        }
        // Unit 0 is the broadcast address on a serial line: every device on
        // it would obey, none would answer.
        if d.unit == 0 && d.transport != Transport::Tcp {
            p.push(problem(
                key("unit"),
                "unit 0 is the Modbus broadcast address: every device on the line would take ped's writes and none answers",
                "give the device's own unit id, 1..=247",
            ));
        } else if d.unit > 247 && d.transport == Transport::Rtu {
            p.push(problem(
                key("unit"),
                format!("unit {} is reserved on a serial line", d.unit),
                "give the device's own unit id, 1..=247",
            ));
        }
        if d.unit == 0 && d.transport == Transport::Tcp {
            p.push(problem(
                key("unit"),
                "unit 0 is the broadcast address to a Modbus gateway: every device behind it would take ped's writes",
                "give the unit id of the device (1..=247), or 255 or 1 for a device reached directly over TCP",
            ));
        }
        for (f, v) in [("tilt_deg", d.tilt_deg), ("azimuth_deg", d.azimuth_deg)] {
            if let Some(x) = v {
                let ok = match f {
                    "tilt_deg" => (0.0..=90.0).contains(&x),
                    _ => (0.0..=360.0).contains(&x),
                };
                if !ok {
                    p.push(problem(
                        key(f),
                        format!("{x} is not an angle in {}", if f == "tilt_deg" { "0..=90" } else { "0..=360" }),
                        "give degrees: tilt 0 (flat) to 90 (vertical), azimuth 0..360 with 180 = south",
                    ));
                }
            }
        }
        if let Some(x) = d.annual_heat_kwh {
            if !(x.is_finite() && x >= 0.0) {
                p.push(problem(
                    key("annual_heat_kwh"),
                    format!("{x} is not an energy"),
                    "give kWh per year, e.g. 120000",
                ));
            }
        }
        check_setpoint_range(d, &key, p);
    }
    for (i, q) in config.participants.iter().enumerate() {
        if !(q.annual_kwh.is_finite() && q.annual_kwh >= 0.0) {
            p.push(problem(
                format!("participants[{i}].annual_kwh (id `{}`)", q.id),
                format!("{} is not an energy", q.annual_kwh),
                "give the expected consumption in kWh per year, e.g. 3500, or leave it out",
            ));
        }
    }
}

/// Below this many key units per participant on average, rounding to whole
/// units costs small consumers their pro-rata month.
const COARSE_KEYS_UNITS_PER_PARTICIPANT: usize = 5;

/// What `check` lets pass but an installer should hear about: keys too
/// coarse for the operation's size, and a controlled device whose own revert
/// timer exists in its map but is not in `writes`.
/// ped then cannot arm it, and after a crash or `kill -9` the device keeps
/// ped's last setpoint until its own default watchdog, if it has one.
pub fn warnings(config: &SiteConfig, lib: &crate::registers::ModelLibrary) -> Vec<Problem> {
    let mut w = Vec::new();
    let units = config.keys.units_per_one;
    let participants = config.participants.len();
    if participants > 0 && (units as usize) < COARSE_KEYS_UNITS_PER_PARTICIPANT * participants {
        w.push(problem(
            "keys.units_per_one".to_string(),
            format!(
                "{units} key units for {participants} participants: an average participant's share of a step is under {COARSE_KEYS_UNITS_PER_PARTICIPANT} units, so a household's share is often below one; no rounding then keeps every participant's month at pro rata and places all the energy (600 participants at 1000: 553 short and 6.7 % of local use unallocated in a backtested month)"
            ),
            "set keys.units_per_one = 10000 (the DSO's key files carry two decimals)".to_string(),
        ));
    }
    let layout = crate::dso::enedis::Layout::of(config.keys.layout).with(&config.keys.file);
    if participants > 0
        && layout.naming == crate::dso::enedis::Naming::Operation
        && config.keys.operation_id.is_none()
        && config.operations.is_empty()
    {
        w.push(problem(
            "keys.operation_id".to_string(),
            format!(
                "the `{}` layout names the month's key file after the operation, and no operation id is set: the daemon keeps the daily working files but queues no month file for the DSO, and `ped keys --format enedis` stops",
                layout.label()
            ),
            "set keys.operation_id = \"ACC…\" (the operation's Enedis id, from its convention), or keys.file.naming = \"producer\"".to_string(),
        ));
    }
    for (i, d) in config.devices.iter().enumerate() {
        let controlled = matches!(
            d.kind,
            DeviceKind::Battery | DeviceKind::PowerToHeat | DeviceKind::PvInverter
        );
        if !controlled || d.writes.is_empty() {
            continue;
        }
        let writes = |p: &str| d.writes.iter().any(|x| x == p);
        let timer: Option<&str> = if d.map == "sunspec" {
            if writes("WSet") || writes("WSetEna") {
                Some("WSetRvrtTms")
            } else if writes("WMaxLim_Ena") {
                Some("WMaxLimPct_RvrtTms")
            } else if writes("WMaxLimPct") || writes("WMaxLimPctEna") {
                Some("WMaxLimPctRvrtTms")
            } else {
                None
            }
        } else {
            lib.get(&d.map)
                .and_then(|m| m.point("revert_seconds"))
                .map(|_| "revert_seconds")
        };
        if let Some(t) = timer.filter(|t| !writes(t)) {
            w.push(problem(
                format!("devices[{i}].writes (id `{}`)", d.id),
                format!("the device's own revert timer `{t}` is not in writes: ped cannot arm it, so after a crash the device keeps ped's last setpoint until its own default watchdog"),
                format!("add \"{t}\" to writes (ped writes revert_timeout_s there before the first setpoint)"),
            ));
        }
    }
    w
}

/// The setpoint range must lie within the ratings: a minimum above the charge
/// rating (or a maximum below the discharge rating) leaves no safe setpoint.
fn check_setpoint_range(d: &DeviceConfig, key: &dyn Fn(&str) -> String, p: &mut Vec<Problem>) {
    let (lo, hi, rating) = match d.kind {
        DeviceKind::Battery => (
            -d.max_discharge_kw.unwrap_or(0.0),
            d.max_charge_kw.unwrap_or(0.0),
            "-max_discharge_kw..=max_charge_kw",
        ),
        DeviceKind::PowerToHeat => (0.0, d.max_power_kw.unwrap_or(0.0), "0..=max_power_kw"),
        _ => {
            for (f, v) in [
                ("setpoint_min_kw", d.setpoint_min_kw),
                ("setpoint_max_kw", d.setpoint_max_kw),
            ] {
                if v.is_some() {
                    p.push(problem(
                        key(f),
                        format!("a {} takes no power setpoint", d.kind.as_str()),
                        "remove it (only batteries and power-to-heat units take power setpoints)",
                    ));
                }
            }
            return;
        }
    };
    for (f, v) in [
        ("setpoint_min_kw", d.setpoint_min_kw),
        ("setpoint_max_kw", d.setpoint_max_kw),
    ] {
        let Some(x) = v else { continue };
        if !(x >= lo && x <= hi) {
            p.push(problem(
                key(f),
                format!("{x} kW is outside the device's ratings {rating} = {lo}..={hi} kW"),
                format!("give a value within {lo}..={hi} kW (ped's convention: positive = charge/consume), or leave it out for the rating"),
            ));
        }
    }
}

fn resolve_address(a: &str) -> Result<SocketAddr, String> {
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("`{a}` has no :port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` in `{a}` is not a port number"))?;
    if port == 0 {
        return Err(format!("port 0 in `{a}`"));
    }
    if host.is_empty() {
        return Err(format!("`{a}` has no host"));
    }
    // An IPv6 literal is written in brackets, as connecting to it needs.
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            return v6
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| SocketAddr::new(ip.into(), port))
                .map_err(|_| format!("`{v6}` in `{a}` is not an IPv6 address"));
        }
        None if host.contains(':') => {
            return Err(format!(
                "`{a}`: an IPv6 address goes in brackets, e.g. \"[{host}]:{port}\""
            ))
        }
        None => host,
    };
    // Only literal addresses and `localhost` are resolved here: validation must not
    // wait on DNS, and a name that does not resolve yet is a run-time fault, not a typo.
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut i| i.next())
            .ok_or_else(|| format!("host `{host}` does not resolve"))
            .or_else(|_| Ok(SocketAddr::from(([0, 0, 0, 0], port))));
    }
    Err(format!("`{host}` is not a host name or IP address"))
}

pub fn validate(
    config: SiteConfig,
    path: &Path,
    known_maps: &BTreeSet<String>,
) -> Result<Site, ConfigError> {
    let problems = check(&config, known_maps);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            file: path.to_path_buf(),
            problems,
        });
    }
    let tz: chrono_tz::Tz = config
        .site
        .timezone
        .parse()
        .map_err(|_| ConfigError::Invalid {
            file: path.to_path_buf(),
            problems: vec![problem(
                "site.timezone",
                "not a time zone",
                "use \"Europe/Paris\"",
            )],
        })?;
    let grid = Grid::new(config.site.settlement_minutes, tz).map_err(|e| ConfigError::Invalid {
        file: path.to_path_buf(),
        problems: vec![problem(
            "site.settlement_minutes",
            e.to_string(),
            "use 15 or 30",
        )],
    })?;
    Ok(Site {
        config,
        grid,
        source: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> BTreeSet<String> {
        ["vendor/trovis5576".to_string()].into_iter().collect()
    }

    const MINIMAL: &str = r#"
[site]
id = "t"
name = "test"
latitude = 47.3
longitude = 5.0

[[devices]]
id = "PV-1"
kind = "pv_inverter"
address = "127.0.0.1:1502"
kwp = 10.0
prm = "99990000000001"

[[devices]]
id = "M-1"
kind = "meter"
address = "127.0.0.1:1503"
participant = "H-1"

[[participants]]
id = "H-1"
kind = "household"
prm = "99990000000002"
meter = "M-1"
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let (_d, path) = write(MINIMAL);
        let site = load(&path, &maps()).unwrap();
        assert_eq!(site.grid.step_minutes(), 15);
        assert_eq!(site.config.http.listen, "127.0.0.1:9464");
        assert_eq!(site.producers().len(), 1);
    }

    fn embedded_maps() -> BTreeSet<String> {
        let lib = crate::registers::ModelLibrary::embedded().unwrap();
        lib.keys().map(str::to_string).collect()
    }

    /// Fontaine d'Ouche as its three operations: the city's buildings and
    /// two social landlords.
    fn three_operations() -> String {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("site-configs/fontaine-douche.toml"),
        )
        .unwrap()
        .replace("operation_id = \"ACC00000001\"\n", "");
        let ids = |prefix: &str, r: std::ops::RangeInclusive<u32>, w: usize| -> Vec<String> {
            r.map(|i| format!("\"{prefix}{i:0w$}\"")).collect()
        };
        let mut city = ids("T-", 1..=14, 2);
        city.extend(ids("SST-", 1..=3, 2));
        city.extend(["\"BAT-01\"".to_string(), "\"P2H-01\"".to_string()]);
        let mut a = ids("H-", 1..=40, 3);
        a.push("\"BAT-02\"".to_string());
        let b = ids("H-", 41..=100, 3);
        format!(
            "{text}\n[[operations]]\nid = \"ACC00000011\"\nname = \"Ville de Dijon\"\nproducers = [\"PV-01\", \"PV-02\", \"PV-03\", \"PV-06\", \"PV-07\", \"PV-08\", \"BAT-01\"]\nparticipants = [{}]\n\n[[operations]]\nid = \"ACC00000012\"\nproducers = [\"PV-04\", \"BAT-02\"]\nparticipants = [{}]\n\n[[operations]]\nid = \"ACC00000013\"\nproducers = [\"PV-05\"]\nparticipants = [{}]\n",
            city.join(", "),
            a.join(", "),
            b.join(", ")
        )
    }

    #[test]
    fn operations_resolve_to_their_producers_and_members() {
        let (_d, path) = write(&three_operations());
        let site = load(&path, &embedded_maps()).unwrap();
        let ops = site.operations();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].label(), "ACC00000011");
        assert_eq!(ops[0].name, "Ville de Dijon");
        assert_eq!(ops[1].name, "ACC00000012");
        let producers = site.producers();
        let names = |o: &Operation| -> Vec<&str> {
            o.producers
                .iter()
                .map(|&i| producers[i].id.as_str())
                .collect()
        };
        assert_eq!(
            names(&ops[0]),
            ["PV-01", "PV-02", "PV-03", "PV-06", "PV-07", "PV-08", "BAT-01"]
        );
        assert_eq!(names(&ops[1]), ["PV-04", "BAT-02"]);
        assert_eq!(names(&ops[2]), ["PV-05"]);
        assert_eq!(
            ops.iter().map(|o| o.participants.len()).collect::<Vec<_>>(),
            [19, 41, 60]
        );
        let mut all: Vec<usize> = ops.iter().flat_map(|o| o.participants.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..120).collect::<Vec<_>>());

        // Without [[operations]]: one operation of everything.
        let mut one = site.config.clone();
        one.operations.clear();
        let implicit = Site {
            config: one,
            ..site.clone()
        }
        .operations();
        assert_eq!(implicit.len(), 1);
        assert_eq!(implicit[0].producers.len(), producers.len());
        assert_eq!(implicit[0].participants.len(), 120);
    }

    #[test]
    fn operations_are_checked_with_key_and_fix() {
        let good = three_operations();
        for (bad, key, says) in [
            (
                good.replace("ACC00000012", "ACC12"),
                "operations[1].id",
                "not an Enedis operation id",
            ),
            (
                good.replace("ACC00000013", "ACC00000012"),
                "operations[2].id",
                "duplicate operation id",
            ),
            (
                good.replace("producers = [\"PV-05\"]", "producers = [\"PV-04\"]"),
                "operations[2].producers",
                "already a producer of ACC00000012",
            ),
            (
                good.replace("producers = [\"PV-05\"]", "producers = [\"MTR-H-041\"]"),
                "operations[2].producers",
                "not a producer",
            ),
            (
                good.replace("\"H-041\", ", "\"H-040\", "),
                "operations[2].participants",
                "already a member of ACC00000012",
            ),
            (
                good.replace("\"H-041\", ", ""),
                "participants[40]",
                "in no operation",
            ),
            (
                good.replace("\"H-041\", ", "\"H-999\", \"H-041\", "),
                "operations[2].participants",
                "no participant `H-999`",
            ),
            (
                good.replace("[keys]\n", "[keys]\noperation_id = \"ACC00000001\"\n"),
                "keys.operation_id",
                "[[operations]] are declared",
            ),
        ] {
            assert_ne!(bad, good, "{key}: the replacement did not apply");
            let (_d, path) = write(&bad);
            let err = load(&path, &embedded_maps()).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(says) && err.contains("fix:"),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn membership_dates_and_operation_id_are_checked_with_key_and_fix() {
        let with = |entry: &str, exit: &str, op: &str| {
            format!(
                "{}entry = \"{entry}\"\nexit = \"{exit}\"\n",
                MINIMAL.replace(
                    "[[devices]]\nid = \"PV-1\"",
                    &format!("[keys]\noperation_id = \"{op}\"\n\n[[devices]]\nid = \"PV-1\"")
                )
            )
        };
        let (_d, path) = write(&with("2026-03-16", "2026-07-10", "ACC00002026").replace(
            "[keys]\n",
            "[keys]\nlayout = \"enedis\"\nfile = { final_newline = true, naming = \"producer\" }\n",
        ));
        let site = load(&path, &maps()).unwrap();
        assert_eq!(site.config.keys.file.final_newline, Some(true));
        assert_eq!(
            site.config.keys.file.naming,
            Some(crate::dso::enedis::Naming::Producer)
        );
        let p = &site.config.participants[0];
        assert_eq!(
            p.membership(),
            (parse_day("2026-03-16"), parse_day("2026-07-10"))
        );
        assert_eq!(
            site.config.keys.operation_id.as_deref(),
            Some("ACC00002026")
        );
        for (entry, exit, op, key, says) in [
            (
                "16/03/2026",
                "2026-07-10",
                "ACC00002026",
                "participants[0].entry",
                "YYYY-MM-DD",
            ),
            (
                "2026-03-16",
                "2026-7-1",
                "ACC00002026",
                "participants[0].exit",
                "YYYY-MM-DD",
            ),
            (
                "2026-07-11",
                "2026-07-10",
                "ACC00002026",
                "participants[0].exit",
                "before entry",
            ),
            (
                "2026-03-16",
                "2026-07-10",
                "ACC2026",
                "keys.operation_id",
                "not an Enedis operation id",
            ),
            (
                "2026-03-16",
                "2026-07-10",
                "ACC0000202X",
                "keys.operation_id",
                "not an Enedis operation id",
            ),
        ] {
            let (_d, path) = write(&with(entry, exit, op));
            let err = load(&path, &maps()).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(says) && err.contains("fix:"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_export_prices_file_is_checked_for_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let prices = dir.path().join("prices.csv");
        let with = |file: &Path| {
            format!(
                "{MINIMAL}\n[plan]\nexport_prices_file = {:?}\n",
                file.to_string_lossy()
            )
        };
        std::fs::write(&prices, "2026-06-21T13:00:00+02:00;-0.02\n").unwrap();
        let (_d, path) = write(&with(&prices));
        assert!(load(&path, &maps()).is_ok());
        for (text, says) in [
            ("2026-06-21T13:00:00+02:00;-20\n", "line 1"),
            ("", "no price row"),
        ] {
            std::fs::write(&prices, text).unwrap();
            let err = load(&path, &maps()).unwrap_err().to_string();
            assert!(
                err.contains("plan.export_prices_file") && err.contains(says),
                "{err}"
            );
        }
        let (_d, path) = write(&with(&dir.path().join("missing.csv")));
        let err = load(&path, &maps()).unwrap_err().to_string();
        assert!(
            err.contains("missing.csv") && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_named() {
        let bad = MINIMAL
            .replace("address = \"127.0.0.1:1503\"", "address = \"127.0.0.1:99999\"")
            .replace("prm = \"99990000000002\"", "prm = \"99990000000001\"")
            + "\n[[devices]]\nid = \"X\"\nkind = \"heat_substation\"\naddress = \"127.0.0.1:1504\"\nmap = \"vendor/nope\"\n";
        let (_d, path) = write(&bad);
        let err = load(&path, &maps()).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(
            keys.iter().any(|k| k.starts_with("devices[1].address")),
            "{keys:?}"
        );
        assert!(
            keys.iter().any(|k| k.starts_with("participants[0].prm")),
            "{keys:?}"
        );
        assert!(
            keys.iter().any(|k| k.starts_with("devices[2].map")),
            "{keys:?}"
        );
        assert!(problems.iter().all(|p| !p.fix.is_empty()));
    }

    #[test]
    fn a_serial_line_is_accepted_and_its_bad_keys_are_named() {
        let rtu = MINIMAL
            .replace(
                "address = \"127.0.0.1:1502\"",
                "address = \"/dev/ttyUSB0\"\ntransport = \"rtu\"\nunit = 2\nserial = { baud = 9600, parity = \"none\", stop_bits = 2 }",
            )
            .replace(
                "address = \"127.0.0.1:1503\"",
                "address = \"/dev/ttyUSB0\"\ntransport = \"rtu\"\nunit = 3\nserial = { baud = 9600, parity = \"none\", stop_bits = 2 }",
            );
        let (_d, path) = write(&rtu);
        let site = load(&path, &maps()).unwrap();
        let line = site.config.devices[0].serial.clone().unwrap();
        assert_eq!(
            (line.baud, line.parity, line.data_bits),
            (9600, Parity::None, 8)
        );
        // 3.5 characters of 11 bits at 9600 baud.
        assert_eq!(line.silence().as_micros(), 4010);
        assert_eq!(SerialConfig::default().silence().as_micros(), 2005);

        let bad = rtu
            .replacen("baud = 9600, parity = \"none\", stop_bits = 2", "baud = 9600, data_bits = 7, stop_bits = 3, silence_ms = -1", 1)
            .replacen("address = \"/dev/ttyUSB0\"", "address = \"ttyUSB0\"", 1)
            + "\n[[devices]]\nid = \"M-2\"\nkind = \"meter\"\naddress = \"127.0.0.1:1504\"\nserial = { baud = 9600 }\n";
        let (_d, path) = write(&bad);
        let ConfigError::Invalid { problems, .. } = load(&path, &maps()).unwrap_err() else {
            panic!("expected Invalid")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "devices[0].address",
            "devices[0].serial.data_bits",
            "devices[0].serial.stop_bits",
            "devices[0].serial.silence_ms",
            "devices[2].serial",
        ] {
            assert!(
                keys.iter().any(|x| x.starts_with(k)),
                "{k} missing: {keys:?}"
            );
        }
        assert!(problems.iter().all(|p| !p.fix.is_empty()));
        // Two devices on one port with different lines.
        let split = rtu.replacen("baud = 9600", "baud = 19200", 1);
        let (_d, path) = write(&split);
        let ConfigError::Invalid { problems, .. } = load(&path, &maps()).unwrap_err() else {
            panic!("expected Invalid")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.key.starts_with("devices[1].serial") && p.message.contains("differs")),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_key_is_a_parse_error_naming_it() {
        let (_d, path) =
            write(&MINIMAL.replace("latitude = 47.3", "latitude = 47.3\nlattitude = 1"));
        let err = load(&path, &maps()).unwrap_err().to_string();
        assert!(err.contains("lattitude"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let (_d, path) = write(MINIMAL);
        // Only this test sets this variable, so parallel tests are unaffected.
        std::env::set_var("PED__HTTP__LISTEN", "127.0.0.1:19999");
        let site = load(&path, &maps());
        std::env::remove_var("PED__HTTP__LISTEN");
        assert_eq!(site.unwrap().config.http.listen, "127.0.0.1:19999");
    }

    #[test]
    fn http_is_local_by_default_and_a_missing_token_file_is_named() {
        let (_d, path) = write(MINIMAL);
        let site = load(&path, &maps()).unwrap();
        assert!(site.config.http.listen.starts_with("127.0.0.1:"));
        assert_eq!(site.config.http.token_file, None);
        let (_d, path) = write(&MINIMAL.replace(
            "[site]",
            "[http]\ntoken_file = \"/nonexistent/ped-token\"\n\n[site]",
        ));
        let err = load(&path, &maps()).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.key == "http.token_file" && p.fix.contains("chmod 600")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_ledger_path_that_cannot_be_a_file_is_named() {
        let (d, path) = write(MINIMAL);
        let as_folder = format!("\n[ledger]\npath = \"{}\"\n", d.path().display());
        let (_d2, bad) = write(&(MINIMAL.to_string() + &as_folder));
        let err = load(&bad, &maps()).unwrap_err().to_string();
        assert!(
            err.contains("ledger.path") && err.contains("is a folder"),
            "{err}"
        );
        let under_file = format!("\n[ledger]\npath = \"{}/ped.sqlite\"\n", path.display());
        let (_d3, bad) = write(&(MINIMAL.to_string() + &under_file));
        let err = load(&bad, &maps()).unwrap_err().to_string();
        assert!(
            err.contains("ledger.path") && err.contains("is a file"),
            "{err}"
        );
    }

    #[test]
    fn tou_windows_price_local_time_and_bad_ones_are_named() {
        let tou = "\ntariff_eur_per_kwh = 0.2700\ntou = [{ from = \"22:00\", to = \"06:00\", eur_kwh = 0.2068 }]\n";
        let (_d, path) = write(&(MINIMAL.to_string() + tou));
        let site = load(&path, &maps()).unwrap();
        let p = &site.config.participants[0];
        assert_eq!(p.tariff_at_minute(23 * 60), 0.2068);
        assert_eq!(p.tariff_at_minute(5 * 60 + 59), 0.2068);
        assert_eq!(p.tariff_at_minute(6 * 60), 0.27);
        assert_eq!(p.tariff_at_minute(12 * 60), 0.27);
        // 21:30 UTC is 22:30 in Paris in winter (HC), 23:30 in summer; 04:30 UTC is 06:30 in summer (HP).
        let tz: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        assert_eq!(p.tariff_at(at("2025-12-01T21:30:00Z"), tz), 0.2068);
        assert_eq!(p.tariff_at(at("2025-06-01T04:30:00Z"), tz), 0.27);
        assert_eq!(p.tariff_at(at("2025-12-01T04:30:00Z"), tz), 0.2068);

        let bad = "\ntou = [{ from = \"25:00\", to = \"06:00\", eur_kwh = 0.2 }, { from = \"08:00\", to = \"08:00\", eur_kwh = -1.0 }]\n";
        let (_d, path) = write(&(MINIMAL.to_string() + bad));
        let ConfigError::Invalid { problems, .. } = load(&path, &maps()).unwrap_err() else {
            panic!("expected Invalid")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(
            keys.iter()
                .any(|k| k.starts_with("participants[0].tou[0].from")),
            "{keys:?}"
        );
        assert!(
            keys.iter()
                .any(|k| k.starts_with("participants[0].tou[1] ")),
            "{keys:?}"
        );
        assert!(
            keys.iter()
                .any(|k| k.starts_with("participants[0].tou[1].eur_kwh")),
            "{keys:?}"
        );
        assert!(problems.iter().all(|p| !p.fix.is_empty()));
    }

    #[test]
    fn delivery_section_names_key_and_fix() {
        let (d, _path) = write(MINIMAL);
        let ok = "\n[delivery]\nkind = \"https\"\nurl = \"http://127.0.0.1:9/keys\"\n";
        let (_d1, good) = write(&(MINIMAL.to_string() + ok));
        let site = load(&good, &maps()).expect("local http is allowed");
        let del = site.config.delivery.expect("section kept");
        assert_eq!(del.kind, DeliveryKind::Https);
        assert_eq!(del.backoff_base_s, 60);

        let remote =
            "\n[delivery]\nkind = \"https\"\nurl = \"http://ped:s3cr3t-pw@dso.example/keys\"\n";
        let (_d2, bad) = write(&(MINIMAL.to_string() + remote));
        let err = load(&bad, &maps()).unwrap_err().to_string();
        assert!(
            err.contains("delivery.url") && err.contains("in clear"),
            "{err}"
        );
        assert!(
            err.contains("`http://***@dso.example/keys`") && !err.contains("s3cr3t"),
            "{err}"
        );

        let missing = format!(
            "\n[delivery]\nkind = \"https\"\nurl = \"https://dso.example/keys\"\ntoken_file = \"{}/absent\"\n",
            d.path().display()
        );
        let (_d3, bad) = write(&(MINIMAL.to_string() + &missing));
        let err = load(&bad, &maps()).unwrap_err().to_string();
        assert!(
            err.contains("delivery.token_file")
                && err.contains("absent")
                && err.contains("create the file"),
            "{err}"
        );

        let secret = d.path().join("token");
        std::fs::write(&secret, "s3cr3t-token\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
            let p = read_delivery_token(&secret).unwrap_err();
            assert_eq!(p.key, "delivery.token_file");
            assert_eq!(p.fix, format!("chmod 600 {}", secret.display()));
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let with = format!(
            "\n[delivery]\nkind = \"https\"\nurl = \"https://dso.example/keys\"\ntoken_file = \"{}\"\n",
            secret.display()
        );
        let (_d4, good) = write(&(MINIMAL.to_string() + &with));
        assert!(load(&good, &maps()).is_ok());
        assert_eq!(read_delivery_token(&secret).unwrap(), "s3cr3t-token");

        let folder = "\n[delivery]\nkind = \"folder\"\n";
        let (_d5, bad) = write(&(MINIMAL.to_string() + folder));
        let err = load(&bad, &maps()).unwrap_err().to_string();
        assert!(err.contains("delivery.dir"), "{err}");

        let backoff = "\n[delivery]\nkind = \"folder\"\ndir = \"spool\"\nbackoff_base_s = 0\n";
        let (_d6, bad) = write(&(MINIMAL.to_string() + backoff));
        let err = load(&bad, &maps()).unwrap_err().to_string();
        assert!(err.contains("delivery.backoff_base_s"), "{err}");
    }

    #[test]
    fn supply_temperature_limit_is_checked_and_named() {
        let p2h = |limit: &str| {
            MINIMAL.to_string()
                + "\n[[devices]]\nid = \"P2H\"\nkind = \"power_to_heat\"\naddress = \"127.0.0.1:1505\"\nmap = \"vendor/trovis5576\"\nmax_power_kw = 50.0\ncapacity_kwh = 400.0\n"
                + limit
        };
        let (_d, path) = write(&p2h("max_supply_temp_c = 90.0\n"));
        let site = load(&path, &maps()).unwrap();
        assert_eq!(site.config.devices[2].max_supply_temp_c, Some(90.0));
        let problems = |text: &str| {
            let (_d, path) = write(text);
            match load(&path, &maps()) {
                Err(ConfigError::Invalid { problems, file }) => {
                    assert_eq!(file, path);
                    problems
                }
                other => panic!("expected Invalid, got {other:?}"),
            }
        };
        let bad = problems(&p2h("max_supply_temp_c = 200.0\n"));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].key.starts_with("devices[2].max_supply_temp_c"),
            "{bad:?}"
        );
        assert!(
            bad[0].message.contains("200") && bad[0].fix.contains("30..=130"),
            "{bad:?}"
        );
        let on_pv =
            problems(&MINIMAL.replace("kwp = 10.0", "kwp = 10.0\nmax_supply_temp_c = 80.0"));
        assert!(
            on_pv[0].key.starts_with("devices[0].max_supply_temp_c"),
            "{on_pv:?}"
        );
        assert!(on_pv[0].fix.contains("power_to_heat"), "{on_pv:?}");
    }

    /// The minimal site with a battery: a device that takes setpoints.
    fn with_battery(extra: &str) -> SiteConfig {
        let text = format!(
            r#"{MINIMAL}
[[devices]]
id = "BAT"
kind = "battery"
address = "127.0.0.1:1504"
prm = "99990000000003"
participant = "B-1"
capacity_kwh = 100.0
max_charge_kw = 50.0
max_discharge_kw = 40.0
{extra}

[[participants]]
id = "B-1"
kind = "battery"
prm = "99990000000003"
meter = "BAT"
"#
        );
        let mut c: SiteConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        c.keys.operation_id = Some("ACC00000001".into());
        c
    }

    /// The problems `check` finds, as (key, fix).
    fn problems_of(c: &SiteConfig) -> Vec<(String, String)> {
        check(c, &maps())
            .into_iter()
            .map(|p| (p.key, p.fix))
            .collect()
    }

    #[test]
    fn the_minimal_site_with_a_battery_passes() {
        assert_eq!(problems_of(&with_battery("")), vec![]);
    }

    /// Each value passed `check` and panicked ped at run time (a `Duration`
    /// from an unchecked float or an overflowing product).
    #[test]
    fn every_duration_and_count_is_bounded_with_its_key_and_a_fix() {
        type Edit = fn(&mut SiteConfig);
        let cases: [(&str, Edit); 11] = [
            ("devices[2].revert_timeout_s", |c| {
                c.devices[2].revert_timeout_s = Some(1e20)
            }),
            ("devices[2].interval_ms", |c| {
                c.devices[2].interval_ms = Some(u64::MAX)
            }),
            ("polling.interval_ms", |c| {
                c.polling.interval_ms = u64::MAX / 2
            }),
            ("polling.timeout_ms", |c| c.polling.timeout_ms = u64::MAX),
            ("polling.max_backoff_ms", |c| {
                c.polling.max_backoff_ms = u64::MAX
            }),
            ("plan.budget_ms", |c| c.plan.budget_ms = u64::MAX),
            ("control.plan_loss_steps", |c| {
                c.control.plan_loss_steps = Some(0)
            }),
            ("control.plan_loss_steps", |c| {
                c.control.plan_loss_steps = Some(u32::MAX)
            }),
            ("ledger.snapshot_retention_days", |c| {
                c.ledger.snapshot_retention_days = u32::MAX
            }),
            ("delivery.backoff_cap_s", |c| {
                let mut d: DeliverySection = toml::from_str("kind = \"folder\"\ndir = \"spool\"")
                    .unwrap_or_else(|e| panic!("{e}"));
                d.backoff_cap_s = 100_000_000_000_000_000;
                c.delivery = Some(d);
            }),
            ("delivery.backoff_base_s", |c| {
                let mut d: DeliverySection = toml::from_str("kind = \"folder\"\ndir = \"spool\"")
                    .unwrap_or_else(|e| panic!("{e}"));
                d.backoff_base_s = 10_000_000_000_000;
                d.backoff_cap_s = 10_000_000_000_000;
                c.delivery = Some(d);
            }),
        ];
        for (key, edit) in cases {
            let mut c = with_battery("");
            edit(&mut c);
            let found = problems_of(&c);
            assert!(
                found
                    .iter()
                    .any(|(k, fix)| k.starts_with(key) && !fix.is_empty()),
                "{key}: {found:?}"
            );
        }
        // The largest values allowed still make durations.
        let mut c = with_battery("revert_timeout_s = 3600.0\ninterval_ms = 3600000");
        c.polling.interval_ms = limits::INTERVAL_MS;
        c.polling.max_backoff_ms = limits::INTERVAL_MS;
        c.control.plan_loss_steps = Some(limits::PLAN_LOSS_STEPS);
        assert_eq!(problems_of(&c), vec![]);
        assert!(duration_s(limits::REVERT_TIMEOUT_S).is_some());
        assert_eq!(duration_s(1e20), None);
        assert_eq!(duration_s(f64::NAN), None);
        assert_eq!(duration_s(-1.0), None);
    }

    #[test]
    fn setpoint_ranges_outside_the_ratings_are_refused() {
        for (extra, key) in [
            ("setpoint_min_kw = 80.0", "devices[2].setpoint_min_kw"),
            ("setpoint_max_kw = -60.0", "devices[2].setpoint_max_kw"),
            ("setpoint_max_kw = 51.0", "devices[2].setpoint_max_kw"),
            ("setpoint_min_kw = -41.0", "devices[2].setpoint_min_kw"),
            ("setpoint_min_kw = nan", "devices[2].setpoint_min_kw"),
        ] {
            let found = problems_of(&with_battery(extra));
            assert!(
                found
                    .iter()
                    .any(|(k, fix)| k.starts_with(key) && fix.contains("-40..=50")),
                "{extra}: {found:?}"
            );
        }
        let inside = with_battery("setpoint_min_kw = -10.0\nsetpoint_max_kw = 20.0");
        assert_eq!(problems_of(&inside), vec![]);
        let mut meter = with_battery("");
        meter.devices[1].setpoint_max_kw = Some(1.0);
        assert!(problems_of(&meter)
            .iter()
            .any(|(k, _)| k.starts_with("devices[1].setpoint_max_kw")));
    }

    #[test]
    fn broadcast_units_nan_ratings_and_ipv6_addresses_are_checked() {
        let mut c = with_battery("unit = 0");
        c.participants[0].annual_kwh = f64::NAN;
        c.devices[0].tilt_deg = Some(f64::NAN);
        let keys: Vec<String> = problems_of(&c).into_iter().map(|(k, _)| k).collect();
        for key in [
            "devices[2].unit",
            "participants[0].annual_kwh",
            "devices[0].tilt_deg",
        ] {
            assert!(keys.iter().any(|k| k.starts_with(key)), "{key}: {keys:?}");
        }
        assert_eq!(keys.len(), 3, "{keys:?}");
        let mut v6 = with_battery("");
        v6.devices[2].address = "[::1]:502".into();
        assert_eq!(problems_of(&v6), vec![]);
        v6.devices[2].address = "::1:502".into();
        let found = problems_of(&v6);
        assert!(
            found
                .iter()
                .any(|(k, _)| k.starts_with("devices[2].address")),
            "{found:?}"
        );
    }

    #[test]
    fn keys_too_coarse_for_the_operation_are_warned_about() {
        let lib = crate::registers::ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
        let mut c = with_battery("writes = [\"WSetEna\", \"WSet\", \"WSetRvrtTms\"]");
        let one = c.participants[0].clone();
        c.participants = (0..600)
            .map(|i| ParticipantConfig {
                id: format!("H-{i:04}"),
                ..one.clone()
            })
            .collect();
        c.keys.units_per_one = 1000;
        let w = warnings(&c, &lib);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "keys.units_per_one");
        assert!(w[0].fix.contains("10000"), "{w:?}");
        c.keys.units_per_one = 10000;
        assert_eq!(warnings(&c, &lib), vec![]);
        c.keys.units_per_one = 1000;
        c.participants.truncate(200);
        assert_eq!(warnings(&c, &lib), vec![]);
    }

    #[test]
    fn a_controlled_device_without_its_revert_timer_in_writes_is_warned_about() {
        let lib = crate::registers::ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
        let c = with_battery("writes = [\"WSetEna\", \"WSet\"]");
        assert_eq!(problems_of(&c), vec![], "a warning, not a problem");
        let w = warnings(&c, &lib);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].key.starts_with("devices[2].writes"), "{w:?}");
        assert!(w[0].fix.contains("\"WSetRvrtTms\""), "{w:?}");
        let armed = with_battery("writes = [\"WSetEna\", \"WSet\", \"WSetRvrtTms\"]");
        assert_eq!(warnings(&armed, &lib), vec![]);
        // A vendor map with a `revert_seconds` point, and one without writes.
        let mut vendor = with_battery(
            "map = \"vendor/sma_battery\"\nwrites = [\"mode\", \"power_setpoint_kw\"]",
        );
        let has_timer = lib
            .get("vendor/sma_battery")
            .and_then(|m| m.point("revert_seconds"))
            .is_some();
        assert_eq!(warnings(&vendor, &lib).len(), usize::from(has_timer));
        vendor.devices[2].writes.clear();
        assert_eq!(warnings(&vendor, &lib), vec![]);
    }

    #[test]
    fn an_operation_layout_without_an_operation_id_is_warned_about() {
        let lib = crate::registers::ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
        let mut c = with_battery("writes = [\"WSetEna\", \"WSet\", \"WSetRvrtTms\"]");
        assert_eq!(warnings(&c, &lib), vec![]);
        c.keys.operation_id = None;
        let w = warnings(&c, &lib);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "keys.operation_id");
        assert!(w[0].fix.contains("ACC"), "{w:?}");
        c.keys.file.naming = Some(crate::dso::enedis::Naming::Producer);
        assert_eq!(warnings(&c, &lib), vec![]);
        c.keys.file.naming = None;
        c.keys.layout = crate::dso::enedis::LayoutName::EnedisIso;
        assert_eq!(warnings(&c, &lib), vec![]);
    }
}

/// `[delivery]`: where the outbox sends validated key files when `ped run`
/// has no `--deliver-dir` (the flag wins).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    pub kind: DeliveryKind,
    /// `kind = "folder"`: the spool folder (relative to the working directory).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// `kind = "https"`: the endpoint the files are POSTed to. Plain `http://`
    /// only for 127.0.0.1 / localhost (tests, a local relay).
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the bearer token, read at start and never logged, so
    /// the secret stays out of the site file (which goes into the ledger).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Longest one POST may take, seconds, from the connection to the last
    /// byte of the answer (so also each connect and read within it).
    #[serde(default = "default_delivery_timeout_s")]
    pub timeout_s: f64,
    /// First wait after a transient failure, seconds (site clock); doubles per failure.
    #[serde(default = "default_delivery_backoff_base_s")]
    pub backoff_base_s: u64,
    /// Longest wait between two tries, seconds (site clock).
    #[serde(default = "default_delivery_backoff_cap_s")]
    pub backoff_cap_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    Folder,
    Https,
}

fn default_delivery_timeout_s() -> f64 {
    30.0
}
fn default_delivery_backoff_base_s() -> u64 {
    60
}
fn default_delivery_backoff_cap_s() -> u64 {
    3600
}

/// The host part of an `http(s)://host[:port]/…` URL.
fn url_host(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or("");
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// Reads `delivery.token_file`; the error is a config problem naming key,
/// file and fix. The token itself never appears in a message.
pub fn read_delivery_token(path: &std::path::Path) -> Result<String, Problem> {
    // A secret only its owner may read, as for http.token_file.
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(problem(
                "delivery.token_file",
                format!(
                    "{}: other users can read it (mode {mode:o})",
                    path.display()
                ),
                format!("chmod 600 {}", path.display()),
            ));
        }
    }
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(problem(
            "delivery.token_file",
            format!("{} is empty", path.display()),
            "put the DSO API token (one line) in that file",
        )),
        Err(e) => Err(problem(
            "delivery.token_file",
            format!("{} cannot be read: {e}", path.display()),
            "create the file with the token (one line), readable by the ped user, or remove token_file",
        )),
    }
}

fn check_delivery(d: &DeliverySection, p: &mut Vec<Problem>) {
    match d.kind {
        DeliveryKind::Folder => {
            match &d.dir {
                None => p.push(problem(
                    "delivery.dir",
                    "kind = \"folder\" needs a folder",
                    "add dir = \"out/spool\" (created if missing)",
                )),
                Some(dir) if dir.is_file() => p.push(problem(
                    "delivery.dir",
                    format!("{} is a file", dir.display()),
                    "give a folder, e.g. out/spool",
                )),
                Some(_) => {}
            }
            if d.url.is_some() || d.token_file.is_some() {
                p.push(problem(
                    "delivery.url",
                    "url and token_file are for kind = \"https\"",
                    "remove them, or set kind = \"https\"",
                ));
            }
        }
        DeliveryKind::Https => {
            match d.url.as_deref() {
                None => p.push(problem(
                    "delivery.url",
                    "kind = \"https\" needs a url",
                    "add url = \"https://…\" (the DSO or relay endpoint)",
                )),
                Some(url) => {
                    // Problems are printed and logged: never the URL's credentials.
                    let shown = crate::dso::channels::redact_url(url);
                    let local = |host: &str| matches!(host, "127.0.0.1" | "localhost" | "::1");
                    if let Some(rest) = url.strip_prefix("https://") {
                        if url_host(rest).is_empty() {
                            p.push(problem(
                                "delivery.url",
                                format!("`{shown}` has no host"),
                                "use https://host/path",
                            ));
                        }
                    } else if let Some(rest) = url.strip_prefix("http://") {
                        if !local(url_host(rest)) {
                            p.push(problem(
                                "delivery.url",
                                format!("`{shown}` is plain http to a remote host: key files and token would travel in clear"),
                                "use https://, or http:// only to 127.0.0.1/localhost",
                            ));
                        }
                    } else {
                        p.push(problem(
                            "delivery.url",
                            format!("`{shown}` is not an http(s) URL"),
                            "use https://host/path",
                        ));
                    }
                }
            }
            if d.dir.is_some() {
                p.push(problem(
                    "delivery.dir",
                    "dir is for kind = \"folder\"",
                    "remove it, or set kind = \"folder\"",
                ));
            }
            if let Some(f) = &d.token_file {
                if let Err(e) = read_delivery_token(f) {
                    p.push(e);
                }
            }
        }
    }
    if !(d.timeout_s.is_finite() && d.timeout_s > 0.0 && d.timeout_s <= 600.0) {
        p.push(problem(
            "delivery.timeout_s",
            format!("{} is not in (0, 600]", d.timeout_s),
            "use e.g. timeout_s = 30",
        ));
    }
    if d.backoff_base_s == 0 || d.backoff_cap_s < d.backoff_base_s {
        p.push(problem(
            "delivery.backoff_base_s",
            format!(
                "backoff_base_s = {} and backoff_cap_s = {}: need 0 < base ≤ cap",
                d.backoff_base_s, d.backoff_cap_s
            ),
            "use e.g. backoff_base_s = 60, backoff_cap_s = 3600",
        ));
    }
}
