//! Spain: hourly *coeficientes de reparto* per supply point (CUPS), the
//! second key format, proving the format layer does not lean on Enedis.
//!
//! Layout (DOMAIN.md §1; the hourly variable line layout is unconfirmed, the
//! fixed-coefficient one was seen at one distributor): a `.txt` file, no
//! header, LF endings, one line per hour and CUPS: `CUPS;hour;0,333333`,
//! `hour` the hour of the (local) year from 1 (8,760 or 8,784 in a year), the
//! coefficient with a decimal comma and exactly 6 decimals. The coefficients
//! of every hour sum to **exactly** 1,000000 (checked in integer millionths):
//! unlike the French rule, everything is shared out, and a participant's
//! share above its consumption is its own surplus.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use super::DsoError;

/// Millionths: the 6 decimals of the format.
pub const UNITS_PER_ONE: u32 = 1_000_000;

/// A CUPS: `ES`, 16 digits, 2 control letters, optionally a 2-character
/// border-point suffix (digit, letter): 20 or 22 characters.
pub fn check_cups(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = (b.len() == 20 || b.len() == 22)
        && b.starts_with(b"ES")
        && b[2..18].iter().all(u8::is_ascii_digit)
        && b[18..20].iter().all(u8::is_ascii_uppercase)
        && (b.len() == 20 || (b[20].is_ascii_digit() && b[21].is_ascii_uppercase()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a CUPS (ES, 16 digits, 2 letters, optional digit + letter)"
        ))
    }
}

/// One hour of coefficients, in millionths, summing to exactly 1,000,000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourRow {
    pub hour_of_year: u32,
    pub units: Vec<u32>,
}

/// Hour of the local year, from 1, for an instant: real hours elapsed since
/// local midnight of 1 January, so DST days count 23 and 25 hours and the
/// year 8,760 (8,784).
pub fn hour_of_year(tz: Tz, t: DateTime<Utc>) -> Result<u32, DsoError> {
    let year = t.with_timezone(&tz).year();
    let jan1 = NaiveDate::from_ymd_opt(year, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|n| tz.from_local_datetime(&n).earliest())
        .ok_or(DsoError::Empty("no local midnight on 1 January"))?;
    let h = (t - jan1.with_timezone(&Utc)).num_hours();
    u32::try_from(h + 1).map_err(|_| DsoError::Empty("instant before its own year"))
}

/// Shares that sum to exactly `UNITS_PER_ONE`: floors, then the missing
/// millionths to the largest remainders (ties to the lower index). `weights`
/// must be >= 0; all zero gives equal shares.
pub fn exact_shares(weights: &[f64]) -> Vec<u32> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let clean: Vec<f64> = weights
        .iter()
        .map(|&w| if w.is_finite() && w > 0.0 { w } else { 0.0 })
        .collect();
    let total: f64 = clean.iter().sum();
    let exact: Vec<f64> = if total > 0.0 {
        clean
            .iter()
            .map(|w| w / total * f64::from(UNITS_PER_ONE))
            .collect()
    } else {
        vec![f64::from(UNITS_PER_ONE) / n as f64; n]
    };
    let mut units: Vec<u32> = exact.iter().map(|x| x.floor() as u32).collect();
    let used: u64 = units.iter().map(|&u| u64::from(u)).sum();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    if used <= u64::from(UNITS_PER_ONE) {
        let missing = (u64::from(UNITS_PER_ONE) - used) as usize;
        for &i in order.iter().cycle().take(missing) {
            units[i] += 1;
        }
    } else {
        // Floating error only: take back from the largest shares.
        let mut over = used - u64::from(UNITS_PER_ONE);
        while over > 0 {
            if let Some((i, _)) = units.iter().enumerate().max_by_key(|(_, &u)| u) {
                units[i] -= 1;
            }
            over -= 1;
        }
    }
    units
}

/// Hourly coefficients from per-step energies: the hour's intended
/// allocation as a share of the hour's production, and what is left (the
/// French surplus) shared pro rata of consumption, so the hour sums to 1.
/// `steps` are consecutive settlement steps; each hour gets the steps that
/// start in it.
pub fn hourly_rows(
    tz: Tz,
    steps: &[DateTime<Utc>],
    production_kwh: &[f64],
    intended_kwh: &[Vec<f64>],
    consumption_kwh: &[Vec<f64>],
) -> Result<Vec<HourRow>, DsoError> {
    let n = intended_kwh.first().map_or(0, Vec::len);
    let mut rows: Vec<HourRow> = Vec::new();
    let mut k = 0;
    while k < steps.len() {
        let hour = hour_of_year(tz, steps[k])?;
        let mut p = 0.0;
        let mut a = vec![0.0; n];
        let mut c = vec![0.0; n];
        while k < steps.len() && hour_of_year(tz, steps[k])? == hour {
            p += production_kwh[k];
            for i in 0..n {
                a[i] += intended_kwh[k][i];
                c[i] += consumption_kwh[k][i];
            }
            k += 1;
        }
        let allocated: f64 = a.iter().sum();
        let left = (p - allocated).max(0.0);
        let c_total: f64 = c.iter().sum();
        let weights: Vec<f64> = (0..n)
            .map(|i| {
                let extra = if c_total > 0.0 {
                    left * c[i] / c_total
                } else {
                    0.0
                };
                a[i] + extra
            })
            .collect();
        let weights = if p > 0.0 { weights } else { c.clone() };
        rows.push(HourRow {
            hour_of_year: hour,
            units: exact_shares(&weights),
        });
    }
    Ok(rows)
}

fn format_millionths(u: u32) -> String {
    format!("{},{:06}", u / UNITS_PER_ONE, u % UNITS_PER_ONE)
}

fn parse_millionths(s: &str) -> Option<u32> {
    let (int, frac) = s.split_once(',')?;
    if int.len() != 1
        || frac.len() != 6
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(int.parse::<u32>().ok()? * UNITS_PER_ONE + frac.parse::<u32>().ok()?)
}

/// Renders the file; the rows are checked first (CUPS, contiguous hours,
/// exact sums) so a bad row never becomes a file.
pub fn render(cups: &[String], rows: &[HourRow]) -> Result<String, DsoError> {
    if cups.is_empty() {
        return Err(DsoError::Empty("no CUPS"));
    }
    if rows.is_empty() {
        return Err(DsoError::Empty("no hour"));
    }
    let mut seen = HashSet::new();
    for (k, c) in cups.iter().enumerate() {
        check_cups(c).map_err(|m| DsoError::invalid(k + 1, 1, m))?;
        if !seen.insert(c) {
            return Err(DsoError::invalid(
                k + 1,
                1,
                format!("CUPS {c} appears twice"),
            ));
        }
    }
    let mut out = String::with_capacity(rows.len() * cups.len() * 36);
    for (r, row) in rows.iter().enumerate() {
        let line = r * cups.len() + 1;
        if row.units.len() != cups.len() {
            return Err(DsoError::invalid(
                line,
                3,
                format!("{} coefficients for {} CUPS", row.units.len(), cups.len()),
            ));
        }
        let sum: u64 = row.units.iter().map(|&u| u64::from(u)).sum();
        if sum != u64::from(UNITS_PER_ONE) {
            return Err(DsoError::invalid(
                line,
                3,
                format!(
                    "hour {} sums to {sum} millionths, not exactly 1",
                    row.hour_of_year
                ),
            ));
        }
        if r > 0 && row.hour_of_year != rows[r - 1].hour_of_year + 1 {
            return Err(DsoError::invalid(
                line,
                2,
                format!(
                    "hour {} after hour {}",
                    row.hour_of_year,
                    rows[r - 1].hour_of_year
                ),
            ));
        }
        for (c, &u) in cups.iter().zip(&row.units) {
            out.push_str(c);
            out.push(';');
            out.push_str(&row.hour_of_year.to_string());
            out.push(';');
            out.push_str(&format_millionths(u));
            out.push('\n');
        }
    }
    Ok(out)
}

/// `<CAU>_<YYYY>.txt` for a whole year, `<CAU>_<YYYYMMDD>_<YYYYMMDD>.txt`
/// (local days) for part of one.
pub fn file_name(cau: &str, first_day: NaiveDate, last_day: NaiveDate) -> String {
    let whole_year = first_day.ordinal() == 1
        && last_day.year() == first_day.year()
        && last_day
            .succ_opt()
            .is_some_and(|d| d.year() != first_day.year());
    if whole_year {
        format!("{cau}_{}.txt", first_day.year())
    } else {
        format!(
            "{cau}_{}_{}.txt",
            first_day.format("%Y%m%d"),
            last_day.format("%Y%m%d")
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpainReport {
    pub cups: Vec<String>,
    pub rows: Vec<HourRow>,
}

/// Reads a file back: no BOM, LF only, 3 fields a line, valid CUPS, hours
/// 1..=8784 ascending without gaps, the same CUPS in the same order every
/// hour, no CUPS twice in an hour, 6 decimals with a decimal comma, and each
/// hour summing to exactly 1,000000.
pub fn validate(text: &str) -> Result<SpainReport, DsoError> {
    if text.starts_with('\u{feff}') {
        return Err(DsoError::invalid(
            1,
            1,
            "file starts with a byte-order mark",
        ));
    }
    let Some(body) = text.strip_suffix('\n') else {
        let line = text.lines().count().max(1);
        return Err(DsoError::invalid(
            line,
            1,
            "empty file or last line without LF",
        ));
    };
    let mut cups: Vec<String> = Vec::new();
    let mut rows: Vec<HourRow> = Vec::new();
    let mut current: Option<(u32, Vec<String>, Vec<u32>, usize)> = None;
    let close = |cur: (u32, Vec<String>, Vec<u32>, usize),
                 cups: &mut Vec<String>,
                 rows: &mut Vec<HourRow>|
     -> Result<(), DsoError> {
        let (hour, names, units, first_line) = cur;
        let sum: u64 = units.iter().map(|&u| u64::from(u)).sum();
        if sum != u64::from(UNITS_PER_ONE) {
            return Err(DsoError::invalid(
                first_line,
                3,
                format!(
                    "hour {hour} sums to {},{:06}, not exactly 1,000000",
                    sum / u64::from(UNITS_PER_ONE),
                    sum % u64::from(UNITS_PER_ONE)
                ),
            ));
        }
        if cups.is_empty() {
            *cups = names;
        } else if *cups != names {
            return Err(DsoError::invalid(
                first_line,
                1,
                format!("hour {hour} does not list the same CUPS as the first hour"),
            ));
        }
        if let Some(prev) = rows.last() {
            if hour != prev.hour_of_year + 1 {
                return Err(DsoError::invalid(
                    first_line,
                    2,
                    format!("hour {hour} after hour {}", prev.hour_of_year),
                ));
            }
        }
        rows.push(HourRow {
            hour_of_year: hour,
            units,
        });
        Ok(())
    };
    for (k, l) in body.split('\n').enumerate() {
        let line = k + 1;
        if let Some(col) = l.find('\r') {
            return Err(DsoError::invalid(
                line,
                l[..col].matches(';').count() + 1,
                "carriage return (CRLF line ending)",
            ));
        }
        let f: Vec<&str> = l.split(';').collect();
        if f.len() != 3 {
            return Err(DsoError::invalid(
                line,
                f.len().min(3),
                format!("{} fields, expected CUPS;hour;coefficient", f.len()),
            ));
        }
        check_cups(f[0]).map_err(|m| DsoError::invalid(line, 1, m))?;
        let hour: u32 = match f[1].parse() {
            Ok(h) if (1..=8784).contains(&h) && !f[1].starts_with('0') => h,
            _ => {
                return Err(DsoError::invalid(
                    line,
                    2,
                    format!("`{}` is not an hour of the year (1..8784)", f[1]),
                ))
            }
        };
        let u = parse_millionths(f[2])
            .filter(|&u| u <= UNITS_PER_ONE)
            .ok_or_else(|| {
                DsoError::invalid(
                    line,
                    3,
                    format!(
                        "`{}` is not a coefficient in 0..1 with a decimal comma and 6 decimals",
                        f[2]
                    ),
                )
            })?;
        if current.as_ref().is_some_and(|c| c.0 != hour) {
            if let Some(cur) = current.take() {
                close(cur, &mut cups, &mut rows)?;
            }
        }
        let cur = current.get_or_insert_with(|| (hour, Vec::new(), Vec::new(), line));
        if cur.1.iter().any(|c| c == f[0]) {
            return Err(DsoError::invalid(
                line,
                1,
                format!("CUPS {} twice in hour {hour}", f[0]),
            ));
        }
        cur.1.push(f[0].to_string());
        cur.2.push(u);
    }
    if let Some(cur) = current.take() {
        close(cur, &mut cups, &mut rows)?;
    }
    Ok(SpainReport { cups, rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "ES0021000000000001AB";
    const B: &str = "ES0021000000000002CD1F";

    #[test]
    fn cups_shapes() {
        assert!(check_cups(A).is_ok());
        assert!(check_cups(B).is_ok());
        assert!(check_cups("ES0021000000000001A").is_err());
        assert!(check_cups("FR0021000000000001AB").is_err());
        assert!(check_cups("ES00210000000000X1AB").is_err());
        assert!(check_cups("ES0021000000000002CDF1").is_err());
    }

    #[test]
    fn hours_of_the_year_across_dst() {
        let tz = chrono_tz::Europe::Madrid;
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            hour_of_year(tz, at("2025-01-01T00:00:00+01:00")).unwrap(),
            1
        );
        assert_eq!(
            hour_of_year(tz, at("2025-03-30T01:00:00+01:00")).unwrap(),
            2114
        );
        // 02:00 local does not exist: the next hour is 03:00+02:00.
        assert_eq!(
            hour_of_year(tz, at("2025-03-30T03:00:00+02:00")).unwrap(),
            2115
        );
        assert_eq!(
            hour_of_year(tz, at("2025-12-31T23:00:00+01:00")).unwrap(),
            8760
        );
        assert_eq!(
            hour_of_year(tz, at("2024-12-31T23:30:00+01:00")).unwrap(),
            8784
        );
    }

    #[test]
    fn thirds_sum_exactly_to_one() {
        let u = exact_shares(&[1.0, 1.0, 1.0]);
        assert_eq!(u, vec![333_334, 333_333, 333_333]);
        assert_eq!(exact_shares(&[0.0, 0.0]), vec![500_000, 500_000]);
        assert_eq!(exact_shares(&[2.0, 0.0]), vec![1_000_000, 0]);
    }

    #[test]
    fn render_and_validate_round_trip_with_line_and_column() {
        let cups = vec![A.to_string(), B.to_string()];
        let rows = vec![
            HourRow {
                hour_of_year: 7,
                units: vec![333_334, 666_666],
            },
            HourRow {
                hour_of_year: 8,
                units: vec![1_000_000, 0],
            },
        ];
        let text = render(&cups, &rows).unwrap();
        assert_eq!(
            text,
            format!("{A};7;0,333334\n{B};7;0,666666\n{A};8;1,000000\n{B};8;0,000000\n")
        );
        let rep = validate(&text).unwrap();
        assert_eq!(rep.rows, rows);
        assert_eq!(rep.cups, cups);
        let err = |t: &str| match validate(t) {
            Err(DsoError::Invalid { line, column, .. }) => (line, column),
            other => panic!("{other:?}"),
        };
        assert_eq!(err(&text.replace("0,666666", "0,666665")), (1, 3));
        assert_eq!(err(&text.replace("0,333334", "0,33333")), (1, 3));
        assert_eq!(err(&text.replace(";8;", ";9;")), (3, 2));
        assert_eq!(
            err(&text.replace(&format!("{B};8"), &format!("{A};8"))),
            (4, 1)
        );
        assert_eq!(err(&text.replace('\n', "\r\n")), (1, 3));
        let mut bad = rows.clone();
        bad[1].units = vec![999_999, 0];
        assert!(render(&cups, &bad).is_err());
    }

    proptest! {
        #[test]
        fn hourly_rows_always_sum_exactly_to_one(
            data in prop::collection::vec(
                (0.0..50.0f64, prop::collection::vec(0.0..5.0f64, 3)), 1..12)
        ) {
            let g = crate::time::Grid::new(15, chrono_tz::Europe::Madrid).unwrap();
            let t0 = DateTime::parse_from_rfc3339("2025-10-26T01:00:00+02:00").unwrap().with_timezone(&Utc);
            let steps: Vec<_> = (0..data.len()).map(|k| t0 + g.step() * k as i32).collect();
            let p: Vec<f64> = data.iter().map(|d| d.0).collect();
            let c: Vec<Vec<f64>> = data.iter().map(|d| d.1.clone()).collect();
            let a: Vec<Vec<f64>> = p.iter().zip(&c).map(|(p, c)| {
                crate::allocation::intended_for_step(*p, c, &crate::allocation::Policy::ProRata).unwrap()
            }).collect();
            let rows = hourly_rows(g.tz(), &steps, &p, &a, &c).unwrap();
            for r in &rows {
                prop_assert_eq!(r.units.iter().map(|&u| u64::from(u)).sum::<u64>(), u64::from(UNITS_PER_ONE));
            }
            let cups: Vec<String> = (1..=3).map(|k| format!("ES00210000000000{k:02}AB")).collect();
            let text = render(&cups, &rows).unwrap();
            prop_assert_eq!(validate(&text).unwrap().rows, rows);
        }
    }
}
