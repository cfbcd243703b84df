//! The plan's deployment sections (issue 13 items 3 and 6): every declared machine with templates
//! gets its layout, network configuration and addresses; problems hold the machine; changes
//! against the stored configuration are configure steps, or — on a deployed machine — noted as
//! taking effect on redeploy; clones take the source's configuration. The assertions hold for
//! the stub layouts and networks and for the real ones (structure, not contents).

use crate::plan::machine;
use fleet::config::Fleet;
use fleet::model::{MacAddr, MachineName, PowerState, Status};
use fleet::plan::clone::CloneRecord;
use fleet::plan::{
    allocate, plan, render_human, render_json, AddressOrigin, AppliedDeployment, Change, Firmware,
    HeldAddress, MachinePlan, Observed, ObservedDisk, ObservedInterface, ObservedMachine,
    Operation, Plan, RenderOptions,
};

const FIXTURE: &str = "tests/fixtures/plan/deploy.toml";

fn load_fixture() -> Fleet {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    match fleet::config::load(&[path]) {
        Ok(fleet) => fleet,
        Err(diagnostics) => panic!("{}", diagnostics.render(false)),
    }
}

/// A commissioned machine with two disks, its fleet MAC as eth0, and UEFI.
fn commissioned(name: &str, index: u8, status: Status) -> ObservedMachine {
    let mut observed = machine(name, index, status);
    observed.tags = Vec::new();
    observed.image = Some("noble".into());
    observed.hardware.disk_sizes = vec![480_000_000_000, 480_000_000_000];
    observed.hardware.disks = ["sda", "sdb"]
        .iter()
        .map(|disk| ObservedDisk {
            name: disk.to_string(),
            size_bytes: 480_000_000_000,
            serial: Some(format!("{name}-{disk}")),
            rotational: Some(false),
            ..Default::default()
        })
        .collect();
    observed.hardware.interfaces = vec![ObservedInterface {
        name: "eth0".into(),
        mac: MacAddr([0x52, 0x54, 0, 0, 0, index]),
    }];
    observed.hardware.firmware = Some(Firmware::Uefi);
    observed
}

fn deployed(name: &str, index: u8) -> ObservedMachine {
    ObservedMachine {
        owner: Some("ops".into()),
        power: PowerState::On,
        deployed_os: Some("noble".into()),
        ..commissioned(name, index, Status::Deployed)
    }
}

/// The store's side: every declared machine but fresh-1, ready (live-1 deployed), and an
/// address of another machine where taken-1 asks for its static one.
fn fixture_observed() -> Observed {
    let mut recorded = commissioned("recorded-1", 10, Status::Ready);
    recorded.cloned_from = Some(CloneRecord {
        source: MachineName::parse("deploy-1").unwrap(),
        storage: true,
        interfaces: true,
        at: 1_700_000_000_000,
    });
    let mut live = deployed("live-1", 8);
    live.deployment = Some(AppliedDeployment {
        layout_digest: Some("0000000000000000".into()),
        network_digest: Some("1111111111111111".into()),
        origin: "fleet file".into(),
    });
    let mut firmware_unknown = commissioned("deploy-2", 3, Status::Ready);
    firmware_unknown.hardware.firmware = None;
    let mut machines = vec![
        commissioned("clone-1", 1, Status::Ready),
        commissioned("deploy-1", 2, Status::Ready),
        firmware_unknown,
        commissioned("fixed-1", 4, Status::Ready),
        commissioned("full-1", 6, Status::Ready),
        commissioned("full-2", 7, Status::Ready),
        live,
        commissioned("ready-1", 9, Status::Ready),
        recorded,
        commissioned("taken-1", 11, Status::Ready),
    ];
    machines.sort_by(|a, b| a.name.cmp(&b.name));
    Observed {
        machines,
        addresses: vec![HeldAddress {
            machine: "gone-1".into(),
            interface: "eth0".into(),
            subnet: "lab".into(),
            ip: "10.30.0.60".parse().unwrap(),
        }],
    }
}

fn fixture_plan() -> Plan {
    plan(&load_fixture(), &fixture_observed())
}

fn planned<'p>(plan: &'p Plan, name: &str) -> &'p MachinePlan {
    plan.machine(name)
        .unwrap_or_else(|| panic!("{name} in the plan"))
}

fn verbs(plan: &Plan, name: &str) -> Vec<&'static str> {
    planned(plan, name)
        .steps
        .iter()
        .map(|step| step.verb())
        .collect()
}

fn configure_deployment(machine: &MachinePlan) -> Option<&AppliedDeployment> {
    machine.steps.iter().find_map(|step| match &step.operation {
        Operation::Configure { deployment, .. } => deployment.as_ref(),
        _ => None,
    })
}

#[test]
fn a_machine_to_deploy_has_its_layout_network_and_addresses() {
    let plan = fixture_plan();
    let machine = planned(&plan, "deploy-1");
    assert_eq!(verbs(&plan, "deploy-1"), ["configure", "deploy"]);
    let deployment = machine.deployment.as_ref().expect("a deployment section");
    assert_eq!(deployment.origin, "fleet file");
    assert_eq!(deployment.storage_template.as_deref(), Some("lvm"));
    assert_eq!(deployment.network_template.as_deref(), Some("lab"));
    assert_eq!(deployment.firmware, Some(Firmware::Uefi));
    let digest = deployment.layout.as_ref().expect("a resolved layout");
    assert!(
        plan.layouts.contains_key(digest),
        "{:?}",
        plan.layouts.keys()
    );
    assert_eq!(plan.layouts[digest].digest(), *digest);
    let network = deployment.network.as_ref().expect("a rendered network");
    assert_eq!(deployment.network_digest.as_ref(), Some(&network.digest()));
    assert!(deployment.notes.is_empty(), "{:?}", deployment.notes);
    // The configure step stores exactly this configuration.
    let stored = configure_deployment(machine).expect("the configure step stores it");
    assert_eq!(stored.layout_digest.as_ref(), Some(digest));
    assert_eq!(stored.network_digest, deployment.network_digest);
    let fields: Vec<&str> = machine
        .attributes
        .iter()
        .map(|a| a.field.as_str())
        .collect();
    assert_eq!(fields, ["storage layout", "network"]);
}

#[test]
fn the_addresses_are_the_allocators() {
    let fleet = load_fixture();
    let observed = fixture_observed();
    let plan = plan(&fleet, &observed);
    let addresses = allocate(&fleet, &observed.addresses);
    for machine in &plan.machines {
        let expected: Vec<_> = addresses.of_machine(&machine.name).cloned().collect();
        assert_eq!(machine.addresses, expected, "{}", machine.name);
    }
    let fixed = planned(&plan, "fixed-1");
    assert_eq!(fixed.addresses.len(), 1);
    assert_eq!(fixed.addresses[0].origin, AddressOrigin::Static);
    assert_eq!(fixed.addresses[0].ip.to_string(), "10.30.0.50");
    let fresh = planned(&plan, "fresh-1");
    assert_eq!(fresh.addresses[0].origin, AddressOrigin::Allocated);
}

#[test]
fn machines_with_the_same_template_and_disks_share_one_layout() {
    let plan = fixture_plan();
    let layout = |name: &str| {
        planned(&plan, name)
            .deployment
            .as_ref()
            .and_then(|deployment| deployment.layout.clone())
    };
    assert!(layout("deploy-1").is_some());
    assert_eq!(layout("deploy-1"), layout("ready-1"));
    // Written once in the JSON, not once per machine.
    let json = render_json(&plan);
    let digest = layout("deploy-1").unwrap();
    assert_eq!(
        json.matches(&format!("\"{digest}\": {{")).count(),
        1,
        "{json}"
    );
}

#[test]
fn an_unreported_firmware_is_assumed_and_said() {
    let plan = fixture_plan();
    let deployment = planned(&plan, "deploy-2").deployment.clone().unwrap();
    assert_eq!(deployment.firmware, Some(fleet::plan::FIRMWARE_ASSUMED));
    assert!(
        deployment
            .notes
            .iter()
            .any(|note| note.starts_with("firmware not reported") && note.contains("uefi")),
        "{:?}",
        deployment.notes
    );
}

#[test]
fn a_full_subnet_holds_the_machine_and_names_it() {
    let plan = fixture_plan();
    assert_eq!(planned(&plan, "full-1").addresses.len(), 1);
    let full = planned(&plan, "full-2");
    assert!(full.steps.is_empty());
    assert_eq!(full.change, Change::Blocked);
    assert!(
        full.blocked[0].contains("eth0")
            && full.blocked[0].contains("`tiny`")
            && full.blocked[0].contains("no free address"),
        "{:?}",
        full.blocked
    );
}

#[test]
fn a_static_address_another_machine_holds_holds_the_machine() {
    let plan = fixture_plan();
    let taken = planned(&plan, "taken-1");
    assert!(taken.steps.is_empty());
    assert!(
        taken.blocked[0].contains("10.30.0.60") && taken.blocked[0].contains("gone-1"),
        "{:?}",
        taken.blocked
    );
}

#[test]
fn a_machine_not_yet_commissioned_gets_addresses_and_waits_for_its_layout() {
    let plan = fixture_plan();
    let fresh = planned(&plan, "fresh-1");
    assert_eq!(verbs(&plan, "fresh-1"), ["add", "commission", "deploy"]);
    let deployment = fresh.deployment.as_ref().unwrap();
    assert_eq!(deployment.layout, None);
    assert_eq!(deployment.network, None);
    assert_eq!(deployment.notes.len(), 2, "{:?}", deployment.notes);
    assert!(deployment.notes[0].contains("plan again once fresh-1 has been commissioned"));
}

#[test]
fn a_template_change_is_a_configure_step_on_a_machine_not_deployed() {
    let fleet = load_fixture();
    let mut observed = fixture_observed();
    let now = plan(&fleet, &observed);
    let wanted = now.machine("ready-1").unwrap().deployment.clone().unwrap();
    // What an earlier template gave: another layout, the same network.
    let ready = observed
        .machines
        .iter_mut()
        .find(|machine| machine.name.as_str() == "ready-1")
        .unwrap();
    ready.deployment = Some(AppliedDeployment {
        layout_digest: Some("0123456789abcdef".into()),
        network_digest: wanted.network_digest.clone(),
        origin: "fleet file".into(),
    });
    let plan = plan(&fleet, &observed);
    let machine = planned(&plan, "ready-1");
    assert_eq!(verbs(&plan, "ready-1"), ["configure"]);
    assert_eq!(machine.change, Change::Update);
    assert_eq!(machine.attributes.len(), 1);
    let change = &machine.attributes[0];
    assert_eq!(change.field, "storage layout");
    assert_eq!(
        change.from.as_deref(),
        Some("0123456789abcdef (fleet file)")
    );
    assert_eq!(
        change.to,
        Some(format!("{} (fleet file)", wanted.layout.clone().unwrap()))
    );
    assert_eq!(machine.steps[0].expect, Status::Ready);
    assert!(machine.noted.is_empty());
}

#[test]
fn a_template_change_on_a_deployed_machine_takes_effect_on_redeploy_and_makes_no_step() {
    let plan = fixture_plan();
    let live = planned(&plan, "live-1");
    assert!(live.steps.is_empty(), "{:?}", live.steps);
    assert_eq!(live.change, Change::None);
    let fields: Vec<(&str, &str)> = live
        .noted
        .iter()
        .map(|noted| (noted.field.as_str(), noted.note.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("storage layout", "takes effect on redeploy"),
            ("network", "takes effect on redeploy")
        ]
    );
    assert_eq!(plan.summary.on_redeploy, 1);
    let human = render_human(&plan, RenderOptions::default());
    assert!(human.contains("live-1"), "{human}");
    assert!(
        human.contains("takes effect on redeploy (no step):"),
        "{human}"
    );
}

#[test]
fn a_clone_from_machine_takes_the_sources_layout_and_network_template() {
    let plan = fixture_plan();
    let source = planned(&plan, "deploy-1").deployment.clone().unwrap();
    let clone = planned(&plan, "clone-1").deployment.clone().unwrap();
    assert_eq!(clone.origin, "clone of deploy-1");
    // Its own template says flat; the clone gives it the source's lvm layout, remapped onto
    // its disks (the same names here, so the same layout).
    assert_eq!(clone.storage_template.as_deref(), Some("lvm"));
    let layout_of = |deployment: &fleet::plan::Deployment| {
        let digest = deployment.layout.as_ref().expect("a layout");
        plan.layouts[digest].clone()
    };
    let (source_layout, clone_layout) = (layout_of(&source), layout_of(&clone));
    assert_eq!(clone_layout.volume_groups, source_layout.volume_groups);
    for (copied, original) in clone_layout.disks.iter().zip(&source_layout.disks) {
        assert_eq!(copied.name, original.name);
        assert_eq!(copied.partitions, original.partitions);
    }
    // The destination's own disks: the deploy role finds them by the destination's serials.
    let serials: Vec<_> = clone.disks.iter().map(|disk| disk.serial.clone()).collect();
    assert_eq!(serials, [Some("clone-1-sda".to_string())]);
    let source_serials: Vec<_> = source
        .disks
        .iter()
        .map(|disk| disk.serial.clone())
        .collect();
    assert_eq!(source_serials[0].as_deref(), Some("deploy-1-sda"));
    assert_eq!(clone.network_template, source.network_template);
    // Its own address, never the source's.
    let addresses = |name: &str| planned(&plan, name).addresses.clone();
    assert_eq!(addresses("clone-1").len(), 1);
    assert_ne!(addresses("clone-1")[0].ip, addresses("deploy-1")[0].ip);
}

#[test]
fn a_clone_from_a_source_not_in_the_store_is_held_with_the_reason() {
    let fleet = load_fixture();
    let mut observed = fixture_observed();
    observed
        .machines
        .retain(|machine| machine.name.as_str() != "deploy-1");
    let plan = plan(&fleet, &observed);
    let clone = planned(&plan, "clone-1");
    assert!(clone.steps.is_empty());
    assert_eq!(
        clone.blocked,
        ["clone from deploy-1 refused: the source machine `deploy-1` is not in the store"]
    );
}

#[test]
fn a_recorded_clone_the_fleet_file_does_not_declare_is_noted_with_its_toml() {
    let plan = fixture_plan();
    let recorded = planned(&plan, "recorded-1");
    assert_eq!(recorded.noted.len(), 1);
    assert_eq!(recorded.noted[0].field, "clone_from");
    assert_eq!(
        recorded.noted[0].from.as_deref(),
        Some("{ source = \"deploy-1\", storage = true, interfaces = true }")
    );
    assert_eq!(recorded.noted[0].to, None);
    assert_eq!(
        recorded.clone_toml.as_deref(),
        Some("clone_from = { source = \"deploy-1\", storage = true, interfaces = true }")
    );
    // The record applies: the machine takes the source's configuration.
    let deployment = recorded.deployment.as_ref().unwrap();
    assert_eq!(deployment.origin, "clone of deploy-1");
    // And the TOML it offers, declared, keeps the clone without a noted difference.
    let toml = recorded.clone_toml.clone().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let text = std::fs::read_to_string(path).unwrap().replace(
        "name = \"recorded-1\"\n",
        &format!("name = \"recorded-1\"\n{toml}\n"),
    );
    let fleet = fleet::config::load_str("deploy.toml", &text)
        .unwrap_or_else(|diagnostics| panic!("{}", diagnostics.render(false)));
    let again = fleet::plan::plan(&fleet, &fixture_observed());
    let kept = planned(&again, "recorded-1");
    assert!(kept.noted.is_empty(), "{:?}", kept.noted);
    assert_eq!(kept.clone_toml, None);
    assert_eq!(kept.deployment, recorded.deployment);
}

#[test]
fn once_stored_the_configuration_makes_no_more_steps() {
    let fleet = load_fixture();
    let mut observed = fixture_observed();
    let first = plan(&fleet, &observed);
    for machine in &mut observed.machines {
        let Some(step) = first.machine(machine.name.as_str()).and_then(|m| {
            m.steps
                .iter()
                .find(|step| matches!(step.operation, Operation::Configure { .. }))
        }) else {
            continue;
        };
        *machine = fleet::plan::apply_step(Some(machine), step, "test").unwrap();
    }
    let second = plan(&fleet, &observed);
    for machine in &second.machines {
        assert!(
            configure_deployment(machine).is_none(),
            "{}: {:?}",
            machine.name,
            machine.attributes
        );
    }
    assert_eq!(verbs(&second, "ready-1"), Vec::<&str>::new());
}

#[test]
fn the_json_plan_reads_back_with_its_layouts() {
    let plan = fixture_plan();
    let parsed: Plan = serde_json::from_str(&render_json(&plan)).unwrap();
    assert_eq!(parsed, plan);
    assert!(!parsed.layouts.is_empty());
}

#[test]
fn plan_deployment_human_rendering_is_pinned() {
    let rendered = render_human(&fixture_plan(), RenderOptions::default());
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("plan_deployment_human", rendered));
}

/// What a configure step stores is what the store gives back, and what `observe` hands the
/// planner.
#[tokio::test]
async fn the_stored_configuration_reaches_the_observed_snapshot() {
    use fleet::store::StoredDeployment;
    let (store, _directory) = crate::support::db::sqlite_store().await;
    let new =
        crate::support::machines::manual_machine("cfg-1", vec![MacAddr([0x52, 0x54, 0, 0, 3, 1])]);
    store.create_machines(&[new], "test").await.unwrap();
    let stored = StoredDeployment {
        layout: Some(serde_json::json!({"template": "lvm"})),
        layout_digest: Some("aaaaaaaaaaaaaaaa".into()),
        network: Some(serde_json::json!({"template": "lab"})),
        network_digest: Some("bbbbbbbbbbbbbbbb".into()),
        origin: "fleet file".into(),
    };
    store.store_deployment("cfg-1", &stored).await.unwrap();
    assert_eq!(
        store.deployment("cfg-1").await.unwrap(),
        Some(stored.clone())
    );
    let replaced = StoredDeployment {
        origin: "clone of src-1".into(),
        network: None,
        network_digest: None,
        ..stored
    };
    store.store_deployment("cfg-1", &replaced).await.unwrap();
    assert_eq!(store.deployment("cfg-1").await.unwrap(), Some(replaced));
    assert!(store
        .store_deployment(
            "nobody",
            &StoredDeployment {
                layout: None,
                layout_digest: None,
                network: None,
                network_digest: None,
                origin: "fleet file".into(),
            }
        )
        .await
        .is_err());
    let observed = fleet::apply::observe(&store).await.unwrap();
    assert_eq!(
        observed.machine("cfg-1").unwrap().deployment,
        Some(AppliedDeployment {
            layout_digest: Some("aaaaaaaaaaaaaaaa".into()),
            network_digest: None,
            origin: "clone of src-1".into(),
        })
    );
}

/// A fleet of two: `web-1` (static address written in the file) and `web-2` cloning it.
fn static_clone_fleet() -> Fleet {
    let text = r#"
[subnets.lab]
cidr = "10.30.0.0/24"
gateway = "10.30.0.1"
dynamic_range = { start = "10.30.0.200", end = "10.30.0.250" }

[storage_templates.flat]
layout = "flat"

[network_templates.fixed]
interfaces = [{ name = "eth0", link = "static", subnet = "lab" }]

[[machine]]
name = "web-1"
macs = ["52:54:00:00:00:01"]
storage = "flat"
network = "fixed"
interfaces = [{ name = "eth0", subnet = "lab", ip = "10.30.0.20" }]
state = "ready"

[[machine]]
name = "web-2"
macs = ["52:54:00:00:00:02"]
clone_from = "web-1"
state = "ready"
"#;
    match fleet::config::load_str("clone.toml", text) {
        Ok(fleet) => fleet,
        Err(diagnostics) => panic!("{}", diagnostics.render(false)),
    }
}

/// A clone whose source the store does not have yet waits (a note), it is not held: holding it
/// would stop the destination from being added and commissioned, and so the clone forever.
#[test]
fn a_clone_whose_source_is_not_commissioned_yet_waits_instead_of_holding_the_machine() {
    let observed = Observed {
        machines: Vec::new(),
        addresses: Vec::new(),
    };
    let plan = plan(&static_clone_fleet(), &observed);
    let destination = planned(&plan, "web-2");
    assert!(destination.blocked.is_empty(), "{:?}", destination.blocked);
    assert_eq!(verbs(&plan, "web-2"), ["add", "commission"]);
    let notes = &destination.deployment.as_ref().unwrap().notes;
    assert!(
        notes
            .iter()
            .any(|note| note.contains("waits until web-1 has been commissioned")),
        "{notes:?}"
    );
}

/// MAAS: a static address is never copied; the clone gets a new one on the same subnet — also
/// when the source's template links the interface `static` (with the address in the source's
/// own `interfaces`).
#[test]
fn a_clone_of_a_static_interface_gets_a_new_address_on_the_same_subnet() {
    let observed = Observed {
        machines: vec![
            commissioned("web-1", 1, Status::Ready),
            commissioned("web-2", 2, Status::Ready),
        ],
        addresses: Vec::new(),
    };
    let plan = plan(&static_clone_fleet(), &observed);
    let (source, destination) = (planned(&plan, "web-1"), planned(&plan, "web-2"));
    assert!(destination.blocked.is_empty(), "{:?}", destination.blocked);
    assert_eq!(source.addresses[0].ip.to_string(), "10.30.0.20");
    assert_eq!(source.addresses[0].origin, AddressOrigin::Static);
    let copied = &destination.addresses[0];
    assert_eq!(
        (copied.interface.as_str(), copied.subnet.as_str()),
        ("eth0", "lab")
    );
    assert_eq!(copied.origin, AddressOrigin::Allocated);
    assert_ne!(copied.ip, source.addresses[0].ip);
    let network = destination.deployment.as_ref().unwrap().network.as_ref();
    assert_eq!(network.unwrap().interfaces[0].name, "eth0");
}
