//! Secrets never leave the controller: one run with ipmi (OpenIPMI's `ipmi_sim`), redfish
//! (sushy-tools' emulator) and webhook (a small HTTP server here) machines whose passwords and
//! tokens come from environment variables and files, right and wrong ones; power actions that
//! work and that fail, the power poll every second, and then every output of the run is searched
//! for every secret value: each CLI command's stdout and stderr (human and `--json`),
//! `fleet events`, `fleet plan`, `fleet adopt`, `fleet validate`, the raw API, the controller's
//! log (at debug level) and the bytes of the SQLite files (database, WAL and shared memory).

use crate::support::ipmi_sim::Bmc;
use fleet::model::{Lifecycle, PowerState, Status};
use fleet::store::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const FLEET: &str = env!("CARGO_BIN_EXE_fleet");

const IPMI_SECRET: &str = "ipmi-S3cret-6502";
const IPMI_WRONG: &str = "ipmi-Wr0ng-1802";
/// The password in tests/fixtures/redfish/htpasswd (user `admin`).
const REDFISH_SECRET: &str = "fleet-S3cret-4711";
const REDFISH_WRONG: &str = "redfish-Wr0ng-6809";
const HOOK_SECRET: &str = "hook-S3cret-8080";
const HOOK_WRONG: &str = "hook-Wr0ng-6510";
const REDFISH_SYSTEM: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";
const VENV: &str = "/var/cache/fleet-redfish/venv";

fn fixtures(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
}

fn free_port(udp: bool) -> u16 {
    if udp {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    } else {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// sushy-tools' emulator (no power delay) with basic auth admin / REDFISH_SECRET; its URL.
fn start_redfish(dir: &Path) -> (Process, String) {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let port = free_port(false);
    let config = std::fs::read_to_string(fixtures("redfish").join("emulator.conf"))
        .unwrap()
        .replace("@PORT@", &port.to_string())
        .replace("@STATE@", &state.display().to_string())
        .replace(
            "@AUTH@",
            &fixtures("redfish").join("htpasswd").display().to_string(),
        );
    std::fs::write(dir.join("emulator.conf"), config).unwrap();
    let child = Command::new(format!("{VENV}/bin/python"))
        .arg(fixtures("redfish").join("sushy-nodelay.py"))
        .arg("--config")
        .arg(dir.join("emulator.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the emulator's venv exists (run .ci/setup-redfish as root)");
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sushy-emulator did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (process, format!("http://127.0.0.1:{port}"))
}

/// A plug that wants `Bearer HOOK_SECRET` and, like careless servers, echoes what it was given
/// in its 401 answer; its base URL.
fn start_plug() -> String {
    let power = Arc::new(Mutex::new("off"));
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
            let app = axum::Router::new().fallback(
                move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
                    let power = power.clone();
                    async move {
                        let given = headers
                            .get("authorization")
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        if given != format!("Bearer {HOOK_SECRET}") {
                            return (
                                axum::http::StatusCode::UNAUTHORIZED,
                                format!("bad credentials: {given}"),
                            );
                        }
                        let mut power = power.lock().unwrap();
                        match uri.path() {
                            "/on" => *power = "on",
                            "/off" => *power = "off",
                            _ => {}
                        }
                        (axum::http::StatusCode::OK, format!("power: {}", *power))
                    }
                },
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://127.0.0.1:{port}")
}

/// `fleet serve` with the fleet file, its log (FLEET_LOG=debug) in a file; killed when dropped.
struct Controller {
    _process: Process,
    state_dir: PathBuf,
    log: PathBuf,
}

impl Controller {
    fn start(state_dir: &Path, file: &Path, env: &[(&str, &str)]) -> Controller {
        std::fs::create_dir_all(state_dir).unwrap();
        let log = state_dir.with_extension("log");
        let child = Command::new(FLEET)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--boot-listen",
                "127.0.0.1:0",
            ])
            .arg("--state-dir")
            .arg(state_dir)
            .arg("-f")
            .arg(file)
            .envs(env.iter().copied())
            .env("FLEET_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(state_dir.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("fleet serve starts");
        let process = Process(child);
        let url_file = state_dir.join("api-url");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&url_file).is_ok_and(|text| text.ends_with('\n')) {
            assert!(
                Instant::now() < deadline,
                "the controller did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Controller {
            _process: process,
            state_dir: state_dir.to_path_buf(),
            log,
        }
    }

    fn fleet(&self, args: &[&str]) -> Output {
        Command::new(FLEET)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .env_remove("FLEET_SERVER")
            .env_remove("FLEET_TOKEN")
            .env("NO_COLOR", "1")
            .env("FLEET_LOG", "debug")
            .stdin(Stdio::null())
            .output()
            .expect("fleet runs")
    }

    fn url(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("api-url"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("operator-token"))
            .unwrap()
            .trim()
            .to_string()
    }
}

/// Every output of the run, by what produced it.
#[derive(Default)]
struct Outputs(Vec<(String, Vec<u8>)>);

impl Outputs {
    fn add(&mut self, what: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.0.push((what.into(), bytes.into()));
    }

    /// Runs `fleet ARGS`, keeps stdout and stderr, returns the output.
    fn run(&mut self, controller: &Controller, args: &[&str]) -> Output {
        let output = controller.fleet(args);
        let what = format!("fleet {}", args.join(" "));
        self.add(format!("{what} (stdout)"), output.stdout.clone());
        self.add(format!("{what} (stderr)"), output.stderr.clone());
        output
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn no_secret_in_any_output() {
    let directory = TempDir::new().unwrap();
    let dir = directory.path();
    for sub in ["ipmi", "ipmi-2", "redfish", "secrets"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    // A fleet file gives each BMC address to one machine: two simulators, and the emulator by
    // two names.
    let bmc = Bmc::start(IPMI_SECRET);
    let bmc_2 = Bmc::start(IPMI_SECRET);
    let (bmc_address, bmc_2_address) = (bmc.address(), bmc_2.address());
    let (_emulator, redfish_url) = start_redfish(&dir.join("redfish"));
    let redfish_2_url = redfish_url.replace("127.0.0.1", "localhost");
    let plug = start_plug();

    // Secrets as files (the wrong IPMI password, the right Redfish one, the wrong token) and as
    // environment variables of the controller (the rest).
    let secret_file = |name: &str, value: &str| {
        let path = dir.join("secrets").join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path.display().to_string()
    };
    let ipmi_wrong_file = secret_file("ipmi-wrong", IPMI_WRONG);
    let redfish_file = secret_file("redfish", REDFISH_SECRET);
    let hook_wrong_file = secret_file("hook-wrong", HOOK_WRONG);
    let env = [
        ("FLEET_SECRETS_IPMI", IPMI_SECRET),
        ("FLEET_SECRETS_REDFISH_WRONG", REDFISH_WRONG),
        ("FLEET_SECRETS_HOOK", HOOK_SECRET),
    ];

    // name, MAC, type, its parameters as --power-param, and the same as fleet TOML.
    let machines: Vec<(&str, &str, &str, Vec<String>, String)> = vec![
        (
            "ipmi-ok",
            "52:54:00:5e:00:01",
            "ipmi",
            vec![
                format!("address={bmc_address}"),
                "user=admin".into(),
                "password=env:FLEET_SECRETS_IPMI".into(),
            ],
            format!(
                r#"{{ type = "ipmi", address = "{bmc_address}", user = "admin", password = {{ env = "FLEET_SECRETS_IPMI" }} }}"#
            ),
        ),
        (
            "ipmi-bad",
            "52:54:00:5e:00:02",
            "ipmi",
            vec![
                format!("address={bmc_2_address}"),
                "user=admin".into(),
                format!("password=file:{ipmi_wrong_file}"),
            ],
            format!(
                r#"{{ type = "ipmi", address = "{bmc_2_address}", user = "admin", password = {{ file = "{ipmi_wrong_file}" }} }}"#
            ),
        ),
        (
            "redfish-ok",
            "52:54:00:5e:00:03",
            "redfish",
            vec![
                format!("address={redfish_url}"),
                "user=admin".into(),
                format!("password=file:{redfish_file}"),
                format!("system_id={REDFISH_SYSTEM}"),
            ],
            format!(
                r#"{{ type = "redfish", address = "{redfish_url}", user = "admin", password = {{ file = "{redfish_file}" }}, system_id = "{REDFISH_SYSTEM}" }}"#
            ),
        ),
        (
            "redfish-bad",
            "52:54:00:5e:00:04",
            "redfish",
            vec![
                format!("address={redfish_2_url}"),
                "user=admin".into(),
                "password=env:FLEET_SECRETS_REDFISH_WRONG".into(),
                format!("system_id={REDFISH_SYSTEM}"),
            ],
            format!(
                r#"{{ type = "redfish", address = "{redfish_2_url}", user = "admin", password = {{ env = "FLEET_SECRETS_REDFISH_WRONG" }}, system_id = "{REDFISH_SYSTEM}" }}"#
            ),
        ),
        (
            "hook-ok",
            "52:54:00:5e:00:05",
            "webhook",
            vec![
                format!("on_url={plug}/on"),
                format!("off_url={plug}/off"),
                format!("query_url={plug}/status"),
                "token=env:FLEET_SECRETS_HOOK".into(),
            ],
            format!(
                r#"{{ type = "webhook", on_url = "{plug}/on", off_url = "{plug}/off", query_url = "{plug}/status", token = {{ env = "FLEET_SECRETS_HOOK" }} }}"#
            ),
        ),
        (
            "hook-bad",
            "52:54:00:5e:00:06",
            "webhook",
            vec![
                format!("on_url={plug}/on"),
                format!("off_url={plug}/off"),
                format!("query_url={plug}/status"),
                format!("token=file:{hook_wrong_file}"),
            ],
            format!(
                r#"{{ type = "webhook", on_url = "{plug}/on", off_url = "{plug}/off", query_url = "{plug}/status", token = {{ file = "{hook_wrong_file}" }} }}"#
            ),
        ),
    ];

    let mut toml = String::from(
        "[controller]\ntftp_listen = \"127.0.0.1:0\"\n\n[policy]\npower_poll_seconds = 1\n",
    );
    for (name, mac, _, _, power) in &machines {
        toml.push_str(&format!(
            "\n[[machine]]\nname = \"{name}\"\nmacs = [\"{mac}\"]\nstate = \"ready\"\npower = {power}\n"
        ));
    }
    let file = dir.join("fleet.toml");
    std::fs::write(&file, &toml).unwrap();

    let controller = Controller::start(&dir.join("state"), &file, &env);
    let mut outputs = Outputs::default();
    let file_arg = file.display().to_string();
    let validate = outputs.run(&controller, &["validate", &file_arg]);
    assert!(validate.status.success(), "validate: {}", text(&validate));

    let store = Store::open(&format!(
        "sqlite://{}",
        dir.join("state/fleet.db").display()
    ))
    .await
    .unwrap();
    for (index, (name, mac, kind, params, _)) in machines.iter().enumerate() {
        let mut args = vec!["machine", "add", name, "--mac", mac, "--power-type", kind];
        for param in params {
            args.extend(["--power-param", param.as_str()]);
        }
        args.push("--no-commission");
        if index % 2 == 0 {
            args.push("--json");
        }
        let output = outputs.run(&controller, &args);
        assert!(output.status.success(), "add {name}: {}", text(&output));
        // Deployed, owned: power actions are allowed.
        let record = store.machine(name).await.unwrap().unwrap();
        let lifecycle = Lifecycle {
            status: Status::Deployed,
            previous_status: Some(Status::Ready),
            owner: Some("alice".into()),
            commissioned: true,
            deployed_os: Some("ubuntu-24.04".into()),
            ..record.lifecycle.clone()
        };
        store
            .write_lifecycle(name, &lifecycle, "test", "fixture")
            .await
            .unwrap();
    }

    // Power actions that work, in human and JSON form.
    for name in ["ipmi-ok", "redfish-ok", "hook-ok"] {
        for (action, json) in [
            ("power-on", false),
            ("power-off", true),
            ("power-cycle", false),
            ("power-off", false),
            ("power-on", true),
        ] {
            let mut args = vec!["machine", action, name];
            if json {
                args.push("--json");
            }
            let output = outputs.run(&controller, &args);
            assert!(
                output.status.success(),
                "{action} {name}: {}",
                text(&output)
            );
        }
    }
    // And ones that fail: wrong passwords, a wrong token.
    for name in ["ipmi-bad", "redfish-bad", "hook-bad"] {
        for json in [false, true] {
            let mut args = vec!["machine", "power-on", name];
            if json {
                args.push("--json");
            }
            let output = outputs.run(&controller, &args);
            assert!(!output.status.success(), "power-on {name} worked");
            let said = text(&output);
            assert!(
                said.contains("authentication")
                    || said.contains("401")
                    || said.contains("password"),
                "power-on {name}: {said}"
            );
        }
    }
    // The poll (every second): the bad machines said on, so that their failed queries are
    // recorded; the plug switched off behind fleet's back.
    for name in ["ipmi-bad", "redfish-bad", "hook-bad"] {
        store
            .set_power(name, PowerState::On, "test", Some("fixture"))
            .await
            .unwrap();
    }
    reqwest::Client::new()
        .post(format!("{plug}/off"))
        .bearer_auth(HOOK_SECRET)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    for (name, power) in [
        ("ipmi-bad", PowerState::Error),
        ("redfish-bad", PowerState::Error),
        ("hook-bad", PowerState::Error),
        ("hook-ok", PowerState::Off),
    ] {
        while store.machine(name).await.unwrap().unwrap().lifecycle.power != power {
            assert!(
                Instant::now() < deadline,
                "{name}: the poll found no {power}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    for (name, ..) in &machines {
        outputs.run(&controller, &["machine", "show", name]);
        outputs.run(&controller, &["machine", "show", name, "--json"]);
        outputs.run(&controller, &["events", name]);
    }
    outputs.run(&controller, &["machines"]);
    outputs.run(&controller, &["machines", "--json"]);
    let events = outputs.run(&controller, &["events", "--limit", "1000", "--json"]);
    assert!(events.status.success(), "events: {}", text(&events));
    let events_text = String::from_utf8_lossy(&events.stdout);
    assert!(
        events_text.contains("power query failed")
            && events_text.contains("power found off (was on), changed outside fleet"),
        "{events_text}"
    );
    outputs.run(&controller, &["events", "--limit", "1000"]);
    let plan = outputs.run(&controller, &["plan", "-f", &file_arg, "--json"]);
    assert!(
        plan.status
            .code()
            .is_some_and(|code| code == 0 || code == 2),
        "plan: {}",
        text(&plan)
    );
    outputs.run(&controller, &["plan", "-f", &file_arg, "--show-unchanged"]);
    let adopt = outputs.run(&controller, &["adopt"]);
    assert!(
        String::from_utf8_lossy(&adopt.stdout).contains("FLEET_SECRETS_IPMI"),
        "adopt: {}",
        text(&adopt)
    );

    // The raw API.
    let client = crate::support::controller::pinned_client(&controller.state_dir);
    for path in ["/machines", "/observed", "/events?limit=1000"] {
        let body = client
            .get(format!("{}/api/v1{path}", controller.url()))
            .bearer_auth(controller.token())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        outputs.add(format!("GET /api/v1{path}"), body.to_vec());
    }

    // The controller's log and the store's files, read while it still runs (the WAL holds
    // recent writes).
    store.close().await;
    let log = std::fs::read(&controller.log).unwrap();
    assert!(
        contains(&log, "fleet controller"),
        "{}",
        String::from_utf8_lossy(&log)
    );
    outputs.add("the controller's log", log);
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("state/fleet.db{suffix}"));
        if let Ok(bytes) = std::fs::read(&path) {
            outputs.add(path.display().to_string(), bytes);
        }
    }
    assert!(
        outputs.0.len() > 80,
        "only {} outputs were collected",
        outputs.0.len()
    );

    let mut secrets: Vec<String> = [
        IPMI_SECRET,
        IPMI_WRONG,
        REDFISH_SECRET,
        REDFISH_WRONG,
        HOOK_SECRET,
        HOOK_WRONG,
    ]
    .iter()
    .map(|secret| secret.to_string())
    .collect();
    // HTTP basic authentication carries `user:password` in base64.
    secrets.push(base64(&format!("admin:{REDFISH_SECRET}")));
    secrets.push(base64(&format!("admin:{REDFISH_WRONG}")));
    let mut leaks = Vec::new();
    for (what, bytes) in &outputs.0 {
        for secret in &secrets {
            if contains(bytes, secret) {
                leaks.push(format!("{what} holds `{secret}`"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    drop(controller);
}
