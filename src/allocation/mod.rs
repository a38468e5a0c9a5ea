//! Ex-post allocation keys for one closed settlement period.
//!
//! The DSO applies, per step and consumer, `allocated_i = min(key_i × P, C_i)`
//! where `P` is the pooled production (PV plus battery discharge) and `C_i` the
//! consumer's measured consumption (charging batteries and power-to-heat units
//! are consumers too). Keys leave ped as integers in units of a [`Precision`]
//! (1000 units = 100 % at 0.1 %), so every policy ends with the same
//! quantisation: floor, then hand the residue to whoever can still absorb it.
//!
//! Degenerate steps are valid and defined (pro rata and optimised; static
//! keys stay the declared shares whatever the step):
//! - zero production: every key is 0 (no key changes the outcome, and all-zero
//!   rows make such steps easy to spot in the exported files);
//! - zero total consumption: every key is 0 and all production is surplus.
//!
//! Energies are in kWh for the step.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

pub mod flow;
pub mod solver;

/// Energies below this are treated as zero: measured kWh carry far fewer
/// significant digits, and floating error must not buy a key unit.
const EPS_KWH: f64 = 1e-9;
/// Slack when turning an exact share into units, so `0.3 × 1000` computed as
/// `299.99999999` still floors to 300.
const EPS_UNITS: f64 = 1e-7;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AllocationError {
    #[error("production of the step must be finite and >= 0 kWh (got {0})")]
    BadProduction(f64),
    #[error("consumption of consumer #{index} must be finite and >= 0 kWh (got {value})")]
    BadConsumption { index: usize, value: f64 },
    #[error("keys sum to {sum} units, more than 100 % ({units_per_one} units)")]
    SumOver100 { sum: u64, units_per_one: u32 },
    #[error("{got} keys for {expected} consumers")]
    Length { expected: usize, got: usize },
    #[error("precision must be a power of ten of at least 100 units per one (got {0})")]
    BadPrecision(u32),
    #[error("policy does not fit the participants: {0}")]
    Policy(String),
}

/// Export precision of the keys: `units_per_one` integer units make 100 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    pub units_per_one: u32,
}

impl Default for Precision {
    /// 0.01 %: the two decimals of a percent of the only real Enedis key file
    /// found in public. At 0.1 % a household's share in a large operation is
    /// often below one unit.
    fn default() -> Self {
        Precision {
            units_per_one: 10_000,
        }
    }
}

impl Precision {
    /// Only powers of ten map to a fixed number of decimals in a percent value.
    pub fn new(units_per_one: u32) -> Result<Self, AllocationError> {
        let p = Precision { units_per_one };
        p.percent_decimals()
            .map(|_| p)
            .ok_or(AllocationError::BadPrecision(units_per_one))
    }

    /// Decimals of a key written in percent: 1 at 1000 units, 2 at 10000.
    /// `None` when `units_per_one` is not 10^k with k >= 2.
    pub fn percent_decimals(&self) -> Option<u32> {
        let mut u = self.units_per_one;
        let mut k = 0u32;
        while u >= 10 && u % 10 == 0 {
            u /= 10;
            k += 1;
        }
        (u == 1 && k >= 2).then(|| k - 2)
    }

    fn unit_share(&self) -> f64 {
        1.0 / f64::from(self.units_per_one.max(1))
    }
}

/// How a step's production is meant to be shared.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Pro rata of consumption: the DSO's default, already maximal in total.
    ProRata,
    /// Fixed shares per consumer (sum <= 1); what a consumer cannot use is surplus.
    Static(Vec<f64>),
    /// Priority tiers first (a lower number is served first), then higher
    /// tariff first inside a tier, equal tariffs pro rata.
    Optimised {
        tariffs_eur_per_kwh: Vec<f64>,
        priority: Vec<u8>,
    },
}

/// Measured energies of one closed step; consumers in a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInput {
    pub production_kwh: f64,
    pub consumption_kwh: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepKeys {
    /// Exported key per consumer, sum <= `units_per_one`.
    pub units: Vec<u32>,
    /// What the DSO rule gives with these exported keys.
    pub allocated_kwh: Vec<f64>,
    pub self_consumed_kwh: f64,
    /// production − self_consumed, >= 0.
    pub surplus_kwh: f64,
    /// Allocation the policy wanted before quantisation.
    pub intended_kwh: Vec<f64>,
    /// Why the step fell back to pro rata, if it did.
    pub fallback: Option<String>,
}

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

fn keys_for_step_with(
    input: &StepInput,
    policy: &Policy,
    precision: Precision,
    carry: Option<&mut Remainders>,
) -> Result<StepKeys, AllocationError> {
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
    let c = &input.consumption_kwh;
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

fn check_static(shares: &[f64], n: usize) -> Result<(), String> {
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

fn static_intended(shares: &[f64], p: f64, c: &[f64]) -> Vec<f64> {
    shares
        .iter()
        .zip(c)
        .map(|(s, &ci)| (s * p).min(ci))
        .collect()
}

fn pro_rata(p: f64, c: &[f64]) -> Vec<f64> {
    let total: f64 = c.iter().sum();
    if total <= 0.0 || p <= 0.0 {
        return vec![0.0; c.len()];
    }
    let ratio = (p / total).min(1.0);
    c.iter().map(|ci| ci * ratio).collect()
}

/// Greedy water-filling: tiers by ascending priority number, inside a tier by
/// descending tariff; consumers equal on both share pro rata.
fn water_fill(p: f64, c: &[f64], tariffs: &[f64], priority: &[u8]) -> Vec<f64> {
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

fn floor_units(share: f64, precision: Precision) -> u32 {
    let u = (share * f64::from(precision.units_per_one) + EPS_UNITS).floor();
    // Shares are in 0..=1 here, so the cast cannot saturate in practice.
    u.clamp(0.0, f64::from(precision.units_per_one)) as u32
}

/// Energy a consumer gets from `u` units.
fn served(u: u32, p: f64, ci: f64, precision: Precision) -> f64 {
    (f64::from(u) * precision.unit_share() * p).min(ci)
}

#[derive(PartialEq)]
struct Need {
    kwh: f64,
    index: usize,
}
impl Eq for Need {}
impl Ord for Need {
    fn cmp(&self, other: &Self) -> Ordering {
        // Largest need first; on ties the lower index, so results are deterministic.
        self.kwh
            .total_cmp(&other.kwh)
            .then(other.index.cmp(&self.index))
    }
}
impl PartialOrd for Need {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Floors the coefficients that give `intended`, then spends the residue
/// (units left below 100 %) in two passes: first to restore each consumer's
/// intended energy (largest shortfall first: in a surplus step this turns a
/// floored `C_i/P` into its ceiling), then, if `redistribute`, to whoever can
/// still absorb energy, largest unmet need first. Giving one more unit to a
/// consumer never takes energy from another, so both passes only add
/// self-consumption, and the sum stays <= 100 %.
fn quantise(
    intended: &[f64],
    p: f64,
    c: &[f64],
    precision: Precision,
    redistribute: bool,
    carry: Option<&mut Remainders>,
) -> Vec<u32> {
    let n = c.len();
    if p <= 0.0 {
        // No production: nothing intended, nothing served, nothing carried.
        return vec![0; n];
    }
    let mut units: Vec<u32> = intended
        .iter()
        .map(|&a| floor_units(a / p, precision))
        .collect();
    let used: u64 = units.iter().map(|&u| u64::from(u)).sum();
    let mut residue = u64::from(precision.units_per_one).saturating_sub(used);
    // Flooring can overshoot only through EPS_UNITS on a sum already at 100 %;
    // take units back from the largest keys, which lose the least relatively.
    let mut over = used.saturating_sub(u64::from(precision.units_per_one));
    while over > 0 {
        if let Some((i, _)) = units.iter().enumerate().max_by_key(|(_, &u)| u) {
            units[i] -= 1;
        }
        over -= 1;
    }

    match carry {
        Some(carry) => {
            let fair = pro_rata(p, c);
            spend_carried(
                &mut units,
                &mut residue,
                intended,
                &fair,
                p,
                c,
                precision,
                carry,
            );
            for i in 0..n {
                let got = served(units[i], p, c[i], precision);
                carry.kwh[i] += intended[i] - got;
                carry.behind_pro_rata_kwh[i] += fair[i] - got;
                carry.pro_rata_kwh[i] += fair[i];
            }
        }
        None if redistribute => {
            spend_for_energy(&mut units, &mut residue, intended, p, c, precision)
        }
        None => spend_residue(&mut units, &mut residue, intended, p, c, precision),
    }
    units
}

/// How far behind exact pro rata a participant may fall over the month so
/// far before the residue goes to it first: max(GUARD_KWH, GUARD_SHARE of its
/// pro-rata energy so far). Below it, units go where they waste least; the
/// DSO's rule is checked at max(0.1 kWh, 0.5 %) of the month.
const GUARD_KWH: f64 = 0.03;
const GUARD_SHARE: f64 = 0.002;

/// Gives residue units one at a time, in three tiers, to whoever the month
/// owes most:
///
/// 1. participants behind exact pro rata over the month so far by more than
///    the guard, once the energy a unit would waste is counted against
///    them, by that shortfall relative to their month: the guarantee that
///    nobody ends the month worse off than under the DSO's default rule;
/// 2. then units that give a full unit of energy, to whoever is furthest
///    below its intended month (carried remainder plus this step's gap);
/// 3. then units that give only part of one (a consumer within a unit of its
///    consumption), to whoever it gives the most energy.
///
/// A floor loses each participant less than one unit a step, and the
/// residue is those fractions summed: handing it out by the running
/// remainder (error diffusion) keeps every participant's month close to its
/// intended energy. Handing it out for the largest energy gain instead
/// favours the consumers a whole unit fits in, step after step, and a
/// household whose pro-rata share is below one unit would get nothing all
/// month. Putting whole units before partial ones matters once an intended
/// allocation serves many consumers in full (the month solver's): a unit
/// that tops up such a consumer wastes most of itself, the energy it wastes
/// is taken from everyone else's month, and by remainder alone those
/// consumers win the residue often, pushing participants held at their
/// pro-rata guarantee below it. They are already above pro rata, so
/// tier 1 still serves them if they ever fall behind it.
#[allow(clippy::too_many_arguments)]
fn spend_carried(
    units: &mut [u32],
    residue: &mut u64,
    intended: &[f64],
    fair: &[f64],
    p: f64,
    c: &[f64],
    precision: Precision,
    carry: &Remainders,
) {
    let full = precision.unit_share() * p;
    let owed = |units: &[u32], i: usize| -> Option<Owed> {
        let now = served(units[i], p, c[i], precision);
        let gain = served(units[i] + 1, p, c[i], precision) - now;
        if gain <= EPS_KWH {
            return None;
        }
        let waste = full - gain;
        let behind = carry.behind_pro_rata_kwh[i] + fair[i] - now - waste;
        let whole = gain >= full * (1.0 - 1e-9);
        let entitled = carry.pro_rata_kwh[i] + fair[i];
        let guard = GUARD_KWH.max(GUARD_SHARE * entitled);
        let (tier, kwh) = if behind > guard {
            // Relative to the month's entitlement so far: the energy no
            // rounding can place then costs every participant about the same
            // share of its month, not the same kWh, which would be a large
            // share of a small household's.
            (2, behind / entitled.max(full))
        } else if whole {
            (1, carry.kwh[i] + intended[i] - now)
        } else {
            // Whoever a unit gives the most energy, so the least is wasted.
            (0, gain)
        };
        Some(Owed {
            tier,
            kwh,
            gain,
            index: i,
        })
    };
    let mut heap: BinaryHeap<Owed> = (0..units.len()).filter_map(|i| owed(units, i)).collect();
    while *residue > 0 {
        let Some(Owed { index, .. }) = heap.pop() else {
            break;
        };
        units[index] += 1;
        *residue -= 1;
        if let Some(o) = owed(units, index) {
            heap.push(o);
        }
    }
}

#[derive(PartialEq)]
struct Owed {
    tier: u8,
    kwh: f64,
    gain: f64,
    index: usize,
}
impl Eq for Owed {}
impl Ord for Owed {
    fn cmp(&self, other: &Self) -> Ordering {
        self.tier
            .cmp(&other.tier)
            .then(self.kwh.total_cmp(&other.kwh))
            .then(self.gain.total_cmp(&other.gain))
            .then(other.index.cmp(&self.index))
    }
}
impl PartialOrd for Owed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Each participant's rounding remainders over the month so far, kWh,
/// indexed like the step's consumers and reset at each local month.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Remainders {
    /// The energy its intended allocation promised minus what the DSO's rule
    /// gave with the exported keys (positive: the month owes it).
    pub kwh: Vec<f64>,
    /// Exact pro rata minus what the DSO's rule gave (positive: behind the
    /// DSO's default so far this month).
    #[serde(default)]
    pub behind_pro_rata_kwh: Vec<f64>,
    /// Exact pro rata so far this month: what the shortfall is measured
    /// against.
    #[serde(default)]
    pub pro_rata_kwh: Vec<f64>,
}

impl Remainders {
    pub fn new(participants: usize) -> Self {
        Remainders {
            kwh: vec![0.0; participants],
            behind_pro_rata_kwh: vec![0.0; participants],
            pro_rata_kwh: vec![0.0; participants],
        }
    }

    /// Sized for `participants` (a new participant starts owed nothing).
    pub fn fit(&mut self, participants: usize) {
        self.kwh.resize(participants, 0.0);
        self.behind_pro_rata_kwh.resize(participants, 0.0);
        self.pro_rata_kwh.resize(participants, 0.0);
    }
}

/// Gives residue units one at a time where a unit adds the most energy under
/// the DSO's rule (`min(unit × P, C_i − served_i)`); among equal gains, to the
/// participant furthest below its intended energy, then the lower index.
///
/// Every floored unit already yields a full unit of energy (a floor never
/// exceeds the intended energy, which is at most `C_i`), and `served` is
/// concave in the units, so this greedy reaches the largest self-consumption
/// any key vector can give at this precision, whatever the policy: the
/// exported keys of an optimised step never self-consume less than pro
/// rata's. Restoring the intended share first instead (what
/// [`spend_residue`] does) spends units on consumers the intended allocation
/// caps at their consumption, where a unit is mostly wasted: with 1,000
/// participants at 0.1 % that cost a few per cent of self-consumption.
/// Nobody ends more than one unit below its intended energy either way.
fn spend_for_energy(
    units: &mut [u32],
    residue: &mut u64,
    intended: &[f64],
    p: f64,
    c: &[f64],
    precision: Precision,
) {
    let full = precision.unit_share() * p;
    let key = |units: &[u32], i: usize| -> Option<Gain> {
        let now = served(units[i], p, c[i], precision);
        let gain = served(units[i] + 1, p, c[i], precision) - now;
        // Float noise must not decide between two full units.
        let gain = if gain >= full * (1.0 - 1e-9) {
            full
        } else {
            gain
        };
        (gain > EPS_KWH).then_some(Gain {
            kwh: gain,
            gap: intended[i] - now,
            index: i,
        })
    };
    let mut heap: BinaryHeap<Gain> = (0..units.len()).filter_map(|i| key(units, i)).collect();
    while *residue > 0 {
        let Some(Gain { index, .. }) = heap.pop() else {
            break;
        };
        units[index] += 1;
        *residue -= 1;
        if let Some(g) = key(units, index) {
            heap.push(g);
        }
    }
}

#[derive(PartialEq)]
struct Gain {
    kwh: f64,
    gap: f64,
    index: usize,
}
impl Eq for Gain {}
impl Ord for Gain {
    fn cmp(&self, other: &Self) -> Ordering {
        self.kwh
            .total_cmp(&other.kwh)
            .then(self.gap.total_cmp(&other.gap))
            .then(other.index.cmp(&self.index))
    }
}
impl PartialOrd for Gain {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Gives residue units one at a time to the participant furthest below
/// `target` (kWh), until the residue or the gaps run out.
fn spend_residue(
    units: &mut [u32],
    residue: &mut u64,
    target: &[f64],
    p: f64,
    c: &[f64],
    precision: Precision,
) {
    let gap = |units: &[u32], i: usize| target[i] - served(units[i], p, c[i], precision);
    let mut heap = BinaryHeap::with_capacity(units.len());
    for i in 0..units.len() {
        let g = gap(units, i);
        if g > EPS_KWH {
            heap.push(Need { kwh: g, index: i });
        }
    }
    while *residue > 0 {
        let Some(Need { index, .. }) = heap.pop() else {
            break;
        };
        units[index] += 1;
        *residue -= 1;
        let g = gap(units, index);
        if g > EPS_KWH {
            heap.push(Need { kwh: g, index });
        }
    }
}

fn finish(
    p: f64,
    c: &[f64],
    units: Vec<u32>,
    intended: Vec<f64>,
    fallback: Option<String>,
    precision: Precision,
) -> StepKeys {
    let allocated = apply_rule(&units, precision, p, c);
    let self_consumed: f64 = allocated.iter().sum();
    StepKeys {
        units,
        allocated_kwh: allocated,
        self_consumed_kwh: self_consumed,
        surplus_kwh: (p - self_consumed).max(0.0),
        intended_kwh: intended,
        fallback,
    }
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

fn checked(input: &StepInput, precision: Precision) -> Result<(f64, &[f64]), AllocationError> {
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
fn clip_intended(p: f64, c: &[f64], intended: &[f64]) -> Result<Vec<f64>, AllocationError> {
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

// ---------------------------------------------------------------------------
// Full dynamic keys: one coefficient per producer × consumer.

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

// ---------------------------------------------------------------------------
// A month (or any run of steps) at once.

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
    /// Fairness rules the solved month could not meet (`rule participant amount unit`).
    pub violations: Vec<String>,
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
            violations: sol
                .violations
                .iter()
                .map(|v| format!("{} {} {:.6} {}", v.rule, v.participant, v.amount, v.unit))
                .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 0.1 %: these cases were worked out at one decimal of a percent.
    const TENTH: Precision = Precision {
        units_per_one: 1000,
    };
    use proptest::prelude::*;

    /// A small month where tier 1 would starve tier 2 without the pro-rata
    /// row: `n` participants over `steps` quarter-hours, a midday bell.
    fn small_month(
        n: usize,
        steps: usize,
        seed: u64,
    ) -> (Vec<f64>, Vec<Vec<f64>>, Vec<f64>, Vec<u8>) {
        let mut s = seed;
        let mut rnd = move || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let prod = (0..steps)
            .map(|t| {
                let x = (t % 96) as f64 / 96.0;
                let sun = (std::f64::consts::PI * x).sin().max(0.0);
                n as f64 * 0.3 * sun * (0.5 + rnd())
            })
            .collect();
        let cons = (0..steps)
            .map(|_| (0..n).map(|_| 0.05 + 0.4 * rnd()).collect())
            .collect();
        let tariffs = (0..n).map(|_| 0.16 + 0.12 * rnd()).collect();
        let prio = (0..n).map(|i| 1 + (i % 3) as u8).collect();
        (prod, cons, tariffs, prio)
    }

    fn month_solver(n: usize, budget: Option<std::time::Duration>) -> MonthSolverAllocator {
        MonthSolverAllocator {
            ids: (0..n).map(|i| format!("P{i}")).collect(),
            local_price_eur_per_kwh: 0.10,
            export_price_eur_per_kwh: 0.06,
            fairness: crate::allocation::solver::Fairness {
                floor_ratio: Some(0.5),
                ..Default::default()
            },
            subscription_share: vec![Some(1.0 / n as f64); n],
            month_to_date: Vec::new(),
            month_to_date_production_kwh: 0.0,
            budget,
        }
    }

    #[test]
    fn month_solver_matches_the_generic_lp_and_keeps_pro_rata_value() {
        use crate::allocation::solver::{pro_rata as month_pro_rata, solve_allocation_lp};
        let mut short_before = 0;
        for seed in [1u64, 7, 42] {
            let (prod, cons, tariffs, prio) = small_month(8, 96, seed);
            let input = MonthInput {
                production_kwh: &prod,
                consumption_kwh: &cons,
                tariffs_eur_per_kwh: &tariffs,
                priority: &prio,
            };
            let solver = month_solver(8, Some(std::time::Duration::from_secs(60)));
            let out = solver.allocate_month(&input).unwrap();
            assert!(out.fallback.is_none(), "{:?}", out.fallback);
            let problem = solver.problem(&input).unwrap();
            let lp = solve_allocation_lp(&problem).unwrap();
            // The objective of what the keys receive, recomputed from `[t][i]`.
            let mut objective = 0.0;
            for (t, row) in out.intended_kwh.iter().enumerate() {
                let used: f64 = row.iter().sum();
                assert!(used <= prod[t] + 1e-6, "step {t} over production");
                for (i, a) in row.iter().enumerate() {
                    assert!(*a >= -1e-9 && *a <= cons[t][i] + 1e-9);
                    objective += (tariffs[i] - 0.10) * a;
                }
                objective += 0.06 * (prod[t] - used);
            }
            let rel = (objective - lp.objective_eur).abs() / lp.objective_eur.abs().max(1.0);
            assert!(
                rel <= 1e-6,
                "seed {seed}: month {objective} vs LP {}",
                lp.objective_eur
            );
            // Nobody worse off than pro rata over the month, whatever the
            // tiers: the pro-rata allocation meets every row at once, and
            // `Fairness::rules_above_tiers` puts the rule above the tiers.
            assert!(
                out.violations.is_empty(),
                "seed {seed}: {:?}",
                out.violations
            );
            let pr = month_pro_rata(&problem);
            let mut bound = false;
            for i in 0..8 {
                let v = tariffs[i] - 0.10;
                let got: f64 = out.intended_kwh.iter().map(|r| v * r[i]).sum();
                let want: f64 = pr[i].iter().map(|a| v * a).sum();
                assert!(
                    got >= want - 1e-6,
                    "seed {seed}: P{i} {got} < pro rata {want}"
                );
                // Tier 1 first would leave some tier-3 participant below pro
                // rata: its row binds.
                bound |= prio[i] == 3 && (got - want).abs() < 1e-6;
            }
            assert!(
                bound,
                "seed {seed}: the pro-rata rows never bound; the test would not show them"
            );
            assert_ne!(out.method, "greedy");
            // With the plain default penalties the tier bonus wins instead.
            let mut plain = problem.clone();
            plain.fairness = solver.fairness.clone();
            short_before += crate::allocation::solver::solve_allocation(&plain)
                .unwrap()
                .violations
                .iter()
                .filter(|v| v.rule == "pro_rata")
                .count();
        }
        assert!(
            short_before > 0,
            "the default penalties never let a tier win"
        );
    }

    #[test]
    fn month_solver_past_its_budget_falls_back_per_step_and_says_so() {
        let (prod, cons, tariffs, prio) = small_month(60, 960, 3);
        let input = MonthInput {
            production_kwh: &prod,
            consumption_kwh: &cons,
            tariffs_eur_per_kwh: &tariffs,
            priority: &prio,
        };
        let out = month_solver(60, Some(std::time::Duration::ZERO))
            .allocate_month(&input)
            .unwrap();
        assert_eq!(out.method, "per_step");
        assert!(out
            .fallback
            .as_deref()
            .is_some_and(|f| f.contains("budget")));
        let policy = Policy::Optimised {
            tariffs_eur_per_kwh: tariffs.clone(),
            priority: prio.clone(),
        };
        assert_eq!(
            out.intended_kwh,
            PerStepAllocator { policy }.allocate(&input).unwrap()
        );
    }

    #[test]
    fn a_step_in_the_month_gives_back_to_whoever_the_month_left_behind() {
        // 2 kWh for three who each draw 1 kWh; A and B on 0.20 €/kWh, C on
        // 0.12 (values 0.10, 0.10, 0.02 over the local price).
        let solver = MonthSolverAllocator {
            ids: vec!["A".into(), "B".into(), "C".into()],
            local_price_eur_per_kwh: 0.10,
            export_price_eur_per_kwh: 0.0,
            fairness: crate::allocation::solver::Fairness::default(),
            subscription_share: vec![None; 3],
            month_to_date: Vec::new(),
            month_to_date_production_kwh: 0.0,
            budget: None,
        };
        let input = StepInput {
            production_kwh: 2.0,
            consumption_kwh: vec![1.0; 3],
        };
        let (tariffs, prio) = ([0.20, 0.20, 0.12], [1u8; 3]);
        let p = TENTH;
        let fresh = MonthToDateAccount::new(3);
        let (k, out) = keys_for_step_in_month(
            &solver,
            &fresh,
            &input,
            &tariffs,
            &prio,
            p,
            &mut Remainders::default(),
        )
        .unwrap();
        assert!(out.violations.is_empty(), "{:?}", out.violations);
        // A fresh month: C gets its pro-rata 2/3 kWh, not greed's 0.
        assert!((k.allocated_kwh[2] - 2.0 / 3.0).abs() < 0.003, "{k:?}");
        // Earlier in the month C was left 0.004 € short and A, B were 0.05 € ahead.
        let mut behind = MonthToDateAccount::new(3);
        behind
            .add_step(
                1.5,
                &[1.0, 1.0, 1.0],
                &[0.75, 0.75, 0.0],
                &[0.10, 0.10, 0.02],
            )
            .unwrap();
        assert!((behind.participants[2].pro_rata_value_eur - 0.01).abs() < 1e-12);
        assert!((behind.pro_rata_shortfall_eur()[2] - 0.01).abs() < 1e-12);
        assert_eq!(behind.pro_rata_shortfall_eur()[0], 0.0);
        assert!((behind.production_kwh - 1.5).abs() < 1e-12);
        let (k, out) = keys_for_step_in_month(
            &solver,
            &behind,
            &input,
            &tariffs,
            &prio,
            p,
            &mut Remainders::default(),
        )
        .unwrap();
        // C now needs (0.01 + 2/3 × 0.02) / 0.02 = 1.1667 kWh: it gets its
        // whole 1 kWh and the 0.0033 € it still lacks is reported.
        assert!(k.allocated_kwh[2] > 0.99, "{k:?}");
        assert_eq!(out.violations, vec!["pro_rata C 0.003333 EUR".to_string()]);
        validate_units(&k.units, p).unwrap();
        // Shapes are checked.
        assert!(behind.add_step(1.0, &[1.0], &[0.0; 3], &[0.1; 3]).is_err());
    }

    #[test]
    fn month_solver_rejects_mismatched_shapes() {
        let (prod, cons, tariffs, prio) = small_month(4, 8, 1);
        let input = MonthInput {
            production_kwh: &prod,
            consumption_kwh: &cons,
            tariffs_eur_per_kwh: &tariffs,
            priority: &prio,
        };
        let err = month_solver(5, None).allocate_month(&input).unwrap_err();
        assert!(
            matches!(err, AllocationError::Length { expected: 5, .. }),
            "{err:?}"
        );
    }

    fn step(p: f64, c: &[f64]) -> StepInput {
        StepInput {
            production_kwh: p,
            consumption_kwh: c.to_vec(),
        }
    }

    fn naive_floor_pro_rata(p: f64, c: &[f64], prec: Precision) -> Vec<u32> {
        pro_rata(p, c)
            .iter()
            .map(|a| ((a / p) * f64::from(prec.units_per_one)).floor() as u32)
            .collect()
    }

    #[test]
    fn precision_decimals() {
        assert_eq!(Precision::default().percent_decimals(), Some(2));
        assert_eq!(TENTH.percent_decimals(), Some(1));
        assert_eq!(Precision::new(10_000).unwrap().percent_decimals(), Some(2));
        assert_eq!(Precision::new(100).unwrap().percent_decimals(), Some(0));
        assert!(Precision::new(1500).is_err());
        assert!(Precision::new(10).is_err());
    }

    #[test]
    fn surplus_step_uses_ceiling_where_floor_loses() {
        // P = 10 kWh, three consumers at 1.23456 kWh: the pro-rata coefficient
        // 12.3456 % floors to 12.3 % and loses 4.56 Wh each.
        let prec = TENTH;
        let c = [1.23456, 1.23456, 1.23456];
        let naive = naive_floor_pro_rata(10.0, &c, prec);
        let naive_total: f64 = apply_rule(&naive, prec, 10.0, &c).iter().sum();
        let k = keys_for_step(&step(10.0, &c), &Policy::ProRata, prec).unwrap();
        assert!((k.self_consumed_kwh - 3.70368).abs() < 1e-9);
        assert!(naive_total < k.self_consumed_kwh - 0.013);
        assert_eq!(k.units, vec![124, 124, 124]);
        assert!((k.surplus_kwh - (10.0 - 3.70368)).abs() < 1e-9);
    }

    #[test]
    fn deficit_step_hands_residue_to_largest_need() {
        let prec = TENTH;
        let c = [1.0, 1.0, 1.0];
        let k = keys_for_step(&step(1.0, &c), &Policy::ProRata, prec).unwrap();
        assert_eq!(k.units.iter().sum::<u32>(), 1000);
        assert!((k.self_consumed_kwh - 1.0).abs() < 1e-12);
        let naive: f64 = apply_rule(&naive_floor_pro_rata(1.0, &c, prec), prec, 1.0, &c)
            .iter()
            .sum();
        assert!(naive < 0.9991);
    }

    #[test]
    fn degenerate_steps_give_zero_keys() {
        let prec = TENTH;
        let k = keys_for_step(&step(0.0, &[1.0, 2.0]), &Policy::ProRata, prec).unwrap();
        assert_eq!(k.units, vec![0, 0]);
        assert_eq!(k.self_consumed_kwh, 0.0);
        let k = keys_for_step(&step(5.0, &[0.0, 0.0]), &Policy::ProRata, prec).unwrap();
        assert_eq!(k.units, vec![0, 0]);
        assert_eq!(k.surplus_kwh, 5.0);
        let k = keys_for_step(&step(5.0, &[]), &Policy::ProRata, prec).unwrap();
        assert!(k.units.is_empty());
    }

    #[test]
    fn bad_measurements_are_errors_and_sanitised_fallback_flags() {
        let prec = TENTH;
        assert!(matches!(
            keys_for_step(&step(f64::NAN, &[1.0]), &Policy::ProRata, prec),
            Err(AllocationError::BadProduction(_))
        ));
        assert!(matches!(
            keys_for_step(&step(1.0, &[1.0, -0.1]), &Policy::ProRata, prec),
            Err(AllocationError::BadConsumption { index: 1, .. })
        ));
        let k =
            keys_for_step_sanitised(&step(1.0, &[1.0, f64::NAN]), &Policy::ProRata, prec).unwrap();
        assert!(k.fallback.is_some());
        assert_eq!(k.units, vec![1000, 0]);
    }

    #[test]
    fn static_shares_are_floored_without_redistribution() {
        let prec = TENTH;
        let pol = Policy::Static(vec![0.5, 0.25]);
        let k = keys_for_step(&step(4.0, &[1.0, 3.0]), &pol, prec).unwrap();
        assert_eq!(k.units, vec![500, 250]);
        assert_eq!(k.allocated_kwh, vec![1.0, 1.0]);
        assert_eq!(k.surplus_kwh, 2.0);
        let bad = Policy::Static(vec![0.8, 0.8]);
        let k = keys_for_step(&step(4.0, &[1.0, 3.0]), &bad, prec).unwrap();
        assert!(k.fallback.is_some());
        assert!((k.self_consumed_kwh - 4.0).abs() < 1e-9);
    }

    #[test]
    fn optimised_serves_priority_then_tariff() {
        let prec = TENTH;
        let pol = Policy::Optimised {
            tariffs_eur_per_kwh: vec![0.20, 0.30, 0.25],
            priority: vec![1, 1, 0],
        };
        // 3 kWh: consumer 2 (tier 0) first, then consumer 1 (higher tariff).
        let k = keys_for_step(&step(3.0, &[2.0, 1.5, 1.0]), &pol, prec).unwrap();
        assert!((k.intended_kwh[2] - 1.0).abs() < 1e-12);
        assert!((k.intended_kwh[1] - 1.5).abs() < 1e-12);
        assert!((k.intended_kwh[0] - 0.5).abs() < 1e-12);
        assert!((k.self_consumed_kwh - 3.0).abs() < 1e-9);
        for (a, i) in k.allocated_kwh.iter().zip(&k.intended_kwh) {
            assert!(*a >= i - 3.0 / 1000.0);
        }
        let short = Policy::Optimised {
            tariffs_eur_per_kwh: vec![0.2],
            priority: vec![0],
        };
        let k = keys_for_step(&step(3.0, &[2.0, 1.5]), &short, prec).unwrap();
        assert!(k.fallback.is_some());
    }

    #[test]
    fn residue_recovers_most_of_the_flooring_loss() {
        // Deterministic pseudo-random month-like sample: mixed surplus and
        // deficit steps, 20 consumers.
        let prec = TENTH;
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut ideal, mut naive, mut ours) = (0.0, 0.0, 0.0);
        for _ in 0..2000 {
            let c: Vec<f64> = (0..20).map(|_| 0.05 + 0.5 * rnd()).collect();
            let p = 12.0 * rnd();
            ideal += p.min(c.iter().sum());
            naive += apply_rule(&naive_floor_pro_rata(p, &c, prec), prec, p, &c)
                .iter()
                .sum::<f64>();
            ours += keys_for_step(&step(p, &c), &Policy::ProRata, prec)
                .unwrap()
                .self_consumed_kwh;
        }
        let naive_loss = ideal - naive;
        let our_loss = ideal - ours;
        assert!(
            naive_loss > 0.005 * ideal,
            "naive loss {naive_loss} of {ideal}"
        );
        assert!(
            our_loss < 0.1 * naive_loss,
            "ours {our_loss} vs naive {naive_loss}"
        );
    }

    #[test]
    fn validate_units_rejects_over_100() {
        let prec = TENTH;
        assert!(validate_units(&[500, 500], prec).is_ok());
        assert!(validate_units(&[500, 501], prec).is_err());
    }

    fn arb_step() -> impl Strategy<Value = (f64, Vec<f64>)> {
        (
            prop_oneof![Just(0.0), 0.0..100.0f64],
            prop::collection::vec(prop_oneof![Just(0.0), 0.0..20.0f64], 0..25),
        )
    }

    fn arb_policy(n: usize) -> impl Strategy<Value = Policy> {
        prop_oneof![
            Just(Policy::ProRata),
            prop::collection::vec(0.0..1.0f64, n).prop_map(|v| {
                let s: f64 = v.iter().sum::<f64>().max(1.0);
                Policy::Static(v.iter().map(|x| x / s).collect())
            }),
            (
                prop::collection::vec(0.05..0.4f64, n),
                prop::collection::vec(0u8..3, n)
            )
                .prop_map(|(t, p)| Policy::Optimised {
                    tariffs_eur_per_kwh: t,
                    priority: p
                }),
        ]
    }

    /// Many consumers at a coarse precision, so each key is a handful of
    /// units and the rounding matters (the 1,000-participant case at 0.1 %).
    fn arb_crowded_step() -> impl Strategy<Value = (f64, Vec<f64>, Vec<f64>, Vec<u8>)> {
        (20usize..400).prop_flat_map(|n| {
            (
                0.0..2.0f64,
                prop::collection::vec(prop_oneof![1 => Just(0.0), 9 => 0.0..0.2f64], n),
                prop::collection::vec(0.12..0.3f64, n),
                prop::collection::vec(1u8..4, n),
            )
                .prop_map(|(ratio, c, t, pr)| {
                    let total: f64 = c.iter().sum();
                    (ratio * total, c, t, pr)
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Exported optimised keys (per step, or from any intended
        /// allocation such as the month solver's) never self-consume less
        /// under the DSO's rule than pro rata's exported keys. The residue
        /// goes where a unit adds the most energy, which reaches the largest
        /// self-consumption any key vector can give at this precision, so
        /// the only slack allowed is float noise (not the rounding bound).
        #[test]
        fn optimised_keys_never_self_consume_less_than_pro_rata(
            (p, c, tariffs, prio) in arb_crowded_step(),
            fine in any::<bool>(),
            warp in 0.0..1.0f64,
        ) {
            let prec = if fine { Precision { units_per_one: 10_000 } } else { TENTH };
            let s = step(p, &c);
            let pr = keys_for_step(&s, &Policy::ProRata, prec).unwrap();
            let opt = keys_for_step(
                &s,
                &Policy::Optimised { tariffs_eur_per_kwh: tariffs, priority: prio },
                prec,
            ).unwrap();
            let eps = 1e-9 * p.max(1.0);
            prop_assert!(opt.self_consumed_kwh >= pr.self_consumed_kwh - eps,
                "optimised {} < pro rata {}", opt.self_consumed_kwh, pr.self_consumed_kwh);
            // An intended allocation decided elsewhere: some consumers capped
            // at their consumption, some starved.
            let intended: Vec<f64> = c.iter().enumerate()
                .map(|(i, ci)| if (i as f64 * warp).fract() < 0.5 { *ci } else { 0.0 })
                .collect();
            let from = keys_from_intended(&s, &intended, prec).unwrap();
            prop_assert!(from.self_consumed_kwh >= pr.self_consumed_kwh - eps,
                "from intended {} < pro rata {}", from.self_consumed_kwh, pr.self_consumed_kwh);
            // And nobody ends more than one unit below its intended energy.
            let unit = p / f64::from(prec.units_per_one) + 1e-9;
            for (g, want) in opt.allocated_kwh.iter().zip(&opt.intended_kwh) {
                prop_assert!(*g >= want - unit, "got {} intended {}", g, want);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn invariants_hold(
            ((p, c), pol, fine) in arb_step().prop_flat_map(|(p, c)| {
                let n = c.len();
                (Just((p, c)), arb_policy(n), any::<bool>())
            })
        ) {
            let prec = if fine { Precision { units_per_one: 10_000 } } else { TENTH };
            let k = keys_for_step(&step(p, &c), &pol, prec).unwrap();
            prop_assert!(validate_units(&k.units, prec).is_ok());
            let again = apply_rule(&k.units, prec, p, &c);
            prop_assert_eq!(&again, &k.allocated_kwh);
            for (a, ci) in again.iter().zip(&c) {
                prop_assert!(*a <= *ci + 1e-12 && *a >= 0.0);
            }
            let total: f64 = again.iter().sum();
            prop_assert!(total <= p + 1e-9);
            prop_assert!(k.surplus_kwh >= 0.0);
            if pol == Policy::ProRata {
                let ideal = p.min(c.iter().sum());
                let n = c.len() as f64;
                let bound = ideal - n * p / f64::from(prec.units_per_one) - 1e-9;
                prop_assert!(total >= bound, "total {} < bound {}", total, bound);
                let naive: f64 = if p > 0.0 {
                    apply_rule(&naive_floor_pro_rata(p, &c, prec), prec, p, &c).iter().sum()
                } else { 0.0 };
                // The residue pass never does worse than plain flooring...
                prop_assert!(total >= naive - 1e-9);
            }
        }
    }

    fn arb_full_step() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
        (
            prop::collection::vec(prop_oneof![Just(0.0), 0.0..60.0f64], 1..5),
            prop::collection::vec(prop_oneof![Just(0.0), 0.0..20.0f64], 0..25),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Simple keys: the DSO's rule on the exported keys gives every
        /// consumer its intended allocation within one key unit of the
        /// production, never more than it consumed, never negative.
        #[test]
        fn simple_rule_on_exported_keys_meets_intended(
            ((p, c), pol, fine) in arb_step().prop_flat_map(|(p, c)| {
                let n = c.len();
                (Just((p, c)), arb_policy(n), any::<bool>())
            })
        ) {
            let prec = if fine { Precision { units_per_one: 10_000 } } else { TENTH };
            let k = keys_for_step(&step(p, &c), &pol, prec).unwrap();
            let got = apply_rule(&k.units, prec, p, &c);
            let bound = p / f64::from(prec.units_per_one) + 1e-9;
            for (i, (g, want)) in got.iter().zip(&k.intended_kwh).enumerate() {
                prop_assert!(*g >= 0.0);
                prop_assert!(*g >= want - bound, "consumer {} got {} intended {}", i, g, want);
            }
            let k2 = keys_from_intended(&step(p, &c), &k.intended_kwh, prec).unwrap();
            prop_assert!(validate_units(&k2.units, prec).is_ok());
            for (g, want) in k2.allocated_kwh.iter().zip(&k.intended_kwh) {
                prop_assert!(*g >= want - bound);
            }
        }

        /// Full dynamic keys: each producer's row sums to at most 100 %, the
        /// rule on the exported keys never gives more than consumed nor more
        /// than produced, every consumer gets its intended allocation within
        /// one key unit of the pooled production.
        #[test]
        fn full_rule_on_exported_keys_meets_intended(
            ((ps, c), pol, fine) in arb_full_step().prop_flat_map(|(ps, c)| {
                let n = c.len();
                (Just((ps, c)), arb_policy(n), any::<bool>())
            })
        ) {
            let prec = if fine { Precision { units_per_one: 10_000 } } else { TENTH };
            let p: f64 = ps.iter().sum();
            let intended = intended_for_step(p, &c, &pol).unwrap();
            let input = FullStepInput { production_kwh: ps.clone(), consumption_kwh: c.clone() };
            let k = full_keys_from_intended(&input, &intended, prec, true).unwrap();
            prop_assert_eq!(k.units.len(), ps.len());
            for (row, &pj) in k.units.iter().zip(&ps) {
                prop_assert!(validate_units(row, prec).is_ok());
                if pj == 0.0 {
                    prop_assert!(row.iter().all(|&u| u == 0));
                }
            }
            let got = apply_rule_full(&k.units, prec, &ps, &c);
            prop_assert_eq!(&got, &k.allocated_kwh);
            let bound = p / f64::from(prec.units_per_one) + 1e-9;
            for (i, ((g, want), ci)) in got.iter().zip(&intended).zip(&c).enumerate() {
                prop_assert!(*g >= 0.0 && *g <= ci + 1e-12);
                prop_assert!(*g >= want - bound, "consumer {} got {} intended {}", i, g, want);
            }
            let total: f64 = got.iter().sum();
            prop_assert!(total <= p + 1e-9);
            if pol == Policy::ProRata {
                let ideal = p.min(c.iter().sum());
                prop_assert!(total >= ideal - c.len() as f64 * bound);
            }
        }
    }

    #[test]
    fn charging_battery_is_a_zero_producer_row_and_a_consumer() {
        // PV 10 kWh, battery charging 3 kWh (consumer #2, producer #1 at 0).
        let prec = TENTH;
        let input = FullStepInput {
            production_kwh: vec![10.0, 0.0],
            consumption_kwh: vec![4.0, 2.0, 3.0],
        };
        let intended = intended_for_step(10.0, &input.consumption_kwh, &Policy::ProRata).unwrap();
        let k = full_keys_from_intended(&input, &intended, prec, true).unwrap();
        assert_eq!(k.units[1], vec![0, 0, 0]);
        assert_eq!(k.allocated_kwh, vec![4.0, 2.0, 3.0]);
        // Discharging the next step: the battery's row carries keys.
        let input = FullStepInput {
            production_kwh: vec![1.0, 2.0],
            consumption_kwh: vec![4.0, 2.0, 0.0],
        };
        let intended = intended_for_step(3.0, &input.consumption_kwh, &Policy::ProRata).unwrap();
        let k = full_keys_from_intended(&input, &intended, prec, true).unwrap();
        assert!(k.units[1].iter().sum::<u32>() > 0);
        assert_eq!(k.units[1][2], 0);
        assert!((k.self_consumed_kwh - 3.0).abs() < 1e-9);
    }

    #[test]
    fn per_step_allocator_rejects_a_policy_that_does_not_fit() {
        let c = vec![vec![1.0, 2.0]; 3];
        let p = [1.0, 2.0, 3.0];
        let input = MonthInput {
            production_kwh: &p,
            consumption_kwh: &c,
            tariffs_eur_per_kwh: &[0.2, 0.3],
            priority: &[1, 1],
        };
        let ok = PerStepAllocator {
            policy: Policy::ProRata,
        }
        .allocate(&input)
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert!((ok[2][1] - 2.0).abs() < 1e-12);
        let bad = PerStepAllocator {
            policy: Policy::Static(vec![0.9, 0.9]),
        };
        assert!(matches!(
            bad.allocate(&input),
            Err(AllocationError::Policy(_))
        ));
    }

    /// An operation of `n` participants over `steps` quarter-hours: mostly
    /// households (0.02–0.15 kWh a step), a few tiny loads (0.005–0.02 kWh,
    /// a vacant flat's fridge)
    /// and a few large tertiary ones (0.5–5 kWh), under a PV bell scaled so
    /// that production covers `cover` of the consumption at noon (below 1: a
    /// deficit month; above: surplus middays).
    fn operation(n: usize, steps: usize, cover: f64, seed: u64) -> (Vec<f64>, Vec<Vec<f64>>) {
        let mut s = seed;
        let mut rnd = move || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let base: Vec<f64> = (0..n)
            .map(|i| match i % 20 {
                0 => 0.5 + 4.5 * rnd(),
                1 => 0.005 + 0.015 * rnd(),
                _ => 0.02 + 0.13 * rnd(),
            })
            .collect();
        let cons: Vec<Vec<f64>> = (0..steps)
            .map(|_| base.iter().map(|b| b * (0.3 + 1.4 * rnd())).collect())
            .collect();
        let mean: f64 = base.iter().sum();
        let prod = (0..steps)
            .map(|t| {
                let x = (t % 96) as f64 / 96.0;
                let sun = (std::f64::consts::PI * (x - 0.25) * 2.0).sin().max(0.0);
                cover * mean * sun * (0.6 + 0.4 * rnd())
            })
            .collect();
        (prod, cons)
    }

    /// What the DSO's rule gives each participant over the month with carried
    /// rounding, next to exact pro rata; checks every step's keys on the way.
    fn carried_month(
        prod: &[f64],
        cons: &[Vec<f64>],
        prec: Precision,
    ) -> (Vec<f64>, Vec<f64>, f64) {
        let n = cons[0].len();
        let mut carry = Remainders::new(n);
        let (mut got, mut exact) = (vec![0.0; n], vec![0.0; n]);
        let mut best = 0.0;
        for (p, c) in prod.iter().zip(cons) {
            let k =
                keys_for_step_carried(&step(*p, c), &Policy::ProRata, prec, &mut carry).unwrap();
            let sum: u64 = k.units.iter().map(|&u| u64::from(u)).sum();
            assert!(sum <= u64::from(prec.units_per_one), "{sum}");
            // The DSO's rule applied afresh to the exported keys.
            for (i, a) in apply_rule(&k.units, prec, *p, c).iter().enumerate() {
                got[i] += a;
            }
            for (i, a) in pro_rata(*p, c).iter().enumerate() {
                exact[i] += a;
            }
            best += p.min(c.iter().sum());
        }
        (got, exact, best)
    }

    /// Everyone's month within max(0.1 kWh, 0.5 %) of exact pro rata, and
    /// the operation at `share` of the pro-rata maximum Σ min(P, ΣC).
    fn assert_months_kept(got: &[f64], exact: &[f64], best: f64, share: f64) {
        for (i, (g, e)) in got.iter().zip(exact).enumerate() {
            let tol = (0.005 * e).max(0.1);
            assert!(
                (g - e).abs() <= tol,
                "participant {i}: {g:.4} kWh against exact pro rata {e:.4} kWh"
            );
        }
        let total: f64 = got.iter().sum();
        assert!(total >= share * best, "{total} of {best}");
    }

    /// The most any keys at this precision self-consume, step by step
    /// (the energy-first greedy of [`keys_for_step`]).
    fn most_at_precision(prod: &[f64], cons: &[Vec<f64>], prec: Precision) -> f64 {
        prod.iter()
            .zip(cons)
            .map(|(p, c)| {
                keys_for_step(&step(*p, c), &Policy::ProRata, prec)
                    .unwrap()
                    .self_consumed_kwh
            })
            .sum()
    }

    /// A realistic month: 600 participants, 2,976 quarter-hours, in deficit.
    /// Without the carried remainder (plain keys_for_step) a household's
    /// share of 0.02–0.1 % floors to nothing at 0.1 % precision.
    #[test]
    fn carried_rounding_keeps_every_participants_month() {
        let (prod, cons) = operation(600, 2976, 0.6, 11);
        let prec = Precision::new(10_000).unwrap();
        let (got, exact, best) = carried_month(&prod, &cons, prec);
        assert_months_kept(&got, &exact, best, 0.9995);
    }

    /// The same month rounded step by step without memory leaves many
    /// participants short beyond the tolerance, at 0.01 % as at 0.1 %: the
    /// test above can fail.
    #[test]
    fn rounding_without_memory_shortchanges_small_consumers() {
        let (prod, cons) = operation(600, 2976, 0.6, 11);
        for (units_per_one, at_least) in [(10_000, 20), (1_000, 100)] {
            let prec = Precision::new(units_per_one).unwrap();
            let n = cons[0].len();
            let (mut got, mut exact) = (vec![0.0; n], vec![0.0; n]);
            for (p, c) in prod.iter().zip(&cons) {
                let k = keys_for_step(&step(*p, c), &Policy::ProRata, prec).unwrap();
                for (i, a) in k.allocated_kwh.iter().enumerate() {
                    got[i] += a;
                }
                for (i, a) in pro_rata(*p, c).iter().enumerate() {
                    exact[i] += a;
                }
            }
            let short = got
                .iter()
                .zip(&exact)
                .filter(|(g, e)| **e - **g > (0.005 * **e).max(0.1))
                .count();
            assert!(
                short >= at_least,
                "{short} participants short at {units_per_one}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Surplus and deficit months, 2 to 1,000 participants, tiny and
        /// large consumers: after the DSO's rule on the exported keys,
        /// everyone's month is within max(0.1 kWh, 0.5 %) of exact pro
        /// rata, and the operation reaches 99.95 % of the maximum.
        #[test]
        fn carried_rounding_holds_for_any_operation(
            n in prop_oneof![2usize..20, 20usize..200, 900usize..1000],
            days in 2usize..6,
            cover in prop_oneof![0.2f64..0.9, 1.0f64..4.0],
            seed in any::<u64>(),
        ) {
            let (prod, cons) = operation(n, days * 96, cover, seed);
            let prec = Precision::new(10_000).unwrap();
            let (got, exact, best) = carried_month(&prod, &cons, prec);
            // Where a household's step is below one key unit's energy (a
            // large operation's 0.01 % at midday), serving its share costs
            // part of a unit: fairness may cost up to 0.3 % of the maximum
            // against keys that ignore small consumers.
            let most = most_at_precision(&prod, &cons, prec);
            assert_months_kept(&got, &exact, best, (most / best - 0.003).min(0.9995));
        }
    }

    /// Most participants on one tariff, as in a housing operation: the month
    /// solver's optimum is pro rata in total for each of them, and any split
    /// of it between steps is worth the same. Rounded, a split that serves
    /// half of them in full at each step lost units to waste at every step
    /// and left hundreds short of pro rata; the balanced split keeps
    /// everyone within the rounding slack and the files at the pro-rata
    /// maximum.
    #[test]
    fn optimised_month_on_one_tariff_rounds_like_pro_rata() {
        let (prod, cons) = operation(300, 960, 0.6, 11);
        let n = cons[0].len();
        let tariffs: Vec<f64> = (0..n)
            .map(|i| if i % 10 == 0 { 0.20 } else { 0.2516 })
            .collect();
        let prio = vec![1u8; n];
        let mut solver = month_solver(n, None);
        solver.fairness.floor_ratio = None;
        solver.subscription_share = vec![None; n];
        let out = solver
            .allocate_month(&MonthInput {
                production_kwh: &prod,
                consumption_kwh: &cons,
                tariffs_eur_per_kwh: &tariffs,
                priority: &prio,
            })
            .unwrap();
        assert!(out.violations.is_empty(), "{:?}", out.violations);
        let prec = Precision::new(10_000).unwrap();
        let mut carry = Remainders::new(n);
        let (mut got, mut exact) = (vec![0.0; n], vec![0.0; n]);
        let (mut total, mut best) = (0.0, 0.0);
        for (t, (p, c)) in prod.iter().zip(&cons).enumerate() {
            let k =
                keys_from_intended_carried(&step(*p, c), &out.intended_kwh[t], prec, &mut carry)
                    .unwrap();
            for (i, a) in apply_rule(&k.units, prec, *p, c).iter().enumerate() {
                got[i] += a;
                total += a;
            }
            for (i, a) in pro_rata(*p, c).iter().enumerate() {
                exact[i] += a;
                best += a;
            }
        }
        let short: Vec<usize> = (0..n)
            .filter(|&i| got[i] < exact[i] - (0.005 * exact[i]).max(0.1))
            .collect();
        assert!(
            short.is_empty(),
            "{} short of pro rata: {short:?}",
            short.len()
        );
        assert!(total >= 0.9995 * best, "{total} of {best} kWh");
    }

    /// Optimised intent too: the month solver's allocation, rounded with
    /// the carry, keeps everyone at or above exact pro rata over the month
    /// (within the rounding tolerance), so `no_worse_than_pro_rata` holds on
    /// the keys the DSO receives, not only before rounding.
    #[test]
    fn optimised_month_keeps_pro_rata_after_rounding() {
        let (prod, cons) = operation(200, 960, 0.6, 5);
        let n = cons[0].len();
        let tariffs: Vec<f64> = (0..n).map(|i| 0.16 + 0.01 * (i % 7) as f64).collect();
        let prio: Vec<u8> = (0..n).map(|i| 1 + (i % 3) as u8).collect();
        // Priority tiers and tariffs, nobody worse off than pro rata, no floor.
        let mut solver = month_solver(n, None);
        solver.fairness.floor_ratio = None;
        solver.subscription_share = vec![None; n];
        let out = solver
            .allocate_month(&MonthInput {
                production_kwh: &prod,
                consumption_kwh: &cons,
                tariffs_eur_per_kwh: &tariffs,
                priority: &prio,
            })
            .unwrap();
        assert!(out.violations.is_empty(), "{:?}", out.violations);
        let prec = Precision::new(10_000).unwrap();
        let mut carry = Remainders::new(n);
        let (mut value, mut pr_value) = (vec![0.0; n], vec![0.0; n]);
        for (t, (p, c)) in prod.iter().zip(&cons).enumerate() {
            let k =
                keys_from_intended_carried(&step(*p, c), &out.intended_kwh[t], prec, &mut carry)
                    .unwrap();
            for (i, a) in apply_rule(&k.units, prec, *p, c).iter().enumerate() {
                value[i] += a * (tariffs[i] - 0.10);
            }
            for (i, a) in pro_rata(*p, c).iter().enumerate() {
                pr_value[i] += a * (tariffs[i] - 0.10);
            }
        }
        for i in 0..n {
            let tol = (0.005 * pr_value[i]).max(0.1 * (tariffs[i] - 0.10));
            assert!(
                value[i] >= pr_value[i] - tol,
                "participant {i}: {:.4} € against {:.4} € under pro rata",
                value[i],
                pr_value[i]
            );
        }
    }
}
