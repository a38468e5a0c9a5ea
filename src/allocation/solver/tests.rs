use super::*;

/// ψ(x) by the LP: the oracle of `Private::best`.
fn private_by_lp(pv: &Private, x: f64) -> f64 {
    let mut vars = ProblemVariables::new();
    let y: Vec<Variable> = pv
        .classes
        .iter()
        .map(|c| vars.add(variable().min(0.0).max(c.cap)))
        .collect();
    let u = vars.add(variable().min(0.0));
    let s = vars.add(variable().min(0.0));
    let mut obj = Expression::from(0.0);
    let (mut sy, mut vy) = (Expression::from(0.0), Expression::from(0.0));
    for (c, y) in pv.classes.iter().zip(&y) {
        obj.add_mul(c.weight, *y);
        sy.add_mul(1.0, *y);
        vy.add_mul(c.value, *y);
    }
    let mut model = vars
        .maximise(obj - pv.mf * u - pv.mp * s)
        .using(good_lp::clarabel)
        .with(constraint::geq(s + vy, pv.pro_rata - pv.value * x));
    if let Some(f) = pv.floor {
        model = model.with(constraint::geq(u + sy, f - x));
    }
    let sol = model.solve().unwrap();
    let y: Vec<f64> = y.iter().map(|v| sol.value(*v)).collect();
    pv.score(x, &y)
}

#[test]
fn private_term_finds_the_vertex_where_both_rows_bind() {
    // Taking energy costs (negative weights), y2 more than y1; the
    // floor wants y1 + y2 ≥ 1 and the pro-rata row 0.1 y1 + 0.3 y2 ≥
    // 0.2: the only optimum is where both lines cross, (0.5, 0.5).
    let class = |weight, value| PrivateClass {
        weight,
        value,
        cap: 2.0,
        steps: vec![],
    };
    let pv = Private {
        classes: vec![class(-0.1, 0.1), class(-0.2, 0.3)],
        value: 0.0,
        floor: Some(1.0),
        pro_rata: 0.2,
        mf: 1.5,
        mp: 4.0,
    };
    let (best, y) = pv.best(0.0);
    assert!(
        (y[0] - 0.5).abs() < 1e-9 && (y[1] - 0.5).abs() < 1e-9,
        "{y:?}"
    );
    assert!((best - private_by_lp(&pv, 0.0)).abs() < 1e-7);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// The enumeration finds ψ's maximum, and ψ is linear between the
    /// breakpoints it lists (so the flow's pieces are ψ).
    #[test]
    fn private_term_matches_its_lp(
        classes in proptest::collection::vec((-0.2..0.4f64, -0.1..0.3f64, 0.0..3.0f64), 1..5),
        value in -0.1..0.3f64,
        floor in proptest::option::of(0.0..6.0f64),
        pro_rata in -0.5..1.5f64,
        xs in proptest::collection::vec(0.0..6.0f64, 3),
    ) {
        let pv = Private {
            classes: classes
                .into_iter()
                .map(|(weight, value, cap)| PrivateClass { weight, value, cap, steps: vec![] })
                .collect(),
            value,
            floor,
            pro_rata,
            mf: 1.5,
            mp: 4.0,
        };
        let total = 6.0;
        for &x in &xs {
            let (best, y) = pv.best(x);
            let lp = private_by_lp(&pv, x);
            proptest::prop_assert!((best - lp).abs() <= 1e-6 * (1.0 + lp.abs()), "x {x}: {best} vs lp {lp}");
            proptest::prop_assert!((pv.score(x, &y) - best).abs() <= 1e-12 * (1.0 + best.abs()));
        }
        let mut cuts = vec![0.0];
        cuts.extend(pv.breakpoints(total));
        cuts.push(total);
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let mid = 0.5 * (a + b);
            let line = pv.best(a).0 + (pv.best(b).0 - pv.best(a).0) * (mid - a) / (b - a).max(1e-300);
            proptest::prop_assert!((pv.best(mid).0 - line).abs() <= 1e-6 * (1.0 + line.abs()),
                "not linear on [{a}, {b}]: {} vs {line}", pv.best(mid).0);
        }
    }
}

fn problem(prod: Vec<f64>, parts: Vec<(Vec<f64>, f64, u8)>) -> AllocationProblem {
    let n = prod.len();
    AllocationProblem {
        steps: n,
        production_kwh: prod,
        participants: parts
            .into_iter()
            .enumerate()
            .map(|(i, (c, tariff, tier))| AllocationParticipant {
                id: format!("p{i}"),
                consumption_kwh: c,
                tariff_eur_per_kwh: vec![tariff; n],
                tier,
                subscription_share: None,
                month_to_date: MonthToDate::default(),
            })
            .collect(),
        local_price_eur_per_kwh: 0.10,
        export_price_eur_per_kwh: vec![],
        month_to_date_production_kwh: 0.0,
        fairness: Fairness {
            no_worse_than_pro_rata: false,
            ..Fairness::default()
        },
    }
}

#[test]
fn greedy_serves_the_first_tier_first_and_shares_ties_pro_rata() {
    let p = problem(
        vec![3.0],
        vec![
            (vec![2.0], 0.20, 2),
            (vec![1.0], 0.15, 1),
            (vec![2.0], 0.20, 2),
        ],
    );
    let s = solve_allocation(&p).unwrap();
    assert_eq!(s.method, "greedy");
    assert_eq!(s.allocated_kwh, vec![vec![1.0], vec![1.0], vec![1.0]]);
    assert!(s.violations.is_empty());
}

#[test]
fn pro_rata_rule_binds_and_is_reported_when_it_cannot_hold() {
    // Two equal consumers; the cheaper one would get nothing by value.
    let mut p = problem(
        vec![2.0, 2.0],
        vec![(vec![2.0, 2.0], 0.30, 1), (vec![2.0, 2.0], 0.20, 1)],
    );
    p.fairness.no_worse_than_pro_rata = true;
    let s = solve_allocation(&p).unwrap();
    assert_ne!(s.method, "greedy");
    let got: f64 = s.allocated_kwh[1].iter().sum();
    assert!((got - 2.0).abs() < 1e-6, "{:?}", s.allocated_kwh);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    // A month-to-date deficit that cannot be made up is reported.
    p.participants[1].month_to_date.pro_rata_value_eur = 5.0;
    let s = solve_allocation(&p).unwrap();
    let o = solve_allocation_lp(&p).unwrap();
    assert!((s.score - o.score).abs() < 1e-6, "{s:?} {o:?}");
    let v = s
        .violations
        .iter()
        .find(|v| v.rule == "pro_rata" && v.participant == "p1")
        .expect("a pro-rata violation");
    // p0 keeps its own pro-rata value (its shortfall would cost more per
    // kWh than p1's recovers), so p1 stays at its pro-rata 2 kWh.
    assert!((v.amount - 5.0).abs() < 1e-6, "{v:?}");
    assert_eq!(s.violations.len(), 1);
}

#[test]
fn floor_rule_moves_energy_to_the_subscriber() {
    let mut p = problem(vec![4.0], vec![(vec![4.0], 0.30, 1), (vec![4.0], 0.20, 1)]);
    p.participants[1].subscription_share = Some(0.5);
    p.fairness.floor_ratio = Some(0.5);
    let s = solve_allocation(&p).unwrap();
    assert!(
        (s.allocated_kwh[1][0] - 1.0).abs() < 1e-6,
        "{:?}",
        s.allocated_kwh
    );
    assert!((s.allocated_kwh[0][0] - 3.0).abs() < 1e-6);
}

#[test]
fn line_min_finds_the_leftmost_minimiser() {
    let mut scratch = Vec::new();
    // h(y) = 2 (y − 1)⁺ + 1 (y − 3)⁺ − 2.5 y: slope −2.5, then −0.5 after
    // 1, then +0.5 after 3, so the minimum is at 3.
    let terms = [(2.0, -1.0, 1.0), (1.0, -3.0, 1.0)];
    assert_eq!(line_min(terms.into_iter(), 2.5, 10.0, &mut scratch), 3.0);
    // Already rising at 0: stays at 0. Never rising: clipped at the cap.
    assert_eq!(line_min(terms.into_iter(), -1.0, 10.0, &mut scratch), 0.0);
    assert_eq!(line_min(terms.into_iter(), 4.0, 10.0, &mut scratch), 10.0);
    // A negative slope coefficient switches its term off past −b/s.
    let falling = [(1.0, 2.0, -1.0)];
    assert_eq!(line_min(falling.into_iter(), 0.0, 10.0, &mut scratch), 2.0);
}

#[test]
fn synthetic_district_is_certified_without_the_full_lp() {
    // Both fairness rows bind on the synthetic district, here with a
    // dynamic tariff that moves a little every step (indexed on a spot
    // price): no two steps merge and the values differ between the
    // steps that matter, so it is not a network. The dual estimate
    // leaves a small working set; the structured path must prove its
    // answer (and agree with the oracle) rather than fall back. With
    // off-peak hours under the PV only at uncongested steps the
    // participants' values there are private and the flow solves it.
    let dynamic =
        crate::plan::synthetic::dynamic_tariffs(crate::plan::synthetic::allocation(40, 96, 3));
    let midday = crate::plan::synthetic::allocation_midday_off_peak(40, 96, 3);
    let before = lp_fallbacks();
    for (p, method) in [(dynamic, "sifted_lp"), (midday, "flow")] {
        let s = solve_allocation(&p).unwrap();
        assert_eq!(s.method, method);
        let o = solve_allocation_lp(&p).unwrap();
        assert!(
            (s.score - o.score).abs() <= 1e-6 * o.score.abs(),
            "{method}: {} vs {}",
            s.score,
            o.score
        );
    }
    assert_eq!(lp_fallbacks(), before);
}

#[test]
fn merged_steps_give_the_same_optimum_and_split_pro_rata() {
    // Night-tariff day: 96 steps, of which those covering the demand
    // merge and those without PV are one.
    let p = crate::plan::synthetic::allocation(30, 96, 5);
    let (r, groups) = reduce(&p).unwrap();
    assert!(r.steps < 30, "{} steps", r.steps);
    let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..96).collect::<Vec<_>>());
    let fast = solve_allocation(&p).unwrap();
    let o = solve_allocation_lp(&p).unwrap();
    assert!((fast.score - o.score).abs() <= 1e-6 * o.score.abs());
    // Within a merged step everyone receives the same share of its
    // consumption at each of its steps.
    for g in groups.iter().filter(|g| g.len() > 1) {
        for (i, q) in p.participants.iter().enumerate() {
            let share = |t: usize| fast.allocated_kwh[i][t] / q.consumption_kwh[t];
            for &t in &g[1..] {
                if q.consumption_kwh[t] > 0.0 && q.consumption_kwh[g[0]] > 0.0 {
                    assert!((share(t) - share(g[0])).abs() < 1e-6);
                }
            }
        }
    }
}

#[test]
fn flow_solves_flat_instances_with_binding_rows_exactly() {
    // p1's tariff is below the local price (v < 0, like a battery that
    // pays nothing): its pro-rata row caps it from above. p2 has a floor
    // that costs p0 energy; step 1 produces nothing; p1 consumes nothing at 1.
    let mut p = problem(
        vec![3.0, 0.0, 2.0],
        vec![
            (vec![2.0, 2.0, 2.0], 0.30, 1),
            (vec![2.0, 0.0, 2.0], 0.05, 1),
            (vec![1.0, 1.0, 0.0], 0.20, 1),
        ],
    );
    p.fairness.no_worse_than_pro_rata = true;
    p.fairness.floor_ratio = Some(0.8);
    p.participants[2].subscription_share = Some(0.5);
    p.participants[1].month_to_date.pro_rata_value_eur = -0.02;
    let s = solve_allocation_searching(&p).unwrap();
    assert_eq!(s.method, "flow");
    let by_totals = solve_allocation(&p).unwrap();
    assert!(
        (by_totals.score - s.score).abs() <= 1e-6 * s.score.abs().max(1.0),
        "{}: {} vs flow {}",
        by_totals.method,
        by_totals.score,
        s.score
    );
    let o = solve_allocation_lp(&p).unwrap();
    assert!(
        (s.score - o.score).abs() <= 1e-6 * o.score.abs().max(1.0),
        "{} vs {}",
        s.score,
        o.score
    );
    // Nothing allocated where nothing is produced or consumed.
    assert!(s.allocated_kwh.iter().all(|r| r[1] == 0.0));
    assert_eq!(s.allocated_kwh[1][1], 0.0);
    // p2 gets what the floor asks (0.8 × 0.5 × 5 kWh = 2, capped at 1).
    assert!(
        (s.allocated_kwh[2][0] - 1.0).abs() < 1e-9,
        "{:?}",
        s.allocated_kwh
    );
    assert_eq!(solve_allocation_searching(&p).unwrap(), s);
}

#[test]
fn flow_is_not_used_for_time_of_use_pro_rata_rows() {
    let mut p = problem(
        vec![2.0, 2.0],
        vec![(vec![2.0, 2.0], 0.30, 1), (vec![2.0, 2.0], 0.20, 1)],
    );
    p.fairness.no_worse_than_pro_rata = true;
    let m = model(&p);
    assert!(flow_allocation(&p, &m, &greedy(&p, &m)).is_some());
    p.participants[1].tariff_eur_per_kwh[1] = 0.21;
    let m = model(&p);
    assert!(flow_allocation(&p, &m, &greedy(&p, &m)).is_none());
    // Without the pro-rata rule only floors couple the steps: eligible.
    p.fairness.no_worse_than_pro_rata = false;
    let m = model(&p);
    assert!(flow_allocation(&p, &m, &greedy(&p, &m)).is_some());
}

#[test]
fn invalid_problem_is_an_error() {
    let mut p = problem(vec![1.0, 1.0], vec![(vec![1.0], 0.2, 1)]);
    assert!(matches!(solve_allocation(&p), Err(PlanError::Invalid(_))));
    p.participants[0].consumption_kwh = vec![1.0, f64::NAN];
    p.participants[0].tariff_eur_per_kwh = vec![0.2, 0.2];
    assert!(solve_allocation(&p).is_err());
}

/// A month of flat tariffs with random values, floors that bind for the
/// small consumers and the pro-rata guarantee: what `ped keys` solves.
fn flat_month(np: usize, n: usize, seed: u64) -> AllocationProblem {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let production: Vec<f64> = (0..n)
        .map(|t| {
            let h = (t % 24) as f64;
            if (7.0..19.0).contains(&h) {
                np as f64 * 0.6 * (1.0 - ((h - 13.0) / 6.0).powi(2)) * (0.3 + rnd())
            } else {
                0.0
            }
        })
        .collect();
    let participants = (0..np)
        .map(|i| {
            let size = if i % 10 == 0 { 5.0 } else { 0.2 + rnd() };
            AllocationParticipant {
                id: format!("p{i}"),
                consumption_kwh: (0..n)
                    .map(|_| {
                        if rnd() < 0.1 {
                            0.0
                        } else {
                            size * (0.5 + rnd())
                        }
                    })
                    .collect(),
                tariff_eur_per_kwh: vec![0.18 + 0.1 * rnd(); n],
                tier: 1,
                subscription_share: Some(1.0 / np as f64),
                month_to_date: MonthToDate::default(),
            }
        })
        .collect();
    AllocationProblem {
        steps: n,
        production_kwh: production,
        participants,
        local_price_eur_per_kwh: 0.10,
        export_price_eur_per_kwh: vec![0.06; n],
        month_to_date_production_kwh: 0.0,
        fairness: Fairness {
            floor_ratio: Some(0.5),
            ..Fairness::default()
        },
    }
}

#[test]
fn flat_months_are_solved_from_the_totals_as_the_flow_solves_them() {
    for (np, n, seed) in [
        (40, 48, 1),
        (300, 96, 4),
        (120, 480, 5),
        (200, 240, 6),
        (7, 24, 3),
    ] {
        let p = flat_month(np, n, seed);
        let fast = solve_allocation(&p).unwrap();
        assert_eq!(fast.method, "totals", "{np} x {n}");
        let flow = solve_allocation_searching(&p).unwrap();
        assert_eq!(flow.method, "flow", "{np} x {n}");
        let scale = flow.score.abs().max(1.0);
        assert!(
            (fast.score - flow.score).abs() <= 1e-6 * scale,
            "{np} x {n}: totals {} vs flow {}",
            fast.score,
            flow.score
        );
        // The same totals (the optimum's are unique here: distinct values),
        // and the same split, since both end in the same balancing.
        for i in 0..np {
            let sum = |a: &[f64]| a.iter().sum::<f64>();
            let (x, y) = (sum(&fast.allocated_kwh[i]), sum(&flow.allocated_kwh[i]));
            assert!(
                (x - y).abs() <= 1e-6 * y.max(1.0),
                "{np} x {n}, p{i}: {x} vs {y}"
            );
            for t in 0..n {
                let (x, y) = (fast.allocated_kwh[i][t], flow.allocated_kwh[i][t]);
                assert!((x - y).abs() <= 1e-5, "{np} x {n}, p{i} at {t}: {x} vs {y}");
            }
        }
        // Floors bind for the small consumers: the optimum is not pro rata.
        let pr = pro_rata(&p);
        assert!(
            (0..np).any(|i| (fast.allocated_kwh[i].iter().sum::<f64>()
                - pr[i].iter().sum::<f64>())
            .abs()
                > 1e-3),
            "{np} x {n}: the floors did not bind"
        );
        if np <= 40 {
            let o = solve_allocation_lp(&p).unwrap();
            assert!(
                (fast.score - o.score).abs() <= 1e-6 * o.score.abs().max(1.0),
                "{np} x {n}: totals {} vs lp {}",
                fast.score,
                o.score
            );
        }
    }
}

#[test]
fn a_balance_that_does_not_settle_goes_to_the_flow() {
    // Here the balance needs ~2,000 rounds (`SMOOTH_ROUNDS` is 200): the
    // totals' path declines and the flow answers, with the same optimum.
    let p = flat_month(200, 240, 2);
    let s = solve_allocation(&p).unwrap();
    assert_eq!(s.method, "flow");
    assert_eq!(s, solve_allocation_searching(&p).unwrap());
}

#[test]
fn totals_the_steps_cannot_carry_go_to_the_flow() {
    // p0 consumes only at step 0 and p1 only at step 1, 1 kWh produced at
    // each: p0's floor (0.75 of the 2 kWh pool) is worth 1.5 kWh to the
    // relaxation, but step 0 can only give it 1.
    let mut p = problem(
        vec![1.0, 1.0],
        vec![(vec![2.0, 0.0], 0.30, 1), (vec![0.0, 2.0], 0.30, 1)],
    );
    p.fairness.floor_ratio = Some(0.75);
    p.participants[0].subscription_share = Some(1.0);
    let s = solve_allocation(&p).unwrap();
    assert_eq!(s.method, "flow");
    assert_eq!(s.allocated_kwh, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    assert_eq!(s.violations.len(), 1, "{:?}", s.violations);
    assert!((s.violations[0].amount - 0.5).abs() < 1e-9);
}
