//! `layout = "custom"`: disks with partitions, filesystems, md RAID arrays and LVM volume groups
//! written in the template, and every reference between them checked here, at load, with the
//! place it was written (unknown ids, a device used twice, a mount point twice, no `/`, an array
//! with too few members...). What depends on the machine's disks (sizes, which disk) is left
//! to `plan::layout`.

use super::super::size;
use super::selector;
use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{
    CustomDisk, CustomLogicalVolume, CustomPartition, CustomRaid, CustomVolumeGroup,
    FilesystemSpec, FsType, StorageLayout,
};
use crate::config::read::{check_choice, with_suggestion, Spanned, TableReader};
use crate::config::size::SizeSpec;
use crate::config::syntax::{Item, Span};
use std::collections::BTreeMap;

pub const DISK_KEYS: &[&str] = &[
    "id",
    "select",
    "boot",
    "partitions",
    "fstype",
    "label",
    "mount",
    "mount_options",
];
pub const PARTITION_KEYS: &[&str] = &["id", "size", "fstype", "label", "mount", "mount_options"];
pub const RAID_KEYS: &[&str] = &[
    "id",
    "level",
    "members",
    "spares",
    "fstype",
    "label",
    "mount",
    "mount_options",
];
pub const VOLUME_GROUP_KEYS: &[&str] = &["id", "members", "logical_volumes"];
pub const LOGICAL_VOLUME_KEYS: &[&str] =
    &["name", "size", "fstype", "label", "mount", "mount_options"];

/// The fewest active members of each RAID level (MAAS's rules; RAID 10 takes 3 with md's
/// near layout).
pub const RAID_LEVELS: &[(u8, usize)] = &[(0, 2), (1, 2), (5, 3), (6, 4), (10, 3)];

/// What an id names, for messages and for which references it may satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Disk,
    Partition,
    Raid,
    VolumeGroup,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Disk => "disk",
            Kind::Partition => "partition",
            Kind::Raid => "raid",
            Kind::VolumeGroup => "volume group",
        }
    }
}

struct Declared {
    kind: Kind,
    span: Span,
    /// Where its filesystem was written, if it has one (it cannot also be a member).
    filesystem: Option<Span>,
    /// The first array or volume group that took it.
    used_by: Option<String>,
}

/// Everything the cross-checks need, with spans.
#[derive(Default)]
struct Index {
    ids: BTreeMap<String, Declared>,
    mounts: BTreeMap<String, Span>,
}

pub fn read(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Option<StorageLayout> {
    let mut index = Index::default();
    let disks = disks(reader, &mut index, problems);
    let raids = raids(reader, &mut index, problems);
    let volume_groups = volume_groups(reader, &mut index, problems);
    if !index.mounts.contains_key("/") {
        problems.push(
            Problem::new(
                reader.span,
                format!("{} mounts nothing at `/`", reader.context()),
            )
            .help("give a partition, raid or logical volume `mount = \"/\"`"),
        );
    }
    Some(StorageLayout::Custom {
        disks,
        raids,
        volume_groups,
    })
}

// ---- disks and partitions ----

fn disks(
    reader: &TableReader<'_, '_>,
    index: &mut Index,
    problems: &mut Problems,
) -> Vec<CustomDisk> {
    let items: Vec<Item<'_, '_>> = match reader.array("disks", problems) {
        Some(array) => array.iter().collect(),
        None => {
            if reader.item("disks").is_none() {
                problems.error(reader.span, format!("{} has no `disks` (a custom layout needs at least one: [[storage_templates.NAME.disks]])", reader.context()));
            }
            return Vec::new();
        }
    };
    let mut disks = Vec::with_capacity(items.len());
    let mut boot: Option<Span> = None;
    for item in &items {
        let Some(disk) = TableReader::from_item(item, "a custom layout's disk", problems) else {
            continue;
        };
        if let Some(read) = read_disk(&disk, index, problems) {
            if read.boot {
                check_single_boot(&disk, &mut boot, problems);
            }
            disks.push(read);
        }
    }
    if items.is_empty() {
        problems.error(reader.span, "a custom layout needs at least one disk");
    }
    disks
}

fn check_single_boot(disk: &TableReader<'_, '_>, boot: &mut Option<Span>, problems: &mut Problems) {
    let span = disk.key_span("boot").unwrap_or(disk.span);
    match boot {
        Some(first) => problems.push(
            Problem::new(span, "only one disk can be the boot disk")
                .related(*first, "the boot disk"),
        ),
        None => *boot = Some(span),
    }
}

fn read_disk(
    disk: &TableReader<'_, '_>,
    index: &mut Index,
    problems: &mut Problems,
) -> Option<CustomDisk> {
    disk.check_keys(DISK_KEYS, problems);
    let id = disk.required_string("id", problems)?;
    let filesystem = filesystem(disk, index, problems);
    declare(
        index,
        &id,
        Kind::Disk,
        filesystem_span(disk, &filesystem),
        problems,
    );
    let boot = disk
        .boolean("boot", problems)
        .is_some_and(|flag| flag.value);
    let partitions = partitions(disk, index, problems);
    if !partitions.is_empty() && filesystem.fstype.is_some() {
        problems.error(
            disk.key_span("fstype").unwrap_or(disk.span),
            format!(
                "disk `{}` has partitions: put the filesystem on one of them",
                id.value
            ),
        );
    }
    if boot && filesystem.fstype.is_some() {
        problems.error(
            disk.key_span("fstype").unwrap_or(disk.span),
            format!("the boot disk `{}` needs a partition table (for the EFI partition or boot loader): give it partitions", id.value),
        );
    }
    Some(CustomDisk {
        id: id.value.to_string(),
        select: disk
            .item("select")
            .and_then(|item| selector::read(&item, "select", problems)),
        boot,
        partitions,
        filesystem,
    })
}

fn partitions(
    disk: &TableReader<'_, '_>,
    index: &mut Index,
    problems: &mut Problems,
) -> Vec<CustomPartition> {
    let Some(array) = disk.array("partitions", problems) else {
        return Vec::new();
    };
    let items: Vec<Item<'_, '_>> = array.iter().collect();
    let mut partitions = Vec::with_capacity(items.len());
    let mut percent_total = 0u32;
    for (position, item) in items.iter().enumerate() {
        let Some(table) = TableReader::from_item(item, "a partition", problems) else {
            continue;
        };
        table.check_keys(PARTITION_KEYS, problems);
        let size = size(&table, "size", problems);
        if size.is_none() && table.item("size").is_none() && position + 1 < items.len() {
            problems.error(
                item.span,
                "only the last partition of a disk may leave out `size` (it takes the rest of the disk)",
            );
        }
        if let Some(Spanned {
            value: SizeSpec::Percent(percent),
            ..
        }) = size
        {
            percent_total += u32::from(percent);
        }
        let filesystem = filesystem(&table, index, problems);
        let id = table.string("id", problems);
        if let Some(id) = &id {
            declare(
                index,
                id,
                Kind::Partition,
                filesystem_span(&table, &filesystem),
                problems,
            );
        }
        partitions.push(CustomPartition {
            id: id.map(|id| id.value.to_string()),
            size: size.map(|size| size.value),
            filesystem,
        });
    }
    if percent_total > 100 {
        let span = disk.key_span("partitions").unwrap_or(disk.span);
        problems.error(
            span,
            format!("the partitions' percentages add up to {percent_total}%, more than the disk"),
        );
    }
    partitions
}

// ---- arrays and volume groups ----

fn raids(
    reader: &TableReader<'_, '_>,
    index: &mut Index,
    problems: &mut Problems,
) -> Vec<CustomRaid> {
    each_table(reader, "raids", "a raid", problems, |table, problems| {
        read_raid(table, index, problems)
    })
}

/// Reads each table of the array `key` with `read` (an item that is not a table is reported
/// and skipped, as is a table `read` refuses).
fn each_table<T>(
    reader: &TableReader<'_, '_>,
    key: &str,
    what: &str,
    problems: &mut Problems,
    mut read: impl FnMut(&TableReader<'_, '_>, &mut Problems) -> Option<T>,
) -> Vec<T> {
    let Some(array) = reader.array(key, problems) else {
        return Vec::new();
    };
    let mut read_tables = Vec::new();
    for item in array.iter() {
        if let Some(table) = TableReader::from_item(&item, what, problems) {
            read_tables.extend(read(&table, problems));
        }
    }
    read_tables
}

fn read_raid(
    table: &TableReader<'_, '_>,
    index: &mut Index,
    problems: &mut Problems,
) -> Option<CustomRaid> {
    table.check_keys(RAID_KEYS, problems);
    let id = table.required_string("id", problems);
    let level = table
        .required("level", problems)
        .and(table.integer("level", 0, 255, problems));
    let minimum = level
        .as_ref()
        .and_then(|level| raid_minimum(level, problems));
    let owner = format!("raid `{}`", id.as_ref().map_or("?", |id| id.value));
    let kinds = [Kind::Disk, Kind::Partition];
    let spares = members(table, "spares", &owner, &kinds, index, problems);
    let members = members(table, "members", &owner, &kinds, index, problems);
    // Counted as written: a member refused above is already reported.
    let written = |key| table.string_list(key, &mut Problems::default()).len();
    if let (Some(level), Some(minimum)) = (&level, minimum) {
        check_raid_counts(
            table,
            level,
            minimum,
            written("members"),
            written("spares"),
            problems,
        );
    }
    let filesystem = filesystem(table, index, problems);
    let id = id?;
    declare(
        index,
        &id,
        Kind::Raid,
        filesystem_span(table, &filesystem),
        problems,
    );
    Some(CustomRaid {
        id: id.value.to_string(),
        level: level?.value as u8,
        members,
        spares,
        filesystem,
    })
}

fn raid_minimum(level: &Spanned<i64>, problems: &mut Problems) -> Option<usize> {
    let found = RAID_LEVELS
        .iter()
        .find(|(known, _)| i64::from(*known) == level.value);
    if found.is_none() {
        problems.error(
            level.span,
            format!("RAID level {} is not one of 0, 1, 5, 6, 10", level.value),
        );
    }
    found.map(|(_, minimum)| *minimum)
}

fn check_raid_counts(
    table: &TableReader<'_, '_>,
    level: &Spanned<i64>,
    minimum: usize,
    members: usize,
    spares: usize,
    problems: &mut Problems,
) {
    let span = table.item("members").map_or(table.span, |item| item.span);
    if members < minimum {
        problems.error(
            span,
            format!(
                "RAID level {} needs at least {minimum} members, and this raid has {members}",
                level.value
            ),
        );
    }
    if level.value == 0 && spares > 0 {
        let span = table.item("spares").map_or(table.span, |item| item.span);
        problems.error(
            span,
            "RAID level 0 has no redundancy to rebuild: it takes no spares",
        );
    }
}

fn volume_groups(
    reader: &TableReader<'_, '_>,
    index: &mut Index,
    problems: &mut Problems,
) -> Vec<CustomVolumeGroup> {
    each_table(
        reader,
        "volume_groups",
        "a volume group",
        problems,
        |table, problems| read_volume_group(table, index, problems),
    )
}

fn read_volume_group(
    table: &TableReader<'_, '_>,
    index: &mut Index,
    problems: &mut Problems,
) -> Option<CustomVolumeGroup> {
    table.check_keys(VOLUME_GROUP_KEYS, problems);
    let id = table.required_string("id", problems);
    let owner = format!("volume group `{}`", id.as_ref().map_or("?", |id| id.value));
    let kinds = [Kind::Disk, Kind::Partition, Kind::Raid];
    let members = members(table, "members", &owner, &kinds, index, problems);
    if table
        .string_list("members", &mut Problems::default())
        .is_empty()
    {
        problems.error(table.span, format!("{owner} has no `members`"));
    }
    let logical_volumes = logical_volumes(table, index, problems);
    let id = id?;
    declare(index, &id, Kind::VolumeGroup, None, problems);
    Some(CustomVolumeGroup {
        id: id.value.to_string(),
        members,
        logical_volumes,
    })
}

fn logical_volumes(
    group: &TableReader<'_, '_>,
    index: &mut Index,
    problems: &mut Problems,
) -> Vec<CustomLogicalVolume> {
    let Some(array) = group.array("logical_volumes", problems) else {
        return Vec::new();
    };
    let mut volumes: Vec<CustomLogicalVolume> = Vec::new();
    let mut rest: Option<Span> = None;
    let mut percent_total = 0u32;
    for item in array.iter() {
        let Some(table) = TableReader::from_item(&item, "a logical volume", problems) else {
            continue;
        };
        table.check_keys(LOGICAL_VOLUME_KEYS, problems);
        let name = table.required_string("name", problems);
        let size = size(&table, "size", problems);
        match size.as_ref().map(|size| size.value) {
            Some(SizeSpec::Percent(percent)) => percent_total += u32::from(percent),
            Some(SizeSpec::Bytes(_)) => {}
            None if table.item("size").is_some() => {}
            None => {
                if let Some(first) = rest {
                    problems.push(
                        Problem::new(item.span, "only one logical volume of a volume group may leave out `size` (it takes what the others leave)")
                            .related(first, "this one already does"),
                    );
                }
                rest = Some(item.span);
            }
        }
        let filesystem = filesystem(&table, index, problems);
        let Some(name) = name else { continue };
        if volumes.iter().any(|volume| volume.name == name.value) {
            problems.error(
                name.span,
                format!(
                    "logical volume `{}` is declared twice in this volume group",
                    name.value
                ),
            );
        }
        volumes.push(CustomLogicalVolume {
            name: name.value.to_string(),
            size: size.map(|size| size.value),
            filesystem,
        });
    }
    if percent_total > 100 {
        let span = group.key_span("logical_volumes").unwrap_or(group.span);
        problems.error(span, format!("the logical volumes' percentages add up to {percent_total}%, more than the volume group"));
    }
    volumes
}

// ---- references ----

/// Reads `key` (a list of ids) and checks each: declared above, of a kind that fits, without a
/// filesystem, not taken by another array or volume group.
fn members(
    table: &TableReader<'_, '_>,
    key: &str,
    owner: &str,
    kinds: &[Kind],
    index: &mut Index,
    problems: &mut Problems,
) -> Vec<String> {
    let written = table.string_list(key, problems);
    let mut members = Vec::with_capacity(written.len());
    for member in written {
        if check_member(&member, owner, kinds, index, problems) {
            members.push(member.value.to_string());
        }
    }
    members
}

fn check_member(
    member: &Spanned<&str>,
    owner: &str,
    kinds: &[Kind],
    index: &mut Index,
    problems: &mut Problems,
) -> bool {
    let Some(declared) = index.ids.get_mut(member.value) else {
        let message = format!(
            "{owner}: `{}` is not the id of a disk, partition or raid declared above it",
            member.value
        );
        let candidates: Vec<&str> = index.ids.keys().map(String::as_str).collect();
        problems.push(with_suggestion(
            Problem::new(member.span, message),
            member.value,
            &candidates,
        ));
        return false;
    };
    if !kinds.contains(&declared.kind) {
        let message = format!(
            "{owner}: `{}` is a {}, which cannot be a member here",
            member.value,
            declared.kind.noun()
        );
        problems.push(Problem::new(member.span, message).related(declared.span, "declared here"));
        return false;
    }
    if let Some(filesystem) = declared.filesystem {
        let message = format!(
            "{owner}: `{}` has a filesystem, so it cannot also be a member",
            member.value
        );
        problems.push(Problem::new(member.span, message).related(filesystem, "the filesystem"));
        return false;
    }
    if let Some(user) = &declared.used_by {
        let message = format!("{owner}: `{}` is already a member of {user}", member.value);
        problems.push(Problem::new(member.span, message));
        return false;
    }
    declared.used_by = Some(owner.to_string());
    true
}

fn declare(
    index: &mut Index,
    id: &Spanned<&str>,
    kind: Kind,
    filesystem: Option<Span>,
    problems: &mut Problems,
) {
    if let Some(first) = index.ids.get(id.value) {
        let message = format!(
            "`{}` is already the id of a {}",
            id.value,
            first.kind.noun()
        );
        problems.push(Problem::new(id.span, message).related(first.span, "first declared here"));
        return;
    }
    let declared = Declared {
        kind,
        span: id.span,
        filesystem,
        used_by: None,
    };
    index.ids.insert(id.value.to_string(), declared);
}

// ---- filesystems ----

fn filesystem_span(table: &TableReader<'_, '_>, filesystem: &FilesystemSpec) -> Option<Span> {
    filesystem.fstype.and(table.key_span("fstype"))
}

/// `fstype`, `label`, `mount`, `mount_options` of one device, checked alone and for mount
/// points used twice.
fn filesystem(
    table: &TableReader<'_, '_>,
    index: &mut Index,
    problems: &mut Problems,
) -> FilesystemSpec {
    let fstype = table.string("fstype", problems).and_then(|text| {
        let known = check_choice("fstype", &text, FsType::NAMES, problems);
        known.then(|| FsType::parse(text.value)).flatten()
    });
    let label = table.string("label", problems);
    let mount = table.string("mount", problems);
    let mount_options = table.string("mount_options", problems);
    if fstype.is_none() && table.item("fstype").is_none() {
        for key in ["label", "mount", "mount_options"] {
            if let Some(span) = table.key_span(key) {
                problems.error(span, format!("`{key}` needs an `fstype`"));
            }
        }
    }
    if let (Some(fstype), Some(label)) = (fstype, &label) {
        check_label(fstype, label, problems);
    }
    if let Some(mount) = &mount {
        check_mount(fstype, mount, index, problems);
    }
    FilesystemSpec {
        fstype,
        label: label.map(|label| label.value.to_string()),
        mount: mount.map(|mount| mount.value.to_string()),
        mount_options: mount_options.map(|options| options.value.to_string()),
    }
}

fn check_label(fstype: FsType, label: &Spanned<&str>, problems: &mut Problems) {
    let length = label.value.chars().count();
    if length > fstype.max_label() {
        problems.error(
            label.span,
            format!(
                "label `{}` has {length} characters; {} takes at most {}",
                label.value,
                fstype.as_str(),
                fstype.max_label()
            ),
        );
    }
}

fn check_mount(
    fstype: Option<FsType>,
    mount: &Spanned<&str>,
    index: &mut Index,
    problems: &mut Problems,
) {
    if fstype == Some(FsType::Swap) {
        problems.error(mount.span, "swap is not mounted: leave out `mount`");
        return;
    }
    if !mount.value.starts_with('/') || mount.value.contains("//") {
        problems.error(
            mount.span,
            format!("mount point `{}` must be an absolute path", mount.value),
        );
        return;
    }
    if mount.value == "/boot/efi" {
        let message = "fleet makes the EFI partition (`/boot/efi`) itself on UEFI machines: set its size with `efi_size`";
        problems.error(mount.span, message);
        return;
    }
    match index.mounts.get(mount.value) {
        Some(first) => problems.push(
            Problem::new(
                mount.span,
                format!("mount point `{}` is used twice", mount.value),
            )
            .related(*first, "first mounted here"),
        ),
        None => {
            index.mounts.insert(mount.value.to_string(), mount.span);
        }
    }
}
