//! Calendar periods for quotas: the local midnight, Monday 00:00 or the 1st at
//! 00:00 in the policy time zone, as Unix milliseconds.
//!
//! [`period_bounds`] computes the period holding an instant directly from its
//! local date (no calendar scan); the user table caches the end and only calls
//! this again once the end has passed. A local midnight that does not exist (a
//! DST gap at 00:00) starts at the first local time that does; an ambiguous one
//! (a fold) at the earlier instant.

use crate::config::user_limits::QuotaPeriod;
use chrono::{Datelike, Days, LocalResult, Months, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

/// A period without end (used when no calendar quota is set, or the clock is absurd).
pub const NO_END: i64 = i64::MAX;

/// `[start, end)` of the `period` holding `now_ms`, in Unix milliseconds.
/// Always `end > now_ms`; `start <= now_ms` except right after a DST gap at
/// midnight.
pub fn period_bounds(period: QuotaPeriod, tz: Tz, now_ms: i64) -> (i64, i64) {
    let fallback = (now_ms, NO_END);
    let LocalResult::Single(local) = tz.timestamp_millis_opt(now_ms) else {
        return fallback;
    };
    let today = local.date_naive();
    let (first, next) = match period {
        QuotaPeriod::Daily => (Some(today), today.checked_add_days(Days::new(1))),
        QuotaPeriod::Weekly => {
            let back = u64::from(today.weekday().num_days_from_monday());
            let monday = today.checked_sub_days(Days::new(back));
            (
                monday,
                monday.and_then(|m| m.checked_add_days(Days::new(7))),
            )
        }
        QuotaPeriod::Monthly => {
            let first = today.with_day(1);
            (
                first,
                first.and_then(|f| f.checked_add_months(Months::new(1))),
            )
        }
    };
    let (Some(first), Some(next)) = (first, next) else {
        return fallback;
    };
    let (Some(start), Some(end)) = (local_midnight_ms(tz, first), local_midnight_ms(tz, next))
    else {
        return fallback;
    };
    if end <= now_ms {
        return fallback;
    }
    (start.min(now_ms), end)
}

/// The first instant of `date` in `tz`, in Unix milliseconds.
pub fn local_midnight_ms(tz: Tz, date: NaiveDate) -> Option<i64> {
    let midnight: NaiveDateTime = date.and_hms_opt(0, 0, 0)?;
    // A gap is at most a few hours; step through it a quarter-hour at a time.
    for quarter in 0..=24u32 {
        let t = midnight.checked_add_signed(chrono::TimeDelta::minutes(15 * i64::from(quarter)))?;
        match tz.from_local_datetime(&t) {
            LocalResult::Single(dt) => return Some(dt.timestamp_millis()),
            LocalResult::Ambiguous(a, b) => {
                return Some(a.timestamp_millis().min(b.timestamp_millis()))
            }
            LocalResult::None => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }
    fn show(ms: i64, tz: Tz) -> String {
        tz.timestamp_millis_opt(ms).unwrap().to_rfc3339()
    }
    const MOSCOW: Tz = chrono_tz::Europe::Moscow;
    const NY: Tz = chrono_tz::America::New_York;

    #[test]
    fn daily_moscow() {
        // 2026-03-10 23:30 in Moscow (+03) is 20:30 UTC.
        let now = ms("2026-03-10T20:30:00Z");
        let (s, e) = period_bounds(QuotaPeriod::Daily, MOSCOW, now);
        assert_eq!(show(s, MOSCOW), "2026-03-10T00:00:00+03:00");
        assert_eq!(show(e, MOSCOW), "2026-03-11T00:00:00+03:00");
        // 21:00 UTC is already the next day there.
        let (s2, _) = period_bounds(QuotaPeriod::Daily, MOSCOW, ms("2026-03-10T21:00:00Z"));
        assert_eq!(s2, e);
    }

    #[test]
    fn weekly_starts_monday() {
        // 2026-11-22 is a Sunday; 2026-11-23 a Monday.
        let (s, e) = period_bounds(QuotaPeriod::Weekly, MOSCOW, ms("2026-11-22T20:59:59Z"));
        assert_eq!(show(s, MOSCOW), "2026-11-16T00:00:00+03:00");
        assert_eq!(show(e, MOSCOW), "2026-11-23T00:00:00+03:00");
        let (s, _) = period_bounds(QuotaPeriod::Weekly, MOSCOW, ms("2026-11-22T21:00:00Z"));
        assert_eq!(show(s, MOSCOW), "2026-11-23T00:00:00+03:00");
    }

    #[test]
    fn monthly_new_york() {
        let (s, e) = period_bounds(QuotaPeriod::Monthly, NY, ms("2026-12-31T12:00:00Z"));
        assert_eq!(show(s, NY), "2026-12-01T00:00:00-05:00");
        assert_eq!(show(e, NY), "2027-01-01T00:00:00-05:00");
        // February in a leap year.
        let (s, e) = period_bounds(QuotaPeriod::Monthly, NY, ms("2028-02-29T12:00:00Z"));
        assert_eq!(show(s, NY), "2028-02-01T00:00:00-05:00");
        assert_eq!(show(e, NY), "2028-03-01T00:00:00-05:00");
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        // New York springs forward on 2026-03-08 and falls back on 2026-11-01.
        let (s, e) = period_bounds(QuotaPeriod::Daily, NY, ms("2026-03-08T12:00:00Z"));
        assert_eq!(show(s, NY), "2026-03-08T00:00:00-05:00");
        assert_eq!(show(e, NY), "2026-03-09T00:00:00-04:00");
        assert_eq!(e - s, 23 * 3_600_000);
        let (s, e) = period_bounds(QuotaPeriod::Daily, NY, ms("2026-11-01T12:00:00Z"));
        assert_eq!(e - s, 25 * 3_600_000);
        // The March month spans the change: 31 days less one hour.
        let (s, e) = period_bounds(QuotaPeriod::Monthly, NY, ms("2026-03-15T00:00:00Z"));
        assert_eq!(e - s, 31 * 86_400_000 - 3_600_000);
    }

    #[test]
    fn midnight_in_a_gap() {
        // Santiago (Chile) moved clocks from 24:00 to 01:00 on 2022-09-11.
        let tz = chrono_tz::America::Santiago;
        let day = NaiveDate::from_ymd_opt(2022, 9, 11).unwrap();
        let m = local_midnight_ms(tz, day).unwrap();
        assert_eq!(show(m, tz), "2022-09-11T01:00:00-03:00");
        let (s, e) = period_bounds(QuotaPeriod::Daily, tz, m + 1000);
        assert_eq!(s, m);
        assert!(e > m);
    }

    #[test]
    fn absurd_clock_does_not_panic() {
        for now in [i64::MIN, i64::MAX, -1, 0] {
            let (_, e) = period_bounds(QuotaPeriod::Monthly, NY, now);
            assert!(e > now || now == i64::MAX);
        }
    }

    proptest! {
        #[test]
        fn bounds_hold_now(now in 0i64..4_102_444_800_000, p in 0u8..3, z in 0usize..4) {
            let period = [QuotaPeriod::Daily, QuotaPeriod::Weekly, QuotaPeriod::Monthly][p as usize];
            let tz = [MOSCOW, NY, chrono_tz::UTC, chrono_tz::Australia::Lord_Howe][z];
            let (s, e) = period_bounds(period, tz, now);
            prop_assert!(s <= now && now < e);
            // The next period starts exactly where this one ends.
            let (s2, e2) = period_bounds(period, tz, e);
            prop_assert_eq!(s2, e);
            prop_assert!(e2 > e);
            let len_h = (e - s) / 3_600_000;
            let (lo, hi) = match period {
                QuotaPeriod::Daily => (22, 26),
                QuotaPeriod::Weekly => (7 * 24 - 2, 7 * 24 + 2),
                QuotaPeriod::Monthly => (28 * 24 - 2, 31 * 24 + 2),
            };
            prop_assert!((lo..=hi).contains(&len_h), "{} {}", len_h, Utc.timestamp_millis_opt(now).unwrap());
        }
    }
}
