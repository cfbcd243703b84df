//! `[storage_templates.NAME]`: how the disks of a deployed machine are laid out.
//!
//! Minimums from the life-cycle reference: EFI partition 512 MiB, boot 512 MiB, root 3 GiB,
//! bcache cache partition 4 MiB (MAAS's). Custom layouts are read and checked in `custom`.

#[path = "storage_custom.rs"]
mod custom;
#[path = "storage_selector.rs"]
mod selector;

use super::{absolute_size, check_minimum, size, Named};
use crate::config::diagnostics::Problems;
use crate::config::model::{BcacheMode, StorageLayout, StorageTemplate};
use crate::config::read::{Spanned, TableReader};
use crate::config::size::{SizeSpec, GIB, MIB};
use std::path::Path;

#[cfg(test)]
pub use custom::{DISK_KEYS, LOGICAL_VOLUME_KEYS, PARTITION_KEYS, RAID_KEYS, VOLUME_GROUP_KEYS};
#[cfg(test)]
pub use selector::SELECTOR_KEYS;

pub const KEYS: &[&str] = &[
    "layout",
    "efi_size",
    "boot_size",
    "root_size",
    "root_device",
    "vg_name",
    "lv_name",
    "lv_size",
    "cache_device",
    "cache_mode",
    "cache_size",
    "cache_no_part",
    "disks",
    "raids",
    "volume_groups",
];

pub const MINIMUM_EFI: u64 = 512 * MIB;
pub const MINIMUM_BOOT: u64 = 512 * MIB;
pub const MINIMUM_ROOT: u64 = 3 * GIB;
pub const MINIMUM_CACHE: u64 = 4 * MIB;

/// Which keys belong to which layout; any other layout's key is an error, not silently ignored.
const LAYOUT_KEYS: &[(&str, &[&str])] = &[
    ("lvm", &["vg_name", "lv_name", "lv_size"]),
    (
        "bcache",
        &["cache_device", "cache_mode", "cache_size", "cache_no_part"],
    ),
    ("custom", &["disks", "raids", "volume_groups"]),
];

pub fn read(
    name: Spanned<String>,
    reader: TableReader<'_, '_>,
    _base_dir: &Path,
    problems: &mut Problems,
) -> Option<Named<StorageTemplate>> {
    reader.check_keys(KEYS, problems);
    let layout_name = reader.required_string("layout", problems)?;
    if !crate::config::read::check_choice("layout", &layout_name, StorageLayout::NAMES, problems) {
        return None;
    }
    check_layout_keys(&reader, layout_name.value, problems);
    let layout = layout(&reader, layout_name.value, problems)?;
    let blank = matches!(layout, StorageLayout::Blank);
    let custom = matches!(layout, StorageLayout::Custom { .. });
    let template = StorageTemplate {
        name: name.value.clone(),
        layout,
        efi_size: minimum_size(
            &reader,
            "efi_size",
            MINIMUM_EFI,
            "the EFI partition",
            problems,
        ),
        boot_size: minimum_size(
            &reader,
            "boot_size",
            MINIMUM_BOOT,
            "the boot partition",
            problems,
        ),
        root_size: root_size(&reader, "root_size", problems),
        root_device: reader
            .item("root_device")
            .and_then(|item| selector::read(&item, "root_device", problems)),
    };
    if blank {
        check_blank_has_no_sizes(&reader, problems);
    }
    if custom {
        check_custom_has_no_root_keys(&reader, problems);
    }
    Some(Named {
        name,
        value: template,
    })
}

fn check_layout_keys(reader: &TableReader<'_, '_>, layout: &str, problems: &mut Problems) {
    for (owner, keys) in LAYOUT_KEYS.iter().filter(|(owner, _)| *owner != layout) {
        for key in keys.iter().copied() {
            if let Some(span) = reader.key_span(key) {
                problems.error(span, format!("`{key}` belongs to layout `{owner}`, and this template's layout is `{layout}`"));
            }
        }
    }
}

/// A blank layout makes no partitions: sizes would be ignored, so they are mistakes. Its
/// `root_device` picks the disk a whole-disk image is written to.
fn check_blank_has_no_sizes(reader: &TableReader<'_, '_>, problems: &mut Problems) {
    for key in ["efi_size", "boot_size", "root_size"] {
        if let Some(span) = reader.key_span(key) {
            problems.error(
                span,
                format!("`{key}` has no meaning with layout `blank` (it makes no partitions; a whole-disk image brings its own)"),
            );
        }
    }
}

/// A custom layout says where root goes with its own partitions and volumes.
fn check_custom_has_no_root_keys(reader: &TableReader<'_, '_>, problems: &mut Problems) {
    for key in ["boot_size", "root_size", "root_device"] {
        if let Some(span) = reader.key_span(key) {
            problems.error(
                span,
                format!("`{key}` has no meaning with layout `custom` (its disks, partitions and volumes say where each filesystem goes)"),
            );
        }
    }
}

fn layout(
    reader: &TableReader<'_, '_>,
    name: &str,
    problems: &mut Problems,
) -> Option<StorageLayout> {
    let layout = match name {
        "flat" => StorageLayout::Flat,
        "blank" => StorageLayout::Blank,
        "lvm" => StorageLayout::Lvm {
            vg_name: reader
                .owned_string("vg_name", problems)
                .unwrap_or_else(StorageLayout::default_vg_name),
            lv_name: reader
                .owned_string("lv_name", problems)
                .unwrap_or_else(StorageLayout::default_lv_name),
            lv_size: root_size(reader, "lv_size", problems),
        },
        "bcache" => bcache(reader, problems),
        _ => custom::read(reader, problems)?,
    };
    Some(layout)
}

fn bcache(reader: &TableReader<'_, '_>, problems: &mut Problems) -> StorageLayout {
    let cache_size = cache_size(reader, problems);
    let cache_no_part = reader.boolean("cache_no_part", problems);
    if let (Some(_), Some(no_part)) = (reader.item("cache_size"), &cache_no_part) {
        if no_part.value {
            problems.error(
                no_part.span,
                "Cannot use cache_size and cache_no_part at the same time.",
            );
        }
    }
    StorageLayout::Bcache {
        cache_device: reader
            .item("cache_device")
            .and_then(|item| selector::read(&item, "cache_device", problems)),
        cache_mode: cache_mode(reader, problems).unwrap_or_default(),
        cache_size,
        cache_no_part: cache_no_part.is_some_and(|flag| flag.value),
    }
}

/// The bcache cache partition: a percentage of the cache disk, or at least 4 MiB.
fn cache_size(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Option<SizeSpec> {
    let size = size(reader, "cache_size", problems)?;
    match size.value {
        SizeSpec::Bytes(bytes) => check_minimum(
            &Spanned::new(bytes, size.span),
            MINIMUM_CACHE,
            "the cache partition",
            problems,
        )
        .then_some(size.value),
        SizeSpec::Percent(_) => Some(size.value),
    }
}

fn cache_mode(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Option<BcacheMode> {
    let mode = reader.choice(
        "cache_mode",
        &["writeback", "writethrough", "writearound"],
        problems,
    )?;
    Some(match mode.value {
        "writeback" => BcacheMode::Writeback,
        "writearound" => BcacheMode::Writearound,
        _ => BcacheMode::Writethrough,
    })
}

fn minimum_size(
    reader: &TableReader<'_, '_>,
    key: &str,
    minimum: u64,
    what: &str,
    problems: &mut Problems,
) -> Option<u64> {
    let size = absolute_size(reader, key, problems)?;
    check_minimum(&size, minimum, what, problems).then_some(size.value)
}

/// The root filesystem (or root logical volume): a percentage of the disk, or at least 3 GiB.
fn root_size(reader: &TableReader<'_, '_>, key: &str, problems: &mut Problems) -> Option<SizeSpec> {
    let size = size(reader, key, problems)?;
    match size.value {
        SizeSpec::Bytes(bytes) => check_minimum(
            &Spanned::new(bytes, size.span),
            MINIMUM_ROOT,
            "the root filesystem",
            problems,
        )
        .then_some(size.value),
        SizeSpec::Percent(_) => Some(size.value),
    }
}
