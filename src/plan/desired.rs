//! What the fleet file says of a machine, in the store's terms: its power type and parameters,
//! tags, image, and the record to create when the store does not have it yet.

use crate::config::{MachineSpec, PowerSpec};
use crate::model::Status;
use crate::store::NewMachine;
use serde_json::Value;

/// The power type and parameters the store should hold for `power`. Secrets stay references.
pub fn desired_power(power: &PowerSpec) -> (String, Value) {
    let mut value = serde_json::to_value(power).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("type");
    }
    (power.type_name().to_string(), normalized_params(&value))
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

/// The record to create for a declared machine the store does not have.
pub fn new_machine(spec: &MachineSpec) -> NewMachine {
    let (power_type, power_params) = desired_power(&spec.power);
    let live = spec.live;
    NewMachine {
        name: spec.name.clone(),
        status: if live { Status::Deployed } else { Status::New },
        macs: spec.macs.clone(),
        arch: Some(spec.arch.as_str().to_string()),
        power_type,
        power_params,
        bmc_address: spec.power.bmc_address().map(str::to_string),
        image: spec.image.clone(),
        tags: spec.tags.clone(),
        deployed_os: live.then(|| spec.image.clone().unwrap_or_else(|| "unknown".into())),
    }
}
