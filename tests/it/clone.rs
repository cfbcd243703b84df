//! Cloning (issue 13, item 5): `fleet clone` through the real binary against a real controller,
//! and the clone service on both store backends (recorded, replaced, gone with its machine,
//! nothing written by a dry run, the snapshot's `cloned_from`).

use crate::both_backends;
use crate::support::controller::{stderr, stdout, TestController};
use crate::support::machines::{manual_machine, uefi_hardware};
use fleet::model::{Lifecycle, MacAddr, Status};
use fleet::services::clone::{clone_machines, CloneError, CloneRequest};
use fleet::store::{CloneVerdict, Disk, EventFilter, Interface, Store};
use serde_json::{json, Value};

const GIB: i64 = 1 << 30;

/// A disk as commissioning records it: `ssd` (rotational = false) or not, on the ATA bus.
fn disk(name: &str, gib: i64, ssd: bool) -> Disk {
    Disk {
        name: name.into(),
        model: Some("QEMU HARDDISK".into()),
        serial: Some(format!("serial-{name}-{gib}")),
        id_path: None,
        bus: Some("ata".into()),
        size_bytes: gib * GIB,
        block_size: Some(512),
        rotational: Some(!ssd),
    }
}

/// A machine created, commissioned (disks, two interfaces eth0/eth1, UEFI) and put in `status`
/// as the store would hold it after commissioning.
async fn seed(store: &Store, name: &str, index: u8, status: Status, disks: &[Disk]) {
    let macs: Vec<MacAddr> = (0..2)
        .map(|nic| MacAddr([0x52, 0x54, 0x00, 0xc1, index, nic]))
        .collect();
    let new = manual_machine(name, macs.clone());
    store.create_machine(&new, "test").await.unwrap();
    let hardware = uefi_hardware();
    let interfaces: Vec<Interface> = macs
        .iter()
        .enumerate()
        .map(|(at, mac)| Interface {
            name: format!("eth{at}"),
            mac: *mac,
            link_up: Some(true),
            speed_mbps: Some(1000),
            driver: Some("virtio_net".into()),
        })
        .collect();
    store
        .replace_hardware(name, Some("amd64"), &hardware, &interfaces, disks)
        .await
        .unwrap();
    let mut lifecycle = Lifecycle::created(Status::New).unwrap();
    lifecycle.status = status;
    lifecycle.commissioned = true;
    if status == Status::Deployed {
        lifecycle.owner = Some("alice".into());
        lifecycle.deployed_os = Some("ubuntu-24.04".into());
    }
    store
        .write_lifecycle(name, &lifecycle, "test", "commissioned by the test")
        .await
        .unwrap();
}

/// web-1 (the source, deployed: a source may be in any status), web-2 (ready, fits), web-3
/// (ready, boot disk too small), web-4 (deployed, fits).
async fn seed_four(store: &Store) {
    let source = [disk("sda", 32, true), disk("sdb", 500, false)];
    seed(store, "web-1", 1, Status::Deployed, &source).await;
    let fits = [disk("vda", 32, true), disk("vdb", 1000, false)];
    seed(store, "web-2", 2, Status::Ready, &fits).await;
    let small = [disk("sdb", 20, true), disk("sdc", 1000, false)];
    seed(store, "web-3", 3, Status::Ready, &small).await;
    seed(store, "web-4", 4, Status::Deployed, &fits).await;
}

const BOOT_DISK_SMALLER: &str = "web-3 is invalid: destination boot disk sdb (20 GiB) is smaller than source boot disk sda (32 GiB)";
const DEPLOYED: &str =
    "web-4 is invalid: it is deployed; only ready or failed_testing machines can be cloned to";

fn events_of(controller: &TestController, name: &str) -> Vec<Value> {
    let output = controller.fleet(&["events", name, "--json"]);
    assert!(output.status.success(), "events: {}", stderr(&output));
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn reasons_of_kind(events: &[Value], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["kind"] == kind)
        .filter_map(|event| event["reason"].as_str().map(str::to_string))
        .collect()
}

fn generation(controller: &TestController, name: &str) -> i64 {
    let output = controller.fleet(&["machine", "show", name, "--json"]);
    assert!(output.status.success(), "show: {}", stderr(&output));
    let detail: Value = serde_json::from_slice(&output.stdout).unwrap();
    detail["machine"]["generation"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_clone_clones_the_valid_destination_and_refuses_the_others_with_every_reason() {
    let controller = TestController::start();
    let store = controller.store().await;
    seed_four(&store).await;
    let everyone = ["web-1", "web-2", "web-3", "web-4"];
    let generations: Vec<i64> = everyone
        .iter()
        .map(|name| generation(&controller, name))
        .collect();

    // Neither part chosen: refused before anything is asked of the controller.
    let output = controller.fleet(&["clone", "web-1", "--to", "web-2"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("Either storage or interfaces must be chosen."),
        "{}",
        stderr(&output)
    );

    // A dry run: the same verdicts, as JSON, and nothing changes.
    let args = [
        "clone",
        "web-1",
        "--to",
        "web-2",
        "web-3",
        "web-4",
        "--storage",
        "--interfaces",
    ];
    let output = controller.fleet(&[&args[..], &["--dry-run", "--json"]].concat());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let view: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(view["source"], "web-1");
    assert_eq!(view["dry_run"], true);
    assert_eq!(
        (view["storage"].clone(), view["interfaces"].clone()),
        (json!(true), json!(true))
    );
    let results = view["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0],
        json!({
            "destination": "web-2",
            "outcome": "would_clone",
            "reasons": [],
            "disks": { "sda": "vda", "sdb": "vdb" },
            "interfaces": { "eth0": "eth0", "eth1": "eth1" },
        })
    );
    assert_eq!(results[1]["outcome"], "refused");
    assert_eq!(results[1]["reasons"], json!([BOOT_DISK_SMALLER]));
    assert_eq!(results[1]["disks"], Value::Null);
    assert_eq!(results[2]["reasons"], json!([DEPLOYED]));
    for (name, before) in everyone.iter().zip(&generations) {
        assert_eq!(
            generation(&controller, name),
            *before,
            "{name} changed by a dry run"
        );
        let events = events_of(&controller, name);
        assert!(
            events.iter().all(|event| event["action"] != "clone"),
            "a dry run recorded on {name}: {events:?}"
        );
    }
    assert_eq!(store.clone_records().await.unwrap(), Vec::new());

    // The real thing: one line per destination, exit 1 because two were refused.
    let output = controller.fleet(&args);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "web-2: cloned storage and interfaces from web-1 (disks sda→vda, sdb→vdb; interfaces eth0, eth1)",
            &format!("web-3: refused: {BOOT_DISK_SMALLER}"),
            &format!("web-4: refused: {DEPLOYED}"),
        ],
        "{text}"
    );

    // Recorded as events on both machines; the refused ones have their refusal.
    assert!(reasons_of_kind(&events_of(&controller, "web-2"), "clone")
        .contains(&"cloned storage and interfaces from web-1".to_string()));
    assert!(reasons_of_kind(&events_of(&controller, "web-1"), "clone")
        .contains(&"cloned to web-2 (storage and interfaces)".to_string()));
    let refusals = reasons_of_kind(&events_of(&controller, "web-3"), "refused");
    assert!(
        refusals
            .iter()
            .any(|reason| reason.contains("sdb (20 GiB)") && reason.contains("sda (32 GiB)")),
        "{refusals:?}"
    );
    // Only the clone moved a generation: plans made before it no longer apply to web-2.
    assert_eq!(generation(&controller, "web-2"), generations[1] + 1);
    assert_eq!(generation(&controller, "web-3"), generations[2]);

    // The snapshot the planner reads says web-2 was cloned, and from what.
    let (code, observed) = controller.http().get("/observed").await;
    assert_eq!(code, 200, "{observed}");
    let machines = observed["machines"].as_array().unwrap();
    let cloned_from = |name: &str| {
        machines
            .iter()
            .find(|machine| machine["name"] == name)
            .map(|machine| machine["cloned_from"].clone())
            .unwrap()
    };
    assert_eq!(cloned_from("web-2")["source"], "web-1");
    assert_eq!(cloned_from("web-2")["storage"], true);
    assert_eq!(cloned_from("web-2")["interfaces"], true);
    assert_eq!(cloned_from("web-3"), Value::Null);

    // Interfaces alone onto web-3 pass: its small boot disk does not matter then.
    let output = controller.fleet(&["clone", "web-1", "--to", "web-3", "--interfaces"]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(
        stdout(&output).trim(),
        "web-3: cloned interfaces from web-1 (interfaces eth0, eth1)"
    );

    // An unknown source is refused whole.
    let output = controller.fleet(&["clone", "nobody", "--to", "web-2", "--storage"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no machine named `nobody`"),
        "{}",
        stderr(&output)
    );

    // The record goes with its destination.
    let output = controller.fleet(&["machine", "delete", "web-2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let left: Vec<String> = store
        .clone_records()
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(left, ["web-3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_help_says_neither_part_is_assumed() {
    let controller = TestController::start();
    let output = controller.fleet(&["clone", "--help"]);
    assert!(output.status.success());
    let help = stdout(&output);
    assert!(
        help.contains("Neither --storage nor --interfaces is assumed"),
        "{help}"
    );
    assert!(help.contains("--dry-run"), "{help}");
}

fn request(destinations: &[&str], dry_run: bool) -> CloneRequest {
    CloneRequest {
        source: "web-1".into(),
        destinations: destinations.iter().map(|name| name.to_string()).collect(),
        storage: true,
        interfaces: true,
        dry_run,
    }
}

both_backends!(
    clones_are_recorded_replaced_and_deleted_with_their_machine,
    |store| async move {
        seed_four(&store).await;
        let dry = clone_machines(&store, &request(&["web-2", "web-9", "web-2"], true), "ops")
            .await
            .unwrap();
        assert_eq!(dry.len(), 2, "a name given twice is judged once: {dry:?}");
        assert!(matches!(dry[0].verdict, CloneVerdict::WouldClone(_)));
        assert_eq!(
            dry[1].verdict,
            CloneVerdict::Refused(vec!["no machine named `web-9`".into()])
        );
        assert!(store.clone_records().await.unwrap().is_empty());

        let done = clone_machines(&store, &request(&["web-2", "web-3"], false), "ops")
            .await
            .unwrap();
        assert!(matches!(done[0].verdict, CloneVerdict::Cloned(_)));
        assert_eq!(
            done[1].verdict,
            CloneVerdict::Refused(vec![BOOT_DISK_SMALLER.into()])
        );
        let record = store.clone_record("web-2").await.unwrap().unwrap();
        assert_eq!(record.source.as_str(), "web-1");
        assert!(record.storage && record.interfaces);
        let observed = fleet::apply::observe(&store).await.unwrap();
        assert_eq!(
            observed.machine("web-2").unwrap().cloned_from.as_ref(),
            Some(&record)
        );
        assert_eq!(observed.machine("web-3").unwrap().cloned_from, None);

        // Cloned again, interfaces only: the record is replaced, not doubled.
        let again = CloneRequest {
            storage: false,
            ..request(&["web-2"], false)
        };
        clone_machines(&store, &again, "ops").await.unwrap();
        let records = store.clone_records().await.unwrap();
        assert_eq!(records.len(), 1);
        assert!(!records[0].1.storage && records[0].1.interfaces);

        let events = store
            .events(&EventFilter {
                machine: Some("web-1".into()),
                after_id: None,
                limit: None,
            })
            .await
            .unwrap();
        let clones = events.iter().filter(|event| event.kind == "clone").count();
        assert_eq!(clones, 2, "{events:?}");

        // Refused whole: nothing chosen, no destination, an unknown source.
        let nothing = CloneRequest {
            storage: false,
            interfaces: false,
            ..request(&["web-2"], false)
        };
        assert!(matches!(
            clone_machines(&store, &nothing, "ops").await,
            Err(CloneError::NothingChosen)
        ));
        assert!(matches!(
            clone_machines(&store, &request(&[], false), "ops").await,
            Err(CloneError::NoDestinations)
        ));
        let unknown = CloneRequest {
            source: "web-0".into(),
            ..request(&["web-2"], false)
        };
        assert!(matches!(
            clone_machines(&store, &unknown, "ops").await,
            Err(CloneError::UnknownSource(_))
        ));

        // Deleting the destination deletes its record (ON DELETE CASCADE).
        let web_2 = store.machine("web-2").await.unwrap().unwrap();
        let request = fleet::model::ActionRequest::new(fleet::model::Action::Delete, "ops");
        let outcome = fleet::model::decide(&web_2.lifecycle, &request).unwrap();
        let commit = fleet::store::Commit {
            actor: "ops",
            action: Some(fleet::model::Action::Delete),
            reason: None,
            outcome: &outcome,
            image: None,
            decides_power: false,
            erase_mode: None,
        };
        store.commit(&web_2, &commit).await.unwrap();
        assert!(store.clone_records().await.unwrap().is_empty());
    }
);

/// Issue 13's "must show": after `fleet clone` from the command line, the next `fleet plan`
/// gives the destination the source's layout (remapped onto its own disks) and the source's
/// interfaces with a freshly allocated address, shows that the fleet file says otherwise, and
/// offers the `clone_from` TOML that keeps the clone.
#[tokio::test(flavor = "multi_thread")]
async fn after_fleet_clone_the_plan_gives_the_destination_the_sources_layout_and_interfaces() {
    let controller = TestController::start();
    let store = controller.store().await;
    seed_four(&store).await;
    let directory = tempfile::tempdir().unwrap();
    let fleet_file = directory.path().join("fleet.toml");
    std::fs::write(
        &fleet_file,
        r#"
[subnets.lab]
cidr = "10.60.0.0/24"
gateway = "10.60.0.1"
dynamic_range = { start = "10.60.0.200", end = "10.60.0.250" }

[storage_templates.lvm]
layout = "lvm"

[storage_templates.flat]
layout = "flat"

[network_templates.lab]
interfaces = [{ name = "eth0", link = "auto", subnet = "lab" }, { name = "eth1", link = "link_up" }]

[network_templates.single]
interfaces = [{ name = "eth0", link = "dhcp" }]

[[machine]]
name = "web-1"
macs = ["52:54:00:c1:01:00", "52:54:00:c1:01:01"]
storage = "lvm"
network = "lab"
state = "ready"

[[machine]]
name = "web-2"
macs = ["52:54:00:c1:02:00", "52:54:00:c1:02:01"]
storage = "flat"
network = "single"
state = "ready"
"#,
    )
    .unwrap();
    let fleet_path = fleet_file.to_str().unwrap();

    let cloned = controller.fleet(&[
        "clone",
        "web-1",
        "--to",
        "web-2",
        "--storage",
        "--interfaces",
    ]);
    assert!(cloned.status.success(), "clone: {}", stderr(&cloned));

    let planned = controller.fleet(&["plan", "-f", fleet_path, "--json"]);
    assert!(
        planned.status.code() != Some(1),
        "plan: {}",
        stderr(&planned)
    );
    let plan: Value = serde_json::from_slice(&planned.stdout).expect("the plan's JSON");
    let machine = |name: &str| {
        plan["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|machine| machine["name"] == name)
            .unwrap()
            .clone()
    };
    let (source, destination) = (machine("web-1"), machine("web-2"));
    assert_eq!(destination["deployment"]["origin"], "clone of web-1");
    assert_eq!(destination["deployment"]["storage_template"], "lvm");

    // The source's layout, on the destination's disks (web-1 has sda + sdb, web-2 vda + vdb).
    let layout = |planned: &Value| {
        let digest = planned["deployment"]["layout"].as_str().expect("a layout");
        plan["layouts"][digest].clone()
    };
    let (source_layout, cloned_layout) = (layout(&source), layout(&destination));
    assert_eq!(source_layout["disks"][0]["name"], "sda");
    assert_eq!(cloned_layout["disks"][0]["name"], "vda");
    assert_eq!(
        cloned_layout["disks"][0]["partitions"],
        source_layout["disks"][0]["partitions"]
    );
    let (cloned_group, source_group) = (
        &cloned_layout["volume_groups"][0],
        &source_layout["volume_groups"][0],
    );
    assert_eq!(
        cloned_group["logical_volumes"],
        source_group["logical_volumes"]
    );
    assert_eq!(cloned_group["size"], source_group["size"]);
    assert_eq!(cloned_group["members"][0]["disk"], "vda");
    assert_eq!(
        destination["deployment"]["disks"][0]["serial"], "serial-vda-32",
        "the deploy role finds the destination's own disk"
    );

    // The source's interfaces (names, links, subnet), the destination's MACs, a new address.
    let interfaces = |planned: &Value| planned["deployment"]["network"]["interfaces"].clone();
    let (source_nics, cloned_nics) = (interfaces(&source), interfaces(&destination));
    for (copied, original) in cloned_nics
        .as_array()
        .unwrap()
        .iter()
        .zip(source_nics.as_array().unwrap())
    {
        assert_eq!(copied["name"], original["name"]);
        assert_eq!(copied["link"], original["link"]);
        assert_eq!(copied["subnet"], original["subnet"]);
        assert_ne!(copied["mac"], original["mac"]);
    }
    assert_eq!(cloned_nics[0]["mac"], "52:54:00:c1:02:00");
    let address = |planned: &Value| planned["addresses"][0]["ip"].clone();
    assert!(address(&destination).is_string(), "{destination:#}");
    assert_ne!(address(&destination), address(&source));

    // The fleet file does not declare the clone: the plan says so and offers the TOML.
    let offered = destination["clone_toml"]
        .as_str()
        .expect("clone_from offered");
    assert!(
        offered.contains("clone_from") && offered.contains("web-1"),
        "{offered}"
    );
}
