//! `plan(fleet, observed)`: merges the declared machines with the observed ones (both sorted by
//! name) and plans each machine on its own.

use super::deployment::{
    AppliedDeployment, DeploymentContext, LayoutMemo, NotedChange, Resolved,
    TAKES_EFFECT_ON_REDEPLOY,
};
use super::desired::{canonical_json, desired_power, new_machine, normalized_params};
use super::route::{next_move, powered_off, Move, RouteContext, POWERED_OFF};
use super::simulate::apply_step;
use super::{
    adopt_machine_toml, fingerprint, AttributeChange, Change, MachinePlan, Observed,
    ObservedMachine, ObservedState, Operation, Plan, PlanPolicy, Step, StepClass, Summary,
    SummaryCount, PLAN_FORMAT_VERSION,
};
use crate::config::{EnlistedPolicy, Expectations, Fleet, MachineSpec, Policy};
use crate::model::{Action, ActionOptions, PowerState, Status};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The actor the simulation acts as (owners it assigns are never compared).
const PLAN_ACTOR: &str = "fleet-plan";
/// No route in the life-cycle is longer than this; more means the route goes round in circles.
const MAX_STEPS: usize = 12;
/// Written instead of a fingerprint for a machine the store does not have.
pub const ABSENT: &str = "absent";

/// Plans every declared machine and lists the discovered ones. Pure and deterministic: large
/// fleets are planned on several threads, each machine on its own, in the same order.
pub fn plan(fleet: &Fleet, observed: &Observed) -> Plan {
    let mut declared = fleet.machines.iter().collect::<Vec<_>>();
    declared.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen = observed.machines.iter().collect::<Vec<_>>();
    seen.sort_by(|a, b| a.name.cmp(&b.name));
    let mut jobs = Vec::with_capacity(declared.len().max(seen.len()));
    let (mut left, mut right) = (declared.into_iter().peekable(), seen.into_iter().peekable());
    loop {
        let order = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(spec), Some(machine)) => spec.name.cmp(&machine.name),
        };
        jobs.push(match order {
            Ordering::Less => Job::Declared(left.next().expect("peeked"), None),
            Ordering::Greater => Job::Discovered(right.next().expect("peeked")),
            Ordering::Equal => Job::Declared(left.next().expect("peeked"), right.next()),
        });
    }
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let threads = cores.min(jobs.len() / MACHINES_PER_THREAD).max(1);
    let context = DeploymentContext::new(fleet, observed);
    let (machines, layouts) = plan_jobs(&jobs, &fleet.policy, &context, threads);
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        fleet_digest: fleet.digest.clone(),
        policy: plan_policy(&fleet.policy),
        summary: summarize(&machines),
        machines,
        layouts,
    }
}

/// One machine to plan: declared (and observed, if the store has it), or only observed.
enum Job<'a> {
    Declared(&'a MachineSpec, Option<&'a ObservedMachine>),
    Discovered(&'a ObservedMachine),
}

/// Below this many machines one thread plans them all (a thread costs more than it saves).
const MACHINES_PER_THREAD: usize = 5_000;

/// Every layout the machines name, by digest.
type Layouts = BTreeMap<String, super::layout::Layout>;

/// Plans the machines in order: in equal runs on up to as many threads as there are cores.
/// Each thread keeps its own layout memo; their layouts are merged at the end.
fn plan_jobs<'a>(
    jobs: &[Job<'a>],
    policy: &Policy,
    context: &DeploymentContext<'a>,
    threads: usize,
) -> (Vec<MachinePlan>, Layouts) {
    let plan_one = |job: &Job<'a>, memo: &mut LayoutMemo<'a>| match *job {
        Job::Declared(spec, observed) => plan_declared(spec, observed, policy, context, memo),
        Job::Discovered(machine) => plan_discovered(machine, policy),
    };
    let mut layouts = Layouts::new();
    let mut keep = |memo: LayoutMemo<'a>| {
        for (digest, layout) in memo.layouts {
            layouts
                .entry(digest)
                .or_insert_with(|| std::sync::Arc::unwrap_or_clone(layout));
        }
    };
    if threads <= 1 || jobs.is_empty() {
        let mut memo = LayoutMemo::default();
        let machines = jobs.iter().map(|job| plan_one(job, &mut memo)).collect();
        keep(memo);
        return (machines, layouts);
    }
    // Each thread fills its own run of one vector, so no second copy of the plans is made
    // (the `Option`s are turned into plans in place).
    let mut planned: Vec<Option<MachinePlan>> = Vec::new();
    planned.resize_with(jobs.len(), || None);
    let run = jobs.len().div_ceil(threads);
    let memos = std::thread::scope(|scope| {
        let workers: Vec<_> = jobs
            .chunks(run)
            .zip(planned.chunks_mut(run))
            .map(|(chunk, slots)| {
                scope.spawn(move || {
                    let mut memo = LayoutMemo::default();
                    for (job, slot) in chunk.iter().zip(slots) {
                        *slot = Some(plan_one(job, &mut memo));
                    }
                    memo
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a planning thread does not panic"))
            .collect::<Vec<_>>()
    });
    memos.into_iter().for_each(&mut keep);
    let machines = planned
        .into_iter()
        .map(|machine| machine.expect("every machine planned"))
        .collect();
    (machines, layouts)
}

fn plan_policy(policy: &Policy) -> PlanPolicy {
    let timeout_minutes = Status::ALL
        .into_iter()
        .filter_map(|status| {
            policy
                .timeouts
                .for_status(status)
                .map(|minutes| (status, minutes))
        })
        .collect();
    PlanPolicy {
        parallelism: policy.parallelism.max(1),
        max_destructive_per_apply: policy.max_destructive_per_apply,
        timeout_minutes,
    }
}

fn empty_plan(name: &str, declared: bool, observed: Option<&ObservedMachine>) -> MachinePlan {
    let state = observed.map(ObservedState::of);
    MachinePlan {
        name: name.to_string(),
        declared,
        change: Change::None,
        fingerprint: state
            .as_ref()
            .map(fingerprint)
            .unwrap_or_else(|| ABSENT.to_string()),
        observed: state,
        desired: None,
        steps: Vec::new(),
        attributes: Vec::new(),
        waiting: None,
        blocked: Vec::new(),
        adopt_toml: None,
        addresses: Vec::new(),
        deployment: None,
        noted: Vec::new(),
        clone_toml: None,
    }
}

fn plan_declared<'a>(
    spec: &'a MachineSpec,
    observed: Option<&'a ObservedMachine>,
    policy: &Policy,
    context: &DeploymentContext<'a>,
    memo: &mut LayoutMemo<'a>,
) -> MachinePlan {
    let mut planned = empty_plan(spec.name.as_str(), true, observed);
    planned.desired = Some(spec.state.status());
    let Resolved {
        deployment,
        addresses,
        problems,
        noted,
        clone_toml,
    } = context.resolve(spec, observed, memo);
    planned.addresses = addresses;
    planned.deployment = deployment;
    planned.noted = noted;
    planned.clone_toml = clone_toml;
    // Borrowed when the store has the machine: the route copies it only once a step changes it.
    let start: Cow<'_, ObservedMachine> = match observed {
        None if !problems.is_empty() => {
            planned.blocked = problems;
            return finish(planned);
        }
        None => {
            let step = add_step(spec);
            let created = apply_step(None, &step, PLAN_ACTOR);
            planned.steps.push(step);
            match created {
                Ok(created) => Cow::Owned(created),
                Err(error) => {
                    planned.blocked.push(error.to_string());
                    return finish(planned);
                }
            }
        }
        Some(machine) => {
            if machine.status.is_in_progress() {
                planned.waiting = Some(waiting_for(machine, policy));
                return finish(planned);
            }
            let drift = hardware_drift(&spec.expect, machine);
            if !drift.is_empty() {
                planned.blocked = drift;
                return finish(planned);
            }
            // A plan error of its deployment (addresses, layout, network, clone) holds it.
            if !problems.is_empty() {
                planned.blocked = problems;
                return finish(planned);
            }
            Cow::Borrowed(machine)
        }
    };
    let (configure, configured) = power_and_tags(spec, &start);
    let stored = observed.and_then(|machine| machine.deployment.as_ref());
    if start.power == PowerState::Error {
        // The configure step stays: new power parameters may be the fix.
        let configure = with_image(configure, spec, &configured);
        let configure = with_deployment(
            configure,
            &configured,
            &configured,
            &[],
            stored,
            &mut planned,
        );
        if let Some((step, changes)) = configure {
            planned.steps.push(step);
            planned.attributes = changes;
        }
        planned.blocked.push(power_error_hold(&start));
        return finish(planned);
    }
    let context = RouteContext {
        spec,
        was_deployed: start.status == Status::Deployed,
    };
    let routed = route(&configured, &context);
    // The image to record is decided by where the route ends: a machine that ends deployed
    // has its image on disk (set by deploy), anything else just records what to deploy next.
    let end = routed
        .as_ref()
        .map(|(_, end)| end.as_ref())
        .unwrap_or(configured.as_ref());
    let configure = with_image(configure, spec, end);
    if let Ok((_, end)) = &routed {
        planned.blocked.extend(power_drift_left(end));
    }
    let (route_steps, rests_at) = match routed {
        Ok((steps, end)) => match destructive_hold(spec, &start, policy, &steps) {
            Some(reason) => {
                planned.blocked.push(reason);
                (Vec::new(), configured.clone())
            }
            None => (steps, end),
        },
        Err(reason) => {
            planned.blocked.push(reason);
            (Vec::new(), configured.clone())
        }
    };
    let configure = with_deployment(
        configure,
        &configured,
        &rests_at,
        &route_steps,
        stored,
        &mut planned,
    );
    if let Some((step, changes)) = configure {
        planned.steps.push(step);
        planned.attributes = changes;
    }
    planned.steps.extend(route_steps);
    finish(planned)
}

/// Adds the deployment configuration to the configure step (making one if need be) when the
/// fleet file's layout or network differs from the stored one — unless the machine keeps an
/// installed system this plan does not redeploy: then the differences are noted, "takes effect
/// on redeploy", and make no step.
fn with_deployment(
    configure: Option<(Step, Vec<AttributeChange>)>,
    configured: &ObservedMachine,
    rests_at: &ObservedMachine,
    route_steps: &[Step],
    stored: Option<&AppliedDeployment>,
    planned: &mut MachinePlan,
) -> Option<(Step, Vec<AttributeChange>)> {
    let Some((applied, deployment_changes)) = planned
        .deployment
        .as_ref()
        .and_then(|deployment| deployment.changes_from(stored))
    else {
        return configure;
    };
    let deploys = route_steps.iter().any(|step| {
        matches!(
            step.operation,
            Operation::Act {
                action: Action::Deploy,
                ..
            }
        )
    });
    let installed = rests_at.status == Status::Deployed || rests_at.deployed_os.is_some();
    if installed && !deploys {
        planned
            .noted
            .extend(deployment_changes.into_iter().map(|change| NotedChange {
                field: change.field,
                from: change.from,
                to: change.to,
                note: TAKES_EFFECT_ON_REDEPLOY.into(),
            }));
        return configure;
    }
    let (mut step, mut changes) = configure.unwrap_or_else(|| {
        let step = Step {
            operation: Operation::Configure {
                power_type: configured.power_type.clone(),
                power_params: normalized_params(&configured.power_params.to_value()),
                tags: configured.tags.clone(),
                image: None,
                deployment: None,
            },
            class: StepClass::Safe,
            reason: String::new(),
            // It comes first, before the route moves the machine.
            expect: configured.status,
        };
        (step, Vec::new())
    });
    if let Operation::Configure { deployment, .. } = &mut step.operation {
        *deployment = Some(applied);
    }
    changes.extend(deployment_changes);
    let fields: Vec<&str> = changes.iter().map(|change| change.field.as_str()).collect();
    step.reason = format!("the fleet file sets {}", fields.join(", "));
    Some((step, changes))
}

fn add_step(spec: &MachineSpec) -> Step {
    let new = new_machine(spec);
    let expect = new.status;
    let reason = if spec.live {
        "declared in the fleet file; added live (already running)".to_string()
    } else {
        "declared in the fleet file, not yet in the store; waits for it to netboot once powered"
            .to_string()
    };
    Step {
        operation: Operation::Add { machine: new },
        class: StepClass::Safe,
        reason,
        expect,
    }
}

/// The configure step for power and tags, if they differ, and the machine after it (borrowed
/// when nothing changes).
fn power_and_tags<'a>(
    spec: &MachineSpec,
    machine: &'a ObservedMachine,
) -> (
    Option<(Step, Vec<AttributeChange>)>,
    Cow<'a, ObservedMachine>,
) {
    let (power_type, power_params) = desired_power(&spec.power);
    let mut changes = Vec::new();
    // Compared as text first: the store holds what a configure step wrote, so most match.
    let power_text_wanted = serde_json::to_string(&power_params).unwrap_or_default();
    if power_type != machine.power_type
        || !machine
            .power_params
            .equal_normalized(&power_params, &power_text_wanted)
    {
        let observed_params = normalized_params(&machine.power_params.to_value());
        changes.push(AttributeChange {
            field: "power".into(),
            from: Some(power_text(&machine.power_type, &observed_params)),
            to: Some(power_text(&power_type, &power_params)),
        });
    }
    // The fleet's tags come sorted and without duplicates: compared as they are, copied only
    // for a step.
    let tags: Cow<'_, [String]> = if spec.tags.windows(2).all(|pair| pair[0] < pair[1]) {
        Cow::Borrowed(&spec.tags)
    } else {
        let mut tags = spec.tags.clone();
        tags.sort();
        tags.dedup();
        Cow::Owned(tags)
    };
    if *tags != machine.tags {
        changes.push(AttributeChange {
            field: "tags".into(),
            from: Some(canonical_json(&serde_json::json!(machine.tags))),
            to: Some(canonical_json(&serde_json::json!(tags))),
        });
    }
    if changes.is_empty() {
        return (None, Cow::Borrowed(machine));
    }
    let step = Step {
        operation: Operation::Configure {
            power_type,
            power_params,
            tags: tags.into_owned(),
            image: None,
            deployment: None,
        },
        class: StepClass::Safe,
        reason: String::new(),
        expect: machine.status,
    };
    let after = match apply_step(Some(machine), &step, PLAN_ACTOR) {
        Ok(after) => Cow::Owned(after),
        Err(_) => Cow::Borrowed(machine),
    };
    (Some((step, changes)), after)
}

/// Adds the image to the configure step (making one if need be) when the machine's record
/// should name another image once the route ends; sets the step's reason.
fn with_image(
    configure: Option<(Step, Vec<AttributeChange>)>,
    spec: &MachineSpec,
    end: &ObservedMachine,
) -> Option<(Step, Vec<AttributeChange>)> {
    let image = spec
        .image
        .as_ref()
        .filter(|wanted| end.image.as_ref() != Some(*wanted))
        .filter(|_| !matches!(end.status, Status::Deployed | Status::Deploying))
        .cloned();
    let (mut step, mut changes) = match (configure, &image) {
        (None, None) => return None,
        (Some(configure), _) => configure,
        (None, Some(_)) => {
            let step = Step {
                operation: Operation::Configure {
                    power_type: end.power_type.clone(),
                    power_params: normalized_params(&end.power_params.to_value()),
                    tags: end.tags.clone(),
                    image: None,
                    deployment: None,
                },
                class: StepClass::Safe,
                reason: String::new(),
                expect: end.status,
            };
            (step, Vec::new())
        }
    };
    if let (Some(wanted), Operation::Configure { image: slot, .. }) = (&image, &mut step.operation)
    {
        changes.push(AttributeChange {
            field: "image".into(),
            from: end.image.as_ref().map(|image| format!("{image:?}")),
            to: Some(format!("{wanted:?}")),
        });
        *slot = Some(wanted.clone());
    }
    let fields: Vec<&str> = changes.iter().map(|change| change.field.as_str()).collect();
    step.reason = format!("the fleet file sets {}", fields.join(", "));
    Some((step, changes))
}

fn power_text(power_type: &str, params: &serde_json::Value) -> String {
    let mut object = serde_json::Map::new();
    object.insert("type".into(), serde_json::json!(power_type));
    if let serde_json::Value::Object(members) = params {
        for (key, value) in members {
            object.insert(key.clone(), value.clone());
        }
    }
    canonical_json(&serde_json::Value::Object(object))
}

/// The life-cycle steps from `start` to the desired status, or why there are none. The machine
/// at the end is `start` itself when no step was needed.
fn route<'a>(
    start: &'a ObservedMachine,
    context: &RouteContext<'_>,
) -> Result<(Vec<Step>, Cow<'a, ObservedMachine>), String> {
    let mut machine = Cow::Borrowed(start);
    let mut steps = Vec::new();
    for _ in 0..MAX_STEPS {
        let (action, options, class, reason) = match next_move(&machine, context) {
            Move::Done => return Ok((steps, machine)),
            Move::Blocked(reason) => return Err(reason),
            Move::Act {
                action,
                options,
                class,
                reason,
            } => (action, options, class, reason),
        };
        let mut step = act_step(action, options, class, reason);
        machine = Cow::Owned(
            apply_step(Some(&machine), &step, PLAN_ACTOR)
                .map_err(|refusal| format!("the life-cycle refuses the next step: {refusal}"))?,
        );
        step.expect = machine.status;
        steps.push(step);
    }
    Err(format!(
        "no route to {} within {MAX_STEPS} steps",
        context.spec.state.as_str()
    ))
}

fn act_step(action: Action, options: ActionOptions, class: StepClass, reason: String) -> Step {
    Step {
        operation: Operation::Act { action, options },
        class,
        reason,
        expect: Status::New,
    }
}

/// Why destructive steps may not be planned for this machine, if they may not.
fn destructive_hold(
    spec: &MachineSpec,
    start: &ObservedMachine,
    policy: &Policy,
    steps: &[Step],
) -> Option<String> {
    let destructive: Vec<&str> = steps
        .iter()
        .filter(|step| step.class == StepClass::Destructive)
        .map(Step::verb)
        .collect();
    if destructive.is_empty() {
        return None;
    }
    let what = destructive.join(", ");
    if start.locked {
        return Some(format!(
            "locked: a locked machine never gets a destructive step ({what}); unlock it first \
             (fleet machine unlock {})",
            spec.name
        ));
    }
    if policy.protected.covers(spec) {
        return Some(format!(
            "protected by [policy] protected: destructive steps held back ({what})"
        ));
    }
    None
}

/// Why a machine whose power is in error gets no life-cycle step, naming the driver's message.
fn power_error_hold(machine: &ObservedMachine) -> String {
    let message = machine
        .power_error
        .as_deref()
        .unwrap_or("the last power command or query failed (fleet events has the message)");
    format!(
        "power error: {message}; no life-cycle step until the power driver answers again \
         (check the BMC and the machine's power parameters)"
    )
}

/// A deployed machine still off where the route ends: power-on is not possible (locked, no
/// owner, unconfigured power), so the plan says why instead of planning a refused step.
fn power_drift_left(end: &ObservedMachine) -> Option<String> {
    if !powered_off(end) {
        return None;
    }
    let power_on = act_step(
        Action::PowerOn,
        ActionOptions::default(),
        StepClass::Disruptive,
        String::new(),
    );
    if end.locked {
        return Some(format!(
            "{POWERED_OFF}; locked (and the fleet file keeps it locked), so the plan does not \
             power it on: power it on by hand, or set locked = false"
        ));
    }
    let why = match apply_step(Some(end), &power_on, PLAN_ACTOR) {
        Err(refusal) => refusal.to_string(),
        Ok(_) => "the plan has no route to power it on".to_string(),
    };
    Some(format!("{POWERED_OFF}; the plan cannot power it on: {why}"))
}

/// Hardware below the machine's expectations: each shortfall blocks its steps.
fn hardware_drift(expect: &Expectations, machine: &ObservedMachine) -> Vec<String> {
    let hardware = &machine.hardware;
    if !hardware.is_known() {
        return Vec::new();
    }
    let mut drift = Vec::new();
    if let (Some(minimum), Some(cpus)) = (expect.min_cpus, hardware.cpus) {
        if cpus < i64::from(minimum) {
            drift.push(format!(
                "hardware drift: {cpus} CPUs, expected at least {minimum}"
            ));
        }
    }
    if let (Some(minimum), Some(memory)) = (expect.min_memory_mib, hardware.memory_mib) {
        if memory < minimum as i64 {
            drift.push(format!(
                "hardware drift: {memory} MiB of memory, expected at least {minimum} MiB"
            ));
        }
    }
    let large_enough = |size: &&i64| {
        expect
            .min_disk_size_bytes
            .is_none_or(|minimum| **size >= minimum as i64)
    };
    let wanted_disks = expect
        .min_disks
        .or(expect.min_disk_size_bytes.map(|_| 1))
        .unwrap_or(0);
    let disks = hardware.disk_sizes.iter().filter(large_enough).count();
    if disks < wanted_disks as usize {
        let size = expect
            .min_disk_size_bytes
            .map(|minimum| format!(" of at least {}", crate::config::human_bytes(minimum)))
            .unwrap_or_default();
        drift.push(format!(
            "hardware drift: {disks} disks{size}, expected at least {wanted_disks}"
        ));
    }
    drift
}

fn waiting_for(machine: &ObservedMachine, policy: &Policy) -> String {
    let limit = policy
        .timeouts
        .for_status(machine.status)
        .map(|minutes| format!(" (limit {minutes} minutes)"))
        .unwrap_or_default();
    let heard = if machine.heard_from {
        ""
    } else {
        "; never heard from yet: it must netboot"
    };
    format!(
        "{}: waits for the machine to report{limit}{heard}",
        machine.status.label()
    )
}

fn plan_discovered(machine: &ObservedMachine, policy: &Policy) -> MachinePlan {
    let mut planned = empty_plan(machine.name.as_str(), false, Some(machine));
    planned.adopt_toml = Some(adopt_machine_toml(machine));
    if machine.status.is_in_progress() {
        planned.waiting = Some(waiting_for(machine, policy));
    } else if policy.enlisted == EnlistedPolicy::Commission && machine.status == Status::New {
        let step = act_step(
            Action::Commission,
            ActionOptions::default(),
            StepClass::Safe,
            "enlisted on its own; [policy] enlisted = \"commission\"".into(),
        );
        match apply_step(Some(machine), &step, PLAN_ACTOR) {
            Ok(after) => planned.steps.push(Step {
                expect: after.status,
                ..step
            }),
            Err(refusal) => planned.blocked.push(refusal.to_string()),
        }
    }
    finish(planned)
}

/// Sets the machine's change glyph from what was planned; its steps are kept in a vector of
/// their length (pushed one by one, one step took the room of four: 800 bytes more for each of
/// the tens of thousands of machines a large plan moves).
fn finish(mut planned: MachinePlan) -> MachinePlan {
    planned.steps = super::exact(planned.steps);
    let is_add = |step: &Step| matches!(step.operation, Operation::Add { .. });
    let redeploy = planned.steps.iter().any(|step| {
        step.class == StepClass::Destructive
            && matches!(
                step.operation,
                Operation::Act {
                    action: Action::Deploy,
                    ..
                }
            )
    });
    let destructive = planned
        .steps
        .iter()
        .any(|step| step.class == StepClass::Destructive);
    planned.change = if !planned.declared && planned.steps.is_empty() {
        Change::Discovered
    } else if planned.steps.iter().any(is_add) {
        Change::Create
    } else if planned.waiting.is_some() {
        Change::Waiting
    } else if redeploy {
        Change::Replace
    } else if destructive {
        Change::Destroy
    } else if !planned.steps.is_empty() {
        Change::Update
    } else if !planned.blocked.is_empty() {
        Change::Blocked
    } else {
        Change::None
    };
    planned
}

const VERB_ORDER: [&str; 2] = ["add", "configure"];

fn verb_rank(verb: &str) -> usize {
    VERB_ORDER
        .iter()
        .position(|known| *known == verb)
        .or_else(|| {
            Action::ALL
                .iter()
                .position(|action| action.cli_name() == verb)
                .map(|at| at + VERB_ORDER.len())
        })
        .unwrap_or(usize::MAX)
}

fn summarize(machines: &[MachinePlan]) -> Summary {
    let mut counts: Vec<SummaryCount> = Vec::new();
    for step in machines.iter().flat_map(|machine| &machine.steps) {
        let destructive = step.class == StepClass::Destructive;
        match counts
            .iter_mut()
            .find(|count| count.verb == step.verb() && count.destructive == destructive)
        {
            Some(count) => count.count += 1,
            None => counts.push(SummaryCount {
                verb: step.verb().to_string(),
                destructive,
                count: 1,
            }),
        }
    }
    counts.sort_by_key(|count| (verb_rank(&count.verb), count.destructive));
    Summary {
        destructive_steps: counts
            .iter()
            .filter(|count| count.destructive)
            .map(|count| count.count)
            .sum(),
        steps: counts,
        machines_changing: machines.iter().filter(|m| !m.steps.is_empty()).count(),
        blocked: machines.iter().filter(|m| !m.blocked.is_empty()).count(),
        waiting: machines.iter().filter(|m| m.waiting.is_some()).count(),
        discovered: machines.iter().filter(|m| !m.declared).count(),
        on_redeploy: machines
            .iter()
            .filter(|m| m.noted.iter().any(|n| n.note == TAKES_EFFECT_ON_REDEPLOY))
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Planned on several threads, the machines (and the layouts they name) come out as one
    /// thread plans them.
    #[test]
    fn threads_plan_what_one_thread_plans() {
        let text = crate::config::synthetic_fleet_toml(301);
        let fleet = match crate::config::load_str("synthetic.toml", &text) {
            Ok(fleet) => fleet,
            Err(diagnostics) => panic!("{}", diagnostics.render(false)),
        };
        let observed = Observed::default();
        let context = DeploymentContext::new(&fleet, &observed);
        let jobs: Vec<Job<'_>> = fleet
            .machines
            .iter()
            .map(|spec| Job::Declared(spec, None))
            .collect();
        let one = plan_jobs(&jobs, &fleet.policy, &context, 1);
        assert_eq!(one.0.len(), 301);
        assert!(one.0.iter().all(|machine| machine.addresses.len() == 1));
        for threads in [2, 3, 4, 300] {
            assert_eq!(
                plan_jobs(&jobs, &fleet.policy, &context, threads),
                one,
                "{threads} threads"
            );
        }
    }
}
