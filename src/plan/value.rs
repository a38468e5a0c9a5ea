//! What a plan is worth: the objective's coefficients (allocation value per
//! participant, device participants' terms, the battery participants'
//! discharge credit and its cap, priority and dispatch tie-breaks, cycling
//! cost, the end value of stored heat), the participants' value classes the
//! decomposed LP groups by, and [`objective`], the LP's objective evaluated
//! on any plan.

use std::collections::BTreeMap;

use super::{DeviceParticipant, DeviceRef, HeatUnitModel, ParticipantForecast, Plan, PlanInput};

/// Small cost on discharged energy so the battery never cycles for nothing.
pub const CYCLING_COST_EUR_PER_KWH: f64 = 0.005;
/// Tie-break weight of priorities (€/kWh), far below any real price.
const PRIORITY_WEIGHT_EUR_PER_KWH: f64 = 1e-4;
/// Largest dispatch tie-break (€/kWh), see [`dispatch_tie_break`].
pub const DISPATCH_TIE_EUR_PER_KWH: f64 = 1e-4;
// The tie-break on charge and discharge together must stay below the cycling
// cost, or the proof that an optimum never charges and discharges at once
// (see `solve_lp_with`) would fail.
const _: () = assert!(2.0 * DISPATCH_TIE_EUR_PER_KWH < 0.5 * CYCLING_COST_EUR_PER_KWH);

pub(super) fn priority_bonus(priority: u8) -> f64 {
    PRIORITY_WEIGHT_EUR_PER_KWH / (1.0 + f64::from(priority))
}

/// Tie-break (€/kWh) on the dispatch column of device `device` (batteries
/// first, then heat units, by index) at step `t` of `n`: a bonus that falls
/// with time and with the device's rank, up to [`DISPATCH_TIE_EUR_PER_KWH`]:
/// `T · e^(−2t/n) / √p_d`, with `p_d` the device's prime (2, 3, 5, …).
///
/// Why: a plan's optimum is often degenerate (a flat surplus that a battery
/// may take at any of its steps, two identical batteries). Clarabel, an
/// interior-point method, then returns the centre of the optimal face (the
/// charge spread thinly over every step), while a simplex (HiGHS, microlp)
/// returns one of its vertices, and which vertex depends on the pivoting.
/// A bonus strictly decreasing in time and distinct per device makes the
/// optimum a single point in such cases: charge, discharge and heat as early
/// as the economics allow, the first device first. The shape matters: with a
/// bonus linear in time, or device weights in rational ratio, moving energy
/// one step earlier on one device and one step later on another (or
/// elsewhere on the same one) can be worth exactly 0 again, and the optimum
/// stays a face. A strictly convex decay and weights `1/√p` (linearly
/// independent over the rationals) leave no such exact exchange. So every backend gives
/// the same schedule up to its tolerance (test
/// `dispatch_is_the_same_on_every_backend`). It is far below any real price
/// difference (≤ 1e-4 €/kWh), so it only decides between plans that were
/// equally good.
pub(super) fn dispatch_tie_break(n: usize, t: usize, device: usize) -> f64 {
    let decay = (-2.0 * t as f64 / n.max(1) as f64).exp();
    DISPATCH_TIE_EUR_PER_KWH * decay / nth_prime(device).sqrt()
}

/// The `k`-th prime (0 → 2), by trial division: plans have a handful of devices.
fn nth_prime(k: usize) -> f64 {
    let mut found = 0;
    let mut c = 2u64;
    loop {
        if (2..c).take_while(|d| d * d <= c).all(|d| c % d != 0) {
            if found == k {
                return c as f64;
            }
            found += 1;
        }
        c += 1;
    }
}

/// Value (€/kWh) of participant `p`'s allocated energy at step `t`, before
/// the export price it displaces: tariff − local price + priority tie-break.
pub(super) fn alloc_value(input: &PlanInput, p: &ParticipantForecast, t: usize) -> f64 {
    p.tariff_at(t) - input.local_price_eur_per_kwh + priority_bonus(p.priority)
}

/// Value (€/kWh) of what device participant `d` takes from the pool at step
/// `t`: tariff − local price + priority tie-break, like anybody's, except that
/// a battery's is capped at −η_c·η_d·local price.
///
/// Why the cap: a battery participant also sells what it discharges at the
/// local price ([`discharge_credit`]). Charging δ and discharging η_c·η_d·δ
/// back (in one step or later) then earns `(value + η_c η_d · local)·δ` on
/// top of the arbitrage the battery would make as a plain device; with the
/// cap that term is ≤ 0, so being a participant never pays the battery to
/// cycle, and the proof in [`solve_lp_with`](super::lp::solve_lp_with) that
/// an optimum never charges and discharges at once still holds. The cap
/// binds only for a battery whose tariff exceeds (1 − η_c η_d)·local price
/// (about 10 % of it); every battery of the sample sites has tariff 0 and
/// keeps its exact value.
pub fn device_value(input: &PlanInput, d: &DeviceParticipant, t: usize) -> f64 {
    let w = d.tariff_at(t) - input.local_price_eur_per_kwh + priority_bonus(d.priority);
    match input.device_ref(d) {
        Some(DeviceRef::Battery(k)) => {
            let b = &input.batteries[k];
            w.min(-b.charge_eff * b.discharge_eff * input.local_price_eur_per_kwh)
        }
        _ => w,
    }
}

/// Local price (€/kWh) a battery participant earns on each kWh it
/// discharges into the pool: it is a producer then, and the other
/// participants' allocation of that energy is valued net of this price.
fn discharge_credit(input: &PlanInput) -> f64 {
    input.local_price_eur_per_kwh
}

/// Objective coefficients (€/kWh) the device participants add to the
/// dispatch columns: `[battery][step]` on charge, `[battery]` on discharge,
/// `[heat unit][step]` on P2H. Zero for devices that are no participant.
pub(super) struct DeviceTerms {
    pub(super) charge: Vec<Vec<f64>>,
    pub(super) discharge: Vec<f64>,
    pub(super) p2h: Vec<Vec<f64>>,
    /// `[step]`: how much discharge (kW) can earn the credit: the
    /// participants' forecast load above the PV. See [`credit_cap_kw`].
    pub(super) credit_cap_kw: Vec<f64>,
}

/// The battery participants' discharge earns the local price only on what
/// serves local demand the PV does not cover: `max(0, Σ load_t − pv_t)`.
/// Discharge beyond it, e.g. at a sunny noon, only displaces PV into export,
/// and the local price paid for it would be a transfer from the PV producer,
/// not a gain: without this bound the plan sold stored energy into export
/// at local + export price (0.16 €/kWh against the 0.09 it values stored
/// energy at), 191.8 kWh on a June noon of `tests/tracking.rs`'s site.
/// The bound is on forecasts (constants), so the LP stays an LP.
pub(super) fn credit_cap_kw(input: &PlanInput) -> Vec<f64> {
    (0..input.pv_kw.len())
        .map(|t| {
            let load: f64 = input.participants.iter().map(|p| p.load_kw[t]).sum();
            (load - input.pv_kw[t]).max(0.0)
        })
        .collect()
}

pub(super) fn device_terms(input: &PlanInput) -> DeviceTerms {
    let n = input.pv_kw.len();
    let mut terms = DeviceTerms {
        charge: vec![vec![0.0; n]; input.batteries.len()],
        discharge: vec![0.0; input.batteries.len()],
        p2h: vec![vec![0.0; n]; input.heat.len()],
        credit_cap_kw: credit_cap_kw(input),
    };
    for d in &input.device_participants {
        let row: Vec<f64> = (0..n).map(|t| device_value(input, d, t)).collect();
        match input.device_ref(d) {
            Some(DeviceRef::Battery(k)) => {
                terms.charge[k] = row;
                terms.discharge[k] = discharge_credit(input);
            }
            Some(DeviceRef::Heat(k)) => terms.p2h[k] = row,
            None => {}
        }
    }
    terms
}

/// Participants of equal allocation value at each step, in a fixed order
/// (by the value's bits, then by index): `[t] → [(value, members)]`.
pub(super) fn value_classes(input: &PlanInput) -> Vec<Vec<(f64, Vec<usize>)>> {
    (0..input.pv_kw.len())
        .map(|t| {
            let mut by: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for (i, p) in input.participants.iter().enumerate() {
                by.entry(alloc_value(input, p, t).to_bits())
                    .or_default()
                    .push(i);
            }
            by.into_iter()
                .map(|(bits, members)| (f64::from_bits(bits), members))
                .collect()
        })
        .collect()
}

/// Share of the heat price that a kWh left in the store at the end of the
/// horizon is worth: it displaces network heat later, less the standing
/// losses until then. Without it the plan empties the store towards the
/// horizon's end and defers power-to-heat past it.
pub const HEAT_END_VALUE_RATIO: f64 = 0.9;

/// What the plan gives a kWh of heat left in the store at the horizon's end
/// (also [`track`](super::track)'s value of storing unplanned surplus).
pub fn heat_end_value(u: &HeatUnitModel) -> f64 {
    u.heat_price_eur_per_kwh * HEAT_END_VALUE_RATIO
}

/// The LP's objective evaluated on a plan (constant export of PV included).
pub fn objective(plan: &Plan, input: &PlanInput) -> f64 {
    let h = input.step_hours;
    let mut v = 0.0;
    let dev = device_terms(input);
    let n = input.pv_kw.len();
    let nb = input.batteries.len();
    let mut credited = vec![0.0; n];
    let mut credit = 0.0;
    for (k, kw) in plan.battery_kw.iter().enumerate() {
        for (t, x) in kw.iter().enumerate() {
            v += dispatch_tie_break(n, t.min(n.saturating_sub(1)), k) * x.abs() * h;
            v += dev.charge.get(k).and_then(|r| r.get(t)).unwrap_or(&0.0) * x.max(0.0) * h;
            let c = dev.discharge.get(k).copied().unwrap_or(0.0);
            if c != 0.0 && t < n {
                credited[t] += (-x).max(0.0);
                credit = c;
            }
        }
    }
    for (t, d) in credited.iter().enumerate() {
        v += credit * d.min(dev.credit_cap_kw[t]) * h;
    }
    for (k, kw) in plan.p2h_kw.iter().enumerate() {
        for (t, x) in kw.iter().enumerate() {
            v += dispatch_tie_break(n, t.min(n.saturating_sub(1)), nb + k) * x * h;
            v += dev.p2h.get(k).and_then(|r| r.get(t)).unwrap_or(&0.0) * x * h;
        }
    }
    for (p, row) in input.participants.iter().zip(&plan.allocation_kwh) {
        for (t, a) in row.iter().enumerate() {
            v += alloc_value(input, p, t) * a;
        }
    }
    for (e, price) in plan.export_kwh.iter().zip(&input.export_price_eur_per_kwh) {
        v += e * price;
    }
    for (u, row) in input.heat.iter().zip(&plan.heat_served_kw) {
        v += u.heat_price_eur_per_kwh * h * row.iter().sum::<f64>();
    }
    for (u, row) in input.heat.iter().zip(&plan.store_kwh) {
        v += heat_end_value(u) * row.last().copied().unwrap_or(u.store_kwh);
    }
    for ((b, kw), soc) in input
        .batteries
        .iter()
        .zip(&plan.battery_kw)
        .zip(&plan.battery_soc_kwh)
    {
        let discharged: f64 = kw.iter().map(|x| (-x).max(0.0) * h).sum();
        v -= CYCLING_COST_EUR_PER_KWH * discharged;
        v += b.end_value_eur_per_kwh * soc.last().copied().unwrap_or(b.soc_kwh);
    }
    v
}
