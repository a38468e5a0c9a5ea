use super::*;
use crate::http::Backend;
use std::collections::BTreeSet;

/// The demo site on a clock slowed almost to a stop, so "now" is fixed.
pub(super) fn shared() -> Shared {
    let lib = ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("site-configs/fontaine-douche.toml");
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
fn a_device_nobody_polls_any_more_is_down_everywhere_and_ready_says_why() {
    let s = shared();
    let now = Instant::now();
    let minute_ago = now
        .checked_sub(std::time::Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the monotonic clock starts less than a minute ago"));
    let (fresh, stuck) = {
        let mut st = s.status();
        st.polled_once = true;
        st.plan = Some(plan_at(&s, chrono::Duration::zero()));
        let mut ids = st.devices.keys().cloned();
        let (Some(fresh), Some(stuck)) = (ids.next(), ids.next()) else {
            panic!("the demo site has devices");
        };
        for (id, at) in [(&fresh, now), (&stuck, minute_ago)] {
            let d = st.devices.get_mut(id).unwrap_or_else(|| panic!("{id}"));
            d.up = true;
            d.polled_ok = Some(at);
            d.stale_after = stale_after(1_000, 1_000);
            s.metrics.device_up.with_label_values(&[id, &d.kind]).set(1);
        }
        (fresh, stuck)
    };
    let err = s.ready().unwrap_err();
    assert!(err.contains(&format!("no poll of {stuck} (60 s)")), "{err}");
    assert!(!err.contains(&fresh), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&s.status_json()).unwrap_or_else(|e| panic!("{e}"));
    let dev = |id: &str| {
        v["devices"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {v}"))
    };
    assert_eq!(dev(&stuck)["up"], false);
    assert_eq!(dev(&stuck)["last_error"], "stale: no poll for 60 s");
    assert_eq!(dev(&fresh)["up"], true);
    assert_eq!(v["devices_up"], 1);
    let text = s.metrics();
    let up = |id: &str| {
        let label = format!("device=\"{id}\"");
        text.lines()
            .find(|l| l.starts_with("ped_device_up{") && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(up(&stuck), Some(0.0));
    assert_eq!(up(&fresh), Some(1.0));
    // Reported down by its poller (a failure), a device is down, not stale:
    // /ready is not about ordinary device faults.
    s.status()
        .devices
        .get_mut(&stuck)
        .unwrap_or_else(|| panic!())
        .up = false;
    assert_eq!(s.ready(), Ok(()));
}

#[test]
fn stale_after_is_a_few_polls_never_under_ten_seconds_and_never_overflows() {
    use std::time::Duration;
    assert_eq!(stale_after(1_000, 1_000), Duration::from_secs(10));
    assert_eq!(stale_after(5_000, 2_000), Duration::from_secs(29));
    assert_eq!(
        stale_after(u64::MAX, u64::MAX),
        Duration::from_millis(u64::MAX)
    );
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
            remainder_kwh: BTreeMap::new(),
            behind_pro_rata_kwh: BTreeMap::new(),
            pro_rata_kwh: BTreeMap::new(),
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
