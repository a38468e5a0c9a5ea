//! Quantisation: intended kWh to integer key units, the residue, and the
//! remainders carried from step to step.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::*;

pub(super) fn floor_units(share: f64, precision: Precision) -> u32 {
    let u = (share * f64::from(precision.units_per_one) + EPS_UNITS).floor();
    // Shares are in 0..=1 here, so the cast cannot saturate in practice.
    u.clamp(0.0, f64::from(precision.units_per_one)) as u32
}

/// Energy a consumer gets from `u` units.
pub(super) fn served(u: u32, p: f64, ci: f64, precision: Precision) -> f64 {
    (f64::from(u) * precision.unit_share() * p).min(ci)
}

#[derive(PartialEq)]
pub(super) struct Need {
    pub(super) kwh: f64,
    pub(super) index: usize,
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
pub(super) fn quantise(
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
pub(super) const GUARD_KWH: f64 = 0.03;
pub(super) const GUARD_SHARE: f64 = 0.002;

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
pub(super) fn spend_carried(
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
pub(super) struct Owed {
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
pub(super) fn spend_for_energy(
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
pub(super) struct Gain {
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
pub(super) fn spend_residue(
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

pub(super) fn finish(
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
