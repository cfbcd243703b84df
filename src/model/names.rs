//! Names and addresses that carry their own rules: a machine name, a MAC address.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A machine name: a DNS label (1–63 of `a-z 0-9 -`, not starting or ending with `-`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    #[error("machine name is empty")]
    Empty,
    #[error("machine name `{0}` is longer than 63 characters")]
    TooLong(String),
    #[error("machine name `{0}` may hold only lowercase letters, digits and `-` (a DNS label)")]
    BadCharacter(String),
    #[error("machine name `{0}` may not start or end with `-`")]
    BadHyphen(String),
}

impl MachineName {
    pub fn parse(text: &str) -> Result<Self, BadName> {
        if text.is_empty() {
            return Err(BadName::Empty);
        }
        if text.len() > 63 {
            return Err(BadName::TooLong(text.to_string()));
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if !text.chars().all(allowed) {
            return Err(BadName::BadCharacter(text.to_string()));
        }
        if text.starts_with('-') || text.ends_with('-') {
            return Err(BadName::BadHyphen(text.to_string()));
        }
        Ok(MachineName(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MachineName {
    type Err = BadName;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        MachineName::parse(text)
    }
}

impl Serialize for MachineName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MachineName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        MachineName::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Written as a string; the pattern is [`MachineName::parse`]'s rule.
impl JsonSchema for MachineName {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "MachineName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A DNS label: 1 to 63 lowercase letters, digits and `-`, not starting or ending with `-`.",
            "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
        })
    }
}

/// A 48-bit MAC address, shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (expected six hex pairs such as 52:54:00:12:34:56)")]
pub struct BadMac(pub String);

impl MacAddr {
    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` and `aabb.ccdd.eeff`, any case.
    pub fn parse(text: &str) -> Result<Self, BadMac> {
        // The usual form, read without allocating (fleet files and snapshots hold one or two
        // per machine); anything else takes the general path, which accepts the same.
        if let Some(mac) = Self::parse_colons(text.as_bytes()) {
            return Ok(mac);
        }
        let bad = || BadMac(text.to_string());
        let hex: String = if text.contains(':') || text.contains('-') {
            let parts: Vec<&str> = text.split([':', '-']).collect();
            if parts.len() != 6 || parts.iter().any(|part| part.len() != 2) {
                return Err(bad());
            }
            parts.concat()
        } else if text.contains('.') {
            let parts: Vec<&str> = text.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|part| part.len() != 4) {
                return Err(bad());
            }
            parts.concat()
        } else {
            return Err(bad());
        };
        let mut bytes = [0u8; 6];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(bytes))
    }

    /// `aa:bb:cc:dd:ee:ff` (or with `-`), hex digits only.
    fn parse_colons(text: &[u8]) -> Option<Self> {
        if text.len() != 17 {
            return None;
        }
        let digit = |byte: u8| (byte as char).to_digit(16).map(|value| value as u8);
        let mut bytes = [0u8; 6];
        for (index, byte) in bytes.iter_mut().enumerate() {
            let at = index * 3;
            if index > 0 && !matches!(text[at - 1], b':' | b'-') {
                return None;
            }
            *byte = digit(text[at])? << 4 | digit(text[at + 1])?;
        }
        Some(MacAddr(bytes))
    }

    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What `{:02x}` separated by `:` gives, without the formatting machinery.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [b':'; 17];
        for (index, byte) in self.0.iter().enumerate() {
            text[index * 3] = HEX[usize::from(byte >> 4)];
            text[index * 3 + 1] = HEX[usize::from(byte & 0xf)];
        }
        // `write_str`, not `pad`: as before, a width given to a MAC is not applied.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for MacAddr {
    type Err = BadMac;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        MacAddr::parse(text)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        MacAddr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Written as a string in any of the forms [`MacAddr::parse`] accepts.
impl JsonSchema for MacAddr {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "MacAddr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A MAC address: 52:54:00:12:34:56, 52-54-00-12-34-56 or 5254.0012.3456, any case.",
            "pattern": "^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{4}\\.[0-9A-Fa-f]{4}\\.[0-9A-Fa-f]{4}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms_are_accepted_and_normalised() {
        for text in ["52:54:00:AB:cd:01", "52-54-00-ab-cd-01", "5254.00ab.cd01"] {
            assert_eq!(
                MacAddr::parse(text).unwrap().to_string(),
                "52:54:00:ab:cd:01"
            );
        }
    }

    /// The allocation-free reading and writing agree with the general ones.
    #[test]
    fn the_fast_mac_paths_agree_with_the_general_ones() {
        let general = |text: &str| -> Option<[u8; 6]> {
            let parts: Vec<&str> = text.split([':', '-']).collect();
            if parts.len() != 6 || parts.iter().any(|part| part.len() != 2) {
                return None;
            }
            let mut bytes = [0u8; 6];
            for (byte, part) in bytes.iter_mut().zip(&parts) {
                *byte = u8::from_str_radix(part, 16).ok()?;
            }
            Some(bytes)
        };
        let pieces = [
            "52", "54", "0a", "FF", "fF", "g1", "+f", "-1", "1", "123", ":", "-", "::",
        ];
        let mut seed = 7u64;
        for _ in 0..20_000 {
            let mut text = String::new();
            let count = (seed % 9) as usize + 3;
            for _ in 0..count {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let parsed = MacAddr::parse(&text).ok().map(|mac| mac.0);
            if text.contains(':') || text.contains('-') {
                assert_eq!(parsed, general(&text), "{text}");
            }
            if let Some(fast) = MacAddr::parse_colons(text.as_bytes()) {
                assert_eq!(Some(fast.0), general(&text), "{text}");
            }
        }
        for bytes in [[0u8; 6], [0x52, 0x54, 0, 0xab, 0xcd, 0xef], [255; 6]] {
            let [a, b, c, d, e, g] = bytes;
            assert_eq!(
                MacAddr(bytes).to_string(),
                format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
            );
            assert_eq!(format!("{:>19}|", MacAddr(bytes)).len(), 18);
        }
    }

    #[test]
    fn bad_macs_are_refused() {
        for text in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "525400abcd01",
            "5:54:00:ab:cd:011",
        ] {
            assert!(MacAddr::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn machine_names_are_dns_labels() {
        assert!(MachineName::parse("node-01").is_ok());
        for text in ["", "Node", "node_1", "-node", "node-", &"a".repeat(64)] {
            assert!(MachineName::parse(text).is_err(), "{text}");
        }
    }
}
