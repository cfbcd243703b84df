//! The `webhook` power driver against a small HTTP server in the test (axum on 127.0.0.1, on a
//! free port, in its own thread and runtime) that records every call, checks the credentials
//! and answers the query with `power: on` or `power: off`; through the driver and through a real
//! controller and the CLI.

use crate::support::controller::{stderr, stdout, TestController};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use fleet::model::{PowerCommand, PowerOffMode, PowerState};
use fleet::power::{PowerDrivers, PowerError, PowerTarget};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "hook-T0ken-5150";
/// `admin:plug-Pass-9`, base64.
const BASIC: &str = "Basic YWRtaW46cGx1Zy1QYXNzLTk=";
const PASSWORD: &str = "plug-Pass-9";

#[derive(Default)]
struct Recorded {
    /// `POST /off {"mode":"hard"}`, `GET /status` ...
    calls: Vec<String>,
    power: &'static str,
}

#[derive(Clone)]
struct Shared {
    recorded: Arc<Mutex<Recorded>>,
    /// The Authorization header the server accepts.
    authorization: String,
}

/// The plug: its own thread and runtime, so that blocking CLI runs in a test cannot stall it.
struct Plug {
    port: u16,
    recorded: Arc<Mutex<Recorded>>,
}

impl Plug {
    fn start(authorization: &str) -> Plug {
        let recorded = Arc::new(Mutex::new(Recorded {
            calls: Vec::new(),
            power: "off",
        }));
        let shared = Shared {
            recorded: recorded.clone(),
            authorization: authorization.to_string(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(answer).with_state(shared);
                axum::serve(listener, app).await.unwrap();
            });
        });
        Plug { port, recorded }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn calls(&self) -> Vec<String> {
        self.recorded.lock().unwrap().calls.clone()
    }

    fn power(&self) -> &'static str {
        self.recorded.lock().unwrap().power
    }

    fn params(&self, credentials: serde_json::Value) -> serde_json::Value {
        let mut params = json!({
            "on_url": self.url("/on"),
            "off_url": self.url("/off"),
            "query_url": self.url("/status"),
            "on_regex": "power: on",
            "off_regex": "power: off",
        });
        for (key, value) in credentials.as_object().unwrap() {
            params[key] = value.clone();
        }
        params
    }
}

async fn answer(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let mut recorded = shared.recorded.lock().unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    let call = if body.is_empty() {
        format!("{method} {}", uri.path())
    } else {
        format!("{method} {} {body}", uri.path())
    };
    recorded.calls.push(call);
    let authorization = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if authorization != shared.authorization {
        // Echoes what it was given, as careless servers do: the driver must scrub it.
        return (
            StatusCode::UNAUTHORIZED,
            format!("bad credentials: {authorization}\nsecond line"),
        );
    }
    match (method.as_str(), uri.path()) {
        ("POST", "/on") => {
            recorded.power = "on";
            (StatusCode::OK, "ok".into())
        }
        ("POST", "/off") => {
            recorded.power = "off";
            (StatusCode::OK, "ok".into())
        }
        ("POST", "/cycle") => {
            recorded.power = "on";
            (StatusCode::NO_CONTENT, String::new())
        }
        ("GET", "/status") => (StatusCode::OK, format!("power: {}\n", recorded.power)),
        ("POST", "/broken") => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "relay board on fire\nstack trace follows".into(),
        ),
        _ => (StatusCode::NOT_FOUND, "no such thing".into()),
    }
}

fn target(params: serde_json::Value) -> PowerTarget {
    PowerTarget {
        machine: "hook-1".into(),
        power_type: "webhook".into(),
        params,
        stored: Default::default(),
    }
}

#[tokio::test]
async fn webhook_on_off_cycle_and_query_with_a_bearer_token() {
    std::env::set_var("FLEET_TEST_WEBHOOK_TOKEN_DRIVER", TOKEN);
    let plug = Plug::start(&format!("Bearer {TOKEN}"));
    let drivers = PowerDrivers::standard();
    assert!(drivers.power_types().contains(&"webhook"));
    let machine = target(plug.params(json!({"token": {"env": "FLEET_TEST_WEBHOOK_TOKEN_DRIVER"}})));

    let report = drivers.query(&machine).await.unwrap();
    assert_eq!(report.state, PowerState::Off);
    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(plug.power(), "on");
    assert_eq!(drivers.query(&machine).await.unwrap().state, PowerState::On);

    // A soft off asks, then looks: the plug is off at once, so no note.
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Soft))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);
    assert_eq!(report.note, None);
    let report = drivers
        .execute(&machine, PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::Off);

    // Without a cycle URL, a cycle is a hard off then an on.
    let report = drivers
        .execute(&machine, PowerCommand::Cycle)
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(
        plug.calls(),
        [
            "GET /status",
            "POST /on",
            "GET /status",
            r#"POST /off {"mode":"soft"}"#,
            "GET /status",
            r#"POST /off {"mode":"hard"}"#,
            r#"POST /off {"mode":"hard"}"#,
            "POST /on",
        ]
    );

    // With one, a single call.
    let mut params = machine.params.clone();
    params["cycle_url"] = json!(plug.url("/cycle"));
    let before = plug.calls().len();
    let report = drivers
        .execute(&target(params), PowerCommand::Cycle)
        .await
        .unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(plug.calls()[before..], ["POST /cycle"]);

    // An answer neither regex matches is unknown; no query URL is unknown too.
    let mut params = machine.params.clone();
    params["on_regex"] = json!("^state=1$");
    params["off_regex"] = json!("^state=0$");
    let report = drivers.query(&target(params)).await.unwrap();
    assert_eq!(report.state, PowerState::Unknown);
    let mut params = machine.params.clone();
    params.as_object_mut().unwrap().remove("query_url");
    let report = drivers.query(&target(params)).await.unwrap();
    assert_eq!(report.state, PowerState::Unknown);
}

#[tokio::test]
async fn webhook_basic_authentication_and_a_wrong_token() {
    std::env::set_var("FLEET_TEST_WEBHOOK_PASSWORD", PASSWORD);
    std::env::set_var("FLEET_TEST_WEBHOOK_WRONG_TOKEN", "wrong-T0ken-0000");
    let plug = Plug::start(BASIC);
    let drivers = PowerDrivers::standard();
    let machine = target(plug.params(json!({
        "user": "admin",
        "password": {"env": "FLEET_TEST_WEBHOOK_PASSWORD"},
    })));
    let report = drivers.execute(&machine, PowerCommand::On).await.unwrap();
    assert_eq!(report.state, PowerState::On);
    assert_eq!(drivers.query(&machine).await.unwrap().state, PowerState::On);

    let wrong = target(plug.params(json!({"token": {"env": "FLEET_TEST_WEBHOOK_WRONG_TOKEN"}})));
    let error = drivers
        .execute(&wrong, PowerCommand::Off(PowerOffMode::Hard))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert_eq!(
        text,
        format!(
            "webhook 127.0.0.1:{}: POST /off answered 401: bad credentials: Bearer ********",
            plug.port
        )
    );
    assert!(!text.contains("wrong-T0ken-0000"), "{text}");
    assert_eq!(plug.power(), "on");
}

#[tokio::test]
async fn webhook_errors_name_the_host_and_the_status() {
    let plug = Plug::start("");
    let drivers = PowerDrivers::standard();
    let mut params = plug.params(json!({}));
    params["on_url"] = json!(plug.url("/broken"));
    let error = drivers
        .execute(&target(params), PowerCommand::On)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        PowerError::Driver {
            driver: "webhook".into(),
            target: format!("127.0.0.1:{}", plug.port),
            message: "POST /broken answered 500: relay board on fire".into(),
        }
    );

    // Credentials inside a URL never show.
    let mut params = plug.params(json!({}));
    params["on_url"] = json!(format!(
        "http://admin:url-S3cret@127.0.0.1:{}/broken?key=url-K3y",
        plug.port
    ));
    let text = drivers
        .execute(&target(params), PowerCommand::On)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with(&format!(
            "webhook 127.0.0.1:{}: POST /broken answered",
            plug.port
        )),
        "{text}"
    );
    assert!(
        !text.contains("url-S3cret") && !text.contains("url-K3y"),
        "{text}"
    );

    // Nothing listening: a quick, distinct message.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nobody = target(json!({
        "on_url": format!("http://127.0.0.1:{port}/on"),
        "off_url": format!("http://127.0.0.1:{port}/off"),
    }));
    let started = Instant::now();
    let text = drivers
        .execute(&nobody, PowerCommand::On)
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        text.starts_with(&format!("webhook 127.0.0.1:{port}: cannot connect: ")),
        "{text}"
    );
    assert!(!text.contains("http://"), "{text}");

    // A missing URL names the machine and the parameter.
    let text = drivers
        .execute(
            &target(json!({"off_url": plug.url("/off")})),
            PowerCommand::On,
        )
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        text,
        "webhook hook-1: no `on_url`: set the power parameter `on_url`"
    );
}

#[tokio::test]
async fn webhook_power_through_the_controller_and_the_cli() {
    // `fleet serve` inherits the test's environment, and with it the token.
    std::env::set_var("FLEET_TEST_WEBHOOK_TOKEN", TOKEN);
    let plug = Plug::start(&format!("Bearer {TOKEN}"));
    let controller = TestController::start();
    add_deployed_webhook_machine(&controller, &plug, "hook-1").await;

    let show_power = || {
        let output = controller.fleet(&["machine", "show", "hook-1", "--json"]);
        assert!(output.status.success(), "show: {}", stderr(&output));
        assert!(!stdout(&output).contains(TOKEN));
        let detail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        detail["machine"]["power"].clone()
    };

    for (action, call, power) in [
        ("power-on", "POST /on", "on"),
        ("power-off", r#"POST /off {"mode":"hard"}"#, "off"),
        ("power-on", "POST /on", "on"),
    ] {
        let before = plug.calls().len();
        let output = controller.fleet(&["machine", action, "hook-1"]);
        assert!(
            output.status.success(),
            "{action}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        assert!(!stdout(&output).contains(TOKEN) && !stderr(&output).contains(TOKEN));
        let calls = plug.calls();
        assert!(
            calls[before..].contains(&call.to_string()),
            "{action}: {calls:?}"
        );
        assert_eq!(plug.power(), power, "{action}");
        assert_eq!(show_power(), json!(power), "{action}");
    }
    let events = controller.fleet(&["events", "hook-1", "--json"]);
    assert!(!stdout(&events).contains(TOKEN));
}

/// The fleet file's webhook keys reach the driver: a machine declared with `cycle_url` and
/// basic authentication (`user`, `password = { env = ... }`), added by `fleet apply`, is power
/// cycled through its cycle URL with the password from the controller's environment.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_from_a_fleet_file_cycles_through_its_cycle_url_with_basic_authentication() {
    std::env::set_var("FLEET_TEST_WEBHOOK_FILE_PASSWORD", PASSWORD);
    let plug = Plug::start(BASIC);
    let controller = TestController::start();
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            r#"[[machine]]
name = "hook-file"
macs = ["52:54:00:cc:00:01"]
commission = false
state = "new"

[machine.power]
type = "webhook"
on_url = "{on}"
off_url = "{off}"
cycle_url = "{cycle}"
query_url = "{status}"
on_regex = "power: on"
off_regex = "power: off"
user = "admin"
password = {{ env = "FLEET_TEST_WEBHOOK_FILE_PASSWORD" }}
"#,
            on = plug.url("/on"),
            off = plug.url("/off"),
            cycle = plug.url("/cycle"),
            status = plug.url("/status"),
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let mut outputs = String::new();
    let validated = controller.fleet(&["validate", "-f", file]);
    assert!(validated.status.success(), "{}", stderr(&validated));
    let applied = controller.fleet(&["apply", "-f", file, "--yes"]);
    let text = format!("{}{}", stdout(&applied), stderr(&applied));
    assert!(applied.status.success(), "{text}");
    outputs.push_str(&text);

    let shown = controller.fleet(&["machine", "show", "hook-file", "--json"]);
    outputs.push_str(&stdout(&shown));
    let detail: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let params = &detail["machine"]["power_params"];
    assert_eq!(params["cycle_url"], json!(plug.url("/cycle")), "{params}");
    assert_eq!(params["user"], "admin", "{params}");
    assert_eq!(
        params["password"],
        json!({"env": "FLEET_TEST_WEBHOOK_FILE_PASSWORD"}),
        "{params}"
    );

    let store = controller.store().await;
    controller.make_deployed(&store, "hook-file").await;
    for (action, calls, power) in [
        ("power-cycle", vec!["POST /cycle"], "on"),
        ("power-off", vec![r#"POST /off {"mode":"hard"}"#], "off"),
        ("power-on", vec!["POST /on"], "on"),
    ] {
        let before = plug.calls().len();
        let output = controller.fleet(&["machine", action, "hook-file"]);
        let text = format!("{}{}", stdout(&output), stderr(&output));
        assert!(output.status.success(), "{action}: {text}");
        outputs.push_str(&text);
        // Basic authentication was accepted (the plug answers 401 to anything else), and a
        // cycle is the one call to the cycle URL, not an off and an on.
        let made: Vec<String> = plug.calls()[before..]
            .iter()
            .filter(|call| !call.starts_with("GET "))
            .cloned()
            .collect();
        assert_eq!(made, calls, "{action}");
        assert_eq!(plug.power(), power, "{action}");
        let shown = controller.fleet(&["machine", "show", "hook-file", "--json"]);
        outputs.push_str(&stdout(&shown));
        let detail: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(detail["machine"]["power"], json!(power), "{action}");
    }
    let events = controller.fleet(&["events", "hook-file", "--json"]);
    outputs.push_str(&stdout(&events));
    let planned = controller.fleet(&["plan", "-f", file]);
    outputs.push_str(&stdout(&planned));
    outputs.push_str(&stderr(&planned));
    assert!(!outputs.contains(PASSWORD), "{outputs}");
    assert!(!outputs.contains(&BASIC[6..]), "{outputs}");
}

/// Adds `name` powered by `plug` through `controller`, deployed and owned.
async fn add_deployed_webhook_machine(controller: &TestController, plug: &Plug, name: &str) {
    let on_url = format!("on_url={}", plug.url("/on"));
    let off_url = format!("off_url={}", plug.url("/off"));
    let query_url = format!("query_url={}", plug.url("/status"));
    let output = controller.fleet(&[
        "machine",
        "add",
        name,
        "--power-type",
        "webhook",
        "--power-param",
        &on_url,
        "--power-param",
        &off_url,
        "--power-param",
        &query_url,
        "--power-param",
        "on_regex=power: on",
        "--power-param",
        "off_regex=power: off",
        "--power-param",
        "token=env:FLEET_TEST_WEBHOOK_TOKEN",
        "--no-commission",
    ]);
    assert!(output.status.success(), "add: {}", stderr(&output));
    let store = controller.store().await;
    controller.make_deployed(&store, name).await;
    store.close().await;
}

/// Waits until the machine has no pending power decision, within `limit`.
async fn wait_for_no_pending_power(store: &fleet::store::Store, name: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while store.pending_power(name).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "{name}'s power decision is still pending after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A controller killed at each named crash point of an action (a failpoint: the process aborts
/// there) leaves the decision whole — status, erase mode and the power command in the outbox,
/// committed together — and the controller that leads next carries the command out and what
/// follows it: a release with a secure erase killed before its power cycle is cycled after the
/// restart and still erases securely; a release killed after its power-off ran but before the
/// result was stored is powered off again (the command is idempotent) and completes to ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_controller_killed_at_each_crash_point_leaves_the_decision_to_be_carried_out() {
    std::env::set_var("FLEET_TEST_WEBHOOK_TOKEN", TOKEN);
    let plug = Plug::start(&format!("Bearer {TOKEN}"));
    let directory = tempfile::tempdir().unwrap();
    let start = |failpoint: &str| {
        TestController::start_with_env(
            directory.path(),
            "127.0.0.1:0",
            &[],
            &[("FLEET_FAILPOINTS", failpoint)],
        )
    };

    let mut controller = start("action-after-commit");
    add_deployed_webhook_machine(&controller, &plug, "hook-erase").await;
    let calls_before = plug.calls().len();
    let output = controller.fleet(&["machine", "release", "hook-erase", "--erase", "secure"]);
    assert!(!output.status.success(), "the controller died mid-action");
    let status = controller.child.wait().unwrap();
    assert!(!status.success(), "aborted at the failpoint: {status:?}");
    let store = controller.store().await;
    let record = store.machine("hook-erase").await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, fleet::model::Status::DiskErasing);
    assert_eq!(
        store.erase_mode("hook-erase").await.unwrap(),
        Some(fleet::model::EraseMode::Secure)
    );
    let pending = store.pending_power("hook-erase").await.unwrap().unwrap();
    assert_eq!(pending.command, PowerCommand::Cycle);
    assert_eq!(
        plug.calls().len(),
        calls_before,
        "no power command was sent"
    );
    store.close().await;

    let controller = start("");
    let store = controller.store().await;
    wait_for_no_pending_power(&store, "hook-erase", Duration::from_secs(30)).await;
    let calls = plug.calls()[calls_before..].to_vec();
    assert!(
        calls.iter().any(|call| call == "POST /on"),
        "the cycle was carried out: {calls:?}"
    );
    assert_eq!(plug.power(), "on");
    assert_eq!(
        store.erase_mode("hook-erase").await.unwrap(),
        Some(fleet::model::EraseMode::Secure),
        "the decided erase is kept"
    );
    let record = store.machine("hook-erase").await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, fleet::model::Status::DiskErasing);
    assert!(
        record.boot_started.is_some(),
        "the boot clock started with the cycle"
    );
    drop(controller);
    store.close().await;

    let mut controller = start("power-after-command");
    add_deployed_webhook_machine(&controller, &plug, "hook-release").await;
    let output = controller.fleet(&["machine", "release", "hook-release"]);
    assert!(!output.status.success(), "the controller died mid-action");
    assert!(!controller.child.wait().unwrap().success());
    assert_eq!(plug.power(), "off", "the power-off itself ran");
    let store = controller.store().await;
    let record = store.machine("hook-release").await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, fleet::model::Status::Releasing);
    assert!(store.pending_power("hook-release").await.unwrap().is_some());
    store.close().await;

    let controller = start("");
    let store = controller.store().await;
    wait_for_no_pending_power(&store, "hook-release", Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let record = store.machine("hook-release").await.unwrap().unwrap();
        if record.lifecycle.status == fleet::model::Status::Ready {
            assert_eq!(record.lifecycle.power, PowerState::Off);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after the power-off was carried out",
            record.lifecycle.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(controller);
    store.close().await;
}
