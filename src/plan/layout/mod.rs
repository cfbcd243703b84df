//! Storage layouts: a storage template resolved against one machine's commissioned disks
//! (pure). The result says, byte for byte, what the deploy role lays out: the partition table
//! of each disk, every partition's start and size, filesystems (UUID-free: mkfs makes them),
//! md arrays, volume groups and logical volumes, bcache devices.
//!
//! Rules, MAAS's unless said otherwise:
//! - GPT on UEFI machines, with an EFI system partition (`efi_size`, default 512 MiB) first on
//!   the boot disk. On BIOS machines msdos (MBR), except on disks larger than 2 TiB, which MBR
//!   cannot address: those get GPT, and the boot disk a 1 MiB `bios_grub` partition for GRUB.
//! - The first 4 MiB of a disk are left to the partition table (and `bios_grub`, at 1 MiB),
//!   so the first partition starts at 4 MiB; the last 1 MiB is left free (the backup GPT).
//!   Every size is rounded down to 4 MiB, so every partition stays 4 MiB aligned.
//! - Percentages are of the space a disk has left after the partitions fleet makes itself (EFI,
//!   `bios_grub`) and, for `root_size`, after the boot partition: `"100%"` is the rest.
//! - Root at least 3 GiB; LVM volume groups keep one 4 MiB extent per physical volume for
//!   metadata; md arrays 128 KiB per member for the superblock.

mod resolve;
mod table;
#[cfg(test)]
mod tests;

use super::{Firmware, ObservedDisk};
use crate::config::{BcacheMode, FsType, StorageTemplate};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

pub use resolve::{ALIGNMENT, FIRST_PARTITION_START, MBR_LIMIT};

/// The concrete layout of one machine: what the deploy role lays out, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The template it was resolved from.
    pub template: String,
    /// The layout the machine gets: the template's, or `flat` for a bcache template on a
    /// machine without a cache disk.
    pub kind: LayoutKind,
    pub firmware: Firmware,
    /// The disks the layout touches, in the machine's order (a blank layout: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskLayout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arrays: Vec<ArrayLayout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_groups: Vec<VolumeGroupLayout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcaches: Vec<BcacheLayout>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            template: String::new(),
            kind: LayoutKind::Blank,
            firmware: Firmware::Uefi,
            disks: Vec::new(),
            arrays: Vec::new(),
            volume_groups: Vec::new(),
            bcaches: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutKind {
    Flat,
    Lvm,
    Bcache,
    Blank,
    Custom,
}

/// One disk: its partition table and partitions, or a whole-disk use (a filesystem, an array
/// or volume group member, a bcache cache).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayout {
    /// The kernel name commissioning saw (names may change between boots: the deploy role
    /// finds the disk by `serial` or `id_path` when they are known).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_path: Option<String>,
    pub size: u64,
    /// The disk the boot loader goes on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot: bool,
    /// None: the disk is used whole, without a partition table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<PartitionTable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<Partition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionTable {
    Gpt,
    Msdos,
}

impl PartitionTable {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionTable::Gpt => "gpt",
            PartitionTable::Msdos => "msdos",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// 1, 2, ... in the order of their starts (`sda1`, `nvme0n1p1`).
    pub number: u32,
    /// Bytes from the start of the disk.
    pub start: u64,
    pub size: u64,
    pub kind: PartitionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
}

/// What a partition is for: its GPT type / msdos id and flags follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKind {
    /// EFI system partition (GPT type EF00, `esp` and `boot` flags).
    Esp,
    /// GRUB's core image on a GPT disk of a BIOS machine (EF02, `bios_grub` flag).
    BiosGrub,
    /// A filesystem (8300 / 0x83); the /boot partition of an msdos disk is flagged bootable.
    Linux,
    /// Swap (8200 / 0x82).
    Swap,
    /// An md RAID member (FD00 / 0xfd, `raid` flag).
    Raid,
    /// An LVM physical volume (8E00 / 0x8e, `lvm` flag).
    Lvm,
    /// A bcache backing device.
    BcacheBacking,
    /// A bcache cache device.
    BcacheCache,
}

impl PartitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionKind::Esp => "esp",
            PartitionKind::BiosGrub => "bios_grub",
            PartitionKind::Linux => "linux",
            PartitionKind::Swap => "swap",
            PartitionKind::Raid => "raid",
            PartitionKind::Lvm => "lvm",
            PartitionKind::BcacheBacking => "bcache_backing",
            PartitionKind::BcacheCache => "bcache_cache",
        }
    }
}

/// A filesystem to make (its UUID is mkfs's) and where to mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    pub fstype: FsType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_options: Option<String>,
}

/// A block device the layout builds on: a whole disk, a partition, an md array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Device {
    Disk { disk: String },
    Partition { disk: String, number: u32 },
    Array { name: String },
}

impl Device {
    /// The kernel name: `sda`, `sda2`, `nvme0n1p2`, `md0`.
    pub fn name(&self) -> String {
        match self {
            Device::Disk { disk } => disk.clone(),
            Device::Partition { disk, number } => partition_name(disk, *number),
            Device::Array { name } => name.clone(),
        }
    }

    fn rename_disk(&mut self, disk_map: &BTreeMap<String, String>) {
        if let Device::Disk { disk } | Device::Partition { disk, .. } = self {
            if let Some(renamed) = disk_map.get(disk.as_str()) {
                disk.clone_from(renamed);
            }
        }
    }
}

/// `sda` + 2 = `sda2`; a name ending in a digit takes a `p`: `nvme0n1p2`.
pub fn partition_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayLayout {
    /// `md0`
    pub name: String,
    /// 0, 1, 5, 6 or 10.
    pub level: u8,
    pub members: Vec<Device>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spares: Vec<Device>,
    /// Usable bytes.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeGroupLayout {
    pub name: String,
    /// The physical volumes.
    pub members: Vec<Device>,
    /// Usable bytes (4 MiB extents, one per physical volume kept for metadata).
    pub size: u64,
    pub logical_volumes: Vec<LogicalVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalVolume {
    pub name: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
}

/// A bcache device: a backing device with a cache set on a faster one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BcacheLayout {
    /// `bcache0`
    pub name: String,
    pub backing: Device,
    pub cache: Device,
    pub mode: BcacheMode,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
}

/// Why a template does not resolve on a machine's disks (a plan error for that machine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("the machine has no disks")]
    NoDisks,
    #[error("{wanted} does not fit on {disk} ({size})")]
    DoesNotFit {
        /// "efi 512 MiB + boot 1 GiB + root 40 GiB"
        wanted: String,
        disk: String,
        size: String,
    },
    #[error("{key} {selector} matches none of the disks{left}: {disks}")]
    NoMatchingDisk {
        key: String,
        selector: String,
        /// "" or " left" (a custom layout's later disks choose among those not taken).
        left: &'static str,
        disks: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The disk `selector` (a template's `root_device`) picks among `disks`: its index.
pub fn select_disk(
    selector: &crate::config::DiskSelector,
    disks: &[ObservedDisk],
) -> Result<usize, LayoutError> {
    resolve::select(selector, disks, &[], || "root_device".to_string())
}

/// Resolves `template` against `disks` (in the machine's order) for a machine booting with
/// `firmware`.
pub fn resolve_layout(
    template: &StorageTemplate,
    disks: &[ObservedDisk],
    firmware: Firmware,
) -> Result<Layout, LayoutError> {
    resolve::resolve(template, disks, firmware)
}

impl Layout {
    /// The same layout with its disks renamed (`source disk name → destination disk name`):
    /// what a clone of storage gives the destination. A renamed disk loses the source's serial
    /// and by-id path (they were the source disk's); the caller may fill in the destination's.
    pub fn remap_disks(&self, disk_map: &BTreeMap<String, String>) -> Layout {
        let mut layout = self.clone();
        for disk in &mut layout.disks {
            if let Some(renamed) = disk_map.get(&disk.name) {
                disk.name.clone_from(renamed);
                disk.serial = None;
                disk.id_path = None;
            }
        }
        for array in &mut layout.arrays {
            for device in array.members.iter_mut().chain(array.spares.iter_mut()) {
                device.rename_disk(disk_map);
            }
        }
        for group in &mut layout.volume_groups {
            for device in &mut group.members {
                device.rename_disk(disk_map);
            }
        }
        for bcache in &mut layout.bcaches {
            bcache.backing.rename_disk(disk_map);
            bcache.cache.rename_disk(disk_map);
        }
        layout
    }

    /// A compact table for `fleet plan` (one line per disk, partition, array, volume group,
    /// logical volume and bcache device: device, start, size, kind, filesystem, mount point),
    /// each line indented by `indent` spaces.
    pub fn table(&self, indent: usize) -> String {
        table::render(self, indent)
    }

    /// The layout without the disks' serials and by-id paths: what machines with the same
    /// template and the same disk set share (their own disks' identities are kept beside it,
    /// in the plan's deployment section).
    pub fn without_disk_identities(mut self) -> Layout {
        for disk in &mut self.disks {
            disk.serial = None;
            disk.id_path = None;
        }
        self
    }

    /// A short, stable digest of the layout's JSON (16 hex digits): equal layouts, equal
    /// digests, so a plan can show that a template change alters a machine's layout.
    pub fn digest(&self) -> String {
        crate::plan::fingerprint::json_digest(self)
    }
}
