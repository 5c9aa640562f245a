//! Rotation windows: the local hours in which scheduled rotations may start, for a
//! target profile (`rotation_window` in `[targets.NAME]`) or one secret (its
//! `RotationWindow` tag). One grammar serves both:
//!
//! ```text
//! Mon-Fri 22:00-05:00 Europe/Amsterdam; Sat,Sun 00:00-24:00 Europe/Amsterdam
//! ```
//!
//! Each span (up to [`MAX_SPANS`], separated by `;`) is days, a local time range and an
//! IANA time zone (or `UTC`). Days are `Mon`..`Sun` (any case), lists (`Sat,Sun`),
//! ranges (`Mon-Fri`, `Fri-Mon`) or `daily`. A range whose end is not after its start
//! crosses midnight and belongs to the day it starts on; `24:00` ends a day. Local times
//! follow the zone's daylight saving: a start inside a spring-forward gap opens when
//! the clock resumes.
//!
//! This module only says when a window is open; the engine's due rule
//! (`worker/src/engine/due.rs`) decides what waits for one and what must not.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use time::OffsetDateTime;

/// Most spans in one window.
pub const MAX_SPANS: usize = 8;
/// Longest window text: a Key Vault tag value's limit.
pub const MAX_LEN: usize = 256;
/// Shortest span, in minutes, whatever the sweeper's interval.
pub const MIN_SPAN_MINUTES: u32 = 15;
/// Sweeps that must fall within each span ([`RotationWindow::fits_sweeps`]): one may
/// fail, or start just before the window opens.
pub const SWEEPS_PER_SPAN: u64 = 2;

/// A parsed rotation window. Its [`Display`](fmt::Display) is the text it was read from.
#[derive(Clone)]
pub struct RotationWindow {
    text: String,
    spans: Vec<Span>,
}

/// Days, a local time range and a zone.
#[derive(Clone)]
struct Span {
    /// Indexed from Monday (0) to Sunday (6).
    days: [bool; 7],
    /// Minutes after local midnight.
    start: u32,
    /// Minutes after local midnight (up to 1440); not after `start` crosses midnight.
    end: u32,
    zone: TimeZone,
}

/// Why a window's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Nothing but blanks.
    #[error("the window is empty: write days, hours and a time zone, e.g. \"Mon-Fri 22:00-05:00 Europe/Amsterdam\"")]
    Empty,
    /// Longer than a tag value may be.
    #[error("the window is {0} characters long; at most {MAX_LEN}")]
    TooLong(usize),
    /// More spans than [`MAX_SPANS`].
    #[error("the window has {0} spans; at most {MAX_SPANS}")]
    TooManySpans(usize),
    /// A span is not `DAYS HH:MM-HH:MM ZONE`.
    #[error("span {span}: expected DAYS HH:MM-HH:MM ZONE (e.g. \"Mon-Fri 22:00-05:00 Europe/Amsterdam\"), found {found} part(s)")]
    Shape {
        /// 1-based span number.
        span: usize,
        /// How many whitespace-separated parts it had.
        found: usize,
    },
    /// A day that is not `Mon`..`Sun` or `daily`.
    #[error("span {span}: {day:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun, a range like Mon-Fri, or daily)")]
    Day {
        /// 1-based span number.
        span: usize,
        /// The day as written (cut short).
        day: String,
    },
    /// Not `HH:MM-HH:MM` with valid times.
    #[error("span {span}: {hours:?} is not a time range HH:MM-HH:MM (00:00 to 24:00)")]
    Hours {
        /// 1-based span number.
        span: usize,
        /// The range as written (cut short).
        hours: String,
    },
    /// The range is shorter than [`MIN_SPAN_MINUTES`] (or empty).
    #[error("span {span}: {minutes} minute(s) long; a span lasts at least {MIN_SPAN_MINUTES} minutes")]
    TooShort {
        /// 1-based span number.
        span: usize,
        /// Its length.
        minutes: u32,
    },
    /// Not a time zone of the tz database.
    #[error("span {span}: {zone:?} is not a time zone (an IANA name such as Europe/Amsterdam, or UTC)")]
    Zone {
        /// 1-based span number.
        span: usize,
        /// The zone as written (cut short).
        zone: String,
    },
}

/// Keeps what an error quotes short: the text may be a hostile tag.
fn quoted(text: &str) -> String {
    text.chars().take(40).collect()
}

impl FromStr for RotationWindow {
    type Err = WindowError;

    fn from_str(text: &str) -> Result<Self, WindowError> {
        let text = text.trim();
        if text.len() > MAX_LEN {
            return Err(WindowError::TooLong(text.len()));
        }
        let parts: Vec<&str> = text.split(';').map(str::trim).filter(|part| !part.is_empty()).collect();
        if parts.is_empty() {
            return Err(WindowError::Empty);
        }
        if parts.len() > MAX_SPANS {
            return Err(WindowError::TooManySpans(parts.len()));
        }
        let spans = parts.iter().enumerate().map(|(i, part)| Span::parse(i + 1, part)).collect::<Result<_, _>>()?;
        Ok(Self { text: text.to_owned(), spans })
    }
}

impl TryFrom<String> for RotationWindow {
    type Error = WindowError;

    fn try_from(text: String) -> Result<Self, WindowError> {
        text.parse()
    }
}

impl<'de> serde::Deserialize<'de> for RotationWindow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for RotationWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for RotationWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RotationWindow({:?})", self.text)
    }
}

impl PartialEq for RotationWindow {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for RotationWindow {}

impl RotationWindow {
    /// Whether the window is open at `at`.
    pub fn contains(&self, at: OffsetDateTime) -> bool {
        let at = timestamp(at);
        self.spans.iter().any(|span| span.contains(at))
    }

    /// The first instant after `after` at which a span opens, within the next fifteen
    /// days (a week, and another when a spring-forward gap swallowed a span's day);
    /// `None` if none does.
    pub fn next_opening(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let after = timestamp(after);
        let next = self.spans.iter().filter_map(|span| span.next_opening(after)).min()?;
        OffsetDateTime::from_unix_timestamp_nanos(next.as_nanosecond()).ok()
    }

    /// The shortest span, in minutes, as written (daylight saving may shorten one day's).
    pub fn shortest_span_minutes(&self) -> u32 {
        self.spans.iter().map(Span::minutes).min().unwrap_or(0)
    }

    /// Whether at least [`SWEEPS_PER_SPAN`] sweeps `interval_secs` apart fall within every
    /// span: a rotation deferred to the window is started by a sweep.
    pub fn fits_sweeps(&self, interval_secs: u64) -> bool {
        u64::from(self.shortest_span_minutes()) * 60 >= SWEEPS_PER_SPAN * interval_secs
    }

    /// Why the window does not fit sweeps `interval_secs` apart ([`Self::fits_sweeps`]).
    pub fn sweeps_problem(&self, interval_secs: u64) -> Option<String> {
        (!self.fits_sweeps(interval_secs)).then(|| {
            format!(
                "a span of {} minutes is shorter than {SWEEPS_PER_SPAN} sweeps (sweeper.interval_secs = {interval_secs})",
                self.shortest_span_minutes()
            )
        })
    }
}

fn timestamp(at: OffsetDateTime) -> Timestamp {
    // Every OffsetDateTime the service handles is within jiff's range (years -9999..9999).
    Timestamp::from_nanosecond(at.unix_timestamp_nanos()).unwrap_or(Timestamp::MAX)
}

impl Span {
    fn parse(number: usize, text: &str) -> Result<Self, WindowError> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let [days, hours, zone] = words[..] else {
            return Err(WindowError::Shape { span: number, found: words.len() });
        };
        let days = parse_days(days).ok_or_else(|| WindowError::Day { span: number, day: quoted(days) })?;
        let hours_error = || WindowError::Hours { span: number, hours: quoted(hours) };
        let (start, end) = hours.split_once('-').ok_or_else(hours_error)?;
        let (start, end) = (parse_minutes(start).ok_or_else(hours_error)?, parse_minutes(end).ok_or_else(hours_error)?);
        if start == 24 * 60 {
            return Err(hours_error());
        }
        let zone = if zone.eq_ignore_ascii_case("UTC") {
            TimeZone::UTC
        } else {
            jiff::tz::db().get(zone).map_err(|_| WindowError::Zone { span: number, zone: quoted(zone) })?
        };
        let span = Span { days, start, end, zone };
        if span.minutes() < MIN_SPAN_MINUTES {
            return Err(WindowError::TooShort { span: number, minutes: span.minutes() });
        }
        Ok(span)
    }

    fn minutes(&self) -> u32 {
        if self.end == self.start {
            0 // not a whole day: that is written 00:00-24:00
        } else if self.end > self.start {
            self.end - self.start
        } else {
            24 * 60 - self.start + self.end
        }
    }

    fn on(&self, day: Weekday) -> bool {
        self.days[usize::from(day.to_monday_zero_offset().unsigned_abs())]
    }

    fn contains(&self, at: Timestamp) -> bool {
        let local = at.to_zoned_datetime(self.zone.clone());
        let minute = u32::from(local.hour().unsigned_abs()) * 60 + u32::from(local.minute().unsigned_abs());
        let day = local.weekday();
        if self.end > self.start {
            self.on(day) && (self.start..self.end).contains(&minute)
        } else {
            (self.on(day) && minute >= self.start) || (self.on(day.previous()) && minute < self.end)
        }
    }

    fn next_opening(&self, after: Timestamp) -> Option<Timestamp> {
        let today = after.to_zoned_datetime(self.zone.clone()).date();
        let (hour, minute) = (i8::try_from(self.start / 60).ok()?, i8::try_from(self.start % 60).ok()?);
        std::iter::successors(Some(today), |day: &Date| day.tomorrow().ok())
            .take(16)
            .filter(|day| self.on(day.weekday()))
            // `compatible`: a start in a spring-forward gap opens when the clock resumes.
            .filter_map(|day| self.zone.to_ambiguous_timestamp(day.at(hour, minute, 0, 0)).compatible().ok())
            // A span inside a spring-forward gap does not open that day.
            .find(|opening| *opening > after && self.contains(*opening))
    }
}

/// `Mon-Fri`, `Sat,Sun`, `Fri-Mon`, `daily`.
fn parse_days(text: &str) -> Option<[bool; 7]> {
    let mut days = [false; 7];
    if text.eq_ignore_ascii_case("daily") {
        return Some([true; 7]);
    }
    for item in text.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (day_index(first)?, day_index(last)?),
            None => (day_index(item)?, day_index(item)?),
        };
        let mut day = first;
        loop {
            days[day] = true;
            if day == last {
                break;
            }
            day = (day + 1) % 7;
        }
    }
    Some(days)
}

fn day_index(name: &str) -> Option<usize> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    NAMES.iter().position(|day| name.eq_ignore_ascii_case(day))
}

/// `HH:MM`, 00:00 to 24:00, as minutes after midnight.
fn parse_minutes(text: &str) -> Option<u32> {
    let (hours, minutes) = text.split_once(':')?;
    let digits = |s: &str| (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u32>().ok())?;
    let (hours, minutes) = (digits(hours)?, digits(minutes)?);
    match (hours, minutes) {
        (0..=23, 0..=59) | (24, 0) => Some(hours * 60 + minutes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn window(text: &str) -> RotationWindow {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn a_weekday_night_in_amsterdam() {
        let w = window("Mon-Fri 22:00-05:00 Europe/Amsterdam");
        // 2026-11-30 is a Monday; Amsterdam is UTC+1 in winter.
        assert!(!w.contains(datetime!(2026-11-30 12:00 UTC)));
        assert!(w.contains(datetime!(2026-11-30 21:00 UTC)), "22:00 local Monday");
        assert!(w.contains(datetime!(2026-12-01 03:59 UTC)), "04:59 local Tuesday, Monday's night");
        assert!(!w.contains(datetime!(2026-12-01 04:00 UTC)), "05:00 local: closed");
        // Friday night runs into Saturday morning; Saturday night does not open.
        assert!(w.contains(datetime!(2026-12-05 02:00 UTC)), "Sat 03:00, Friday's night");
        assert!(!w.contains(datetime!(2026-12-05 22:00 UTC)), "Sat 23:00");
        assert!(!w.contains(datetime!(2026-12-06 23:30 UTC)), "Mon 00:30, Sunday's night (closed)");
        assert_eq!(w.next_opening(datetime!(2026-11-30 12:00 UTC)), Some(datetime!(2026-11-30 21:00 UTC)));
        assert_eq!(w.next_opening(datetime!(2026-12-05 12:00 UTC)), Some(datetime!(2026-12-07 21:00 UTC)));
        assert_eq!(w.shortest_span_minutes(), 7 * 60);
        assert!(w.fits_sweeps(3600) && w.fits_sweeps(7 * 1800) && !w.fits_sweeps(7 * 1800 + 1));
    }

    #[test]
    fn daylight_saving_moves_the_utc_hours() {
        let w = window("daily 02:00-04:00 Europe/Amsterdam");
        // Summer (UTC+2): 02:00 local is 00:00 UTC; winter (UTC+1): 01:00 UTC.
        assert!(w.contains(datetime!(2026-07-01 00:30 UTC)));
        assert!(!w.contains(datetime!(2026-12-01 00:30 UTC)));
        assert!(w.contains(datetime!(2026-12-01 01:30 UTC)));
        // 2026-03-29: clocks jump from 02:00 to 03:00; the window opens when they resume.
        assert_eq!(w.next_opening(datetime!(2026-03-28 23:00 UTC)), Some(datetime!(2026-03-29 01:00 UTC)));
        assert!(w.contains(datetime!(2026-03-29 01:30 UTC)), "03:30 local on the short night");
    }

    #[test]
    fn several_spans_and_the_whole_weekend() {
        let w = window("Mon-Fri 22:00-06:00 UTC; sat,SUN 00:00-24:00 UTC");
        assert!(w.contains(datetime!(2026-12-05 13:00 UTC)), "Saturday afternoon");
        assert!(!w.contains(datetime!(2026-12-07 05:00 UTC)), "Monday 05:00: Sunday is a whole day, not a night");
        assert!(!w.contains(datetime!(2026-12-07 06:00 UTC)));
        assert!(w.contains(datetime!(2026-12-05 05:00 UTC)), "Saturday 05:00 (Friday's night and the weekend)");
        assert_eq!(w.next_opening(datetime!(2026-12-07 12:00 UTC)), Some(datetime!(2026-12-07 22:00 UTC)));
        assert_eq!(w.to_string(), "Mon-Fri 22:00-06:00 UTC; sat,SUN 00:00-24:00 UTC");
    }

    #[test]
    fn a_wrapping_day_range() {
        let w = window("Fri-Mon 10:00-12:00 UTC");
        for (at, open) in [
            (datetime!(2026-12-04 11:00 UTC), true),  // Fri
            (datetime!(2026-12-06 11:00 UTC), true),  // Sun
            (datetime!(2026-12-07 11:00 UTC), true),  // Mon
            (datetime!(2026-12-08 11:00 UTC), false), // Tue
            (datetime!(2026-12-03 11:00 UTC), false), // Thu
        ] {
            assert_eq!(w.contains(at), open, "{at}");
        }
    }

    /// Every opening is open, the instant before it is not, and no instant between two
    /// openings is open unless a span is: walked in 5-minute steps over three weeks of daylight saving changes.
    #[test]
    fn next_opening_agrees_with_contains() {
        for text in [
            "Mon-Fri 22:00-05:00 Europe/Amsterdam",
            "Sun 03:00-03:30 Pacific/Kiritimati",
            "daily 00:00-24:00 UTC",
            // Inside the 2026-03-29 gap (02:00 -> 03:00): no opening that Sunday.
            "Sun 02:15-02:45 Europe/Amsterdam",
            // A 30-minute shift (Lord Howe) and a fold at midnight (Santiago), 5 April.
            "daily 01:30-02:30 Australia/Lord_Howe",
            "daily 00:00-00:30 America/Santiago",
        ] {
            let w = window(text);
            let mut at = datetime!(2026-03-20 00:00 UTC);
            while at < datetime!(2026-04-10 00:00 UTC) {
                if !w.contains(at) {
                    let opening = w.next_opening(at).expect("a weekly window opens within a fortnight");
                    assert!(opening > at && opening - at <= time::Duration::days(15), "{text} at {at}");
                    assert!(w.contains(opening), "{text}: opening {opening} is open");
                    assert!(!w.contains(opening - time::Duration::minutes(1)), "{text}: open before {opening}");
                }
                at += time::Duration::minutes(5);
            }
        }
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, says) in [
            ("", "empty"),
            ("  ;  ", "empty"),
            ("Mon-Fri 22:00-05:00", "expected DAYS HH:MM-HH:MM ZONE"),
            ("Monday 22:00-05:00 UTC", "is not a day"),
            ("Mon-Fri 22:00 UTC", "time range"),
            ("Mon-Fri 25:00-05:00 UTC", "time range"),
            ("Mon-Fri 2:00-05:00 UTC", "time range"),
            ("Mon-Fri 24:00-05:00 UTC", "time range"),
            ("Mon 10:00-10:00 UTC", "a span lasts at least"),
            ("Mon 10:00-10:10 UTC", "10 minute(s) long"),
            ("Mon 10:00-12:00 Mars/Olympus", "not a time zone"),
            ("Mon 10:00-12:00 UTC; Tue 10:00-12:00 Nowhere", "span 2"),
        ] {
            let err = text.parse::<RotationWindow>().expect_err(text).to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
        let many = ["Mon 10:00-12:00 UTC"; MAX_SPANS + 1].join(";");
        assert_eq!(many.parse::<RotationWindow>().unwrap_err(), WindowError::TooManySpans(MAX_SPANS + 1));
        let long = format!("Mon 10:00-12:00 {}", "A".repeat(MAX_LEN));
        assert!(matches!(long.parse::<RotationWindow>(), Err(WindowError::TooLong(_))));
        // What an error quotes is cut short: the text may be a hostile tag.
        let hostile = format!("Mon 10:00-12:00 {}\u{1b}[2J", "x".repeat(200));
        assert!(hostile.parse::<RotationWindow>().unwrap_err().to_string().len() < 200);
    }
}
