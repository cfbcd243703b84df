//! Rescue mode end to end with a real virtual machine (QEMU, SeaBIOS, virtio, TCG) on the test's
//! boot network: a machine added live (deployed) whose disk the test builds on the host — a
//! bootable partition (syslinux, Debian's kernel, a busybox initramfs that says "booted from
//! disk" on the console) and an ext4 root partition holding etc/fstab, made without mounting
//! (`mke2fs -d -E offset=`) — with an SSH key the test generates in its fleet file's `ssh_keys`.
//! 1. It boots its disk (the iPXE script of a deployed machine boots the local disk).
//! 2. `fleet machine rescue` → entering_rescue_mode → it netboots the ephemeral environment,
//!    whose rescue script starts dropbear with the key → rescue_mode; `fleet machine show`
//!    gives `ssh root@ADDRESS (host key SHA256:...)` and the host key is the one the server
//!    shows.
//! 3. From the host side of the namespace: `ssh -i KEY root@ADDRESS` mounts the root partition
//!    read-only and reads its fstab (the test checks the content); the disk's bytes are the
//!    same as before the rescue.
//! 4. `fleet machine exit-rescue` → deployed, power-cycled into its disk: the console shows
//!    the disk's system booted again; `fleet machine show` has no rescue line any more.
//!
//! Limits are generous (TCG on a loaded 2-core machine): minutes per boot.

use crate::support::bootnet::{
    ephemeral_file, ephemeral_fleet_file, kill_by_pidfile, read, tail, vm_test_directory,
    BootNetwork, NamespacedController, ONE_VM_AT_A_TIME,
};
use fleet::model::Status;
use fleet::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:5e:00:31";
const NAME: &str = "rescued";
/// What the disk's system prints on the console when it has booted.
const BOOTED: &str = "fleet-rescue-test: booted from disk";
/// The root partition's fstab, which the test reads back over SSH.
const FSTAB: &str = "UUID=0e5a0e5a-0000-4000-8000-000000000001 / ext4 errors=remount-ro 0 1\n\
                     /dev/vda1 /boot/efi vfat umask=0077 0 1\n\
                     # written by tests/it/vm/rescue.rs\n";
/// The partitions (512-byte sectors): a FAT boot partition, then the ext4 root.
const BOOT_START: u64 = 2048;
const BOOT_SECTORS: u64 = 65536;
const ROOT_START: u64 = BOOT_START + BOOT_SECTORS;
const ROOT_SECTORS: u64 = 32768;
const DISK_BYTES: u64 = 64 << 20;
/// Limits: a boot of the disk's system, and a netboot into the ephemeral environment.
const DISK_BOOT: Duration = Duration::from_secs(300);
const RESCUE_BOOT: Duration = Duration::from_secs(600);

/// Runs `program args` (a host tool), which must succeed.
fn run(program: &str, args: &[&str], directory: &Path) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(directory)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("{program} runs ({error}): .ci/setup installs it"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `sh -c SCRIPT` on the host, which must succeed.
fn shell(script: &str, directory: &Path) -> Output {
    run("sh", &["-euc", script], directory)
}

/// The disk of the deployed machine, per deploy-here.md's recipe: an msdos label, a bootable
/// FAT partition with syslinux, the ephemeral environment's (Debian's generic) kernel and a
/// busybox initramfs whose /init says `BOOTED` on the console; an ext4 root partition with
/// etc/fstab filled by `mke2fs -d` at its offset inside the disk file. No mount, no loop device.
fn build_disk(directory: &Path) -> PathBuf {
    let initramfs = directory.join("initramfs");
    std::fs::create_dir_all(initramfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", initramfs.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static; .ci/setup installs it)");
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mkdir -p /proc /dev\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n/bin/busybox mount -t proc proc /proc\n\
         echo \"{BOOTED} ($(/bin/busybox cat /proc/cmdline))\" > /dev/console\n\
         while :; do /bin/busybox sleep 3600; done\n"
    );
    std::fs::write(initramfs.join("init"), init).unwrap();
    shell(
        "chmod 0755 initramfs/init\n\
         (cd initramfs && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > disk-initrd.img",
        directory,
    );
    std::fs::write(
        directory.join("syslinux.cfg"),
        "DEFAULT disk\nPROMPT 0\nTIMEOUT 1\nLABEL disk\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  \
         APPEND console=ttyS0,115200 panic=-1\n",
    )
    .unwrap();
    std::fs::create_dir_all(directory.join("rootfs/etc")).unwrap();
    std::fs::write(directory.join("rootfs/etc/fstab"), FSTAB).unwrap();
    let kernel = ephemeral_file("kernel");
    shell(
        &format!(
            "mkfs.vfat -C -n FLEETBOOT boot.img {boot_kib} >/dev/null\n\
             export MTOOLS_SKIP_CHECK=1\n\
             mcopy -i boot.img '{kernel}' ::/vmlinuz\n\
             mcopy -i boot.img disk-initrd.img ::/initrd.img\n\
             mcopy -i boot.img syslinux.cfg ::/syslinux.cfg\n\
             syslinux --install boot.img\n\
             truncate -s {DISK_BYTES} disk.img\n\
             printf 'label: dos\\nstart={BOOT_START}, size={BOOT_SECTORS}, type=ef, bootable\\n\
             start={ROOT_START}, size={ROOT_SECTORS}, type=83\\n' | sfdisk -q disk.img\n\
             dd if=boot.img of=disk.img bs=512 seek={BOOT_START} conv=notrunc status=none\n\
             dd if=/usr/lib/syslinux/mbr/mbr.bin of=disk.img bs=440 count=1 conv=notrunc status=none\n\
             mke2fs -q -F -t ext4 -L fleet-root -d rootfs -E offset={root_offset} disk.img {root_kib}k\n",
            boot_kib = BOOT_SECTORS / 2,
            kernel = kernel.display(),
            root_offset = ROOT_START * 512,
            root_kib = ROOT_SECTORS / 2,
        ),
        directory,
    );
    directory.join("disk.img")
}

/// An ed25519 key pair made for this test (no passphrase): the private key's path and the
/// public key's line.
fn make_key(directory: &Path) -> (PathBuf, String) {
    let key = directory.join("id_rescue");
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "rescue-test@fleet",
            "-f",
            "id_rescue",
        ],
        directory,
    );
    let public = std::fs::read_to_string(directory.join("id_rescue.pub")).unwrap();
    (key, public.trim().to_string())
}

/// The VM: netboot first, then its disk; kept alive across resets (`-no-shutdown`), powered by
/// the controller through QMP.
struct Vm {
    child: std::cell::RefCell<Child>,
    pidfile: PathBuf,
    console: PathBuf,
}

impl Vm {
    fn start(network: &BootNetwork, directory: &Path, disk: &Path, qmp: &Path) -> Vm {
        let (pidfile, console) = (directory.join("qemu.pid"), directory.join("console.log"));
        let child = network
            .namespace
            .command("qemu-system-x86_64")
            .args(["-accel", "tcg", "-display", "none", "-no-shutdown"])
            .args(["-m", "1024", "-smp", "2"])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={},script=no,downscript=no", network.tap),
            ])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={MAC},bootindex=1"),
            ])
            .args([
                "-drive",
                &format!("file={},if=none,id=d0,format=raw", disk.display()),
            ])
            .args([
                "-device",
                "virtio-blk-pci,drive=d0,serial=fleet-rescue-disk,bootindex=2",
            ])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
            ])
            .args(["-serial", &format!("file:{}", console.display())])
            .arg("-pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 starts (.ci/setup-netboot installs it)");
        Vm {
            child: std::cell::RefCell::new(child),
            pidfile,
            console,
        }
    }

    fn console(&self) -> String {
        read(&self.console)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        kill_by_pidfile(&self.pidfile);
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits until `done` gives a value, or fails with the console and the controller's log.
async fn wait_for<T>(
    what: &str,
    limit: Duration,
    vm: &Vm,
    controller: &NamespacedController,
    mut done: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        let exited = vm.child.borrow_mut().try_wait();
        if let Ok(Some(exit)) = exited {
            panic!(
                "{what}: QEMU exited ({exit})\nconsole:\n{}",
                tail(&vm.console(), 40)
            );
        }
        if let Some(value) = done().await {
            eprintln!(
                "rescue: {what} after {:.1} s",
                started.elapsed().as_secs_f64()
            );
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

async fn status_of(store: &Store) -> Option<Status> {
    Some(store.machine(NAME).await.ok()??.lifecycle.status)
}

/// `fleet ARGS` against the controller, which must succeed; its stdout.
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

/// How many times the disk's system has booted, by the console.
fn disk_boots(vm: &Vm) -> usize {
    vm.console().matches(BOOTED).count()
}

/// `ssh ... root@ADDRESS COMMAND` from the controller's namespace (the host side of the boot
/// network), with the test's key.
fn ssh(controller: &NamespacedController, key: &Path, address: &str, command: &str) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &controller.namespace, "ssh", "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=30",
            "-o",
            "LogLevel=ERROR",
            &format!("root@{address}"),
            command,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("ssh runs (openssh-client; .ci/setup installs it)")
}

/// The SHA-256 fingerprint of the ed25519 host key `address` shows (ssh-keyscan | ssh-keygen).
fn scanned_host_key(controller: &NamespacedController, address: &str) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", &controller.namespace, "sh", "-c"])
        .arg(format!(
            "ssh-keyscan -T 30 -t ed25519 {address} 2>/dev/null | ssh-keygen -l -E sha256 -f -"
        ))
        .output()
        .expect("ssh-keyscan runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.split_whitespace()
        .find(|word| word.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no host key from {address}: {text}"))
        .to_string()
}

fn sha256_of(path: &Path) -> String {
    let output = run("sha256sum", &[path.to_str().unwrap()], Path::new("/"));
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The machine in the fleet file: added live (deployed), powered through QMP, with `keys`
/// (an `ssh_keys = [...]` line, or nothing); generous limits.
fn machine_toml(qmp: &Path, keys: &str) -> String {
    format!(
        r#"
[policy.timeouts]
boot = "10m"
heartbeat = "1m"
rescue = "20m"
exiting_rescue = "10m"

[[machine]]
name = "{NAME}"
macs = ["{MAC}"]
deployed = true
state = "deployed"
{keys}

[machine.power]
type = "qemu"
qmp_socket = "{}"
"#,
        qmp.display()
    )
}

/// `fleet machine rescue`, then waits for rescue_mode; the `rescue` of `fleet machine show
/// --json` and the human line's text after `rescue`.
async fn enter_rescue(
    vm: &Vm,
    controller: &NamespacedController,
    store: &Store,
) -> (serde_json::Value, String) {
    cli_ok(controller, &["machine", "rescue", NAME]);
    wait_for("in rescue mode", RESCUE_BOOT, vm, controller, async || {
        (status_of(store).await == Some(Status::RescueMode)).then_some(())
    })
    .await;
    let shown = cli_ok(controller, &["machine", "show", NAME]);
    let line = shown
        .lines()
        .find_map(|line| line.strip_prefix("rescue "))
        .unwrap_or_else(|| panic!("no rescue line in:\n{shown}"))
        .trim()
        .to_string();
    eprintln!("rescue: fleet machine show: rescue  {line}");
    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(controller, &["machine", "show", NAME, "--json"])).unwrap();
    (json["rescue"].clone(), line)
}

/// `fleet machine exit-rescue`: deployed again, and the disk's system boots; no rescue shown.
async fn exit_rescue(vm: &Vm, controller: &NamespacedController, store: &Store) {
    let boots = disk_boots(vm);
    cli_ok(controller, &["machine", "exit-rescue", NAME]);
    wait_for("deployed again", DISK_BOOT, vm, controller, async || {
        (status_of(store).await == Some(Status::Deployed)).then_some(())
    })
    .await;
    wait_for(
        "booted from disk again",
        DISK_BOOT,
        vm,
        controller,
        async || (disk_boots(vm) > boots).then_some(()),
    )
    .await;
    let shown = cli_ok(controller, &["machine", "show", NAME]);
    assert!(!shown.lines().any(|l| l.starts_with("rescue ")), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(controller, &["machine", "show", NAME, "--json"])).unwrap();
    assert!(json.get("rescue").is_none(), "{json:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescue_gives_ssh_with_the_fleet_files_key_and_exit_boots_the_disk_again() {
    let _one = ONE_VM_AT_A_TIME.lock().await;
    // FLEET_NETBOOT_KEEP=1 keeps the files for a look afterwards.
    let directory = vm_test_directory();
    let dir = directory.path();
    let disk = build_disk(dir);
    let (key, public_key) = make_key(dir);
    let qmp = dir.join("qmp.sock");
    let keys = format!("ssh_keys = [\"{public_key}\"]");
    let fleet_file = ephemeral_fleet_file(dir, &machine_toml(&qmp, &keys));
    let network = BootNetwork::new();
    let controller = NamespacedController::start(&network, dir, &fleet_file);
    let store = controller.store().await;
    let fleet_path = fleet_file.to_str().unwrap();
    cli_ok(&controller, &["apply", "-f", fleet_path, "--yes"]);
    assert_eq!(status_of(&store).await, Some(Status::Deployed));

    // 1. Running its deployed system: it netboots, is told to boot its disk, and does.
    let vm = Vm::start(&network, dir, &disk, &qmp);
    wait_for(
        "booted from disk",
        DISK_BOOT,
        &vm,
        &controller,
        async || (disk_boots(&vm) >= 1).then_some(()),
    )
    .await;
    let before = sha256_of(&disk);

    // 2. Rescue: power-cycled into the ephemeral environment, SSH with the fleet file's key.
    let (rescue, line) = enter_rescue(&vm, &controller, &store).await;
    assert_eq!(rescue["ssh"], true, "{rescue:#}");
    let address = rescue["addresses"][0]
        .as_str()
        .expect("an address")
        .to_string();
    let host_key = rescue["host_key"].as_str().expect("a host key").to_string();
    assert_eq!(line, format!("ssh root@{address} (host key {host_key})"));
    assert!(address.starts_with("10.99.0."), "{address}");
    assert_eq!(scanned_host_key(&controller, &address), host_key);

    // 3. In over SSH: the root partition's fstab, read from a read-only mount.
    let read_fstab = "modprobe ext4 2>/dev/null; mkdir -p /mnt/root && \
                      mount -t ext4 -o ro,noload /dev/vda2 /mnt/root && \
                      cat /mnt/root/etc/fstab; status=$?; umount /mnt/root; exit $status";
    let output = ssh(&controller, &key, &address, read_fstab);
    assert!(
        output.status.success(),
        "ssh root@{address}: {}{}\nconsole:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        tail(&vm.console(), 30)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), FSTAB);
    let stranger = dir.join("id_stranger");
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", "id_stranger"],
        dir,
    );
    let refused = ssh(&controller, &stranger, &address, "true");
    assert!(
        !refused.status.success(),
        "a key not in the fleet file got in"
    );
    assert_eq!(sha256_of(&disk), before, "rescue changed the disk");

    // 4. Exit: back to deployed, power-cycled into its disk; the rescue line is gone.
    exit_rescue(&vm, &controller, &store).await;

    // 5. Without keys in the fleet file: rescue mode all the same, without an SSH server.
    drop(controller);
    let fleet_file = ephemeral_fleet_file(dir, &machine_toml(&qmp, ""));
    let controller = NamespacedController::start(&network, dir, &fleet_file);
    let (rescue, line) = enter_rescue(&vm, &controller, &store).await;
    let note = format!("no SSH keys for {NAME} in the fleet file: no SSH server started");
    assert_eq!(line, format!("no SSH server: {note}"));
    assert_eq!(rescue["ssh"], false, "{rescue:#}");
    let address = rescue["addresses"][0].as_str().expect("an address");
    let refused = ssh(&controller, &key, address, "true");
    assert!(!refused.status.success(), "an SSH server answered");
    exit_rescue(&vm, &controller, &store).await;
}
