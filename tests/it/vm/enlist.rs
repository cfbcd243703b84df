//! End to end with a real virtual machine: QEMU (BIOS, QEMU's iPXE ROM, virtio-net, TCG) with a
//! blank disk, on a tap device in a namespace where only the controller serves DHCP, TFTP and
//! HTTP, booting the ephemeral environment that `.ci/setup-ephemeral` built from Debian's
//! kernel and busybox (`examples/ephemeral/build.sh`):
//! 1. it netboots with an unknown MAC, enlists, and appears as new with its MAC;
//! 2. the fleet file adopts it with the `qemu` power type; `fleet apply` commissions it: the
//!    driver powers it on through QMP, it netboots again, runs the built-in scripts and tests,
//!    and rests in ready with the inventory QEMU was started with (CPUs, memory, disk, MAC);
//!    then released with a quick erase: it boots to erase the ends of its disk, then is ready;
//! 3. an operator's failing commissioning script → failed_commissioning with its name and stderr;
//! 4. killed mid-commissioning → failed_commissioning by the heartbeat limit.
//!
//! Waits are for conditions, and their limits are multiples of the first boot measured here
//! (`Pace`), so that a loaded machine, which boots the VM several times slower, gets as many
//! boots' worth of time as a quiet one. The controller's boot limit is generous for the same
//! reason; the heartbeat limit only runs once the machine has called.

use crate::support::bootnet::{
    ephemeral_fleet_file, kill_by_pidfile, read, tail, vm_test_directory, BootNetwork,
    NamespacedController, ONE_VM_AT_A_TIME,
};
use fleet::model::Status;
use fleet::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:5e:00:01";
const NAME: &str = "enlisted-5254005e0001";
/// What the VM is started with, to compare with what commissioning finds.
const CPUS: i64 = 2;
const MEMORY_MIB: i64 = 1024;
pub(crate) const DISK_BYTES: u64 = 2 << 30;
/// The heartbeat limit of the test's fleet file: silence after the machine's first call. The
/// machine beats every third of it, so two beats may be lost to a loaded host.
const HEARTBEAT: &str = "30s";

/// The controller's fleet file: boot services on the bridge, the ephemeral image, short limits,
/// `scripts` (extra TOML), and `machines` (extra TOML: the adopted machine).
pub(crate) fn write_fleet_file(directory: &Path, scripts: &str, machines: &str) -> PathBuf {
    let limits = format!(
        "[policy.timeouts]\nboot = \"10m\"\nheartbeat = \"{HEARTBEAT}\"\ncommissioning = \"10m\"\ntesting = \"10m\"\n"
    );
    ephemeral_fleet_file(directory, &format!("{limits}{scripts}\n{machines}"))
}

/// How fast this host boots the VM, measured on its first boot (QEMU started → enlistment run
/// ended): the later waits allow a number of such boots, never less than a floor.
pub(crate) struct Pace {
    pub(crate) first_boot: Duration,
}

impl Pace {
    /// The first boot is not measured yet: what it may take on a slow, loaded host (seen: over
    /// 300 s at a load of 26 on 2 cores, with the 23 MB initramfs of the full tool set).
    pub(crate) const FIRST_BOOT_LIMIT: Duration = Duration::from_secs(600);
    const FLOOR: Duration = Duration::from_secs(90);

    pub(crate) fn boots(&self, count: u32) -> Duration {
        (self.first_boot * count).max(Self::FLOOR)
    }
}

/// The VM: started once, kept alive across power-offs (`-no-shutdown`), powered through QMP.
pub(crate) struct Vm {
    child: Child,
    killed: bool,
    pidfile: PathBuf,
    pub(crate) qmp: PathBuf,
    console: PathBuf,
}

/// The machine QEMU emulates.
#[derive(Clone, Copy)]
pub(crate) enum Hardware {
    /// SeaBIOS, virtio-net and a virtio disk (the fastest under TCG).
    BiosVirtio,
    /// OVMF on q35, an e1000e NIC with QEMU's iPXE ROM and an NVMe disk.
    UefiE1000eNvme,
    /// SeaBIOS, virtio-net and an NVMe disk (erase.rs: the NVMe erases).
    BiosVirtioNvme,
}

impl Vm {
    fn start(network: &BootNetwork, directory: &Path) -> Vm {
        Self::start_with(network, directory, MAC, Hardware::BiosVirtio)
    }

    pub(crate) fn start_with(
        network: &BootNetwork,
        directory: &Path,
        mac: &str,
        hardware: Hardware,
    ) -> Vm {
        let disk = directory.join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|file| file.set_len(DISK_BYTES))
            .expect("a blank disk");
        let (pidfile, qmp, console) = (
            directory.join("qemu.pid"),
            directory.join("qmp.sock"),
            directory.join("console.log"),
        );
        let mut command = network.namespace.command("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-display", "none", "-no-shutdown"])
            .args([
                "-m",
                &MEMORY_MIB.to_string(),
                "-smp",
                &CPUS.to_string(),
                "-boot",
                "n",
            ])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={},script=no,downscript=no", network.tap),
            ])
            .args([
                "-drive",
                &format!("file={},if=none,id=d0,format=raw", disk.display()),
            ]);
        match hardware {
            Hardware::BiosVirtio => {
                command
                    .args([
                        "-device",
                        &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
                    ])
                    .args(["-device", "virtio-blk-pci,drive=d0,serial=fleet-e2e-disk"]);
            }
            Hardware::BiosVirtioNvme => {
                command
                    .args([
                        "-device",
                        &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
                    ])
                    .args(["-device", "nvme,drive=d0,serial=fleet-e2e-nvme"]);
            }
            Hardware::UefiE1000eNvme => {
                let vars = directory.join("OVMF_VARS.fd");
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .expect("OVMF (.ci/setup-netboot installs it)");
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
                    .args(["-device", &format!("e1000e,netdev=n0,mac={mac},bootindex=1")])
                    .args(["-device", "nvme,drive=d0,serial=fleet-e2e-nvme"]);
            }
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
            .stdout(Stdio::null());
        let child = command
            .spawn()
            .expect("qemu-system-x86_64 starts (.ci/setup-netboot installs it)");
        Vm {
            child,
            killed: false,
            pidfile,
            qmp,
            console,
        }
    }

    fn console(&self) -> String {
        read(&self.console)
    }

    /// Kills QEMU at once: the machine vanishes mid-work.
    fn kill(&mut self) {
        self.killed = true;
        kill_by_pidfile(&self.pidfile);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `done` says the machine got where it should, or fails with what was seen.
pub(crate) async fn wait_for<T>(
    what: &str,
    limit: Duration,
    vm: &mut Vm,
    controller: &NamespacedController,
    mut done: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if !vm.killed {
            if let Ok(Some(exit)) = vm.child.try_wait() {
                panic!(
                    "{what}: QEMU exited ({exit})\nconsole:\n{}\ncontroller:\n{}",
                    tail(&vm.console(), 40),
                    tail(&read(&controller.log), 40)
                );
            }
        }
        if let Some(value) = done().await {
            eprintln!("e2e: {what} after {:.1} s", started.elapsed().as_secs_f64());
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}\nconsole:\n{}\ncontroller:\n{}",
            tail(&vm.console(), 40),
            tail(&read(&controller.log), 40)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn status_of(store: &Store) -> Option<(Status, Option<String>)> {
    let record = store.machine(NAME).await.ok()??;
    Some((record.lifecycle.status, record.status_reason))
}

/// The machine, once its enlistment run has ended well (every built-in script reported).
pub(crate) async fn enlist_run_ended(
    store: &Store,
    name: &str,
) -> Option<fleet::store::MachineRecord> {
    let filter = fleet::store::EventFilter {
        machine: Some(name.to_string()),
        ..Default::default()
    };
    let events = store.events(&filter).await.ok()?;
    let ended = events.iter().any(|event| {
        event
            .reason
            .as_deref()
            .is_some_and(|reason| reason.starts_with("enlist run") && reason.ends_with("ended: ok"))
    });
    // Read after the event: the inventory was stored before the run ended.
    if !ended {
        return None;
    }
    store.machine(name).await.ok()?
}

/// `fleet ARGS` against the controller, which must succeed.
pub(crate) fn cli_ok(controller: &NamespacedController, args: &[&str]) {
    let output = controller.cli(args);
    assert!(
        output.status.success(),
        "fleet {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until the machine rests in `wanted`; its status reason then.
async fn wait_for_status(
    what: &str,
    limit: Duration,
    wanted: Status,
    vm: &mut Vm,
    controller: &NamespacedController,
    store: &Store,
) -> Option<String> {
    wait_for(what, limit, vm, controller, async || {
        status_of(store)
            .await
            .filter(|(status, _)| *status == wanted)
    })
    .await
    .1
}

pub(crate) fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
    file.sync_all().unwrap();
}

pub(crate) fn read_at(path: &Path, offset: u64, length: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0; length];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut bytes, offset)
        .unwrap();
    bytes
}

fn adopted_machine(qmp: &Path) -> String {
    format!(
        r#"
[[machine]]
name = "{NAME}"
macs = ["{MAC}"]
state = "ready"

[machine.power]
type = "qemu"
qmp_socket = "{}"
"#,
        qmp.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_machine_enlists_commissions_and_fails_as_lifecycle_md_says() {
    let _one = ONE_VM_AT_A_TIME.lock().await;
    // FLEET_NETBOOT_KEEP=1 keeps the files for a look afterwards.
    let directory = vm_test_directory();
    let dir = directory.path();
    let network = BootNetwork::new();
    let fleet_file = write_fleet_file(dir, "", "");
    let controller = NamespacedController::start(&network, dir, &fleet_file);
    let store = controller.store().await;
    let mut vm = Vm::start(&network, dir);

    // 1. Unknown MAC: it enlists and appears as new, with its MAC; then powers itself off.
    let started = Instant::now();
    let record = wait_for(
        "enlisted",
        Pace::FIRST_BOOT_LIMIT,
        &mut vm,
        &controller,
        async || enlist_run_ended(&store, NAME).await,
    )
    .await;
    let pace = Pace {
        first_boot: started.elapsed(),
    };
    assert_eq!(record.lifecycle.status, Status::New);
    assert!(
        record.interfaces.iter().any(|i| i.mac.to_string() == MAC),
        "{:?}",
        record.interfaces
    );
    assert_eq!(
        record.hardware.cpus,
        Some(CPUS),
        "enlistment runs the built-in scripts"
    );

    // 2. Adopted with the qemu power type; `fleet apply` commissions it to ready.
    let fleet_file = write_fleet_file(dir, "", &adopted_machine(&vm.qmp));
    let started = Instant::now();
    let output = controller.cli(&["apply", "-f", fleet_file.to_str().unwrap(), "--yes"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "apply failed:\n{stdout}\n{stderr}\nconsole:\n{}\ncontroller:\n{}",
        tail(&vm.console(), 40),
        tail(&read(&controller.log), 40)
    );
    eprintln!(
        "e2e: commissioned by apply in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let record = store.machine(NAME).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, Status::Ready, "{stdout}");
    assert!(record.lifecycle.commissioned);
    assert_eq!(record.power_type, "qemu");
    assert_eq!(record.hardware.cpus, Some(CPUS));
    let memory = record.hardware.memory_mib.expect("memory found");
    assert!(
        (memory - MEMORY_MIB).abs() * 100 <= MEMORY_MIB * 2,
        "memory {memory} MiB vs -m {MEMORY_MIB}"
    );
    let disk = record
        .disks
        .iter()
        .find(|disk| disk.name == "vda")
        .expect("the disk vda");
    assert_eq!(disk.size_bytes as u64, DISK_BYTES);
    assert_eq!(disk.serial.as_deref(), Some("fleet-e2e-disk"));
    assert!(
        record
            .interfaces
            .iter()
            .any(|i| i.mac.to_string() == MAC && i.driver.as_deref() == Some("virtio_net")),
        "{:?}",
        record.interfaces
    );
    let results = store.script_results(record.id).await.unwrap();
    for test in ["fleet-memtest", "fleet-disk-read", "fleet-network"] {
        assert!(
            results
                .iter()
                .any(|r| r.name == test && r.status == "passed"),
            "{test} did not pass: {results:#?}"
        );
    }
    let shown = controller.cli(&["machine", "show", NAME]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("fleet-memtest") && shown.contains("ready"),
        "{shown}"
    );

    // 2b. Released with a quick erase: the VM boots to erase its disk, then is released to
    // ready. What was written over the first and the last MiB of the disk is gone; the middle
    // is kept.
    let disk = dir.join("disk.img");
    const MIB: u64 = 1 << 20;
    let marker = vec![0x5au8; MIB as usize];
    for offset in [0, DISK_BYTES / 2, DISK_BYTES - MIB] {
        write_at(&disk, offset, &marker);
    }
    for action in [
        &["machine", "allocate", NAME][..],
        &["machine", "release", NAME, "--erase", "quick"],
    ] {
        cli_ok(&controller, action);
    }
    wait_for_status(
        "erased and released",
        pace.boots(4),
        Status::Ready,
        &mut vm,
        &controller,
        &store,
    )
    .await;
    let zeros = vec![0; MIB as usize];
    assert!(
        read_at(&disk, 0, MIB as usize) == zeros,
        "the first MiB was not erased"
    );
    assert!(
        read_at(&disk, DISK_BYTES - MIB, MIB as usize) == zeros,
        "the last MiB was not erased"
    );
    assert!(
        read_at(&disk, DISK_BYTES / 2, MIB as usize) == marker,
        "a quick erase keeps the middle"
    );
    let results = store.script_results(record.id).await.unwrap();
    assert!(
        results
            .iter()
            .any(|r| r.name == "fleet-erase-quick" && r.status == "passed"),
        "{results:#?}"
    );

    // 3. An operator's commissioning script that fails: failed_commissioning, naming it.
    drop(controller);
    std::fs::write(
        dir.join("raid.sh"),
        "#!/bin/sh\necho checking\necho 'no RAID controller on this machine' >&2\nexit 4\n",
    )
    .unwrap();
    let scripts =
        "[scripts.check-raid]\nfile = \"raid.sh\"\nkind = \"commissioning\"\ntimeout = \"1m\"\n";
    let fleet_file = write_fleet_file(dir, scripts, &adopted_machine(&vm.qmp));
    let controller = NamespacedController::start(&network, dir, &fleet_file);
    cli_ok(&controller, &["machine", "commission", NAME]);
    let reason = wait_for_status(
        "failed by its script",
        pace.boots(6),
        Status::FailedCommissioning,
        &mut vm,
        &controller,
        &store,
    )
    .await;
    assert_eq!(
        reason.as_deref(),
        Some("commissioning script check-raid failed (exit 4): no RAID controller on this machine")
    );

    // 4. Killed mid-commissioning: failed by the heartbeat limit.
    let before = store.events(&Default::default()).await.unwrap();
    let last_seen = before.last().map(|event| event.id);
    cli_ok(&controller, &["machine", "commission", NAME]);
    let since_commission = fleet::store::EventFilter {
        machine: Some(NAME.to_string()),
        after_id: last_seen,
        limit: None,
    };
    wait_for(
        "running its scripts",
        pace.boots(4),
        &mut vm,
        &controller,
        async || {
            let events = store.events(&since_commission).await.ok()?;
            events
                .iter()
                .any(|event| event.kind == "script")
                .then_some(())
        },
    )
    .await;
    vm.kill();
    let killed = Instant::now();
    let reason = wait_for_status(
        "failed by silence",
        Duration::from_secs(30) + pace.boots(1),
        Status::FailedCommissioning,
        &mut vm,
        &controller,
        &store,
    )
    .await;
    assert_eq!(reason.as_deref(), Some("not heard from for 30 seconds"));
    assert!(
        killed.elapsed() >= Duration::from_secs(20),
        "failed too soon: {:?}",
        killed.elapsed()
    );
}

/// The same enlistment on other hardware: UEFI (OVMF, q35), an Intel e1000e NIC and an NVMe
/// disk; the built-in scripts find them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_machine_with_e1000e_and_nvme_enlists_with_that_hardware() {
    const UEFI_MAC: &str = "52:54:00:5e:00:02";
    let _one = ONE_VM_AT_A_TIME.lock().await;
    let directory = tempfile::tempdir().expect("a directory");
    let dir = directory.path();
    let network = BootNetwork::new();
    let controller = NamespacedController::start(&network, dir, &write_fleet_file(dir, "", ""));
    let store = controller.store().await;
    let mut vm = Vm::start_with(&network, dir, UEFI_MAC, Hardware::UefiE1000eNvme);
    let name = "enlisted-5254005e0002";
    let record = wait_for(
        "enlisted under UEFI",
        Pace::FIRST_BOOT_LIMIT,
        &mut vm,
        &controller,
        async || enlist_run_ended(&store, name).await,
    )
    .await;
    assert_eq!(record.lifecycle.status, Status::New);
    assert_eq!(record.arch.as_deref(), Some("amd64"));
    assert_eq!(
        record.hardware.facts["arch"]["firmware"], "uefi",
        "{:#?}",
        record.hardware.facts
    );
    let nic = record
        .interfaces
        .iter()
        .find(|i| i.mac.to_string() == UEFI_MAC)
        .expect("the NIC");
    assert_eq!(
        nic.driver.as_deref(),
        Some("e1000e"),
        "{:?}",
        record.interfaces
    );
    let disk = &record.disks[0];
    assert_eq!(
        (disk.name.as_str(), disk.size_bytes as u64),
        ("nvme0n1", DISK_BYTES),
        "{:?}",
        record.disks
    );
    assert_eq!(disk.serial.as_deref(), Some("fleet-e2e-nvme"));
}
