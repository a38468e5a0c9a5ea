use super::*;

/// 0.1 %: these cases were worked out at one decimal of a percent.
const TENTH: Precision = Precision {
    units_per_one: 1000,
};
use proptest::prelude::*;

/// A small month where tier 1 would starve tier 2 without the pro-rata
/// row: `n` participants over `steps` quarter-hours, a midday bell.
fn small_month(n: usize, steps: usize, seed: u64) -> (Vec<f64>, Vec<Vec<f64>>, Vec<f64>, Vec<u8>) {
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
    assert_eq!(
        out.violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["pro_rata C 0.003333 EUR".to_string()]
    );
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
    let k = keys_for_step_sanitised(&step(1.0, &[1.0, f64::NAN]), &Policy::ProRata, prec).unwrap();
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

/// Ten-thousandths if `fine`, else tenths.
fn precision(fine: bool) -> Precision {
    if fine {
        Precision {
            units_per_one: 10_000,
        }
    } else {
        TENTH
    }
}

/// A step, a policy for its consumers, and whether keys are fine
/// (ten-thousandths) rather than tenths.
fn arb_step_with_policy() -> impl Strategy<Value = ((f64, Vec<f64>), Policy, bool)> {
    arb_step().prop_flat_map(|(p, c)| {
        let n = c.len();
        (Just((p, c)), arb_policy(n), any::<bool>())
    })
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
        let prec = precision(fine);
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
        ((p, c), pol, fine) in arb_step_with_policy()
    ) {
        let prec = precision(fine);
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
        ((p, c), pol, fine) in arb_step_with_policy()
    ) {
        let prec = precision(fine);
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
        let prec = precision(fine);
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
fn carried_month(prod: &[f64], cons: &[Vec<f64>], prec: Precision) -> (Vec<f64>, Vec<f64>, f64) {
    let n = cons[0].len();
    let mut carry = Remainders::new(n);
    let (mut got, mut exact) = (vec![0.0; n], vec![0.0; n]);
    let mut best = 0.0;
    for (p, c) in prod.iter().zip(cons) {
        let k = keys_for_step_carried(&step(*p, c), &Policy::ProRata, prec, &mut carry).unwrap();
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

/// The month solver's outcome with no fairness floor and no subscription
/// shares, checked to break no rule.
fn solve_without_floor(
    prod: &[f64],
    cons: &[Vec<f64>],
    tariffs: &[f64],
    prio: &[u8],
) -> MonthOutcome {
    let n = tariffs.len();
    let mut solver = month_solver(n, None);
    solver.fairness.floor_ratio = None;
    solver.subscription_share = vec![None; n];
    let out = solver
        .allocate_month(&MonthInput {
            production_kwh: prod,
            consumption_kwh: cons,
            tariffs_eur_per_kwh: tariffs,
            priority: prio,
        })
        .unwrap();
    assert!(out.violations.is_empty(), "{:?}", out.violations);
    out
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
    let out = solve_without_floor(&prod, &cons, &tariffs, &prio);
    let prec = Precision::new(10_000).unwrap();
    let mut carry = Remainders::new(n);
    let (mut got, mut exact) = (vec![0.0; n], vec![0.0; n]);
    let (mut total, mut best) = (0.0, 0.0);
    for (t, (p, c)) in prod.iter().zip(&cons).enumerate() {
        let k = keys_from_intended_carried(&step(*p, c), &out.intended_kwh[t], prec, &mut carry)
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
    let out = solve_without_floor(&prod, &cons, &tariffs, &prio);
    let prec = Precision::new(10_000).unwrap();
    let mut carry = Remainders::new(n);
    let (mut value, mut pr_value) = (vec![0.0; n], vec![0.0; n]);
    for (t, (p, c)) in prod.iter().zip(&cons).enumerate() {
        let k = keys_from_intended_carried(&step(*p, c), &out.intended_kwh[t], prec, &mut carry)
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
