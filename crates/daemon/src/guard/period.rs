//! Calendar and fixed periods: when a budget resets and a quota window rolls.
//!
//! Periods are computed from wall time (UTC, seconds since the Unix epoch) because
//! "daily" means the calendar day, also across restarts; the `time` crate does the
//! calendar arithmetic. A period is identified by its start, so a restart or a long
//! pause across a boundary can never apply a reset twice or miss one: spending is
//! filed under the period that contains it.

use std::time::Duration;

use time::{Date, Month, OffsetDateTime, Time};

/// How time is cut into periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// One period forever (a lifetime quota, a budget that never resets).
    Forever,
    /// Fixed-length periods aligned to the Unix epoch (a minute, an hour, "6h").
    Every(Duration),
    /// UTC calendar days.
    Daily,
    /// UTC weeks starting on Monday.
    Weekly,
    /// UTC calendar months.
    Monthly,
}

// === impl Period ===

impl Period {
    /// Start (Unix seconds) of the period containing `now` (Unix seconds).
    pub fn start(self, now: u64) -> u64 {
        match self {
            Period::Forever => 0,
            Period::Every(length) => {
                let length = length.as_secs().max(1);
                now - now % length
            }
            Period::Daily => now - now % 86_400,
            Period::Weekly => {
                let day = now - now % 86_400;
                let weekday = utc(day).weekday().number_days_from_monday();
                day - u64::from(weekday) * 86_400
            }
            Period::Monthly => {
                let date = utc(now).date();
                let first = Date::from_calendar_date(date.year(), date.month(), 1)
                    .expect("the first of a valid month is a valid date");
                unix(first)
            }
        }
    }

    /// End (exclusive, Unix seconds) of the period that starts at `start`; `None`
    /// for `Forever`.
    pub fn end(self, start: u64) -> Option<u64> {
        match self {
            Period::Forever => None,
            Period::Every(length) => Some(start + length.as_secs().max(1)),
            Period::Daily => Some(start + 86_400),
            Period::Weekly => Some(start + 7 * 86_400),
            Period::Monthly => {
                let date = utc(start).date();
                let (year, month) = match date.month() {
                    Month::December => (date.year() + 1, Month::January),
                    month => (date.year(), month.next()),
                };
                let first = Date::from_calendar_date(year, month, 1)
                    .expect("the first of a valid month is a valid date");
                Some(unix(first))
            }
        }
    }

    /// The period a budget is in at `now`: the one containing `now`, or a
    /// newer one among `starts` (periods the ledger holds a balance for)
    /// when the clock stepped back. Starts not aligned to this period (left
    /// by another reset) are not its periods.
    pub fn newest_start(self, now: u64, starts: impl IntoIterator<Item = u64>) -> u64 {
        starts
            .into_iter()
            .filter(|start| self.start(*start) == *start)
            .fold(self.start(now), u64::max)
    }

    /// Seconds from `now` until the current period ends.
    pub fn remaining(self, now: u64) -> Option<u64> {
        self.end(self.start(now)).map(|end| end.saturating_sub(now))
    }

    /// Whether counters of this period must survive a restart: anything longer
    /// than a few minutes (SPEC §3.4).
    pub fn is_durable(self) -> bool {
        !matches!(self, Period::Every(length) if length <= Duration::from_secs(300))
    }

    /// The name of this period as a quota window (`day`, `month`, `lifetime`).
    pub fn window_name(self) -> String {
        match self {
            Period::Forever => "lifetime".into(),
            Period::Daily => "day".into(),
            Period::Weekly => "week".into(),
            Period::Monthly => "month".into(),
            other => other.name(),
        }
    }

    /// The name of this period as a budget reset (`daily`, `monthly`, `never`).
    pub fn name(self) -> String {
        match self {
            Period::Forever => "never".into(),
            Period::Every(d) if d == Duration::from_secs(60) => "minute".into(),
            Period::Every(d) if d == Duration::from_secs(3600) => "hour".into(),
            Period::Every(d) => humantime::format_duration(d).to_string(),
            Period::Daily => "daily".into(),
            Period::Weekly => "weekly".into(),
            Period::Monthly => "monthly".into(),
        }
    }
}

fn utc(unix_secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(i64::try_from(unix_secs).unwrap_or(i64::MAX))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn unix(date: Date) -> u64 {
    u64::try_from(date.with_time(Time::MIDNIGHT).assume_utc().unix_timestamp()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-23 is a Monday.
    const MON_2026_11_23: u64 = 1_795_392_000;

    #[test]
    fn calendar_boundaries() {
        let tue_noon = MON_2026_11_23 + 86_400 + 12 * 3600;
        assert_eq!(Period::Daily.start(tue_noon), MON_2026_11_23 + 86_400);
        assert_eq!(Period::Weekly.start(tue_noon), MON_2026_11_23);
        assert_eq!(
            Period::Weekly.end(MON_2026_11_23),
            Some(MON_2026_11_23 + 7 * 86_400)
        );
        let nov_1 = MON_2026_11_23 - 22 * 86_400;
        assert_eq!(Period::Monthly.start(tue_noon), nov_1);
        let dec_1 = MON_2026_11_23 + 8 * 86_400;
        assert_eq!(Period::Monthly.end(nov_1), Some(dec_1));
        assert_eq!(Period::Monthly.start(dec_1 - 1), nov_1);
        assert_eq!(Period::Monthly.start(dec_1), dec_1);
        // December rolls into January of the next year.
        let dec_end = Period::Monthly.end(dec_1).unwrap();
        assert_eq!(
            utc(dec_end).date(),
            Date::from_calendar_date(2027, Month::January, 1).unwrap()
        );
        assert_eq!(Period::Forever.start(tue_noon), 0);
        assert_eq!(Period::Forever.end(0), None);
        assert_eq!(
            Period::Every(Duration::from_secs(3600)).remaining(tue_noon + 60),
            Some(3540)
        );
    }

    #[test]
    fn durability() {
        assert!(!Period::Every(Duration::from_secs(60)).is_durable());
        assert!(Period::Every(Duration::from_secs(3600)).is_durable());
        assert!(Period::Daily.is_durable() && Period::Forever.is_durable());
    }
}
