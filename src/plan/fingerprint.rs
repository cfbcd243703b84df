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
    short_hex(&Sha256::digest(text.as_bytes()))
}

/// The first [`DIGITS`] hex digits of a SHA-256.
fn short_hex(digest: &[u8]) -> String {
    // Only the digits kept are encoded (two per byte), straight into the string.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(DIGITS);
    for byte in &digest[..DIGITS / 2] {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

/// The short digest of a value's JSON (layouts, network configurations: what the plan compares
/// with the stored ones by). The JSON goes straight into the hash, without a buffer.
pub(crate) fn json_digest<T: serde::Serialize>(value: &T) -> String {
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut writer = HashWriter(Sha256::new());
    serde_json::to_writer(&mut writer, value).expect("plain data serializes to JSON");
    short_hex(&writer.0.finalize())
}

fn is_sorted<T: Ord>(items: &[T]) -> bool {
    items.windows(2).all(|pair| pair[0] <= pair[1])
}

/// `Some(n)` as `{:?}` writes it, without the formatting machinery's padding logic.
fn push_option(text: &mut String, value: Option<i64>) {
    match value {
        Some(value) => {
            let _ = write!(text, "Some({value})");
        }
        None => text.push_str("None"),
    }
}

/// A digest of the hardware facts and MACs (order-independent).
pub fn hardware_digest(hardware: &ObservedHardware, macs: &[MacAddr]) -> String {
    // Sorted as addresses: the same order as their fixed-width lower-case text. Copied only
    // when not sorted already (snapshots keep them in order).
    let mut sorted_macs;
    let macs = if is_sorted(macs) {
        macs
    } else {
        sorted_macs = macs.to_vec();
        sorted_macs.sort_unstable();
        &sorted_macs
    };
    let mut sorted_disks;
    let disks = if is_sorted(&hardware.disk_sizes) {
        &hardware.disk_sizes[..]
    } else {
        sorted_disks = hardware.disk_sizes.clone();
        sorted_disks.sort_unstable();
        &sorted_disks
    };
    // The text `format!("cpus={:?};memory={:?};disks={disks:?};macs={:?}", .., Vec<String>)`
    // gave, written piece by piece into one buffer.
    let mut text = String::with_capacity(64 + 16 * disks.len() + 22 * macs.len());
    text.push_str("cpus=");
    push_option(&mut text, hardware.cpus);
    text.push_str(";memory=");
    push_option(&mut text, hardware.memory_mib);
    text.push_str(";disks=[");
    for (index, size) in disks.iter().enumerate() {
        if index > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "{size}");
    }
    text.push_str("];macs=[");
    for (index, mac) in macs.iter().enumerate() {
        let separator = if index == 0 { "" } else { ", " };
        let _ = write!(text, "{separator}\"{mac}\"");
    }
    text.push(']');
    short_digest(&text)
}

/// The fingerprint of an observation: status, power, lock, hardware and generation.
pub fn fingerprint(state: &ObservedState) -> String {
    let mut text = String::with_capacity(96);
    let _ = write!(
        text,
        "status={};power={};locked={};hardware={};generation={}",
        state.status, state.power, state.locked, state.hardware_digest, state.generation
    );
    short_digest(&text)
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
            ..Default::default()
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

    /// The first version, text and all, against the one written piece by piece.
    #[test]
    fn digests_agree_with_the_formatted_text() {
        let first_hardware = |hardware: &ObservedHardware, macs: &[MacAddr]| {
            let mut macs: Vec<String> = macs.iter().map(|mac| mac.to_string()).collect();
            macs.sort();
            let mut disks = hardware.disk_sizes.clone();
            disks.sort_unstable();
            let text = format!(
                "cpus={:?};memory={:?};disks={disks:?};macs={macs:?}",
                hardware.cpus, hardware.memory_mib
            );
            hex::encode(Sha256::digest(text.as_bytes()))[..DIGITS].to_string()
        };
        let cases = [
            (None, None, vec![], vec![]),
            (
                Some(-1),
                Some(0),
                vec![960_000_000_000, 2, i64::MAX],
                vec![[9, 8, 7, 6, 5, 4]],
            ),
            (
                Some(32),
                Some(262_144),
                vec![1, 1],
                vec![[0x52, 0x54, 0, 0, 0, 2], [0x52, 0x54, 0, 0, 0, 1], [0; 6]],
            ),
        ];
        for (cpus, memory_mib, disk_sizes, macs) in cases {
            let hardware = ObservedHardware {
                cpus,
                memory_mib,
                disk_sizes,
                ..Default::default()
            };
            let macs: Vec<MacAddr> = macs.into_iter().map(MacAddr).collect();
            assert_eq!(
                hardware_digest(&hardware, &macs),
                first_hardware(&hardware, &macs)
            );
        }
        let state = ObservedState {
            status: crate::model::Status::Deployed,
            power: crate::model::PowerState::Off,
            locked: true,
            hardware_digest: "0123456789abcdef".into(),
            generation: 42,
        };
        let text = format!(
            "status={};power={};locked={};hardware={};generation={}",
            state.status, state.power, state.locked, state.hardware_digest, state.generation
        );
        assert_eq!(
            fingerprint(&state),
            hex::encode(Sha256::digest(text.as_bytes()))[..DIGITS]
        );
    }
}
