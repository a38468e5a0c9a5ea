//! The optimum from each participant's total, when its value is flat.
//!
//! When every participant has one weight and one value at every step where
//! it can receive energy (flat tariffs, as in `ped keys`), its score depends
//! on its total `A_i` alone:
//!
//! ```text
//! g_i(A) = w_i A − M_f (F_i − A)⁺ − M_p (R_i − v_i A)⁺
//! ```
//!
//! concave and piecewise linear. Dropping every step row but their sum gives
//! a relaxation, `max Σ g_i(A_i)` s.t. `Σ A_i ≤ S = Σ_t min(P_t, Σ_i c_it)`,
//! `0 ≤ A_i ≤ Σ_t c_it`, solved exactly by filling the pieces of all the
//! g_i by slope, and its value bounds the true optimum from above. If some
//! allocation meets every step row with exactly those totals, it is
//! optimal. With the pro-rata guarantee the totals are usually forced (each
//! row asks at least the participant's pro-rata total, and pro rata already
//! places every kWh that can be placed), and the allocation is found by the
//! same capped matrix balancing `smooth` uses, started from pro rata. A
//! network simplex gets the same totals in seconds on a month of 1,000
//! participants, and `smooth` then spreads them the same way; this takes a
//! few passes over the matrix.
//!
//! Nothing is assumed: the balanced allocation's own score is compared with
//! the relaxation's bound, and unless they meet within [`CERTIFIED`] the
//! search goes on (values that differ between steps, totals the
//! consumptions cannot carry, a balance that does not settle).

use super::*;

/// Relative gap under which the balanced allocation counts as optimal: the
/// balance meets each total within 1e-9 of it, which the penalties of a
/// binding row can magnify ~20 times; the LP paths are accepted at 1e-8 and
/// the tests hold every path to 1e-6 of the LP.
const CERTIFIED: f64 = 1e-7;

/// One linear piece of a participant's g: (slope, length in kWh, participant).
type Piece = (f64, f64, usize);

/// The optimum, when the relaxation's totals can be carried by the steps.
pub(super) fn from_totals(p: &AllocationProblem, m: &Model) -> Option<Vec<Vec<f64>>> {
    let n = m.n;
    let np = p.participants.len();
    let f = &p.fairness;
    let c = |i: usize, t: usize| p.participants[i].consumption_kwh[t];
    let live = |i: usize, t: usize| p.production_kwh[t] > 0.0 && c(i, t) > 0.0;
    // Each participant's one weight and value over its live steps.
    let mut flat = Vec::with_capacity(np);
    for i in 0..np {
        let mut steps = (0..n).filter(|&t| live(i, t));
        let wv = steps
            .next()
            .map(|t| (m.weight[i][t], m.value[i][t]))
            .unwrap_or((0.0, 0.0));
        if steps.any(|t| (m.weight[i][t], m.value[i][t]) != wv) {
            return None;
        }
        flat.push(wv);
    }
    let demand: Vec<f64> = (0..n)
        .map(|t| (0..np).filter(|&i| live(i, t)).map(|i| c(i, t)).sum())
        .collect();
    // At a step that can serve everyone nothing is shared: the relaxation
    // keeps those steps apart, each consumer taking its consumption there
    // (`base`), and pools only the congested steps' production.
    let congested: Vec<usize> = (0..n)
        .filter(|&t| demand[t] > p.production_kwh[t])
        .collect();
    let pool: f64 = congested.iter().map(|&t| p.production_kwh[t]).sum();
    let base: Vec<f64> = (0..np)
        .map(|i| {
            (0..n)
                .filter(|&t| live(i, t) && demand[t] <= p.production_kwh[t])
                .map(|t| c(i, t))
                .sum()
        })
        .collect();
    let reach: Vec<f64> = (0..np)
        .map(|i| congested.iter().map(|&t| c(i, t)).sum())
        .collect();
    let g = |i: usize, x: f64| {
        let (w, v) = flat[i];
        let mut s = w * x;
        if let Some(fl) = m.floor[i] {
            s -= f.floor_penalty_eur_per_kwh * (fl - x).max(0.0);
        }
        if let Some(r) = m.pro_rata[i] {
            s -= f.pro_rata_penalty_eur_per_eur * (r - v * x).max(0.0);
        }
        s
    };
    // g_i's pieces over [0, base + reach]. The bound needs g_i rising on
    // all of it (a consumer is better off with more wherever it can get
    // energy), so that serving `base` in full is never a loss; a flat or
    // falling piece (a value at or below the export price, a pro-rata row
    // that caps from above) leaves the instance to the search.
    let mut pieces: Vec<Piece> = Vec::with_capacity(3 * np);
    for i in 0..np {
        let hi = base[i] + reach[i];
        let mut cuts = vec![0.0, base[i], hi];
        if let Some(fl) = m.floor[i] {
            cuts.push(fl);
        }
        if let Some(r) = m.pro_rata[i] {
            if flat[i].1 != 0.0 {
                cuts.push(r / flat[i].1);
            }
        }
        cuts.retain(|x| x.is_finite() && *x >= 0.0 && *x <= hi);
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        for w in cuts.windows(2) {
            let len = w[1] - w[0];
            if len <= 0.0 {
                continue;
            }
            let slope = (g(i, w[1]) - g(i, w[0])) / len;
            if slope <= 0.0 {
                return None;
            }
            if w[0] >= base[i] {
                pieces.push((slope, len, i));
            }
        }
    }
    pieces.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));
    // Pieces of exactly equal slope that the pool cannot fill share what is
    // left in proportion to their lengths, as the greedy shares a tie: the
    // bound is the same for any split, and this one stays fair.
    let mut row_target = vec![0.0; np];
    let mut left = pool;
    let mut k = 0;
    while k < pieces.len() && left > 0.0 {
        let mut end = k;
        while end < pieces.len() && pieces[end].0 == pieces[k].0 {
            end += 1;
        }
        let want: f64 = pieces[k..end].iter().map(|x| x.1).sum();
        let share = (left / want).min(1.0);
        for &(_, len, i) in &pieces[k..end] {
            row_target[i] += len * share;
        }
        left -= want.min(left);
        k = end;
    }
    let bound: f64 = (0..np).map(|i| g(i, base[i] + row_target[i])).sum();
    let mut a: Vec<Vec<f64>> = (0..np)
        .map(|i| {
            (0..n)
                .map(|t| {
                    if live(i, t) && demand[t] <= p.production_kwh[t] {
                        c(i, t)
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    if !congested.is_empty() {
        let col_target: Vec<f64> = congested.iter().map(|&t| p.production_kwh[t]).collect();
        let movable = vec![true; np];
        a = balance(p, a, &congested, &movable, &row_target, &col_target).ok()?;
    }
    let (fl, pr) = shortfalls(m, &a);
    let mut score = 0.0;
    for i in 0..np {
        for t in 0..n {
            score += m.weight[i][t] * a[i][t];
        }
    }
    score -= f.floor_penalty_eur_per_kwh * fl.iter().sum::<f64>()
        + f.pro_rata_penalty_eur_per_eur * pr.iter().sum::<f64>();
    let gap = bound - score;
    tracing::debug!(bound, score, gap, "allocation: totals' bound");
    (gap <= CERTIFIED * bound.abs().max(1.0)).then_some(a)
}
