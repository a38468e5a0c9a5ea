//! Scaffolding shared by the integration tests that run the daemon against
//! the simulated district over real sockets. Each test binary compiles this
//! module on its own and uses a part of it.
#![allow(dead_code)]

use ped::clock::Clock;
use ped::config::{self, Site};
use ped::daemon::{Daemon, DaemonError, LedgerOptions, Options};
use ped::ledger::Ledger;
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A site config loaded from TOML text and its simulated devices, serving
/// on 127.0.0.1 from `origin` (RFC 3339) at `speed` × real time.
pub struct Simulated {
    pub dir: tempfile::TempDir,
    pub lib: Arc<ModelLibrary>,
    pub clock: Clock,
    pub origin: chrono::DateTime<chrono::Utc>,
    pub sim: Simulator,
}

pub fn at(rfc3339: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// Loads `toml` (written as `site.toml` in a fresh temporary folder) and
/// starts its simulated devices.
pub async fn simulated(toml: &str, origin: &str, speed: f64) -> Simulated {
    let lib = Arc::new(ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}")));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let site = load_site(&lib, dir.path(), toml);
    let origin = at(origin);
    let clock = Clock::simulated(origin, speed);
    let sim = Simulator::start(&site, lib.clone(), clock, 3, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Simulated {
        dir,
        lib,
        clock,
        origin,
        sim,
    }
}

impl Simulated {
    /// ped on `site` (usually `self.sim.site`, maybe edited), writing under
    /// the temporary folder, its HTTP endpoint on an ephemeral port.
    pub async fn daemon(&self, site: Site) -> Daemon {
        start_daemon(
            site,
            self.lib.clone(),
            self.clock,
            self.dir.path().join("out"),
            false,
        )
        .await
    }
}

/// The options of a daemon writing into `out`, its HTTP endpoint on an
/// ephemeral port of 127.0.0.1 (read it back from `Daemon::http_addr`).
pub fn options(out: impl Into<std::path::PathBuf>, dry_run: bool) -> Options {
    Options {
        dry_run,
        output_dir: Some(out.into()),
        http_listen: Some("127.0.0.1:0".into()),
    }
}

/// ped on `site` with [`options`]; a daemon that does not start fails the
/// test.
pub async fn start_daemon(
    site: Site,
    lib: Arc<ModelLibrary>,
    clock: Clock,
    out: impl Into<std::path::PathBuf>,
    dry_run: bool,
) -> Daemon {
    Daemon::start(site, lib, clock, options(out, dry_run))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// ped on `site` with [`options`], its ledger at `ledger`, its writer held
/// while `writer_hold` is set (see `LedgerOptions::writer_hold`).
pub async fn start_with_ledger(
    site: Site,
    lib: Arc<ModelLibrary>,
    clock: Clock,
    out: impl Into<std::path::PathBuf>,
    ledger: &std::path::Path,
    writer_hold: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Result<Daemon, DaemonError> {
    let ledger = LedgerOptions {
        path: Some(ledger.to_path_buf()),
        writer_hold,
        ..Default::default()
    };
    Daemon::start_with_ledger(site, lib, clock, options(out, false), ledger).await
}

/// Drives `clock` (see [`pace`]) every 10 ms of real time, as long as each of
/// `site`'s devices has a reading at most five simulated minutes old.
pub fn pace_site(
    clock: Clock,
    shared: Arc<ped::daemon::Shared>,
    site: &Site,
) -> tokio::task::JoinHandle<()> {
    let devices = site.config.devices.iter().map(|d| d.id.clone()).collect();
    pace(
        clock,
        shared,
        devices,
        std::time::Duration::from_millis(10),
        chrono::Duration::minutes(5),
    )
}

/// Checks that the ledger at `path` stores at least `closed` periods, each a
/// quarter-hour after the one before, and that its audit chain verifies;
/// returns the ledger for the caller's own checks.
pub fn assert_ledger_whole(path: &std::path::Path, closed: u64) -> Ledger {
    let l = Ledger::open_read_only(path).unwrap_or_else(|e| panic!("ledger: {e}"));
    let periods = l.periods().unwrap_or_else(|e| panic!("periods: {e}"));
    assert!(
        periods.len() as u64 >= closed,
        "{} periods stored, {closed} closed",
        periods.len()
    );
    for w in periods.windows(2) {
        assert_eq!(
            (w[1].start - w[0].start).num_minutes(),
            15,
            "gap after {}",
            w[0].start
        );
    }
    let r = l.verify().unwrap_or_else(|e| panic!("verify: {e}"));
    assert!(r.ok(), "{r:?}");
    l
}

/// Runs `cmd` and fails the test, with its output, unless it exits 0;
/// `why` tells what a failure may mean.
pub fn output_ok(cmd: &mut std::process::Command, why: &str) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed{why}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A shipped site config (by its path in the repository) loaded against
/// `lib`, polled every 100 ms with a 300 ms timeout, so that each simulated
/// quarter-hour sees several samples.
pub fn shipped_site(lib: &ModelLibrary, rel: &str) -> Site {
    let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
    let mut site = config::load(&repo_path(rel), &known).unwrap_or_else(|e| panic!("{rel}: {e}"));
    site.config.polling.interval_ms = 100;
    site.config.polling.timeout_ms = 300;
    site
}

/// The setpoint writes the daemon counts as done on `devices`, summed.
pub fn setpoints_ok(d: &Daemon, devices: &[&str]) -> u64 {
    devices
        .iter()
        .map(|b| {
            d.shared
                .metrics
                .setpoint_writes
                .with_label_values(&[b, "ok"])
                .get()
        })
        .sum()
}

/// The sum of a metric's samples in the text exposition whose line
/// contains every one of `with` (label fragments).
pub fn metric_sum(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether every one of `devices` has a reading in the daemon taken no more
/// than `lead` of clock time ago: the condition on which a paced clock may
/// move on.
pub fn read_within(
    shared: &ped::daemon::Shared,
    clock: Clock,
    devices: &[String],
    lead: chrono::Duration,
) -> bool {
    let now = clock.now();
    let st = shared.status();
    devices.iter().all(|id| {
        st.devices
            .get(id)
            .and_then(|d| d.read_at)
            .is_some_and(|at| now - at <= lead)
    })
}

/// Drives a [`Clock::paced`] clock until the returned handle is aborted:
/// every `tick` of real time it moves the clock by `tick × speed`, as long as
/// each of `devices` has a reading at most `lead` old; otherwise it waits for
/// the daemon. A stalled machine stops simulated time instead of skipping
/// polls, so samples are never further apart than `lead + tick × speed`
/// whatever the load.
pub fn pace(
    clock: Clock,
    shared: Arc<ped::daemon::Shared>,
    devices: Vec<String>,
    tick: std::time::Duration,
    lead: chrono::Duration,
) -> tokio::task::JoinHandle<()> {
    let step = clock.clock_duration(tick);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            if read_within(&shared, clock, &devices, lead) {
                clock.step(step);
            }
        }
    })
}

/// The `ped` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_ped");

/// `ped` as a command, to be given its arguments.
pub fn ped() -> std::process::Command {
    std::process::Command::new(BIN)
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a failed
/// assertion leaves no ped or simulator running behind the test.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` in `dir`, stdout discarded, stderr into `dir/log` (read it on
/// a failure), under a [`Kill`] guard.
pub fn spawn(cmd: &mut std::process::Command, dir: &std::path::Path, log: &str) -> Kill {
    let log_file = std::fs::File::create(dir.join(log)).unwrap_or_else(|e| panic!("{log}: {e}"));
    Kill(
        cmd.current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
    )
}

/// Now as Unix seconds, for `--clock-origin`: a devices process and the
/// daemons started on the same origin compute the same simulated time.
pub fn clock_origin() -> String {
    format!(
        "{:.6}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64()
    )
}

/// A shipped site config, by its path in the repository.
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `ped simulate --devices-only` serving `site`'s devices on ephemeral ports
/// from `start` at `speed` on the shared clock `origin`, logging into
/// `dir/devices.log`; returns once it has written the site with those ports as
/// `dir/site.toml` (a failure after 30 s), and a little later, so that the
/// file is read whole.
pub fn devices(
    dir: &std::path::Path,
    site: &std::path::Path,
    start: &str,
    speed: &str,
    origin: &str,
) -> Kill {
    let guard = spawn(
        ped()
            .args(["simulate", "--devices-only", "--ephemeral-ports", "--site"])
            .arg(site)
            .args(["--speed", speed, "--start", start, "--clock-origin", origin])
            .args(["--write-site", "site.toml"]),
        dir,
        "devices.log",
    );
    let t0 = std::time::Instant::now();
    while !dir.join("site.toml").exists() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "devices did not start: {}",
            std::fs::read_to_string(dir.join("devices.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    guard
}

/// The arguments of `ped run` on `dir/site.toml` (written by [`devices`]),
/// output into `out`, on the devices' clock; the caller adds the rest.
pub fn run_args(origin: &str, start: &str, speed: &str) -> Vec<String> {
    [
        "run",
        "--site",
        "site.toml",
        "--out",
        "out",
        "--clock-origin",
        origin,
        "--start",
        start,
        "--speed",
        speed,
    ]
    .map(String::from)
    .to_vec()
}

/// A port free at the time of the call on 127.0.0.1, for a child's listener
/// whose address the test must know in advance.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"))
        .port()
}

/// `GET path` over a fresh connection with `Connection: close`: the whole
/// answer (status line, headers, body), or None when connecting, writing or
/// reading fails, a read waiting longer than `wait` (None: no limit) included.
pub fn http_get(
    addr: impl std::net::ToSocketAddrs,
    path: &str,
    wait: Option<std::time::Duration>,
) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(wait).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// An HTTP request as a test receiver read it.
#[derive(Debug, Default, Clone)]
pub struct Request {
    /// Header names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request (head, then `Content-Length` bytes of body) from `s`,
/// as far as it goes: a receiver must read the whole request before it
/// answers, since closing a socket with unread bytes sends a reset, which can
/// discard the answer before the client reads it.
pub fn read_request(s: &mut std::net::TcpStream) -> Request {
    use std::io::Read;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let headers: Vec<(String, String)> = String::from_utf8_lossy(&head)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut req = Request {
        headers,
        body: Vec::new(),
    };
    let length = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = s.read_exact(&mut body);
    req.body = body;
    req
}

/// Writes `toml` as `dir/site.toml` and loads it against the embedded maps.
pub fn load_site(lib: &ModelLibrary, dir: &std::path::Path, toml: &str) -> Site {
    let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
    let path = dir.join("site.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    config::load(&path, &known).unwrap_or_else(|e| panic!("{e}"))
}

/// Held by each test of a binary whose tests time real seconds (processes at
/// ×900, timers, ramps): they run one at a time, each with the machine to
/// itself, rather than side by side on libtest's threads.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// [`serial`] for a test without a runtime.
pub fn serial_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Locks `m`, whether or not a thread panicked while holding it: a register
/// bank stays readable after a failed assertion elsewhere.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A register encoding that must succeed.
pub fn ok<T>(r: Result<T, ped::registers::RegisterError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// The head of a test site's config: `[site]` at Dijon's coordinates, polling
/// every 100 ms with a 300 ms timeout, writes allowed. The test adds its
/// `[plan]`, devices and participants after it.
pub fn site_head(id: &str, name: &str) -> String {
    format!(
        r#"[site]
id = "{id}"
name = "{name}"
latitude = 47.32
longitude = 5.0

[polling]
interval_ms = 100
timeout_ms = 300

[control]
writes_allowed = true
"#
    )
}

/// `[[devices]]` of a test site's PV inverter `PV` (PRM 99990000000001) of
/// `kwp` at `address`.
pub fn pv_toml(address: &str, kwp: f64) -> String {
    format!(
        r#"
[[devices]]
id = "PV"
kind = "pv_inverter"
address = "{address}"
prm = "99990000000001"
kwp = {kwp:?}
"#
    )
}

/// `[[devices]]` of a test site's meter `M1` at `address`, the household
/// `P1`'s.
pub fn meter_toml(address: &str) -> String {
    format!(
        r#"
[[devices]]
id = "M1"
kind = "meter"
address = "{address}"
participant = "P1"
"#
    )
}

/// `[[devices]]` of a test site's 200 kWh, ±50 kW battery `BAT` (PRM
/// 99990000000002, the participant `BAT-P`) at `address`, writing `writes`
/// (a TOML array), with `extra` keys.
pub fn battery_toml(address: &str, writes: &str, extra: &str) -> String {
    format!(
        r#"
[[devices]]
id = "BAT"
kind = "battery"
address = "{address}"
writes = {writes}
prm = "99990000000002"
participant = "BAT-P"
capacity_kwh = 200.0
max_charge_kw = 50.0
max_discharge_kw = 50.0
{extra}
"#
    )
}

/// `[[participants]]` of a test site: the household `P1` (PRM
/// 99990000000011, metered by `M1`) using `annual_kwh` a year, and the
/// battery `BAT-P` (PRM 99990000000002, metered by `BAT`).
pub fn participants_toml(annual_kwh: f64) -> String {
    format!(
        r#"
[[participants]]
id = "P1"
kind = "household"
prm = "99990000000011"
meter = "M1"
annual_kwh = {annual_kwh:?}

[[participants]]
id = "BAT-P"
kind = "battery"
prm = "99990000000002"
meter = "BAT"
"#
    )
}

/// A delivery channel whose every attempt fails with `error()`.
pub struct Failing {
    pub channel: &'static str,
    pub error: fn() -> ped::dso::delivery::DeliveryError,
}

impl ped::dso::delivery::Deliver for Failing {
    fn channel(&self) -> &'static str {
        self.channel
    }
    fn deliver(
        &self,
        _: &ped::dso::delivery::Delivery,
    ) -> Result<String, ped::dso::delivery::DeliveryError> {
        Err((self.error)())
    }
}

/// A fresh ledger at `path` holding one key file to deliver, `F.csv` for
/// 2025-06-21, recorded at 2025-06-22T00:05Z; that time is returned too.
pub fn ledger_with_one_key_file(path: &std::path::Path) -> (Ledger, chrono::DateTime<chrono::Utc>) {
    let mut l = Ledger::open(path).unwrap_or_else(|e| panic!("ledger: {e}"));
    let now = at("2025-06-22T00:05:00Z");
    let day = chrono::NaiveDate::from_ymd_opt(2025, 6, 21).unwrap_or_else(|| panic!("day"));
    l.record_key_file("F.csv", day, day, b"rows", "[]", "prorata", now)
        .unwrap_or_else(|e| panic!("record: {e}"));
    (l, now)
}

/// A fresh temporary folder in which [`devices`] serves the Fontaine d'Ouche
/// site's devices from `start` at `speed`, on a clock origin of now: the
/// folder, that origin, and the devices' guard (dropped first).
pub fn fontaine_devices(start: &str, speed: &str) -> (tempfile::TempDir, String, Kill) {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let origin = clock_origin();
    let site = repo_path("site-configs/fontaine-douche.toml");
    let guard = devices(tmp.path(), &site, start, speed, &origin);
    (tmp, origin, guard)
}

/// A Modbus TCP server of test devices; it stops when this is dropped.
pub struct Served {
    pub addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `units` on `listener`, answering with `faults`, until the returned
/// [`Served`] is dropped.
pub fn serve_faulty(
    listener: tokio::net::TcpListener,
    units: std::collections::HashMap<u8, ped::modbus::server::SharedBank>,
    faults: ped::modbus::server::SharedFaults,
) -> Served {
    serve_framed(listener, units, faults, false)
}

/// [`serve_faulty`], in RTU framing over TCP when `rtu`.
fn serve_framed(
    listener: tokio::net::TcpListener,
    units: std::collections::HashMap<u8, ped::modbus::server::SharedBank>,
    faults: ped::modbus::server::SharedFaults,
    rtu: bool,
) -> Served {
    use ped::modbus::server::{serve_rtu_over_tcp, serve_with_faults};
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        let _ = rx.await;
    };
    if rtu {
        tokio::spawn(serve_rtu_over_tcp(listener, units, faults, stop));
    } else {
        tokio::spawn(serve_with_faults(listener, units, faults, stop));
    }
    Served { addr, _stop: tx }
}

/// [`serve_faulty`] on an ephemeral port of 127.0.0.1, in RTU framing over
/// TCP (as a transparent serial gateway speaks) when `rtu`.
pub async fn serve_local(
    units: std::collections::HashMap<u8, ped::modbus::server::SharedBank>,
    faults: ped::modbus::server::SharedFaults,
    rtu: bool,
) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    serve_framed(listener, units, faults, rtu)
}

/// A control test site: `head` (see [`site_head`]) and `plan` (the `[plan]`
/// keys), then PV `PV` of `kwp`, meter `M1`, battery `BAT` writing `writes`
/// with `battery_extra` keys (all at placeholder addresses the simulator
/// replaces), and the participants of a 20 MWh household.
pub fn control_site(head: &str, plan: &str, kwp: f64, writes: &str, battery_extra: &str) -> String {
    format!(
        "{head}\n[plan]\n{plan}\n{}{}{}{}",
        pv_toml("127.0.0.1:1", kwp),
        meter_toml("127.0.0.1:2"),
        battery_toml("127.0.0.1:3", writes, battery_extra),
        participants_toml(20000.0),
    )
}

/// The simulated battery `id`'s power (kW, 0 when it has none).
pub fn battery_kw(sim: &Simulator, id: &str) -> f64 {
    sim.truth
        .borrow()
        .battery_kw
        .get(id)
        .copied()
        .unwrap_or(0.0)
}

/// A register bank of a device described by a register map: only the
/// registers of `map`'s points exist, holding `block` (the map's image, from
/// its base), writable where the point is.
pub fn map_bank(map: &ped::registers::RegisterMap, block: &[u16]) -> ped::modbus::server::Bank {
    use ped::registers::Table;
    let mut bank = ped::modbus::server::Bank::new();
    for p in &map.points {
        let addr = map.base + p.offset;
        bank.map_range(
            Table::Holding,
            addr,
            p.size,
            p.access == ped::registers::Access::Rw,
        );
        let o = usize::from(p.offset);
        bank.set(Table::Holding, addr, &block[o..o + usize::from(p.size)]);
    }
    bank
}

/// Fails the test, showing `text`, unless `text` contains each of `needles`.
pub fn assert_contains(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{n:?} not in:\n{text}");
    }
}
