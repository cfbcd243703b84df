//! A power failure during a step of `fleet apply`: machines declared `ready` whose BMC refuses
//! the password the fleet file points at (an `ipmi_sim` and a sushy Redfish emulator on
//! 127.0.0.1). Commissioning fails with the driver's message in the apply output, the machine
//! (failed_commissioning, power error) and its history; no secret in any output.

use crate::power_redfish::Emulator;
use crate::support::controller::{stderr, stdout, TestController};
use crate::support::ipmi_sim::Bmc;
use serde_json::Value;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The password the simulated IPMI BMC accepts (never the one the fleet file points at).
const IPMI_PASSWORD: &str = "apply-Ipmi-R1ght-77";
/// What the fleet file's references resolve to.
const WRONG_IPMI: &str = "apply-Ipmi-Wr0ng-12";
const WRONG_REDFISH: &str = "apply-Redfish-Wr0ng-34";

fn fleet_file(directory: &Path, ipmi: &Bmc, redfish: &Emulator) -> PathBuf {
    let password_file = directory.join("redfish-password");
    std::fs::write(&password_file, format!("{WRONG_REDFISH}\n")).unwrap();
    let path = directory.join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            r#"[controller]
tftp_listen = "127.0.0.1:0"

[[machine]]
name = "ipmi-1"
macs = ["52:54:00:bc:00:01"]
state = "ready"
power = {{ type = "ipmi", address = "{ipmi}", user = "admin", password = {{ env = "FLEET_TEST_APPLY_IPMI_PASSWORD" }} }}

[[machine]]
name = "redfish-1"
macs = ["52:54:00:bc:00:02"]
state = "ready"
power = {{ type = "redfish", address = "{redfish}", user = "admin", password = {{ file = "{file}" }}, system_id = "node-1" }}
"#,
            ipmi = ipmi.address(),
            redfish = redfish.address(),
            file = password_file.display(),
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_power_failure_fails_the_apply_step_with_the_drivers_message() {
    // `fleet serve` inherits the test's environment, and with it the (wrong) IPMI password.
    std::env::set_var("FLEET_TEST_APPLY_IPMI_PASSWORD", WRONG_IPMI);
    let ipmi = Bmc::start(IPMI_PASSWORD);
    let redfish = Emulator::start();
    let directory = tempfile::tempdir().unwrap();
    let file = fleet_file(directory.path(), &ipmi, &redfish);
    let file = file.to_str().unwrap();
    let state = directory.path().join("state");
    let mut controller = TestController::start_in(&state, &["-f", file]);
    let messages = [
        (
            "ipmi-1",
            format!(
                "ipmi {}: authentication failed (wrong user or password)",
                ipmi.address()
            ),
        ),
        (
            "redfish-1",
            format!(
                "redfish {}: authentication failed (wrong user or password)",
                redfish.address()
            ),
        ),
    ];
    // Every output of the run, searched for the secrets at the end.
    let mut outputs = String::new();

    let started = Instant::now();
    let applied = controller.fleet(&["apply", "-f", file, "--yes"]);
    let elapsed = started.elapsed();
    let (out, err) = (stdout(&applied), stderr(&applied));
    outputs.push_str(&out);
    outputs.push_str(&err);
    assert_eq!(applied.status.code(), Some(1), "{out}\n{err}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert!(out.contains("0 done, 2 failed, 0 refused."), "{out}");
    for (name, message) in &messages {
        // The outcome table: one line per machine, its reason the driver's message.
        let row = out
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no table line for {name} in:\n{out}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[1], "failed", "{row}");
        assert!(row.contains(message.as_str()), "{row}");
        assert!(row.contains("power on failed"), "{row}");
        // The progress lines on stderr say it too.
        assert!(
            err.lines()
                .any(|line| line.starts_with(&format!("{name}: failed"))
                    && line.contains(message.as_str())),
            "{err}"
        );
    }

    for (name, message) in &messages {
        let shown = controller.fleet(&["machine", "show", name, "--json"]);
        assert!(shown.status.success(), "{}", stderr(&shown));
        outputs.push_str(&stdout(&shown));
        let detail: Value = serde_json::from_slice(&shown.stdout).unwrap();
        let machine = &detail["machine"];
        assert_eq!(machine["status"], "failed_commissioning", "{detail}");
        assert_eq!(machine["power"], "error", "{detail}");
        let reason = machine["status_reason"].as_str().unwrap_or_default();
        assert!(reason.contains(message.as_str()), "{reason}");

        let shown = controller.fleet(&["machine", "show", name]);
        let text = stdout(&shown);
        outputs.push_str(&text);
        let status = text
            .lines()
            .find(|line| line.starts_with("status "))
            .unwrap_or_default();
        assert!(
            status.contains("failed_commissioning") && status.contains(message.as_str()),
            "{text}"
        );
        let power = text
            .lines()
            .find(|line| line.starts_with("power "))
            .unwrap_or_default();
        assert!(power.contains("error"), "{text}");

        let events = controller.fleet(&["events", name]);
        let text = stdout(&events);
        outputs.push_str(&text);
        let failed: Vec<&str> = text
            .lines()
            .filter(|line| line.contains(message.as_str()))
            .collect();
        // The power event, the status change to failed_commissioning and the apply step.
        assert!(failed.len() >= 2, "{text}");
        assert!(
            failed.iter().any(|line| line.contains("commission failed")),
            "no apply event for the failed step:\n{text}"
        );
        let events = controller.fleet(&["events", name, "--json"]);
        outputs.push_str(&stdout(&events));
    }
    assert!(ipmi.commands().is_empty(), "nothing reached the chassis");
    assert_eq!(
        redfish.raw_system(crate::power_redfish::NODE_1).await["PowerState"],
        "Off"
    );

    // The next plan names the failure too (the machines are held until the BMC answers).
    let planned = controller.fleet(&["plan", "-f", file]);
    let text = stdout(&planned);
    for (_, message) in &messages {
        assert!(text.contains(message.as_str()), "{text}");
    }
    outputs.push_str(&text);
    outputs.push_str(&stderr(&planned));
    let machines = controller.fleet(&["machines", "--json"]);
    outputs.push_str(&stdout(&machines));

    controller.kill();
    outputs.push_str(&controller.log());
    for secret in [
        WRONG_IPMI,
        WRONG_REDFISH,
        IPMI_PASSWORD,
        crate::power_redfish::PASSWORD,
    ] {
        assert!(!outputs.contains(secret), "`{secret}` in:\n{outputs}");
    }
    eprintln!("apply with a power failure: {elapsed:?}");
}
