//! Booting over fleet's services with clients nobody here wrote: curl against the HTTP boot
//! endpoints (loopback), and QEMU virtual machines (QEMU's iPXE ROM under BIOS; OVMF's own PXE
//! under UEFI) that netboot inside a network namespace this test creates and removes: DHCP →
//! iPXE script over HTTP → kernel and initrd over HTTP (UEFI: first `ipxe.efi` over fleet's
//! TFTP), and the initramfs calls the controller back.
//!
//! DHCP: fleet's own server, started by `fleet serve` on the bridge (dhcp_interfaces);
//! TFTP and HTTP are always fleet's. Everything .ci/setup-netboot installs; the kernel is
//! Debian's cloud kernel from its cache.

use crate::support::bootnet::{
    kill_by_pidfile, read, tail, vm_test_directory, BootNetwork, NamespacedController, BOOT_PORT,
    CONTROLLER_IP, ONE_VM_AT_A_TIME,
};
use crate::support::controller::TestController;
use fleet::model::{Lifecycle, MacAddr, MachineName, Status};
use fleet::store::{EventFilter, NewMachine, Store};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CACHE: &str = "/var/cache/fleet-netboot";

fn require_file(path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "{} is missing: run .ci/setup-netboot",
        path.display()
    );
    path
}

fn random_bytes(length: usize) -> Vec<u8> {
    (0..length)
        .map(|index| (index.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The one-shot boot secret (`fleet.boot=`) in a boot script or on a console.
fn boot_secret_of(text: &str) -> String {
    let start = text.find("fleet.boot=").expect("a fleet.boot= secret") + "fleet.boot=".len();
    text[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect()
}

/// A fleet file for the boot tests.
fn fleet_file(
    directory: &Path,
    tftp_listen: &str,
    http_boot_url: Option<&str>,
    kernel: &Path,
    initrd: &Path,
) -> PathBuf {
    let kernel_sha = sha256_hex(&std::fs::read(kernel).expect("the kernel"));
    let boot_url = http_boot_url
        .map(|url| format!("http_boot_url = \"{url}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"[controller]
tftp_listen = "{tftp_listen}"
{boot_url}loader_dir = "/usr/lib/ipxe"
ephemeral_image = "ephemeral"
dhcp_interfaces = ["br0"]

[subnets.boot]
cidr = "10.99.0.0/24"
interface = "br0"
dynamic_range = {{ start = "10.99.0.100", end = "10.99.0.199" }}

[images.ephemeral]
kernel = {{ path = "{kernel}", sha256 = "{kernel_sha}" }}
initrd = {{ path = "{initrd}" }}
"#,
        kernel = kernel.display(),
        initrd = initrd.display(),
    );
    let path = directory.join("fleet.toml");
    std::fs::write(&path, text).expect("the fleet file");
    path
}

fn run_curl(arguments: &[&str]) -> std::process::Output {
    let output = Command::new("timeout")
        .arg("30")
        .arg("curl")
        .args(["--silent", "--show-error"])
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    assert!(
        output.status.success(),
        "curl {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

async fn add_machine(store: &Store, name: &str, mac: &str, status: Status) {
    let new = NewMachine {
        name: MachineName::parse(name).expect("a name"),
        status: Status::New,
        macs: vec![MacAddr::parse(mac).expect("a MAC")],
        arch: Some("amd64".into()),
        power_type: "manual".into(),
        power_params: serde_json::json!({}),
        bmc_address: None,
        image: None,
        tags: Vec::new(),
        deployed_os: None,
    };
    let record = store.create_machine(&new, "test").await.expect("created");
    if status != Status::New {
        let lifecycle = Lifecycle {
            status,
            ..record.lifecycle
        };
        store
            .write_lifecycle(name, &lifecycle, "test", "set up for a boot test")
            .await
            .expect("status set");
    }
}

async fn events_of(store: &Store, machine: &str) -> Vec<fleet::store::Event> {
    let filter = EventFilter {
        machine: Some(machine.to_string()),
        ..EventFilter::default()
    };
    store.events(&filter).await.expect("events")
}

// ---------------------------------------------------------------------------------------------
// HTTP, over loopback

#[tokio::test]
async fn curl_fetches_boot_scripts_and_ranges_of_a_kernel() {
    let directory = tempfile::tempdir().expect("a directory");
    let kernel_bytes = random_bytes(3 * 1024 * 1024 + 17);
    let kernel = directory.path().join("vmlinuz");
    let initrd = directory.path().join("initrd.gz");
    std::fs::write(&kernel, &kernel_bytes).expect("written");
    std::fs::write(&initrd, b"initrd").expect("written");
    // TFTP is not what this test is about: a free port keeps it out of the way.
    let file = fleet_file(directory.path(), "127.0.0.1:0", None, &kernel, &initrd);
    let state = directory.path().join("state");
    let controller = TestController::start_in(&state, &["-f", &file.to_string_lossy()]);
    let store = controller.store().await;
    add_machine(&store, "node-1", "52:54:00:00:00:01", Status::Commissioning).await;

    let unknown = run_curl(&[&format!("{}/boot/52:54:00:00:00:99.ipxe", controller.url)]);
    let unknown = String::from_utf8_lossy(&unknown.stdout);
    assert!(unknown.starts_with("#!ipxe\n"), "{unknown}");
    assert!(
        unknown.contains("fleet.role=enlist") && !unknown.contains("fleet.boot="),
        "{unknown}"
    );
    assert!(
        unknown.contains("initrd=initrd") && unknown.contains("panic=-1"),
        "{unknown}"
    );
    // Without http_boot_url, the kernel is fetched from where the script was.
    assert!(
        unknown.contains(&format!(
            "kernel {}/boot/by-mac/52-54-00-00-00-99/ephemeral/kernel",
            controller.url
        )),
        "{unknown}"
    );

    let commissioning = run_curl(&[&format!("{}/boot/52-54-00-00-00-01.ipxe", controller.url)]);
    let commissioning = String::from_utf8_lossy(&commissioning.stdout).to_string();
    assert!(
        commissioning.contains("fleet.role=commissioning fleet.mac=52:54:00:00:00:01"),
        "{commissioning}"
    );
    assert!(
        commissioning.contains("fleet.machine=node-1"),
        "{commissioning}"
    );
    // A one-shot boot secret, kept only as its SHA-256; a second fetch gets another one.
    let secret = boot_secret_of(&commissioning);
    let state = store
        .machine_state("node-1")
        .await
        .expect("read")
        .expect("node-1");
    assert_eq!(state.boot_secrets, [sha256_hex(secret.as_bytes())]);
    let again = run_curl(&[&format!("{}/boot/52-54-00-00-00-01.ipxe", controller.url)]);
    let again = boot_secret_of(&String::from_utf8_lossy(&again.stdout));
    assert_ne!(again, secret);
    let state = store
        .machine_state("node-1")
        .await
        .expect("read")
        .expect("node-1");
    assert_eq!(state.boot_secrets.len(), 2);
    assert!(!commissioning.contains("fleet.token="), "{commissioning}");

    // A Range of the kernel: 206, Content-Range, and exactly those bytes.
    let url = format!(
        "{}/boot/by-mac/52-54-00-00-00-01/ephemeral/kernel",
        controller.url
    );
    let output = run_curl(&["--include", "--range", "1000000-1000999", &url]);
    let (head, body) = split_http_response(&output.stdout);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "content-range: bytes 1000000-1000999/{}",
            kernel_bytes.len()
        )),
        "{head}"
    );
    assert_eq!(body, &kernel_bytes[1_000_000..1_001_000]);
    let whole = run_curl(&[&format!("{}/boot/files/ephemeral/kernel", controller.url)]);
    assert_eq!(sha256_hex(&whole.stdout), sha256_hex(&kernel_bytes));

    let events = events_of(&store, "node-1").await;
    let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
    assert!(
        kinds.contains(&"boot") && kinds.contains(&"transfer"),
        "{kinds:?}"
    );
    let shown = controller.fleet(&["events", "node-1"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("iPXE script served"),
        "fleet events node-1:\n{shown}"
    );
}

fn split_http_response(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("headers end");
    (
        String::from_utf8_lossy(&bytes[..end]).to_string(),
        &bytes[end + 4..],
    )
}

// ---------------------------------------------------------------------------------------------
// QEMU

/// The initramfs: busybox, the virtio-net modules, and an init that loads them, gets an address
/// with udhcpc, calls the controller back once and powers off. Built here (cpio newc, gzip).
fn build_initramfs(directory: &Path) -> PathBuf {
    let busybox = std::fs::read(require_file("/bin/busybox")).expect("busybox-static");
    let modules_dir = require_file(&format!("{CACHE}/modules"));
    let order = std::fs::read_to_string(modules_dir.join("order")).expect("the module order");
    let mut archive = CpioWriter::default();
    for dir in ["bin", "dev", "proc", "sys", "etc", "modules", "tmp"] {
        archive.directory(dir);
    }
    archive.character_device("dev/console", 5, 1);
    archive.file("bin/busybox", &busybox, 0o755);
    let mut insmods = String::new();
    for module in order.split_whitespace() {
        let bytes = std::fs::read(modules_dir.join(format!("{module}.ko"))).expect("a module");
        archive.file(&format!("modules/{module}.ko"), &bytes, 0o644);
        insmods.push_str(&format!("insmod /modules/{module}.ko\n"));
    }
    archive.file("etc/udhcpc.script", UDHCPC_SCRIPT.as_bytes(), 0o755);
    archive.file(
        "init",
        INIT_SCRIPT.replace("@INSMODS@", &insmods).as_bytes(),
        0o755,
    );
    let cpio = archive.finish();
    let path = directory.join("initrd.gz");
    let mut gzip = Command::new("gzip")
        .args(["-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&path).expect("the initrd file"))
        .spawn()
        .expect("gzip runs");
    gzip.stdin
        .take()
        .expect("stdin")
        .write_all(&cpio)
        .expect("written");
    assert!(gzip.wait().expect("gzip ends").success());
    path
}

const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
exec >/dev/console 2>&1
@INSMODS@
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
mac=$(arg fleet.mac); url=$(arg fleet.url); role=$(arg fleet.role)
echo "FLEET-INIT role=$role mac=$mac url=$url"
ip link set lo up
for device in /sys/class/net/*; do
  [ "$(cat $device/address)" = "$mac" ] && interface=${device##*/}
done
ip link set "$interface" up
udhcpc -i "$interface" -s /etc/udhcpc.script -q -n -t 10 -T 1
if wget -q -O /tmp/reply "$url/boot/booted?mac=$mac&stage=initramfs-$role"; then
  echo "FLEET-CALLBACK-OK"
else
  echo "FLEET-CALLBACK-FAILED"
fi
poweroff -f
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew) ip addr add "$ip/${mask:-24}" dev "$interface" ;;
esac
"#;

/// The "new" (SVR4 without checksums) cpio format the kernel unpacks.
#[derive(Default)]
struct CpioWriter {
    bytes: Vec<u8>,
    inode: u32,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn directory(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, data: &[u8], permissions: u32) {
        self.entry(name, 0o100000 | permissions, data, (0, 0));
    }

    fn character_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.bytes
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Firmware {
    /// SeaBIOS with QEMU's iPXE ROM for virtio-net.
    BiosWithIpxeRom,
    /// OVMF with no option ROM: the firmware's own PXE fetches ipxe.efi over TFTP.
    UefiNativePxe,
}

/// Runs QEMU until it powers off or `limit` passes (then it is killed by its pidfile).
/// Returns the serial console's text and the seconds it ran.
fn run_vm(
    network: &BootNetwork,
    directory: &Path,
    mac: &str,
    firmware: Firmware,
    limit: Duration,
) -> (String, f64) {
    let console = directory.join("console.log");
    let pidfile = directory.join("qemu.pid");
    let mut command = network.namespace.command("qemu-system-x86_64");
    command.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-boot",
        "n",
    ]);
    command.args([
        "-netdev",
        &format!("tap,id=n0,ifname={},script=no,downscript=no", network.tap),
    ]);
    command.arg("-pidfile").arg(&pidfile);
    match firmware {
        Firmware::BiosWithIpxeRom => {
            command.args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
            ]);
        }
        Firmware::UefiNativePxe => {
            let vars = directory.join("OVMF_VARS.fd");
            std::fs::copy(require_file("/usr/share/OVMF/OVMF_VARS_4M.fd"), &vars)
                .expect("a VARS copy");
            command.args(["-machine", "q35"]);
            command.args([
                "-drive",
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            ]);
            command.args([
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
            command.args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1,romfile="),
            ]);
        }
    }
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).expect("a console log"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64 starts (.ci/setup-netboot installs it)");
    let mut timed_out = false;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if started.elapsed() > limit {
            timed_out = true;
            kill_by_pidfile(&pidfile);
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seconds = started.elapsed().as_secs_f64();
    let text = read(&console);
    assert!(
        !timed_out,
        "QEMU did not power off within {limit:?}; console:\n{}",
        tail(&text, 60)
    );
    (text, seconds)
}

/// Boots one VM through fleet's services and checks the call-back and the events.
async fn netboot(firmware: Firmware, mac: &str, known_as: Option<(&str, Status)>) -> f64 {
    let _one = ONE_VM_AT_A_TIME.lock().await;
    let kernel = require_file(&format!("{CACHE}/vmlinuz"));
    // FLEET_NETBOOT_KEEP=1 keeps the files for a look afterwards.
    let directory = vm_test_directory();
    let initrd = build_initramfs(directory.path());
    let boot_url = format!("http://{CONTROLLER_IP}:{BOOT_PORT}");
    let file = fleet_file(
        directory.path(),
        &format!("{CONTROLLER_IP}:69"),
        Some(&boot_url),
        &kernel,
        &initrd,
    );
    let network = BootNetwork::new();
    let controller = NamespacedController::start(&network, directory.path(), &file);
    assert!(
        read(&controller.log).contains("  tftp    listening on"),
        "{}",
        read(&controller.log)
    );
    let store = controller.store().await;
    if let Some((name, status)) = known_as {
        add_machine(&store, name, mac, status).await;
    }
    // Idle 2 cores: ~8 s (BIOS) and ~20 s (UEFI); generous bounds for a CI machine that runs
    // other tests beside these (measured 30 s and 55 s under a load of 7).
    let limit = match firmware {
        Firmware::BiosWithIpxeRom => Duration::from_secs(90),
        Firmware::UefiNativePxe => Duration::from_secs(150),
    };
    let (console, seconds) = run_vm(&network, directory.path(), mac, firmware, limit);
    assert!(
        console.contains("FLEET-CALLBACK-OK"),
        "no call-back; console:\n{}\ncontroller:\n{}",
        tail(&console, 60),
        read(&controller.log)
    );
    let filter = EventFilter::default();
    let events = store.events(&filter).await.expect("events");
    let mac_text = mac.to_string();
    let mine: Vec<&fleet::store::Event> = events
        .iter()
        .filter(|event| {
            event.detail.get("mac").and_then(|m| m.as_str()) == Some(mac_text.as_str())
                || event.detail.get("protocol").is_some()
        })
        .collect();
    let has = |kind: &str, needle: &str| {
        mine.iter().any(|event| {
            event.kind == kind && event.reason.as_deref().unwrap_or("").contains(needle)
        })
    };
    assert!(
        has("boot", "iPXE script served"),
        "no script event: {mine:#?}"
    );
    assert!(
        has("transfer", "HTTP kernel"),
        "no kernel transfer: {mine:#?}"
    );
    assert!(
        has("transfer", "HTTP initrd"),
        "no initrd transfer: {mine:#?}"
    );
    assert!(has("boot", "called back"), "no call-back event: {mine:#?}");
    if firmware == Firmware::UefiNativePxe {
        assert!(
            has("transfer", "TFTP sent ipxe.efi"),
            "ipxe.efi not sent over TFTP: {mine:#?}"
        );
    }
    if let Some((name, _)) = known_as {
        let on_machine = events_of(&store, name).await;
        assert!(
            on_machine.iter().any(|event| event.kind == "boot"),
            "boot events on {name}: {on_machine:#?}"
        );
        let state = store
            .machine_state(name)
            .await
            .expect("read")
            .expect("the machine");
        let secret = boot_secret_of(&console);
        assert!(
            state.boot_secrets.contains(&sha256_hex(secret.as_bytes())),
            "the boot secret on the kernel command line is not the machine's"
        );
        assert!(
            !console.contains("fleet.token="),
            "a token on the kernel command line"
        );
    }
    eprintln!(
        "netboot {}: {seconds:.1} s from QEMU start to power-off",
        if firmware == Firmware::UefiNativePxe {
            "UEFI"
        } else {
            "BIOS"
        }
    );
    seconds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_bios_netboots_from_fleet() {
    netboot(
        Firmware::BiosWithIpxeRom,
        "52:54:00:9a:00:01",
        Some(("vm-bios", Status::Commissioning)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_uefi_netboots_through_tftp() {
    netboot(Firmware::UefiNativePxe, "52:54:00:9a:00:02", None).await;
}
