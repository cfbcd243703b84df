//! `fleet serve --watch` through the real binary: saves (atomic rename and in place) are
//! re-planned quickly (measured), an invalid save keeps the last good fleet and says where the
//! error is, a valid save recovers, destructive steps are never applied automatically, and the
//! timer reconciles without an edit.

use crate::support::controller::TestController;
use fleet::apply::watch::{read_current_plan, CurrentPlan};
use fleet::model::Status;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IMAGES: &str = "[images.noble]\nroot = { path = \"images/noble.tar.xz\", format = \"tar-xz\" }\n\n\
                      [images.jammy]\nroot = { path = \"images/jammy.tar.xz\", format = \"tar-xz\" }\n\n";

/// Generous, so that a loaded CI machine does not fail the test; the figure is printed.
const LATENCY_BOUND: Duration = Duration::from_secs(2);

fn machine_toml(name: &str, index: u8, state: &str, image: &str) -> String {
    format!(
        "[[machine]]\nname = \"{name}\"\nmacs = [\"52:54:00:bb:00:{index:02x}\"]\nstate = \"{state}\"\nimage = \"{image}\"\npower = {{ type = \"manual\" }}\n\n"
    )
}

/// An editor's atomic save: a temporary file beside the original, renamed over it.
fn save_atomically(path: &Path, text: &str) {
    let temporary = path.with_file_name(".fleet.toml.swp");
    std::fs::write(&temporary, text).expect("temporary file written");
    std::fs::rename(&temporary, path).expect("renamed into place");
}

fn save_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).expect("written in place");
}

/// Polls `<state_dir>/current-plan.json` until `wanted` holds; `None` after `limit`.
fn wait_for_plan(
    state_dir: &Path,
    limit: Duration,
    wanted: impl Fn(&CurrentPlan) -> bool,
) -> Option<CurrentPlan> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(current) = read_current_plan(state_dir) {
            if wanted(&current) {
                return Some(current);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn first_plan(state_dir: &Path) -> CurrentPlan {
    wait_for_plan(state_dir, Duration::from_secs(30), |_| true)
        .expect("the first reconcile publishes a plan")
}

/// The controller's stderr as it comes (its support reads the pipe).
fn collect_stderr(controller: &mut TestController) -> Arc<Mutex<String>> {
    controller.log.clone()
}

fn start_watching(state_dir: &Path, fleet: &Path, extra: &[&str]) -> TestController {
    let fleet = fleet.to_str().expect("a UTF-8 path");
    let mut arguments = vec!["--watch", "-f", fleet];
    arguments.extend_from_slice(extra);
    TestController::start_in(state_dir, &arguments)
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn saves_atomic_and_in_place_are_replanned_quickly_and_safe_steps_applied() {
    // The state directory is the fleet file's own: the controller's writes beside the file
    // (database, current-plan.json) must not set off reconciles of their own.
    let directory = tempfile::tempdir().unwrap();
    let fleet_path: PathBuf = directory.path().join("fleet.toml");
    let mut body = format!("{IMAGES}{}", machine_toml("w-00", 0, "new", "noble"));
    save_in_place(&fleet_path, &body);
    let mut controller = start_watching(directory.path(), &fleet_path, &[]);
    let _stderr = collect_stderr(&mut controller);
    let mut last = first_plan(directory.path());
    let mut latencies = Vec::new();
    for index in 1..=12u8 {
        let name = format!("w-{index:02}");
        body.push_str(&machine_toml(&name, index, "new", "noble"));
        let saved = Instant::now();
        if index % 2 == 0 {
            save_in_place(&fleet_path, &body);
        } else {
            save_atomically(&fleet_path, &body);
        }
        let before = last.sequence;
        let seen = wait_for_plan(directory.path(), LATENCY_BOUND * 5, |current| {
            current.sequence > before && current.plan.machine(&name).is_some()
        });
        let latency = saved.elapsed();
        last = seen.unwrap_or_else(|| panic!("no plan with {name} after {latency:?}"));
        latencies.push(latency);
        // Let the edit's reconcile finish before the next save, as a person's saves would.
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sorted = latencies.clone();
    sorted.sort();
    println!(
        "watch latency, save to new plan, {} saves (odd: atomic rename, even: in place): median {:?}, max {:?}; all {latencies:?}",
        sorted.len(),
        median(&sorted),
        sorted[sorted.len() - 1]
    );
    assert!(
        sorted[sorted.len() - 1] < LATENCY_BOUND,
        "a save took {:?} to be re-planned",
        sorted[sorted.len() - 1]
    );
    // The `add` steps are safe: the loop applied them through the executor.
    let store = controller.store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = store.planning_records().await.expect("records");
        if records.len() == 13 && records.iter().all(|r| r.lifecycle.status == Status::New) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every declared machine was added: {:?}",
            records
                .iter()
                .map(|r| r.name.to_string())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_save_keeps_the_last_good_fleet_and_a_valid_save_recovers() {
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let fleet_path = files.path().join("fleet.toml");
    let good = format!("{IMAGES}{}", machine_toml("v-1", 1, "new", "noble"));
    save_in_place(&fleet_path, &good);
    let mut controller = start_watching(state.path(), &fleet_path, &[]);
    let stderr = collect_stderr(&mut controller);
    let first = first_plan(state.path());
    // Line 10 is `state = ...` of the machine; column 9 is the value.
    save_atomically(&fleet_path, &good.replace("\"new\"", "\"sleeping\""));
    let rejected = wait_for_plan(state.path(), Duration::from_secs(10), |current| {
        current.rejected_edit.is_some()
    })
    .expect("the invalid save is reported");
    let errors = &rejected.rejected_edit.as_ref().unwrap().errors;
    assert!(
        errors
            .iter()
            .any(|error| error.ends_with("fleet.toml:10:9: `sleeping` is not a machine state")),
        "{errors:?}"
    );
    assert_eq!(
        rejected.fleet_digest, first.fleet_digest,
        "the last good fleet stays"
    );
    assert_eq!(
        rejected.plan.machine("v-1").unwrap().desired,
        Some(Status::New)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stderr.lock().unwrap().contains("fleet.toml:10:9") {
        assert!(Instant::now() < deadline, "{}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    // A valid save: the new fleet is in force and the error is gone.
    save_in_place(&fleet_path, &good.replace("\"new\"", "\"ready\""));
    let recovered = wait_for_plan(state.path(), Duration::from_secs(10), |current| {
        current.rejected_edit.is_none() && current.fleet_digest != first.fleet_digest
    })
    .expect("a valid save recovers");
    assert_eq!(
        recovered.plan.machine("v-1").unwrap().desired,
        Some(Status::Ready)
    );
    // The controller says so on stderr, which a reader thread collects: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stderr
        .lock()
        .unwrap()
        .contains("the fleet files validate again")
    {
        assert!(Instant::now() < deadline, "{}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn destructive_steps_wait_for_a_person_and_the_timer_replans_without_an_edit() {
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    // A machine deployed with noble, before the watching controller starts.
    let mut plain = TestController::start_in(state.path(), &[]);
    let body = serde_json::json!({
        "name": "d-1", "macs": ["52:54:00:bb:00:01"], "power": {"type": "manual"},
        "deployed": true, "image": "noble"
    });
    let (status, answer) = plain.http().post("/machines", body).await;
    assert_eq!(status, 201, "{answer}");
    plain.kill();
    drop(plain);
    // The fleet file wants it redeployed with jammy: release and erase first (destructive).
    let fleet_path = files.path().join("fleet.toml");
    save_in_place(
        &fleet_path,
        &format!("{IMAGES}{}", machine_toml("d-1", 1, "deployed", "jammy")),
    );
    let mut controller = start_watching(state.path(), &fleet_path, &["--reconcile-seconds", "1"]);
    let _stderr = collect_stderr(&mut controller);
    let first = first_plan(state.path());
    let planned = first.plan.machine("d-1").expect("d-1 planned");
    assert!(
        planned
            .steps
            .iter()
            .any(|step| step.class == fleet::plan::StepClass::Destructive),
        "{planned:?}"
    );
    assert_eq!(first.auto_apply.held_destructive, vec!["d-1".to_string()]);
    assert_eq!(first.auto_apply.started, None);
    // The timer: a machine enlists on its own, no file changes, and a later plan lists it.
    controller
        .http()
        .add_idle_machine("x-1", "52:54:00:bb:00:99")
        .await;
    let later = wait_for_plan(state.path(), Duration::from_secs(10), |current| {
        current.plan.machine("x-1").is_some()
    })
    .expect("the timer re-plans without an edit");
    assert!(later.sequence > first.sequence);
    assert_eq!(later.fleet_digest, first.fleet_digest);
    assert_eq!(
        later.plan.machine("x-1").unwrap().change,
        fleet::plan::Change::Discovered
    );
    // Several reconciles later, d-1 is still deployed with noble: nothing destroyed it.
    wait_for_plan(state.path(), Duration::from_secs(10), |current| {
        current.sequence > later.sequence
    })
    .expect("the timer goes on");
    let store = controller.store().await;
    let machine = store.machine("d-1").await.unwrap().unwrap();
    assert_eq!(machine.lifecycle.status, Status::Deployed);
    assert_eq!(machine.image.as_deref(), Some("noble"));
}

/// Two controllers with `--watch` on one PostgreSQL database and one fleet file: only the leader
/// runs the reconcile loop, and the other follows the fleet it takes into force at once (the
/// `fleet_reload` notification; its safety-net read comes every 30 s): a new image is listed by
/// both within seconds of the save.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_the_leader_reloads_is_followed_by_the_other_controller_at_once() {
    use crate::support::db::{drop_postgres_store, empty_postgres_database};
    let url = empty_postgres_database().await;
    let files = tempfile::tempdir().unwrap();
    let fleet_path = files.path().join("fleet.toml");
    let body = format!("{IMAGES}{}", machine_toml("f-1", 1, "new", "noble"));
    save_in_place(&fleet_path, &body);
    // The new image's file, there from the start: a file that can be read is listed.
    std::fs::create_dir_all(files.path().join("images")).unwrap();
    std::fs::write(files.path().join("images/focal.img"), vec![7u8; 4096]).unwrap();
    let (first_state, second_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = start_watching(first_state.path(), &fleet_path, &["--database", &url]);
    let second = start_watching(second_state.path(), &fleet_path, &["--database", &url]);
    let apis = [first.http(), second.http().with_token(&first.token)];
    // The leader's first reconcile announces the fleet in force.
    let store = fleet::store::Store::open(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.announced_fleet().await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no leader announced its fleet");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lists_focal = |images: &serde_json::Value| {
        images
            .as_array()
            .is_some_and(|rows| rows.iter().any(|row| row["image"] == "focal"))
    };
    for api in &apis {
        assert!(!lists_focal(&api.get("/images").await.1));
    }

    let edited = format!(
        "{body}[images.focal]\nroot = {{ path = \"images/focal.img\", format = \"raw\" }}\n\n"
    );
    save_atomically(&fleet_path, &edited);
    let digest = fleet::config::load(std::slice::from_ref(&fleet_path))
        .expect("the edit validates")
        .digest;
    let saved = Instant::now();
    // Both list it: the leader through its reconcile loop, the other by following.
    for (index, api) in apis.iter().enumerate() {
        loop {
            if lists_focal(&api.get("/images").await.1) {
                break;
            }
            assert!(
                saved.elapsed() < Duration::from_secs(10),
                "controller {index} does not list the new image {:?} after the save: {}\n{}",
                saved.elapsed(),
                api.get("/images").await.1,
                [&first, &second][index].log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "both controllers list the new image {:?} after the save",
        saved.elapsed()
    );
    assert_eq!(store.announced_fleet().await.unwrap(), Some(digest.clone()));
    let short = &digest[..12];
    let followed = [&first, &second]
        .iter()
        .filter(|controller| {
            controller
                .log()
                .contains(&format!("following the leader's fleet {short}"))
        })
        .count();
    assert_eq!(followed, 1, "the controller that does not lead followed");
    drop((first, second));
    drop_postgres_store(store).await;
}
