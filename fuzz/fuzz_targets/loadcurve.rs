//! The Enedis load-curve importer over arbitrary text. Whatever it accepts must
//! settle into finite, non-negative energies with one entry per period, and a
//! rejected file must name at least one line with a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ped::dso::loadcurve;
use ped::time::Grid;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let step = if sel & 1 == 0 { 15 } else { 30 };
    let Ok(grid) = Grid::new(step, chrono_tz::Europe::Paris) else {
        return;
    };
    match loadcurve::parse(text, Path::new("fuzz.csv"), &grid) {
        Ok(curve) => {
            let (Some(first), Some(last)) = (curve.points.first(), curve.points.last()) else {
                return;
            };
            // Settle over the span the points cover, bounded so a far-apart pair of
            // stamps cannot make the target allocate without limit.
            let mut periods = Vec::new();
            let mut at =
                grid.period_start(first.end - chrono::Duration::minutes(first.minutes.max(0)));
            while at < last.end && periods.len() < 10_000 {
                periods.push(at);
                at = grid.next_period(at);
            }
            let settled = loadcurve::settle(&curve, &grid, &periods);
            assert_eq!(settled.kwh.len(), periods.len());
            assert_eq!(settled.problem.len(), periods.len());
            for e in &settled.kwh {
                assert!(e.is_finite() && *e >= 0.0, "energy {e}");
            }
        }
        Err(bad) => {
            assert!(!bad.is_empty());
            for b in &bad.shown {
                assert!(b.line >= 1 && !b.reason.is_empty());
            }
        }
    }
});
