//! Applies across several controllers on one database (issue #16): any controller's API queues
//! an apply, only the leader carries it out under the apply lock in its own name
//! (`CONTROLLER_ID/INSTANCE`), a leader killed mid-apply is replaced and its apply resumed once
//! by the next, and the lock's staleness is judged by the database's clock; a machine's run
//! interrupted by a store error is resumed, not dropped.

use crate::both_backends;
use crate::support::controller::{stderr, stdout, TestController, FLEET};
use crate::support::db::{drop_postgres_store, empty_postgres_database, postgres_store};
use fleet::apply::{progress, queue_apply, ApplyRequest, Executor};
use fleet::model::{Settlement, Status};
use fleet::power::PowerDrivers;
use fleet::services::actions::settle_machine;
use fleet::store::{Event, EventFilter, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOUR_MS: i64 = 3_600_000;

/// Sets the database's clock (`fleet_now_ms()`) to run `offset_ms` ahead of the real one, as a
/// database host whose clock differs from the controllers' would.
async fn shift_database_clock(store: &Store, offset_ms: i64) {
    sqlx::query(&format!(
        "CREATE OR REPLACE FUNCTION fleet_now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE AS \
         $$ SELECT CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) + {offset_ms} $$"
    ))
    .execute(store.pool())
    .await
    .unwrap();
}

/// A lock's heartbeat is written and judged by the database's clock, not the controller's: with
/// the database an hour ahead, the heartbeat is an hour ahead of this process's clock; moved
/// another hour on, the lock is stale to the database (and taken over) though by this process's
/// clock its heartbeat lies in the future.
#[tokio::test]
async fn the_apply_lock_is_judged_by_the_database_clock() {
    const STALE_AFTER_MS: i64 = 30_000;
    let store = postgres_store().await;
    shift_database_clock(&store, HOUR_MS).await;
    let taken = store
        .try_lock("apply", "a/1", STALE_AFTER_MS)
        .await
        .unwrap()
        .unwrap();
    let ahead = taken.heartbeat - fleet::store::now_ms();
    assert!(
        (HOUR_MS - 60_000..HOUR_MS + 60_000).contains(&ahead),
        "the heartbeat is the database's time: {ahead} ms ahead of ours"
    );
    assert_eq!(taken.since, taken.heartbeat);
    let refused = store
        .try_lock("apply", "b/1", STALE_AFTER_MS)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.holder, "a/1");

    shift_database_clock(&store, 2 * HOUR_MS).await;
    assert!(
        taken.heartbeat > fleet::store::now_ms(),
        "by this process's clock the heartbeat is still in the future"
    );
    let takeover = store
        .try_lock("apply", "b/1", STALE_AFTER_MS)
        .await
        .unwrap()
        .expect("stale by the database's clock: taken over");
    assert_eq!(takeover.holder, "b/1");
    assert!(takeover.heartbeat - taken.heartbeat >= HOUR_MS - 60_000);
    assert!(!store.refresh_lock("apply", "a/1").await.unwrap());
    assert!(store.refresh_lock("apply", "b/1").await.unwrap());
    let refreshed = store.lock_holder("apply").await.unwrap().unwrap();
    let ahead = refreshed.heartbeat - fleet::store::now_ms();
    assert!(
        (2 * HOUR_MS - 60_000..2 * HOUR_MS + 60_000).contains(&ahead),
        "the refresh writes the database's time: {ahead} ms ahead of ours"
    );
    drop_postgres_store(store).await;
}

// The leader's rule: a lock held by the current term's holder is its own (it may take it again)
// and nobody else's while its heartbeat is fresh; once another term is current, the new leader
// takes it over at once, and the old holder learns it lost it. The plain rule (`try_lock`)
// waits for staleness whoever leads.
both_backends!(
    the_apply_lock_passes_to_the_new_leader_only_when_the_old_one_no_longer_leads,
    |store| async move {
        const STALE_AFTER_MS: i64 = 60_000;
        const TERM: Duration = Duration::from_secs(60);
        let first = store
            .claim_leadership("a/1", "a", None, TERM)
            .await
            .unwrap()
            .unwrap();
        let taken = store
            .try_lock_for_term("apply", "a/1", STALE_AFTER_MS)
            .await
            .unwrap()
            .unwrap();
        let refused = store
            .try_lock_for_term("apply", "b/1", STALE_AFTER_MS)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.holder, "a/1", "a leads and refreshes: b waits");
        let again = store
            .try_lock_for_term("apply", "a/1", STALE_AFTER_MS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.since, taken.since, "the leader's own lock");

        store
            .resign_leadership("a/1", first.generation)
            .await
            .unwrap();
        store
            .claim_leadership("b/1", "b", None, TERM)
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .try_lock("apply", "c/1", STALE_AFTER_MS)
                .await
                .unwrap()
                .is_err(),
            "the plain rule waits for a stale heartbeat"
        );
        let takeover = store
            .try_lock_for_term("apply", "b/1", STALE_AFTER_MS)
            .await
            .unwrap()
            .expect("a/1 no longer leads: the new leader takes its lock");
        assert_eq!(takeover.holder, "b/1");
        let refused = store
            .try_lock_for_term("apply", "a/1", STALE_AFTER_MS)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.holder, "b/1", "the old leader cannot take it back");
        assert!(!store.refresh_lock("apply", "a/1").await.unwrap());
        assert!(store.unlock("apply", "b/1").await.unwrap());
    }
);

fn machine_toml(name: &str, index: u8) -> String {
    format!(
        "[[machine]]\nname = \"{name}\"\nmacs = [\"52:54:00:bb:00:{index:02x}\"]\nstate = \"ready\"\npower = {{ type = \"manual\" }}\n\n"
    )
}

fn write_fleet(directory: &Path, machines: u8, parallelism: u32) -> PathBuf {
    let body: String = (0..machines)
        .map(|index| machine_toml(&format!("q-{index:02}"), index))
        .collect();
    let path = directory.join("fleet.toml");
    std::fs::write(
        &path,
        format!("[policy]\nparallelism = {parallelism}\n\n{body}"),
    )
    .unwrap();
    path
}

fn id_of(controller: &TestController) -> String {
    std::fs::read_to_string(controller.state_dir.join("controller-id"))
        .unwrap()
        .trim()
        .to_string()
}

/// Two controllers on a new PostgreSQL database, the first leading; both answer with the first's
/// token.
async fn two_controllers(url: &str) -> (TestController, TestController, tempfile::TempDir) {
    let directory = tempfile::tempdir().unwrap();
    let (first_dir, second_dir) = (directory.path().join("a"), directory.path().join("b"));
    let first = TestController::start_in(&first_dir, &["--database", url]);
    let store = Store::open(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.leader().await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the first controller does not lead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut second = TestController::start_in(&second_dir, &["--database", url]);
    second.token = first.token.clone();
    let leader = store.leader().await.unwrap().expect("a leader");
    assert!(
        leader.holder.starts_with(&format!("{}/", id_of(&first))),
        "the first controller started leads: {leader:?}"
    );
    store.close().await;
    (first, second, directory)
}

/// `fleet apply -f FLEET --yes` through `controller`'s API, in the background.
fn spawn_apply(controller: &TestController, fleet: &Path) -> Child {
    Command::new(FLEET)
        .arg("--state-dir")
        .arg(&controller.state_dir)
        .args([
            "--server",
            &controller.api_url,
            "--token",
            &controller.token,
        ])
        .args(["apply", "-f"])
        .arg(fleet)
        .arg("--yes")
        .env("NO_COLOR", "1")
        .env(
            "XDG_CONFIG_HOME",
            controller.state_dir.join("client-config"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Settles every machine waiting in an in-progress status, as booted machines reporting in would.
async fn settle_all(store: &Store) -> usize {
    let mut settled = 0;
    for record in store.planning_records().await.unwrap() {
        if record.lifecycle.status.is_in_progress() {
            settle_machine(
                store,
                record.name.as_str(),
                "test-machine",
                &Settlement::Succeeded,
            )
            .await
            .unwrap();
            settled += 1;
        }
    }
    settled
}

/// Settles machines as they come until `child` exits; returns its output.
async fn settle_until_exit(store: &Store, mut child: Child) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "fleet apply did not finish");
        settle_all(store).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.wait_with_output().unwrap()
}

/// How many of `events` are of `kind` with `action`.
pub(crate) fn count_events(events: &[Event], kind: &str, action: &str) -> usize {
    events
        .iter()
        .filter(|event| event.kind == kind && event.action.as_deref() == Some(action))
        .count()
}

pub(crate) async fn events_of(store: &Store, machine: &str) -> Vec<Event> {
    store
        .events(&EventFilter {
            machine: Some(machine.to_string()),
            ..EventFilter::default()
        })
        .await
        .unwrap()
}

/// Who ran the apply's steps: the `by` of its `apply` events (the leader's holder), counted.
async fn step_runners(store: &Store, machines: u8) -> BTreeMap<String, usize> {
    let mut runners = BTreeMap::new();
    for index in 0..machines {
        for event in events_of(store, &format!("q-{index:02}")).await {
            if event.kind == "apply" {
                let by = event.detail["by"].as_str().unwrap_or("(none)").to_string();
                *runners.entry(by).or_insert(0) += 1;
            }
        }
    }
    runners
}

/// Every step done, every machine ready, and none commissioned twice or started twice.
async fn assert_every_step_ran_once(store: &Store, machines: u8) {
    let applies = store.plans_with_status("applied").await.unwrap();
    assert_eq!(applies.len(), 1, "{applies:?}");
    let steps = store.apply_steps(&applies[0].id).await.unwrap();
    assert_eq!(steps.len(), usize::from(machines) * 2, "{steps:?}");
    assert!(steps.iter().all(|step| step.state == "done"), "{steps:?}");
    for index in 0..machines {
        let name = format!("q-{index:02}");
        let events = events_of(store, &name).await;
        let count = |kind: &str, action: &str| count_events(&events, kind, action);
        assert_eq!(count("action", "commission"), 1, "{name}: {events:#?}");
        // A step marked started but killed before its event was written has none.
        assert!(count("apply", "commission started") <= 1, "{name}");
        assert!(count("apply", "add started") <= 1, "{name}");
        let record = store.machine(&name).await.unwrap().unwrap();
        assert_eq!(record.lifecycle.status, Status::Ready, "{name}");
    }
    assert_eq!(store.lock_holder("apply").await.unwrap(), None, "unlocked");
}

/// `fleet apply` through the follower: the follower queues it and answers with its id, the
/// leader carries it out (every `apply` event names the leader's holder), and the follower's
/// progress follows it to the end.
#[tokio::test(flavor = "multi_thread")]
async fn an_apply_posted_to_a_follower_is_run_by_the_leader() {
    const MACHINES: u8 = 4;
    let url = empty_postgres_database().await;
    let (first, second, directory) = two_controllers(&url).await;
    let store = Store::open(&url).await.unwrap();
    let leader = store.leader().await.unwrap().unwrap();
    let fleet = write_fleet(directory.path(), MACHINES, 2);

    let output = settle_until_exit(&store, spawn_apply(&second, &fleet)).await;
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stdout(&output).contains(&format!("{MACHINES} done, 0 failed, 0 refused")),
        "{}",
        stdout(&output)
    );
    let runners = step_runners(&store, MACHINES).await;
    assert_eq!(
        runners.keys().collect::<Vec<_>>(),
        vec![&leader.holder],
        "only the leader ran steps: {runners:?}"
    );
    assert_every_step_ran_once(&store, MACHINES).await;
    drop((first, second));
    drop_postgres_store(store).await;
}

/// The leader SIGKILLed in the middle of an apply posted through the follower: the follower
/// leads and resumes the apply within ~10 s (its holder appears in the apply's events), the
/// `fleet apply` following through it sees it finish, and no step ran twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_apply_survives_sigkill_of_the_leader_and_runs_each_step_once() {
    const MACHINES: u8 = 12;
    let url = empty_postgres_database().await;
    let (mut first, second, directory) = two_controllers(&url).await;
    let store = Store::open(&url).await.unwrap();
    let first_holder = store.leader().await.unwrap().unwrap().holder;
    let fleet = write_fleet(directory.path(), MACHINES, 4);
    let child = spawn_apply(&second, &fleet);

    // Some machines through, then the leader killed while others commission.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settled = 0;
    while settled < 4 {
        assert!(Instant::now() < deadline, "the apply did not progress");
        settled += settle_all(&store).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    loop {
        assert!(Instant::now() < deadline, "no machine commissions");
        let records = store.planning_records().await.unwrap();
        if records
            .iter()
            .any(|record| record.lifecycle.status == Status::Commissioning)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let killed = Instant::now();

    let second_prefix = format!("{}/", id_of(&second));
    let resumed_after = loop {
        let runners = step_runners(&store, MACHINES).await;
        if runners.keys().any(|by| by.starts_with(&second_prefix)) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the apply was not resumed by the other controller: {runners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("resumed {resumed_after:?} after the SIGKILL");
    assert!(
        resumed_after < Duration::from_secs(12),
        "resumed after {resumed_after:?}"
    );
    let new_holder = store.leader().await.unwrap().unwrap().holder;
    assert!(new_holder.starts_with(&second_prefix), "{new_holder}");

    let output = settle_until_exit(&store, child).await;
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    let runners = step_runners(&store, MACHINES).await;
    assert_eq!(
        runners.keys().collect::<Vec<_>>(),
        {
            let mut both = vec![&first_holder, &new_holder];
            both.sort();
            both
        },
        "the steps ran under the two leaders' names only: {runners:?}"
    );
    assert_every_step_ran_once(&store, MACHINES).await;
    drop((first, second));
    drop_postgres_store(store).await;
}

/// The tasks alive in this test's runtime.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The leader's executor as `fleet serve` runs it for a term, on `store`, as `holder`.
fn spawn_executor(store: &Store, holder: &str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        Executor {
            store: store.clone(),
            drivers: PowerDrivers::standard(),
            metrics: std::sync::Arc::new(fleet::metrics::Metrics::new()),
            holder: holder.into(),
            wake: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
        .run(),
    )
}

// A term's end aborts its executor, and with it the apply's tasks: the machines reporting in
// afterwards are not marked done by them; the next term's executor takes the lock over, resumes
// the apply, and each step ends once (one `done` event per step, by the new holder).
both_backends!(
    an_executor_aborted_mid_apply_stops_its_tasks_and_the_next_finishes_each_step_once,
    |store| async move {
        const MACHINES: u8 = 3;
        let body: String = (0..MACHINES)
            .map(|index| machine_toml(&format!("q-{index:02}"), index))
            .collect();
        let text = format!("[policy]\nparallelism = {MACHINES}\n\n{body}");
        let fleet = fleet::config::load_str("fleet.toml", &text).unwrap();
        let observed = fleet::apply::observe(&store).await.unwrap();
        let request = ApplyRequest {
            plan: fleet::plan::plan(&fleet, &observed),
            allow_destroy: false,
            strict: false,
        };
        let tasks_before = alive_tasks();
        let first = spawn_executor(&store, "a/1");
        let started = queue_apply(&store, request, "alice", None).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let records = store.planning_records().await.unwrap();
            let commissioning = records
                .iter()
                .filter(|record| record.lifecycle.status == Status::Commissioning)
                .count();
            if commissioning == usize::from(MACHINES) {
                break;
            }
            assert!(Instant::now() < deadline, "the machines do not commission");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            store.lock_holder("apply").await.unwrap().unwrap().holder,
            "a/1"
        );
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        // Its tasks (the apply, the machines', the lock's refresh) end as the runtime gets to
        // them; then the runtime holds no more tasks than before it started.
        while alive_tasks() > tasks_before {
            assert!(
                Instant::now() < deadline,
                "the aborted executor left tasks: {} alive, {tasks_before} before",
                alive_tasks()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Reported in with no executor running: the aborted one's tasks, had they lived on,
        // would mark the steps done at their next look (every 0.1 s). Watched for five looks.
        assert_eq!(settle_all(&store).await, usize::from(MACHINES));
        let watched = Instant::now();
        while watched.elapsed() < Duration::from_millis(500) {
            let steps = store.apply_steps(&started.id).await.unwrap();
            let done = steps.iter().filter(|step| step.state == "done").count();
            assert_eq!(
                done,
                usize::from(MACHINES),
                "only the add steps are done: {steps:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let second = spawn_executor(&store, "b/1");
        loop {
            let now = progress(&store, &started.id).await.unwrap();
            if now.finished() {
                break;
            }
            assert!(Instant::now() < deadline, "not resumed: {now:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        second.abort();
        for index in 0..MACHINES {
            let name = format!("q-{index:02}");
            let done: Vec<String> = events_of(&store, &name)
                .await
                .iter()
                .filter(|event| event.action.as_deref() == Some("commission done"))
                .map(|event| event.detail["by"].as_str().unwrap_or_default().to_string())
                .collect();
            assert_eq!(done, vec!["b/1".to_string()], "{name}");
        }
        assert_eq!(store.lock_holder("apply").await.unwrap(), None);
    }
);

/// Settles `name` until it rests (commissioning, then testing, then ready).
async fn settle_to_rest(store: &Store, name: &str) {
    loop {
        let record = store.machine(name).await.unwrap().unwrap();
        if !record.lifecycle.status.is_in_progress() {
            return;
        }
        settle_machine(store, name, "test-machine", &Settlement::Succeeded)
            .await
            .unwrap();
    }
}

/// A machine's run that meets a store error is tried again, not dropped: while another
/// connection holds SQLite's write lock past the busy timeout (5 s), a machine that finished
/// commissioning cannot have its step marked done; once the lock is gone its run resumes the
/// step (its action ran: followed, not run again) and marks it done. Every step of the apply
/// ends done, none is left started or pending under the apply marked applied, and no
/// machine is commissioned twice. (Before, the machine's task ended on the error and the apply
/// was marked applied with its step still started.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_run_interrupted_by_a_store_error_is_resumed_and_every_step_ends_once() {
    use sqlx::Connection;
    const MACHINES: u8 = 4;
    /// Past the store's busy timeout (5 s), with room for a slow first look, so a write
    /// waiting for the lock fails (and a retry's may too).
    const HOLD: Duration = Duration::from_secs(12);
    let (store, directory) = crate::support::db::sqlite_store().await;
    let body: String = (0..MACHINES)
        .map(|index| machine_toml(&format!("q-{index:02}"), index))
        .collect();
    // One machine waits for a turn: it starts only when another's run ends.
    let text = format!("[policy]\nparallelism = {}\n\n{body}", MACHINES - 1);
    let fleet = fleet::config::load_str("fleet.toml", &text).unwrap();
    let observed = fleet::apply::observe(&store).await.unwrap();
    let request = ApplyRequest {
        plan: fleet::plan::plan(&fleet, &observed),
        allow_destroy: false,
        strict: false,
    };
    let executor = spawn_executor(&store, "a/1");
    let started = queue_apply(&store, request, "alice", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let first_turn = loop {
        let names: Vec<String> = store
            .planning_records()
            .await
            .unwrap()
            .iter()
            .filter(|record| record.lifecycle.status == Status::Commissioning)
            .map(|record| record.name.to_string())
            .collect();
        if names.len() == usize::from(MACHINES - 1) {
            break names;
        }
        assert!(Instant::now() < deadline, "the machines do not commission");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let commission_step = |name: &str, steps: &[fleet::store::ApplyStepRow]| {
        steps
            .iter()
            .find(|step| step.machine == name && step.step == 1)
            .map(|step| step.state.clone())
            .unwrap()
    };

    // A machine settled to ready, then the write lock taken before its run marks the step
    // done (it looks every 0.1 s: should it win the race, the next machine is tried).
    let path = directory.path().join("fleet.db");
    let mut interrupted = None;
    for name in &first_turn {
        settle_to_rest(&store, name).await;
        let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut lock)
            .await
            .unwrap();
        let steps = store.apply_steps(&started.id).await.unwrap();
        if commission_step(name, &steps) == "started" {
            interrupted = Some((name.clone(), lock));
            break;
        }
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    }
    let (interrupted, mut lock) =
        interrupted.expect("the lock taken before a step was marked done");
    let locked = Instant::now();
    tokio::time::sleep(HOLD).await;
    let steps = store.apply_steps(&started.id).await.unwrap();
    assert_eq!(
        commission_step(&interrupted, &steps),
        "started",
        "the step could not be marked done while the store was locked"
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    eprintln!(
        "the store was locked for {:?} while {interrupted}'s step waited to be marked done",
        locked.elapsed()
    );

    // The others settle as they come, until the apply ends.
    loop {
        settle_all(&store).await;
        let now = progress(&store, &started.id).await.unwrap();
        if now.finished() {
            break;
        }
        assert!(Instant::now() < deadline, "the apply did not end: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    executor.abort();
    let steps = store.apply_steps(&started.id).await.unwrap();
    assert_eq!(steps.len(), usize::from(MACHINES) * 2, "{steps:?}");
    assert!(
        steps.iter().all(|step| step.state == "done"),
        "every step ended done under the applied apply: {steps:#?}"
    );
    for index in 0..MACHINES {
        let name = format!("q-{index:02}");
        let events = events_of(&store, &name).await;
        let count = |kind: &str, action: &str| count_events(&events, kind, action);
        assert_eq!(count("action", "commission"), 1, "{name}: {events:#?}");
        assert_eq!(count("apply", "commission started"), 1, "{name}");
        assert_eq!(count("apply", "commission done"), 1, "{name}");
        let resumed: Vec<&str> = events
            .iter()
            .filter(|event| event.action.as_deref() == Some("commission resumed"))
            .filter_map(|event| event.reason.as_deref())
            .collect();
        if name == interrupted {
            // Once per try that found the step started (the lock may outlast the first).
            assert!(!resumed.is_empty(), "{name}: {events:#?}");
            assert!(
                resumed.iter().all(|reason| *reason
                    == "a store error interrupted this step; following it to its end"),
                "{name}: {resumed:?}"
            );
        } else {
            assert!(resumed.is_empty(), "{name}: {resumed:?}");
        }
        let record = store.machine(&name).await.unwrap().unwrap();
        assert_eq!(record.lifecycle.status, Status::Ready, "{name}");
    }
    assert_eq!(store.lock_holder("apply").await.unwrap(), None, "unlocked");
    store.close().await;
}
