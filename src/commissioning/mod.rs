//! Commissioning: the built-in scripts a machine runs in the ephemeral environment, and the
//! reading of what they print into an [`Inventory`]. Pure: the scripts are text compiled in,
//! the parser takes text.
//!
//! # The scripts
//! `scripts/*.sh`, POSIX sh for busybox 1.35, reading `/proc` and `/sys` only (the initramfs has
//! no udev, lshw or lsblk). Commissioning scripts print fact lines; testing scripts print what
//! they did for a person and write a JSON object of results to `$FLEET_RESULTS`. Each gets
//! `FLEET_URL FLEET_MACHINE FLEET_ROLE FLEET_RUN FLEET_SCRIPT FLEET_RESULTS` from the runner.
//! `FLEET_SYSFS`, `FLEET_PROCFS` and `FLEET_DEVFS` (default `/sys`, `/proc`, `/dev`) point a
//! script at another tree; the tests use that for fake machines.
//!
//! # Fact lines
//! One fact per line: `KIND key=value key="value" ...`, separated by spaces.
//! - A key is `[a-z0-9_]+`; keys of one line are distinct; order does not matter.
//! - A bare value runs to the next space and holds no `"`.
//! - A value that is empty or holds a space, `"` or `\` is double-quoted; inside the quotes
//!   `\"` stands for `"` and `\\` for `\`, no other escape exists. The closing quote is followed
//!   by a space or the end of the line.
//! - The scripts turn control characters (tab, newline ...) into spaces and trim both ends of
//!   every value, so a value never spans lines.
//! - An absent key and an empty value both mean "unknown".
//! - Lines of unknown kinds (and blank lines) are ignored; a malformed line of a known kind is
//!   skipped whole and reported as a [`FactProblem`] with its line number.
//!
//! The kinds and their keys (`*` required):
//! - `arch name*=amd64 machine=x86_64 firmware=uefi|bios` (name: Debian's architecture name)
//! - `cpu count*=8 model="..." mhz=2400 sockets=1` (count: CPUs online)
//! - `memory kib*=16318412 installed_kib=16777216` (MemTotal, and the online memory blocks of
//!   sysfs; `memory_mib` is installed_kib / 1024 when given, else kib / 1024)
//! - `disk name*=vda size*=BYTES bus=virtio|nvme|ata|scsi|usb|mmc|other model="..." serial=...
//!   id_path=/dev/disk/by-id/... rotational=0|1 block_size=512` (one per disk; `id_path` is
//!   derived the way udev names the link, absent when that cannot be known for certain; a SCSI
//!   disk, virtio-scsi included, gets scsi_id's `scsi-...` from VPD page 0x83 when it has no
//!   WWN; `bus` is stored with the disk)
//! - `interface name*=eth0 mac*=52:54:00:12:34:56 link=up|down speed=1000 driver=e1000`
//!   (Ethernet interfaces with a device behind them; speed in Mb/s, absent when unknown)
//! - `pci slot*=0000:00:03.0 vendor=8086 device=100e class=020000 subsystem_vendor=...
//!   subsystem_device=... revision=03 driver=e1000` (ids in hex without `0x`)
//! - `usb path*=1-1 vendor=0627 product=0001 class=00 manufacturer=... name=... serial=...
//!   speed=12 bus=1 device=2 driver=usb`
//! - `dmi vendor= product= version= serial= uuid= sku= family= board_vendor= board_name=
//!   board_serial= chassis_vendor= chassis_type= chassis_serial= bios_vendor= bios_version=
//!   bios_date=` (every key printed, `""` when unreadable: serials and UUID need root)
//!
//! Where they go: `arch` → [`Inventory::arch`]; `cpu` and `memory` → the typed fields of
//! [`Hardware`](crate::model::records::Hardware); `disk` and `interface` → the typed lists (a later
//! line of the same name replaces an earlier one). `Hardware.facts` is a JSON object holding
//! every pair as printed (strings): `arch`, `cpu`, `memory`, `dmi` as objects, `pci` and
//! `usb` as arrays of objects (one per slot / path).

mod facts;
#[cfg(test)]
mod tests;

pub use facts::{parse_facts, FactProblem, Inventory};

pub use crate::config::ScriptKind;

/// A script that comes with fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinScript {
    pub name: &'static str,
    pub kind: ScriptKind,
    pub timeout_seconds: u32,
    /// Writes to the disks (none of the built-in ones does).
    pub destructive: bool,
    /// May run on a deployed machine in use (`register-live.sh`): it reads only and takes
    /// little memory.
    pub safe_on_live_host: bool,
    /// The script (POSIX sh for busybox).
    pub text: &'static str,
}

/// A built-in commissioning script's text: the shared fact helpers, then the script.
macro_rules! with_fact_helpers {
    ($path:literal) => {
        concat!(
            include_str!("scripts/fact-helpers.inc"),
            include_str!($path)
        )
    };
}

/// A script that works on every disk: the shared disk helpers, `prefix` (shell assignments),
/// then the script.
macro_rules! with_disk_helpers {
    ($prefix:literal, $path:literal) => {
        concat!(
            include_str!("scripts/disk-helpers.inc"),
            $prefix,
            include_str!($path)
        )
    };
}

/// A disk erase for one mode (destructive, never on a live host).
const fn erase(name: &'static str, timeout_seconds: u32, text: &'static str) -> BuiltinScript {
    BuiltinScript {
        name,
        kind: ScriptKind::Erase,
        timeout_seconds,
        destructive: true,
        safe_on_live_host: false,
        text,
    }
}

/// The deploying run's one script: lays out the disks and writes the image (its timeout is the
/// policy's deploying limit, set by the machine API).
const fn deploy(name: &'static str, text: &'static str) -> BuiltinScript {
    BuiltinScript {
        name,
        kind: ScriptKind::Deploy,
        timeout_seconds: 3600,
        destructive: true,
        safe_on_live_host: false,
        text,
    }
}

/// The name of the deploying run's built-in script.
pub const DEPLOY_SCRIPT: &str = "fleet-deploy";

/// A read-only fact-finding script.
const fn commissioning(name: &'static str, text: &'static str) -> BuiltinScript {
    BuiltinScript {
        name,
        kind: ScriptKind::Commissioning,
        timeout_seconds: 60,
        destructive: false,
        safe_on_live_host: true,
        text,
    }
}

const fn test(
    name: &'static str,
    timeout_seconds: u32,
    safe_on_live_host: bool,
    text: &'static str,
) -> BuiltinScript {
    BuiltinScript {
        name,
        kind: ScriptKind::Testing,
        timeout_seconds,
        destructive: false,
        safe_on_live_host,
        text,
    }
}

/// In name order, which is the order they run in.
static BUILTIN_SCRIPTS: [BuiltinScript; 15] = [
    commissioning(
        "00-fleet-arch",
        with_fact_helpers!("scripts/00-fleet-arch.sh"),
    ),
    commissioning(
        "10-fleet-cpu",
        with_fact_helpers!("scripts/10-fleet-cpu.sh"),
    ),
    commissioning(
        "20-fleet-memory",
        with_fact_helpers!("scripts/20-fleet-memory.sh"),
    ),
    commissioning(
        "30-fleet-disks",
        with_fact_helpers!("scripts/30-fleet-disks.sh"),
    ),
    commissioning(
        "40-fleet-interfaces",
        with_fact_helpers!("scripts/40-fleet-interfaces.sh"),
    ),
    commissioning(
        "50-fleet-pci",
        with_fact_helpers!("scripts/50-fleet-pci.sh"),
    ),
    commissioning(
        "51-fleet-usb",
        with_fact_helpers!("scripts/51-fleet-usb.sh"),
    ),
    commissioning(
        "60-fleet-dmi",
        with_fact_helpers!("scripts/60-fleet-dmi.sh"),
    ),
    deploy(DEPLOY_SCRIPT, include_str!("scripts/fleet-deploy.sh")),
    // Reads the first 64 MiB of every disk: a minute per disk is plenty even for a slow one.
    test(
        "fleet-disk-read",
        600,
        true,
        with_disk_helpers!("", "scripts/fleet-disk-read.sh"),
    ),
    // A quick erase writes 8 MiB a disk; secure and full ones may take hours on large disks
    // (the status's own limit, `timeouts.disk_erasing`, bounds the whole erase).
    erase(
        "fleet-erase-full",
        12 * 3600,
        with_disk_helpers!("mode=full\n", "scripts/fleet-erase.sh"),
    ),
    erase(
        "fleet-erase-quick",
        600,
        with_disk_helpers!("mode=quick\n", "scripts/fleet-erase.sh"),
    ),
    erase(
        "fleet-erase-secure",
        12 * 3600,
        with_disk_helpers!("mode=secure\n", "scripts/fleet-erase.sh"),
    ),
    // Fills up to half of the free memory: not on a host that is running workloads.
    test(
        "fleet-memtest",
        300,
        false,
        include_str!("scripts/fleet-memtest.sh"),
    ),
    test(
        "fleet-network",
        60,
        true,
        include_str!("scripts/fleet-network.sh"),
    ),
];

/// Every built-in script, in name order.
pub fn builtin_scripts() -> &'static [BuiltinScript] {
    &BUILTIN_SCRIPTS
}

pub fn builtin_script(name: &str) -> Option<&'static BuiltinScript> {
    BUILTIN_SCRIPTS.iter().find(|script| script.name == name)
}
