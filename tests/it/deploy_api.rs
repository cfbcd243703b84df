//! The controller's side of a deployment (issue 14), driven over HTTP the way the ephemeral
//! environment's runner and the installed system drive it, without a VM: a deploying run gets
//! `fleet-deploy` and `after reboot`; the deployment JSON carries the plan's layout and network,
//! the deploy settings and the image's digest; progress heartbeats are shown; a failed result
//! fails the deployment naming its phase; the done signal turns netboot off; the call-back
//! deploys the machine once; the call-back and heartbeat clocks fail it; abort; a layout that
//! does not fit; and `fleet apply` taking a new machine the whole way to deployed.

use crate::support::controller::{stderr, stdout, TestController};
use base64::Engine;
use fleet::model::records::{Disk, Hardware, Interface};
use fleet::model::{MacAddr, MachineName, Status};
use fleet::store::{NewMachine, Store, StoredDeployment};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA3ldeHeRPLQ0TyMDBzbdW7Y36B+kNNg1blrHZsywfgX ops@example";
const GIB: i64 = 1024 * 1024 * 1024;

/// The limits of a test's controller, as the fleet file writes them.
struct Limits {
    heartbeat: &'static str,
    callback: &'static str,
}

const RELAXED: Limits = Limits {
    heartbeat: "10m",
    callback: "30m",
};

/// A fleet file: an ephemeral image, the `noble` root tarball, a flat and an lvm template, a
/// network template, and `machines` (TOML). Returns it and the root file's SHA-256.
fn fleet_file(directory: &Path, limits: &Limits, machines: &str) -> (PathBuf, String) {
    let sha = |path: &Path| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
    };
    let (kernel, initrd, root) = (
        directory.join("vmlinuz"),
        directory.join("initrd"),
        directory.join("noble.tgz"),
    );
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    std::fs::write(&initrd, b"not really an initrd").unwrap();
    // Really gzip (the controller unpacks it once to learn its raw size and digest), though not
    // really a tarball: no machine unpacks it here.
    let gzipped = std::process::Command::new("gzip")
        .arg("-nc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut gzip| {
            use std::io::Write;
            gzip.stdin
                .take()
                .expect("gzip's stdin")
                .write_all(b"not really a root tarball, but its bytes are hashed")?;
            gzip.wait_with_output()
        })
        .expect("gzip (.ci/setup installs it)");
    std::fs::write(&root, gzipped.stdout).unwrap();
    let root_sha = sha(&root);
    let Limits {
        heartbeat,
        callback,
    } = limits;
    let path = directory.join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            r#"[controller]
ephemeral_image = "ephemeral"

[images.ephemeral]
kernel = {{ path = "{kernel}" }}
initrd = {{ path = "{initrd}" }}

[images.noble]
root = {{ path = "{root}", sha256 = "{root_sha}", format = "tgz" }}

[policy.timeouts]
heartbeat = "{heartbeat}"
callback = "{callback}"

[subnets.lab]
cidr = "10.30.0.0/24"
gateway = "10.30.0.1"

[storage_templates.flat]
layout = "flat"

[storage_templates.lvm]
layout = "lvm"

[network_templates.lab]
interfaces = [{{ name = "eth0", link = "auto", subnet = "lab" }}]

{machines}"#,
            kernel = kernel.display(),
            initrd = initrd.display(),
            root = root.display(),
        ),
    )
    .unwrap();
    (path, root_sha)
}

/// A machine of the fleet file, deployed with noble on the flat template and the lab network.
fn machine_toml(name: &str, mac: &str, state: &str) -> String {
    format!(
        r##"[[machine]]
name = "{name}"
macs = ["{mac}"]
state = "{state}"
owner = "ops"
image = "noble"
storage = "flat"
network = "lab"
power = {{ type = "manual" }}
kernel_params = "console=ttyS0,115200"
ssh_keys = ["{SSH_KEY}"]
user_data = "#cloud-config\npackages: [htop]\n"
vendor_data = {{ http_proxy = "http://proxy.example.net:3128" }}

"##
    )
}

/// The backend a test's controller runs on.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A controller serving the fleet file, and what keeps its files alive.
struct Setup {
    controller: TestController,
    store: Store,
    fleet: PathBuf,
    root_sha: String,
    _directory: tempfile::TempDir,
}

async fn start(backend: Backend, limits: &Limits, machines: &str) -> Setup {
    let directory = tempfile::tempdir().unwrap();
    let (fleet, root_sha) = fleet_file(directory.path(), limits, machines);
    let state = directory.path().join("state");
    let fleet_arg = fleet.to_str().unwrap().to_string();
    let controller = match backend {
        Backend::Sqlite => TestController::start_in(&state, &["-f", &fleet_arg]),
        Backend::Postgres => {
            let url = crate::support::db::empty_postgres_database().await;
            let mut controller =
                TestController::start_in(&state, &["-f", &fleet_arg, "--database", &url]);
            controller.database = url;
            controller
        }
    };
    let store = controller.store().await;
    Setup {
        controller,
        store,
        fleet,
        root_sha,
        _directory: directory,
    }
}

/// The machine's commissioned disk and interface, as commissioning would have stored them.
fn disk(size: i64) -> Disk {
    Disk {
        name: "sda".into(),
        model: Some("QEMU HARDDISK".into()),
        serial: Some("S1".into()),
        id_path: Some("/dev/disk/by-id/ata-QEMU_HARDDISK_S1".into()),
        bus: Some("ata".into()),
        size_bytes: size,
        block_size: Some(512),
        rotational: Some(false),
    }
}

/// A commissioned machine, allocated to ops, with `disk_size` bytes of disk (not deploying yet).
async fn allocated_machine(store: &Store, name: &str, mac: &str, disk_size: i64) {
    let mac = MacAddr::parse(mac).unwrap();
    let new = NewMachine {
        name: MachineName::parse(name).unwrap(),
        status: Status::New,
        macs: vec![mac],
        arch: Some("amd64".into()),
        power_type: "manual".into(),
        power_params: json!({}),
        bmc_address: None,
        image: Some("noble".into()),
        tags: vec![],
        deployed_os: None,
    };
    store.create_machine(&new, "test").await.unwrap();
    let hardware = Hardware {
        cpus: Some(2),
        cpu_model: None,
        cpu_speed_mhz: None,
        memory_mib: Some(2048),
        facts: json!({ "arch": { "name": "amd64", "firmware": "bios" } }),
    };
    let interface = Interface {
        name: "eth0".into(),
        mac,
        link_up: Some(true),
        speed_mbps: Some(1000),
        driver: Some("e1000".into()),
    };
    store
        .replace_hardware(
            name,
            Some("amd64"),
            &hardware,
            &[interface],
            &[disk(disk_size)],
        )
        .await
        .unwrap();
    let record = store.machine(name).await.unwrap().unwrap();
    let mut lifecycle = record.lifecycle.clone();
    lifecycle.status = Status::Allocated;
    lifecycle.previous_status = Some(Status::Ready);
    lifecycle.owner = Some("ops".into());
    lifecycle.commissioned = true;
    store
        .write_lifecycle(name, &lifecycle, "test", "fixture")
        .await
        .unwrap();
    // The address an apply committed for it.
    let held = allocation(name, "10.30.0.20");
    store
        .commit_addresses(name, &[held], "test", None)
        .await
        .unwrap();
}

/// What a plan's configure step stores: here the lvm layout (the fleet file says flat, so the
/// deployment shows which one it read) and the lab network rendered with 10.30.0.10 (the machine
/// holds 10.30.0.20 now, so the deployment shows which one it read).
async fn store_planned_deployment(store: &Store, fleet_file: &Path, name: &str, mac: &str) {
    let fleet = fleet::config::load(&[fleet_file.to_path_buf()]).expect("the fleet file loads");
    let template = fleet.storage_templates.get("lvm").unwrap();
    let disks = [fleet::plan::ObservedDisk::from_record(&disk(32 * GIB))];
    let layout = fleet::plan::layout::resolve_layout(template, &disks, fleet::plan::Firmware::Bios)
        .unwrap()
        .without_disk_identities();
    let planned = allocation(name, "10.30.0.10");
    let interfaces = [fleet::plan::ObservedInterface {
        name: "eth0".into(),
        mac: MacAddr::parse(mac).unwrap(),
    }];
    let network = fleet::plan::network::render_machine_network(
        fleet.network_templates.get("lab").unwrap(),
        fleet.machine(name),
        &interfaces,
        &[&planned],
        &fleet,
    )
    .expect("the network renders");
    let stored = StoredDeployment {
        layout: Some(serde_json::to_value(&layout).unwrap()),
        layout_digest: Some(layout.digest()),
        network: Some(serde_json::to_value(&network).unwrap()),
        network_digest: Some(network.digest()),
        origin: "fleet file".into(),
    };
    store.store_deployment(name, &stored).await.unwrap();
}

fn allocation(name: &str, ip: &str) -> fleet::plan::Allocation {
    fleet::plan::Allocation {
        machine: MachineName::parse(name).unwrap(),
        interface: "eth0".into(),
        subnet: "lab".into(),
        ip: ip.parse().unwrap(),
        origin: fleet::plan::AddressOrigin::Allocated,
    }
}

async fn text(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn line<'a>(answer: &'a str, key: &str) -> &'a str {
    answer
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{answer}"))
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The machine's side: what the runner (and the installed system) send.
struct Runner {
    client: reqwest::Client,
    url: String,
    name: String,
    mac: String,
    token: String,
    run: String,
}

impl Runner {
    fn new(url: &str, name: &str, mac: &str) -> Runner {
        Runner {
            client: reqwest::Client::new(),
            url: url.to_string(),
            name: name.to_string(),
            mac: mac.to_string(),
            token: String::new(),
            run: String::new(),
        }
    }

    async fn ipxe(&self) -> String {
        let script = reqwest::get(format!("{}/boot/{}.ipxe", self.url, self.mac));
        script.await.unwrap().text().await.unwrap()
    }

    /// Netboots: the iPXE script's boot secret traded for a run token; then the instructions.
    /// Returns the instructions.
    async fn boot(&mut self) -> String {
        let script = self.ipxe().await;
        let start = script
            .find("fleet.boot=")
            .unwrap_or_else(|| panic!("no boot secret in:\n{script}"))
            + "fleet.boot=".len();
        let secret: String = script[start..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        let (status, answer) = self
            .post_anonymous("exchange", json!({ "boot": secret }))
            .await;
        assert_eq!(status, 200, "{answer}");
        self.token = line(&answer, "token").to_string();
        let (status, instructions) = self.get("instructions").await;
        assert_eq!(status, 200, "{instructions}");
        self.run = line(&instructions, "run").to_string();
        instructions
    }

    fn path(&self, path: &str) -> String {
        format!("{}/metadata/v1/machines/{}/{path}", self.url, self.name)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let request = self.client.get(self.path(path)).bearer_auth(&self.token);
        text(request.send().await.unwrap()).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, String) {
        let request = self.client.post(self.path(path)).bearer_auth(&self.token);
        text(request.body(body.to_string()).send().await.unwrap()).await
    }

    async fn post_anonymous(&self, path: &str, body: Value) -> (u16, String) {
        let request = self.client.post(self.path(path));
        text(request.body(body.to_string()).send().await.unwrap()).await
    }

    async fn deployment(&self) -> Value {
        let (status, answer) = self.get("deployment").await;
        assert_eq!(status, 200, "{answer}");
        serde_json::from_str(&answer).unwrap()
    }

    async fn progress(&self, phase: &str, done: u64, total: u64) {
        let body = json!({"stage": "running fleet-deploy",
                          "progress": {"phase": phase, "done": done, "total": total}});
        let (status, answer) = self.post("heartbeat", body).await;
        assert_eq!((status, answer.as_str()), (200, "continue\n"));
    }

    async fn result(&self, name: &str, kind: &str, status: &str, out: &str, err: &str) -> String {
        let body = json!({
            "run": self.run, "name": name, "kind": kind, "status": status,
            "exit_code": if status == "passed" { 0 } else { 1 }, "runtime_ms": 1200,
            "stdout_b64": b64(out), "stderr_b64": b64(err),
        });
        let (code, answer) = self.post("results", body).await;
        assert_eq!(code, 200, "{answer}");
        answer
    }

    async fn signal_ok(&self) -> String {
        let (status, answer) = self
            .post("signal", json!({"run": self.run, "result": "ok"}))
            .await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn call_back(&self, secret: &str) -> (u16, String) {
        self.post_anonymous("deployed", json!({ "callback": secret }))
            .await
    }

    /// A whole deploying run that goes well, up to the done signal; the deployment fetched.
    async fn install(&mut self) -> Value {
        let instructions = self.boot().await;
        assert_eq!(line(&instructions, "role"), "deploying", "{instructions}");
        let deployment = self.deployment().await;
        self.progress("write-image", 40, 100).await;
        self.result("fleet-deploy", "deploy", "passed", "wrote noble\n", "")
            .await;
        assert_eq!(self.signal_ok().await, "after reboot\n");
        deployment
    }
}

async fn deploy(controller: &TestController, name: &str) {
    let path = format!("/machines/{name}/actions/deploy");
    let body = json!({ "options": { "image": "noble" } });
    let (code, answer) = controller.http().post(&path, body).await;
    assert_eq!(code, 200, "{answer}");
}

async fn status_of(store: &Store, name: &str) -> (Status, Option<String>) {
    let record = store.machine(name).await.unwrap().unwrap();
    (record.lifecycle.status, record.status_reason)
}

async fn events_of(store: &Store, name: &str, kind: &str) -> Vec<String> {
    let filter = fleet::store::EventFilter {
        machine: Some(name.to_string()),
        ..fleet::store::EventFilter::default()
    };
    let events = store.events(&filter).await.unwrap();
    events
        .into_iter()
        .filter(|event| event.kind == kind)
        .filter_map(|event| event.reason)
        .collect()
}

async fn wait_for_status(store: &Store, name: &str, status: Status, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (now, reason) = status_of(store, name).await;
        if now == status {
            return reason.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now} ({reason:?}), not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn finish(setup: Setup, backend: Backend) {
    let Setup {
        controller, store, ..
    } = setup;
    drop(controller);
    if let Backend::Postgres = backend {
        crate::support::db::drop_postgres_store(store).await;
    }
}

// ---------------------------------------------------------------------------------------------

const WEB: &str = "web-1";
const WEB_MAC: &str = "52:54:00:d0:00:01";

async fn a_deployment_goes_the_whole_way(backend: Backend) {
    let setup = start(backend, &RELAXED, &machine_toml(WEB, WEB_MAC, "deployed")).await;
    let (controller, store) = (&setup.controller, &setup.store);
    allocated_machine(store, WEB, WEB_MAC, 32 * GIB).await;
    store_planned_deployment(store, &setup.fleet, WEB, WEB_MAC).await;
    deploy(controller, WEB).await;
    let mut runner = Runner::new(&controller.url, WEB, WEB_MAC);

    // The run: fleet-deploy alone, with the deploying limit, then a reboot.
    let instructions = runner.boot().await;
    assert_eq!(line(&instructions, "role"), "deploying");
    let scripts: Vec<&str> = instructions
        .lines()
        .filter(|line| line.starts_with("script "))
        .collect();
    assert_eq!(
        scripts,
        ["script fleet-deploy deploy 3600"],
        "{instructions}"
    );
    assert_eq!(line(&instructions, "after"), "reboot");
    let (status, script) = runner.get("scripts/fleet-deploy").await;
    assert_eq!(status, 200);
    assert!(script.starts_with("#!/bin/sh\n"), "{script}");

    // The deployment: the plan's layout (lvm, not the fleet file's flat) and network, the deploy
    // settings, the image's digest.
    let first = runner.deployment().await;
    let deployment = runner.deployment().await;
    assert_eq!(deployment["machine"], WEB);
    assert_eq!(deployment["hostname"], WEB);
    assert_eq!(deployment["firmware"], "bios");
    assert_eq!(deployment["layout"]["kind"], "lvm", "{deployment:#}");
    assert_eq!(deployment["layout"]["disks"][0]["serial"], "S1");
    assert_eq!(
        deployment["layout"]["disks"][0]["id_path"],
        "/dev/disk/by-id/ata-QEMU_HARDDISK_S1"
    );
    assert_eq!(deployment["disks"][0]["size"], 32 * GIB);
    assert_eq!(deployment["target_disk"], "sda");
    let image = &deployment["image"];
    assert_eq!(image["name"], "noble");
    assert_eq!(image["format"], "tgz");
    assert_eq!(image["sha256"], setup.root_sha.as_str());
    // The URL names the machine, so the image's transfer is recorded as web-1's.
    assert_eq!(
        image["url"],
        format!("{}/boot/by-mac/{WEB_MAC}/noble/root", controller.url)
    );
    let netplan = deployment["network"]["netplan"].as_str().unwrap();
    assert!(netplan.contains("10.30.0.10/24"), "{netplan}");
    assert_eq!(deployment["network"]["json"]["template"], "lab");
    assert_eq!(deployment["kernel_params"], "console=ttyS0,115200");
    assert_eq!(deployment["ssh_keys"], json!([SSH_KEY]));
    assert_eq!(deployment["user_data"], "#cloud-config\npackages: [htop]\n");
    assert_eq!(
        deployment["vendor_data"]["http_proxy"],
        "http://proxy.example.net:3128"
    );
    assert_eq!(
        deployment["callback"]["url"],
        format!("{}/metadata/v1/machines/{WEB}/deployed", controller.url)
    );
    let secret = deployment["callback"]["secret"].as_str().unwrap();
    let voided = first["callback"]["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 64);
    assert_ne!(secret, voided, "each fetch mints its own");

    // Not waiting for a call-back yet: 409, and the secret is not spent.
    assert_eq!(runner.call_back(secret).await.0, 409);

    // Progress, shown by `fleet machine show`.
    runner.progress("write-image", 40, 100).await;
    let shown = controller.fleet(&["machine", "show", WEB]);
    let shown_text = stdout(&shown);
    assert!(
        shown_text.contains("progress        write-image 40/100 (40%)"),
        "{shown_text}{}",
        stderr(&shown)
    );
    runner
        .result("fleet-deploy", "deploy", "passed", "wrote noble\n", "")
        .await;
    assert_eq!(runner.signal_ok().await, "after reboot\n");

    // Netboot is off: the machine boots the disk it was installed on; the call-back clock runs.
    let ipxe = runner.ipxe().await;
    assert!(ipxe.contains("booting from the local disk"), "{ipxe}");
    assert!(!ipxe.contains("fleet.boot="), "{ipxe}");
    let shown = stdout(&controller.fleet(&["machine", "show", WEB]));
    assert!(shown.contains("call-back clock"), "{shown}");
    assert!(!shown.contains("heartbeat clock"), "{shown}");
    assert_eq!(status_of(store, WEB).await.0, Status::Deploying);
    // The run is over: its token opens nothing any more.
    assert_eq!(runner.get("deployment").await.0, 401);

    // The installed system calls back: a voided secret and a wrong one are refused, loudly.
    assert_eq!(runner.call_back(voided).await.0, 403);
    assert_eq!(runner.call_back(&"0".repeat(64)).await.0, 403);
    assert_eq!(status_of(store, WEB).await.0, Status::Deploying);
    assert_eq!(
        runner.call_back(secret).await,
        (200, "deployed\n".to_string())
    );
    let record = store.machine(WEB).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, Status::Deployed);
    assert_eq!(record.lifecycle.deployed_os.as_deref(), Some("noble"));
    // Once only.
    let (status, answer) = runner.call_back(secret).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("used again"), "{answer}");
    let security = events_of(store, WEB, "security").await;
    assert_eq!(security.len(), 3, "{security:?}");
    // Still booting its disk once deployed.
    assert!(runner.ipxe().await.contains("booting from the local disk"));
    // The secret is nowhere in the history.
    let filter = fleet::store::EventFilter {
        machine: Some(WEB.to_string()),
        ..fleet::store::EventFilter::default()
    };
    let history = serde_json::to_string(&store.events(&filter).await.unwrap()).unwrap();
    assert!(!history.contains(secret));
    finish(setup, backend).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_goes_the_whole_way_sqlite() {
    a_deployment_goes_the_whole_way(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_goes_the_whole_way_postgres() {
    a_deployment_goes_the_whole_way(Backend::Postgres).await;
}

async fn a_machine_commissioned_after_the_plan_is_resolved_at_deploy_time(backend: Backend) {
    let setup = start(backend, &RELAXED, &machine_toml(WEB, WEB_MAC, "deployed")).await;
    let (controller, store) = (&setup.controller, &setup.store);
    allocated_machine(store, WEB, WEB_MAC, 32 * GIB).await;
    // No stored deployment: the plan was made before commissioning. It holds 10.30.0.20.
    deploy(controller, WEB).await;
    let mut runner = Runner::new(&controller.url, WEB, WEB_MAC);
    let deployment = runner.install().await;
    assert_eq!(deployment["layout"]["kind"], "flat", "{deployment:#}");
    assert_eq!(deployment["layout"]["template"], "flat");
    assert_eq!(deployment["layout"]["disks"][0]["serial"], "S1");
    let netplan = deployment["network"]["netplan"].as_str().unwrap();
    assert!(netplan.contains("10.30.0.20"), "{netplan}");
    // Stored as the plan would have stored it: the next plan sees nothing to change.
    let stored = store.deployment(WEB).await.unwrap().expect("stored");
    assert_eq!(stored.origin, "fleet file");
    assert_eq!(stored.layout.as_ref().unwrap()["kind"], "flat");
    assert!(stored.layout.as_ref().unwrap()["disks"][0]
        .get("serial")
        .is_none());
    assert!(stored.network_digest.is_some());
    let secret = deployment["callback"]["secret"].as_str().unwrap();
    assert_eq!(runner.call_back(secret).await.0, 200);
    assert_eq!(status_of(store, WEB).await.0, Status::Deployed);
    finish(setup, backend).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_commissioned_after_the_plan_is_resolved_at_deploy_time_sqlite() {
    a_machine_commissioned_after_the_plan_is_resolved_at_deploy_time(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_commissioned_after_the_plan_is_resolved_at_deploy_time_postgres() {
    a_machine_commissioned_after_the_plan_is_resolved_at_deploy_time(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layout_that_does_not_fit_fails_the_deployment_at_once() {
    let setup = start(
        Backend::Sqlite,
        &RELAXED,
        &machine_toml(WEB, WEB_MAC, "deployed"),
    )
    .await;
    let (controller, store) = (&setup.controller, &setup.store);
    // 2 GiB: no room for a 3 GiB root.
    allocated_machine(store, WEB, WEB_MAC, 2 * GIB).await;
    deploy(controller, WEB).await;
    let mut runner = Runner::new(&controller.url, WEB, WEB_MAC);
    runner.boot().await;
    let (status, answer) = runner.get("deployment").await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer.starts_with("stop storage `flat`: "), "{answer}");
    let (status, reason) = status_of(store, WEB).await;
    assert_eq!(status, Status::FailedDeployment);
    assert!(reason.unwrap().starts_with("storage `flat`: "));
    finish(setup, Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_deployment_names_its_phase() {
    let setup = start(
        Backend::Sqlite,
        &RELAXED,
        &machine_toml(WEB, WEB_MAC, "deployed"),
    )
    .await;
    let (controller, store) = (&setup.controller, &setup.store);
    allocated_machine(store, WEB, WEB_MAC, 32 * GIB).await;
    deploy(controller, WEB).await;
    let mut runner = Runner::new(&controller.url, WEB, WEB_MAC);
    runner.boot().await;
    runner.deployment().await;
    runner.progress("write-image", 10, 100).await;
    let stderr_text =
        "fetching\nfleet-deploy: write-image: sha256 mismatch: expected 12ab, got 34cd\n";
    let verdict = runner
        .result(
            "fleet-deploy",
            "deploy",
            "failed",
            "laying out sda\n",
            stderr_text,
        )
        .await;
    assert!(verdict.starts_with("stop "), "{verdict}");
    let (status, reason) = status_of(store, WEB).await;
    assert_eq!(status, Status::FailedDeployment);
    assert_eq!(
        reason.as_deref(),
        Some("deployment failed in phase write-image: sha256 mismatch: expected 12ab, got 34cd")
    );
    // The whole output, by the script's short name.
    let shown = controller.fleet(&["machine", "show", WEB, "--script", "deploy"]);
    let (out, err) = (stdout(&shown), stderr(&shown));
    assert!(out.contains("laying out sda"), "{out}{err}");
    assert!(
        out.contains("sha256 mismatch") || err.contains("sha256 mismatch"),
        "{out}{err}"
    );
    assert!(err.contains("fleet-deploy failed"), "{err}");
    finish(setup, Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_installed_system_that_never_calls_back_fails_the_deployment() {
    let limits = Limits {
        heartbeat: "10m",
        callback: "3s",
    };
    let setup = start(
        Backend::Sqlite,
        &limits,
        &machine_toml(WEB, WEB_MAC, "deployed"),
    )
    .await;
    let (controller, store) = (&setup.controller, &setup.store);
    allocated_machine(store, WEB, WEB_MAC, 32 * GIB).await;
    deploy(controller, WEB).await;
    let mut runner = Runner::new(&controller.url, WEB, WEB_MAC);
    let deployment = runner.install().await;
    let reason = wait_for_status(
        store,
        WEB,
        Status::FailedDeployment,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        reason,
        "the installed system did not call back within 3 seconds"
    );
    // Too late now.
    let secret = deployment["callback"]["secret"].as_str().unwrap();
    assert_eq!(runner.call_back(secret).await.0, 409);
    finish(setup, Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_deployment_fails_naming_its_last_phase() {
    let limits = Limits {
        heartbeat: "3s",
        callback: "30m",
    };
    let setup = start(
        Backend::Sqlite,
        &limits,
        &machine_toml(WEB, WEB_MAC, "deployed"),
    )
    .await;
    let (controller, store) = (&setup.controller, &setup.store);
    allocated_machine(store, WEB, WEB_MAC, 32 * GIB).await;
    deploy(controller, WEB).await;
    let mut runner = Runner::new(&controller.url, WEB, WEB_MAC);
    runner.boot().await;
    runner.deployment().await;
    runner.progress("write-image", 40, 100).await;
    let reason = wait_for_status(
        store,
        WEB,
        Status::FailedDeployment,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        reason,
        "not heard from for 3 seconds (last progress: write-image 40/100 (40%))"
    );
    finish(setup, Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_of_a_deploying_machine_leaves_it_allocated() {
    let setup = start(
        Backend::Sqlite,
        &RELAXED,
        &machine_toml(WEB, WEB_MAC, "deployed"),
    )
    .await;
    let (controller, store) = (&setup.controller, &setup.store);
    allocated_machine(store, WEB, WEB_MAC, 32 * GIB).await;
    deploy(controller, WEB).await;
    let mut runner = Runner::new(&controller.url, WEB, WEB_MAC);
    runner.boot().await;
    let deployment = runner.deployment().await;
    let path = format!("/machines/{WEB}/actions/abort");
    let (code, answer) = controller.http().post(&path, json!({})).await;
    assert_eq!(code, 200, "{answer}");
    let record = store.machine(WEB).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, Status::Allocated);
    assert_eq!(record.lifecycle.owner.as_deref(), Some("ops"));
    assert!(
        answer["power_command"].get("off").is_some(),
        "aborting powers the machine off: {answer}"
    );
    // The run is over, and nothing is waiting for a call-back.
    assert_eq!(runner.get("instructions").await.0, 401);
    let secret = deployment["callback"]["secret"].as_str().unwrap();
    assert_eq!(runner.call_back(secret).await.0, 409);
    finish(setup, Backend::Sqlite).await;
}

// ---------------------------------------------------------------------------------------------
// Issue 14 item 6: `fleet apply` takes a new machine the whole way to deployed.

/// The built-in commissioning scripts' facts for one machine with one disk and one NIC.
fn fact_output(script: &str, mac: &str) -> String {
    match script {
        "00-fleet-arch" => "arch name=amd64 machine=x86_64 firmware=bios\n".into(),
        "10-fleet-cpu" => "cpu count=2 model=\"QEMU Virtual CPU\"\n".into(),
        "20-fleet-memory" => "memory kib=2097152\n".into(),
        "30-fleet-disks" => format!(
            "disk name=sda size={} bus=ata model=\"QEMU HARDDISK\" serial=S1 \
             id_path=/dev/disk/by-id/ata-QEMU_HARDDISK_S1 rotational=0 block_size=512\n",
            32 * GIB
        ),
        "40-fleet-interfaces" => {
            format!("interface name=eth0 mac={mac} link=up speed=1000 driver=e1000\n")
        }
        _ => String::new(),
    }
}

/// Plays the machine for whatever its status asks: a commissioning run (every script passes,
/// the built-in ones report the facts) or a deploying run (then the call-back).
async fn play_the_machine(runner: &mut Runner, store: &Store) -> Option<Status> {
    let status = status_of(store, &runner.name).await.0;
    match status {
        Status::Commissioning => {
            let instructions = runner.boot().await;
            for script in instructions
                .lines()
                .filter_map(|l| l.strip_prefix("script "))
            {
                let mut words = script.split(' ');
                let (name, kind) = (words.next().unwrap(), words.next().unwrap());
                let out = fact_output(name, &runner.mac);
                runner.result(name, kind, "passed", &out, "").await;
            }
            // A real commissioning takes minutes; this one would end between two of `fleet
            // apply`'s looks (every 200 ms, slower on a busy machine) and never show.
            tokio::time::sleep(Duration::from_secs(2)).await;
            runner.signal_ok().await;
        }
        Status::Deploying => {
            // A real machine netboots after the power cycle the deploy asked for, which ends
            // the boot its commissioning exchanged in; so does this one.
            wait_for_power_cycle(store, &runner.name).await;
            let instructions = runner.boot().await;
            assert_eq!(line(&instructions, "role"), "deploying");
            let deployment = runner.deployment().await;
            // Long enough for `fleet apply` (it asks every 200 ms) to show it.
            runner.progress("write-image", 40, 100).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            runner
                .result("fleet-deploy", "deploy", "passed", "wrote noble\n", "")
                .await;
            assert_eq!(runner.signal_ok().await, "after reboot\n");
            assert_eq!(deployment["layout"]["kind"], "flat", "{deployment:#}");
            assert_eq!(deployment["disks"][0]["serial"], "S1");
            assert!(runner.ipxe().await.contains("local disk"));
            let secret = deployment["callback"]["secret"].as_str().unwrap();
            assert_eq!(runner.call_back(secret).await.0, 200);
        }
        _ => return None,
    }
    Some(status)
}

async fn wait_for_power_cycle(store: &Store, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = store.machine(name).await.unwrap().unwrap();
        if record
            .boot_started
            .is_some_and(|at| at >= record.status_since)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} was not power-cycled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_takes_a_new_machine_the_whole_way_to_deployed() {
    let setup = start(
        Backend::Sqlite,
        &RELAXED,
        &machine_toml(WEB, WEB_MAC, "deployed"),
    )
    .await;
    let (controller, store) = (&setup.controller, &setup.store);
    let fleet = setup.fleet.to_str().unwrap();
    let planned = controller.fleet(&["plan", "-f", fleet]);
    let plan_text = stdout(&planned);
    assert!(
        plan_text.contains("+ web-1"),
        "{plan_text}{}",
        stderr(&planned)
    );
    let mut child = Command::new(crate::support::controller::FLEET)
        .arg("--state-dir")
        .arg(&controller.state_dir)
        .args(["apply", "-f", fleet, "--yes"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut runner = Runner::new(&controller.url, WEB, WEB_MAC);
    let mut played = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "fleet apply did not finish");
        if store.machine(WEB).await.unwrap().is_some() {
            if let Some(status) = play_the_machine(&mut runner, store).await {
                played.push(status);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = child.wait_with_output().unwrap();
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
    assert_eq!(played, [Status::Commissioning, Status::Deploying], "{out}");
    assert!(out.contains("1 done, 0 failed, 0 refused"), "{out}");
    // The progress display: each step, and how far the deployment got.
    assert!(err.contains("web-1: running (commission"), "{err}");
    assert!(
        err.contains("web-1: running (deploy, 2/3 steps): write-image 40/100 (40%)"),
        "{err}"
    );
    let record = store.machine(WEB).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, Status::Deployed);
    assert_eq!(record.lifecycle.deployed_os.as_deref(), Some("noble"));
    // The deployment resolved at deploy time is what the plan would store: nothing to do now.
    let again = controller.fleet(&["plan", "-f", fleet, "--detailed-exitcode"]);
    assert!(
        stdout(&again).contains("No changes."),
        "{}{}",
        stdout(&again),
        stderr(&again)
    );
    finish(setup, Backend::Sqlite).await;
}
