//! Durations and byte sizes: how they are written in both files and
//! written back by the TOML writer.

use std::time::Duration;

/// Parses a duration: a number of seconds (`20`, `1.5`) or a number with a
/// unit `ms`, `s`, `m` or `h` (`500ms`, `2m`). Whole milliseconds only, so
/// that every value prints back exactly.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (t, 1000.0)
    };
    let num = num.trim();
    let valid = !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && num.bytes().filter(|&b| b == b'.').count() <= 1;
    let value: f64 = match num.parse() {
        Ok(v) if valid => v,
        _ => {
            return Err(format!(
                "{s:?} is not a duration (seconds, or a number with ms, s, m or h)"
            ));
        }
    };
    duration_from_ms(value * scale_ms, s)
}

pub(crate) fn duration_from_secs_f64(secs: f64, shown: &str) -> Result<Duration, String> {
    duration_from_ms(secs * 1000.0, shown)
}

fn duration_from_ms(ms: f64, shown: &str) -> Result<Duration, String> {
    // A day is far beyond any sensible DNS or SPF time limit; capping keeps
    // the arithmetic exact.
    const MAX_MS: f64 = 86_400_000.0;
    if !ms.is_finite() || ms < 0.0 {
        return Err(format!("{shown:?} is not a duration"));
    }
    if ms > MAX_MS {
        return Err(format!("{shown:?} is longer than a day"));
    }
    let rounded = ms.round();
    if (ms - rounded).abs() > 1e-6 {
        return Err(format!(
            "{shown:?}: durations are counted in whole milliseconds"
        ));
    }
    Ok(Duration::from_millis(rounded as u64))
}

/// A duration as it is written back: whole seconds as an integer, anything
/// else as a `"…ms"` string.
pub(crate) fn duration_to_toml(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        d.as_secs().to_string()
    } else {
        format!("\"{}ms\"", d.as_millis())
    }
}

/// A byte size as the TOML file would say it: with the largest binary
/// unit that divides it ("32M"), else in bytes.
pub(crate) fn size_to_toml(bytes: usize) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("\"{}{unit}\"", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `digits [spaces] [unit]`, the unit one of K, M, G, KiB, MiB, GiB
/// (any case) or B; `None` if malformed or too large.
pub(crate) fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(end);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "-1", "abc", "1.0001", "1e3", "2d", "25h", ".", "1..2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(duration_to_toml(Duration::from_secs(20)), "20");
        assert_eq!(duration_to_toml(Duration::from_millis(1500)), "\"1500ms\"");
    }

    #[test]
    fn byte_sizes_take_binary_units() {
        for (text, bytes) in [
            ("0", Some(0)),
            ("1048576", Some(1 << 20)),
            ("512K", Some(512 << 10)),
            ("512 KiB", Some(512 << 10)),
            ("32M", Some(32 << 20)),
            ("32mib", Some(32 << 20)),
            (" 1G ", Some(1 << 30)),
            ("100B", Some(100)),
            ("", None),
            ("M", None),
            ("1.5M", None),
            ("-1M", None),
            ("32 MB", None),
            ("99999999999999999999", None),
            ("17179869184G", None),
        ] {
            assert_eq!(parse_byte_size(text), bytes, "{text:?}");
        }
    }
}
