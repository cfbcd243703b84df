//! Durations in fleet files: a whole number of minutes (`30`), or a string with units
//! (`"90s"`, `"5m"`, `"1h30m"`), so that tests and labs can shorten a limit below a minute.

/// Why a duration string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration: {why} (write e.g. \"90s\", \"5m\", \"1h30m\", or a whole number of minutes)")]
pub struct DurationError {
    pub text: String,
    pub why: &'static str,
}

/// Seconds in `text`: one or more `<number><unit>` parts, units `s`, `m`, `h`.
pub fn parse_duration_seconds(text: &str) -> Result<u64, DurationError> {
    let error = |why| DurationError {
        text: text.to_string(),
        why,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(error("it is empty"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for character in trimmed.chars() {
        if character.is_ascii_digit() {
            digits.push(character);
            continue;
        }
        let unit = match character {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(error("the units are s, m and h")),
        };
        let number: u64 = digits
            .parse()
            .map_err(|_| error("each unit needs a number before it"))?;
        digits.clear();
        total = number
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| error("it is too long"))?;
    }
    if !digits.is_empty() {
        return Err(error("the last number has no unit"));
    }
    Ok(total)
}

/// "90 seconds", "1 minute", "5 minutes", "1h 30m" → as a person says it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        for (text, seconds) in [
            ("90s", 90),
            ("5m", 300),
            ("1h30m", 5400),
            ("2h", 7200),
            (" 7s ", 7),
        ] {
            assert_eq!(parse_duration_seconds(text), Ok(seconds), "{text}");
        }
        for text in ["", "5", "m", "5x", "1.5m", "99999999999999999999h"] {
            assert!(parse_duration_seconds(text).is_err(), "{text}");
        }
    }

    #[test]
    fn descriptions_read_as_a_person_says_them() {
        assert_eq!(describe_seconds(20), "20 seconds");
        assert_eq!(describe_seconds(60), "1 minute");
        assert_eq!(describe_seconds(1800), "30 minutes");
        assert_eq!(describe_seconds(90), "90 seconds");
    }
}
