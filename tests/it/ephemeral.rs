//! The ephemeral environment's initrd as `.ci/setup-ephemeral` builds it
//! (examples/ephemeral/build.sh): read back as a cpio listing, it must carry the drivers real
//! servers need (loaded by modalias), their dependencies, and the Debian tools the deploy, erase
//! and rescue roles run (CONTRACT.md). No VM: the enlist tests boot it.

use crate::support::bootnet::ephemeral_file;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// One member of a cpio (newc) archive.
struct Member {
    mode: u32,
    data: Vec<u8>,
}

impl Member {
    fn is_link(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
    fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
}

/// The initrd's members by path (without the leading `./`), decompressed with zstd.
fn initrd_members() -> BTreeMap<String, Member> {
    let path = ephemeral_file("initrd");
    let output = Command::new("zstd")
        .args(["-dc", "--"])
        .arg(&path)
        .output()
        .expect("zstd runs (apt-get install zstd)");
    assert!(
        output.status.success(),
        "zstd -dc {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    parse_newc(&output.stdout)
}

fn parse_newc(archive: &[u8]) -> BTreeMap<String, Member> {
    let field = |at: usize, index: usize| -> usize {
        let start = at + 6 + index * 8;
        let text = std::str::from_utf8(&archive[start..start + 8]).expect("hex field");
        usize::from_str_radix(text, 16).expect("a hex number")
    };
    let align = |offset: usize| offset.div_ceil(4) * 4;
    let mut members = BTreeMap::new();
    let mut at = 0;
    loop {
        assert_eq!(
            &archive[at..at + 6],
            b"070701",
            "a newc header at byte {at}"
        );
        let (mode, size, name_size) = (field(at, 1) as u32, field(at, 6), field(at, 11));
        let name_start = at + 110;
        let name = String::from_utf8_lossy(&archive[name_start..name_start + name_size - 1]);
        let data_start = align(name_start + name_size);
        if name == "TRAILER!!!" {
            return members;
        }
        let data = archive[data_start..data_start + size].to_vec();
        let name = name.trim_start_matches("./").to_string();
        members.insert(name, Member { mode, data });
        at = align(data_start + size);
    }
}

fn text(members: &BTreeMap<String, Member>, path: &str) -> String {
    let member = members
        .get(path)
        .unwrap_or_else(|| panic!("the initrd has no {path}"));
    String::from_utf8(member.data.clone()).expect("text")
}

#[test]
fn the_ephemeral_initrd_carries_server_drivers_and_the_deploy_tools() {
    let members = initrd_members();
    let modules_dir = members
        .keys()
        .find(|path| path.starts_with("usr/lib/modules/") && path.ends_with("/modules.dep"))
        .map(|path| path.trim_end_matches("modules.dep").to_string())
        .expect("the initrd has usr/lib/modules/VERSION/modules.dep");

    // Drivers by name (- and _ alike), each xz-compressed.
    let carried: BTreeSet<String> = members
        .keys()
        .filter(|path| path.starts_with(&modules_dir) && path.ends_with(".ko.xz"))
        .map(|path| {
            let file = path.rsplit('/').next().unwrap();
            file.trim_end_matches(".ko.xz").replace('-', "_")
        })
        .collect();
    let wanted = [
        "mlx5_core",
        "i40e",
        "ice",
        "bnxt_en",
        "ixgbe",
        "igb",
        "tg3",
        "megaraid_sas",
        "mpt3sas",
        "hpsa",
        "smartpqi",
        "e1000e",
        "virtio_net",
        "nvme",
        "ahci",
        "ext4",
        "vfat",
        "dm_mod",
        "md_mod",
        "raid1",
        "raid456",
        "bcache",
    ];
    let absent: Vec<_> = wanted
        .iter()
        .filter(|name| !carried.contains(**name))
        .collect();
    assert!(
        absent.is_empty(),
        "modules missing from the initrd: {absent:?}"
    );
    assert!(
        !members.keys().any(|path| path.ends_with(".ko")),
        "every module is xz-compressed"
    );

    // Every module and dependency modules.dep names is in the archive.
    let dep = text(&members, &format!("{modules_dir}modules.dep"));
    for word in dep.split_whitespace() {
        let file = word.trim_end_matches(':');
        assert!(
            members.contains_key(&format!("{modules_dir}{file}")),
            "modules.dep names {file}, which the initrd lacks"
        );
    }
    // modalias loading: QEMU's e1000e (8086:10d3) and a ConnectX-5 (15b3:1017) resolve.
    let aliases = text(&members, &format!("{modules_dir}modules.alias"));
    for (id, module) in [
        ("v00008086d000010D3", "e1000e"),
        ("v000015B3d00001017", "mlx5_core"),
    ] {
        assert!(
            aliases
                .lines()
                .any(|line| line.contains(id) && line.ends_with(&format!(" {module}"))),
            "modules.alias has no pci:{id} for {module}"
        );
    }

    // Debian's programs at their paths, real files or links to them (not busybox applets).
    for program in [
        "usr/sbin/sfdisk",
        "usr/sbin/sgdisk",
        "usr/sbin/wipefs",
        "usr/sbin/blkid",
        "usr/sbin/blkdiscard",
        "usr/sbin/blockdev",
        "usr/bin/partx",
        "usr/sbin/mke2fs",
        "usr/sbin/tune2fs",
        "usr/sbin/mkfs.fat",
        "usr/sbin/lvm",
        "usr/sbin/mdadm",
        "usr/sbin/make-bcache",
        "usr/bin/xz",
        "usr/bin/zstd",
        "usr/bin/gzip",
        "usr/bin/tar",
        "usr/bin/curl",
        "usr/bin/extlinux",
        "usr/bin/efibootmgr",
        "usr/sbin/dropbear",
        "usr/bin/dropbearkey",
        "usr/sbin/hdparm",
        "usr/sbin/nvme",
        "usr/bin/ipmitool",
        "usr/lib/syslinux/mbr/mbr.bin",
        "usr/lib/syslinux/mbr/gptmbr.bin",
        "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "usr/lib64/ld-linux-x86-64.so.2",
    ] {
        let member = members
            .get(program)
            .unwrap_or_else(|| panic!("the initrd has no {program}"));
        assert!(member.is_file(), "{program} is not a regular file");
    }
    for (link, target) in [
        ("usr/sbin/mkfs.ext4", "mke2fs"),
        ("usr/sbin/e2label", "tune2fs"),
        ("usr/sbin/mkfs.vfat", "mkfs.fat"),
        ("usr/sbin/vgchange", "lvm"),
        ("usr/sbin/pvcreate", "lvm"),
        ("usr/bin/sha256sum", "/bin/busybox"),
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
    ] {
        let member = members
            .get(link)
            .unwrap_or_else(|| panic!("the initrd has no {link}"));
        assert!(
            member.is_link() && member.data == target.as_bytes(),
            "{link} is not a link to {target}"
        );
    }
    let lvm = text(&members, "etc/lvm/lvm.conf");
    for setting in [
        "udev_sync = 0",
        "udev_rules = 0",
        "obtain_device_list_from_udev = 0",
    ] {
        assert!(lvm.contains(setting), "lvm.conf lacks {setting}");
    }
    assert!(text(&members, "etc/passwd").starts_with("root:x:0:0:root:/root:/bin/sh"));
}

#[test]
fn the_manifest_reports_the_initrd_and_its_modules() {
    let manifest = std::fs::read_to_string(ephemeral_file("manifest")).expect("the manifest");
    let value = |key: &str| {
        manifest
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("the manifest has no {key}: {manifest}"))
            .to_string()
    };
    let initrd_bytes = std::fs::metadata(ephemeral_file("initrd")).unwrap().len();
    assert_eq!(value("initrd_bytes"), initrd_bytes.to_string());
    assert!(value("module_files").contains("bytes xz"));
    assert!(value("initrd_unpacked_bytes").parse::<u64>().unwrap() > initrd_bytes);
}
