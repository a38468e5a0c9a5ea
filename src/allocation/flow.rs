//! Exact allocation by network flow, for the instances where every coupling
//! row only sees a participant's **total** allocation.
//!
//! When participant i's value `v_i` is the same at every step (flat tariff)
//! or it has no pro-rata row, its floor row `A_i + u_i ≥ F_i` and pro-rata
//! row `v_i A_i + w_i ≥ R_i` depend on `A_i = Σ_t a_it` alone, and the
//! optimal slacks leave the concave piecewise-linear term
//!
//! ```text
//! φ_i(A) = −M_f (F_i − A)⁺ − M_p (R_i − v_i A)⁺
//! ```
//!
//! (≤ 3 pieces; for `v_i < 0` the pro-rata row is an upper bound on `A_i`).
//! The allocation is then a max-gain circulation on
//!
//! ```text
//! source ─(one arc per piece of φ_i: length, slope)→ participant i
//!        ─(cap c_it, gain w_it)→ step t ─(cap P_t, gain 0)→ sink ─→ source
//! ```
//!
//! Concavity makes the pieces fill in order (a later piece never pays more),
//! so no extra row is needed. The circulation is solved by a primal network
//! simplex after LEMON's `NetworkSimplex`: a spanning tree stored as
//! parent/pred/thread/rev_thread/succ_num/last_succ arrays, block-search
//! pivoting with blocks of about 2√arcs over arcs stored in a mixed order
//! (original arc j sits √arcs places after arc j − 1, wrapping), and
//! a strongly feasible tree (ties
//! on the leaving arc broken towards the root) so degenerate pivots cannot
//! cycle. The caller may start arcs at their capacity (the allocation starts
//! from the greedy); the imbalance that leaves rides on Big-M artificial
//! arcs to the root, as in LEMON's initialisation with supplies.
//!
//! Everything inside is **integer**: gains in 1e-9 €/kWh, energies in the
//! finest of 1e-12 … 1e-6 kWh that keeps the pooled production below 1e17
//! units (1e-12 kWh up to 100 MWh a horizon), both `i64`, objective sums in
//! `i128`. The simplex is thus exact and deterministic (same input, same
//! pivots, same output bit for bit); caps are rounded down so the result
//! never breaks a cap or a step row. Against the real-valued optimum the
//! rounding costs at most 0.5e-9 €/kWh on each allocated kWh (gains) plus
//! one energy unit per arc (caps): 3 M arcs at 1e-12 kWh lose 3e-6 kWh, far
//! inside the 1e-6 relative agreement with the LP the tests require. The
//! caller bounds the gains so that no potential (a sum of costs along a tree
//! path) can overflow.

/// €/kWh → 1e-9 €/kWh.
pub const GAIN_SCALE: f64 = 1e9;

const STATE_UPPER: i8 = -1;
const STATE_TREE: i8 = 0;
const STATE_LOWER: i8 = 1;

/// A min-cost circulation (all supplies zero) solved by network simplex.
/// Arcs are stored as parallel arrays, no per-arc allocation: about 45
/// bytes an arc while solving (ends, cap, cost, flow, state, position and
/// the returned flow), so 3 M arcs take about 135 MB.
#[derive(Debug, Default)]
pub struct Circulation {
    node_num: usize,
    source: Vec<u32>,
    target: Vec<u32>,
    cap: Vec<i64>,
    cost: Vec<i64>,
    /// Arcs that start at their capacity instead of at zero (a warm start).
    upper: Vec<u32>,
}

/// The optimal circulation: flow per arc, in the order the arcs were added.
#[derive(Debug)]
pub struct CirculationSolution {
    pub flow: Vec<i64>,
    /// Σ cost × flow.
    pub cost: i128,
    pub pivots: u64,
}

impl Circulation {
    pub fn new(node_num: usize) -> Self {
        Circulation {
            node_num,
            ..Default::default()
        }
    }

    pub fn with_capacity(node_num: usize, arcs: usize) -> Self {
        Circulation {
            node_num,
            source: Vec::with_capacity(arcs),
            target: Vec::with_capacity(arcs),
            cap: Vec::with_capacity(arcs),
            cost: Vec::with_capacity(arcs),
            upper: Vec::new(),
        }
    }

    /// Adds an arc with capacity `cap ≥ 0` and unit cost `cost`; returns its index.
    pub fn add_arc(&mut self, from: usize, to: usize, cap: i64, cost: i64) -> usize {
        debug_assert!(from < self.node_num && to < self.node_num && cap >= 0);
        self.source.push(from as u32);
        self.target.push(to as u32);
        self.cap.push(cap.max(0));
        self.cost.push(cost);
        self.source.len() - 1
    }

    /// Starts arc `e` at its capacity rather than at zero. Any choice of
    /// bounds is valid (the node imbalances it leaves ride on Big-M
    /// artificial arcs until the simplex removes them); a choice close to
    /// the optimum saves the pivots that would saturate those arcs one by one.
    pub fn start_at_capacity(&mut self, e: usize) {
        self.upper.push(e as u32);
    }

    pub fn arc_num(&self) -> usize {
        self.source.len()
    }

    /// Minimises Σ cost × flow over 0 ≤ flow ≤ cap with conservation at every
    /// node. Always feasible (zero flow is), and bounded as long as no cycle
    /// of uncapacitated arcs has negative cost (the caller's graphs have none:
    /// every cycle passes a finite cap).
    ///
    /// None only if an artificial arc still carries flow at the end, which
    /// the Big-M costs rule out unless the costs overflow their bound (the
    /// caller keeps them small); the caller then takes another path.
    pub fn solve(self) -> Option<CirculationSolution> {
        Simplex::new(self).run()
    }
}

struct Simplex {
    arc_num: usize,
    source: Vec<u32>,
    target: Vec<u32>,
    cap: Vec<i64>,
    cost: Vec<i64>,
    flow: Vec<i64>,
    state: Vec<i8>,
    pi: Vec<i64>,
    parent: Vec<u32>,
    pred: Vec<u32>,
    thread: Vec<u32>,
    rev_thread: Vec<u32>,
    succ_num: Vec<u32>,
    last_succ: Vec<u32>,
    forward: Vec<bool>,
    dirty_revs: Vec<u32>,
    block_size: usize,
    next_arc: usize,
    /// Internal position of each original arc. Arcs are stored mixed, as
    /// LEMON does, so a block holds arcs from all over the graph rather
    /// than one participant's run, while the scan itself stays sequential
    /// in memory (the pricing loop is memory-bound: a strided scan over
    /// unmixed arrays was 95 % of the month's time in cache misses).
    pos: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl Simplex {
    fn new(c: Circulation) -> Self {
        let n = c.node_num;
        let m = c.source.len();
        let all_nodes = n + 1;
        let all_arcs = m + n;
        let k = ((m as f64).sqrt() as usize).max(10);
        let mut pos = Vec::with_capacity(m);
        let mut i = 0usize;
        for _ in 0..m {
            pos.push(i as u32);
            i += k;
            if i >= m {
                i = i % k + 1;
            }
        }
        fn mixed<T: Copy + Default>(v: Vec<T>, pos: &[u32]) -> Vec<T> {
            let mut out = vec![T::default(); v.len()];
            for (j, x) in v.into_iter().enumerate() {
                out[pos[j] as usize] = x;
            }
            out
        }
        let mut source = mixed(c.source, &pos);
        let mut target = mixed(c.target, &pos);
        let mut cap = mixed(c.cap, &pos);
        let mut cost = mixed(c.cost, &pos);
        source.reserve_exact(n);
        target.reserve_exact(n);
        cap.reserve_exact(n);
        cost.reserve_exact(n);
        let mut s = Simplex {
            arc_num: m,
            source,
            target,
            cap,
            cost,
            flow: vec![0; all_arcs],
            state: vec![STATE_LOWER; all_arcs],
            pi: vec![0; all_nodes],
            parent: vec![NONE; all_nodes],
            pred: vec![NONE; all_nodes],
            thread: vec![0; all_nodes],
            rev_thread: vec![0; all_nodes],
            succ_num: vec![0; all_nodes],
            last_succ: vec![0; all_nodes],
            forward: vec![true; all_nodes],
            dirty_revs: Vec::new(),
            block_size: ((2.0 * (m as f64).sqrt()) as usize).max(10),
            next_arc: 0,
            pos,
        };
        // Warm start: the arcs asked for start at their capacity.
        let mut excess = vec![0i64; n];
        for &e in &c.upper {
            let e = s.pos[e as usize] as usize;
            s.flow[e] = s.cap[e];
            s.state[e] = STATE_UPPER;
            excess[s.target[e] as usize] += s.cap[e];
            excess[s.source[e] as usize] -= s.cap[e];
        }
        // Initial tree: every node hangs from an artificial root (LEMON's
        // scheme). A node with excess sends it to the root, one short of
        // inflow receives it from the root, both at a cost no real path can
        // match, so the simplex drives every artificial flow to zero (the
        // zero circulation proves a feasible one exists). Balanced nodes get
        // a zero-flow arc towards the root: the tree starts strongly feasible.
        let max_cost = s.cost[..m].iter().fold(0i64, |a, b| a.max(b.abs()));
        let art = (max_cost + 1).saturating_mul(all_nodes as i64);
        let root = n;
        s.thread[root] = 0;
        s.rev_thread[0] = root as u32;
        s.succ_num[root] = all_nodes as u32;
        s.last_succ[root] = if n == 0 { root as u32 } else { (n - 1) as u32 };
        for (u, &ex) in excess.iter().enumerate() {
            let e = m + u;
            if ex >= 0 {
                s.source.push(u as u32);
                s.target.push(root as u32);
                s.flow[e] = ex;
                s.forward[u] = true;
                s.pi[u] = -art;
            } else {
                s.source.push(root as u32);
                s.target.push(u as u32);
                s.flow[e] = -ex;
                s.forward[u] = false;
                s.pi[u] = art;
            }
            s.cap.push(i64::MAX / 4);
            s.cost.push(art);
            s.state[e] = STATE_TREE;
            s.parent[u] = root as u32;
            s.pred[u] = e as u32;
            s.thread[u] = (u + 1) as u32;
            s.rev_thread[u + 1] = u as u32;
            s.succ_num[u] = 1;
            s.last_succ[u] = u as u32;
        }
        if n == 0 {
            s.thread[root] = root as u32;
            s.rev_thread[root] = root as u32;
        }
        s
    }

    #[inline]
    fn reduced(&self, e: usize) -> i64 {
        i64::from(self.state[e])
            * (self.cost[e] + self.pi[self.source[e] as usize] - self.pi[self.target[e] as usize])
    }

    /// Block search: the most negative reduced cost within the first block
    /// (starting where the last search stopped) that holds a candidate.
    fn find_entering_arc(&mut self) -> Option<usize> {
        let m = self.arc_num;
        if m == 0 {
            return None;
        }
        let mut min = 0i64;
        let mut min_arc = self.next_arc;
        let mut cnt = self.block_size;
        let mut e = self.next_arc;
        let mut scanned = 0;
        while scanned < m {
            let c = self.reduced(e);
            if c < min {
                min = c;
                min_arc = e;
            }
            scanned += 1;
            e += 1;
            if e == m {
                e = 0;
            }
            cnt -= 1;
            if cnt == 0 {
                if min < 0 {
                    break;
                }
                cnt = self.block_size;
            }
        }
        if min >= 0 {
            return None;
        }
        self.next_arc = e;
        Some(min_arc)
    }

    fn run(mut self) -> Option<CirculationSolution> {
        let mut pivots = 0u64;
        while let Some(in_arc) = self.find_entering_arc() {
            pivots += 1;
            self.pivot(in_arc);
        }
        let m = self.arc_num;
        if self.flow[m..].iter().any(|f| *f != 0) {
            return None;
        }
        let mut total: i128 = 0;
        for e in 0..m {
            total += i128::from(self.flow[e]) * i128::from(self.cost[e]);
        }
        let flow = self.pos.iter().map(|&p| self.flow[p as usize]).collect();
        Some(CirculationSolution {
            flow,
            cost: total,
            pivots,
        })
    }

    fn pivot(&mut self, in_arc: usize) {
        // Join node: the lowest common ancestor of the entering arc's ends.
        let (mut u, mut v) = (self.source[in_arc], self.target[in_arc]);
        while u != v {
            if self.succ_num[u as usize] < self.succ_num[v as usize] {
                u = self.parent[u as usize];
            } else {
                v = self.parent[v as usize];
            }
        }
        let join = u;

        // Leaving arc: the first blocking arc met along the cycle's direction,
        // scanning the second path with `<=` so the last one wins a tie; this
        // keeps the tree strongly feasible.
        let (first, second) = if self.state[in_arc] == STATE_LOWER {
            (self.source[in_arc], self.target[in_arc])
        } else {
            (self.target[in_arc], self.source[in_arc])
        };
        let mut delta = self.cap[in_arc];
        let mut result = 0;
        let mut u_out = NONE;
        let mut u = first;
        while u != join {
            let e = self.pred[u as usize] as usize;
            let d = if self.forward[u as usize] {
                self.flow[e]
            } else {
                self.cap[e] - self.flow[e]
            };
            if d < delta {
                delta = d;
                u_out = u;
                result = 1;
            }
            u = self.parent[u as usize];
        }
        let mut u = second;
        while u != join {
            let e = self.pred[u as usize] as usize;
            let d = if self.forward[u as usize] {
                self.cap[e] - self.flow[e]
            } else {
                self.flow[e]
            };
            if d <= delta {
                delta = d;
                u_out = u;
                result = 2;
            }
            u = self.parent[u as usize];
        }
        let (u_in, v_in) = if result == 1 {
            (first, second)
        } else {
            (second, first)
        };

        // Augment along the cycle.
        if delta > 0 {
            let val = i64::from(self.state[in_arc]) * delta;
            self.flow[in_arc] += val;
            let mut u = self.source[in_arc];
            while u != join {
                let e = self.pred[u as usize] as usize;
                self.flow[e] += if self.forward[u as usize] { -val } else { val };
                u = self.parent[u as usize];
            }
            let mut u = self.target[in_arc];
            while u != join {
                let e = self.pred[u as usize] as usize;
                self.flow[e] += if self.forward[u as usize] { val } else { -val };
                u = self.parent[u as usize];
            }
        }
        if result == 0 {
            // The entering arc itself blocks: it only moves to its other bound.
            self.state[in_arc] = -self.state[in_arc];
            return;
        }
        self.state[in_arc] = STATE_TREE;
        let out_arc = self.pred[u_out as usize] as usize;
        self.state[out_arc] = if self.flow[out_arc] == 0 {
            STATE_LOWER
        } else {
            STATE_UPPER
        };
        self.update_tree(in_arc, join, u_in, v_in, u_out);
        self.update_potential(u_in, v_in);
    }

    /// Re-hangs the subtree cut off by the leaving arc below the entering
    /// arc, reversing the stem between `u_in` and `u_out`, and repairs the
    /// thread order, subtree sizes and last successors (LEMON's scheme).
    fn update_tree(&mut self, in_arc: usize, join: u32, u_in: u32, v_in: u32, u_out: u32) {
        let old_rev_thread = self.rev_thread[u_out as usize];
        let old_succ_num = self.succ_num[u_out as usize];
        let old_last_succ = self.last_succ[u_out as usize];
        let v_out = self.parent[u_out as usize];

        let mut u = self.last_succ[u_in as usize];
        let mut right = self.thread[u as usize];
        let last = if old_rev_thread == v_in {
            self.thread[self.last_succ[u_out as usize] as usize]
        } else {
            self.thread[v_in as usize]
        };

        let mut stem = u_in;
        self.thread[v_in as usize] = stem;
        self.dirty_revs.clear();
        self.dirty_revs.push(v_in);
        let mut par_stem = v_in;
        while stem != u_out {
            let new_stem = self.parent[stem as usize];
            self.thread[u as usize] = new_stem;
            self.dirty_revs.push(u);

            let w = self.rev_thread[stem as usize];
            self.thread[w as usize] = right;
            self.rev_thread[right as usize] = w;

            self.parent[stem as usize] = par_stem;
            par_stem = stem;
            stem = new_stem;

            u = if self.last_succ[stem as usize] == self.last_succ[par_stem as usize] {
                self.rev_thread[par_stem as usize]
            } else {
                self.last_succ[stem as usize]
            };
            right = self.thread[u as usize];
        }
        self.parent[u_out as usize] = par_stem;
        self.thread[u as usize] = last;
        self.rev_thread[last as usize] = u;
        self.last_succ[u_out as usize] = u;

        if old_rev_thread != v_in {
            self.thread[old_rev_thread as usize] = right;
            self.rev_thread[right as usize] = old_rev_thread;
        }
        for k in 0..self.dirty_revs.len() {
            let u = self.dirty_revs[k];
            let t = self.thread[u as usize];
            self.rev_thread[t as usize] = u;
        }

        let mut tmp_sc: i64 = 0;
        let tmp_ls = self.last_succ[u_out as usize];
        let mut u = u_out;
        while u != u_in {
            let w = self.parent[u as usize];
            self.pred[u as usize] = self.pred[w as usize];
            self.forward[u as usize] = !self.forward[w as usize];
            tmp_sc += i64::from(self.succ_num[u as usize]) - i64::from(self.succ_num[w as usize]);
            self.succ_num[u as usize] = tmp_sc as u32;
            self.last_succ[w as usize] = tmp_ls;
            u = w;
        }
        self.pred[u_in as usize] = in_arc as u32;
        self.forward[u_in as usize] = u_in == self.source[in_arc];
        self.succ_num[u_in as usize] = old_succ_num;

        let (up_limit_in, up_limit_out) = if self.last_succ[join as usize] == v_in {
            (NONE, join)
        } else {
            (join, NONE)
        };
        let mut u = v_in;
        while u != up_limit_in && u != NONE && self.last_succ[u as usize] == v_in {
            self.last_succ[u as usize] = self.last_succ[u_out as usize];
            u = self.parent[u as usize];
        }
        let new_last = if join != old_rev_thread && v_in != old_rev_thread {
            old_rev_thread
        } else {
            self.last_succ[u_out as usize]
        };
        let mut u = v_out;
        while u != up_limit_out && u != NONE && self.last_succ[u as usize] == old_last_succ {
            self.last_succ[u as usize] = new_last;
            u = self.parent[u as usize];
        }
        let mut u = v_in;
        while u != join {
            self.succ_num[u as usize] += old_succ_num;
            u = self.parent[u as usize];
        }
        let mut u = v_out;
        while u != join {
            self.succ_num[u as usize] -= old_succ_num;
            u = self.parent[u as usize];
        }
    }

    /// Shifts the potentials of the moved subtree so the entering arc's
    /// reduced cost becomes zero.
    fn update_potential(&mut self, u_in: u32, v_in: u32) {
        let e = self.pred[u_in as usize] as usize;
        let sigma = if self.forward[u_in as usize] {
            self.pi[v_in as usize] - self.pi[u_in as usize] - self.cost[e]
        } else {
            self.pi[v_in as usize] - self.pi[u_in as usize] + self.cost[e]
        };
        let end = self.thread[self.last_succ[u_in as usize] as usize];
        let mut u = u_in;
        while u != end {
            self.pi[u as usize] += sigma;
            u = self.thread[u as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over integer flows of a tiny graph.
    #[test]
    fn transportation_optimum_matches_hand_computation() {
        // source 0 → {1,2} → sink 3 → 0; gains as negative costs.
        let mut c = Circulation::new(4);
        let a = c.add_arc(0, 1, 5, -3);
        let b = c.add_arc(0, 2, 5, -1);
        let d = c.add_arc(1, 3, 4, 0);
        let e = c.add_arc(2, 3, 4, 0);
        c.add_arc(3, 0, 6, 0);
        let s = c.solve().unwrap();
        // 4 via node 1 (gain 3), 2 via node 2 (gain 1) under the return cap 6.
        assert_eq!(s.cost, -14);
        assert_eq!(s.flow[a], 4);
        assert_eq!(s.flow[b], 2);
        assert_eq!(s.flow[d], 4);
        assert_eq!(s.flow[e], 2);
    }

    #[test]
    fn negative_cycle_free_graph_keeps_zero_flow() {
        let mut c = Circulation::new(3);
        c.add_arc(0, 1, 10, 2);
        c.add_arc(1, 2, 10, -1);
        c.add_arc(2, 0, 10, 0);
        let s = c.solve().unwrap();
        assert_eq!(s.cost, 0);
        assert!(s.flow.iter().all(|f| *f == 0));
    }

    #[test]
    fn random_assignment_matches_brute_force_over_vertex_flows() {
        // Min-cost circulation value equals the best of all integer flows on
        // a bipartite graph small enough to enumerate.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |k: i64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % k as u64) as i64
        };
        for _ in 0..200 {
            let caps: Vec<i64> = (0..4).map(|_| rnd(3)).collect();
            let costs: Vec<i64> = (0..4).map(|_| rnd(7) - 4).collect();
            let sink_cap = [rnd(4), rnd(4)];
            // Nodes: 0 source, 1..=2 left, 3..=4 right, 5 sink. Arcs left i → right j.
            let mut c = Circulation::new(6);
            c.add_arc(0, 1, 10, 0);
            c.add_arc(0, 2, 10, 0);
            for i in 0..2 {
                for j in 0..2 {
                    c.add_arc(1 + i, 3 + j, caps[2 * i + j], costs[2 * i + j]);
                }
            }
            c.add_arc(3, 5, sink_cap[0], 0);
            c.add_arc(4, 5, sink_cap[1], 0);
            c.add_arc(5, 0, 100, 0);
            // Any warm start, balanced or not, must reach the same optimum.
            for e in 0..c.arc_num() {
                if rnd(3) == 0 {
                    c.start_at_capacity(e);
                }
            }
            let s = c.solve().unwrap();
            let mut best = 0i64;
            for f0 in 0..=caps[0] {
                for f1 in 0..=caps[1] {
                    for f2 in 0..=caps[2] {
                        for f3 in 0..=caps[3] {
                            if f0 + f2 <= sink_cap[0] && f1 + f3 <= sink_cap[1] {
                                let v =
                                    f0 * costs[0] + f1 * costs[1] + f2 * costs[2] + f3 * costs[3];
                                best = best.min(v);
                            }
                        }
                    }
                }
            }
            assert_eq!(
                s.cost,
                i128::from(best),
                "caps {caps:?} costs {costs:?} sinks {sink_cap:?}"
            );
        }
    }
}
