//! One operation's keys for one period: its producers' energy shared among
//! its members by the site's policy, month-aware when a month solver is
//! configured, with the rounding remainders carried through the month.

use chrono::{DateTime, Utc};

use crate::allocation::{self, Policy, Precision, StepInput};
use crate::config::{KeyPolicy, Operation, ParticipantConfig, Site, SiteConfig};
use std::time::Duration;

/// The month solver of the site's optimised keys, for one period at a time:
/// `None` when `keys.month_budget_ms` is 0 (plain per-period optimised keys).
/// Surplus is valued at the period's export price, asked of `export_price`
/// only when there is a month solver.
fn period_solver(
    cfg: &SiteConfig,
    members: &[&ParticipantConfig],
    start: DateTime<Utc>,
    export_price: &dyn Fn(DateTime<Utc>) -> f64,
) -> Option<allocation::MonthSolverAllocator> {
    let k = &cfg.keys;
    if k.month_budget_ms == 0 {
        return None;
    }
    Some(allocation::MonthSolverAllocator {
        ids: members.iter().map(|p| p.id.clone()).collect(),
        local_price_eur_per_kwh: cfg.plan.local_price_eur_per_kwh,
        export_price_eur_per_kwh: export_price(start),
        fairness: crate::allocation::solver::Fairness {
            floor_ratio: k.floor_ratio,
            no_worse_than_pro_rata: k.no_worse_than_pro_rata,
            ..Default::default()
        },
        subscription_share: members
            .iter()
            .map(|p| (p.static_share > 0.0).then_some(p.static_share))
            .collect(),
        month_to_date: Vec::new(),
        month_to_date_production_kwh: 0.0,
        // A single period solves in milliseconds; the cap only keeps a
        // pathological case from holding the aggregator's task for the
        // whole month budget.
        budget: Some(Duration::from_millis(k.month_budget_ms.min(5_000))),
    })
}

/// One operation's keys for one period, for its members in the order of
/// [`Operation::participants`].
pub struct OperationKeys {
    pub units: Vec<u32>,
    pub allocated: Vec<f64>,
    pub self_consumed_kwh: f64,
    pub surplus_kwh: f64,
    /// The month solver's answer was not used (see the warning logged).
    pub month_solver_fell_back: bool,
}

/// The values of `v` at `at` (a shorter `v` counts as zeros).
fn pick(v: &[f64], at: &[usize]) -> Vec<f64> {
    at.iter()
        .map(|&i| v.get(i).copied().unwrap_or(0.0))
        .collect()
}

/// The keys of one operation: its producers' energy shared among its
/// members by the site's policy, pro rata when one of its readings is
/// unknown (`degraded`). `carry` holds every participant's remainders; the
/// operation's members' are taken from it and put back.
#[allow(clippy::too_many_arguments)]
pub fn operation_keys(
    site: &Site,
    op: &Operation,
    start: DateTime<Utc>,
    export_price: &dyn Fn(DateTime<Utc>) -> f64,
    production_kwh: f64,
    consumption: &[f64],
    degraded: bool,
    account: &allocation::MonthToDateAccount,
    carry: &mut allocation::Remainders,
    problems: &mut Vec<String>,
) -> OperationKeys {
    let cfg = &site.config;
    let grid = site.grid;
    let members: Vec<&ParticipantConfig> = op
        .participants
        .iter()
        .map(|&i| &cfg.participants[i])
        .collect();
    let precision = Precision {
        units_per_one: cfg.keys.units_per_one,
    };
    let policy = if degraded {
        Policy::ProRata
    } else {
        match cfg.keys.policy {
            KeyPolicy::Prorata => Policy::ProRata,
            KeyPolicy::Static => Policy::Static(members.iter().map(|p| p.static_share).collect()),
            KeyPolicy::Optimised => Policy::Optimised {
                tariffs_eur_per_kwh: members.iter().map(|p| p.tariff_eur_per_kwh).collect(),
                priority: members.iter().map(|p| p.priority).collect(),
            },
        }
    };
    let input = StepInput {
        production_kwh,
        consumption_kwh: op.participants.iter().map(|&i| consumption[i]).collect(),
    };
    let mut sub = allocation::Remainders {
        kwh: pick(&carry.kwh, &op.participants),
        behind_pro_rata_kwh: pick(&carry.behind_pro_rata_kwh, &op.participants),
        pro_rata_kwh: pick(&carry.pro_rata_kwh, &op.participants),
    };
    let mut month_solver_fell_back = false;
    let in_month = match (&policy, period_solver(cfg, &members, start, export_price)) {
        (Policy::Optimised { priority, .. }, Some(solver)) => {
            // Valued at the period's own time-of-use prices, as the month's
            // account values it (`Month::add_record`).
            let tariffs: Vec<f64> = members
                .iter()
                .map(|p| p.tariff_at(start, grid.tz()))
                .collect();
            match allocation::keys_for_step_in_month(
                &solver, account, &input, &tariffs, priority, precision, &mut sub,
            ) {
                Ok((k, outcome)) => {
                    if let Some(why) = &outcome.fallback {
                        month_solver_fell_back = true;
                        tracing::warn!(operation = op.label(), period = %grid.format_local(start), reason = %why, "period's month-aware keys not solved; per-period optimised keys instead");
                    }
                    // Shortfalls under a cent are the keys' rounding
                    // carried from the last periods (at dawn a unit is worth
                    // little and the next periods make it good): debug, not
                    // a warning for the energy manager.
                    let (real, rounding): (Vec<_>, Vec<_>) =
                        outcome.violations.iter().partition(|v| v.amount >= 0.01);
                    let text = |vs: Vec<&allocation::solver::Violation>| -> Vec<String> {
                        vs.iter().map(ToString::to_string).collect()
                    };
                    let (real, rounding) = (text(real), text(rounding));
                    if !real.is_empty() {
                        tracing::warn!(operation = op.label(), period = %grid.format_local(start), violations = ?real, below_a_cent = rounding.len(), "the month's fairness rules cannot all be met so far");
                    } else if !rounding.is_empty() {
                        tracing::debug!(operation = op.label(), period = %grid.format_local(start), violations = ?rounding, "the month's fairness rules are a rounding short so far");
                    }
                    Some(Ok(k))
                }
                Err(e) => {
                    tracing::warn!(operation = op.label(), period = %grid.format_local(start), error = %e, "period's month-aware keys failed; per-period optimised keys instead");
                    None
                }
            }
        }
        _ => None,
    };
    let carried = sub.clone();
    let keys = in_month
        .unwrap_or_else(|| allocation::keys_for_step_carried(&input, &policy, precision, &mut sub))
        .or_else(|e| {
            problems.push(format!("keys of {}: {e}", op.label()));
            sub = carried.clone();
            allocation::keys_for_step_carried(&input, &Policy::ProRata, precision, &mut sub)
        });
    let out = match keys {
        Ok(k) => OperationKeys {
            units: k.units,
            allocated: k.allocated_kwh,
            self_consumed_kwh: k.self_consumed_kwh,
            surplus_kwh: k.surplus_kwh,
            month_solver_fell_back,
        },
        Err(e) => {
            // Nothing valid to send: all-zero keys leave everything to the DSO's default.
            problems.push(format!("pro-rata keys of {}: {e}", op.label()));
            sub = carried;
            let n = members.len();
            OperationKeys {
                units: vec![0; n],
                allocated: vec![0.0; n],
                self_consumed_kwh: 0.0,
                surplus_kwh: production_kwh,
                month_solver_fell_back,
            }
        }
    };
    let n = carry.kwh.len().max(cfg.participants.len());
    for v in [
        &mut carry.kwh,
        &mut carry.behind_pro_rata_kwh,
        &mut carry.pro_rata_kwh,
    ] {
        v.resize(n, 0.0);
    }
    for (j, &i) in op.participants.iter().enumerate() {
        carry.kwh[i] = sub.kwh.get(j).copied().unwrap_or(0.0);
        carry.behind_pro_rata_kwh[i] = sub.behind_pro_rata_kwh.get(j).copied().unwrap_or(0.0);
        carry.pro_rata_kwh[i] = sub.pro_rata_kwh.get(j).copied().unwrap_or(0.0);
    }
    out
}
