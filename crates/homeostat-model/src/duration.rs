//! Durations in configuration files: `"30s"`, `"1h 30m"`, `"7d"` (jiff's
//! friendly format) or ISO 8601 (`"PT30S"`). Use with
//! `#[serde(with = "homeostat_model::duration")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// Writes `d` in the friendly format (`"1m 30s"`).
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    let signed = jiff::SignedDuration::try_from(*d).map_err(serde::ser::Error::custom)?;
    s.collect_str(&format_args!("{signed:#}"))
}

/// Reads a non-negative duration in the friendly or the ISO 8601 format.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(D::Error::custom)
}

/// Parses a non-negative duration, naming what is wrong.
pub fn parse(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration (like \"30s\" or \"1h 30m\"): {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Wait(#[serde(with = "super")] Duration);

    #[test]
    fn durations_read_friendly_or_iso_and_write_friendly() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("PT2M"), Ok(Duration::from_secs(120)));
        let json = serde_json::to_string(&Wait(Duration::from_secs(90))).unwrap();
        assert_eq!(json, "\"1m 30s\"");
        assert_eq!(
            serde_json::from_str::<Wait>(&json).unwrap().0,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(
            parse("soon")
                .unwrap_err()
                .contains("\"soon\" is not a duration")
        );
        assert!(parse("-5s").unwrap_err().contains("negative"));
    }
}
