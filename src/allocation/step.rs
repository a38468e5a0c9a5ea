//! The step rules: each policy's intended allocation of one step, and its keys.

use super::*;

/// The DSO's rule: `min(key × P, C_i)` per consumer.
pub fn apply_rule(
    units: &[u32],
    precision: Precision,
    production_kwh: f64,
    consumption_kwh: &[f64],
) -> Vec<f64> {
    let p = if production_kwh.is_finite() {
        production_kwh.max(0.0)
    } else {
        0.0
    };
    let share = precision.unit_share();
    units
        .iter()
        .zip(consumption_kwh)
        .map(|(&u, &c)| {
            let c = if c.is_finite() { c.max(0.0) } else { 0.0 };
            (f64::from(u) * share * p).min(c)
        })
        .collect()
}

/// Sum of keys must not exceed 100 %.
pub fn validate_units(units: &[u32], precision: Precision) -> Result<(), AllocationError> {
    let sum: u64 = units.iter().map(|&u| u64::from(u)).sum();
    if sum > u64::from(precision.units_per_one) {
        return Err(AllocationError::SumOver100 {
            sum,
            units_per_one: precision.units_per_one,
        });
    }
    Ok(())
}

/// Keys of one step under `policy`. NaN or negative measurements are an error:
/// the caller decides how to sanitise them (see [`keys_for_step_sanitised`]).
/// A policy that does not fit the step (wrong length, invalid shares) falls
/// back to pro rata and says why in `fallback`, so a step always gets keys.
pub fn keys_for_step(
    input: &StepInput,
    policy: &Policy,
    precision: Precision,
) -> Result<StepKeys, AllocationError> {
    keys_for_step_with(input, policy, precision, None)
}

/// [`keys_for_step`] as one step of a month: the step's rounding residue goes
/// first to the participants the month's rounding owes most (`carry`, updated
/// with this step's own remainders). Static keys are declared shares and
/// leave `carry` as it is.
pub fn keys_for_step_carried(
    input: &StepInput,
    policy: &Policy,
    precision: Precision,
    carry: &mut Remainders,
) -> Result<StepKeys, AllocationError> {
    carry.fit(input.consumption_kwh.len());
    keys_for_step_with(input, policy, precision, Some(carry))
}

pub(super) fn keys_for_step_with(
    input: &StepInput,
    policy: &Policy,
    precision: Precision,
    carry: Option<&mut Remainders>,
) -> Result<StepKeys, AllocationError> {
    let (p, c) = checked(input, precision)?;
    let n = c.len();

    let (intended, redistribute, fallback) = match policy {
        Policy::ProRata => (pro_rata(p, c), true, None),
        Policy::Static(shares) => match check_static(shares, n) {
            Ok(()) => {
                let units = shares
                    .iter()
                    .map(|&s| floor_units(s, precision))
                    .collect::<Vec<_>>();
                // Static keys are what the PMO declared: no redistribution.
                return Ok(finish(
                    p,
                    c,
                    units,
                    static_intended(shares, p, c),
                    None,
                    precision,
                ));
            }
            Err(why) => (pro_rata(p, c), true, Some(why)),
        },
        Policy::Optimised {
            tariffs_eur_per_kwh,
            priority,
        } => {
            if tariffs_eur_per_kwh.len() != n || priority.len() != n {
                let why = format!(
                    "optimised policy has {} tariffs and {} priorities for {} consumers",
                    tariffs_eur_per_kwh.len(),
                    priority.len(),
                    n
                );
                (pro_rata(p, c), true, Some(why))
            } else if let Some(i) = tariffs_eur_per_kwh.iter().position(|t| !t.is_finite()) {
                let why = format!("tariff of consumer #{i} is not finite");
                (pro_rata(p, c), true, Some(why))
            } else {
                (water_fill(p, c, tariffs_eur_per_kwh, priority), true, None)
            }
        }
    };
    let units = quantise(&intended, p, c, precision, redistribute, carry);
    Ok(finish(p, c, units, intended, fallback, precision))
}

/// Replaces NaN and negative measurements by 0, computes pro-rata keys and
/// flags the step, so a broken meter never blocks a month's key file.
pub fn keys_for_step_sanitised(
    input: &StepInput,
    policy: &Policy,
    precision: Precision,
) -> Result<StepKeys, AllocationError> {
    match keys_for_step(input, policy, precision) {
        Err(AllocationError::BadProduction(_)) | Err(AllocationError::BadConsumption { .. }) => {
            let clean = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
            let sane = StepInput {
                production_kwh: clean(input.production_kwh),
                consumption_kwh: input.consumption_kwh.iter().map(|&v| clean(v)).collect(),
            };
            let mut keys = keys_for_step(&sane, &Policy::ProRata, precision)?;
            keys.fallback = Some("invalid measurements (NaN or negative) replaced by 0".into());
            Ok(keys)
        }
        other => other,
    }
}

pub(super) fn check_static(shares: &[f64], n: usize) -> Result<(), String> {
    if shares.len() != n {
        return Err(format!(
            "static policy has {} shares for {} consumers",
            shares.len(),
            n
        ));
    }
    if let Some(i) = shares.iter().position(|s| !s.is_finite() || *s < 0.0) {
        return Err(format!(
            "static share of consumer #{i} is negative or not finite"
        ));
    }
    let sum: f64 = shares.iter().sum();
    if sum > 1.0 + 1e-9 {
        return Err(format!("static shares sum to {sum}, more than 1"));
    }
    Ok(())
}

pub(super) fn static_intended(shares: &[f64], p: f64, c: &[f64]) -> Vec<f64> {
    shares
        .iter()
        .zip(c)
        .map(|(s, &ci)| (s * p).min(ci))
        .collect()
}

pub(super) fn pro_rata(p: f64, c: &[f64]) -> Vec<f64> {
    let total: f64 = c.iter().sum();
    if total <= 0.0 || p <= 0.0 {
        return vec![0.0; c.len()];
    }
    let ratio = (p / total).min(1.0);
    c.iter().map(|ci| ci * ratio).collect()
}

/// Greedy water-filling: tiers by ascending priority number, inside a tier by
/// descending tariff; consumers equal on both share pro rata.
pub(super) fn water_fill(p: f64, c: &[f64], tariffs: &[f64], priority: &[u8]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..c.len()).collect();
    order.sort_by(|&a, &b| {
        priority[a]
            .cmp(&priority[b])
            .then(tariffs[b].total_cmp(&tariffs[a]))
            .then(a.cmp(&b))
    });
    let mut out = vec![0.0; c.len()];
    let mut left = p;
    let mut k = 0;
    while k < order.len() && left > 0.0 {
        let head = order[k];
        let mut end = k;
        while end < order.len()
            && priority[order[end]] == priority[head]
            && tariffs[order[end]] == tariffs[head]
        {
            end += 1;
        }
        let group = &order[k..end];
        let need: f64 = group.iter().map(|&i| c[i]).sum();
        if need > 0.0 {
            let give = need.min(left);
            for &i in group {
                out[i] = c[i] * (give / need);
            }
            left -= give;
        }
        k = end;
    }
    out
}

/// Keys of one step for an allocation decided elsewhere (a month solver, a
/// replayed plan): `intended` is clipped to what the DSO's rule can give
/// (each consumer's consumption, the production in total) and quantised like
/// every policy, residue included.
pub fn keys_from_intended(
    input: &StepInput,
    intended: &[f64],
    precision: Precision,
) -> Result<StepKeys, AllocationError> {
    let (p, c) = checked(input, precision)?;
    let intended = clip_intended(p, c, intended)?;
    let units = quantise(&intended, p, c, precision, true, None);
    Ok(finish(p, c, units, intended, None, precision))
}

/// [`keys_from_intended`] as one step of a month (see [`keys_for_step_carried`]).
pub fn keys_from_intended_carried(
    input: &StepInput,
    intended: &[f64],
    precision: Precision,
    carry: &mut Remainders,
) -> Result<StepKeys, AllocationError> {
    let (p, c) = checked(input, precision)?;
    let intended = clip_intended(p, c, intended)?;
    carry.fit(c.len());
    let units = quantise(&intended, p, c, precision, true, Some(carry));
    Ok(finish(p, c, units, intended, None, precision))
}

pub(super) fn checked(
    input: &StepInput,
    precision: Precision,
) -> Result<(f64, &[f64]), AllocationError> {
    if precision.units_per_one == 0 {
        return Err(AllocationError::BadPrecision(0));
    }
    let p = input.production_kwh;
    if !p.is_finite() || p < 0.0 {
        return Err(AllocationError::BadProduction(p));
    }
    for (index, &value) in input.consumption_kwh.iter().enumerate() {
        if !value.is_finite() || value < 0.0 {
            return Err(AllocationError::BadConsumption { index, value });
        }
    }
    Ok((p, &input.consumption_kwh))
}

/// An intended allocation the rule can actually deliver: within `[0, C_i]`
/// each, and scaled down if it promises more than the production.
pub(super) fn clip_intended(
    p: f64,
    c: &[f64],
    intended: &[f64],
) -> Result<Vec<f64>, AllocationError> {
    if intended.len() != c.len() {
        return Err(AllocationError::Length {
            expected: c.len(),
            got: intended.len(),
        });
    }
    let mut out: Vec<f64> = intended
        .iter()
        .zip(c)
        .map(|(&a, &ci)| if a.is_finite() { a.clamp(0.0, ci) } else { 0.0 })
        .collect();
    let total: f64 = out.iter().sum();
    if total > p && total > 0.0 {
        let r = p / total;
        out.iter_mut().for_each(|a| *a *= r);
    }
    Ok(out)
}

/// The intended allocation of a step under `policy` (before quantisation), or
/// why the policy does not fit the step.
pub fn intended_for_step(p: f64, c: &[f64], policy: &Policy) -> Result<Vec<f64>, String> {
    match policy {
        Policy::ProRata => Ok(pro_rata(p, c)),
        Policy::Static(shares) => {
            check_static(shares, c.len())?;
            Ok(static_intended(shares, p, c))
        }
        Policy::Optimised {
            tariffs_eur_per_kwh,
            priority,
        } => {
            if tariffs_eur_per_kwh.len() != c.len() || priority.len() != c.len() {
                return Err(format!(
                    "optimised policy has {} tariffs and {} priorities for {} consumers",
                    tariffs_eur_per_kwh.len(),
                    priority.len(),
                    c.len()
                ));
            }
            if let Some(i) = tariffs_eur_per_kwh.iter().position(|t| !t.is_finite()) {
                return Err(format!("tariff of consumer #{i} is not finite"));
            }
            Ok(water_fill(p, c, tariffs_eur_per_kwh, priority))
        }
    }
}
