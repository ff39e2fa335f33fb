//! Time for providers: the host's wall clock (wasi:clocks) as Unix time, and parsers
//! for the two date formats services send, into seconds since the Unix epoch:
//!
//! - [`parse_rfc3339`]: RFC 3339 timestamps in JSON bodies (`2023-12-22T07:20:25Z`,
//!   with fractional seconds or a `±hh:mm` offset), e.g. a key's expiry;
//! - [`parse_http_date`]: the HTTP `Date` header (IMF-fixdate,
//!   `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7), e.g. to compare the service's
//!   clock with the host's. Only the preferred format: every current server sends it.
//!
//! Small on purpose: a date library would add more to a component than this file.
//!
//! ```
//! use latchkey_plugin_sdk::time;
//! assert_eq!(time::parse_rfc3339("2023-12-22T09:20:25+02:00"), Some(1_703_229_625));
//! assert_eq!(time::parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT"), Some(1_700_000_000));
//! ```

use crate::ProviderError;

/// Seconds since the Unix epoch, from the host's wall clock. A clock before 1970 is
/// `unavailable` naming clock skew.
pub fn now_secs() -> Result<u64, ProviderError> {
    since_epoch().map(|d| d.as_secs())
}

/// Milliseconds since the Unix epoch, from the host's wall clock (what exchanges sign
/// as a request's timestamp). A clock before 1970 or beyond `u64` milliseconds is
/// `unavailable` naming clock skew.
pub fn now_ms() -> Result<u64, ProviderError> {
    u64::try_from(since_epoch()?.as_millis())
        .map_err(|_| ProviderError::Unavailable("clock skew: host clock is out of range".into()))
}

fn since_epoch() -> Result<std::time::Duration, ProviderError> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| ProviderError::Unavailable("clock skew: host clock is before 1970".into()))
}

/// Seconds since the epoch, or `None` if `text` is not an RFC 3339 date-time (a date
/// alone, no zone, an impossible date, or a time before 1970 are not).
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, rest) = text.trim().split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let (year, month, day) = (
        digits(d.next()?, 4)?,
        digits(d.next()?, 2)?,
        digits(d.next()?, 2)?,
    );
    let mut c = rest.get(..8)?.splitn(3, ':');
    let (hour, minute, second) = (
        digits(c.next()?, 2)?,
        digits(c.next()?, 2)?,
        digits(c.next()?, 2)?,
    );
    let mut zone = rest.get(8..)?;
    if let Some(fraction) = zone.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        zone = &fraction[n..];
    }
    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = match zone.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = zone.get(1..)?.split_once(':')?;
            sign * (digits(h, 2)? * 3600 + digits(m, 2)? * 60)
        }
    };
    unix(year, month, day, hour, minute, second)?
        .checked_sub(offset)
        .and_then(|secs| u64::try_from(secs).ok())
}

/// Seconds since the epoch, or `None` if `text` is not an IMF-fixdate.
pub fn parse_http_date(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = text.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day = digits(parts.next()?, 2)?;
    let month = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month)?;
    let year = digits(parts.next()?, 4)?;
    let mut clock = parts.next()?.split(':');
    let (hour, minute, second) = (
        digits(clock.next()?, 2)?,
        digits(clock.next()?, 2)?,
        digits(clock.next()?, 2)?,
    );
    if parts.next()? != "GMT" || parts.next().is_some() || clock.next().is_some() {
        return None;
    }
    let month = i64::try_from(month).ok()? + 1;
    u64::try_from(unix(year, month, day, hour, minute, second)?).ok()
}

/// `text` as a number if it is exactly `len` ASCII digits.
fn digits(text: &str, len: usize) -> Option<i64> {
    if text.len() == len && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// Seconds since the epoch of a UTC civil time, or `None` if a field is out of range
/// (a leap second, `:60`, is allowed).
fn unix(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> Option<i64> {
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_as_services_send_it() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2023-12-22T07:20:25Z"), Some(1_703_229_625));
        assert_eq!(
            parse_rfc3339("2023-12-22T07:20:25.123Z"),
            Some(1_703_229_625)
        );
        assert_eq!(
            parse_rfc3339("2023-12-22T09:20:25+02:00"),
            Some(1_703_229_625)
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(parse_rfc3339("2027-12-31T23:59:59Z"), Some(1_830_297_599));
        assert_eq!(
            parse_rfc3339("2024-02-29T14:00:00+02:00"),
            Some(1_709_208_000)
        );
    }

    #[test]
    fn refuses_what_is_not_an_rfc3339_time() {
        for bad in [
            "",
            "0",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-12-22",
            "2023-12-22T07:20:25",
            "2023-12-22T07:20:25.Z",
            "2023-12-22T07:20:25+2:00",
            "1960-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_the_rfc_9110_date_example() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn refuses_other_date_formats() {
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_the_host_clock() {
        let secs = now_secs().expect("a clock after 1970");
        let ms = now_ms().expect("a clock after 1970");
        assert!(secs > 1_700_000_000);
        assert!(ms / 1000 >= secs);
    }
}
