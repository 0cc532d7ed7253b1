//! Dates for the Date operators: ISO-8601 (as AWS accepts them) or epoch seconds, to epoch
//! milliseconds.

/// Epoch milliseconds of 0000-01-01T00:00:00Z and of 9999-12-31T23:59:59.999Z: the only years
/// a date may name (4 digits), so no arithmetic can wrap.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// Parses `2026-11-24`, `2026-11-24T10:20:30Z`, `2026-11-24T10:20:30.5+01:00`, `…T10:20Z` or
/// epoch seconds (`1795480000`, `1795480000.25`). Years are 0000–9999 (four digits); anything
/// outside that range is not a date.
pub(crate) fn parse_date_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        let ms = secs * 1000.0;
        return (ms.is_finite() && (MIN_MS as f64..=MAX_MS as f64).contains(&ms))
            .then(|| ms.round() as i64);
    }
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut d = date.split('-');
    let year = digits(d.next()?, 4)?;
    let month = u32::try_from(digits(d.next()?, 2)?).ok()?;
    let day = u32::try_from(digits(d.next()?, 2)?).ok()?;
    if d.next().is_some()
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
    {
        return None;
    }
    let mut ms = days_from_civil(year, month, day) * 86_400_000;
    if let Some(rest) = rest {
        let (time, offset_ms) = split_offset(rest)?;
        let mut t = time.split(':');
        let h = digits(t.next()?, 2)?;
        let m = digits(t.next()?, 2)?;
        let sec: f64 = match t.next() {
            Some(x) => x.parse().ok()?,
            None => 0.0,
        };
        if t.next().is_some() || h > 23 || m > 59 || !(0.0..61.0).contains(&sec) {
            return None;
        }
        ms += h * 3_600_000 + m * 60_000 + (sec * 1000.0).round() as i64 - offset_ms;
    }
    (MIN_MS..=MAX_MS).contains(&ms).then_some(ms)
}

/// Exactly `n` ASCII digits.
fn digits(s: &str, n: usize) -> Option<i64> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Splits `HH:MM[:SS[.f]]` from its zone: `Z`, `±HH:MM`, `±HHMM`, `±HH` or none (UTC).
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(t) = s.strip_suffix(['Z', 'z']) {
        return Some((t, 0));
    }
    match s.rfind(['+', '-']) {
        Some(i) => {
            let (time, zone) = (&s[..i], &s[i..]);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
            if !(digits.len() == 2 || digits.len() == 4)
                || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let h: i64 = digits[..2].parse().ok()?;
            let m: i64 = if digits.len() == 4 {
                digits[2..].parse().ok()?
            } else {
                0
            };
            if h > 23 || m > 59 {
                return None;
            }
            Some((time, sign * (h * 3_600_000 + m * 60_000)))
        }
        None => Some((s, 0)),
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_date_ms;

    #[test]
    fn formats() {
        assert_eq!(parse_date_ms("1970-01-01"), Some(0));
        assert_eq!(
            parse_date_ms("2026-11-24T00:00:00Z"),
            Some(1_795_478_400_000)
        );
        assert_eq!(
            parse_date_ms("2026-11-24"),
            parse_date_ms("2026-11-24T00:00:00Z")
        );
        assert_eq!(
            parse_date_ms("2026-11-24T01:00:00+01:00"),
            Some(1_795_478_400_000)
        );
        assert_eq!(
            parse_date_ms("2026-11-23T23:00:00-0100"),
            Some(1_795_478_400_000)
        );
        assert_eq!(
            parse_date_ms("2026-11-24T00:00:00.250Z"),
            Some(1_795_478_400_250)
        );
        assert_eq!(parse_date_ms("2026-11-24T00:00Z"), Some(1_795_478_400_000));
        assert_eq!(parse_date_ms("1795478400"), Some(1_795_478_400_000));
        assert!(parse_date_ms("2024-02-29").is_some(), "leap day");
        for bad in [
            "2025-02-29",
            "2026-13-01",
            "2026-11-24T25:00Z",
            "tomorrow",
            "2026-11",
            "",
            // Years outside 0000-9999 used to wrap around (584555988 came out as 1938).
            "584555988-01-01",
            "10000-01-01",
            "-0001-01-01",
            "99-01-01",
            "2026-1-01",
            "2026-11-24T10:20+99:00",
            "1e300",
            "-1e300",
            "253402300800",
        ] {
            assert_eq!(parse_date_ms(bad), None, "{bad}");
        }
        assert_eq!(
            parse_date_ms("9999-12-31T23:59:59.999Z"),
            Some(253_402_300_799_999)
        );
        assert_eq!(parse_date_ms("0000-01-01"), Some(-62_167_219_200_000));
    }
}
