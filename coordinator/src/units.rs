//! Durations and byte sizes as operators write them in config.

use std::time::Duration;

/// The longest duration config may hold (about ten years): more is surely a typo, and
/// adding it to a clock would overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86400);

/// Parse `30s`, `30m`, `2h`, `1d`, `1h30m`, `500ms`, or `HH:MM:SS`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "bad duration {text:?} (use e.g. \"90s\", \"30m\", \"2h\", \"1h30m\" or \"HH:MM:SS\")"
        )
    };
    let too_long = || format!("duration {text:?} is too long (at most 10 years)");
    let total = if t.contains(':') {
        let parts: Vec<&str> = t.split(':').collect();
        if parts.len() != 3 {
            return Err(bad());
        }
        let mut secs = 0u64;
        for (i, p) in parts.iter().enumerate() {
            let v: u64 = p.parse().map_err(|_| bad())?;
            if i > 0 && v >= 60 {
                return Err(bad());
            }
            secs = secs
                .checked_mul(60)
                .and_then(|s| s.checked_add(v))
                .ok_or_else(too_long)?;
        }
        Duration::from_secs(secs)
    } else {
        if t.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| too_long())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Some(Duration::from_millis(value)),
                "s" | "sec" => Some(Duration::from_secs(value)),
                "m" | "min" => value.checked_mul(60).map(Duration::from_secs),
                "h" => value.checked_mul(3600).map(Duration::from_secs),
                "d" => value.checked_mul(86400).map(Duration::from_secs),
                _ => return Err(bad()),
            };
            total = part
                .and_then(|p| total.checked_add(p))
                .ok_or_else(too_long)?;
        }
        total
    };
    if total > MAX_DURATION {
        return Err(too_long());
    }
    Ok(total)
}

/// Parse `8GB`, `512MB`, `64kB`, `1TB` or a plain byte count. Units are 1024-based,
/// as in postgresql.conf.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("bad size {text:?} (use e.g. \"512MB\", \"8GB\")");
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(bad());
    }
    let value: u64 = t[..digits].parse().map_err(|_| bad())?;
    let mult: u64 = match t[digits..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(bad()),
    };
    value.checked_mul(mult).ok_or_else(bad)
}

/// `1.5 GB`-style rendering for humans.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("00:30:00").unwrap(),
            Duration::from_secs(1800)
        );
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "2x", "h", "1:2", "00:61:00", "-5s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Huge values are errors, not panics or silent wrap-arounds.
        for huge in [
            "18446744073709551615s1s",
            "5124095576030432h",
            "99999999999999999:00:00",
            "4000d",
            "99999999999999999999999s",
        ] {
            assert!(
                parse_duration(huge).unwrap_err().contains("too long"),
                "{huge}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("8GB").unwrap(), 8 << 30);
        assert_eq!(parse_bytes("64kB").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("8 parsecs").is_err());
        assert!(parse_bytes("GB").is_err());
        assert_eq!(human_bytes(1536), "1.5 kB");
    }
}
