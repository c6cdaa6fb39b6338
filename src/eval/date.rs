//! Strict ISO-8601 parsing for the `before` / `after` operators (spec §3.5).
//!
//! Owns: turning a date string into an [`Instant`] (seconds + nanoseconds since the Unix epoch, UTC).
//!
//! Invariants:
//! - Never reads the process's local time zone: every accepted form maps to one fixed instant, so a
//!   rule fires at the same moment on every host (testbed date-only rows, run under a non-UTC `TZ`).
//! - Accepted forms (and nothing else; no panics, no partial parses):
//!   - `YYYY-MM-DD`: a calendar date, meaning **UTC midnight**;
//!   - `YYYY-MM-DDThh:mm[:ss[.f+]][offset]` where `T` may be `t`, the fraction takes `.` or `,` and
//!     1+ digits (digits past the ninth are ignored), and `offset` is `Z`/`z`, `±hh:mm`, `±hhmm` or
//!     `±hh`. **No offset means UTC** (decision: ISO-8601 calls it local time, which would make a rule
//!     depend on the host's zone; the testbed forbids that for date-only values, and we extend it).
//! - Exact field widths: `2026-7-3` is rejected. Calendar validity is checked: `2026-07-32`,
//!   `2026-02-30`, `24:00` and leap second `:60` are rejected. Years are 0000..=9999.
//! - The arithmetic is done here with integers (proleptic Gregorian calendar, checked against
//!   chrono in the tests) because it runs on every evaluation of a date condition.

/// A point in time: whole seconds since 1970-01-01T00:00:00Z, then nanoseconds (0..1e9).
/// Ordering of the tuple is ordering of the instants.
pub type Instant = (i64, u32);

/// Parses a strict ISO-8601 date or date-time; `None` if `s` is anything else.
pub fn parse_instant(s: &str) -> Option<Instant> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let midnight = days_from_civil(i64::from(year), month, day) * 86_400;
    if b.len() == 10 {
        return Some((midnight, 0));
    }
    if !matches!(b[10], b'T' | b't') {
        return None;
    }
    let mut p = Cursor { b, i: 11 };
    let hour = p.two_digits()?;
    p.expect(b':')?;
    let minute = p.two_digits()?;
    let mut second = 0;
    let mut nanos = 0u32;
    if p.peek() == Some(b':') {
        p.i += 1;
        second = p.two_digits()?;
        if matches!(p.peek(), Some(b'.' | b',')) {
            p.i += 1;
            nanos = p.fraction()?;
        }
    }
    let offset_secs = p.offset()?;
    if p.i != b.len() || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let local = midnight + i64::from(hour * 3600 + minute * 60 + second);
    Some((local - i64::from(offset_secs), nanos))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a valid proleptic Gregorian date (400-year eras, March-based years).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses all-ASCII-digit bytes as a number (at most 4 digits are ever passed).
fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek() == Some(c)).then(|| self.i += 1)
    }

    fn two_digits(&mut self) -> Option<u32> {
        let v = digits(self.b.get(self.i..self.i + 2)?)?;
        self.i += 2;
        Some(v)
    }

    /// One or more digits of a decimal fraction, as nanoseconds.
    fn fraction(&mut self) -> Option<u32> {
        let start = self.i;
        let mut nanos = 0u32;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            if self.i - start < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
            self.i += 1;
        }
        let n = self.i - start;
        if n == 0 {
            return None;
        }
        Some(nanos * 10u32.pow(9usize.saturating_sub(n) as u32))
    }

    /// The offset east of UTC in seconds; 0 when absent.
    fn offset(&mut self) -> Option<i32> {
        let sign = match self.peek() {
            None => return Some(0),
            Some(b'Z' | b'z') => {
                self.i += 1;
                return Some(0);
            }
            Some(b'+') => 1,
            Some(b'-') => -1,
            Some(_) => return None,
        };
        self.i += 1;
        let hours = self.two_digits()?;
        let minutes = match self.peek() {
            None => 0,
            Some(b':') => {
                self.i += 1;
                self.two_digits()?
            }
            Some(_) => self.two_digits()?,
        };
        if hours > 23 || minutes > 59 {
            return None;
        }
        Some(sign * (hours * 3600 + minutes * 60) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_instant as p;

    #[test]
    fn date_only_is_utc_midnight() {
        assert_eq!(p("1970-01-01"), Some((0, 0)));
        assert_eq!(p("2026-07-03"), p("2026-07-03T00:00:00Z"));
    }

    #[test]
    fn offsets_compare_by_instant() {
        assert_eq!(p("2026-07-21T02:00:00-05:00"), p("2026-07-21T07:00:00Z"));
        assert_eq!(p("2026-07-21T23:00:00+10:00"), p("2026-07-21T13:00:00Z"));
        assert_eq!(p("2026-07-21T23:00:00+1000"), p("2026-07-21T13:00:00Z"));
        assert_eq!(p("2026-07-21T23:00:00+10"), p("2026-07-21T13:00:00Z"));
        assert_eq!(p("2026-07-21T05:30+05:30"), p("2026-07-21T00:00:00z"));
    }

    #[test]
    fn fractions() {
        assert_eq!(p("1970-01-01T00:00:00.182Z"), Some((0, 182_000_000)));
        assert_eq!(p("1970-01-01T00:00:00,5Z"), Some((0, 500_000_000)));
        assert_eq!(p("1970-01-01T00:00:01.1234567891234Z"), Some((1, 123_456_789)));
        assert_eq!(p("1970-01-01T00:00:00.Z"), None);
    }

    #[test]
    fn no_offset_means_utc() {
        assert_eq!(p("2026-07-03T10:00:00"), p("2026-07-03T10:00:00Z"));
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "", "not-a-date", "2026-07-32", "2026-7-3", "2026-02-30", "2026-07-03T24:00:00Z",
            "2026-07-03T23:59:60Z", "2026-07-03T10:00:00+24:00", "2026-07-03T10:00:00+05:60",
            "2026-07-03 10:00:00Z", "2026-07-03T10", "2026-07-03T10:00:00ZZ", "+2026-07-03",
            "２０２６-07-03", "2026-07-03T1０:00:00Z", "2026-07-03T10:00:00+5", "2026-07-03T",
        ] {
            assert_eq!(p(s), None, "{s:?} should be rejected");
        }
    }

    #[test]
    fn calendar_matches_chrono() {
        use chrono::NaiveDate;
        let mut day = NaiveDate::from_ymd_opt(0, 1, 1).unwrap();
        let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
        while day <= last {
            let s = day.format("%Y-%m-%d").to_string();
            assert_eq!(p(&s), Some((day.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp(), 0)), "{s}");
            day = day + chrono::Days::new(13);
        }
        assert!(p("2024-02-29").is_some() && p("2000-02-29").is_some());
        assert!(p("2023-02-29").is_none() && p("1900-02-29").is_none() && p("2026-04-31").is_none());
        assert!(p("2026-00-10").is_none() && p("2026-13-10").is_none() && p("2026-01-00").is_none());
    }

    #[test]
    fn before_epoch_and_extremes() {
        assert_eq!(p("1969-12-31T23:59:59.5Z"), Some((-1, 500_000_000)));
        assert!(p("0000-01-01").is_some());
        assert!(p("9999-12-31T23:59:59.999999999-23:59").is_some());
    }
}
