//! Durations in fleet files: a whole number of minutes (`30`), or a string with units
//! (`"90s"`, `"5m"`, `"1h30m"`), so that tests and labs can shorten a limit below a minute.
//! humantime reads the strings; this module keeps fleet's rules on top (whole numbers, whole
//! seconds, no `M` for months) and says in fleet's words what is wrong.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;
use std::borrow::Cow;

/// Why a duration string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration: {why} (write e.g. \"90s\", \"5m\", \"1h30m\", or a whole number of minutes)")]
pub struct DurationError {
    pub text: String,
    pub why: &'static str,
}

/// Seconds in `text`: one or more `<number><unit>` parts (humantime's units, `s`, `m`, `h`, `d`,
/// `w` and their long forms such as `min` or `hours`), in whole numbers and whole seconds.
pub fn parse_duration_seconds(text: &str) -> Result<u64, DurationError> {
    let error = |why| DurationError {
        text: text.to_string(),
        why,
    };
    // humantime reads "1.5m" and "5M" (months); a fleet file's numbers are whole, as its
    // integer minutes are, and a capital M is far more likely a slip for minutes.
    if text.contains('.') {
        return Err(error("the numbers are whole numbers"));
    }
    if text.contains('M') {
        return Err(error("minutes are a small `m`"));
    }
    let duration = humantime::parse_duration(text).map_err(|problem| {
        error(match problem {
            humantime::DurationError::Empty => "it is empty",
            humantime::DurationError::NumberExpected(_) => "each unit needs a number before it",
            humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
                "the last number has no unit"
            }
            humantime::DurationError::UnknownUnit { .. } => "the units are s, m, h, d and w",
            humantime::DurationError::InvalidCharacter(_) => {
                "it holds only numbers, units and spaces"
            }
            humantime::DurationError::NumberOverflow => "it is too long",
        })
    })?;
    if duration.subsec_nanos() != 0 {
        return Err(error("it is not a whole number of seconds"));
    }
    Ok(duration.as_secs())
}

/// How a duration that is kept in seconds is written, for the schema of such fields
/// (`#[schemars(with = "WrittenDuration")]`): whole minutes, or a string with units.
pub struct WrittenDuration;

impl JsonSchema for WrittenDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Whole minutes, or a duration such as \"90s\", \"5m\", \"1h30m\" (units s, m, h, d, w, in whole numbers); at least 1 second.",
            "anyOf": [
                { "type": "integer", "minimum": 1 },
                { "type": "string", "pattern": r"^\s*([0-9]+\s*[a-z]+\s*)+$" }
            ]
        })
    }
}

/// For `#[schemars(transform = ...)]` on a type that keeps durations in seconds: their schema
/// defaults (from the type's `Default`, in seconds) written as the file gives them, whole
/// minutes when they are, else `"Ns"`.
pub fn defaults_as_written(schema: &mut Schema) {
    let properties = schema.get_mut("properties").and_then(Value::as_object_mut);
    for property in properties.into_iter().flat_map(|map| map.values_mut()) {
        let is_duration = property["$ref"]
            .as_str()
            .is_some_and(|reference| reference.ends_with("/Duration"));
        let Some(seconds) = property["default"].as_u64().filter(|_| is_duration) else {
            continue;
        };
        property["default"] = match seconds % 60 {
            0 => Value::from(seconds / 60),
            _ => Value::from(format!("{seconds}s")),
        };
    }
}

/// Kept here too, where the durations are read.
pub use crate::model::describe_seconds;

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
            ("1h 30m", 5400),
            ("2 minutes", 120),
            ("1d", 86400),
            ("2000ms", 2),
        ] {
            assert_eq!(parse_duration_seconds(text), Ok(seconds), "{text}");
        }
        for (text, why) in [
            ("", "it is empty"),
            ("5", "the last number has no unit"),
            ("m", "each unit needs a number before it"),
            ("5x", "the units are s, m, h, d and w"),
            ("5m!", "it holds only numbers, units and spaces"),
            ("1.5m", "the numbers are whole numbers"),
            ("5M", "minutes are a small `m`"),
            ("1500ms", "it is not a whole number of seconds"),
            ("99999999999999999999h", "it is too long"),
        ] {
            assert_eq!(
                parse_duration_seconds(text).map_err(|error| error.why),
                Err(why),
                "{text}"
            );
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
