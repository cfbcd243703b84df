//! Deployment end to end with real virtual machines (QEMU, TCG) on a boot network in a namespace
//! where only the controller serves DHCP, TFTP and HTTP, and a small HTTP server in the same
//! namespace serves the test operating system's images by URL (so the controller's download path
//! runs). The images are built from Debian packages by `.ci/setup-test-images`
//! (examples/test-images/build.sh): a root tarball (Debian's kernel, a busybox initramfs with
//! mdadm and lvm, a busybox /sbin/init) and a whole-disk raw-xz image (BIOS + UEFI bootable). The
//! test OS's init runs the first-boot hook fleet's deployment wrote onto the disk
//! (/usr/lib/fleet/first-boot), so the call-back that makes the machine deployed comes from what
//! fleet put there, and prints `fleet-test-os: ...` lines on the serial console.
//! 1. BIOS, tarball, flat template: commissioned, deployed, reboots from its own disk; the disk
//!    file, read afterwards without mounting (sfdisk, blkid, debugfs), holds exactly the resolved
//!    partitions, the rendered netplan and the NoCloud seed. Then released without erase and
//!    redeployed on UEFI (OVMF) with LVM on md RAID 1 over two disks.
//! 2. UEFI, the whole-disk raw-xz image on NVMe: deployed, booting from disk.
//! 3. A digest the machine catches while streaming (`fleet.test.corrupt_at=`) and an xz image that
//!    fits the disk compressed but not raw: failed_deployment, the second before a byte is written.
//!
//! Each test prints its timings (`cargo test --test it deploy:: -- --show-output`): deploy →
//! deployed per phase, and the image write rate beside plain `dd` of the same image
//! (`fleet.test.dd_baseline=1`).

use crate::support::bootnet::{
    ephemeral_fleet_file, read, tail, vm_test_directory, BootNetwork, NamespacedController,
    CONTROLLER_IP, ONE_VM_AT_A_TIME,
};
use crate::support::image_server::{sha256_of, test_images, ImageServer};
use crate::support::vm::{self, Disk, DiskBus, Firmware, Vm, VmSpec};
use fleet::model::Status;
use fleet::store::Store;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const IMAGE_PORT: u16 = 8080;
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f deploy-test@fleet";
const USER_DATA: &str = "#cloud-config\nruncmd:\n  - echo deployed by fleet\n";
/// What a loaded host may take for commissioning or one deployment (TCG: several boots).
const LIMIT: Duration = Duration::from_secs(15 * 60);

/// One test's world: its files, the boot network, the image server, the controller.
struct Bench {
    directory: tempfile::TempDir,
    network: BootNetwork,
    server: ImageServer,
}

impl Bench {
    /// The boot network with the test images served from a directory of the test (`extra`
    /// files are made there by the test before it starts).
    fn new() -> Bench {
        let directory = vm_test_directory();
        let served = directory.path().join("served");
        std::fs::create_dir_all(&served).unwrap();
        let images = test_images();
        for file in ["rootfs.tgz", "disk.raw.xz"] {
            std::os::unix::fs::symlink(images.join(file), served.join(file)).unwrap();
        }
        let network = BootNetwork::new();
        let server = ImageServer::start(
            &network.namespace,
            &format!("{CONTROLLER_IP}:{IMAGE_PORT}"),
            &served,
        );
        Bench {
            directory,
            network,
            server,
        }
    }

    fn dir(&self) -> &Path {
        self.directory.path()
    }

    fn served(&self, file: &str) -> PathBuf {
        self.dir().join("served").join(file)
    }

    /// `[images.NAME]` with a root image served by URL.
    fn image(&self, name: &str, file: &str, format: &str) -> String {
        let sha256 = sha256_of(&self.served(file));
        format!(
            "[images.{name}]\nroot = {{ url = \"{}/{file}\", sha256 = \"{sha256}\", format = \"{format}\" }}\n",
            self.server.url
        )
    }

    /// The fleet file: the images, templates and limits every test uses, and `machines`.
    fn fleet_file(&self, machines: &str) -> PathBuf {
        let text = format!(
            "{limits}{testos}{testdisk}{templates}\n{machines}",
            limits = LIMITS,
            testos = self.image("testos", "rootfs.tgz", "tgz"),
            testdisk = self.image("testdisk", "disk.raw.xz", "raw-xz"),
            templates = TEMPLATES,
        );
        ephemeral_fleet_file(self.dir(), &text)
    }

    fn controller(&self, fleet_file: &Path) -> NamespacedController {
        NamespacedController::start(&self.network, self.dir(), fleet_file)
    }
}

const LIMITS: &str = r#"
[policy.timeouts]
boot = "10m"
heartbeat = "2m"
commissioning = "15m"
testing = "15m"
deploying = "20m"
releasing = "10m"
"#;

const TEMPLATES: &str = r#"
[storage_templates.flat]
layout = "flat"

[storage_templates.whole-disk]
layout = "blank"

[storage_templates.raid-lvm]
layout = "custom"

[[storage_templates.raid-lvm.disks]]
id = "a"
partitions = [{ id = "a-raid" }]

[[storage_templates.raid-lvm.disks]]
id = "b"
partitions = [{ id = "b-raid" }]

[[storage_templates.raid-lvm.raids]]
id = "md0"
level = 1
members = ["a-raid", "b-raid"]

[[storage_templates.raid-lvm.volume_groups]]
id = "vgtest"
members = ["md0"]
logical_volumes = [{ name = "root", fstype = "ext4", label = "root", mount = "/" }]

[network_templates.boot]
interfaces = [{ name = "eth0", subnet = "boot", link = "auto" }]
"#;

/// A machine of the fleet file, powered by the qemu driver through the VM's QMP socket.
fn machine(
    name: &str,
    mac: &str,
    qmp: &Path,
    storage: &str,
    image: &str,
    ephemeral: &str,
) -> String {
    format!(
        r#"
[[machine]]
name = "{name}"
macs = ["{mac}"]
state = "ready"
storage = "{storage}"
network = "boot"
image = "{image}"
kernel_params = ["console=ttyS0,115200"]
ephemeral_kernel_params = [{ephemeral}]
ssh_keys = ["{SSH_KEY}"]
user_data = """{USER_DATA}"""

[machine.power]
type = "qemu"
qmp_socket = "{}"
"#,
        qmp.display()
    )
}

fn disk(bench: &Bench, file: &str, size: u64, serial: &str) -> Disk {
    Disk {
        file: bench.dir().join(file),
        size,
        serial: serial.to_string(),
        bus: DiskBus::Virtio,
    }
}

fn spec(name: &str, mac: &str, firmware: Firmware, disks: Vec<Disk>) -> VmSpec {
    VmSpec {
        name: name.to_string(),
        mac: mac.to_string(),
        firmware,
        cpus: 2,
        memory_mib: 768,
        disks,
    }
}

/// What went wrong, with the console's and the controller's last lines.
fn context(vm: &Vm, controller: &NamespacedController) -> String {
    format!(
        "\nconsole:\n{}\ncontroller:\n{}",
        tail(&vm.console(), 50),
        tail(&read(&controller.log), 30)
    )
}

fn cli_ok(controller: &NamespacedController, args: &[&str]) -> String {
    let output = controller.cli(args);
    assert!(
        output.status.success(),
        "fleet {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `fleet apply` of the fleet file, which must succeed (it commissions machines to ready).
fn apply(controller: &NamespacedController, fleet_file: &Path, vm: &Vm) {
    let started = Instant::now();
    let output = controller.cli(&["apply", "-f", fleet_file.to_str().unwrap(), "--yes"]);
    assert!(
        output.status.success(),
        "apply failed:\n{}\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        context(vm, controller)
    );
    eprintln!(
        "e2e: apply (commissioning) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn status_of(store: &Store, name: &str) -> (Status, Option<String>) {
    let record = store.machine(name).await.unwrap().expect("the machine");
    (record.lifecycle.status, record.status_reason)
}

/// The deploy script's output as `fleet machine show NAME --script ...` prints it.
fn deploy_output(controller: &NamespacedController, name: &str) -> String {
    for script in ["deploy", "fleet-deploy"] {
        let output = controller.cli(&["machine", "show", name, "--script", script]);
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
        }
    }
    String::new()
}

/// The deployment as the controller recorded it: the machine's events from the deploy action
/// on, and how long until the wanted status.
struct Timings {
    events: Vec<fleet::store::Event>,
    total: Duration,
}

impl Timings {
    /// Prints each step (lease events left out) with its time from the deploy action and the
    /// time to the next one, then the script's write rates.
    fn print(&self, what: &str, output: &str) {
        println!("timings: {what}: {:.1} s in all", self.total.as_secs_f64());
        let steps: Vec<&fleet::store::Event> =
            self.events.iter().filter(|e| e.kind != "lease").collect();
        let Some(first) = steps.first() else { return };
        for (index, event) in steps.iter().enumerate() {
            let next = steps.get(index + 1).map(|n| n.at).unwrap_or(event.at);
            println!(
                "  +{:>6.1} s ({:>5.1} s)  {:<10} {}",
                (event.at - first.at) as f64 / 1000.0,
                (next - event.at) as f64 / 1000.0,
                event.kind,
                event
                    .reason
                    .as_deref()
                    .or(event.action.as_deref())
                    .unwrap_or_default()
            );
        }
        for line in output.lines() {
            if line.contains("MB/s") {
                println!("  {}", line.trim());
            }
        }
    }

    /// The events from the installer's end on (the installed system's boot).
    fn after_install(&self) -> Vec<&fleet::store::Event> {
        let done = self.events.iter().position(|e| {
            e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("the installer is done"))
        });
        done.map(|at| self.events[at..].iter().collect())
            .unwrap_or_default()
    }
}

async fn machine_events(
    store: &Store,
    name: &str,
    after_id: Option<i64>,
) -> Vec<fleet::store::Event> {
    let filter = fleet::store::EventFilter {
        machine: Some(name.to_string()),
        after_id,
        limit: None,
    };
    store.events(&filter).await.unwrap()
}

/// `fleet machine deploy NAME [--image IMAGE]`, then waits until the machine rests in `wanted`
/// (failing on any other resting status), noting the phases on the way.
async fn deploy_until(
    controller: &NamespacedController,
    store: &Store,
    vm: &mut Vm,
    name: &str,
    image: Option<&str>,
    wanted: Status,
) -> (Option<String>, Timings) {
    let mut args = vec!["machine", "deploy", name];
    if let Some(image) = image {
        args.extend(["--image", image]);
    }
    let before = machine_events(store, name, None).await;
    let after_id = before.last().map(|event| event.id);
    let started = Instant::now();
    cli_ok(controller, &args);
    loop {
        if let Some(exit) = vm.exited() {
            panic!("QEMU exited ({exit}){}", context(vm, controller));
        }
        let (status, reason) = status_of(store, name).await;
        if status == wanted {
            eprintln!(
                "e2e: {name} {wanted} after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let timings = Timings {
                events: machine_events(store, name, after_id).await,
                total: started.elapsed(),
            };
            return (reason, timings);
        }
        let settled =
            !status.is_in_progress() && !matches!(status, Status::Ready | Status::Allocated);
        assert!(
            !settled,
            "{name} is {status} ({reason:?}), not {wanted}\ndeploy script:\n{}{}",
            tail(&deploy_output(controller, name), 30),
            context(vm, controller)
        );
        assert!(
            started.elapsed() < LIMIT,
            "{name}: not {wanted} within {LIMIT:?} (still {status}){}",
            context(vm, controller)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The console from the ephemeral environment's last reboot on: the installed system's boot.
fn after_local_boot(console: &str) -> &str {
    let at = console
        .rfind("fleet: rebooting")
        .expect("the deploying environment rebooted");
    &console[at..]
}

/// After the installer was done, the controller sent the machine to its disk and served it no
/// file but, on UEFI, the first-stage loader (the firmware's PXE fetches iPXE by TFTP, and iPXE
/// fetches the local-disk script).
fn assert_netboot_off(timings: &Timings) {
    let after = timings.after_install();
    assert!(
        after.iter().any(|e| e.kind == "boot"
            && e.reason
                .as_deref()
                .is_some_and(|r| r.contains("local disk"))),
        "no local-disk boot script after the installer was done: {after:#?}"
    );
    // A summary written after the installer was done may count transfers from before it (the
    // deploy boot's kernel and initrd, within a minute of the commissioning boot's): it says
    // when the last one it counts came.
    let done_at = after.first().map_or(0, |done| done.at);
    let loader = |path: &serde_json::Value| path.as_str().is_some_and(|p| p.ends_with(".efi"));
    let only_loaders = |event: &fleet::store::Event| match event.action.as_deref() {
        Some("summary") => event.detail["examples"]
            .as_array()
            .is_some_and(|examples| examples.iter().all(loader)),
        _ => event.detail["protocol"] == "tftp" && loader(&event.detail["path"]),
    };
    let served_after = |event: &&&fleet::store::Event| {
        event.kind == "transfer"
            && !only_loaders(event)
            && match event.action.as_deref() {
                Some("summary") => event.detail["last_at"]
                    .as_i64()
                    .is_none_or(|last| last >= done_at),
                _ => true,
            }
    };
    assert!(
        !after.iter().any(|e| served_after(&e)),
        "files served after the installer was done: {after:#?}"
    );
}

/// The installed system booted from disk and its first-boot hook called back.
fn assert_booted_from_disk(console: &str) {
    let installed = after_local_boot(console);
    assert!(
        installed.contains("fleet-test-os: booted from disk"),
        "no boot from disk after the local-disk script:\n{}",
        tail(installed, 60)
    );
    assert!(
        installed.contains("fleet-test-os: first-boot exited 0")
            && installed.contains("/etc/fleet/callback removed"),
        "the first-boot hook did not call back:\n{}",
        tail(installed, 60)
    );
    assert!(
        !installed.contains("fleet.role="),
        "the ephemeral environment booted again after the installer's reboot"
    );
}

/// On UEFI: the firmware went on from the netboot to the entry fleet-deploy made (OVMF's BdsDxe
/// names each boot option it starts on the console), not to its own entry for the disk.
fn assert_booted_through_the_fleet_entry(console: &str) {
    let installed = after_local_boot(console);
    let started =
        regex::Regex::new(r#"BdsDxe: starting Boot[0-9A-F]{4} "fleet" from HD\("#).unwrap();
    assert!(
        started.is_match(installed),
        "the firmware did not start the fleet boot entry:\n{}",
        tail(installed, 60)
    );
}

/// A partition of a disk file copied out, to read without mounting.
fn partition_file(dir: &Path, disk: &Path, start: u64, size: u64, name: &str) -> PathBuf {
    let file = dir.join(name);
    vm::extract(disk, start, size, &file);
    file
}

/// The disk holds exactly the partitions of the stored layout's disk `index`.
fn assert_partitions(disk_file: &Path, layout: &serde_json::Value, index: usize, label: &str) {
    let (found_label, found) = vm::partitions(disk_file);
    assert_eq!(found_label, label, "{}", disk_file.display());
    let wanted: Vec<(u64, u64)> = layout["disks"][index]["partitions"]
        .as_array()
        .expect("the layout's partitions")
        .iter()
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect();
    let found: Vec<(u64, u64)> = found
        .iter()
        .map(|(start, size, _)| (*start, *size))
        .collect();
    assert_eq!(
        found,
        wanted,
        "partitions of {} vs the layout {layout}",
        disk_file.display()
    );
}

/// What the deployment left on the root filesystem (an ext4 image): the rendered netplan, the
/// NoCloud seed, the SSH key, the hook; the call-back credential gone once accepted.
fn assert_installed_files(root: &Path, name: &str, netplan: Option<&str>) {
    if let Some(netplan) = netplan {
        assert_eq!(
            vm::ext4_file(root, "/etc/netplan/50-fleet.yaml").as_deref(),
            Some(netplan),
            "the netplan file"
        );
        assert_eq!(
            vm::ext4_mode(root, "/etc/netplan/50-fleet.yaml").as_deref(),
            Some("600")
        );
    }
    let seed = "/var/lib/cloud/seed/nocloud";
    let meta = vm::ext4_file(root, &format!("{seed}/meta-data")).expect("NoCloud meta-data");
    for wanted in ["instance-id", name, SSH_KEY] {
        assert!(meta.contains(wanted), "meta-data lacks {wanted}:\n{meta}");
    }
    assert_eq!(
        vm::ext4_file(root, &format!("{seed}/user-data")).as_deref(),
        Some(USER_DATA)
    );
    assert!(vm::ext4_file(root, &format!("{seed}/vendor-data")).is_some());
    if let Some(netplan) = netplan {
        let config =
            vm::ext4_file(root, &format!("{seed}/network-config")).expect("NoCloud network-config");
        assert!(!config.is_empty() && netplan.contains("eth0"), "{config}");
    }
    let keys = vm::ext4_file(root, "/root/.ssh/authorized_keys").expect("authorized_keys");
    assert!(keys.contains(SSH_KEY), "{keys}");
    assert!(vm::ext4_file(root, "/usr/lib/fleet/first-boot").is_some());
    assert!(
        vm::ext4_file(root, "/etc/fleet/callback").is_none(),
        "the call-back credential is deleted once accepted"
    );
}

const BIOS_MAC: &str = "52:54:00:de:00:01";
const BIOS_NAME: &str = "deploy-bios";

/// 1. BIOS, tarball, flat → deployed from its own disk, the disk holding what the plan
/// resolved and rendered; then released without erase and redeployed on UEFI with LVM on md
/// RAID 1 over two disks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bios_machine_deploys_a_tarball_flat_then_redeploys_on_uefi_raid1_lvm() {
    let _one = ONE_VM_AT_A_TIME.lock().await;
    let test_started = Instant::now();
    let bench = Bench::new();
    let dir = bench.dir();
    let first = disk(&bench, "disk0.img", 4 * GIB, "fleet-deploy-0");
    let mut vm = Vm::start(
        &bench.network,
        dir,
        &spec("bios", BIOS_MAC, Firmware::Bios, vec![first.clone()]),
    );
    let fleet_file = bench.fleet_file(&machine(
        BIOS_NAME,
        BIOS_MAC,
        &vm.qmp,
        "flat",
        "testos",
        "\"fleet.test.dd_baseline=1\"",
    ));
    let controller = bench.controller(&fleet_file);
    let store = controller.store().await;
    apply(&controller, &fleet_file, &vm);
    assert_eq!(status_of(&store, BIOS_NAME).await.0, Status::Ready);

    let (_, timings) = deploy_until(
        &controller,
        &store,
        &mut vm,
        BIOS_NAME,
        None,
        Status::Deployed,
    )
    .await;
    let output = deploy_output(&controller, BIOS_NAME);
    timings.print("BIOS, rootfs.tgz, flat: deploy → deployed", &output);
    assert!(
        bench
            .server
            .requests()
            .iter()
            .any(|path| path == "/rootfs.tgz"),
        "the controller did not download the image by URL: {:?}",
        bench.server.requests()
    );
    // Let the installed system finish its lines (it remounts its root read-only after the hook).
    wait_for_console(&vm, &controller, "fleet-test-os: ready").await;
    assert_booted_from_disk(&vm.console());
    assert_netboot_off(&timings);
    let installed = after_local_boot(&vm.console()).to_string();
    assert!(
        installed.contains("fleet-test-os: booted from disk (root=UUID="),
        "{installed}"
    );

    // The disk, read on the host (the test OS keeps its root read-only now).
    let stored = store
        .deployment(BIOS_NAME)
        .await
        .unwrap()
        .expect("a stored deployment");
    let layout = stored.layout.expect("the layout");
    assert_partitions(&first.file, &layout, 0, "dos");
    let root = layout["disks"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["filesystem"]["mount"] == "/")
        .expect("the root partition")
        .clone();
    let root_file = partition_file(
        dir,
        &first.file,
        root["start"].as_u64().unwrap(),
        root["size"].as_u64().unwrap(),
        "root.ext4",
    );
    let probed = vm::blkid(&root_file);
    assert_eq!(
        probed.get("TYPE").map(String::as_str),
        Some("ext4"),
        "{probed:?}"
    );
    assert!(
        installed.contains(&format!("root=UUID={}", probed["UUID"])),
        "booted from another root than the disk's: {probed:?}"
    );
    let network: fleet::plan::network::NetworkConfig =
        serde_json::from_value(stored.network.expect("the network")).unwrap();
    assert_installed_files(&root_file, BIOS_NAME, Some(&network.netplan_yaml()));
    eprintln!(
        "e2e: BIOS part done at {:.1} s",
        test_started.elapsed().as_secs_f64()
    );

    // 2. Released without erase; the VM comes back on UEFI with a second disk, is commissioned
    // again, and is deployed with LVM on md RAID 1 over both disks.
    cli_ok(&controller, &["machine", "release", BIOS_NAME]);
    wait_for_status(&store, BIOS_NAME, Status::Ready, &vm, &controller).await;
    drop(controller);
    drop(vm);
    // The same VM name: the same QMP socket, which the machine's power parameters name.
    let second = disk(&bench, "disk1.img", 4 * GIB, "fleet-deploy-1");
    let mut vm = Vm::start(
        &bench.network,
        dir,
        &spec(
            "bios",
            BIOS_MAC,
            Firmware::Uefi,
            vec![first.clone(), second.clone()],
        ),
    );
    let fleet_file = bench.fleet_file(&machine(
        BIOS_NAME,
        BIOS_MAC,
        &vm.qmp,
        "raid-lvm",
        "testos",
        "\"fleet.test.dd_baseline=1\"",
    ));
    let controller = bench.controller(&fleet_file);
    // The new power socket and template, then what commissioning finds now (two disks, UEFI),
    // then the layout resolved against that.
    apply(&controller, &fleet_file, &vm);
    cli_ok(&controller, &["machine", "commission", BIOS_NAME]);
    wait_for_status(&store, BIOS_NAME, Status::Ready, &vm, &controller).await;
    apply(&controller, &fleet_file, &vm);
    let (_, timings) = deploy_until(
        &controller,
        &store,
        &mut vm,
        BIOS_NAME,
        None,
        Status::Deployed,
    )
    .await;
    timings.print(
        "UEFI, rootfs.tgz, LVM on RAID 1 (redeploy): deploy → deployed",
        &deploy_output(&controller, BIOS_NAME),
    );
    wait_for_console(&vm, &controller, "fleet-test-os: ready").await;
    assert_booted_from_disk(&vm.console());
    assert_booted_through_the_fleet_entry(&vm.console());
    assert_netboot_off(&timings);
    vm.kill();
    let layout = store
        .deployment(BIOS_NAME)
        .await
        .unwrap()
        .unwrap()
        .layout
        .unwrap();
    assert_eq!(layout["firmware"], "uefi", "{layout}");
    assert_partitions(&first.file, &layout, 0, "gpt");
    assert_partitions(&second.file, &layout, 1, "gpt");
    for (index, file) in [(0, &first.file), (1, &second.file)] {
        let member = layout["disks"][index]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == "raid")
            .expect("a RAID member")
            .clone();
        let part = partition_file(
            dir,
            file,
            member["start"].as_u64().unwrap(),
            member["size"].as_u64().unwrap(),
            &format!("member{index}"),
        );
        let probed = vm::blkid(&part);
        assert_eq!(
            probed.get("TYPE").map(String::as_str),
            Some("linux_raid_member"),
            "{probed:?}"
        );
        let _ = std::fs::remove_file(part);
    }
    eprintln!(
        "e2e: whole test {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
}

async fn wait_for_status(
    store: &Store,
    name: &str,
    wanted: Status,
    vm: &Vm,
    controller: &NamespacedController,
) {
    let started = Instant::now();
    loop {
        let (status, reason) = status_of(store, name).await;
        if status == wanted {
            eprintln!(
                "e2e: {name} {wanted} after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        assert!(
            status.is_in_progress()
                || status == Status::Deployed
                || status == Status::Allocated
                || status == Status::Ready,
            "{name} is {status} ({reason:?}), not {wanted}{}",
            context(vm, controller)
        );
        assert!(
            started.elapsed() < LIMIT,
            "{name}: not {wanted} within {LIMIT:?}{}",
            context(vm, controller)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_for_console(vm: &Vm, controller: &NamespacedController, line: &str) {
    let started = Instant::now();
    while !vm.console().contains(line) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no `{line}` on the console{}",
            context(vm, controller)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// 2. UEFI, the whole-disk raw-xz image → deployed, booting from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_machine_deploys_a_whole_disk_raw_xz_image() {
    const MAC: &str = "52:54:00:de:00:02";
    const NAME: &str = "deploy-uefi-raw";
    let _one = ONE_VM_AT_A_TIME.lock().await;
    let bench = Bench::new();
    let dir = bench.dir();
    let only = Disk {
        bus: DiskBus::Nvme,
        ..disk(&bench, "disk.img", 2 * GIB, "fleet-raw-0")
    };
    let mut vm = Vm::start(
        &bench.network,
        dir,
        &spec("uefi", MAC, Firmware::Uefi, vec![only.clone()]),
    );
    let fleet_file = bench.fleet_file(&machine(
        NAME,
        MAC,
        &vm.qmp,
        "whole-disk",
        "testdisk",
        "\"fleet.test.dd_baseline=1\"",
    ));
    let controller = bench.controller(&fleet_file);
    let store = controller.store().await;
    apply(&controller, &fleet_file, &vm);
    let (_, timings) =
        deploy_until(&controller, &store, &mut vm, NAME, None, Status::Deployed).await;
    timings.print(
        "UEFI, disk.raw.xz, whole disk: deploy → deployed",
        &deploy_output(&controller, NAME),
    );
    wait_for_console(&vm, &controller, "fleet-test-os: ready").await;
    assert_booted_from_disk(&vm.console());
    assert_booted_through_the_fleet_entry(&vm.console());
    assert_netboot_off(&timings);
    assert!(
        after_local_boot(&vm.console()).contains("root=LABEL=cloudimg-rootfs"),
        "{}",
        vm.console()
    );
    vm.kill();
    // The image's own partitions (the raw image's table), its root holding the hook.
    let image = dir.join("image.raw");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "xz -dc {} > {}",
            test_images().join("disk.raw.xz").display(),
            image.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let (label, wanted) = vm::partitions(&image);
    assert_eq!(vm::partitions(&only.file), (label, wanted.clone()));
    let (start, size, _) = wanted[1];
    let root = partition_file(dir, &only.file, start, size, "root.ext4");
    assert_eq!(
        vm::blkid(&root).get("LABEL").map(String::as_str),
        Some("cloudimg-rootfs")
    );
    assert_installed_files(&root, NAME, None);
}

/// 3. A wrong digest caught while streaming; an image too big for the disk once decompressed,
/// refused before a byte is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digests_and_images_too_big_fail_the_deployment() {
    const MAC: &str = "52:54:00:de:00:03";
    const NAME: &str = "deploy-fails";
    const DISK: u64 = GIB;
    let _one = ONE_VM_AT_A_TIME.lock().await;
    let bench = Bench::new();
    let dir = bench.dir();
    // The raw image grown past the disk (zeros: it stays small compressed).
    let toobig = bench.served("toobig.raw.xz");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(xz -dc {image}; head -c {pad} /dev/zero) | xz -0 -T2 > {out}",
            image = test_images().join("disk.raw.xz").display(),
            pad = DISK + 256 * MIB,
            out = toobig.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let only = disk(&bench, "disk.img", DISK, "fleet-fail-0");
    let mut vm = Vm::start(
        &bench.network,
        dir,
        &spec("bios", MAC, Firmware::Bios, vec![only.clone()]),
    );
    let machines = machine(
        NAME,
        MAC,
        &vm.qmp,
        "whole-disk",
        "testdisk",
        "\"fleet.test.corrupt_at=1000000\"",
    );
    let fleet_file = bench.fleet_file(&format!(
        "{}{machines}",
        bench.image("toobig", "toobig.raw.xz", "raw-xz")
    ));
    let controller = bench.controller(&fleet_file);
    let store = controller.store().await;
    apply(&controller, &fleet_file, &vm);

    // The byte flipped at 1,000,000 of the decompressed stream on the machine: its streaming
    // check names both digests (the raw image's expected one, and what it got).
    let expected = raw_sha256();
    let (reason, timings) = deploy_until(
        &controller,
        &store,
        &mut vm,
        NAME,
        None,
        Status::FailedDeployment,
    )
    .await;
    timings.print("a corrupted stream: deploy → failed_deployment", "");
    let reason = reason.expect("a reason");
    println!("  reason: {reason}");
    assert!(
        reason.starts_with("deployment failed in phase ") && reason.contains(&expected),
        "{reason}"
    );
    let hex64 = regex::Regex::new("[0-9a-f]{64}").unwrap();
    let digests: Vec<&str> = hex64.find_iter(&reason).map(|m| m.as_str()).collect();
    assert!(
        digests.len() >= 2 && digests.iter().any(|d| *d != expected),
        "both digests: {reason}"
    );

    // Too big raw: refused before writing; the first MiB is what it was.
    cli_ok(&controller, &["machine", "release", NAME]);
    wait_for_status(&store, NAME, Status::Ready, &vm, &controller).await;
    let marker: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    write_at(&only.file, 0, &marker);
    let (reason, timings) = deploy_until(
        &controller,
        &store,
        &mut vm,
        NAME,
        Some("toobig"),
        Status::FailedDeployment,
    )
    .await;
    timings.print("an image too big raw: deploy → failed_deployment", "");
    let reason = reason.expect("a reason");
    println!("  reason: {reason}");
    assert!(
        reason.starts_with("deployment failed in phase "),
        "{reason}"
    );
    vm.kill();
    assert!(
        read_at(&only.file, 0, MIB as usize) == marker,
        "the first MiB was written"
    );
}

/// The SHA-256 of the whole-disk image decompressed (build.sh's manifest: `disk.raw SIZE SHA`).
fn raw_sha256() -> String {
    let manifest = read(&test_images().join("manifest"));
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("disk.raw "))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .expect("disk.raw in the manifest")
        .to_string()
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
    file.sync_all().unwrap();
}

fn read_at(path: &Path, offset: u64, length: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0; length];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut bytes, offset)
        .unwrap();
    bytes
}
