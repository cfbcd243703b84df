//! Sizes as operators write them: `512MiB`, `3GiB`, `1.5TB`, `20%`, or a plain number of bytes.
//!
//! Binary units (KiB, MiB, GiB, TiB, PiB) are powers of 1024; decimal ones (KB or K, MB or M, ...)
//! are powers of 1000, as disk vendors and MAAS count. Units are case-insensitive except that
//! `b` alone means bytes.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a size (write bytes as a number, or a number with a unit such as 512MiB, 3GiB, 1TB)")]
    Malformed(String),
    #[error("`{0}` has an unknown unit (use B, KiB, MiB, GiB, TiB, PiB or KB, MB, GB, TB, PB)")]
    UnknownUnit(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{0}` is not a percentage between 1% and 100%")]
    BadPercent(String),
    #[error("a percentage is not allowed here: give an absolute size such as 8GiB")]
    PercentNotAllowed,
}

/// A size that may be relative to the disk it lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    Bytes(u64),
    Percent(u8),
}

impl SizeSpec {
    pub fn parse(text: &str) -> Result<Self, SizeError> {
        match text.trim().strip_suffix('%') {
            Some(number) => parse_percent(number, text).map(SizeSpec::Percent),
            None => parse_bytes(text).map(SizeSpec::Bytes),
        }
    }

    /// Absolute size in bytes of a disk of `disk_bytes`.
    pub fn bytes_of(self, disk_bytes: u64) -> u64 {
        match self {
            SizeSpec::Bytes(bytes) => bytes,
            SizeSpec::Percent(percent) => (disk_bytes as u128 * percent as u128 / 100) as u64,
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Bytes(bytes) => write!(f, "{}", human_bytes(*bytes)),
            SizeSpec::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// Serialized as a number of bytes, or as `"20%"`.
impl Serialize for SizeSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SizeSpec::Bytes(bytes) => serializer.serialize_u64(*bytes),
            SizeSpec::Percent(_) => serializer.collect_str(self),
        }
    }
}

/// The number, then an optional unit (the units [`parse_bytes`] knows), spaces allowed around.
const BYTES_PATTERN: &str = r"^\s*[0-9][0-9_]*(\.[0-9]+)?\s*([KkMmGgTtPp]([Ii]?[Bb])?|[Bb])?\s*$";
const PERCENT_PATTERN: &str = r"^\s*[0-9]{1,3}\s*%\s*$";

/// Written as a string with a unit or a percentage (`"512MiB"`, `"20%"`), or a number of bytes.
impl JsonSchema for SizeSpec {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: \"512MiB\", \"3GiB\", \"1.5TB\" (KiB, MiB... are powers of 1024; KB, MB... of 1000), a percentage of the disk from \"1%\" to \"100%\", or a number of bytes.",
            "anyOf": [
                { "type": "string", "pattern": BYTES_PATTERN },
                { "type": "string", "pattern": PERCENT_PATTERN },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

/// How a size that is kept in bytes (no percentage) is written, for the schema of such fields
/// (`#[schemars(with = "Option<AbsoluteSize>")]`): `"512MiB"` or a number of bytes.
pub struct AbsoluteSize;

impl JsonSchema for AbsoluteSize {
    fn schema_name() -> Cow<'static, str> {
        "AbsoluteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: \"512MiB\", \"3GiB\", \"1.5TB\" (KiB, MiB... are powers of 1024; KB, MB... of 1000), or a number of bytes.",
            "anyOf": [
                { "type": "string", "pattern": BYTES_PATTERN },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

fn parse_percent(number: &str, text: &str) -> Result<u8, SizeError> {
    match number.trim().parse::<u8>() {
        Ok(percent) if (1..=100).contains(&percent) => Ok(percent),
        _ => Err(SizeError::BadPercent(text.to_string())),
    }
}

/// An absolute size in bytes.
pub fn parse_bytes(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.ends_with('%') {
        return Err(SizeError::PercentNotAllowed);
    }
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number = number.replace('_', "");
    let multiplier =
        unit_multiplier(unit.trim()).ok_or_else(|| SizeError::UnknownUnit(text.to_string()))?;
    if number.is_empty() {
        return Err(SizeError::Malformed(text.to_string()));
    }
    scale(&number, multiplier).ok_or_else(|| {
        if number.parse::<f64>().is_ok() {
            SizeError::TooLarge(text.to_string())
        } else {
            SizeError::Malformed(text.to_string())
        }
    })
}

/// Exact for whole numbers; fractions (`1.5GiB`) are rounded down to a byte.
fn scale(number: &str, multiplier: u64) -> Option<u64> {
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier);
    }
    let (whole, fraction) = number.split_once('.')?;
    if whole.is_empty() || fraction.is_empty() || fraction.len() > 9 {
        return None;
    }
    let whole_bytes = whole.parse::<u64>().ok()?.checked_mul(multiplier)?;
    let fraction_value: u64 = fraction.parse().ok()?;
    let fraction_bytes =
        (fraction_value as u128 * multiplier as u128 / 10u128.pow(fraction.len() as u32)) as u64;
    whole_bytes.checked_add(fraction_bytes)
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let lower = unit.to_ascii_lowercase();
    let multiplier = match lower.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "p" | "pb" => 1000u64.pow(5),
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        "tib" => GIB * KIB,
        "pib" => GIB * MIB,
        _ => return None,
    };
    Some(multiplier)
}

/// `3221225472` → `3GiB`, `1000000000` → `1GB`: the largest unit that divides exactly, binary
/// units first; other values stay in bytes.
pub fn human_bytes(bytes: u64) -> String {
    const BINARY: [(&str, u64); 5] = [
        ("PiB", GIB * MIB),
        ("TiB", GIB * KIB),
        ("GiB", GIB),
        ("MiB", MIB),
        ("KiB", KIB),
    ];
    const DECIMAL: [(&str, u64); 5] = [
        ("PB", 1_000_000_000_000_000),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1000),
    ];
    for (unit, size) in BINARY.into_iter().chain(DECIMAL) {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_bytes("3GiB"), Ok(3 * GIB));
        assert_eq!(parse_bytes("3 gib"), Ok(3 * GIB));
        assert_eq!(parse_bytes("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 * GIB / 2));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(SizeSpec::parse("20%"), Ok(SizeSpec::Percent(20)));
    }

    #[test]
    fn bad_sizes() {
        for text in [
            "",
            "GiB",
            "12 parsecs",
            "1.2.3GiB",
            "-1GiB",
            "0%",
            "101%",
            "99999999999PiB",
            ".5GiB",
        ] {
            assert!(SizeSpec::parse(text).is_err(), "{text}");
        }
        assert_eq!(parse_bytes("20%"), Err(SizeError::PercentNotAllowed));
    }

    proptest! {
        #[test]
        fn human_form_parses_back(bytes in 0u64..(1 << 50)) {
            prop_assert_eq!(parse_bytes(&human_bytes(bytes)), Ok(bytes));
        }

        #[test]
        fn whole_units_scale_exactly(count in 0u64..100_000, unit in prop::sample::select(vec![("KiB", KIB), ("MiB", MIB), ("GiB", GIB), ("MB", 1_000_000)])) {
            prop_assert_eq!(parse_bytes(&format!("{count}{}", unit.0)), Ok(count * unit.1));
        }

        #[test]
        fn never_panics(text in ".{0,20}") {
            let _ = SizeSpec::parse(&text);
        }
    }
}
