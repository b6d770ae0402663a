//! 1C's dates: local time without an offset (`2026-12-05T10:30:00`). The
//! poll's window start is the cursor's date less `reread`, computed on that
//! local time as it is written (no time zone needed: both are 1C's); the
//! event's date is 1C's with the configured offset added.

use std::time::Duration;

/// Seconds since 0000-03-01-based epoch of 1970-01-01 as written, of
/// `YYYY-MM-DDTHH:MM:SS` (a fraction or offset after it is ignored).
pub(super) fn to_seconds(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// `YYYY-MM-DDTHH:MM:SS` of [`to_seconds`]'s count.
pub(super) fn from_seconds(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `date` less `by`, as 1C writes dates; `None` when `date` is not one.
/// Never before 0001-01-01 (1C's empty date).
pub(super) fn minus(date: &str, by: Duration) -> Option<String> {
    let floor = days_from_civil(1, 1, 1) * 86_400;
    let at = to_seconds(date)?
        .saturating_sub(by.as_secs() as i64)
        .max(floor);
    Some(from_seconds(at))
}

/// 1C's `date` as RFC 3339 with `offset` (`+03:00`); the seconds part
/// only (1C's dates have no fraction).
pub(super) fn with_offset(date: &str, offset: &str) -> Option<String> {
    to_seconds(date)?;
    Some(format!("{}{offset}", &date[..19]))
}

// Howard Hinnant's civil-date algorithms (days since 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_computed_on_1c_local_time() {
        assert_eq!(to_seconds("1970-01-01T00:00:00"), Some(0));
        assert_eq!(
            minus("2026-03-02T10:00:00", Duration::from_secs(3 * 86_400)).as_deref(),
            Some("2026-02-27T10:00:00")
        );
        assert_eq!(
            minus("2024-03-01T00:00:01", Duration::from_secs(2)).as_deref(),
            Some("2024-02-29T23:59:59")
        );
        assert_eq!(
            minus("0001-01-02T00:00:00", Duration::from_secs(400 * 86_400)).as_deref(),
            Some("0001-01-01T00:00:00")
        );
        assert_eq!(minus("yesterday", Duration::ZERO), None);
        for d in [
            "2026-12-05T23:59:59",
            "2000-02-29T12:00:00",
            "1999-12-31T00:00:00",
        ] {
            assert_eq!(to_seconds(d).map(from_seconds).as_deref(), Some(d));
        }
        assert_eq!(
            with_offset("2026-12-05T10:30:00", "+03:00").as_deref(),
            Some("2026-12-05T10:30:00+03:00")
        );
        assert_eq!(with_offset("2026-12-05", "+03:00"), None);
    }
}
