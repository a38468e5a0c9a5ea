//! Scoring the scenarios: the keys of each step on the actual energies (as
//! the daemon computes them), each scenario's totals and monthly shortfalls
//! against exact pro rata, and the figures per participant.

use std::collections::BTreeMap;

use super::report::Trace;
use super::scenarios::{KeyConsumers, Replay, Scenario};
use super::site::Site;
use super::storage::StepFlows;
use super::{
    BacktestError, Dataset, ParticipantResult, ScenarioSummary, WorseOff, BATTERY_EFF, P2H_EFF,
    STORE_LOSS_PER_HOUR, WORSE_OFF_MIN_KWH, WORSE_OFF_SHARE,
};
use crate::allocation::{self, Policy, StepInput};
use crate::config::KeyPolicy;
use crate::dso::loadcurve::SHOWN_LINES;

pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The running local month of a scenario: its label, first step, and each
/// participant's allocation and exact pro rata share so far.
struct Month {
    of: Option<(i32, u32)>,
    label: String,
    began: usize,
    alloc: Vec<f64>,
    prorata: Vec<f64>,
}

impl Month {
    /// Records the shortfalls of the month against exact pro rata, once it is
    /// over, and starts the next one from zero.
    fn close(&mut self, ds: &Dataset, s: &mut ScenarioSummary, worse: &mut [bool], end: usize) {
        let range = (self.began, end);
        for (i, worse) in worse.iter_mut().enumerate() {
            let short = self.prorata[i] - self.alloc[i];
            if short > WORSE_OFF_MIN_KWH.max(WORSE_OFF_SHARE * self.prorata[i]) {
                *worse = true;
                if s.worse_than_dso_prorata.len() < SHOWN_LINES {
                    let rows = range.0 / ds.split..range.1.div_ceil(ds.split);
                    let col = ds.participants[i].id.as_str();
                    s.worse_than_dso_prorata.push(WorseOff {
                        id: col.to_string(),
                        month: self.label.clone(),
                        allocated_kwh: self.alloc[i],
                        prorata_kwh: self.prorata[i],
                        estimated_steps: ds
                            .problems
                            .iter()
                            .filter(|p| {
                                rows.contains(&p.row)
                                    && p.reason.starts_with(&format!("{col} "))
                                    && p.file.ends_with("consumption.csv")
                            })
                            .count(),
                    });
                }
            }
        }
        self.alloc.iter_mut().for_each(|a| *a = 0.0);
        self.prorata.iter_mut().for_each(|a| *a = 0.0);
    }
}

/// The key policy of step `t`: a participant outside its membership has no
/// key, so its static share is withdrawn (the other policies follow
/// consumption, 0). Returns the participants outside and the policy when it
/// differs from the scenario's.
fn membership_at(ds: &Dataset, policy: &Policy, t: usize) -> (Vec<usize>, Option<Policy>) {
    let outside: Vec<usize> = ds
        .limited
        .iter()
        .filter(|(_, m)| !m.get(t).copied().unwrap_or(false))
        .map(|(i, _)| *i)
        .collect();
    let step_policy = match policy {
        Policy::Static(shares) if !outside.is_empty() => {
            let mut shares = shares.clone();
            for &i in &outside {
                shares[i] = 0.0;
            }
            Some(Policy::Static(shares))
        }
        _ => None,
    };
    (outside, step_policy)
}

/// The energies of step `t` as the keys see them: production (PV plus
/// discharge) and each consumer's consumption, kWh.
fn step_input(r: &Replay, f: &StepFlows, t: usize) -> (f64, f64, Vec<f64>) {
    let h = r.h;
    let pv = r.total_pv[t] * h;
    let discharge: f64 = f.discharge.iter().sum::<f64>() * h;
    let consumption: Vec<f64> =
        r.ds.load_kw
            .iter()
            .map(|l| l[t] * h)
            .chain(f.charge.iter().map(|c| c * h))
            .chain(f.p2h.iter().map(|p| p * h))
            .collect();
    (pv, discharge, consumption)
}

/// One scenario's totals and each participant's allocation over the range;
/// the `ped` scenario also fills the chart trace.
pub(super) fn score_scenario(
    r: &Replay,
    sc: &Scenario,
    consumers: &KeyConsumers,
    month_solver: Option<&allocation::MonthSolverAllocator>,
    trace: &mut Trace,
) -> Result<(ScenarioSummary, Vec<f64>), BacktestError> {
    let (ds, site, h) = (r.ds, r.site, r.h);
    let np = ds.participants.len();
    let n_all = consumers.n_all;
    let tz = ds.cal.grid.tz();
    let in_month = match month_solver {
        Some(m) if sc.keys == site.policy.as_str() && site.policy == KeyPolicy::Optimised => {
            Some(m)
        }
        _ => None,
    };
    let mut account = allocation::MonthToDateAccount::new(n_all);
    let mut carry = allocation::Remainders::new(n_all);
    let mut s = ScenarioSummary {
        name: sc.name.to_string(),
        dispatch: sc.dispatch.to_string(),
        keys: sc.keys.to_string(),
        ..Default::default()
    };
    let mut alloc = vec![0.0; np];
    let mut month = Month {
        of: None,
        label: String::new(),
        began: r.begin,
        alloc: vec![0.0; np],
        prorata: vec![0.0; np],
    };
    let mut worse = vec![false; np];
    for (j, f) in sc.run.flows.iter().enumerate() {
        let t = r.begin + j;
        let (pv, discharge, consumption) = step_input(r, f, t);
        let input = StepInput {
            production_kwh: pv + discharge,
            consumption_kwh: consumption.clone(),
        };
        let at = |e: allocation::AllocationError| {
            BacktestError::Options(format!(
                "keys at {}: {e}",
                ds.cal.grid.format_local(ds.cal.time(t))
            ))
        };
        // Rounding remainders and the month's fairness figures restart
        // with each local month, as in the daemon.
        let local = ds.cal.time(t).with_timezone(&tz);
        let this_month = (
            chrono::Datelike::year(&local),
            chrono::Datelike::month(&local),
        );
        if month.of != Some(this_month) {
            if month.of.is_some() {
                month.close(ds, &mut s, &mut worse, t);
            }
            account = allocation::MonthToDateAccount::new(n_all);
            carry = allocation::Remainders::new(n_all);
            month.of = Some(this_month);
            month.label = format!("{:04}-{:02}", this_month.0, this_month.1);
            month.began = t;
        }
        let (outside, step_policy) = membership_at(ds, &sc.policy, t);
        let policy = step_policy.as_ref().unwrap_or(&sc.policy);
        let keys = match in_month {
            Some(solver) => {
                let (k, _) = allocation::keys_for_step_in_month(
                    solver,
                    &account,
                    &input,
                    &consumers.tariffs_all,
                    &consumers.priority_all,
                    site.precision,
                    &mut carry,
                )
                .map_err(at)?;
                account
                    .add_step(
                        input.production_kwh,
                        &consumption,
                        &k.allocated_kwh,
                        &consumers.values_all,
                    )
                    .map_err(at)?;
                k
            }
            None => allocation::keys_for_step_carried(&input, policy, site.precision, &mut carry)
                .map_err(at)?,
        };
        s.keys_outside_membership += outside
            .iter()
            .filter(|&&i| keys.units.get(i).is_some_and(|&u| u > 0))
            .count();
        let a_part: f64 = keys.allocated_kwh[..np].iter().sum();
        let a_storage: f64 = keys.allocated_kwh[np..].iter().sum();
        let storage_use: f64 = consumption[np..].iter().sum();
        for (i, a) in keys.allocated_kwh[..np].iter().enumerate() {
            alloc[i] += a;
        }
        s.pv_kwh += pv;
        s.consumption_kwh += consumption[..np].iter().sum::<f64>();
        s.battery_charge_kwh += f.charge.iter().sum::<f64>() * h;
        s.battery_discharge_kwh += discharge;
        s.p2h_kwh += f.p2h.iter().sum::<f64>() * h;
        s.heat_served_from_store_kwh += f.served.iter().sum::<f64>() * h;
        s.allocated_kwh += a_part;
        s.allocated_to_storage_kwh += a_storage;
        s.storage_grid_kwh += (storage_use - a_storage).max(0.0);
        let production = pv + discharge;
        let demand: f64 = consumption.iter().sum();
        let local = production.min(demand);
        let export = (production - demand).max(0.0);
        let unallocated = local - keys.self_consumed_kwh;
        s.export_kwh += export;
        s.consumed_locally_kwh += local;
        s.unallocated_kwh += unallocated;
        for (i, c) in consumption[..np].iter().enumerate() {
            month.alloc[i] += keys.allocated_kwh[i];
            if demand > 0.0 {
                month.prorata[i] += local * c / demand;
            }
        }
        let err = (production - keys.self_consumed_kwh - keys.surplus_kwh)
            .abs()
            .max((production - keys.self_consumed_kwh - export - unallocated).abs());
        s.max_balance_error_kwh = s.max_balance_error_kwh.max(err);
        if sc.name == "ped" {
            let net: f64 = f.charge.iter().sum::<f64>() - f.discharge.iter().sum::<f64>();
            trace.pv.push(r.total_pv[t]);
            trace.load.push(r.total_load[t]);
            trace.battery.push(net);
            trace.p2h.push(f.p2h.iter().sum());
            trace.export.push(export / h);
        }
    }
    if month.of.is_some() {
        month.close(ds, &mut s, &mut worse, r.end);
    }
    s.participants_worse_than_dso_prorata = worse.iter().filter(|&&w| w).count();
    finish_totals(&mut s, site, sc, &alloc);
    Ok((s, alloc))
}

/// The scenario's rates, money and cycles from its totals, and the storage
/// energy balance over the run.
fn finish_totals(s: &mut ScenarioSummary, site: &Site, sc: &Scenario, alloc: &[f64]) {
    s.heat_from_pv_kwh = s.p2h_kwh * P2H_EFF;
    s.self_consumption_rate = if s.pv_kwh > 0.0 {
        1.0 - s.export_kwh / s.pv_kwh
    } else {
        0.0
    };
    s.self_sufficiency = if s.consumption_kwh > 0.0 {
        s.allocated_kwh / s.consumption_kwh
    } else {
        0.0
    };
    s.savings_eur = alloc
        .iter()
        .zip(&site.tariff)
        .map(|(a, t)| a * (t - site.local_price))
        .sum();
    s.export_revenue_eur = s.export_kwh * site.export_price;
    let cap: f64 = site.batteries.iter().map(|b| b.capacity).sum();
    s.battery_full_cycles = if cap > 0.0 {
        s.battery_discharge_kwh / cap
    } else {
        0.0
    };
    // Storage energy conservation over the run.
    let stored_delta: f64 =
        sc.run.soc_end.iter().sum::<f64>() - sc.run.soc_start.iter().sum::<f64>();
    let dyn_delta = BATTERY_EFF * s.battery_charge_kwh - s.battery_discharge_kwh / BATTERY_EFF;
    s.max_balance_error_kwh = s
        .max_balance_error_kwh
        .max((stored_delta - dyn_delta).abs());
}

/// Battery and heat store fill of the `ped` run per step (% of capacity),
/// replayed from its flows.
pub(super) fn storage_trace(r: &Replay, flows: &[StepFlows], trace: &mut Trace) {
    let (site, h) = (r.site, r.h);
    let cap: f64 = site
        .batteries
        .iter()
        .map(|b| b.capacity)
        .sum::<f64>()
        .max(1e-9);
    let store_cap: f64 = site.heat.iter().map(|u| u.capacity).sum::<f64>().max(1e-9);
    let mut soc: f64 = r.init.soc.iter().sum();
    let mut store: Vec<f64> = r.init.store.clone();
    for f in flows {
        soc += BATTERY_EFF * f.charge.iter().sum::<f64>() * h
            - f.discharge.iter().sum::<f64>() * h / BATTERY_EFF;
        for (k, s) in store.iter_mut().enumerate() {
            *s = (*s * (1.0 - STORE_LOSS_PER_HOUR * h) + (P2H_EFF * f.p2h[k] - f.served[k]) * h)
                .max(0.0);
        }
        trace.soc_pct.push(100.0 * soc / cap);
        trace
            .store_pct
            .push(100.0 * store.iter().sum::<f64>() / store_cap);
    }
}

/// Each participant's allocation and savings in every scenario, and its
/// savings ratio of `ped` (the first scenario) to DSO pro rata.
pub(super) fn participant_results(
    r: &Replay,
    scenarios: &[Scenario],
    per_participant: &[Vec<f64>],
    dso: usize,
) -> Vec<ParticipantResult> {
    let (ds, site, h) = (r.ds, r.site, r.h);
    ds.participants
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let w = site.tariff[i] - site.local_price;
            let allocated_kwh: BTreeMap<String, f64> = scenarios
                .iter()
                .zip(per_participant)
                .map(|(s, a)| (s.name.to_string(), a[i]))
                .collect();
            let savings_eur: BTreeMap<String, f64> = allocated_kwh
                .iter()
                .map(|(k, a)| (k.clone(), a * w))
                .collect();
            let base = per_participant[dso][i] * w;
            let ours = per_participant[0][i] * w;
            ParticipantResult {
                id: p.id.clone(),
                kind: p.kind.clone(),
                tariff_eur_per_kwh: site.tariff[i],
                priority: site.priority[i],
                consumption_kwh: (r.begin..r.end).map(|t| ds.load_kw[i][t] * h).sum(),
                allocated_kwh,
                savings_eur,
                ratio_to_prorata: if base.abs() > 1e-12 { ours / base } else { 1.0 },
            }
        })
        .collect()
}

/// Per scenario, the participants who save less money than with DSO pro rata.
pub(super) fn count_saving_less(
    site: &Site,
    summaries: &mut [ScenarioSummary],
    per_participant: &[Vec<f64>],
    dso: usize,
) {
    let np = site.tariff.len();
    for (s, alloc) in summaries.iter_mut().zip(per_participant) {
        // Less money, not fewer kWh: the keys' rounding moves fractions of a
        // cent between participants and is not a loss.
        s.participants_saving_less_than_without_ped = (0..np)
            .filter(|&i| {
                let v = site.tariff[i] - site.local_price;
                v * (alloc[i] - per_participant[dso][i]) < -0.01
            })
            .count();
    }
}
