//! A QEMU virtual machine for the deployment tests (TCG): BIOS (SeaBIOS) or UEFI (OVMF on q35),
//! one virtio NIC on the boot network's tap that netboots first, and any number of disks (raw
//! files, virtio or NVMe, each with its serial; the first boots second). Started paused, so that
//! fleet's qemu power driver powers it on through QMP (`system_reset` + `cont`); kept alive
//! across power-offs (`-no-shutdown`); killed when dropped. The serial console goes to a file.

use super::bootnet::{kill_by_pidfile, read, BootNetwork};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Nvme,
}

/// One disk: a raw file (made sparse at `size` when missing or shorter; kept otherwise, so a VM
/// started again finds what was installed).
#[derive(Clone, Debug)]
pub struct Disk {
    pub file: PathBuf,
    pub size: u64,
    pub serial: String,
    pub bus: DiskBus,
}

#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Names the VM's files in the test directory (console, pidfile, QMP socket, OVMF vars).
    pub name: String,
    pub mac: String,
    pub firmware: Firmware,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disks: Vec<Disk>,
}

pub struct Vm {
    child: Child,
    killed: bool,
    pub pidfile: PathBuf,
    pub qmp: PathBuf,
    pub console: PathBuf,
}

impl Vm {
    /// Starts QEMU paused in the boot network's namespace.
    pub fn start(network: &BootNetwork, directory: &Path, spec: &VmSpec) -> Vm {
        let file = |suffix: &str| directory.join(format!("{}-{suffix}", spec.name));
        let (pidfile, qmp, console) = (file("qemu.pid"), file("qmp.sock"), file("console.log"));
        let _ = std::fs::remove_file(&console);
        let mut command = network.namespace.command("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-display", "none", "-no-shutdown", "-S"])
            .args(["-m", &spec.memory_mib.to_string()])
            .args(["-smp", &spec.cpus.to_string()])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={},script=no,downscript=no", network.tap),
            ])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={},bootindex=1", spec.mac),
            ]);
        if spec.firmware == Firmware::Uefi {
            let vars = file("OVMF_VARS.fd");
            if !vars.exists() {
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .expect("OVMF (.ci/setup-netboot installs it)");
            }
            command
                .args(["-machine", "q35"])
                .args([
                    "-drive",
                    "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                ])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ])
                // No PXE or HTTP boot over IPv6: the boot network has no DHCPv6, and QEMU's
                // bootorder makes OVMF try every boot option of the NIC before the disk's, so
                // those two would time out (70 s and 95 s under TCG) at each boot from disk.
                .args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"])
                .args(["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"]);
        }
        for (index, disk) in spec.disks.iter().enumerate() {
            make_disk(disk);
            let id = format!("d{index}");
            let device = match disk.bus {
                DiskBus::Virtio => "virtio-blk-pci",
                DiskBus::Nvme => "nvme",
            };
            let boot = if index == 0 { ",bootindex=2" } else { "" };
            command
                .args([
                    "-drive",
                    &format!("file={},if=none,id={id},format=raw", disk.file.display()),
                ])
                .args([
                    "-device",
                    &format!("{device},drive={id},serial={}{boot}", disk.serial),
                ]);
        }
        command
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
            ])
            .args(["-serial", &format!("file:{}", console.display())])
            .arg("-pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(file("qemu.log")).expect("a QEMU log"));
        let child = command
            .spawn()
            .expect("qemu-system-x86_64 starts (.ci/setup-netboot installs it)");
        // The QMP socket exists once QEMU is listening: the power driver needs it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !qmp.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "QEMU did not open {}: {}",
                qmp.display(),
                read(&file("qemu.log"))
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Vm {
            child,
            killed: false,
            pidfile,
            qmp,
            console,
        }
    }

    pub fn console(&self) -> String {
        read(&self.console)
    }

    /// QEMU's exit, if it has exited (never after `kill`).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.killed {
            return None;
        }
        self.child.try_wait().ok().flatten()
    }

    /// Kills QEMU at once (the disk files stay).
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        kill_by_pidfile(&self.pidfile);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.qmp);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn make_disk(disk: &Disk) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&disk.file)
        .expect("a disk file");
    let length = file.metadata().expect("the disk's size").len();
    if length < disk.size {
        file.set_len(disk.size).expect("a sparse disk");
    }
}

/// The partition table of a disk file, as `sfdisk --json` reads it: (start, size) in bytes and
/// the type of each partition, and the label (`dos`/`gpt`).
pub fn partitions(file: &Path) -> (String, Vec<(u64, u64, String)>) {
    let output = std::process::Command::new("sfdisk")
        .arg("--json")
        .arg(file)
        .output()
        .expect("sfdisk runs (.ci/setup-test-images installs fdisk)");
    assert!(
        output.status.success(),
        "sfdisk --json {}: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let table: serde_json::Value = serde_json::from_slice(&output.stdout).expect("sfdisk's JSON");
    let table = &table["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let partitions = table["partitions"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    (
                        p["start"].as_u64().unwrap() * sector,
                        p["size"].as_u64().unwrap() * sector,
                        p["type"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (
        table["label"].as_str().unwrap_or_default().to_string(),
        partitions,
    )
}

/// Copies `size` bytes at `start` of a disk file into `to` (a partition, to read with debugfs
/// or blkid without mounting anything).
pub fn extract(disk: &Path, start: u64, size: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut source = std::fs::File::open(disk).expect("the disk file");
    source.seek(SeekFrom::Start(start)).unwrap();
    let mut target = std::fs::File::create(to).expect("a partition file");
    std::io::copy(&mut source.take(size), &mut target).expect("the partition copied");
}

/// `blkid -o export FILE` as key → value (TYPE, LABEL, UUID...).
pub fn blkid(file: &Path) -> std::collections::BTreeMap<String, String> {
    let output = std::process::Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(file)
        .output()
        .expect("blkid runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// A file of an ext4 filesystem image, read with `debugfs -R 'cat PATH'` (no mount); None when
/// it is not there.
pub fn ext4_file(filesystem: &Path, path: &str) -> Option<String> {
    let output = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(filesystem)
        .output()
        .expect("debugfs runs (e2fsprogs)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("File not found") || !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `debugfs -R 'stat PATH'`'s mode line of a file in an ext4 image (e.g. `0600`), if there.
pub fn ext4_mode(filesystem: &Path, path: &str) -> Option<String> {
    let output = std::process::Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(filesystem)
        .output()
        .expect("debugfs runs (e2fsprogs)");
    let text = String::from_utf8_lossy(&output.stdout);
    let mode = text.split("Mode:").nth(1)?.split_whitespace().next()?;
    Some(mode.trim_start_matches('0').to_string())
}
