//! Enedis key files compared byte for byte with `tests/golden/`.
//! Regenerate after an intended layout change with `PED_BLESS_GOLDEN=1 cargo test --test dso_golden`
//! and review the diff.

use chrono::NaiveDate;
use ped::allocation::{keys_for_step, Policy, Precision, StepInput};
use ped::dso::enedis;
use ped::dso::KeyRow;
use ped::ids::Prm;
use ped::time::Grid;

fn consumers() -> Vec<Prm> {
    ["12345678901234", "23456789012345", "34567890123456"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

/// A deterministic day: a PV bell around local noon, three load shapes, one of
/// them idle at night so rows hold `0,0` and `100,0` keys.
fn rows_for_day(grid: &Grid, day: &str, precision: Precision) -> Vec<KeyRow> {
    let day = NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    let periods = grid.periods_of_local_day(day).unwrap();
    let n = periods.len() as f64;
    periods
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let x = (k as f64 + 0.5) / n;
            let pv = (12.0 * (std::f64::consts::PI * (x - 0.25) / 0.5).sin()).max(0.0);
            let c = [
                2.0 + 1.5 * (x * 9.0).sin().abs(),
                if (0.3..0.75).contains(&x) { 4.0 } else { 0.0 },
                if x < 0.28 {
                    0.0
                } else {
                    0.7 + 0.3 * (x * 5.0).cos()
                },
            ];
            let keys = keys_for_step(
                &StepInput {
                    production_kwh: pv * grid.step_hours(),
                    consumption_kwh: c.iter().map(|kw| kw * grid.step_hours()).collect(),
                },
                &Policy::ProRata,
                precision,
            )
            .unwrap();
            KeyRow {
                start,
                units: keys.units,
            }
        })
        .collect()
}

fn check_golden(name: &str, step: u32, day: &str, precision: Precision, expected_rows: usize) {
    let grid = Grid::new(step, chrono_tz::Europe::Paris).unwrap();
    let rows = rows_for_day(&grid, day, precision);
    assert_eq!(rows.len(), expected_rows);
    let text = enedis::render(&grid, &consumers(), &rows, precision).unwrap();
    assert_golden(name, &text);
    let report = enedis::validate(&text, &grid, precision).unwrap();
    assert_eq!(report.rows, rows);

    // What `write_simple_dynamic` puts on disk is the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let producer: Prm = "30000000000001".parse().unwrap();
    let paths = enedis::write_simple_dynamic(
        dir.path(),
        &grid,
        &[producer],
        &consumers(),
        &rows,
        precision,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(&paths[0]).unwrap(),
        std::fs::read(golden_path(name)).unwrap()
    );
}

#[test]
fn autumn_dst_day_30_min() {
    check_golden(
        "enedis_simple_dynamic_2025-10-26.csv",
        30,
        "2025-10-26",
        Precision {
            units_per_one: 1000,
        },
        50,
    );
}

#[test]
fn spring_dst_day_30_min() {
    check_golden(
        "enedis_simple_dynamic_2025-03-30.csv",
        30,
        "2025-03-30",
        Precision {
            units_per_one: 1000,
        },
        46,
    );
}

#[test]
fn spring_dst_day_15_min_at_0_01_percent() {
    check_golden(
        "enedis_simple_dynamic_2025-03-30_15min_p10000.csv",
        15,
        "2025-03-30",
        Precision {
            units_per_one: 10_000,
        },
        92,
    );
}

/// The DSO sample's layout (one file for the operation, local time without
/// offset, 2 decimals, no final LF) on both DST days: in autumn the repeated
/// hour's wall-clock times appear twice, in time order.
fn check_operation_golden(day: &str, expected_rows: usize) {
    use enedis::Layout;
    let grid = Grid::new(15, chrono_tz::Europe::Paris).unwrap();
    let precision = Precision {
        units_per_one: 10_000,
    };
    let rows = rows_for_day(&grid, day, precision);
    assert_eq!(rows.len(), expected_rows);
    let layout = Layout::ENEDIS;
    let text = enedis::render_with(&layout, &grid, &consumers(), &rows, precision).unwrap();
    let name = enedis::file_name_with(&layout, &grid, Some("ACC00000001"), None, &rows).unwrap();
    let d = NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    assert_eq!(
        name,
        format!(
            "ACC00000001_15_{}_{}.txt",
            d.format("%d%m%Y"),
            d.format("%d%m%Y")
        )
    );
    assert_golden(&name, &text);
    assert!(!text.ends_with('\n') && !text.contains('\r'));
    let report = enedis::validate_with(&layout, &text, &grid, precision).unwrap();
    assert_eq!(report.rows, rows);
    let (found, p, _) = enedis::validate_any(&text, &grid, &Layout::ALL).unwrap();
    assert_eq!((found, p), (layout, precision));
}

/// A golden file of `tests/golden/`.
fn golden(name: &str) -> String {
    std::fs::read_to_string(golden_path(name)).unwrap()
}

fn golden_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// `text` is the golden file `name`, byte for byte; with `PED_BLESS_GOLDEN`
/// set, it is written there first.
fn assert_golden(name: &str, text: &str) {
    let path = golden_path(name);
    if std::env::var_os("PED_BLESS_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let golden = std::fs::read(&path).unwrap();
    assert!(
        golden == text.as_bytes(),
        "{name} differs from the rendered file"
    );
}

#[test]
fn operation_file_on_the_spring_dst_day() {
    check_operation_golden("2025-03-30", 92);
    let text = golden("ACC00000001_15_30032025_30032025.txt");
    assert!(text.contains("\n30/03/2025 01:45;") && text.contains("\n30/03/2025 03:00;"));
    assert!(!text.contains("30/03/2025 02:"));
}

#[test]
fn operation_file_on_the_autumn_dst_day() {
    check_operation_golden("2025-10-26", 100);
    let text = golden("ACC00000001_15_26102025_26102025.txt");
    assert_eq!(text.matches("\n26/10/2025 02:15;").count(), 2);
    assert_eq!(text.matches("\n26/10/2025 03:00;").count(), 1);
}
