//! Tests of the `ped keys` job across its steps, on a small two-day run
//! (the autumn clock change, five members, two producers): gaps estimated
//! from the curve itself, no key outside membership, and the streamed write
//! byte for byte the same as the rendered files.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use super::job::*;
use crate::allocation::{PerStepAllocator, Policy, Precision};
use crate::config::KeyPolicy;
use crate::dso::enedis::Layout;
use crate::dso::loadcurve::{LineLog, Plausibility};
use crate::ids::Prm;
use crate::time::Grid;

fn small(kind: KeyKind) -> (KeysJob, Measured) {
    let grid = Grid::new(15, chrono_tz::Europe::Paris).expect("grid");
    let prm = |k: u64| -> Prm { format!("{k:014}").parse().expect("prm") };
    let job = KeysJob {
        grid,
        from: NaiveDate::from_ymd_opt(2025, 10, 25).expect("date"),
        to: NaiveDate::from_ymd_opt(2025, 10, 26).expect("date"),
        consumers: (0..5)
            .map(|i| Consumer {
                id: format!("C{i}"),
                prm: prm(20_000_000_000_000 + i),
                tariff_eur_per_kwh: 0.18 + 0.02 * i as f64,
                priority: 1 + (i % 2) as u8,
                static_share: 0.2,
                entry: None,
                exit: None,
            })
            .collect(),
        producers: (0..2).map(|j| prm(30_000_000_000_000 + j)).collect(),
        policy: KeyPolicy::Optimised,
        kind,
        format: Format::Enedis,
        precision: Precision::default(),
        cups: BTreeMap::new(),
        cau: "t".into(),
        site_file: None,
        operation_id: Some("ACC00000001".into()),
        layout: Layout::ENEDIS,
        plausibility: Plausibility::default(),
        strict: false,
        other_operations: Default::default(),
    };
    let periods = job.periods().expect("periods");
    let n_t = periods.len();
    let m = Measured {
        production_kwh: (0..n_t)
            .map(|t| vec![(t % 37) as f64 * 0.05, (t % 11) as f64 * 0.07])
            .collect(),
        consumption_kwh: (0..n_t)
            .map(|t| {
                (0..5)
                    .map(|i| 0.1 + ((t * (i + 3)) % 13) as f64 * 0.03)
                    .collect()
            })
            .collect(),
        problems: vec![Vec::new(); n_t],
        coarse_steps: 0,
        inputs: Vec::new(),
        members: vec![vec![true; n_t]; 5],
        estimated_consumers: vec![Vec::new(); 5],
        estimated_consumer_kwh: vec![0.0; 5],
        estimated_producers: vec![Vec::new(); 2],
        suspects: LineLog::default(),
        periods,
    };
    (job, m)
}

/// The keys of `m` allocated step by step under `policy`.
fn per_step(job: &KeysJob, m: &Measured, policy: Policy) -> Computed {
    compute(job, m, &PerStepAllocator { policy }).expect("keys")
}

#[test]
fn gaps_are_estimated_from_the_curve_itself_not_left_at_zero() {
    let grid = Grid::new(30, chrono_tz::Europe::Paris).expect("grid");
    let job = KeysJob {
        from: NaiveDate::from_ymd_opt(2026, 5, 1).expect("date"),
        to: NaiveDate::from_ymd_opt(2026, 5, 31).expect("date"),
        grid,
        ..small(KeyKind::Simple).0
    };
    let periods = job.periods().expect("periods");
    let n = periods.len();
    // A daily shape: 1 kWh per step by day (08:00-20:00), 0.2 at night,
    // 2 kWh on Sundays by day.
    let truth: Vec<f64> = periods
        .iter()
        .map(|t| {
            use chrono::{Datelike, Timelike};
            let l = t.with_timezone(&grid.tz());
            let day = (8..20).contains(&l.hour());
            match (day, l.weekday() == chrono::Weekday::Sun) {
                (true, true) => 2.0,
                (true, false) => 1.0,
                _ => 0.2,
            }
        })
        .collect();
    let mut known = vec![true; n];
    // Three steps on a Friday morning (short: a line between neighbours).
    let short = 7 * 48 + 20;
    known[short..short + 3].fill(false);
    // A whole Sunday (long: the same hour of the Sundays around).
    let sunday = 2 * 48; // 2026-05-03 is a Sunday
    known[sunday..sunday + 48].fill(false);
    // Not a member from the 25th: nothing expected, nothing estimated.
    let mut expected = vec![true; n];
    expected[24 * 48..].fill(false);
    known[27 * 48..27 * 48 + 5].fill(false);
    let mut kwh: Vec<f64> = truth
        .iter()
        .zip(&known)
        .map(|(&v, &k)| if k { v } else { 0.0 })
        .collect();
    let est = estimate_gaps(&mut kwh, &known, &expected, &periods, &grid);
    assert_eq!(est.len(), 3 + 48);
    assert!(est.iter().all(|&t| t < 24 * 48));
    for (t, v) in kwh.iter().enumerate().skip(short).take(3) {
        assert!((v - 1.0).abs() < 1e-12, "step {t}: {v}");
    }
    for t in sunday..sunday + 48 {
        assert!((kwh[t] - truth[t]).abs() < 1e-12, "step {t}: {}", kwh[t]);
    }
    assert!(kwh[27 * 48..27 * 48 + 5].iter().all(|&v| v == 0.0));
    // A curve with nothing measured cannot be estimated.
    let mut none = vec![0.0; n];
    assert!(estimate_gaps(&mut none, &vec![false; n], &expected, &periods, &grid).is_empty());
}

#[test]
fn non_members_get_no_key_and_no_column() {
    let (mut job, mut m) = small(KeyKind::Simple);
    // C4 leaves after the first day; every step of the second day, it
    // consumes nothing and must get 0 even where rounding has residue.
    job.consumers[4].exit = Some(job.from);
    let n_t = m.periods.len();
    for t in 0..n_t {
        let member = job.consumers[4].member_on(job.grid.local_day(m.periods[t]));
        m.members[4][t] = member;
        if !member {
            m.consumption_kwh[t][4] = 0.0;
        }
    }
    let k = per_step(&job, &m, job.policy());
    let day_two: Vec<usize> = (0..n_t).filter(|&t| !m.members[4][t]).collect();
    assert_eq!(day_two.len(), 100, "2025-10-26 has 100 quarter-hours");
    assert!(day_two.iter().all(|&t| k.rows[0][t].units[4] == 0));
    assert!((0..n_t).any(|t| m.members[4][t] && k.rows[0][t].units[4] > 0));
    // A participant who is not a member on any day of the run has no column.
    let mut cfg_job = job.clone();
    cfg_job.consumers[3].entry = NaiveDate::from_ymd_opt(2025, 11, 1);
    let c = &mut cfg_job.consumers[3];
    assert!(!c.member_between(cfg_job.from, cfg_job.to));
    c.entry = Some(cfg_job.to);
    assert!(c.member_between(cfg_job.from, cfg_job.to));
}

#[test]
fn streamed_files_are_the_rendered_files_byte_for_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for kind in [KeyKind::Simple, KeyKind::Full] {
        let (job, m) = small(kind);
        let k = per_step(&job, &m, job.policy());
        let files = render_files(&job, &m, &k).expect("render");
        let want = manifest(&job, &m, &k, &files).expect("manifest");
        let out = tmp.path().join(format!("{kind:?}"));
        let Written::New(got) = write_streamed(&job, &m, &k, &out, |_| {}).expect("write") else {
            panic!("{kind:?}: a fresh directory must be new");
        };
        assert_eq!(got, want, "{kind:?}");
        for (name, text, _) in &files {
            assert_eq!(
                std::fs::read(out.join(name)).expect("file"),
                text.as_bytes(),
                "{kind:?} {name}"
            );
        }
        // Again: unchanged, nothing rewritten, no temporary left behind.
        let again = write_streamed(&job, &m, &k, &out, |_| {}).expect("rerun");
        assert!(matches!(again, Written::Unchanged(_)), "{kind:?}");
        // Other keys into the same directory: refused, nothing left behind.
        let other = per_step(&job, &m, Policy::ProRata);
        let err = write_streamed(&job, &m, &other, &out, |_| {}).unwrap_err();
        assert!(matches!(err, KeysError::Differs(_)), "{err}");
        let stray: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }
}
