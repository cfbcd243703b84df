//! `Layout::table`: one line per disk, partition, array, volume group, logical volume and bcache
//! device, in columns (device, start, size, kind, filesystem and label, mount point).

use super::resolve::show;
use super::{partition_name, Device, Filesystem, Layout};
use std::fmt::Write as _;

pub fn render(layout: &Layout, indent: usize) -> String {
    let mut out = String::with_capacity(128 * (1 + layout.disks.len() * 3));
    let pad = " ".repeat(indent);
    if layout.disks.is_empty() {
        let _ = writeln!(
            out,
            "{pad}{} ({}): disks left empty",
            layout.template,
            kind_name(layout)
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{pad}{:<18}{:>10}  {:>10}  {:<15}{:<18}MOUNT",
        "DEVICE", "START", "SIZE", "KIND", "FS"
    );
    for disk in &layout.disks {
        let table = disk.table.map_or("whole disk", |table| table.as_str());
        let boot = if disk.boot { ", boot" } else { "" };
        let kind = format!("{table}{boot}");
        line(
            &mut out,
            &pad,
            &disk.name,
            None,
            disk.size,
            &kind,
            disk.filesystem.as_ref(),
        );
        for partition in &disk.partitions {
            let name = format!("  {}", partition_name(&disk.name, partition.number));
            let fs = partition.filesystem.as_ref();
            line(
                &mut out,
                &pad,
                &name,
                Some(partition.start),
                partition.size,
                partition.kind.as_str(),
                fs,
            );
        }
    }
    for array in &layout.arrays {
        let kind = format!("raid{} [{}]", array.level, names(&array.members));
        line(
            &mut out,
            &pad,
            &array.name,
            None,
            array.size,
            &kind,
            array.filesystem.as_ref(),
        );
    }
    for group in &layout.volume_groups {
        let kind = format!("lvm [{}]", names(&group.members));
        line(&mut out, &pad, &group.name, None, group.size, &kind, None);
        for volume in &group.logical_volumes {
            let name = format!("  {}", volume.name);
            line(
                &mut out,
                &pad,
                &name,
                None,
                volume.size,
                "lv",
                volume.filesystem.as_ref(),
            );
        }
    }
    for bcache in &layout.bcaches {
        let kind = format!(
            "bcache {} [{} + {}]",
            bcache.mode.as_str(),
            bcache.backing.name(),
            bcache.cache.name()
        );
        line(
            &mut out,
            &pad,
            &bcache.name,
            None,
            bcache.size,
            &kind,
            bcache.filesystem.as_ref(),
        );
    }
    out
}

fn kind_name(layout: &Layout) -> &'static str {
    match layout.kind {
        super::LayoutKind::Flat => "flat",
        super::LayoutKind::Lvm => "lvm",
        super::LayoutKind::Bcache => "bcache",
        super::LayoutKind::Blank => "blank",
        super::LayoutKind::Custom => "custom",
    }
}

fn names(devices: &[Device]) -> String {
    devices
        .iter()
        .map(Device::name)
        .collect::<Vec<_>>()
        .join(" ")
}

fn line(
    out: &mut String,
    pad: &str,
    device: &str,
    start: Option<u64>,
    size: u64,
    kind: &str,
    filesystem: Option<&Filesystem>,
) {
    let start = start.map(show).unwrap_or_default();
    let (fs, mount) = match filesystem {
        Some(filesystem) => {
            let label = filesystem
                .label
                .as_deref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            let mut mount = filesystem.mount.as_deref().unwrap_or("").to_string();
            if let Some(options) = &filesystem.mount_options {
                let _ = write!(mount, " [{options}]");
            }
            (format!("{}{label}", filesystem.fstype.as_str()), mount)
        }
        None => (String::new(), String::new()),
    };
    let before = out.len();
    let _ = write!(
        out,
        "{pad}{device:<18}{start:>10}  {:>10}  {kind:<15}{fs:<18}{mount}",
        show(size)
    );
    let kept = before + out[before..].trim_end().len();
    out.truncate(kept);
    out.push('\n');
}
