//! Machines to put in a store: the fields most tests leave at their plainest.

#![allow(dead_code)] // Each test module uses its own part of the helpers.

use fleet::model::{MacAddr, MachineName, Status};
use fleet::store::{Hardware, NewMachine};
use serde_json::json;

/// A new amd64 machine `name` with `macs`, powered by hand (`manual`), nothing else known.
pub fn manual_machine(name: &str, macs: Vec<MacAddr>) -> NewMachine {
    NewMachine {
        name: MachineName::parse(name).unwrap(),
        status: Status::New,
        macs,
        arch: Some("amd64".into()),
        power_type: "manual".into(),
        power_params: json!({}),
        bmc_address: None,
        image: None,
        tags: Vec::new(),
        deployed_os: None,
    }
}

/// What commissioning records of an 8-CPU, 16 GiB UEFI machine.
pub fn uefi_hardware() -> Hardware {
    Hardware {
        cpus: Some(8),
        cpu_model: None,
        cpu_speed_mhz: None,
        memory_mib: Some(16384),
        facts: json!({ "arch": { "firmware": "uefi" } }),
    }
}
