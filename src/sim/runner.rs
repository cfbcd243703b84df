//! The machine API as the ephemeral environment's runner (`commissioning/fleet-runner.sh`)
//! calls it, call for call and in the same order: `known` and `enlist` (role enlist without a
//! machine), or the one-shot boot secret's `exchange`; `instructions`; heartbeats in the
//! background; for a deploying run `deployment`; per script: download, `running`, the result;
//! then `signal` and what the controller says to do `after`. The scripts are not run: their
//! results are what they would print on the simulated hardware (see `hardware.rs`).

use super::machine::SimMachine;
use super::SimError;
use base64::Engine;
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the kernel command line of the ephemeral environment said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCommandLine {
    pub url: String,
    pub role: String,
    pub machine: Option<String>,
    pub boot_secret: Option<String>,
}

impl KernelCommandLine {
    /// Reads `fleet.url=`, `fleet.role=`, `fleet.machine=`, `fleet.boot=` from the kernel line of
    /// an iPXE script.
    pub fn from_script(script: &str) -> Option<KernelCommandLine> {
        let line = script.lines().find(|line| line.starts_with("kernel "))?;
        let mut found = KernelCommandLine::default();
        for word in line.split_whitespace() {
            if let Some(url) = word.strip_prefix("fleet.url=") {
                found.url = url.to_string();
            } else if let Some(role) = word.strip_prefix("fleet.role=") {
                found.role = role.to_string();
            } else if let Some(machine) = word.strip_prefix("fleet.machine=") {
                found.machine = Some(machine.to_string());
            } else if let Some(secret) = word.strip_prefix("fleet.boot=") {
                found.boot_secret = Some(secret.to_string());
            }
        }
        (!found.url.is_empty()).then_some(found)
    }
}

/// What the runner does at the end (`after` in the controller's answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    PowerOff,
    Reboot,
    /// Stay up, heartbeats going on (rescue mode), until powered off.
    Wait,
}

impl After {
    fn parse(word: &str) -> After {
        match word {
            "reboot" => After::Reboot,
            "wait" => After::Wait,
            _ => After::PowerOff,
        }
    }
}

/// One answer of the machine API, as the runner's `api` function sorts them.
#[derive(Debug)]
enum Answer {
    Ok(String),
    /// 409 `stop REASON`, or a 401 on the run's own token (its run ended).
    Stop(String),
}

/// The value of `KEY value` in a reply.
fn value_of<'a>(reply: &'a str, key: &str) -> Option<&'a str> {
    reply.lines().find_map(|line| {
        let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
        (first == key).then_some(rest.trim())
    })
}

fn stop_reason(reply: &str) -> Option<String> {
    reply
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("stop"))
        .map(|reason| reason.trim().to_string())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// How long a machine API call is retried when no answer or a 5xx came: a controller whose store
/// is failing over, or a busy one, answers again within this; the runner (`fleet-runner.sh`)
/// waits as long.
const API_PATIENCE: Duration = Duration::from_secs(60);

/// The pause before try `tries + 1`: 250 ms doubling to 8 s.
fn retry_pause(tries: u32) -> Duration {
    Duration::from_millis(250 << tries.saturating_sub(1).min(5))
}

/// The runner's HTTP side: one client (bound to the machine's leased address), the base URL and
/// the run's token once it has one.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    /// How long a call is tried again: [`API_PATIENCE`] (shorter in the unit test).
    patience: Duration,
}

impl Api {
    /// `api OUT METHOD PATH [BODY]` of the runner: retries when no response or a 5xx came, for
    /// up to its patience ([`API_PATIENCE`]).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, SimError> {
        let mut tries = 1;
        let mut waited = Duration::ZERO;
        loop {
            let mut request = self
                .client
                .request(method.clone(), format!("{}{path}", self.url));
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request
                    .header("Content-Type", "application/json")
                    .body(body.to_string());
            }
            let problem = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    match status {
                        200..=299 => return Ok(Answer::Ok(text)),
                        409 => {
                            return Ok(Answer::Stop(
                                stop_reason(&text)
                                    .unwrap_or_else(|| "the controller answered 409".to_string()),
                            ))
                        }
                        401 if self.token.is_some() => {
                            let reason = text.trim().trim_start_matches("error").trim();
                            return Ok(Answer::Stop(reason.to_string()));
                        }
                        500..=599 => format!("HTTP {status} {}", text.trim()),
                        _ => {
                            return Err(SimError::Protocol(format!(
                                "{method} {path}: HTTP {status} {}",
                                text.trim()
                            )))
                        }
                    }
                }
                Err(error) => error.to_string(),
            };
            let pause = retry_pause(tries);
            if waited + pause > self.patience {
                return Err(SimError::Protocol(format!(
                    "{method} {path}: {problem} (tried {tries} times over {}s)",
                    waited.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            waited += pause;
            tries += 1;
        }
    }

    async fn get(&self, path: &str) -> Result<Answer, SimError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Answer, SimError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// What the heartbeats carry: the stage and a script's progress (`PHASE DONE TOTAL`).
#[derive(Debug, Default)]
struct Stage {
    stage: String,
    progress: Option<(String, u64, u64)>,
}

/// Runs the ephemeral environment's runner for `machine`, booted with `command_line`.
pub async fn run(
    machine: &Arc<SimMachine>,
    client: reqwest::Client,
    command_line: KernelCommandLine,
) -> Result<After, SimError> {
    let mut api = Api {
        client,
        url: command_line.url.trim_end_matches('/').to_string(),
        token: None,
        patience: API_PATIENCE,
    };
    let mut name = command_line.machine.clone();
    // 1. enlist, or 1b. exchange the boot secret.
    if command_line.role == "enlist" && name.is_none() {
        match enlist(&mut api, machine).await? {
            Enlisted::Token(enlisted) => name = Some(enlisted),
            Enlisted::Done(after) => return Ok(after),
        }
    } else if let (Some(machine_name), Some(secret)) = (&name, &command_line.boot_secret) {
        let path = format!("/metadata/v1/machines/{machine_name}/exchange");
        match api.post(&path, json!({ "boot": secret })).await? {
            Answer::Ok(reply) => {
                if value_of(&reply, "role") == Some("none") {
                    return Ok(After::parse(
                        value_of(&reply, "after").unwrap_or("poweroff"),
                    ));
                }
                api.token = value_of(&reply, "token").map(str::to_string);
            }
            Answer::Stop(_) => return Ok(After::PowerOff),
        }
    }
    let name =
        name.ok_or_else(|| SimError::Protocol("no machine name and not enlisting".into()))?;
    if api.token.is_none() {
        return Err(SimError::Protocol(format!("no token for {name}")));
    }
    let path = |tail: &str| format!("/metadata/v1/machines/{name}/{tail}");
    // 2. instructions and heartbeats.
    let Answer::Ok(instructions) = api.get(&path("instructions")).await? else {
        return Ok(After::PowerOff);
    };
    let role = value_of(&instructions, "role")
        .unwrap_or("none")
        .to_string();
    let run_id = value_of(&instructions, "run").unwrap_or("").to_string();
    let heartbeat_seconds: u64 = value_of(&instructions, "heartbeat")
        .and_then(|seconds| seconds.parse().ok())
        .filter(|seconds| *seconds > 0)
        .unwrap_or(30);
    let mut after = After::parse(value_of(&instructions, "after").unwrap_or("poweroff"));
    if role == "none" {
        return Ok(after);
    }
    machine.note(format!("{role} run {run_id}"));
    if machine.faults.silent {
        // A machine that hangs: it says nothing more, until its power is cut.
        machine.note("silent (fault)".to_string());
        std::future::pending::<()>().await;
    }
    let stage = Arc::new(Mutex::new(Stage {
        stage: "starting".to_string(),
        progress: None,
    }));
    let heartbeats = tokio::spawn(heartbeat_loop(
        Arc::clone(machine),
        api.clone(),
        path("heartbeat"),
        Duration::from_secs(heartbeat_seconds),
        Arc::clone(&stage),
    ));
    machine.track(heartbeats.abort_handle());
    let outcome = run_scripts(machine, &api, &name, &run_id, &role, &instructions, &stage).await;
    let result = match outcome {
        Ok(Scripts::Stopped(reason)) => {
            machine.note(format!("the controller said stop: {reason}"));
            None
        }
        Ok(Scripts::Done) => Some(json!({"run": run_id, "result": "ok"})),
        Err(broken) => {
            Some(json!({"run": run_id, "result": "failed", "reason": broken.to_string()}))
        }
    };
    // 4. signal and after.
    if let Some(signal) = result {
        set_stage(&stage, "signalling");
        if let Answer::Ok(reply) = api.post(&path("signal"), signal).await? {
            if let Some(word) = value_of(&reply, "after") {
                after = After::parse(word);
            }
        }
    }
    if after != After::Wait {
        heartbeats.abort();
    } else {
        set_stage(&stage, "waiting");
    }
    Ok(after)
}

enum Enlisted {
    Token(String),
    Done(After),
}

async fn enlist(api: &mut Api, machine: &SimMachine) -> Result<Enlisted, SimError> {
    let hardware = &machine.hardware;
    let query: Vec<String> = hardware
        .macs()
        .iter()
        .map(|mac| format!("mac={mac}"))
        .collect();
    let Answer::Ok(known) = api
        .get(&format!("/metadata/v1/known?{}", query.join("&")))
        .await?
    else {
        return Ok(Enlisted::Done(After::PowerOff));
    };
    if known.starts_with("known") {
        return Ok(Enlisted::Done(After::PowerOff));
    }
    let macs: Vec<String> = hardware.macs().iter().map(ToString::to_string).collect();
    let mut body = json!({
        "architecture": "amd64",
        "boot_mac": hardware.boot_mac().to_string(),
        "macs": macs,
    });
    if let Some(bmc) = &machine.reported_bmc {
        body["bmc"] = json!({
            "type": bmc.power_type, "address": bmc.address,
            "user": bmc.user, "password": bmc.password,
        });
    }
    match api.post("/metadata/v1/enlist", body).await? {
        Answer::Stop(_) => Ok(Enlisted::Done(After::PowerOff)),
        Answer::Ok(reply) if reply.starts_with("known") => Ok(Enlisted::Done(After::parse(
            value_of(&reply, "after").unwrap_or("poweroff"),
        ))),
        Answer::Ok(reply) => {
            let name = value_of(&reply, "machine").map(str::to_string);
            api.token = value_of(&reply, "token").map(str::to_string);
            match (name, &api.token) {
                (Some(name), Some(_)) => Ok(Enlisted::Token(name)),
                _ => Err(SimError::Protocol(
                    "enlist: no machine or token in the reply".into(),
                )),
            }
        }
    }
}

fn set_stage(stage: &Mutex<Stage>, text: &str) {
    if let Ok(mut stage) = stage.lock() {
        stage.stage = text.to_string();
    }
}

fn set_progress(stage: &Mutex<Stage>, phase: &str, done: u64, total: u64) {
    if let Ok(mut stage) = stage.lock() {
        stage.progress = Some((phase.to_string(), done, total));
    }
}

async fn heartbeat_loop(
    machine: Arc<SimMachine>,
    api: Api,
    path: String,
    every: Duration,
    stage: Arc<Mutex<Stage>>,
) {
    loop {
        tokio::time::sleep(every).await;
        let body = {
            let stage = stage.lock().map(|stage| {
                let mut body = json!({ "stage": stage.stage });
                if let Some((phase, done, total)) = &stage.progress {
                    body["progress"] = json!({"phase": phase, "done": done, "total": total});
                }
                body
            });
            stage.unwrap_or_else(|_| json!({}))
        };
        // One try per beat, as the runner's loop: a lost beat is followed by the next.
        let mut request = api
            .client
            .post(format!("{}{path}", api.url))
            .body(body.to_string());
        if let Some(token) = &api.token {
            request = request.bearer_auth(token);
        }
        let Ok(response) = request.send().await else {
            continue;
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if status == 409 || status == 401 || text.starts_with("stop") {
            // The runner powers the machine off at once.
            machine.note(format!("heartbeat: stop {}", text.trim()));
            machine.power_off_by_itself();
            return;
        }
    }
}

enum Scripts {
    Done,
    Stopped(String),
}

/// 3. the scripts, in the order of the instructions.
async fn run_scripts(
    machine: &Arc<SimMachine>,
    api: &Api,
    name: &str,
    run_id: &str,
    role: &str,
    instructions: &str,
    stage: &Mutex<Stage>,
) -> Result<Scripts, SimError> {
    let path = |tail: &str| format!("/metadata/v1/machines/{name}/{tail}");
    let mut deployment = None;
    if role == "deploying" {
        set_progress(stage, "fetch", 0, 0);
        match api.get(&path("deployment")).await? {
            Answer::Ok(text) => {
                let document: Value = serde_json::from_str(&text).map_err(|error| {
                    SimError::Protocol(format!("the deployment is not JSON: {error}"))
                })?;
                deployment = Some(document);
            }
            Answer::Stop(reason) => return Ok(Scripts::Stopped(reason)),
        }
    }
    for line in instructions
        .lines()
        .filter_map(|line| line.strip_prefix("script "))
    {
        let mut words = line.split_whitespace();
        let (Some(script), Some(kind)) = (words.next(), words.next()) else {
            return Err(SimError::Protocol(format!("bad script line: {line}")));
        };
        set_stage(stage, &format!("running {script}"));
        if let Answer::Stop(reason) = api.get(&path(&format!("scripts/{script}"))).await? {
            return Ok(Scripts::Stopped(reason));
        }
        let running = json!({"run": run_id, "name": script, "kind": kind, "status": "running"});
        if let Some(reason) = posted(api.post(&path("results"), running).await?) {
            return Ok(Scripts::Stopped(reason));
        }
        let started = Instant::now();
        let outcome = simulate_script(machine, api, script, kind, deployment.as_ref(), stage).await;
        let mut result = json!({
            "run": run_id, "name": script, "kind": kind, "status": outcome.status,
            "exit_code": outcome.exit_code,
            "runtime_ms": started.elapsed().as_millis() as u64,
            "stdout_b64": b64(outcome.stdout.as_bytes()),
            "stderr_b64": b64(outcome.stderr.as_bytes()),
        });
        if let Some(results) = &outcome.results {
            result["results_b64"] = json!(b64(results.to_string().as_bytes()));
        }
        if let Some(reason) = posted(api.post(&path("results"), result).await?) {
            return Ok(Scripts::Stopped(reason));
        }
    }
    Ok(Scripts::Done)
}

/// A result's answer: `continue`, or the reason of a stop.
fn posted(answer: Answer) -> Option<String> {
    match answer {
        Answer::Ok(reply) => stop_reason(&reply),
        Answer::Stop(reason) => Some(reason),
    }
}

/// What one script would have printed and returned.
struct ScriptOutcome {
    status: &'static str,
    exit_code: i32,
    stdout: String,
    stderr: String,
    results: Option<Value>,
}

impl ScriptOutcome {
    fn passed(stdout: String, results: Option<Value>) -> ScriptOutcome {
        ScriptOutcome {
            status: "passed",
            exit_code: 0,
            stdout,
            stderr: String::new(),
            results,
        }
    }

    fn failed(stderr: String) -> ScriptOutcome {
        ScriptOutcome {
            status: "failed",
            exit_code: 3,
            stdout: String::new(),
            stderr,
            results: None,
        }
    }
}

async fn simulate_script(
    machine: &Arc<SimMachine>,
    api: &Api,
    script: &str,
    kind: &str,
    deployment: Option<&Value>,
    stage: &Mutex<Stage>,
) -> ScriptOutcome {
    let hardware = &machine.hardware;
    if machine.faults.failing_script.as_deref() == Some(script) {
        return ScriptOutcome::failed(format!("{script}: simulated failure (fault fail-script)\n"));
    }
    let touches_disks = matches!(kind, "deploy" | "erase") || script == "fleet-disk-read";
    if touches_disks {
        if let Some(slow) = machine.faults.slow_disk {
            tokio::time::sleep(slow).await;
        }
    }
    if let Some(facts) = hardware.facts_for(script) {
        return ScriptOutcome::passed(facts, None);
    }
    match kind {
        "deploy" => match deployment {
            Some(document) => deploy(machine, api, document, stage).await,
            None => ScriptOutcome::failed("fleet-deploy: check: no deployment\n".to_string()),
        },
        "erase" => {
            let mode = script.strip_prefix("fleet-erase-").unwrap_or("quick");
            let disks: Vec<Value> = hardware
                .disks
                .iter()
                .map(|disk| json!({"name": disk.name, "erased": true, "how": "discard", "fell_back": null}))
                .collect();
            ScriptOutcome::passed(
                format!("erased {} disks ({mode})\n", disks.len()),
                Some(json!({"mode": mode, "disks": disks})),
            )
        }
        "rescue" => ScriptOutcome::passed(
            "simulated machine: no SSH server\n".to_string(),
            Some(json!({"ssh": false, "reason": "a simulated machine runs no SSH server"})),
        ),
        _ => ScriptOutcome::passed(format!("{script}: simulated, passed\n"), Some(json!({}))),
    }
}

/// The deploy script's part that crosses the network: the image is fetched from the URL the
/// deployment names and its SHA-256 checked against the deployment's; the call-back secret is
/// kept for the installed system's first boot.
async fn deploy(
    machine: &Arc<SimMachine>,
    api: &Api,
    document: &Value,
    stage: &Mutex<Stage>,
) -> ScriptOutcome {
    let started = Instant::now();
    let image = &document["image"];
    let url = image["url"].as_str().unwrap_or_default();
    let expected = image["sha256"].as_str().unwrap_or_default().to_string();
    let total = image["size"].as_u64().unwrap_or(0);
    set_progress(stage, "write-image", 0, total);
    let fetched = fetch_and_hash(&api.client, url, stage, total).await;
    let (bytes, digest) = match fetched {
        Ok(fetched) => fetched,
        Err(error) => {
            return ScriptOutcome::failed(format!("fleet-deploy: write-image: {error}\n"));
        }
    };
    set_progress(stage, "verify", bytes, total);
    if digest != expected {
        return ScriptOutcome::failed(format!(
            "fleet-deploy: verify: sha256 mismatch: expected {expected}, got {digest} (the download, {bytes} bytes)\n"
        ));
    }
    machine.set_callback(
        document["callback"]["url"].as_str().map(str::to_string),
        document["callback"]["secret"].as_str().map(str::to_string),
    );
    let disks: Vec<Value> = document["disks"]
        .as_array()
        .map(|disks| {
            disks
                .iter()
                .map(|disk| json!({"planned": disk["name"], "found": disk["name"]}))
                .collect()
        })
        .unwrap_or_default();
    ScriptOutcome::passed(
        format!("fleet-deploy: verify: sha256 {digest} of {bytes} bytes matches sha256\n"),
        Some(json!({
            "image": image["name"], "format": image["format"], "bytes": bytes,
            "seconds": started.elapsed().as_secs(), "disks": disks,
        })),
    )
}

async fn fetch_and_hash(
    client: &reqwest::Client,
    url: &str,
    stage: &Mutex<Stage>,
    total: u64,
) -> Result<(u64, String), String> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", response.status()));
    }
    let mut hasher = sha2::Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        set_progress(stage, "write-image", bytes, total);
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_line_of_an_ephemeral_script_is_read() {
        let script = "#!ipxe\nkernel http://127.0.0.1:5248/boot/by-mac/x/e/kernel initrd=initrd fleet.url=http://127.0.0.1:5248 fleet.role=commissioning fleet.mac=02:5e:00:00:00:01 fleet.machine=node-1 fleet.boot=abc || goto failed\n";
        let line = KernelCommandLine::from_script(script).unwrap();
        assert_eq!(line.url, "http://127.0.0.1:5248");
        assert_eq!(line.role, "commissioning");
        assert_eq!(line.machine.as_deref(), Some("node-1"));
        assert_eq!(line.boot_secret.as_deref(), Some("abc"));
        assert!(KernelCommandLine::from_script("#!ipxe\nexit 1\n").is_none());
    }

    /// A controller answering 503 three times, then 200 (a store failing over): the call gets
    /// through; one that never stops answering 500 is given up on once the pauses (0.25 s
    /// doubling) would pass the patience, saying how many times it tried.
    #[tokio::test]
    async fn a_call_answered_5xx_is_tried_again_for_about_a_minute() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let answered = Arc::new(AtomicU32::new(0));
        let counter = answered.clone();
        let app = axum::Router::new()
            .route(
                "/flaky",
                axum::routing::get(move || {
                    let counter = counter.clone();
                    async move {
                        match counter.fetch_add(1, Ordering::SeqCst) {
                            0..=2 => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy"),
                            _ => (axum::http::StatusCode::OK, "fine"),
                        }
                    }
                }),
            )
            .route(
                "/broken",
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "store failed",
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let api = Api {
            client: reqwest::Client::new(),
            url,
            token: None,
            patience: Duration::from_secs(3),
        };

        let answer = api.get("/flaky").await.unwrap();
        assert!(matches!(answer, Answer::Ok(ref text) if text == "fine"));
        assert_eq!(answered.load(Ordering::SeqCst), 4);

        let error = api.get("/broken").await.unwrap_err().to_string();
        assert!(error.contains("HTTP 500 store failed"), "{error}");
        assert!(error.contains("tried 4 times over 1s"), "{error}");
        assert_eq!(
            (1..12).map(retry_pause).sum::<Duration>(),
            Duration::from_millis(55_750),
            "the machine API is tried for about a minute: 12 tries"
        );
    }

    #[test]
    fn replies_are_read_as_the_runner_reads_them() {
        assert_eq!(value_of("machine n\nrole enlist\n", "role"), Some("enlist"));
        assert_eq!(
            stop_reason("stop the run is over\n").as_deref(),
            Some("the run is over")
        );
        assert_eq!(stop_reason("continue\n"), None);
    }
}
