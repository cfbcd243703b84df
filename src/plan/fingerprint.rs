//! Fingerprints: short digests of what was observed, so that a saved plan can tell which
//! machines changed after it was made.

use super::{ObservedHardware, ObservedState};
use crate::model::MacAddr;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// How many hex digits of SHA-256 a fingerprint keeps: enough that a collision between two
/// observations of one machine is not a practical concern.
const DIGITS: usize = 16;

fn short_digest(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    // Only the digits kept are encoded (two per byte).
    hex::encode(&digest[..DIGITS / 2])
}

/// A digest of the hardware facts and MACs (order-independent).
pub fn hardware_digest(hardware: &ObservedHardware, macs: &[MacAddr]) -> String {
    // Sorted as addresses: the same order as their fixed-width lower-case text.
    let mut macs = macs.to_vec();
    macs.sort_unstable();
    let mut disks = hardware.disk_sizes.clone();
    disks.sort_unstable();
    // The text is the one `format!("...macs={:?}", Vec<String>)` gave, written in one buffer.
    let mut text = format!(
        "cpus={:?};memory={:?};disks={disks:?};macs=[",
        hardware.cpus, hardware.memory_mib
    );
    for (index, mac) in macs.iter().enumerate() {
        let separator = if index == 0 { "" } else { ", " };
        let _ = write!(text, "{separator}\"{mac}\"");
    }
    text.push(']');
    short_digest(&text)
}

/// The fingerprint of an observation: status, power, lock, hardware and generation.
pub fn fingerprint(state: &ObservedState) -> String {
    short_digest(&format!(
        "status={};power={};locked={};hardware={};generation={}",
        state.status, state.power, state.locked, state.hardware_digest, state.generation
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest of the text the first version built with `format!` and `Vec<String>`.
    #[test]
    fn the_hardware_digest_is_unchanged() {
        let hardware = ObservedHardware {
            cpus: Some(8),
            memory_mib: None,
            disk_sizes: vec![2, 10],
        };
        let macs = [
            MacAddr([0x52, 0x54, 0, 0xaa, 0, 2]),
            MacAddr([0x0a, 0, 0, 0, 0, 0xff]),
        ];
        let text = "cpus=Some(8);memory=None;disks=[2, 10];macs=[\"0a:00:00:00:00:ff\", \"52:54:00:aa:00:02\"]";
        let digest = Sha256::digest(text.as_bytes());
        assert_eq!(
            hardware_digest(&hardware, &macs),
            hex::encode(digest)[..DIGITS]
        );
        assert_eq!(
            hardware_digest(&ObservedHardware::default(), &[]).len(),
            DIGITS
        );
    }
}
