//! Power parameters as the observed snapshot carries them: the JSON text itself.
//!
//! Why not `serde_json::Value`: a map of parameters is a tree of small allocations (a B-tree node
//! per object, a string per key). At 100,000 machines those were about a third of the snapshot's
//! memory and of the time to read it, while planning only needs to know whether they equal what
//! the fleet file says, which a comparison of the text answers for nearly every machine.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// A machine's stored power parameters (a JSON object; secrets only as references), kept as the
/// JSON text they came as. Serialized as that JSON value itself, so the snapshot's shape is the
/// one a `Value` gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PowerParams(Box<RawValue>);

impl PowerParams {
    /// The parameters of `value`, as compact JSON (object keys sorted, as `Value` keeps them).
    pub fn from_value(value: &Value) -> PowerParams {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => PowerParams(raw),
            // A `Value` always serializes; an empty object is the harmless answer regardless.
            Err(_) => PowerParams::default(),
        }
    }

    /// The parameters as a `Value` (`null` if the text is not JSON, which `RawValue` rules out).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// Whether these parameters, without their null members, are `normal` (normalized: no null
    /// members). Most machines' stored text is exactly `normal`'s compact JSON, so that is
    /// checked first; anything else is compared value by value.
    pub fn equal_normalized(&self, normal: &Value, normal_text: &str) -> bool {
        self.text() == normal_text
            || super::desired::params_equal_normalized(normal, &self.to_value())
    }
}

impl Default for PowerParams {
    fn default() -> Self {
        PowerParams(RawValue::from_string("{}".into()).expect("`{}` is JSON"))
    }
}

impl From<Value> for PowerParams {
    fn from(value: Value) -> Self {
        PowerParams::from_value(&value)
    }
}

/// Equal as JSON values (whatever the spacing or key order of the texts).
impl PartialEq for PowerParams {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text() || self.to_value() == other.to_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_in_and_out() {
        let value = json!({"user": "admin", "address": "10.0.0.1", "password": {"env": "P"}});
        let params = PowerParams::from_value(&value);
        assert_eq!(
            params.text(),
            r#"{"address":"10.0.0.1","password":{"env":"P"},"user":"admin"}"#
        );
        assert_eq!(params.to_value(), value);
        assert_eq!(serde_json::to_value(&params).unwrap(), value);
        let read: PowerParams = serde_json::from_str("{ \"user\" : \"admin\" }").unwrap();
        assert_eq!(read, PowerParams::from(json!({"user": "admin"})));
        assert_ne!(read, PowerParams::default());
        assert_eq!(PowerParams::default().to_value(), json!({}));
    }

    #[test]
    fn equal_normalized_agrees_with_comparing_values() {
        let normal = json!({"address": "10.0.0.1", "user": "admin"});
        let normal_text = serde_json::to_string(&normal).unwrap();
        for (stored, equal) in [
            (json!({"address": "10.0.0.1", "user": "admin"}), true),
            (
                json!({"user": "admin", "address": "10.0.0.1", "cipher": null}),
                true,
            ),
            (json!({"address": "10.0.0.2", "user": "admin"}), false),
            (json!({"address": "10.0.0.1"}), false),
            (json!(null), false),
        ] {
            let params = PowerParams::from_value(&stored);
            assert_eq!(
                params.equal_normalized(&normal, &normal_text),
                equal,
                "{stored}"
            );
        }
        let spaced: PowerParams =
            serde_json::from_str(r#"{ "user": "admin", "address": "10.0.0.1" }"#).unwrap();
        assert!(spaced.equal_normalized(&normal, &normal_text));
    }
}
