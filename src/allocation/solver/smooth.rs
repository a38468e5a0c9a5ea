//! Spreading the flow's vertex like pro rata.

use super::*;

/// Steps of balancing at most; a month of 600 participants settles in a few.
pub(super) const SMOOTH_ROUNDS: usize = 200;

/// The flow's optimum spread like pro rata: same total for every
/// participant, same total at every step, each participant's energy shared
/// among the congested steps in proportion to its consumption as far as
/// those totals allow (capped matrix balancing, started from the step's
/// pro-rata split).
///
/// A network simplex ends on a vertex: among participants of equal value it
/// serves some in full at a step and gives others nothing, and makes up the
/// difference at other steps. Every such split has the same value, floors
/// and pro-rata rows (a participant's value is the same at every congested
/// step, which is what made the instance a flow), but key files carry it as
/// coefficients rounded to a unit of the production: a consumer served in
/// full at half the steps wastes part of a unit at each of them, and on a
/// 600-participant month that loss pushed most participants below their
/// pro-rata guarantee after rounding. Participants whose value differs
/// between congested steps keep the flow's allocation; the balance works
/// around them. If the balance does not settle, the flow's vertex stands.
pub(super) fn smooth(p: &AllocationProblem, m: &Model, a: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let np = p.participants.len();
    let c = |i: usize, t: usize| p.participants[i].consumption_kwh[t];
    let congested: Vec<usize> = (0..m.n)
        .filter(|&t| {
            let served: f64 = (0..np).map(|i| a[i][t]).sum();
            let demand: f64 = (0..np).map(|i| c(i, t)).sum();
            served > 0.0 && served < demand * (1.0 - 1e-9)
        })
        .collect();
    if congested.len() < 2 {
        return a;
    }
    let movable: Vec<bool> = (0..np)
        .map(|i| {
            let mut values = congested
                .iter()
                .filter(|&&t| c(i, t) > 0.0)
                .map(|&t| m.value[i][t]);
            match values.next() {
                Some(v) => values.all(|w| w == v),
                None => false,
            }
        })
        .collect();
    // Balanced cells: movable participants at congested steps.
    let row_target: Vec<f64> = (0..np)
        .map(|i| congested.iter().map(|&t| a[i][t]).sum())
        .collect();
    let col_target: Vec<f64> = congested
        .iter()
        .map(|&t| (0..np).filter(|&i| movable[i]).map(|i| a[i][t]).sum())
        .collect();
    balance(p, a, &congested, &movable, &row_target, &col_target).unwrap_or_else(|a| {
        tracing::debug!(
            participants = np,
            steps = congested.len(),
            "allocation: the flow's split did not balance; kept as solved"
        );
        a
    })
}

/// Capped matrix balancing of the movable participants' energy at the
/// congested steps: from each step's pro-rata split, alternately scaled to
/// every participant's total (`row_target`, over the congested steps) and to
/// every step's total (`col_target`, over the movable participants), never
/// above a consumption. Other cells keep `a`'s values. Err(a) when the totals
/// are not met within 1e-9 after [`SMOOTH_ROUNDS`] rounds (they may be
/// infeasible under the caps).
pub(super) fn balance(
    p: &AllocationProblem,
    a: Vec<Vec<f64>>,
    congested: &[usize],
    movable: &[bool],
    row_target: &[f64],
    col_target: &[f64],
) -> Result<Vec<Vec<f64>>, Vec<Vec<f64>>> {
    let np = p.participants.len();
    let c = |i: usize, t: usize| p.participants[i].consumption_kwh[t];
    let mut b = a.clone();
    for (k, &t) in congested.iter().enumerate() {
        let demand: f64 = (0..np).filter(|&i| movable[i]).map(|i| c(i, t)).sum();
        let share = if demand > 0.0 {
            col_target[k] / demand
        } else {
            0.0
        };
        for i in (0..np).filter(|&i| movable[i]) {
            b[i][t] = c(i, t) * share;
        }
    }
    let tol = |x: f64| 1e-9 * x.max(1.0);
    for _ in 0..SMOOTH_ROUNDS {
        for i in (0..np).filter(|&i| movable[i]) {
            let sum: f64 = congested.iter().map(|&t| b[i][t]).sum();
            if sum > 0.0 {
                let f = row_target[i] / sum;
                for &t in congested {
                    b[i][t] = (b[i][t] * f).min(c(i, t));
                }
            }
        }
        for (k, &t) in congested.iter().enumerate() {
            let sum: f64 = (0..np).filter(|&i| movable[i]).map(|i| b[i][t]).sum();
            if sum > 0.0 {
                let f = col_target[k] / sum;
                for i in (0..np).filter(|&i| movable[i]) {
                    b[i][t] = (b[i][t] * f).min(c(i, t));
                }
            }
        }
        // Ending on the step balance keeps every step within its production;
        // the rows decide whether the guarantees still hold.
        let settled = (0..np).filter(|&i| movable[i]).all(|i| {
            let sum: f64 = congested.iter().map(|&t| b[i][t]).sum();
            (sum - row_target[i]).abs() <= tol(row_target[i])
        });
        if settled {
            return Ok(b);
        }
    }
    Err(a)
}
