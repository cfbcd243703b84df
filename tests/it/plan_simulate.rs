//! `fleet plan --simulate` (issue 15, item 4) through the real binary: a real controller with
//! three ready machines and their recorded hardware, one of whose disk is too small for its
//! storage template, and two never commissioned. The simulation (a throwaway controller in the
//! CLI's process, simulated machines with the recorded hardware) reports the small disk failing
//! with the layout's reason (found by the plan), a new machine whose template is too big for its
//! simulated shape failing its deployment (found by the executor, after commissioning), and the
//! others deployed; the real controller's machines, events and BMCs are not touched.

use crate::support::controller::{stderr, stdout, TestController};
use crate::support::machines::{manual_machine, uefi_hardware};
use fleet::model::{Lifecycle, MacAddr, Status};
use fleet::store::{Disk, Interface, NewMachine, Store};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const GIB: i64 = 1 << 30;

/// A ready machine in the real store, commissioned (one disk `sda` of `disk_gib`, one interface,
/// UEFI), its power a webhook on `bmc` (a socket nobody may connect to).
async fn seed_ready(store: &Store, name: &str, index: u8, disk_gib: i64, bmc: &str) {
    let mac = mac_of(index);
    seed_new(store, name, index, bmc).await;
    let hardware = uefi_hardware();
    let interface = Interface {
        name: "eth0".into(),
        mac,
        link_up: Some(true),
        speed_mbps: Some(10000),
        driver: Some("ixgbe".into()),
    };
    let disk = Disk {
        name: "sda".into(),
        model: Some("REAL SSD".into()),
        serial: Some(format!("REAL{index:03}")),
        id_path: Some(format!("/dev/disk/by-id/ata-REAL_SSD_REAL{index:03}")),
        bus: Some("ata".into()),
        size_bytes: disk_gib * GIB,
        block_size: Some(512),
        rotational: Some(false),
    };
    store
        .replace_hardware(name, Some("amd64"), &hardware, &[interface], &[disk])
        .await
        .unwrap();
    let mut lifecycle = Lifecycle::created(Status::New).unwrap();
    lifecycle.status = Status::Ready;
    lifecycle.commissioned = true;
    lifecycle.power = fleet::model::PowerState::Off;
    store
        .write_lifecycle(name, &lifecycle, "test", "commissioned by the test")
        .await
        .unwrap();
}

/// A machine the real store knows only by name, MAC and power.
async fn seed_new(store: &Store, name: &str, index: u8, bmc: &str) {
    let new = NewMachine {
        power_type: "webhook".into(),
        power_params: webhook_params(bmc),
        ..manual_machine(name, vec![mac_of(index)])
    };
    store.create_machine(&new, "test").await.unwrap();
}

fn mac_of(index: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x5e, 0x00, index])
}

fn webhook_params(bmc: &str) -> Value {
    json!({
        "on_url": format!("http://{bmc}/on"),
        "off_url": format!("http://{bmc}/off"),
        "query_url": format!("http://{bmc}/status"),
    })
}

/// The fleet file: an image (a real gzip the throwaway controller hashes), a flat template with a
/// 40 GiB root, and the three machines deployed with it, powered by the real BMC `bmc`.
fn fleet_file(directory: &Path, bmc: &str) -> PathBuf {
    let root = directory.join("debian.tgz");
    let gzipped = std::process::Command::new("gzip")
        .arg("-nc")
        .arg(write(directory, "root", b"a root tarball's bytes, hashed"))
        .output()
        .unwrap();
    assert!(gzipped.status.success());
    std::fs::write(&root, &gzipped.stdout).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&gzipped.stdout))
    };
    let mut text = format!(
        r#"[images.debian]
os = "debian"
release = "12"
root = {{ path = "{root}", sha256 = "{sha}", format = "tgz" }}

[storage_templates.big_root]
layout = "flat"
root_size = "40GiB"

[storage_templates.huge_root]
layout = "flat"
root_size = "4000GiB"

[profiles.web]
storage = "big_root"
image = "debian"

[profiles.huge]
storage = "huge_root"
image = "debian"

"#,
        root = root.display()
    );
    let machines = ["web-1", "web-2", "web-3", "web-4", "web-5"];
    for (index, name) in machines.iter().enumerate() {
        let profile = if *name == "web-5" { "huge" } else { "web" };
        text.push_str(&format!(
            r#"[[machine]]
name = "{name}"
macs = ["52:54:00:5e:00:{index:02x}"]
profile = "{profile}"
state = "deployed"
owner = "ops"
power = {{ type = "webhook", on_url = "http://{bmc}/on", off_url = "http://{bmc}/off", query_url = "http://{bmc}/status" }}

"#,
            index = index + 1
        ));
    }
    write(directory, "fleet.toml", text.as_bytes())
}

fn write(directory: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = directory.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// What must not change on the real controller: every machine (with its generation) and every
/// event.
async fn real_state(controller: &TestController) -> (Value, Value) {
    let api = controller.http();
    let (status, observed) = api.get("/observed").await;
    assert_eq!(status, 200, "{observed}");
    let (status, events) = api.get("/events?limit=10000").await;
    assert_eq!(status, 200, "{events}");
    // The machines' events: the controller's own (a boot-traffic summary, a token's use) may
    // come at any time and say nothing of what the simulation did.
    let events = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| !event["machine"].is_null())
        .cloned()
        .collect();
    (observed, Value::Array(events))
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_simulate_reports_the_layout_that_does_not_fit_and_leaves_the_real_controller_alone() {
    // The real controller's own power poll (every 60 s by default, a run here may take longer)
    // would ask the real BMC too: off, so a connection can only come from the simulation.
    let state = tempfile::tempdir().unwrap();
    let real_fleet = write(
        state.path(),
        "real-fleet.toml",
        b"[controller]\ntftp_listen = \"127.0.0.1:0\"\n\n[policy]\npower_poll_seconds = 0\n",
    );
    let controller = TestController::start_in(
        &state.path().join("state"),
        &["-f", real_fleet.to_str().unwrap()],
    );
    // The real machines' BMC: a socket that must never be connected to.
    let real_bmc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    real_bmc.set_nonblocking(true).unwrap();
    let bmc = real_bmc.local_addr().unwrap().to_string();
    let store = controller.store().await;
    seed_ready(&store, "web-1", 1, 64, &bmc).await;
    seed_ready(&store, "web-2", 2, 64, &bmc).await;
    seed_ready(&store, "web-3", 3, 20, &bmc).await;
    // Never commissioned: their stand-ins are commissioned in the simulation first, with a
    // simulated shape; web-5's layout is then found too big when it deploys.
    seed_new(&store, "web-4", 4, &bmc).await;
    seed_new(&store, "web-5", 5, &bmc).await;
    store.close().await;
    let directory = tempfile::tempdir().unwrap();
    let fleet_toml = fleet_file(directory.path(), &bmc);
    let fleet_toml = fleet_toml.to_str().unwrap();
    let before = real_state(&controller).await;
    let events_before = before.1.as_array().map_or(0, Vec::len);
    assert!(events_before > 0, "the seeding left events");

    let output = controller.fleet(&[
        "plan",
        "--simulate",
        "-f",
        fleet_toml,
        "--detailed-exitcode",
    ]);
    let text = stdout(&output);
    // Shown with --nocapture: what a person reads.
    println!("{text}\n{}", stderr(&output));
    assert_eq!(output.status.code(), Some(2), "{text}\n{}", stderr(&output));
    assert!(
        text.contains("simulated 5 machines: 3 would succeed, 2 would fail"),
        "{text}\n{}",
        stderr(&output)
    );
    let web_3 = text
        .lines()
        .find(|line| line.contains("web-3"))
        .unwrap_or_else(|| panic!("web-3 in {text}"));
    assert!(web_3.contains("fail"), "{web_3}");
    // The layout's reason, naming the disk and both sizes (the table may wrap it).
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("does not fit on sda (20 GiB)") && flat.contains("root 40 GiB"),
        "{text}"
    );

    // The same from a saved snapshot, as JSON.
    let (observed, _) = real_state(&controller).await;
    let snapshot = write(
        directory.path(),
        "observed.json",
        observed.to_string().as_bytes(),
    );
    let output = controller.fleet(&[
        "plan",
        "--simulate",
        "-f",
        fleet_toml,
        "--observed",
        snapshot.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // What a failure below is read with: the report, the copy's banner and the apply's progress.
    let shown = format!("{report}\n{}", stderr(&output));
    assert_eq!(report["simulated"], 5, "{shown}");
    assert_eq!(report["would_succeed"], 3, "{shown}");
    assert_eq!(report["would_fail"], 2, "{shown}");
    let outcomes: Vec<(String, String)> = report["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|machine| {
            (
                machine["name"].as_str().unwrap().to_string(),
                machine["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("web-1", "succeed"),
        ("web-2", "succeed"),
        ("web-3", "fail"),
        ("web-4", "succeed"),
        ("web-5", "fail"),
    ]
    .iter()
    .map(|(name, outcome)| (name.to_string(), outcome.to_string()))
    .collect();
    assert_eq!(outcomes, expected, "{shown}");
    let reason = report["machines"][2]["reason"].as_str().unwrap();
    assert!(reason.contains("does not fit on sda (20 GiB)"), "{reason}");
    // Found by the executor: the deployment failed once commissioning had found the disks.
    let reason = report["machines"][4]["reason"].as_str().unwrap();
    assert!(
        reason.contains("failed_deployment") && reason.contains("root 3.9 TiB does not fit on"),
        "{shown}"
    );
    assert_eq!(report["machines"][4]["steps_done"], 1, "{shown}");

    // The real controller: the same machines at the same generations, the same events, and
    // nobody called its BMC.
    let after = real_state(&controller).await;
    assert_eq!(after.0, before.0, "the real machines changed");
    assert_eq!(after.1, before.1, "the real events changed");
    match real_bmc.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the real BMC was called: {other:?}"),
    }
}
