//! The site file's sections as serde reads them, with their defaults.

use super::duration_s;
use crate::ids::Prm;
use crate::units::SignConvention;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
/// [`Site::producers`](super::Site::producers) and [`SiteConfig::participants`], in file order.
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
