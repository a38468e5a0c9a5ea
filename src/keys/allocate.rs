//! Allocation and quantisation of every step of a run ([`compute`]): the
//! [`MonthAllocator`] seam decides the intended energies (the month solver
//! for optimised keys, [`month_solver`], else the per-step policy), steps
//! with unmeasured data fall back to the DSO's default rule (pro rata), each
//! step is quantised to simple or full dynamic keys with the rounding
//! remainder carried through the local month, and a participant outside its
//! membership gets no key; [`MonthNote`] records how the month allocator
//! reached its answer.

use chrono::Datelike;
use serde::{Deserialize, Serialize};

use super::job::{KeyKind, KeysError, KeysJob, Measured};
use crate::allocation::solver::Violation;
use crate::allocation::{
    self, AllocationError, FullStepInput, MonthAllocator, MonthInput, Policy, StepInput,
};
use crate::config::{KeyPolicy, Site};
use crate::dso::KeyRow;

/// Keys of a run, before rendering.
#[derive(Debug, Clone)]
pub struct Computed {
    /// Simple: one row set for all producers; full: one per producer.
    pub rows: Vec<Vec<KeyRow>>,
    /// `[t][i]` intended (after fallbacks) and allocated by the DSO's rule on
    /// the exported keys.
    pub intended_kwh: Vec<Vec<f64>>,
    pub allocated_kwh: Vec<Vec<f64>>,
    pub fallback_steps: Vec<usize>,
    pub allocator: &'static str,
    /// `[t][i]` what the DSO's default (pro rata, unquantised) would give:
    /// the baseline of the participants' statements.
    pub prorata_kwh: Vec<Vec<f64>>,
    pub month: MonthNote,
}

/// How the month allocator reached its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthNote {
    /// `greedy`, `totals`, `flow`, `sifted_lp`, `lp` (month solver) or the per-step policy's name.
    pub method: String,
    /// Why the month solver's answer was not used (budget, solver failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Fairness rules the month could not meet.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::allocation::solver::as_text"
    )]
    pub violations: Vec<Violation>,
}

/// Allocation and quantisation of every step.
pub fn compute(
    job: &KeysJob,
    m: &Measured,
    allocator: &dyn MonthAllocator,
) -> Result<Computed, KeysError> {
    let n_t = m.periods.len();
    let pooled: Vec<f64> = m.production_kwh.iter().map(|r| r.iter().sum()).collect();
    let tariffs: Vec<f64> = job.consumers.iter().map(|c| c.tariff_eur_per_kwh).collect();
    let priority: Vec<u8> = job.consumers.iter().map(|c| c.priority).collect();
    let outcome = allocator.allocate_month(&MonthInput {
        production_kwh: &pooled,
        consumption_kwh: &m.consumption_kwh,
        tariffs_eur_per_kwh: &tariffs,
        priority: &priority,
    })?;
    let month = MonthNote {
        method: outcome.method,
        fallback: outcome.fallback,
        violations: outcome.violations,
    };
    let mut intended = outcome.intended_kwh;
    if intended.len() != n_t {
        return Err(AllocationError::Length {
            expected: n_t,
            got: intended.len(),
        }
        .into());
    }
    let mut fallback_steps = Vec::new();
    for t in 0..n_t {
        if !m.problems[t].is_empty() {
            intended[t] =
                allocation::intended_for_step(pooled[t], &m.consumption_kwh[t], &Policy::ProRata)
                    .map_err(AllocationError::Policy)?;
            fallback_steps.push(t);
        }
    }
    let is_static = job.policy == KeyPolicy::Static;
    let policy = job.policy();
    let n_prod = job.producers.len();
    let mut rows: Vec<Vec<KeyRow>> = match job.kind {
        KeyKind::Simple => vec![Vec::with_capacity(n_t)],
        KeyKind::Full => vec![Vec::with_capacity(n_t); n_prod],
    };
    let mut allocated = Vec::with_capacity(n_t);
    let mut prorata = Vec::with_capacity(n_t);
    // Each consumer's rounding remainder, carried through the local month.
    let mut carry = allocation::Remainders::new(job.consumers.len());
    let mut month_of = None;
    for t in 0..n_t {
        let local_month = {
            let d = job.grid.local_day(m.periods[t]);
            (d.year(), d.month())
        };
        if month_of != Some(local_month) {
            carry = allocation::Remainders::new(job.consumers.len());
            month_of = Some(local_month);
        }
        prorata.push(
            allocation::intended_for_step(pooled[t], &m.consumption_kwh[t], &Policy::ProRata)
                .map_err(AllocationError::Policy)?,
        );
        let start = m.periods[t];
        let c = &m.consumption_kwh[t];
        let fallback = !m.problems[t].is_empty();
        match job.kind {
            KeyKind::Simple => {
                let input = StepInput {
                    production_kwh: pooled[t],
                    consumption_kwh: c.clone(),
                };
                // Static keys are the declared shares, not a quantised allocation.
                let k = if is_static && !fallback {
                    allocation::keys_for_step(&input, &policy, job.precision)?
                } else {
                    allocation::keys_from_intended_carried(
                        &input,
                        &intended[t],
                        job.precision,
                        &mut carry,
                    )?
                };
                rows[0].push(KeyRow {
                    start,
                    units: k.units,
                });
                allocated.push(k.allocated_kwh);
            }
            KeyKind::Full => {
                let input = FullStepInput {
                    production_kwh: m.production_kwh[t].clone(),
                    consumption_kwh: c.clone(),
                };
                let k = if is_static && !fallback {
                    let shares: Vec<f64> = job.consumers.iter().map(|c| c.static_share).collect();
                    let intended: Vec<f64> = shares
                        .iter()
                        .zip(c)
                        .map(|(s, &ci)| (s * pooled[t]).min(ci))
                        .collect();
                    allocation::full_keys_from_intended(&input, &intended, job.precision, false)?
                } else {
                    allocation::full_keys_from_intended(&input, &intended[t], job.precision, true)?
                };
                for (j, units) in k.units.into_iter().enumerate() {
                    rows[j].push(KeyRow { start, units });
                }
                allocated.push(k.allocated_kwh);
            }
        }
    }
    // Outside its membership a participant has no key, whatever rounding
    // residue a step had left to place.
    for (i, member) in m.members.iter().enumerate() {
        for rs in &mut rows {
            for (row, _) in rs.iter_mut().zip(member).filter(|(_, &is)| !is) {
                if let Some(u) = row.units.get_mut(i) {
                    *u = 0;
                }
            }
        }
    }
    Ok(Computed {
        rows,
        intended_kwh: intended,
        allocated_kwh: allocated,
        fallback_steps,
        allocator: allocator.name(),
        prorata_kwh: prorata,
        month,
    })
}

/// The month solver for a site's optimised keys: fairness from `[keys]`,
/// subscription = each participant's `static_share` (when > 0), prices from
/// `[plan]`. None when the policy is not optimised or `keys.month_budget_ms`
/// is 0 (per-step keys then).
pub fn month_solver(site: &Site, job: &KeysJob) -> Option<allocation::MonthSolverAllocator> {
    let k = &site.config.keys;
    if job.policy != KeyPolicy::Optimised || k.month_budget_ms == 0 {
        return None;
    }
    Some(allocation::MonthSolverAllocator {
        ids: job.consumers.iter().map(|c| c.id.clone()).collect(),
        local_price_eur_per_kwh: site.config.plan.local_price_eur_per_kwh,
        export_price_eur_per_kwh: site.config.plan.export_price_eur_per_kwh,
        fairness: crate::allocation::solver::Fairness {
            floor_ratio: k.floor_ratio,
            no_worse_than_pro_rata: k.no_worse_than_pro_rata,
            ..Default::default()
        },
        subscription_share: job
            .consumers
            .iter()
            .map(|c| (c.static_share > 0.0).then_some(c.static_share))
            .collect(),
        month_to_date: Vec::new(),
        month_to_date_production_kwh: 0.0,
        budget: Some(std::time::Duration::from_millis(k.month_budget_ms)),
    })
}
