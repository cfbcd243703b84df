//! Which machines of a plan may be applied now: fingerprints still matching, destructive steps
//! allowed and under the policy's cap. Pure: the caller passes the store's records.

use super::ApplyRequest;
use crate::plan::{fingerprint, MachinePlan, ObservedMachine, ObservedState, StepClass};
use crate::store::MachineRecord;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A machine the apply will not touch, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub machine: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    pub accepted: Vec<String>,
    pub refused: Vec<Refusal>,
}

/// Why the machine changed since the plan was made, if it did.
fn changed_since(planned: &MachinePlan, record: Option<&MachineRecord>) -> Option<String> {
    let now = record.map(|record| ObservedState::of(&ObservedMachine::from_record(record)));
    match (&planned.observed, now) {
        (None, None) => None,
        (None, Some(_)) => {
            Some("changed since the plan: it exists now (the plan would add it)".into())
        }
        (Some(_), None) => Some("changed since the plan: it is no longer in the store".into()),
        (Some(then), Some(now)) => {
            if fingerprint(&now) == planned.fingerprint {
                return None;
            }
            let mut differences = then.differences(&now);
            if differences.is_empty() {
                differences.push("fingerprint differs".into());
            }
            Some(format!(
                "changed since the plan: {}",
                differences.join(", ")
            ))
        }
    }
}

fn destructive_steps(planned: &MachinePlan) -> Vec<&'static str> {
    planned
        .steps
        .iter()
        .filter(|step| step.class == StepClass::Destructive)
        .map(|step| step.verb())
        .collect()
}

/// Splits the plan's machines with steps into accepted and refused ones.
pub fn check_plan(request: &ApplyRequest, records: &[MachineRecord]) -> Checked {
    let by_name: HashMap<&str, &MachineRecord> = records
        .iter()
        .map(|record| (record.name.as_str(), record))
        .collect();
    let mut checked = Checked::default();
    let with_steps: Vec<&MachinePlan> = request
        .plan
        .machines
        .iter()
        .filter(|machine| !machine.steps.is_empty())
        .collect();
    let mut destructive_taken: u32 = 0;
    let cap = request.plan.policy.max_destructive_per_apply;
    for planned in &with_steps {
        let record = by_name.get(planned.name.as_str()).copied();
        let destructive = destructive_steps(planned);
        let reason = if let Some(changed) = changed_since(planned, record) {
            Some(changed)
        } else if !destructive.is_empty() && !request.allow_destroy {
            Some(format!(
                "has destructive steps ({}): apply with --allow-destroy (or answer yes)",
                destructive.join(", ")
            ))
        } else if cap.is_some_and(|cap| destructive_taken + destructive.len() as u32 > cap) {
            Some(format!(
                "over the policy's cap of {} destructive steps per apply (max_destructive_per_apply); apply again for the rest",
                cap.unwrap_or_default()
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => checked.refused.push(Refusal {
                machine: planned.name.clone(),
                reason,
            }),
            None => {
                destructive_taken += destructive.len() as u32;
                checked.accepted.push(planned.name.clone());
            }
        }
    }
    if request.strict && !checked.refused.is_empty() {
        let changed: Vec<String> = checked.refused.iter().map(|r| r.machine.clone()).collect();
        for name in std::mem::take(&mut checked.accepted) {
            checked.refused.push(Refusal {
                machine: name,
                reason: format!(
                    "--strict: refused because {} changed or were refused",
                    changed.join(", ")
                ),
            });
        }
        checked.refused.sort_by(|a, b| a.machine.cmp(&b.machine));
    }
    checked
}
