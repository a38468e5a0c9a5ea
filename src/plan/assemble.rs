//! From raw decisions (an LP's, a shifted plan's or the rules') to a
//! published [`Plan`]: solver noise rounded away, SoC, stores, allocation,
//! import, export and curtailment recomputed so the plan's physics hold
//! exactly, soft violations reported and the objective filled in.

use super::check::TOL_ABS;
use super::{
    at, objective, soc_floor, Decisions, DeviceParticipant, DeviceRef, Plan, PlanInput, PlanStatus,
    SoftViolation,
};

/// Rounds away solver noise (clarabel returns values a hair outside their
/// bounds), then walks the horizon forward repairing what rounding broke, so
/// the published plan satisfies its physics exactly: SoC and store from the
/// dynamics, export from the balance.
pub(super) fn assemble(input: &PlanInput, status: PlanStatus, mut d: Decisions) -> Plan {
    let n = input.pv_kw.len();
    let h = input.step_hours;
    let tidy = |x: f64, hi: f64| {
        let x = if x.is_finite() {
            (x * 1e7).round() / 1e7
        } else {
            0.0
        };
        x.clamp(0.0, hi.max(0.0))
    };

    let mut battery_kw = Vec::with_capacity(input.batteries.len());
    let mut battery_soc = Vec::with_capacity(input.batteries.len());
    for (k, b) in input.batteries.iter().enumerate() {
        let floor = soc_floor(b);
        let mut soc = b.soc_kwh;
        let mut net_row = Vec::with_capacity(n);
        let mut soc_row = Vec::with_capacity(n);
        for t in 0..n {
            let c = tidy(d.charge[k][t], b.max_charge_kw);
            let dis = tidy(d.discharge[k][t], b.max_discharge_kw);
            // Netting simultaneous charge and discharge: the battery does one.
            let mut net = c - dis;
            if net > 0.0 {
                net = net.min((b.capacity_kwh - soc).max(0.0) / (b.charge_eff * h));
                soc += b.charge_eff * net * h;
            } else {
                let most = (soc - floor).max(0.0) * b.discharge_eff / h;
                net = -(-net).min(most);
                soc += net * h / b.discharge_eff;
            }
            soc = soc.min(b.capacity_kwh);
            d.charge[k][t] = net.max(0.0);
            d.discharge[k][t] = (-net).max(0.0);
            net_row.push(net);
            soc_row.push(soc);
        }
        battery_kw.push(net_row);
        battery_soc.push(soc_row);
    }

    let mut p2h_kw = Vec::with_capacity(input.heat.len());
    let mut served_kw = Vec::with_capacity(input.heat.len());
    let mut store_kwh = Vec::with_capacity(input.heat.len());
    for (k, u) in input.heat.iter().enumerate() {
        let keep = 1.0 - u.loss_ratio_per_hour * h;
        let mut store = u.store_kwh;
        let (mut pr, mut sr, mut st) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for t in 0..n {
            let kept = store * keep;
            let s = tidy(d.served[k][t], at(&u.heat_demand_kw, t));
            let p_room = if u.efficiency > 0.0 {
                (u.store_capacity_kwh - kept + s * h).max(0.0) / (u.efficiency * h)
            } else {
                u.p2h_max_kw
            };
            let p = tidy(d.p2h[k][t], u.p2h_limit_kw(t)).min(p_room);
            let s = s.min((kept + u.efficiency * p * h) / h);
            store = (kept + (u.efficiency * p - s) * h).clamp(0.0, u.store_capacity_kwh);
            d.p2h[k][t] = p;
            pr.push(p);
            sr.push(s);
            st.push(store);
        }
        p2h_kw.push(pr);
        served_kw.push(sr);
        store_kwh.push(st);
    }

    let mut allocation_kwh = vec![Vec::with_capacity(n); input.participants.len()];
    let mut import_kwh = Vec::with_capacity(n);
    let mut export_kwh = Vec::with_capacity(n);
    let mut curtailment_kwh = Vec::with_capacity(n);
    for t in 0..n {
        let discharge: f64 = d.discharge.iter().map(|r| r[t]).sum();
        let charge: f64 = d.charge.iter().map(|r| r[t]).sum();
        let heat: f64 = d.p2h.iter().map(|r| r[t]).sum();
        let mut a: Vec<f64> = input
            .participants
            .iter()
            .enumerate()
            .map(|(i, p)| tidy(d.alloc[i][t], at(&p.load_kw, t)))
            .collect();
        let pv = at(&input.pv_kw, t);
        let room = (pv + discharge - charge - heat).max(0.0);
        let total: f64 = a.iter().sum();
        if total > room {
            let f = if total > 0.0 { room / total } else { 0.0 };
            a.iter_mut().for_each(|x| *x *= f);
        }
        let total: f64 = a.iter().sum();
        let load: f64 = input.participants.iter().map(|p| at(&p.load_kw, t)).sum();
        for (i, x) in a.iter().enumerate() {
            allocation_kwh[i].push(x * h);
        }
        let spare = (pv + discharge - charge - heat - total).max(0.0);
        let cut = tidy(d.curtail.get(t).copied().unwrap_or(0.0), pv).min(spare);
        import_kwh.push(((load - total) * h).max(0.0));
        export_kwh.push(((spare - cut) * h).max(0.0));
        curtailment_kwh.push(cut * h);
    }
    let mut violations = Vec::new();
    for (b, socs) in input.batteries.iter().zip(&battery_soc) {
        let short: Vec<f64> = socs.iter().map(|s| b.min_soc_kwh - s).collect();
        if let Some(first) = short.iter().position(|x| *x > TOL_ABS) {
            violations.push(SoftViolation {
                name: format!("battery {} reserve", b.id),
                step: first,
                amount: short.iter().cloned().fold(0.0, f64::max),
                unit: "kWh".into(),
            });
        }
    }

    let device_allocation_kwh = input
        .device_participants
        .iter()
        .map(|d| device_consumption_kwh(input, d, &battery_kw, &p2h_kw))
        .collect();
    let mut plan = Plan {
        start: input.start,
        step_hours: h,
        status,
        objective_eur: 0.0,
        solve_seconds: 0.0,
        battery_kw,
        battery_soc_kwh: battery_soc,
        p2h_kw,
        heat_served_kw: served_kw,
        store_kwh,
        allocation_kwh,
        device_allocation_kwh,
        import_kwh,
        export_kwh,
        curtailment_kwh,
        violations,
    };
    plan.objective_eur = objective(&plan, input);
    plan
}

/// What device participant `d` consumes per step (kWh): its battery's
/// charge or its unit's P2H energy, 0 for an unknown device.
pub(super) fn device_consumption_kwh(
    input: &PlanInput,
    d: &DeviceParticipant,
    battery_kw: &[Vec<f64>],
    p2h_kw: &[Vec<f64>],
) -> Vec<f64> {
    let h = input.step_hours;
    let row = match input.device_ref(d) {
        Some(DeviceRef::Battery(k)) => battery_kw.get(k),
        Some(DeviceRef::Heat(k)) => p2h_kw.get(k),
        None => None,
    };
    match row {
        Some(r) => r.iter().map(|x| x.max(0.0) * h).collect(),
        None => vec![0.0; input.pv_kw.len()],
    }
}
