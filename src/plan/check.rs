//! The plan check every published plan passes: shapes, finiteness, battery
//! and store dynamics and bounds, allocation within load and local
//! production, and the energy balance of every step, within a tolerance
//! looser than the solver's.

use super::assemble::device_consumption_kwh;
use super::{soc_floor, validate, Plan, PlanError, PlanInput};

/// Tolerance of [`check`]: absolute kWh plus a part of the magnitude, looser
/// than the solver's own feasibility tolerance (1e-9).
pub(super) const TOL_ABS: f64 = 1e-6;
const TOL_REL: f64 = 1e-7;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOL_ABS + TOL_REL * a.abs().max(b.abs())
}

fn fail(step: usize, what: String) -> PlanError {
    PlanError::Check { step, what }
}

/// The plan's per-unit rows of one value a step (batteries, heat units,
/// stores, participants and devices).
fn step_rows(plan: &Plan) -> impl Iterator<Item = &Vec<f64>> {
    plan.battery_kw
        .iter()
        .chain(&plan.battery_soc_kwh)
        .chain(&plan.p2h_kw)
        .chain(&plan.heat_served_kw)
        .chain(&plan.store_kwh)
        .chain(&plan.allocation_kwh)
        .chain(&plan.device_allocation_kwh)
}

/// Checks a plan against its input: shapes, energy balance per step, SoC and
/// store dynamics and bounds, allocation ≤ load and ≤ local production.
pub fn check(plan: &Plan, input: &PlanInput) -> Result<(), PlanError> {
    validate(input)?;
    let n = input.pv_kw.len();
    let h = input.step_hours;
    let shape_ok = plan.battery_kw.len() == input.batteries.len()
        && plan.battery_soc_kwh.len() == input.batteries.len()
        && plan.p2h_kw.len() == input.heat.len()
        && plan.heat_served_kw.len() == input.heat.len()
        && plan.store_kwh.len() == input.heat.len()
        && plan.allocation_kwh.len() == input.participants.len()
        && plan.device_allocation_kwh.len() == input.device_participants.len()
        && plan.import_kwh.len() == n
        && plan.export_kwh.len() == n
        && step_rows(plan).all(|r| r.len() == n);
    if !shape_ok {
        return Err(fail(0, "plan and input shapes differ".into()));
    }
    let all_finite = step_rows(plan)
        .flatten()
        .chain(&plan.import_kwh)
        .chain(&plan.export_kwh)
        .all(|x| x.is_finite());
    if !all_finite {
        return Err(fail(0, "a value is not finite".into()));
    }

    for (k, b) in input.batteries.iter().enumerate() {
        let mut soc = b.soc_kwh;
        for t in 0..n {
            let net = plan.battery_kw[k][t];
            if net > b.max_charge_kw + TOL_ABS || -net > b.max_discharge_kw + TOL_ABS {
                return Err(fail(
                    t,
                    format!("battery {} power {net} kW beyond its limits", b.id),
                ));
            }
            soc += if net > 0.0 {
                b.charge_eff * net * h
            } else {
                net * h / b.discharge_eff
            };
            let got = plan.battery_soc_kwh[k][t];
            if !close(got, soc) {
                return Err(fail(
                    t,
                    format!("battery {} SoC {got} kWh, dynamics give {soc}", b.id),
                ));
            }
            if got < soc_floor(b) - TOL_ABS || got > b.capacity_kwh + TOL_ABS {
                return Err(fail(
                    t,
                    format!("battery {} SoC {got} kWh out of bounds", b.id),
                ));
            }
            soc = got;
        }
    }
    for (k, u) in input.heat.iter().enumerate() {
        let keep = 1.0 - u.loss_ratio_per_hour * h;
        let mut store = u.store_kwh;
        for t in 0..n {
            let p = plan.p2h_kw[k][t];
            let s = plan.heat_served_kw[k][t];
            if p < -TOL_ABS || p > u.p2h_max_kw + TOL_ABS {
                return Err(fail(
                    t,
                    format!("heat unit {} P2H {p} kW beyond its limit", u.id),
                ));
            }
            if let Some(cap) = u.max_heat_kw.get(t) {
                if u.efficiency * p > cap + TOL_ABS {
                    return Err(fail(
                        t,
                        format!(
                            "heat unit {} P2H makes {} kW of heat, above its supply-temperature cap {cap} kW",
                            u.id,
                            u.efficiency * p
                        ),
                    ));
                }
            }
            if s < -TOL_ABS || s > u.heat_demand_kw[t] + TOL_ABS {
                return Err(fail(
                    t,
                    format!("heat unit {} serves {s} kW beyond demand", u.id),
                ));
            }
            store = store * keep + (u.efficiency * p - s) * h;
            let got = plan.store_kwh[k][t];
            if !close(got, store) {
                return Err(fail(
                    t,
                    format!("heat unit {} store {got} kWh, dynamics give {store}", u.id),
                ));
            }
            if got < -TOL_ABS || got > u.store_capacity_kwh + TOL_ABS {
                return Err(fail(
                    t,
                    format!("heat unit {} store {got} kWh out of bounds", u.id),
                ));
            }
            store = got;
        }
    }
    let device_use: Vec<Vec<f64>> = input
        .device_participants
        .iter()
        .map(|d| device_consumption_kwh(input, d, &plan.battery_kw, &plan.p2h_kw))
        .collect();
    for t in 0..n {
        let mut alloc = 0.0;
        let mut load = 0.0;
        for (i, p) in input.participants.iter().enumerate() {
            let a = plan.allocation_kwh[i][t];
            let l = p.load_kw[t] * h;
            if a < -TOL_ABS || a > l + TOL_ABS + TOL_REL * l {
                return Err(fail(
                    t,
                    format!("participant {} allocated {a} kWh for a load of {l}", p.id),
                ));
            }
            alloc += a;
            load += l;
        }
        // A device participant takes all it consumes from the pool: its
        // allocation is its consumption, and counts against production.
        for (j, d) in input.device_participants.iter().enumerate() {
            let a = plan.device_allocation_kwh[j][t];
            let used = device_use[j][t];
            if a < -TOL_ABS || a > used + TOL_ABS + TOL_REL * used {
                return Err(fail(
                    t,
                    format!(
                        "device participant {} allocated {a} kWh for a consumption of {used}",
                        d.id
                    ),
                ));
            }
            if !close(a, used) {
                return Err(fail(
                    t,
                    format!("device participant {} allocated {a} kWh but takes {used} kWh from the pool", d.id),
                ));
            }
            alloc += a;
        }
        let discharge: f64 = plan.battery_kw.iter().map(|r| (-r[t]).max(0.0) * h).sum();
        let charge: f64 = plan.battery_kw.iter().map(|r| r[t].max(0.0) * h).sum();
        let heat: f64 = plan.p2h_kw.iter().map(|r| r[t] * h).sum();
        // Charge and P2H of devices that are participants are in `alloc`.
        let device_use: f64 = plan.device_allocation_kwh.iter().map(|r| r[t]).sum();
        let internal = charge + heat - device_use;
        let pv = input.pv_kw[t] * h;
        if alloc > pv + discharge + TOL_ABS + TOL_REL * (pv + discharge) {
            return Err(fail(
                t,
                format!(
                    "allocated {alloc} kWh > local production {}",
                    pv + discharge
                ),
            ));
        }
        let export = plan.export_kwh[t];
        let cut = plan.curtailment_kwh.get(t).copied().unwrap_or(0.0);
        if cut < -TOL_ABS || cut > pv + TOL_ABS {
            return Err(fail(
                t,
                format!("curtailment {cut} kWh outside 0..=PV {pv}"),
            ));
        }
        if export < -TOL_ABS || !close(alloc + internal + export + cut, pv + discharge) {
            return Err(fail(
                t,
                format!(
                    "local balance: allocation {alloc} + charge and P2H of devices that are no participant {internal} + export {export} + curtailment {cut} ≠ PV {pv} + discharge {discharge}"
                ),
            ));
        }
        let alloc = alloc - device_use;
        if !close(plan.import_kwh[t], load - alloc) {
            return Err(fail(
                t,
                format!(
                    "import {} kWh ≠ load {load} − allocation {alloc}",
                    plan.import_kwh[t]
                ),
            ));
        }
    }
    Ok(())
}
