//! Reading an RFC 3339 time (the journal's `since`): any offset, as a 1C
//! client in Moscow writes it (`2026-12-04T23:00:00+03:00`, what the БСП's
//! `ПредставлениеЛокальнойДатыСоСмещением` gives), UTC as `Z`, and the
//! lowercase `t` and `z` RFC 3339 allows. A time with no offset is refused:
//! it does not say which time zone it is in, and guessing UTC would shift a
//! Moscow `since` by three hours.
//!
//! The grammar (RFC 3339, section 5.6): `YYYY-MM-DD` `T` `hh:mm:ss`
//! [`.` fraction] (`Z` | `+hh:mm` | `-hh:mm`); a space may stand for the `T`
//! (section 5.6's note). A leap second (`:60`) is read as the next second.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a text is not an RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("the time has no offset: add Z for UTC or the offset, such as +03:00 for Moscow (2026-11-23T13:00:00+03:00); without one it does not say which time zone it is in")]
    NoOffset,
    #[error("not an RFC 3339 time; write it as 2026-11-23T10:00:00Z or 2026-11-23T13:00:00+03:00")]
    Malformed,
}

/// The instant `text` names.
pub fn parse(text: &str) -> Result<SystemTime, TimeError> {
    let b = text.as_bytes();
    // "YYYY-MM-DDThh:mm:ss" is 19 bytes; all of it ASCII when valid.
    if b.len() < 19 || !text.is_char_boundary(19) {
        return Err(TimeError::Malformed);
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let separators = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !separators
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(TimeError::Malformed);
    }
    let mut rest = &b[19..];
    let mut nanos = 0u64;
    if let Some((b'.', fraction)) = rest.split_first() {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(TimeError::Malformed);
        }
        // Nanoseconds: the first nine digits, the rest dropped.
        for i in 0..9 {
            nanos = nanos * 10
                + fraction
                    .get(i)
                    .filter(|_| i < n)
                    .map_or(0, |d| u64::from(d - b'0'));
        }
        rest = &fraction[n..];
    }
    let offset_secs: i64 = match rest {
        [] => return Err(TimeError::NoOffset),
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(&[*h1, *h2])?;
            let minutes = digits(&[*m1, *m2])?;
            if hours > 23 || minutes > 59 {
                return Err(TimeError::Malformed);
            }
            let secs = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return Err(TimeError::Malformed),
    };
    let days = days_from_civil(i64::from(year), month, day);
    let local = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    let utc = local - offset_secs;
    let nanos = Duration::from_nanos(nanos);
    let t = if utc >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(utc.unsigned_abs()) + nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(utc.unsigned_abs()))
            .and_then(|t| t.checked_add(nanos))
    };
    t.ok_or(TimeError::Malformed)
}

/// The number written in ASCII digits `d`.
fn digits(d: &[u8]) -> Result<u32, TimeError> {
    d.iter().try_fold(0u32, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + u32::from(c - b'0'))
        } else {
            Err(TimeError::Malformed)
        }
    })
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (negative
/// before it): Howard Hinnant's `days_from_civil`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).expect("a UTC time")
    }

    #[test]
    fn any_offset_and_either_case_name_the_same_instant() {
        let t = utc("2026-12-04T20:00:00Z");
        for same in [
            "2026-12-04T20:00:00Z",
            "2026-12-04t20:00:00z",
            "2026-12-04 20:00:00Z",
            "2026-12-04T23:00:00+03:00",
            "2026-12-04T15:30:00-04:30",
            "2026-12-05T05:00:00+09:00",
            "2026-12-04T20:00:00-00:00",
            "2026-12-04T20:00:00.000Z",
            "2026-12-04T23:00:00.000+03:00",
        ] {
            assert_eq!(parse(same), Ok(t), "{same}");
        }
        assert_eq!(
            parse("2026-12-04T20:00:00.123456789123Z"),
            Ok(t + Duration::from_nanos(123_456_789))
        );
        assert_eq!(
            parse("2028-02-29T00:00:00Z"),
            Ok(utc("2028-02-29T00:00:00Z"))
        );
        assert_eq!(
            parse("2016-12-31T23:59:60Z"),
            Ok(utc("2017-01-01T00:00:00Z")),
            "a leap second is the next second"
        );
        assert_eq!(
            parse("1969-12-31T23:59:59.5Z"),
            Ok(UNIX_EPOCH - Duration::from_millis(500))
        );
    }

    #[test]
    fn a_time_without_an_offset_is_refused_saying_so() {
        for local in ["2026-12-04T23:00:00", "2026-12-04T23:00:00.5"] {
            assert_eq!(parse(local), Err(TimeError::NoOffset), "{local}");
        }
        assert!(TimeError::NoOffset.to_string().contains("+03:00"));
    }

    #[test]
    fn what_is_not_an_rfc_3339_time_is_refused() {
        for bad in [
            "",
            "yesterday",
            "2026-12-04",
            "2026-13-04T20:00:00Z",
            "2026-02-29T20:00:00Z",
            "2026-12-32T20:00:00Z",
            "2026-12-04T24:00:00Z",
            "2026-12-04T20:60:00Z",
            "2026-12-04T20:00:61Z",
            "2026-12-04X20:00:00Z",
            "2026-12-04T20:00:00.Z",
            "2026-12-04T20:00:00+24:00",
            "2026-12-04T20:00:00+03",
            "2026-12-04T20:00:00+0300",
            "2026-12-04T20:00:00+03:7x",
            "2026-12-04T20:00:00 03:00",
            "2026-12-04T20:00:00Zjunk",
            "+2026-12-04T20:00:00Z",
            "ёёёёёёёёёёёёёёёёёёёё",
        ] {
            assert_eq!(parse(bad), Err(TimeError::Malformed), "{bad:?}");
        }
    }
}
