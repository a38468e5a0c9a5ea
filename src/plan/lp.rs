//! The dispatch LP: building the linear programme over the horizon (strict
//! or with soft reserves, per participant or decomposed by value class),
//! solving it on a backend and reading back the raw decisions; plus the
//! strict single solves exposed for the benchmarks and the oracle test.
//!
//! Why the model is exact, and why it is small:
//!
//! Curtailment: PV may be left unproduced (`curtail_t ≤ pv_t`), which only
//! pays when the export price is negative. Simultaneous charge and discharge
//! never pays when curtailment is possible: lowering charge by δ and
//! discharge by η_c·η_d·δ keeps every SoC, frees δ(1 − η_c η_d) ≥ 0 kWh of
//! local energy (exported if the price is ≥ 0, curtailed otherwise, never a
//! loss) and saves the cycling cost on η_c η_d δ, which is > 0; so an optimum
//! has min(charge, discharge) = 0, and `assemble` nets any residue a solver
//! leaves (test `negative_export_price_curtails_and_never_cycles`). A battery
//! that is a participant adds `−value·δ − credit·η_c η_d δ` to that change,
//! where `value + η_c η_d · credit ≤ 0` by the cap in
//! [`device_value`](super::device_value): the change still never loses, so
//! the argument stands (test `battery_participant_is_allocated_its_charge_only`).
//!
//! Device participants ([`DeviceParticipant`](super::DeviceParticipant)) add no column: their
//! allocation *is* the charge or P2H column, so they only add their value
//! to its objective coefficient, and the decomposition below (which is about
//! the ordinary participants) is unchanged by them.
//!
//! **Decomposition** (`aggregate`). The dispatch sees the participants only
//! through the value of the pooled local energy at each step,
//! `V_t(A) = max Σ_i w_it a_it  s.t. Σ_i a_it = A, 0 ≤ a_it ≤ l_it`, a
//! concave piecewise-linear function whose segments are the participants
//! sorted by value `w_it`, each as long as its load. Participants of exactly
//! equal value at a step lie on one segment, so the LP may carry one variable
//! `e_ct ∈ [0, Σ_{i∈c} l_it]` per value class `c` and step, worth `w_ct`:
//! - any per-participant solution maps to class sums `e_ct = Σ_{i∈c} a_it`
//!   that are feasible (each `a_it ≤ l_it`) with the same objective (all
//!   members are worth `w_ct`), so the class LP's optimum is ≥ the full one;
//! - any class solution splits back as `a_it = e_ct · l_it / Σ_{j∈c} l_jt`,
//!   feasible (`a_it ≤ l_it` as `e_ct ≤ Σ l_jt`) with the same objective,
//!   so the full LP's optimum is ≥ the class one.
//!
//! The optima are therefore equal, and the split (the DSO's default key
//! restricted to the tie, the same rule as `allocation::solver`'s greedy) gives an
//! optimal allocation of the full LP. The joint LP carries no month fairness
//! rows (`PlanInput` holds no month-to-date state; the month rules belong to
//! `allocation::solver::solve_allocation` on the keys' side), so the equivalence is
//! exact; test `decomposed_matches_joint_lp` checks it within 1e-6 relative
//! against [`solve_joint_lp`]. A site with a handful of retail offers has a
//! handful of classes per step instead of one variable per participant.

use std::time::{Duration, Instant};

use good_lp::{constraint, variable, Expression, ProblemVariables, Variable};

use super::assemble::assemble;
use super::backend::run_backend;
use super::value::{
    alloc_value, device_terms, dispatch_tie_break, heat_end_value, value_classes,
    CYCLING_COST_EUR_PER_KWH,
};
use super::{
    check, soc_floor, validate, Backend, Decisions, Plan, PlanError, PlanInput, PlanStatus,
};

/// Penalty (€/kWh) on each kWh a battery sits below its reserve in the relaxed LP.
const RESERVE_PENALTY_EUR_PER_KWH: f64 = 1.0;

pub(super) fn solve_lp(
    input: &PlanInput,
    budget: Duration,
    strict: bool,
) -> Result<Decisions, String> {
    solve_lp_with(input, budget, strict, Backend::default_for_build(), true)
}

/// The joint LP with one allocation variable per participant and step: the
/// oracle for the decomposed LP that [`solve`](super::solve) uses (see [`solve_lp_with`]).
/// Same repair and accounting as every plan; status `Optimal`.
pub fn solve_joint_lp(
    input: &PlanInput,
    budget: Duration,
    backend: Backend,
) -> Result<Plan, PlanError> {
    solve_strict(input, budget, backend, false)
}

/// The decomposed joint LP on a chosen backend, no fallback: what [`solve`](super::solve)
/// runs at rung 0, exposed for the benchmarks and backend comparisons.
pub fn solve_decomposed(
    input: &PlanInput,
    budget: Duration,
    backend: Backend,
) -> Result<Plan, PlanError> {
    solve_strict(input, budget, backend, true)
}

/// One strict solve on `backend`, grouped by value class or not, checked.
fn solve_strict(
    input: &PlanInput,
    budget: Duration,
    backend: Backend,
    grouped: bool,
) -> Result<Plan, PlanError> {
    validate(input)?;
    let began = Instant::now();
    let d = solve_lp_with(input, budget, true, backend, grouped).map_err(PlanError::Solver)?;
    let mut plan = assemble(input, PlanStatus::Optimal, d);
    plan.solve_seconds = began.elapsed().as_secs_f64();
    check(&plan, input)?;
    Ok(plan)
}

/// Allocation variables of the LP.
enum AllocVars {
    /// `[participant][step]`: the full joint LP (the oracle).
    Each(Vec<Vec<Variable>>),
    /// `[step] → [(variable, members)]`: one per value class and step.
    Classes(Vec<Vec<(Variable, Vec<usize>)>>),
}

/// The LP. `strict`: SoC ≥ reserve at every step (infeasible when a battery
/// starts below its reserve and cannot climb back in one step); otherwise
/// the reserve is soft, priced at [`RESERVE_PENALTY_EUR_PER_KWH`].
pub(super) fn solve_lp_with(
    input: &PlanInput,
    budget: Duration,
    strict: bool,
    backend: Backend,
    aggregate: bool,
) -> Result<Decisions, String> {
    let n = input.pv_kw.len();
    let h = input.step_hours;
    let nb = input.batteries.len();
    let np = input.participants.len();
    let mut vars = ProblemVariables::new();
    let mut obj = Expression::with_capacity(np * n + 4 * (nb + input.heat.len()) * n + n);
    let mut constraints = Vec::with_capacity(n * (2 + nb + input.heat.len()));

    // Allocation worth (value − export price it displaces) per kWh.
    let alloc = if aggregate {
        let classes = value_classes(input);
        AllocVars::Classes(
            classes
                .into_iter()
                .enumerate()
                .map(|(t, cs)| {
                    let price = input.export_price_eur_per_kwh[t];
                    cs.into_iter()
                        .filter_map(|(w, members)| {
                            let cap: f64 = members
                                .iter()
                                .map(|&i| input.participants[i].load_kw[t])
                                .sum();
                            // A class worth no more than the export it displaces is
                            // left out: its variable has a cost ≤ 0 and sits only in a
                            // ≤ row, so 0 is optimal for it (same optimum, fewer columns).
                            if cap <= 0.0 || w - price <= 0.0 {
                                return None;
                            }
                            let v = vars.add(variable().min(0.0).max(cap));
                            obj.add_mul((w - price) * h, v);
                            Some((v, members))
                        })
                        .collect()
                })
                .collect(),
        )
    } else {
        AllocVars::Each(
            input
                .participants
                .iter()
                .map(|p| {
                    p.load_kw
                        .iter()
                        .enumerate()
                        .map(|(t, &l)| {
                            let w = alloc_value(input, p, t) - input.export_price_eur_per_kwh[t];
                            let v = vars.add(variable().min(0.0).max(l));
                            obj.add_mul(w * h, v);
                            v
                        })
                        .collect()
                })
                .collect(),
        )
    };

    let dev = device_terms(input);
    let mut charge = Vec::with_capacity(nb);
    let mut discharge = Vec::with_capacity(nb);
    for (k, b) in input.batteries.iter().enumerate() {
        let c: Vec<Variable> = (0..n)
            .map(|_| vars.add(variable().min(0.0).max(b.max_charge_kw)))
            .collect();
        let d: Vec<Variable> = (0..n)
            .map(|_| vars.add(variable().min(0.0).max(b.max_discharge_kw)))
            .collect();
        let floor = if strict { b.min_soc_kwh } else { soc_floor(b) };
        let soc: Vec<Variable> = (0..n)
            .map(|_| vars.add(variable().min(floor).max(b.capacity_kwh)))
            .collect();
        if !strict && soc_floor(b) < b.min_soc_kwh {
            for &x in &soc {
                // short ≥ reserve − soc
                let short = vars.add(variable().min(0.0));
                obj.add_mul(-RESERVE_PENALTY_EUR_PER_KWH, short);
                let mut e = Expression::with_capacity(2);
                e.add_mul(1.0, short);
                e.add_mul(1.0, x);
                constraints.push(constraint::geq(e, b.min_soc_kwh));
            }
        }
        for t in 0..n {
            // soc_t − soc_{t−1} − (η_c c − d/η_d) h = 0
            let mut e = Expression::with_capacity(4);
            e.add_mul(1.0, soc[t]);
            e.add_mul(-b.charge_eff * h, c[t]);
            e.add_mul(h / b.discharge_eff, d[t]);
            let rhs = if t == 0 {
                b.soc_kwh
            } else {
                e.add_mul(-1.0, soc[t - 1]);
                0.0
            };
            constraints.push(constraint::eq(e, rhs));
            obj.add_mul(-CYCLING_COST_EUR_PER_KWH * h, d[t]);
            let tie = dispatch_tie_break(n, t, k) * h;
            obj.add_mul(tie, c[t]);
            obj.add_mul(tie, d[t]);
            if dev.charge[k][t] != 0.0 {
                obj.add_mul(dev.charge[k][t] * h, c[t]);
            }
        }
        obj.add_mul(b.end_value_eur_per_kwh, soc[n - 1]);
        charge.push(c);
        discharge.push(d);
    }

    let mut p2h = Vec::with_capacity(input.heat.len());
    let mut served = Vec::with_capacity(input.heat.len());
    for (k, u) in input.heat.iter().enumerate() {
        let keep = 1.0 - u.loss_ratio_per_hour * h;
        let p: Vec<Variable> = (0..n)
            .map(|t| vars.add(variable().min(0.0).max(u.p2h_limit_kw(t))))
            .collect();
        let s: Vec<Variable> = u
            .heat_demand_kw
            .iter()
            .map(|&dem| vars.add(variable().min(0.0).max(dem)))
            .collect();
        let store: Vec<Variable> = (0..n)
            .map(|_| vars.add(variable().min(0.0).max(u.store_capacity_kwh)))
            .collect();
        for t in 0..n {
            // store_t − keep·store_{t−1} − (eff·p − s) h = 0
            let mut e = Expression::with_capacity(4);
            e.add_mul(1.0, store[t]);
            e.add_mul(-u.efficiency * h, p[t]);
            e.add_mul(h, s[t]);
            let rhs = if t == 0 {
                keep * u.store_kwh
            } else {
                e.add_mul(-keep, store[t - 1]);
                0.0
            };
            constraints.push(constraint::eq(e, rhs));
            obj.add_mul(u.heat_price_eur_per_kwh * h, s[t]);
            obj.add_mul(dispatch_tie_break(n, t, nb + k) * h, p[t]);
            if dev.p2h[k][t] != 0.0 {
                obj.add_mul(dev.p2h[k][t] * h, p[t]);
            }
        }
        obj.add_mul(heat_end_value(u), store[n - 1]);
        p2h.push(p);
        served.push(s);
    }

    // Local use + curtailment ≤ local production; the difference is exported.
    let mut curtail = Vec::with_capacity(n);
    for t in 0..n {
        let mut e = Expression::with_capacity(np + 2 * nb + input.heat.len() + 1);
        // Curtailment only pays at a negative export price; otherwise its
        // column would cost ≥ 0 in a ≤ row, so it is fixed at 0 (`None`).
        let price_h = input.export_price_eur_per_kwh[t] * h;
        let cut = (price_h < 0.0).then(|| vars.add(variable().min(0.0).max(input.pv_kw[t])));
        if let Some(cut) = cut {
            e.add_mul(1.0, cut);
            obj.add_mul(-price_h, cut);
        }
        curtail.push(cut);
        match &alloc {
            AllocVars::Each(a) => a.iter().for_each(|row| e.add_mul(1.0, row[t])),
            AllocVars::Classes(c) => c[t].iter().for_each(|(v, _)| e.add_mul(1.0, *v)),
        }
        for b in 0..nb {
            e.add_mul(1.0, charge[b][t]);
            e.add_mul(-1.0, discharge[b][t]);
        }
        for p in &p2h {
            e.add_mul(1.0, p[t]);
        }
        // export_t = pv_t − e  ⇒  its value is price·h·(pv_t − e); the pv part
        // is constant (the allocation's share is in its weight above).
        for b in 0..nb {
            obj.add_mul(-price_h, charge[b][t]);
            obj.add_mul(price_h, discharge[b][t]);
        }
        for p in &p2h {
            obj.add_mul(-price_h, p[t]);
        }
        constraints.push(constraint::leq(e, input.pv_kw[t]));
    }

    // The discharge credit, on at most the step's uncovered load (see
    // `credit_cap_kw`): z_t ≤ Σ discharge of the participant batteries.
    if dev.discharge.iter().any(|x| *x != 0.0) {
        for t in 0..n {
            let z = vars.add(variable().min(0.0).max(dev.credit_cap_kw[t]));
            let mut e = Expression::with_capacity(nb + 1);
            e.add_mul(1.0, z);
            let mut credit = 0.0;
            for (k, d) in discharge.iter().enumerate() {
                if dev.discharge[k] != 0.0 {
                    e.add_mul(-1.0, d[t]);
                    credit = dev.discharge[k];
                }
            }
            obj.add_mul(credit * h, z);
            constraints.push(constraint::leq(e, 0.0));
        }
    }

    let val = run_backend(vars, obj, constraints, budget, backend)?;
    let get = |v: &Variable| val.get(v).copied().unwrap_or(0.0);
    let read = |vs: &Vec<Vec<Variable>>| -> Vec<Vec<f64>> {
        vs.iter().map(|row| row.iter().map(get).collect()).collect()
    };
    let alloc = match &alloc {
        AllocVars::Each(a) => read(a),
        AllocVars::Classes(classes) => {
            let mut a = vec![vec![0.0; n]; np];
            for (t, cs) in classes.iter().enumerate() {
                for (v, members) in cs {
                    let e = get(v).max(0.0);
                    let cap: f64 = members
                        .iter()
                        .map(|&i| input.participants[i].load_kw[t])
                        .sum();
                    let f = if cap > 0.0 { (e / cap).min(1.0) } else { 0.0 };
                    for &i in members {
                        a[i][t] = input.participants[i].load_kw[t] * f;
                    }
                }
            }
            a
        }
    };
    Ok(Decisions {
        charge: read(&charge),
        discharge: read(&discharge),
        p2h: read(&p2h),
        served: read(&served),
        alloc,
        curtail: curtail
            .iter()
            .map(|c| c.as_ref().map_or(0.0, get))
            .collect(),
    })
}
