//! Names and addresses that carry their own rules: a machine name, a MAC address.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
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

/// A 48-bit MAC address, shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (expected six hex pairs such as 52:54:00:12:34:56)")]
pub struct BadMac(pub String);

impl MacAddr {
    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` and `aabb.ccdd.eeff`, any case.
    pub fn parse(text: &str) -> Result<Self, BadMac> {
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

    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
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
