//! The settlement grid against real timestamps: the district data set's DST
//! days (copied from ../shared into tests/data) have exactly the periods ped
//! computes, in the same UTC order, with the same local offsets.

use chrono::{DateTime, NaiveDate, Utc};
use ped::time::Grid;

fn stamps(file: &str) -> Vec<(DateTime<Utc>, String)> {
    let text = std::fs::read_to_string(format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let mut it = l.split(',');
            let utc = DateTime::parse_from_rfc3339(it.next().unwrap())
                .unwrap()
                .with_timezone(&Utc);
            (utc, it.next().unwrap().to_string())
        })
        .collect()
}

#[test]
fn dst_days_match_the_data_set() {
    let g30 = Grid::new(30, chrono_tz::Europe::Paris).unwrap();
    let g15 = Grid::new(15, chrono_tz::Europe::Paris).unwrap();
    for (day, rows, quarter_hours) in [
        ("2025-03-30", 46, 92),
        ("2025-06-21", 48, 96),
        ("2025-10-26", 50, 100),
    ] {
        let d = NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
        let ours = g30.periods_of_local_day(d).unwrap();
        let theirs = stamps(&format!("{day}-production.csv"));
        assert_eq!(theirs.len(), rows);
        assert_eq!(ours.len(), rows);
        for (t, (u, local)) in ours.iter().zip(&theirs) {
            assert_eq!(t, u);
            assert_eq!(&g30.format_local(*t), local);
        }
        assert_eq!(g15.periods_of_local_day(d).unwrap().len(), quarter_hours);
    }
}
