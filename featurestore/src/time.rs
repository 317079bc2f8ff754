//! Event and creation times: milliseconds since the Unix epoch, from 1970-01-01 to
//! 9999-12-31T23:59:59.999Z. Anything outside is refused where it enters (a push, a
//! materialized row) and, if a store holds one anyway, read as `INVALID`, never formatted.

/// The latest time a row may carry: 9999-12-31T23:59:59.999Z.
pub const MAX_MS: i64 = 253_402_300_799_999;

/// `ms` when it is a time rows may carry.
pub fn check_ms(ms: i64) -> Result<i64, String> {
    if (0..=MAX_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "{ms} ms is outside 1970-01-01 to 9999-12-31 (a time in nanoseconds or microseconds read as seconds?)"
        ))
    }
}

/// Unix seconds (fractions allowed) as milliseconds.
pub fn seconds_to_ms(seconds: f64) -> Result<i64, String> {
    if !seconds.is_finite() || seconds < 0.0 || seconds * 1000.0 > MAX_MS as f64 {
        return Err(format!("{seconds} is not a Unix time in seconds between 1970 and 9999"));
    }
    check_ms((seconds * 1000.0).round() as i64)
}

/// An RFC 3339 time (`2026-11-17T10:00:00Z`, `…+02:00`, `…-0500`, or without a zone: UTC;
/// a space instead of `T` is accepted) as milliseconds.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let bad = || format!("'{text}' is not an RFC 3339 time");
    // A numeric offset after the seconds: `+HH:MM`, `+HHMM` or `+HH`.
    let (base, offset_s) = match text.get(19..).and_then(|rest| rest.rfind(['+', '-']).map(|i| i + 19)) {
        Some(i) => {
            let sign = if text.as_bytes()[i] == b'+' { 1 } else { -1 };
            let digits: String = text[i + 1..].chars().filter(|c| *c != ':').collect();
            if !(digits.len() == 2 || digits.len() == 4) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let hours: i64 = digits[..2].parse().map_err(|_| bad())?;
            let minutes: i64 = if digits.len() == 4 {
                digits[2..].parse().map_err(|_| bad())?
            } else {
                0
            };
            if hours > 23 || minutes > 59 {
                return Err(bad());
            }
            (&text[..i], sign * (hours * 3600 + minutes * 60))
        }
        None => (text, 0),
    };
    let base = base.strip_suffix(['Z', 'z']).unwrap_or(base);
    let t = humantime::parse_rfc3339_weak(base).map_err(|_| bad())?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| bad())?.as_millis() as i64 - offset_s * 1000;
    check_ms(ms)
}

/// A time given as text: Unix seconds, or RFC 3339.
pub fn parse_text(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_ms(seconds);
    }
    parse_rfc3339(text)
}

/// A time given as JSON: Unix seconds (a number), or RFC 3339 text.
pub fn from_json(v: &serde_json::Value) -> Result<i64, String> {
    match v {
        serde_json::Value::String(s) => parse_text(s),
        serde_json::Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("{n} is not a time"))
            .and_then(seconds_to_ms),
        other => Err(format!("{other} is not a time (RFC 3339 text or Unix seconds)")),
    }
}

/// A time from an integer count of `unit`s since the epoch (a Parquet timestamp column).
pub fn from_units(value: i64, units_per_second: i64) -> Result<i64, String> {
    let ms = match units_per_second {
        1 => value.checked_mul(1000),
        1000 => Some(value),
        u => Some(value.div_euclid(u / 1000)),
    };
    ms.ok_or_else(|| format!("{value} is out of range")).and_then(check_ms)
}

/// `ms` as RFC 3339 with milliseconds, when it is a time rows may carry.
pub fn rfc3339(ms: i64) -> Option<String> {
    let ms = check_ms(ms).ok()?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    Some(humantime::format_rfc3339_millis(t).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_form_and_out_of_range_refused() {
        assert_eq!(parse_text("2026-11-17T00:00:00Z"), Ok(1_794_873_600_000));
        assert_eq!(parse_text("2026-11-17T02:00:00+02:00"), Ok(1_794_873_600_000));
        assert_eq!(parse_text("2026-11-16T19:00:00-0500"), Ok(1_794_873_600_000));
        assert_eq!(parse_text("2026-11-17 00:00:00.250"), Ok(1_794_873_600_250));
        assert_eq!(parse_text("1794873600.5"), Ok(1_794_873_600_500));
        assert_eq!(parse_text("9999-12-31T23:59:59.999Z"), Ok(MAX_MS));
        for bad in [
            "253402300800",
            "1e30",
            "9223372036854775807",
            "-1",
            "NaN",
            "inf",
            "yesterday",
            "2026-11-17T00:00:00+25:00",
        ] {
            assert!(parse_text(bad).is_err(), "{bad}");
        }
        assert_eq!(
            from_units(1_794_873_600_000_000_000, 1_000_000_000),
            Ok(1_794_873_600_000)
        );
        assert_eq!(from_units(1_794_873_600_000_000, 1_000_000), Ok(1_794_873_600_000));
        assert_eq!(from_units(1_794_873_600, 1), Ok(1_794_873_600_000));
        assert!(from_units(i64::MAX, 1).is_err());
        assert_eq!(rfc3339(i64::MAX), None);
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
    }
}
