//! How times and durations read for people: in failure reasons ("did not boot within 10
//! minutes"), in the API's JSON and in the CLI. Pure.

/// "90 seconds", "1 minute", "5 minutes": as a person says it.
pub fn describe_seconds(seconds: u64) -> String {
    let plural = |count: u64, word: &str| {
        if count == 1 {
            format!("1 {word}")
        } else {
            format!("{count} {word}s")
        }
    };
    if !seconds.is_multiple_of(60) {
        plural(seconds, "second")
    } else {
        plural(seconds / 60, "minute")
    }
}

/// Unix milliseconds as RFC 3339 (`2026-11-24T21:30:00.123Z`).
pub fn rfc3339(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(at) => at
            .format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap_or_else(|_| unix_ms.to_string()),
        Err(_) => unix_ms.to_string(),
    }
}
