//! `fleet serve --watch`: the reconcile loop.
//!
//! The controller watches the directories of its fleet files (so that an editor's atomic save,
//! a temporary file renamed over the original, is seen as well as a write in place), waits for
//! the edits to settle ([`DEBOUNCE`]), and reconciles. It also reconciles on a timer. Either way
//! the work is the same (the reason for a reconcile is hidden from it, as in kube-rs):
//!
//! 1. load and validate the fleet files; an invalid edit is reported (the rendered diagnostics,
//!    with file:line:column, on stderr and in the current plan) and the last good fleet stays
//!    in force;
//! 2. plan the fleet against the store;
//! 3. queue an apply, through the API's own path ([`super::queue_apply`]), of the
//!    machines whose steps are all non-destructive. Destructive steps are never applied
//!    automatically: the policy has no switch that allows it, so they wait for a person
//!    (`fleet apply --allow-destroy`);
//! 4. publish the plan in `<state_dir>/current-plan.json` ([`CurrentPlan`]), written atomically.
//!
//! Invariants: one reconcile at a time (a single task runs them in turn); the published plan is
//! always one made from a fleet that validated.

use super::{queue_apply, ApplyError, ApplyRequest};
use crate::config::{Diagnostics, Fleet};
use crate::plan::{plan, summary_line, Plan, StepClass};
use crate::store::Store;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// The file in the state directory that holds the last plan of the reconcile loop.
pub const CURRENT_PLAN_FILE: &str = "current-plan.json";
/// The actor the loop's applies and events are recorded under.
pub const WATCH_ACTOR: &str = "fleet-watch";
/// Edits must be quiet this long before a reconcile: an editor's save is several events.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// A file written to without pause is still reconciled this often.
const DEBOUNCE_LIMIT: Duration = Duration::from_millis(500);
/// The timer's period when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// What the loop needs besides the store.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The fleet files and directories, as `fleet serve -f` was given them.
    pub files: Vec<PathBuf>,
    pub state_dir: PathBuf,
    /// The timer's period.
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch the fleet files: {0}")]
    Notify(#[from] notify::Error),
}

/// `<state_dir>/current-plan.json`: the last plan the loop made, for people and tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentPlan {
    /// Counts reconciles since the controller started (1 for the first).
    pub sequence: u64,
    /// The digest of the fleet files in force (the last good ones).
    pub fleet_digest: String,
    /// The files of the fleet in force.
    pub sources: Vec<PathBuf>,
    /// The last edit that did not validate, while it is the files' current content: the last
    /// good fleet stays in force until an edit validates again.
    pub rejected_edit: Option<RejectedEdit>,
    /// What was applied automatically.
    pub auto_apply: AutoApply,
    pub plan: Plan,
}

/// An invalid edit: every error with its position, and the text printed on stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedEdit {
    /// `file:line:column: message`, one per error.
    pub errors: Vec<String>,
    pub rendered: String,
}

/// The automatic apply of one reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoApply {
    /// The apply started, if one was.
    pub started: Option<String>,
    /// Machines given to that apply.
    pub machines: Vec<String>,
    /// Machines with destructive steps, left for a person.
    pub held_destructive: Vec<String>,
    /// Why no apply was started although machines had steps (another apply runs, an error).
    pub note: Option<String>,
}

/// Starts the reconcile loop in the background: a first reconcile at once, then one after every
/// settled edit of the fleet files and one on every tick of the timer.
/// Told of every new fleet that validated (the controller's other parts follow it).
pub type OnNewFleet = Arc<dyn Fn(&Arc<Fleet>) + Send + Sync>;

/// `wake`: the executor's, told of each apply the loop queues.
pub fn start_watch(
    store: &Store,
    wake: Option<Arc<tokio::sync::Notify>>,
    options: WatchOptions,
    fleet: Arc<Fleet>,
    on_new_fleet: Option<OnNewFleet>,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    let (sender, receiver) = unbounded_channel();
    let mut watched = WatchedPaths::new(&options.files, forward_changes(sender)?);
    watched.follow(&fleet.sources);
    let reconciler = Reconciler {
        store: store.clone(),
        wake,
        options,
        fleet,
        on_new_fleet,
        sequence: 0,
        rejected: None,
        last_report: String::new(),
    };
    Ok(tokio::spawn(run_loop(reconciler, watched, receiver)))
}

/// A watcher that sends the paths of every content change (never mere reads: the loop reads
/// the files itself) to `sender`.
fn forward_changes(
    sender: UnboundedSender<Vec<PathBuf>>,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
        if let Ok(event) = result {
            if is_content_change(&event.kind) {
                let _ = sender.send(event.paths);
            }
        }
    })?;
    Ok(watcher)
}

fn is_content_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

async fn run_loop(
    mut reconciler: Reconciler,
    mut watched: WatchedPaths,
    mut changes: UnboundedReceiver<Vec<PathBuf>>,
) {
    let mut timer = tokio::time::interval(reconciler.options.interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            paths = changes.recv() => {
                let Some(paths) = paths else { return };
                if !watched.is_relevant(&paths) {
                    continue;
                }
                settle(&mut changes).await;
            }
        }
        reconciler.reconcile().await;
        watched.follow(&reconciler.fleet.sources);
        // The timer counts from the last reconcile, whatever caused it.
        timer.reset();
    }
}

/// Waits until no change has come for [`DEBOUNCE`] (at most [`DEBOUNCE_LIMIT`] in all).
async fn settle(changes: &mut UnboundedReceiver<Vec<PathBuf>>) {
    let started = Instant::now();
    while started.elapsed() < DEBOUNCE_LIMIT {
        match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

/// The directories watched and the files in them that matter. Paths are canonical, because
/// the watcher reports them under the watched (canonical) directory.
struct WatchedPaths {
    watcher: notify::RecommendedWatcher,
    directories: BTreeSet<PathBuf>,
    /// Fleet files named on the command line or read by the last good load (includes).
    files: BTreeSet<PathBuf>,
    /// Directories given on the command line: every `*.toml` in them is a fleet file.
    toml_directories: BTreeSet<PathBuf>,
}

impl WatchedPaths {
    fn new(arguments: &[PathBuf], watcher: notify::RecommendedWatcher) -> WatchedPaths {
        let mut watched = WatchedPaths {
            watcher,
            directories: BTreeSet::new(),
            files: BTreeSet::new(),
            toml_directories: BTreeSet::new(),
        };
        for argument in arguments {
            let canonical = canonical(argument);
            if argument.is_dir() {
                watched.toml_directories.insert(canonical.clone());
                watched.watch_directory(canonical);
            } else {
                watched.add_file(canonical);
            }
        }
        watched
    }

    /// Also watches the files a load read (includes may live in other directories).
    fn follow(&mut self, sources: &[PathBuf]) {
        for source in sources {
            self.add_file(canonical(source));
        }
    }

    fn add_file(&mut self, file: PathBuf) {
        if let Some(directory) = file.parent() {
            self.watch_directory(directory.to_path_buf());
        }
        self.files.insert(file);
    }

    fn watch_directory(&mut self, directory: PathBuf) {
        if self.directories.contains(&directory) {
            return;
        }
        // A directory that cannot be watched (gone, no permission) leaves the timer to notice.
        match self.watcher.watch(&directory, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.directories.insert(directory);
            }
            Err(error) => eprintln!("  watch   cannot watch {}: {error}", directory.display()),
        }
    }

    fn is_relevant(&self, paths: &[PathBuf]) -> bool {
        paths.iter().any(|path| {
            self.files.contains(path)
                || (path
                    .extension()
                    .is_some_and(|extension| extension == "toml")
                    && path
                        .parent()
                        .is_some_and(|parent| self.toml_directories.contains(parent)))
        })
    }
}

/// The path with its directory made canonical; the file itself may be absent for a moment
/// while an editor replaces it.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(canonical) = std::fs::canonicalize(path) {
        return canonical;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent)
                .map(|parent| parent.join(name))
                .unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// The state the reconciles carry from one to the next.
struct Reconciler {
    store: Store,
    /// The executor's: an apply queued here is taken at once.
    wake: Option<Arc<tokio::sync::Notify>>,
    options: WatchOptions,
    /// The last fleet that validated.
    fleet: Arc<Fleet>,
    on_new_fleet: Option<OnNewFleet>,
    sequence: u64,
    rejected: Option<RejectedEdit>,
    /// The last line printed about the plan, so that an unchanged plan is not printed again.
    last_report: String,
}

impl Reconciler {
    async fn reconcile(&mut self) {
        self.reload().await;
        let observed = match super::observe(&self.store).await {
            Ok(observed) => observed,
            Err(error) => {
                eprintln!("  watch   cannot read the store to plan: {error}");
                return;
            }
        };
        let fleet = self.fleet.clone();
        let planned = tokio::task::spawn_blocking(move || plan(&fleet, &observed)).await;
        let Ok(planned) = planned else {
            eprintln!("  watch   the planner stopped unexpectedly");
            return;
        };
        let auto_apply = self.auto_apply(&planned).await;
        self.sequence += 1;
        self.report(&planned, &auto_apply);
        self.publish(planned, auto_apply);
    }

    /// Loads the fleet files; keeps the last good fleet if they do not validate.
    async fn reload(&mut self) {
        let files = self.options.files.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::config::load(&files)).await;
        match loaded {
            Ok(Ok(fleet)) => {
                if self.rejected.take().is_some() {
                    eprintln!("  watch   the fleet files validate again");
                }
                if fleet.digest != self.fleet.digest {
                    let fleet = Arc::new(fleet);
                    if let Some(follow) = &self.on_new_fleet {
                        follow(&fleet);
                    }
                    self.fleet = fleet;
                }
            }
            Ok(Err(diagnostics)) => self.reject(&diagnostics),
            Err(_) => eprintln!("  watch   loading the fleet files stopped unexpectedly"),
        }
    }

    /// Reports an invalid edit once (the timer finds it again until it is fixed).
    fn reject(&mut self, diagnostics: &Diagnostics) {
        let rejected = RejectedEdit {
            errors: diagnostics.iter().map(ToString::to_string).collect(),
            rendered: diagnostics.render(false),
        };
        if self.rejected.as_ref() == Some(&rejected) {
            return;
        }
        eprintln!(
            "  watch   the edited fleet files do not validate; the last good fleet ({}) stays in force:",
            short(&self.fleet.digest)
        );
        for error in &rejected.errors {
            eprintln!("  watch   {error}");
        }
        eprint!("{}", rejected.rendered);
        self.rejected = Some(rejected);
    }

    /// Starts an apply of the machines whose steps are all non-destructive.
    async fn auto_apply(&self, planned: &Plan) -> AutoApply {
        let (chosen, held_destructive) = split_destructive(planned);
        let mut outcome = AutoApply {
            held_destructive,
            ..AutoApply::default()
        };
        let Some(chosen) = chosen else {
            return outcome;
        };
        let names: Vec<String> = chosen.machines.iter().map(|m| m.name.clone()).collect();
        let request = ApplyRequest {
            plan: chosen,
            allow_destroy: false,
            strict: false,
        };
        match queue_apply(&self.store, request, WATCH_ACTOR, self.wake.as_deref()).await {
            Ok(started) => {
                outcome.started = Some(started.id);
                outcome.machines = started.accepted;
            }
            // The running apply goes on; the next reconcile plans again once it is done.
            Err(ApplyError::Busy(holder)) => {
                outcome.note = Some(format!(
                    "an apply is running ({}); {} machines wait for the next reconcile",
                    holder.holder,
                    names.len()
                ))
            }
            Err(error) => outcome.note = Some(error.to_string()),
        }
        outcome
    }

    /// One line per plan that differs from the last one printed.
    fn report(&mut self, planned: &Plan, auto_apply: &AutoApply) {
        let mut line = format!(
            "  watch   fleet {}: {}",
            short(&planned.fleet_digest),
            summary_line(planned)
        );
        if let Some(id) = &auto_apply.started {
            line.push_str(&format!(
                " Applying {} machines ({id}).",
                auto_apply.machines.len()
            ));
        }
        if !auto_apply.held_destructive.is_empty() {
            line.push_str(&format!(
                " Destructive steps wait for a person: {}.",
                auto_apply.held_destructive.join(", ")
            ));
        }
        if line != self.last_report {
            eprintln!("{line}");
            self.last_report = line;
        }
    }

    fn publish(&self, planned: Plan, auto_apply: AutoApply) {
        let current = CurrentPlan {
            sequence: self.sequence,
            fleet_digest: planned.fleet_digest.clone(),
            sources: self.fleet.sources.clone(),
            rejected_edit: self.rejected.clone(),
            auto_apply,
            plan: planned,
        };
        if let Err(error) = write_current_plan(&self.options.state_dir, &current) {
            eprintln!("  watch   cannot write {CURRENT_PLAN_FILE}: {error}");
        }
    }
}

/// How often a controller following the leader's fleet reads the announced digest without a
/// notification (the safety net under `fleet_reload`; it also reads once each time the LISTEN
/// connection is made, and once at start).
pub const FOLLOW_FALLBACK: Duration = Duration::from_secs(30);

/// Every controller run with `--watch` on a shared store follows the fleet the leader takes
/// into force (the leader alone runs the reconcile loop): when the leader announces a new
/// digest (`Store::announce_fleet`, pushed on PostgreSQL with `fleet_reload`), this controller
/// loads its own fleet files, and if they give that digest, hands the fleet to `on_new_fleet`
/// (the machine API's scripts and limits, the images). Files that give another fleet are
/// reported, once per announced digest, and the fleet served stays. `served` names the digest
/// served now (the leader's own reconcile loop changes it too).
pub fn start_following(
    store: &Store,
    files: Vec<PathBuf>,
    served: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    on_new_fleet: OnNewFleet,
) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    let mut changes = store.watch_changes(crate::store::Change::Fleet, None);
    tokio::spawn(async move {
        let mut reported: Option<String> = None;
        loop {
            match store.announced_fleet().await {
                Ok(Some(announced)) if served().as_deref() != Some(announced.as_str()) => {
                    follow_announced(&files, &announced, &on_new_fleet, &mut reported).await;
                }
                Ok(_) => {}
                Err(error) => eprintln!("  watch   cannot read the fleet in force: {error}"),
            }
            let timer = tokio::time::sleep(FOLLOW_FALLBACK);
            let alive = match changes.as_mut() {
                Some(watch) => tokio::select! {
                    alive = watch.changed() => alive,
                    () = timer => true,
                },
                None => {
                    timer.await;
                    true
                }
            };
            if !alive {
                // The store's listener is gone: the timer alone from now on.
                changes = None;
            }
        }
    })
}

/// Loads the fleet files and takes them if they give the `announced` digest.
async fn follow_announced(
    files: &[PathBuf],
    announced: &str,
    on_new_fleet: &OnNewFleet,
    reported: &mut Option<String>,
) {
    let files = files.to_vec();
    let loaded = tokio::task::spawn_blocking(move || crate::config::load(&files)).await;
    let outcome = match loaded {
        Ok(Ok(fleet)) if fleet.digest == announced => {
            eprintln!(
                "  watch   following the leader's fleet {}",
                short(announced)
            );
            on_new_fleet(&Arc::new(fleet));
            *reported = None;
            return;
        }
        Ok(Ok(fleet)) => format!("give fleet {}", short(&fleet.digest)),
        Ok(Err(diagnostics)) => format!("do not validate ({diagnostics})"),
        Err(_) => "could not be loaded".to_string(),
    };
    if reported.as_deref() != Some(announced) {
        eprintln!(
            "  watch   the leader took fleet {} into force, but this controller's fleet files {outcome}: it serves its fleet until they agree",
            short(announced)
        );
        *reported = Some(announced.to_string());
    }
}

/// The plan reduced to the machines that may be applied without a person (steps, none
/// destructive), and the names of those held back for their destructive steps.
fn split_destructive(planned: &Plan) -> (Option<Plan>, Vec<String>) {
    let destructive = |machine: &crate::plan::MachinePlan| {
        machine
            .steps
            .iter()
            .any(|step| step.class == StepClass::Destructive)
    };
    let held: Vec<String> = planned
        .machines
        .iter()
        .filter(|machine| destructive(machine))
        .map(|machine| machine.name.clone())
        .collect();
    let mut chosen = planned.clone();
    chosen
        .machines
        .retain(|machine| !machine.steps.is_empty() && !destructive(machine));
    if chosen.machines.is_empty() {
        return (None, held);
    }
    (Some(chosen), held)
}

/// Writes `current` beside a temporary file and renames it into place, so that a reader never
/// sees half a plan.
pub fn write_current_plan(state_dir: &Path, current: &CurrentPlan) -> std::io::Result<()> {
    let path = state_dir.join(CURRENT_PLAN_FILE);
    let temporary = state_dir.join(format!(".{CURRENT_PLAN_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(current).map_err(std::io::Error::other)?;
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, &path)
}

/// Reads `<state_dir>/current-plan.json`, if the loop has written it.
pub fn read_current_plan(state_dir: &Path) -> Option<CurrentPlan> {
    let text = std::fs::read(state_dir.join(CURRENT_PLAN_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_changes_but_finished_writes_are() {
        assert!(!is_content_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_content_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_content_change(&EventKind::Modify(
            notify::event::ModifyKind::Any
        )));
    }

    #[test]
    fn a_missing_file_keeps_its_canonical_directory() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let missing = directory.path().join("gone.toml");
        let canonical_directory = std::fs::canonicalize(directory.path()).expect("canonical");
        assert_eq!(canonical(&missing), canonical_directory.join("gone.toml"));
    }
}
