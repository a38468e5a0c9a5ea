//! The scenarios' dispatch: the LP loop (forecast, plan, track, device model
//! step by step), the baselines that need no plan (greedy battery, idle
//! storage), and the list of scenarios (dispatch × key policy) scored on them.

use super::progress::Progress;
use super::scoring::percentile;
use super::site::{static_policy, Site};
use super::storage::{device_step, tracking_input, DeviceState, Dispatch, StepFlows};
use super::{BacktestError, Dataset, ForecastErrors, Options, SolveStats, TrackingDiagnosis};
use crate::allocation::{self, Policy};
use crate::config::KeyPolicy;
use crate::config::{BATTERY_CHARGE_EFFICIENCY, BATTERY_DISCHARGE_EFFICIENCY, P2H_EFFICIENCY};
use crate::forecast::{self, ErrorAccumulator, SeriesHistory};
use crate::plan::site_input::{
    BATTERY_END_VALUE_RATIO, STORE_LOSS_PER_HOUR, STORE_SHARE_OF_DEMAND,
};
use crate::plan::{self, BatteryModel, HeatUnitModel, ParticipantForecast, PlanInput, PlanStatus};

/// What every dispatch of the run reads: the data set, the site, the replayed
/// range `begin..end` and the district totals per step.
pub(super) struct Replay<'a> {
    pub(super) ds: &'a Dataset,
    pub(super) site: &'a Site,
    pub(super) begin: usize,
    pub(super) end: usize,
    /// Step length, hours.
    pub(super) h: f64,
    /// Plan horizon, steps.
    pub(super) horizon: usize,
    /// Clear-sky output per plant and step, kW.
    pub(super) clear: Vec<Vec<f64>>,
    pub(super) total_load: Vec<f64>,
    pub(super) total_pv: Vec<f64>,
    /// Installed PV peak, kWp.
    pub(super) peak_kw: f64,
    /// Storage at the start of the range: every battery and store half full.
    pub(super) init: DeviceState,
}

impl<'a> Replay<'a> {
    pub(super) fn new(ds: &'a Dataset, site: &'a Site, begin: usize, end: usize) -> Self {
        let h = ds.cal.grid.step_hours();
        let horizon = (f64::from(site.horizon_hours) / h).round() as usize;
        let clear: Vec<Vec<f64>> = ds
            .plants
            .iter()
            .map(|p| forecast::clear_sky_series(&p.planes, site.lat, site.lon, &ds.cal))
            .collect();
        let total_load: Vec<f64> = (0..ds.cal.len)
            .map(|t| ds.load_kw.iter().map(|l| l[t]).sum())
            .collect();
        let total_pv: Vec<f64> = (0..ds.cal.len)
            .map(|t| ds.pv_kw.iter().map(|p| p[t]).sum())
            .collect();
        let peak_kw: f64 = ds.plants.iter().map(|p| p.kwp).sum();
        let init = DeviceState {
            soc: site.batteries.iter().map(|b| 0.5 * b.capacity).collect(),
            store: site.heat.iter().map(|u| 0.5 * u.capacity).collect(),
        };
        Replay {
            ds,
            site,
            begin,
            end,
            h,
            horizon,
            clear,
            total_load,
            total_pv,
            peak_kw,
            init,
        }
    }

    fn heat_demand(&self, t: usize) -> Vec<f64> {
        self.ds.heat_kw.iter().map(|s| s[t]).collect()
    }
}

/// One scenario's dispatch over the range: flows per step and the battery
/// energy at its ends.
pub(super) struct DispatchRun {
    pub(super) flows: Vec<StepFlows>,
    pub(super) soc_start: Vec<f64>,
    pub(super) soc_end: Vec<f64>,
}

/// The LP dispatch and what its loop measured on the way.
pub(super) struct LpOutcome {
    pub(super) run: DispatchRun,
    pub(super) solve: SolveStats,
    pub(super) forecast_errors: ForecastErrors,
    pub(super) tracking: TrackingDiagnosis,
}

/// The plan in force: its first step, the plan, and its PV minus load
/// forecast per step (the surplus it planned for, which tracking measures
/// the error against).
struct Current {
    t0: usize,
    plan: plan::Plan,
    planned_net: Vec<f64>,
}

/// The daemon's forecasts (`plan::site_input`) issued at each replan, and
/// their errors against the data: PV is clear sky per plant scaled by the
/// clearness measured on the last step, each load comes from a
/// [`SeriesHistory`] fed step by step as the replay advances, and heat demand
/// is the last step's held flat.
struct Forecaster {
    /// Each participant's measured load, as the daemon's planner keeps it.
    load_history: Vec<SeriesHistory>,
    /// The steps before this one are in `load_history`.
    fed_to: usize,
    err_pv: ErrorAccumulator,
    err_load: ErrorAccumulator,
    err_heat: ErrorAccumulator,
}

impl Forecaster {
    fn new(r: &Replay) -> Self {
        // The daemon's planner keeps three days of settlement periods.
        let capacity = 3 * 24 * 60 / r.ds.cal.grid.step_minutes() as usize;
        Forecaster {
            load_history: vec![SeriesHistory::new(capacity); r.ds.participants.len()],
            // The daemon would have been running before the range: its history
            // holds the days before it.
            fed_to: r.begin.saturating_sub(capacity),
            err_pv: ErrorAccumulator::default(),
            err_load: ErrorAccumulator::default(),
            err_heat: ErrorAccumulator::default(),
        }
    }

    /// Records the measured loads of the steps before `t`.
    fn feed(&mut self, r: &Replay, t: usize) {
        let ds = r.ds;
        for k in self.fed_to..t {
            let at = ds.cal.time(k);
            for (h, l) in self.load_history.iter_mut().zip(&ds.load_kw) {
                h.push(at, l[k]);
            }
        }
        self.fed_to = self.fed_to.max(t);
    }

    /// Heat demand forecast of each heat unit's substation from step `t`:
    /// what its heat meters read at the start of the step, held flat.
    fn heat(&mut self, r: &Replay, t: usize) -> Vec<Vec<f64>> {
        let ds = r.ds;
        let last = t.saturating_sub(1);
        r.site
            .heat
            .iter()
            .map(|u| {
                let now = ds.heat_kw[u.substation][last];
                let f = vec![if now.is_finite() { now } else { 0.0 }; r.horizon];
                score(&mut self.err_heat, &f, &ds.heat_kw[u.substation], t);
                f
            })
            .collect()
    }

    /// The district's PV forecast from step `t`: every plane of every plant
    /// through [`forecast::pv_forecast`], scaled by the clearness of the last
    /// step ([`forecast::measured_clearness`]).
    fn pv(&mut self, r: &Replay, t: usize) -> Vec<f64> {
        let (ds, site) = (r.ds, r.site);
        let last = t.saturating_sub(1);
        let measured: f64 = ds
            .pv_kw
            .iter()
            .map(|p| p[last])
            .filter(|x| x.is_finite())
            .sum();
        let clear: f64 = r.clear.iter().map(|c| c[last]).sum();
        let clearness = forecast::measured_clearness(measured, clear, ds.plants.len());
        let mut pv = vec![0.0; r.horizon];
        for plane in ds.plants.iter().flat_map(|p| &p.planes) {
            let f = forecast::pv_forecast(
                plane.kwp,
                plane.tilt_deg,
                plane.azimuth_deg,
                site.lat,
                site.lon,
                ds.cal.time(t),
                r.horizon,
                &ds.cal.grid,
                clearness,
            );
            pv.iter_mut().zip(&f).for_each(|(a, b)| *a += b);
        }
        score(&mut self.err_pv, &pv, &r.total_pv, t);
        pv
    }

    /// The plan input at step `t` from the forecasts and the storage state,
    /// with the planned PV minus load per step.
    fn plan_input(&mut self, r: &Replay, st: &DeviceState, t: usize) -> (PlanInput, Vec<f64>) {
        let (ds, site, h, horizon) = (r.ds, r.site, r.h, r.horizon);
        let demand_fc = self.heat(r, t);
        let pv = self.pv(r, t);
        let mut planned_net = pv.clone();
        self.feed(r, t);
        let last = t.saturating_sub(1);
        let participants = ds
            .participants
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut f = self.load_history[i].forecast(ds.cal.time(t), horizon, &ds.cal.grid);
                if f.iter().all(|x| *x == 0.0) {
                    // No history yet: hold the last step's load, as the daemon
                    // holds the meter's current power.
                    let now = ds.load_kw[i][last];
                    f = vec![if now.is_finite() { now.max(0.0) } else { 0.0 }; horizon];
                }
                score(&mut self.err_load, &f, &ds.load_kw[i], t);
                planned_net.iter_mut().zip(&f).for_each(|(a, b)| *a -= b);
                ParticipantForecast {
                    id: p.id.clone(),
                    load_kw: f,
                    tariff_eur_per_kwh: site.tariff[i],
                    priority: site.priority[i],
                    // The replay values energy at the flat tariff (TOU windows not replayed yet).
                    tariff_steps_eur_per_kwh: vec![],
                }
            })
            .collect();
        let input = PlanInput {
            start: ds.cal.time(t),
            step_hours: h,
            pv_kw: pv,
            participants,
            batteries: site
                .batteries
                .iter()
                .zip(&st.soc)
                .map(|(b, &soc)| BatteryModel {
                    id: b.id.clone(),
                    capacity_kwh: b.capacity,
                    soc_kwh: soc.clamp(0.0, b.capacity),
                    min_soc_kwh: b.floor,
                    max_charge_kw: b.max_charge,
                    max_discharge_kw: b.max_discharge,
                    charge_eff: BATTERY_CHARGE_EFFICIENCY,
                    discharge_eff: BATTERY_DISCHARGE_EFFICIENCY,
                    end_value_eur_per_kwh: site.local_price * BATTERY_END_VALUE_RATIO,
                })
                .collect(),
            heat: site
                .heat
                .iter()
                .zip(&st.store)
                .zip(&demand_fc)
                .map(|((u, &store), d)| HeatUnitModel {
                    id: u.id.clone(),
                    p2h_max_kw: u.max_kw,
                    efficiency: P2H_EFFICIENCY,
                    store_capacity_kwh: u.capacity,
                    store_kwh: store.clamp(0.0, u.capacity),
                    loss_ratio_per_hour: STORE_LOSS_PER_HOUR,
                    heat_demand_kw: d.iter().map(|x| x * STORE_SHARE_OF_DEMAND).collect(),
                    heat_price_eur_per_kwh: site.heat_price,
                    max_heat_kw: vec![],
                })
                .collect(),
            local_price_eur_per_kwh: site.local_price,
            export_price_eur_per_kwh: vec![site.export_price; horizon],
            import_price_eur_per_kwh: vec![site.import_price; horizon],
            device_participants: vec![],
        };
        (input, planned_net)
    }

    fn errors(&self) -> ForecastErrors {
        ForecastErrors {
            pv: self.err_pv.result(),
            consumption: self.err_load.result(),
            heat: self.err_heat.result(),
        }
    }
}

/// Whether step `t` needs a new plan: none yet, the plan is `replan_every`
/// steps old or used up, or the last step's PV missed its forecast by more
/// than the daemon tolerates.
fn replan_due(
    r: &Replay,
    current: Option<&Current>,
    t: usize,
    replan_every: usize,
) -> (bool, bool) {
    let Some(c) = current else {
        return (true, false);
    };
    let k = t - c.t0;
    let plan_len = c.plan.export_kwh.len().max(1);
    let (got, want) = (
        r.total_pv[t - 1],
        forecast_pv_at(&c.plan, k.saturating_sub(1)),
    );
    if k >= replan_every || k >= plan_len {
        (true, false)
    } else if forecast::pv_missed(got, want, r.peak_kw) {
        (true, true)
    } else {
        (false, false)
    }
}

/// Solves the plan at step `t`; an invalid input stops the run, any other
/// failure falls back to the rule-based plan, as the daemon does.
fn solve_at(
    r: &Replay,
    input: &PlanInput,
    t: usize,
    opts: &Options,
    solve_times: &mut Vec<f64>,
    stats: &mut SolveStats,
) -> Result<plan::Plan, BacktestError> {
    let solving = std::time::Instant::now();
    let p = match plan::solve(input, opts.budget) {
        Ok(p) => p,
        Err(e @ plan::PlanError::Invalid(_)) => {
            return Err(BacktestError::Plan {
                at: r.ds.cal.grid.format_local(r.ds.cal.time(t)),
                source: e,
            })
        }
        Err(e) => plan::rule_based(input, &e.to_string()),
    };
    solve_times.push(solving.elapsed().as_secs_f64());
    stats.solves += 1;
    match p.status {
        PlanStatus::Optimal => stats.optimal += 1,
        _ => stats.fallback += 1,
    }
    Ok(p)
}

/// Applies the plan's setpoints of step `t` (moved by the measured error when
/// tracking) to the device model, and counts them in the diagnosis.
fn apply_plan_step(
    r: &Replay,
    c: &Current,
    st: &mut DeviceState,
    t: usize,
    tracking: bool,
    diag: &mut TrackingDiagnosis,
) -> StepFlows {
    let (site, h) = (r.site, r.h);
    let k = t - c.t0;
    let bset: Vec<f64> = c
        .plan
        .battery_kw
        .iter()
        .map(|r| r.get(k).copied().unwrap_or(0.0))
        .collect();
    let hset: Vec<f64> = c
        .plan
        .p2h_kw
        .iter()
        .map(|r| r.get(k).copied().unwrap_or(0.0))
        .collect();
    let demand = r.heat_demand(t);
    let planned = c.planned_net.get(k).copied().unwrap_or(0.0);
    let measured = r.total_pv[t] - r.total_load[t];
    let (bset, hset) = if tracking {
        let tr = plan::track::track(
            &tracking_input(site, st, h, planned, measured, &demand, &bset, &hset).view(),
        );
        let moved: f64 = tr
            .battery_kw
            .iter()
            .zip(&bset)
            .chain(tr.p2h_kw.iter().zip(&hset))
            .map(|(a, b)| (a - b).abs())
            .sum();
        diag.setpoints_moved_kwh += moved * h;
        (tr.battery_kw, tr.p2h_kw)
    } else {
        (bset, hset)
    };
    let f = device_step(
        site,
        st,
        h,
        r.total_pv[t],
        r.total_load[t],
        &demand,
        &bset,
        &hset,
    );
    diag.add(site, st, h, planned, measured, &f);
    f
}

/// The `ped` dispatch (the expensive one): re-plans when due and applies
/// each step's setpoints to the actual data.
pub(super) fn lp_dispatch(r: &Replay, opts: &Options) -> Result<LpOutcome, BacktestError> {
    let ds = r.ds;
    let mut progress = Progress::new(opts.progress, r.end - r.begin);
    let mut solve_times = Vec::new();
    let mut stats = SolveStats::default();
    let mut forecaster = Forecaster::new(r);
    let mut st = r.init.clone();
    let mut flows = Vec::with_capacity(r.end - r.begin);
    let mut current: Option<Current> = None;
    let mut diag = TrackingDiagnosis {
        enabled: opts.tracking,
        ..Default::default()
    };
    for t in r.begin..r.end {
        let (due, on_miss) = replan_due(r, current.as_ref(), t, opts.replan_every);
        if on_miss {
            stats.replans_on_miss += 1;
        }
        if due {
            let (input, planned_net) = forecaster.plan_input(r, &st, t);
            let plan = solve_at(r, &input, t, opts, &mut solve_times, &mut stats)?;
            current = Some(Current {
                t0: t,
                plan,
                planned_net,
            });
        }
        let c = current
            .as_ref()
            .ok_or_else(|| BacktestError::Options("no plan".into()))?;
        flows.push(apply_plan_step(r, c, &mut st, t, opts.tracking, &mut diag));
        progress.update(
            t + 1 - r.begin,
            &ds.cal.grid.local_day(ds.cal.time(t)).to_string(),
        );
    }
    finish_solve_stats(&mut stats, solve_times);
    Ok(LpOutcome {
        run: DispatchRun {
            flows,
            soc_start: r.init.soc.clone(),
            soc_end: st.soc,
        },
        solve: stats,
        forecast_errors: forecaster.errors(),
        tracking: diag,
    })
}

fn finish_solve_stats(stats: &mut SolveStats, mut solve_times: Vec<f64>) {
    solve_times.sort_by(f64::total_cmp);
    stats.p50_s = percentile(&solve_times, 0.5);
    stats.p95_s = percentile(&solve_times, 0.95);
    stats.p99_s = percentile(&solve_times, 0.99);
    stats.max_s = solve_times.last().copied().unwrap_or(0.0);
    stats.mean_s = solve_times.iter().sum::<f64>() / solve_times.len().max(1) as f64;
}

/// A dispatch without a plan: greedy (charge on any surplus, discharge on
/// any deficit, P2H at full power) or idle storage.
pub(super) fn simple_dispatch(r: &Replay, mode: Dispatch) -> DispatchRun {
    let site = r.site;
    let mut st = r.init.clone();
    let flows = (r.begin..r.end)
        .map(|t| {
            let demand = r.heat_demand(t);
            let surplus = r.total_pv[t] - r.total_load[t];
            let (b, p): (Vec<f64>, Vec<f64>) = match mode {
                Dispatch::Greedy => (
                    site.batteries
                        .iter()
                        .map(|b| {
                            if surplus > 0.0 {
                                b.max_charge
                            } else {
                                -b.max_discharge
                            }
                        })
                        .collect(),
                    site.heat.iter().map(|u| u.max_kw).collect(),
                ),
                Dispatch::Idle => (vec![0.0; site.batteries.len()], vec![0.0; site.heat.len()]),
            };
            device_step(
                site,
                &mut st,
                r.h,
                r.total_pv[t],
                r.total_load[t],
                &demand,
                &b,
                &p,
            )
        })
        .collect();
    DispatchRun {
        flows,
        soc_start: r.init.soc.clone(),
        soc_end: st.soc,
    }
}

/// The consumers of the keys: the participants, then storage (batteries,
/// then P2H units), served last.
pub(super) struct KeyConsumers {
    pub(super) n_all: usize,
    pub(super) tariffs_all: Vec<f64>,
    pub(super) priority_all: Vec<u8>,
    /// Value of a kWh to each consumer: tariff − local price.
    pub(super) values_all: Vec<f64>,
}

impl KeyConsumers {
    pub(super) fn new(site: &Site, np: usize) -> Self {
        let nb = site.batteries.len();
        let nh = site.heat.len();
        // Storage is served last: tariff 0, the tier after the last participant's.
        let n_all = np + nb + nh;
        let tariffs_all: Vec<f64> = site
            .tariff
            .iter()
            .copied()
            .chain(std::iter::repeat(0.0).take(nb + nh))
            .collect();
        // One tier below the last participant's (a tier of 255 would make the
        // tier bonuses, and the rules' penalties above them, needlessly large).
        let storage_tier = site
            .priority
            .iter()
            .max()
            .copied()
            .unwrap_or(1)
            .saturating_add(1);
        let priority_all: Vec<u8> = site
            .priority
            .iter()
            .copied()
            .chain(std::iter::repeat(storage_tier).take(nb + nh))
            .collect();
        let values_all: Vec<f64> = tariffs_all.iter().map(|t| t - site.local_price).collect();
        KeyConsumers {
            n_all,
            tariffs_all,
            priority_all,
            values_all,
        }
    }

    /// The site's optimised keys, as the daemon computes them: each step
    /// solved as its month's next step, with the month so far.
    pub(super) fn month_solver(&self, site: &Site) -> Option<allocation::MonthSolverAllocator> {
        let storage = site.batteries.len() + site.heat.len();
        site.month_fairness
            .clone()
            .map(|fairness| allocation::MonthSolverAllocator {
                ids: (0..self.n_all).map(|i| format!("#{i}")).collect(),
                local_price_eur_per_kwh: site.local_price,
                export_price_eur_per_kwh: site.export_price,
                fairness,
                subscription_share: site
                    .static_share
                    .iter()
                    .map(|s| (*s > 0.0).then_some(*s))
                    .chain(std::iter::repeat(None).take(storage))
                    .collect(),
                month_to_date: Vec::new(),
                month_to_date_production_kwh: 0.0,
                budget: None,
            })
    }
}

/// One scenario: a dispatch scored with a key policy.
pub(super) struct Scenario<'a> {
    pub(super) name: &'static str,
    pub(super) run: &'a DispatchRun,
    pub(super) dispatch: &'static str,
    pub(super) policy: Policy,
    pub(super) keys: &'static str,
}

/// `ped` and its baselines, `ped` first and `dso_prorata` (the district
/// without ped) last.
pub(super) fn scenarios<'a>(
    site: &Site,
    consumers: &KeyConsumers,
    lp: &'a DispatchRun,
    greedy: &'a DispatchRun,
    idle: &'a DispatchRun,
) -> Vec<Scenario<'a>> {
    let storage = site.batteries.len() + site.heat.len();
    let site_policy = || -> Policy {
        match site.policy {
            KeyPolicy::Prorata => Policy::ProRata,
            KeyPolicy::Static => static_policy(site, storage),
            KeyPolicy::Optimised => Policy::Optimised {
                tariffs_eur_per_kwh: consumers.tariffs_all.clone(),
                priority: consumers.priority_all.clone(),
            },
        }
    };
    let policy_name = site.policy.as_str();
    let sc = |name, run, dispatch, policy, keys| Scenario {
        name,
        run,
        dispatch,
        policy,
        keys,
    };
    vec![
        sc("ped", lp, "lp", site_policy(), policy_name),
        sc("ped_prorata", lp, "lp", Policy::ProRata, "prorata"),
        sc(
            "static_keys",
            lp,
            "lp",
            static_policy(site, storage),
            "static",
        ),
        sc(
            "greedy_battery",
            greedy,
            "greedy",
            site_policy(),
            policy_name,
        ),
        sc("no_storage", idle, "none", site_policy(), policy_name),
        sc("dso_prorata", idle, "none", Policy::ProRata, "prorata"),
    ]
}

/// The plan's own PV expectation at step `k`: what it allocated, charged,
/// heated and exported must equal the PV plus discharge it assumed.
pub(super) fn forecast_pv_at(p: &plan::Plan, k: usize) -> f64 {
    let h = p.step_hours.max(1e-9);
    let alloc: f64 = p
        .allocation_kwh
        .iter()
        .map(|r| r.get(k).copied().unwrap_or(0.0))
        .sum();
    let export = p.export_kwh.get(k).copied().unwrap_or(0.0);
    let charge: f64 = p
        .battery_kw
        .iter()
        .map(|r| r.get(k).copied().unwrap_or(0.0))
        .sum();
    let heat: f64 = p
        .p2h_kw
        .iter()
        .map(|r| r.get(k).copied().unwrap_or(0.0))
        .sum();
    (alloc + export) / h + charge + heat
}

pub(super) fn score(acc: &mut ErrorAccumulator, forecast: &[f64], actual: &[f64], t0: usize) {
    let to = (t0 + forecast.len()).min(actual.len());
    if t0 < to {
        acc.add_series(forecast, &actual[t0..to]);
    }
}
