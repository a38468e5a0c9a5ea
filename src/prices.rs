//! Export prices that change over time: a CSV file of `start;eur_per_kwh`
//! rows (RFC 3339 starts, e.g. a day-ahead market's hourly or quarter-hourly
//! prices fetched by a cron job), named by `[plan] export_prices_file`.
//!
//! A row's price holds from its start to the next row's start; the last row
//! holds for the file's last interval (the gap between its last two starts,
//! one hour for a single row); before the first row and after the last one
//! the flat `[plan] export_price_eur_per_kwh` applies. So a file that is not
//! refreshed falls back to the flat price instead of repeating yesterday's
//! (possibly negative) price forever.
//!
//! The daemon reads the file again before every plan ([`Feed`]); a file that
//! has become unreadable or invalid keeps the last good schedule, with a
//! warning and `ped_export_prices_errors_total`, so a half-written file never
//! costs the plan its prices.

use chrono::{DateTime, Duration, Utc};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    #[error("cannot read export prices {file}: {source} (fix: create it, or remove plan.export_prices_file)")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("export prices {file} line {line}: {message} (fix: {fix})")]
    Line {
        file: PathBuf,
        line: usize,
        message: String,
        fix: String,
    },
    #[error("export prices {file} has no price row (fix: one row per interval, `2026-06-21T13:00:00+02:00;-0.02`)")]
    Empty { file: PathBuf },
}

/// Prices in €/kWh from each start.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    rows: Vec<(DateTime<Utc>, f64)>,
    /// How long the last row holds.
    tail: Duration,
}

impl Schedule {
    pub fn parse(text: &str, file: &Path) -> Result<Schedule, PricesError> {
        let err = |line: usize, message: String, fix: &str| PricesError::Line {
            file: file.to_path_buf(),
            line,
            message,
            fix: fix.to_string(),
        };
        let mut rows: Vec<(DateTime<Utc>, f64)> = Vec::new();
        for (k, raw) in text.lines().enumerate() {
            let line = k + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let Some((a, b)) = l.split_once(';').or_else(|| l.split_once(',')) else {
                return Err(err(
                    line,
                    format!("`{l}` is not `start;eur_per_kwh`"),
                    "separate the start and the price with `;`",
                ));
            };
            let start = match DateTime::parse_from_rfc3339(a.trim()) {
                Ok(t) => t.with_timezone(&Utc),
                // A header line (`start;eur_per_kwh`) before any row.
                Err(_) if rows.is_empty() && b.trim().parse::<f64>().is_err() => continue,
                Err(e) => {
                    return Err(err(
                        line,
                        format!("start `{}`: {e}", a.trim()),
                        "write RFC 3339 with its offset, e.g. 2026-06-21T13:00:00+02:00",
                    ))
                }
            };
            let price: f64 = b.trim().parse().map_err(|_| {
                err(
                    line,
                    format!("price `{}` is not a number", b.trim()),
                    "give €/kWh with a decimal point, e.g. -0.015",
                )
            })?;
            if !price.is_finite() || price.abs() > 10.0 {
                return Err(err(
                    line,
                    format!("{price} €/kWh is not a plausible price"),
                    "give €/kWh, not €/MWh (e.g. -15 €/MWh is -0.015)",
                ));
            }
            if let Some((prev, _)) = rows.last() {
                if start <= *prev {
                    return Err(err(
                        line,
                        format!("{start} does not come after the previous row's {prev}"),
                        "sort the rows by start, one row per interval",
                    ));
                }
            }
            rows.push((start, price));
        }
        let tail = match rows.as_slice() {
            [] => {
                return Err(PricesError::Empty {
                    file: file.to_path_buf(),
                })
            }
            [_] => Duration::hours(1),
            [.., (a, _), (b, _)] => *b - *a,
        };
        Ok(Schedule { rows, tail })
    }

    pub fn load(file: &Path) -> Result<Schedule, PricesError> {
        let text = std::fs::read_to_string(file).map_err(|source| PricesError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Schedule::parse(&text, file)
    }

    /// The price at `t`, or `flat` where the file says nothing.
    pub fn at(&self, t: DateTime<Utc>, flat: f64) -> f64 {
        let i = self.rows.partition_point(|(s, _)| *s <= t);
        if i == 0 {
            return flat;
        }
        let (start, price) = self.rows[i - 1];
        if i == self.rows.len() && t >= start + self.tail {
            return flat;
        }
        price
    }

    /// One price per step from `start` (each step priced at its start).
    pub fn steps(&self, start: DateTime<Utc>, step: Duration, n: usize, flat: f64) -> Vec<f64> {
        (0..n)
            .map(|k| self.at(start + step * k as i32, flat))
            .collect()
    }
}

/// The daemon's view of the file: read again before every plan, the last
/// good schedule kept when a read fails.
#[derive(Debug)]
pub struct Feed {
    file: Option<PathBuf>,
    last: Option<Schedule>,
    /// The last error said, so a file that stays broken warns once.
    said: Option<String>,
}

impl Feed {
    pub fn new(file: Option<PathBuf>) -> Feed {
        Feed {
            file,
            last: None,
            said: None,
        }
    }

    /// Re-reads the file (when one is configured). On a failed read the
    /// schedule in use stays the last good one, and `Err` carries the error
    /// and whether it is new (to log it once and count every failed read).
    pub fn refresh(&mut self) -> Result<(), (String, bool)> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        match Schedule::load(file) {
            Ok(s) => {
                self.last = Some(s);
                self.said = None;
                Ok(())
            }
            Err(e) => {
                let e = e.to_string();
                let new = self.said.as_deref() != Some(e.as_str());
                self.said = Some(e.clone());
                Err((e, new))
            }
        }
    }

    pub fn steps(&self, start: DateTime<Utc>, step: Duration, n: usize, flat: f64) -> Vec<f64> {
        match &self.last {
            Some(s) => s.steps(start, step, n, flat),
            None => vec![flat; n],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn rows_hold_until_the_next_and_the_last_for_one_interval() {
        let s = Schedule::parse(
            "start;eur_per_kwh\n# day-ahead\n2026-06-21T12:00:00+02:00;0.03\n2026-06-21T13:00:00+02:00;-0.02\n2026-06-21T14:00:00+02:00;0.01\n",
            Path::new("p.csv"),
        )
        .unwrap();
        let at = |x: &str| s.at(t(x), 0.06);
        assert_eq!(at("2026-06-21T11:59:00+02:00"), 0.06);
        assert_eq!(at("2026-06-21T12:00:00+02:00"), 0.03);
        assert_eq!(at("2026-06-21T13:30:00+02:00"), -0.02);
        assert_eq!(at("2026-06-21T14:59:00+02:00"), 0.01);
        // Not refreshed: back to the flat price, not yesterday's.
        assert_eq!(at("2026-06-21T15:00:00+02:00"), 0.06);
        let steps = s.steps(
            t("2026-06-21T12:45:00+02:00"),
            Duration::minutes(15),
            4,
            0.06,
        );
        assert_eq!(steps, vec![0.03, -0.02, -0.02, -0.02]);
    }

    #[test]
    fn bad_rows_name_the_line_and_the_fix() {
        for (text, line, says) in [
            ("2026-06-21T12:00:00;0.03\n", 1, "RFC 3339"),
            ("2026-06-21T12:00:00+02:00;-15\n", 1, "€/MWh"),
            ("2026-06-21T12:00:00+02:00;x\n", 1, "not a number"),
            (
                "2026-06-21T13:00:00+02:00;0.1\n2026-06-21T12:00:00+02:00;0.1\n",
                2,
                "sort the rows",
            ),
            ("2026-06-21T13:00:00+02:00 0.1\n", 1, "start;eur_per_kwh"),
        ] {
            let e = Schedule::parse(text, Path::new("p.csv"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("line {line}")), "{e}");
            assert!(e.contains(says), "{e}");
            assert!(e.contains("p.csv") && e.contains("fix:"), "{e}");
        }
        let e = Schedule::parse("# nothing\n", Path::new("p.csv")).unwrap_err();
        assert!(matches!(e, PricesError::Empty { .. }));
    }

    #[test]
    fn a_broken_file_keeps_the_last_good_schedule_and_warns_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.csv");
        std::fs::write(&file, "2026-06-21T12:00:00+02:00;-0.02\n").unwrap();
        let mut feed = Feed::new(Some(file.clone()));
        assert!(feed.refresh().is_ok());
        let start = t("2026-06-21T12:00:00+02:00");
        assert_eq!(
            feed.steps(start, Duration::minutes(15), 1, 0.06),
            vec![-0.02]
        );
        std::fs::write(&file, "half a line").unwrap();
        assert!(matches!(feed.refresh(), Err((_, true))));
        assert!(
            matches!(feed.refresh(), Err((_, false))),
            "the same error is new once"
        );
        assert_eq!(
            feed.steps(start, Duration::minutes(15), 1, 0.06),
            vec![-0.02]
        );
        std::fs::remove_file(&file).unwrap();
        assert!(
            matches!(feed.refresh(), Err((_, true))),
            "another error is new"
        );
        assert_eq!(
            feed.steps(start, Duration::minutes(15), 1, 0.06),
            vec![-0.02]
        );
        // No file configured: the flat price.
        assert_eq!(
            Feed::new(None).steps(start, Duration::minutes(15), 2, 0.06),
            vec![0.06; 2]
        );
    }
}
