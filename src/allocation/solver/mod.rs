//! Allocation of pooled local production among participants over a horizon
//! (a day of the plan, or a month of DSO keys), with the site's fairness rules.
//!
//! The problem (all energies in kWh per settlement step):
//!
//! ```text
//! max  Σ_it (v_it − x_t + b_i) a_it − M_f Σ_i u_i − M_p Σ_i w_i
//! s.t. Σ_i a_it ≤ P_t                      (step rows: pooled production)
//!      0 ≤ a_it ≤ c_it                      (consumption caps)
//!      Σ_t a_it + u_i ≥ F_i                 (floor on the month's share)
//!      Σ_t v_it a_it + w_i ≥ R_i            (no worse off than pro rata)
//!      u, w ≥ 0
//! ```
//!
//! with `v_it` = participant tariff − local price, `x_t` the export price the
//! surplus would earn, `b_i` the priority-tier bonus (tier 1 first),
//! `F_i` the floor target and `R_i` the value of the DSO's default pro-rata
//! key over the month (both net of the month-to-date figures).
//!
//! Structure: first an exact reduction (`reduce`): a step whose production
//! covers the whole demand cannot bind, so such steps with the same prices
//! are one step, and the steps without production are one step. Without the
//! two coupling rows per participant the problem splits
//! into one fractional knapsack per step (value `v_it − x_t + b_i`, capacity
//! `P_t`, caps `c_it`), solved exactly by sorting. That greedy solution is
//! optimal for the whole problem whenever it satisfies every coupling row:
//! dropping the rows (and their slacks, which only cost) can only raise the
//! optimum, and the greedy attains the relaxed optimum with zero penalty.
//! When a coupling row binds and every participant's value is flat, the
//! optimum is read from each participant's total (`method: "totals"`, see
//! `totals`) when the steps can carry the totals that bound it.
//! Otherwise, when every participant with a pro-rata row has
//! one value at every congested step where it can receive energy (flat
//! tariffs, as in `ped keys`, or time-of-use tariffs whose off-peak hours
//! fall at night or when the PV covers the demand), the problem is a
//! max-gain flow, solved exactly by the integer network simplex of
//! [`super::flow`] (`method: "flow"`; see `flow_allocation`): both rows
//! only see the participant's total at congested steps, and its variables
//! at uncongested steps, which no shared row constrains, are maximised out
//! of its penalty term (`Private`). Otherwise (values that differ between
//! congested steps: a dynamic tariff, or off-peak hours when production is
//! short), [`solve_allocation`] first estimates the LP
//! dual (step prices π, multipliers λ on the floors and μ on the pro-rata
//! rows) by exact block coordinate descent (see `warm_start`), fixes the
//! variables whose adjusted weight `w + λ + μ v` is clearly above or below
//! its step's threshold, and solves the LP over the rest (see `sift`); when
//! that would leave more than a fifth of the variables in play it solves
//! the whole (reduced) LP at once (`method: "lp"`, not a fallback). The
//! restricted LP's λ, μ, with the step prices re-derived over *every*
//! variable, give an upper bound on the full optimum by weak duality; the
//! result is returned only when it meets that bound within 1e-8 relative
//! (or when the LP's own duals price every fixed variable correctly).
//! Otherwise the variables those prices name join the LP, and after a few
//! rounds the full LP is solved ([`lp_fallbacks`] counts it, and the
//! solution says `method: "lp"`).
//!
//! Determinism: the greedy shares a step among participants of **exactly
//! equal** value in proportion to their consumption (the DSO's default key
//! restricted to the tie), in a fixed order, so the same input gives the same
//! allocation bit for bit. LP solutions go through the same rounding. The
//! flow is integer, so it too is bit-identical on the same input; among
//! exactly tied participants it returns a vertex (one of them served first),
//! which `smooth` then spreads over the congested steps in proportion to
//! consumption, keeping every participant's and every step's total.

// [participant][step] matrices read best with both indices spelt out.
#![allow(clippy::needless_range_loop)]

use good_lp::{
    constraint, variable, Constraint, Expression, ProblemVariables, Solution, SolutionWithDual,
    SolverModel, Variable,
};
use serde::{Deserialize, Serialize};

use crate::plan::PlanError;

mod lp;
mod network;
mod smooth;
#[cfg(test)]
mod tests;
mod totals;
mod violation;

pub use lp::*;
use network::*;
use smooth::*;
use totals::*;
pub use violation::*;

fn default_tier() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_floor_penalty() -> f64 {
    1.0
}
fn default_pro_rata_penalty() -> f64 {
    10.0
}
fn default_tier_weight() -> f64 {
    1.0
}

/// Month-to-date figures of one participant, before the problem's first step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonthToDate {
    #[serde(default)]
    pub allocated_kwh: f64,
    /// Σ (tariff − local price) × allocated so far.
    #[serde(default)]
    pub value_eur: f64,
    /// The same under the DSO's default pro-rata key.
    #[serde(default)]
    pub pro_rata_value_eur: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationParticipant {
    pub id: String,
    /// Per step, kWh.
    pub consumption_kwh: Vec<f64>,
    /// Per step, €/kWh (time-of-use tariffs vary by step).
    pub tariff_eur_per_kwh: Vec<f64>,
    /// 1 is served first (e.g. social housing), then 2, …
    #[serde(default = "default_tier")]
    pub tier: u8,
    /// Share of the operation the participant subscribed to (0..1), for the floor rule.
    #[serde(default)]
    pub subscription_share: Option<f64>,
    #[serde(default)]
    pub month_to_date: MonthToDate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fairness {
    /// Floor on the month's allocated share relative to the subscription:
    /// allocated ≥ ratio × subscription_share × pooled production (capped by
    /// what the participant consumed). None: no floor.
    #[serde(default)]
    pub floor_ratio: Option<f64>,
    /// Nobody's allocation worth less than under the DSO's default pro-rata key.
    #[serde(default = "default_true")]
    pub no_worse_than_pro_rata: bool,
    /// € per kWh missing from a floor.
    #[serde(default = "default_floor_penalty")]
    pub floor_penalty_eur_per_kwh: f64,
    /// € per € missing against pro rata.
    #[serde(default = "default_pro_rata_penalty")]
    pub pro_rata_penalty_eur_per_eur: f64,
    /// Bonus per kWh per tier ahead of the last: large enough to dominate any
    /// tariff difference, so a lower tier is served first.
    #[serde(default = "default_tier_weight")]
    pub tier_weight_eur_per_kwh: f64,
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness {
            floor_ratio: None,
            no_worse_than_pro_rata: true,
            floor_penalty_eur_per_kwh: default_floor_penalty(),
            pro_rata_penalty_eur_per_eur: default_pro_rata_penalty(),
            tier_weight_eur_per_kwh: default_tier_weight(),
        }
    }
}

impl Fairness {
    /// These rules with penalties raised, where needed, so that meeting a
    /// floor or the pro-rata guarantee is always worth more than anything a
    /// priority tier or a tariff difference can earn elsewhere: the site's
    /// fairness rules are guarantees and the tiers share what is left above
    /// them. With the default penalties (1 €/kWh, 10 €/€) a tier bonus of
    /// 1 €/kWh per tier outranks a pro-rata shortfall of a participant whose
    /// kWh is worth less than 0.2 €, and tier 1 kept energy tier 2 was owed.
    /// A kWh moved from any participant j to a rule of participant i changes
    /// the score by at least `penalty_i − (b_max + 2 v_max)`, so a penalty
    /// above `b_max + 2 v_max` per kWh (per kWh of value `v` for the pro-rata
    /// row: per € above that divided by the smallest positive `v`) makes
    /// every such move pay. Values under 0.001 €/kWh are not protected this
    /// way (their penalty per € would be huge); their shortfalls are reported.
    pub fn rules_above_tiers(mut self, p: &AllocationProblem) -> Fairness {
        let tiers = p.participants.iter().map(|q| q.tier);
        let (lo, hi) = (tiers.clone().min().unwrap_or(1), tiers.max().unwrap_or(1));
        let b_max = self.tier_weight_eur_per_kwh.max(0.0) * f64::from(hi.saturating_sub(lo));
        let x_max = p
            .export_price_eur_per_kwh
            .iter()
            .fold(0.0_f64, |a, x| a.max(x.abs()));
        let mut v_max = 0.0_f64;
        let mut v_min_pos = f64::INFINITY;
        for q in &p.participants {
            for t in &q.tariff_eur_per_kwh {
                let v = t - p.local_price_eur_per_kwh;
                if v.is_finite() {
                    v_max = v_max.max(v.abs());
                    if v >= 1e-3 {
                        v_min_pos = v_min_pos.min(v);
                    }
                }
            }
        }
        let need = b_max + 2.0 * (v_max + x_max) + 0.01;
        if self.floor_ratio.is_some() {
            self.floor_penalty_eur_per_kwh = self.floor_penalty_eur_per_kwh.max(need);
        }
        if self.no_worse_than_pro_rata && v_min_pos.is_finite() {
            self.pro_rata_penalty_eur_per_eur =
                self.pro_rata_penalty_eur_per_eur.max(need / v_min_pos);
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationProblem {
    pub steps: usize,
    /// Pooled local production per step, kWh.
    pub production_kwh: Vec<f64>,
    pub participants: Vec<AllocationParticipant>,
    pub local_price_eur_per_kwh: f64,
    /// What surplus earns per step (€/kWh); empty means 0.
    #[serde(default)]
    pub export_price_eur_per_kwh: Vec<f64>,
    /// Pooled production of the month before the first step (floor rule).
    #[serde(default)]
    pub month_to_date_production_kwh: f64,
    #[serde(default)]
    pub fairness: Fairness,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationSolution {
    /// [participant][step], kWh.
    pub allocated_kwh: Vec<Vec<f64>>,
    /// Σ (tariff − local) × allocated + export price × surplus.
    pub objective_eur: f64,
    /// What the solver maximises: objective + tier bonuses − penalties.
    pub score: f64,
    pub violations: Vec<Violation>,
    /// `greedy`, `totals`, `flow`, `sifted_lp` or `lp`.
    pub method: String,
}

fn invalid(msg: String) -> PlanError {
    PlanError::Invalid(msg)
}

/// Shapes, finiteness, signs.
pub fn validate_allocation(p: &AllocationProblem) -> Result<(), PlanError> {
    let n = p.steps;
    if p.production_kwh.len() != n {
        return Err(invalid(format!(
            "production_kwh has {} steps, expected {n}",
            p.production_kwh.len()
        )));
    }
    if !p.export_price_eur_per_kwh.is_empty() && p.export_price_eur_per_kwh.len() != n {
        return Err(invalid(format!(
            "export_price_eur_per_kwh has {} steps, expected {n} (or none)",
            p.export_price_eur_per_kwh.len()
        )));
    }
    let bad = |x: &f64| !x.is_finite() || *x < 0.0;
    if let Some(t) = p.production_kwh.iter().position(bad) {
        return Err(invalid(format!(
            "production_kwh[{t}] must be finite and >= 0"
        )));
    }
    if !p.local_price_eur_per_kwh.is_finite()
        || p.export_price_eur_per_kwh.iter().any(|x| !x.is_finite())
        || !p.month_to_date_production_kwh.is_finite()
    {
        return Err(invalid(
            "prices and month-to-date figures must be finite".into(),
        ));
    }
    let f = &p.fairness;
    for (name, x) in [
        (
            "fairness.floor_penalty_eur_per_kwh",
            f.floor_penalty_eur_per_kwh,
        ),
        (
            "fairness.pro_rata_penalty_eur_per_eur",
            f.pro_rata_penalty_eur_per_eur,
        ),
        (
            "fairness.tier_weight_eur_per_kwh",
            f.tier_weight_eur_per_kwh,
        ),
    ] {
        if !x.is_finite() || x < 0.0 {
            return Err(invalid(format!("{name} = {x} must be finite and >= 0")));
        }
    }
    if let Some(r) = f.floor_ratio {
        if !r.is_finite() || r < 0.0 {
            return Err(invalid(format!("fairness.floor_ratio = {r} must be >= 0")));
        }
    }
    for q in &p.participants {
        if q.consumption_kwh.len() != n || q.tariff_eur_per_kwh.len() != n {
            return Err(invalid(format!(
                "participant {}: consumption and tariff need {n} steps",
                q.id
            )));
        }
        if let Some(t) = q.consumption_kwh.iter().position(bad) {
            return Err(invalid(format!(
                "participant {} consumption_kwh[{t}] must be finite and >= 0",
                q.id
            )));
        }
        if q.tariff_eur_per_kwh.iter().any(|x| !x.is_finite()) {
            return Err(invalid(format!(
                "participant {} tariff must be finite",
                q.id
            )));
        }
        let m = &q.month_to_date;
        if ![m.allocated_kwh, m.value_eur, m.pro_rata_value_eur]
            .iter()
            .all(|x| x.is_finite())
            || q.subscription_share
                .is_some_and(|s| !(0.0..=1.0).contains(&s))
        {
            return Err(invalid(format!(
                "participant {}: month-to-date figures must be finite and subscription_share within 0..=1",
                q.id
            )));
        }
    }
    Ok(())
}

/// Everything derived from the problem that both solvers use.
struct Model {
    n: usize,
    /// v_it: tariff − local.
    value: Vec<Vec<f64>>,
    /// v_it − x_t + b_i: what one kWh to i at t adds to the score.
    weight: Vec<Vec<f64>>,
    /// Floor target (kWh over the horizon), None when the rule is off or slack by construction.
    floor: Vec<Option<f64>>,
    /// No-worse target (€ over the horizon).
    pro_rata: Vec<Option<f64>>,
    export: Vec<f64>,
}

/// The DSO's default key: each consumer's share of the step's consumption,
/// `min(key × P, c)`.
pub fn pro_rata(p: &AllocationProblem) -> Vec<Vec<f64>> {
    let n = p.steps;
    let total: Vec<f64> = (0..n)
        .map(|t| p.participants.iter().map(|q| q.consumption_kwh[t]).sum())
        .collect();
    p.participants
        .iter()
        .map(|q| {
            (0..n)
                .map(|t| {
                    if total[t] > 0.0 {
                        q.consumption_kwh[t] * (p.production_kwh[t] / total[t]).min(1.0)
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect()
}

fn model(p: &AllocationProblem) -> Model {
    let n = p.steps;
    let export: Vec<f64> = if p.export_price_eur_per_kwh.is_empty() {
        vec![0.0; n]
    } else {
        p.export_price_eur_per_kwh.clone()
    };
    let last_tier = p.participants.iter().map(|q| q.tier).max().unwrap_or(1);
    let pr = pro_rata(p);
    let pool = p.month_to_date_production_kwh + p.production_kwh.iter().sum::<f64>();
    let f = &p.fairness;
    let mut value = Vec::with_capacity(p.participants.len());
    let mut weight = Vec::with_capacity(p.participants.len());
    let mut floor = Vec::with_capacity(p.participants.len());
    let mut pro = Vec::with_capacity(p.participants.len());
    for (i, q) in p.participants.iter().enumerate() {
        let v: Vec<f64> = q
            .tariff_eur_per_kwh
            .iter()
            .map(|t| t - p.local_price_eur_per_kwh)
            .collect();
        let bonus = f.tier_weight_eur_per_kwh * f64::from(last_tier.saturating_sub(q.tier));
        weight.push((0..n).map(|t| v[t] - export[t] + bonus).collect());
        let m = &q.month_to_date;
        floor.push(match (f.floor_ratio, q.subscription_share) {
            (Some(r), Some(s)) => {
                let consumed: f64 = q.consumption_kwh.iter().sum();
                let target = (r * s * pool).min(m.allocated_kwh + consumed) - m.allocated_kwh;
                (target > 0.0).then_some(target)
            }
            _ => None,
        });
        pro.push(if f.no_worse_than_pro_rata {
            let ahead = m.value_eur - m.pro_rata_value_eur;
            let target = (0..n).map(|t| v[t] * pr[i][t]).sum::<f64>() - ahead;
            // A target of 0 or less is met by allocating nothing only if no
            // value is negative; keep the row whenever it could bind.
            (target > 0.0 || v.iter().any(|x| *x < 0.0)).then_some(target)
        } else {
            None
        });
        value.push(v);
    }
    Model {
        n,
        value,
        weight,
        floor,
        pro_rata: pro,
        export,
    }
}

/// Exact fractional knapsack per step: by weight, descending; exact ties
/// share pro rata of consumption; index order among equals for stability.
fn greedy(p: &AllocationProblem, m: &Model) -> Vec<Vec<f64>> {
    greedy_with(p, m.n, &m.weight).0
}

/// The per-step knapsack under the given weights; also returns each step's
/// threshold (weight of the last participant served, 0 when all are served).
fn greedy_with(p: &AllocationProblem, n: usize, weight: &[Vec<f64>]) -> (Vec<Vec<f64>>, Vec<f64>) {
    let np = p.participants.len();
    let mut a = vec![vec![0.0; n]; np];
    let mut threshold = vec![0.0; n];
    let mut order: Vec<usize> = Vec::with_capacity(np);
    for t in 0..n {
        order.clear();
        order.extend(
            (0..np).filter(|&i| weight[i][t] > 0.0 && p.participants[i].consumption_kwh[t] > 0.0),
        );
        order.sort_by(|&x, &y| weight[y][t].total_cmp(&weight[x][t]).then(x.cmp(&y)));
        let mut left = p.production_kwh[t];
        let mut k = 0;
        while k < order.len() && left > 0.0 {
            let w = weight[order[k]][t];
            let mut end = k;
            while end < order.len() && weight[order[end]][t] == w {
                end += 1;
            }
            let group = &order[k..end];
            let want: f64 = group
                .iter()
                .map(|&i| p.participants[i].consumption_kwh[t])
                .sum();
            let share = (left / want).min(1.0);
            for &i in group {
                a[i][t] = p.participants[i].consumption_kwh[t] * share;
            }
            if share < 1.0 || left <= want {
                threshold[t] = w;
            }
            left = (left - want).max(0.0);
            k = end;
        }
    }
    (a, threshold)
}

/// Shortfalls of the coupling rows: (floor kWh, pro-rata €) per participant.
fn shortfalls(m: &Model, a: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let fl = a
        .iter()
        .zip(&m.floor)
        .map(|(row, f)| f.map_or(0.0, |f| (f - row.iter().sum::<f64>()).max(0.0)))
        .collect();
    let pr = a
        .iter()
        .zip(&m.pro_rata)
        .zip(&m.value)
        .map(|((row, r), v)| {
            r.map_or(0.0, |r| {
                (r - row.iter().zip(v).map(|(x, y)| x * y).sum::<f64>()).max(0.0)
            })
        })
        .collect();
    (fl, pr)
}

const ROW_TOL: f64 = 1e-9;
/// Relative width of the band around a step's threshold that starts free.
const BAND: f64 = 1e-4;

fn finish(
    p: &AllocationProblem,
    m: &Model,
    mut a: Vec<Vec<f64>>,
    method: &str,
) -> AllocationSolution {
    // Solver output: clamp to the caps, snap to 1e-9 kWh, scale a step down if
    // rounding pushed it past production.
    for t in 0..m.n {
        let mut sum = 0.0;
        for (i, q) in p.participants.iter().enumerate() {
            let x = (a[i][t] * 1e9).round() / 1e9;
            a[i][t] = x.clamp(0.0, q.consumption_kwh[t]);
            sum += a[i][t];
        }
        if sum > p.production_kwh[t] && sum > 0.0 {
            let f = p.production_kwh[t] / sum;
            a.iter_mut().for_each(|r| r[t] *= f);
        }
    }
    let (fl, pr) = shortfalls(m, &a);
    let mut objective = 0.0;
    let mut score = 0.0;
    for t in 0..m.n {
        let mut sum = 0.0;
        for i in 0..a.len() {
            objective += m.value[i][t] * a[i][t];
            score += m.weight[i][t] * a[i][t];
            sum += a[i][t];
        }
        let surplus = (p.production_kwh[t] - sum).max(0.0);
        objective += m.export[t] * surplus;
        score += m.export[t] * p.production_kwh[t];
    }
    let f = &p.fairness;
    score -= f.floor_penalty_eur_per_kwh * fl.iter().sum::<f64>()
        + f.pro_rata_penalty_eur_per_eur * pr.iter().sum::<f64>();
    let mut violations = Vec::new();
    for (i, q) in p.participants.iter().enumerate() {
        if fl[i] > 1e-6 {
            violations.push(Violation::new(Rule::Floor, q.id.clone(), fl[i]));
        }
        if pr[i] > 1e-6 {
            violations.push(Violation::new(Rule::ProRata, q.id.clone(), pr[i]));
        }
    }
    AllocationSolution {
        allocated_kwh: a,
        objective_eur: objective,
        score,
        violations,
        method: method.into(),
    }
}

static LP_FALLBACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times [`solve_allocation`] fell back to the full LP in this
/// process (its result then says `method: "lp"`).
pub fn lp_fallbacks() -> u64 {
    LP_FALLBACKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The fast structured solver (see the module doc).
pub fn solve_allocation(p: &AllocationProblem) -> Result<AllocationSolution, PlanError> {
    solve(p, true)
}

/// The same solver without the totals' path: it searches (greedy, flow,
/// sifted LP) even where the participants' totals give the optimum. For the
/// tests and benchmarks of those paths; both return an optimum.
pub fn solve_allocation_searching(p: &AllocationProblem) -> Result<AllocationSolution, PlanError> {
    solve(p, false)
}

fn solve(p: &AllocationProblem, by_totals: bool) -> Result<AllocationSolution, PlanError> {
    validate_allocation(p)?;
    let m = model(p);
    let (a, method) = match reduce(p) {
        Some((r, groups)) => {
            tracing::debug!(
                steps = p.steps,
                reduced = r.steps,
                "allocation: interchangeable steps merged"
            );
            let (a, method) = solve_structured(&r, &model(&r), by_totals)?;
            (expand(p, &groups, &a), method)
        }
        None => solve_structured(p, &m, by_totals)?,
    };
    Ok(finish(p, &m, a, method))
}

fn solve_structured(
    p: &AllocationProblem,
    m: &Model,
    by_totals: bool,
) -> Result<(Vec<Vec<f64>>, &'static str), PlanError> {
    let a = greedy(p, m);
    let (fl, pr) = shortfalls(m, &a);
    if fl.iter().chain(&pr).all(|x| *x <= ROW_TOL) {
        return Ok((a, "greedy"));
    }
    if by_totals {
        if let Some(a) = from_totals(p, m) {
            return Ok((a, "totals"));
        }
    }
    if let Some(a) = flow_allocation(p, m, &a) {
        return Ok((smooth(p, m, a), "flow"));
    }
    match sift(p, m) {
        Sifted::Proved(a) => Ok((a, "sifted_lp")),
        Sifted::NotWorthIt => {
            // Deliberate, not a fallback: the dual estimate leaves too much
            // in play for sifting to beat one solve of the whole LP.
            let a = lp(p, m, None).map_err(PlanError::Solver)?.0;
            Ok((a, "lp"))
        }
        Sifted::Unproved => {
            LP_FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!("allocation: the structured solver did not prove its result optimal; solving the full LP");
            let a = lp(p, m, None).map_err(PlanError::Solver)?.0;
            Ok((a, "lp"))
        }
    }
}

/// An exact reduction before any solver: a step whose production covers the
/// whole demand never binds, so such steps with the same export price and
/// the same tariff for every participant are one step (production and
/// consumptions summed; any split of a participant's energy among them
/// keeps every step row, and each row of the problem, floor, pro-rata
/// target and value, sums over them alike); the steps without production
/// are one step with nothing to share (kept, because the floor rule caps a
/// target at what the participant consumed). On the synthetic 1,000 × 96
/// day, 96 steps become 22. None when no two steps merge.
fn reduce(p: &AllocationProblem) -> Option<(AllocationProblem, Vec<Vec<usize>>)> {
    let n = p.steps;
    let export = |t: usize| p.export_price_eur_per_kwh.get(t).copied().unwrap_or(0.0);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: std::collections::HashMap<Vec<u64>, usize> = Default::default();
    let mut dead = None;
    for t in 0..n {
        let demand: f64 = p.participants.iter().map(|q| q.consumption_kwh[t]).sum();
        if p.production_kwh[t] <= 0.0 {
            let k = *dead.get_or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[k].push(t);
        } else if demand <= p.production_kwh[t] {
            let key: Vec<u64> = std::iter::once(export(t).to_bits())
                .chain(
                    p.participants
                        .iter()
                        .map(|q| q.tariff_eur_per_kwh[t].to_bits()),
                )
                .collect();
            let k = *index.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[k].push(t);
        } else {
            groups.push(vec![t]);
        }
    }
    if groups.len() == n {
        return None;
    }
    let sum = |x: &[f64], g: &[usize]| g.iter().map(|&t| x[t]).sum::<f64>();
    let r = AllocationProblem {
        steps: groups.len(),
        production_kwh: groups.iter().map(|g| sum(&p.production_kwh, g)).collect(),
        participants: p
            .participants
            .iter()
            .map(|q| AllocationParticipant {
                consumption_kwh: groups.iter().map(|g| sum(&q.consumption_kwh, g)).collect(),
                tariff_eur_per_kwh: groups.iter().map(|g| q.tariff_eur_per_kwh[g[0]]).collect(),
                ..q.clone()
            })
            .collect(),
        export_price_eur_per_kwh: if p.export_price_eur_per_kwh.is_empty() {
            Vec::new()
        } else {
            groups.iter().map(|g| export(g[0])).collect()
        },
        ..p.clone()
    };
    Some((r, groups))
}

/// A reduced problem's allocation on the original steps: a merged step's
/// energy split pro rata of consumption (the greedy's rule for a tie).
fn expand(p: &AllocationProblem, groups: &[Vec<usize>], a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut out = vec![vec![0.0; p.steps]; p.participants.len()];
    for (i, q) in p.participants.iter().enumerate() {
        for (k, g) in groups.iter().enumerate() {
            if let [t] = g[..] {
                out[i][t] = a[i][k];
                continue;
            }
            let total: f64 = g.iter().map(|&t| q.consumption_kwh[t]).sum();
            if total > 0.0 {
                let share = (a[i][k] / total).clamp(0.0, 1.0);
                for &t in g {
                    out[i][t] = q.consumption_kwh[t] * share;
                }
            }
        }
    }
    out
}
