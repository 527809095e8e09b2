//! RFC 3339 times as the heartbeat and sync canaries carry them.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::ModelError;

/// Formats a time as Go's `time.RFC3339` does for UTC: `2026-11-22T12:00:00Z`.
pub fn format_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses an RFC 3339 time (any offset, optional fractional seconds).
pub fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, ModelError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| ModelError::Setting {
            what: "RFC 3339 time",
            reason: format!("{s:?}: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_offsets() {
        let t = parse_rfc3339("2026-11-22T13:00:00+01:00").unwrap();
        assert_eq!(format_rfc3339(t), "2026-11-22T12:00:00Z");
        assert!(parse_rfc3339("2026-11-22T12:00:00.123456789Z").is_ok());
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
