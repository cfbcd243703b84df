//! End to end: an enlisting machine finds its BMC and reports it, as MAAS does. A QEMU VM with
//! an IPMI BMC (`ipmi-bmc-extern` + `isa-ipmi-kcs`) backed by OpenIPMI's `ipmi_sim`, all inside
//! the test's network namespace: the guest's ipmitool talks to the simulator over KCS, the
//! controller's over LAN (10.99.0.2:623 on the boot network's bridge).
//! 1. the VM netboots the ephemeral environment, loads ipmi_si, reads the BMC's LAN address,
//!    creates the user `fleet` (ADMINISTRATOR, a random password) and enlists with it;
//! 2. the stored machine: power type ipmi, `bmc_address` the simulator's address, user fleet,
//!    the password only as a reference to a 0600 file in the controller's state directory; the
//!    password is in no event, no log line, no console line and no API output;
//! 3. `fleet machine power-off` / `power-on` through the controller switch the simulator's
//!    chassis with that user and password.

use crate::support::bootnet::{
    ephemeral_fleet_file, kill_by_pidfile, read, tail, vm_test_directory, BootNetwork,
    NamespacedController, ONE_VM_AT_A_TIME,
};
use crate::support::ipmi_sim::{self, chassis_control, fixtures};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:5e:00:02";
const NAME: &str = "enlisted-5254005e0002";
/// The BMC's LAN address on the boot network, and the port of its KCS face on loopback.
const BMC_IP: &str = "10.99.0.2";
const SERIAL_PORT: u16 = 9002;
const ADMIN_PASSWORD: &str = "test-admin-Pw-1";

/// `ipmi_sim` inside the namespace: LAN on BMC_IP:623, KCS for QEMU on 127.0.0.1:SERIAL_PORT.
struct Simulator {
    child: Child,
    namespace: String,
    chassis: PathBuf,
    log: PathBuf,
}

impl Simulator {
    /// `lan_address`: whether the BMC reports BMC_IP as its LAN address (else 0.0.0.0).
    fn start(network: &BootNetwork, directory: &Path, lan_address: bool) -> Simulator {
        let dir = directory.join("bmc");
        std::fs::create_dir_all(&dir).unwrap();
        let lan = std::fs::read_to_string(fixtures().join("lan-kcs.conf"))
            .unwrap()
            .replace("@ADDR@", BMC_IP)
            .replace("@SERIAL_PORT@", &SERIAL_PORT.to_string())
            .replace("@PASSWORD@", ADMIN_PASSWORD)
            .replace("@CHASSIS@", &chassis_control(&dir));
        let child = ipmi_sim::spawn(network.namespace.command("ipmi_sim"), &dir, &lan);
        let (chassis, log) = (dir.join("chassis"), dir.join("ipmi_sim.log"));
        let simulator = Simulator {
            child,
            namespace: network.namespace.name.clone(),
            chassis,
            log,
        };
        // Ready when it answers; then it gets the LAN address it reports (a real BMC has one).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !simulator.admin(&["chassis", "power", "status"]).0 {
            assert!(
                Instant::now() < deadline,
                "ipmi_sim did not answer: {}",
                read(&simulator.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if lan_address {
            for args in [
                &["lan", "set", "1", "ipsrc", "static"][..],
                &["lan", "set", "1", "ipaddr", BMC_IP][..],
            ] {
                let (ok, output) = simulator.admin(args);
                assert!(ok, "ipmitool {args:?}: {output}");
            }
        }
        simulator
    }

    /// ipmitool over LAN as `user`, in the namespace: (success, stdout + stderr).
    fn ipmitool(&self, user: &str, password: &str, args: &[&str]) -> (bool, String) {
        let output = std::process::Command::new("ip")
            .args(["netns", "exec", &self.namespace, "ipmitool"])
            .args(["-I", "lanplus", "-C", "3", "-H", BMC_IP, "-U", user, "-E"])
            .args(["-N", "1", "-R", "1"])
            .args(args)
            .env("IPMITOOL_PASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .expect("ipmitool runs (.ci/setup-power installs it)");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }

    fn admin(&self, args: &[&str]) -> (bool, String) {
        self.ipmitool("admin", ADMIN_PASSWORD, args)
    }

    /// The chassis' power as the simulator keeps it: "1" on, "0" off.
    fn power(&self) -> String {
        read(&self.chassis.join("power")).trim().to_string()
    }

    fn commands(&self) -> String {
        read(&self.chassis.join("commands"))
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The VM with its BMC: QEMU's external BMC on ipmi_sim's VM-codec socket, a KCS interface.
struct Vm {
    child: Child,
    pidfile: PathBuf,
    console: PathBuf,
}

impl Vm {
    fn start(network: &BootNetwork, directory: &Path, mac: &str) -> Vm {
        let (pidfile, console) = (directory.join("qemu.pid"), directory.join("console.log"));
        let child = network
            .namespace
            .command("qemu-system-x86_64")
            .args(["-accel", "tcg", "-display", "none", "-no-shutdown"])
            .args(["-m", "512", "-smp", "1", "-boot", "n"])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={},script=no,downscript=no", network.tap),
            ])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
            ])
            .args([
                "-chardev",
                &format!("socket,id=ipmi0,host=127.0.0.1,port={SERIAL_PORT},reconnect=10"),
            ])
            .args(["-device", "ipmi-bmc-extern,chardev=ipmi0,id=bmc0"])
            .args(["-device", "isa-ipmi-kcs,bmc=bmc0"])
            .args(["-serial", &format!("file:{}", console.display())])
            .arg("-pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(directory.join("qemu.log")).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 starts (.ci/setup-netboot installs it)");
        Vm {
            child,
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The boot network with the BMC's LAN address on its bridge, and the simulator behind it
/// (`lan_address`: whether the BMC reports that address).
fn network_with_bmc(dir: &Path, lan_address: bool) -> (BootNetwork, Simulator) {
    let network = BootNetwork::new();
    network
        .namespace
        .ip(&["addr", "add", &format!("{BMC_IP}/24"), "dev", "br0"]);
    let simulator = Simulator::start(&network, dir, lan_address);
    (network, simulator)
}

/// Waits until `name` has enlisted and its enlistment run ended ok (it then powers off).
async fn wait_enlisted(
    name: &str,
    vm: &mut Vm,
    controller: &NamespacedController,
    simulator: &Simulator,
    dir: &Path,
) -> fleet::store::MachineRecord {
    let store = controller.store().await;
    let started = Instant::now();
    loop {
        if let Ok(Some(exit)) = vm.child.try_wait() {
            panic!(
                "QEMU exited ({exit}): {}\nconsole:\n{}",
                read(&dir.join("qemu.log")),
                tail(&vm.console(), 40)
            );
        }
        let events = store.events(&Default::default()).await.unwrap();
        let ended = events.iter().any(|event| {
            event.machine.as_deref() == Some(name)
                && event
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("enlist run") && r.ends_with("ended: ok"))
        });
        if ended {
            return store.machine(name).await.unwrap().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not enlisted within 240 s\nconsole:\n{}\ncontroller:\n{}\nipmi_sim:\n{}",
            tail(&vm.console(), 50),
            tail(&read(&controller.log), 30),
            tail(&read(&simulator.log), 20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enlisting_machine_reports_its_bmc_and_the_controller_powers_it_with_that_user() {
    let _one = ONE_VM_AT_A_TIME.lock().await;
    // FLEET_NETBOOT_KEEP=1 keeps the files for a look afterwards.
    let directory = vm_test_directory();
    let dir = directory.path();
    let (network, simulator) = network_with_bmc(dir, true);
    let fleet_file = ephemeral_fleet_file(dir, "");
    let controller = NamespacedController::start(&network, dir, &fleet_file);
    let store = controller.store().await;
    let mut vm = Vm::start(&network, dir, MAC);
    let started = Instant::now();

    // 1. It enlists (and powers itself off), with its BMC.
    let record = wait_enlisted(NAME, &mut vm, &controller, &simulator, dir).await;
    eprintln!(
        "e2e: enlisted with its BMC after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let console = vm.console();
    assert!(
        console.contains(&format!(
            "fleet: bmc: ipmi {BMC_IP} (channel 1): user fleet in slot 3 created"
        )),
        "console:\n{}",
        tail(&console, 40)
    );

    // 2. The stored machine.
    assert_eq!(record.power_type, "ipmi", "{:?}", record.power_params);
    assert_eq!(record.bmc_address.as_deref(), Some(BMC_IP));
    let params = &record.power_params;
    assert_eq!(params["address"], BMC_IP);
    assert_eq!(params["user"], "fleet");
    assert_eq!(params["driver"], "lan_2_0");
    assert_eq!(params["privilege"], "admin");
    assert_eq!(params["cipher_suite"], 3);
    assert_eq!(
        params["password"],
        serde_json::json!({"store": "bmc-password"})
    );
    // Sealed in the store with the key the controller made in its state directory.
    let key = fleet::store::SecretKey::read_file(&controller.state_dir.join("secret.key")).unwrap();
    let password = store
        .clone()
        .with_secret_key(key)
        .secret(record.id, NAME, "bmc-password")
        .await
        .unwrap()
        .expose()
        .to_string();
    assert!(!controller.state_dir.join("secrets").exists());
    assert!(
        !password.is_empty() && password.len() <= 20,
        "{} bytes",
        password.len()
    );
    // The simulator has the user, as ADMINISTRATOR on channel 1; the password logs in.
    let (_, users) = simulator.admin(&["user", "list", "1"]);
    assert!(
        users
            .lines()
            .any(|line| line.contains(" fleet ") && line.contains("ADMINISTRATOR")),
        "{users}"
    );
    let (ok, status) = simulator.ipmitool("fleet", &password, &["chassis", "power", "status"]);
    assert!(ok, "the reported password logs in: {status}");

    // The password is nowhere but sealed in the store.
    let events = store.events(&Default::default()).await.unwrap();
    let enlist_event = events
        .iter()
        .find(|event| event.kind == "enlist" && event.machine.as_deref() == Some(NAME))
        .expect("an enlist event");
    assert!(
        enlist_event
            .reason
            .as_deref()
            .is_some_and(|reason| reason.contains("kept in the store")),
        "{enlist_event:?}"
    );
    let shown = controller.cli(&["machine", "show", NAME, "--json"]);
    assert!(shown.status.success(), "{}", output_text(&shown));
    let shown = output_text(&shown);
    assert!(shown.contains("bmc-password"), "{shown}");
    let listed = output_text(&controller.cli(&["machine", "list", "--json"]));
    let events_shown = output_text(&controller.cli(&["events", "--json"]));
    for (what, text) in [
        ("events", format!("{events:?}")),
        ("machine show", shown),
        ("machine list", listed),
        ("events --json", events_shown),
        ("the controller's log", read(&controller.log)),
        ("the console", console),
        ("the stored parameters", params.to_string()),
    ] {
        assert!(!text.contains(&password), "the BMC password is in {what}");
    }

    // 3. Power through the controller, with that user: off, then on (a new machine may be
    // powered off; power-on wants an owner or a broken machine: marked broken first).
    let output = controller.cli(&["machine", "power-off", NAME]);
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(simulator.power(), "0", "{}", simulator.commands());
    let output = controller.cli(&["machine", "mark-broken", NAME, "--comment", "bmc test"]);
    assert!(output.status.success(), "{}", output_text(&output));
    let output = controller.cli(&["machine", "power-on", NAME]);
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(simulator.power(), "1", "{}", simulator.commands());
    let (_, status) = simulator.admin(&["chassis", "power", "status"]);
    assert!(status.contains("Chassis Power is on"), "{status}");
    let output = controller.cli(&["machine", "power-off", NAME]);
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(simulator.power(), "0", "{}", simulator.commands());
    let shown = output_text(&controller.cli(&["machine", "show", NAME]));
    assert!(!shown.contains(&password), "{shown}");
    assert!(
        !read(&controller.log).contains(&password),
        "the BMC password is in the controller's log"
    );
    eprintln!(
        "e2e: powered off/on/off through ipmi_sim after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A BMC the runner cannot use (its LAN channel has no address): the console says why, and
/// the machine enlists without a BMC (no power type, no password file, no user made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_without_a_lan_address_is_logged_and_the_machine_enlists_without_it() {
    const MAC: &str = "52:54:00:5e:00:03";
    const NAME: &str = "enlisted-5254005e0003";
    let _one = ONE_VM_AT_A_TIME.lock().await;
    // FLEET_NETBOOT_KEEP=1 keeps the files for a look afterwards.
    let directory = vm_test_directory();
    let dir = directory.path();
    let (network, simulator) = network_with_bmc(dir, false);
    let fleet_file = ephemeral_fleet_file(dir, "");
    let controller = NamespacedController::start(&network, dir, &fleet_file);
    let mut vm = Vm::start(&network, dir, MAC);
    let started = Instant::now();
    let record = wait_enlisted(NAME, &mut vm, &controller, &simulator, dir).await;
    eprintln!(
        "e2e: enlisted without its BMC after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let console = vm.console();
    assert!(
        console.contains("fleet: bmc: LAN channel 1 has no IP address: enlisting without a BMC"),
        "console:\n{}",
        tail(&console, 40)
    );
    assert_eq!(record.power_type, "unconfigured");
    assert_eq!(record.bmc_address, None);
    assert!(!controller.state_dir.join("secrets").exists());
    let (_, users) = simulator.admin(&["user", "list", "1"]);
    assert!(!users.contains("fleet"), "{users}");
}
