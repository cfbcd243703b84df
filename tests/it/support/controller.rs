//! A real controller for tests: the `fleet` binary started with `serve` with both listeners on
//! port 0 and its own state directory, killed when dropped; and a way to run the CLI against it.

use fleet::store::Store;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const FLEET: &str = env!("CARGO_BIN_EXE_fleet");

pub struct TestController {
    pub child: Child,
    /// The boot listener (plain HTTP): iPXE scripts, images, the machine API.
    pub url: String,
    /// The operator API (HTTPS, the certificate in `state_dir/tls/cert.pem`).
    pub api_url: String,
    pub token: String,
    pub state_dir: PathBuf,
    pub database: String,
    /// Everything the controller wrote to stderr so far. A thread reads the pipe as it comes:
    /// a pipe nobody reads fills at 64 KiB and then blocks the controller's next log line (a
    /// loaded run logs many slow-statement warnings).
    pub log: Arc<Mutex<String>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
    /// Keeps the state directory alive as long as the controller.
    _directory: Option<TempDir>,
}

/// A test controller's PostgreSQL pool (a controller's default is 16, its leader's fenced pool 8).
pub const TEST_DATABASE_MAX_CONNECTIONS: &str = "6";

impl TestController {
    /// A controller on a fresh SQLite file.
    pub fn start() -> TestController {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let state_dir = directory.path().to_path_buf();
        let mut controller = Self::start_in(&state_dir, &[]);
        controller._directory = Some(directory);
        controller
    }

    /// A controller on `state_dir` (kept by the caller), with extra `serve` arguments.
    pub fn start_in(state_dir: &Path, extra: &[&str]) -> TestController {
        Self::start_listening(state_dir, "127.0.0.1:0", extra)
    }

    /// A controller on `state_dir` with its operator API on `listen`.
    pub fn start_listening(state_dir: &Path, listen: &str, extra: &[&str]) -> TestController {
        Self::start_with_env(state_dir, listen, extra, &[])
    }

    /// A controller on `state_dir` with `environment` added to the test's own (such as
    /// `FLEET_FAILPOINTS`, which must not leak into controllers other tests start).
    pub fn start_with_env(
        state_dir: &Path,
        listen: &str,
        extra: &[&str],
        environment: &[(&str, &str)],
    ) -> TestController {
        let url_file = state_dir.join("api-url");
        let _ = std::fs::remove_file(&url_file);
        let mut child = Command::new(FLEET)
            .args(["serve", "--listen", listen, "--boot-listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            // Several tests at once, each with a few controllers on the one PostgreSQL server
            // (100 connections): a smaller pool each (`environment` may say otherwise).
            .env(
                "FLEET_DATABASE_MAX_CONNECTIONS",
                TEST_DATABASE_MAX_CONNECTIONS,
            )
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fleet serve starts");
        let log = Arc::new(Mutex::new(String::new()));
        let log_reader = read_log(child.stderr.take().expect("stderr is piped"), log.clone());
        let api_url = wait_for_file(&url_file, Duration::from_secs(30));
        // Written before api-url.
        let url = wait_for_file(&state_dir.join("boot-url"), Duration::from_secs(1));
        // A controller joining a database another one made tokens in writes no token file.
        let token = std::fs::read_to_string(state_dir.join("operator-token")).unwrap_or_default();
        TestController {
            child,
            url,
            api_url,
            token: token.trim().to_string(),
            state_dir: state_dir.to_path_buf(),
            database: format!("sqlite://{}", state_dir.join("fleet.db").display()),
            log,
            log_reader: Some(log_reader),
            _directory: None,
        }
    }

    /// The controller's id (`<state_dir>/controller-id`), waiting for it to be written: it
    /// comes once the controller has registered, which may be just after its API.
    pub fn controller_id(&self) -> String {
        let file = self.state_dir.join("controller-id");
        wait_for_file(&file, Duration::from_secs(20))
    }

    /// What the controller wrote to stderr so far (all of it once [`TestController::kill`]
    /// returned).
    pub fn log(&self) -> String {
        self.log.lock().expect("not poisoned").clone()
    }

    /// Runs `fleet ARGS` against this controller (its state directory pins its certificate).
    pub fn fleet(&self, args: &[&str]) -> Output {
        Command::new(FLEET)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--server")
            .arg(&self.api_url)
            .args(args)
            .env_remove("FLEET_SERVER")
            .env_remove("FLEET_TOKEN")
            .env_remove("FLEET_TLS_FINGERPRINT")
            // Never the real ~/.config/fleet/known_controllers.
            .env("XDG_CONFIG_HOME", self.state_dir.join("client-config"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("fleet runs")
    }

    /// The controller's store, opened beside it (SQLite in WAL mode allows that).
    pub async fn store(&self) -> Store {
        Store::open(&self.database)
            .await
            .expect("the controller's store opens")
    }

    /// Puts `name` in deployed, owned by alice, as if fleet had deployed it (for actions, such as
    /// power-on, that a deployed machine accepts).
    pub async fn make_deployed(&self, store: &Store, name: &str) {
        let record = store.machine(name).await.unwrap().unwrap();
        let mut lifecycle = record.lifecycle.clone();
        lifecycle.status = fleet::model::Status::Deployed;
        lifecycle.previous_status = Some(fleet::model::Status::Ready);
        lifecycle.owner = Some("alice".into());
        lifecycle.commissioned = true;
        lifecycle.deployed_os = Some("ubuntu-24.04".into());
        store
            .write_lifecycle(name, &lifecycle, "test", "fixture")
            .await
            .unwrap();
    }

    /// A client of the operator API that trusts this controller's certificate only.
    pub fn http(&self) -> Api {
        Api {
            client: self.pinned_client(),
            url: self.api_url.clone(),
            token: self.token.clone(),
        }
    }

    /// A reqwest client whose only authority is the certificate the controller made.
    pub fn pinned_client(&self) -> reqwest::Client {
        pinned_client(&self.state_dir)
    }

    /// The API certificate's fingerprint as the controller wrote it (`SHA256:...`).
    pub fn fingerprint(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("api-fingerprint"))
            .expect("the controller wrote its fingerprint")
            .trim()
            .to_string()
    }

    /// `fleet machine show NAME --json`'s power (`"on"`, `"off"`, `"error"` ...).
    pub fn shown_power(&self, name: &str) -> serde_json::Value {
        let output = self.fleet(&["machine", "show", name, "--json"]);
        assert!(output.status.success(), "show: {}", stderr(&output));
        let detail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        detail["machine"]["power"].clone()
    }

    /// Waits until `machine show` says the power is `power`, within `limit`.
    pub fn wait_for_shown_power(&self, name: &str, power: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let shown = self.shown_power(name);
            if shown == power {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "power still {shown} after {limit:?}, expected {power}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The reasons of the machine's `power` events, oldest first (`fleet events NAME --json`).
    pub fn power_reasons(&self, name: &str) -> Vec<String> {
        let output = self.fleet(&["events", name, "--json"]);
        assert!(output.status.success(), "events: {}", stderr(&output));
        let events: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        events
            .as_array()
            .expect("a list of events")
            .iter()
            .filter(|event| event["kind"] == "power")
            .filter_map(|event| event["reason"].as_str().map(str::to_string))
            .collect()
    }

    /// Kills the controller at once (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipe closes with the process (unless it left children holding it: then the
        // reader stays behind, detached).
        if let Some(reader) = self.log_reader.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Appends every line of `pipe` to `log` until the pipe closes.
fn read_log(
    pipe: std::process::ChildStderr,
    log: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut text = log.lock().expect("not poisoned");
            text.push_str(&line);
            text.push('\n');
        }
    })
}

/// A reqwest client whose only authority is the certificate the controller of `state_dir` made
/// (self-signed, for 127.0.0.1 among others).
pub fn pinned_client(state_dir: &Path) -> reqwest::Client {
    let pem = std::fs::read(state_dir.join("tls").join("cert.pem"))
        .expect("the controller's certificate");
    let certificate = reqwest::Certificate::from_pem(&pem).expect("a PEM certificate");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(certificate)
        .build()
        .expect("a client")
}

fn wait_for_file(path: &Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not write {} in time",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small JSON client for the operator API (`url` is its https:// address).
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Api {
    /// The same client with another operator token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: token.to_string(),
            ..self.clone()
        }
    }

    /// A request to the operator API's `path` with this client's token, to add to and send.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .request(reqwest::Method::DELETE, path)
            .send()
            .await
            .expect("the controller answers");
        decode(response).await
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .get(format!("{}/api/v1{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("the controller answers");
        decode(response).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(format!("{}/api/v1{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("the controller answers");
        decode(response).await
    }

    /// Adds a machine with manual power, not commissioned.
    pub async fn add_idle_machine(&self, name: &str, mac: &str) -> serde_json::Value {
        let body = serde_json::json!({
            "name": name, "macs": [mac], "power": {"type": "manual"}, "commission": false
        });
        let (status, answer) = self.post("/machines", body).await;
        assert_eq!(status, 201, "add {name}: {answer}");
        answer
    }
}

async fn decode(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, value)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
