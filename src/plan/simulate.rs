//! Carrying a step out on a copy of a machine, by the life-cycle's own rules: `decide` for the
//! action, then `settle` with success for every in-progress status it passes through. The
//! planner finds its steps this way, and tests use it as a simulated store.

use super::{ObservedHardware, ObservedMachine, Operation, PowerParams, Step};
use crate::model::records::NewMachine;
use crate::model::{decide, settle, ActionRequest, Lifecycle, PowerState, Settlement};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulationError {
    #[error("{0}")]
    Refused(String),
    #[error("machine `{0}` already exists")]
    Exists(String),
    #[error("machine `{0}` does not exist")]
    Absent(String),
}

/// The machine after `step`, or why the life-cycle refuses it. `machine` is `None` when the
/// store has no record yet (only an `add` step applies then).
pub fn apply_step(
    machine: Option<&ObservedMachine>,
    step: &Step,
    actor: &str,
) -> Result<ObservedMachine, SimulationError> {
    match (&step.operation, machine) {
        (Operation::Add { machine: new }, None) => created(new),
        (Operation::Add { machine: new }, Some(_)) => {
            Err(SimulationError::Exists(new.name.to_string()))
        }
        (_, None) => Err(SimulationError::Absent(String::new())),
        (
            Operation::Configure {
                power_type,
                power_params,
                tags,
                image,
                deployment,
            },
            Some(machine),
        ) => {
            let mut after = machine.clone();
            if deployment.is_some() {
                after.deployment = deployment.clone();
            }
            after.power_type = power_type.clone();
            after.power_params = PowerParams::from_value(power_params);
            after.tags = tags.clone();
            if image.is_some() {
                after.image = image.clone();
            }
            after.generation += 1;
            Ok(after)
        }
        (Operation::Act { action, options }, Some(machine)) => {
            let request = ActionRequest {
                action: *action,
                actor: actor.to_string(),
                comment: None,
                options: options.clone(),
            };
            let outcome = decide(&machine.lifecycle(), &request)
                .map_err(|refusal| SimulationError::Refused(refusal.to_string()))?;
            let mut after = machine.clone();
            if let Some(image) = &options.image {
                if action.as_str() == "deploy" {
                    after.image = Some(image.clone());
                }
            }
            let rested = settle_to_rest(outcome.after)?;
            set_lifecycle(&mut after, &rested);
            after.generation += 1;
            Ok(after)
        }
    }
}

/// Settles every in-progress status with success until the machine rests (disk erasing passes
/// through releasing, for example).
pub fn settle_to_rest(mut lifecycle: Lifecycle) -> Result<Lifecycle, SimulationError> {
    // Bounded: no chain of in-progress statuses in the life-cycle is longer than three.
    for _ in 0..8 {
        if !lifecycle.status.is_in_progress() {
            return Ok(lifecycle);
        }
        let outcome = settle(&lifecycle, &Settlement::Succeeded)
            .map_err(|invalid| SimulationError::Refused(invalid.to_string()))?;
        lifecycle = outcome.after;
    }
    Err(SimulationError::Refused(format!(
        "{} does not settle",
        lifecycle.status
    )))
}

fn set_lifecycle(machine: &mut ObservedMachine, lifecycle: &Lifecycle) {
    machine.status = lifecycle.status;
    machine.previous_status = lifecycle.previous_status;
    machine.locked = lifecycle.locked;
    machine.power = lifecycle.power;
    if lifecycle.power != PowerState::Error {
        machine.power_error = None;
    }
    machine.owner = lifecycle.owner.clone();
    machine.commissioned = lifecycle.commissioned;
    machine.deployed_os = lifecycle.deployed_os.clone();
}

fn created(new: &NewMachine) -> Result<ObservedMachine, SimulationError> {
    let mut lifecycle = Lifecycle::created(new.status)
        .map_err(|invalid| SimulationError::Refused(invalid.to_string()))?;
    lifecycle.deployed_os = new.deployed_os.clone();
    let mut tags = new.tags.clone();
    tags.sort();
    let mut machine = ObservedMachine {
        name: new.name.clone(),
        status: lifecycle.status,
        previous_status: None,
        status_reason: None,
        power: lifecycle.power,
        power_error: None,
        locked: false,
        owner: None,
        commissioned: false,
        deployed_os: None,
        power_type: new.power_type.clone(),
        power_params: PowerParams::from_value(&new.power_params),
        image: new.image.clone(),
        tags,
        arch: new.arch.clone(),
        macs: new.macs.clone(),
        hardware: ObservedHardware::default(),
        generation: 1,
        heard_from: false,
        cloned_from: None,
        deployment: None,
    };
    set_lifecycle(&mut machine, &lifecycle);
    Ok(machine)
}
