//! What the fleet file says of a machine, in the store's terms: its power type and parameters,
//! tags, image, and the record to create when the store does not have it yet.

use crate::config::{MachineSpec, PowerSpec};
use crate::model::records::NewMachine;
use crate::model::{MacAddr, Status};
use serde_json::Value;

/// The power type and parameters the store should hold for `power`. Secrets stay references.
pub fn desired_power(power: &PowerSpec) -> (String, Value) {
    let mut value = serde_json::to_value(power).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("type");
    }
    // Normalized in place: the value is ours, and copying it was half of this function's time.
    remove_nulls(&mut value);
    if !value.is_object() {
        value = Value::Object(Default::default());
    }
    (power.type_name().to_string(), value)
}

/// What `strip_nulls` returns, made in place.
fn remove_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, member| !member.is_null());
            map.values_mut().for_each(remove_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(remove_nulls),
        _ => {}
    }
}

/// Parameters without null members (an unset option and an absent one mean the same), as an
/// object (`{}` for anything that is not one).
pub fn normalized_params(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, member)| !member.is_null())
                .map(|(key, member)| (key.clone(), strip_nulls(member)))
                .collect(),
        ),
        _ => Value::Object(Default::default()),
    }
}

/// `normal == normalized_params(raw)`, without building the normalized copy (planning compares
/// every machine's parameters; copying them was a good part of its time).
pub fn params_equal_normalized(normal: &Value, raw: &Value) -> bool {
    match (normal, raw) {
        (Value::Object(normal), Value::Object(raw)) => members_equal_normalized(normal, raw),
        (Value::Object(normal), _) => normal.is_empty(),
        _ => false,
    }
}

/// `normal` equals `raw` without its null members, recursively.
fn members_equal_normalized(
    normal: &serde_json::Map<String, Value>,
    raw: &serde_json::Map<String, Value>,
) -> bool {
    let present = raw.values().filter(|member| !member.is_null()).count();
    present == normal.len()
        && raw
            .iter()
            .filter(|(_, member)| !member.is_null())
            .all(|(key, member)| {
                normal
                    .get(key)
                    .is_some_and(|wanted| equal_stripped(wanted, member))
            })
}

/// `normal == strip_nulls(raw)`.
fn equal_stripped(normal: &Value, raw: &Value) -> bool {
    match (normal, raw) {
        (Value::Object(normal), Value::Object(raw)) => members_equal_normalized(normal, raw),
        (_, Value::Object(_)) => false,
        (Value::Array(normal), Value::Array(raw)) => {
            normal.len() == raw.len()
                && normal
                    .iter()
                    .zip(raw)
                    .all(|(wanted, item)| equal_stripped(wanted, item))
        }
        (_, Value::Array(_)) => false,
        (normal, raw) => normal == raw,
    }
}

fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(_) => normalized_params(value),
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// JSON text with object keys sorted, whatever map type serde_json was built with, so that
/// renderings are byte-identical run after run.
pub fn canonical_json(value: &Value) -> String {
    let mut text = String::new();
    write_canonical(value, &mut text);
    text
}

fn write_canonical(value: &Value, text: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            text.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    text.push_str(", ");
                }
                text.push_str(&Value::String(key.clone()).to_string());
                text.push_str(": ");
                write_canonical(&map[key], text);
            }
            text.push('}');
        }
        Value::Array(items) => {
            text.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    text.push_str(", ");
                }
                write_canonical(item, text);
            }
            text.push(']');
        }
        other => text.push_str(&other.to_string()),
    }
}

/// The machine's MACs, the one it netboots from (`pxe_mac`, else the first) first: the store
/// records the first as the machine's boot MAC.
fn netboot_first(spec: &MachineSpec) -> Vec<MacAddr> {
    let mut macs = spec.macs.clone();
    if let Some(at) = spec
        .pxe_mac
        .and_then(|pxe| macs.iter().position(|mac| *mac == pxe))
    {
        macs[..=at].rotate_right(1);
    }
    macs
}

/// The record to create for a declared machine the store does not have.
pub fn new_machine(spec: &MachineSpec) -> NewMachine {
    let (power_type, power_params) = desired_power(&spec.power);
    let live = spec.live;
    NewMachine {
        name: spec.name.clone(),
        status: if live { Status::Deployed } else { Status::New },
        macs: netboot_first(spec),
        arch: Some(spec.arch.as_str().to_string()),
        power_type,
        power_params,
        bmc_address: spec.power.bmc_address().map(str::to_string),
        image: spec.image.clone(),
        tags: spec.tags.clone(),
        deployed_os: live.then(|| spec.image.clone().unwrap_or_else(|| "unknown".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::{normalized_params, params_equal_normalized};
    use serde_json::json;

    /// Normalizing in place gives what the copy gave.
    #[test]
    fn removing_nulls_in_place_is_normalizing() {
        let mut value = json!({"a": null, "b": [null, {"c": null, "d": 1}], "e": {"f": null}});
        super::remove_nulls(&mut value);
        assert_eq!(
            value,
            normalized_params(
                &json!({"a": null, "b": [null, {"c": null, "d": 1}], "e": {"f": null}})
            )
        );
    }

    /// The comparison without a copy agrees with comparing the normalized copy.
    #[test]
    fn comparing_in_place_agrees_with_normalizing() {
        let values = [
            json!({}),
            json!(null),
            json!("text"),
            json!({"a": 1}),
            json!({"a": 1, "b": null}),
            json!({"a": {"env": "X", "file": null}}),
            json!({"a": {"env": "X"}}),
            json!({"a": [1, {"b": null, "c": 2}]}),
            json!({"a": [1, {"c": 2}]}),
            json!({"a": [1, {"c": 2}, null]}),
            json!({"a": null}),
            json!({"a": 2}),
        ];
        for normal in &values {
            let normal = normalized_params(normal);
            for raw in &values {
                assert_eq!(
                    params_equal_normalized(&normal, raw),
                    normal == normalized_params(raw),
                    "{normal} against {raw}"
                );
            }
        }
    }
}
