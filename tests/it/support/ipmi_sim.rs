//! OpenIPMI's BMC simulator, `ipmi_sim`, for the power tests: one simulator on 127.0.0.1 (a
//! UDP port of its own, user `admin` with the password given), its chassis a script that
//! records every `set` command (tests/fixtures/power/chassis-control.sh); killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/power")
}

/// A UDP port nobody uses right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free UDP port")
        .port()
}

/// `program` (`ipmi_sim`, or `ip netns exec NS ipmi_sim`) run on `directory`, which gets the
/// configuration `lan_conf`, the emulation file, a state directory and a log.
pub fn spawn(mut program: Command, directory: &Path, lan_conf: &str) -> Child {
    std::fs::create_dir_all(directory.join("state")).unwrap();
    std::fs::write(directory.join("lan.conf"), lan_conf).unwrap();
    std::fs::copy(fixtures().join("bmc.emu"), directory.join("bmc.emu")).unwrap();
    let log = std::fs::File::create(directory.join("ipmi_sim.log")).unwrap();
    program
        .arg("-c")
        .arg(directory.join("lan.conf"))
        .arg("-f")
        .arg(directory.join("bmc.emu"))
        .arg("-s")
        .arg(directory.join("state"))
        .arg("-n")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("ipmi_sim runs (Debian package openipmi; .ci/setup-power installs it)")
}

/// The `@CHASSIS@` of a configuration: the chassis script writing into `directory/chassis`.
pub fn chassis_control(directory: &Path) -> String {
    let chassis = directory.join("chassis");
    std::fs::create_dir_all(&chassis).unwrap();
    format!(
        "{} {}",
        fixtures().join("chassis-control.sh").display(),
        chassis.display()
    )
}

/// One simulator on loopback.
pub struct Bmc {
    child: Child,
    pub port: u16,
    pub password: String,
    directory: TempDir,
}

impl Bmc {
    pub fn start(password: &str) -> Bmc {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let dir = directory.path();
        let port = free_udp_port();
        let lan = std::fs::read_to_string(fixtures().join("lan.conf"))
            .unwrap()
            .replace("@PORT@", &port.to_string())
            .replace("@PASSWORD@", password)
            .replace("@CHASSIS@", &chassis_control(dir));
        let child = spawn(Command::new("ipmi_sim"), dir, &lan);
        let bmc = Bmc {
            child,
            port,
            password: password.to_string(),
            directory,
        };
        bmc.wait_ready();
        bmc
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until the simulator answers a status query (it starts in ~0.1 s).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = Command::new("ipmitool")
                .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-U", "admin", "-E", "-N", "1", "-R", "1"])
                .args(["chassis", "power", "status"])
                .env("IPMITOOL_PASSWORD", &self.password)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("ipmitool runs (.ci/setup-power installs it)");
            if status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ipmi_sim did not answer; its log: {}",
                std::fs::read_to_string(self.directory.path().join("ipmi_sim.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The chassis' power as the simulator keeps it: "1" on, "0" off.
    pub fn power(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("chassis/power"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The chassis' power changed by the machine itself (its operating system shut it down,
    /// its power button): what the simulator reports from now on. No command is recorded.
    pub fn set_power_by_the_machine(&self, on: bool) {
        let state = if on { "1\n" } else { "0\n" };
        std::fs::write(self.directory.path().join("chassis/power"), state).unwrap();
    }

    /// Every `set ...` command the chassis was given, in order.
    pub fn commands(&self) -> Vec<String> {
        std::fs::read_to_string(self.directory.path().join("chassis/commands"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A password file holding `password`, in this BMC's directory.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let path = self.directory.path().join(name);
        std::fs::write(&path, format!("{password}\n")).unwrap();
        path
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
