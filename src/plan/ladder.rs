//! The fallback ladder that always yields a plan: the LP as stated, the
//! relaxed LP, the last valid plan shifted to this step ([`shift`]), and
//! the greedy rule-based plan ([`rule_based`]), each rung tried only when
//! the one above fails or runs out of budget.

use std::time::{Duration, Instant};

use super::assemble::assemble;
use super::lp::solve_lp;
use super::{at, check, soc_floor, validate, Decisions, Plan, PlanError, PlanInput, PlanStatus};

/// Solves within `budget` down the fallback ladder with no previous plan:
/// see [`solve_ladder`]. Only invalid input is an error.
pub fn solve(input: &PlanInput, budget: Duration) -> Result<Plan, PlanError> {
    solve_ladder(input, budget, None)
}

/// The fallback ladder, each rung tried only when the one above fails:
/// 0. the LP as stated (battery reserves hard);
/// 1. the relaxed LP (reserves soft, shortfalls reported in `violations`),
///    with what is left of the budget;
/// 2. `last`, the previous valid plan, shifted to this step ([`shift`]);
/// 3. the rule-based plan.
///
/// Every plan returned has passed [`check`](fn@check); each rung taken below 0 logs
/// why. Clarabel gets the budget as its own time limit, and a result that
/// arrives late is discarded anyway. Only invalid input is an error.
pub fn solve_ladder(
    input: &PlanInput,
    budget: Duration,
    last: Option<&Plan>,
) -> Result<Plan, PlanError> {
    let began = Instant::now();
    ladder(input, budget, last, solve_lp, || began.elapsed())
}

/// [`solve_ladder`] with the LP and the elapsed time passed in, so that an
/// overrun can be made to happen by construction rather than by a slow machine.
pub(super) fn ladder(
    input: &PlanInput,
    budget: Duration,
    last: Option<&Plan>,
    lp: impl Fn(&PlanInput, Duration, bool) -> Result<Decisions, String>,
    elapsed: impl Fn() -> Duration,
) -> Result<Plan, PlanError> {
    validate(input)?;
    let mut why = Vec::new();
    for strict in [true, false] {
        let left = budget.saturating_sub(elapsed());
        let rung = if strict { "optimal" } else { "relaxed" };
        if left.is_zero() {
            why.push(format!("{rung}: no budget left"));
            continue;
        }
        let solved = lp(input, left, strict);
        let spent = elapsed();
        match solved {
            Err(e) => why.push(format!("{rung}: {e}")),
            Ok(_) if spent > budget => why.push(format!(
                "{rung}: solver overran its budget ({:.3} s > {:.3} s)",
                spent.as_secs_f64(),
                budget.as_secs_f64()
            )),
            Ok(d) => {
                let status = if strict {
                    PlanStatus::Optimal
                } else {
                    PlanStatus::Relaxed {
                        reason: why.join("; "),
                    }
                };
                let mut plan = assemble(input, status, d);
                plan.solve_seconds = elapsed().as_secs_f64();
                match check(&plan, input) {
                    // Clarabel can report an infeasible LP as solved: a stated
                    // plan that breaks a hard limit is no optimum.
                    Ok(()) if strict && !plan.violations.is_empty() => why.push(format!(
                        "{rung}: the LP as stated is infeasible ({} below its limit)",
                        plan.violations[0].name
                    )),
                    Ok(()) => {
                        if !strict {
                            tracing::warn!(reason = %why.join("; "), violations = plan.violations.len(), "plan: relaxed LP (fallback level 1)");
                        }
                        return Ok(plan);
                    }
                    Err(e) => why.push(format!("{rung}: solution rejected: {e}")),
                }
            }
        }
    }
    let reason = why.join("; ");
    if let Some(last) = last {
        match shift(last, input, &reason) {
            Ok(mut plan) => {
                plan.solve_seconds = elapsed().as_secs_f64();
                tracing::warn!(%reason, "plan: last valid plan shifted (fallback level 2)");
                return Ok(plan);
            }
            Err(e) => tracing::warn!(error = %e, "plan: last plan cannot be shifted"),
        }
    }
    tracing::warn!(%reason, "plan: rule-based plan (fallback level 3)");
    let mut plan = rule_based(input, &reason);
    plan.solve_seconds = elapsed().as_secs_f64();
    Ok(plan)
}

/// The previous plan moved on to `input.start`: its decisions for the steps
/// still ahead, nothing beyond its horizon, then repaired against the current
/// state and forecasts like any LP output and checked. Fails when the plans'
/// steps differ, the old plan does not reach this step, or the shapes differ.
pub fn shift(last: &Plan, input: &PlanInput, reason: &str) -> Result<Plan, PlanError> {
    let n = input.pv_kw.len();
    let h = input.step_hours;
    let bad = |what: &str| PlanError::Check {
        step: 0,
        what: format!("cannot shift the last plan: {what}"),
    };
    if (last.step_hours - h).abs() > 1e-9 {
        return Err(bad("step length differs"));
    }
    let offset = (input.start - last.start).num_seconds() as f64 / (h * 3600.0);
    if offset < 0.0 || (offset - offset.round()).abs() > 1e-6 {
        return Err(bad(
            "start is not a whole number of steps after the last plan",
        ));
    }
    let k = offset.round() as usize;
    let old_n = last.export_kwh.len();
    if k >= old_n {
        return Err(bad("the last plan ends before this step"));
    }
    if last.battery_kw.len() != input.batteries.len()
        || last.p2h_kw.len() != input.heat.len()
        || last.allocation_kwh.len() != input.participants.len()
    {
        return Err(bad("devices or participants changed"));
    }
    let take = |row: &Vec<f64>, f: &dyn Fn(f64) -> f64| -> Vec<f64> {
        (0..n)
            .map(|t| row.get(k + t).copied().map_or(0.0, f))
            .collect()
    };
    let d = Decisions {
        charge: last
            .battery_kw
            .iter()
            .map(|r| take(r, &|x| x.max(0.0)))
            .collect(),
        discharge: last
            .battery_kw
            .iter()
            .map(|r| take(r, &|x| (-x).max(0.0)))
            .collect(),
        p2h: last.p2h_kw.iter().map(|r| take(r, &|x| x)).collect(),
        served: last
            .heat_served_kw
            .iter()
            .map(|r| take(r, &|x| x))
            .collect(),
        alloc: last
            .allocation_kwh
            .iter()
            .map(|r| take(r, &|x| x / h))
            .collect(),
        curtail: take(&last.curtailment_kwh, &|x| x / h),
    };
    let plan = assemble(
        input,
        PlanStatus::Shifted {
            reason: reason.to_string(),
        },
        d,
    );
    check(&plan, input)?;
    Ok(plan)
}

/// Greedy plan: surplus charges batteries then feeds P2H, deficit is covered
/// by discharging, allocation is pro rata of load; heat stores cover demand
/// whenever they hold heat.
pub fn rule_based(input: &PlanInput, reason: &str) -> Plan {
    let n = input.pv_kw.len();
    let h = input.step_hours;
    let nb = input.batteries.len();
    let nh = input.heat.len();
    let np = input.participants.len();
    let mut d = Decisions {
        charge: vec![vec![0.0; n]; nb],
        discharge: vec![vec![0.0; n]; nb],
        p2h: vec![vec![0.0; n]; nh],
        served: vec![vec![0.0; n]; nh],
        alloc: vec![vec![0.0; n]; np],
        curtail: vec![0.0; n],
    };
    let mut soc: Vec<f64> = input.batteries.iter().map(|b| b.soc_kwh).collect();
    let mut store: Vec<f64> = input.heat.iter().map(|u| u.store_kwh).collect();
    for t in 0..n {
        let pv = at(&input.pv_kw, t);
        let load: f64 = input.participants.iter().map(|p| at(&p.load_kw, t)).sum();
        let mut spare = pv - load;
        for (k, b) in input.batteries.iter().enumerate() {
            if spare > 0.0 {
                let room = (b.capacity_kwh - soc[k]).max(0.0) / (b.charge_eff * h);
                let c = spare.min(b.max_charge_kw).min(room).max(0.0);
                soc[k] += b.charge_eff * c * h;
                spare -= c;
                d.charge[k][t] = c;
            } else if spare < 0.0 {
                let most = (soc[k] - soc_floor(b)).max(0.0) * b.discharge_eff / h;
                let dis = (-spare).min(b.max_discharge_kw).min(most).max(0.0);
                soc[k] -= dis * h / b.discharge_eff;
                spare += dis;
                d.discharge[k][t] = dis;
            }
        }
        for (k, u) in input.heat.iter().enumerate() {
            let keep = 1.0 - u.loss_ratio_per_hour * h;
            let kept = store[k] * keep;
            let demand = at(&u.heat_demand_kw, t);
            let mut p = 0.0;
            if spare > 0.0 && u.efficiency > 0.0 {
                let room = (u.store_capacity_kwh - kept + demand * h).max(0.0) / (u.efficiency * h);
                p = spare.min(u.p2h_limit_kw(t)).min(room);
                spare -= p;
            }
            let s = demand.min((kept + u.efficiency * p * h) / h);
            store[k] = (kept + (u.efficiency * p - s) * h).clamp(0.0, u.store_capacity_kwh);
            d.p2h[k][t] = p;
            d.served[k][t] = s;
        }
        let produced = pv + d.discharge.iter().map(|r| r[t]).sum::<f64>();
        let used =
            d.charge.iter().map(|r| r[t]).sum::<f64>() + d.p2h.iter().map(|r| r[t]).sum::<f64>();
        let share = if load > 0.0 {
            ((produced - used).max(0.0) / load).min(1.0)
        } else {
            0.0
        };
        for (i, p) in input.participants.iter().enumerate() {
            d.alloc[i][t] = at(&p.load_kw, t) * share;
        }
        // Exporting at a negative price costs: leave that PV unproduced.
        if input
            .export_price_eur_per_kwh
            .get(t)
            .is_some_and(|x| *x < 0.0)
        {
            d.curtail[t] = pv;
        }
    }
    assemble(
        input,
        PlanStatus::RuleBased {
            reason: reason.to_string(),
        },
        d,
    )
}
