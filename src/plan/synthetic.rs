//! Reproducible synthetic instances of the district's size, for the
//! benchmarks and `ped plan --synthetic`: a PV bell over the day, participant
//! loads with a morning and an evening peak, time-of-use tariffs that differ
//! per participant, a tier of social housing served first, subscription
//! shares and the fairness rules on. A seed drives a small LCG so the same
//! arguments always give the same instance.

use chrono::{DateTime, Utc};

use super::{BatteryModel, DeviceParticipant, HeatUnitModel, ParticipantForecast, PlanInput};
use crate::allocation::solver::{AllocationParticipant, AllocationProblem, Fairness, MonthToDate};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn hour_of(step: usize, steps_per_day: usize) -> f64 {
    ((step % steps_per_day) as f64 + 0.5) * 24.0 / steps_per_day as f64
}

/// kW of a district of `participants` at a 15-minute step: PV sized so that
/// midday exceeds the load and mornings and evenings fall short.
fn pv_kw(step: usize, participants: usize) -> f64 {
    let x = (hour_of(step, 96) - 6.0) / 14.0;
    let day = step / 96;
    // Cloudier second day.
    let cloud = if day % 2 == 0 { 1.0 } else { 0.6 };
    if (0.0..=1.0).contains(&x) {
        1.6 * participants as f64 * cloud * (std::f64::consts::PI * x).sin()
    } else {
        0.0
    }
}

fn load_kw(rng: &mut Lcg, step: usize, base: f64, phase: f64) -> f64 {
    let h = hour_of(step, 96);
    let morning = (-((h - 7.5 - phase) / 1.5).powi(2)).exp();
    let evening = (-((h - 19.5 - phase) / 2.0).powi(2)).exp();
    base * (0.5 + 0.8 * morning + 1.2 * evening) * (0.8 + 0.4 * rng.next())
}

/// Peak 06:00–22:00, off-peak otherwise; the level differs per participant.
fn tariff(step: usize, level: f64) -> f64 {
    let h = hour_of(step, 96);
    if (6.0..22.0).contains(&h) {
        level
    } else {
        level * 0.75
    }
}

/// Allocation instance (15-minute steps, kWh).
pub fn allocation(participants: usize, steps: usize, seed: u64) -> AllocationProblem {
    let mut rng = Lcg(seed ^ 0x9e37_79b9_7f4a_7c15);
    let h = 0.25;
    let mut parts = Vec::with_capacity(participants);
    let bases: Vec<f64> = (0..participants).map(|_| 0.3 + 1.2 * rng.next()).collect();
    let total_base: f64 = bases.iter().sum();
    for (i, base) in bases.iter().enumerate() {
        let phase = rng.next() * 2.0 - 1.0;
        let level = 0.17 + 0.10 * rng.next();
        parts.push(AllocationParticipant {
            id: format!("p{i:04}"),
            consumption_kwh: (0..steps)
                .map(|t| load_kw(&mut rng, t, *base, phase) * h)
                .collect(),
            tariff_eur_per_kwh: (0..steps).map(|t| tariff(t, level)).collect(),
            tier: if i % 10 == 0 { 1 } else { 2 },
            subscription_share: Some(base / total_base),
            month_to_date: MonthToDate::default(),
        });
    }
    AllocationProblem {
        steps,
        production_kwh: (0..steps).map(|t| pv_kw(t, participants) * h).collect(),
        participants: parts,
        local_price_eur_per_kwh: 0.12,
        export_price_eur_per_kwh: vec![0.04; steps],
        month_to_date_production_kwh: 0.0,
        fairness: Fairness {
            floor_ratio: Some(0.2),
            no_worse_than_pro_rata: true,
            // Tier 1 first where that costs nobody its pro-rata value.
            tier_weight_eur_per_kwh: 0.3,
            ..Fairness::default()
        },
    }
}

/// The same instance with off-peak hours that overlap the PV: 22:00–06:00
/// and 12:00–16:00 (the shape of Enedis' 2025–2027 off-peak reform, which
/// moves part of the off-peak hours to the early afternoon). Each
/// participant keeps its peak level and its off-peak ratio. With night-only
/// off-peak hours ([`allocation`]) every step with production is a peak
/// step, so each participant's value is flat where it matters; here it is
/// not, and the pro-rata rows weigh the steps differently.
pub fn allocation_midday_off_peak(
    participants: usize,
    steps: usize,
    seed: u64,
) -> AllocationProblem {
    let mut p = allocation(participants, steps, seed);
    for q in &mut p.participants {
        let level = q.tariff_eur_per_kwh.iter().copied().fold(0.0_f64, f64::max);
        for (t, x) in q.tariff_eur_per_kwh.iter_mut().enumerate() {
            let h = hour_of(t, 96);
            let off_peak = !(6.0..22.0).contains(&h) || (12.0..16.0).contains(&h);
            *x = if off_peak { level * 0.75 } else { level };
        }
    }
    p
}

/// A dynamic tariff: each participant's tariff moved by up to ±2 % every
/// step (indexed on a spot price), so no two steps share their prices and
/// the values differ between congested steps: no network, the LP paths.
pub fn dynamic_tariffs(mut p: AllocationProblem) -> AllocationProblem {
    for q in &mut p.participants {
        for (t, x) in q.tariff_eur_per_kwh.iter_mut().enumerate() {
            *x *= 1.0 + 0.02 * (t as f64 * 0.7).sin();
        }
    }
    p
}

/// The names of the tariff variants of [`allocation_with_tariffs`].
pub const TARIFF_VARIANTS: [&str; 4] = ["night", "midday", "flat", "dynamic"];

/// The allocation instance with the named tariff variant (one of
/// [`TARIFF_VARIANTS`]): `night` ([`allocation`]), `midday`
/// ([`allocation_midday_off_peak`]), `flat` ([`flat_tariffs`]) or `dynamic`
/// ([`dynamic_tariffs`]). None for another name.
pub fn allocation_with_tariffs(
    tariffs: &str,
    participants: usize,
    steps: usize,
    seed: u64,
) -> Option<AllocationProblem> {
    Some(match tariffs {
        "night" => allocation(participants, steps, seed),
        "midday" => allocation_midday_off_peak(participants, steps, seed),
        "flat" => flat_tariffs(allocation(participants, steps, seed)),
        "dynamic" => dynamic_tariffs(allocation(participants, steps, seed)),
        _ => return None,
    })
}

/// Each participant's tariff replaced by its mean over the horizon (one
/// tariff per consumer, as `ped keys` values them).
pub fn flat_tariffs(mut p: AllocationProblem) -> AllocationProblem {
    for q in &mut p.participants {
        let n = q.tariff_eur_per_kwh.len().max(1) as f64;
        let mean = q.tariff_eur_per_kwh.iter().sum::<f64>() / n;
        q.tariff_eur_per_kwh.iter_mut().for_each(|x| *x = mean);
    }
    p
}

/// A real district's participants share a handful of retail offers
/// (`site-configs/fontaine-douche.toml` has four tariffs for 120
/// participants): the joint plan's participant takes the offer nearest its
/// random level, so the plan's value classes (see `plan::solve_lp_with`)
/// are as few as on a real site. The allocation instances keep their
/// continuous levels.
const RETAIL_OFFERS_EUR_PER_KWH: [f64; 4] = [0.1440, 0.1800, 0.2000, 0.2516];

fn retail_offer(level: f64) -> f64 {
    RETAIL_OFFERS_EUR_PER_KWH
        .iter()
        .copied()
        .min_by(|a, b| (a - level).abs().total_cmp(&(b - level).abs()))
        .unwrap_or(level)
}

/// Joint plan instance: the same district with `batteries` batteries and one
/// heat store with power-to-heat.
pub fn plan_input(participants: usize, steps: usize, batteries: usize, seed: u64) -> PlanInput {
    let a = allocation(participants, steps, seed);
    let start: DateTime<Utc> = DateTime::from_timestamp(1_750_456_800, 0).unwrap_or_default();
    let scale = participants as f64 / 120.0;
    PlanInput {
        start,
        step_hours: 0.25,
        pv_kw: a.production_kwh.iter().map(|e| e / 0.25).collect(),
        participants: a
            .participants
            .iter()
            .map(|p| ParticipantForecast {
                id: p.id.clone(),
                load_kw: p.consumption_kwh.iter().map(|e| e / 0.25).collect(),
                tariff_eur_per_kwh: retail_offer(p.tariff_eur_per_kwh[0]),
                priority: p.tier - 1,
                tariff_steps_eur_per_kwh: vec![],
            })
            .collect(),
        batteries: (0..batteries)
            .map(|k| BatteryModel {
                id: format!("bat-{}", k + 1),
                capacity_kwh: 200.0 * scale / (k + 1) as f64,
                soc_kwh: 60.0 * scale / (k + 1) as f64,
                min_soc_kwh: 20.0 * scale / (k + 1) as f64,
                max_charge_kw: 80.0 * scale / (k + 1) as f64,
                max_discharge_kw: 80.0 * scale / (k + 1) as f64,
                charge_eff: 0.95,
                discharge_eff: 0.95,
                end_value_eur_per_kwh: 0.10,
            })
            .collect(),
        heat: vec![HeatUnitModel {
            id: "p2h-1".into(),
            p2h_max_kw: 60.0 * scale,
            efficiency: 0.98,
            store_capacity_kwh: 300.0 * scale,
            store_kwh: 50.0 * scale,
            loss_ratio_per_hour: 0.005,
            heat_demand_kw: vec![25.0 * scale; steps],
            heat_price_eur_per_kwh: 0.09,
            max_heat_kw: vec![],
        }],
        local_price_eur_per_kwh: a.local_price_eur_per_kwh,
        export_price_eur_per_kwh: vec![0.04; steps],
        import_price_eur_per_kwh: vec![0.25; steps],
        // Storage and P2H are participants, as on the sample site: the
        // batteries at tariff 0 (no retail supply of their own), the P2H
        // unit at the local price, so its allocation is worth only the
        // tie-break and it heats as a plain device would.
        device_participants: (0..batteries)
            .map(|k| DeviceParticipant {
                id: format!("BAT-{:02}", k + 1),
                device: format!("bat-{}", k + 1),
                tariff_eur_per_kwh: 0.0,
                priority: 3,
                tariff_steps_eur_per_kwh: vec![],
            })
            .chain(std::iter::once(DeviceParticipant {
                id: "P2H-01".into(),
                device: "p2h-1".into(),
                tariff_eur_per_kwh: a.local_price_eur_per_kwh,
                priority: 3,
                tariff_steps_eur_per_kwh: vec![],
            }))
            .collect(),
    }
}
