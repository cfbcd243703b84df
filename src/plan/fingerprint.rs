//! Fingerprints: short digests of what was observed, so that a saved plan can tell which
//! machines changed after it was made.

use super::{ObservedHardware, ObservedState};
use crate::model::MacAddr;
use sha2::{Digest, Sha256};

/// How many hex digits of SHA-256 a fingerprint keeps: enough that a collision between two
/// observations of one machine is not a practical concern.
const DIGITS: usize = 16;

fn short_digest(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(digest)[..DIGITS].to_string()
}

/// A digest of the hardware facts and MACs (order-independent).
pub fn hardware_digest(hardware: &ObservedHardware, macs: &[MacAddr]) -> String {
    let mut macs: Vec<String> = macs.iter().map(|mac| mac.to_string()).collect();
    macs.sort();
    let mut disks = hardware.disk_sizes.clone();
    disks.sort_unstable();
    short_digest(&format!(
        "cpus={:?};memory={:?};disks={disks:?};macs={macs:?}",
        hardware.cpus, hardware.memory_mib
    ))
}

/// The fingerprint of an observation: status, power, lock, hardware and generation.
pub fn fingerprint(state: &ObservedState) -> String {
    short_digest(&format!(
        "status={};power={};locked={};hardware={};generation={}",
        state.status, state.power, state.locked, state.hardware_digest, state.generation
    ))
}
