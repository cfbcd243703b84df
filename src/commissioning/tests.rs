//! The built-in scripts run for real under busybox (on this host and on fake sysfs trees), and
//! the parser on captured outputs.

use super::*;
use crate::model::names::MacAddr;
use crate::model::records::{Disk, Interface};
use serde_json::{json, Value};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

mod erase;

const BUSYBOX: &str = "/bin/busybox";

/// A place to run scripts the way the initramfs does: busybox's applets alone on the PATH.
struct Sandbox {
    directory: tempfile::TempDir,
}

struct ScriptRun {
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    results: Option<Value>,
}

impl Sandbox {
    fn new() -> Sandbox {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} is missing: the commissioning tests run the scripts under busybox; run .ci/setup (it installs busybox-static)"
        );
        let directory = tempfile::tempdir().unwrap();
        let applets = directory.path().join("bin");
        fs::create_dir(&applets).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            std::os::unix::fs::symlink(BUSYBOX, applets.join(applet)).unwrap();
        }
        Sandbox { directory }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    fn run(&self, name: &str, environment: &[(&str, &str)]) -> ScriptRun {
        let script = builtin_script(name).unwrap_or_else(|| panic!("no built-in script {name}"));
        let file = self.path(&format!("{name}.sh"));
        fs::write(&file, script.text).unwrap();
        let results = self.path(&format!("{name}.results.json"));
        let _ = fs::remove_file(&results);
        let output = Command::new(BUSYBOX)
            .arg("sh")
            .arg(&file)
            .env_clear()
            .env("PATH", self.path("bin"))
            .env("FLEET_URL", "http://127.0.0.1:9")
            .env("FLEET_MACHINE", "test-machine")
            .env("FLEET_ROLE", "commissioning")
            .env("FLEET_RUN", "run-1")
            .env("FLEET_SCRIPT", name)
            .env("FLEET_RESULTS", &results)
            .envs(environment.iter().copied())
            .output()
            .unwrap();
        ScriptRun {
            exit_code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            results: fs::read_to_string(&results)
                .ok()
                .map(|text| serde_json::from_str(&text).expect("results are a JSON object")),
        }
    }

    /// Runs a script that must pass and says nothing on stderr; its stdout.
    fn run_passing(&self, name: &str, environment: &[(&str, &str)]) -> String {
        let run = self.run(name, environment);
        assert_eq!(
            run.exit_code,
            Some(0),
            "{name} failed: {}{}",
            run.stdout,
            run.stderr
        );
        assert_eq!(run.stderr, "", "{name} wrote to stderr");
        run.stdout
    }
}

fn commissioning_script_names() -> Vec<&'static str> {
    let scripts = builtin_scripts().iter();
    let commissioning = scripts.filter(|script| script.kind == ScriptKind::Commissioning);
    commissioning.map(|script| script.name).collect()
}

fn parse_clean(stdout: &str) -> Inventory {
    let (inventory, problems) = Inventory::from_results([("test", stdout)].into_iter());
    assert_eq!(problems, vec![], "in:\n{stdout}");
    inventory
}

fn mac(text: &str) -> MacAddr {
    MacAddr::parse(text).unwrap()
}

// ---------------------------------------------------------------- the registry

#[test]
fn builtin_scripts_are_in_name_order_with_safe_names() {
    let names: Vec<&str> = builtin_scripts().iter().map(|script| script.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted);
    let name_character = |c: char| c.is_ascii_alphanumeric() || ".-_".contains(c);
    for script in builtin_scripts() {
        assert!(script.name.chars().all(name_character), "{}", script.name);
        assert!(script.text.starts_with("#!/bin/sh\n"), "{}", script.name);
        // Only the disk erases and the deployment destroy data, never on a host with a workload.
        assert_eq!(
            script.destructive,
            matches!(script.kind, ScriptKind::Erase | ScriptKind::Deploy),
            "{}",
            script.name
        );
        assert!(
            !(script.destructive && script.safe_on_live_host),
            "{}",
            script.name
        );
        assert_eq!(builtin_script(script.name), Some(script));
    }
    assert_eq!(builtin_script("no-such-script"), None);
    assert_eq!(commissioning_script_names().len(), 8);
    assert_eq!(ScriptKind::parse("testing"), Some(ScriptKind::Testing));
    assert_eq!(ScriptKind::Commissioning.to_string(), "commissioning");
}

#[test]
fn every_script_is_valid_busybox_sh() {
    let sandbox = Sandbox::new();
    for script in builtin_scripts() {
        let file = sandbox.path("check.sh");
        fs::write(&file, script.text).unwrap();
        let check = Command::new(BUSYBOX)
            .args(["sh", "-n"])
            .arg(&file)
            .output()
            .unwrap();
        let complaint = String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success(), "{}: {complaint}", script.name);
    }
}

/// Every commissioning script is served with the fact helpers in front (each is downloaded
/// alone), and no script file carries a copy of its own.
#[test]
fn every_commissioning_script_is_served_with_the_fact_helpers() {
    let helpers = include_str!("scripts/fact-helpers.inc");
    for name in commissioning_script_names() {
        let text = builtin_script(name).unwrap().text;
        assert!(text.starts_with(helpers), "{name}");
        assert_eq!(
            text.matches("# --- end of fact helpers ---").count(),
            1,
            "{name}"
        );
    }
}

// ---------------------------------------------------------------- this host, for real

#[test]
fn commissioning_scripts_describe_this_host() {
    let sandbox = Sandbox::new();
    let outputs: Vec<(&str, String)> = commissioning_script_names()
        .into_iter()
        .map(|name| (name, sandbox.run_passing(name, &[])))
        .collect();
    let borrowed = outputs
        .iter()
        .map(|(name, stdout)| (*name, stdout.as_str()));
    let (inventory, problems) = Inventory::from_results(borrowed);
    assert_eq!(problems, vec![], "outputs: {outputs:#?}");

    assert!(inventory.arch.is_some());
    let nproc = Command::new(BUSYBOX).arg("nproc").output().unwrap();
    let nproc: i64 = String::from_utf8(nproc.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(inventory.hardware.cpus, Some(nproc));
    let memory_mib = inventory.hardware.memory_mib.unwrap() as f64;
    let expected_mib = installed_memory_kib().unwrap_or_else(meminfo_total_kib) as f64 / 1024.0;
    assert!(
        (memory_mib - expected_mib).abs() <= expected_mib * 0.01,
        "{memory_mib} MiB vs {expected_mib}"
    );
    assert!(
        !inventory.interfaces.is_empty(),
        "no interface with a MAC: {outputs:#?}"
    );
    for (name, size_bytes) in real_disks_of_this_host() {
        let disk = inventory.disks.iter().find(|disk| disk.name == name);
        let disk = disk.unwrap_or_else(|| panic!("disk {name} is missing: {outputs:#?}"));
        assert_eq!(disk.size_bytes, size_bytes, "{name}");
    }
    assert!(inventory.hardware.facts["pci"].is_array() || !Path::new("/sys/bus/pci").exists());
    assert!(inventory.hardware.facts["dmi"].is_object());
}

/// Online memory blocks × block size, as sysfs shows them (None without memory blocks).
pub fn installed_memory_kib() -> Option<i64> {
    let block = fs::read_to_string("/sys/devices/system/memory/block_size_bytes").ok()?;
    let block = i64::from_str_radix(block.trim(), 16).ok()?;
    let online = fs::read_dir("/sys/devices/system/memory")
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| {
            fs::read_to_string(entry.path().join("online")).is_ok_and(|text| text.trim() == "1")
        })
        .count() as i64;
    (online > 0).then_some(online * block / 1024)
}

fn meminfo_total_kib() -> i64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The disks of /sys/block (name, size in bytes), by the rules 30-fleet-disks states.
fn real_disks_of_this_host() -> Vec<(String, i64)> {
    let not_disks = ["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"];
    let mut disks = Vec::new();
    for entry in fs::read_dir("/sys/block").unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let real = fs::canonicalize(entry.path()).unwrap();
        let real = real.to_string_lossy();
        let hidden =
            fs::read_to_string(entry.path().join("hidden")).is_ok_and(|text| text.trim() == "1");
        let eliminated = not_disks.iter().any(|prefix| name.starts_with(prefix))
            || (name.starts_with("mmcblk") && (name.contains("boot") || name.ends_with("rpmb")))
            || (real.contains("/devices/virtual/")
                && !real.contains("/devices/virtual/nvme-subsystem/"))
            || hidden;
        let sectors: i64 = fs::read_to_string(entry.path().join("size"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if !eliminated && sectors > 0 {
            disks.push((name, sectors * 512));
        }
    }
    disks
}

// ---------------------------------------------------------------- a fake QEMU machine

/// A fake sysfs and procfs tree; links are made absolute inside it.
struct FakeTree {
    directory: tempfile::TempDir,
}

impl FakeTree {
    fn new() -> FakeTree {
        FakeTree {
            directory: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> &str {
        self.directory.path().to_str().unwrap()
    }

    fn file(&self, path: &str, content: impl AsRef<[u8]>) -> &Self {
        let full = self.directory.path().join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, content).unwrap();
        self
    }

    /// Several attribute files of one directory: `("name", "content")`.
    fn files(&self, directory: &str, files: &[(&str, &str)]) -> &Self {
        for (name, content) in files {
            self.file(&format!("{directory}/{name}"), content);
        }
        self
    }

    fn link(&self, path: &str, target: &str) -> &Self {
        let full = self.directory.path().join(path);
        let target = self.directory.path().join(target);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(target, full).unwrap();
        self
    }

    /// Runs `script` with this tree as its /sys and /dev (plus `extra` variables).
    fn run_with_disks(&self, sandbox: &Sandbox, script: &str, extra: &[(&str, &str)]) -> ScriptRun {
        let sysfs = format!("{}/sys", self.root());
        let devfs = format!("{}/dev", self.root());
        let mut environment = vec![
            ("FLEET_SYSFS", sysfs.as_str()),
            ("FLEET_DEVFS", devfs.as_str()),
        ];
        environment.extend_from_slice(extra);
        sandbox.run(script, &environment)
    }

    fn environment(&self) -> [(&str, String); 2] {
        [
            ("FLEET_SYSFS", format!("{}/sys", self.root())),
            ("FLEET_PROCFS", format!("{}/proc", self.root())),
        ]
    }
}

const PCI: &str = "sys/devices/pci0000:00";

/// What /sys and /proc look like in a QEMU i440fx VM with 2 CPUs and 512 MiB: a virtio disk
/// with a serial, an IDE disk and CD-ROM, an NVMe disk, an e1000 NIC with link, a virtio NIC
/// without, a USB tablet; plus a loop device, zram, lo and a bridge that must be left out.
fn qemu_machine() -> FakeTree {
    let tree = FakeTree::new();
    qemu_cpu_and_memory(&tree);
    qemu_disks(&tree);
    qemu_interfaces(&tree);
    qemu_pci(&tree);
    qemu_usb(&tree);
    qemu_dmi(&tree);
    tree
}

fn qemu_cpu_and_memory(tree: &FakeTree) {
    let processor = |number: u32| {
        format!(
            "processor\t: {number}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 6\n\
             model name\t: QEMU Virtual CPU version 2.5+\nstepping\t: 3\ncpu MHz\t\t: 2399.998\n\
             cache size\t: 16384 KB\nflags\t\t: fpu de pse tsc msr pae mce cx8 apic sep\n\n"
        )
    };
    tree.file("proc/cpuinfo", processor(0) + &processor(1))
        .file("proc/meminfo", "MemTotal:         503672 kB\nMemFree:          401220 kB\nMemAvailable:     420000 kB\n")
        .file("sys/devices/system/cpu/online", "0-1\n");
}

fn qemu_disks(tree: &FakeTree) {
    let queue = |disk: &str, rotational: &str, block_size: &str| {
        tree.file(&format!("{disk}/queue/rotational"), rotational)
            .file(&format!("{disk}/queue/logical_block_size"), block_size);
    };
    let vda = format!("{PCI}/0000:00:04.0/virtio1/block/vda");
    tree.link("sys/block/vda", &vda)
        .files(
            &vda,
            &[
                ("size", "41943040\n"),
                ("serial", "fleet-disk-0"),
                ("dev", "252:0\n"),
            ],
        )
        .link(
            &format!("{vda}/device"),
            &format!("{PCI}/0000:00:04.0/virtio1"),
        )
        .link(
            &format!("{PCI}/0000:00:04.0/virtio1/driver"),
            "sys/bus/virtio/drivers/virtio_blk",
        );
    queue(&vda, "1\n", "512\n");

    let scsi_device = format!("{PCI}/0000:00:01.1/ata1/host0/target0:0:0/0:0:0:0");
    let sda = format!("{scsi_device}/block/sda");
    tree.link("sys/block/sda", &sda)
        .files(&sda, &[("size", "2097152\n"), ("dev", "8:0\n")])
        .link(&format!("{sda}/device"), &scsi_device)
        .files(
            &scsi_device,
            &[("model", "QEMU HARDDISK   \n"), ("vendor", "ATA     \n")],
        )
        .file(
            &format!("{scsi_device}/vpd_pg80"),
            b"\x00\x80\x00\x07QM00001",
        );
    queue(&sda, "1\n", "512\n");

    let sr0 = format!("{PCI}/0000:00:01.1/ata2/host1/target1:0:0/1:0:0:0/block/sr0");
    tree.link("sys/block/sr0", &sr0)
        .files(&sr0, &[("size", "2097151\n")]);

    // NVMe as Debian's kernel shows it (multipath on, as captured under QEMU): the path
    // nvme0c0n1 is a hidden disk of the controller, the disk nvme0n1 sits under the virtual
    // subsystem, and both the controller and the subsystem carry the model and serial.
    let identity = [
        ("model", "QEMU NVMe Ctrl                          \n"),
        ("serial", "fleetnvme0          \n"),
    ];
    let controller = format!("{PCI}/0000:00:06.0/nvme/nvme0");
    let path = format!("{controller}/nvme0c0n1");
    tree.link("sys/block/nvme0c0n1", &path)
        .files(&path, &[("size", "20971520\n"), ("hidden", "1\n")])
        .link(&format!("{path}/device"), &controller)
        .files(&controller, &identity);
    let subsystem = "sys/devices/virtual/nvme-subsystem/nvme-subsys0";
    let nvme0n1 = format!("{subsystem}/nvme0n1");
    tree.link("sys/block/nvme0n1", &nvme0n1)
        .files(
            &nvme0n1,
            &[
                ("size", "20971520\n"),
                ("hidden", "0\n"),
                ("dev", "259:1\n"),
            ],
        )
        .link(&format!("{nvme0n1}/device"), subsystem)
        .files(subsystem, &identity);
    queue(&nvme0n1, "0\n", "512\n");

    tree.link("sys/block/loop0", "sys/devices/virtual/block/loop0")
        .files("sys/devices/virtual/block/loop0", &[("size", "204800\n")])
        .link("sys/block/zram0", "sys/devices/virtual/block/zram0")
        .files("sys/devices/virtual/block/zram0", &[("size", "1000000\n")]);
}

fn qemu_interfaces(tree: &FakeTree) {
    let ens3 = format!("{PCI}/0000:00:03.0/net/ens3");
    tree.link("sys/class/net/ens3", &ens3)
        .files(
            &ens3,
            &[
                ("address", "52:54:00:12:34:56\n"),
                ("operstate", "up\n"),
                ("carrier", "1\n"),
                ("speed", "1000\n"),
                ("type", "1\n"),
            ],
        )
        .link(&format!("{ens3}/device"), &format!("{PCI}/0000:00:03.0"));
    // A virtio NIC that is down: no carrier file to read, speed -1.
    let ens5 = format!("{PCI}/0000:00:05.0/virtio2/net/ens5");
    tree.link("sys/class/net/ens5", &ens5)
        .files(
            &ens5,
            &[
                ("address", "52:54:00:ab:cd:ef\n"),
                ("operstate", "down\n"),
                ("speed", "-1\n"),
                ("type", "1\n"),
            ],
        )
        .link(
            &format!("{ens5}/device"),
            &format!("{PCI}/0000:00:05.0/virtio2"),
        )
        .link(
            &format!("{PCI}/0000:00:05.0/virtio2/driver"),
            "sys/bus/virtio/drivers/virtio_net",
        );
    tree.link("sys/class/net/lo", "sys/devices/virtual/net/lo")
        .files(
            "sys/devices/virtual/net/lo",
            &[
                ("address", "00:00:00:00:00:00\n"),
                ("operstate", "unknown\n"),
                ("type", "772\n"),
            ],
        )
        .link("sys/class/net/br0", "sys/devices/virtual/net/br0")
        .files(
            "sys/devices/virtual/net/br0",
            &[
                ("address", "52:54:00:12:34:56\n"),
                ("operstate", "up\n"),
                ("type", "1\n"),
            ],
        );
}

fn qemu_pci(tree: &FakeTree) {
    let devices = [
        ("0000:00:00.0", "0x8086", "0x1237", "0x060000", "0x02", None),
        (
            "0000:00:01.1",
            "0x8086",
            "0x7010",
            "0x010180",
            "0x00",
            Some("ata_piix"),
        ),
        (
            "0000:00:01.2",
            "0x8086",
            "0x7020",
            "0x0c0300",
            "0x01",
            Some("uhci_hcd"),
        ),
        (
            "0000:00:03.0",
            "0x8086",
            "0x100e",
            "0x020000",
            "0x03",
            Some("e1000"),
        ),
        (
            "0000:00:04.0",
            "0x1af4",
            "0x1001",
            "0x010000",
            "0x00",
            Some("virtio-pci"),
        ),
        (
            "0000:00:05.0",
            "0x1af4",
            "0x1000",
            "0x020000",
            "0x00",
            Some("virtio-pci"),
        ),
        (
            "0000:00:06.0",
            "0x1b36",
            "0x0010",
            "0x010802",
            "0x02",
            Some("nvme"),
        ),
    ];
    for (slot, vendor, device, class, revision, driver) in devices {
        let path = format!("{PCI}/{slot}");
        tree.link(&format!("sys/bus/pci/devices/{slot}"), &path)
            .files(
                &path,
                &[
                    ("vendor", &format!("{vendor}\n")),
                    ("device", &format!("{device}\n")),
                    ("class", &format!("{class}\n")),
                    ("subsystem_vendor", "0x1af4\n"),
                    ("subsystem_device", "0x1100\n"),
                    ("revision", &format!("{revision}\n")),
                ],
            );
        if let Some(driver) = driver {
            tree.link(
                &format!("{path}/driver"),
                &format!("sys/bus/pci/drivers/{driver}"),
            );
        }
    }
}

fn qemu_usb(tree: &FakeTree) {
    let hub = format!("{PCI}/0000:00:01.2/usb1");
    tree.link("sys/bus/usb/devices/usb1", &hub)
        .files(
            &hub,
            &[
                ("idVendor", "1d6b\n"),
                ("idProduct", "0001\n"),
                ("bDeviceClass", "09\n"),
                ("manufacturer", "Linux 6.1.0-28-amd64 uhci_hcd\n"),
                ("product", "UHCI Host Controller\n"),
                ("serial", "0000:00:01.2\n"),
                ("speed", "12\n"),
                ("busnum", "1\n"),
                ("devnum", "1\n"),
            ],
        )
        .link(&format!("{hub}/driver"), "sys/bus/usb/drivers/usb");
    let tablet = format!("{hub}/1-1");
    tree.link("sys/bus/usb/devices/1-1", &tablet)
        .files(
            &tablet,
            &[
                ("idVendor", "0627\n"),
                ("idProduct", "0001\n"),
                ("bDeviceClass", "00\n"),
                ("manufacturer", "QEMU\n"),
                ("product", "QEMU USB Tablet\n"),
                ("serial", "28754-0000:00:01.2-1\n"),
                ("speed", "12\n"),
                ("busnum", "1\n"),
                ("devnum", "2\n"),
            ],
        )
        .link(&format!("{tablet}/driver"), "sys/bus/usb/drivers/usb");
    // An interface of the tablet: no idVendor, not a device.
    tree.link("sys/bus/usb/devices/1-1:1.0", &format!("{tablet}/1-1:1.0"))
        .files(&format!("{tablet}/1-1:1.0"), &[("bInterfaceClass", "03\n")]);
}

fn qemu_dmi(tree: &FakeTree) {
    // product_serial, product_uuid and board_* are absent: root-only or not given by QEMU.
    tree.files(
        "sys/devices/virtual/dmi/id",
        &[
            ("sys_vendor", "QEMU\n"),
            ("product_name", "Standard PC (i440FX + PIIX, 1996)\n"),
            ("product_version", "pc-i440fx-7.2\n"),
            ("chassis_vendor", "QEMU\n"),
            ("chassis_type", "1\n"),
            ("bios_vendor", "SeaBIOS\n"),
            ("bios_version", "1.16.2-debian-1.16.2-1\n"),
            ("bios_date", "04/01/2014\n"),
        ],
    )
    .link("sys/class/dmi/id", "sys/devices/virtual/dmi/id");
}

const QEMU_FACTS: &str = include_str!("fixtures/qemu-i440fx.facts");

/// The scripts' output on the fake QEMU machine is the checked-in fixture, byte for byte.
#[test]
fn commissioning_scripts_on_a_fake_qemu_machine_print_the_fixture() {
    let sandbox = Sandbox::new();
    let tree = qemu_machine();
    let environment = tree.environment();
    let environment: Vec<(&str, &str)> = environment
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    let mut stdout = String::new();
    // 00-fleet-arch reads uname, which is this host's.
    for name in commissioning_script_names().into_iter().skip(1) {
        stdout += &sandbox.run_passing(name, &environment);
    }
    assert_eq!(stdout, QEMU_FACTS);
}

#[test]
fn the_qemu_fixture_parses_into_the_inventory() {
    let inventory = parse_clean(QEMU_FACTS);
    let hardware = &inventory.hardware;
    assert_eq!(hardware.cpus, Some(2));
    assert_eq!(
        hardware.cpu_model.as_deref(),
        Some("QEMU Virtual CPU version 2.5+")
    );
    assert_eq!(hardware.cpu_speed_mhz, Some(2399));
    assert_eq!(hardware.memory_mib, Some(491));
    assert_eq!(inventory.disks, qemu_disks_expected());
    assert_eq!(
        inventory.interfaces,
        vec![
            Interface {
                name: "ens3".into(),
                mac: mac("52:54:00:12:34:56"),
                link_up: Some(true),
                speed_mbps: Some(1000),
                driver: Some("e1000".into())
            },
            Interface {
                name: "ens5".into(),
                mac: mac("52:54:00:ab:cd:ef"),
                link_up: Some(false),
                speed_mbps: None,
                driver: Some("virtio_net".into())
            },
        ]
    );
    let facts = &hardware.facts;
    assert_eq!(facts["pci"].as_array().unwrap().len(), 7);
    assert_eq!(
        facts["pci"][3],
        json!({"slot": "0000:00:03.0", "vendor": "8086", "device": "100e", "class": "020000",
               "subsystem_vendor": "1af4", "subsystem_device": "1100", "revision": "03", "driver": "e1000"})
    );
    assert_eq!(facts["usb"].as_array().unwrap().len(), 2);
    assert_eq!(facts["usb"][0]["name"], "QEMU USB Tablet");
    assert_eq!(facts["dmi"]["product"], "Standard PC (i440FX + PIIX, 1996)");
    assert_eq!(facts["dmi"]["serial"], "");
    assert_eq!(facts["cpu"]["count"], "2");
}

/// Captured for real: the commissioning scripts in the ephemeral environment's initrd (Debian
/// 6.1 kernel, busybox 1.35) under QEMU 10 (q35, TCG, 512 MiB): a virtio disk with a serial, a
/// SATA disk on AHCI, an NVMe disk, an e1000 NIC with link and a virtio NIC without.
const QEMU_CAPTURED_FACTS: &str = include_str!("fixtures/qemu-q35-captured.facts");

#[test]
fn facts_captured_under_qemu_parse_into_the_inventory() {
    let inventory = parse_clean(QEMU_CAPTURED_FACTS);
    assert_eq!(inventory.arch.as_deref(), Some("amd64"));
    let hardware = &inventory.hardware;
    assert_eq!(
        (hardware.cpus, hardware.cpu_speed_mhz, hardware.memory_mib),
        (Some(2), Some(2599), Some(455))
    );
    let disks: Vec<(&str, i64, Option<&str>)> = inventory
        .disks
        .iter()
        .map(|disk| (disk.name.as_str(), disk.size_bytes, disk.id_path.as_deref()))
        .collect();
    assert_eq!(
        disks,
        vec![
            (
                "nvme0n1",
                128 << 20,
                Some("/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_fleetnvme0")
            ),
            (
                "sda",
                128 << 20,
                Some("/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001")
            ),
            (
                "vda",
                256 << 20,
                Some("/dev/disk/by-id/virtio-fleet-disk-0")
            ),
        ]
    );
    assert_eq!(
        inventory.interfaces,
        vec![
            Interface {
                name: "eth0".into(),
                mac: mac("52:54:00:ab:cd:ef"),
                link_up: Some(false),
                speed_mbps: None,
                driver: Some("virtio_net".into())
            },
            Interface {
                name: "eth1".into(),
                mac: mac("52:54:00:12:34:56"),
                link_up: Some(true),
                speed_mbps: Some(1000),
                driver: Some("e1000".into())
            },
        ]
    );
    assert_eq!(hardware.facts["pci"].as_array().unwrap().len(), 10);
    assert_eq!(
        hardware.facts["dmi"]["product"],
        "Standard PC (Q35 + ICH9, 2009)"
    );
    assert_eq!(hardware.facts["arch"]["firmware"], "bios");
}

fn qemu_disks_expected() -> Vec<Disk> {
    let disk = |name: &str,
                size_bytes: i64,
                model: Option<&str>,
                serial: &str,
                id_path: &str,
                bus: &str,
                rotational: bool| Disk {
        name: name.into(),
        model: model.map(str::to_string),
        serial: Some(serial.into()),
        id_path: Some(format!("/dev/disk/by-id/{id_path}")),
        bus: Some(bus.into()),
        size_bytes,
        block_size: Some(512),
        rotational: Some(rotational),
    };
    vec![
        disk(
            "nvme0n1",
            10 << 30,
            Some("QEMU NVMe Ctrl"),
            "fleetnvme0",
            "nvme-QEMU_NVMe_Ctrl_fleetnvme0",
            "nvme",
            false,
        ),
        disk(
            "sda",
            1 << 30,
            Some("QEMU HARDDISK"),
            "QM00001",
            "ata-QEMU_HARDDISK_QM00001",
            "ata",
            true,
        ),
        disk(
            "vda",
            20 << 30,
            None,
            "fleet-disk-0",
            "virtio-fleet-disk-0",
            "virtio",
            true,
        ),
    ]
}

/// Disks on SCSI hosts that are neither ATA nor USB, as a Debian kernel shows them: QEMU's
/// scsi-hd on virtio-scsi (VPD page 0x83 with one vendor-specific ASCII designator, no wwid),
/// one given a WWN (the kernel's wwid), and a SAS disk whose page 0x83 has a target-port NAA
/// before the LUN's NAA (binary). Each gets the by-id link udev's scsi_id would make, and the
/// bus reaches the stored disk.
#[test]
fn disks_behind_virtio_scsi_and_sas_get_their_by_id_paths() {
    let sandbox = Sandbox::new();
    let tree = FakeTree::new();
    let host = format!("{PCI}/0000:00:07.0/virtio3/host2");
    let scsi_disk = |name: &str, lun: u32, files: &[(&str, &[u8])]| {
        let device = format!("{host}/target2:0:{lun}/2:0:{lun}:0");
        let block = format!("{device}/block/{name}");
        tree.link(&format!("sys/block/{name}"), &block)
            .files(
                &block,
                &[
                    ("size", "2097152\n"),
                    ("dev", "8:0\n"),
                    ("queue/rotational", "1\n"),
                    ("queue/logical_block_size", "512\n"),
                ],
            )
            .link(&format!("{block}/device"), &device)
            .files(
                &device,
                &[("vendor", "QEMU    \n"), ("model", "QEMU HARDDISK   \n")],
            );
        for (file, content) in files {
            tree.file(&format!("{device}/{file}"), content);
        }
    };
    // QEMU: `-device virtio-scsi-pci -device scsi-hd,serial=fleet-scsi-0`.
    let mut page83 = vec![0x00, 0x83, 0x00, 4 + 12, 0x02, 0x00, 0x00, 12];
    page83.extend_from_slice(b"fleet-scsi-0");
    scsi_disk(
        "sda",
        0,
        &[
            ("vpd_pg80", b"\x00\x80\x00\x0cfleet-scsi-0"),
            ("vpd_pg83", &page83),
        ],
    );
    // `scsi-hd,serial=fleet-scsi-1,wwn=0x5000c50015ea71ac`: the kernel's wwid names it.
    scsi_disk(
        "sdb",
        1,
        &[
            ("vpd_pg80", b"\x00\x80\x00\x0cfleet-scsi-1"),
            ("wwid", b"naa.5000c50015ea71ac\n"),
        ],
    );
    // A SAS disk: the target port's NAA (association 1) first, then the LUN's; no wwid file.
    let sas: &[u8] = &[
        0x00, 0x83, 0x00, 24, // header
        0x61, 0x93, 0x00, 8, 0x50, 0x00, 0xc5, 0x00, 0x99, 0x99, 0x99, 0x99, // target port
        0x01, 0x03, 0x00, 8, 0x50, 0x00, 0xc5, 0x00, 0x15, 0xea, 0x71, 0xad, // LUN
    ];
    scsi_disk("sdc", 2, &[("vpd_pg83", sas)]);
    let environment = tree.environment();
    let environment: Vec<(&str, &str)> = environment
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    let stdout = sandbox.run_passing("30-fleet-disks", &environment);
    assert!(
        stdout.starts_with(
            "disk name=sda size=1073741824 bus=scsi model=\"QEMU HARDDISK\" serial=fleet-scsi-0 \
             id_path=/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_fleet-scsi-0 rotational=1 block_size=512\n"
        ),
        "{stdout}"
    );
    let disks: Vec<(String, Option<String>, Option<String>)> = parse_clean(&stdout)
        .disks
        .into_iter()
        .map(|disk| (disk.name, disk.bus, disk.id_path))
        .collect();
    let expected = |name: &str, link: &str| {
        (
            name.to_string(),
            Some("scsi".to_string()),
            Some(format!("/dev/disk/by-id/{link}")),
        )
    };
    assert_eq!(
        disks,
        [
            expected("sda", "scsi-0QEMU_QEMU_HARDDISK_fleet-scsi-0"),
            expected("sdb", "wwn-0x5000c50015ea71ac"),
            expected("sdc", "scsi-35000c50015ea71ad"),
        ]
    );
}

/// Awkward DMI strings go through the script's quoting and come back out of the parser.
#[test]
fn awkward_values_survive_the_scripts_quoting() {
    let sandbox = Sandbox::new();
    let tree = FakeTree::new();
    let awkward = [
        (
            "sys_vendor",
            "  He said \"hi\" \\o/  \n",
            "He said \"hi\" \\o/",
        ),
        (
            "product_name",
            "tab\there\x01and\x7fthere",
            "tab here and there",
        ),
        ("product_version", "back\\slash", "back\\slash"),
        ("product_serial", "   \n", ""),
        ("product_uuid", "ünïcödé-\"x\"", "ünïcödé-\"x\""),
        ("board_name", "a=b c=\"d\"", "a=b c=\"d\""),
        ("board_vendor", "\\\"", "\\\""),
    ];
    for (file, content, _) in awkward {
        tree.file(&format!("sys/class/dmi/id/{file}"), content);
    }
    let environment = tree.environment();
    let stdout = sandbox.run_passing("60-fleet-dmi", &[("FLEET_SYSFS", &environment[0].1)]);
    let dmi = &parse_clean(&stdout).hardware.facts["dmi"];
    let keys = [
        "vendor",
        "product",
        "version",
        "serial",
        "uuid",
        "board_name",
        "board_vendor",
    ];
    for (key, (_, _, expected)) in keys.iter().zip(awkward) {
        assert_eq!(dmi[key], expected, "{key} in {stdout}");
    }
}

// ---------------------------------------------------------------- the tests

#[test]
fn memtest_verifies_a_small_region() {
    let sandbox = Sandbox::new();
    let directory = sandbox.path("memory");
    fs::create_dir(&directory).unwrap();
    let run = sandbox.run(
        "fleet-memtest",
        &[
            ("FLEET_MEMTEST_MIB", "4"),
            ("FLEET_MEMTEST_DIR", directory.to_str().unwrap()),
        ],
    );
    assert_eq!(run.exit_code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.stdout.matches("4 MiB verified").count(),
        3,
        "{}",
        run.stdout
    );
    let results = run.results.unwrap();
    assert_eq!(results["mib_tested"], 4);
    assert_eq!(results["errors"], 0);
    assert_eq!(results["patterns"], json!(["55", "aa", "random"]));
    assert_eq!(
        fs::read_dir(&directory).unwrap().count(),
        0,
        "the region is removed"
    );
}

#[test]
fn memtest_refuses_a_size_that_is_not_a_number() {
    let run = Sandbox::new().run("fleet-memtest", &[("FLEET_MEMTEST_MIB", "lots")]);
    assert_eq!(run.exit_code, Some(2));
    assert!(run.stderr.contains("FLEET_MEMTEST_MIB"), "{}", run.stderr);
}

/// A fake machine with one 4 MiB virtio disk (and a loop device to leave out).
fn machine_with_one_disk() -> FakeTree {
    let tree = FakeTree::new();
    let vda = format!("{PCI}/0000:00:04.0/virtio1/block/vda");
    tree.link("sys/block/vda", &vda)
        .files(&vda, &[("size", "8192\n"), ("dev", "252:0\n")]);
    tree.link("sys/block/loop0", "sys/devices/virtual/block/loop0")
        .files("sys/devices/virtual/block/loop0", &[("size", "8192\n")]);
    tree
}

#[test]
fn disk_read_reads_every_disk() {
    let sandbox = Sandbox::new();
    let tree = machine_with_one_disk();
    tree.file("dev/vda", vec![0x5a; 4 << 20]);
    let run = tree.run_with_disks(&sandbox, "fleet-disk-read", &[("FLEET_DISK_READ_MIB", "2")]);
    assert_eq!(run.exit_code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("disk vda: read 2 MiB"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("SMART not available"), "{}", run.stdout);
    assert_eq!(
        run.results.unwrap(),
        json!({"mib_per_disk": 2, "disks": [{"name": "vda", "mib_read": 2, "status": "passed", "smart": "not available"}]})
    );
}

#[test]
fn disk_read_fails_on_a_read_error() {
    let sandbox = Sandbox::new();
    let tree = machine_with_one_disk();
    // Reading a directory fails the way a bad sector does: dd's read returns an error.
    fs::create_dir_all(tree.directory.path().join("dev/vda")).unwrap();
    let run = tree.run_with_disks(&sandbox, "fleet-disk-read", &[]);
    assert_eq!(run.exit_code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("disk vda: READ ERROR"),
        "{}",
        run.stdout
    );
    assert_eq!(run.results.unwrap()["disks"][0]["status"], "failed");
}

/// Runs a disk erase on a fake machine whose 20 MiB disk holds 0x5a everywhere; returns the run
/// and the disk's bytes afterwards.
fn erase_fake_disk(mode: &str) -> (ScriptRun, Vec<u8>) {
    let sandbox = Sandbox::new();
    let tree = FakeTree::new();
    let vda = format!("{PCI}/0000:00:04.0/virtio1/block/vda");
    // 20 MiB and 3 sectors: full must also zero the sectors after the last whole MiB.
    tree.link("sys/block/vda", &vda)
        .files(&vda, &[("size", "40963\n"), ("dev", "252:0\n")]);
    tree.file("dev/vda", vec![0x5a; 40963 * 512]);
    let run = tree.run_with_disks(&sandbox, &format!("fleet-erase-{mode}"), &[]);
    let disk = fs::read(tree.directory.path().join("dev/vda")).unwrap();
    (run, disk)
}

#[test]
fn quick_erase_zeroes_both_ends_of_every_disk() {
    let (run, disk) = erase_fake_disk("quick");
    assert_eq!(run.exit_code, Some(0), "{}{}", run.stdout, run.stderr);
    let mib = 1 << 20;
    let last_whole_mib = (40963 * 512 / mib) * mib;
    assert!(disk[..4 * mib].iter().all(|byte| *byte == 0), "start");
    assert!(
        disk[last_whole_mib - 4 * mib..last_whole_mib]
            .iter()
            .all(|byte| *byte == 0),
        "end"
    );
    assert!(
        disk[8 * mib..9 * mib].iter().all(|byte| *byte == 0x5a),
        "the middle is kept"
    );
    assert_eq!(disk.len(), 40963 * 512, "the disk keeps its size");
    assert_eq!(
        run.results.unwrap(),
        json!({"mode": "quick", "disks": [{"name": "vda", "erased": true, "how": "ends zeroed", "fell_back": null}]})
    );
}

#[test]
fn full_and_secure_erases_leave_no_byte() {
    for mode in ["full", "secure"] {
        let (run, disk) = erase_fake_disk(mode);
        assert_eq!(
            run.exit_code,
            Some(0),
            "{mode}: {}{}",
            run.stdout,
            run.stderr
        );
        assert_eq!(disk.len(), 40963 * 512, "{mode}");
        assert!(
            disk.iter().all(|byte| *byte == 0),
            "{mode}: a byte survived"
        );
    }
    // Without hdparm (busybox alone) and on a file, which cannot be discarded securely: the
    // secure erase says it fell back and overwrote instead (tests/erase.rs has the rest).
    let (run, _) = erase_fake_disk("secure");
    assert!(run.stdout.contains("no secure discard"), "{}", run.stdout);
    let entry = &run.results.unwrap()["disks"][0];
    assert_eq!(entry["how"], "overwritten with zeros");
    assert!(
        entry["fell_back"].as_str().unwrap().starts_with(
            "not NVMe, and there is no hdparm for an ATA security erase; no secure discard ("
        ),
        "{entry}"
    );
}

#[test]
fn an_erase_that_cannot_write_fails() {
    let sandbox = Sandbox::new();
    let tree = machine_with_one_disk();
    fs::create_dir_all(tree.directory.path().join("dev/vda")).unwrap();
    let run = tree.run_with_disks(&sandbox, "fleet-erase-quick", &[]);
    assert_eq!(run.exit_code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("disk vda: ERASE FAILED"),
        "{}",
        run.stderr
    );
    assert_eq!(run.results.unwrap()["disks"][0]["erased"], false);
}

/// Answers one HTTP request with `body`; the URL to reach it.
fn one_answer_server(body: &'static str) -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let server = std::thread::spawn(move || {
        let (mut connection, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = connection.read(&mut buffer).unwrap();
            if read == 0 {
                break;
            }
            request.extend_from_slice(&buffer[..read]);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        connection.write_all(head.as_bytes()).unwrap();
        connection.write_all(body.as_bytes()).unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (url, server)
}

#[test]
fn network_test_passes_when_the_controller_answers() {
    let (url, server) = one_answer_server("#!/bin/sh\n");
    let run = Sandbox::new().run("fleet-network", &[("FLEET_URL", &url)]);
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /scripts/fleet-runner.sh "),
        "{request}"
    );
    assert_eq!(run.exit_code, Some(0), "{}{}", run.stdout, run.stderr);
    let results = run.results.unwrap();
    assert_eq!(results["answered"], true);
    assert_eq!(results["answer"], "10 bytes of fleet-runner.sh");
    assert_eq!(results["interface"], "lo");
    assert_eq!(results["address"], "127.0.0.1");
}

#[test]
fn network_test_fails_when_nothing_answers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let run = Sandbox::new().run("fleet-network", &[("FLEET_URL", &url)]);
    assert_eq!(run.exit_code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("does NOT answer"), "{}", run.stdout);
    assert_eq!(run.results.unwrap()["answered"], false);
}

// ---------------------------------------------------------------- the parser

#[test]
fn quoting_and_escaping() {
    let cases = [
        (r#"dmi vendor=plain"#, "plain"),
        (r#"dmi vendor="two words""#, "two words"),
        (r#"dmi vendor="""#, ""),
        (r#"dmi vendor="say \"hi\"""#, "say \"hi\""),
        (r#"dmi vendor="back\\slash""#, "back\\slash"),
        (r#"dmi vendor="\\\"""#, "\\\""),
        (r#"dmi vendor=a=b"#, "a=b"),
        (r#"dmi vendor=bare\backslash"#, "bare\\backslash"),
        (r#"dmi vendor="  inner  spaces  ""#, "  inner  spaces  "),
        ("dmi\tvendor=tabbed  ", "tabbed"),
        ("dmi vendor=crlf\r", "crlf"),
        (r#"dmi vendor="ünï cödé""#, "ünï cödé"),
        ("dmi vendor=", ""),
    ];
    for (line, expected) in cases {
        let inventory = parse_clean(line);
        assert_eq!(
            inventory.hardware.facts["dmi"]["vendor"], expected,
            "{line}"
        );
    }
}

#[test]
fn malformed_lines_are_reported_with_their_numbers_and_skipped() {
    let stdout = "\
cpu count=2
disk name=vda size=10 model=\"unclosed
disk name=vdb
disk name=vdc size=ten
interface name=eth0 mac=52:54:00:zz:00:01
interface name=eth1 mac=52:54:00:00:00:01 link=sideways
dmi vendor=\"x\"y
dmi vendor=\"bad \\n escape\"
dmi vendor=a vendor=b
dmi Vendor=a
dmi vendor=say\"hi
dmi novalue
cpu count=-1
arch machine=x86_64
disk name=vdd size=512 rotational=maybe
memory kib=1024
";
    let mut inventory = Inventory::default();
    let problems = parse_facts("30-fleet-disks", stdout, &mut inventory);
    let lines: Vec<usize> = problems.iter().map(|problem| problem.line).collect();
    assert_eq!(lines, (2..=15).collect::<Vec<_>>(), "{problems:#?}");
    assert!(problems
        .iter()
        .all(|problem| problem.script == "30-fleet-disks"));
    assert_eq!(
        problems[0].to_string(),
        "30-fleet-disks, line 2: a quoted value is not closed"
    );
    assert_eq!(problems[1].reason, "disk: no `size`");
    assert_eq!(
        problems[2].reason,
        "disk: size is `ten`, expected a whole number"
    );
    assert!(
        problems[3].reason.contains("is not a MAC address"),
        "{}",
        problems[3].reason
    );
    assert_eq!(
        problems[4].reason,
        "interface: link is `sideways`, expected up or down"
    );
    assert_eq!(problems[5].reason, "text right after a closing quote");
    assert_eq!(
        problems[6].reason,
        "unknown escape `\\n` (only \\\" and \\\\)"
    );
    assert_eq!(problems[7].reason, "key `vendor` appears twice");
    assert_eq!(problems[8].reason, "`Vendor` is not a key (a-z, 0-9 and _)");
    assert_eq!(
        problems[9].reason,
        "`say\"hi` holds a `\"` but is not quoted"
    );
    assert_eq!(problems[10].reason, "`novalue` is not key=value");
    assert_eq!(
        problems[11].reason,
        "cpu: count is `-1`, expected a whole number"
    );
    assert_eq!(problems[12].reason, "arch: no `name`");
    // The good lines count; the bad ones left nothing behind.
    assert_eq!(inventory.hardware.cpus, Some(2));
    assert_eq!(inventory.hardware.memory_mib, Some(1));
    assert_eq!(inventory.disks, vec![]);
    assert_eq!(inventory.interfaces, vec![]);
    assert!(inventory.hardware.facts.get("dmi").is_none());
}

#[test]
fn unknown_kinds_and_blank_lines_are_ignored() {
    let stdout = "\nhello world\n# a comment\ncpu-ish count=x\nsomething \"unclosed\n\n   \narch name=arm64\n";
    let inventory = parse_clean(stdout);
    assert_eq!(inventory.arch.as_deref(), Some("arm64"));
}

#[test]
fn a_later_line_replaces_the_same_disk_interface_and_device() {
    let first = "disk name=vda size=1\ninterface name=eth0 mac=52:54:00:00:00:01\npci slot=0000:00:01.0 vendor=1\nusb path=1-1 vendor=1\n";
    let second = "disk name=vda size=2\ninterface name=eth0 mac=52:54:00:00:00:02\npci slot=0000:00:01.0 vendor=2\nusb path=1-1 vendor=2\n";
    let (inventory, problems) =
        Inventory::from_results([("first", first), ("second", second)].into_iter());
    assert_eq!(problems, vec![]);
    assert_eq!(inventory.disks.len(), 1);
    assert_eq!(inventory.disks[0].size_bytes, 2);
    assert_eq!(inventory.interfaces[0].mac, mac("52:54:00:00:00:02"));
    assert_eq!(
        inventory.hardware.facts["pci"],
        json!([{"slot": "0000:00:01.0", "vendor": "2"}])
    );
    assert_eq!(
        inventory.hardware.facts["usb"],
        json!([{"path": "1-1", "vendor": "2"}])
    );
}

#[test]
fn empty_values_mean_unknown() {
    let inventory = parse_clean(
        "disk name=vda size=512 model=\"\" serial= rotational=\"\"\ncpu count=4 model=\"\" mhz=\n",
    );
    let disk = &inventory.disks[0];
    assert_eq!(
        (
            disk.model.as_deref(),
            disk.serial.as_deref(),
            disk.rotational
        ),
        (None, None, None)
    );
    assert_eq!(inventory.hardware.cpu_model, None);
    assert_eq!(inventory.hardware.cpu_speed_mhz, None);
}

#[test]
fn arch_and_memory() {
    let inventory =
        parse_clean("arch name=amd64 machine=x86_64 firmware=uefi\nmemory kib=16318412\n");
    assert_eq!(inventory.arch.as_deref(), Some("amd64"));
    assert_eq!(inventory.hardware.memory_mib, Some(15935));
    assert_eq!(inventory.hardware.facts["arch"]["firmware"], "uefi");
}

/// The quoting the scripts do, written again in Rust for the property test below.
fn quote_like_the_scripts(value: &str) -> String {
    if value.is_empty() || value.contains([' ', '"', '\\']) {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        value.to_string()
    }
}

proptest::proptest! {
    #[test]
    fn parse_facts_never_panics(stdout in "(?s).{0,400}") {
        let mut inventory = Inventory::default();
        let _ = parse_facts("fuzz", &stdout, &mut inventory);
    }

    #[test]
    fn parse_facts_never_panics_on_fact_like_text(
        lines in proptest::collection::vec("(arch|cpu|memory|disk|interface|pci|usb|dmi)( [a-z_]{1,8}=(\"([^\"\\\\\n]|\\\\.){0,8}\"?|[^ \n]{0,8})){0,5}", 0..8)
    ) {
        let mut inventory = Inventory::default();
        let _ = parse_facts("fuzz", &lines.join("\n"), &mut inventory);
    }

    #[test]
    fn quoted_values_come_back_unchanged(value in "[^\\x00-\\x1f\\x7f]{0,24}") {
        let value = value.trim_matches(' ');
        let inventory = parse_clean(&format!("dmi vendor={} product=x", quote_like_the_scripts(value)));
        proptest::prop_assert_eq!(&inventory.hardware.facts["dmi"]["vendor"], value);
    }
}

// ---------------------------------------------------------------- a simulated machine

/// /sys and /proc of a machine of `fleet::sim` (`crate::sim::SimHardware`): what its real
/// counterpart's kernel would show — NVMe disks under the nvme-subsystem, SATA disks behind
/// AHCI with VPD page 0x80, NICs on PCI with their driver, memory in 128 MiB blocks.
fn simulated_machine(hardware: &crate::sim::SimHardware) -> FakeTree {
    let tree = FakeTree::new();
    let processor = |number: u32| {
        format!(
            "processor\t: {number}\nmodel name\t: {}\ncpu MHz\t\t: {}.000\n\n",
            hardware.cpu_model, hardware.cpu_mhz
        )
    };
    let cpuinfo: String = (0..hardware.cpus).map(processor).collect();
    let block = 128 * 1024 * 1024i64;
    tree.file("proc/cpuinfo", cpuinfo)
        .file(
            "proc/meminfo",
            format!("MemTotal:       {} kB\n", hardware.memory_kib - 200 * 1024),
        )
        .file(
            "sys/devices/system/cpu/online",
            format!("0-{}\n", hardware.cpus - 1),
        )
        .file(
            "sys/devices/system/memory/block_size_bytes",
            format!("{block:x}\n"),
        );
    for number in 0..hardware.memory_kib * 1024 / block {
        tree.file(
            &format!("sys/devices/system/memory/memory{number}/online"),
            "1\n",
        );
    }
    for (index, disk) in hardware.disks.iter().enumerate() {
        simulated_disk(&tree, index, disk);
    }
    for (index, nic) in hardware.nics.iter().enumerate() {
        let device = format!("{PCI}/0000:0{}:00.0", index + 1);
        let net = format!("{device}/net/{}", nic.name);
        tree.link(&format!("sys/class/net/{}", nic.name), &net)
            .files(
                &net,
                &[
                    ("address", &format!("{}\n", nic.mac)),
                    ("operstate", "up\n"),
                    ("speed", &format!("{}\n", nic.speed)),
                    ("type", "1\n"),
                ],
            )
            .link(&format!("{net}/device"), &device)
            .link(
                &format!("{device}/driver"),
                &format!("sys/bus/pci/drivers/{}", nic.driver),
            );
    }
    tree
}

fn simulated_disk(tree: &FakeTree, index: usize, disk: &crate::sim::SimDisk) {
    let sectors = format!("{}\n", disk.size_bytes / 512);
    let (block, device) = match disk.bus.as_str() {
        "nvme" => {
            let subsystem = format!("sys/devices/virtual/nvme-subsystem/nvme-subsys{index}");
            (format!("{subsystem}/{}", disk.name), subsystem)
        }
        _ => {
            let device = format!(
                "{PCI}/0000:00:1f.2/ata{}/host{index}/target{index}:0:0/{index}:0:0:0",
                index + 1
            );
            (format!("{device}/block/{}", disk.name), device)
        }
    };
    tree.link(&format!("sys/block/{}", disk.name), &block)
        .files(&block, &[("size", &sectors), ("hidden", "0\n")])
        .files(
            &format!("{block}/queue"),
            &[
                ("rotational", if disk.rotational { "1\n" } else { "0\n" }),
                ("logical_block_size", "512\n"),
            ],
        )
        .link(&format!("{block}/device"), &device)
        .file(&format!("{device}/model"), format!("{}\n", disk.model));
    match disk.bus.as_str() {
        "nvme" => {
            tree.file(&format!("{device}/serial"), format!("{}\n", disk.serial));
        }
        _ => {
            let mut page = vec![0, 0x80, 0, disk.serial.len() as u8];
            page.extend_from_slice(disk.serial.as_bytes());
            tree.file(&format!("{device}/vpd_pg80"), page);
        }
    }
}

/// Conformance of the simulator: the real commissioning scripts, run on a fake /sys and /proc
/// built from each shape of simulated hardware, find the same CPUs, memory, disks (with serials,
/// buses and by-id paths) and NICs as the fact lines the simulator reports for those scripts.
#[test]
fn the_scripts_on_a_simulated_machines_tree_find_what_the_simulator_reports() {
    let sandbox = Sandbox::new();
    for index in 0..3 {
        let hardware = crate::sim::SimHardware::for_index(index);
        let tree = simulated_machine(&hardware);
        let environment = tree.environment();
        let environment: Vec<(&str, &str)> = environment
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect();
        let scripts = [
            "10-fleet-cpu",
            "20-fleet-memory",
            "30-fleet-disks",
            "40-fleet-interfaces",
        ];
        let mut found = String::new();
        let mut simulated = String::new();
        for script in scripts {
            found += &sandbox.run_passing(script, &environment);
            simulated += &hardware.facts_for(script).expect("a fact script");
        }
        let (found, simulated) = (parse_clean(&found), parse_clean(&simulated));
        assert_eq!(found.disks, simulated.disks, "shape {index}");
        assert_eq!(found.interfaces, simulated.interfaces, "shape {index}");
        let typed = |inventory: &Inventory| {
            let hardware = &inventory.hardware;
            (
                hardware.cpus,
                hardware.cpu_model.clone(),
                hardware.cpu_speed_mhz,
                hardware.memory_mib,
            )
        };
        assert_eq!(typed(&found), typed(&simulated), "shape {index}");
    }
}
