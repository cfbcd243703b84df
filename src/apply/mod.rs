//! The executor: carries an approved [`Plan`] out through the life-cycle's actions, in the
//! controller.
//!
//! Invariants:
//! - Applies are queued by any controller's API ([`queue_apply`]) and carried out by the
//!   leader only ([`Executor`], one of the leader's duties): a controller that does not lead
//!   runs no step.
//! - One apply at a time per store: admission refuses an apply while another is queued or
//!   applying, and the executor holds the `apply` lock in the leader's name
//!   (`CONTROLLER_ID/INSTANCE`), refreshed while the apply runs. A lock is taken over only when
//!   its holder no longer leads (its term is over, so its writes are fenced) or stopped
//!   refreshing for [`STALE_LOCK_MS`] by the database's clock.
//! - An apply left applying by an earlier leader is resumed once, at the start of the next term,
//!   and its tasks end with the term that runs them.
//! - Only machines whose fingerprint still matches what the plan saw are carried out; the others
//!   are refused with what changed. Destructive steps need `allow_destroy` and stay under the
//!   policy's cap.
//! - Each machine is independent: one failing does not stop the others. At most
//!   `policy.parallelism` machines are worked on at once.
//! - No step runs twice: a step is marked `started` with the machine's generation before its
//!   action runs; after a crash, a started step whose machine's generation has moved is not run
//!   again but followed to its end (or failed with a reason).
//! - Every step is recorded as events (`apply` events beside the life-cycle's own).

mod board;
mod executor;
mod queue;
mod verify;
pub mod watch;

pub use executor::run_apply;
pub use queue::Executor;
pub use verify::{check_plan, Refusal};

use crate::model::PowerState;
use crate::plan::{Observed, Plan};
use crate::store::{
    ApplyStepRow, EventFilter, LockHolder, PlanInFlight, Store, StoreError, StoredPlan,
};
use serde::{Deserialize, Serialize};

/// What the store observes, as the planner reads it (`GET /api/v1/observed`, watch mode): the
/// records, the addresses machines hold, and for each machine whose power is in error the
/// driver's message, taken from the newest power event that stored the error (the record itself
/// keeps only the state).
pub async fn observe(store: &Store) -> Result<Observed, StoreError> {
    let records = store.planning_records().await?;
    let mut observed = Observed::from_records(&records);
    observed.addresses = store.held_addresses().await?;
    for machine in &mut observed.machines {
        if machine.power == PowerState::Error {
            machine.power_error = power_error_message(store, machine.name.as_str()).await?;
        }
    }
    // Clones live in their own table (`machine_clones`): one read for all of them.
    let mut clones: std::collections::HashMap<_, _> =
        store.clone_records().await?.into_iter().collect();
    for machine in &mut observed.machines {
        machine.cloned_from = clones.remove(&machine.name);
    }
    add_stored_deployments(store, &mut observed).await?;
    Ok(observed)
}

/// Each machine's stored deployment configuration (digests and origin), which the planner
/// compares with the fleet file's layout and network.
async fn add_stored_deployments(store: &Store, observed: &mut Observed) -> Result<(), StoreError> {
    for stored in store.deployment_digests().await? {
        let at = observed
            .machines
            .binary_search_by(|machine| machine.name.as_str().cmp(&stored.machine));
        if let Ok(at) = at {
            observed.machines[at].deployment = Some(crate::plan::AppliedDeployment {
                layout_digest: stored.layout_digest,
                network_digest: stored.network_digest,
                origin: stored.origin,
            });
        }
    }
    Ok(())
}

/// The reason of the newest `power` event that set the power to `error`, among the machine's
/// latest events.
async fn power_error_message(store: &Store, machine: &str) -> Result<Option<String>, StoreError> {
    let filter = EventFilter {
        machine: Some(machine.to_string()),
        after_id: None,
        limit: Some(50),
    };
    let events = store.events(&filter).await?;
    Ok(events
        .into_iter()
        .rev()
        .find(|event| event.kind == "power" && event.detail["to"] == "error")
        .and_then(|event| event.reason))
}

/// The lock every apply takes.
pub const APPLY_LOCK: &str = "apply";
/// A lock holder silent for this long is presumed dead.
pub const STALE_LOCK_MS: i64 = 30_000;
/// How often a running apply refreshes its lock.
pub const LOCK_REFRESH_MS: u64 = 5_000;
/// `plans.status` of an apply waiting for the leader's executor.
pub const QUEUED: &str = crate::store::QUEUED;
/// `plans.status` of an apply that is running (or was, when its controller died).
pub const RUNNING: &str = crate::store::APPLYING;
pub const FINISHED: &str = "applied";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("another apply is running: `{}` holds the apply lock since {} (Unix ms {}); wait for it to finish", .0.holder, crate::model::rfc3339(.0.since), .0.since)]
    Busy(LockHolder),
    #[error("the plan is not one this controller can apply: {0}")]
    BadPlan(String),
    #[error("no apply with id `{0}`")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `fleet apply` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub plan: Plan,
    /// Destructive steps may run.
    #[serde(default)]
    pub allow_destroy: bool,
    /// Refuse every machine if any one's fingerprint changed.
    #[serde(default)]
    pub strict: bool,
}

/// What is stored as the body of an apply's `plans` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRecord {
    pub plan: Plan,
    pub actor: String,
    pub holder: String,
    pub allow_destroy: bool,
}

/// The answer to starting an apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyStarted {
    pub id: String,
    /// Machines whose steps will run.
    pub accepted: Vec<String>,
    pub refused: Vec<Refusal>,
}

/// One machine's progress (`GET /applies/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineProgress {
    pub name: String,
    /// `pending`, `running`, `done`, `failed`, `refused`.
    pub state: String,
    /// Steps done so far and in all.
    pub steps_done: usize,
    pub steps: usize,
    /// The step running (or last run), e.g. `commission`.
    pub current: Option<String>,
    pub reason: Option<String>,
    /// How far a running deploy step got (`write-image 40/100 (40%)`): the deploying run's
    /// last progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An apply's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyProgress {
    pub id: String,
    /// `queued` (waiting for the leader), `applying` or `applied`.
    pub status: String,
    pub machines: Vec<MachineProgress>,
}

impl ApplyProgress {
    pub fn finished(&self) -> bool {
        self.status == FINISHED
    }
}

/// A new apply id: time and randomness, so that two controllers never pick the same.
fn new_apply_id() -> String {
    format!(
        "apply-{}-{:08x}",
        crate::store::now_ms(),
        rand::random::<u32>()
    )
}

/// Checks `request` against the store and queues it, with its steps, for the leader's executor
/// ([`Executor`]), which picks it up within half a second (at once when it runs in this
/// process and `wake` is its). Refused machines are recorded too, with their reason. Any
/// controller may queue; only the leader carries out.
pub async fn queue_apply(
    store: &Store,
    request: ApplyRequest,
    actor: &str,
    wake: Option<&tokio::sync::Notify>,
) -> Result<ApplyStarted, ApplyError> {
    if request.plan.format_version != crate::plan::PLAN_FORMAT_VERSION {
        return Err(ApplyError::BadPlan(format!(
            "format_version {} (this controller reads {})",
            request.plan.format_version,
            crate::plan::PLAN_FORMAT_VERSION
        )));
    }
    let id = new_apply_id();
    let holder = format!("{actor} ({id})");
    let started = record_apply(store, &request, &id, &holder, actor).await?;
    if let Some(wake) = wake {
        wake.notify_one();
    }
    Ok(started)
}

/// The apply in flight, as a refusal names it: the apply and the leader running it (the lock's
/// holder), or the apply waiting in the queue.
async fn busy(store: &Store, in_flight: PlanInFlight) -> ApplyError {
    let lock = store.lock_holder(APPLY_LOCK).await.ok().flatten();
    let holder = match lock {
        Some(lock) if in_flight.status == RUNNING => LockHolder {
            holder: format!("{} on {}", in_flight.id, lock.holder),
            ..lock
        },
        _ => LockHolder {
            name: APPLY_LOCK.into(),
            holder: format!("{} ({})", in_flight.id, in_flight.status),
            since: in_flight.created_at,
            heartbeat: in_flight.created_at,
        },
    };
    ApplyError::Busy(holder)
}

async fn record_apply(
    store: &Store,
    request: &ApplyRequest,
    id: &str,
    holder: &str,
    actor: &str,
) -> Result<ApplyStarted, ApplyError> {
    let records = store.planning_records().await?;
    let checked = check_plan(request, &records);
    let now = crate::store::now_ms();
    let mut rows = Vec::new();
    for machine in &request.plan.machines {
        if machine.steps.is_empty() {
            continue;
        }
        let refusal = checked.refused.iter().find(|r| r.machine == machine.name);
        for step in 0..machine.steps.len() {
            rows.push(ApplyStepRow {
                machine: machine.name.clone(),
                step: step as i64,
                state: if refusal.is_some() {
                    "refused"
                } else {
                    "pending"
                }
                .into(),
                generation: None,
                reason: refusal.map(|refusal| refusal.reason.clone()),
                updated_at: now,
            });
        }
    }
    let body = ApplyRecord {
        plan: request.plan.clone(),
        actor: actor.to_string(),
        holder: holder.to_string(),
        allow_destroy: request.allow_destroy,
    };
    let plan = StoredPlan {
        id: id.to_string(),
        created_at: now,
        status: QUEUED.into(),
        body: serde_json::to_value(&body).unwrap_or_default(),
    };
    if let Err(in_flight) = store.queue_plan(&plan, &rows).await? {
        return Err(busy(store, in_flight).await);
    }
    for refusal in &checked.refused {
        record_event(
            store,
            &refusal.machine,
            (actor, None),
            "apply refused",
            &refusal.reason,
            id,
        )
        .await?;
    }
    Ok(ApplyStarted {
        id: id.to_string(),
        accepted: checked.accepted,
        refused: checked.refused,
    })
}

/// An `apply` event in the machine's history; `by`: the leader's holder (`CONTROLLER_ID/INSTANCE`)
/// whose executor ran the step, kept in the event's detail.
async fn record_event(
    store: &Store,
    machine: &str,
    actor: (&str, Option<&str>),
    what: &str,
    reason: &str,
    apply_id: &str,
) -> Result<(), StoreError> {
    store
        .append_event(&apply_event(machine, actor, what, reason, apply_id))
        .await?;
    Ok(())
}

/// The `apply` event [`record_event`] appends.
fn apply_event(
    machine: &str,
    (actor, by): (&str, Option<&str>),
    what: &str,
    reason: &str,
    apply_id: &str,
) -> crate::store::NewEvent {
    let detail = match by {
        Some(by) => serde_json::json!({ "apply": apply_id, "by": by }),
        None => serde_json::json!({ "apply": apply_id }),
    };
    crate::store::NewEvent {
        machine: Some(machine.to_string()),
        kind: "apply".into(),
        actor: actor.to_string(),
        action: Some(what.to_string()),
        from_status: None,
        to_status: None,
        reason: Some(reason.to_string()),
        detail,
    }
}

/// An apply's progress, per machine.
pub async fn progress(store: &Store, id: &str) -> Result<ApplyProgress, ApplyError> {
    let stored = store
        .plan(id)
        .await?
        .ok_or_else(|| ApplyError::Unknown(id.to_string()))?;
    let rows = store.apply_steps(id).await?;
    let record: ApplyRecord = serde_json::from_value(stored.body)
        .map_err(|error| ApplyError::BadPlan(error.to_string()))?;
    let mut machines = Vec::new();
    for planned in record.plan.machines.iter().filter(|m| !m.steps.is_empty()) {
        let steps: Vec<&ApplyStepRow> = rows.iter().filter(|r| r.machine == planned.name).collect();
        let mut machine = machine_progress(planned, &steps);
        if machine.state == "running" && machine.current.as_deref() == Some("deploy") {
            machine.detail = deploy_progress(store, &machine.name).await?;
        }
        machines.push(machine);
    }
    Ok(ApplyProgress {
        id: id.to_string(),
        status: stored.status,
        machines,
    })
}

/// The last progress of a deploying machine's run, if it reported one in this deployment.
async fn deploy_progress(store: &Store, name: &str) -> Result<Option<String>, ApplyError> {
    let Some(record) = store.machine(name).await? else {
        return Ok(None);
    };
    if record.lifecycle.status != crate::model::Status::Deploying {
        return Ok(None);
    }
    let state = store.machine_state(name).await?.unwrap_or_default();
    let mut watched = record.watched();
    watched.install_done = state.install_done_at;
    if watched.install_done_at().is_some() {
        return Ok(Some(
            "installed: waiting for the installed system to call back".into(),
        ));
    }
    Ok(state
        .progress
        .filter(|reported| reported.at >= record.status_since)
        .map(|reported| reported.progress.describe()))
}

fn machine_progress(planned: &crate::plan::MachinePlan, rows: &[&ApplyStepRow]) -> MachineProgress {
    let done = rows.iter().filter(|row| row.state == "done").count();
    let last = rows
        .iter()
        .rev()
        .find(|row| row.state != "pending" && row.state != "skipped");
    let state = if rows.iter().any(|row| row.state == "refused") {
        "refused"
    } else if rows.iter().any(|row| row.state == "failed") {
        "failed"
    } else if done == rows.len() && !rows.is_empty() {
        "done"
    } else if rows.iter().any(|row| row.state == "started") {
        "running"
    } else {
        "pending"
    };
    MachineProgress {
        name: planned.name.clone(),
        state: state.into(),
        steps_done: done,
        steps: planned.steps.len(),
        current: last.and_then(|row| {
            planned
                .steps
                .get(row.step as usize)
                .map(|step| step.verb().to_string())
        }),
        reason: last.and_then(|row| row.reason.clone()),
        detail: None,
    }
}
