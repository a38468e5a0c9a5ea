//! The exact network-flow path, with the private time-of-use terms.

use super::*;

/// The exact network-flow solution (see [`crate::allocation::flow`]) when every coupling
/// row only sees the participant's total at congested steps: its value is
/// the same at every congested step where it can receive energy, or it has
/// no pro-rata row. None when the instance is not eligible (or its figures
/// do not fit the integer scales; the LP paths take over).
///
/// `start` (the greedy's allocation) is the warm start: the arcs it fills to
/// their cap start at their cap, so the simplex does not need one pivot per
/// saturated arc (millions on a month) to get there.
pub(super) fn flow_allocation(
    p: &AllocationProblem,
    m: &Model,
    start: &[Vec<f64>],
) -> Option<Vec<Vec<f64>>> {
    use crate::allocation::flow::{Circulation, GAIN_SCALE};
    let np = p.participants.len();
    let n = m.n;
    let f = &p.fairness;
    let (mf, mp) = (f.floor_penalty_eur_per_kwh, f.pro_rata_penalty_eur_per_eur);
    // Potentials are sums of arc costs along a tree path (at most every
    // node, and one Big-M artificial arc of (max cost + 1) × nodes), and
    // reduced costs add two of them: bound the largest cost so none of that
    // can overflow an i64.
    let max_value = m
        .value
        .iter()
        .flatten()
        .fold(0.0_f64, |a, b| a.max(b.abs()));
    let max_weight = m
        .weight
        .iter()
        .flatten()
        .fold(0.0_f64, |a, b| a.max(b.abs()));
    let max_gain = (mf + mp * max_value).max(max_weight) * GAIN_SCALE;
    let nodes = (np + n + 2) as f64;
    if !max_gain.is_finite() || max_gain * 8.0 * (nodes + 2.0) > (i64::MAX / 4) as f64 {
        return None;
    }
    // Energies as integers: the finest of 1e-12..1e-6 kWh at which the pool
    // (the largest flow) still leaves the i64 room. Caps rounded down, so
    // the result can never break one.
    let production: f64 = p.production_kwh.iter().sum();
    let mut energy_scale = 1e12;
    while production * energy_scale > 1e17 && energy_scale > 1e6 {
        energy_scale /= 10.0;
    }
    if production * energy_scale > 1e17 {
        return None;
    }
    let units = |kwh: f64| (kwh * energy_scale).floor() as i64;
    let gain = |eur: f64| (eur * GAIN_SCALE).round() as i64;
    let step_cap: Vec<i64> = p.production_kwh.iter().map(|x| units(*x)).collect();
    let pool: i128 = step_cap.iter().map(|x| i128::from(*x)).sum();
    // A step whose production covers every consumer's cap (in the integer
    // units the flow uses) can never saturate: its arcs are independent
    // participant → sink arcs, and a participant's arcs of equal gain at
    // such steps are one arc whose cap is their sum (any split of its flow
    // among them keeps every step row; it is split pro rata of consumption,
    // as the greedy shares a tie). A step without production has no arcs.
    // On the synthetic 1,000 × 96 day this leaves a fifth of the arcs.
    let congested: Vec<bool> = (0..n)
        .map(|t| {
            let want: i128 = p
                .participants
                .iter()
                .map(|q| i128::from(units(q.consumption_kwh[t]).max(0)))
                .sum();
            want > i128::from(step_cap[t])
        })
        .collect();
    // The value of a step where nothing can be allocated (no production, or
    // no consumption) multiplies a variable fixed at 0, so only the live
    // steps need one value: a time-of-use tariff whose off-peak hours have
    // no PV (night) is flat for this problem. A participant whose values
    // differ only at uncongested steps (off-peak hours at midday, when the
    // PV covers the whole demand) is not flat, but those variables touch no
    // shared row: they are maximised out of its penalty term (`Private`),
    // which stays concave in the energy it takes at the congested steps.
    let mut flat_value = vec![0.0; np];
    let mut private: Vec<Option<Private>> = (0..np).map(|_| None).collect();
    for i in 0..np {
        let q = &p.participants[i];
        let live = |t: usize| p.production_kwh[t] > 0.0 && q.consumption_kwh[t] > 0.0;
        let mut shared = (0..n)
            .filter(|&t| live(t) && congested[t])
            .map(|t| m.value[i][t]);
        let first_shared = shared.next();
        let v = first_shared
            .or_else(|| (0..n).find(|&t| live(t)).map(|t| m.value[i][t]))
            .unwrap_or(0.0);
        flat_value[i] = v;
        let Some(target) = m.pro_rata[i] else {
            continue;
        };
        if shared.any(|x| x != v) {
            return None;
        }
        if (0..n).filter(|&t| live(t)).all(|t| m.value[i][t] == v) {
            continue;
        }
        // Classes of the uncongested steps by (weight, value).
        let mut classes: Vec<PrivateClass> = Vec::new();
        for t in (0..n).filter(|&t| live(t) && !congested[t] && units(q.consumption_kwh[t]) > 0) {
            let (w, val) = (m.weight[i][t], m.value[i][t]);
            let cap = units(q.consumption_kwh[t]) as f64 / energy_scale;
            match classes.iter_mut().find(|c| c.weight == w && c.value == val) {
                Some(c) => {
                    c.cap += cap;
                    c.steps.push(t);
                }
                None => classes.push(PrivateClass {
                    weight: w,
                    value: val,
                    cap,
                    steps: vec![t],
                }),
            }
        }
        if classes.len() > PRIVATE_CLASSES {
            return None;
        }
        private[i] = Some(Private {
            classes,
            value: if first_shared.is_some() { v } else { 0.0 },
            floor: m.floor[i],
            pro_rata: target,
            mf: p.fairness.floor_penalty_eur_per_kwh,
            mp: p.fairness.pro_rata_penalty_eur_per_eur,
        });
    }
    let arcs: usize = p
        .participants
        .iter()
        .map(|q| q.consumption_kwh.iter().filter(|c| units(**c) > 0).count())
        .sum();
    let source = 0;
    let part = |i: usize| 1 + i;
    let step = |t: usize| 1 + np + t;
    let sink = 1 + np + n;
    let mut g = Circulation::with_capacity(np + n + 2, arcs + 3 * np + n + 1);
    for i in 0..np {
        let caps: i128 = p.participants[i]
            .consumption_kwh
            .iter()
            .enumerate()
            .filter(|(t, _)| private[i].is_none() || congested[*t])
            .map(|(_, c)| i128::from(units(*c).max(0)))
            .sum();
        let total = caps.min(pool) as i64;
        if total == 0 {
            continue;
        }
        let full = |t: usize| {
            let c = p.participants[i].consumption_kwh[t];
            units(c) > 0 && start[i][t] >= c
        };
        if let Some(pv) = &private[i] {
            // ψ_i's pieces between its breakpoints (rounded to units), each
            // slope the exact difference of ψ over the piece.
            let filled: i64 = (0..n)
                .filter(|&t| congested[t] && full(t))
                .map(|t| units(p.participants[i].consumption_kwh[t]))
                .sum();
            let mut cuts = vec![0, total];
            for x in pv.breakpoints(total as f64 / energy_scale) {
                let b = (x * energy_scale).round();
                if b > 0.0 && b < total as f64 {
                    cuts.push(b as i64);
                }
            }
            cuts.sort_unstable();
            cuts.dedup();
            let psi = |u: i64| pv.best(u as f64 / energy_scale).0;
            let mut last = f64::INFINITY;
            for w in cuts.windows(2) {
                let slope = (psi(w[1]) - psi(w[0])) / ((w[1] - w[0]) as f64 / energy_scale);
                // Concave by construction; a rise means a breakpoint was
                // missed (or rounding): let the LP paths decide.
                if slope > last + 1e-9 * (1.0 + last.abs()) {
                    tracing::debug!(
                        participant = i,
                        "allocation: private term not concave; no flow"
                    );
                    return None;
                }
                last = slope;
                let e = g.add_arc(source, part(i), w[1] - w[0], -gain(slope));
                if w[1] <= filled {
                    g.start_at_capacity(e);
                }
            }
            continue;
        }
        // φ_i's pieces over [0, total]: breakpoints at the floor target and
        // at R_i / v_i, each slope taken at the piece's midpoint.
        let floor_at = m.floor[i].map(|x| x * energy_scale);
        let v = flat_value[i];
        let pro_at = m.pro_rata[i]
            .filter(|_| v != 0.0)
            .map(|r| r / v * energy_scale);
        let filled: i64 = (0..n)
            .filter(|&t| full(t))
            .map(|t| units(p.participants[i].consumption_kwh[t]))
            .sum();
        let mut cuts = vec![0, total];
        for b in [floor_at.map(f64::ceil), pro_at.map(f64::round)]
            .into_iter()
            .flatten()
        {
            if b > 0.0 && b < total as f64 {
                cuts.push(b as i64);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let mid = (w[0] as f64 + w[1] as f64) / 2.0;
            let mut slope = 0.0;
            if floor_at.is_some_and(|fl| mid < fl) {
                slope += mf;
            }
            if let Some(b) = pro_at {
                if (v > 0.0 && mid < b) || (v < 0.0 && mid > b) {
                    slope += mp * v;
                }
            }
            let e = g.add_arc(source, part(i), w[1] - w[0], -gain(slope));
            if w[1] <= filled {
                g.start_at_capacity(e);
            }
        }
    }
    // (arc, participant, steps it serves: one step, or a merged group).
    let mut back: Vec<(usize, usize, Vec<usize>)> = Vec::with_capacity(arcs);
    let mut groups: Vec<(f64, Vec<usize>)> = Vec::new();
    for i in 0..np {
        let q = &p.participants[i];
        let full = |t: usize| start[i][t] >= q.consumption_kwh[t];
        groups.clear();
        for t in 0..n {
            let c = units(q.consumption_kwh[t]);
            if c <= 0 || step_cap[t] <= 0 {
                continue;
            }
            if congested[t] {
                let e = g.add_arc(part(i), step(t), c, -gain(m.weight[i][t]));
                if full(t) {
                    g.start_at_capacity(e);
                }
                back.push((e, i, vec![t]));
            } else if private[i].is_none() {
                let w = m.weight[i][t];
                match groups.iter_mut().find(|(x, _)| *x == w) {
                    Some((_, ts)) => ts.push(t),
                    None => groups.push((w, vec![t])),
                }
            }
        }
        for (w, ts) in groups.drain(..) {
            let cap: i64 = ts.iter().map(|&t| units(q.consumption_kwh[t])).sum();
            let e = g.add_arc(part(i), sink, cap, -gain(w));
            if ts.iter().all(|&t| full(t)) {
                g.start_at_capacity(e);
            }
            back.push((e, i, ts));
        }
    }
    for t in 0..n {
        if !congested[t] || step_cap[t] <= 0 {
            continue;
        }
        let e = g.add_arc(step(t), sink, step_cap[t], 0);
        let used: f64 = start.iter().map(|r| r[t]).sum();
        if used >= p.production_kwh[t] {
            g.start_at_capacity(e);
        }
    }
    g.add_arc(sink, source, pool as i64, 0);
    let Some(sol) = g.solve() else {
        tracing::warn!("allocation: the network simplex ended with artificial flow; solving by LP");
        return None;
    };
    tracing::debug!(
        arcs = sol.flow.len(),
        pivots = sol.pivots,
        "allocation: network simplex"
    );
    let mut a = vec![vec![0.0; n]; np];
    for (e, i, ts) in &back {
        let q = &p.participants[*i];
        let x = sol.flow[*e] as f64 / energy_scale;
        if let [t] = ts[..] {
            a[*i][t] = x;
            continue;
        }
        let total: f64 = ts.iter().map(|&t| q.consumption_kwh[t]).sum();
        if total > 0.0 {
            let share = (x / total).min(1.0);
            for &t in ts {
                a[*i][t] = q.consumption_kwh[t] * share;
            }
        }
    }
    // The private variables: the best response to what the flow gave the
    // participant at the congested steps, split in each class pro rata of
    // consumption.
    for (i, pv) in private.iter().enumerate() {
        let Some(pv) = pv else { continue };
        let q = &p.participants[i];
        let x: f64 = (0..n).filter(|&t| congested[t]).map(|t| a[i][t]).sum();
        let (_, y) = pv.best(x);
        for (c, y) in pv.classes.iter().zip(y) {
            let total: f64 = c.steps.iter().map(|&t| q.consumption_kwh[t]).sum();
            if total > 0.0 {
                let share = (y / total).clamp(0.0, 1.0);
                for &t in &c.steps {
                    a[i][t] = q.consumption_kwh[t] * share;
                }
            }
        }
    }
    Some(a)
}

/// At most this many classes of private variables per participant (the
/// enumeration below is exponential in it; a time-of-use tariff has two or
/// three windows).
pub(super) const PRIVATE_CLASSES: usize = 4;

pub(super) struct PrivateClass {
    pub(super) weight: f64,
    pub(super) value: f64,
    /// kWh (the flow's integer units, summed).
    pub(super) cap: f64,
    pub(super) steps: Vec<usize>,
}

/// A participant's variables at uncongested steps, maximised out:
///
/// ```text
/// ψ(X) = max_{0 ≤ y ≤ cap} Σ_k w_k y_k − M_f (F − X − Σ_k y_k)⁺ − M_p (R − v X − Σ_k v_k y_k)⁺
/// ```
///
/// where X is what it receives at congested steps (all of value v). The
/// maximand is jointly concave, so ψ is concave and piecewise linear: the
/// flow takes it as the participant's penalty pieces. Its maximum over y
/// lies at a vertex of the box cut by the two rows' hyperplanes (m tight
/// among the box faces and the rows, at most two of y free), and its
/// breakpoints in X at the X of such vertices in (X, y) (m + 1 tight):
/// both are enumerated.
pub(super) struct Private {
    pub(super) classes: Vec<PrivateClass>,
    pub(super) value: f64,
    pub(super) floor: Option<f64>,
    pub(super) pro_rata: f64,
    pub(super) mf: f64,
    pub(super) mp: f64,
}

impl Private {
    pub(super) fn score(&self, x: f64, y: &[f64]) -> f64 {
        let (mut w, mut sy, mut vy) = (0.0, 0.0, 0.0);
        for (c, y) in self.classes.iter().zip(y) {
            w += c.weight * y;
            sy += y;
            vy += c.value * y;
        }
        let floor = self.floor.map_or(0.0, |f| (f - x - sy).max(0.0));
        w - self.mf * floor - self.mp * (self.pro_rata - self.value * x - vy).max(0.0)
    }

    /// Each y with every class at a bound, given by a mask.
    fn at_bounds(&self, mask: usize) -> Vec<f64> {
        (0..self.classes.len())
            .map(|k| {
                if mask >> k & 1 == 1 {
                    self.classes[k].cap
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn in_box(&self, k: usize, y: f64) -> bool {
        let tol = 1e-12 * (1.0 + self.classes[k].cap);
        y.is_finite() && y >= -tol && y <= self.classes[k].cap + tol
    }

    /// ψ(x) and a maximiser (the first best candidate, so deterministic).
    pub(super) fn best(&self, x: f64) -> (f64, Vec<f64>) {
        let m = self.classes.len();
        let mut best = (f64::NEG_INFINITY, vec![0.0; m]);
        let consider = |y: Vec<f64>, best: &mut (f64, Vec<f64>)| {
            let s = self.score(x, &y);
            if s > best.0 + 1e-12 * (1.0 + s.abs()) {
                *best = (s, y);
            }
        };
        for mask in 0..1usize << m {
            let y = self.at_bounds(mask);
            consider(y.clone(), &mut best);
            let sy: f64 = y.iter().sum();
            let vy: f64 = self.classes.iter().zip(&y).map(|(c, y)| c.value * y).sum();
            for k in 0..m {
                // y_k free, one row tight.
                let (rest, vrest) = (sy - y[k], vy - self.classes[k].value * y[k]);
                let try_k = |yk: f64, best: &mut (f64, Vec<f64>)| {
                    if self.in_box(k, yk) {
                        let mut z = y.clone();
                        z[k] = yk.clamp(0.0, self.classes[k].cap);
                        consider(z, best);
                    }
                };
                if let Some(f) = self.floor {
                    try_k(f - x - rest, &mut best);
                }
                if self.classes[k].value != 0.0 {
                    try_k(
                        (self.pro_rata - self.value * x - vrest) / self.classes[k].value,
                        &mut best,
                    );
                }
                // y_k and y_l free, both rows tight.
                let Some(f) = self.floor else { continue };
                for l in k + 1..m {
                    let (vk, vl) = (self.classes[k].value, self.classes[l].value);
                    if vk == vl {
                        continue;
                    }
                    let s2 = sy - y[k] - y[l];
                    let v2 = vy - vk * y[k] - vl * y[l];
                    let a = f - x - s2;
                    let b = self.pro_rata - self.value * x - v2;
                    // y_k + y_l = a, v_k y_k + v_l y_l = b.
                    let yk = (b - vl * a) / (vk - vl);
                    let yl = a - yk;
                    if self.in_box(k, yk) && self.in_box(l, yl) {
                        let mut z = y.clone();
                        z[k] = yk.clamp(0.0, self.classes[k].cap);
                        z[l] = yl.clamp(0.0, self.classes[l].cap);
                        consider(z, &mut best);
                    }
                }
            }
        }
        best
    }

    /// Where ψ can bend on [0, total]: the x of every vertex of the
    /// arrangement in (x, y).
    pub(super) fn breakpoints(&self, total: f64) -> Vec<f64> {
        let m = self.classes.len();
        let v = self.value;
        let mut out = Vec::new();
        for mask in 0..1usize << m {
            let y = self.at_bounds(mask);
            let sy: f64 = y.iter().sum();
            let vy: f64 = self.classes.iter().zip(&y).map(|(c, y)| c.value * y).sum();
            if let Some(f) = self.floor {
                out.push(f - sy);
            }
            if v != 0.0 {
                out.push((self.pro_rata - vy) / v);
            }
            let Some(f) = self.floor else { continue };
            for k in 0..m {
                // x and y_k free, both rows tight:
                // x + y_k = f − rest, v x + v_k y_k = R − vrest.
                let vk = self.classes[k].value;
                if vk == v {
                    continue;
                }
                let a = f - (sy - y[k]);
                let b = self.pro_rata - (vy - vk * y[k]);
                let x = (a * vk - b) / (vk - v);
                if self.in_box(k, a - x) {
                    out.push(x);
                }
            }
        }
        out.retain(|x| x.is_finite() && *x > 0.0 && *x < total);
        out.sort_by(f64::total_cmp);
        out.dedup();
        out
    }
}
