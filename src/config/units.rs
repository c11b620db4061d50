//! Durations (`30s`, `5m`, `24h`) and sizes (`64KiB`) as `proxy.yaml` writes them.

use std::time::Duration;

/// A duration or size that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{0}` has no unit (write e.g. 30s, 5m, 24h)")]
    NoUnit(String),
    #[error("`{0}` is not a duration (write e.g. 30s, 5m, 24h)")]
    NotADuration(String),
    #[error("`{0}` is not a size (write e.g. 64KiB, 1MiB)")]
    NotASize(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{text}`: unknown unit `{unit}` (use {allowed})")]
    UnknownUnit {
        text: String,
        unit: String,
        allowed: &'static str,
    },
}

/// Parses `500ms`, `30s`, `5m`, `24h`, `7d`. A bare number is refused: the unit is part of the value.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| UnitError::NoUnit(text.into()))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(UnitError::NotADuration(text.into()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::TooLarge(text.into()))?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(UnitError::UnknownUnit {
                text: text.into(),
                unit: unit.into(),
                allowed: "ms, s, m, h or d",
            })
        }
    };
    n.checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| UnitError::TooLarge(text.into()))
}

/// `d` as `parse_duration` reads it back, in the largest unit that holds it whole (`90s`,
/// `5m`, `250ms`); below a millisecond is dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// Parses `512`, `64KiB`, `1MiB`, `16kB`. Binary units are powers of 1024, decimal ones of 1000.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(UnitError::NotASize(text.into()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::TooLarge(text.into()))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(UnitError::UnknownUnit {
                text: text.into(),
                unit: other.into(),
                allowed: "B, KiB, MiB, GiB, kB, MB or GB",
            })
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| UnitError::TooLarge(text.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_duration_reads_back_as_itself() {
        for (ms, text) in [
            (0, "0ms"),
            (250, "250ms"),
            (1_500, "1500ms"),
            (5_000, "5s"),
            (90_000, "90s"),
            (300_000, "5m"),
            (7_200_000, "2h"),
            (86_400_000, "1d"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("16kB"), Ok(16_000));
        assert!(parse_size("64 potatoes").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
