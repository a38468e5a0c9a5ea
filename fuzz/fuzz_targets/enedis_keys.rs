//! The Enedis key-file validator over arbitrary text, for both settlement steps and
//! every precision. A file it accepts must round-trip: rendered again from the rows it
//! parsed, it validates to the same rows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ped::allocation::Precision;
use ped::dso::enedis;
use ped::time::Grid;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let step = if sel & 1 == 0 { 15 } else { 30 };
    let units_per_one = [100, 1000, 10000][usize::from(sel >> 1) % 3];
    let Ok(grid) = Grid::new(step, chrono_tz::Europe::Paris) else {
        return;
    };
    let precision = Precision { units_per_one };
    if let Ok(report) = enedis::validate(text, &grid, precision) {
        assert!(!report.consumers.is_empty());
        for r in &report.rows {
            assert_eq!(r.units.len(), report.consumers.len());
            assert!(r.units.iter().map(|u| u64::from(*u)).sum::<u64>() <= u64::from(units_per_one));
        }
        let again = enedis::render(&grid, &report.consumers, &report.rows, precision)
            .expect("rows the validator accepted render");
        let back = enedis::validate(&again, &grid, precision).expect("rendered text validates");
        assert_eq!(back.rows, report.rows);
        assert_eq!(back.consumers, report.consumers);
    }
});
