//! Running an apply: each machine's steps in order, machines side by side (bounded), every step's
//! progress persisted before and after it runs so that a restarted controller resumes.

use super::board::StatusBoard;
use super::{
    apply_event, record_event, ApplyError, ApplyRecord, APPLY_LOCK, FINISHED, LOCK_REFRESH_MS,
};
use crate::metrics::{Metrics, StepOutcome as EndedStep};
use crate::model::{ActionRequest, Settlement, Status};
use crate::plan::{AppliedDeployment, MachinePlan, Operation, Step};
use crate::power::PowerDrivers;
use crate::services::actions::{perform, settle_machine_at, ActionError, SettleAt};
use crate::store::{now_ms, ApplyStepRow, MachineRecord, Store, StoreError, StoredDeployment};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How often a machine in an in-progress status is looked at.
const POLL: Duration = Duration::from_millis(100);
/// The first wait before a machine's run interrupted by a store error is tried again; each
/// further try waits twice as long, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// What a step found `started` is resumed with: the run that started it stopped.
const RESUMED_AFTER_STOP: &str =
    "the controller restarted during this step; following it to its end";
/// The same, when this run's own earlier try met a store error.
const RESUMED_AFTER_ERROR: &str = "a store error interrupted this step; following it to its end";

/// What one machine's run needs, shared by its task.
struct MachineRun {
    store: Store,
    drivers: PowerDrivers,
    /// Where each step's end is counted (`/metrics`).
    metrics: Arc<Metrics>,
    apply_id: String,
    /// The leader's holder (`CONTROLLER_ID/INSTANCE`) that carries the apply out: in the lock
    /// and in every `apply` event's detail.
    by: Arc<str>,
    record: Arc<ApplyRecord>,
    planned: MachinePlan,
    rows: Vec<ApplyStepRow>,
    /// Why a step found `started` is resumed (its `resumed` event's reason).
    resumed_because: &'static str,
    /// The apply's one reading of the in-progress machines, which [`follow`] waits on.
    board: Arc<StatusBoard>,
}

/// Carries out (or resumes) the apply `id` to its end, then releases the lock. The caller holds
/// the apply lock as `holder` (the leader's, see [`super::Executor`]); dropping the future
/// stops every machine's task and the lock's refresh (a term that ends aborts it).
pub async fn run_apply(
    store: &Store,
    drivers: &PowerDrivers,
    metrics: &Arc<Metrics>,
    id: &str,
    holder: &str,
) -> Result<(), ApplyError> {
    let stored = store
        .plan(id)
        .await?
        .ok_or_else(|| ApplyError::Unknown(id.to_string()))?;
    let record: Arc<ApplyRecord> = match serde_json::from_value(stored.body) {
        Ok(record) => Arc::new(record),
        Err(error) => {
            // Nobody can carry it out: it must not hold up the applies queued after it.
            store.set_plan_status(id, FINISHED).await?;
            store.unlock(APPLY_LOCK, holder).await?;
            return Err(ApplyError::BadPlan(format!(
                "apply {id} cannot be read ({error}); it is marked applied without running"
            )));
        }
    };
    let _refresher = AbortOnDrop(keep_lock(store.clone(), holder.to_string()));
    let by: Arc<str> = Arc::from(holder);
    let rows = store.apply_steps(id).await?;
    let permits = Arc::new(Semaphore::new(
        record.plan.policy.parallelism.max(1) as usize
    ));
    // Dropped with this future: the machines' tasks end with it.
    let mut tasks = tokio::task::JoinSet::new();
    let board = Arc::new(StatusBoard::new(store.clone()));
    // Grouped once: filtering every row for each machine took quadratic time at 10,000.
    let mut rows_by_machine: HashMap<&str, Vec<ApplyStepRow>> = HashMap::new();
    for row in &rows {
        rows_by_machine
            .entry(row.machine.as_str())
            .or_default()
            .push(row.clone());
    }
    for planned in &record.plan.machines {
        let machine_rows = rows_by_machine
            .remove(planned.name.as_str())
            .unwrap_or_default();
        if machine_rows.is_empty() {
            // No step, but the plan may still give it addresses (a template now asking for
            // one): they stick from this apply on, like any other.
            let actor = (record.holder.as_str(), Some(holder));
            if let Err(error) = commit_without_steps(store, id, actor, planned).await {
                tracing::error!(machine = %planned.name, "cannot commit the machine's addresses: {error}");
            }
            continue;
        }
        let refused = machine_rows.iter().any(|row| row.state == "refused");
        let open = |row: &ApplyStepRow| matches!(row.state.as_str(), "pending" | "started");
        if refused && !machine_rows.iter().any(open) {
            // Refused (at admission, or when its addresses were taken) and every step ended;
            // a refusal interrupted while marking its steps is finished by `run_machine`.
            continue;
        }
        let run = MachineRun {
            store: store.clone(),
            drivers: drivers.clone(),
            metrics: metrics.clone(),
            apply_id: id.to_string(),
            by: by.clone(),
            record: record.clone(),
            planned: planned.clone(),
            rows: machine_rows,
            resumed_because: RESUMED_AFTER_STOP,
            board: board.clone(),
        };
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            run_machine_to_its_end(run).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    // Unlocked first: whoever reads the apply finished finds the lock free. (A crash between the
    // two leaves it applying, unlocked: the next term resumes it and finds every step ended.)
    store.unlock(APPLY_LOCK, holder).await?;
    store.set_plan_status(id, FINISHED).await?;
    Ok(())
}

/// Runs the machine's steps until each has ended. A store error (the database unreachable, a
/// write lock held past the busy timeout) interrupts the run: it is tried again after a wait
/// (1 s, doubling up to 10 s) from the step rows as the store now holds them, so no step is
/// left pending under an apply marked applied. That is exactly-once: a step is marked
/// `started` with the machine's generation before its action runs, so an interrupted step is
/// resumed (`resume_step`: run only if its action never committed, else followed) as after a
/// crash, and a step that ended is not run again. `Fenced` ends the run: this leader's term is
/// over, and the next leader resumes the apply.
async fn run_machine_to_its_end(mut run: MachineRun) {
    let name = run.planned.name.clone();
    let mut wait = RETRY_FIRST;
    loop {
        let error = match run_machine(&run).await {
            Ok(()) => return,
            Err(error @ StoreError::Fenced(_)) => {
                tracing::warn!(machine = %name, "apply of the machine stopped: {error}");
                return;
            }
            Err(error) => error,
        };
        tracing::warn!(
            machine = %name,
            "apply of the machine interrupted: {error}; trying again in {} s",
            wait.as_secs()
        );
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
            match run.store.apply_steps(&run.apply_id).await {
                Ok(rows) => {
                    run.rows = rows.into_iter().filter(|row| row.machine == name).collect();
                    break;
                }
                Err(error) => tracing::warn!(
                    machine = %name,
                    "cannot read the machine's steps to try again: {error}; trying again in {} s",
                    wait.as_secs()
                ),
            }
        }
        run.resumed_because = RESUMED_AFTER_ERROR;
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Refreshes the apply lock until aborted.
fn keep_lock(store: Store, holder: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(LOCK_REFRESH_MS)).await;
            match store.refresh_lock(APPLY_LOCK, &holder).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(holder, "the apply lock was taken over");
                    return;
                }
                Err(error) => tracing::warn!("cannot refresh the apply lock: {error}"),
            }
        }
    })
}

impl MachineRun {
    /// Who the apply's events name: the actor that asked (`ACTOR (APPLY-ID)`) and the leader
    /// carrying it out.
    fn actor(&self) -> (&str, Option<&str>) {
        (self.record.holder.as_str(), Some(&*self.by))
    }
}

/// One machine's steps in order; stops at the first failure (the rest are skipped). The plan's
/// addresses are committed before the first step that needs the machine in the store (after
/// `add`, which creates it): a machine whose address another machine took since the plan was
/// made is refused, its remaining steps with it.
async fn run_machine(run: &MachineRun) -> Result<(), StoreError> {
    let name = run.planned.name.as_str();
    let mut addresses_committed = false;
    for (index, step) in run.planned.steps.iter().enumerate() {
        let Some(row) = run.rows.iter().find(|row| row.step == index as i64) else {
            continue;
        };
        if matches!(row.state.as_str(), "failed" | "skipped" | "refused") {
            // What follows a failed or refused step ends with it; a run interrupted while it
            // marked them (a store error, a crash) left some pending.
            return end_pending_after(run, index, row).await;
        }
        if row.state == "done" {
            continue;
        }
        if !addresses_committed && !matches!(step.operation, Operation::Add { .. }) {
            addresses_committed = true;
            if let Err(reason) = commit_planned_addresses(run).await? {
                return refuse_from(run, index, &reason).await;
            }
        }
        let outcome = match row.state.as_str() {
            "started" => resume_step(run, index, step, row).await?,
            _ => start_step(run, index, step).await?,
        };
        let actor = run.actor();
        match outcome {
            Ok(()) => {
                let event = apply_event(
                    name,
                    actor,
                    &format!("{} done", step.verb()),
                    &step.reason,
                    &run.apply_id,
                );
                end_step(run, index, "done", None, &event).await?;
                run.metrics.step_ended(EndedStep::Done);
            }
            Err(reason) => {
                let event = apply_event(
                    name,
                    actor,
                    &format!("{} failed", step.verb()),
                    &reason,
                    &run.apply_id,
                );
                end_step(run, index, "failed", Some(&reason), &event).await?;
                run.metrics.step_ended(EndedStep::Failed);
                for later in index + 1..run.planned.steps.len() {
                    mark(run, later, "skipped", Some("an earlier step failed")).await?;
                }
                return Ok(());
            }
        }
    }
    if !addresses_committed {
        // Only `add` ran (or every step was done before a restart): the machine exists now.
        if let Err(reason) = commit_planned_addresses(run).await? {
            record_event(
                &run.store,
                name,
                run.actor(),
                "apply refused",
                &reason,
                &run.apply_id,
            )
            .await?;
        }
    }
    Ok(())
}

/// The steps after `row` (step `index`, failed, skipped or refused) still pending: skipped after
/// a failed or skipped one, refused with its reason after a refused one.
async fn end_pending_after(
    run: &MachineRun,
    index: usize,
    row: &ApplyStepRow,
) -> Result<(), StoreError> {
    let (state, reason) = match row.state.as_str() {
        "refused" => ("refused", row.reason.as_deref().unwrap_or("refused")),
        _ => ("skipped", "an earlier step failed"),
    };
    for later in &run.rows {
        if later.step > index as i64 && later.state == "pending" {
            mark(run, later.step as usize, state, Some(reason)).await?;
        }
    }
    Ok(())
}

/// Commits the plan's addresses of the machine that it does not hold yet; `Err(reason)` when
/// another machine holds one of them now.
async fn commit_planned_addresses(run: &MachineRun) -> Result<StepOutcome, StoreError> {
    commit_addresses_of(&run.store, &run.apply_id, run.actor(), &run.planned).await
}

async fn commit_addresses_of(
    store: &Store,
    apply_id: &str,
    (actor, _by): (&str, Option<&str>),
    planned: &MachinePlan,
) -> Result<StepOutcome, StoreError> {
    if planned.addresses.is_empty() {
        return Ok(Ok(()));
    }
    let committed = store
        .commit_addresses(&planned.name, &planned.addresses, actor, Some(apply_id))
        .await;
    match committed {
        Ok(_) => Ok(Ok(())),
        Err(StoreError::AddressTaken {
            ip, subnet, holder, ..
        }) => Ok(Err(format!(
            "address {ip} on subnet {subnet} was taken by {holder} after this plan was made: plan again"
        ))),
        // Not in the store (yet, or any more): its step says so; nothing to hold.
        Err(StoreError::UnknownMachine(_)) => Ok(Ok(())),
        Err(error) => Err(error),
    }
}

/// A machine without steps: its addresses are committed all the same, or the refusal recorded.
async fn commit_without_steps(
    store: &Store,
    apply_id: &str,
    actor: (&str, Option<&str>),
    planned: &MachinePlan,
) -> Result<(), StoreError> {
    if let Err(reason) = commit_addresses_of(store, apply_id, actor, planned).await? {
        record_event(
            store,
            &planned.name,
            actor,
            "apply refused",
            &reason,
            apply_id,
        )
        .await?;
    }
    Ok(())
}

/// Refuses the machine's steps from `index` on (none of them has run), with an `apply` event.
async fn refuse_from(run: &MachineRun, index: usize, reason: &str) -> Result<(), StoreError> {
    for step in index..run.planned.steps.len() {
        mark(run, step, "refused", Some(reason)).await?;
    }
    record_event(
        &run.store,
        &run.planned.name,
        run.actor(),
        "apply refused",
        reason,
        &run.apply_id,
    )
    .await
}

/// Marks the step ended and appends its event, both or neither.
async fn end_step(
    run: &MachineRun,
    index: usize,
    state: &str,
    reason: Option<&str>,
    event: &crate::store::NewEvent,
) -> Result<(), StoreError> {
    run.store
        .end_apply_step(
            &run.apply_id,
            &run.planned.name,
            index as i64,
            state,
            reason,
            event,
        )
        .await
}

async fn mark(
    run: &MachineRun,
    index: usize,
    state: &str,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    run.store
        .set_apply_step(
            &run.apply_id,
            &run.planned.name,
            index as i64,
            state,
            None,
            reason,
        )
        .await
}

type StepOutcome = Result<(), String>;

/// Marks the step started (with the generation it saw), runs it, and follows it to its end.
async fn start_step(
    run: &MachineRun,
    index: usize,
    step: &Step,
) -> Result<StepOutcome, StoreError> {
    let name = run.planned.name.as_str();
    let current = run.store.machine(name).await?;
    let generation = current
        .as_ref()
        .map(|record| record.generation)
        .unwrap_or(0);
    run.store
        .set_apply_step(
            &run.apply_id,
            name,
            index as i64,
            "started",
            Some(generation),
            None,
        )
        .await?;
    record_event(
        &run.store,
        name,
        run.actor(),
        &format!("{} started", step.verb()),
        &step.reason,
        &run.apply_id,
    )
    .await?;
    if let Err(reason) = execute(run, step).await? {
        return Ok(Err(reason));
    }
    follow(run, step).await
}

/// A step found `started` after a restart: run it only if its action never committed (the
/// machine's generation has not moved), else follow it to its end.
async fn resume_step(
    run: &MachineRun,
    index: usize,
    step: &Step,
    row: &ApplyStepRow,
) -> Result<StepOutcome, StoreError> {
    let current = run.store.machine(&run.planned.name).await?;
    let ran = match (&step.operation, &current) {
        (Operation::Add { .. }, current) => current.is_some(),
        (_, Some(record)) => Some(record.generation) != row.generation,
        (_, None) => return Ok(Err("the machine vanished during the apply".into())),
    };
    if ran {
        record_event(
            &run.store,
            &run.planned.name,
            run.actor(),
            &format!("{} resumed", step.verb()),
            run.resumed_because,
            &run.apply_id,
        )
        .await?;
        return follow(run, step).await;
    }
    let _ = index;
    if let Err(reason) = execute(run, step).await? {
        return Ok(Err(reason));
    }
    follow(run, step).await
}

/// Carries out the step's operation once.
async fn execute(run: &MachineRun, step: &Step) -> Result<StepOutcome, StoreError> {
    let name = run.planned.name.as_str();
    let actor = run.record.holder.as_str();
    match &step.operation {
        Operation::Add { machine } => match run.store.create_machine(machine, actor).await {
            Ok(_) => Ok(Ok(())),
            Err(
                error @ (StoreError::DuplicateName(_)
                | StoreError::DuplicateMac { .. }
                | StoreError::InvalidInitialStatus { .. }),
            ) => Ok(Err(error.to_string())),
            Err(error) => Err(error),
        },
        Operation::Configure {
            power_type,
            power_params,
            tags,
            image,
            deployment,
        } => {
            // The deployment configuration first: `update_config` moves the generation, which
            // is what a resumed step takes as "already ran".
            let stored = match deployment {
                Some(applied) => match stored_deployment(run, applied) {
                    Ok(stored) => run.store.store_deployment(name, &stored).await,
                    Err(reason) => return Ok(Err(reason)),
                },
                None => Ok(()),
            };
            let configured = match stored {
                Ok(()) => {
                    run.store
                        .update_config(name, power_type, power_params, tags, image.as_deref())
                        .await
                }
                Err(error) => Err(error),
            };
            match configured {
                Ok(()) => Ok(Ok(())),
                Err(StoreError::UnknownMachine(_)) => {
                    Ok(Err("the machine is no longer in the store".into()))
                }
                Err(error) => Err(error),
            }
        }
        Operation::Act { action, options } => {
            let request = ActionRequest {
                action: *action,
                actor: actor.to_string(),
                comment: Some(step.reason.clone()),
                options: options.clone(),
            };
            match perform(&run.store, &run.drivers, name, &request).await {
                Ok(_) => Ok(Ok(())),
                Err(ActionError::Store(error)) => Err(error),
                Err(other) => Ok(Err(other.to_string())),
            }
        }
    }
}

/// The configuration a configure step stores: the layout from the plan's `layouts` and the
/// network from the machine's deployment section, as the digests in the step name them.
fn stored_deployment(
    run: &MachineRun,
    applied: &AppliedDeployment,
) -> Result<StoredDeployment, String> {
    let layout = match &applied.layout_digest {
        Some(digest) => match run.record.plan.layouts.get(digest) {
            Some(layout) => Some(serde_json::to_value(layout).map_err(|e| e.to_string())?),
            None => return Err(format!("the plan has no layout {digest}")),
        },
        None => None,
    };
    let planned = run.planned.deployment.as_ref();
    let network = match &applied.network_digest {
        Some(digest) => match planned.filter(|d| d.network_digest.as_ref() == Some(digest)) {
            Some(deployment) => {
                Some(serde_json::to_value(&deployment.network).map_err(|e| e.to_string())?)
            }
            None => return Err(format!("the plan has no network configuration {digest}")),
        },
        None => None,
    };
    Ok(StoredDeployment {
        layout,
        layout_digest: applied.layout_digest.clone(),
        network,
        network_digest: applied.network_digest.clone(),
        origin: applied.origin.clone(),
    })
}

/// Waits until the machine rests, failing an in-progress status that runs past the policy's
/// limit; the step succeeded if it rests in the status the plan expected.
async fn follow(run: &MachineRun, step: &Step) -> Result<StepOutcome, StoreError> {
    let name = run.planned.name.as_str();
    loop {
        let board = run.board.in_progress().await?;
        let record = match board.get(name) {
            Some(record) => record.clone(),
            // At rest (or moved into progress since the reading): read whole, to be sure.
            None => {
                let Some(record) = run.store.machine(name).await? else {
                    return Ok(Err("the machine is no longer in the store".into()));
                };
                if !record.lifecycle.status.is_in_progress() {
                    return Ok(ended(&record, step.expect));
                }
                record
            }
        };
        let status = record.lifecycle.status;
        if let Some(minutes) = overdue(run, &record) {
            let settlement = Settlement::TimedOut {
                operation: status.as_str().to_string(),
                seconds: minutes * 60,
            };
            // Only the machine as read: one that moved on meanwhile is followed again.
            let at = SettleAt {
                generation: Some(record.generation),
                powers_off: false,
            };
            match settle_machine_at(&run.store, name, &run.record.holder, &settlement, at).await {
                Ok(_) | Err(ActionError::Refused { .. }) => continue,
                Err(ActionError::Store(error)) => return Err(error),
                Err(other) => return Ok(Err(other.to_string())),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The limit in minutes, if the machine's in-progress status has run past it.
fn overdue(run: &MachineRun, record: &MachineRecord) -> Option<u64> {
    let minutes = *run
        .record
        .plan
        .policy
        .timeout_minutes
        .get(&record.lifecycle.status)?;
    let elapsed = now_ms().saturating_sub(record.status_since);
    (elapsed > i64::from(minutes) * 60_000).then_some(u64::from(minutes))
}

fn ended(record: &MachineRecord, expect: Status) -> StepOutcome {
    let status = record.lifecycle.status;
    if status == expect {
        return Ok(());
    }
    let why = record
        .status_reason
        .as_deref()
        .map(|reason| format!(": {reason}"))
        .unwrap_or_default();
    Err(format!("ended {status}{why} (the plan expected {expect})"))
}
