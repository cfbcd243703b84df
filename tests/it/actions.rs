//! Every action in every status, through the controller's API and through the CLI, against a
//! real controller on a real SQLite file; plus adding machines, authentication, and a SIGKILL
//! in the middle of a burst of actions.

use crate::support::controller::{stderr, stdout, TestController};
use fleet::model::{
    decide, settle, Action, ActionRequest, FollowUp, Lifecycle, PowerState, Settlement, Status,
};
use fleet::store::Store;
use serde_json::json;

/// A machine in `status` as it would plausibly be there: commissioned, on, owned where the
/// status implies an owner, with an OS where it was deployed.
fn fixture(status: Status) -> Lifecycle {
    use Status::*;
    let owned = matches!(
        status,
        Allocated | Deploying | Deployed | FailedDeployment | Reserved
    );
    Lifecycle {
        status,
        previous_status: Some(Ready),
        locked: false,
        power: PowerState::On,
        owner: owned.then(|| "alice".to_string()),
        commissioned: status != New,
        deployed_os: matches!(status, Deployed).then(|| "ubuntu-24.04".to_string()),
        power_configured: true,
    }
}

/// What the controller must do: `Ok(Some(final status))`, `Ok(None)` for a delete, `Err` refused.
fn expected(machine: &Lifecycle, action: Action) -> Result<Option<Status>, String> {
    let outcome = decide(machine, &ActionRequest::new(action, "tester"))
        .map_err(|refusal| refusal.to_string())?;
    if outcome.delete {
        return Ok(None);
    }
    let mut after = outcome.after.clone();
    if outcome.follow_up == FollowUp::CompleteAfterPower {
        after = settle(&after, &Settlement::Succeeded)
            .expect("settles")
            .after;
    }
    Ok(Some(after.status))
}

fn machine_name(status: Status, action: Action) -> String {
    format!("m-{}-{}", status.as_str(), action.as_str()).replace('_', "-")
}

fn mac(index: usize) -> String {
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (index >> 16) & 0xff,
        (index >> 8) & 0xff,
        index & 0xff
    )
}

/// Creates one machine per (status, action) pair, each put in its status directly in the store.
async fn prepare_matrix(
    controller: &TestController,
    store: &Store,
) -> Vec<(Status, Action, String, Lifecycle)> {
    let api = controller.http();
    let mut pairs = Vec::new();
    for status in Status::ALL {
        for action in Action::ALL {
            let name = machine_name(status, action);
            api.add_idle_machine(&name, &mac(pairs.len())).await;
            let record = store
                .write_lifecycle(&name, &fixture(status), "test", "fixture")
                .await
                .unwrap();
            pairs.push((status, action, name, record.lifecycle));
        }
    }
    pairs
}

#[tokio::test(flavor = "multi_thread")]
async fn every_action_in_every_status_through_the_api() {
    let controller = TestController::start();
    let store = controller.store().await;
    let api = controller.http();
    let (mut accepted, mut refused) = (0, 0);
    for (status, action, name, lifecycle) in prepare_matrix(&controller, &store).await {
        let before = store.machine(&name).await.unwrap().unwrap();
        let path = format!("/machines/{name}/actions/{}", action.as_str());
        let (code, body) = api.post(&path, json!({"comment": "matrix"})).await;
        match expected(&lifecycle, action) {
            Ok(Some(final_status)) => {
                accepted += 1;
                assert_eq!(code, 200, "{action} in {status}: {body}");
                assert_eq!(
                    body["after"]["status"],
                    json!(final_status),
                    "{action} in {status}: {body}"
                );
                let after = store.machine(&name).await.unwrap().unwrap();
                assert_eq!(
                    after.lifecycle.status, final_status,
                    "{action} in {status}: stored"
                );
            }
            Ok(None) => {
                accepted += 1;
                assert_eq!(code, 200, "{action} in {status}: {body}");
                assert!(store.machine(&name).await.unwrap().is_none(), "deleted");
            }
            Err(message) => {
                refused += 1;
                assert_eq!(code, 409, "{action} in {status} must be refused: {body}");
                let error = &body["error"];
                assert_eq!(error["code"], "refused");
                assert_eq!(error["machine"], json!(name));
                assert_eq!(error["status"], json!(status));
                assert_eq!(error["action"], json!(action));
                let text = error["message"].as_str().unwrap();
                assert!(
                    text.contains(&name)
                        && text.contains(status.as_str())
                        && text.contains(action.cli_name()),
                    "{text}"
                );
                assert!(text.ends_with(&message), "{text} vs {message}");
                let after = store.machine(&name).await.unwrap().unwrap();
                assert_eq!(
                    after.generation, before.generation,
                    "a refused action changes nothing"
                );
                assert_eq!(after.lifecycle, before.lifecycle);
            }
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
    // Refusals are in the history too.
    let events = store.events(&Default::default()).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|event| event.kind == "refused")
            .count(),
        refused
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_action_in_every_status_through_the_cli() {
    let controller = TestController::start();
    let store = controller.store().await;
    for (status, action, name, lifecycle) in prepare_matrix(&controller, &store).await {
        let output =
            controller.fleet(&["machine", action.cli_name(), &name, "--comment", "matrix"]);
        match expected(&lifecycle, action) {
            Ok(final_status) => {
                assert!(
                    output.status.success(),
                    "{action} in {status}: {}",
                    stderr(&output)
                );
                assert!(
                    stdout(&output).starts_with(&format!("{name}: {}", action.cli_name())),
                    "{}",
                    stdout(&output)
                );
                let stored = store
                    .machine(&name)
                    .await
                    .unwrap()
                    .map(|record| record.lifecycle.status);
                assert_eq!(stored, final_status, "{action} in {status}");
            }
            Err(_) => {
                assert_eq!(
                    output.status.code(),
                    Some(1),
                    "{action} in {status} must exit 1"
                );
                let text = stderr(&output);
                assert!(text.starts_with("refused: machine `"), "{text}");
                assert!(
                    text.contains(&name)
                        && text.contains(status.as_str())
                        && text.contains(action.cli_name()),
                    "{text}"
                );
                assert_eq!(
                    store.machine(&name).await.unwrap().unwrap().lifecycle,
                    lifecycle,
                    "unchanged"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_refused_machine_does_not_stop_the_others_and_the_exit_code_says_so() {
    let controller = TestController::start();
    let api = controller.http();
    api.add_idle_machine("alpha", "52:54:00:00:00:01").await;
    api.add_idle_machine("beta", "52:54:00:00:00:02").await;
    let store = controller.store().await;
    store
        .write_lifecycle("beta", &fixture(Status::Ready), "test", "fixture")
        .await
        .unwrap();
    let output = controller.fleet(&["machine", "allocate", "alpha", "beta", "gamma"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("beta: allocate — ready → allocated"),
        "{}",
        stdout(&output)
    );
    let errors = stderr(&output);
    assert!(
        errors.contains("refused: machine `alpha`: cannot allocate a machine that is new"),
        "{errors}"
    );
    assert!(
        errors.contains("unknown: no machine named `gamma`"),
        "{errors}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_machines_commissions_them_unless_told_not_to() {
    let controller = TestController::start();
    let api = controller.http();
    let (code, body) = api
        .post(
            "/machines",
            json!({"name": "node-1", "macs": ["52:54:00:aa:00:01"], "power": {"type": "manual"}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["machine"]["status"], "commissioning");
    assert_eq!(
        body["commission"]["statuses"],
        json!(["new", "commissioning"])
    );
    assert!(body["commission"]["notes"]
        .to_string()
        .contains("manual power: switch it on now"));

    let output = controller.fleet(&[
        "machine",
        "add",
        "node-2",
        "--mac",
        "52:54:00:aa:00:02",
        "--no-commission",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("node-2: added, new"));

    // No power type: added, but commissioning is refused with the reason.
    let output = controller.fleet(&["machine", "add", "node-3", "--mac", "52:54:00:aa:00:03"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains(
        "not commissioned: cannot commission a machine that is new: unconfigured power type"
    ));

    // Added live: deployed, never commissioned; release sends it to new.
    let output = controller.fleet(&[
        "machine",
        "add",
        "live-1",
        "--deployed",
        "--os",
        "debian-12",
        "--power-type",
        "manual",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("live-1: added, deployed"));
    let output = controller.fleet(&["machine", "release", "live-1"]);
    assert!(
        stdout(&output).contains("deployed → releasing → new"),
        "{}",
        stdout(&output)
    );

    let output = controller.fleet(&["machines", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["live-1", "node-1", "node-2", "node-3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_machines_are_refused_whole_with_every_reason() {
    let controller = TestController::start();
    let api = controller.http();
    let (code, body) = api
        .post(
            "/machines",
            json!({"name": "Bad_Name", "macs": ["nope"], "power": {"type": "ipmi", "address": "10.0.0.5", "password": "hunter2"}}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Bad_Name"), "{message}");
    assert!(message.contains("`nope` is not a MAC address"), "{message}");
    assert!(
        message.contains("unknown power type `ipmi`") || message.contains("password"),
        "{message}"
    );
    assert!(
        message.contains("power parameter `password` is a secret"),
        "{message}"
    );
    assert!(
        !message.contains("hunter2"),
        "a secret never appears in an error"
    );
    let (_, rows) = api.get("/machines").await;
    assert_eq!(rows, json!([]), "nothing half-written");

    api.add_idle_machine("one", "52:54:00:00:00:01").await;
    let (code, body) = api
        .post(
            "/machines",
            json!({"name": "two", "macs": ["52:54:00:00:00:01"]}),
        )
        .await;
    assert_eq!(code, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already belongs to machine `one`"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_wants_the_operator_token() {
    let controller = TestController::start();
    let client = controller.pinned_client();
    let response = client
        .get(format!("{}/api/v1/machines", controller.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let response = client
        .get(format!("{}/api/v1/machines", controller.api_url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // The version needs no token; the CLI finds the token in the state directory.
    let response = client
        .get(format!("{}/api/v1/version", controller.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let output = controller.fleet(&["machines"]);
    assert!(output.status.success(), "{}", stderr(&output));
    // A wrong token from the environment is refused with a message saying where to find the right one.
    let output = std::process::Command::new(crate::support::controller::FLEET)
        .args([
            "machines",
            "--server",
            &controller.api_url,
            "--tls-fingerprint",
            &controller.fingerprint(),
            "--token",
            "wrong",
            "--state-dir",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("operator token is wrong"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_controller_is_named_with_what_to_do() {
    let config = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(crate::support::controller::FLEET)
        .args([
            "machines",
            "--server",
            "https://127.0.0.1:1",
            "--state-dir",
            "/nonexistent",
        ])
        .env("XDG_CONFIG_HOME", config.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("cannot reach the controller at https://127.0.0.1:1"),
        "{text}"
    );
    assert!(text.contains("fleet serve"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn machines_show_and_events_tell_the_story() {
    let controller = TestController::start();
    let api = controller.http();
    api.add_idle_machine("node-1", "52:54:00:00:00:01").await;
    let store = controller.store().await;
    store
        .write_lifecycle("node-1", &fixture(Status::Ready), "test", "fixture")
        .await
        .unwrap();
    for action in ["deploy", "lock", "unlock", "mark-broken"] {
        let output = controller.fleet(&["machine", action, "node-1", "--comment", "disk smoke"]);
        assert!(output.status.success(), "{action}: {}", stderr(&output));
    }
    let output = controller.fleet(&["machines"]);
    let table = stdout(&output);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    assert!(
        table.contains("node-1") && table.contains("broken"),
        "{table}"
    );

    let output = controller.fleet(&["machine", "show", "node-1"]);
    let text = stdout(&output);
    assert!(text.contains("status          broken (Broken)"), "{text}");
    assert!(
        text.contains("disk smoke"),
        "the mark-broken comment is the reason: {text}"
    );

    let output = controller.fleet(&["machine", "show", "node-1", "--json"]);
    let detail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(detail["machine"]["status"], "broken");
    assert_eq!(detail["machine"]["status_reason"], "disk smoke");

    let output = controller.fleet(&["events", "node-1", "--json"]);
    let events: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let changes: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["kind"] == "status")
        .map(|event| {
            (
                event["from"].as_str().unwrap().to_string(),
                event["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("ready", "allocated"),
        ("allocated", "deploying"),
        ("deploying", "broken"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(changes, expected);
    let output = controller.fleet(&["machine", "show", "nobody"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no machine named `nobody`"));
}
