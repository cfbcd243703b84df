//! What booted machines ask of the controller (MAAS's metadata service): enlist, "what do I run
//! now", script results, heartbeats and the final signal. The HTTP side is
//! `src/api/metadata.rs`; the rules are pure, in `rules.rs`; enlistment matching is `enlist.rs`.
//!
//! A run is one boot's work: it starts when its token is handed out (the exchange of a boot or
//! registration secret, or the enlistment that created the machine, `credentials.rs`) and is
//! kept with its role and the token's hash in the machine's `machine_state` (deleted with the
//! machine). Every call carries the run's token, which opens only that machine's current run
//! while it is not over; results and the signal must name that run.

pub mod credentials;
pub mod deployment;
pub mod enlist;
pub mod rules;

use crate::model::{EraseMode, Settlement};
use crate::power::PowerDrivers;
use crate::services::actions::{
    fail_and_power_off, settle_and_carry_out, settle_machine, ActionError,
};
use crate::store::{now_ms, MachineRecord, NewEvent, ScriptResult, Store, StoreError};
use credentials::Authorized;
use rules::{Role, ScriptEntry, ScriptReport, ScriptStatus};
use std::sync::Arc;

/// What the machine API serves and the timeout watch enforces: from the fleet file in force
/// (replaced when `fleet serve --watch` loads an edited one, see [`SharedSettings`]).
#[derive(Debug, Clone)]
pub struct MachineApiSettings {
    /// Seconds between a machine's heartbeats.
    pub heartbeat_seconds: u32,
    /// The policy's limits (the timeout and heartbeat watch reads them).
    pub timeouts: crate::config::Timeouts,
    /// Built-in scripts and the operator's, every kind.
    pub scripts: Arc<Vec<ScriptEntry>>,
    /// The controller's state directory: BMC passwords that enlisting machines report are kept
    /// in its `secrets/` (none kept without one).
    pub state_dir: Option<std::path::PathBuf>,
    /// The fleet file the controller serves (`fleet serve -f`): the deploy settings, storage
    /// and network templates and images a deployment reads (`deployment.rs`).
    pub fleet: Option<Arc<crate::config::Fleet>>,
}

impl Default for MachineApiSettings {
    fn default() -> Self {
        MachineApiSettings::new(None)
    }
}

impl MachineApiSettings {
    /// The built-in scripts plus the fleet file's; heartbeats often enough that two may be lost
    /// before the policy's heartbeat limit.
    /// The fleet is shared, not copied: the controller, its watch and these settings hold one
    /// fleet between them (at 100,000 machines a copy is a hundred megabytes or more).
    pub fn new(fleet: Option<Arc<crate::config::Fleet>>) -> Self {
        let timeouts = fleet
            .as_deref()
            .map(|fleet| fleet.policy.timeouts)
            .unwrap_or_default();
        let mut scripts = builtin_scripts();
        if let Some(fleet) = fleet.as_deref() {
            scripts.extend(fleet.scripts.iter().map(|(name, script)| ScriptEntry {
                name: name.clone(),
                kind: script.kind,
                timeout_seconds: script.timeout_seconds,
                destructive: script.destructive,
                safe_on_live_host: false,
                builtin: false,
                text: script.text.clone(),
            }));
        }
        MachineApiSettings {
            heartbeat_seconds: (timeouts.heartbeat / 3).clamp(1, 30),
            timeouts,
            scripts: Arc::new(scripts),
            state_dir: None,
            fleet,
        }
    }

    /// The SSH keys of `machine` in the fleet file (none for a machine it does not declare).
    pub fn ssh_keys(&self, machine: &str) -> &[String] {
        self.fleet
            .as_deref()
            .and_then(|fleet| fleet.machine(machine))
            .map_or(&[], |spec| spec.deploy.ssh_keys.as_slice())
    }

    /// Where controllers before the store kept reported BMC passwords: `<state_dir>/secrets`.
    pub fn secrets_dir(&self) -> Option<std::path::PathBuf> {
        self.state_dir.as_ref().map(|dir| dir.join("secrets"))
    }

    pub fn script(&self, name: &str) -> Option<&ScriptEntry> {
        self.scripts.iter().find(|script| script.name == name)
    }
}

/// What a machine downloads as script `entry`: the script, and for the rescue script the
/// machine's name and SSH keys after its first line.
pub fn script_text(settings: &MachineApiSettings, machine: &str, entry: &ScriptEntry) -> String {
    if entry.builtin && entry.kind == crate::config::ScriptKind::Rescue {
        crate::commissioning::rescue_script_text(&entry.text, machine, settings.ssh_keys(machine))
    } else {
        entry.text.clone()
    }
}

/// The settings in force, shared by the API's handlers and the timeout watch; `--watch` puts
/// in new ones when an edited fleet file validates, so an operator's new script or limit
/// takes effect without a restart (runs already started keep the scripts they were given).
#[derive(Debug, Clone)]
pub struct SharedSettings(Arc<std::sync::RwLock<Arc<MachineApiSettings>>>);

impl SharedSettings {
    pub fn new(settings: MachineApiSettings) -> Self {
        SharedSettings(Arc::new(std::sync::RwLock::new(Arc::new(settings))))
    }

    pub fn current(&self) -> Arc<MachineApiSettings> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The settings of `fleet`, keeping the state directory.
    pub fn follow(&self, fleet: &Arc<crate::config::Fleet>) {
        let mut next = MachineApiSettings::new(Some(fleet.clone()));
        next.state_dir = self.current().state_dir.clone();
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
    }
}

impl Default for SharedSettings {
    fn default() -> Self {
        SharedSettings::new(MachineApiSettings::default())
    }
}

/// The built-in commissioning scripts and tests.
fn builtin_scripts() -> Vec<ScriptEntry> {
    crate::commissioning::builtin_scripts()
        .iter()
        .map(|script| ScriptEntry {
            name: script.name.to_string(),
            kind: script.kind,
            timeout_seconds: script.timeout_seconds,
            destructive: script.destructive,
            safe_on_live_host: script.safe_on_live_host,
            builtin: true,
            text: script.text.to_string(),
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum MachineApiError {
    #[error("{0}")]
    BadRequest(String),
    /// The machine is not doing the run the call belongs to (aborted, finished, a stale boot).
    #[error("{0}")]
    Stop(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Action(#[from] ActionError),
}

/// The answer to a result upload or a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Stop(String),
}

impl Verdict {
    pub fn as_line(&self) -> String {
        match self {
            Verdict::Continue => "continue\n".to_string(),
            Verdict::Stop(reason) => format!("stop {}\n", one_line(reason)),
        }
    }
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The scripts a run of `role` is given (for a disk erase: the erase its release asked for).
pub(crate) async fn scripts_of_run(
    store: &Store,
    settings: &MachineApiSettings,
    name: &str,
    role: Role,
) -> Result<Vec<ScriptEntry>, StoreError> {
    let erase_mode = store.erase_mode(name).await?.unwrap_or(EraseMode::Quick);
    let mut scripts: Vec<ScriptEntry> =
        rules::scripts_for(role, &settings.scripts, erase_mode.as_str())
            .into_iter()
            .cloned()
            .collect();
    if role == Role::Deploying {
        // The deployment's limit is the policy's, not the script's own.
        for script in &mut scripts {
            script.timeout_seconds = settings.timeouts.deploying;
        }
    }
    Ok(scripts)
}

/// How often at most a machine's calls are written down as its last word (`last_heard`): a
/// machine calls several times a second while it runs scripts, and the clocks that read it
/// count in minutes. Never more than an eighth of the heartbeat limit, however short.
const HEARD_EVERY_MS: i64 = 5_000;

/// Records that the machine (as its authorization read it) called now, unless it already did
/// in its current boot lately (see [`HEARD_EVERY_MS`]): the boot and heartbeat clocks then read
/// the same, and the store is spared a write per call.
pub(crate) async fn heard_from(
    store: &Store,
    settings: &MachineApiSettings,
    record: &MachineRecord,
) -> Result<(), StoreError> {
    let every = HEARD_EVERY_MS.min(i64::from(settings.timeouts.heartbeat) * 1000 / 8);
    let boot_since = record
        .boot_started
        .unwrap_or(i64::MIN)
        .max(record.status_since);
    let heard_lately = record
        .last_heard
        .is_some_and(|heard| heard >= boot_since && now_ms() - heard < every);
    if heard_lately {
        return Ok(());
    }
    store.heard_from(record.name.as_str()).await
}

/// The instructions of the run a token opened (a run starts when its token is handed out).
pub async fn instructions(
    store: &Store,
    settings: &MachineApiSettings,
    run: &Authorized,
) -> Result<String, StoreError> {
    let name = run.record.name.as_str();
    heard_from(store, settings, &run.record).await?;
    let scripts = scripts_of_run(store, settings, name, run.role).await?;
    let scripts: Vec<&ScriptEntry> = scripts.iter().collect();
    Ok(rules::render_instructions(
        name,
        run.role,
        &run.run,
        settings.heartbeat_seconds,
        &scripts,
    ))
}

/// Checks that a body's `run` is the run the token opened (else why to stop).
fn check_run(authorized: &Authorized, run: &str) -> Result<(), String> {
    if run == authorized.run {
        Ok(())
    } else {
        Err(format!(
            "run {run} is over: machine {} is on run {}",
            authorized.record.name, authorized.run
        ))
    }
}

/// Stores a script report, then applies what it means: inventory from a built-in
/// commissioning script, testing starting, a failure ending the run.
pub async fn report_script(
    store: &Store,
    drivers: &PowerDrivers,
    settings: &MachineApiSettings,
    authorized: &Authorized,
    report: &ScriptReport,
) -> Result<Verdict, MachineApiError> {
    let record = &authorized.record;
    let name = record.name.as_str();
    check_run(authorized, &report.run).map_err(MachineApiError::Stop)?;
    heard_from(store, settings, record).await?;
    store
        .put_script_result(&ScriptResult {
            id: 0,
            machine_id: record.id,
            run_id: report.run.clone(),
            name: report.name.clone(),
            kind: report.kind.as_str().to_string(),
            status: report.status.as_str().to_string(),
            exit_code: report.exit_code,
            runtime_ms: report.runtime_ms,
            stdout: report.stdout.clone(),
            stderr: report.stderr.clone(),
            results: report.results.clone(),
            at: now_ms(),
        })
        .await?;
    if report.status != ScriptStatus::Running {
        record_script_event(store, name, report).await;
    }
    let last_builtin = last_builtin_commissioning_script(settings, authorized.role);
    if report.status == ScriptStatus::Passed && last_builtin == Some(report.name.as_str()) {
        let results = store.run_results(record.id, &report.run).await?;
        store_inventory(store, name, &report.run, &results).await?;
    }
    match rules::settlement_for_report(record.lifecycle.status, report) {
        Some(settlement @ Settlement::Failed { .. }) => {
            store_inventory_at_run_end(store, settings, authorized).await?;
            let reason = settlement.reason().unwrap_or_default();
            fail_and_power_off(store, drivers, name, &settlement, None).await?;
            Ok(Verdict::Stop(reason))
        }
        Some(settlement) => {
            settle_machine(store, name, "machine", &settlement).await?;
            Ok(Verdict::Continue)
        }
        None => Ok(Verdict::Continue),
    }
}

async fn record_script_event(store: &Store, name: &str, report: &ScriptReport) {
    let exit = report
        .exit_code
        .map(|code| format!(", exit {code}"))
        .unwrap_or_default();
    record_event(
        store,
        name,
        "script",
        format!(
            "{} script {} {}{exit}",
            report.kind.as_str(),
            report.name,
            report.status.as_str()
        ),
        serde_json::json!({
            "run": report.run,
            "script": report.name,
            "kind": report.kind.as_str(),
            "status": report.status.as_str(),
            "exit_code": report.exit_code,
            "runtime_ms": report.runtime_ms,
        }),
    )
    .await;
}

/// The built-in commissioning script `role` runs last, if it runs any (they run first, in
/// name order). The inventory is merged when it passes, once per run: merging after each
/// built-in script read the whole machine and the run's results and rewrote the hardware eight
/// times per machine, a quarter of the store's work in a fleet's commissioning. Testing scripts
/// (possibly hours long) run after it, so the inventory is there while they run.
fn last_builtin_commissioning_script(settings: &MachineApiSettings, role: Role) -> Option<&str> {
    rules::scripts_for(role, &settings.scripts, EraseMode::Quick.as_str())
        .into_iter()
        .filter(|script| script.builtin && script.kind == crate::config::ScriptKind::Commissioning)
        .map(|script| script.name.as_str())
        .next_back()
}

/// A run that ends (its signal, or a failing script) before its last built-in commissioning
/// script passed: what the built-in scripts found so far is merged now, not lost.
async fn store_inventory_at_run_end(
    store: &Store,
    settings: &MachineApiSettings,
    authorized: &Authorized,
) -> Result<(), StoreError> {
    let Some(last_builtin) = last_builtin_commissioning_script(settings, authorized.role) else {
        return Ok(());
    };
    let record = &authorized.record;
    let results = store.run_results(record.id, &authorized.run).await?;
    let passed_builtin = |result: &ScriptResult| {
        result.status == "passed"
            && result.kind == "commissioning"
            && settings
                .script(&result.name)
                .is_some_and(|script| script.builtin)
    };
    let merged_already = results
        .iter()
        .any(|result| result.name == last_builtin && passed_builtin(result));
    if merged_already || !results.iter().any(passed_builtin) {
        return Ok(());
    }
    store_inventory(store, record.name.as_str(), &authorized.run, &results).await
}

/// Rebuilds the inventory from the run's passed commissioning scripts (`results`) and stores
/// it. Parts no script has reported (disks when the disk script failed) are kept as they were.
async fn store_inventory(
    store: &Store,
    name: &str,
    run: &str,
    results: &[ScriptResult],
) -> Result<(), StoreError> {
    // The authorization read the machine without its hardware: merged into here.
    let record = &store
        .machine(name)
        .await?
        .ok_or_else(|| StoreError::UnknownMachine(name.to_string()))?;
    let passed: Vec<(&str, &str)> = results
        .iter()
        .filter(|result| result.status == "passed" && result.kind == "commissioning")
        .map(|result| (result.name.as_str(), result.stdout.as_str()))
        .collect();
    let (inventory, problems) =
        crate::commissioning::Inventory::from_results(passed.iter().copied());
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        record_event(
            store,
            record.name.as_str(),
            "inventory",
            format!(
                "{} fact lines could not be read: {}",
                lines.len(),
                lines.join("; ")
            ),
            serde_json::json!({ "run": run }),
        )
        .await;
    }
    let reported = |script: &str| passed.iter().any(|(name, _)| *name == script);
    let merged = enlist::merge_inventory(record, inventory, reported);
    if let Err(error) = store
        .update_hardware(
            record,
            merged.arch.as_deref(),
            &merged.hardware,
            &merged.interfaces,
            &merged.disks,
        )
        .await
    {
        // Another machine's MAC, say: keep the run going, but say so where people look.
        record_event(
            store,
            name,
            "inventory",
            format!("the inventory could not be stored: {error}"),
            serde_json::json!({ "run": run }),
        )
        .await;
    }
    Ok(())
}

/// The final signal of a run: `failure` is `None` when the machine says it went well.
pub async fn signal(
    store: &Store,
    drivers: &PowerDrivers,
    settings: &MachineApiSettings,
    authorized: &Authorized,
    run: &str,
    failure: Option<&str>,
) -> Result<&'static str, MachineApiError> {
    check_run(authorized, run).map_err(MachineApiError::Stop)?;
    let (record, role) = (&authorized.record, authorized.role);
    let name = record.name.as_str();
    heard_from(store, settings, record).await?;
    store_inventory_at_run_end(store, settings, authorized).await?;
    let status = record.lifecycle.status;
    let outcome = failure.map_or("ok".to_string(), |reason| format!("failed: {reason}"));
    record_event(
        store,
        name,
        "run",
        format!("{} run {run} ended: {outcome}", role.as_str()),
        serde_json::json!({ "run": run, "role": role.as_str(), "failure": failure }),
    )
    .await;
    match rules::settlement_for_signal(role, status, failure) {
        Some(settlement @ Settlement::Failed { .. }) => {
            fail_and_power_off(store, drivers, name, &settlement, None).await?;
        }
        Some(settlement) => {
            settle_and_carry_out(store, drivers, name, "machine", &settlement).await?;
        }
        None if rules::installs_done(role, status, failure) => {
            install_done(store, settings, name, run).await?;
        }
        None => {}
    }
    let after = role.after();
    if after != "wait" {
        // The run is done: its token opens nothing more. (A rescue run goes on: its machine
        // waits in rescue mode and keeps sending heartbeats.)
        store.end_machine_run(name, run).await?;
    }
    if after == "poweroff" {
        // The machine is told to power itself off: the power poll finding it off is fleet's
        // plan, not a change made outside fleet.
        let intent = crate::store::PowerIntent {
            target: crate::model::PowerState::Off,
            passing: None,
            why: "the machine powered itself off at the end of its run".into(),
        };
        store.set_power_intent(name, Some(&intent)).await?;
    }
    Ok(after)
}

/// A deploying run's installer is done: netboot is off for the machine (its iPXE script boots
/// the disk), the heartbeat clock stops and the call-back clock starts.
async fn install_done(
    store: &Store,
    settings: &MachineApiSettings,
    name: &str,
    run: &str,
) -> Result<(), StoreError> {
    store.set_install_done(name, now_ms()).await?;
    let limit = crate::model::describe_seconds(u64::from(settings.timeouts.callback));
    record_event(
        store,
        name,
        "deployment",
        format!(
            "the installer is done: netboot off, the machine boots its disk; the installed \
             system must call back within {limit}"
        ),
        serde_json::json!({ "run": run, "callback_limit_seconds": settings.timeouts.callback }),
    )
    .await;
    Ok(())
}

/// A heartbeat: the machine is alive (the token opened a run that is not over), and perhaps
/// how far its deployment got (kept, the last one; a new phase is an event).
pub async fn heartbeat(
    store: &Store,
    settings: &MachineApiSettings,
    authorized: &Authorized,
    stage: Option<&str>,
    progress: Option<&crate::model::DeployProgress>,
) -> Result<Verdict, StoreError> {
    let name = authorized.record.name.as_str();
    heard_from(store, settings, &authorized.record).await?;
    if let Some(stage) = stage {
        tracing::debug!("heartbeat from {name}: {stage}");
    }
    let Some(progress) = progress else {
        return Ok(Verdict::Continue);
    };
    let before = store
        .machine_state(name)
        .await?
        .and_then(|state| state.progress);
    let reported = crate::store::ReportedProgress {
        stage: stage.map(str::to_string),
        progress: progress.clone(),
        at: now_ms(),
    };
    store.set_progress(name, &reported).await?;
    let new_phase = before.is_none_or(|before| before.progress.phase != progress.phase);
    if new_phase {
        record_event(
            store,
            name,
            "progress",
            format!("{} run: {}", authorized.role.as_str(), progress.describe()),
            serde_json::json!({ "run": authorized.run, "phase": progress.phase }),
        )
        .await;
    }
    Ok(Verdict::Continue)
}

pub(crate) async fn record_event(
    store: &Store,
    machine: &str,
    kind: &str,
    reason: String,
    detail: serde_json::Value,
) {
    let event = NewEvent {
        machine: Some(machine.to_string()),
        kind: kind.to_string(),
        actor: "machine".to_string(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some(reason),
        detail,
    };
    if let Err(error) = store.append_event(&event).await {
        tracing::warn!("cannot record a {kind} event for {machine}: {error}");
    }
}
