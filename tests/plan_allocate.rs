//! The fast allocation solver against the generic LP (its oracle) on random
//! small instances: same score within 1e-6 relative, every row satisfied or
//! its violation reported, and the same keys on the same input.

use ped::allocation::solver::{
    pro_rata, solve_allocation, solve_allocation_lp, solve_allocation_searching,
    AllocationParticipant, AllocationProblem, AllocationSolution, Fairness, MonthToDate,
};
use proptest::prelude::*;

fn arb_problem() -> impl Strategy<Value = AllocationProblem> {
    (1usize..9, 1usize..7).prop_flat_map(|(steps, np)| {
        let series = move |hi: f64| prop::collection::vec(prop_oneof![Just(0.0), 0.0..hi], steps);
        (
            series(6.0),
            prop::collection::vec(
                (
                    series(3.0),
                    // Flat or time-of-use tariffs, some below the local price.
                    prop_oneof![
                        (0.05..0.35f64).prop_map(move |x| vec![x; steps]),
                        prop::collection::vec(0.05..0.35f64, steps),
                        // Few distinct values: exact ties between participants.
                        prop::collection::vec(
                            prop_oneof![Just(0.15), Just(0.2), Just(0.25)],
                            steps
                        ),
                    ],
                    1u8..4,
                    prop::option::of(0.0..0.5f64),
                    prop::option::of((0.0..3.0f64, -0.3..0.3f64)),
                ),
                np,
            ),
            prop::option::of(0.0..1.5f64),
            any::<bool>(),
            prop_oneof![Just(vec![]), series(0.12)],
            0.0..2.0f64,
        )
            .prop_map(move |(prod, parts, floor, no_worse, export, tier_w)| {
                AllocationProblem {
                    steps,
                    production_kwh: prod,
                    participants: parts
                        .into_iter()
                        .enumerate()
                        .map(|(i, (c, tariff, tier, share, mtd))| AllocationParticipant {
                            id: format!("p{i}"),
                            consumption_kwh: c,
                            tariff_eur_per_kwh: tariff,
                            tier,
                            subscription_share: share,
                            month_to_date: mtd
                                .map(|(kwh, gap)| MonthToDate {
                                    allocated_kwh: kwh,
                                    value_eur: 0.1 * kwh,
                                    pro_rata_value_eur: 0.1 * kwh + gap,
                                })
                                .unwrap_or_default(),
                        })
                        .collect(),
                    local_price_eur_per_kwh: 0.10,
                    export_price_eur_per_kwh: export,
                    month_to_date_production_kwh: 5.0,
                    fairness: Fairness {
                        floor_ratio: floor,
                        no_worse_than_pro_rata: no_worse,
                        tier_weight_eur_per_kwh: tier_w,
                        ..Fairness::default()
                    },
                }
            })
    })
}

/// Rows checked from scratch, independently of the solver's own accounting.
fn assert_rows(p: &AllocationProblem, s: &AllocationSolution) {
    assert_eq!(s.allocated_kwh.len(), p.participants.len());
    for t in 0..p.steps {
        let mut sum = 0.0;
        for (q, row) in p.participants.iter().zip(&s.allocated_kwh) {
            let a = row[t];
            assert!(
                a >= 0.0 && a <= q.consumption_kwh[t] + 1e-9,
                "{} at {t}: {a}",
                q.id
            );
            sum += a;
        }
        assert!(
            sum <= p.production_kwh[t] + 1e-9,
            "step {t}: {sum} > {}",
            p.production_kwh[t]
        );
    }
    let pr = pro_rata(p);
    for (i, q) in p.participants.iter().enumerate() {
        let reported = |rule: &str| {
            s.violations
                .iter()
                .filter(|v| v.rule == rule && v.participant == q.id)
                .map(|v| v.amount)
                .sum::<f64>()
        };
        let v = |t: usize| q.tariff_eur_per_kwh[t] - p.local_price_eur_per_kwh;
        if p.fairness.no_worse_than_pro_rata {
            let got: f64 = (0..p.steps)
                .map(|t| v(t) * s.allocated_kwh[i][t])
                .sum::<f64>()
                + q.month_to_date.value_eur;
            let want: f64 = (0..p.steps).map(|t| v(t) * pr[i][t]).sum::<f64>()
                + q.month_to_date.pro_rata_value_eur;
            let short = (want - got).max(0.0);
            assert!(
                (short - reported("pro_rata")).abs() < 1e-5 || short < 1e-6,
                "{} pro rata short {short}, reported {}",
                q.id,
                reported("pro_rata")
            );
        }
        if let (Some(r), Some(share)) = (p.fairness.floor_ratio, q.subscription_share) {
            let pool = p.month_to_date_production_kwh + p.production_kwh.iter().sum::<f64>();
            let consumed: f64 = q.consumption_kwh.iter().sum();
            let target = (r * share * pool).min(q.month_to_date.allocated_kwh + consumed);
            let got = q.month_to_date.allocated_kwh + s.allocated_kwh[i].iter().sum::<f64>();
            let short = (target - got).max(0.0);
            assert!(
                (short - reported("floor")).abs() < 1e-5 || short < 1e-6,
                "{} floor short {short}, reported {}",
                q.id,
                reported("floor")
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn fast_solver_matches_the_lp_oracle(p in arb_problem()) {
        let fast = solve_allocation(&p).unwrap();
        let oracle = solve_allocation_lp(&p).unwrap();
        assert_rows(&p, &fast);
        assert_rows(&p, &oracle);
        let scale = 1.0f64.max(oracle.score.abs());
        prop_assert!((fast.score - oracle.score).abs() <= 1e-6 * scale,
            "fast ({}) {} vs lp {}", fast.method, fast.score, oracle.score);
        // Deterministic: same input, same keys, bit for bit.
        prop_assert_eq!(&solve_allocation(&p).unwrap(), &fast);
    }
}

/// Flat tariffs only (as in `ped keys`), some below the local price so the
/// pro-rata row caps the participant from above: the network-flow path.
/// A third of the instances are flat only where energy can go (steps with
/// production and consumption) and keep other values elsewhere, like a
/// time-of-use tariff whose off-peak hours are at night: those must reach
/// the flow too, and the dead steps' values must not change the answer.
/// Another third are flat only at the congested steps (production short of
/// the demand) and keep time-of-use values at the others, like off-peak
/// hours at midday: the flow takes those values as private to the
/// participant (at most 4 classes of them; more go to the LP).
fn arb_flat_problem() -> impl Strategy<Value = AllocationProblem> {
    (arb_problem(), 0u8..3).prop_map(|(mut p, mode)| {
        let congested: Vec<bool> = (0..p.steps)
            .map(|t| {
                let demand: f64 = p.participants.iter().map(|q| q.consumption_kwh[t]).sum();
                demand > p.production_kwh[t]
            })
            .collect();
        for q in &mut p.participants {
            let live = |t: usize| p.production_kwh[t] > 0.0 && q.consumption_kwh[t] > 0.0;
            let keep = |t: usize| match mode {
                0 => true,
                1 => live(t),
                _ => live(t) && congested[t],
            };
            let first = (0..p.steps).find(|&t| keep(t)).unwrap_or(0);
            let v = q.tariff_eur_per_kwh[first];
            for t in 0..p.steps {
                if keep(t) {
                    q.tariff_eur_per_kwh[t] = v;
                }
            }
        }
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn flow_solver_matches_the_lp_oracle(p in arb_flat_problem()) {
        let fast = solve_allocation(&p).unwrap();
        let oracle = solve_allocation_lp(&p).unwrap();
        assert_rows(&p, &fast);
        let scale = 1.0f64.max(oracle.score.abs());
        prop_assert!((fast.score - oracle.score).abs() <= 1e-6 * scale,
            "fast ({}) {} vs lp {}", fast.method, fast.score, oracle.score);
        prop_assert_eq!(&solve_allocation(&p).unwrap(), &fast);
        // The searching paths alone (no optimum read from the totals).
        let searched = solve_allocation_searching(&p).unwrap();
        assert_rows(&p, &searched);
        prop_assert!((searched.score - oracle.score).abs() <= 1e-6 * scale,
            "searching ({}) {} vs lp {}", searched.method, searched.score, oracle.score);
        if searched.method == "flow" {
            // Exact integers inside: never better than the LP beyond its
            // own tolerance, and the same keys bit for bit on the same input.
            prop_assert!(searched.score <= oracle.score + 1e-6 * scale);
            prop_assert_eq!(&solve_allocation_searching(&p).unwrap(), &searched);
        }
    }
}

/// The flat strategy must actually reach the flow path (searching), or the
/// property above would pass on the greedy and the LP alone; so must
/// instances with private time-of-use values (not flat at every live step);
/// and the optimum read from the totals must be reached too.
#[test]
fn flat_instances_reach_the_flow_path() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = arb_flat_problem();
    let (mut flow, mut private, mut other, mut totals) = (0, 0, 0, 0);
    for _ in 0..300 {
        let p = strategy.new_tree(&mut runner).unwrap().current();
        let live_values_differ = p.participants.iter().any(|q| {
            let mut live = (0..p.steps)
                .filter(|&t| p.production_kwh[t] > 0.0 && q.consumption_kwh[t] > 0.0)
                .map(|t| q.tariff_eur_per_kwh[t]);
            live.next().is_some_and(|v| live.any(|x| x != v))
        });
        if solve_allocation(&p).unwrap().method == "totals" {
            totals += 1;
        }
        match solve_allocation_searching(&p).unwrap().method.as_str() {
            "flow" if live_values_differ => private += 1,
            "flow" => flow += 1,
            "greedy" => {}
            _ => other += 1,
        }
    }
    assert!(
        flow >= 40,
        "only {flow} of 300 flat instances went through the flow"
    );
    assert!(
        private >= 10,
        "only {private} of 300 instances with private values went through the flow"
    );
    // Only instances with more than 4 private classes may leave the flow.
    assert!(other <= 30, "{other} of 300 went to the LP");
    assert!(
        totals >= 20,
        "only {totals} of 300 were solved from the totals"
    );
}

/// Larger trees than the property's (hundreds of nodes, thousands of arcs,
/// many degenerate pivots): the synthetic district with flat tariffs.
#[test]
fn flow_matches_the_lp_on_flat_synthetic_districts() {
    let mut by_totals = 0;
    for (np, n, seed) in [(40, 96, 1), (25, 48, 2), (60, 72, 3)] {
        let mut p = ped::plan::synthetic::allocation(np, n, seed);
        for q in &mut p.participants {
            let mean = q.tariff_eur_per_kwh.iter().sum::<f64>() / n as f64;
            q.tariff_eur_per_kwh.iter_mut().for_each(|x| *x = mean);
        }
        let oracle = solve_allocation_lp(&p).unwrap();
        // The totals' path declines where its balance does not settle in
        // `SMOOTH_ROUNDS` (two of these three): then the flow answers.
        for (fast, methods) in [
            (solve_allocation_searching(&p).unwrap(), &["flow"][..]),
            (solve_allocation(&p).unwrap(), &["totals", "flow"][..]),
        ] {
            let method = fast.method.as_str();
            assert!(methods.contains(&method), "{np} x {n}: {method}");
            by_totals += usize::from(method == "totals");
            assert_rows(&p, &fast);
            assert!(
                (fast.score - oracle.score).abs() <= 1e-6 * oracle.score.abs().max(1.0),
                "{np} x {n}: {method} {} vs lp {}",
                fast.score,
                oracle.score
            );
        }
    }
    assert!(by_totals >= 1, "{by_totals} of 3 solved from the totals");
}

/// A month with nothing allocated yet, local energy at 0.10 €/kWh and no
/// export price, one step per production value.
fn fresh_month(
    production_kwh: Vec<f64>,
    participants: Vec<AllocationParticipant>,
    fairness: Fairness,
) -> AllocationProblem {
    AllocationProblem {
        steps: production_kwh.len(),
        production_kwh,
        participants,
        local_price_eur_per_kwh: 0.1,
        export_price_eur_per_kwh: vec![],
        month_to_date_production_kwh: 0.0,
        fairness,
    }
}

/// Participant `p{i}`: tier 1, no subscription share, nothing allocated yet.
fn fresh_participant(
    i: usize,
    consumption_kwh: Vec<f64>,
    tariff_eur_per_kwh: Vec<f64>,
) -> AllocationParticipant {
    AllocationParticipant {
        id: format!("p{i}"),
        consumption_kwh,
        tariff_eur_per_kwh,
        tier: 1,
        subscription_share: None,
        month_to_date: MonthToDate::default(),
    }
}

#[test]
fn both_paths_are_exercised() {
    // A greedy-optimal instance and one where a fairness row binds.
    let mk = |no_worse: bool| {
        fresh_month(
            vec![2.0, 2.0],
            (0..2)
                .map(|i| fresh_participant(i, vec![2.0, 2.0], vec![0.3 - 0.1 * i as f64; 2]))
                .collect(),
            Fairness {
                no_worse_than_pro_rata: no_worse,
                ..Fairness::default()
            },
        )
    };
    assert_eq!(solve_allocation(&mk(false)).unwrap().method, "greedy");
    let s = solve_allocation(&mk(true)).unwrap();
    assert_ne!(s.method, "greedy");
    let o = solve_allocation_lp(&mk(true)).unwrap();
    assert!((s.score - o.score).abs() < 1e-6);

    // Few variables in play: one short step, one participant short of its
    // pro-rata value. With flat tariffs the network flow solves it exactly;
    // with one time-of-use participant sifting must find the energy to move
    // and prove it.
    let n = 10;
    let flat = fresh_month(
        (0..n).map(|t| if t == 0 { 5.0 } else { 10.0 }).collect(),
        (0..10)
            .map(|i| {
                let tariff = if i == 9 { 0.15 } else { 0.2 + 0.01 * i as f64 };
                fresh_participant(i, vec![1.0; n], vec![tariff; n])
            })
            .collect(),
        Fairness::default(),
    );
    // Flat: every participant's value is one, so the optimum is read from
    // the totals. One participant's tariff differs at an uncongested step: its
    // variables there are private to it, maximised out of its penalty
    // term, and the flow still solves it.
    let mut private = flat.clone();
    private.participants[0].tariff_eur_per_kwh[1] += 0.001;
    // Two short steps at which its values differ: not a network (an LP,
    // sifted or, this small after merging the other steps, whole).
    let mut tou = private.clone();
    tou.production_kwh[1] = 9.5;
    for (p, method) in [(flat, "totals"), (private, "flow"), (tou, "lp")] {
        let s = solve_allocation(&p).unwrap();
        assert!(s.method.ends_with(method), "{} vs {method}", s.method);
        let o = solve_allocation_lp(&p).unwrap();
        assert!(
            (s.score - o.score).abs() <= 1e-6 * o.score.abs(),
            "{} vs {}",
            s.score,
            o.score
        );
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        // p9 gets its pro-rata half kWh in the short step (with two short
        // steps, its pro-rata value over both).
        let (short, owed) = if method == "lp" {
            (s.allocated_kwh[9][..2].iter().sum::<f64>(), 0.5 + 0.95)
        } else {
            (s.allocated_kwh[9][0], 0.5)
        };
        assert!((short - owed).abs() < 1e-6, "{:?}", s.allocated_kwh[9]);
    }
}
