use super::*;

fn dev(extra: &str) -> DeviceConfig {
    toml::from_str(&format!(
        "id = \"B\"\nkind = \"battery\"\naddress = \"127.0.0.1:502\"\nmax_charge_kw = 50.0\nmax_discharge_kw = 40.0\n{extra}"
    ))
    .unwrap()
}

/// A vendor battery (SMA map, unit 3) served by the register-bank server
/// on 127.0.0.1, and an endpoint task polling it every 100 ms; 15-minute
/// steps at 900x: one step per real second, plan loss after one.
struct Rig {
    bank: Arc<std::sync::Mutex<crate::modbus::server::Bank>>,
    faults: crate::modbus::server::SharedFaults,
    shared: Arc<Shared>,
    plan_tx: watch::Sender<BTreeMap<String, Command>>,
    stop_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    _server_stop: tokio::sync::oneshot::Sender<()>,
}

impl Rig {
    /// `edit` changes the battery's config after the site passed `check`,
    /// to reach run-time paths `check` keeps a site config from reaching.
    async fn start(edit: impl FnOnce(&mut DeviceConfig)) -> Rig {
        use crate::modbus::server::{serve_with_faults, Bank};
        use crate::registers::{Access, Table};
        let lib = Arc::new(ModelLibrary::embedded().unwrap());
        let map = lib.get("vendor/sma_battery").unwrap().clone();
        let mut block = vec![0u16; usize::from(map.block_len())];
        map.encode_f64(&mut block, "soc_pct", 50.0).unwrap();
        map.encode_f64(&mut block, "import_kwh", 10.0).unwrap();
        map.encode_f64(&mut block, "export_kwh", 10.0).unwrap();
        map.encode_raw(&mut block, "mode", 803).unwrap();
        let mut bank = Bank::new();
        for p in &map.points {
            let a = map.base + p.offset;
            bank.map_range(Table::Holding, a, p.size, p.access == Access::Rw);
            let o = usize::from(p.offset);
            bank.set(Table::Holding, a, &block[o..o + usize::from(p.size)]);
        }
        let bank = Arc::new(std::sync::Mutex::new(bank));
        let faults = crate::modbus::server::SharedFaults::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (server_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_with_faults(
            listener,
            std::collections::HashMap::from([(3u8, bank.clone())]),
            faults.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[site]
id = "plan-loss"
name = "plan loss"
latitude = 47.3
longitude = 5.0
[polling]
interval_ms = 100
[control]
writes_allowed = true
plan_loss_steps = 1
[[devices]]
id = "PV"
kind = "pv_inverter"
address = "127.0.0.1:9"
prm = "99990000000001"
kwp = 10.0
[[devices]]
id = "BAT"
kind = "battery"
address = "{addr}"
unit = 3
map = "vendor/sma_battery"
writes = ["mode", "power_setpoint_kw"]
prm = "99990000000002"
participant = "BAT-P"
capacity_kwh = 10.0
max_charge_kw = 5.0
max_discharge_kw = 5.0
revert_timeout_s = 1.5
[[participants]]
id = "BAT-P"
kind = "battery"
prm = "99990000000002"
meter = "BAT"
"#
            ),
        )
        .unwrap();
        let known = lib.keys().map(str::to_string).collect();
        let site = crate::config::load(&path, &known).unwrap();
        let mut bat = site.config.devices[1].clone();
        edit(&mut bat);
        let clock = crate::clock::Clock::simulated(chrono::Utc::now(), 900.0);
        let shared = Arc::new(Shared {
            site,
            clock,
            metrics: crate::metrics::Metrics::new("plan-loss").unwrap(),
            status: std::sync::Mutex::new(super::super::Status::default()),
            output_dir: dir.path().to_path_buf(),
        });
        let (plan_tx, plan_rx) = watch::channel(BTreeMap::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            EndpointTask {
                addr: addr.to_string(),
                devices: vec![bat],
                lib,
                shared: shared.clone(),
                events: Arc::new(super::super::handoff::Handoff::new(
                    shared.site.grid,
                    Default::default(),
                )),
                setpoints: plan_rx,
                dry_run: false,
                failing: Default::default(),
            },
            stop_rx,
        ));
        Rig {
            bank,
            faults,
            shared,
            plan_tx,
            stop_tx,
            task,
            _dir: dir,
            _server_stop: server_stop,
        }
    }

    fn mode(&self) -> u32 {
        let w = self
            .bank
            .lock()
            .unwrap()
            .get(crate::registers::Table::Holding, 40151, 2);
        (u32::from(w[0]) << 16) | u32::from(w[1])
    }

    fn releases(&self, reason: &str) -> u64 {
        self.shared
            .metrics
            .device_releases
            .with_label_values(&["BAT", reason])
            .get()
    }

    fn plan(&self, kw: f64) {
        self.plan_tx
            .send(BTreeMap::from([(
                "BAT".to_string(),
                Command::BatteryPower(kw),
            )]))
            .unwrap();
    }

    /// Every power setpoint written, kW in ped's convention (the SMA map
    /// counts discharge positive, in W).
    fn power_writes(&self) -> Vec<f64> {
        self.bank
            .lock()
            .unwrap()
            .take_writes()
            .into_iter()
            .filter(|(addr, words)| *addr == 40149 && words.len() == 2)
            .map(|(_, w)| -f64::from(((u32::from(w[0]) << 16) | u32::from(w[1])) as i32) / 1000.0)
            .collect()
    }

    async fn stop(self) {
        self.stop_tx.send(true).unwrap();
        self.task.await.unwrap();
    }
}

/// Plan loss: the endpoint takes control on a plan, releases the battery to
/// its own mode when no fresh plan arrives for `plan_loss_steps`, and takes
/// control again on the next plan. Real sockets, a vendor battery map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_loss_releases_and_a_fresh_plan_resumes() {
    let rig = Rig::start(|_| {}).await;
    rig.plan(2.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rig.mode(),
        802,
        "a plan takes the battery into remote control"
    );
    // No new plan: after one step (1 s real) the battery is released.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(rig.mode(), 803, "plan loss must release the battery");
    assert_eq!(rig.releases("plan_loss"), 1);
    rig.plan(1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.mode(), 802, "a fresh plan resumes control");
    let bank = rig.bank.clone();
    rig.stop().await;
    let w = bank
        .lock()
        .unwrap()
        .get(crate::registers::Table::Holding, 40151, 2);
    assert_eq!(
        (u32::from(w[0]) << 16) | u32::from(w[1]),
        803,
        "released on stop"
    );
}

/// A configured minimum above the charge rating (a site edited after
/// `check`, or a rating lowered): the range is empty, so the battery is
/// released and no power setpoint is ever written (a range forced open to
/// the minimum would write a discharge as +8 kW of charge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_setpoint_range_releases_and_never_writes_a_setpoint() {
    let rig = Rig::start(|b| b.setpoint_min_kw = Some(8.0)).await;
    rig.plan(-3.34);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let written = rig.power_writes();
    assert!(written.is_empty(), "setpoints written: {written:?}");
    assert_eq!(rig.mode(), 803, "the battery stays in its own mode");
    assert_eq!(
        rig.releases("no_safe_range"),
        1,
        "counted once per plan value"
    );
    rig.stop().await;
}

/// A device that acknowledges writes but does not take them: after
/// [`MISMATCHES_BEFORE_RELEASE`] writes in a row it is released (a failed
/// write, not a success), and control is tried again once it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setpoints_that_do_not_read_back_release_the_device_after_three_writes() {
    let rig = Rig::start(|_| {}).await;
    rig.plan(2.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.mode(), 802);
    let m = &rig.shared.metrics;
    let ok_before = m.setpoint_writes.with_label_values(&["BAT", "ok"]).get();
    // Something else takes the battery back, and it ignores ped from now on.
    rig.faults.lock().unwrap().ignore_writes = true;
    rig.bank
        .lock()
        .unwrap()
        .set(crate::registers::Table::Holding, 40151, &[0, 803]);
    // Setpoints change every poll, so each poll writes and reads back.
    for i in 0..12 {
        rig.plan(1.0 + f64::from(i) * 0.1);
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    let mismatched = m
        .setpoint_writes
        .with_label_values(&["BAT", "readback_mismatch"])
        .get();
    assert!(mismatched >= 3, "{mismatched} mismatched writes");
    assert_eq!(
        m.setpoint_writes.with_label_values(&["BAT", "ok"]).get(),
        ok_before,
        "a write that does not read back is not a success"
    );
    assert!(rig.releases("readback_mismatch") >= 1);
    // The device takes writes again: control comes back.
    rig.faults.lock().unwrap().ignore_writes = false;
    for i in 0..10 {
        rig.plan(2.0 + f64::from(i) * 0.1);
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    assert_eq!(
        rig.mode(),
        802,
        "control resumes once the device takes writes"
    );
    rig.stop().await;
}

/// A SunSpec battery whose 704 (controls) is an older, shorter revision:
/// it ends before `WSet`, and the 802 (battery) model follows at once.
/// ped's own, longer 704 would read `WSet` out of 802 and write the
/// setpoint into it; the declared length must stop both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_sunspec_model_is_read_and_written_only_within_its_declared_length() {
    use crate::modbus::server::{serve, Bank};
    use crate::registers::Table;
    let lib = Arc::new(ModelLibrary::embedded().unwrap());
    let model = |id: u16| lib.sunspec(id).unwrap().clone();
    let (m1, m704, m802) = (model(1), model(704), model(802));
    let short = m704.point("WSet").unwrap().offset - 2;
    assert!(short < m704.length);
    let mut words = vec![0x5375, 0x6E53];
    for (m, len) in [(&m1, m1.length), (&m704, short)] {
        let mut b = vec![0u16; usize::from(len) + 2];
        let n = b.len().min(usize::from(m.block_len()));
        m.fill_unimplemented(&mut b[..n]);
        b[0] = m.sunspec_id.unwrap();
        b[1] = len;
        words.extend(b);
    }
    let at802 = 40000 + words.len() as u16;
    let mut b802 = vec![0u16; usize::from(m802.block_len())];
    m802.fill_unimplemented(&mut b802);
    b802[0] = 802;
    b802[1] = m802.length;
    m802.encode_raw(&mut b802, "SoC_SF", 0).unwrap();
    m802.encode_raw(&mut b802, "SoC", 55).unwrap();
    words.extend(b802);
    words.extend([0xFFFF, 0]);
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, 40000, words.len() as u16, true);
    bank.set(Table::Holding, 40000, &words);
    let bank = Arc::new(std::sync::Mutex::new(bank));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_server_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        std::collections::HashMap::from([(1u8, bank.clone())]),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[site]
id = "short-model"
name = "short model"
latitude = 47.3
longitude = 5.0
[polling]
interval_ms = 100
[control]
writes_allowed = true
[[devices]]
id = "PV"
kind = "pv_inverter"
address = "127.0.0.1:9"
prm = "99990000000001"
kwp = 10.0
[[devices]]
id = "BAT"
kind = "battery"
address = "{addr}"
writes = ["WSetEna", "WSet"]
prm = "99990000000002"
participant = "BAT-P"
capacity_kwh = 10.0
max_charge_kw = 5.0
max_discharge_kw = 5.0
[[participants]]
id = "BAT-P"
kind = "battery"
prm = "99990000000002"
meter = "BAT"
"#
        ),
    )
    .unwrap();
    let known = lib.keys().map(str::to_string).collect();
    let site = crate::config::load(&path, &known).unwrap();
    let bat = site.config.devices[1].clone();
    let shared = Arc::new(Shared {
        site,
        clock: crate::clock::Clock::simulated(chrono::Utc::now(), 1.0),
        metrics: crate::metrics::Metrics::new("short-model").unwrap(),
        status: std::sync::Mutex::new(super::super::Status::default()),
        output_dir: dir.path().to_path_buf(),
    });
    let events = Arc::new(super::super::handoff::Handoff::new(
        shared.site.grid,
        Default::default(),
    ));
    let (plan_tx, plan_rx) = watch::channel(BTreeMap::from([(
        "BAT".to_string(),
        Command::BatteryPower(2.0),
    )]));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(
        EndpointTask {
            addr: addr.to_string(),
            devices: vec![bat],
            lib: lib.clone(),
            shared: shared.clone(),
            events: events.clone(),
            setpoints: plan_rx,
            dry_run: false,
            failing: Default::default(),
        },
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let latest = events.drain().latest;
    let readings = latest
        .iter()
        .find_map(|(d, l)| match l {
            super::super::handoff::Latest::Up(s) if d == "BAT" => Some(s.readings.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("BAT was not read: {:?}", latest.len()));
    assert_eq!(
        readings.get("setpoint_kw"),
        None,
        "WSet is past the declared 704: {readings:?}"
    );
    assert_eq!(readings.get("soc_pct"), Some(&55.0), "{readings:?}");
    let m = &shared.metrics;
    assert!(
        m.setpoint_writes
            .with_label_values(&["BAT", "refused"])
            .get()
            >= 1
    );
    assert_eq!(m.setpoint_writes.with_label_values(&["BAT", "ok"]).get(), 0);
    let written = bank.lock().unwrap().take_writes();
    assert!(
        written.iter().all(|(a, w)| a + w.len() as u16 <= at802),
        "a write landed in model 802 at {at802}: {written:?}"
    );
    drop(plan_tx);
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}

#[test]
fn bounds_combine_ratings_and_configured_limits() {
    assert_eq!(bounds(&dev("")), Some((-40.0, 50.0)));
    assert_eq!(
        bounds(&dev("setpoint_min_kw = -10.0\nsetpoint_max_kw = 80.0")),
        Some((-10.0, 50.0))
    );
    // A minimum above the charge rating (or a maximum below the discharge
    // rating): nothing is safe, rather than a range forced open past the
    // rating with the sign of the command inverted.
    assert_eq!(bounds(&dev("setpoint_min_kw = 80.0")), None);
    assert_eq!(bounds(&dev("setpoint_max_kw = -60.0")), None);
    assert_eq!(bounds(&dev("setpoint_min_kw = nan")), None);
}

#[test]
fn backoff_doubles_per_failure_and_is_capped() {
    let mut d = DevState::new(dev(""), Duration::from_millis(100), Instant::now());
    d.failures = 1;
    let max = Duration::from_secs(1);
    assert_eq!(d.backoff(max), Duration::from_millis(200));
    d.failures = 2;
    assert_eq!(d.backoff(max), Duration::from_millis(400));
    d.failures = 40;
    assert_eq!(d.backoff(max), max);
    assert_eq!(d.refresh(), Duration::from_secs(5));
}

/// Settings that once panicked the endpoint task: a revert timer too
/// long for a `Duration`, an interval whose backoff overflows one.
#[test]
fn extreme_settings_make_durations_not_panics() {
    let d = DevState::new(
        dev("revert_timeout_s = 1e20"),
        Duration::from_millis(100),
        Instant::now(),
    );
    assert_eq!(d.refresh(), DEFAULT_REVERT / 3);
    let d = DevState::new(
        dev("revert_timeout_s = 0.0"),
        Duration::from_millis(100),
        Instant::now(),
    );
    assert_eq!(d.refresh(), DEFAULT_REVERT / 3);
    let mut d = DevState::new(dev(""), Duration::from_millis(u64::MAX), Instant::now());
    d.failures = 20;
    assert_eq!(
        d.backoff(Duration::from_secs(1)),
        Duration::from_millis(u64::MAX)
    );
    let now = Instant::now();
    assert!(later(now, Duration::MAX) > now);
    assert_eq!(
        later(now, Duration::from_secs(1)),
        now + Duration::from_secs(1)
    );
}
