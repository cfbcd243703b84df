//! Carrying out one life-cycle action on one machine: decide, commit, power, follow up.
//!
//! The order matters for crash safety: the status change, its events, the erase mode and the
//! power command decided commit first (one transaction; the command goes into the power outbox,
//! `machines.power_pending`), then the power command runs, then its result is recorded and the
//! outbox entry cleared. A controller killed between the two leaves a machine in a status it
//! could reach with the command still in the outbox; the leader's courier
//! (`services/power_outbox.rs`) carries it out and what follows it. The named crash points of
//! `failpoint.rs` let a test kill a controller at exactly these places.

use crate::model::{
    decide, settle, Action, ActionRequest, FollowUp, PowerCommand, Refusal, Settlement, Status,
};
use crate::power::{PowerDrivers, PowerError, PowerTarget};
use crate::store::{Commit, MachineRecord, Store, StoreError};
use serde::Serialize;

/// How many times an action is retried when another writer changed the machine meanwhile.
const CONFLICT_RETRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no machine named `{0}`")]
    UnknownMachine(String),
    #[error("machine `{machine}`: {refusal}")]
    Refused { machine: String, refusal: Refusal },
    #[error("machine `{machine}`: power {command} failed: {error}")]
    PowerFailed {
        machine: String,
        command: String,
        error: PowerError,
        record: Box<Option<MachineRecord>>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an accepted action did, for the API's answer.
#[derive(Debug, Clone, Serialize)]
pub struct ActionDone {
    pub machine: String,
    pub action: Action,
    /// Every status the machine went through, in order, starting with the one it had.
    pub statuses: Vec<Status>,
    pub power_command: Option<PowerCommand>,
    /// What a person must know or do (manual power instructions, notes of the rules).
    pub notes: Vec<String>,
    /// The machine afterwards; `None` once deleted.
    pub record: Option<MachineRecord>,
}

/// Performs `request` on the machine called `name`.
pub async fn perform(
    store: &Store,
    drivers: &PowerDrivers,
    name: &str,
    request: &ActionRequest,
) -> Result<ActionDone, ActionError> {
    let mut attempt = 0;
    let (record, outcome) = loop {
        let record = store
            .machine(name)
            .await?
            .ok_or_else(|| ActionError::UnknownMachine(name.to_string()))?;
        let outcome = match decide(&record.lifecycle, request) {
            Ok(outcome) => outcome,
            Err(refusal) => {
                store
                    .record_refusal(name, request.action, &request.actor, &refusal.reason)
                    .await?;
                return Err(ActionError::Refused {
                    machine: name.to_string(),
                    refusal,
                });
            }
        };
        let commit = Commit {
            actor: &request.actor,
            action: Some(request.action),
            reason: request.comment.as_deref(),
            outcome: &outcome,
            image: request.options.image.as_deref(),
            decides_power: outcome.power.is_some(),
            // The ephemeral environment is told which erase to run when it boots.
            erase_mode: match request.action {
                Action::Release => request.options.erase,
                _ => None,
            },
        };
        match store.commit(&record, &commit).await {
            Ok(after) => break (after, outcome),
            Err(StoreError::Conflict(_)) if attempt < CONFLICT_RETRIES => attempt += 1,
            Err(error) => return Err(error.into()),
        }
    };
    if let (Action::Abort, Some(after)) = (request.action, &record) {
        // Scripts the machine was running are over: its run is told to stop on its next call.
        store.abort_running_scripts(after.id).await?;
    }
    let done = ActionDone {
        machine: name.to_string(),
        action: request.action,
        statuses: std::iter::once(outcome.changes.first().map(|c| c.from))
            .flatten()
            .chain(outcome.changes.iter().map(|change| change.to))
            .collect(),
        power_command: outcome.power,
        notes: outcome.notes.clone(),
        record,
    };
    super::failpoint::reached(super::failpoint::AFTER_DECISION);
    let Some((command, record)) = outcome.power.zip(done.record.clone()) else {
        return Ok(done);
    };
    let power = PowerStep {
        record,
        command,
        follow_up: outcome.follow_up,
        actor: request.actor.clone(),
    };
    power.run_to_the_end(store, drivers, done).await
}

/// The power command a committed decision asked for, and what follows it.
struct PowerStep {
    /// The machine as the decision left it.
    record: MachineRecord,
    command: PowerCommand,
    follow_up: FollowUp,
    actor: String,
}

impl PowerStep {
    /// Runs the command and its follow-up in a task of their own, so that a caller that goes
    /// away (an HTTP client that gives up) cannot cut them off after the decision committed.
    async fn run_to_the_end(
        self,
        store: &Store,
        drivers: &PowerDrivers,
        done: ActionDone,
    ) -> Result<ActionDone, ActionError> {
        let (store, drivers) = (store.clone(), drivers.clone());
        let task = tokio::spawn(async move { self.run(&store, &drivers, done).await });
        match task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("the power task was cancelled: {error}"),
        }
    }

    async fn run(
        self,
        store: &Store,
        drivers: &PowerDrivers,
        mut done: ActionDone,
    ) -> Result<ActionDone, ActionError> {
        let name = self.record.name.to_string();
        let ran = run_power(
            store,
            drivers,
            self.record,
            self.command,
            &self.actor,
            &mut done,
        )
        .await?;
        // A dropped command's follow-up belongs to the newer decision that overtook it.
        if ran && self.follow_up == FollowUp::CompleteAfterPower {
            complete_after_power(store, &name, &self.actor, &mut done).await?;
        }
        Ok(done)
    }
}

/// What the driver is given for `record`: its power type and parameters, and every secret the
/// parameters keep in the store (`{"store": PURPOSE}`), read and decrypted now with the store's
/// key (at every power call: a secret rewritten by another controller is used at once). An error
/// names the machine and, for a wrong key, both keys' ids; never a secret.
pub async fn power_target(
    store: &Store,
    record: &MachineRecord,
) -> Result<PowerTarget, PowerError> {
    let name = record.name.as_str();
    let mut target = PowerTarget::new(
        name,
        record.power_type.as_str(),
        record.power_params.clone(),
    );
    for purpose in crate::power::stored_purposes(&record.power_params) {
        let secret = store
            .secret(record.id, name, &purpose)
            .await
            .map_err(|error| PowerError::Secret {
                machine: name.to_string(),
                message: error.to_string(),
            })?;
        target.stored.insert(purpose, secret);
    }
    Ok(target)
}

fn command_name(command: PowerCommand) -> &'static str {
    match command {
        PowerCommand::On => "on",
        PowerCommand::Off(crate::model::PowerOffMode::Soft) => "off (soft)",
        PowerCommand::Off(crate::model::PowerOffMode::Hard) => "off",
        PowerCommand::Cycle => "cycle",
    }
}

/// What fleet expects the power to become once `command` has run: the power poll judges what
/// it finds against this (a cycle passes through off on its way to on).
fn power_intent(command: PowerCommand) -> crate::store::PowerIntent {
    use crate::model::PowerState;
    let (target, passing) = match command {
        PowerCommand::On => (PowerState::On, None),
        PowerCommand::Off(_) => (PowerState::Off, None),
        PowerCommand::Cycle => (PowerState::On, Some(PowerState::Off)),
    };
    crate::store::PowerIntent {
        target,
        passing,
        why: format!("power {} by fleet", command_name(command)),
    }
}

/// Runs the power command decided with `record` (the machine as the decision left it); a failure
/// fails the in-progress status it was for, with the driver's message as the reason. A command
/// overtaken by a newer decision is dropped (and recorded) instead. `true` unless dropped.
async fn run_power(
    store: &Store,
    drivers: &PowerDrivers,
    record: MachineRecord,
    command: PowerCommand,
    actor: &str,
    done: &mut ActionDone,
) -> Result<bool, ActionError> {
    let name = record.name.to_string();
    if record.power_type == "unconfigured" {
        // lifecycle.md: without a power type the machine must already be on and netbooting.
        done.notes.push(format!(
            "no power type: power {} it yourself",
            command_name(command)
        ));
        store
            .clear_pending_power(record.id, record.generation)
            .await?;
        return Ok(true);
    }
    let made_for = MadeFor::decision(&record);
    match carry_out_power(store, drivers, &name, command, made_for, actor).await? {
        PowerResult::Ran(report) => {
            done.notes.extend(report.note);
            done.record = store.machine(&name).await?;
            Ok(true)
        }
        PowerResult::Dropped { why } => {
            done.notes
                .push(format!("power {} dropped: {why}", command_name(command)));
            done.record = store.machine(&name).await?;
            Ok(false)
        }
        PowerResult::Failed(error) => {
            let reason = failed_reason(command, &error);
            let record = fail_in_progress(store, &name, actor, &reason).await?;
            Err(ActionError::PowerFailed {
                machine: name,
                command: command_name(command).to_string(),
                error,
                record: Box::new(record),
            })
        }
    }
}

fn failed_reason(command: PowerCommand, error: &PowerError) -> String {
    format!("power {} failed: {error}", command_name(command))
}

/// What became of a power command.
#[derive(Debug)]
pub enum PowerResult {
    /// The driver carried it out; its report is stored.
    Ran(crate::power::PowerReport),
    /// A newer decision asked for power after this command was made (or the machine it was made
    /// for is gone): it was not sent, and a `power` event says why.
    Dropped { why: String },
    /// The driver failed; power `error` is stored with the message.
    Failed(PowerError),
}

/// Which decision a power command was made for: the machine (its id: a machine deleted and added
/// again under its name is another) and the generation the decision left it at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MadeFor {
    pub machine_id: i64,
    pub generation: i64,
}

impl MadeFor {
    /// The decision that left the machine as `record` is.
    pub fn decision(record: &MachineRecord) -> MadeFor {
        MadeFor {
            machine_id: record.id,
            generation: record.generation,
        }
    }

    /// Why a command made for this decision must not run on the machine as `now` is, if so.
    fn overtaken_by(&self, now: &MachineRecord) -> Option<String> {
        if now.id != self.machine_id {
            return Some(format!(
                "it was decided for an earlier machine of this name (id {}, now {})",
                self.machine_id, now.id
            ));
        }
        (now.power_decided > self.generation).then(|| {
            format!(
                "it was decided at generation {}, and a newer decision (generation {}) asked for \
                 power since",
                self.generation, now.power_decided
            )
        })
    }
}

/// Carries out `command`, decided for machine `name` as `made_for` says, in the machine's
/// power queue: after every command that asked for its turn before, never beside one. Once its
/// turn comes it is dropped if a newer decision asked for power since (the machine's
/// `power_decided` passed `made_for`), so an old command never undoes a newer one. The result
/// (state, error, or the drop) is stored before the next command's turn; a command that boots
/// the machine (on, cycle) starts its boot clock, before it is sent.
pub async fn carry_out_power(
    store: &Store,
    drivers: &PowerDrivers,
    name: &str,
    command: PowerCommand,
    made_for: MadeFor,
    actor: &str,
) -> Result<PowerResult, StoreError> {
    // The outbox entry of this decision stays claimed from the moment the command is queued
    // until it is done: a command waiting its turn behind a slow BMC call is not forgotten, and
    // the leader's courier must not send it a second time (an entry untouched for
    // PENDING_POWER_STALE_MS is taken as a dead controller's).
    let _claim = keep_claimed(store, made_for);
    let _turn = drivers.turn(name).await;
    let record = store
        .machine(name)
        .await?
        .ok_or_else(|| StoreError::UnknownMachine(name.to_string()))?;
    if let Some(why) = made_for.overtaken_by(&record) {
        store
            .record_power_dropped(name, command_name(command), &why, made_for.generation)
            .await?;
        tracing::info!(
            machine = name,
            "power {} dropped: {why}",
            command_name(command)
        );
        return Ok(PowerResult::Dropped { why });
    }
    store
        .set_power_intent(name, Some(&power_intent(command)))
        .await?;
    if matches!(command, PowerCommand::On | PowerCommand::Cycle) {
        // The machine's new boot starts before the command is sent, not when it returns: a
        // BMC may answer after the machine has already fetched its iPXE script (a fast VM, a
        // slow Redfish call), and a script fetched under the previous boot's clock joined that
        // boot, whose one exchange was spent, so the new run was refused as a second exchange.
        // A heartbeat of the previous run sent meanwhile carries that run's token, which the
        // new run's exchange voids.
        store.boot_clock_started(name).await?;
    }
    let executed = match power_target(store, &record).await {
        Ok(target) => drivers.execute(&target, command).await,
        Err(error) => Err(error),
    };
    super::failpoint::reached(super::failpoint::AFTER_POWER_COMMAND);
    let result = match executed {
        Ok(report) => {
            store
                .set_power(name, report.state, actor, report.note.as_deref())
                .await?;
            PowerResult::Ran(report)
        }
        Err(error) => {
            let reason = failed_reason(command, &error);
            store.set_power_intent(name, None).await?;
            store
                .set_power(name, crate::model::PowerState::Error, actor, Some(&reason))
                .await?;
            PowerResult::Failed(error)
        }
    };
    store
        .clear_pending_power(made_for.machine_id, made_for.generation)
        .await?;
    Ok(result)
}

/// How often a running power command refreshes its outbox claim.
const CLAIM_REFRESH: std::time::Duration = std::time::Duration::from_secs(3);
/// A pending power decision untouched this long is taken by the leader as forgotten.
pub const PENDING_POWER_STALE_MS: i64 = 10_000;

/// Refreshes the decision's outbox claim every few seconds until dropped.
fn keep_claimed(store: &Store, made_for: MadeFor) -> AbortOnDrop {
    let store = store.clone();
    AbortOnDrop(tokio::spawn(async move {
        loop {
            if let Err(error) = store
                .touch_pending_power(made_for.machine_id, made_for.generation)
                .await
            {
                tracing::warn!(%error, "cannot refresh a power command's outbox claim");
            }
            tokio::time::sleep(CLAIM_REFRESH).await;
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Carries out a power decision found stale in the outbox (its controller died before or while
/// running it), with what the decision asked to follow: the status completed after a power
/// that completes it, the status failed after a command that failed (not after a failure's
/// power-off). Does nothing if another controller claimed it first. `true` if it ran here.
pub async fn carry_out_pending_power(
    store: &Store,
    drivers: &PowerDrivers,
    row: &crate::store::PendingPowerRow,
) -> Result<bool, ActionError> {
    if !store
        .claim_pending_power(row.machine_id, row.decided, PENDING_POWER_STALE_MS)
        .await?
    {
        return Ok(false);
    }
    let (name, pending) = (row.name.as_str(), &row.pending);
    if matches!(row.power_type.as_str(), "unconfigured" | "manual" | "") {
        // A person powers these; the decision's notes told them so.
        store
            .clear_pending_power(row.machine_id, row.decided)
            .await?;
        return Ok(false);
    }
    tracing::info!(
        machine = name,
        "carrying out a power {} decided at generation {} that was never done",
        command_name(pending.command),
        row.decided
    );
    let made_for = MadeFor {
        machine_id: row.machine_id,
        generation: row.decided,
    };
    let result = carry_out_power(
        store,
        drivers,
        name,
        pending.command,
        made_for,
        &pending.actor,
    )
    .await?;
    match result {
        PowerResult::Ran(_) if pending.follow_up == FollowUp::CompleteAfterPower => {
            settle_machine(store, name, &pending.actor, &Settlement::Succeeded).await?;
        }
        PowerResult::Failed(error) if !pending.after_failure => {
            let reason = failed_reason(pending.command, &error);
            fail_in_progress(store, name, &pending.actor, &reason).await?;
        }
        PowerResult::Failed(error) => {
            tracing::warn!(
                machine = name,
                "power off after the failure did not work: {error}"
            );
        }
        PowerResult::Ran(_) | PowerResult::Dropped { .. } => {}
    }
    Ok(true)
}

/// Powers a machine off after its in-progress status failed (a script failed, it timed out, it
/// went silent): a machine left running in the ephemeral environment helps nobody. `record` is
/// the machine as the failure left it (the failure decided the power-off). Best effort: a
/// machine without a power driver is left as it is, and a power failure is recorded, not
/// returned (the failure it follows is what matters).
pub async fn power_off_after_failure(
    store: &Store,
    drivers: &PowerDrivers,
    record: &MachineRecord,
) -> Result<(), ActionError> {
    let power_type = record.power_type.as_str();
    if matches!(power_type, "unconfigured" | "manual") || power_type.is_empty() {
        return Ok(());
    }
    let command = PowerCommand::Off(crate::model::PowerOffMode::Hard);
    let name = record.name.as_str();
    let made_for = MadeFor::decision(record);
    if let PowerResult::Failed(error) =
        carry_out_power(store, drivers, name, command, made_for, "controller").await?
    {
        tracing::warn!(
            machine = name,
            "power off after the failure did not work: {error}"
        );
    }
    Ok(())
}

/// Fails the machine's in-progress status (if it is in one) with `reason`.
async fn fail_in_progress(
    store: &Store,
    name: &str,
    actor: &str,
    reason: &str,
) -> Result<Option<MachineRecord>, ActionError> {
    settle_machine(
        store,
        name,
        actor,
        &Settlement::Failed {
            reason: reason.to_string(),
        },
    )
    .await
}

async fn complete_after_power(
    store: &Store,
    name: &str,
    actor: &str,
    done: &mut ActionDone,
) -> Result<(), ActionError> {
    let record = settle_machine(store, name, actor, &Settlement::Succeeded).await?;
    if let Some(record) = &record {
        if done.statuses.last() != Some(&record.lifecycle.status) {
            done.statuses.push(record.lifecycle.status);
        }
    }
    done.record = record;
    Ok(())
}

/// Which state of the machine a settlement is for, and what follows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettleAt {
    /// Settle only while the machine is still at this generation (the one a watcher read): a
    /// machine that moved on meanwhile is left alone. `None`: the machine as it is now.
    pub generation: Option<i64>,
    /// The failure powers the machine off: the settlement is a power decision.
    pub powers_off: bool,
}

/// Ends the machine's in-progress status as `settlement` says; does nothing if it is not in one.
pub async fn settle_machine(
    store: &Store,
    name: &str,
    actor: &str,
    settlement: &Settlement,
) -> Result<Option<MachineRecord>, ActionError> {
    settle_machine_at(store, name, actor, settlement, SettleAt::default()).await
}

/// [`settle_machine`] for the state `at` names.
pub async fn settle_machine_at(
    store: &Store,
    name: &str,
    actor: &str,
    settlement: &Settlement,
    at: SettleAt,
) -> Result<Option<MachineRecord>, ActionError> {
    Ok(settle_committed(store, name, actor, settlement, at)
        .await?
        .0)
}

/// Fails the machine's in-progress status with `settlement` (only at `generation`, when given),
/// marks its running scripts aborted and powers it off. `true` if it failed the machine; `false`
/// if the machine was not in progress or had moved on.
pub async fn fail_and_power_off(
    store: &Store,
    drivers: &PowerDrivers,
    name: &str,
    settlement: &Settlement,
    generation: Option<i64>,
) -> Result<bool, ActionError> {
    let at = SettleAt {
        generation,
        powers_off: true,
    };
    let (record, outcome) = settle_committed(store, name, "controller", settlement, at).await?;
    let (Some(record), Some(_)) = (record, outcome) else {
        return Ok(false);
    };
    store.abort_running_scripts(record.id).await?;
    power_off_after_failure(store, drivers, &record).await?;
    Ok(true)
}

/// Ends the in-progress status, then carries out the power command the end asks for and its
/// follow-up: a disk erase that succeeds goes on to releasing, which powers the machine off and
/// completes once it is off (the way `perform` carries out an action).
pub async fn settle_and_carry_out(
    store: &Store,
    drivers: &PowerDrivers,
    name: &str,
    actor: &str,
    settlement: &Settlement,
) -> Result<Option<MachineRecord>, ActionError> {
    let (record, outcome) =
        settle_committed(store, name, actor, settlement, SettleAt::default()).await?;
    let (Some(outcome), Some(record)) = (outcome, record) else {
        return Ok(None);
    };
    let Some(command) = outcome.power else {
        return Ok(Some(record));
    };
    let done = ActionDone {
        machine: name.to_string(),
        action: Action::Release,
        statuses: vec![record.lifecycle.status],
        power_command: Some(command),
        notes: Vec::new(),
        record: Some(record.clone()),
    };
    let power = PowerStep {
        record,
        command,
        follow_up: outcome.follow_up,
        actor: actor.to_string(),
    };
    Ok(power.run_to_the_end(store, drivers, done).await?.record)
}

/// The settlement committed: the record afterwards and the outcome (`None` when the machine
/// was not in progress, had moved on from `at.generation`, or the settlement did not apply to
/// its status).
async fn settle_committed(
    store: &Store,
    name: &str,
    actor: &str,
    settlement: &Settlement,
    at: SettleAt,
) -> Result<(Option<MachineRecord>, Option<crate::model::Outcome>), ActionError> {
    for _ in 0..=CONFLICT_RETRIES {
        let record = store
            .machine(name)
            .await?
            .ok_or_else(|| ActionError::UnknownMachine(name.to_string()))?;
        let moved_on = at
            .generation
            .is_some_and(|generation| generation != record.generation);
        if moved_on || !record.lifecycle.status.is_in_progress() {
            return Ok((Some(record), None));
        }
        let Ok(mut outcome) = settle(&record.lifecycle, settlement) else {
            return Ok((Some(record), None));
        };
        if record.lifecycle.status == Status::Deploying && outcome.after.status == Status::Deployed
        {
            if let Some(image) = &record.image {
                outcome.after.deployed_os = Some(image.clone());
            }
        }
        let reason = settlement.reason();
        let commit = Commit {
            actor,
            action: None,
            reason: reason.as_deref(),
            outcome: &outcome,
            image: None,
            decides_power: outcome.power.is_some() || at.powers_off,
            erase_mode: None,
        };
        match store.commit(&record, &commit).await {
            Ok(after) => return Ok((after, Some(outcome))),
            Err(StoreError::Conflict(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(StoreError::Conflict(name.to_string()).into())
}
