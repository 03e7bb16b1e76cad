//! Wall-clock time, injected so tests control it. Durations (timeouts, heartbeats) use
//! `tokio::time`, which tests pause and advance; timestamps come from here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
// The one place the engine reads the wall clock.
#[allow(clippy::disallowed_types)]
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[allow(clippy::disallowed_types)]
impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm UTC` (proleptic Gregorian),
/// for traces and operator output.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Milliseconds since the Unix epoch of a UTC civil time; `None` when a field is out of
/// range or the time is before the epoch.
pub fn utc_ms(y: i64, m: u32, d: u32, hour: u32, min: u32, sec: u32, milli: u32) -> Option<u64> {
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d == 0 || d > days_in_month || hour > 23 || min > 59 || sec > 59 || milli > 999 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    let secs = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec);
    u64::try_from(secs)
        .ok()
        .map(|s| s * 1000 + u64::from(milli))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(format_utc(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(format_utc(1_700_000_000_000), "2023-11-14 22:13:20.000 UTC");
        assert_eq!(format_utc(4_102_444_799_999), "2099-12-31 23:59:59.999 UTC");
    }

    #[test]
    fn civil_times_round_trip() {
        assert_eq!(utc_ms(1970, 1, 1, 0, 0, 0, 0), Some(0));
        assert_eq!(utc_ms(2023, 11, 14, 22, 13, 20, 0), Some(1_700_000_000_000));
        assert_eq!(utc_ms(2000, 2, 29, 0, 0, 0, 123), Some(951_782_400_123));
        for ms in [
            0,
            86_399_999,
            951_782_400_123,
            1_709_164_800_000,
            4_102_444_799_999,
        ] {
            let s = format_utc(ms);
            let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap();
            let y = s[0..4].parse::<i64>().unwrap();
            assert_eq!(
                utc_ms(
                    y,
                    n(5..7),
                    n(8..10),
                    n(11..13),
                    n(14..16),
                    n(17..19),
                    n(20..23)
                ),
                Some(ms),
                "{s}"
            );
        }
        assert_eq!(utc_ms(2023, 2, 29, 0, 0, 0, 0), None, "not a leap year");
        assert_eq!(utc_ms(2023, 13, 1, 0, 0, 0, 0), None);
        assert_eq!(utc_ms(2023, 1, 1, 24, 0, 0, 0), None);
        assert_eq!(
            utc_ms(1969, 12, 31, 23, 59, 59, 0),
            None,
            "before the epoch"
        );
    }
}
