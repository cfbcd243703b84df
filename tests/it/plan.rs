//! The planner: snapshot tests of its renderings over a fixture that has one machine per case,
//! the case rules checked one by one, and the convergence properties.

use fleet::config::Fleet;
use fleet::model::{MacAddr, MachineName, PowerState, Status};
use fleet::plan::{
    plan, render_human, render_json, Change, Observed, ObservedHardware, ObservedMachine,
    Operation, Plan, PowerParams, RenderOptions, StepClass,
};

const FIXTURE: &str = "tests/fixtures/plan/fleet.toml";

pub fn load_fixture() -> Fleet {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    match fleet::config::load(&[path]) {
        Ok(fleet) => fleet,
        Err(diagnostics) => panic!("{}", diagnostics.render(false)),
    }
}

/// A commissioned machine at rest with manual power and ample hardware.
pub fn machine(name: &str, index: u8, status: Status) -> ObservedMachine {
    ObservedMachine {
        name: MachineName::parse(name).expect("a valid name"),
        status,
        previous_status: None,
        status_reason: None,
        power: PowerState::Off,
        power_error: None,
        locked: false,
        owner: None,
        commissioned: true,
        deployed_os: None,
        power_type: "manual".into(),
        power_params: PowerParams::default(),
        image: None,
        tags: vec!["compute".into()],
        arch: Some("amd64".into()),
        macs: vec![MacAddr([0x52, 0x54, 0, 0, 0, index])],
        hardware: ObservedHardware {
            cpus: Some(16),
            memory_mib: Some(65536),
            disk_sizes: vec![1_000_000_000_000],
            ..Default::default()
        },
        generation: 3,
        heard_from: true,
        cloned_from: None,
        deployment: None,
    }
}

fn deployed(name: &str, index: u8, image: &str) -> ObservedMachine {
    ObservedMachine {
        image: Some(image.into()),
        owner: Some("ops".into()),
        power: PowerState::On,
        ..machine(name, index, Status::Deployed)
    }
}

/// The observed side of the fixture: one machine per case the planner distinguishes.
pub fn fixture_observed() -> Observed {
    let mut busy = machine("busy-1", 1, Status::Commissioning);
    busy.commissioned = false;
    busy.hardware = ObservedHardware::default();
    busy.heard_from = false;
    let mut cfg = machine("cfg-1", 2, Status::Ready);
    cfg.tags = vec!["rack-1".into()];
    let mut drift = machine("drift-1", 4, Status::Ready);
    drift.hardware.cpus = Some(4);
    let mut failed = machine("failed-1", 5, Status::FailedCommissioning);
    failed.commissioned = false;
    failed.status_reason = Some("commissioning script 20-memtest failed (exit 1)".into());
    failed.image = Some("noble".into());
    let mut rescue = machine("rescue-1", 11, Status::Ready);
    rescue.image = Some("noble".into());
    let mut locked = deployed("locked-1", 6, "noble");
    locked.locked = true;
    let mut ready = machine("ready-1", 8, Status::Ready);
    ready.image = Some("noble".into());
    let mut stray = machine("stray-1", 12, Status::New);
    stray.power_type = "unconfigured".into();
    stray.commissioned = false;
    stray.tags.clear();
    // Power drift: the fleet file's IPMI parameters as the store holds them.
    let fleet = load_fixture();
    let with_ipmi = |mut machine: ObservedMachine| {
        let spec = fleet
            .machine(machine.name.as_str())
            .expect("in the fixture");
        let (power_type, power_params) = fleet::plan::desired_power(&spec.power);
        machine.power_type = power_type;
        machine.power_params = power_params.into();
        machine
    };
    let mut off = with_ipmi(deployed("off-1", 13, "noble"));
    off.power = PowerState::Off;
    let mut off_locked = with_ipmi(deployed("off-locked-1", 14, "noble"));
    off_locked.power = PowerState::Off;
    off_locked.locked = true;
    let mut power_error = with_ipmi(deployed("power-err-1", 15, "noble"));
    power_error.power = PowerState::Error;
    power_error.power_error = Some(
        "power query failed: ipmi 10.20.0.15: authentication failed (wrong user or password)"
            .into(),
    );
    let records = vec![
        off,
        off_locked,
        power_error,
        busy,
        cfg,
        deployed("db-1", 3, "jammy"),
        drift,
        failed,
        locked,
        ready,
        deployed("redeploy-1", 9, "jammy"),
        deployed("release-1", 10, "noble"),
        rescue,
        stray,
    ];
    let mut observed = Observed {
        machines: records,
        addresses: Vec::new(),
    };
    observed.machines.sort_by(|a, b| a.name.cmp(&b.name));
    observed
}

fn fixture_plan() -> Plan {
    plan(&load_fixture(), &fixture_observed())
}

fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings
}

#[test]
fn plan_human_rendering_is_pinned() {
    let rendered = render_human(&fixture_plan(), RenderOptions::default());
    snapshot_settings().bind(|| insta::assert_snapshot!("plan_human", rendered));
}

#[test]
fn plan_json_rendering_is_pinned() {
    let rendered = render_json(&fixture_plan());
    snapshot_settings().bind(|| insta::assert_snapshot!("plan_json", rendered));
}

#[test]
fn plan_rendering_is_byte_identical_across_runs_and_input_order() {
    let first = fixture_plan();
    let mut shuffled = fixture_observed();
    shuffled.machines.reverse();
    let second = plan(&load_fixture(), &shuffled);
    assert_eq!(first, second);
    let options = RenderOptions {
        colour: false,
        show_unchanged: true,
    };
    assert_eq!(
        render_human(&first, options),
        render_human(&second, options)
    );
    assert_eq!(render_json(&first), render_json(&second));
    let parsed: Plan = serde_json::from_str(&render_json(&first)).expect("the JSON reads back");
    assert_eq!(parsed, first);
}

fn verbs(plan: &Plan, name: &str) -> Vec<&'static str> {
    plan.machine(name)
        .unwrap_or_else(|| panic!("{name} in the plan"))
        .steps
        .iter()
        .map(|step| step.verb())
        .collect()
}

#[test]
fn each_case_gets_its_steps_and_glyph() {
    let plan = fixture_plan();
    let change = |name: &str| plan.machine(name).expect("planned").change;
    assert_eq!(verbs(&plan, "new-1"), ["add", "commission", "deploy"]);
    assert_eq!(change("new-1"), Change::Create);
    assert_eq!(verbs(&plan, "ready-1"), ["allocate"]);
    assert_eq!(change("ready-1"), Change::Update);
    assert_eq!(verbs(&plan, "redeploy-1"), ["release", "deploy"]);
    assert_eq!(change("redeploy-1"), Change::Replace);
    assert_eq!(verbs(&plan, "release-1"), ["release"]);
    assert_eq!(change("release-1"), Change::Destroy);
    assert_eq!(verbs(&plan, "rescue-1"), ["rescue"]);
    assert_eq!(verbs(&plan, "cfg-1"), ["configure"]);
    assert_eq!(change("locked-1"), Change::None);
    assert_eq!(change("busy-1"), Change::Waiting);
    assert_eq!(change("stray-1"), Change::Discovered);
}

#[test]
fn redeploy_reason_names_both_images_and_is_destructive() {
    let plan = fixture_plan();
    let release = &plan.machine("redeploy-1").unwrap().steps[0];
    assert_eq!(release.class, StepClass::Destructive);
    assert!(
        release.reason.contains("image changed jammy → noble"),
        "{}",
        release.reason
    );
    assert_eq!(release.expect, Status::Ready);
}

#[test]
fn a_protected_machine_gets_no_destructive_step_and_the_plan_says_why() {
    let plan = fixture_plan();
    let db = plan.machine("db-1").unwrap();
    assert!(db.steps.is_empty());
    assert_eq!(db.change, Change::Blocked);
    assert!(db.blocked[0].contains("protected"), "{:?}", db.blocked);
}

#[test]
fn a_locked_machine_never_gets_a_destructive_step() {
    let fleet = load_fixture();
    let mut observed = fixture_observed();
    // locked-1 is deployed with jammy now: the fleet wants noble and keeps it locked.
    let locked = observed
        .machines
        .iter_mut()
        .find(|machine| machine.name.as_str() == "locked-1")
        .unwrap();
    locked.image = Some("jammy".into());
    let plan = plan(&fleet, &observed);
    let planned = plan.machine("locked-1").unwrap();
    assert!(planned.steps.is_empty());
    assert!(
        planned.blocked[0].starts_with("locked"),
        "{:?}",
        planned.blocked
    );
}

#[test]
fn hardware_below_expectations_blocks_the_steps() {
    let plan = fixture_plan();
    let drift = plan.machine("drift-1").unwrap();
    assert!(drift.steps.is_empty());
    assert_eq!(
        drift.blocked,
        ["hardware drift: 4 CPUs, expected at least 8"]
    );
}

#[test]
fn a_failed_machine_gets_a_retry_that_names_the_failure() {
    let plan = fixture_plan();
    let failed = plan.machine("failed-1").unwrap();
    assert_eq!(verbs(&plan, "failed-1"), ["commission"]);
    assert!(
        failed.steps[0].reason.contains("20-memtest failed"),
        "{}",
        failed.steps[0].reason
    );
}

#[test]
fn an_in_progress_machine_waits_without_steps() {
    let plan = fixture_plan();
    let busy = plan.machine("busy-1").unwrap();
    assert!(busy.steps.is_empty());
    let waiting = busy.waiting.as_deref().unwrap();
    assert!(waiting.contains("limit 30 minutes"), "{waiting}");
    assert!(waiting.contains("never heard from"), "{waiting}");
}

#[test]
fn a_discovered_machine_comes_with_toml_that_adopts_it() {
    let plan = fixture_plan();
    let stray = plan.machine("stray-1").unwrap();
    let toml = stray.adopt_toml.as_deref().unwrap();
    assert!(toml.contains("name = \"stray-1\""), "{toml}");
    assert!(toml.contains("state = \"new\""), "{toml}");
}

#[test]
fn the_summary_line_counts_steps_per_verb() {
    let plan = fixture_plan();
    assert_eq!(
        fleet::plan::summary_line(&plan),
        "Plan: 1 to add, 1 to configure, 2 to commission, 1 to allocate, 1 to deploy, \
         1 to deploy (destructive), 2 to release (destructive), 1 to rescue, 1 to power-on. \
         4 held back, 1 waiting, 1 discovered."
    );
}

#[test]
fn every_step_has_a_fingerprint_to_check_against() {
    let plan = fixture_plan();
    assert_eq!(plan.machine("new-1").unwrap().fingerprint, "absent");
    let ready = plan.machine("ready-1").unwrap();
    assert_eq!(ready.fingerprint.len(), 16);
    assert!(matches!(ready.steps[0].operation, Operation::Act { .. }));
}

#[test]
fn a_deployed_machine_found_off_gets_a_disruptive_power_on() {
    let plan = fixture_plan();
    let off = plan.machine("off-1").unwrap();
    assert_eq!(verbs(&plan, "off-1"), ["power-on"]);
    assert_eq!(off.steps[0].class, StepClass::Disruptive);
    assert_eq!(off.steps[0].reason, "powered off outside fleet");
    assert_eq!(off.steps[0].expect, Status::Deployed);
    assert_eq!(off.change, Change::Update);
    assert!(off.blocked.is_empty(), "{:?}", off.blocked);
}

#[test]
fn a_locked_machine_found_off_is_held_and_the_plan_says_why() {
    let plan = fixture_plan();
    let off = plan.machine("off-locked-1").unwrap();
    assert!(off.steps.is_empty());
    assert_eq!(off.change, Change::Blocked);
    assert!(
        off.blocked[0].starts_with("powered off outside fleet; locked")
            && off.blocked[0].contains("set locked = false"),
        "{:?}",
        off.blocked
    );
}

#[test]
fn a_power_error_blocks_the_machine_and_names_the_drivers_message() {
    let plan = fixture_plan();
    let failing = plan.machine("power-err-1").unwrap();
    assert!(failing.steps.is_empty());
    assert_eq!(failing.change, Change::Blocked);
    assert_eq!(failing.blocked.len(), 1);
    assert!(
        failing.blocked[0].starts_with(
            "power error: power query failed: ipmi 10.20.0.15: authentication failed \
             (wrong user or password)"
        ),
        "{:?}",
        failing.blocked
    );
}

#[test]
fn a_power_error_keeps_the_configure_step_that_may_fix_it() {
    let fleet = load_fixture();
    let mut observed = fixture_observed();
    let failing = observed
        .machines
        .iter_mut()
        .find(|machine| machine.name.as_str() == "power-err-1")
        .unwrap();
    failing.power_params = serde_json::json!({"address": "10.20.0.15", "user": "root"}).into();
    let plan = plan(&fleet, &observed);
    let planned = plan.machine("power-err-1").unwrap();
    assert_eq!(verbs(&plan, "power-err-1"), ["configure"]);
    assert!(
        planned.blocked[0].starts_with("power error: "),
        "{:?}",
        planned.blocked
    );
}

#[test]
fn adopting_a_deployed_machine_found_off_says_the_plan_powers_it_on() {
    let observed = fixture_observed();
    let off = observed.machine("off-1").unwrap();
    let toml = fleet::plan::adopt_machine_toml(off);
    assert!(toml.starts_with("# found powered off"), "{toml}");
}

/// `Observed::from_json` (the vector reserved up front) reads what the derived reading reads.
#[test]
fn the_snapshot_reader_agrees_with_serde() {
    let observed = fixture_observed();
    let text = serde_json::to_vec_pretty(&observed).unwrap();
    assert_eq!(Observed::from_json(&text).unwrap(), observed);
    let with_more = br#"{"taken_at": 1, "machines": [], "more": {"a": [1]}}"#;
    assert_eq!(
        Observed::from_json(with_more).unwrap(),
        serde_json::from_slice::<Observed>(with_more).unwrap()
    );
    for bad in [
        &b"{}"[..],
        b"{\"machines\": []} x",
        b"[]",
        b"{\"machines\": [], \"machines\": []}",
    ] {
        assert!(
            Observed::from_json(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
        assert!(serde_json::from_slice::<Observed>(bad).is_err());
    }
}

/// The store keeps a power error's message in the power event, not in the record: the observed
/// snapshot (`GET /api/v1/observed`, watch mode) takes it from there, so the plan can name it.
#[tokio::test]
async fn the_observed_snapshot_carries_the_power_drivers_message() {
    use fleet::store::NewMachine;
    let (store, _directory) = crate::support::db::sqlite_store().await;
    let new = |name: &str, last: u8| NewMachine {
        name: MachineName::parse(name).unwrap(),
        status: Status::New,
        macs: vec![MacAddr([0x52, 0x54, 0, 0, 2, last])],
        arch: Some("amd64".into()),
        power_type: "ipmi".into(),
        power_params: serde_json::json!({ "address": "10.0.0.5" }),
        bmc_address: Some("10.0.0.5".into()),
        image: None,
        tags: Vec::new(),
        deployed_os: None,
    };
    store
        .create_machines(&[new("err-1", 1), new("fine-1", 2)], "test")
        .await
        .unwrap();
    let message = "power query failed: ipmi 10.0.0.5: no answer from the BMC (unreachable)";
    store
        .set_power("err-1", PowerState::On, "test", Some("power found on"))
        .await
        .unwrap();
    store
        .set_power("err-1", PowerState::Error, "controller", Some(message))
        .await
        .unwrap();
    store
        .set_power("fine-1", PowerState::Off, "test", None)
        .await
        .unwrap();
    let observed = fleet::apply::observe(&store).await.unwrap();
    let failing = observed.machine("err-1").unwrap();
    assert_eq!(failing.power, PowerState::Error);
    assert_eq!(failing.power_error.as_deref(), Some(message));
    assert_eq!(observed.machine("fine-1").unwrap().power_error, None);
    // The snapshot's JSON reads back, and one without the field still reads.
    let text = serde_json::to_string(&observed).unwrap();
    assert_eq!(serde_json::from_str::<Observed>(&text).unwrap(), observed);
    let old = text.replace(
        &format!(",\"power_error\":{}", serde_json::json!(message)),
        "",
    );
    assert!(!old.contains("power_error"), "{old}");
    let read: Observed = serde_json::from_str(&old).unwrap();
    assert_eq!(read.machine("err-1").unwrap().power_error, None);
}

mod convergence {
    //! Random fleets and observed states: applying the plan to a simulated store and planning
    //! again gives no steps; declaring what is observed (adopt) gives no steps.

    use super::machine;
    use fleet::model::{decide, settle, ActionRequest, Lifecycle, PowerState, Settlement, Status};
    use fleet::plan::{adopt_toml, plan, Observed, ObservedMachine, Operation, Plan, Step};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const STATES: [&str; 7] = [
        "new",
        "ready",
        "allocated",
        "deployed",
        "broken",
        "rescue_mode",
        "retired",
    ];
    const IMAGES: [&str; 2] = ["jammy", "noble"];
    /// Off twice: the state the life-cycle leaves most machines in.
    const POWER_STATES: [PowerState; 5] = [
        PowerState::Off,
        PowerState::Off,
        PowerState::On,
        PowerState::Unknown,
        PowerState::Error,
    ];

    fn header() -> String {
        let mut text = String::new();
        for image in IMAGES {
            text.push_str(&format!(
                "[images.{image}]\nroot = {{ path = \"images/{image}.tar.xz\", format = \"tar-xz\" }}\n\n"
            ));
        }
        text
    }

    #[derive(Debug, Clone)]
    struct DeclaredMachine {
        state: usize,
        image: usize,
        locked: bool,
        tagged: bool,
        protected: bool,
    }

    fn fleet_toml(declared: &BTreeMap<u8, DeclaredMachine>) -> String {
        let mut text = header();
        let protected: Vec<String> = declared
            .iter()
            .filter(|(_, machine)| machine.protected)
            .map(|(index, _)| format!("\"m{index}\""))
            .collect();
        text.push_str(&format!(
            "[policy]\nprotected = {{ machines = [{}] }}\n\n",
            protected.join(", ")
        ));
        for (index, machine) in declared {
            let state = STATES[machine.state];
            text.push_str(&format!(
                "[[machine]]\nname = \"m{index}\"\nmacs = [\"52:54:00:00:01:{index:02x}\"]\nstate = \"{state}\"\nimage = \"{}\"\npower = {{ type = \"manual\" }}\n",
                IMAGES[machine.image]
            ));
            if machine.locked && state == "deployed" {
                text.push_str("locked = true\n");
            }
            if machine.tagged {
                text.push_str("tags = [\"compute\"]\n");
            }
            text.push('\n');
        }
        text
    }

    fn declared_machine() -> impl Strategy<Value = DeclaredMachine> {
        (
            0..STATES.len(),
            0..IMAGES.len(),
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.1),
        )
            .prop_map(
                |(state, image, locked, tagged, protected)| DeclaredMachine {
                    state,
                    image,
                    locked,
                    tagged,
                    protected,
                },
            )
    }

    fn observed_machine(
        index: u8,
        statuses: &'static [Status],
    ) -> impl Strategy<Value = ObservedMachine> {
        (
            prop::sample::select(statuses),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(0..IMAGES.len()),
            any::<bool>(),
            prop::bool::weighted(0.1),
            prop::sample::select(&POWER_STATES[..]),
        )
            .prop_map(
                move |(status, commissioned, locked, image, tagged, unconfigured, power)| {
                    let mut machine = machine(&format!("m{index}"), index, status);
                    machine.power = power;
                    if power == PowerState::Error {
                        machine.power_error = Some("ipmi 10.0.0.1: no answer from the BMC".into());
                    }
                    machine.commissioned = commissioned || status != Status::New;
                    machine.locked =
                        locked && matches!(status, Status::Deployed | Status::Deploying);
                    machine.image = image.map(|at| IMAGES[at].to_string());
                    if matches!(status, Status::Deployed | Status::Deploying)
                        && machine.image.is_none()
                    {
                        machine.image = Some(IMAGES[0].to_string());
                    }
                    if !tagged {
                        machine.tags.clear();
                    }
                    if unconfigured {
                        machine.power_type = "unconfigured".into();
                    }
                    if matches!(status, Status::Deployed | Status::Allocated) {
                        machine.owner = Some("ops".into());
                    }
                    machine
                },
            )
    }

    /// The test's own simulated store: each step by `decide`, then `settle` with success
    /// until the machine rests — independent of the planner's own simulation.
    fn apply_plan(observed: &Observed, plan: &Plan) -> Observed {
        let mut machines: BTreeMap<String, ObservedMachine> = observed
            .machines
            .iter()
            .map(|machine| (machine.name.to_string(), machine.clone()))
            .collect();
        for planned in &plan.machines {
            for step in &planned.steps {
                let current = machines.get(&planned.name).cloned();
                let after = carry_out(current, step);
                machines.insert(planned.name.clone(), after);
            }
        }
        Observed {
            machines: machines.into_values().collect(),
            addresses: Vec::new(),
        }
    }

    fn carry_out(current: Option<ObservedMachine>, step: &Step) -> ObservedMachine {
        match (&step.operation, current) {
            (Operation::Add { machine: new }, None) => {
                let mut machine = machine(new.name.as_str(), new.macs[0].0[5], new.status);
                machine.commissioned = false;
                machine.power = fleet::model::PowerState::Unknown;
                machine.hardware = Default::default();
                machine.power_type = new.power_type.clone();
                machine.power_params = new.power_params.clone().into();
                machine.image = new.image.clone();
                machine.tags = new.tags.clone();
                machine.deployed_os = new.deployed_os.clone();
                machine
            }
            (
                Operation::Configure {
                    power_type,
                    power_params,
                    tags,
                    image,
                    deployment,
                },
                Some(mut machine),
            ) => {
                if deployment.is_some() {
                    machine.deployment = deployment.clone();
                }
                machine.power_type = power_type.clone();
                machine.power_params = power_params.clone().into();
                machine.tags = tags.clone();
                if let Some(image) = image {
                    machine.image = Some(image.clone());
                }
                machine.generation += 1;
                machine
            }
            (Operation::Act { action, options }, Some(mut machine)) => {
                let request = ActionRequest {
                    action: *action,
                    actor: "test".into(),
                    comment: None,
                    options: options.clone(),
                };
                let outcome = decide(&machine.lifecycle(), &request).unwrap_or_else(|refusal| {
                    panic!("{}: planned step refused: {refusal}", machine.name)
                });
                let mut life = outcome.after;
                while life.status.is_in_progress() {
                    life = settle(&life, &Settlement::Succeeded)
                        .expect("settles")
                        .after;
                }
                if let Some(image) = &options.image {
                    machine.image = Some(image.clone());
                }
                set(&mut machine, life);
                machine.generation += 1;
                machine
            }
            (operation, current) => panic!("{operation:?} on {current:?}"),
        }
    }

    fn set(machine: &mut ObservedMachine, life: Lifecycle) {
        machine.status = life.status;
        machine.previous_status = life.previous_status;
        machine.locked = life.locked;
        machine.power = life.power;
        if life.power != PowerState::Error {
            machine.power_error = None;
        }
        machine.owner = life.owner;
        machine.commissioned = life.commissioned;
        machine.deployed_os = life.deployed_os;
    }

    fn steps_left(plan: &Plan) -> Vec<String> {
        plan.machines
            .iter()
            .filter(|machine| !machine.steps.is_empty())
            .map(|machine| {
                let verbs: Vec<&str> = machine.steps.iter().map(Step::verb).collect();
                format!("{}: {}", machine.name, verbs.join(", "))
            })
            .collect()
    }

    fn load(text: &str) -> fleet::config::Fleet {
        match fleet::config::load_str("fleet.toml", text) {
            Ok(fleet) => fleet,
            Err(diagnostics) => panic!("{}\n{text}", diagnostics.render(false)),
        }
    }

    fn observed_of(machines: Vec<ObservedMachine>) -> Observed {
        let mut observed = Observed {
            machines,
            addresses: Vec::new(),
        };
        observed.machines.sort_by(|a, b| a.name.cmp(&b.name));
        observed
    }

    fn fleet_and_store(
    ) -> impl Strategy<Value = (BTreeMap<u8, DeclaredMachine>, Vec<ObservedMachine>)> {
        let declared = prop::collection::btree_map(0u8..24, declared_machine(), 0..10);
        (declared, observed_set(&Status::ALL))
    }

    fn observed_set(statuses: &'static [Status]) -> impl Strategy<Value = Vec<ObservedMachine>> {
        prop::collection::btree_set(0u8..24, 0..10).prop_flat_map(move |indices| {
            indices
                .into_iter()
                .map(|index| observed_machine(index, statuses))
                .collect::<Vec<_>>()
        })
    }

    const EXPRESSIBLE: [Status; 11] = [
        Status::New,
        Status::Ready,
        Status::Allocated,
        Status::Deployed,
        Status::Broken,
        Status::RescueMode,
        Status::Retired,
        Status::Commissioning,
        Status::Deploying,
        Status::Testing,
        Status::Releasing,
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn applying_a_plan_then_planning_again_gives_no_steps((declared, observed) in fleet_and_store()) {
            let fleet = load(&fleet_toml(&declared));
            let observed = observed_of(observed);
            let first = plan(&fleet, &observed);
            let after = apply_plan(&observed, &first);
            let second = plan(&fleet, &after);
            prop_assert!(second.is_empty(), "steps left after applying: {:?}", steps_left(&second));
        }

        #[test]
        fn declaring_what_is_observed_gives_no_steps(machines in observed_set(&EXPRESSIBLE)) {
            let machines: Vec<ObservedMachine> = machines
                .into_iter()
                .filter(|machine| machine.power_type != "unconfigured")
                .collect();
            let observed = observed_of(machines);
            let text = adopt_toml(&observed);
            let planned = plan(&load(&text), &observed);
            // A fleet file cannot ask a deployed machine to stay off: those (and only those)
            // are powered on, and the adopted file says so.
            let expected: Vec<String> = observed
                .machines
                .iter()
                .filter(|machine| {
                    machine.status == Status::Deployed
                        && machine.power == PowerState::Off
                        && !machine.locked
                })
                .map(|machine| format!("{}: power-on", machine.name))
                .collect();
            prop_assert_eq!(steps_left(&planned), expected, "{}", text);
            let after = apply_plan(&observed, &planned);
            let again = plan(&load(&text), &after);
            prop_assert!(again.is_empty(), "steps: {:?}\n{text}", steps_left(&again));
        }
    }
}
