//! Full dynamic keys: one coefficient per producer × consumer.

use std::collections::BinaryHeap;

use super::*;

/// Measured energies of one closed step, production per producer (a battery
/// is a producer with its discharge, 0 while it charges).
#[derive(Debug, Clone, PartialEq)]
pub struct FullStepInput {
    pub production_kwh: Vec<f64>,
    pub consumption_kwh: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FullStepKeys {
    /// `units[j][i]`: producer j's key for consumer i; each producer's row
    /// sums to at most `units_per_one`.
    pub units: Vec<Vec<u32>>,
    pub allocated_kwh: Vec<f64>,
    pub self_consumed_kwh: f64,
    pub surplus_kwh: f64,
    pub intended_kwh: Vec<f64>,
}

/// The DSO's rule for full dynamic keys: consumer i receives
/// `min(Σ_j key[j][i] × P_j, C_i)`.
pub fn apply_rule_full(
    units: &[Vec<u32>],
    precision: Precision,
    production_kwh: &[f64],
    consumption_kwh: &[f64],
) -> Vec<f64> {
    let share = precision.unit_share();
    let clean = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
    let mut got = vec![0.0; consumption_kwh.len()];
    for (row, &pj) in units.iter().zip(production_kwh) {
        let pj = clean(pj);
        for (g, &u) in got.iter_mut().zip(row) {
            *g += f64::from(u) * share * pj;
        }
    }
    got.iter()
        .zip(consumption_kwh)
        .map(|(&g, &c)| g.min(clean(c)))
        .collect()
}

/// Full dynamic keys that deliver `intended` (per consumer, on the pooled
/// production). Every producer starts from the floored pooled coefficient
/// `intended_i / P` — the same flows as a simple key — and then spends its
/// own residue (units left below 100 %) one unit at a time, largest producer
/// first: first on the largest remaining shortfall against `intended`, then,
/// if `redistribute`, on the largest unmet consumption. A unit of producer j is
/// worth `P_j / U` kWh, so with several producers the residue is finer than
/// with one pooled key and more of the flooring loss comes back. A producer
/// with nothing to share this step (a charging battery) gets an all-zero row.
pub fn full_keys_from_intended(
    input: &FullStepInput,
    intended: &[f64],
    precision: Precision,
    redistribute: bool,
) -> Result<FullStepKeys, AllocationError> {
    if precision.units_per_one == 0 {
        return Err(AllocationError::BadPrecision(0));
    }
    for &pj in &input.production_kwh {
        if !pj.is_finite() || pj < 0.0 {
            return Err(AllocationError::BadProduction(pj));
        }
    }
    let p: f64 = input.production_kwh.iter().sum();
    let pooled = StepInput {
        production_kwh: p,
        consumption_kwh: input.consumption_kwh.clone(),
    };
    let (p, c) = checked(&pooled, precision)?;
    let intended = clip_intended(p, c, intended)?;
    let n = c.len();
    let u_max = u64::from(precision.units_per_one);
    let share = precision.unit_share();
    let base: Vec<u32> = if p > 0.0 {
        intended
            .iter()
            .map(|&a| floor_units(a / p, precision))
            .collect()
    } else {
        vec![0; n]
    };
    let base_sum: u64 = base.iter().map(|&u| u64::from(u)).sum();
    // Flooring with EPS_UNITS can only overshoot a sum already at 100 %;
    // start then from plain floors, which cannot.
    let base = if base_sum > u_max {
        intended
            .iter()
            .map(|&a| ((a / p) * f64::from(precision.units_per_one)).floor() as u32)
            .collect()
    } else {
        base
    };
    let mut units: Vec<Vec<u32>> = input
        .production_kwh
        .iter()
        .map(|&pj| {
            if pj > EPS_KWH {
                base.clone()
            } else {
                vec![0; n]
            }
        })
        .collect();
    let mut received = vec![0.0; n];
    for (row, &pj) in units.iter().zip(&input.production_kwh) {
        for (r, &u) in received.iter_mut().zip(row) {
            *r += f64::from(u) * share * pj;
        }
    }
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| {
        input.production_kwh[b]
            .total_cmp(&input.production_kwh[a])
            .then(a.cmp(&b))
    });
    let targets: Vec<&[f64]> = if redistribute {
        vec![&intended, c]
    } else {
        vec![&intended]
    };
    for target in targets {
        for &j in &order {
            let pj = input.production_kwh[j];
            if pj <= EPS_KWH {
                continue;
            }
            let worth = pj * share;
            let used: u64 = units[j].iter().map(|&u| u64::from(u)).sum();
            let mut residue = u_max.saturating_sub(used);
            let mut heap = BinaryHeap::with_capacity(n);
            for i in 0..n {
                let gap = target[i] - received[i].min(c[i]);
                if gap > EPS_KWH {
                    heap.push(Need { kwh: gap, index: i });
                }
            }
            while residue > 0 {
                let Some(Need { index, .. }) = heap.pop() else {
                    break;
                };
                units[j][index] += 1;
                received[index] += worth;
                residue -= 1;
                let gap = target[index] - received[index].min(c[index]);
                if gap > EPS_KWH {
                    heap.push(Need { kwh: gap, index });
                }
            }
        }
    }
    let allocated = apply_rule_full(&units, precision, &input.production_kwh, c);
    let self_consumed: f64 = allocated.iter().sum();
    Ok(FullStepKeys {
        units,
        allocated_kwh: allocated,
        self_consumed_kwh: self_consumed,
        surplus_kwh: (p - self_consumed).max(0.0),
        intended_kwh: intended,
    })
}
