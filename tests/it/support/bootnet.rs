//! A boot network for tests that netboot real virtual machines: a namespace with a bridge that
//! carries the controller's address, a tap device on it for QEMU, router advertisements so iPXE
//! does not wait for IPv6, and `fleet serve` started inside the namespace. Everything is
//! created by the test and removed when dropped; no packet leaves the namespace.

use super::controller::FLEET;
use super::netns::NetNs;
use fleet::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The controller's address on the boot network inside the test namespace.
pub const CONTROLLER_IP: &str = "10.99.0.1";
/// The boot listener's port (plain HTTP: scripts, images, the machine API) on that address.
pub const BOOT_PORT: u16 = 5248;
/// The operator API, on the namespace's loopback (the VMs never see it).
pub const API_LISTEN: &str = "127.0.0.1:5240";

/// A directory for one VM test's files (console, controller log, store, disk), kept for a look
/// afterwards when `FLEET_NETBOOT_KEEP` is set.
pub fn vm_test_directory() -> tempfile::TempDir {
    let mut directory = tempfile::tempdir().expect("a directory");
    if std::env::var_os("FLEET_NETBOOT_KEEP").is_some() {
        directory.disable_cleanup(true);
        eprintln!("VM test files kept in {}", directory.path().display());
    }
    directory
}

/// Where `.ci/setup-ephemeral` builds the ephemeral environment (kernel + initrd).
pub const EPHEMERAL: &str = "/var/cache/fleet-ephemeral";

/// A file of the ephemeral environment, which must have been built: in EPHEMERAL, or in
/// `$FLEET_EPHEMERAL_CACHE` (where `.ci/setup-ephemeral` builds when that is set).
pub fn ephemeral_file(name: &str) -> PathBuf {
    let cache = std::env::var_os("FLEET_EPHEMERAL_CACHE").map(PathBuf::from);
    let path = cache.unwrap_or_else(|| EPHEMERAL.into()).join(name);
    assert!(
        path.exists(),
        "{} is missing: run .ci/setup-ephemeral",
        path.display()
    );
    path
}

/// The controller's fleet file for the boot network: DHCP, TFTP and HTTP boot on the bridge,
/// the ephemeral environment as the image machines boot; `extra` (TOML) appended.
pub fn ephemeral_fleet_file(directory: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"[controller]
tftp_listen = "{CONTROLLER_IP}:69"
http_boot_url = "http://{CONTROLLER_IP}:{BOOT_PORT}"
loader_dir = "/usr/lib/ipxe"
ephemeral_image = "ephemeral"
dhcp_interfaces = ["br0"]

[subnets.boot]
cidr = "10.99.0.0/24"
interface = "br0"
dynamic_range = {{ start = "10.99.0.100", end = "10.99.0.199" }}
reserved = [{{ start = "10.99.0.1", end = "10.99.0.9", comment = "the controller" }}]

[images.ephemeral]
kernel = {{ path = "{kernel}" }}
initrd = {{ path = "{initrd}" }}
{extra}"#,
        kernel = ephemeral_file("kernel").display(),
        initrd = ephemeral_file("initrd").display(),
    );
    let path = directory.join("fleet.toml");
    std::fs::write(&path, text).expect("the fleet file");
    path
}

/// One virtual machine at a time: two cores, and TCG is slow.
pub static ONE_VM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A namespace with a bridge (the boot network, with the controller's address) and a tap
/// device on it for QEMU; router advertisements sent on the bridge so that iPXE's IPv6
/// configuration ends at once instead of waiting ~16 s (netboot-here.md, pitfall 1).
pub struct BootNetwork {
    pub namespace: NetNs,
    pub tap: String,
    pub bridge: String,
    stop_advertising: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BootNetwork {
    pub fn new() -> BootNetwork {
        let namespace = NetNs::new("nb");
        let bridge = "br0".to_string();
        let tap = "tap0".to_string();
        namespace.ip(&["link", "add", &bridge, "type", "bridge"]);
        namespace.ip(&[
            "addr",
            "add",
            &format!("{CONTROLLER_IP}/24"),
            "dev",
            &bridge,
        ]);
        namespace.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        namespace.ip(&["link", "set", &tap, "master", &bridge]);
        namespace.ip(&["link", "set", &tap, "up"]);
        namespace.ip(&["link", "set", &bridge, "up"]);
        let stop_advertising = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let network = BootNetwork {
            namespace,
            tap,
            bridge,
            stop_advertising,
        };
        network.advertise_no_ipv6_router();
        network
    }

    /// Every 500 ms, an ICMPv6 router advertisement on the bridge saying "no managed or other
    /// configuration, no default router": iPXE then finishes its IPv6 set-up at once.
    fn advertise_no_ipv6_router(&self) {
        let bridge = self.bridge.clone();
        let socket = self.namespace.run_in(move || ipv6_raw_socket(&bridge));
        let Some(socket) = socket else { return };
        let stop = self.stop_advertising.clone();
        std::thread::spawn(move || {
            // type 134, code 0, checksum (the kernel fills it), hop limit 64, flags 0, router
            // lifetime 0, reachable 0, retransmit 0.
            let advertisement: [u8; 16] = [134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            let mut destination: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            destination.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            destination.sin6_addr.s6_addr = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: a valid socket, buffer and address of the right length.
                unsafe {
                    libc::sendto(
                        socket,
                        advertisement.as_ptr().cast(),
                        advertisement.len(),
                        0,
                        (&destination as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            // SAFETY: the socket is ours and used no more.
            unsafe { libc::close(socket) };
        });
    }
}

impl Drop for BootNetwork {
    fn drop(&mut self) {
        self.stop_advertising
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A raw ICMPv6 socket sending to the bridge only, hop limit 255 (RFC 4861 requires it).
fn ipv6_raw_socket(interface: &str) -> Option<i32> {
    let name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: plain socket calls with valid arguments; failures are checked.
    unsafe {
        let socket = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
        if socket < 0 {
            return None;
        }
        let index = libc::if_nametoindex(name.as_ptr()) as i32;
        let hops: i32 = 255;
        let size = std::mem::size_of::<i32>() as libc::socklen_t;
        libc::setsockopt(
            socket,
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            (&index as *const i32).cast(),
            size,
        );
        libc::setsockopt(
            socket,
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_HOPS,
            (&hops as *const i32).cast(),
            size,
        );
        Some(socket)
    }
}

/// `fleet serve` inside a namespace (on the boot network: TFTP on 10.99.0.1:69, boot HTTP on
/// 10.99.0.1:5248; the operator API on the namespace's 127.0.0.1:5240).
pub struct NamespacedController {
    pub child: Child,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    /// The namespace it runs in, for CLI commands that must reach it.
    pub namespace: String,
}

impl NamespacedController {
    /// On the boot network.
    pub fn start(
        network: &BootNetwork,
        directory: &Path,
        fleet_file: &Path,
    ) -> NamespacedController {
        let boot_listen = format!("{CONTROLLER_IP}:{BOOT_PORT}");
        Self::start_in(&network.namespace, &boot_listen, directory, fleet_file)
    }

    /// In `namespace`, its boot listener on `boot_listen` (its API on the namespace's
    /// loopback); the state directory is `directory/state`.
    pub fn start_in(
        namespace: &NetNs,
        boot_listen: &str,
        directory: &Path,
        fleet_file: &Path,
    ) -> NamespacedController {
        let state_dir = directory.join("state");
        let log = directory.join("controller.log");
        let child = namespace
            .command(FLEET)
            .args([
                "serve",
                "--listen",
                API_LISTEN,
                "--boot-listen",
                boot_listen,
            ])
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("-f")
            .arg(fleet_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("fleet serve starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(state_dir.join("api-url"))
            .map(|t| t.ends_with('\n'))
            .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "the controller did not start: {}",
                read(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // TFTP comes up (or says why not) just after the API's address is written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !read(&log).contains("  tftp ") {
            assert!(Instant::now() < deadline, "no TFTP line: {}", read(&log));
            std::thread::sleep(Duration::from_millis(50));
        }
        NamespacedController {
            child,
            state_dir,
            log,
            namespace: namespace.name.clone(),
        }
    }

    /// `fleet ARGS` in the controller's namespace, against it (the state directory gives the
    /// address, the certificate's fingerprint and the operator token).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("ip")
            .args(["netns", "exec", &self.namespace, FLEET])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("fleet runs")
    }

    /// The operator token the controller wrote.
    pub fn operator_token(&self) -> String {
        read(&self.state_dir.join("operator-token"))
            .trim()
            .to_string()
    }

    pub async fn store(&self) -> Store {
        Store::open(&format!(
            "sqlite://{}",
            self.state_dir.join("fleet.db").display()
        ))
        .await
        .expect("the store")
    }
}

impl Drop for NamespacedController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).to_string()
}

pub fn kill_by_pidfile(pidfile: &Path) {
    if let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    {
        // SAFETY: a signal to the QEMU this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
