//! The `ipmi` power driver against OpenIPMI's BMC simulator `ipmi_sim` on 127.0.0.1 (one per
//! test, on a free port, with its own state directory), through the driver and through a real
//! controller and the CLI. The simulator's chassis is tests/fixtures/power/chassis-control.sh,
//! which keeps the power state in files and logs every command it is given.

use crate::support::controller::{stderr, stdout, TestController};
use fleet::model::{PowerCommand, PowerOffMode, PowerState};
use fleet::power::{PowerDrivers, PowerError, PowerTarget};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const PASSWORD: &str = "fleet-S3cret-4711";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/power")
}

/// A UDP port nobody uses right now.
fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    socket.local_addr().unwrap().port()
}

/// One `ipmi_sim` on 127.0.0.1, killed when dropped.
struct Bmc {
    child: Child,
    port: u16,
    directory: TempDir,
}

impl Bmc {
    fn start() -> Bmc {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let dir = directory.path();
        let chassis = dir.join("chassis");
        std::fs::create_dir(&chassis).unwrap();
        std::fs::create_dir(dir.join("state")).unwrap();
        let port = free_udp_port();
        let program = fixtures().join("chassis-control.sh");
        let lan = std::fs::read_to_string(fixtures().join("lan.conf"))
            .unwrap()
            .replace("@PORT@", &port.to_string())
            .replace("@PASSWORD@", PASSWORD)
            .replace(
                "@CHASSIS@",
                &format!("{} {}", program.display(), chassis.display()),
            );
        std::fs::write(dir.join("lan.conf"), lan).unwrap();
        std::fs::copy(fixtures().join("bmc.emu"), dir.join("bmc.emu")).unwrap();
        let log = std::fs::File::create(dir.join("ipmi_sim.log")).unwrap();
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("bmc.emu"))
            .arg("-s")
            .arg(dir.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("ipmi_sim runs (Debian package openipmi; .ci/setup-power installs it)");
        let bmc = Bmc {
            child,
            port,
            directory,
        };
        bmc.wait_ready();
        bmc
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until the simulator answers a status query (it starts in ~0.1 s).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = Command::new("ipmitool")
                .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-U", "admin", "-E", "-N", "1", "-R", "1"])
                .args(["chassis", "power", "status"])
                .env("IPMITOOL_PASSWORD", PASSWORD)
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
    fn power(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("chassis/power"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Every `set ...` command the chassis was given, in order.
    fn commands(&self) -> Vec<String> {
        std::fs::read_to_string(self.directory.path().join("chassis/commands"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A password file holding `password`, in this BMC's directory.
    fn password_file(&self, name: &str, password: &str) -> PathBuf {
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

fn target(params: serde_json::Value) -> PowerTarget {
    PowerTarget {
        machine: "bmc-1".into(),
        power_type: "ipmi".into(),
        params,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ipmi_driver_queries_and_switches_the_simulator() {
    let bmc = Bmc::start();
    let drivers = PowerDrivers::standard();
    assert!(drivers.power_types().contains(&"ipmi"));
    let password = bmc.password_file("password", PASSWORD);
    let machine = target(json!({
        "address": bmc.address(), "user": "admin", "password": {"file": password},
        "netboot": "true"
    }));
    let started = Instant::now();

    let report = drivers.query(&machine).await.expect("query");
    assert_eq!(report.state, PowerState::Off);

    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(bmc.power(), "1");
    assert_eq!(drivers.query(&machine).await.unwrap().state, PowerState::On);
    assert_eq!(bmc.commands(), ["set boot pxe", "set power 1"]);

    let report = drivers
        .execute(&machine, PowerCommand::Cycle)
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(
        bmc.commands()[2..],
        ["set boot pxe", "set power 0"],
        "a cycle netboots too; the simulator powers back on by itself"
    );

    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Soft))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off, "{report:?}");
    assert_eq!(bmc.commands().last().unwrap(), "set shutdown 1");
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );

    drivers.execute(&machine, PowerCommand::On).await.unwrap();
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);
    assert_eq!(bmc.commands().last().unwrap(), "set power 0");
    assert_eq!(bmc.power(), "0");
    assert_eq!(
        drivers.query(&machine).await.unwrap().state,
        PowerState::Off
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Without `netboot` the boot device is left alone.
    let plain = target(json!({
        "address": bmc.address(), "user": "admin", "password": {"file": password}
    }));
    let before = bmc.commands().len();
    drivers.execute(&plain, PowerCommand::On).await.unwrap();
    assert_eq!(bmc.commands()[before..], ["set power 1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ipmi_wrong_password_and_unreachable_bmc_say_so_without_the_secret() {
    let bmc = Bmc::start();
    let drivers = PowerDrivers::standard();
    let wrong = "not-the-Password-9";
    let file = bmc.password_file("wrong", wrong);
    let machine = target(json!({
        "address": bmc.address(), "user": "admin", "password": {"file": file}
    }));
    let started = Instant::now();
    let error = drivers
        .execute(&machine, PowerCommand::On)
        .await
        .expect_err("a wrong password is refused");
    let text = error.to_string();
    assert_eq!(
        text,
        format!(
            "ipmi {}: authentication failed (wrong user or password)",
            bmc.address()
        )
    );
    assert!(!text.contains(wrong) && !text.contains(PASSWORD));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(bmc.commands().is_empty(), "nothing reached the chassis");

    // A wrong user is an authentication failure too.
    let good = bmc.password_file("good", PASSWORD);
    let stranger = target(json!({
        "address": bmc.address(), "user": "mallory", "password": {"file": good}
    }));
    let text = drivers.query(&stranger).await.unwrap_err().to_string();
    assert!(
        text.ends_with("authentication failed (wrong user or password)"),
        "{text}"
    );

    // An inline password is refused before anything runs, and not repeated.
    let inline = target(json!({
        "address": bmc.address(), "user": "admin", "password": PASSWORD
    }));
    let text = drivers.query(&inline).await.unwrap_err().to_string();
    assert!(text.contains("must be a reference"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");

    // A missing secret names the reference only.
    let missing = target(json!({
        "address": bmc.address(), "user": "admin",
        "password": {"env": "FLEET_TEST_NO_SUCH_BMC_PASSWORD"}
    }));
    let text = drivers.query(&missing).await.unwrap_err().to_string();
    assert!(text.contains("FLEET_TEST_NO_SUCH_BMC_PASSWORD"), "{text}");

    // Nothing on the port: unreachable, within the retry time.
    let port = free_udp_port();
    let silent = target(json!({
        "address": format!("127.0.0.1:{port}"), "user": "admin", "password": {"file": good}
    }));
    let started = Instant::now();
    let error = drivers.query(&silent).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, PowerError::Driver { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("ipmi 127.0.0.1:{port}: no answer from the BMC (unreachable)")
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ipmi_power_through_the_controller_and_the_cli() {
    // `fleet serve` inherits the test's environment, and with it the password.
    std::env::set_var("FLEET_TEST_BMC_PASSWORD", PASSWORD);
    let bmc = Bmc::start();
    let controller = TestController::start();
    let address = format!("address={}", bmc.address());
    let output = controller.fleet(&[
        "machine",
        "add",
        "bmc-1",
        "--power-type",
        "ipmi",
        "--power-param",
        &address,
        "--power-param",
        "user=admin",
        "--power-param",
        "password=env:FLEET_TEST_BMC_PASSWORD",
        "--no-commission",
    ]);
    assert!(output.status.success(), "add: {}", stderr(&output));
    let store = controller.store().await;
    controller.make_deployed(&store, "bmc-1").await;

    let show_power = || {
        let output = controller.fleet(&["machine", "show", "bmc-1", "--json"]);
        assert!(output.status.success(), "show: {}", stderr(&output));
        let detail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(!stdout(&output).contains(PASSWORD));
        detail["machine"]["power"].clone()
    };

    for (action, power, last) in [
        ("power-on", "1", "set power 1"),
        ("power-cycle", "1", "set power 0"),
        ("power-off", "0", "set power 0"),
    ] {
        let before = bmc.commands().len();
        let output = controller.fleet(&["machine", action, "bmc-1"]);
        assert!(
            output.status.success(),
            "{action}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        assert!(!stdout(&output).contains(PASSWORD) && !stderr(&output).contains(PASSWORD));
        assert_eq!(bmc.commands()[before..], [last], "{action}");
        // The simulator carries out a cycle as off, then on again about a second later.
        let deadline = Instant::now() + Duration::from_secs(3);
        while bmc.power() != power && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(bmc.power(), power, "{action}");
        let expected = if power == "1" { "on" } else { "off" };
        assert_eq!(show_power(), json!(expected), "{action}");
    }

    // A wrong password through the controller: the action fails with the driver's message,
    // and the machine shows it, never the secret.
    let wrong = bmc.password_file("wrong", "wrong-Password-7");
    let output = controller.fleet(&[
        "machine",
        "add",
        "bmc-2",
        "--power-type",
        "ipmi",
        "--power-param",
        &address,
        "--power-param",
        "user=admin",
        "--power-param",
        &format!("password=file:{}", wrong.display()),
        "--no-commission",
    ]);
    assert!(output.status.success(), "add: {}", stderr(&output));
    controller.make_deployed(&store, "bmc-2").await;
    let started = Instant::now();
    let output = controller.fleet(&["machine", "power-on", "bmc-2"]);
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = format!("{}{}", stdout(&output), stderr(&output));
    assert!(
        text.contains(&format!(
            "ipmi {}: authentication failed (wrong user or password)",
            bmc.address()
        )),
        "{text}"
    );
    assert!(!text.contains("wrong-Password-7") && !text.contains(PASSWORD));
    let output = controller.fleet(&["machine", "show", "bmc-2", "--json"]);
    let detail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(detail["machine"]["power"], "error", "{detail}");
    assert!(!stdout(&output).contains("wrong-Password-7"));

    // The history has the power changes, never the password.
    for name in ["bmc-1", "bmc-2"] {
        let events = controller.fleet(&["events", name, "--json"]);
        let text = stdout(&events);
        assert!(!text.contains(PASSWORD) && !text.contains("wrong-Password-7"));
    }
}
