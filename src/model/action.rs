//! The actions of the life-cycle: which statuses accept each, and what each one does.
//!
//! [`decide`] is the whole rule book: given what the store knows of a machine and the action a
//! person (or the plan) asks for, it returns the status changes, power command and flag changes
//! to carry out, or a [`Refusal`] that names the status and the action. Every status change it
//! returns has been checked against the whitelist in [`Status::allowed_next`].

use super::status::{InvalidTransition, Status, Status::*};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A machine's power state. Not a status: it changes beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
    Unknown,
    Error,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
            PowerState::Error => "error",
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PowerState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "on" => Ok(PowerState::On),
            "off" => Ok(PowerState::Off),
            "unknown" => Ok(PowerState::Unknown),
            "error" => Ok(PowerState::Error),
            other => Err(format!("unknown power state `{other}`")),
        }
    }
}

/// What the life-cycle reads and writes of a machine. The rest of a machine (hardware, config)
/// does not change what an action may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub status: Status,
    /// The status before the current testing, rescue, commissioning or broken episode: where
    /// abort, exit-rescue, test completion and mark-fixed return to.
    pub previous_status: Option<Status>,
    pub locked: bool,
    pub power: PowerState,
    pub owner: Option<String>,
    /// Commissioning has passed at least once.
    pub commissioned: bool,
    /// The OS installed on the machine's disk, if it has been deployed (or was added live).
    pub deployed_os: Option<String>,
    /// It has a power type other than "unconfigured" (manual counts as configured).
    pub power_configured: bool,
}

impl Lifecycle {
    /// A machine as it is created: `new`, powered off as far as anyone knows.
    pub fn created(status: Status) -> Result<Self, InvalidTransition> {
        Status::check_initial(status)?;
        Ok(Lifecycle {
            status,
            previous_status: None,
            locked: false,
            power: PowerState::Unknown,
            owner: None,
            commissioned: false,
            deployed_os: None,
            power_configured: false,
        })
    }
}

/// An action a person or the plan can take on a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Commission,
    Test,
    Abort,
    Allocate,
    Deploy,
    Release,
    MarkBroken,
    MarkFixed,
    OverrideFailedTesting,
    EnterRescue,
    ExitRescue,
    Lock,
    Unlock,
    PowerOn,
    PowerOff,
    PowerCycle,
    Delete,
}

impl Action {
    pub const ALL: [Action; 17] = [
        Action::Commission,
        Action::Test,
        Action::Abort,
        Action::Allocate,
        Action::Deploy,
        Action::Release,
        Action::MarkBroken,
        Action::MarkFixed,
        Action::OverrideFailedTesting,
        Action::EnterRescue,
        Action::ExitRescue,
        Action::Lock,
        Action::Unlock,
        Action::PowerOn,
        Action::PowerOff,
        Action::PowerCycle,
        Action::Delete,
    ];

    /// The snake_case name used on the wire and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Commission => "commission",
            Action::Test => "test",
            Action::Abort => "abort",
            Action::Allocate => "allocate",
            Action::Deploy => "deploy",
            Action::Release => "release",
            Action::MarkBroken => "mark_broken",
            Action::MarkFixed => "mark_fixed",
            Action::OverrideFailedTesting => "override_failed_testing",
            Action::EnterRescue => "enter_rescue",
            Action::ExitRescue => "exit_rescue",
            Action::Lock => "lock",
            Action::Unlock => "unlock",
            Action::PowerOn => "power_on",
            Action::PowerOff => "power_off",
            Action::PowerCycle => "power_cycle",
            Action::Delete => "delete",
        }
    }

    /// The name on the command line (`mark-broken`, and `rescue` for enter_rescue).
    pub fn cli_name(self) -> &'static str {
        match self {
            Action::EnterRescue => "rescue",
            _ => CLI_NAMES[self as usize],
        }
    }

    /// Parses the wire name, the command-line name, or either with `-` and `_` swapped.
    pub fn parse(text: &str) -> Option<Action> {
        let wire = text.replace('-', "_");
        if wire == "rescue" {
            return Some(Action::EnterRescue);
        }
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == wire)
    }

    /// The statuses that accept this action (before the lock rule and extra conditions).
    pub fn accepted_in(self) -> Vec<Status> {
        Status::ALL
            .into_iter()
            .filter(|status| self.accepts_status(*status))
            .collect()
    }

    /// Whether `status` is in this action's "accepted in" list of lifecycle.md.
    pub fn accepts_status(self, status: Status) -> bool {
        match self {
            Action::Commission => matches!(status, New | FailedCommissioning | Ready | Broken),
            Action::Test => {
                matches!(
                    status,
                    New | Ready
                        | Reserved
                        | Allocated
                        | Deployed
                        | Broken
                        | RescueMode
                        | Missing
                        | Retired
                ) || status.is_failed()
            }
            Action::Abort => matches!(status, Commissioning | Deploying | Testing | DiskErasing),
            Action::Allocate => status == Ready,
            Action::Deploy => matches!(status, Ready | Allocated),
            Action::Release => matches!(
                status,
                Allocated
                    | Deployed
                    | Deploying
                    | FailedDeployment
                    | FailedReleasing
                    | FailedDiskErasing
                    | Reserved
                    | Broken
            ),
            Action::MarkBroken => {
                matches!(
                    status,
                    New | Commissioning
                        | Ready
                        | Allocated
                        | Releasing
                        | Deploying
                        | Deployed
                        | DiskErasing
                        | Testing
                ) || status.is_failed()
            }
            Action::MarkFixed => status == Broken,
            Action::OverrideFailedTesting => status == FailedTesting,
            Action::EnterRescue => matches!(
                status,
                New | FailedCommissioning
                    | Ready
                    | Reserved
                    | Allocated
                    | FailedDeployment
                    | Deployed
                    | Missing
                    | Retired
                    | Broken
                    | FailedDiskErasing
                    | FailedEnteringRescueMode
                    | FailedExitingRescueMode
                    | FailedTesting
            ),
            Action::ExitRescue => matches!(
                status,
                RescueMode
                    | EnteringRescueMode
                    | FailedEnteringRescueMode
                    | FailedExitingRescueMode
            ),
            Action::Lock => matches!(status, Deployed | Deploying),
            Action::Unlock | Action::Delete => true,
            Action::PowerOn | Action::PowerCycle => matches!(status, Deploying | Deployed | Broken),
            Action::PowerOff => !status.is_in_progress(),
        }
    }
}

const CLI_NAMES: [&str; 17] = [
    "commission",
    "test",
    "abort",
    "allocate",
    "deploy",
    "release",
    "mark-broken",
    "mark-fixed",
    "override-failed-testing",
    "rescue",
    "exit-rescue",
    "lock",
    "unlock",
    "power-on",
    "power-off",
    "power-cycle",
    "delete",
];

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to erase disks on release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EraseMode {
    Quick,
    Secure,
    Full,
}

impl EraseMode {
    /// As fleet files, the API and the store spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            EraseMode::Quick => "quick",
            EraseMode::Secure => "secure",
            EraseMode::Full => "full",
        }
    }
}

impl FromStr for EraseMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "quick" => Ok(EraseMode::Quick),
            "secure" => Ok(EraseMode::Secure),
            "full" => Ok(EraseMode::Full),
            other => Err(format!("unknown erase mode `{other}`")),
        }
    }
}

/// How to power a machine off.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PowerOffMode {
    Soft,
    #[default]
    Hard,
}

/// The options an action may carry. Absent options take the defaults shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionOptions {
    /// release: erase the disks first.
    pub erase: Option<EraseMode>,
    /// test: the chosen tests include destructive ones (refused on a deployed machine).
    pub destructive_tests: bool,
    /// allocate / deploy: who owns the machine (default: the person acting).
    pub owner: Option<String>,
    /// deploy: the image to install.
    pub image: Option<String>,
    /// power_off: soft or hard.
    pub power_off_mode: Option<PowerOffMode>,
}

/// An action with who asks for it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRequest {
    pub action: Action,
    pub actor: String,
    pub comment: Option<String>,
    pub options: ActionOptions,
}

impl ActionRequest {
    pub fn new(action: Action, actor: &str) -> Self {
        ActionRequest {
            action,
            actor: actor.to_string(),
            comment: None,
            options: ActionOptions::default(),
        }
    }
}

/// A power command the controller must carry out through the machine's power driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerCommand {
    On,
    Off(PowerOffMode),
    Cycle,
}

/// What the controller does once the power command has succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowUp {
    /// Nothing: the machine reports in (or stays) by itself.
    None,
    /// The in-progress status completes as soon as the power command has succeeded
    /// (releasing once power is off, exiting rescue once the machine is off or rebooted).
    CompleteAfterPower,
}

/// One status change, checked against the whitelist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub from: Status,
    pub to: Status,
}

/// What an accepted action does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The status changes in order (zero, one or two: deploy from ready allocates first).
    pub changes: Vec<StatusChange>,
    /// The machine's life-cycle record after the action (power as it will be once the command runs).
    pub after: Lifecycle,
    pub power: Option<PowerCommand>,
    pub follow_up: FollowUp,
    /// The machine is to be removed.
    pub delete: bool,
    /// Notes for the event history ("owner cleared", "released first").
    pub notes: Vec<String>,
}

/// Why an action was refused. The message names the status and the action; the caller adds the
/// machine's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a machine that is {status}: {reason}", action.cli_name())]
pub struct Refusal {
    pub action: Action,
    pub status: Status,
    pub reason: String,
}

/// Decides what `request` does to a machine in state `machine`, or why it is refused.
pub fn decide(machine: &Lifecycle, request: &ActionRequest) -> Result<Outcome, Refusal> {
    let action = request.action;
    let refuse = |reason: String| Refusal {
        action,
        status: machine.status,
        reason,
    };
    if machine.locked && action != Action::Unlock {
        return Err(refuse("it is locked; unlock it first".into()));
    }
    if !action.accepts_status(machine.status) {
        let accepted: Vec<&str> = action.accepted_in().iter().map(|s| s.as_str()).collect();
        return Err(refuse(format!(
            "{action} is accepted only in: {}",
            accepted.join(", ")
        )));
    }
    let mut plan = OutcomeBuilder::new(machine);
    decide_accepted(machine, request, &mut plan).map_err(refuse)?;
    plan.finish().map_err(|invalid| refuse(invalid.to_string()))
}

fn decide_accepted(
    machine: &Lifecycle,
    request: &ActionRequest,
    plan: &mut OutcomeBuilder,
) -> Result<(), String> {
    match request.action {
        Action::Commission => commission(machine, plan),
        Action::Test => test(machine, request, plan),
        Action::Abort => abort(machine, plan),
        Action::Allocate => {
            plan.change_to(Allocated);
            plan.after.owner = Some(owner_for(request));
            Ok(())
        }
        Action::Deploy => deploy(machine, request, plan),
        Action::Release => release(request, plan),
        Action::MarkBroken => mark_broken(machine, plan),
        Action::MarkFixed => mark_fixed(machine, plan),
        Action::OverrideFailedTesting => {
            plan.change_to(if machine.deployed_os.is_some() {
                Deployed
            } else {
                Ready
            });
            Ok(())
        }
        Action::EnterRescue => enter_rescue(machine, plan),
        Action::ExitRescue => exit_rescue(machine, plan),
        Action::Lock => lock(machine, plan, true),
        Action::Unlock => lock(machine, plan, false),
        Action::PowerOn | Action::PowerCycle => power_on(machine, request.action, plan),
        Action::PowerOff => power_off(machine, request, plan),
        Action::Delete => {
            plan.delete = true;
            Ok(())
        }
    }
}

fn owner_for(request: &ActionRequest) -> String {
    request
        .options
        .owner
        .clone()
        .unwrap_or_else(|| request.actor.clone())
}

/// Power the machine so that it netboots: on if it is not on, else a reboot.
fn netboot_power(machine: &Lifecycle) -> PowerCommand {
    if machine.power == PowerState::On {
        PowerCommand::Cycle
    } else {
        PowerCommand::On
    }
}

fn commission(machine: &Lifecycle, plan: &mut OutcomeBuilder) -> Result<(), String> {
    if !machine.power_configured && machine.power != PowerState::On {
        return Err(
            "unconfigured power type: give it a power type (manual if a person \
                    powers it) or power it on so that it netboots"
                .into(),
        );
    }
    plan.remember_previous();
    plan.change_to(Commissioning);
    plan.power(netboot_power(machine));
    Ok(())
}

fn test(
    machine: &Lifecycle,
    request: &ActionRequest,
    plan: &mut OutcomeBuilder,
) -> Result<(), String> {
    if machine.status == New && !machine.commissioned {
        return Err(
            "a new machine can be tested only after it has been commissioned; \
                    commission it first"
                .into(),
        );
    }
    if machine.status == Deployed && request.options.destructive_tests {
        return Err("destructive tests are refused on a deployed machine; release it first".into());
    }
    plan.remember_previous();
    plan.change_to(Testing);
    if machine.status != RescueMode {
        plan.power(netboot_power(machine));
    }
    Ok(())
}

fn abort(machine: &Lifecycle, plan: &mut OutcomeBuilder) -> Result<(), String> {
    let to = match machine.status {
        Commissioning => New,
        Deploying => Allocated,
        DiskErasing => FailedDiskErasing,
        _ => testing_return_status(machine),
    };
    plan.change_to(to);
    plan.power(PowerCommand::Off(PowerOffMode::Hard));
    plan.notes.push("running scripts are marked aborted".into());
    Ok(())
}

/// Where a machine goes when its testing ends well or is aborted: the status before testing
/// (ready if that was commissioning). A status the whitelist does not allow from testing
/// (failed_commissioning, rescue_mode) falls back to ready if commissioning ever passed, else new.
pub fn testing_return_status(machine: &Lifecycle) -> Status {
    match machine.previous_status {
        None | Some(Commissioning) => Ready,
        Some(previous) if Testing.can_change_to(previous) && !previous.is_failed() => previous,
        Some(_) if machine.commissioned => Ready,
        Some(_) => New,
    }
}

fn deploy(
    machine: &Lifecycle,
    request: &ActionRequest,
    plan: &mut OutcomeBuilder,
) -> Result<(), String> {
    if machine.status == Ready {
        plan.change_to(Allocated);
        plan.after.owner = Some(owner_for(request));
    } else if machine.owner.is_none() {
        plan.after.owner = Some(owner_for(request));
    }
    plan.change_to(Deploying);
    if let Some(image) = &request.options.image {
        plan.notes.push(format!("image {image}"));
    }
    plan.power(netboot_power(machine));
    Ok(())
}

fn release(request: &ActionRequest, plan: &mut OutcomeBuilder) -> Result<(), String> {
    plan.after.owner = None;
    plan.notes.push("owner cleared".into());
    if let Some(mode) = request.options.erase {
        plan.change_to(DiskErasing);
        plan.notes.push(format!("disk erase: {}", mode.as_str()));
        plan.power(PowerCommand::Cycle);
    } else {
        plan.change_to(Releasing);
        plan.power(PowerCommand::Off(PowerOffMode::Hard));
        plan.follow_up = FollowUp::CompleteAfterPower;
    }
    Ok(())
}

fn mark_broken(machine: &Lifecycle, plan: &mut OutcomeBuilder) -> Result<(), String> {
    let releasable = Action::Release.accepts_status(machine.status);
    if releasable && machine.status != Deployed {
        // Released first, as MAAS does; a deployed machine keeps its owner and OS so that
        // mark-fixed can return it to deployed.
        plan.after.owner = None;
        plan.after.deployed_os = None;
        plan.notes.push("released first (owner cleared)".into());
    }
    plan.remember_previous();
    plan.change_to(Broken);
    if machine.power != PowerState::Off {
        plan.power(PowerCommand::Off(PowerOffMode::Hard));
    }
    Ok(())
}

fn mark_fixed(machine: &Lifecycle, plan: &mut OutcomeBuilder) -> Result<(), String> {
    if machine.deployed_os.is_some() {
        plan.change_to(Deployed);
        return Ok(());
    }
    if !machine.commissioned {
        return Err("commissioning has never passed on it; commission it instead".into());
    }
    plan.change_to(Ready);
    Ok(())
}

fn enter_rescue(machine: &Lifecycle, plan: &mut OutcomeBuilder) -> Result<(), String> {
    if machine.status == FailedExitingRescueMode {
        return Err(
            "the whitelist has no failed_exiting_rescue_mode -> entering_rescue_mode; \
                    the machine is still in rescue: exit-rescue retries the exit"
                .into(),
        );
    }
    if !matches!(
        machine.status,
        FailedEnteringRescueMode | FailedExitingRescueMode
    ) {
        plan.remember_previous();
    }
    plan.change_to(EnteringRescueMode);
    plan.power(PowerCommand::Cycle);
    Ok(())
}

/// Where exiting rescue returns a machine to.
pub fn rescue_return_status(machine: &Lifecycle) -> Status {
    match machine.previous_status {
        Some(previous) if ExitingRescueMode.can_change_to(previous) => previous,
        _ if machine.deployed_os.is_some() => Deployed,
        _ if machine.commissioned => Ready,
        _ => New,
    }
}

fn exit_rescue(machine: &Lifecycle, plan: &mut OutcomeBuilder) -> Result<(), String> {
    plan.change_to(ExitingRescueMode);
    let power = if rescue_return_status(machine) == Deployed {
        PowerCommand::Cycle
    } else {
        PowerCommand::Off(PowerOffMode::Hard)
    };
    plan.power(power);
    plan.follow_up = FollowUp::CompleteAfterPower;
    Ok(())
}

fn lock(machine: &Lifecycle, plan: &mut OutcomeBuilder, lock: bool) -> Result<(), String> {
    match (lock, machine.locked) {
        (true, true) => Err("it is already locked".into()),
        (false, false) => Err("it is not locked".into()),
        _ => {
            plan.after.locked = lock;
            Ok(())
        }
    }
}

fn power_on(machine: &Lifecycle, action: Action, plan: &mut OutcomeBuilder) -> Result<(), String> {
    // The seed lets a person power on a broken machine to repair it, owned or not.
    if machine.owner.is_none() && machine.status != Broken {
        return Err("it has no owner; allocate it first".into());
    }
    if !machine.power_configured {
        return Err("unconfigured power type: give it a power type first".into());
    }
    let command = if action == Action::PowerOn {
        PowerCommand::On
    } else {
        PowerCommand::Cycle
    };
    plan.power(command);
    Ok(())
}

fn power_off(
    machine: &Lifecycle,
    request: &ActionRequest,
    plan: &mut OutcomeBuilder,
) -> Result<(), String> {
    if machine.power == PowerState::Off {
        return Err("its power is already off".into());
    }
    if !machine.power_configured {
        return Err("unconfigured power type: give it a power type first".into());
    }
    let mode = request.options.power_off_mode.unwrap_or_default();
    plan.power(PowerCommand::Off(mode));
    Ok(())
}

/// How an in-progress status ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Settlement {
    /// It finished well (the machine reported success, or the power command it waited for ran).
    Succeeded,
    /// Commissioning scripts passed and the commissioning tests start now.
    StartTesting,
    /// It failed, with the reason.
    Failed { reason: String },
    /// It ran past its limit (in seconds).
    TimedOut { operation: String, seconds: u64 },
    /// The machine sent no heartbeat for this many seconds.
    NotHeardFrom { seconds: u64 },
    /// The machine did not call the controller within this many seconds of being powered on.
    DidNotBoot { seconds: u64 },
    /// A deployment's installed system did not call back within this many seconds of the
    /// installer's done signal.
    DidNotCallBack { seconds: u64 },
}

impl Settlement {
    /// The reason recorded for a failure.
    pub fn reason(&self) -> Option<String> {
        match self {
            Settlement::Succeeded | Settlement::StartTesting => None,
            Settlement::Failed { reason } => Some(reason.clone()),
            Settlement::TimedOut { operation, seconds } => Some(format!(
                "operation {operation} timed out after {}",
                super::describe_seconds(*seconds)
            )),
            Settlement::NotHeardFrom { seconds } => Some(format!(
                "not heard from for {}",
                super::describe_seconds(*seconds)
            )),
            Settlement::DidNotBoot { seconds } => Some(format!(
                "did not boot within {}",
                super::describe_seconds(*seconds)
            )),
            Settlement::DidNotCallBack { seconds } => Some(format!(
                "the installed system did not call back within {}",
                super::describe_seconds(*seconds)
            )),
        }
    }
}

/// Ends the in-progress status `machine` is in. Marking a `new` or already-failed machine failed
/// is a no-op (no change); any other resting status cannot be settled.
pub fn settle(machine: &Lifecycle, settlement: &Settlement) -> Result<Outcome, InvalidTransition> {
    let mut plan = OutcomeBuilder::new(machine);
    let status = machine.status;
    let Some(failed) = status.failed_status() else {
        if matches!(settlement, Settlement::Succeeded | Settlement::StartTesting)
            || !(status == New || status.is_failed())
        {
            return Err(InvalidTransition {
                from: Some(status),
                to: status.failed_status().unwrap_or(status),
            });
        }
        return plan.finish();
    };
    match settlement {
        Settlement::Succeeded => succeed(machine, &mut plan),
        Settlement::StartTesting => {
            plan.after.commissioned = true;
            plan.remember_previous();
            plan.change_to(Testing);
        }
        _ => {
            plan.change_to(failed);
            plan.notes.extend(settlement.reason());
        }
    }
    plan.finish()
}

fn succeed(machine: &Lifecycle, plan: &mut OutcomeBuilder) {
    match machine.status {
        Commissioning => {
            plan.after.commissioned = true;
            plan.change_to(Ready);
        }
        Testing => plan.change_to(testing_return_status(machine)),
        Deploying => {
            // The controller records the image it deployed; the rule book only needs to know
            // that the disk now holds an OS (mark-fixed and override-failed-testing read it).
            if plan.after.deployed_os.is_none() {
                plan.after.deployed_os = Some("unknown".into());
            }
            plan.change_to(Deployed);
        }
        DiskErasing => {
            plan.change_to(Releasing);
            plan.power(PowerCommand::Off(PowerOffMode::Hard));
            plan.follow_up = FollowUp::CompleteAfterPower;
        }
        Releasing => {
            plan.after.deployed_os = None;
            plan.after.owner = None;
            plan.change_to(if machine.commissioned { Ready } else { New });
        }
        EnteringRescueMode => plan.change_to(RescueMode),
        ExitingRescueMode => {
            plan.after.previous_status = None;
            plan.change_to(rescue_return_status(machine));
        }
        _ => {}
    }
}

/// Collects the parts of an [`Outcome`] and checks each status change against the whitelist.
struct OutcomeBuilder {
    changes: Vec<StatusChange>,
    after: Lifecycle,
    power: Option<PowerCommand>,
    follow_up: FollowUp,
    delete: bool,
    notes: Vec<String>,
}

impl OutcomeBuilder {
    fn new(machine: &Lifecycle) -> Self {
        OutcomeBuilder {
            changes: Vec::new(),
            after: machine.clone(),
            power: None,
            follow_up: FollowUp::None,
            delete: false,
            notes: Vec::new(),
        }
    }

    fn remember_previous(&mut self) {
        self.after.previous_status = Some(self.after.status);
    }

    fn change_to(&mut self, to: Status) {
        self.changes.push(StatusChange {
            from: self.after.status,
            to,
        });
        self.after.status = to;
    }

    fn power(&mut self, command: PowerCommand) {
        self.power = Some(command);
        self.after.power = match command {
            PowerCommand::On | PowerCommand::Cycle => PowerState::On,
            PowerCommand::Off(_) => PowerState::Off,
        };
    }

    fn finish(self) -> Result<Outcome, InvalidTransition> {
        for change in &self.changes {
            change.from.check_change_to(change.to)?;
        }
        Ok(Outcome {
            changes: self.changes,
            after: self.after,
            power: self.power,
            follow_up: self.follow_up,
            delete: self.delete,
            notes: self.notes,
        })
    }
}
