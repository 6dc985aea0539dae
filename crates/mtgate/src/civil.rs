//! Civil dates without a calendar crate: Unix seconds from and to
//! `YYYY-MM-DD`, HTTP dates (RFC 9110) and ASN.1 times (X.509 validity).
//! Pure functions over untrusted text; none panics.

/// Now, in Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
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
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn unix_from(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    let ok = (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0..=60).contains(&s);
    ok.then(|| days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// `YYYY-MM-DD` (UTC) of Unix time `t`.
pub fn format_day(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_date(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// RFC 3339 in UTC (`YYYY-MM-DDTHH:MM:SS+00:00`, as the config takes it);
/// `None` past year 9999.
pub fn rfc3339(t: u64) -> Option<String> {
    let t = i64::try_from(t).ok().filter(|t| *t < 253_402_300_800)?;
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        s / 3600,
        s / 60 % 60,
        s % 60
    ))
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 IMF-fixdate).
pub fn parse_http_date(s: &str) -> Option<i64> {
    let mut it = s.split_whitespace();
    let _weekday = it.next()?;
    let d = num(it.next()?)?;
    let mon = it.next()?;
    let y = num(it.next()?)?;
    let time = it.next()?;
    if it.next()? != "GMT" {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mo = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(mon))? as i64 + 1;
    let mut t = time.split(':');
    let (h, mi, sec) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    unix_from(y, mo, d, h, mi, sec)
}

/// An ASN.1 UTCTime (tag 0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`).
pub fn parse_asn1_time(tag: u8, b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?.strip_suffix('Z')?;
    let (y, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy = num(s.get(..2)?)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        (0x18, 14) => (num(s.get(..4)?)?, s.get(4..)?),
        _ => return None,
    };
    let f = |i: usize| num(rest.get(i..i + 2)?);
    unix_from(y, f(0)?, f(2)?, f(4)?, f(6)?, f(8)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_is_what_the_config_parses() {
        assert_eq!(
            super::rfc3339(0).as_deref(),
            Some("1970-01-01T00:00:00+00:00")
        );
        assert_eq!(
            super::rfc3339(1_798_761_600).as_deref(),
            Some("2027-01-01T00:00:00+00:00")
        );
        assert_eq!(super::rfc3339(u64::MAX), None);
        for t in [0u64, 1_796_079_600, 4_102_444_799] {
            let back = chrono::DateTime::parse_from_rfc3339(&super::rfc3339(t).unwrap()).unwrap();
            assert_eq!(back.timestamp() as u64, t);
        }
    }

    use super::*;

    #[test]
    fn dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(parse_http_date("garbage"), None);
        assert_eq!(parse_asn1_time(0x17, b"941106084937Z"), Some(784_111_777));
        assert_eq!(parse_asn1_time(0x18, b"19941106084937Z"), Some(784_111_777));
        assert_eq!(parse_asn1_time(0x17, b"9411060849Z"), None);
        assert_eq!(format_date(784_111_777), "1994-11-06 08:49:37 UTC");
        assert_eq!(format_date(0), "1970-01-01 00:00:00 UTC");
    }
}
