//! Power commands for one machine run one at a time, in the order they were decided; a command
//! overtaken by a newer decision while it waited is dropped and recorded. Driven through
//! `services::actions::perform` (what the API, the executor and the watch use) on a real
//! SQLite store, with a driver whose commands the test holds open: a fake is right here, the
//! point is the order, not the wire (the real drivers are tested in power*.rs and the VM tests).

use crate::support::db::sqlite_store;
use fleet::model::{
    Action, ActionRequest, Lifecycle, MachineName, PowerCommand, PowerOffMode, PowerState, Status,
};
use fleet::power::{PowerDriver, PowerDrivers, PowerFuture, PowerReport, PowerTarget};
use fleet::services::actions::{perform, ActionDone};
use fleet::store::{EventFilter, NewMachine, Store};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

const MACHINE: &str = "node-1";

/// A BMC that takes as long as the test says: a held command waits for a permit; the state
/// changes when a command ends (as a slow BMC's does). Records every command and how many ran
/// at once.
struct HeldDriver {
    state: Mutex<Option<PowerState>>,
    sent: Mutex<Vec<PowerCommand>>,
    held: Mutex<Vec<PowerCommand>>,
    release: Arc<Semaphore>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Default for HeldDriver {
    fn default() -> Self {
        HeldDriver {
            state: Mutex::default(),
            sent: Mutex::default(),
            held: Mutex::default(),
            release: Arc::new(Semaphore::new(0)),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
        }
    }
}

impl HeldDriver {
    fn hold(&self, command: PowerCommand) {
        self.held.lock().unwrap().push(command);
    }

    fn sent(&self) -> Vec<PowerCommand> {
        self.sent.lock().unwrap().clone()
    }
}

impl PowerDriver for HeldDriver {
    fn power_type(&self) -> &'static str {
        "held"
    }

    fn execute<'a>(
        &'a self,
        _target: &'a PowerTarget,
        command: PowerCommand,
    ) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(running, Ordering::SeqCst);
            self.sent.lock().unwrap().push(command);
            let held = {
                let mut held = self.held.lock().unwrap();
                let position = held.iter().position(|c| *c == command);
                position.map(|index| held.remove(index)).is_some()
            };
            if held {
                self.release.acquire().await.unwrap().forget();
            }
            let state = match command {
                PowerCommand::Off(_) => PowerState::Off,
                PowerCommand::On | PowerCommand::Cycle => PowerState::On,
            };
            *self.state.lock().unwrap() = Some(state);
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(PowerReport { state, note: None })
        })
    }

    fn query<'a>(&'a self, _target: &'a PowerTarget) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move {
            let state = self.state.lock().unwrap().unwrap_or(PowerState::Unknown);
            Ok(PowerReport { state, note: None })
        })
    }
}

/// A deployed machine with an owner (power actions need one), powered by `held`.
async fn deployed_machine(store: &Store) {
    let new = NewMachine {
        name: MachineName::parse(MACHINE).unwrap(),
        status: Status::Deployed,
        macs: Vec::new(),
        arch: Some("amd64".into()),
        power_type: "held".into(),
        power_params: serde_json::json!({}),
        bmc_address: None,
        image: None,
        tags: Vec::new(),
        deployed_os: Some("noble".into()),
    };
    let record = store.create_machine(&new, "test").await.unwrap();
    let lifecycle = Lifecycle {
        owner: Some("alice".into()),
        power: PowerState::Off,
        ..record.lifecycle
    };
    store
        .write_lifecycle(MACHINE, &lifecycle, "test", "owned by alice")
        .await
        .unwrap();
}

fn request(action: Action) -> ActionRequest {
    let mut request = ActionRequest::new(action, "alice");
    if action == Action::PowerOff {
        request.options.power_off_mode = Some(PowerOffMode::Hard);
    }
    request
}

/// Starts `action` in a task of its own and returns once its decision is committed (the
/// machine's power decision moved past `decided_before`), with the task and the new decision.
async fn decided(
    store: &Store,
    drivers: &PowerDrivers,
    action: Action,
    decided_before: i64,
) -> (tokio::task::JoinHandle<ActionDone>, i64) {
    let (task_store, task_drivers) = (store.clone(), drivers.clone());
    let task = tokio::spawn(async move {
        perform(&task_store, &task_drivers, MACHINE, &request(action))
            .await
            .unwrap()
    });
    for _ in 0..500 {
        let record = store.machine(MACHINE).await.unwrap().unwrap();
        if record.power_decided > decided_before {
            return (task, record.power_decided);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{action} was not decided within 5 s");
}

/// A power-on the BMC holds (a slow BMC): decided, and at the BMC when this returns.
async fn a_held_power_on(
    store: &Store,
    drivers: &PowerDrivers,
    driver: &HeldDriver,
) -> (tokio::task::JoinHandle<ActionDone>, i64) {
    driver.hold(PowerCommand::On);
    let decision = decided(store, drivers, Action::PowerOn, 0).await;
    while driver.sent().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    decision
}

async fn power_events(store: &Store) -> Vec<String> {
    let filter = EventFilter {
        machine: Some(MACHINE.into()),
        ..Default::default()
    };
    store
        .events(&filter)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "power")
        .filter_map(|event| event.reason)
        .collect()
}

async fn setup(driver: &Arc<HeldDriver>) -> (Store, PowerDrivers, tempfile::TempDir) {
    let (store, directory) = sqlite_store().await;
    deployed_machine(&store).await;
    let mut drivers = PowerDrivers::default();
    drivers.add(driver.clone());
    (store, drivers, directory)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_off_on_from_three_tasks_ends_on_and_the_overtaken_off_is_dropped() {
    let driver = Arc::new(HeldDriver::default());
    let (store, drivers, _directory) = setup(&driver).await;
    // The first power-on is slow (a BMC taking its time); power-off and power-on are decided
    // by two other tasks while it is in flight.
    let (first_on, first) = a_held_power_on(&store, &drivers, &driver).await;
    let (off, second) = decided(&store, &drivers, Action::PowerOff, first).await;
    let (second_on, third) = decided(&store, &drivers, Action::PowerOn, second).await;
    assert!(first < second && second < third);
    // Nothing but the first command reached the BMC while it was busy.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(driver.sent(), [PowerCommand::On]);
    driver.release.add_permits(1);
    let (first_on, off, second_on) = (
        first_on.await.unwrap(),
        off.await.unwrap(),
        second_on.await.unwrap(),
    );

    // The off was overtaken while it waited: never sent, recorded, and its caller told.
    assert_eq!(driver.sent(), [PowerCommand::On, PowerCommand::On]);
    assert_eq!(driver.most_at_once.load(Ordering::SeqCst), 1);
    let note = format!(
        "power off dropped: it was decided at generation {second}, and a newer decision \
         (generation {third}) asked for power since"
    );
    assert!(off.notes.contains(&note), "{:?}", off.notes);
    assert!(first_on.notes.is_empty() && second_on.notes.is_empty());
    let record = store.machine(MACHINE).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.power, PowerState::On);
    assert_eq!(*driver.state.lock().unwrap(), Some(PowerState::On));
    let events = power_events(&store).await;
    let dropped = format!(
        "power off dropped: it was decided at generation {second}, and a newer decision \
         (generation {third}) asked for power since"
    );
    assert!(events.contains(&dropped), "{events:#?}");
    assert_eq!(drivers.busy_machines(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_off_is_never_overtaken_by_the_on_decided_after_it() {
    let driver = Arc::new(HeldDriver::default());
    let (store, drivers, _directory) = setup(&driver).await;
    let (on, first) = decided(&store, &drivers, Action::PowerOn, 0).await;
    on.await.unwrap();
    // The off is already at the BMC when the on is decided: the on waits for it.
    driver.hold(PowerCommand::Off(PowerOffMode::Hard));
    let (off, second) = decided(&store, &drivers, Action::PowerOff, first).await;
    while driver.sent().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (on, _) = decided(&store, &drivers, Action::PowerOn, second).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(driver.sent().len(), 2, "the on went out beside the off");
    driver.release.add_permits(1);
    off.await.unwrap();
    on.await.unwrap();
    assert_eq!(
        driver.sent(),
        [
            PowerCommand::On,
            PowerCommand::Off(PowerOffMode::Hard),
            PowerCommand::On
        ]
    );
    assert_eq!(driver.most_at_once.load(Ordering::SeqCst), 1);
    let record = store.machine(MACHINE).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.power, PowerState::On);
    assert!(
        !power_events(&store)
            .await
            .iter()
            .any(|reason| reason.contains("dropped")),
        "nothing was overtaken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_queued_for_a_deleted_machine_never_reaches_the_one_added_under_its_name() {
    let driver = Arc::new(HeldDriver::default());
    let (store, drivers, _directory) = setup(&driver).await;
    let (on, first) = a_held_power_on(&store, &drivers, &driver).await;
    let (off, _) = decided(&store, &drivers, Action::PowerOff, first).await;
    // While the off waits, the machine is deleted and another is added under its name.
    perform(&store, &drivers, MACHINE, &request(Action::Delete))
        .await
        .unwrap();
    deployed_machine(&store).await;
    driver.release.add_permits(1);
    on.await.unwrap();
    let off = off.await.unwrap();
    assert_eq!(
        driver.sent(),
        [PowerCommand::On],
        "the off reached the new machine"
    );
    assert!(
        off.notes.iter().any(
            |note| note.starts_with("power off dropped: it was decided for an earlier machine")
        ),
        "{:?}",
        off.notes
    );
}

/// A command waiting in its machine's queue keeps its outbox entry claimed: the leader's
/// courier takes entries untouched for a while as a dead controller's, and would otherwise send
/// a command a second time that was only waiting behind a slow BMC call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_waiting_its_turn_keeps_its_outbox_entry_claimed() {
    let driver = Arc::new(HeldDriver::default());
    let (store, drivers, _directory) = setup(&driver).await;
    let (first_on, first) = a_held_power_on(&store, &drivers, &driver).await;
    let (off, _) = decided(&store, &drivers, Action::PowerOff, first).await;
    // The off waits behind the held on for longer than "stale" is taken to be here (4 s;
    // entries are refreshed every 3 s).
    let stale_ms = 4_000;
    tokio::time::sleep(Duration::from_millis(4_600)).await;
    assert_eq!(driver.sent(), [PowerCommand::On], "the off went out early");
    let stale = store.stale_pending_power(stale_ms, 10).await.unwrap();
    assert!(
        stale.is_empty(),
        "a queued command's entry looked forgotten: {stale:?}"
    );
    assert!(store.pending_power(MACHINE).await.unwrap().is_some());
    driver.release.add_permits(1);
    first_on.await.unwrap();
    off.await.unwrap();
    assert_eq!(
        driver.sent(),
        [PowerCommand::On, PowerCommand::Off(PowerOffMode::Hard)],
        "each command was sent once"
    );
    assert!(store.pending_power(MACHINE).await.unwrap().is_none());
}
