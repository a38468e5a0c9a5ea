//! Settlement periods in the site's time zone, DST-aware. Everything stored is UTC;
//! a period is identified by its UTC start.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimeError {
    #[error("settlement step must divide an hour and be 5, 10, 15, 30 or 60 minutes (got {0})")]
    BadStep(u32),
    #[error("local midnight of {0} does not exist in {1}")]
    NoMidnight(NaiveDate, Tz),
}

/// The settlement grid of a site: a step (minutes) in a time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    step_minutes: u32,
    tz: Tz,
}

impl Grid {
    pub fn new(step_minutes: u32, tz: Tz) -> Result<Self, TimeError> {
        if ![5, 10, 15, 30, 60].contains(&step_minutes) {
            return Err(TimeError::BadStep(step_minutes));
        }
        Ok(Grid { step_minutes, tz })
    }

    pub fn step_minutes(&self) -> u32 {
        self.step_minutes
    }
    pub fn step(&self) -> Duration {
        Duration::minutes(i64::from(self.step_minutes))
    }
    pub fn step_hours(&self) -> f64 {
        f64::from(self.step_minutes) / 60.0
    }
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// Start (UTC) of the period containing `t`. Steps divide an hour and every
    /// offset of Europe/Paris is a whole hour, so flooring in UTC equals flooring
    /// in local time; zones with half-hour offsets still floor correctly for
    /// steps of 30 minutes or less.
    pub fn period_start(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let step = i64::from(self.step_minutes) * 60;
        let secs = t.timestamp();
        let floored = secs - secs.rem_euclid(step);
        DateTime::from_timestamp(floored, 0).unwrap_or(t)
    }

    pub fn next_period(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        start + self.step()
    }

    /// UTC instant of local midnight starting `day`.
    pub fn local_midnight(&self, day: NaiveDate) -> Result<DateTime<Utc>, TimeError> {
        let naive = day
            .and_hms_opt(0, 0, 0)
            .ok_or(TimeError::NoMidnight(day, self.tz))?;
        self.tz
            .from_local_datetime(&naive)
            .earliest()
            .map(|d| d.with_timezone(&Utc))
            .ok_or(TimeError::NoMidnight(day, self.tz))
    }

    /// All period starts (UTC) of a local calendar day: 96 quarter-hours on an
    /// ordinary day, 92 on the spring DST day, 100 on the autumn one.
    pub fn periods_of_local_day(&self, day: NaiveDate) -> Result<Vec<DateTime<Utc>>, TimeError> {
        let start = self.local_midnight(day)?;
        let next = day.succ_opt().ok_or(TimeError::NoMidnight(day, self.tz))?;
        let end = self.local_midnight(next)?;
        let mut out = Vec::with_capacity(100);
        let mut t = start;
        while t < end {
            out.push(t);
            t += self.step();
        }
        Ok(out)
    }

    /// Local calendar day a period belongs to (by its start).
    pub fn local_day(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// `2025-03-30T03:00:00+02:00`: local time with its offset, as Enedis files carry it.
    pub fn format_local(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz)
            .format("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paris(step: u32) -> Grid {
        Grid::new(step, chrono_tz::Europe::Paris).unwrap()
    }

    #[test]
    fn dst_days_have_92_and_100_quarter_hours() {
        let g = paris(15);
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(g.periods_of_local_day(d("2025-03-30")).unwrap().len(), 92);
        assert_eq!(g.periods_of_local_day(d("2025-10-26")).unwrap().len(), 100);
        assert_eq!(g.periods_of_local_day(d("2025-06-21")).unwrap().len(), 96);
        let g30 = paris(30);
        assert_eq!(g30.periods_of_local_day(d("2025-03-30")).unwrap().len(), 46);
        assert_eq!(g30.periods_of_local_day(d("2025-10-26")).unwrap().len(), 50);
    }

    #[test]
    fn autumn_repeated_hour_is_told_apart_by_offset() {
        let g = paris(30);
        let day = NaiveDate::from_ymd_opt(2025, 10, 26).unwrap();
        let p: Vec<String> = g
            .periods_of_local_day(day)
            .unwrap()
            .into_iter()
            .map(|t| g.format_local(t))
            .collect();
        let i = p
            .iter()
            .position(|s| s == "2025-10-26T02:00:00+02:00")
            .unwrap();
        assert_eq!(p[i + 1], "2025-10-26T02:30:00+02:00");
        assert_eq!(p[i + 2], "2025-10-26T02:00:00+01:00");
        assert_eq!(p[i + 3], "2025-10-26T02:30:00+01:00");
    }

    #[test]
    fn period_start_floors() {
        let g = paris(15);
        let t = DateTime::parse_from_rfc3339("2025-06-21T10:29:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            g.format_local(g.period_start(t)),
            "2025-06-21T12:15:00+02:00"
        );
    }

    #[test]
    fn rejects_odd_steps() {
        assert_eq!(
            Grid::new(7, chrono_tz::Europe::Paris),
            Err(TimeError::BadStep(7))
        );
    }
}
