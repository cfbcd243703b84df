//! The rescue script (`scripts/fleet-rescue.sh`) run for real under busybox, as the machine API
//! serves it (keys after its first line), against a fake root directory and /proc, with stand-ins
//! for dropbear and dropbearkey (and Debian's real dropbearkey where this host has it).

use super::{builtin_script, RESCUE_SCRIPT};
use super::{rescue_script_text, RescueAccess};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const BUSYBOX: &str = "/bin/busybox";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpueewZpg2Y8mMpdt7X2aU17zWyZXrmNKzBOpbswG+k op@example";

/// /proc/net/tcp with one socket listening on port 22 (0x16, state 0A).
const TCP_LISTENING: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n";

/// A place like the initramfs: busybox's applets, stand-ins, a fake root and /proc. (busybox
/// sh runs its own applets before the PATH's files, hence `FLEET_IP` for the stand-in `ip`.)
struct Rescue {
    directory: tempfile::TempDir,
}

struct Run {
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    results: Option<Value>,
}

impl Rescue {
    fn new() -> Rescue {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} is missing: run .ci/setup (it installs busybox-static)"
        );
        let directory = tempfile::tempdir().unwrap();
        let bin = directory.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            std::os::unix::fs::symlink(BUSYBOX, bin.join(applet)).unwrap();
        }
        for dir in ["root", "proc/net"] {
            fs::create_dir_all(directory.path().join(dir)).unwrap();
        }
        let rescue = Rescue { directory };
        // Global addresses of a machine on the boot network, as `ip -o addr show` prints them.
        rescue.tool(
            "fake-ip",
            "printf '%s\\n' \
             '1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever' \
             '2: eth0    inet6 fd00::57/64 scope global dynamic \\       valid_lft 86400sec' \
             '2: eth0    inet 10.99.0.57/24 brd 10.99.0.255 scope global eth0\\       valid_lft forever' \
             '2: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever'",
        );
        rescue.tool(
            "dropbearkey",
            "case \"$1 $2\" in\n\
             '-t ed25519') echo generated > \"$4\" ;;\n\
             '-y -f') [ -s \"$3\" ] || exit 1\n\
               echo 'Public key portion is:'\n\
               echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHOST root@ephemeral'\n\
               echo 'Fingerprint: SHA256:fakefingerprint' ;;\n\
             *) exit 1 ;;\n\
             esac",
        );
        // dropbear stays in the foreground (-F): it notes its arguments and its pid (-P) and
        // waits.
        rescue.tool(
            "dropbear",
            &format!(
                "echo \"$@\" > {}\necho $$ > \"$9\"\nexec sleep 30",
                rescue.path("dropbear.args").display()
            ),
        );
        rescue
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    fn tool(&self, name: &str, body: &str) {
        let path = self.path("bin").join(name);
        let _ = fs::remove_file(&path);
        fs::write(&path, format!("#!{BUSYBOX} sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn listening(&self, yes: bool) {
        let text = if yes { TCP_LISTENING } else { "" };
        fs::write(self.path("proc/net/tcp"), text).unwrap();
    }

    fn run(&self, keys: &[&str]) -> Run {
        let script = builtin_script(RESCUE_SCRIPT).expect("the rescue script");
        let keys: Vec<String> = keys.iter().map(|key| key.to_string()).collect();
        let file = self.path("fleet-rescue");
        fs::write(&file, rescue_script_text(script.text, "web-1", &keys)).unwrap();
        let results = self.path("results.json");
        let _ = fs::remove_file(&results);
        let output = Command::new(BUSYBOX)
            .arg("sh")
            .arg(&file)
            .env_clear()
            .env("PATH", self.path("bin"))
            .env("FLEET_MACHINE", "web-1")
            .env("FLEET_RESULTS", &results)
            .env("FLEET_RESCUE_ROOT", self.path("root"))
            .env("FLEET_PROCFS", self.path("proc"))
            .env("FLEET_IP", self.path("bin/fake-ip"))
            .output()
            .unwrap();
        // The stand-in dropbear outlives the script, as the real one does: stop it.
        if let Ok(pid) = fs::read_to_string(self.path("root/run/dropbear.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        Run {
            exit_code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            results: fs::read_to_string(&results)
                .ok()
                .map(|text| serde_json::from_str(&text).expect("results are JSON")),
        }
    }
}

#[test]
fn with_keys_it_authorizes_them_and_starts_dropbear() {
    let rescue = Rescue::new();
    rescue.listening(true);
    let other = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= it's bob";
    let run = rescue.run(&[KEY, other]);
    assert_eq!(run.exit_code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stderr, "");
    let root = rescue.path("root");
    assert_eq!(
        fs::read_to_string(root.join("root/.ssh/authorized_keys")).unwrap(),
        format!("{KEY}\n{other}\n")
    );
    let mode = |path: &str| fs::metadata(root.join(path)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("root/.ssh/authorized_keys"), 0o600);
    assert_eq!(mode("root/.ssh"), 0o700);
    assert_eq!(mode("root"), 0o700);
    assert_eq!(
        fs::read_to_string(root.join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
    let args = fs::read_to_string(rescue.path("dropbear.args")).unwrap();
    let host_key = root.join("etc/dropbear/dropbear_ed25519_host_key");
    assert_eq!(
        args.trim(),
        format!(
            "-F -E -s -r {} -p 22 -P {}",
            host_key.display(),
            root.join("run/dropbear.pid").display()
        )
    );
    let results = run.results.expect("results");
    assert_eq!(
        results,
        serde_json::json!({
            "ssh": true, "user": "root", "port": 22, "addresses": ["10.99.0.57", "fd00::57"],
            "host_key": "SHA256:fakefingerprint", "host_key_type": "ssh-ed25519",
            "authorized_keys": 2
        })
    );
    assert_eq!(
        RescueAccess::from_results(&results).unwrap().describe(),
        "ssh root@10.99.0.57 (host key SHA256:fakefingerprint)"
    );
    assert!(
        run.stdout.contains("  ssh root@10.99.0.57\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("ecdsa-sha2-nistp256 it's"),
        "{}",
        run.stdout
    );
}

#[test]
fn without_keys_it_starts_nothing_and_passes() {
    let rescue = Rescue::new();
    rescue.listening(false);
    let run = rescue.run(&[]);
    assert_eq!(run.exit_code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .starts_with("no SSH keys for web-1 in the fleet file: no SSH server started\n"),
        "{}",
        run.stdout
    );
    assert!(!rescue.path("dropbear.args").exists(), "dropbear started");
    assert!(!rescue.path("root/root/.ssh").exists());
    let results = run.results.expect("results");
    assert_eq!(results["ssh"], false);
    assert_eq!(
        results["reason"],
        "no SSH keys for web-1 in the fleet file: no SSH server started"
    );
    assert_eq!(
        RescueAccess::from_results(&results).unwrap().describe(),
        "no SSH server: no SSH keys for web-1 in the fleet file: no SSH server started"
    );
}

#[test]
fn a_dropbear_that_never_listens_fails_the_script() {
    let rescue = Rescue::new();
    rescue.listening(false);
    rescue.tool(
        "dropbear",
        "echo 'Failed listening on 22: Address in use' >&2\nexit 1",
    );
    let run = rescue.run(&[KEY]);
    assert_eq!(run.exit_code, Some(1), "{}{}", run.stdout, run.stderr);
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("fleet-rescue: dropbear ended before it listened on port 22:")
            && last.contains("Address in use"),
        "{}",
        run.stderr
    );
    assert_eq!(run.results.expect("results")["ssh"], false);
}

#[test]
fn without_dropbear_it_says_what_is_missing() {
    let rescue = Rescue::new();
    fs::remove_file(rescue.path("bin/dropbear")).unwrap();
    let run = rescue.run(&[KEY]);
    assert_eq!(run.exit_code, Some(1));
    assert!(
        run.stderr.contains("no dropbear in this environment"),
        "{}",
        run.stderr
    );
}

#[test]
fn outside_the_ephemeral_environment_it_changes_nothing() {
    let rescue = Rescue::new();
    let script = builtin_script(RESCUE_SCRIPT).unwrap();
    let file = rescue.path("fleet-rescue");
    fs::write(
        &file,
        rescue_script_text(script.text, "web-1", &[KEY.into()]),
    )
    .unwrap();
    if Path::new("/etc/fleet/ephemeral").exists() {
        return; // (this host is an ephemeral environment)
    }
    let output = Command::new(BUSYBOX)
        .arg("sh")
        .arg(&file)
        .env_clear()
        .env("PATH", rescue.path("bin"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not in the ephemeral environment"));
    assert!(!rescue.path("dropbear.args").exists());
}

/// Debian's dropbearkey, where this host has it: the fingerprint line the script reads.
#[test]
fn the_real_dropbearkey_gives_a_sha256_fingerprint() {
    let real = Path::new("/usr/bin/dropbearkey");
    if !real.exists() {
        eprintln!("no /usr/bin/dropbearkey (dropbear-bin): skipped");
        return;
    }
    let rescue = Rescue::new();
    rescue.listening(true);
    fs::remove_file(rescue.path("bin/dropbearkey")).unwrap();
    std::os::unix::fs::symlink(real, rescue.path("bin/dropbearkey")).unwrap();
    let run = rescue.run(&[KEY]);
    assert_eq!(run.exit_code, Some(0), "{}{}", run.stdout, run.stderr);
    let results = run.results.unwrap();
    let fingerprint = results["host_key"].as_str().unwrap();
    assert!(
        fingerprint.starts_with("SHA256:") && fingerprint.len() == 50,
        "{fingerprint}"
    );
    assert_eq!(results["host_key_type"], "ssh-ed25519");
}
