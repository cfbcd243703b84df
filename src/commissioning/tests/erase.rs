//! The disk erases (`fleet-erase-*`) on fake machines, with stand-ins for the tools that talk
//! to real drives: `hdparm` and `nvme` simulate the drive's security states and erase (or
//! pretend to) the disk file, `wipefs`, `mdadm` and `vgchange` only log. Every stand-in logs
//! its arguments, so the tests check the command sequence as well as the disk's bytes, the
//! messages and the result.

use super::*;

/// The bytes of the fake disks before an erase.
const OLD: u8 = 0x5a;
/// Size of the fake disks: 8 MiB.
const SECTORS: usize = 16384;
const MIB: usize = 1 << 20;

/// `hdparm`: its state is the words of `$FAKE/ata` (supported enabled locked frozen enhanced,
/// `none`: no Security section, as for a disk that is not ATA; `lying`: the erase leaves the
/// data; `failing`: the erase command fails). Set-pass enables security, a working erase zeroes
/// the disk and disables it, --security-disable disables it.
const HDPARM: &str = r#"#!/bin/busybox sh
echo "hdparm $*" >>"$FAKE/log"
state=$FAKE/ata
has() { grep -qw "$1" "$state"; }
word() { if has "$1"; then printf '\t\t%s\n' "$1"; else printf '\tnot\t%s\n' "$1"; fi; }
for device; do :; done
case $1 in
  -I)
    has none && { printf '\n%s:\n' "$device"; exit 0; }
    printf '\n%s:\n\nATA device, with non-removable media\n\tModel Number:       FAKE SSD\n' "$device"
    printf 'Security: \n\tMaster password revision code = 65534\n'
    word supported; word enabled; word locked; word frozen
    printf '\tnot\texpired: security count\n'
    if has enhanced; then printf '\t\tsupported: enhanced erase\n'; else printf '\tnot\tsupported: enhanced erase\n'; fi
    printf '\t2min for SECURITY ERASE UNIT. 2min for ENHANCED SECURITY ERASE UNIT.\n'
    printf 'Logical Unit WWN Device Identifier: 5000000000000001\n'
    ;;
  --user-master)
    case $3 in
      --security-set-pass) echo enabled >>"$state" ;;
      --security-erase | --security-erase-enhanced)
        has enabled || { echo "SECURITY_ERASE: Input/output error" >&2; exit 5; }
        has failing && { echo "SECURITY_ERASE: Input/output error" >&2; exit 5; }
        has lying || dd if=/dev/zero of="$device" bs=512 count=$(($(wc -c <"$device") / 512)) conv=notrunc 2>/dev/null
        sed -i '/^enabled$/d' "$state"
        ;;
      --security-disable) sed -i '/^enabled$/d' "$state" ;;
    esac
    ;;
esac
"#;

/// `nvme`: `id-ctrl` prints `$FAKE/id-ctrl`; `format` and `sanitize` zero the disk (unless
/// `$FAKE/lying` exists); `sanitize-log` says the sanitize completed.
const NVME: &str = r#"#!/bin/busybox sh
echo "nvme $*" >>"$FAKE/log"
zero() {
  [ -e "$FAKE/lying" ] || dd if=/dev/zero of="$1" bs=512 count=$(($(wc -c <"$1") / 512)) conv=notrunc 2>/dev/null
}
case $1 in
  id-ctrl) cat "$FAKE/id-ctrl" ;;
  format) zero "$2"; echo "Success formatting namespace:1" ;;
  sanitize) zero "$2" ;;
  sanitize-log)
    printf 'Sanitize Progress                      (SPROG) :  65535\n'
    printf 'Sanitize Status                        (SSTAT) :  0x101\n'
    ;;
  *) echo "fake nvme: $1?" >&2; exit 1 ;;
esac
"#;

/// A tool that only logs its arguments.
fn logging_tool(name: &str) -> String {
    format!("#!/bin/busybox sh\necho \"{name} $*\" >>\"$FAKE/log\"\n")
}

/// The `nvme id-ctrl` of QEMU 10's NVMe controller (seen in a VM): Format NVM (OACS bit 1),
/// no crypto erase (FNA 0), no Sanitize (SANICAP 0).
const QEMU_ID_CTRL: &str = "NVME Identify Controller:\nvid       : 0x1b36\nssvid     : 0x1af4\nsn        : fleet-e2e-nvme\nmn        : QEMU NVMe Ctrl\noacs      : 0x12a\nacl       : 3\nsanicap   : 0\noncs      : 0x75d\nfuses     : 0\nfna       : 0\nvwc       : 0x7\n";

/// One fake machine with one disk and the stand-ins, ready to run an erase.
struct Machine {
    sandbox: Sandbox,
    tree: FakeTree,
    fake: tempfile::TempDir,
    disk: String,
}

struct Erased {
    run: ScriptRun,
    /// The stand-ins' calls, one line each (`hdparm --user-master u ...`), device paths as
    /// `DEV/name`.
    calls: Vec<String>,
    disk: Vec<u8>,
}

impl Machine {
    /// `disk` (sda, nvme0n1, vda) under `parent` (a device path below sys/devices), filled with
    /// OLD.
    fn new(disk: &str, parent: &str) -> Machine {
        let sandbox = Sandbox::new();
        for (tool, text) in [
            ("hdparm", HDPARM.to_string()),
            ("nvme", NVME.to_string()),
            ("wipefs", logging_tool("wipefs")),
            ("mdadm", logging_tool("mdadm")),
            ("vgchange", logging_tool("vgchange")),
        ] {
            let path = sandbox.path("bin").join(tool);
            let _ = fs::remove_file(&path);
            fs::write(&path, text).unwrap();
            let mut permissions = fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
            fs::set_permissions(&path, permissions).unwrap();
        }
        let tree = FakeTree::new();
        let device = format!("{PCI}/{parent}/block/{disk}");
        tree.link(&format!("sys/block/{disk}"), &device).files(
            &device,
            &[("size", &format!("{SECTORS}\n")), ("dev", "8:0\n")],
        );
        tree.file(&format!("dev/{disk}"), vec![OLD; SECTORS * 512]);
        let fake = tempfile::tempdir().unwrap();
        fs::write(fake.path().join("log"), "").unwrap();
        fs::write(fake.path().join("ata"), "").unwrap();
        Machine {
            sandbox,
            tree,
            fake,
            disk: disk.to_string(),
        }
    }

    fn ata(words: &str) -> Machine {
        let machine = Machine::new("sda", "0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0");
        fs::write(
            machine.fake.path().join("ata"),
            format!("{}\n", words.replace(' ', "\n")),
        )
        .unwrap();
        machine
    }

    fn nvme(id_ctrl: &str) -> Machine {
        let machine = Machine::new("nvme0n1", "0000:00:04.0/nvme/nvme0");
        fs::write(machine.fake.path().join("id-ctrl"), id_ctrl).unwrap();
        machine
    }

    fn erase(&self, mode: &str) -> Erased {
        let fake = self.fake.path().to_str().unwrap();
        let run = self.tree.run_with_disks(
            &self.sandbox,
            &format!("fleet-erase-{mode}"),
            &[("FAKE", fake)],
        );
        let devfs = format!("{}/dev", self.tree.root());
        let log = fs::read_to_string(self.fake.path().join("log")).unwrap();
        let calls = log
            .lines()
            .map(|line| line.replace(&devfs, "DEV"))
            .collect();
        let disk = fs::read(self.tree.directory.path().join("dev").join(&self.disk)).unwrap();
        Erased { run, calls, disk }
    }
}

impl Erased {
    fn passed(&self) -> &Self {
        assert_eq!(
            self.run.exit_code,
            Some(0),
            "{}{}",
            self.run.stdout,
            self.run.stderr
        );
        self
    }

    fn entry(&self) -> Value {
        self.run.results.as_ref().expect("results")["disks"][0].clone()
    }

    /// The one disk's `how` and `fell_back`.
    fn outcome(&self) -> (String, Value) {
        let entry = self.entry();
        assert_eq!(entry["erased"], true, "{entry}");
        (
            entry["how"].as_str().unwrap().to_string(),
            entry["fell_back"].clone(),
        )
    }

    fn all_zero(&self) -> bool {
        self.disk.iter().all(|byte| *byte == 0)
    }

    fn calls_of(&self, tool: &str) -> Vec<&str> {
        let prefix = format!("{tool} ");
        let calls = self.calls.iter().filter(|call| call.starts_with(&prefix));
        calls.map(String::as_str).collect()
    }
}

// ---------------------------------------------------------------- ATA

#[test]
fn ata_security_erase_follows_maas_sequence_and_checks_the_pattern_is_gone() {
    let erased = Machine::ata("supported enhanced").erase("secure");
    erased.passed();
    assert_eq!(
        erased.calls_of("hdparm"),
        [
            "hdparm -I DEV/sda",
            "hdparm --user-master u --security-set-pass fleet DEV/sda",
            "hdparm -I DEV/sda",
            "hdparm --user-master u --security-erase-enhanced fleet DEV/sda",
            "hdparm -I DEV/sda",
        ]
    );
    assert_eq!(
        erased.outcome(),
        ("ATA enhanced security erase".to_string(), Value::Null)
    );
    assert!(erased.all_zero());
    assert!(
        erased
            .run
            .stdout
            .contains("disk sda: erased (ATA enhanced security erase)\n"),
        "{}",
        erased.run.stdout
    );
}

#[test]
fn ata_without_enhanced_erase_uses_the_normal_one() {
    let erased = Machine::ata("supported").erase("secure");
    erased.passed();
    assert!(erased
        .calls
        .contains(&"hdparm --user-master u --security-erase fleet DEV/sda".to_string()));
    assert_eq!(erased.outcome().0, "ATA security erase");
}

#[test]
fn a_frozen_locked_or_enabled_drive_is_not_touched_by_hdparm_and_falls_back() {
    for (state, why) in [
        ("supported frozen", "ATA security erase skipped: the drive is frozen"),
        ("supported locked", "ATA security erase skipped: the drive is locked"),
        (
            "supported enabled",
            "ATA security erase skipped: security is already enabled (with a password fleet does not know)",
        ),
        ("enhanced", "the ATA drive does not support the security erase"),
    ] {
        let erased = Machine::ata(state).erase("secure");
        erased.passed();
        assert_eq!(erased.calls_of("hdparm"), ["hdparm -I DEV/sda"], "{state}");
        let (how, fell_back) = erased.outcome();
        assert_eq!(how, "overwritten with zeros", "{state}");
        let fell_back = fell_back.as_str().unwrap().to_string();
        assert!(fell_back.starts_with(why), "{state}: {fell_back}");
        // A file cannot be discarded securely either: then the whole disk is overwritten.
        assert!(fell_back.contains("; no secure discard ("), "{fell_back}");
        assert!(erased.all_zero(), "{state}");
        assert!(
            erased.run.stdout.contains(&format!("  fell back: {why}\n")),
            "{}",
            erased.run.stdout
        );
    }
}

#[test]
fn an_ata_erase_that_leaves_the_pattern_is_caught_and_falls_back() {
    let erased = Machine::ata("supported lying").erase("secure");
    erased.passed();
    let message = "Secure erase was performed, but failed to actually work.";
    let (how, fell_back) = erased.outcome();
    assert_eq!(how, "overwritten with zeros");
    assert!(
        fell_back.as_str().unwrap().starts_with(message),
        "{fell_back}"
    );
    assert!(
        erased
            .run
            .stdout
            .contains(&format!("  fell back: {message}\n")),
        "{}",
        erased.run.stdout
    );
    // The erase "ran", then the disk was overwritten: the pattern and the old bytes are gone.
    assert!(erased.all_zero());
}

#[test]
fn a_failed_ata_erase_disables_the_password_again() {
    let erased = Machine::ata("supported failing").erase("secure");
    erased.passed();
    assert_eq!(
        erased.calls_of("hdparm")[3..],
        [
            "hdparm --user-master u --security-erase fleet DEV/sda",
            "hdparm -I DEV/sda",
            "hdparm --user-master u --security-disable fleet DEV/sda",
        ]
    );
    let fell_back = erased.outcome().1;
    assert!(
        fell_back
            .as_str()
            .unwrap()
            .starts_with("hdparm --security-erase failed: SECURITY_ERASE: Input/output error"),
        "{fell_back}"
    );
    assert!(erased.all_zero());
}

#[test]
fn a_disk_that_is_neither_nvme_nor_ata_falls_back_and_says_so() {
    let erased = Machine::ata("none").erase("secure");
    erased.passed();
    let (how, fell_back) = erased.outcome();
    assert_eq!(how, "overwritten with zeros");
    assert!(
        fell_back.as_str().unwrap().starts_with(
            "neither NVMe nor an ATA drive with the security feature set; no secure discard"
        ),
        "{fell_back}"
    );
    assert!(erased.all_zero());
    assert!(
        erased
            .run
            .stdout
            .contains("disk sda: erased (overwritten with zeros); fell back: neither NVMe"),
        "{}",
        erased.run.stdout
    );
}

// ---------------------------------------------------------------- NVMe

#[test]
fn nvme_crypto_erase_where_the_controller_has_it() {
    let id_ctrl = QEMU_ID_CTRL.replace("fna       : 0\n", "fna       : 0x4\n");
    let erased = Machine::nvme(&id_ctrl).erase("secure");
    erased.passed();
    assert_eq!(
        erased.calls_of("nvme"),
        [
            "nvme id-ctrl DEV/nvme0n1",
            "nvme format DEV/nvme0n1 --ses=2 --force"
        ]
    );
    assert_eq!(
        erased.outcome(),
        (
            "NVMe crypto erase (nvme format --ses=2)".to_string(),
            Value::Null
        )
    );
    assert!(erased.all_zero());
    assert!(erased.calls_of("hdparm").is_empty());
}

#[test]
fn nvme_user_data_erase_on_a_controller_like_qemus() {
    let erased = Machine::nvme(QEMU_ID_CTRL).erase("secure");
    erased.passed();
    assert_eq!(
        erased.calls_of("nvme")[1..],
        ["nvme format DEV/nvme0n1 --ses=1 --force"]
    );
    assert_eq!(
        erased.outcome().0,
        "NVMe user-data erase (nvme format --ses=1)"
    );
}

#[test]
fn nvme_sanitize_crypto_then_block_erase_when_format_has_no_crypto() {
    for (sanicap, action, how) in [
        ("0x3", "4", "NVMe crypto erase (nvme sanitize --sanact=4)"),
        ("0x2", "2", "NVMe block erase (nvme sanitize --sanact=2)"),
    ] {
        let id_ctrl = QEMU_ID_CTRL.replace("sanicap   : 0\n", &format!("sanicap   : {sanicap}\n"));
        let erased = Machine::nvme(&id_ctrl).erase("secure");
        erased.passed();
        assert_eq!(
            erased.calls_of("nvme")[1..],
            [
                format!("nvme sanitize DEV/nvme0n1 --sanact={action}"),
                "nvme sanitize-log DEV/nvme0n1".to_string()
            ]
        );
        assert_eq!(erased.outcome(), (how.to_string(), Value::Null));
        assert!(erased.all_zero());
    }
}

#[test]
fn an_nvme_format_that_leaves_the_pattern_falls_back() {
    let machine = Machine::nvme(QEMU_ID_CTRL);
    fs::write(machine.fake.path().join("lying"), "").unwrap();
    let erased = machine.erase("secure");
    erased.passed();
    let fell_back = erased.outcome().1;
    assert!(
        fell_back
            .as_str()
            .unwrap()
            .starts_with("Secure erase was performed, but failed to actually work."),
        "{fell_back}"
    );
    assert!(erased.all_zero());
}

#[test]
fn an_nvme_controller_without_format_or_sanitize_falls_back() {
    let id_ctrl = QEMU_ID_CTRL.replace("oacs      : 0x12a\n", "oacs      : 0x8\n");
    let erased = Machine::nvme(&id_ctrl).erase("secure");
    erased.passed();
    assert_eq!(erased.calls_of("nvme"), ["nvme id-ctrl DEV/nvme0n1"]);
    let (how, fell_back) = erased.outcome();
    assert_eq!(how, "overwritten with zeros");
    assert!(
        fell_back.as_str().unwrap().starts_with(
            "the NVMe controller supports neither Format NVM nor Sanitize (oacs 8, sanicap 0)"
        ),
        "{fell_back}"
    );
    assert!(erased.all_zero());
}

// ---------------------------------------------------------------- quick, as MAAS does it

#[test]
fn quick_erase_stops_what_is_stacked_and_wipes_signatures_first() {
    let machine = Machine::new("vda", "0000:00:04.0/virtio1");
    let tree = &machine.tree;
    // A partition, an md RAID, a device-mapper device and a bcache device on the machine.
    let vda = format!("{PCI}/0000:00:04.0/virtio1/block/vda");
    tree.files(
        &format!("{vda}/vda1"),
        &[("partition", "1\n"), ("size", "8000\n")],
    );
    tree.file("dev/vda1", "");
    tree.link("sys/block/md0", "sys/devices/virtual/block/md0")
        .files("sys/devices/virtual/block/md0", &[("size", "8000\n")]);
    tree.link("sys/block/dm-0", "sys/devices/virtual/block/dm-0")
        .files("sys/devices/virtual/block/dm-0", &[("size", "8000\n")]);
    tree.link("sys/block/bcache0", "sys/devices/virtual/block/bcache0")
        .files("sys/devices/virtual/block/bcache0/bcache", &[("stop", "")]);
    let erased = machine.erase("quick");
    erased.passed();
    assert_eq!(
        erased.calls,
        [
            "vgchange -an",
            "wipefs -fa DEV/md0",
            "mdadm --stop DEV/md0",
            "wipefs -fa DEV/vda1",
            "wipefs -fa DEV/vda",
        ]
    );
    let stop = tree
        .directory
        .path()
        .join("sys/devices/virtual/block/bcache0/bcache/stop");
    assert_eq!(fs::read_to_string(stop).unwrap(), "1\n", "bcache stopped");
    assert_eq!(
        erased.outcome(),
        ("signatures wiped, ends zeroed".to_string(), Value::Null)
    );
    // Both ends zeroed: the first and the last MiB at least.
    let disk = &erased.disk;
    assert!(disk[..MIB].iter().all(|byte| *byte == 0), "first MiB");
    assert!(
        disk[disk.len() - MIB..].iter().all(|byte| *byte == 0),
        "last MiB"
    );
    assert_eq!(
        erased.run.results.as_ref().unwrap()["disks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_reason_with_quotes_stays_valid_json() {
    // The last line of a tool's stderr goes into fell_back: quotes and backslashes are escaped.
    let machine = Machine::ata("supported failing");
    let hdparm = machine.sandbox.path("bin").join("hdparm");
    let text = fs::read_to_string(&hdparm).unwrap().replace(
        "SECURITY_ERASE: Input/output error",
        r#"bad \"drive\" \\ here"#,
    );
    fs::write(&hdparm, text).unwrap();
    let erased = machine.erase("secure");
    erased.passed();
    let fell_back = erased.outcome().1;
    assert!(
        fell_back
            .as_str()
            .unwrap()
            .starts_with(r#"hdparm --security-erase failed: bad "drive" \ here"#),
        "{fell_back}"
    );
}
