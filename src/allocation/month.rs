//! A month (or any run of steps) at once.

use super::*;

/// Measured energies of a run of steps, for an allocator that may look at
/// the whole month (fairness over the month, floors on a month's share).
#[derive(Debug, Clone, Copy)]
pub struct MonthInput<'a> {
    /// Pooled production per step (PV plus battery discharge), kWh.
    pub production_kwh: &'a [f64],
    /// `consumption_kwh[t][i]`, kWh (charging batteries are consumers).
    pub consumption_kwh: &'a [Vec<f64>],
    pub tariffs_eur_per_kwh: &'a [f64],
    /// 1 = served first.
    pub priority: &'a [u8],
}

/// The seam between the keys and whoever decides the month's allocation:
/// returns the intended kWh per step and participant (`[t][i]`), which the
/// keys then quantise. A solver that enforces the month's fairness rules
/// (priority tiers, floors, nobody worse off than pro rata over the month)
/// plugs in here without the key files knowing.
pub trait MonthAllocator {
    fn name(&self) -> &'static str;
    fn allocate(&self, input: &MonthInput<'_>) -> Result<Vec<Vec<f64>>, AllocationError>;
    /// The allocation with how it was reached; allocators that can fall back
    /// or report fairness violations override this.
    fn allocate_month(&self, input: &MonthInput<'_>) -> Result<MonthOutcome, AllocationError> {
        Ok(MonthOutcome {
            intended_kwh: self.allocate(input)?,
            method: self.name().to_string(),
            fallback: None,
            violations: Vec::new(),
        })
    }
}

/// A month allocator's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthOutcome {
    /// `[t][i]`, kWh.
    pub intended_kwh: Vec<Vec<f64>>,
    /// How it was computed, e.g. `greedy`, `flow`, `sifted_lp`, `per_step`.
    pub method: String,
    /// Why the month solver's answer was not used, if it was not.
    pub fallback: Option<String>,
    /// Fairness rules the solved month could not meet.
    pub violations: Vec<solver::Violation>,
}

/// Step by step with one [`Policy`]; the month's fairness is whatever the
/// policy gives in each step. The default until a month solver is wired in.
#[derive(Debug, Clone)]
pub struct PerStepAllocator {
    pub policy: Policy,
}

impl MonthAllocator for PerStepAllocator {
    fn name(&self) -> &'static str {
        match self.policy {
            Policy::ProRata => "prorata",
            Policy::Static(_) => "static",
            Policy::Optimised { .. } => "optimised",
        }
    }
    fn allocate(&self, input: &MonthInput<'_>) -> Result<Vec<Vec<f64>>, AllocationError> {
        if input.consumption_kwh.len() != input.production_kwh.len() {
            return Err(AllocationError::Length {
                expected: input.production_kwh.len(),
                got: input.consumption_kwh.len(),
            });
        }
        let n = input
            .consumption_kwh
            .first()
            .map_or(input.tariffs_eur_per_kwh.len(), Vec::len);
        intended_for_step(0.0, &vec![0.0; n], &self.policy).map_err(AllocationError::Policy)?;
        input
            .production_kwh
            .iter()
            .zip(input.consumption_kwh)
            .map(|(&p, c)| intended_for_step(p, c, &self.policy).map_err(AllocationError::Policy))
            .collect()
    }
}

/// The whole month as one problem for [`crate::allocation::solver`]: the same
/// objective and fairness rules as the optimiser (priority tiers, a floor on
/// the month's share relative to the subscription, nobody worse off than pro
/// rata over the month, month-to-date figures for a partial month), solved
/// on measured energies.
///
/// The structured solver is fast when the fairness rows do not bind and can
/// be slow when they do, so it runs on a worker thread under `budget`. Past
/// the budget the month falls back to [`PerStepAllocator`] with the
/// optimised policy, and the outcome says so; the worker cannot be
/// interrupted and finishes in the background (a `ped keys` process exits
/// without waiting for it).
#[derive(Debug, Clone)]
pub struct MonthSolverAllocator {
    pub ids: Vec<String>,
    pub local_price_eur_per_kwh: f64,
    pub export_price_eur_per_kwh: f64,
    pub fairness: crate::allocation::solver::Fairness,
    /// Per participant, for the floor rule (None: no floor for it).
    pub subscription_share: Vec<Option<f64>>,
    /// Per participant; empty means a month that starts with the run.
    pub month_to_date: Vec<crate::allocation::solver::MonthToDate>,
    pub month_to_date_production_kwh: f64,
    /// None: no limit.
    pub budget: Option<std::time::Duration>,
}

impl MonthSolverAllocator {
    /// The month's problem; consumption and tariffs transposed to `[i][t]`.
    pub fn problem(
        &self,
        input: &MonthInput<'_>,
    ) -> Result<crate::allocation::solver::AllocationProblem, AllocationError> {
        use crate::allocation::solver::{AllocationParticipant, AllocationProblem};
        let n_t = input.production_kwh.len();
        let n = self.ids.len();
        if input.consumption_kwh.len() != n_t {
            return Err(AllocationError::Length {
                expected: n_t,
                got: input.consumption_kwh.len(),
            });
        }
        for len in [
            input.tariffs_eur_per_kwh.len(),
            input.priority.len(),
            self.subscription_share.len(),
        ]
        .into_iter()
        .chain(input.consumption_kwh.iter().map(Vec::len))
        {
            if len != n {
                return Err(AllocationError::Length {
                    expected: n,
                    got: len,
                });
            }
        }
        if !self.month_to_date.is_empty() && self.month_to_date.len() != n {
            return Err(AllocationError::Length {
                expected: n,
                got: self.month_to_date.len(),
            });
        }
        let participants = (0..n)
            .map(|i| AllocationParticipant {
                id: self.ids[i].clone(),
                consumption_kwh: input.consumption_kwh.iter().map(|c| c[i]).collect(),
                tariff_eur_per_kwh: vec![input.tariffs_eur_per_kwh[i]; n_t],
                tier: input.priority[i].max(1),
                subscription_share: self.subscription_share[i],
                month_to_date: self.month_to_date.get(i).cloned().unwrap_or_default(),
            })
            .collect();
        let mut problem = AllocationProblem {
            steps: n_t,
            production_kwh: input.production_kwh.to_vec(),
            participants,
            local_price_eur_per_kwh: self.local_price_eur_per_kwh,
            export_price_eur_per_kwh: vec![self.export_price_eur_per_kwh; n_t],
            month_to_date_production_kwh: self.month_to_date_production_kwh,
            fairness: self.fairness.clone(),
        };
        // The site's floor and pro-rata rules are guarantees; priority tiers
        // share what is left above them.
        problem.fairness = problem.fairness.clone().rules_above_tiers(&problem);
        Ok(problem)
    }

    fn per_step(
        &self,
        input: &MonthInput<'_>,
        why: String,
    ) -> Result<MonthOutcome, AllocationError> {
        tracing::warn!(reason = %why, "month solver not used; optimised keys computed per step");
        let policy = Policy::Optimised {
            tariffs_eur_per_kwh: input.tariffs_eur_per_kwh.to_vec(),
            priority: input.priority.to_vec(),
        };
        Ok(MonthOutcome {
            intended_kwh: PerStepAllocator { policy }.allocate(input)?,
            method: "per_step".into(),
            fallback: Some(why),
            violations: Vec::new(),
        })
    }
}

impl MonthAllocator for MonthSolverAllocator {
    fn name(&self) -> &'static str {
        "optimised_month"
    }
    fn allocate(&self, input: &MonthInput<'_>) -> Result<Vec<Vec<f64>>, AllocationError> {
        Ok(self.allocate_month(input)?.intended_kwh)
    }
    fn allocate_month(&self, input: &MonthInput<'_>) -> Result<MonthOutcome, AllocationError> {
        use crate::plan::PlanError;
        let problem = self.problem(input)?;
        solver::validate_allocation(&problem)
            .map_err(|e| AllocationError::Policy(e.to_string()))?;
        let started = std::time::Instant::now();
        let solved = match self.budget {
            None => solver::solve_allocation(&problem),
            Some(budget) => {
                let over = || {
                    format!(
                        "month solver exceeded its budget of {} ms",
                        budget.as_millis()
                    )
                };
                if budget.is_zero() {
                    return self.per_step(input, over());
                }
                let (tx, rx) = std::sync::mpsc::channel();
                // Tests of the fallback's wiring through the binary hold the
                // worker until the budget has run out, so the overrun happens
                // by construction on any machine; release builds never hold.
                let hold = cfg!(debug_assertions)
                    && std::env::var_os("PED_TEST_HOLD_MONTH_SOLVER").is_some();
                let (release, held) = std::sync::mpsc::channel::<()>();
                let spawned = std::thread::Builder::new()
                    .name("month-solver".into())
                    .spawn(move || {
                        if hold {
                            let _ = held.recv();
                        }
                        // The receiver is gone after a timeout; nothing to report then.
                        let _ = tx.send(solver::solve_allocation(&problem));
                    });
                if let Err(e) = spawned {
                    return self.per_step(input, format!("cannot start the month solver: {e}"));
                }
                let answer = rx.recv_timeout(budget);
                drop(release);
                match answer {
                    Ok(r) => r,
                    Err(_) => return self.per_step(input, over()),
                }
            }
        };
        let sol = match solved {
            Ok(s) => s,
            Err(PlanError::Solver(e)) => {
                return self.per_step(input, format!("month solver failed: {e}"))
            }
            Err(e) => return Err(AllocationError::Policy(e.to_string())),
        };
        // A month of keys is worth a line; the daemon and the backtest solve
        // every step as the month's next one, and that is debug detail.
        if input.production_kwh.len() > 1 {
            tracing::info!(
                method = %sol.method,
                seconds = started.elapsed().as_secs_f64(),
                objective_eur = sol.objective_eur,
                violations = sol.violations.len(),
                "month solved"
            );
        } else {
            tracing::debug!(
                method = %sol.method,
                seconds = started.elapsed().as_secs_f64(),
                objective_eur = sol.objective_eur,
                violations = sol.violations.len(),
                "month step solved"
            );
        }
        let n_t = input.production_kwh.len();
        let intended = (0..n_t)
            .map(|t| sol.allocated_kwh.iter().map(|a| a[t]).collect())
            .collect();
        Ok(MonthOutcome {
            intended_kwh: intended,
            method: sol.method,
            fallback: None,
            violations: sol.violations,
        })
    }
}

// ---------------------------------------------------------------------------
// One closed step at a time, with the month's figures so far.

/// The month's figures before the next closed step, kept by whoever closes
/// steps one at a time (the daemon): what each participant was allocated
/// under the exported keys, its value, the value the DSO's default pro-rata
/// key would have given, and the month's pooled production. With them a
/// single step solved by [`MonthSolverAllocator`] honours the month's
/// fairness rules (floor on the month's share, nobody worse off than pro
/// rata over the month) rather than the step's alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonthToDateAccount {
    pub participants: Vec<crate::allocation::solver::MonthToDate>,
    pub production_kwh: f64,
    pub steps: usize,
}

impl MonthToDateAccount {
    pub fn new(n: usize) -> Self {
        MonthToDateAccount {
            participants: vec![Default::default(); n],
            production_kwh: 0.0,
            steps: 0,
        }
    }

    /// Adds one closed step. `allocated_kwh` is what the DSO's rule gives
    /// with the exported keys (not the intended allocation: the month must
    /// make up for what quantisation and fallbacks cost), `value_eur_per_kwh`
    /// is each participant's tariff minus the local price at that step.
    /// Non-finite or negative measurements count as 0, as the keys did.
    pub fn add_step(
        &mut self,
        production_kwh: f64,
        consumption_kwh: &[f64],
        allocated_kwh: &[f64],
        value_eur_per_kwh: &[f64],
    ) -> Result<(), AllocationError> {
        let n = self.participants.len();
        for len in [
            consumption_kwh.len(),
            allocated_kwh.len(),
            value_eur_per_kwh.len(),
        ] {
            if len != n {
                return Err(AllocationError::Length {
                    expected: n,
                    got: len,
                });
            }
        }
        let clean = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
        let p = clean(production_kwh);
        let c: Vec<f64> = consumption_kwh.iter().map(|&v| clean(v)).collect();
        // The same pro-rata rule as the month solver's target
        // (`allocation::solver::pro_rata`), so the month's rows compare like with like.
        let total: f64 = c.iter().sum();
        let ratio = if total > 0.0 {
            (p / total).min(1.0)
        } else {
            0.0
        };
        for (i, m) in self.participants.iter_mut().enumerate() {
            let a = clean(allocated_kwh[i]);
            let v = if value_eur_per_kwh[i].is_finite() {
                value_eur_per_kwh[i]
            } else {
                0.0
            };
            m.allocated_kwh += a;
            m.value_eur += v * a;
            m.pro_rata_value_eur += v * c[i] * ratio;
        }
        self.production_kwh += p;
        self.steps += 1;
        Ok(())
    }

    /// Per participant: how much less its month so far is worth than under
    /// pro rata (0 when it is not behind), €.
    pub fn pro_rata_shortfall_eur(&self) -> Vec<f64> {
        self.participants
            .iter()
            .map(|m| (m.pro_rata_value_eur - m.value_eur).max(0.0))
            .collect()
    }
}

/// Keys of one closed step solved as the month's next step: `solver` carries
/// the site's prices and fairness rules, `account` the month so far (it
/// replaces whatever month-to-date figures `solver` held). `tariffs` are the
/// participants' retail prices at this step. The outcome says how the step
/// was solved and which month rules it could not meet.
pub fn keys_for_step_in_month(
    solver: &MonthSolverAllocator,
    account: &MonthToDateAccount,
    input: &StepInput,
    tariffs_eur_per_kwh: &[f64],
    priority: &[u8],
    precision: Precision,
    carry: &mut Remainders,
) -> Result<(StepKeys, MonthOutcome), AllocationError> {
    checked(input, precision)?;
    let solver = MonthSolverAllocator {
        month_to_date: account.participants.clone(),
        month_to_date_production_kwh: account.production_kwh,
        ..solver.clone()
    };
    let production = [input.production_kwh];
    let consumption = [input.consumption_kwh.clone()];
    let outcome = solver.allocate_month(&MonthInput {
        production_kwh: &production,
        consumption_kwh: &consumption,
        tariffs_eur_per_kwh,
        priority,
    })?;
    let intended = outcome
        .intended_kwh
        .first()
        .ok_or(AllocationError::Length {
            expected: 1,
            got: 0,
        })?;
    Ok((
        keys_from_intended_carried(input, intended, precision, carry)?,
        outcome,
    ))
}
