//! What a store might hold for a synthetic fleet ([`crate::config::synthetic_fleet_toml`]), for
//! `fleet bench plan` and for tests of large plans: pure and deterministic.

use super::{
    desired_power, Firmware, Observed, ObservedDisk, ObservedHardware, ObservedInterface,
    ObservedMachine,
};
use crate::config::Fleet;

/// Every seventh machine not yet added; the others commissioned and ready with the fleet
/// file's power and tags, two 960 GB NVMe disks, one or two interfaces, UEFI (every fifth BIOS).
/// No held addresses and no applied deployments.
pub fn synthetic_observed(fleet: &Fleet) -> Observed {
    let machines = fleet
        .machines
        .iter()
        .enumerate()
        .filter(|(index, _)| index % 7 != 0)
        .map(|(index, spec)| {
            let (power_type, power_params) = desired_power(&spec.power);
            let disk = |name: &str, serial: String| ObservedDisk {
                name: name.into(),
                size_bytes: 960_000_000_000,
                serial: Some(serial),
                bus: Some("nvme".into()),
                rotational: Some(false),
                ..Default::default()
            };
            let interfaces = ["eth0", "eth1"]
                .iter()
                .zip(&spec.macs)
                .map(|(name, mac)| ObservedInterface {
                    name: name.to_string(),
                    mac: *mac,
                })
                .collect();
            let firmware = if index % 5 == 0 {
                Firmware::Bios
            } else {
                Firmware::Uefi
            };
            ObservedMachine {
                name: spec.name.clone(),
                status: crate::model::Status::Ready,
                previous_status: None,
                status_reason: None,
                power: crate::model::PowerState::Off,
                power_error: None,
                locked: false,
                owner: None,
                commissioned: true,
                deployed_os: None,
                power_type,
                power_params: power_params.into(),
                image: spec.image.clone(),
                tags: spec.tags.clone(),
                arch: Some(spec.arch.as_str().to_string()),
                macs: spec.macs.clone(),
                hardware: ObservedHardware {
                    cpus: Some(32),
                    memory_mib: Some(262_144),
                    disk_sizes: vec![960_000_000_000, 960_000_000_000],
                    disks: vec![
                        disk("nvme0n1", format!("S6{index:08}A")),
                        disk("nvme1n1", format!("S6{index:08}B")),
                    ],
                    interfaces,
                    firmware: Some(firmware),
                },
                generation: 4,
                heard_from: true,
                cloned_from: None,
                deployment: None,
            }
        })
        .collect();
    Observed {
        machines,
        addresses: Vec::new(),
    }
}
