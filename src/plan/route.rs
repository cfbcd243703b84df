//! The next move of one machine toward its desired status: which action, with which options,
//! how dangerous, and why. The planner asks again after each move (on a simulated copy), so
//! this only has to know the next hop, never the whole path.

use super::{ObservedMachine, StepClass};
use crate::config::MachineSpec;
use crate::model::{Action, ActionOptions, EraseMode, PowerState, Status};

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Move {
    /// The machine is where the fleet file wants it.
    Done,
    /// Nothing the life-cycle offers gets it there; the reason says why.
    Blocked(String),
    Act {
        action: Action,
        options: ActionOptions,
        class: StepClass,
        reason: String,
    },
}

/// What the route needs to know beyond the machine itself.
pub struct RouteContext<'a> {
    pub spec: &'a MachineSpec,
    /// The machine was deployed when the plan started: its next deployment is a redeploy.
    pub was_deployed: bool,
}

fn act(action: Action, class: StepClass, reason: impl Into<String>) -> Move {
    Move::Act {
        action,
        options: ActionOptions::default(),
        class,
        reason: reason.into(),
    }
}

fn act_with(action: Action, options: ActionOptions, class: StepClass, reason: String) -> Move {
    Move::Act {
        action,
        options,
        class,
        reason,
    }
}

/// The image the fleet file wants deployed, if it differs from the one recorded.
fn image_change(machine: &ObservedMachine, spec: &MachineSpec) -> Option<(String, String)> {
    let wanted = spec.image.as_ref()?;
    match &machine.image {
        Some(current) if current == wanted => None,
        current => Some((
            current.clone().unwrap_or_else(|| "(none)".into()),
            wanted.clone(),
        )),
    }
}

pub fn next_move(machine: &ObservedMachine, context: &RouteContext<'_>) -> Move {
    let spec = context.spec;
    let desired = spec.state.status();
    if machine.locked {
        return locked_move(machine, spec, desired);
    }
    if machine.status == desired {
        return arrived_move(machine, context);
    }
    if desired == Status::Broken {
        return broken_move(machine);
    }
    if machine.status.is_failed() {
        return retry_move(machine, desired);
    }
    if desired == Status::RescueMode {
        return if Action::EnterRescue.accepts_status(machine.status) {
            act(
                Action::EnterRescue,
                power_class(machine),
                format!(
                    "the fleet file wants it in rescue mode (it is {})",
                    machine.status
                ),
            )
        } else {
            Move::Blocked(format!(
                "no action takes a {} machine into rescue mode",
                machine.status
            ))
        };
    }
    resting_move(machine, context, desired)
}

/// Disruptive when the machine runs a workload that a power change interrupts.
fn power_class(machine: &ObservedMachine) -> StepClass {
    if machine.status == Status::Deployed {
        StepClass::Disruptive
    } else {
        StepClass::Safe
    }
}

fn locked_move(machine: &ObservedMachine, spec: &MachineSpec, desired: Status) -> Move {
    if !spec.locked {
        return act(Action::Unlock, StepClass::Safe, "the fleet file unlocks it");
    }
    if machine.status == desired && image_change(machine, spec).is_none() {
        return Move::Done;
    }
    Move::Blocked(format!(
        "locked (and the fleet file keeps it locked): it stays {}; set locked = false to let the plan change it",
        machine.status
    ))
}

fn arrived_move(machine: &ObservedMachine, context: &RouteContext<'_>) -> Move {
    let spec = context.spec;
    if machine.status == Status::Deployed {
        if let Some((from, to)) = image_change(machine, spec) {
            let options = ActionOptions {
                erase: Some(EraseMode::Quick),
                ..ActionOptions::default()
            };
            return act_with(
                Action::Release,
                options,
                StepClass::Destructive,
                format!("image changed {from} → {to}: release and erase before redeploying"),
            );
        }
        if powered_off(machine) && can_power_on(machine) {
            // Before locking: a locked machine refuses every action but unlock.
            return act(
                Action::PowerOn,
                StepClass::Disruptive,
                power_on_reason(context),
            );
        }
        if spec.locked {
            return act(Action::Lock, StepClass::Safe, "the fleet file locks it");
        }
    }
    Move::Done
}

/// The reason of the power-on step when a deployed machine was found off.
pub const POWERED_OFF: &str = "powered off outside fleet";

/// Power drift: a deployed machine runs its workload, so it should be on. Only a power state
/// the controller has read counts: `unknown` (manual power, never queried) is not drift, and
/// `error` blocks the machine instead (see the planner).
pub fn powered_off(machine: &ObservedMachine) -> bool {
    machine.status == Status::Deployed && machine.power == PowerState::Off
}

/// What `decide` asks of power-on beyond the status (it is still the judge: the step is
/// simulated); when these fail the planner says why the drift stays instead of planning a step
/// the life-cycle refuses.
fn can_power_on(machine: &ObservedMachine) -> bool {
    machine.owner.is_some() && machine.power_type != "unconfigured"
}

fn power_on_reason(context: &RouteContext<'_>) -> String {
    if context.was_deployed {
        POWERED_OFF.to_string()
    } else {
        // Deployed again along the route (mark-fixed) with the power left off.
        "a deployed machine runs its workload: power it on".to_string()
    }
}

fn broken_move(machine: &ObservedMachine) -> Move {
    if Action::MarkBroken.accepts_status(machine.status) {
        return act(
            Action::MarkBroken,
            power_class(machine),
            "the fleet file marks it broken",
        );
    }
    if Action::ExitRescue.accepts_status(machine.status) {
        return act(
            Action::ExitRescue,
            StepClass::Safe,
            "out of rescue first, to mark it broken",
        );
    }
    Move::Blocked(format!(
        "no action marks a {} machine broken",
        machine.status
    ))
}

/// A failed status: try the failed operation again, naming the failure.
fn retry_move(machine: &ObservedMachine, desired: Status) -> Move {
    let why = machine
        .status_reason
        .clone()
        .unwrap_or_else(|| "no reason recorded".into());
    let reason = format!(
        "retry after {}: {why}",
        machine.status.label().to_lowercase()
    );
    let (action, options, class) = match machine.status {
        Status::FailedCommissioning => (Action::Commission, None, StepClass::Safe),
        Status::FailedTesting => (Action::Test, None, StepClass::Safe),
        Status::FailedDeployment | Status::FailedReleasing => {
            (Action::Release, None, StepClass::Safe)
        }
        Status::FailedDiskErasing => (
            Action::Release,
            Some(EraseMode::Quick),
            StepClass::Destructive,
        ),
        Status::FailedEnteringRescueMode if desired == Status::RescueMode => {
            (Action::EnterRescue, None, StepClass::Safe)
        }
        Status::FailedEnteringRescueMode | Status::FailedExitingRescueMode => {
            (Action::ExitRescue, None, StepClass::Safe)
        }
        other => return Move::Blocked(format!("no retry for {other}")),
    };
    let options = ActionOptions {
        erase: options,
        ..ActionOptions::default()
    };
    act_with(action, options, class, reason)
}

fn resting_move(machine: &ObservedMachine, context: &RouteContext<'_>, desired: Status) -> Move {
    let spec = context.spec;
    let needs_commissioning = matches!(
        desired,
        Status::Ready | Status::Allocated | Status::Deployed
    );
    match machine.status {
        Status::RescueMode => act(
            Action::ExitRescue,
            StepClass::Safe,
            format!("the fleet file wants it {desired}, not in rescue mode"),
        ),
        Status::New if needs_commissioning => act(
            Action::Commission,
            StepClass::Safe,
            format!("commissioning finds its hardware before it can be {desired}"),
        ),
        Status::Broken if machine.commissioned || machine.deployed_os.is_some() => act(
            Action::MarkFixed,
            StepClass::Safe,
            format!("the fleet file wants it {desired}, not broken"),
        ),
        Status::Broken if needs_commissioning => act(
            Action::Commission,
            StepClass::Safe,
            format!("never commissioned: commission it to make it {desired}"),
        ),
        Status::Ready | Status::Allocated if desired == Status::Deployed => deploy_move(context),
        Status::Ready if desired == Status::Allocated => act_with(
            Action::Allocate,
            owner_options(spec),
            StepClass::Safe,
            format!("the fleet file wants it allocated{}", owner_note(spec)),
        ),
        Status::Allocated | Status::Reserved if desired == Status::Ready => act(
            Action::Release,
            StepClass::Safe,
            format!("the fleet file wants it ready, not {}", machine.status),
        ),
        Status::Deployed if matches!(desired, Status::Ready | Status::Allocated | Status::New) => {
            act(
                Action::Release,
                StepClass::Destructive,
                format!("release of a deployed machine: the fleet file wants it {desired}"),
            )
        }
        Status::Missing => Move::Blocked("missing: waits for the machine to be found".into()),
        Status::Retired => Move::Blocked("retired: no action brings a retired machine back".into()),
        current => Move::Blocked(format!(
            "no action of the life-cycle takes a {current} machine to {desired}"
        )),
    }
}

fn owner_options(spec: &MachineSpec) -> ActionOptions {
    ActionOptions {
        owner: spec.owner.clone(),
        ..ActionOptions::default()
    }
}

fn owner_note(spec: &MachineSpec) -> String {
    spec.owner
        .as_ref()
        .map(|owner| format!(" to {owner}"))
        .unwrap_or_default()
}

fn deploy_move(context: &RouteContext<'_>) -> Move {
    let spec = context.spec;
    let image = spec.image.clone();
    let options = ActionOptions {
        image: image.clone(),
        ..owner_options(spec)
    };
    let image_text = image.unwrap_or_else(|| "(no image)".into());
    if context.was_deployed {
        return act_with(
            Action::Deploy,
            options,
            StepClass::Destructive,
            format!("redeploy with {image_text}"),
        );
    }
    act_with(
        Action::Deploy,
        options,
        StepClass::Safe,
        format!("the fleet file wants it deployed with {image_text}"),
    )
}
