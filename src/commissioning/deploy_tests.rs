//! fleet-deploy.sh and the runner's deploying run, without a VM: the script runs under busybox
//! on a fake machine (sysfs, /dev and /proc trees of files, disks as sparse files, a directory
//! standing for the mounted target) with stand-ins on PATH for the tools that need a kernel
//! (sfdisk, wipefs, mkfs.*, mount, lvm, mdadm, make-bcache, extlinux, blkid, curl ...). Each
//! stand-in records its command line; sfdisk keeps its input; curl serves the test's image.
//! The deployment JSON is built from Layouts the planner resolves, so it matches the contract.

use crate::config;
use crate::plan::layout::{resolve_layout, Layout};
use crate::plan::{Firmware, ObservedDisk};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const BUSYBOX: &str = "/bin/busybox";
const SCRIPT: &str = include_str!("scripts/fleet-deploy.sh");
const RUNNER: &str = include_str!("fleet-runner.sh");
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Records `NAME ARGS` in $FAKE_LOG; sfdisk keeps its input, curl serves $FAKE_IMAGE, mdadm
/// --create makes the array's node, blkid describes what $FAKE_DIR says (UUID uuid-NAME).
const STAND_IN: &str = r#"#!/bin/busybox sh
name=${0##*/}
echo "$name $*" >>"$FAKE_LOG"
eval last=\${$#}
case $name in
  sfdisk) [ "$1" = --wipe ] && cat >"$FAKE_DIR/sfdisk-${last##*/}" ;;
  curl) exec cat "$FAKE_IMAGE" ;;
  mdadm) [ "$1" = --create ] && : >"$2" ;;
  blkid)
    n=${last##*/}
    printf '%s: LABEL="%s" UUID="uuid-%s" TYPE="%s" PARTUUID="p-%s"\n' "$last" \
      "$(cat "$FAKE_DIR/label-$n" 2>/dev/null)" "$n" "$(cat "$FAKE_DIR/type-$n" 2>/dev/null || echo ext4)" "$n" ;;
esac
exit 0
"#;

const STAND_INS: &[&str] = &[
    "sfdisk",
    "sgdisk",
    "wipefs",
    "blockdev",
    "partx",
    "mkfs.ext4",
    "mkfs.vfat",
    "mkswap",
    "mkfs.xfs",
    "lvm",
    "dmsetup",
    "mdadm",
    "make-bcache",
    "extlinux",
    "mount",
    "umount",
    "swapoff",
    "blkid",
    "curl",
    "modprobe",
    "sync",
];

/// A fake machine for fleet-deploy.sh.
struct Machine {
    directory: tempfile::TempDir,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The stand-ins' command lines, the machine's directory taken out (`sfdisk ... /dev/vda`).
    commands: Vec<String>,
}

impl Run {
    fn last_error(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }

    fn assert_passed(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "fleet-deploy failed:\n{}\n{}",
            self.stdout,
            self.stderr
        );
    }

    fn assert_failed_with(&self, line: &str) {
        assert_eq!(self.code, Some(1), "{}\n{}", self.stdout, self.stderr);
        assert_eq!(self.last_error(), line, "stdout:\n{}", self.stdout);
    }

    fn position(&self, command: &str) -> usize {
        self.commands
            .iter()
            .position(|line| line == command)
            .unwrap_or_else(|| panic!("no `{command}` in {:#?}", self.commands))
    }

    /// Nothing was written: only reads and probes ran.
    fn assert_nothing_written(&self) {
        for command in &self.commands {
            let tool = command.split(' ').next().unwrap();
            assert!(
                ["blkid", "curl", "modprobe"].contains(&tool),
                "`{command}` ran before the refusal"
            );
        }
        assert!(!self.stdout.contains("\n+ "), "{}", self.stdout);
    }
}

impl Machine {
    fn new() -> Machine {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} is missing: run .ci/setup (it installs busybox-static)"
        );
        let machine = Machine {
            directory: tempfile::tempdir().unwrap(),
        };
        for directory in [
            "bin",
            "sys/block",
            "sys/class/block",
            "sys/fs/bcache",
            "dev",
            "proc",
            "fake",
            "target",
            "tmp",
            "syslinux/mbr",
        ] {
            fs::create_dir_all(machine.path(directory)).unwrap();
        }
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            symlink(BUSYBOX, machine.path("bin").join(applet)).unwrap();
        }
        for name in STAND_INS {
            let file = machine.path("bin").join(name);
            let _ = fs::remove_file(&file);
            fs::write(&file, STAND_IN).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
        }
        machine.write("proc/cmdline", "console=ttyS0 quiet\n");
        machine.write("proc/mounts", "");
        machine.write("proc/swaps", "");
        machine.write("syslinux/mbr/mbr.bin", [0xaa; 440]);
        machine.write("syslinux/mbr/gptmbr.bin", [0xbb; 440]);
        machine.write("systemd-bootx64.efi", "systemd-boot");
        machine
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.directory.path().join(relative)
    }

    fn write(&self, relative: &str, content: impl AsRef<[u8]>) -> &Self {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        self
    }

    fn link(&self, relative: &str, target: &str) -> &Self {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
        self
    }

    /// A disk: its sysfs directory and a sparse file of `bytes` as its node.
    fn disk(&self, name: &str, bytes: u64, serial: Option<&str>) -> &Self {
        let block = format!("sys/block/{name}");
        self.write(&format!("{block}/size"), format!("{}\n", bytes / 512));
        self.write(&format!("{block}/queue/logical_block_size"), "512\n");
        if let Some(serial) = serial {
            self.write(&format!("{block}/serial"), format!("{serial}\n"));
        }
        self.link(
            &format!("sys/class/block/{name}"),
            &format!("../../block/{name}"),
        );
        let node = fs::File::create(self.path(&format!("dev/{name}"))).unwrap();
        node.set_len(bytes).unwrap();
        self
    }

    /// A partition the kernel knows (sysfs) and its node.
    fn partition(&self, disk: &str, name: &str) -> &Self {
        let block = format!("sys/block/{disk}/{name}");
        self.write(&format!("{block}/partition"), "1\n");
        self.write(&format!("{block}/size"), "2048\n");
        self.link(
            &format!("sys/class/block/{name}"),
            &format!("../../block/{disk}/{name}"),
        );
        self.write(&format!("dev/{name}"), "");
        self
    }

    /// The partitions a layout makes, as nodes (what the kernel shows after sfdisk).
    fn partitions_of(&self, layout: &Layout, names: &[(&str, &str)]) -> &Self {
        for disk in &layout.disks {
            let here = names
                .iter()
                .find(|(planned, _)| *planned == disk.name)
                .map_or(disk.name.as_str(), |(_, here)| here);
            for partition in &disk.partitions {
                let name = crate::plan::layout::partition_name(here, partition.number);
                if !self.path(&format!("dev/{name}")).exists() {
                    self.write(&format!("dev/{name}"), "");
                }
            }
        }
        self
    }

    fn run(&self, deployment: &Value, image: &[u8]) -> Run {
        self.run_text(&deployment.to_string(), image)
    }

    fn run_text(&self, deployment: &str, image: &[u8]) -> Run {
        self.write("deployment.json", deployment);
        self.write("image", image);
        self.write("fake/log", "");
        let script = self.path("fleet-deploy.sh");
        fs::write(&script, SCRIPT).unwrap();
        let root = self.directory.path().to_str().unwrap().to_string();
        let output = Command::new(BUSYBOX)
            .arg("sh")
            .arg(&script)
            .env_clear()
            .env("PATH", self.path("bin"))
            .env("FLEET_SYSFS", self.path("sys"))
            .env("FLEET_DEVFS", self.path("dev"))
            .env("FLEET_PROCFS", self.path("proc"))
            .env("FLEET_TARGET", self.path("target"))
            .env("FLEET_SYSLINUX", self.path("syslinux"))
            .env("FLEET_SYSTEMD_BOOT", self.path("systemd-bootx64.efi"))
            .env("FLEET_DEPLOYMENT", self.path("deployment.json"))
            .env("FLEET_PROGRESS", self.path("progress"))
            .env("FLEET_RUN", "run-7")
            .env("FLEET_RESULTS", self.path("results.json"))
            .env("FLEET_SETTLE", "1")
            .env("FAKE_LOG", self.path("fake/log"))
            .env("FAKE_DIR", self.path("fake"))
            .env("FAKE_IMAGE", self.path("image"))
            .env("TMPDIR", self.path("tmp"))
            .output()
            .unwrap();
        let log = fs::read_to_string(self.path("fake/log")).unwrap();
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).replace(&root, ""),
            stderr: String::from_utf8_lossy(&output.stderr).replace(&root, ""),
            commands: log.replace(&root, "").lines().map(String::from).collect(),
        }
    }

    fn read(&self, relative: &str) -> String {
        fs::read_to_string(self.path(relative))
            .unwrap_or_else(|error| panic!("{relative}: {error}"))
    }

    fn mode(&self, relative: &str) -> u32 {
        fs::metadata(self.path(relative))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    fn bytes(&self, relative: &str, offset: u64, length: usize) -> Vec<u8> {
        let mut file = fs::File::open(self.path(relative)).unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).unwrap();
        let mut buffer = vec![0; length];
        file.read_exact(&mut buffer).unwrap();
        buffer
    }
}

// ---------------------------------------------------------------- fixtures

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn busybox_filter(arguments: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(BUSYBOX)
        .args(arguments)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "busybox {arguments:?}");
    output.stdout
}

/// A root tarball: a kernel and initrd in /boot (and Debian's /boot/vmlinuz link), os-release.
fn root_tarball() -> Vec<u8> {
    let staging = tempfile::tempdir().unwrap();
    let root = staging.path();
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("boot/vmlinuz-6.1.0-13-amd64"), "kernel 6.1").unwrap();
    fs::write(root.join("boot/vmlinuz-5.10.0-9-amd64"), "kernel 5.10").unwrap();
    fs::write(root.join("boot/initrd.img-6.1.0-13-amd64"), "initrd 6.1").unwrap();
    symlink("vmlinuz-6.1.0-13-amd64", root.join("boot/vmlinuz")).unwrap();
    fs::write(root.join("etc/os-release"), "NAME=\"Test OS\"\n").unwrap();
    fs::write(root.join("etc/fstab"), "# the image's own\n").unwrap();
    let output = Command::new(BUSYBOX)
        .args(["tar", "-c", "-f", "-", "-C"])
        .arg(root)
        .arg(".")
        .output()
        .unwrap();
    assert!(output.status.success());
    output.stdout
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    busybox_filter(&["gzip", "-c"], bytes)
}

/// The image member of the deployment: `served` is what the URL serves, `raw` its unpacked bytes.
fn image(format: &str, served: &[u8], raw: &[u8]) -> Value {
    json!({
        "name": "noble", "format": format,
        "url": "http://10.99.0.1:5248/boot/files/noble/root",
        "size": served.len(), "sha256": sha256(served),
        "raw_size": raw.len(), "raw_sha256": sha256(raw),
    })
}

fn observed(name: &str, bytes: u64, serial: &str, rotational: bool) -> ObservedDisk {
    ObservedDisk {
        name: name.into(),
        size_bytes: bytes as i64,
        serial: Some(serial.into()),
        id_path: Some(format!("/dev/disk/by-id/virtio-{serial}")),
        bus: Some("virtio".into()),
        rotational: Some(rotational),
        ..ObservedDisk::default()
    }
}

const TEMPLATES: &str = r#"
[storage_templates.flat]
layout = "flat"

[storage_templates.boot]
layout = "flat"
boot_size = "1GiB"

[storage_templates.lvm]
layout = "lvm"

[storage_templates.cached]
layout = "bcache"
cache_mode = "writearound"

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
]
"#;

fn layout(template: &str, disks: &[ObservedDisk], firmware: Firmware) -> Layout {
    let fleet = config::load_str("layouts.toml", TEMPLATES)
        .map_err(|d| d.render(false))
        .unwrap();
    resolve_layout(&fleet.storage_templates[template], disks, firmware).unwrap()
}

const NETPLAN: &str = "network:\n  version: 2\n  ethernets:\n    eth0:\n      match:\n        macaddress: \"52:54:00:12:34:56\"\n      set-name: eth0\n      dhcp4: true\n";
const SECRET: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";

/// The deployment JSON as the controller serves it (CONTRACT.md).
fn deployment(layout: &Layout, disks: &[ObservedDisk], image: Value) -> Value {
    let firmware = serde_json::to_value(layout.firmware).unwrap();
    let disks: Vec<Value> = disks
        .iter()
        .map(|d| json!({"name": d.name, "serial": d.serial, "id_path": d.id_path, "size": d.size_bytes}))
        .collect();
    json!({
        "machine": "web-1", "hostname": "web-1", "firmware": firmware,
        "image": image,
        "layout": layout,
        "disks": disks,
        "target_disk": "sda",
        "network": {"netplan": NETPLAN, "json": {}},
        "kernel_params": "console=ttyS0,115200 nomodeset",
        "ssh_keys": ["ssh-ed25519 AAAAC3Nza op@example", "ssh-rsa AAAAB3 \"quoted\" key"],
        "user_data": "#cloud-config\npackages: [\"htop\"]\n",
        "vendor_data": {"apt_proxy": "http://10.99.0.1:8000/", "ntp_servers": ["10.99.0.1"], "dns_search": []},
        "callback": {"url": "http://10.99.0.1:5248/metadata/v1/machines/web-1/deployed", "secret": SECRET},
    })
}

// ---------------------------------------------------------------- root tarballs

/// The first version the VM tests need: a flat BIOS layout and a tgz, end to end.
#[test]
fn flat_bios_tgz_is_laid_out_written_and_configured() {
    let disks = [observed("sda", 32 * GIB, "S1", true)];
    let layout = layout("flat", &disks, Firmware::Bios);
    let tar = root_tarball();
    let tgz = gzip(&tar);
    let machine = Machine::new();
    // The disk is vda here: found by its serial. It has an old partition.
    machine
        .disk("vda", 32 * GIB, Some("S1"))
        .partition("vda", "vda1");
    let run = machine.run(&deployment(&layout, &disks, image("tgz", &tgz, &tar)), &tgz);
    run.assert_passed();
    assert!(
        run.stdout
            .contains("disk sda (serial S1): vda, 34359738368 bytes"),
        "{}",
        run.stdout
    );
    // The exact table: msdos, one bootable Linux partition at 4 MiB up to the last free MiB.
    let root = &layout.disks[0].partitions[0];
    assert_eq!(
        machine.read("fake/sfdisk-vda"),
        format!(
            "label: dos\nunit: sectors\n\nstart=8192, size={}, type=83, bootable\n",
            root.size / 512
        )
    );
    let order = [
        "wipefs -a /dev/vda1",
        "wipefs -a /dev/vda",
        "sfdisk --wipe always --wipe-partitions always /dev/vda",
        "mkfs.ext4 -t ext4 -F -q -L root -O ^64bit /dev/vda1",
        "mount -t ext4 /dev/vda1 /target",
        "curl -fsS http://10.99.0.1:5248/boot/files/noble/root",
        "extlinux --install /target/boot/extlinux",
        "umount /target",
    ];
    let positions: Vec<usize> = order.iter().map(|c| run.position(c)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{:#?}",
        run.commands
    );
    // Syslinux's MBR boot code on the disk, the rest of the MBR left alone.
    assert_eq!(machine.bytes("dev/vda", 0, 440), vec![0xaa; 440]);
    // The image unpacked; the newest kernel booted by extlinux with the kernel parameters.
    assert_eq!(machine.read("target/etc/os-release"), "NAME=\"Test OS\"\n");
    assert_eq!(
        machine.read("target/boot/extlinux/extlinux.conf"),
        "# written by fleet-deploy\nDEFAULT fleet\nPROMPT 0\nTIMEOUT 1\nLABEL fleet\n  \
         LINUX /boot/vmlinuz-6.1.0-13-amd64\n  INITRD /boot/initrd.img-6.1.0-13-amd64\n  \
         APPEND root=UUID=uuid-vda1 ro console=ttyS0,115200 nomodeset\n"
    );
    assert_eq!(
        machine.read("target/etc/fstab"),
        "# written by fleet-deploy: the layout's filesystems by UUID\n\
         UUID=uuid-vda1 / ext4 defaults 0 1\n"
    );
    assert_configured(&machine, "target");
    // Every phase in order, the write rate logged, the last progress line.
    let phases: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("== "))
        .collect();
    assert_eq!(
        phases,
        [
            "check",
            "clear",
            "partition",
            "format",
            "mount",
            "write-image",
            "verify",
            "bootloader",
            "configure"
        ]
    );
    assert!(
        run.stdout
            .contains(&format!("write-image: {} bytes in ", tar.len())),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(" MB/s)"), "{}", run.stdout);
    assert_eq!(machine.read("progress"), "configure 1 1\n");
    assert_eq!(run.stderr, "");
    let results: Value = serde_json::from_str(&machine.read("results.json")).unwrap();
    assert_eq!(results["image"], "noble");
    assert_eq!(results["bytes"], tar.len());
    assert!(results["seconds"].is_number(), "{results}");
    assert_eq!(
        results["disks"],
        json!([{"planned": "sda", "found": "vda"}])
    );
}

/// What every deployment leaves in the installed system (CONTRACT.md's list).
fn assert_configured(machine: &Machine, root: &str) {
    let file = |relative: &str| machine.read(&format!("{root}/{relative}"));
    let mode = |relative: &str| machine.mode(&format!("{root}/{relative}"));
    assert_eq!(
        file("etc/fleet/callback"),
        format!("url http://10.99.0.1:5248/metadata/v1/machines/web-1/deployed\nsecret {SECRET}\n")
    );
    assert_eq!(mode("etc/fleet/callback"), 0o600);
    let hook = file("usr/lib/fleet/first-boot");
    assert!(hook.starts_with("#!/bin/sh\n"), "{hook}");
    assert!(hook.contains("rm -f \"$config\""), "{hook}");
    assert_eq!(mode("usr/lib/fleet/first-boot"), 0o755);
    assert!(file("etc/systemd/system/fleet-first-boot.service")
        .contains("ExecStart=/usr/lib/fleet/first-boot\n"));
    let wants = machine.path(&format!(
        "{root}/etc/systemd/system/multi-user.target.wants/fleet-first-boot.service"
    ));
    assert_eq!(
        fs::read_link(wants).unwrap(),
        Path::new("../fleet-first-boot.service")
    );
    assert_eq!(file("etc/netplan/50-fleet.yaml"), NETPLAN);
    assert_eq!(mode("etc/netplan/50-fleet.yaml"), 0o600);
    let seed = "var/lib/cloud/seed/nocloud";
    assert_eq!(
        file(&format!("{seed}/meta-data")),
        "instance-id: \"web-1-run-7\"\nlocal-hostname: \"web-1\"\npublic-keys:\n  \
         - \"ssh-ed25519 AAAAC3Nza op@example\"\n  - \"ssh-rsa AAAAB3 \\\"quoted\\\" key\"\n"
    );
    assert_eq!(
        file(&format!("{seed}/user-data")),
        "#cloud-config\npackages: [\"htop\"]\n"
    );
    assert_eq!(
        file(&format!("{seed}/vendor-data")),
        "#cloud-config\napt:\n  http_proxy: \"http://10.99.0.1:8000/\"\n  \
         https_proxy: \"http://10.99.0.1:8000/\"\nntp:\n  enabled: true\n  servers:\n    - \"10.99.0.1\"\n"
    );
    assert_eq!(file(&format!("{seed}/network-config")), NETPLAN);
    assert_eq!(
        file("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3Nza op@example\nssh-rsa AAAAB3 \"quoted\" key\n"
    );
    assert_eq!(mode("root/.ssh/authorized_keys"), 0o600);
    assert_eq!(file("etc/hostname"), "web-1\n");
}

#[test]
fn flat_uefi_gets_an_esp_with_systemd_boot_and_the_kernel() {
    let disks = [observed("sda", 32 * GIB, "S1", false)];
    let layout = layout("flat", &disks, Firmware::Uefi);
    let tar = root_tarball();
    let tgz = gzip(&tar);
    let machine = Machine::new();
    machine.disk("sda", 32 * GIB, Some("S1"));
    machine.partitions_of(&layout, &[]);
    let run = machine.run(&deployment(&layout, &disks, image("tgz", &tgz, &tar)), &tgz);
    run.assert_passed();
    let [esp, root] = [
        &layout.disks[0].partitions[0],
        &layout.disks[0].partitions[1],
    ];
    assert_eq!(
        machine.read("fake/sfdisk-sda"),
        format!(
            "label: gpt\nunit: sectors\n\n\
             start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n\
             start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
            esp.start / 512,
            esp.size / 512,
            root.start / 512,
            root.size / 512
        )
    );
    // The ESP mounted after / (parents first), FAT32 for 512 MiB.
    let mounts = [
        "mkfs.vfat -F 32 -n efi /dev/sda1",
        "mount -t ext4 /dev/sda2 /target",
        "mount -t vfat /dev/sda1 /target/boot/efi",
        "umount /target/boot/efi",
        "umount /target",
    ];
    let positions: Vec<usize> = mounts.iter().map(|c| run.position(c)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{:#?}",
        run.commands
    );
    let esp = "target/boot/efi";
    assert_eq!(
        machine.read(&format!("{esp}/EFI/BOOT/BOOTX64.EFI")),
        "systemd-boot"
    );
    assert_eq!(machine.read(&format!("{esp}/fleet/vmlinuz")), "kernel 6.1");
    assert_eq!(
        machine.read(&format!("{esp}/fleet/initrd.img")),
        "initrd 6.1"
    );
    assert_eq!(
        machine.read(&format!("{esp}/loader/loader.conf")),
        "default fleet.conf\ntimeout 0\n"
    );
    assert_eq!(
        machine.read(&format!("{esp}/loader/entries/fleet.conf")),
        "title noble (fleet)\nlinux /fleet/vmlinuz\ninitrd /fleet/initrd.img\n\
         options root=UUID=uuid-sda2 ro console=ttyS0,115200 nomodeset\n"
    );
    assert_eq!(
        machine.read("target/etc/fstab"),
        "# written by fleet-deploy: the layout's filesystems by UUID\n\
         UUID=uuid-sda2 / ext4 defaults 0 1\n\
         UUID=uuid-sda1 /boot/efi vfat umask=0077 0 2\n"
    );
    assert_configured(&machine, "target");
}

/// A BIOS disk over 2 TiB gets GPT, a bios_grub partition, and gptmbr.bin booting the partition
/// flagged LegacyBIOSBootable (/boot here: extlinux reads paths from its own filesystem).
#[test]
fn bios_on_gpt_flags_the_boot_partition_for_gptmbr() {
    let disks = [observed("sda", 3 * 1024 * GIB, "S1", true)];
    let layout = layout("boot", &disks, Firmware::Bios);
    let tar = root_tarball();
    let tgz = gzip(&tar);
    let machine = Machine::new();
    machine.disk("sda", 3 * 1024 * GIB, Some("S1"));
    machine.partitions_of(&layout, &[]);
    let run = machine.run(&deployment(&layout, &disks, image("tgz", &tgz, &tar)), &tgz);
    run.assert_passed();
    let table = machine.read("fake/sfdisk-sda");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "label: gpt");
    assert!(
        lines[3].ends_with("type=21686148-6449-6E6F-744E-656564454649"),
        "{table}"
    );
    assert!(
        lines[4].ends_with(", attrs=\"LegacyBIOSBootable\""),
        "{table}"
    );
    assert!(!lines[5].contains("attrs"), "{table}");
    assert_eq!(machine.bytes("dev/sda", 0, 440), vec![0xbb; 440]);
    let conf = machine.read("target/boot/extlinux/extlinux.conf");
    assert!(conf.contains("  LINUX /vmlinuz-6.1.0-13-amd64\n"), "{conf}");
    assert!(conf.contains("root=UUID=uuid-sda3 ro"), "{conf}");
    assert!(run
        .commands
        .contains(&"mkfs.ext4 -t ext4 -F -q -L boot -O ^64bit /dev/sda2".into()));
    assert!(run
        .commands
        .contains(&"mkfs.ext4 -t ext4 -F -q -L root /dev/sda3".into()));
}

#[test]
fn lvm_on_md_with_swap_and_xfs_is_built_in_order() {
    let disks = [
        observed("sda", 100 * GIB, "A", false),
        observed("sdb", 100 * GIB, "B", false),
    ];
    let layout = layout("mirror", &disks, Firmware::Uefi);
    let tar = root_tarball();
    let tgz = gzip(&tar);
    let machine = Machine::new();
    machine
        .disk("sda", 100 * GIB, Some("A"))
        .disk("sdb", 100 * GIB, Some("B"));
    machine.partitions_of(&layout, &[]);
    let run = machine.run(&deployment(&layout, &disks, image("tgz", &tgz, &tar)), &tgz);
    run.assert_passed();
    let group = &layout.volume_groups[0];
    let order = [
        "sfdisk --wipe always --wipe-partitions always /dev/sda".to_string(),
        "sfdisk --wipe always --wipe-partitions always /dev/sdb".into(),
        "mdadm --create /dev/md0 --run --metadata=1.2 --level=1 --raid-devices=2 /dev/sda3 /dev/sdb2".into(),
        "lvm pvcreate -ff -y --zero y /dev/md0".into(),
        "lvm vgcreate -y --physicalextentsize 4m vg0 /dev/md0".into(),
        format!(
            "lvm lvcreate -y --wipesignatures y --zero y -L {}b -n root vg0",
            group.logical_volumes[0].size
        ),
        format!(
            "lvm lvcreate -y --wipesignatures y --zero y -L {}b -n home vg0",
            group.logical_volumes[1].size
        ),
        "mkswap /dev/sdb1".into(),
        "mkfs.ext4 -t ext4 -F -q /dev/mapper/vg0-root".into(),
        "mkfs.xfs -f /dev/mapper/vg0-home".into(),
        "mount -t ext4 /dev/mapper/vg0-root /target".into(),
        "mount -t ext4 /dev/sda2 /target/boot".into(),
        "mount -t vfat /dev/sda1 /target/boot/efi".into(),
        "mount -t xfs /dev/mapper/vg0-home /target/home".into(),
    ];
    let positions: Vec<usize> = order.iter().map(|c| run.position(c)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{:#?}",
        run.commands
    );
    let raid = "A19D880F-05FC-4D3B-A006-743F0F84911E";
    assert!(machine.read("fake/sfdisk-sda").contains(raid));
    assert!(machine
        .read("fake/sfdisk-sdb")
        .contains("type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"));
    // An LVM root by its mapper name (Debian's initramfs activates that VG).
    let entry = machine.read("target/boot/efi/loader/entries/fleet.conf");
    assert!(
        entry.contains("options root=/dev/mapper/vg0-root ro "),
        "{entry}"
    );
    assert_eq!(
        machine.read("target/etc/fstab"),
        "# written by fleet-deploy: the layout's filesystems by UUID\n\
         UUID=uuid-sdb1 none swap sw 0 0\n\
         UUID=uuid-vg0-root / ext4 defaults 0 1\n\
         UUID=uuid-sda2 /boot ext4 defaults 0 2\n\
         UUID=uuid-sda1 /boot/efi vfat umask=0077 0 2\n\
         UUID=uuid-vg0-home /home xfs noatime 0 0\n"
    );
}

#[test]
fn bcache_is_made_registered_and_found_by_its_backing_device() {
    let disks = [
        observed("sda", 100 * GIB, "A", true),
        observed("sdb", 20 * GIB, "B", false),
    ];
    let layout = layout("cached", &disks, Firmware::Uefi);
    let bcache = &layout.bcaches[0];
    let tar = root_tarball();
    let tgz = gzip(&tar);
    let machine = Machine::new();
    machine
        .disk("sda", 100 * GIB, Some("A"))
        .disk("sdb", 20 * GIB, Some("B"));
    machine.partitions_of(&layout, &[]);
    // The kernel numbers bcache devices itself: this one comes up as bcache3.
    let backing = bcache.backing.name();
    machine
        .link(
            &format!("sys/block/sda/{backing}/bcache/dev"),
            "../../../../bcache3",
        )
        .link(
            &format!("sys/class/block/{backing}"),
            &format!("../../block/sda/{backing}"),
        )
        .write("sys/block/bcache3/bcache/cache_mode", "")
        .write("sys/fs/bcache/register", "")
        .write("dev/bcache3", "");
    let run = machine.run(&deployment(&layout, &disks, image("tgz", &tgz, &tar)), &tgz);
    run.assert_passed();
    let cache = bcache.cache.name();
    run.position(&format!(
        "make-bcache --wipe-bcache -B /dev/{backing} -C /dev/{cache}"
    ));
    run.position("mkfs.ext4 -t ext4 -F -q -L root /dev/bcache3");
    run.position("mount -t ext4 /dev/bcache3 /target");
    assert_eq!(
        machine.read("sys/block/bcache3/bcache/cache_mode"),
        "writearound\n"
    );
    assert!(
        run.stdout.contains("bcache bcache0: bcache3 (writearound)"),
        "{}",
        run.stdout
    );
}

// ---------------------------------------------------------------- clear holders

/// What the disks held is taken apart from the top down before anything is written: the mount
/// on the old LVM volume, the volume, the md array under it, a bcache device; then signatures.
#[test]
fn old_holders_are_taken_apart_top_down_before_partitioning() {
    let disks = [
        observed("sda", 100 * GIB, "A", false),
        observed("sdb", 100 * GIB, "B", false),
    ];
    let layout = layout("mirror", &disks, Firmware::Uefi);
    let tar = root_tarball();
    let tgz = gzip(&tar);
    let machine = Machine::new();
    machine
        .disk("sda", 100 * GIB, Some("A"))
        .disk("sdb", 100 * GIB, Some("B"))
        .partition("sda", "sda1")
        .partition("sda", "sda2")
        .partition("sdb", "sdb1");
    machine.partitions_of(&layout, &[]);
    // sda2 → md127 → dm-0 (LVM old-vg/old-lv, mounted at /old); sdb1 → bcache0.
    machine
        .link("sys/block/sda/sda2/holders/md127", "../../../md127")
        .link("sys/block/md127/holders/dm-0", "../../dm-0")
        .link("sys/class/block/md127", "../../block/md127")
        .link("sys/class/block/dm-0", "../../block/dm-0")
        .write("sys/block/dm-0/dm/name", "old--vg-old--lv\n")
        .write("sys/block/dm-0/dm/uuid", "LVM-xyz\n")
        .link("sys/block/sdb/sdb1/holders/bcache0", "../../../bcache0")
        .link("sys/class/block/bcache0", "../../block/bcache0")
        .write("sys/block/bcache0/bcache/stop", "")
        .write("dev/md127", "")
        .write("proc/mounts", "/dev/dm-0 /old ext4 rw 0 0\n");
    let run = machine.run(&deployment(&layout, &disks, image("tgz", &tgz, &tar)), &tgz);
    run.assert_passed();
    let order = [
        "umount /old",
        "lvm lvchange -an old-vg/old-lv",
        "wipefs -a /dev/md127",
        "mdadm --stop /dev/md127",
        "wipefs -a /dev/sda1",
        "wipefs -a /dev/sda2",
        "wipefs -a /dev/sdb1",
        "wipefs -a /dev/sda",
        "wipefs -a /dev/sdb",
        "sfdisk --wipe always --wipe-partitions always /dev/sda",
    ];
    let positions: Vec<usize> = order.iter().map(|c| run.position(c)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{:#?}",
        run.commands
    );
    assert_eq!(machine.read("sys/block/bcache0/bcache/stop"), "1\n");
    assert!(run.stdout.contains("stopping bcache0"), "{}", run.stdout);
    // Both ends of each disk zeroed.
    let sda = machine.path("dev/sda");
    assert_eq!(machine.bytes("dev/sda", 100 * GIB - MIB, 16), vec![0; 16]);
    assert!(sda.exists());
}

// ---------------------------------------------------------------- refusals

#[test]
fn an_image_bigger_than_the_disk_is_refused_before_a_byte_is_written() {
    let disks = [observed("sda", 8 * GIB, "S1", false)];
    let layout = Layout {
        template: "blank".into(),
        firmware: Firmware::Uefi,
        ..Layout::default()
    };
    let machine = Machine::new();
    machine.disk("sda", 8 * GIB, Some("S1"));
    machine.write("dev/sda", b"old contents".repeat(100));
    // a sparse 8 GiB file again, with old contents at its start
    fs::File::options()
        .write(true)
        .open(machine.path("dev/sda"))
        .unwrap()
        .set_len(8 * GIB)
        .unwrap();
    let raw = vec![1u8; 4096];
    let mut image = image("raw", &raw, &raw);
    image["raw_size"] = json!(9 * GIB);
    let run = machine.run(&deployment(&layout, &disks, image), &raw);
    run.assert_failed_with(
        "fleet-deploy: check: the image noble is 9663676416 bytes (raw size) but the target \
         disk sda (sda) holds 8589934592 bytes: nothing was written",
    );
    run.assert_nothing_written();
    assert_eq!(machine.bytes("dev/sda", 0, 12), b"old contents");
}

#[test]
fn a_tarball_bigger_than_the_layouts_filesystems_is_refused() {
    let disks = [observed("sda", 8 * GIB, "S1", false)];
    let layout = layout("flat", &disks, Firmware::Uefi);
    let machine = Machine::new();
    machine.disk("sda", 8 * GIB, Some("S1"));
    let tar = root_tarball();
    let mut image = image("tgz", &tar, &tar);
    image["raw_size"] = json!(20 * GIB);
    // Every mounted filesystem counts (the ESP too), swap does not.
    let room: u64 = layout.disks[0].partitions.iter().map(|p| p.size).sum();
    let run = machine.run(&deployment(&layout, &disks, image), &tar);
    run.assert_failed_with(&format!(
        "fleet-deploy: check: the image noble unpacks to 21474836480 bytes (raw size) but the \
         layout's filesystems hold {room} bytes: nothing was written"
    ));
    run.assert_nothing_written();
}

#[test]
fn a_missing_or_smaller_disk_is_refused_naming_the_disks_here() {
    let disks = [observed("sda", 32 * GIB, "S1", false)];
    let layout = layout("flat", &disks, Firmware::Uefi);
    let tar = root_tarball();
    let machine = Machine::new();
    machine.disk("vdb", 16 * GIB, Some("OTHER"));
    let run = machine.run(
        &deployment(&layout, &disks, image("tar-xz", &tar, &tar)),
        &tar,
    );
    run.assert_failed_with(
        "fleet-deploy: check: disk sda (serial S1) is not on this machine: disks here: vdb \
         (17179869184 bytes, serial OTHER)",
    );
    run.assert_nothing_written();

    let machine = Machine::new();
    machine.disk("vdb", 16 * GIB, Some("S1"));
    let run = machine.run(
        &deployment(&layout, &disks, image("tar-xz", &tar, &tar)),
        &tar,
    );
    run.assert_failed_with(
        "fleet-deploy: check: disk sda (found as vdb) holds 17179869184 bytes, less than the \
         34359738368 bytes the layout was planned for",
    );
    run.assert_nothing_written();
}

#[test]
fn bios_with_root_on_lvm_and_no_boot_partition_is_refused() {
    let disks = [observed("sda", 32 * GIB, "S1", false)];
    let layout = layout("lvm", &disks, Firmware::Bios);
    let tar = root_tarball();
    let machine = Machine::new();
    machine.disk("sda", 32 * GIB, Some("S1"));
    let run = machine.run(&deployment(&layout, &disks, image("tgz", &tar, &tar)), &tar);
    run.assert_failed_with(
        "fleet-deploy: check: extlinux boots from a partition of the boot disk sda, but /boot \
         is on lv:vgroot:lvroot: give the storage template a boot_size (a /boot partition)",
    );
    run.assert_nothing_written();
}

#[test]
fn a_deployment_that_does_not_parse_is_refused() {
    let machine = Machine::new();
    machine.disk("sda", GIB, None);
    let run = machine.run_text("\"not an object\"", b"");
    run.assert_failed_with("fleet-deploy: check: the deployment JSON is not an object");
    let run = machine.run_text(r#"{"machine": "web-1", "image": {"name": "noble"#, b"");
    run.assert_failed_with(
        "fleet-deploy: check: the deployment JSON does not parse: unterminated string at byte 46",
    );
    run.assert_nothing_written();
}

// ---------------------------------------------------------------- whole-disk images

/// A raw disk image with a GPT signature and its root partition on sda1 (the fake blkid says).
fn disk_image() -> Vec<u8> {
    let mut raw: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    raw[512..520].copy_from_slice(b"EFI PART");
    raw
}

fn whole_disk_machine() -> (Machine, Vec<ObservedDisk>, Layout) {
    let disks = vec![observed("sda", 4 * GIB, "S1", false)];
    let layout = Layout {
        template: "blank".into(),
        firmware: Firmware::Uefi,
        ..Layout::default()
    };
    let machine = Machine::new();
    machine
        .disk("sda", 4 * GIB, Some("S1"))
        .partition("sda", "sda1")
        .partition("sda", "sda2")
        .write("fake/label-sda2", "cloudimg-rootfs")
        .write("fake/type-sda1", "vfat");
    (machine, disks, layout)
}

#[test]
fn a_whole_disk_image_is_streamed_verified_and_configured() {
    let (machine, disks, layout) = whole_disk_machine();
    let raw = disk_image();
    let served = gzip(&raw);
    let run = machine.run(
        &deployment(&layout, &disks, image("raw-gz", &served, &raw)),
        &served,
    );
    run.assert_passed();
    assert_eq!(machine.bytes("dev/sda", 0, raw.len()), raw);
    let order = [
        "wipefs -a /dev/sda",
        "curl -fsS http://10.99.0.1:5248/boot/files/noble/root",
        "sgdisk -e /dev/sda",
        "mount -t ext4 /dev/sda2 /target",
        "umount /target",
    ];
    let positions: Vec<usize> = order.iter().map(|c| run.position(c)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "{:#?}",
        run.commands
    );
    assert!(
        run.stdout.contains(&format!(
            "verify: sha256 {} of 3145728 bytes matches raw_sha256; the download's {} matches sha256",
            sha256(&raw),
            sha256(&served)
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("verify: the image's root filesystem is sda2"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("write-image: 3145728 bytes in "),
        "{}",
        run.stdout
    );
    assert_configured(&machine, "target");
}

/// The test hook flips one byte after the download: the streaming check catches it, the first
/// MiB written is zeroed, and the last line names both digests.
#[test]
fn a_corrupted_stream_fails_the_check_and_wipes_the_start() {
    let (machine, disks, layout) = whole_disk_machine();
    machine.write(
        "proc/cmdline",
        "console=ttyS0 fleet.test.corrupt_at=1048577\n",
    );
    let raw = disk_image();
    let mut flipped = raw.clone();
    flipped[1_048_577] ^= 0xff;
    let served = gzip(&raw);
    let run = machine.run(
        &deployment(&layout, &disks, image("raw-gz", &served, &raw)),
        &served,
    );
    run.assert_failed_with(&format!(
        "fleet-deploy: write-image: sha256 mismatch: expected {}, got {} (the unpacked image, \
         3145728 bytes)",
        sha256(&raw),
        sha256(&flipped)
    ));
    assert_eq!(
        machine.bytes("dev/sda", 0, MIB as usize),
        vec![0; MIB as usize]
    );
    // What was written past the first MiB is the flipped stream: the flip was at that byte.
    assert_eq!(
        machine.bytes("dev/sda", MIB, 2 * MIB as usize),
        flipped[MIB as usize..3 * MIB as usize]
    );
    assert!(!run.commands.iter().any(|c| c.starts_with("mount ")));
    assert!(!machine.path("target/etc/fleet/callback").exists());
}

#[test]
fn a_raw_image_with_the_wrong_download_digest_fails() {
    let (machine, disks, layout) = whole_disk_machine();
    let raw = disk_image();
    let mut image = image("raw", &raw, &raw);
    image["sha256"] = json!("0".repeat(64));
    let run = machine.run(&deployment(&layout, &disks, image), &raw);
    run.assert_failed_with(&format!(
        "fleet-deploy: write-image: sha256 mismatch: expected {}, got {} (the image, 3145728 bytes)",
        "0".repeat(64),
        sha256(&raw)
    ));
    assert_eq!(machine.bytes("dev/sda", 0, 16), vec![0; 16]);
}

#[test]
fn the_dd_baseline_hook_logs_both_rates() {
    let (machine, disks, layout) = whole_disk_machine();
    machine.write("proc/cmdline", "fleet.test.dd_baseline=1\n");
    let raw = disk_image();
    let run = machine.run(&deployment(&layout, &disks, image("raw", &raw, &raw)), &raw);
    run.assert_passed();
    assert!(
        run.stdout
            .contains("write-image: baseline (plain dd): 3145728 bytes in "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("write-image: 3145728 bytes in "),
        "{}",
        run.stdout
    );
    assert_eq!(machine.bytes("dev/sda", 0, raw.len()), raw);
}

// ---------------------------------------------------------------- the runner

/// One request the fake controller saw.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

/// A controller on loopback that answers a deploying run's calls and records them; each
/// heartbeat carrying a progress phase leaves a file of that name in `marks`.
struct FakeController {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Kept for the marks' lifetime (removed when the test ends).
    _marks: tempfile::TempDir,
}

impl FakeController {
    fn requests(&self) -> Vec<Request> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.seen.lock().unwrap().clone()
    }
}

fn fake_controller(deployment: (u16, String), script: String) -> FakeController {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let marks = tempfile::tempdir().unwrap();
    let mark_directory = marks.path().to_path_buf();
    let script = script.replace("MARKS", mark_directory.to_str().unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (recorded, stopping) = (seen.clone(), stop.clone());
    std::thread::spawn(move || {
        while !stopping.load(Ordering::Relaxed) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            let request = read_request(&mut stream);
            let machine = "/metadata/v1/machines/web-1/";
            let mut status = 200;
            let answer = match (request.method.as_str(), request.path.strip_prefix(machine)) {
                ("POST", Some("exchange")) => "token tok-123\nrun run-7\nrole deploying\n".into(),
                ("GET", Some("instructions")) => {
                    "role deploying\nrun run-7\nheartbeat 1\nafter exit\nscript fleet-deploy deploy 60\n"
                        .into()
                }
                ("GET", Some("deployment")) => {
                    status = deployment.0;
                    deployment.1.clone()
                }
                ("GET", Some("scripts/fleet-deploy")) => script.clone(),
                ("POST", Some("signal")) => "after exit\n".into(),
                _ => "ok\n".to_string(),
            };
            if request.path.ends_with("/heartbeat") {
                if let Ok(beat) = serde_json::from_str::<Value>(&request.body) {
                    if let Some(phase) = beat["progress"]["phase"].as_str() {
                        let _ = fs::write(mark_directory.join(phase), &request.body);
                    }
                }
            }
            recorded.lock().unwrap().push(request);
            let reply = format!(
                "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                if status == 200 { "OK" } else { "Not Found" },
                answer.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    FakeController {
        url,
        seen,
        stop,
        _marks: marks,
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Request {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    let header_end = loop {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the connection closed inside the headers");
        data.extend_from_slice(&buffer[..read]);
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..header_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while data.len() < header_end + length {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0);
        data.extend_from_slice(&buffer[..read]);
    }
    let mut words = head.split_whitespace();
    Request {
        method: words.next().unwrap().to_string(),
        path: words.next().unwrap().to_string(),
        authorization: header("authorization"),
        body: String::from_utf8_lossy(&data[header_end..header_end + length]).into_owned(),
    }
}

/// fleet-runner.sh for a deploying run against the controller at URL (busybox wget, as in a
/// bare initramfs: the stand-in curl serves images only); the machine's directory and output.
fn run_runner(url: &str) -> (Machine, std::process::Output) {
    let machine = Machine::new();
    fs::remove_file(machine.path("bin/curl")).unwrap();
    let runner = machine.path("fleet-runner.sh");
    fs::write(&runner, RUNNER).unwrap();
    let output = Command::new(BUSYBOX)
        .arg("sh")
        .arg(&runner)
        .env_clear()
        .env("PATH", machine.path("bin"))
        .env("FLEET_URL", url)
        .env("FLEET_ROLE", "deploying")
        .env("FLEET_MACHINE", "web-1")
        .env("FLEET_BOOT_SECRET", "boot-secret")
        .env("FLEET_AFTER_OVERRIDE", "exit")
        .env("TMPDIR", machine.path("tmp"))
        .output()
        .unwrap();
    (machine, output)
}

/// A deploying run: the runner fetches the deployment with the run's token into a file, gives
/// the script its path (and no token), and its heartbeats carry the script's progress.
#[test]
fn the_runner_fetches_the_deployment_and_reports_progress() {
    use base64::Engine;
    let deployment = r#"{"machine":"web-1","callback":{"secret":"s3cr3t"}}"#.to_string();
    // Each phase lasts until a heartbeat carried it (MARKS/PHASE), however slow the machine.
    let script = "#!/bin/sh\necho \"deployment: $(cat \"$FLEET_DEPLOYMENT\")\"\n\
                  env | grep -c tok-123\n\
                  until_beat() { i=0; while [ ! -e MARKS/$1 ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done; }\n\
                  echo 'write-image 512 1024' > \"$FLEET_PROGRESS\"\nuntil_beat write-image\n\
                  echo verify > \"$FLEET_PROGRESS\"\nuntil_beat verify\n"
        .to_string();
    let controller = fake_controller((200, deployment.clone()), script);
    let (machine, output) = run_runner(&controller.url);
    let log = String::from_utf8_lossy(&output.stderr);
    let requests = controller.requests();
    assert_eq!(output.status.code(), Some(0), "{log}");
    let fetched = requests
        .iter()
        .find(|r| r.path.ends_with("/deployment"))
        .unwrap_or_else(|| panic!("no deployment fetch in {requests:#?}"));
    assert_eq!(fetched.authorization.as_deref(), Some("Bearer tok-123"));
    let result = requests
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/results"))
        .unwrap();
    let result: Value = serde_json::from_str(&result.body).unwrap();
    assert_eq!(result["status"], "passed", "{result}");
    let stdout = base64::engine::general_purpose::STANDARD
        .decode(result["stdout_b64"].as_str().unwrap())
        .unwrap();
    // The script read the deployment from its file, and its environment holds no token.
    assert_eq!(
        String::from_utf8(stdout).unwrap(),
        format!("deployment: {deployment}\n0\n")
    );
    let beats: Vec<&str> = requests
        .iter()
        .filter(|r| r.path.ends_with("/heartbeat"))
        .map(|r| r.body.as_str())
        .collect();
    assert!(
        beats.contains(
            &r#"{"stage":"running fleet-deploy","progress":{"phase":"write-image","done":512,"total":1024}}"#
        ),
        "{beats:#?}"
    );
    assert!(
        beats.contains(&r#"{"stage":"running fleet-deploy","progress":{"phase":"verify"}}"#),
        "{beats:#?}"
    );
    // The deployment file is gone with the runner's directory.
    let left: Vec<_> = fs::read_dir(machine.path("tmp")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------- the real sfdisk and sgdisk

/// The path of a real tool (sfdisk, sgdisk) for the tests that check what it makes of the
/// script's input.
fn real_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|directory| Path::new(directory).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing: the deploy tests check the tables it writes; run .ci/setup \
                 (.ci/setup-ephemeral installs fdisk and gdisk)"
            )
        })
}

impl Machine {
    /// The real TOOL on the fake machine's PATH instead of the stand-in.
    fn use_real(&self, name: &str) -> &Self {
        let file = self.path("bin").join(name);
        let _ = fs::remove_file(&file);
        symlink(real_tool(name), file).unwrap();
        self
    }
}

/// A partition in sfdisk's terms: start, size (sectors), type, bootable, attrs.
type SfdiskPartition = (u64, u64, String, bool, String);

/// `sfdisk -J DISK`: the label and the partitions.
fn table_of(disk: &Path) -> (String, Vec<SfdiskPartition>) {
    let output = Command::new(real_tool("sfdisk"))
        .arg("-J")
        .arg(disk)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let table: Value = serde_json::from_slice(&output.stdout).unwrap();
    let table = &table["partitiontable"];
    let partitions = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_uppercase(),
                p["bootable"].as_bool().unwrap_or(false),
                p["attrs"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (table["label"].as_str().unwrap().to_string(), partitions)
}

/// What the planner's layout says each partition of DISK must be, in sfdisk's terms.
fn planned_table(layout: &Layout, disk: &str) -> (String, Vec<SfdiskPartition>) {
    use crate::plan::layout::{PartitionKind::*, PartitionTable};
    let planned = layout.disks.iter().find(|d| d.name == disk).unwrap();
    let gpt = planned.table == Some(PartitionTable::Gpt);
    let boot_mount = |mount: &str| {
        planned
            .partitions
            .iter()
            .position(|p| p.filesystem.as_ref().and_then(|f| f.mount.as_deref()) == Some(mount))
    };
    let booted = boot_mount("/boot").or_else(|| boot_mount("/"));
    let bios_boot =
        |index: usize| layout.firmware == Firmware::Bios && planned.boot && Some(index) == booted;
    let partitions = planned
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let kind = match (gpt, p.kind) {
                (true, Esp) => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                (true, BiosGrub) => "21686148-6449-6E6F-744E-656564454649",
                (true, Swap) => "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
                (true, Raid) => "A19D880F-05FC-4D3B-A006-743F0F84911E",
                (true, Lvm) => "E6D6D379-F507-44C2-A23C-238F2A3DF928",
                (true, _) => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                (false, Esp) => "EF",
                (false, Swap) => "82",
                (false, Raid) => "FD",
                (false, Lvm) => "8E",
                (false, _) => "83",
            };
            let attrs = if gpt && bios_boot(index) {
                "LegacyBIOSBootable"
            } else {
                ""
            };
            (
                p.start / 512,
                p.size / 512,
                kind.to_string(),
                !gpt && bios_boot(index),
                attrs.to_string(),
            )
        })
        .collect();
    (if gpt { "gpt" } else { "dos" }.to_string(), partitions)
}

/// The real sfdisk takes the script's input and writes exactly the planned tables: msdos with
/// the bootable flag, GPT with its type GUIDs, BIOS on GPT with LegacyBIOSBootable, two disks.
#[test]
fn the_real_sfdisk_writes_the_planned_tables() {
    let cases: [(&str, Firmware, Vec<ObservedDisk>); 4] = [
        (
            "flat",
            Firmware::Bios,
            vec![observed("sda", 32 * GIB, "A", true)],
        ),
        (
            "flat",
            Firmware::Uefi,
            vec![observed("sda", 32 * GIB, "A", false)],
        ),
        (
            "boot",
            Firmware::Bios,
            vec![observed("sda", 3 * 1024 * GIB, "A", true)],
        ),
        (
            "mirror",
            Firmware::Uefi,
            vec![
                observed("sda", 100 * GIB, "A", false),
                observed("sdb", 100 * GIB, "B", false),
            ],
        ),
    ];
    let tar = root_tarball();
    let tgz = gzip(&tar);
    for (template, firmware, disks) in cases {
        let layout = layout(template, &disks, firmware);
        let machine = Machine::new();
        machine.use_real("sfdisk");
        for disk in &disks {
            machine.disk(&disk.name, disk.size_bytes as u64, disk.serial.as_deref());
        }
        machine.partitions_of(&layout, &[]);
        let run = machine.run(&deployment(&layout, &disks, image("tgz", &tgz, &tar)), &tgz);
        run.assert_passed();
        for disk in &disks {
            assert_eq!(
                table_of(&machine.path(&format!("dev/{}", disk.name))),
                planned_table(&layout, &disk.name),
                "{template} on {firmware:?}, disk {}",
                disk.name
            );
        }
    }
}

/// A GPT whole-disk image smaller than the disk: the real sgdisk moves its backup header to the
/// disk's last sector.
#[test]
fn the_real_sgdisk_moves_the_backup_gpt_to_the_end() {
    let staging = tempfile::tempdir().unwrap();
    let image_file = staging.path().join("disk.raw");
    fs::File::create(&image_file)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let mut sfdisk = Command::new(real_tool("sfdisk"))
        .arg(&image_file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=2048, size=8192, type=L\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let raw = fs::read(&image_file).unwrap();
    assert_eq!(&raw[8 * MIB as usize - 512..][..8], b"EFI PART");
    let (machine, disks, layout) = whole_disk_machine();
    machine.use_real("sgdisk");
    let run = machine.run(&deployment(&layout, &disks, image("raw", &raw, &raw)), &raw);
    run.assert_passed();
    assert!(run.stdout.contains("/sgdisk -e /dev/sda"), "{}", run.stdout);
    assert_eq!(machine.bytes("dev/sda", 4 * GIB - 512, 8), b"EFI PART");
    let (label, partitions) = table_of(&machine.path("dev/sda"));
    assert_eq!(
        (label.as_str(), partitions[0].0, partitions[0].1),
        ("gpt", 2048, 8192)
    );
}

/// No deployment for the run: the runner runs no script and signals the failure with why.
#[test]
fn the_runner_signals_a_failure_when_the_deployment_cannot_be_fetched() {
    let controller = fake_controller((404, "no deployment\n".into()), "exit 0\n".into());
    let (_machine, output) = run_runner(&controller.url);
    let log = String::from_utf8_lossy(&output.stderr);
    let requests = controller.requests();
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(
        !requests.iter().any(|r| r.path.contains("/scripts/")),
        "{requests:#?}"
    );
    let signal = requests
        .iter()
        .find(|r| r.path.ends_with("/signal"))
        .unwrap();
    let signal: Value = serde_json::from_str(&signal.body).unwrap();
    assert_eq!(signal["result"], "failed");
    // (busybox wget keeps no body of an error reply)
    let reason = signal["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("fetching the deployment failed: HTTP 404"),
        "{reason}"
    );
}

/// The first-boot hook the deployment leaves: it posts the one-shot secret to the call-back URL
/// (busybox wget here) and deletes the credential once the controller took it.
#[test]
fn the_first_boot_hook_calls_back_once_and_forgets_the_secret() {
    let controller = fake_controller((200, "{}".into()), "exit 0\n".into());
    let url = &controller.url;
    let disks = [observed("sda", 32 * GIB, "S1", true)];
    let layout = layout("flat", &disks, Firmware::Bios);
    let tar = root_tarball();
    let tgz = gzip(&tar);
    let machine = Machine::new();
    machine.disk("sda", 32 * GIB, Some("S1"));
    machine.partitions_of(&layout, &[]);
    let mut deployment = deployment(&layout, &disks, image("tgz", &tgz, &tar));
    deployment["callback"]["url"] = json!(format!("{url}/metadata/v1/machines/web-1/deployed"));
    machine.run(&deployment, &tgz).assert_passed();

    let callback = machine.path("target/etc/fleet/callback");
    let hook = machine
        .read("target/usr/lib/fleet/first-boot")
        .replace("/etc/fleet/callback", callback.to_str().unwrap());
    fs::write(machine.path("first-boot"), hook).unwrap();
    fs::remove_file(machine.path("bin/curl")).unwrap();
    let output = Command::new(BUSYBOX)
        .arg("sh")
        .arg(machine.path("first-boot"))
        .env_clear()
        .env("PATH", machine.path("bin"))
        .env("TMPDIR", machine.path("tmp"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    let requests = controller.requests();
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(
        said.contains("the controller took the call-back: deployed"),
        "{said}"
    );
    let posted = requests
        .iter()
        .find(|r| r.path == "/metadata/v1/machines/web-1/deployed")
        .unwrap_or_else(|| panic!("no call-back in {requests:#?}"));
    assert_eq!(posted.method, "POST");
    assert_eq!(posted.authorization, None);
    let body: Value = serde_json::from_str(&posted.body).unwrap();
    assert_eq!(body, json!({"callback": SECRET}));
    assert!(
        !callback.exists(),
        "the credential is deleted once accepted"
    );
}

/// A digest that is not 64 hex digits is refused at check (never skipped), upper case is taken.
#[test]
fn digests_are_checked_for_shape_and_compared_in_lower_case() {
    let (machine, disks, layout) = whole_disk_machine();
    let raw = disk_image();
    let mut bad = image("raw", &raw, &raw);
    bad["raw_sha256"] = json!("abc");
    let run = machine.run(&deployment(&layout, &disks, bad), &raw);
    run.assert_failed_with(
        "fleet-deploy: check: the image's raw_sha256 'abc' is not 64 hex digits",
    );
    run.assert_nothing_written();
    let mut upper = image("raw", &raw, &raw);
    upper["sha256"] = json!(sha256(&raw).to_uppercase());
    machine
        .run(&deployment(&layout, &disks, upper), &raw)
        .assert_passed();
}
