//! The machine API (`/metadata/v1`) through a real controller, driven over HTTP the way the
//! ephemeral environment's runner drives it: enlistment, instructions, script results, the final
//! signal, heartbeats, and what each does to the life-cycle; bad input, foreign tokens, huge
//! uploads; the timeout watch. The real virtual machine doing the same is `tests/it/vm/enlist.rs`.

use crate::support::controller::{stderr, stdout, TestController};
use base64::Engine;
use fleet::model::Status;
use fleet::store::Store;
use std::path::Path;
use std::time::{Duration, Instant};

/// The watch's limits a test's controller runs with (durations as the fleet file writes them).
struct Limits {
    boot: &'static str,
    heartbeat: &'static str,
    commissioning: &'static str,
}

/// A fleet file with one operator script of each kind and short limits.
fn fleet_file(directory: &Path, limits: &Limits) -> std::path::PathBuf {
    let Limits {
        boot,
        heartbeat,
        commissioning,
    } = limits;
    std::fs::write(
        directory.join("check-raid.sh"),
        "#!/bin/sh\necho looking for a RAID controller\necho 'no RAID controller found' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::write(directory.join("burn.sh"), "#!/bin/sh\necho burning\n").unwrap();
    // An ephemeral image, so that boot scripts carry their one-shot boot secret.
    let (kernel, initrd) = (directory.join("vmlinuz"), directory.join("initrd"));
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    std::fs::write(&initrd, b"not really an initrd").unwrap();
    let kernel_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&kernel).unwrap()))
    };
    let path = directory.join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            r#"[controller]
ephemeral_image = "ephemeral"

[images.ephemeral]
kernel = {{ path = "{kernel}", sha256 = "{kernel_sha}" }}
initrd = {{ path = "{initrd}" }}

[policy.timeouts]
boot = "{boot}"
heartbeat = "{heartbeat}"
commissioning = "{commissioning}"

[scripts.check-raid]
file = "check-raid.sh"
kind = "commissioning"
timeout = "30s"

[scripts.burn]
file = "burn.sh"
kind = "testing"
"#,
            kernel = kernel.display(),
            initrd = initrd.display(),
        ),
    )
    .unwrap();
    path
}

fn start(heartbeat: &'static str) -> (TestController, tempfile::TempDir) {
    start_with_limits(Limits {
        boot: "10m",
        heartbeat,
        commissioning: "10m",
    })
}

fn start_with_limits(limits: Limits) -> (TestController, tempfile::TempDir) {
    let directory = tempfile::tempdir().unwrap();
    let fleet = fleet_file(directory.path(), &limits);
    let state = directory.path().join("state");
    let controller = TestController::start_in(&state, &["-f", fleet.to_str().unwrap()]);
    (controller, directory)
}

/// A machine's side of the API: text answers.
struct Machine {
    client: reqwest::Client,
    url: String,
    name: String,
    mac: String,
    token: String,
}

async fn text(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn post_anonymous(url: &str, path: &str, body: String) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .body(body)
        .send()
        .await
        .unwrap();
    text(response).await
}

fn line<'a>(answer: &'a str, key: &str) -> &'a str {
    answer
        .lines()
        .find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{answer}"))
}

/// The boot secret (`fleet.boot=`) of the iPXE script anyone may fetch for `mac`.
async fn boot_secret(url: &str, mac: &str) -> String {
    let script = reqwest::get(format!("{url}/boot/{mac}.ipxe"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!script.contains("fleet.token="), "{script}");
    let start = script
        .find("fleet.boot=")
        .unwrap_or_else(|| panic!("no boot secret in:\n{script}"))
        + "fleet.boot=".len();
    script[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect()
}

/// `POST .../exchange` with `{kind: secret}` (`boot` or `registration`).
async fn exchange(url: &str, name: &str, kind: &str, secret: &str) -> (u16, String) {
    let body = serde_json::json!({ kind: secret });
    post_anonymous(
        url,
        &format!("/metadata/v1/machines/{name}/exchange"),
        body.to_string(),
    )
    .await
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

impl Machine {
    async fn enlist(url: &str, mac: &str) -> Machine {
        // A second NIC, its MAC derived from the first so that machines do not share it.
        let second = format!("02{}", &mac[2..]);
        let body = serde_json::json!({
            "architecture": "amd64", "boot_mac": mac, "macs": [mac, second],
        });
        let (status, answer) = post_anonymous(url, "/metadata/v1/enlist", body.to_string()).await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(line(&answer, "status"), "new");
        Machine {
            client: reqwest::Client::new(),
            url: url.to_string(),
            name: line(&answer, "machine").to_string(),
            mac: mac.to_string(),
            token: line(&answer, "token").to_string(),
        }
    }

    /// Netboots as iPXE does: fetches the boot script, and exchanges the one-shot boot secret
    /// on its kernel command line for the token of a new run.
    async fn boot(&mut self) {
        let secret = boot_secret(&self.url, &self.mac).await;
        let (status, answer) = exchange(&self.url, &self.name, "boot", &secret).await;
        assert_eq!(status, 200, "{answer}");
        self.token = line(&answer, "token").to_string();
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!(
                "{}/metadata/v1/machines/{}/{path}",
                self.url, self.name
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        text(response).await
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> (u16, String) {
        let response = self
            .client
            .post(format!(
                "{}/metadata/v1/machines/{}/{path}",
                self.url, self.name
            ))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        text(response).await
    }

    /// Instructions: (run id, script lines).
    async fn instructions(&self, expected_role: &str) -> (String, Vec<String>) {
        let (status, answer) = self.get("instructions").await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(line(&answer, "role"), expected_role, "{answer}");
        let scripts = answer
            .lines()
            .filter_map(|line| line.strip_prefix("script "))
            .map(str::to_string)
            .collect();
        (line(&answer, "run").to_string(), scripts)
    }

    async fn result(
        &self,
        run: &str,
        name: &str,
        kind: &str,
        status: &str,
        stderr: &str,
    ) -> (u16, String) {
        self.post(
            "results",
            serde_json::json!({
                "run": run, "name": name, "kind": kind, "status": status,
                "exit_code": if status == "passed" { 0 } else { 3 }, "runtime_ms": 12,
                "stdout_b64": b64("some output\n"), "stderr_b64": b64(stderr),
            }),
        )
        .await
    }
}

async fn events_of(store: &Store, machine: &str) -> Vec<fleet::store::Event> {
    let filter = fleet::store::EventFilter {
        machine: Some(machine.to_string()),
        ..fleet::store::EventFilter::default()
    };
    store.events(&filter).await.expect("events")
}

async fn status_of(store: &Store, name: &str) -> (Status, Option<String>) {
    let record = store.machine(name).await.unwrap().unwrap();
    (record.lifecycle.status, record.status_reason)
}

/// A machine that enlisted, was given manual power and is being commissioned (not booted yet).
async fn commissioning_machine(controller: &TestController, store: &Store, mac: &str) -> Machine {
    let machine = Machine::enlist(&controller.url, mac).await;
    give_manual_power(store, &machine.name).await;
    commission(controller, &machine).await;
    machine
}

/// The operator commissions the machine through the API.
async fn commission(controller: &TestController, machine: &Machine) {
    let path = format!("/machines/{}/actions/commission", machine.name);
    let (code, answer) = controller.http().post(&path, serde_json::json!({})).await;
    assert_eq!(code, 200, "{answer}");
}

/// Gives an enlisted machine manual power (as adopting it in the fleet file would).
async fn give_manual_power(store: &Store, name: &str) {
    store
        .update_config(name, "manual", &serde_json::json!({}), &[], None)
        .await
        .unwrap();
}

#[tokio::test]
async fn enlist_commission_fail_on_an_operator_script() {
    let (controller, _directory) = start("10m");
    let store = controller.store().await;
    let mut machine = Machine::enlist(&controller.url, "52:54:00:aa:bb:01").await;
    assert_eq!(machine.name, "enlisted-525400aabb01");
    // Known now, by any of its MACs.
    let known = reqwest::get(format!(
        "{}/metadata/v1/known?mac=02:54:00:aa:bb:01",
        controller.url
    ))
    .await
    .unwrap();
    assert_eq!(known.text().await.unwrap(), "known\n", "never the name");
    // Enlistment runs the built-in commissioning scripts only, and the machine stays new.
    let (run, scripts) = machine.instructions("enlist").await;
    assert!(
        scripts.iter().all(|line| line.contains(" commissioning ")),
        "{scripts:?}"
    );
    assert!(
        !scripts.iter().any(|line| line.starts_with("check-raid")),
        "{scripts:?}"
    );
    let (status, answer) = machine
        .post("signal", serde_json::json!({"run": run, "result": "ok"}))
        .await;
    assert_eq!((status, answer.as_str()), (200, "after poweroff\n"));
    assert_eq!(status_of(&store, &machine.name).await.0, Status::New);

    give_manual_power(&store, &machine.name).await;
    let (code, answer) = controller
        .http()
        .post(
            &format!("/machines/{}/actions/commission", machine.name),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    machine.boot().await;
    let (run, scripts) = machine.instructions("commissioning").await;
    let names: Vec<&str> = scripts
        .iter()
        .map(|line| line.split(' ').next().unwrap())
        .collect();
    assert!(
        names.contains(&"check-raid") && names.contains(&"burn"),
        "{scripts:?}"
    );
    assert_eq!(
        scripts
            .iter()
            .find(|l| l.starts_with("check-raid"))
            .unwrap(),
        "check-raid commissioning 30"
    );
    // The operator's commissioning script fails: failed_commissioning, naming it and its stderr.
    let (status, answer) = machine
        .result(&run, "check-raid", "commissioning", "running", "")
        .await;
    assert_eq!((status, answer.as_str()), (200, "continue\n"));
    let (status, answer) = machine
        .result(
            &run,
            "check-raid",
            "commissioning",
            "failed",
            "probing\nno RAID controller found\n",
        )
        .await;
    assert_eq!(status, 200);
    assert!(answer.starts_with("stop "), "{answer}");
    let (status, reason) = status_of(&store, &machine.name).await;
    assert_eq!(status, Status::FailedCommissioning);
    assert_eq!(
        reason.as_deref(),
        Some("commissioning script check-raid failed (exit 3): no RAID controller found")
    );
    // The run is over: its token expired, later calls change nothing.
    let (status, answer) = machine.result(&run, "burn", "testing", "running", "").await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(
        answer,
        format!("error token expired: run {run} of {} ended\n", machine.name)
    );
    // The result is stored once (running, then failed) and shown by `machine show`.
    let record = store.machine(&machine.name).await.unwrap().unwrap();
    let results = store.script_results(record.id).await.unwrap();
    let raid: Vec<_> = results.iter().filter(|r| r.name == "check-raid").collect();
    assert_eq!(raid.len(), 1);
    assert_eq!(
        (raid[0].status.as_str(), raid[0].exit_code),
        ("failed", Some(3))
    );
    assert_eq!(raid[0].stderr, "probing\nno RAID controller found\n");
    let shown = controller.fleet(&["machine", "show", &machine.name]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("check-raid"), "{shown}");
    // The failing script's whole output, for a person to read.
    let output = controller.fleet(&["machine", "show", &machine.name, "--script", "check-raid"]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "some output\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("check-raid failed, exit 3"), "{stderr}");
    assert!(
        stderr.ends_with("probing\nno RAID controller found\n"),
        "{stderr}"
    );
    let output = controller.fleet(&["machine", "show", &machine.name, "--script", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no result of a script named `nope`; it has: check-raid"),
        "{stderr}"
    );
}

#[tokio::test]
async fn commissioning_goes_through_testing_to_ready() {
    let (controller, _directory) = start("10m");
    let store = controller.store().await;
    let mut machine = commissioning_machine(&controller, &store, "52:54:00:aa:cc:01").await;
    machine.boot().await;
    let (run, scripts) = machine.instructions("commissioning").await;
    assert!(
        scripts
            .iter()
            .any(|line| line.starts_with("10-fleet-cpu commissioning ")),
        "{scripts:?}"
    );
    for script in &scripts {
        let mut words = script.split(' ');
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        let (_, answer) = machine.result(&run, name, kind, "running", "").await;
        assert_eq!(answer, "continue\n");
        if let Some(facts) = facts_of(name) {
            // What a built-in script found is stored as the machine's inventory.
            let (_, answer) = machine
                .post(
                    "results",
                    serde_json::json!({
                        "run": run, "name": name, "kind": kind, "status": "passed", "exit_code": 0,
                        "stdout_b64": b64(facts),
                    }),
                )
                .await;
            assert_eq!(answer, "continue\n");
            continue;
        }
        if kind == "testing" {
            // The first test moves the machine to testing, in the same boot.
            assert_eq!(status_of(&store, &machine.name).await.0, Status::Testing);
        }
        let (_, answer) = machine.result(&run, name, kind, "passed", "").await;
        assert_eq!(answer, "continue\n", "{name}");
    }
    let (_, answer) = machine
        .post("signal", serde_json::json!({"run": run, "result": "ok"}))
        .await;
    assert_eq!(answer, "after poweroff\n");
    let record = store.machine(&machine.name).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, Status::Ready);
    assert!(record.lifecycle.commissioned);
    assert_eq!(record.hardware.cpus, Some(4));
    assert_eq!(record.hardware.memory_mib, Some(2048));
    assert_eq!(record.disks.len(), 1);
    assert_eq!(
        (record.disks[0].name.as_str(), record.disks[0].size_bytes),
        ("vda", 10 << 30)
    );
    // Told `after poweroff`: fleet expects the machine to power itself off, so the power poll
    // will not call that a change made outside fleet.
    assert_eq!(
        record.power_intent.map(|intent| intent.target),
        Some(fleet::model::PowerState::Off)
    );
    // The bus the disk script reported is stored and in the JSON view.
    assert_eq!(record.disks[0].bus.as_deref(), Some("virtio"));
    let shown = controller.fleet(&["machine", "show", &machine.name, "--json"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["machine"]["disks"][0]["bus"], "virtio", "{shown}");
    // The interfaces script's names replace the placeholders; the MACs stay the machine's.
    let eth0 = record
        .interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .expect("eth0");
    assert_eq!(eth0.mac.to_string(), "52:54:00:aa:cc:01");
    assert_eq!(eth0.driver.as_deref(), Some("virtio_net"));
}

/// A machine with two NICs whose boot NIC is the second one it lists (eth1): after
/// commissioning stores the interfaces in the machine's order, `fleet adopt` still names the
/// boot MAC as the one it netboots from (the DHCP server's fixed address goes to it), and the
/// adopted file plans no steps.
#[tokio::test]
async fn adopting_a_commissioned_two_nic_machine_keeps_its_boot_mac() {
    let (controller, directory) = start("10m");
    let store = controller.store().await;
    let boot = "52:54:00:aa:c2:01";
    let other = "02:54:00:aa:c2:01";
    let mut machine = commissioning_machine(&controller, &store, boot).await;
    machine.boot().await;
    let (run, scripts) = machine.instructions("commissioning").await;
    for script in &scripts {
        let mut words = script.split(' ');
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        let facts = match name {
            "40-fleet-interfaces" => format!(
                "interface name=eth0 mac={other} link=up driver=e1000e\n\
                 interface name=eth1 mac={boot} link=up driver=virtio_net\n"
            ),
            _ => facts_of(name).unwrap_or("").to_string(),
        };
        let (_, answer) = machine
            .post(
                "results",
                serde_json::json!({
                    "run": run, "name": name, "kind": kind, "status": "passed", "exit_code": 0,
                    "stdout_b64": b64(&facts),
                }),
            )
            .await;
        assert_eq!(answer, "continue\n", "{name}");
    }
    let (_, answer) = machine
        .post("signal", serde_json::json!({"run": run, "result": "ok"}))
        .await;
    assert_eq!(answer, "after poweroff\n");
    let record = store.machine(&machine.name).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, Status::Ready);
    let names: Vec<(String, String)> = record
        .interfaces
        .iter()
        .map(|i| (i.name.clone(), i.mac.to_string()))
        .collect();
    assert_eq!(
        names,
        [("eth0".into(), other.into()), ("eth1".into(), boot.into())]
    );

    let adopted = directory.path().join("adopted.toml");
    let output = controller.fleet(&["adopt", "--out", adopted.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&adopted).unwrap();
    let fleet = fleet::config::load_str("adopted.toml", &text)
        .unwrap_or_else(|diagnostics| panic!("{}\n{text}", diagnostics.render(false)));
    let spec = fleet
        .machines
        .iter()
        .find(|spec| spec.name.as_str() == machine.name)
        .unwrap();
    let netboots = spec.pxe_mac.or_else(|| spec.macs.first().copied()).unwrap();
    assert_eq!(netboots.to_string(), boot, "{text}");
    let planned = controller.fleet(&[
        "plan",
        "-f",
        adopted.to_str().unwrap(),
        "--detailed-exitcode",
    ]);
    assert_eq!(
        planned.status.code(),
        Some(0),
        "{}\n{}\n{text}",
        stdout(&planned),
        stderr(&planned)
    );
}

/// Fact lines as the built-in commissioning scripts print them for a small VM.
fn facts_of(script: &str) -> Option<&'static str> {
    Some(match script {
        "10-fleet-cpu" => "cpu count=4 model=\"QEMU Virtual CPU version 2.5+\" mhz=2400\n",
        "20-fleet-memory" => "memory kib=2097152\n",
        "30-fleet-disks" => {
            "disk name=vda size=10737418240 bus=virtio serial=disk-1 rotational=1 block_size=512\n"
        }
        "40-fleet-interfaces" => {
            "interface name=eth0 mac=52:54:00:aa:cc:01 link=up driver=virtio_net\n"
        }
        _ => return None,
    })
}

#[tokio::test]
async fn abort_mid_way_stops_the_run_and_marks_its_scripts_aborted() {
    let (controller, _directory) = start("10m");
    let store = controller.store().await;
    let mut machine = Machine::enlist(&controller.url, "52:54:00:aa:dd:01").await;
    give_manual_power(&store, &machine.name).await;
    let api = controller.http();
    api.post(
        &format!("/machines/{}/actions/commission", machine.name),
        serde_json::json!({}),
    )
    .await;
    machine.boot().await;
    let (run, _) = machine.instructions("commissioning").await;
    machine
        .result(&run, "check-raid", "commissioning", "running", "")
        .await;
    let (code, answer) = api
        .post(
            &format!("/machines/{}/actions/abort", machine.name),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(status_of(&store, &machine.name).await.0, Status::New);
    // The run is over: its token expired (the runner stops on a 401 as on a `stop`).
    let (status, answer) = machine.post("heartbeat", serde_json::json!({})).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.starts_with("error token expired: run "), "{answer}");
    let (status, _) = machine
        .result(&run, "check-raid", "commissioning", "passed", "")
        .await;
    assert_eq!(status, 401);
    let record = store.machine(&machine.name).await.unwrap().unwrap();
    let results = store.script_results(record.id).await.unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].status, "aborted");
}

#[tokio::test]
async fn a_silent_machine_fails_by_heartbeat_timeout() {
    let (controller, _directory) = start("4s");
    let store = controller.store().await;
    let mut machine = commissioning_machine(&controller, &store, "52:54:00:aa:ee:01").await;
    machine.boot().await;
    let (_run, _) = machine.instructions("commissioning").await;
    // Heartbeats keep it alive past the limit (6 s of them against 4 s)…
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, answer) = machine
            .post("heartbeat", serde_json::json!({"stage": "running"}))
            .await;
        assert_eq!(answer, "continue\n");
    }
    assert_eq!(
        status_of(&store, &machine.name).await.0,
        Status::Commissioning
    );
    // ...and silence fails it.
    let started = Instant::now();
    loop {
        let (status, reason) = status_of(&store, &machine.name).await;
        if status == Status::FailedCommissioning {
            assert_eq!(reason.as_deref(), Some("not heard from for 4 seconds"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(3500));
}

/// Waits until the machine fails commissioning; its reason and how long it took.
async fn failed_commissioning(store: &Store, name: &str, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let (status, reason) = status_of(store, name).await;
        if status == Status::FailedCommissioning {
            return (reason.unwrap_or_default(), started.elapsed());
        }
        assert!(started.elapsed() < limit, "{name} still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `fleet machine show NAME`'s line for `clock` (`boot clock`, `heartbeat clock`), if shown.
fn shown_clock(controller: &TestController, name: &str, clock: &str) -> Option<String> {
    let output = controller.fleet(&["machine", "show", name]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
        .lines()
        .find(|line| line.starts_with(clock))
        .map(str::to_string)
}

#[tokio::test]
async fn a_machine_that_never_calls_fails_by_the_boot_limit_one_that_falls_silent_by_heartbeat() {
    // The boot limit is the longer one, as booting is slower than a heartbeat's interval.
    let (controller, _directory) = start_with_limits(Limits {
        boot: "5s",
        heartbeat: "2s",
        commissioning: "10m",
    });
    let store = controller.store().await;
    let never = commissioning_machine(&controller, &store, "52:54:00:aa:b0:01").await;
    let mut silent = commissioning_machine(&controller, &store, "52:54:00:aa:b0:02").await;
    silent.boot().await;
    silent.instructions("commissioning").await;
    // While they run, `machine show` names the clock each is on.
    let boot = shown_clock(&controller, &never.name, "boot clock").expect("the boot clock shown");
    assert!(
        boot.contains("of 5 seconds: from the power command to the machine's first call"),
        "{boot}"
    );
    assert_eq!(
        shown_clock(&controller, &never.name, "heartbeat clock"),
        None
    );
    let heartbeat = shown_clock(&controller, &silent.name, "heartbeat clock")
        .expect("the heartbeat clock shown");
    assert!(heartbeat.contains("of 2 seconds"), "{heartbeat}");
    assert!(shown_clock(&controller, &silent.name, "status clock").is_some());

    let (reason, after) = failed_commissioning(&store, &silent.name, Duration::from_secs(15)).await;
    assert_eq!(reason, "not heard from for 2 seconds");
    // The machine that never called is not held to the heartbeat limit...
    assert_eq!(
        status_of(&store, &never.name).await.0,
        Status::Commissioning,
        "failed by silence {after:?} in, before it could boot"
    );
    // ...but to the boot limit.
    let (reason, _) = failed_commissioning(&store, &never.name, Duration::from_secs(15)).await;
    assert_eq!(reason, "did not boot within 5 seconds");
    // The clock ran from the power command (manual power: the note to switch it on).
    let record = store.machine(&never.name).await.unwrap().unwrap();
    let boot_started = record
        .boot_started
        .expect("the power command started the clock");
    assert!(
        record.status_since - boot_started >= 5_000,
        "failed {} ms after the power command",
        record.status_since - boot_started
    );
    assert_eq!(shown_clock(&controller, &never.name, "boot clock"), None);
}

#[tokio::test]
async fn anonymous_boot_reports_do_not_keep_a_silent_machine_alive() {
    let (controller, _directory) = start_with_limits(Limits {
        boot: "3s",
        heartbeat: "2s",
        commissioning: "10m",
    });
    let store = controller.store().await;
    let mac = "52:54:00:aa:b0:03";
    let machine = commissioning_machine(&controller, &store, mac).await;
    // Someone without the machine's token reports boot stages for its MAC, again and again.
    let reporter = {
        let url = format!("{}/boot/booted?mac={mac}&stage=initramfs", controller.url);
        tokio::spawn(async move {
            loop {
                let _ = reqwest::get(&url).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let (reason, _) = failed_commissioning(&store, &machine.name, Duration::from_secs(15)).await;
    reporter.abort();
    assert_eq!(reason, "did not boot within 3 seconds");
    let record = store.machine(&machine.name).await.unwrap().unwrap();
    assert_eq!(
        record.last_heard, None,
        "an anonymous report is not the machine"
    );
}

/// An enlisted machine with manual power, put in deployed, then released with an erase.
async fn deployed_then_released(
    controller: &TestController,
    store: &Store,
    mac: &str,
    erase: &str,
) -> Machine {
    let machine = Machine::enlist(&controller.url, mac).await;
    give_manual_power(store, &machine.name).await;
    controller.make_deployed(store, &machine.name).await;
    let path = format!("/machines/{}/actions/release", machine.name);
    let body = serde_json::json!({"options": {"erase": erase}});
    let (code, answer) = controller.http().post(&path, body).await;
    assert_eq!(code, 200, "{answer}");
    let mut machine = machine;
    machine.boot().await;
    machine
}

#[tokio::test]
async fn release_with_erase_runs_the_erase_then_the_release_completes() {
    let (controller, _directory) = start("10m");
    let store = controller.store().await;
    let machine = deployed_then_released(&controller, &store, "52:54:00:aa:fa:01", "full").await;
    assert_eq!(
        status_of(&store, &machine.name).await.0,
        Status::DiskErasing
    );
    let (run, scripts) = machine.instructions("disk_erasing").await;
    assert_eq!(scripts, ["fleet-erase-full erase 43200"]);
    let (_, answer) = machine
        .result(&run, "fleet-erase-full", "erase", "running", "")
        .await;
    assert_eq!(answer, "continue\n");
    let (_, answer) = machine
        .result(&run, "fleet-erase-full", "erase", "passed", "")
        .await;
    assert_eq!(answer, "continue\n");
    let (_, answer) = machine
        .post("signal", serde_json::json!({"run": run, "result": "ok"}))
        .await;
    assert_eq!(answer, "after poweroff\n");
    // Erased, then released: powered off and back to ready, owner cleared.
    let record = store.machine(&machine.name).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, Status::Ready);
    assert_eq!(record.lifecycle.owner, None);
}

#[tokio::test]
async fn a_failed_erase_fails_the_release_naming_the_script() {
    let (controller, _directory) = start("10m");
    let store = controller.store().await;
    let machine = deployed_then_released(&controller, &store, "52:54:00:aa:fb:01", "quick").await;
    let (run, _) = machine.instructions("disk_erasing").await;
    let (_, answer) = machine
        .result(
            &run,
            "fleet-erase-quick",
            "erase",
            "failed",
            "disk vda: ERASE FAILED: I/O error\n",
        )
        .await;
    assert!(answer.starts_with("stop "), "{answer}");
    let (status, reason) = status_of(&store, &machine.name).await;
    assert_eq!(status, Status::FailedDiskErasing);
    assert_eq!(
        reason.as_deref(),
        Some("disk erase fleet-erase-quick failed (exit 3): disk vda: ERASE FAILED: I/O error")
    );
}

/// `fleet serve --watch`: a script added to the fleet file is given to the next run without a
/// restart.
#[tokio::test]
async fn a_script_added_to_the_fleet_file_reaches_the_next_run_under_watch() {
    let directory = tempfile::tempdir().unwrap();
    let limits = Limits {
        boot: "10m",
        heartbeat: "10m",
        commissioning: "10m",
    };
    let fleet = fleet_file(directory.path(), &limits);
    let state = directory.path().join("state");
    let controller = TestController::start_in(&state, &["-f", fleet.to_str().unwrap(), "--watch"]);
    let store = controller.store().await;
    let mut machine = commissioning_machine(&controller, &store, "52:54:00:aa:fc:01").await;
    machine.boot().await;
    let (_, scripts) = machine.instructions("commissioning").await;
    assert!(!scripts.iter().any(|line| line.starts_with("late-check ")));
    std::fs::write(directory.path().join("late.sh"), "#!/bin/sh\necho late\n").unwrap();
    let mut text = std::fs::read_to_string(&fleet).unwrap();
    text.push_str(
        "\n[scripts.late-check]\nfile = \"late.sh\"\nkind = \"testing\"\ntimeout = \"45s\"\n",
    );
    std::fs::write(&fleet, text).unwrap();
    let started = Instant::now();
    loop {
        let (_, scripts) = machine.instructions("commissioning").await;
        if scripts.iter().any(|line| line == "late-check testing 45") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{scripts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_machine_past_its_limit_times_out_however_chatty() {
    let (controller, _directory) = start_with_limits(Limits {
        boot: "10m",
        heartbeat: "10m",
        commissioning: "3s",
    });
    let store = controller.store().await;
    let mut machine = commissioning_machine(&controller, &store, "52:54:00:aa:ef:01").await;
    machine.boot().await;
    machine.instructions("commissioning").await;
    let started = Instant::now();
    loop {
        let (_, answer) = machine.post("heartbeat", serde_json::json!({})).await;
        let (status, reason) = status_of(&store, &machine.name).await;
        if status == Status::FailedCommissioning {
            assert_eq!(
                reason.as_deref(),
                Some("operation commissioning timed out after 3 seconds")
            );
            // The machine hears it at its next call: its run's token expired.
            let (status, answer) = machine.post("heartbeat", serde_json::json!({})).await;
            assert_eq!(status, 401, "{answer}");
            assert!(answer.starts_with("error token expired: run "), "{answer}");
            break;
        }
        assert_eq!(answer, "continue\n");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn bad_enlistments_foreign_tokens_and_huge_uploads_are_refused() {
    let (controller, _directory) = start("10m");
    let url = controller.url.as_str();
    for (body, reason) in [
        ("not json".to_string(), "not valid JSON"),
        (
            serde_json::json!({"boot_mac": "52:54:00:00:00:01", "macs": []}).to_string(),
            "`architecture` is missing",
        ),
        (
            serde_json::json!({"architecture": "amd64", "boot_mac": "nope", "macs": []})
                .to_string(),
            "`boot_mac`",
        ),
    ] {
        let (status, answer) = post_anonymous(url, "/metadata/v1/enlist", body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer.starts_with("error ") && answer.contains(reason),
            "{answer}"
        );
    }
    let (_, machines) = controller.http().get("/machines").await;
    assert_eq!(
        machines,
        serde_json::json!([]),
        "nothing stored for bad enlistments"
    );

    let first = Machine::enlist(url, "52:54:00:bb:00:01").await;
    let second = Machine::enlist(url, "52:54:00:bb:00:03").await;
    let (run, _) = first.instructions("enlist").await;
    let thief = Machine {
        token: second.token.clone(),
        ..Machine {
            client: reqwest::Client::new(),
            url: url.to_string(),
            name: first.name.clone(),
            mac: String::new(),
            token: String::new(),
        }
    };
    let (status, answer) = thief
        .result(&run, "10-fleet-cpu", "commissioning", "passed", "")
        .await;
    assert_eq!(status, 403, "{answer}");
    let (status, _) = thief.get("instructions").await;
    assert_eq!(status, 403);
    // Over the documented limit (4 MiB): refused, nothing stored. curl, because it stops
    // sending when the answer comes early (as busybox wget's uploads are cut short too).
    let huge = serde_json::json!({"run": run, "name": "big", "kind": "commissioning", "status": "passed", "stdout": "x".repeat(5 * 1024 * 1024)});
    let upload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(upload.path(), huge.to_string()).unwrap();
    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
        ])
        .arg(format!("@{}", upload.path().display()))
        .args(["-H", &format!("Authorization: Bearer {}", first.token)])
        .arg(format!("{url}/metadata/v1/machines/{}/results", first.name))
        .output()
        .expect("curl runs (installed by .ci/setup-netboot)");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "413");
    let (status, answer) = first
        .post(
            "results",
            serde_json::json!({"run": run, "name": "x", "kind": "weird", "status": "passed"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(answer.contains("`kind`"), "{answer}");
    let store = controller.store().await;
    let record = store.machine(&first.name).await.unwrap().unwrap();
    assert!(store.script_results(record.id).await.unwrap().is_empty());
}

/// A live machine (added deployed, never netbooted) registers its hardware with the script the
/// controller serves, run by an operator on it: here a namespace on this host is the live
/// machine, linked to the controller's namespace by a veth pair; curl fetches the script.
#[tokio::test]
async fn a_live_machine_registers_its_inventory_with_the_served_script() {
    use crate::support::bootnet::NamespacedController;
    use crate::support::netns::{link, NetNs};
    let directory = tempfile::tempdir().unwrap();
    let (controller_ns, live_ns) = (NetNs::new("rc"), NetNs::new("rl"));
    link(&controller_ns, "10.97.0.1/24", &live_ns, "10.97.0.2/24");
    let fleet = directory.path().join("fleet.toml");
    std::fs::write(&fleet, "[controller]\ntftp_listen = \"10.97.0.1:6969\"\n").unwrap();
    let controller =
        NamespacedController::start_in(&controller_ns, "10.97.0.1:5248", directory.path(), &fleet);
    let added = controller.cli(&[
        "machine",
        "add",
        "web-1",
        "--mac",
        "52:54:00:1e:00:01",
        "--deployed",
        "--os",
        "debian-12",
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    let url = "http://10.97.0.1:5248";
    // A one-shot registration secret, handed over in a file (never on a command line).
    let made = controller.cli(&["machine", "registration", "web-1"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let secret = String::from_utf8_lossy(&made.stdout).trim().to_string();
    assert_eq!(secret.len(), 64, "{secret}");
    let file = directory.path().join("registration");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let script = format!(
        "curl -fsS {url}/scripts/register-live.sh | sh -s -- --url {url} --machine web-1 \
         --registration-file {}",
        file.display()
    );
    let output = live_ns
        .command("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "register-live failed:\n{log}");
    // One shot: the same secret again is refused (the runner says why), and the script takes
    // no token at all (the operator's would have done before).
    let again = live_ns
        .command("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let again_log = String::from_utf8_lossy(&again.stderr).to_string();
    assert!(!again.status.success(), "{again_log}");
    assert!(again_log.contains("already used"), "{again_log}");
    let token = controller.operator_token();
    let with_token = format!(
        "curl -fsS {url}/scripts/register-live.sh | FLEET_TOKEN={token} sh -s -- --url {url} \
         --machine web-1 --token {token}"
    );
    let refused = live_ns
        .command("sh")
        .args(["-c", &with_token])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not a token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let store = controller.store().await;
    let record = store.machine("web-1").await.unwrap().unwrap();
    assert_eq!(
        record.lifecycle.status,
        Status::Deployed,
        "never netbooted, still deployed"
    );
    let cpus = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(record.hardware.cpus, Some(cpus), "{log}");
    // Installed memory: the online memory blocks sysfs shows (MemTotal where there are none).
    let installed_mib = installed_memory_mib().unwrap_or_else(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: i64 = meminfo.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib / 1024
    });
    assert_eq!(record.hardware.memory_mib, Some(installed_mib));
    // The namespace's only NIC is a veth, which the interfaces script skips as virtual (no
    // device behind it); the MAC the machine was added with stays its own.
    let macs: Vec<String> = record
        .interfaces
        .iter()
        .map(|i| i.mac.to_string())
        .collect();
    assert_eq!(macs, ["52:54:00:1e:00:01"]);
    // The host's disks, as /sys shows them.
    let real_disks = std::fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("device").exists())
        .count();
    assert_eq!(record.disks.len(), real_disks, "{:?}", record.disks);
    // Only the scripts that are safe on a host with a workload ran.
    let results = store.script_results(record.id).await.unwrap();
    assert!(
        results
            .iter()
            .any(|r| r.name == "10-fleet-cpu" && r.status == "passed"),
        "{results:#?}"
    );
    assert!(
        results.iter().all(|r| r.kind == "commissioning"),
        "{results:#?}"
    );
}

/// Online memory blocks × their size, from sysfs.
fn installed_memory_mib() -> Option<i64> {
    let directory = Path::new("/sys/devices/system/memory");
    let block = std::fs::read_to_string(directory.join("block_size_bytes")).ok()?;
    let block = i64::from_str_radix(block.trim(), 16).ok()?;
    let online = std::fs::read_dir(directory)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("online")).is_ok_and(|t| t.trim() == "1")
        })
        .count() as i64;
    (online > 0).then_some(online * block / (1024 * 1024))
}

/// The attack of issue 12: someone reads a commissioning machine's boot script (anyone may
/// fetch it) and uses its secret to forge the inventory. Whoever exchanges second, the boot's
/// secret has been used twice: refused, recorded with both addresses, and the commissioning
/// fails naming the possible impersonation, so the forged run never reaches ready.
#[tokio::test]
async fn a_boot_secret_read_from_the_boot_script_cannot_forge_a_run() {
    let (controller, _directory) = start("10m");
    let store = controller.store().await;

    // The machine exchanges first; the attacker's exchange, with its own script's secret or
    // with the machine's very secret, is refused.
    let mut machine = commissioning_machine(&controller, &store, "52:54:00:ac:00:01").await;
    let seen_by_attacker = boot_secret(&controller.url, &machine.mac).await;
    let own = boot_secret(&controller.url, &machine.mac).await;
    let (status, answer) = exchange(&controller.url, &machine.name, "boot", &own).await;
    assert_eq!(status, 200, "{answer}");
    machine.token = line(&answer, "token").to_string();
    assert!(answer.contains("role commissioning\n"), "{answer}");
    for secret in [&seen_by_attacker, &own] {
        let (status, answer) = exchange(&controller.url, &machine.name, "boot", secret).await;
        assert_eq!(status, 403, "{answer}");
        assert!(answer.contains("used twice"), "{answer}");
    }
    let (status, reason) = status_of(&store, &machine.name).await;
    assert_eq!(status, Status::FailedCommissioning);
    let reason = reason.unwrap();
    assert!(
        reason.contains("was used twice (first from 127.0.0.1, again from 127.0.0.1)")
            && reason.ends_with("possible impersonation"),
        "{reason}"
    );
    let events = events_of(&store, &machine.name).await;
    let security: Vec<_> = events.iter().filter(|e| e.kind == "security").collect();
    assert!(!security.is_empty(), "{events:#?}");
    assert_eq!(security[0].detail["first_from"], "127.0.0.1");
    assert_eq!(security[0].detail["again_from"], "127.0.0.1");
    let (status, _) = machine.get("instructions").await;
    assert_eq!(status, 401, "the failed run's token expired");

    // The attacker exchanges first and forges the inventory; the machine's own exchange then
    // fails the commissioning, and the forged run can never signal its way to ready.
    let victim = commissioning_machine(&controller, &store, "52:54:00:ac:00:02").await;
    let attacker_secret = boot_secret(&controller.url, &victim.mac).await;
    let victim_secret = boot_secret(&controller.url, &victim.mac).await;
    let (status, answer) = exchange(&controller.url, &victim.name, "boot", &attacker_secret).await;
    assert_eq!(status, 200, "{answer}");
    let attacker = Machine {
        client: reqwest::Client::new(),
        url: controller.url.clone(),
        name: victim.name.clone(),
        mac: victim.mac.clone(),
        token: line(&answer, "token").to_string(),
    };
    let (run, _) = attacker.instructions("commissioning").await;
    let (_, answer) = attacker
        .post(
            "results",
            serde_json::json!({
                "run": run, "name": "10-fleet-cpu", "kind": "commissioning",
                "status": "passed", "exit_code": 0,
                "stdout_b64": b64("cpu count=4096 model=\"forged\" mhz=9999\n"),
            }),
        )
        .await;
    assert_eq!(answer, "continue\n");
    let (status, answer) = exchange(&controller.url, &victim.name, "boot", &victim_secret).await;
    assert_eq!(status, 403, "{answer}");
    let (status, reason) = status_of(&store, &victim.name).await;
    assert_eq!(status, Status::FailedCommissioning);
    assert!(reason.unwrap().ends_with("possible impersonation"));
    let (status, answer) = attacker
        .post("signal", serde_json::json!({"run": run, "result": "ok"}))
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_ne!(status_of(&store, &victim.name).await.0, Status::Ready);
    // A secret that was never handed out opens nothing and changes nothing.
    let (status, _) = exchange(&controller.url, "no-such-machine", "boot", "00").await;
    assert_eq!(status, 404);
    // No secret and no token is in an event.
    let (_, events) = controller.http().get("/events?limit=1000").await;
    let events = events.to_string();
    for secret in [
        &seen_by_attacker,
        &own,
        &attacker_secret,
        &victim_secret,
        &attacker.token,
    ] {
        assert!(!events.contains(secret.as_str()), "a secret in the events");
    }
}

/// Tokens are bound to a run of one machine: none, the operator's, another machine's and an
/// ended run's are refused on every machine route.
#[tokio::test]
async fn machine_routes_take_only_the_token_of_the_machines_current_run() {
    let (controller, _directory) = start("10m");
    let url = controller.url.as_str();
    let first = Machine::enlist(url, "52:54:00:ad:00:01").await;
    let second = Machine::enlist(url, "52:54:00:ad:00:03").await;
    let (run, _) = first.instructions("enlist").await;
    let with_token = |token: Option<&str>| {
        let client = reqwest::Client::new();
        let request = client.post(format!(
            "{url}/metadata/v1/machines/{}/heartbeat",
            first.name
        ));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    let operator = controller.token.clone();
    for (token, expected_status, expected) in [
        (None, 401, "error no token"),
        (Some(operator.as_str()), 401, "error unknown token"),
        (
            Some(second.token.as_str()),
            403,
            "error this token is not machine",
        ),
        (Some("0123"), 401, "error unknown token"),
    ] {
        let (status, answer) = text(with_token(token).send().await.unwrap()).await;
        assert_eq!(status, expected_status, "{token:?}: {answer}");
        assert!(answer.starts_with(expected), "{token:?}: {answer}");
    }
    // The operator token is no key to the machine API (it was before).
    let (status, _) = Machine {
        client: reqwest::Client::new(),
        url: url.to_string(),
        name: first.name.clone(),
        mac: first.mac.clone(),
        token: operator.clone(),
    }
    .get("instructions")
    .await;
    assert_eq!(status, 401);
    // Its own token works until its run ends, then it has expired.
    let (status, answer) = text(with_token(Some(&first.token)).send().await.unwrap()).await;
    assert_eq!((status, answer.as_str()), (200, "continue\n"));
    let (_, answer) = first
        .post("signal", serde_json::json!({"run": run, "result": "ok"}))
        .await;
    assert_eq!(answer, "after poweroff\n");
    let (status, answer) = text(with_token(Some(&first.token)).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(
        answer,
        format!("error token expired: run {run} of {} ended\n", first.name)
    );
    // Nothing is kept in plain text: the store holds the token's SHA-256 only.
    let store = controller.store().await;
    let state = store.machine_state(&first.name).await.unwrap().unwrap();
    assert_eq!(
        state.run_token_hash.as_deref(),
        Some(fleet::services::machine_api::credentials::secret_hash(&first.token).as_str())
    );
}

/// An anonymous enlistment never gets an existing machine's credentials: a known MAC, or a
/// machine added by hand found by its BMC address, gets `known` and no token, and a stored BMC
/// password (or address) is never replaced; only empty fields are filled.
#[tokio::test]
async fn anonymous_enlistment_returns_no_credentials_and_overwrites_no_bmc_password() {
    let (controller, _directory) = start("10m");
    let url = controller.url.as_str();
    let store = controller.store().await;
    let machine = Machine::enlist(url, "52:54:00:ae:00:01").await;
    let body = serde_json::json!({
        "architecture": "amd64", "boot_mac": "52:54:00:ae:00:01", "macs": ["52:54:00:ae:00:01"],
    });
    let (status, answer) = post_anonymous(url, "/metadata/v1/enlist", body.to_string()).await;
    assert_eq!((status, answer.as_str()), (200, "known\nafter poweroff\n"));
    let known = reqwest::get(format!("{url}/metadata/v1/known?mac=52:54:00:ae:00:01"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(known, "known\n");
    assert!(!known.contains(&machine.name));

    // Added by hand with its BMC and a password of the operator's, not commissioned.
    let api = controller.http();
    let add = |name: &str, address: &str, power: serde_json::Value| {
        let body = serde_json::json!({
            "name": name, "bmc_address": address, "power": power, "commission": false,
        });
        let api = &api;
        async move {
            let (code, answer) = api.post("/machines", body).await;
            assert_eq!(code, 201, "{answer}");
        }
    };
    add(
        "rack-7",
        "10.0.0.7",
        serde_json::json!({"type": "ipmi", "address": "10.0.0.7", "user": "admin",
                           "password": {"env": "RACK7_BMC_PASSWORD"}}),
    )
    .await;
    let before = store.machine("rack-7").await.unwrap().unwrap();
    let forged = serde_json::json!({
        "architecture": "amd64", "boot_mac": "52:54:00:ae:00:07", "macs": ["52:54:00:ae:00:07"],
        "bmc": {"type": "ipmi", "address": "10.0.0.7", "user": "fleet", "password": "Att4cker-pw"},
    });
    let (status, answer) = post_anonymous(url, "/metadata/v1/enlist", forged.to_string()).await;
    assert_eq!((status, answer.as_str()), (200, "known\nafter poweroff\n"));
    let after = store.machine("rack-7").await.unwrap().unwrap();
    assert_eq!(
        after.power_params, before.power_params,
        "the BMC password stays"
    );
    assert_eq!(after.bmc_address.as_deref(), Some("10.0.0.7"));
    // Only its empty fields were filled: the MACs, so it boots next as a known machine.
    let macs: Vec<String> = after.interfaces.iter().map(|i| i.mac.to_string()).collect();
    assert_eq!(macs, ["52:54:00:ae:00:07"]);
    assert!(!controller
        .state_dir
        .join("secrets/rack-7.bmc-password")
        .exists());

    // Added with only its BMC address (lifecycle.md: its identity until its first boot), and
    // commissioning: the enlistment fills the user and password, gets no token, and the
    // machine is told to wait while the controller power-cycles it through its BMC.
    add(
        "rack-8",
        "10.0.0.8",
        serde_json::json!({"type": "ipmi", "address": "10.0.0.8"}),
    )
    .await;
    let record = store.machine("rack-8").await.unwrap().unwrap();
    let mut lifecycle = record.lifecycle.clone();
    lifecycle.status = Status::Commissioning;
    store
        .write_lifecycle("rack-8", &lifecycle, "test", "fixture")
        .await
        .unwrap();
    let first_boot = serde_json::json!({
        "architecture": "amd64", "boot_mac": "52:54:00:ae:00:08", "macs": ["52:54:00:ae:00:08"],
        "bmc": {"type": "ipmi", "address": "10.0.0.8", "user": "fleet", "password": "F1rst-pw"},
    });
    let (status, answer) = post_anonymous(url, "/metadata/v1/enlist", first_boot.to_string()).await;
    assert_eq!((status, answer.as_str()), (200, "known\nafter wait\n"));
    let filled = store.machine("rack-8").await.unwrap().unwrap();
    assert_eq!(filled.power_params["user"], "fleet");
    assert_eq!(
        filled.power_params["password"],
        serde_json::json!({"store": "bmc-password"})
    );
    // Kept in the store, sealed with the key the controller made in its state directory.
    let key = fleet::store::SecretKey::read_file(&controller.state_dir.join("secret.key")).unwrap();
    let keyed = store.clone().with_secret_key(key);
    let stored_password = |record: fleet::store::MachineRecord| {
        let keyed = keyed.clone();
        async move {
            let secret = keyed
                .secret(record.id, "rack-8", "bmc-password")
                .await
                .unwrap();
            secret.expose().to_string()
        }
    };
    assert_eq!(stored_password(filled.clone()).await, "F1rst-pw");
    assert!(!controller.state_dir.join("secrets").exists());
    // A second enlistment naming that BMC replaces nothing.
    let second = serde_json::json!({
        "architecture": "amd64", "boot_mac": "52:54:00:ae:00:09", "macs": ["52:54:00:ae:00:09"],
        "bmc": {"type": "ipmi", "address": "10.0.0.8", "user": "evil", "password": "Sec0nd-pw"},
    });
    let (status, answer) = post_anonymous(url, "/metadata/v1/enlist", second.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.contains("token"), "{answer}");
    assert_eq!(stored_password(filled.clone()).await, "F1rst-pw");
    let again = store.machine("rack-8").await.unwrap().unwrap();
    assert_eq!(again.power_params, filled.power_params);
    assert_eq!(again.interfaces.len(), 1);
    // The controller power-cycles it (the command is recorded, whatever the BMC answers).
    let started = Instant::now();
    loop {
        let events = events_of(&store, "rack-8").await;
        if events.iter().any(|e| e.kind == "power") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{events:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// register-live's one-shot registration secret, at the HTTP level: made by an operator for a
/// machine added live only, exchanged once for a register-live run; used again, expired, or
/// replaced by the operator token: refused.
#[tokio::test]
async fn registration_secrets_are_one_shot_short_lived_and_for_live_machines() {
    let (controller, _directory) = start("10m");
    let url = controller.url.as_str();
    let store = controller.store().await;
    let added = controller.fleet(&[
        "machine",
        "add",
        "web-2",
        "--mac",
        "52:54:00:af:00:01",
        "--deployed",
        "--os",
        "debian-12",
    ]);
    assert!(added.status.success(), "{}", stderr(&added));
    let api = controller.http();
    // The operator token is no registration secret.
    let (status, answer) = exchange(url, "web-2", "registration", &controller.token).await;
    assert_eq!(status, 403, "{answer}");
    let made = controller.fleet(&["machine", "registration", "web-2"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let secret = stdout(&made).trim().to_string();
    assert!(
        stderr(&made).contains("--registration-file"),
        "{}",
        stderr(&made)
    );
    let (status, answer) = exchange(url, "web-2", "registration", &secret).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("role register-live\n"), "{answer}");
    let live = Machine {
        client: reqwest::Client::new(),
        url: url.to_string(),
        name: "web-2".into(),
        mac: String::new(),
        token: line(&answer, "token").to_string(),
    };
    live.instructions("register-live").await;
    let (status, answer) = exchange(url, "web-2", "registration", &secret).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("already used"), "{answer}");
    // Expired: refused with a 401 that says so.
    let (code, made) = api
        .post("/machines/web-2/registration", serde_json::json!({}))
        .await;
    assert_eq!(code, 200, "{made}");
    let late = made["registration"].as_str().unwrap().to_string();
    store
        .set_registration(
            "web-2",
            &fleet::services::machine_api::credentials::secret_hash(&late),
            fleet::store::now_ms() - 1,
        )
        .await
        .unwrap();
    let (status, answer) = exchange(url, "web-2", "registration", &late).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("expired"), "{answer}");
    // Only for a machine running a workload.
    let enlisted = Machine::enlist(url, "52:54:00:af:00:02").await;
    let (code, answer) = api
        .post(
            &format!("/machines/{}/registration", enlisted.name),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(code, 409, "{answer}");
    // The secret is in no event.
    let (_, events) = api.get("/events?limit=1000").await;
    assert!(!events.to_string().contains(&secret));
    assert!(
        events.to_string().contains("registration secret"),
        "{events}"
    );
}

/// A rescue run as the runner drives it, for two machines of the fleet file: one with SSH keys
/// (its own and its profile's), one without. The rescue script is served with the machine's keys;
/// its result gives `fleet machine show` the address to SSH to while the machine is in rescue
/// mode, and nothing once it has exited. A failing rescue script fails entering rescue mode.
#[tokio::test]
async fn rescue_serves_the_machines_keys_and_shows_the_address_until_exit() {
    const OWN: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBpueewZpg2Y8mMpdt7X2aU17zWyZXrmNKzBOpbswG+k owner@laptop";
    const OPS: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHOuN2u3SDkMn5dwvm3sPHG52xwZXBjfxcNa0N8Pjfb2 ops@example";
    let directory = tempfile::tempdir().unwrap();
    let limits = Limits {
        boot: "10m",
        heartbeat: "10m",
        commissioning: "10m",
    };
    let fleet = fleet_file(directory.path(), &limits);
    let mut text = std::fs::read_to_string(&fleet).unwrap();
    text.push_str(&format!(
        "\n[profiles.ops]\nssh_keys = [\"{OPS}\"]\n\n\
         [[machine]]\nname = \"enlisted-525400aaf101\"\nmacs = [\"52:54:00:aa:f1:01\"]\n\
         profile = \"ops\"\nssh_keys = [\"{OWN}\"]\n\n\
         [[machine]]\nname = \"enlisted-525400aaf102\"\nmacs = [\"52:54:00:aa:f1:02\"]\n"
    ));
    std::fs::write(&fleet, text).unwrap();
    let state = directory.path().join("state");
    let controller = TestController::start_in(&state, &["-f", fleet.to_str().unwrap()]);
    let store = controller.store().await;
    let api = controller.http();

    let mut machine = Machine::enlist(&controller.url, "52:54:00:aa:f1:01").await;
    give_manual_power(&store, &machine.name).await;
    controller.make_deployed(&store, &machine.name).await;
    let (code, answer) = api
        .post(
            &format!("/machines/{}/actions/rescue", machine.name),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    machine.boot().await;
    let (run, scripts) = machine.instructions("rescue").await;
    assert_eq!(scripts, ["fleet-rescue rescue 120"]);
    let (_, instructions) = machine.get("instructions").await;
    assert_eq!(line(&instructions, "after"), "wait");
    let (code, script) = machine.get("scripts/fleet-rescue").await;
    assert_eq!(code, 200);
    assert!(
        script.starts_with("#!/bin/sh\n")
            && script.contains(&format!("\nrescue_machine='{}'\n", machine.name))
            && script.contains(&format!("\nrescue_keys='{OPS}\n{OWN}'\n")),
        "{script}"
    );
    let results = serde_json::json!({
        "ssh": true, "user": "root", "port": 22, "addresses": ["10.99.0.57", "fd00::57"],
        "host_key": "SHA256:N9T0TPWETlZ6xWVt0HeMbvuv6+P+J+CYdX+vTLPfnJM",
        "host_key_type": "ssh-ed25519", "authorized_keys": 2
    });
    let (code, answer) = machine
        .post(
            "results",
            serde_json::json!({
                "run": run, "name": "fleet-rescue", "kind": "rescue", "status": "passed",
                "exit_code": 0, "runtime_ms": 900, "stdout_b64": b64("SSH server listening\n"),
                "stderr_b64": "", "results_b64": b64(&results.to_string()),
            }),
        )
        .await;
    assert_eq!((code, answer.as_str()), (200, "continue\n"));
    // Not in rescue mode yet: nothing shown.
    let (_, shown) = api.get(&format!("/machines/{}", machine.name)).await;
    assert!(shown.get("rescue").is_none(), "{shown}");
    let (_, answer) = machine
        .post("signal", serde_json::json!({"run": run, "result": "ok"}))
        .await;
    assert_eq!(answer, "after wait\n");
    assert_eq!(status_of(&store, &machine.name).await.0, Status::RescueMode);
    let expected =
        "ssh root@10.99.0.57 (host key SHA256:N9T0TPWETlZ6xWVt0HeMbvuv6+P+J+CYdX+vTLPfnJM)";
    let (_, shown) = api.get(&format!("/machines/{}", machine.name)).await;
    assert_eq!(shown["rescue"]["summary"], expected, "{shown}");
    assert_eq!(shown["rescue"]["command"], "ssh root@10.99.0.57");
    assert_eq!(
        shown["rescue"]["addresses"],
        serde_json::json!(["10.99.0.57", "fd00::57"])
    );
    let human = controller.fleet(&["machine", "show", &machine.name]);
    assert!(
        stdout(&human).contains(&format!("rescue          {expected}\n")),
        "{}{}",
        stdout(&human),
        stderr(&human)
    );
    // The rescue run goes on: heartbeats are taken while the machine waits.
    let (code, answer) = machine
        .post("heartbeat", serde_json::json!({"stage": "waiting"}))
        .await;
    assert_eq!((code, answer.as_str()), (200, "continue\n"));

    // Exit: back to deployed (manual power: the operator is asked to cycle it), nothing shown.
    let (code, answer) = api
        .post(
            &format!("/machines/{}/actions/exit_rescue", machine.name),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(&store, &machine.name).await.0 != Status::Deployed {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            status_of(&store, &machine.name).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, shown) = api.get(&format!("/machines/{}", machine.name)).await;
    assert!(shown.get("rescue").is_none(), "{shown}");

    // A machine without keys: the script is served with none; its result says so.
    let mut bare = Machine::enlist(&controller.url, "52:54:00:aa:f1:02").await;
    give_manual_power(&store, &bare.name).await;
    controller.make_deployed(&store, &bare.name).await;
    let rescue = format!("/machines/{}/actions/rescue", bare.name);
    let (code, answer) = api.post(&rescue, serde_json::json!({})).await;
    assert_eq!(code, 200, "{answer}");
    bare.boot().await;
    let (run, _) = bare.instructions("rescue").await;
    let (_, script) = bare.get("scripts/fleet-rescue").await;
    assert!(script.contains("\nrescue_keys=''\n"), "{script}");
    let note = format!(
        "no SSH keys for {} in the fleet file: no SSH server started",
        bare.name
    );
    let results = serde_json::json!({"ssh": false, "user": "root", "port": 22,
        "addresses": ["10.99.0.58"], "reason": note});
    bare.post(
        "results",
        serde_json::json!({"run": run, "name": "fleet-rescue", "kind": "rescue",
            "status": "passed", "exit_code": 0, "results_b64": b64(&results.to_string())}),
    )
    .await;
    bare.post("signal", serde_json::json!({"run": run, "result": "ok"}))
        .await;
    assert_eq!(status_of(&store, &bare.name).await.0, Status::RescueMode);
    let (_, shown) = api.get(&format!("/machines/{}", bare.name)).await;
    assert_eq!(shown["rescue"]["summary"], format!("no SSH server: {note}"));
    assert_eq!(shown["rescue"]["command"], serde_json::Value::Null);

    // A rescue script that fails: failed_entering_rescue_mode, naming it and its last line.
    let (code, answer) = api
        .post(
            &format!("/machines/{}/actions/exit_rescue", bare.name),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(&store, &bare.name).await.0 != Status::Deployed {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            status_of(&store, &bare.name).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, answer) = api.post(&rescue, serde_json::json!({})).await;
    assert_eq!(code, 200, "{answer}");
    bare.boot().await;
    let (run, _) = bare.instructions("rescue").await;
    let (_, answer) = bare
        .result(
            &run,
            "fleet-rescue",
            "rescue",
            "failed",
            "fleet-rescue: no dropbear in this environment\n",
        )
        .await;
    assert!(answer.starts_with("stop "), "{answer}");
    assert_eq!(
        status_of(&store, &bare.name).await,
        (
            Status::FailedEnteringRescueMode,
            Some("rescue script fleet-rescue failed (exit 3): fleet-rescue: no dropbear in this environment".into())
        )
    );
}
