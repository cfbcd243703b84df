//! Network namespaces and veth pairs that a test creates and removes itself, so that network
//! tests send packets only inside them (never to any other address). Needs root and iproute2
//! (`.ci/setup` installs it).

use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique short name (interface names are at most 15 characters).
pub fn unique_name(prefix: &str) -> String {
    let serial = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{serial}", std::process::id() % 100_000)
}

fn ip(args: &[&str]) -> Output {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect(
            "`ip` runs (iproute2; .ci/setup installs it) — network tests need root and iproute2",
        );
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A network namespace with its loopback up; deleted (and its processes killed) on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> NetNs {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        NetNs { name }
    }

    /// `ip netns exec NAME program` as a Command to add arguments to.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created there stay in the
    /// namespace and may be used from any thread afterwards.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("the namespace file");
                    // SAFETY: setns on this thread only; the fd is valid for the call.
                    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(
                        result,
                        0,
                        "setns into {path}: {}",
                        std::io::Error::last_os_error()
                    );
                    f()
                })
                .join()
                .expect("the namespace thread")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Links two namespaces with a veth pair and gives each end an address (`10.77.0.1/24`).
/// The pair disappears with either namespace.
pub fn link(a: &NetNs, a_address: &str, b: &NetNs, b_address: &str) -> (String, String) {
    let (a_end, b_end) = (unique_name("va"), unique_name("vb"));
    ip(&[
        "link", "add", &a_end, "netns", &a.name, "type", "veth", "peer", "name", &b_end, "netns",
        &b.name,
    ]);
    for (namespace, end, address) in [(a, &a_end, a_address), (b, &b_end, b_address)] {
        if !address.is_empty() {
            namespace.ip(&["addr", "add", address, "dev", end]);
        }
        namespace.ip(&["link", "set", end, "up"]);
    }
    (a_end, b_end)
}
