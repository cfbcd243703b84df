//! Cloning one machine's storage and/or interfaces onto others (pure): MAAS's rules and
//! messages (`maasserver/forms/clone.py`, `Node._get_storage_mapping_between_nodes` and
//! `_get_interface_mapping_between_nodes`), as lifecycle.md states them:
//! - at least one of storage and interfaces; the source exists (any status) and is not the
//!   destination; the destination exists and is ready or failed_testing;
//! - interfaces: every physical interface of the source has a namesake on the destination
//!   (extra destination interfaces are fine; bonds, VLANs and bridges come with the network
//!   template, static addresses are allocated afresh);
//! - storage: the same architecture and boot method; the boot disk (the first disk
//!   commissioning listed, as MAAS's default boot disk) maps to the destination's and must be
//!   as large; the other disks are matched in three passes — same size and tags, then larger
//!   with the same tags, then larger with any tags — and a destination with fewer disks is
//!   refused.
//!
//! Every reason is returned, not the first only: a person fixes them all at once.

use super::{Observed, ObservedDisk, ObservedMachine};
use crate::model::{MachineName, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A clone the store recorded (`fleet clone` from the command line): the destination keeps the
/// source's storage and/or interfaces until the fleet file says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneRecord {
    pub source: MachineName,
    pub storage: bool,
    pub interfaces: bool,
    /// Unix ms.
    pub at: i64,
}

/// What a valid clone maps: the source's disks onto the destination's, its interfaces onto the
/// destination's by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneMapping {
    /// Source disk name → destination disk name (`None`: storage not cloned).
    pub disks: Option<BTreeMap<String, String>>,
    /// Source interface name → destination interface name (`None`: interfaces not cloned).
    pub interfaces: Option<BTreeMap<String, String>>,
}

/// The refusal when neither storage nor interfaces is chosen (MAAS says "must be true"; the
/// command line and the API have flags, not booleans, hence "chosen").
pub const NOTHING_CHOSEN: &str = "Either storage or interfaces must be chosen.";

/// The statuses a destination may be in: nothing runs on it, nobody owns it.
pub const CLONABLE_STATUSES: [Status; 2] = [Status::Ready, Status::FailedTesting];

/// Checks that `destination` can take `source`'s storage and/or interfaces. `Err`: every
/// reason it cannot, each a sentence.
pub fn check_clone(
    source: &ObservedMachine,
    destination: &ObservedMachine,
    storage: bool,
    interfaces: bool,
) -> Result<CloneMapping, Vec<String>> {
    let mut reasons = Vec::new();
    if !storage && !interfaces {
        reasons.push(NOTHING_CHOSEN.to_string());
    }
    if source.name == destination.name {
        reasons.push(source_is_destination(source.name.as_str()));
        return Err(reasons);
    }
    let invalid = |detail: String| format!("{} is invalid: {detail}", destination.name);
    if !CLONABLE_STATUSES.contains(&destination.status) {
        reasons.push(invalid(format!(
            "it is {}; only ready or failed_testing machines can be cloned to",
            destination.status.as_str()
        )));
    }
    let mut mapping = CloneMapping::default();
    if storage {
        match map_storage(source, destination) {
            Ok(disks) => mapping.disks = Some(disks),
            Err(details) => reasons.extend(details.into_iter().map(invalid)),
        }
    }
    if interfaces {
        match map_interfaces(source, destination) {
            Ok(nics) => mapping.interfaces = Some(nics),
            Err(detail) => reasons.push(invalid(detail)),
        }
    }
    if reasons.is_empty() {
        Ok(mapping)
    } else {
        Err(reasons)
    }
}

/// [`check_clone`] by names in a snapshot, the existence of both machines included: for the
/// planner (`clone_from`) and the clone service (a snapshot of the two fresh records).
pub fn check_clone_in(
    observed: &Observed,
    source: &str,
    destination: &str,
    storage: bool,
    interfaces: bool,
) -> Result<CloneMapping, Vec<String>> {
    if source == destination {
        let mut reasons = Vec::new();
        if !storage && !interfaces {
            reasons.push(NOTHING_CHOSEN.to_string());
        }
        reasons.push(source_is_destination(source));
        return Err(reasons);
    }
    match (observed.machine(source), observed.machine(destination)) {
        (Some(source), Some(destination)) => check_clone(source, destination, storage, interfaces),
        (found_source, found_destination) => {
            let mut reasons = Vec::new();
            if !storage && !interfaces {
                reasons.push(NOTHING_CHOSEN.to_string());
            }
            if found_source.is_none() {
                reasons.push(no_such_machine(source));
            }
            if found_destination.is_none() {
                reasons.push(no_such_machine(destination));
            }
            Err(reasons)
        }
    }
}

/// The reasons on one line (the command line's and the refusal event's).
pub fn reasons_line(reasons: &[String]) -> String {
    reasons.join("; ")
}

/// MAAS's message when a machine is asked to clone itself.
pub fn source_is_destination(name: &str) -> String {
    format!("Source machine {name} cannot be a destination machine.")
}

/// The refusal for a name the store does not know (the words of every other fleet command).
pub fn no_such_machine(name: &str) -> String {
    format!("no machine named `{name}`")
}

/// The source's interfaces onto the destination's namesakes; `Err`: the names it lacks.
fn map_interfaces(
    source: &ObservedMachine,
    destination: &ObservedMachine,
) -> Result<BTreeMap<String, String>, String> {
    if source.hardware.interfaces.is_empty() {
        return Err(format!(
            "source machine {} has no commissioned interfaces to clone",
            source.name
        ));
    }
    let present: BTreeSet<&str> = destination
        .hardware
        .interfaces
        .iter()
        .map(|interface| interface.name.as_str())
        .collect();
    let missing: Vec<&str> = source
        .hardware
        .interfaces
        .iter()
        .map(|interface| interface.name.as_str())
        .filter(|name| !present.contains(name))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "destination interfaces do not match the source: {}",
            missing.join(", ")
        ));
    }
    Ok(source
        .hardware
        .interfaces
        .iter()
        .map(|interface| (interface.name.clone(), interface.name.clone()))
        .collect())
}

/// The source's disks onto the destination's; `Err`: every detail that stops it.
fn map_storage(
    source: &ObservedMachine,
    destination: &ObservedMachine,
) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut details = Vec::new();
    if source.arch != destination.arch {
        details.push(format!(
            "destination architecture {} does not match the source's {}",
            or_unknown(destination.arch.as_deref()),
            or_unknown(source.arch.as_deref())
        ));
    }
    let firmware = |machine: &ObservedMachine| machine.hardware.firmware.map(|f| f.as_str());
    if firmware(source) != firmware(destination) {
        details.push(format!(
            "destination boot method {} does not match the source's {}",
            or_unknown(firmware(destination)),
            or_unknown(firmware(source))
        ));
    }
    let source_disks = &source.hardware.disks;
    let destination_disks = &destination.hardware.disks;
    if source_disks.is_empty() {
        details.push(format!(
            "source machine {} has no commissioned disks to clone",
            source.name
        ));
    }
    if destination_disks.is_empty() {
        details.push("it has no commissioned disks".to_string());
    }
    let (Some(source_boot), Some(destination_boot)) =
        (source_disks.first(), destination_disks.first())
    else {
        return Err(details);
    };
    if destination_boot.size_bytes < source_boot.size_bytes {
        let (smaller, larger) = sizes_apart(destination_boot.size_bytes, source_boot.size_bytes);
        details.push(format!(
            "destination boot disk {} ({smaller}) is smaller than source boot disk {} ({larger})",
            destination_boot.name, source_boot.name
        ));
    }
    let mut disks = BTreeMap::from([(source_boot.name.clone(), destination_boot.name.clone())]);
    match match_other_disks(&source_disks[1..], &destination_disks[1..]) {
        Ok(others) => disks.extend(others),
        Err(more) => details.extend(more),
    }
    if details.is_empty() {
        Ok(disks)
    } else {
        Err(details)
    }
}

/// Which disk matches which in one of MAAS's passes.
type Pass = fn(&ObservedDisk, &ObservedDisk) -> bool;

/// MAAS's three passes, each taking the smallest destination disk left that fits: the same size
/// and tags; larger (or equal) with the same tags; larger (or equal) with any tags.
const PASSES: [Pass; 3] = [
    |source, destination| {
        destination.size_bytes == source.size_bytes && destination.tags() == source.tags()
    },
    |source, destination| {
        destination.size_bytes >= source.size_bytes && destination.tags() == source.tags()
    },
    |source, destination| destination.size_bytes >= source.size_bytes,
];

/// The disks besides the boot disks, matched in [`PASSES`]; `Err`: fewer destination disks, or
/// the source disks no pass found room for.
fn match_other_disks(
    source: &[ObservedDisk],
    destination: &[ObservedDisk],
) -> Result<Vec<(String, String)>, Vec<String>> {
    if destination.len() < source.len() {
        return Err(vec![format!(
            "it has {}, fewer than the source's {}",
            disks(destination.len() + 1),
            source.len() + 1
        )]);
    }
    let mut left: Vec<&ObservedDisk> = by_size(source);
    let mut free: Vec<&ObservedDisk> = by_size(destination);
    let mut pairs = Vec::new();
    for pass in PASSES {
        left.retain(|source_disk| {
            let Some(at) = free.iter().position(|disk| pass(source_disk, disk)) else {
                return true;
            };
            pairs.push((source_disk.name.clone(), free.remove(at).name.clone()));
            false
        });
    }
    if left.is_empty() {
        return Ok(pairs);
    }
    Err(left
        .iter()
        .map(|disk| {
            format!(
                "no destination disk left is as large as source disk {} ({})",
                disk.name,
                size_text(disk.size_bytes)
            )
        })
        .collect())
}

/// Smallest first; disks of one size keep the machine's order.
fn by_size(disks: &[ObservedDisk]) -> Vec<&ObservedDisk> {
    let mut sorted: Vec<&ObservedDisk> = disks.iter().collect();
    sorted.sort_by_key(|disk| disk.size_bytes);
    sorted
}

/// `1 disk`, `3 disks`.
fn disks(count: usize) -> String {
    match count {
        1 => "1 disk".to_string(),
        more => format!("{more} disks"),
    }
}

fn or_unknown(value: Option<&str>) -> &str {
    value.unwrap_or("unknown")
}

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// `34359738368` → `32 GiB`, `21474836480 + 512 MiB` → `20.5 GiB`, under 1 GiB in MiB.
fn size_text(bytes: i64) -> String {
    let value = bytes as f64;
    let (amount, unit) = if value >= GIB {
        (value / GIB, "GiB")
    } else {
        (value / MIB, "MiB")
    };
    let text = format!("{amount:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {unit}")
}

/// Two different sizes as people read them, in bytes when the short forms would look equal.
fn sizes_apart(first: i64, second: i64) -> (String, String) {
    let (a, b) = (size_text(first), size_text(second));
    if a == b && first != second {
        (format!("{first} bytes"), format!("{second} bytes"))
    } else {
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MacAddr, PowerState};
    use crate::plan::{Firmware, ObservedHardware, ObservedInterface, PowerParams};

    const GB: i64 = 1 << 30;

    fn disk(name: &str, gib: i64, rotational: bool, bus: &str) -> ObservedDisk {
        ObservedDisk {
            name: name.into(),
            size_bytes: gib * GB,
            rotational: Some(rotational),
            bus: Some(bus.into()),
            ..Default::default()
        }
    }

    fn ssd(name: &str, gib: i64) -> ObservedDisk {
        disk(name, gib, false, "ata")
    }

    fn hdd(name: &str, gib: i64) -> ObservedDisk {
        disk(name, gib, true, "ata")
    }

    fn nic(name: &str, last: u8) -> ObservedInterface {
        ObservedInterface {
            name: name.into(),
            mac: MacAddr([0x52, 0x54, 0, 0, 1, last]),
        }
    }

    fn machine(name: &str, status: Status, disks: Vec<ObservedDisk>) -> ObservedMachine {
        ObservedMachine {
            name: MachineName::parse(name).unwrap(),
            status,
            previous_status: None,
            status_reason: None,
            power: PowerState::Off,
            power_error: None,
            locked: false,
            owner: None,
            commissioned: true,
            deployed_os: None,
            power_type: "manual".into(),
            power_params: PowerParams::default(),
            image: None,
            tags: Vec::new(),
            arch: Some("amd64".into()),
            macs: Vec::new(),
            hardware: ObservedHardware {
                disks,
                interfaces: vec![nic("eth0", 0), nic("eth1", 1)],
                firmware: Some(Firmware::Uefi),
                ..Default::default()
            },
            generation: 1,
            heard_from: true,
            deployment: None,
            cloned_from: None,
        }
    }

    fn source() -> ObservedMachine {
        machine(
            "src",
            Status::Deployed,
            vec![ssd("sda", 32), hdd("sdb", 500)],
        )
    }

    fn ready(disks: Vec<ObservedDisk>) -> ObservedMachine {
        machine("dst", Status::Ready, disks)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_matching_destination_maps_disks_and_interfaces() {
        let destination = ready(vec![ssd("vda", 32), hdd("vdb", 500)]);
        let mapping = check_clone(&source(), &destination, true, true).unwrap();
        assert_eq!(mapping.disks, Some(map(&[("sda", "vda"), ("sdb", "vdb")])));
        assert_eq!(
            mapping.interfaces,
            Some(map(&[("eth0", "eth0"), ("eth1", "eth1")]))
        );
    }

    #[test]
    fn only_what_was_chosen_is_mapped_and_checked() {
        // Too small for storage, but interfaces alone are asked for.
        let destination = ready(vec![ssd("vda", 8)]);
        let mapping = check_clone(&source(), &destination, false, true).unwrap();
        assert_eq!(mapping.disks, None);
        assert!(mapping.interfaces.is_some());
        let mut no_nics = ready(vec![ssd("vda", 32), hdd("vdb", 500)]);
        no_nics.hardware.interfaces.clear();
        let mapping = check_clone(&source(), &no_nics, true, false).unwrap();
        assert!(mapping.disks.is_some());
        assert_eq!(mapping.interfaces, None);
    }

    /// One row per rule: what the destination (or the request) looks like, and the reasons.
    #[test]
    fn every_rule_refuses_with_its_message() {
        let fits = || vec![ssd("vda", 32), hdd("vdb", 500)];
        let cases: Vec<(&str, ObservedMachine, bool, bool, Vec<&str>)> = vec![
            (
                "neither chosen",
                ready(fits()),
                false,
                false,
                vec!["Either storage or interfaces must be chosen."],
            ),
            (
                "deployed",
                machine("dst", Status::Deployed, fits()),
                true,
                true,
                vec!["dst is invalid: it is deployed; only ready or failed_testing machines can be cloned to"],
            ),
            (
                "allocated",
                machine("dst", Status::Allocated, fits()),
                false,
                true,
                vec!["dst is invalid: it is allocated; only ready or failed_testing machines can be cloned to"],
            ),
            (
                "boot disk smaller",
                ready(vec![ssd("sdb", 20), hdd("sdc", 500)]),
                true,
                false,
                vec!["dst is invalid: destination boot disk sdb (20 GiB) is smaller than source boot disk sda (32 GiB)"],
            ),
            (
                "fewer disks",
                ready(vec![ssd("vda", 64)]),
                true,
                false,
                vec!["dst is invalid: it has 1 disk, fewer than the source's 2"],
            ),
            (
                "other disk too small",
                ready(vec![ssd("vda", 32), hdd("vdb", 400)]),
                true,
                false,
                vec!["dst is invalid: no destination disk left is as large as source disk sdb (500 GiB)"],
            ),
            (
                "no disks",
                ready(Vec::new()),
                true,
                false,
                vec!["dst is invalid: it has no commissioned disks"],
            ),
        ];
        for (case, destination, storage, interfaces, expected) in cases {
            let reasons = check_clone(&source(), &destination, storage, interfaces).unwrap_err();
            assert_eq!(reasons, expected, "{case}");
        }
    }

    #[test]
    fn architecture_and_boot_method_must_match() {
        let mut destination = ready(vec![ssd("vda", 32), hdd("vdb", 500)]);
        destination.arch = Some("arm64".into());
        destination.hardware.firmware = Some(Firmware::Bios);
        let reasons = check_clone(&source(), &destination, true, false).unwrap_err();
        assert_eq!(
            reasons,
            [
                "dst is invalid: destination architecture arm64 does not match the source's amd64",
                "dst is invalid: destination boot method bios does not match the source's uefi",
            ]
        );
        destination.hardware.firmware = None;
        let reasons = check_clone(&source(), &destination, true, false).unwrap_err();
        assert!(reasons[1].contains("boot method unknown does not match the source's uefi"));
        // Interfaces alone do not care.
        assert!(check_clone(&source(), &destination, false, true).is_ok());
    }

    #[test]
    fn missing_interfaces_are_named_and_extra_ones_are_fine() {
        let mut destination = ready(vec![ssd("vda", 32), hdd("vdb", 500)]);
        destination.hardware.interfaces = vec![nic("eth0", 9), nic("eth2", 8), nic("eno1", 7)];
        let mut source = source();
        source.hardware.interfaces.push(nic("eth3", 3));
        let reasons = check_clone(&source, &destination, false, true).unwrap_err();
        assert_eq!(
            reasons,
            ["dst is invalid: destination interfaces do not match the source: eth1, eth3"]
        );
        destination.hardware.interfaces.push(nic("eth1", 6));
        destination.hardware.interfaces.push(nic("eth3", 5));
        let mapping = check_clone(&source, &destination, false, true).unwrap();
        assert_eq!(mapping.interfaces.unwrap().len(), 3);
    }

    #[test]
    fn every_reason_is_given_not_the_first_only() {
        let mut destination = machine("dst", Status::Deployed, vec![ssd("sdb", 20)]);
        destination.hardware.interfaces = vec![nic("eth0", 9)];
        let reasons = check_clone(&source(), &destination, true, true).unwrap_err();
        assert_eq!(
            reasons,
            [
                "dst is invalid: it is deployed; only ready or failed_testing machines can be cloned to",
                "dst is invalid: destination boot disk sdb (20 GiB) is smaller than source boot disk sda (32 GiB)",
                "dst is invalid: it has 1 disk, fewer than the source's 2",
                "dst is invalid: destination interfaces do not match the source: eth1",
            ]
        );
    }

    #[test]
    fn a_machine_cannot_clone_itself() {
        let source = machine("src", Status::Ready, vec![ssd("sda", 32)]);
        let reasons = check_clone(&source, &source, true, false).unwrap_err();
        assert_eq!(
            reasons,
            ["Source machine src cannot be a destination machine."]
        );
    }

    #[test]
    fn failed_testing_destinations_may_be_cloned_to() {
        let destination = machine(
            "dst",
            Status::FailedTesting,
            vec![ssd("vda", 32), hdd("vdb", 500)],
        );
        assert!(check_clone(&source(), &destination, true, true).is_ok());
    }

    /// A case name, the source's disks, the destination's, and the expected map.
    type PassCase = (
        &'static str,
        Vec<ObservedDisk>,
        Vec<ObservedDisk>,
        Vec<(&'static str, &'static str)>,
    );

    /// Each of MAAS's passes, and that an earlier pass keeps a disk from a later one.
    #[test]
    fn other_disks_are_matched_in_three_passes() {
        let boot = || ssd("sda", 32);
        let cases: Vec<PassCase> = vec![
            (
                // Pass 1 (same size and tags) wins over the larger same-tag disk listed first.
                "same size and tags",
                vec![boot(), hdd("sdb", 500)],
                vec![boot(), hdd("vdb", 1000), hdd("vdc", 500)],
                vec![("sda", "sda"), ("sdb", "vdc")],
            ),
            (
                // Pass 2: larger with the same tags before an exact size of other tags.
                "larger with the same tags",
                vec![boot(), hdd("sdb", 500)],
                vec![boot(), ssd("vdb", 500), hdd("vdc", 600)],
                vec![("sda", "sda"), ("sdb", "vdc")],
            ),
            (
                // Pass 3: only other tags are left; the smallest one large enough.
                "larger with any tags",
                vec![boot(), hdd("sdb", 500)],
                vec![
                    boot(),
                    ssd("vdb", 2000),
                    disk("nvme0n1", 600, false, "nvme"),
                ],
                vec![("sda", "sda"), ("sdb", "nvme0n1")],
            ),
            (
                // The exact match of sdc is taken in pass 1, before sdb's pass 2 could take it.
                "earlier passes first",
                vec![boot(), hdd("sdb", 400), hdd("sdc", 500)],
                vec![boot(), hdd("vdb", 500), hdd("vdc", 800)],
                vec![("sda", "sda"), ("sdb", "vdc"), ("sdc", "vdb")],
            ),
            (
                "extra destination disks are fine",
                vec![boot(), ssd("sdb", 100)],
                vec![boot(), ssd("vdb", 100), hdd("vdc", 4000), hdd("vdd", 4000)],
                vec![("sda", "sda"), ("sdb", "vdb")],
            ),
        ];
        for (case, source_disks, destination_disks, expected) in cases {
            let source = machine("src", Status::Deployed, source_disks);
            let destination = ready(destination_disks);
            let mapping = check_clone(&source, &destination, true, false)
                .unwrap_or_else(|reasons| panic!("{case}: {reasons:?}"));
            assert_eq!(mapping.disks, Some(map(&expected)), "{case}");
        }
    }

    #[test]
    fn existence_is_checked_by_name() {
        let observed = Observed {
            machines: vec![ready(vec![ssd("vda", 32), hdd("vdb", 500)]), source()],
            addresses: Vec::new(),
        };
        assert!(check_clone_in(&observed, "src", "dst", true, true).is_ok());
        assert_eq!(
            check_clone_in(&observed, "gone", "nothere", true, false).unwrap_err(),
            ["no machine named `gone`", "no machine named `nothere`"]
        );
        assert_eq!(
            check_clone_in(&observed, "src", "src", false, false).unwrap_err(),
            [
                "Either storage or interfaces must be chosen.",
                "Source machine src cannot be a destination machine."
            ]
        );
    }

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(size_text(32 * GB), "32 GiB");
        assert_eq!(size_text(20 * GB + GB / 2), "20.5 GiB");
        assert_eq!(size_text(512 << 20), "512 MiB");
        assert_eq!(
            sizes_apart(32 * GB - 4096, 32 * GB),
            (
                "34359734272 bytes".to_string(),
                "34359738368 bytes".to_string()
            )
        );
    }
}
