//! `fleet plan`, `fleet apply` and `fleet adopt` through the real binary against a real
//! controller: exit codes, saved plans refused per machine, the state lock, destructive steps,
//! adopt round trip, and a SIGKILL in the middle of an apply.

use crate::support::controller::{stderr, stdout, TestController};
use fleet::model::{Settlement, Status};
use fleet::services::actions::settle_machine;
use fleet::store::{EventFilter, Store};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGES: &str =
    "[images.noble]\nroot = { path = \"images/noble.tar.xz\", format = \"tar-xz\" }\n\n";

fn machine_toml(name: &str, index: u8, state: &str, extra: &str) -> String {
    format!(
        "[[machine]]\nname = \"{name}\"\nmacs = [\"52:54:00:aa:00:{index:02x}\"]\nstate = \"{state}\"\nimage = \"noble\"\npower = {{ type = \"manual\" }}\n{extra}\n"
    )
}

fn write_fleet(directory: &Path, body: &str) -> PathBuf {
    let path = directory.join("fleet.toml");
    std::fs::write(&path, format!("{IMAGES}{body}")).expect("fleet file written");
    path
}

fn exit_code(output: &std::process::Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// Adds a machine live (deployed with noble, manual power) through the API.
async fn add_live(controller: &TestController, name: &str, index: u8) {
    let body = serde_json::json!({
        "name": name, "macs": [format!("52:54:00:aa:00:{index:02x}")], "power": {"type": "manual"},
        "deployed": true, "image": "noble"
    });
    let (status, answer) = controller.http().post("/machines", body).await;
    assert_eq!(status, 201, "{answer}");
}

/// Settles every machine waiting in an in-progress status, as booted machines reporting in would.
async fn settle_all(store: &Store) -> usize {
    let mut settled = 0;
    for record in store.planning_records().await.expect("records") {
        if record.lifecycle.status.is_in_progress() {
            settle_machine(
                store,
                record.name.as_str(),
                "test-machine",
                &Settlement::Succeeded,
            )
            .await
            .expect("settles");
            settled += 1;
        }
    }
    settled
}

fn spawn_fleet(controller: &TestController, args: &[&str]) -> Child {
    Command::new(crate::support::controller::FLEET)
        .arg("--state-dir")
        .arg(&controller.state_dir)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleet runs")
}

/// Settles machines as they come until `child` exits; returns its output.
async fn settle_until_exit(store: &Store, mut child: Child) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("waits").is_none() {
        assert!(Instant::now() < deadline, "fleet apply did not finish");
        settle_all(store).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_then_apply_takes_new_machines_to_ready_and_the_next_plan_is_empty() {
    let controller = TestController::start();
    let directory = tempfile::tempdir().unwrap();
    let body = machine_toml("a-1", 1, "ready", "") + &machine_toml("a-2", 2, "new", "");
    let fleet = write_fleet(directory.path(), &body);
    let fleet = fleet.to_str().unwrap();
    let planned = controller.fleet(&["plan", "-f", fleet, "--detailed-exitcode"]);
    assert_eq!(exit_code(&planned), 2, "{}", stderr(&planned));
    let text = stdout(&planned);
    assert!(text.contains("+ a-1"), "{text}");
    assert!(text.contains("Plan: 2 to add, 1 to commission."), "{text}");
    let store = controller.store().await;
    let child = spawn_fleet(&controller, &["apply", "-f", fleet, "--yes"]);
    let applied = settle_until_exit(&store, child).await;
    let (out, err) = (stdout(&applied), stderr(&applied));
    assert_eq!(exit_code(&applied), 0, "{out}\n{err}");
    assert!(out.contains("2 done, 0 failed, 0 refused"), "{out}");
    assert_eq!(
        store
            .machine("a-1")
            .await
            .unwrap()
            .unwrap()
            .lifecycle
            .status,
        Status::Ready
    );
    let again = controller.fleet(&["plan", "-f", fleet, "--detailed-exitcode"]);
    assert_eq!(exit_code(&again), 0, "{}", stdout(&again));
    assert!(stdout(&again).contains("No changes."), "{}", stdout(&again));
    // Every step is in the history as `apply` events.
    let events = store
        .events(&EventFilter {
            machine: Some("a-1".into()),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    let apply_events: Vec<String> = events
        .iter()
        .filter(|event| event.kind == "apply")
        .filter_map(|event| event.action.clone())
        .collect();
    assert!(
        apply_events.contains(&"commission done".to_string()),
        "{apply_events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_plan_is_refused_for_machines_changed_since_and_applied_for_the_rest() {
    let controller = TestController::start();
    add_live(&controller, "s-1", 1).await;
    add_live(&controller, "s-2", 2).await;
    let directory = tempfile::tempdir().unwrap();
    let body = machine_toml("s-1", 1, "deployed", "locked = true")
        + &machine_toml("s-2", 2, "deployed", "locked = true");
    let fleet = write_fleet(directory.path(), &body);
    let saved = directory.path().join("plan.json");
    let planned = controller.fleet(&[
        "plan",
        "-f",
        fleet.to_str().unwrap(),
        "--out",
        saved.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(exit_code(&planned), 0, "{}", stderr(&planned));
    let plan: fleet::plan::Plan = serde_json::from_str(&stdout(&planned)).expect("JSON plan");
    assert_eq!(plan.summary.machines_changing, 2);
    // Someone changes s-2 after the plan was saved.
    let (status, answer) = controller
        .http()
        .post("/machines/s-2/actions/lock", serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let strict = controller.fleet(&["apply", saved.to_str().unwrap(), "--strict"]);
    assert_eq!(exit_code(&strict), 1);
    assert!(
        stderr(&strict).contains("refused s-1: --strict"),
        "{}",
        stderr(&strict)
    );
    let applied = controller.fleet(&["apply", saved.to_str().unwrap()]);
    let (out, err) = (stdout(&applied), stderr(&applied));
    assert_eq!(exit_code(&applied), 1, "{out}\n{err}");
    assert!(
        err.contains("refused s-2: changed since the plan: locked false → true"),
        "{err}"
    );
    assert!(out.contains("1 done, 0 failed, 1 refused"), "{out}");
    let store = controller.store().await;
    assert!(
        store
            .machine("s-1")
            .await
            .unwrap()
            .unwrap()
            .lifecycle
            .locked
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_apply_is_refused_while_one_runs_naming_the_holder() {
    let controller = TestController::start();
    let directory = tempfile::tempdir().unwrap();
    let fleet = write_fleet(directory.path(), &machine_toml("l-1", 1, "ready", ""));
    let fleet = fleet.to_str().unwrap();
    let first = spawn_fleet(&controller, &["apply", "-f", fleet, "--yes"]);
    let store = controller.store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = store.machine("l-1").await.unwrap();
        if record.is_some_and(|r| r.lifecycle.status == Status::Commissioning) {
            break;
        }
        assert!(Instant::now() < deadline, "the first apply did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While l-1 commissions, the plan for l-1 waits; l-2 gives the second apply steps to take.
    let other = tempfile::tempdir().unwrap();
    let body = machine_toml("l-1", 1, "ready", "") + &machine_toml("l-2", 2, "ready", "");
    let second_fleet = write_fleet(other.path(), &body);
    let second = controller.fleet(&["apply", "-f", second_fleet.to_str().unwrap(), "--yes"]);
    assert_eq!(exit_code(&second), 1);
    let err = stderr(&second);
    assert!(err.contains("another apply is running"), "{err}");
    assert!(err.contains("holds the apply lock since"), "{err}");
    let finished = settle_until_exit(&store, first).await;
    assert_eq!(exit_code(&finished), 0, "{}", stderr(&finished));
}

#[tokio::test(flavor = "multi_thread")]
async fn destructive_steps_need_allow_destroy() {
    let controller = TestController::start();
    add_live(&controller, "d-1", 1).await;
    let directory = tempfile::tempdir().unwrap();
    let fleet = write_fleet(directory.path(), &machine_toml("d-1", 1, "new", ""));
    let fleet = fleet.to_str().unwrap();
    let refused = controller.fleet(&["apply", "-f", fleet, "--yes"]);
    assert_eq!(exit_code(&refused), 1);
    assert!(
        stderr(&refused).contains("has destructive steps (release)"),
        "{}",
        stderr(&refused)
    );
    let allowed = controller.fleet(&["apply", "-f", fleet, "--yes", "--allow-destroy"]);
    assert_eq!(
        exit_code(&allowed),
        0,
        "{}\n{}",
        stdout(&allowed),
        stderr(&allowed)
    );
    let store = controller.store().await;
    // A machine added live has never passed commissioning: release returns it to new.
    assert_eq!(
        store
            .machine("d-1")
            .await
            .unwrap()
            .unwrap()
            .lifecycle
            .status,
        Status::New
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adopting_what_the_controller_observes_gives_an_empty_plan() {
    let controller = TestController::start();
    add_live(&controller, "o-1", 1).await;
    controller
        .http()
        .add_idle_machine("o-2", "52:54:00:aa:00:02")
        .await;
    // Machines added with the CLI's KEY=VALUE power parameters, the optional ones left out
    // or given as text: adopting them must not read as a change of power.
    for (name, mac, power) in [
        (
            "o-3",
            "52:54:00:aa:00:03",
            &[
                "--power-type",
                "ipmi",
                "--power-param",
                "address=10.0.0.5",
                "--power-param",
                "user=admin",
                "--power-param",
                "password=env:O3_PASSWORD",
                "--power-param",
                "cipher_suite=17",
            ][..],
        ),
        (
            "o-4",
            "52:54:00:aa:00:04",
            &[
                "--power-type",
                "redfish",
                "--power-param",
                "address=https://10.0.0.6",
                "--power-param",
                "user=root",
                "--power-param",
                "password=file:/etc/o4.pw",
                "--power-param",
                "verify_tls=false",
            ],
        ),
        (
            "o-5",
            "52:54:00:aa:00:05",
            &[
                "--power-type",
                "webhook",
                "--power-param",
                "on_url=http://pdu/on",
                "--power-param",
                "off_url=http://pdu/off",
            ],
        ),
    ] {
        let mut args = vec!["machine", "add", name, "--mac", mac, "--no-commission"];
        args.extend_from_slice(power);
        let added = controller.fleet(&args);
        assert_eq!(exit_code(&added), 0, "{}", stderr(&added));
    }
    let directory = tempfile::tempdir().unwrap();
    let adopted = directory.path().join("adopted.toml");
    let output = controller.fleet(&["adopt", "--out", adopted.to_str().unwrap()]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let planned = controller.fleet(&[
        "plan",
        "-f",
        adopted.to_str().unwrap(),
        "--detailed-exitcode",
    ]);
    let text = std::fs::read_to_string(&adopted).unwrap();
    assert_eq!(
        exit_code(&planned),
        0,
        "{}\n{}\n{text}",
        stdout(&planned),
        stderr(&planned)
    );
}

/// SIGKILL of the controller while an apply of many machines waits on them; after a restart
/// every machine ends done or failed with a reason, and no step ran twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_apply_survives_sigkill_of_the_controller() {
    const MACHINES: u8 = 24;
    let directory = tempfile::tempdir().unwrap();
    let state_dir = directory.path().join("state");
    let mut controller = TestController::start_in(&state_dir, &[]);
    let body: String = (0..MACHINES)
        .map(|index| machine_toml(&format!("k-{index:02}"), index, "ready", ""))
        .collect();
    let fleet = write_fleet(
        directory.path(),
        &format!("[policy]\nparallelism = 4\n\n{body}"),
    );
    let fleet = fleet.to_str().unwrap().to_string();
    let store = controller.store().await;
    let child = spawn_fleet(&controller, &["apply", "-f", &fleet, "--yes"]);
    // Let some machines get through (settled as they report), then kill mid-apply.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settled = 0;
    while settled < 6 {
        assert!(Instant::now() < deadline, "the apply did not progress");
        settled += settle_all(&store).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    controller.kill();
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    let controller = TestController::start_in(&state_dir, &[]);
    let store = controller.store().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let apply_id = loop {
        let applies = store.plans_with_status("applied").await.unwrap();
        if let Some(apply) = applies.first() {
            break apply.id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the resumed apply did not finish"
        );
        settle_all(&store).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let steps = store.apply_steps(&apply_id).await.unwrap();
    assert_eq!(steps.len(), usize::from(MACHINES) * 2, "{steps:?}");
    for step in &steps {
        assert!(
            step.state == "done" || (step.state == "failed" && step.reason.is_some()),
            "{step:?}"
        );
    }
    for index in 0..MACHINES {
        let name = format!("k-{index:02}");
        let events = store
            .events(&EventFilter {
                machine: Some(name.clone()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        let commissions = events
            .iter()
            .filter(|event| event.kind == "action" && event.action.as_deref() == Some("commission"))
            .count();
        assert!(commissions <= 1, "{name} commissioned {commissions} times");
        let status = store
            .machine(&name)
            .await
            .unwrap()
            .unwrap()
            .lifecycle
            .status;
        assert_eq!(status, Status::Ready, "{name}");
    }
}
