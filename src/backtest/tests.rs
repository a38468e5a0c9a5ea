//! Unit tests of the device model and the figures.

use super::scoring::percentile;
use super::site::{Battery, HeatUnit, Site};
use super::storage::{device_step, tracking_input, DeviceState};
use super::*;
use crate::allocation::Precision;
use crate::config::KeyPolicy;

fn site(batteries: Vec<Battery>) -> Site {
    Site {
        lat: 47.3,
        lon: 5.0,
        tariff: vec![],
        priority: vec![],
        static_share: vec![],
        batteries,
        heat: vec![HeatUnit {
            id: "P2H".into(),
            max_kw: 10.0,
            capacity: 20.0,
            substation: 0,
        }],
        local_price: 0.1,
        export_price: 0.06,
        import_price: 0.25,
        heat_price: 0.09,
        horizon_hours: 24,
        policy: KeyPolicy::Optimised,
        precision: Precision::default(),
        month_fairness: None,
    }
}

fn bat() -> Battery {
    Battery {
        id: "B".into(),
        capacity: 10.0,
        floor: 1.0,
        max_charge: 5.0,
        max_discharge: 5.0,
    }
}

#[test]
fn storage_charges_only_from_surplus_and_discharges_only_into_deficit() {
    let s = site(vec![bat()]);
    let mut st = DeviceState {
        soc: vec![5.0],
        store: vec![0.0],
    };
    // Surplus of 2 kW: a 5 kW charge setpoint charges 2, P2H gets nothing.
    let f = device_step(&s, &mut st, 0.5, 10.0, 8.0, &[0.0], &[5.0], &[10.0]);
    assert_eq!(f.charge[0], 2.0);
    assert_eq!(f.p2h[0], 0.0);
    assert!((st.soc[0] - (5.0 + 0.95 * 2.0 * 0.5)).abs() < 1e-12);
    // Deficit of 1 kW: discharge 1 kW, not the setpoint's 5.
    let f = device_step(&s, &mut st, 0.5, 0.0, 1.0, &[0.0], &[-5.0], &[0.0]);
    assert_eq!(f.discharge[0], 1.0);
    // Never below the floor.
    st.soc[0] = 1.2;
    let f = device_step(&s, &mut st, 0.5, 0.0, 50.0, &[0.0], &[-5.0], &[0.0]);
    assert!((st.soc[0] - 1.0).abs() < 1e-9 && f.discharge[0] < 0.5);
}

#[test]
fn heat_store_serves_half_the_demand_and_loses_heat() {
    let s = site(vec![]);
    let mut st = DeviceState {
        soc: vec![],
        store: vec![10.0],
    };
    let f = device_step(&s, &mut st, 1.0, 0.0, 0.0, &[4.0], &[], &[10.0]);
    assert_eq!(f.served[0], 2.0);
    assert_eq!(f.p2h[0], 0.0);
    assert!((st.store[0] - (10.0 * 0.995 - 2.0)).abs() < 1e-9);
    // Surplus of 30 kW: P2H limited by its power (10 kW) and the store's room.
    let f = device_step(&s, &mut st, 1.0, 30.0, 0.0, &[0.0], &[], &[50.0]);
    assert!(f.p2h[0] <= 10.0 + 1e-12);
    assert!(st.store[0] <= 20.0 + 1e-9);
}

/// The plan expected 2 kW of surplus and charges 2 kW; the sun gives 8.
/// Applied as it stands, the plan exports 6 kW into a half-empty battery;
/// tracked, the battery takes 5 (its power) and P2H the other 3.
#[test]
fn unplanned_sun_goes_to_storage_with_room_when_tracked() {
    let s = site(vec![bat()]);
    let fresh = || DeviceState {
        soc: vec![5.0],
        store: vec![0.0],
    };
    let (pv, load, h) = (10.0, 2.0, 0.5);
    let mut st = fresh();
    let f = device_step(&s, &mut st, h, pv, load, &[0.0], &[2.0], &[0.0]);
    assert_eq!((f.charge[0], f.p2h[0]), (2.0, 0.0));
    let mut st = fresh();
    let tracked = plan::track::track(
        &tracking_input(&s, &st, h, 2.0, pv - load, &[0.0], &[2.0], &[0.0]).view(),
    );
    let f = device_step(
        &s,
        &mut st,
        h,
        pv,
        load,
        &[0.0],
        &tracked.battery_kw,
        &tracked.p2h_kw,
    );
    assert_eq!(f.charge[0], 5.0);
    assert!((f.p2h[0] - 3.0).abs() < 1e-12, "{f:?}");
    let mut diag = TrackingDiagnosis::default();
    diag.add(&s, &st, h, 2.0, pv - load, &f);
    assert_eq!(diag.steps_unplanned_surplus, 1);
    assert!(diag.export_kwh.abs() < 1e-12, "{diag:?}");
}

#[test]
fn percentiles_of_sorted_samples() {
    let v = [1.0, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(percentile(&v, 0.5), 3.0);
    assert_eq!(percentile(&v, 1.0), 5.0);
    assert_eq!(percentile(&[], 0.5), 0.0);
}
