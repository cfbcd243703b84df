//! Resolution: which disks, which partitions at which bytes, and the volumes built on them.

use super::{
    ArrayLayout, BcacheLayout, Device, DiskLayout, Filesystem, Layout, LayoutError, LayoutKind,
    LogicalVolume, Partition, PartitionKind, PartitionTable, VolumeGroupLayout,
};
use crate::config::{
    CustomDisk, CustomRaid, CustomVolumeGroup, DiskPick, DiskSelector, FilesystemSpec, FsType,
    SizeSpec, StorageLayout, StorageTemplate,
};
use crate::plan::{Firmware, ObservedDisk};
use std::borrow::Cow;
use std::fmt::Write as _;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;
/// Every partition's start and size is a multiple of this (MAAS's PARTITION_ALIGNMENT_SIZE).
pub const ALIGNMENT: u64 = 4 * MIB;
/// The first 4 MiB hold the partition table (and `bios_grub`): MAAS's INITIAL_PARTITION_OFFSET.
pub const FIRST_PARTITION_START: u64 = 4 * MIB;
/// Left free at the end of each disk, for the backup GPT (MAAS's END_OF_PARTITION_TABLE_SPACE).
const END_RESERVE: u64 = MIB;
/// Beyond this an msdos table cannot address the disk: BIOS machines get GPT there.
pub const MBR_LIMIT: u64 = 2 * TIB;
const BIOS_GRUB_START: u64 = MIB;
const BIOS_GRUB_SIZE: u64 = MIB;
const DEFAULT_EFI: u64 = 512 * MIB;
const MINIMUM_ROOT: u64 = 3 * GIB;
const RAID_SUPERBLOCK: u64 = 128 * 1024;
const EXTENT: u64 = 4 * MIB;

pub fn resolve(
    template: &StorageTemplate,
    disks: &[ObservedDisk],
    firmware: Firmware,
) -> Result<Layout, LayoutError> {
    let mut layout = Layout {
        template: template.name.clone(),
        kind: LayoutKind::Blank,
        firmware,
        ..Layout::default()
    };
    if matches!(template.layout, StorageLayout::Blank) {
        return Ok(layout);
    }
    if disks.is_empty() {
        return Err(LayoutError::NoDisks);
    }
    let efi = template.efi_size.unwrap_or(DEFAULT_EFI);
    match &template.layout {
        StorageLayout::Blank => {}
        StorageLayout::Flat => flat(template, disks, efi, &mut layout)?,
        StorageLayout::Lvm {
            vg_name,
            lv_name,
            lv_size,
        } => lvm(
            template,
            disks,
            efi,
            (vg_name, lv_name, *lv_size),
            &mut layout,
        )?,
        StorageLayout::Bcache { .. } => bcache(template, disks, efi, &mut layout)?,
        StorageLayout::Custom {
            disks: wanted,
            raids,
            volume_groups,
        } => custom(wanted, raids, volume_groups, disks, efi, &mut layout)?,
    }
    layout
        .disks
        .sort_by_key(|disk| disks.iter().position(|observed| observed.name == disk.name));
    Ok(layout)
}

// ---- the basic layouts ----

/// EFI (or bios_grub), an optional /boot, and the root partition of `kind` on the boot disk.
struct Basic<'d> {
    disk: Carver<'d>,
    root_number: u32,
}

fn basic<'d>(
    template: &StorageTemplate,
    disks: &'d [ObservedDisk],
    efi: u64,
    firmware: Firmware,
    root_kind: PartitionKind,
) -> Result<Basic<'d>, LayoutError> {
    let boot_disk = match &template.root_device {
        Some(selector) => select(selector, disks, &[], || "root_device".into())?,
        None => 0,
    };
    let mut disk = Carver::new(&disks[boot_disk], firmware, true, efi);
    if let Some(boot_size) = template.boot_size {
        disk.carve(
            Name::Called("boot"),
            boot_size,
            PartitionKind::Linux,
            Some(fs(FsType::Ext4, "boot", "/boot")),
        )?;
    }
    let left = disk.left();
    let root_size = align_down(template.root_size.map_or(left, |size| size.bytes_of(left)));
    if root_size < MINIMUM_ROOT && root_size <= left {
        let before = match disk.wanted_so_far() {
            wanted if wanted.is_empty() => "nothing else".to_string(),
            wanted => wanted,
        };
        return Err(LayoutError::Invalid(format!(
            "root needs at least 3 GiB and gets {} on {} ({}) after {before}",
            show(root_size),
            disk.disk.name,
            show(disk.disk.size_bytes.max(0) as u64),
        )));
    }
    let root_number = disk.carve(Name::Called("root"), root_size, root_kind, None)?;
    Ok(Basic { disk, root_number })
}

fn flat(
    template: &StorageTemplate,
    disks: &[ObservedDisk],
    efi: u64,
    layout: &mut Layout,
) -> Result<(), LayoutError> {
    let mut basic = basic(template, disks, efi, layout.firmware, PartitionKind::Linux)?;
    basic
        .disk
        .set_filesystem(basic.root_number, fs(FsType::Ext4, "root", "/"));
    layout.kind = LayoutKind::Flat;
    layout.disks.push(basic.disk.finish());
    Ok(())
}

fn lvm(
    template: &StorageTemplate,
    disks: &[ObservedDisk],
    efi: u64,
    (vg_name, lv_name, lv_size): (&str, &str, Option<SizeSpec>),
    layout: &mut Layout,
) -> Result<(), LayoutError> {
    let basic = basic(template, disks, efi, layout.firmware, PartitionKind::Lvm)?;
    let disk = basic.disk.finish();
    let pv = disk.partitions.last().map_or(0, |partition| partition.size);
    let group_size = volume_group_size(&[pv]);
    let size = align_down(lv_size.map_or(group_size, |size| size.bytes_of(group_size)));
    if size > group_size {
        return Err(LayoutError::DoesNotFit {
            wanted: format!("{lv_name} {}", show(size)),
            disk: format!("volume group {vg_name}"),
            size: show(group_size),
        });
    }
    if size < MINIMUM_ROOT {
        return Err(LayoutError::Invalid(format!(
            "logical volume {lv_name} needs at least 3 GiB and gets {} of {vg_name} ({})",
            show(size),
            show(group_size)
        )));
    }
    layout.volume_groups.push(VolumeGroupLayout {
        name: vg_name.to_string(),
        members: vec![Device::Partition {
            disk: disk.name.clone(),
            number: basic.root_number,
        }],
        size: group_size,
        logical_volumes: vec![LogicalVolume {
            name: lv_name.to_string(),
            size,
            filesystem: Some(fs(FsType::Ext4, "root", "/")),
        }],
    });
    layout.kind = LayoutKind::Lvm;
    layout.disks.push(disk);
    Ok(())
}

fn bcache(
    template: &StorageTemplate,
    disks: &[ObservedDisk],
    efi: u64,
    layout: &mut Layout,
) -> Result<(), LayoutError> {
    let StorageLayout::Bcache {
        cache_device,
        cache_mode,
        cache_size,
        cache_no_part,
    } = &template.layout
    else {
        return Ok(());
    };
    let boot_disk = match &template.root_device {
        Some(selector) => select(selector, disks, &[], || "root_device".into())?,
        None => 0,
    };
    let cache_disk = match cache_device {
        Some(selector) => Some(select(selector, disks, &[boot_disk], || {
            "cache_device".into()
        })?),
        None => smallest_ssd(disks, boot_disk),
    };
    let Some(cache_disk) = cache_disk else {
        // MAAS's rule: no cache disk, the flat layout.
        return flat(template, disks, efi, layout);
    };
    let basic = basic(
        template,
        disks,
        efi,
        layout.firmware,
        PartitionKind::BcacheBacking,
    )?;
    let backing_disk = basic.disk.finish();
    let size = backing_disk.partitions.last().map_or(0, |p| p.size);
    let backing = Device::Partition {
        disk: backing_disk.name.clone(),
        number: basic.root_number,
    };
    let (cache_layout, cache) = cache_set(
        &disks[cache_disk],
        layout.firmware,
        *cache_size,
        *cache_no_part,
    )?;
    layout.bcaches.push(BcacheLayout {
        name: "bcache0".to_string(),
        backing,
        cache,
        mode: *cache_mode,
        size,
        filesystem: Some(fs(FsType::Ext4, "root", "/")),
    });
    layout.kind = LayoutKind::Bcache;
    layout.disks.push(backing_disk);
    layout.disks.push(cache_layout);
    Ok(())
}

/// MAAS's default cache disk: the smallest disk tagged ssd other than the boot disk.
fn smallest_ssd(disks: &[ObservedDisk], boot_disk: usize) -> Option<usize> {
    (0..disks.len())
        .filter(|&at| at != boot_disk && disks[at].rotational == Some(false))
        .min_by_key(|&at| disks[at].size_bytes)
}

fn cache_set(
    disk: &ObservedDisk,
    firmware: Firmware,
    size: Option<SizeSpec>,
    no_part: bool,
) -> Result<(DiskLayout, Device), LayoutError> {
    if no_part {
        let layout = whole_disk(disk, None);
        let device = Device::Disk {
            disk: disk.name.clone(),
        };
        return Ok((layout, device));
    }
    let mut carver = Carver::new(disk, firmware, false, 0);
    let left = carver.left();
    let bytes = size.map_or(left, |size| size.bytes_of(left));
    let number = carver.carve(
        Name::Called("cache"),
        bytes,
        PartitionKind::BcacheCache,
        None,
    )?;
    let device = Device::Partition {
        disk: disk.name.clone(),
        number,
    };
    Ok((carver.finish(), device))
}

// ---- custom layouts ----

fn custom(
    wanted: &[CustomDisk],
    raids: &[CustomRaid],
    groups: &[CustomVolumeGroup],
    disks: &[ObservedDisk],
    efi: u64,
    layout: &mut Layout,
) -> Result<(), LayoutError> {
    let boot = wanted.iter().position(|disk| disk.boot).unwrap_or(0);
    let mut taken: Vec<usize> = Vec::with_capacity(wanted.len());
    // What each id of the template became, with its size.
    let mut devices: Vec<(&str, Device, u64)> = Vec::new();
    for (position, spec) in wanted.iter().enumerate() {
        let any = DiskSelector::default();
        let selector = spec.select.as_ref().unwrap_or(&any);
        let chosen = select(selector, disks, &taken, || {
            format!("disk `{}`: select", spec.id)
        })?;
        taken.push(chosen);
        let disk = &disks[chosen];
        let is_boot = position == boot;
        if spec.partitions.is_empty() && !is_boot {
            let size = disk.size_bytes.max(0) as u64;
            devices.push((
                &spec.id,
                Device::Disk {
                    disk: disk.name.clone(),
                },
                size,
            ));
            layout
                .disks
                .push(whole_disk(disk, filesystem(&spec.filesystem)));
            continue;
        }
        let mut carver = Carver::new(disk, layout.firmware, is_boot, efi);
        let base = carver.left();
        for (index, partition) in spec.partitions.iter().enumerate() {
            let bytes = partition
                .size
                .map_or(carver.left(), |size| size.bytes_of(base));
            let what = partition.id.as_deref().map_or(
                Name::Unnamed {
                    disk: &spec.id,
                    position: index + 1,
                },
                Name::Called,
            );
            let kind = partition_kind(&partition.filesystem);
            let number = carver.carve(what, bytes, kind, filesystem(&partition.filesystem))?;
            if let Some(id) = &partition.id {
                let size = carver.partitions.last().map_or(0, |p| p.size);
                let device = Device::Partition {
                    disk: disk.name.clone(),
                    number,
                };
                devices.push((id, device, size));
            }
        }
        carver.check_msdos_count()?;
        layout.disks.push(carver.finish());
    }
    for raid in raids {
        layout
            .arrays
            .push(array(raid, &mut devices, &mut layout.disks)?);
    }
    for group in groups {
        let group = volume_group(group, &devices, &mut layout.disks)?;
        layout.volume_groups.push(group);
    }
    layout.kind = LayoutKind::Custom;
    Ok(())
}

fn partition_kind(spec: &FilesystemSpec) -> PartitionKind {
    match spec.fstype {
        Some(FsType::Swap) => PartitionKind::Swap,
        _ => PartitionKind::Linux,
    }
}

fn members<'d>(
    ids: &[String],
    devices: &'d [(&str, Device, u64)],
) -> Vec<&'d (&'d str, Device, u64)> {
    ids.iter()
        .filter_map(|id| devices.iter().find(|(name, ..)| name == id))
        .collect()
}

fn array<'t>(
    raid: &'t CustomRaid,
    devices: &mut Vec<(&'t str, Device, u64)>,
    disks: &mut [DiskLayout],
) -> Result<ArrayLayout, LayoutError> {
    let active = members(&raid.members, devices);
    let spares = members(&raid.spares, devices);
    let smallest = active.iter().map(|(.., size)| *size).min().unwrap_or(0);
    let count = active.len() as u64;
    let size = match raid.level {
        0 => active.iter().map(|(.., size)| *size).sum::<u64>() - RAID_SUPERBLOCK * count,
        1 => smallest.saturating_sub(RAID_SUPERBLOCK),
        5 => (smallest * count.saturating_sub(1)).saturating_sub(RAID_SUPERBLOCK),
        6 => (smallest * count.saturating_sub(2)).saturating_sub(RAID_SUPERBLOCK),
        _ => (smallest * count / 2).saturating_sub(RAID_SUPERBLOCK),
    };
    let members: Vec<Device> = active.iter().map(|(_, device, _)| device.clone()).collect();
    let spares: Vec<Device> = spares.iter().map(|(_, device, _)| device.clone()).collect();
    for device in members.iter().chain(&spares) {
        mark(disks, device, PartitionKind::Raid);
    }
    let name = raid.id.clone();
    devices.push((&raid.id, Device::Array { name: name.clone() }, size));
    Ok(ArrayLayout {
        name,
        level: raid.level,
        members,
        spares,
        size,
        filesystem: filesystem(&raid.filesystem),
    })
}

fn volume_group(
    group: &CustomVolumeGroup,
    devices: &[(&str, Device, u64)],
    disks: &mut [DiskLayout],
) -> Result<VolumeGroupLayout, LayoutError> {
    let physical = members(&group.members, devices);
    let sizes: Vec<u64> = physical.iter().map(|(.., size)| *size).collect();
    let size = volume_group_size(&sizes);
    let members: Vec<Device> = physical
        .iter()
        .map(|(_, device, _)| device.clone())
        .collect();
    for device in &members {
        mark(disks, device, PartitionKind::Lvm);
    }
    let fixed: u64 = group
        .logical_volumes
        .iter()
        .filter_map(|volume| volume.size.map(|spec| align_down(spec.bytes_of(size))))
        .sum();
    if fixed > size {
        let wanted = group
            .logical_volumes
            .iter()
            .filter_map(|volume| {
                Some(format!(
                    "{} {}",
                    volume.name,
                    show(align_down(volume.size?.bytes_of(size)))
                ))
            })
            .collect::<Vec<_>>()
            .join(" + ");
        return Err(LayoutError::DoesNotFit {
            wanted,
            disk: format!("volume group {}", group.id),
            size: show(size),
        });
    }
    let logical_volumes = group
        .logical_volumes
        .iter()
        .map(|volume| LogicalVolume {
            name: volume.name.clone(),
            size: volume
                .size
                .map_or(size - fixed, |spec| align_down(spec.bytes_of(size))),
            filesystem: filesystem(&volume.filesystem),
        })
        .collect();
    Ok(VolumeGroupLayout {
        name: group.id.clone(),
        members,
        size,
        logical_volumes,
    })
}

/// A partition that became an array or volume group member takes that partition type.
fn mark(disks: &mut [DiskLayout], device: &Device, kind: PartitionKind) {
    let Device::Partition { disk, number } = device else {
        return;
    };
    let partition = disks
        .iter_mut()
        .filter(|layout| layout.name == *disk)
        .flat_map(|layout| layout.partitions.iter_mut())
        .find(|partition| partition.number == *number);
    if let Some(partition) = partition {
        partition.kind = kind;
    }
}

/// MAAS's count: whole 4 MiB extents of all physical volumes, less one per volume.
fn volume_group_size(physical_volumes: &[u64]) -> u64 {
    let extents = physical_volumes.iter().sum::<u64>() / EXTENT;
    extents.saturating_sub(physical_volumes.len() as u64) * EXTENT
}

// ---- one disk's partitions ----

/// Lays partitions out on one disk from its first usable byte, keeping what was asked for
/// the message when something does not fit.
struct Carver<'d> {
    disk: &'d ObservedDisk,
    table: PartitionTable,
    boot: bool,
    next: u64,
    end: u64,
    partitions: Vec<Partition>,
    /// What each partition is called in a message (built only on error).
    names: Vec<Name<'d>>,
}

impl<'d> Carver<'d> {
    /// A partition table for `disk`, with the EFI partition (UEFI) or `bios_grub` (BIOS on GPT)
    /// when it is the boot disk.
    fn new(disk: &'d ObservedDisk, firmware: Firmware, boot: bool, efi: u64) -> Carver<'d> {
        let size = disk.size_bytes.max(0) as u64;
        let table = match firmware {
            Firmware::Bios if size <= MBR_LIMIT => PartitionTable::Msdos,
            _ => PartitionTable::Gpt,
        };
        let end = align_down(size.saturating_sub(END_RESERVE)).max(FIRST_PARTITION_START);
        let mut carver = Carver {
            disk,
            table,
            boot,
            next: FIRST_PARTITION_START,
            end,
            partitions: Vec::with_capacity(4),
            names: Vec::with_capacity(4),
        };
        if boot && firmware == Firmware::Bios && table == PartitionTable::Gpt {
            carver.partitions.push(Partition {
                number: 1,
                start: BIOS_GRUB_START,
                size: BIOS_GRUB_SIZE,
                kind: PartitionKind::BiosGrub,
                filesystem: None,
            });
        }
        if boot && firmware == Firmware::Uefi {
            // Cannot fail on a disk with room for anything; a disk smaller than the EFI
            // partition fails at the next partition, naming both.
            let efi_fs = Filesystem {
                fstype: FsType::Vfat,
                label: Some(Cow::Borrowed("efi")),
                mount: Some(Cow::Borrowed("/boot/efi")),
                mount_options: None,
            };
            let _ = carver.carve(Name::Called("efi"), efi, PartitionKind::Esp, Some(efi_fs));
        }
        carver
    }

    fn left(&self) -> u64 {
        self.end.saturating_sub(self.next)
    }

    /// Adds a partition of `size` (rounded down to 4 MiB) after the last; its number.
    fn carve(
        &mut self,
        what: Name<'d>,
        size: u64,
        kind: PartitionKind,
        filesystem: Option<Filesystem>,
    ) -> Result<u32, LayoutError> {
        let size = align_down(size);
        if size == 0 || size > self.left() {
            let mut wanted = self.wanted_so_far();
            if !wanted.is_empty() {
                wanted.push_str(" + ");
            }
            let _ = write!(wanted, "{what} {}", show(size));
            return Err(LayoutError::DoesNotFit {
                wanted,
                disk: self.disk.name.clone(),
                size: show(self.disk.size_bytes.max(0) as u64),
            });
        }
        self.names.push(what);
        let number = self.partitions.len() as u32 + 1;
        self.partitions.push(Partition {
            number,
            start: self.next,
            size,
            kind,
            filesystem,
        });
        self.next += size;
        Ok(number)
    }

    /// "efi 512 MiB + boot 1 GiB": the partitions carved so far (bios_grub aside).
    fn wanted_so_far(&self) -> String {
        let carved = self
            .partitions
            .iter()
            .filter(|p| p.kind != PartitionKind::BiosGrub);
        let parts: Vec<String> = self
            .names
            .iter()
            .zip(carved)
            .map(|(name, partition)| format!("{name} {}", show(partition.size)))
            .collect();
        parts.join(" + ")
    }

    fn set_filesystem(&mut self, number: u32, filesystem: Filesystem) {
        if let Some(partition) = self.partitions.iter_mut().find(|p| p.number == number) {
            partition.filesystem = Some(filesystem);
        }
    }

    /// msdos holds four primary partitions; fleet makes no extended ones.
    fn check_msdos_count(&self) -> Result<(), LayoutError> {
        if self.table == PartitionTable::Msdos && self.partitions.len() > 4 {
            return Err(LayoutError::Invalid(format!(
                "{} partitions on {}, and an msdos partition table (BIOS, disk up to 2 TiB) holds 4",
                self.partitions.len(),
                self.disk.name
            )));
        }
        Ok(())
    }

    fn finish(self) -> DiskLayout {
        DiskLayout {
            name: self.disk.name.clone(),
            serial: self.disk.serial.clone(),
            id_path: self.disk.id_path.clone(),
            size: self.disk.size_bytes.max(0) as u64,
            boot: self.boot,
            table: Some(self.table),
            partitions: self.partitions,
            filesystem: None,
        }
    }
}

/// A partition's name in messages: fixed (`efi`, `root`), its id, or its place on its disk.
#[derive(Clone, Copy)]
enum Name<'d> {
    Called(&'d str),
    Unnamed { disk: &'d str, position: usize },
}

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Name::Called(name) => f.write_str(name),
            Name::Unnamed { disk, position } => write!(f, "{disk} partition {position}"),
        }
    }
}

fn whole_disk(disk: &ObservedDisk, filesystem: Option<Filesystem>) -> DiskLayout {
    DiskLayout {
        name: disk.name.clone(),
        serial: disk.serial.clone(),
        id_path: disk.id_path.clone(),
        size: disk.size_bytes.max(0) as u64,
        boot: false,
        table: None,
        partitions: Vec::new(),
        filesystem,
    }
}

// ---- disk selection ----

/// The disk `selector` means among those not `taken`: every key given must match, then `pick`.
pub fn select(
    selector: &DiskSelector,
    disks: &[ObservedDisk],
    taken: &[usize],
    key: impl Fn() -> String,
) -> Result<usize, LayoutError> {
    let mut matching = (0..disks.len())
        .filter(|at| !taken.contains(at))
        .filter(|&at| matches(selector, &disks[at], at));
    let chosen = match selector.pick {
        DiskPick::First => matching.next(),
        DiskPick::Smallest => matching.min_by_key(|&at| disks[at].size_bytes),
        DiskPick::Largest => matching.max_by_key(|&at| (disks[at].size_bytes, usize::MAX - at)),
    };
    chosen.ok_or_else(|| LayoutError::NoMatchingDisk {
        key: key(),
        selector: describe_selector(selector),
        left: if taken.is_empty() { "" } else { " left" },
        disks: (0..disks.len())
            .filter(|at| !taken.contains(at))
            .map(|at| describe_disk(&disks[at]))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn matches(selector: &DiskSelector, disk: &ObservedDisk, position: usize) -> bool {
    let size = disk.size_bytes.max(0) as u64;
    let same = |wanted: &Option<String>, found: &Option<String>| {
        wanted
            .as_ref()
            .is_none_or(|wanted| found.as_ref() == Some(wanted))
    };
    selector.name.as_ref().is_none_or(|name| *name == disk.name)
        && same(&selector.serial, &disk.serial)
        && same(&selector.id_path, &disk.id_path)
        && same(&selector.model, &disk.model)
        && same(&selector.bus, &disk.bus)
        && selector
            .rotational
            .is_none_or(|r| disk.rotational == Some(r))
        && selector.min_size.is_none_or(|min| size >= min)
        && selector.max_size.is_none_or(|max| size <= max)
        && selector
            .index
            .is_none_or(|index| index as usize == position)
}

/// `{ serial = "X", rotational = false }`, as the fleet file writes it.
fn describe_selector(selector: &DiskSelector) -> String {
    let mut keys: Vec<String> = Vec::new();
    let text = [
        ("name", &selector.name),
        ("serial", &selector.serial),
        ("id_path", &selector.id_path),
        ("model", &selector.model),
        ("bus", &selector.bus),
    ];
    for (key, value) in text {
        if let Some(value) = value {
            keys.push(format!("{key} = \"{value}\""));
        }
    }
    if let Some(rotational) = selector.rotational {
        keys.push(format!("rotational = {rotational}"));
    }
    for (key, value) in [
        ("min_size", selector.min_size),
        ("max_size", selector.max_size),
    ] {
        if let Some(value) = value {
            keys.push(format!("{key} = \"{}\"", crate::config::human_bytes(value)));
        }
    }
    if let Some(index) = selector.index {
        keys.push(format!("index = {index}"));
    }
    if keys.is_empty() {
        return "{}".to_string();
    }
    format!("{{ {} }}", keys.join(", "))
}

/// `sda (32 GiB, serial S1, ssd)`
fn describe_disk(disk: &ObservedDisk) -> String {
    let mut text = format!("{} ({}", disk.name, show(disk.size_bytes.max(0) as u64));
    if let Some(serial) = &disk.serial {
        let _ = write!(text, ", serial {serial}");
    }
    match disk.rotational {
        Some(false) => text.push_str(", ssd"),
        Some(true) => text.push_str(", rotary"),
        None => {}
    }
    text.push(')');
    text
}

// ---- small helpers ----

fn fs(fstype: FsType, label: &'static str, mount: &'static str) -> Filesystem {
    Filesystem {
        fstype,
        label: Some(Cow::Borrowed(label)),
        mount: Some(Cow::Borrowed(mount)),
        mount_options: None,
    }
}

fn filesystem(spec: &FilesystemSpec) -> Option<Filesystem> {
    Some(Filesystem {
        fstype: spec.fstype?,
        label: spec.label.clone().map(Cow::Owned),
        mount: spec.mount.clone().map(Cow::Owned),
        mount_options: spec.mount_options.clone(),
    })
}

pub fn align_down(bytes: u64) -> u64 {
    bytes / ALIGNMENT * ALIGNMENT
}

/// `40 GiB`, `31.5 GiB`, `512 MiB`: exact when whole, else one decimal.
pub fn show(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", 1024)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} B")
}
