//! Table tests: templates against disk sets, each checking exact partition starts and sizes.

use super::*;
use crate::config::{self, DiskPick, DiskSelector, SizeSpec, StorageLayout};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

fn disk(name: &str, bytes: u64, rotational: bool, serial: &str) -> ObservedDisk {
    ObservedDisk {
        name: name.to_string(),
        size_bytes: bytes as i64,
        serial: Some(serial.to_string()),
        id_path: Some(format!("/dev/disk/by-id/ata-{serial}")),
        model: None,
        bus: Some(
            if name.starts_with("nvme") {
                "nvme"
            } else {
                "ata"
            }
            .to_string(),
        ),
        rotational: Some(rotational),
    }
}

fn template(layout: StorageLayout) -> StorageTemplate {
    StorageTemplate {
        name: "t".to_string(),
        layout,
        efi_size: None,
        boot_size: None,
        root_size: None,
        root_device: None,
    }
}

fn flat() -> StorageTemplate {
    template(StorageLayout::Flat)
}

/// The templates of a fleet file holding only `[storage_templates...]`.
fn from_toml(text: &str, name: &str) -> StorageTemplate {
    let fleet = config::load_str("layouts.toml", text)
        .map_err(|d| d.render(false))
        .unwrap();
    fleet.storage_templates[name].clone()
}

/// (disk, number, start, size, kind) for every partition, in MiB.
fn partitions(layout: &Layout) -> Vec<(String, u32, u64, u64, PartitionKind)> {
    let mut found = Vec::new();
    for disk in &layout.disks {
        for p in &disk.partitions {
            found.push((
                disk.name.clone(),
                p.number,
                p.start / MIB,
                p.size / MIB,
                p.kind,
            ));
        }
    }
    found
}

fn part(
    disk: &str,
    number: u32,
    start: u64,
    size: u64,
    kind: PartitionKind,
) -> (String, u32, u64, u64, PartitionKind) {
    (disk.to_string(), number, start, size, kind)
}

fn mount_of(filesystem: &Option<Filesystem>) -> Option<&str> {
    filesystem.as_ref().and_then(|fs| fs.mount.as_deref())
}

use PartitionKind::*;

// 1. One small disk (8 GiB), UEFI: EFI at 4 MiB, root the rest less the last 1 MiB (aligned).
#[test]
fn one_small_disk_uefi_flat() {
    let disks = [disk("vda", 8 * GIB, true, "V1")];
    let layout = resolve_layout(&flat(), &disks, Firmware::Uefi).unwrap();
    assert_eq!(layout.disks[0].table, Some(PartitionTable::Gpt));
    assert_eq!(
        partitions(&layout),
        [
            part("vda", 1, 4, 512, Esp),
            part("vda", 2, 516, 7672, Linux)
        ]
    );
    let efi = &layout.disks[0].partitions[0];
    assert_eq!(mount_of(&efi.filesystem), Some("/boot/efi"));
    assert_eq!(efi.filesystem.as_ref().unwrap().fstype, FsType::Vfat);
    assert_eq!(
        mount_of(&layout.disks[0].partitions[1].filesystem),
        Some("/")
    );
}

// 2. The same disk under BIOS: msdos, no EFI partition, root from 4 MiB.
#[test]
fn bios_gets_msdos_and_no_efi() {
    let disks = [disk("sda", 8 * GIB, true, "S1")];
    let mut template = flat();
    template.boot_size = Some(GIB);
    let layout = resolve_layout(&template, &disks, Firmware::Bios).unwrap();
    assert_eq!(layout.disks[0].table, Some(PartitionTable::Msdos));
    assert_eq!(
        partitions(&layout),
        [
            part("sda", 1, 4, 1024, Linux),
            part("sda", 2, 1028, 7160, Linux)
        ]
    );
    assert_eq!(
        mount_of(&layout.disks[0].partitions[0].filesystem),
        Some("/boot")
    );
}

// 3. A 4 TB disk under BIOS: MBR cannot address it, so GPT with a 1 MiB bios_grub at 1 MiB.
#[test]
fn bios_disk_over_2_tib_gets_gpt_and_bios_grub() {
    let disks = [disk("sda", 4_000_787_030_016, true, "BIG")];
    let layout = resolve_layout(&flat(), &disks, Firmware::Bios).unwrap();
    assert_eq!(layout.disks[0].table, Some(PartitionTable::Gpt));
    assert_eq!(
        partitions(&layout),
        [
            part("sda", 1, 1, 1, BiosGrub),
            part("sda", 2, 4, 3_815_440, Linux)
        ]
    );
}

// 4. NVMe + SATA: root_device picks the solid-state disk; the SATA disk is untouched.
#[test]
fn nvme_and_sata_root_on_the_ssd() {
    let disks = [
        disk("sda", 2_000_398_934_016, true, "HDD1"),
        disk("nvme0n1", 500_107_862_016, false, "NV1"),
    ];
    let mut template = flat();
    template.root_device = Some(DiskSelector {
        rotational: Some(false),
        ..DiskSelector::default()
    });
    template.root_size = Some(SizeSpec::Percent(50));
    let layout = resolve_layout(&template, &disks, Firmware::Uefi).unwrap();
    assert_eq!(layout.disks.len(), 1);
    let left = 476_936 - 516;
    assert_eq!(
        partitions(&layout),
        [
            part("nvme0n1", 1, 4, 512, Esp),
            part("nvme0n1", 2, 516, left / 2 / 4 * 4, Linux)
        ]
    );
    assert!(layout.table(0).contains("nvme0n1p2"), "{}", layout.table(0));
}

// 5. A disk too small: root below 3 GiB, and a fixed root that does not fit.
#[test]
fn a_disk_too_small_names_the_disk_and_sizes() {
    let disks = [disk("sda", 2 * GIB, true, "S1")];
    let error = resolve_layout(&flat(), &disks, Firmware::Uefi).unwrap_err();
    assert_eq!(
        error.to_string(),
        "root needs at least 3 GiB and gets 1.5 GiB on sda (2 GiB) after efi 512 MiB"
    );
    let disks = [disk("sda", 32 * GIB, true, "S1")];
    let mut template = flat();
    template.boot_size = Some(GIB);
    template.root_size = Some(SizeSpec::Bytes(40 * GIB));
    let error = resolve_layout(&template, &disks, Firmware::Uefi).unwrap_err();
    assert_eq!(
        error.to_string(),
        "efi 512 MiB + boot 1 GiB + root 40 GiB does not fit on sda (32 GiB)"
    );
}

// 6. LVM with lv_size as a percentage of the volume group.
#[test]
fn lvm_with_a_percentage_lv() {
    let disks = [disk("sda", 100 * GIB, false, "S1")];
    let template = template(StorageLayout::Lvm {
        vg_name: "vgroot".into(),
        lv_name: "lvroot".into(),
        lv_size: Some(SizeSpec::Percent(50)),
    });
    let layout = resolve_layout(&template, &disks, Firmware::Uefi).unwrap();
    assert_eq!(
        partitions(&layout),
        [
            part("sda", 1, 4, 512, Esp),
            part("sda", 2, 516, 101_880, Lvm)
        ]
    );
    let group = &layout.volume_groups[0];
    assert_eq!((group.name.as_str(), group.size / MIB), ("vgroot", 101_876));
    let volume = &group.logical_volumes[0];
    assert_eq!(
        (volume.name.as_str(), volume.size / MIB),
        ("lvroot", 50_936)
    );
    assert_eq!(mount_of(&volume.filesystem), Some("/"));
    assert_eq!(
        group.members,
        [Device::Partition {
            disk: "sda".into(),
            number: 2
        }]
    );
}

fn bcache_template() -> StorageTemplate {
    let mut template = template(StorageLayout::Bcache {
        cache_device: None,
        cache_mode: BcacheMode::Writeback,
        cache_size: Some(SizeSpec::Bytes(64 * GIB)),
        cache_no_part: false,
    });
    template.root_size = Some(SizeSpec::Bytes(40 * GIB));
    template
}

// 7. bcache with ssds: the smallest non-boot ssd caches the root partition.
#[test]
fn bcache_takes_the_smallest_ssd() {
    let disks = [
        disk("sda", 1_000_204_886_016, true, "HDD"),
        disk("sdb", 480_103_981_056, false, "SSD480"),
        disk("sdc", 240_057_409_536, false, "SSD240"),
    ];
    let layout = resolve_layout(&bcache_template(), &disks, Firmware::Uefi).unwrap();
    assert_eq!(layout.kind, LayoutKind::Bcache);
    assert_eq!(
        partitions(&layout),
        [
            part("sda", 1, 4, 512, Esp),
            part("sda", 2, 516, 40 * 1024, BcacheBacking),
            part("sdc", 1, 4, 64 * 1024, BcacheCache),
        ]
    );
    let bcache = &layout.bcaches[0];
    assert_eq!(
        bcache.cache,
        Device::Partition {
            disk: "sdc".into(),
            number: 1
        }
    );
    assert_eq!(
        (bcache.mode, bcache.size),
        (BcacheMode::Writeback, 40 * GIB)
    );
    assert_eq!(mount_of(&bcache.filesystem), Some("/"));
}

// 8. bcache without an ssd falls back to flat, as MAAS does; with cache_no_part, the whole disk.
#[test]
fn bcache_without_an_ssd_is_flat_and_no_part_takes_the_whole_disk() {
    let disks = [
        disk("sda", 100 * GIB, true, "A"),
        disk("sdb", 100 * GIB, true, "B"),
    ];
    let layout = resolve_layout(&bcache_template(), &disks, Firmware::Uefi).unwrap();
    assert_eq!(layout.kind, LayoutKind::Flat);
    assert!(layout.bcaches.is_empty());
    assert_eq!(
        partitions(&layout),
        [
            part("sda", 1, 4, 512, Esp),
            part("sda", 2, 516, 40 * 1024, Linux)
        ]
    );
    let disks = [
        disk("sda", 100 * GIB, true, "A"),
        disk("sdb", 50 * GIB, false, "B"),
    ];
    let mut template = bcache_template();
    if let StorageLayout::Bcache {
        cache_size,
        cache_no_part,
        ..
    } = &mut template.layout
    {
        *cache_size = None;
        *cache_no_part = true;
    }
    let layout = resolve_layout(&template, &disks, Firmware::Uefi).unwrap();
    assert_eq!(layout.disks[1].table, None);
    assert_eq!(layout.bcaches[0].cache, Device::Disk { disk: "sdb".into() });
}

fn three_disks() -> [ObservedDisk; 3] {
    [
        disk("sda", 200 * GIB, true, "A1"),
        disk("sdb", 64 * GIB, false, "B2"),
        disk("sdc", 500 * GIB, false, "C3"),
    ]
}

// 9. root_device by serial, by by-id path, and by a hint.
#[test]
fn root_device_by_serial_by_id_and_hint() {
    let disks = three_disks();
    let cases = [
        (
            DiskSelector {
                serial: Some("B2".into()),
                ..DiskSelector::default()
            },
            "sdb",
            65_016,
        ),
        (
            DiskSelector {
                id_path: Some("/dev/disk/by-id/ata-C3".into()),
                ..DiskSelector::default()
            },
            "sdc",
            511_480,
        ),
        (
            DiskSelector {
                rotational: Some(false),
                min_size: Some(100 * GIB),
                ..DiskSelector::default()
            },
            "sdc",
            511_480,
        ),
        (
            DiskSelector {
                pick: DiskPick::Largest,
                ..DiskSelector::default()
            },
            "sdc",
            511_480,
        ),
        (
            DiskSelector {
                pick: DiskPick::Smallest,
                ..DiskSelector::default()
            },
            "sdb",
            65_016,
        ),
    ];
    for (selector, name, root) in cases {
        let mut template = flat();
        template.root_device = Some(selector.clone());
        let layout = resolve_layout(&template, &disks, Firmware::Uefi).unwrap();
        assert_eq!(
            partitions(&layout),
            [part(name, 1, 4, 512, Esp), part(name, 2, 516, root, Linux)],
            "{selector:?}"
        );
        assert!(layout.disks[0].boot);
    }
}

// 10. A root_device that matches nothing names what it looked for and the disks there are.
#[test]
fn root_device_matching_nothing_lists_the_disks() {
    let mut template = flat();
    template.root_device = Some(DiskSelector {
        serial: Some("NOPE".into()),
        ..DiskSelector::default()
    });
    let error = resolve_layout(&template, &three_disks(), Firmware::Uefi).unwrap_err();
    assert_eq!(
        error.to_string(),
        "root_device { serial = \"NOPE\" } matches none of the disks: sda (200 GiB, serial A1, rotary), sdb (64 GiB, serial B2, ssd), sdc (500 GiB, serial C3, ssd)"
    );
}

const CUSTOM: &str = r#"
[storage_templates.mirror]
layout = "custom"

[[storage_templates.mirror.disks]]
id = "a"
partitions = [
  { id = "a-boot", size = "1GiB", fstype = "ext4", label = "boot", mount = "/boot" },
  { id = "a-pv" },
]

[[storage_templates.mirror.disks]]
id = "b"
partitions = [{ size = "1GiB", fstype = "swap" }, { id = "b-pv" }]

[[storage_templates.mirror.raids]]
id = "md0"
level = 1
members = ["a-pv", "b-pv"]

[[storage_templates.mirror.volume_groups]]
id = "vg0"
members = ["md0"]
logical_volumes = [
  { name = "root", size = "20GiB", fstype = "ext4", mount = "/" },
  { name = "home", size = "50%", fstype = "xfs", mount = "/home", mount_options = "noatime" },
  { name = "var", fstype = "ext4", mount = "/var" },
]
"#;

// 11. Custom: LVM on RAID 1 over two disks.
#[test]
fn custom_lvm_on_raid1_over_two_disks() {
    let template = from_toml(CUSTOM, "mirror");
    let disks = [
        disk("sda", 100 * GIB, false, "A"),
        disk("sdb", 100 * GIB, false, "B"),
    ];
    let layout = resolve_layout(&template, &disks, Firmware::Uefi).unwrap();
    assert_eq!(
        partitions(&layout),
        [
            part("sda", 1, 4, 512, Esp),
            part("sda", 2, 516, 1024, Linux),
            part("sda", 3, 1540, 100_856, Raid),
            part("sdb", 1, 4, 1024, Swap),
            part("sdb", 2, 1028, 101_368, Raid),
        ]
    );
    let array = &layout.arrays[0];
    assert_eq!((array.level, array.size), (1, 100_856 * MIB - 128 * 1024));
    let group = &layout.volume_groups[0];
    assert_eq!(group.members, [Device::Array { name: "md0".into() }]);
    assert_eq!(group.size / MIB, 100_848);
    let sizes: Vec<u64> = group
        .logical_volumes
        .iter()
        .map(|lv| lv.size / MIB)
        .collect();
    assert_eq!(sizes, [20 * 1024, 50_424, 100_848 - 20 * 1024 - 50_424]);
    let home = &group.logical_volumes[1].filesystem.as_ref().unwrap();
    assert_eq!(home.mount_options.as_deref(), Some("noatime"));
    // The same template on a BIOS machine: msdos, no EFI partition, same shape.
    let layout = resolve_layout(&template, &disks, Firmware::Bios).unwrap();
    assert_eq!(partitions(&layout)[0], part("sda", 1, 4, 1024, Linux));
}

// 12. Custom: RAID 10 over four disks, LVM on it (the example's template).
#[test]
fn custom_raid10_over_four_disks() {
    let text = std::fs::read_to_string("fleet.toml.example").unwrap();
    let fleet = config::load_str("fleet.toml.example", &text).unwrap();
    let template = &fleet.storage_templates["db-raid10"];
    let size = 1_000_204_886_016;
    let disks = ["sda", "sdb", "sdc", "sdd"].map(|name| disk(name, size, true, name));
    let layout = resolve_layout(template, &disks, Firmware::Uefi).unwrap();
    let end = 953_868;
    assert_eq!(
        partitions(&layout),
        [
            part("sda", 1, 4, 512, Esp),
            part("sda", 2, 516, 1024, Linux),
            part("sda", 3, 1540, end - 1540, Raid),
            part("sdb", 1, 4, 1024, Swap),
            part("sdb", 2, 1028, end - 1028, Raid),
            part("sdc", 1, 4, 1024, Linux),
            part("sdc", 2, 1028, end - 1028, Raid),
            part("sdd", 1, 4, 1024, Linux),
            part("sdd", 2, 1028, end - 1028, Raid),
        ]
    );
    let array = &layout.arrays[0];
    assert_eq!(array.size, 1_997_176_438_784);
    assert_eq!(array.members.len(), 4);
    let group = &layout.volume_groups[0];
    assert_eq!(group.size, 1_997_168_181_248);
    let sizes: Vec<u64> = group.logical_volumes.iter().map(|lv| lv.size).collect();
    assert_eq!(sizes, [40 * GIB, 1_597_732_028_416, 356_486_479_872]);
    // Three disks are not enough for four.
    let error = resolve_layout(template, &disks[..3], Firmware::Uefi).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("disk `d3`: select {} matches none of the disks left"),
        "{error}"
    );
}

// 13. Blank: no partitions, whatever the disks.
#[test]
fn blank_lays_out_nothing() {
    let layout = resolve_layout(
        &template(StorageLayout::Blank),
        &three_disks(),
        Firmware::Uefi,
    )
    .unwrap();
    assert!(layout.disks.is_empty());
    assert_eq!(layout.kind, LayoutKind::Blank);
    assert!(layout.table(2).contains("disks left empty"));
}

// 14. No disks at all, and an msdos disk asked for more than four partitions.
#[test]
fn no_disks_and_too_many_msdos_partitions() {
    assert_eq!(
        resolve_layout(&flat(), &[], Firmware::Uefi),
        Err(LayoutError::NoDisks)
    );
    let text = r#"
[storage_templates.many]
layout = "custom"
[[storage_templates.many.disks]]
id = "a"
partitions = [
  { size = "1GiB", fstype = "ext4", mount = "/a" }, { size = "1GiB", fstype = "ext4", mount = "/b" },
  { size = "1GiB", fstype = "ext4", mount = "/c" }, { size = "1GiB", fstype = "ext4", mount = "/d" },
  { fstype = "ext4", mount = "/" },
]
"#;
    let template = from_toml(text, "many");
    let disks = [disk("sda", 100 * GIB, true, "A")];
    let error = resolve_layout(&template, &disks, Firmware::Bios).unwrap_err();
    assert!(
        error.to_string().contains("msdos partition table"),
        "{error}"
    );
    assert!(resolve_layout(&template, &disks, Firmware::Uefi).is_ok());
}

#[test]
fn remap_renames_disks_everywhere_and_drops_their_serials() {
    let template = from_toml(CUSTOM, "mirror");
    let disks = [
        disk("sda", 100 * GIB, false, "A"),
        disk("sdb", 100 * GIB, false, "B"),
    ];
    let layout = resolve_layout(&template, &disks, Firmware::Uefi).unwrap();
    let map = BTreeMap::from([
        ("sda".to_string(), "nvme0n1".to_string()),
        ("sdb".to_string(), "nvme1n1".to_string()),
    ]);
    let remapped = layout.remap_disks(&map);
    assert_eq!(remapped.disks[0].name, "nvme0n1");
    assert_eq!(remapped.disks[0].serial, None);
    assert_eq!(
        remapped.arrays[0].members,
        [
            Device::Partition {
                disk: "nvme0n1".into(),
                number: 3
            },
            Device::Partition {
                disk: "nvme1n1".into(),
                number: 2
            },
        ]
    );
    assert!(remapped.table(0).contains("nvme0n1p3"));
    assert_ne!(remapped.digest(), layout.digest());
}

#[test]
fn json_shape_round_trip_digest_and_table() {
    let disks = [disk("sda", 8 * GIB, true, "S1")];
    let layout = resolve_layout(&flat(), &disks, Firmware::Uefi).unwrap();
    let json = serde_json::to_value(&layout).unwrap();
    assert_eq!(json["kind"], "flat");
    assert_eq!(json["firmware"], "uefi");
    assert_eq!(json["disks"][0]["table"], "gpt");
    assert_eq!(json["disks"][0]["partitions"][1]["start"], 516 * MIB);
    assert_eq!(
        json["disks"][0]["partitions"][1]["filesystem"]["mount"],
        "/"
    );
    assert!(json.get("arrays").is_none(), "empty lists are left out");
    let back: Layout = serde_json::from_value(json).unwrap();
    assert_eq!(back, layout);
    assert_eq!(layout.digest().len(), 16);
    assert_eq!(layout.digest(), back.digest());
    let table = layout.table(4);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines.iter().all(|line| line.starts_with("    ")));
    assert!(
        lines[3].contains("sda2") && lines[3].contains("516 MiB") && lines[3].ends_with('/'),
        "{table}"
    );
}

/// The planner resolves one layout per machine: 100,000 custom RAID 1 + LVM layouts (the
/// heaviest kind) stay well inside the plan's one-second budget in a release build; here, a
/// generous bound for an unoptimised test build on a shared machine.
#[test]
fn a_hundred_thousand_layouts_resolve_quickly() {
    let template = from_toml(CUSTOM, "mirror");
    let disks = [
        disk("sda", 100 * GIB, false, "A"),
        disk("sdb", 100 * GIB, false, "B"),
    ];
    let started = std::time::Instant::now();
    let mut partitions = 0;
    for _ in 0..100_000 {
        let layout = resolve_layout(&template, &disks, Firmware::Uefi).unwrap();
        partitions += layout
            .disks
            .iter()
            .map(|d| d.partitions.len())
            .sum::<usize>();
    }
    let elapsed = started.elapsed();
    eprintln!("100,000 custom layouts resolved in {elapsed:?}");
    assert_eq!(partitions, 500_000);
    assert!(elapsed.as_secs() < 30, "{elapsed:?}");
}
