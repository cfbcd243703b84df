//! Fleet TOML for what the store observes: per discovered machine in a plan, and for a whole
//! store (`fleet adopt`), written so that planning it against the same store gives no steps.

use super::{Observed, ObservedMachine};
use crate::model::Status;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write;

/// The desired state that keeps a machine where it is (for in-progress statuses: where it is
/// heading), and a note when no desired state matches exactly.
fn desired_state_of(machine: &ObservedMachine) -> (&'static str, Option<String>) {
    let status = machine.status;
    let exact = match status {
        Status::New => Some("new"),
        Status::Ready => Some("ready"),
        Status::Allocated => Some("allocated"),
        Status::Deployed => Some("deployed"),
        Status::Broken => Some("broken"),
        Status::RescueMode => Some("rescue_mode"),
        Status::Retired => Some("retired"),
        _ => None,
    };
    if let Some(state) = exact {
        return (state, None);
    }
    let heading = match status {
        Status::Deploying => "deployed",
        Status::EnteringRescueMode => "rescue_mode",
        Status::Missing | Status::FailedCommissioning if !machine.commissioned => "new",
        _ => "ready",
    };
    let note = format!(
        "it is {status}, which a fleet file cannot ask for; `{heading}` is the nearest state"
    );
    (heading, Some(note))
}

/// A TOML string (JSON's escapes are TOML's).
fn toml_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        toml_string(key)
    }
}

/// A JSON value as an inline TOML value (null members are left out; TOML has no null).
fn toml_value(value: &Value) -> String {
    match value {
        Value::String(text) => toml_string(text),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().filter(|key| !map[*key].is_null()).collect();
            keys.sort();
            let members: Vec<String> = keys
                .into_iter()
                .map(|key| format!("{} = {}", toml_key(key), toml_value(&map[key])))
                .collect();
            if members.is_empty() {
                "{}".into()
            } else {
                format!("{{ {} }}", members.join(", "))
            }
        }
        other => other.to_string(),
    }
}

fn power_table(machine: &ObservedMachine) -> Option<String> {
    if machine.power_type == "unconfigured" {
        return None;
    }
    let mut power = serde_json::Map::new();
    power.insert("type".into(), Value::String(machine.power_type.clone()));
    if let Value::Object(params) = &machine.power_params.to_value() {
        for (key, value) in params {
            power.insert(key.clone(), value.clone());
        }
    }
    Some(toml_value(&Value::Object(power)))
}

/// One `[[machine]]` table declaring `machine` as it is.
pub fn adopt_machine_toml(machine: &ObservedMachine) -> String {
    let mut text = String::new();
    let (state, note) = desired_state_of(machine);
    if let Some(note) = note {
        let _ = writeln!(text, "# {note}");
    }
    if super::route::powered_off(machine) {
        let _ = writeln!(
            text,
            "# found powered off: a fleet file cannot ask a deployed machine to stay off, so \
             planning this file powers it on"
        );
    }
    let _ = writeln!(text, "[[machine]]");
    let _ = writeln!(text, "name = {}", toml_string(machine.name.as_str()));
    if !machine.macs.is_empty() {
        let macs: Vec<String> = machine
            .macs
            .iter()
            .map(|mac| toml_string(&mac.to_string()))
            .collect();
        let _ = writeln!(text, "macs = [{}]", macs.join(", "));
        // The observed MACs come boot MAC first, which is also the fleet file's default; said
        // explicitly so that the DHCP server's fixed address goes to the NIC that netboots.
        if machine.macs.len() > 1 {
            let _ = writeln!(text, "pxe_mac = {}", macs[0]);
        }
    }
    if let Some(arch) = machine
        .arch
        .as_deref()
        .filter(|arch| crate::config::Arch::parse(arch).is_some())
    {
        let _ = writeln!(text, "arch = {}", toml_string(arch));
    }
    let _ = writeln!(text, "state = {}", toml_string(state));
    if let Some(image) = &machine.image {
        let _ = writeln!(text, "image = {}", toml_string(image));
    }
    if let Some(owner) = machine
        .owner
        .as_ref()
        .filter(|_| matches!(state, "allocated" | "deployed"))
    {
        let _ = writeln!(text, "owner = {}", toml_string(owner));
    }
    if machine.locked {
        let _ = writeln!(text, "locked = true");
    }
    if !machine.tags.is_empty() {
        let tags: Vec<String> = machine.tags.iter().map(|tag| toml_string(tag)).collect();
        let _ = writeln!(text, "tags = [{}]", tags.join(", "));
    }
    match power_table(machine) {
        Some(power) => {
            let _ = writeln!(text, "power = {power}");
        }
        None => {
            let _ = writeln!(
                text,
                "# no power type recorded: the fleet file's default is manual"
            );
        }
    }
    text
}

/// A whole fleet file for the store's machines, with a stub for every image they name.
pub fn adopt_toml(observed: &Observed) -> String {
    let mut text = String::from(
        "# Written by `fleet adopt` from what the controller observes: planning this file\n\
         # against the same controller gives no steps (but power-on for a deployed machine\n\
         # found powered off, which says so). Fill in the images' locations.\n\n",
    );
    let images: BTreeSet<&str> = observed
        .machines
        .iter()
        .filter_map(|machine| machine.image.as_deref())
        .collect();
    for image in images {
        let _ = writeln!(
            text,
            "[images.{}]\nroot = {{ path = {}, format = \"tar-xz\" }}  # where the image is\n",
            toml_key(image),
            toml_string(&format!("images/{image}.tar.xz"))
        );
    }
    for machine in &observed.machines {
        text.push_str(&adopt_machine_toml(machine));
        text.push('\n');
    }
    text
}
