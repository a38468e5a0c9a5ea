//! A key file format: how a file is named, rendered and read back. The
//! daemon's day and month files and `ped keys` write through it, so both
//! name, render and check a file the same way.

use crate::allocation::Precision;
use crate::dso::enedis::{self, Layout, Naming, ValidationReport};
use crate::dso::{DsoError, KeyRow};
use crate::ids::Prm;
use crate::time::Grid;

pub trait KeyFileFormat {
    /// The format's name in manifests and logs.
    fn label(&self) -> &'static str;

    /// The files one text of simple dynamic keys goes into: one for the
    /// operation (`None`), or one per producer.
    fn simple_targets<'a>(&self, producers: &'a [Prm]) -> Vec<Option<&'a Prm>>;

    /// The name of the file for `operation` (its `ACC` id) and `producer`
    /// (`None`: the operation's one file) holding `rows`.
    fn file_name(
        &self,
        grid: &Grid,
        operation: Option<&str>,
        producer: Option<&Prm>,
        rows: &[KeyRow],
    ) -> Result<String, DsoError>;

    fn render(
        &self,
        grid: &Grid,
        consumers: &[Prm],
        rows: &[KeyRow],
        precision: Precision,
    ) -> Result<String, DsoError>;

    /// Reads a file back and checks every rule of the format.
    fn validate(
        &self,
        text: &str,
        grid: &Grid,
        precision: Precision,
    ) -> Result<ValidationReport, DsoError>;

    /// Rendered, then read back by the validator: no text leaves ped
    /// unchecked.
    fn render_checked(
        &self,
        grid: &Grid,
        consumers: &[Prm],
        rows: &[KeyRow],
        precision: Precision,
    ) -> Result<String, DsoError> {
        let text = self.render(grid, consumers, rows, precision)?;
        self.validate(&text, grid, precision)?;
        Ok(text)
    }
}

impl KeyFileFormat for Layout {
    fn label(&self) -> &'static str {
        Layout::label(self)
    }

    fn simple_targets<'a>(&self, producers: &'a [Prm]) -> Vec<Option<&'a Prm>> {
        match self.naming {
            Naming::Operation => vec![None],
            Naming::Producer => producers.iter().map(Some).collect(),
        }
    }

    fn file_name(
        &self,
        grid: &Grid,
        operation: Option<&str>,
        producer: Option<&Prm>,
        rows: &[KeyRow],
    ) -> Result<String, DsoError> {
        enedis::file_name_with(self, grid, operation, producer, rows)
    }

    fn render(
        &self,
        grid: &Grid,
        consumers: &[Prm],
        rows: &[KeyRow],
        precision: Precision,
    ) -> Result<String, DsoError> {
        enedis::render_with(self, grid, consumers, rows, precision)
    }

    fn validate(
        &self,
        text: &str,
        grid: &Grid,
        precision: Precision,
    ) -> Result<ValidationReport, DsoError> {
        enedis::validate_with(self, text, grid, precision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The same rows through both layouts, by the trait alone: each names,
    /// renders and reads back its own file, and refuses the other's.
    #[test]
    fn each_layout_names_renders_and_reads_back_its_own_files() {
        let grid = Grid::new(15, chrono_tz::Europe::Paris).unwrap();
        let start = chrono_tz::Europe::Paris
            .with_ymd_and_hms(2024, 11, 1, 0, 0, 0)
            .unwrap()
            .with_timezone(&chrono::Utc);
        let rows: Vec<KeyRow> = (0..4)
            .map(|k| KeyRow {
                start: start + chrono::Duration::minutes(15 * k),
                units: vec![5081, 3986],
            })
            .collect();
        let consumers: Vec<Prm> = ["12345678901234", "12345678901235"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let producers: Vec<Prm> = vec!["30000000000001".parse().unwrap()];
        let precision = Precision {
            units_per_one: 10_000,
        };
        let formats: [&dyn KeyFileFormat; 2] = [&Layout::ENEDIS, &Layout::ENEDIS_ISO];
        let mut texts = Vec::new();
        for f in formats {
            let text = f
                .render_checked(&grid, &consumers, &rows, precision)
                .unwrap();
            let report = f.validate(&text, &grid, precision).unwrap();
            assert_eq!(report.rows.len(), 4, "{}", f.label());
            let targets = f.simple_targets(&producers);
            let names: Vec<String> = targets
                .iter()
                .map(|p| f.file_name(&grid, Some("ACC00000001"), *p, &rows).unwrap())
                .collect();
            texts.push((text, names));
        }
        assert_eq!(texts[0].1, ["ACC00000001_15_01112024_01112024.txt"]);
        assert_eq!(texts[1].1, ["30000000000001_20241101_20241101.csv"]);
        assert!(texts[0].0.contains("\n01/11/2024 00:00;50,81;39,86\n"));
        assert!(formats[1].validate(&texts[0].0, &grid, precision).is_err());
        assert!(formats[0].validate(&texts[1].0, &grid, precision).is_err());
    }
}
