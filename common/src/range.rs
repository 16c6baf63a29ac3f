//! UTC hours and inclusive hour ranges, parsed from `YYYY-MM-DD` or `YYYY-MM-DDTHH`.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::error::RequestError;

/// One UTC hour, stored as hours since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hour(i64);

impl Hour {
    pub fn from_epoch_hours(h: i64) -> Hour {
        Hour(h)
    }

    pub fn epoch_hours(self) -> i64 {
        self.0
    }

    /// The first millisecond of the hour, in epoch milliseconds.
    pub fn start_ms(self) -> i64 {
        self.0 * 3_600_000
    }

    pub fn next(self) -> Hour {
        Hour(self.0 + 1)
    }

    pub fn datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.0 * 3600, 0).unwrap_or_default()
    }

    pub fn from_datetime(t: DateTime<Utc>) -> Hour {
        Hour(t.timestamp().div_euclid(3600))
    }

    pub fn year(self) -> i32 {
        self.datetime().year()
    }

    pub fn month(self) -> u32 {
        self.datetime().month()
    }

    pub fn day(self) -> u32 {
        self.datetime().day()
    }

    pub fn hour(self) -> u32 {
        self.datetime().hour()
    }

    /// `YYYY-MM-DD`, the date partition of the hour.
    pub fn date_string(self) -> String {
        self.datetime().format("%Y-%m-%d").to_string()
    }

    /// `YYYYMMDDHH`.
    pub fn compact(self) -> String {
        self.datetime().format("%Y%m%d%H").to_string()
    }
}

impl fmt::Display for Hour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.datetime().format("%Y-%m-%dT%H"))
    }
}

/// An inclusive range of UTC hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourRange {
    pub first: Hour,
    pub last: Hour,
}

/// The default upper bound on a request's length: a leap year of hours.
pub const DEFAULT_MAX_HOURS: u64 = 366 * 24;

impl HourRange {
    /// Parses `--start` and `--end` (inclusive): a date means the whole day, `THH` one hour.
    pub fn parse(start: &str, end: &str, max_hours: u64) -> Result<HourRange, RequestError> {
        let first = parse_bound("--start", start, false)?;
        let last = parse_bound("--end", end, true)?;
        if first > last {
            return Err(RequestError::new(
                "--end",
                format!("{end} is before --start {start}"),
            ));
        }
        let range = HourRange { first, last };
        if range.len() > max_hours {
            return Err(RequestError::new(
                "--end",
                format!(
                    "the range {start} .. {end} spans {} hours, more than the limit of {max_hours} \
                     (raise it with --max-range-hours)",
                    range.len()
                ),
            ));
        }
        Ok(range)
    }

    pub fn len(&self) -> u64 {
        (self.last.0 - self.first.0 + 1) as u64
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn hours(&self) -> impl Iterator<Item = Hour> + use<> {
        (self.first.0..=self.last.0).map(Hour)
    }

    /// The half-open window `[start, end)` of the range in epoch milliseconds.
    pub fn window_ms(&self) -> (i64, i64) {
        (self.first.start_ms(), self.last.next().start_ms())
    }

    pub fn contains_ms(&self, epoch_ms: i64) -> bool {
        let (a, b) = self.window_ms();
        (a..b).contains(&epoch_ms)
    }
}

fn parse_bound(field: &'static str, s: &str, is_end: bool) -> Result<Hour, RequestError> {
    let bad = |why: &str| {
        RequestError::new(
            field,
            format!("{s:?} {why}; expected YYYY-MM-DD or YYYY-MM-DDTHH (UTC)"),
        )
    };
    let (date_part, hour_part) = match s.split_once('T') {
        Some((d, h)) => (d, Some(h)),
        None => (s, None),
    };
    if date_part.len() != 10 || date_part.as_bytes()[4] != b'-' || date_part.as_bytes()[7] != b'-' {
        return Err(bad("is not a date"));
    }
    let date = NaiveDate::parse_from_str(date_part, "%Y-%m-%d")
        .map_err(|_| bad("is not a real calendar date"))?;
    let hour = match hour_part {
        None => {
            if is_end {
                23
            } else {
                0
            }
        }
        Some(h) => {
            if h.len() != 2 || !h.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("has an hour that is not two digits"));
            }
            let h: u32 = h.parse().map_err(|_| bad("has a bad hour"))?;
            if h > 23 {
                return Err(bad("has an hour above 23"));
            }
            h
        }
    };
    let t = date
        .and_hms_opt(hour, 0, 0)
        .ok_or_else(|| bad("is out of range"))?
        .and_utc();
    Ok(Hour::from_datetime(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_cover_whole_days() {
        let r = HourRange::parse("2024-02-28", "2024-02-29", DEFAULT_MAX_HOURS).unwrap();
        assert_eq!(r.len(), 48);
        assert_eq!(r.first.to_string(), "2024-02-28T00");
        assert_eq!(r.last.to_string(), "2024-02-29T23");
        assert_eq!(r.last.compact(), "2024022923");
        let (a, b) = r.window_ms();
        assert_eq!(b - a, 48 * 3_600_000);
        assert!(r.contains_ms(a) && !r.contains_ms(b) && !r.contains_ms(a - 1));
    }

    #[test]
    fn hours_and_mixed_bounds() {
        let r = HourRange::parse("2024-04-01T22", "2024-04-02T01", 100).unwrap();
        assert_eq!(r.len(), 4);
        let hours: Vec<_> = r.hours().map(|h| h.to_string()).collect();
        assert_eq!(hours[3], "2024-04-02T01");
        assert_eq!(r.hours().next().unwrap().date_string(), "2024-04-01");
        let one = HourRange::parse("2024-04-01T05", "2024-04-01T05", 1).unwrap();
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn rejects_bad_dates_with_the_argument_named() {
        let cases = [
            ("2023-02-29", "2023-03-01", "--start"),
            ("2024-13-01", "2024-12-01", "--start"),
            ("2024-04-01", "2024-04-31", "--end"),
            ("2024-04-01T24", "2024-04-02", "--start"),
            ("2024-04-01T5", "2024-04-02", "--start"),
            ("yesterday", "2024-04-02", "--start"),
            ("2024-04-02", "2024-04-01", "--end"),
            ("2024-4-1", "2024-04-02", "--start"),
        ];
        for (s, e, field) in cases {
            let err = HourRange::parse(s, e, DEFAULT_MAX_HOURS).unwrap_err();
            assert_eq!(err.field, field, "{s} {e}: {err}");
        }
    }

    #[test]
    fn range_length_is_bounded() {
        let err = HourRange::parse("2020-01-01", "2024-01-01", DEFAULT_MAX_HOURS).unwrap_err();
        assert!(err.message.contains("--max-range-hours"), "{err}");
        assert!(HourRange::parse("2024-01-01", "2024-01-02", 47).is_err());
        assert!(HourRange::parse("2024-01-01", "2024-01-02", 48).is_ok());
    }
}
