//! The `redfish` power driver against sushy-tools' Redfish emulator (PyPI `sushy-tools` 2.2.0,
//! installed by .ci/setup-redfish in /var/cache/fleet-redfish/venv) with its fake driver: one
//! emulator per test on 127.0.0.1, a free port, a fresh state directory and basic auth from a
//! bcrypt htpasswd file. tests/fixtures/redfish/sushy-nodelay.py starts it with the fake
//! driver's random 1-11 s power delay removed, so a change shows on the next read. Through the
//! driver and through a real controller and the CLI.

use crate::support::controller::{stderr, stdout, TestController};
use fleet::model::{PowerCommand, PowerOffMode, PowerState};
use fleet::power::{PowerDrivers, PowerTarget};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The password in tests/fixtures/redfish/htpasswd (user `admin`).
pub(crate) const PASSWORD: &str = "fleet-S3cret-4711";
const VENV: &str = "/var/cache/fleet-redfish/venv";
pub(crate) const NODE_1: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redfish")
}

fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a TCP socket");
    listener.local_addr().unwrap().port()
}

/// One sushy-emulator on 127.0.0.1, killed when dropped (also used by tests/it/power_apply.rs).
pub(crate) struct Emulator {
    child: Child,
    port: u16,
    directory: TempDir,
    tls: bool,
}

impl Emulator {
    pub(crate) fn start() -> Emulator {
        Emulator::start_with(false)
    }

    /// With `tls`, HTTPS with the self-signed certificate in tests/fixtures/redfish.
    fn start_with(tls: bool) -> Emulator {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let dir = directory.path();
        let state = dir.join("state");
        std::fs::create_dir(&state).unwrap();
        let port = free_tcp_port();
        let mut config = std::fs::read_to_string(fixtures().join("emulator.conf"))
            .unwrap()
            .replace("@PORT@", &port.to_string())
            .replace("@STATE@", &state.display().to_string())
            .replace("@AUTH@", &fixtures().join("htpasswd").display().to_string());
        if tls {
            let fixture = |name: &str| fixtures().join(name).display().to_string();
            config.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                fixture("self-signed.crt"),
                fixture("self-signed.key")
            ));
        }
        std::fs::write(dir.join("emulator.conf"), config).unwrap();
        std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
        std::fs::write(dir.join("wrong-password"), "not-the-password\n").unwrap();
        let log = std::fs::File::create(dir.join("emulator.log")).unwrap();
        let child = Command::new(format!("{VENV}/bin/python"))
            .arg(fixtures().join("sushy-nodelay.py"))
            .arg("--config")
            .arg(dir.join("emulator.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the emulator's venv exists (run .ci/setup-redfish as root)");
        let emulator = Emulator {
            child,
            port,
            directory,
            tls,
        };
        emulator.wait_ready();
        emulator
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.directory.path().join("emulator.log")).unwrap();
                panic!(
                    "sushy-emulator did not listen on {} within 10 s:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn address(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn target(&self, system_id: Option<&str>, password_file: &str) -> PowerTarget {
        let mut params = json!({
            "address": self.address(),
            "user": "admin",
            "password": {"file": self.directory.path().join(password_file)},
            "verify_tls": false,
        });
        if let Some(id) = system_id {
            params["system_id"] = json!(id);
        }
        PowerTarget {
            machine: "node-1".into(),
            power_type: "redfish".into(),
            params,
            stored: Default::default(),
        }
    }

    /// The system as the emulator has it, read without the driver.
    pub(crate) async fn raw_system(&self, uuid: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}/redfish/v1/Systems/{uuid}", self.address()))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Resets the system behind the driver's back (`On`, `ForceOff` ...).
    async fn raw_reset(&self, uuid: &str, reset: &str) {
        reqwest::Client::new()
            .post(format!(
                "{}/redfish/v1/Systems/{uuid}/Actions/ComputerSystem.Reset",
                self.address()
            ))
            .basic_auth("admin", Some(PASSWORD))
            .json(&json!({ "ResetType": reset }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    async fn raw_patch(&self, uuid: &str, body: Value) {
        reqwest::Client::new()
            .patch(format!("{}/redfish/v1/Systems/{uuid}", self.address()))
            .basic_auth("admin", Some(PASSWORD))
            .json(&body)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redfish_power_commands_change_the_emulators_power_state() {
    let emulator = Emulator::start();
    let drivers = PowerDrivers::standard();
    let target = emulator.target(Some("node-1"), "password");
    let power = |system: &Value| system["PowerState"].as_str().unwrap().to_string();

    let report = drivers.query(&target).await.unwrap();
    assert_eq!(report.state, PowerState::Off);

    // On: one-time network boot first, then On.
    let report = drivers.execute(&target, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    let system = emulator.raw_system(NODE_1).await;
    assert_eq!(power(&system), "On");
    assert_eq!(system["Boot"]["BootSourceOverrideTarget"], "Pxe");
    // The emulator reads "Once" back as "Continuous" (measured); anything but "Disabled" is set.
    assert_ne!(system["Boot"]["BootSourceOverrideEnabled"], "Disabled");
    assert_eq!(drivers.query(&target).await.unwrap().state, PowerState::On);

    // Hard off.
    let report = drivers
        .execute(&target, PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);
    assert_eq!(power(&emulator.raw_system(NODE_1).await), "Off");
    assert_eq!(drivers.query(&target).await.unwrap().state, PowerState::Off);

    // Cycle sets the network boot again.
    emulator
        .raw_patch(
            NODE_1,
            json!({"Boot": {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Continuous"}}),
        )
        .await;
    assert_eq!(
        emulator.raw_system(NODE_1).await["Boot"]["BootSourceOverrideTarget"],
        "Hdd"
    );
    let report = drivers.execute(&target, PowerCommand::Cycle).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    let system = emulator.raw_system(NODE_1).await;
    assert_eq!(power(&system), "On");
    assert_eq!(system["Boot"]["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(drivers.query(&target).await.unwrap().state, PowerState::On);

    // Soft off (GracefulShutdown): the state is read back after the request.
    let report = drivers
        .execute(&target, PowerCommand::Off(PowerOffMode::Soft))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);
    assert_eq!(report.note, None);
    assert_eq!(power(&emulator.raw_system(NODE_1).await), "Off");

    // The other system was never touched.
    let other = emulator
        .raw_system("4ad3c5f1-1b7e-4c5b-9d0e-7a6b2f1c9e30")
        .await;
    assert_eq!(power(&other), "Off");
}

#[tokio::test]
async fn redfish_finds_systems_by_uuid_and_needs_a_system_id_when_there_are_several() {
    let emulator = Emulator::start();
    let drivers = PowerDrivers::standard();
    let by_uuid = emulator.target(Some(NODE_1), "password");
    drivers.execute(&by_uuid, PowerCommand::On).await.unwrap();
    assert_eq!(emulator.raw_system(NODE_1).await["PowerState"], "On");

    let error = drivers
        .query(&emulator.target(None, "password"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "redfish {}: several systems, set the power parameter `system_id`",
            emulator.address()
        )),
        "{error}"
    );
}

#[tokio::test]
async fn redfish_wrong_password_says_authentication_failed_without_the_password() {
    let emulator = Emulator::start();
    let drivers = PowerDrivers::standard();
    let target = emulator.target(Some("node-1"), "wrong-password");
    for result in [
        drivers.query(&target).await,
        drivers.execute(&target, PowerCommand::On).await,
    ] {
        let error = result.unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "redfish {}: authentication failed (wrong user or password)",
                emulator.address()
            )
        );
        assert!(!error.contains("not-the-password") && !error.contains(PASSWORD));
    }
    assert_eq!(emulator.raw_system(NODE_1).await["PowerState"], "Off");
}

#[tokio::test]
async fn redfish_unknown_system_lists_the_systems_there_are() {
    let emulator = Emulator::start();
    let drivers = PowerDrivers::standard();
    let error = drivers
        .execute(
            &emulator.target(Some("node-9"), "password"),
            PowerCommand::On,
        )
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!(
            "redfish {}: no system `node-9` (systems: node-1 ({NODE_1}), node-2 (4ad3c5f1-1b7e-4c5b-9d0e-7a6b2f1c9e30))",
            emulator.address()
        )
    );
    assert!(!error.contains(PASSWORD));
}

#[tokio::test]
async fn redfish_unreachable_bmc_cannot_connect_within_the_timeout() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("password"), PASSWORD).unwrap();
    let address = format!("127.0.0.1:{}", free_tcp_port());
    let target = PowerTarget {
        machine: "node-1".into(),
        power_type: "redfish".into(),
        params: json!({
            "address": address,
            "user": "admin",
            "password": {"file": directory.path().join("password")},
            "verify_tls": false,
        }),
        stored: Default::default(),
    };
    let started = Instant::now();
    let error = PowerDrivers::standard()
        .query(&target)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(error, format!("redfish {address}: cannot connect"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn redfish_self_signed_certificate_only_with_verify_tls_false() {
    let emulator = Emulator::start_with(true);
    let drivers = PowerDrivers::standard();
    let mut target = emulator.target(Some("node-1"), "password");
    assert_eq!(drivers.query(&target).await.unwrap().state, PowerState::Off);

    target.params["verify_tls"] = json!(true);
    let error = drivers.query(&target).await.unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("redfish {}: TLS failed (", emulator.address()))
            && error.ends_with("set verify_tls = false for a self-signed certificate"),
        "{error}"
    );
    assert!(!error.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn redfish_power_through_the_controller_and_the_cli() {
    // `fleet serve` inherits the test's environment, and with it both passwords.
    const WRONG: &str = "wrong-Redfish-Pass-3";
    std::env::set_var("FLEET_TEST_REDFISH_PASSWORD", PASSWORD);
    std::env::set_var("FLEET_TEST_REDFISH_WRONG_PASSWORD", WRONG);
    let emulator = Emulator::start();
    let controller = TestController::start();
    let started = Instant::now();
    let address = format!("address={}", emulator.address());
    let add = |name: &str, password: &str| {
        let output = controller.fleet(&[
            "machine",
            "add",
            name,
            "--power-type",
            "redfish",
            "--power-param",
            &address,
            "--power-param",
            "user=admin",
            "--power-param",
            password,
            "--power-param",
            "system_id=node-1",
            "--no-commission",
        ]);
        assert!(output.status.success(), "add {name}: {}", stderr(&output));
    };
    // Every output of the run, searched for the secrets at the end.
    let mut outputs = String::new();
    add("rf-1", "password=env:FLEET_TEST_REDFISH_PASSWORD");
    let store = controller.store().await;
    controller.make_deployed(&store, "rf-1").await;

    let show = |name: &str| {
        let output = controller.fleet(&["machine", "show", name, "--json"]);
        assert!(output.status.success(), "show: {}", stderr(&output));
        let detail: Value = serde_json::from_slice(&output.stdout).unwrap();
        (detail, stdout(&output))
    };
    let emulator_power = || async { emulator.raw_system(NODE_1).await["PowerState"].clone() };
    assert_eq!(emulator_power().await, "Off");

    for (action, power) in [
        ("power-on", "On"),
        ("power-cycle", "On"),
        ("power-off", "Off"),
    ] {
        if action == "power-cycle" {
            // A cycle sets the one-time network boot again: take it away first to see that.
            emulator
                .raw_patch(
                    NODE_1,
                    json!({"Boot": {"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Continuous"}}),
                )
                .await;
        }
        let output = controller.fleet(&["machine", action, "rf-1"]);
        let text = format!("{}{}", stdout(&output), stderr(&output));
        assert!(output.status.success(), "{action}: {text}");
        assert!(text.starts_with(&format!("rf-1: {action}")), "{text}");
        outputs.push_str(&text);
        let system = emulator.raw_system(NODE_1).await;
        assert_eq!(system["PowerState"], power, "{action}: {system}");
        if action != "power-off" {
            assert_eq!(
                system["Boot"]["BootSourceOverrideTarget"], "Pxe",
                "{action}: {system}"
            );
        }
        let (detail, text) = show("rf-1");
        outputs.push_str(&text);
        assert_eq!(
            detail["machine"]["power"],
            json!(power.to_ascii_lowercase()),
            "{action}"
        );
        assert_eq!(detail["machine"]["status"], "deployed", "{action}");
    }
    // The other system on the BMC was never touched.
    assert_eq!(
        emulator
            .raw_system("4ad3c5f1-1b7e-4c5b-9d0e-7a6b2f1c9e30")
            .await["PowerState"],
        "Off"
    );

    // A wrong password: the driver's own message on stderr, exit 1, the machine's power is
    // `error` with the message in its history, and the emulator's system is left as it was.
    add("rf-2", "password=env:FLEET_TEST_REDFISH_WRONG_PASSWORD");
    controller.make_deployed(&store, "rf-2").await;
    let message = format!(
        "redfish {}: authentication failed (wrong user or password)",
        emulator.address()
    );
    let output = controller.fleet(&["machine", "power-on", "rf-2"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    let error = stderr(&output);
    assert_eq!(
        error.trim_end(),
        format!("failed: machine `rf-2`: power on failed: {message}")
    );
    outputs.push_str(&error);
    assert_eq!(emulator_power().await, "Off");
    let (detail, text) = show("rf-2");
    outputs.push_str(&text);
    assert_eq!(detail["machine"]["power"], "error", "{detail}");
    assert_eq!(detail["machine"]["status"], "deployed", "{detail}");
    let power_events: Vec<&Value> = detail["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["kind"] == "power")
        .collect();
    assert!(
        power_events
            .iter()
            .any(|event| event.to_string().contains(&message)),
        "{power_events:?}"
    );
    let human = controller.fleet(&["machine", "show", "rf-2"]);
    let text = stdout(&human);
    assert!(
        text.contains("power           error (type redfish)"),
        "{text}"
    );
    outputs.push_str(&text);
    let events = controller.fleet(&["events", "rf-2"]);
    let text = stdout(&events);
    assert!(text.contains(&message), "{text}");
    outputs.push_str(&text);

    // The secrets show nowhere: not in any output, nor in the history as JSON.
    for name in ["rf-1", "rf-2"] {
        let events = controller.fleet(&["events", name, "--json"]);
        assert!(events.status.success());
        outputs.push_str(&stdout(&events));
        outputs.push_str(&stderr(&events));
    }
    let list = controller.fleet(&["machines", "--json"]);
    outputs.push_str(&stdout(&list));
    for secret in [PASSWORD, WRONG] {
        assert!(!outputs.contains(secret), "`{secret}` in:\n{outputs}");
    }
    assert!(
        outputs.contains("FLEET_TEST_REDFISH_WRONG_PASSWORD"),
        "the reference shows, not the value"
    );
    eprintln!("redfish through the CLI: {:?}", started.elapsed());
}

/// `machine show`'s power once it is `power`, within `limit`.
/// Status queries through the controller: its power poll reads the emulator's PowerState, so
/// a system switched behind fleet's back shows in `machine show`; a password that stops working
/// shows as power error with the driver's message, and one that works again clears it.
#[tokio::test(flavor = "multi_thread")]
async fn redfish_power_poll_reads_the_emulators_state() {
    let emulator = Emulator::start();
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("fleet.toml");
    std::fs::write(
        &file,
        "[controller]\ntftp_listen = \"127.0.0.1:0\"\n\n[policy]\npower_poll_seconds = 1\n",
    )
    .unwrap();
    let password = directory.path().join("bmc-password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let state = directory.path().join("state");
    let controller = TestController::start_in(&state, &["-f", &file.to_string_lossy()]);
    let address = format!("address={}", emulator.address());
    let password_param = format!("password=file:{}", password.display());
    let output = controller.fleet(&[
        "machine",
        "add",
        "rf-poll",
        "--power-type",
        "redfish",
        "--power-param",
        &address,
        "--power-param",
        "user=admin",
        "--power-param",
        &password_param,
        "--power-param",
        "system_id=node-1",
        "--no-commission",
    ]);
    assert!(output.status.success(), "add: {}", stderr(&output));
    let store = controller.store().await;
    controller.make_deployed(&store, "rf-poll").await;
    let limit = Duration::from_secs(10);
    controller.wait_for_shown_power("rf-poll", "off", limit);

    // Switched on and off behind fleet's back.
    emulator.raw_reset(NODE_1, "On").await;
    controller.wait_for_shown_power("rf-poll", "on", limit);
    emulator.raw_reset(NODE_1, "ForceOff").await;
    controller.wait_for_shown_power("rf-poll", "off", limit);
    let reasons = controller.power_reasons("rf-poll");
    for expected in [
        "power found on (was off), changed outside fleet",
        "power found off (was on), changed outside fleet",
    ] {
        assert!(reasons.iter().any(|r| r == expected), "{reasons:?}");
    }

    // The secret file now holds a wrong password: read at the next query, refused.
    std::fs::write(&password, "not-the-Password-8\n").unwrap();
    controller.wait_for_shown_power("rf-poll", "error", limit);
    let message = format!(
        "redfish {}: authentication failed (wrong user or password)",
        emulator.address()
    );
    let reasons = controller.power_reasons("rf-poll");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("power query failed") && r.contains(&message)),
        "{reasons:?}"
    );
    // The right one again: the poll reads the state again.
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    controller.wait_for_shown_power("rf-poll", "off", limit);

    let mut outputs = String::new();
    for args in [
        &["events", "rf-poll", "--json"][..],
        &["machine", "show", "rf-poll", "--json"],
        &["machine", "show", "rf-poll"],
    ] {
        let output = controller.fleet(args);
        outputs.push_str(&stdout(&output));
        outputs.push_str(&stderr(&output));
    }
    assert!(
        !outputs.contains(PASSWORD) && !outputs.contains("not-the-Password-8"),
        "{outputs}"
    );
}
