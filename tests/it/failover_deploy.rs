//! Issue 16's must-show "a machine enlisted (with its BMC) through controller B, B killed, the
//! new leader powers it over IPMI and deploys it with an image it never downloaded", on the
//! project's PostgreSQL, through real sockets only.
//!
//! Two `fleet serve` (B first, so B leads; then A) on one database, given one secret key, each
//! the boot server of its own loopback ports. The machine is a simulated one (`fleet::sim`)
//! whose BMC is OpenIPMI's `ipmi_sim`: the controllers reach it with ipmitool over lanplus, and
//! a watcher here turns the simulator's chassis into the machine's power (a chassis switched on
//! boots the machine; a machine that powers itself off is off on its chassis too). It enlists
//! through B reporting that BMC (its password sealed in the shared store) and B commissions it
//! over IPMI. Its root image is a URL on a mirror in this test: B downloaded it at start, A's
//! download is held by the mirror (a big image on a slow link). B is killed with SIGKILL; A
//! leads; `fleet apply` through A deploys the machine: A powers it over IPMI with the password
//! B's enlistment sealed, the machine boots from A (its DHCP relay now forwards to A), asks for
//! its deployment while A is still fetching the image — it waits, not fails — and once the
//! mirror lets A's download through, fetches the image from A, checks its SHA-256, calls back,
//! and is deployed.

use crate::sim::{enlisted_name, fleet_cli, setup, Setup};
use crate::support::controller::{stderr, stdout, TestController};
use crate::support::db::{drop_postgres_store, empty_postgres_database};
use crate::support::image_server::{read_request_head, sha256_of};
use crate::support::ipmi_sim::Bmc;
use fleet::model::Status;
use fleet::sim::{Faults, ReportedBmc, SimHardware, SimMachine};
use fleet::store::{EventFilter, SecretKey, Store};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The password the machine's BMC accepts and the machine reports (IPMI: at most 20 bytes).
const PASSWORD: &str = "F41lover-Bmc-pw-16";
/// The simulated machine's index (its MACs and serials).
const INDEX: u32 = 1616;
/// Generous: the machine is shared and loaded.
const LIMIT: Duration = Duration::from_secs(120);

/// A mirror serving one file at `/noble.tgz`; while its gate is closed a request waits (no
/// answer yet) until it opens. Every request's path is recorded as it arrives.
struct Mirror {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    gate: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl Mirror {
    async fn start(bytes: Vec<u8>) -> Mirror {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/noble.tgz", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (gate, opened) = tokio::sync::watch::channel(true);
        let seen = requests.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (bytes, seen, mut opened) = (bytes.clone(), seen.clone(), opened.clone());
                tokio::spawn(async move {
                    let Some(head) = read_request_head(&mut socket).await else {
                        return;
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    seen.lock().unwrap().push(path.clone());
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let (status, body): (&str, &[u8]) = if path == "/noble.tgz" {
                        ("200 OK", &bytes)
                    } else {
                        ("404 Not Found", b"")
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.write_all(body).await;
                });
            }
        });
        Mirror {
            url,
            requests,
            gate,
            server,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn hold(&self) {
        self.gate.send_replace(false);
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A gzip stream of incompressible-looking bytes (a root tarball's digests are computed over
/// what `gzip -dc` gives; nothing unpacks it here).
fn root_image() -> Vec<u8> {
    let mut state = 0x1616_f00d_u32;
    let raw: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    let mut gzip = std::process::Command::new("gzip")
        .arg("-nc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip (.ci/setup installs it)");
    let mut input = gzip.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut input, &raw));
    let output = gzip.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success());
    output.stdout
}

/// What the watcher did to the machine, and which machine (its network) it drives now.
struct Wiring {
    machine: Mutex<Arc<SimMachine>>,
    log: Mutex<Vec<String>>,
}

impl Wiring {
    fn machine(&self) -> Arc<SimMachine> {
        self.machine.lock().unwrap().clone()
    }

    fn note(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The chassis of `bmc` wired to the machine: every 100 ms the commands the chassis was given
/// and its power state are read; `set power 1`, `set reset 1` or the power coming on (the
/// second half of a cycle) power the machine on, which boots it; `set power 0` or `set shutdown
/// 1` power it off. A machine that powered itself off (after enlisting or commissioning) is off
/// on its chassis too, as a real BMC would report it. Nothing else turns the machine on: its
/// power goes through IPMI on the wire.
fn wire_chassis(bmc: Arc<Bmc>, wiring: Arc<Wiring>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = 0;
        let mut power = bmc.power();
        let mut was_on = false;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let machine = wiring.machine();
            let commands = bmc.commands();
            let new = commands[seen.min(commands.len())..].to_vec();
            seen = commands.len();
            let now = bmc.power();
            let mut commanded = false;
            for command in &new {
                match command.as_str() {
                    "set power 1" | "set reset 1" => {
                        if command == "set reset 1" {
                            machine.power_off();
                        }
                        machine.power_on();
                        commanded = true;
                    }
                    "set power 0" | "set shutdown 1" => {
                        machine.power_off();
                        commanded = true;
                    }
                    _ => {}
                }
                wiring.note(format!("chassis `{command}`: machine {}", machine.index));
            }
            if !commanded && now == "1" && power != "1" {
                // A cycle: the simulator powers the chassis back on by itself.
                machine.power_on();
                wiring.note(format!("chassis on again: machine {}", machine.index));
            }
            if !commanded && was_on && !machine.is_on() && now == "1" {
                bmc.set_power_by_the_machine(false);
                wiring.note(format!("machine {} powered itself off", machine.index));
            }
            power = bmc.power();
            was_on = machine.is_on();
        }
    })
}

fn key_file(directory: &Path) -> PathBuf {
    let path = directory.join("fleet.key");
    std::fs::write(&path, format!("{}\n", hex::encode([0x16u8; 32]))).unwrap();
    path
}

fn start(setup: &Setup, fleet_file: &Path, database: &str, key: &Path) -> TestController {
    let state = setup.directory.path().join("state");
    let mut controller = TestController::start_in(
        &state,
        &[
            "-f",
            fleet_file.to_str().unwrap(),
            "--database",
            database,
            "--secret-key-file",
            key.to_str().unwrap(),
        ],
    );
    controller.database = database.to_string();
    controller
}

/// The controller's id, written once it has registered (just after its API may come up).
fn controller_id(controller: &TestController) -> String {
    let file = controller.state_dir.join("controller-id");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !file.exists() {
        assert!(Instant::now() < deadline, "no {}", file.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(&file).unwrap().trim().to_string()
}

/// The state of `noble`'s root on `controller` (`fleet images --json`).
async fn root_state(controller: &TestController, token: &str) -> serde_json::Value {
    let output = fleet_cli(controller, &["--token", token, "images", "--json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("fleet images --json: {error}: {}", stderr(&output)));
    rows.into_iter()
        .find(|row| row["image"] == "noble" && row["file"] == "root")
        .unwrap_or_else(|| panic!("no row for noble's root"))
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < LIMIT, "not {what} after {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_of(store: &Store, name: &str) -> Option<Status> {
    let record = store.machine(name).await.unwrap()?;
    Some(record.lifecycle.status)
}

async fn events_of(store: &Store, name: &str) -> Vec<fleet::model::records::Event> {
    let filter = EventFilter {
        machine: Some(name.to_string()),
        ..EventFilter::default()
    };
    let mut events = store.events(&filter).await.unwrap();
    events.sort_by_key(|event| event.id);
    events
}

/// The fleet file's tables for the machine (its power as `fleet adopt` writes an enlisted
/// machine's: the password sealed in the store) with `extra` lines.
fn machine_toml(machine: &SimMachine, bmc: &Bmc, extra: &str) -> String {
    let macs: Vec<String> = machine
        .hardware
        .macs()
        .iter()
        .map(|mac| format!("\"{mac}\""))
        .collect();
    format!(
        "[[machine]]\nname = \"{}\"\nmacs = [{}]\n\
         power = {{ type = \"ipmi\", address = \"{}\", user = \"admin\", password = {{ store = \"bmc-password\" }} }}\n{extra}\n",
        enlisted_name(machine),
        macs.join(", "),
        bmc.address()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_machine_enlisted_through_b_is_deployed_by_the_new_leader_with_an_image_it_never_had() {
    let started = Instant::now();
    let database = empty_postgres_database().await;
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path());
    let bmc = Arc::new(Bmc::start(PASSWORD));
    let image = root_image();
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&image))
    };
    let mirror = Mirror::start(image.clone()).await;
    let images = format!(
        "[images.noble]\nroot = {{ url = \"{}\", sha256 = \"{sha256}\", format = \"tgz\" }}\n",
        mirror.url
    );
    let (b_setup, a_setup) = (setup(), setup());

    // B first: it makes the database and its operator token, leads, downloads the image.
    let mut b = start(&b_setup, &b_setup.fleet_file(&images), &database, &key);
    let token = b.token.clone();
    let b_id = controller_id(&b);
    let store = Store::open(&database)
        .await
        .unwrap()
        .with_secret_key(SecretKey::read_file(&key).unwrap());
    wait_until("B leading", async || {
        let leader = store.leader().await.unwrap();
        leader.is_some_and(|term| term.controller_id == b_id)
    })
    .await;
    wait_until("the image ready on B", async || {
        root_state(&b, &token).await["state"] == "ready"
    })
    .await;
    assert_eq!(mirror.requests(), ["/noble.tgz"], "B downloaded it");

    // Then A, whose download the mirror holds.
    mirror.hold();
    let mut a = start(&a_setup, &a_setup.fleet_file(&images), &database, &key);
    a.token = token.clone();
    let a_id = controller_id(&a);
    wait_until("A asking the mirror", async || mirror.requests().len() == 2).await;
    assert_eq!(root_state(&a, &token).await["state"], "downloading");
    assert_eq!(
        store.leader().await.unwrap().unwrap().controller_id,
        b_id,
        "B still leads"
    );

    // The machine: its DHCP relay forwards to B's boot services (later to A's); it reports its
    // BMC when it enlists.
    let hardware = SimHardware::for_index(INDEX);
    let reported = ReportedBmc {
        power_type: "ipmi".into(),
        address: bmc.address(),
        user: "admin".into(),
        password: PASSWORD.into(),
    };
    let on_b = Arc::new(
        SimMachine::new(INDEX, hardware.clone(), Faults::default(), b_setup.network)
            .with_reported_bmc(reported),
    );
    let on_a = Arc::new(SimMachine::new(
        INDEX,
        hardware,
        Faults::default(),
        a_setup.network,
    ));
    let name = enlisted_name(&on_b);
    let wiring = Arc::new(Wiring {
        machine: Mutex::new(on_b.clone()),
        log: Mutex::default(),
    });
    let watcher = wire_chassis(bmc.clone(), wiring.clone());

    // Its power button: it boots, enlists through B with its BMC, powers itself off.
    on_b.power_on();
    wait_until("enlisted", async || {
        status_of(&store, &name).await == Some(Status::New) && !on_b.is_on()
    })
    .await;
    assert!(bmc.commands().is_empty(), "enlisted by its power button");
    let record = store.machine(&name).await.unwrap().unwrap();
    assert_eq!(record.power_type, "ipmi");
    assert_eq!(record.power_params["address"], bmc.address().as_str());
    assert_eq!(
        record.power_params["password"],
        serde_json::json!({"store": "bmc-password"})
    );
    let sealed = store
        .secret(record.id, &name, "bmc-password")
        .await
        .unwrap();
    assert_eq!(sealed.expose(), PASSWORD, "sealed in the shared store");
    assert!(
        !b.state_dir.join("secrets").exists(),
        "not in B's directory"
    );
    let enlisted_by = events_of(&store, &name).await;
    assert!(
        enlisted_by.iter().any(|event| event
            .reason
            .as_deref()
            .is_some_and(|reason| reason.contains("kept in the store"))),
        "{enlisted_by:#?}"
    );

    // B commissions and tests it to ready, powering it over IPMI.
    let ready_file = b_setup.fleet_file(&format!(
        "{images}\n{}",
        machine_toml(&on_b, &bmc, "state = \"ready\"")
    ));
    let applied = fleet_cli(&b, &["apply", "-f", ready_file.to_str().unwrap(), "--yes"]).await;
    assert!(
        applied.status.success(),
        "{}\n{}",
        stdout(&applied),
        stderr(&applied)
    );
    wait_until("ready", async || {
        status_of(&store, &name).await == Some(Status::Ready)
    })
    .await;
    wait_until("off after commissioning", async || {
        !on_b.is_on() && bmc.power() == "0"
    })
    .await;
    let commissioned_commands = bmc.commands().len();
    assert!(
        bmc.commands().contains(&"set power 1".to_string()),
        "B powered it over IPMI: {:?}",
        bmc.commands()
    );

    // A has never had the image: nothing in its cache.
    let a_cache = a.state_dir.join("images");
    let cached = a_cache.join(format!("{sha256}.tgz"));
    assert!(!cached.exists(), "A has the image already");

    // B killed: A leads.
    let killed_at = Instant::now();
    b.kill();
    wait_until("A leading", async || {
        let leader = store.leader().await.unwrap();
        leader.is_some_and(|term| term.controller_id == a_id)
    })
    .await;
    let took_over = killed_at.elapsed();
    let a_holder = store.leader().await.unwrap().expect("A leads").holder;
    // From now on the machine's DHCP relay forwards to A.
    *wiring.machine.lock().unwrap() = on_a.clone();
    assert!(!cached.exists(), "A has the image already");
    assert_eq!(root_state(&a, &token).await["state"], "downloading");

    // `fleet apply` through A deploys it.
    let deployed_file = a_setup.fleet_file(&format!(
        "{images}\n{}",
        machine_toml(
            &on_a,
            &bmc,
            "state = \"deployed\"\nowner = \"ops\"\nimage = \"noble\""
        )
    ));
    let apply = {
        let a_state = a.state_dir.clone();
        let a_api = a.api_url.clone();
        let token = token.clone();
        let file = deployed_file.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(crate::support::controller::FLEET)
                .arg("--state-dir")
                .arg(&a_state)
                .arg("--server")
                .arg(&a_api)
                .args(["--token", &token, "apply", "-f"])
                .arg(&file)
                .arg("--yes")
                .env_remove("FLEET_SERVER")
                .env_remove("FLEET_TOKEN")
                .env("XDG_CONFIG_HOME", a_state.join("client-config"))
                .env("NO_COLOR", "1")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("fleet runs")
        })
    };
    // The machine boots from A and asks for its deployment while A still fetches the image: it
    // waits. Then the mirror lets A's download through.
    wait_until("the deployment waiting for its image", async || {
        events_of(&store, &name).await.iter().any(|event| {
            event.kind == "deployment"
                && event
                    .reason
                    .as_deref()
                    .is_some_and(|reason| reason.contains("waits for its image"))
        })
    })
    .await;
    assert!(!cached.exists(), "A has the image already");
    mirror.open();
    let applied = apply.await.unwrap();
    let (out, err) = (stdout(&applied), stderr(&applied));
    assert!(applied.status.success(), "{out}\n{err}");
    let record = store.machine(&name).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.status, Status::Deployed, "{out}\n{err}");
    assert_eq!(record.lifecycle.deployed_os.as_deref(), Some("noble"));
    assert!(on_a.called_back(), "{:?}", on_a.notes());
    assert!(on_a.is_on(), "the installed system runs");

    // A powered it over IPMI, with the password B's enlistment sealed.
    let after_kill = bmc.commands()[commissioned_commands..].to_vec();
    assert!(
        after_kill
            .iter()
            .any(|command| command == "set power 1" || command == "set power 0"),
        "A's power command reached the chassis: {after_kill:?}"
    );
    assert_eq!(bmc.power(), "1");

    // A's copy: fetched from the URL (B is gone), its digest checked, in A's cache.
    assert_eq!(mirror.requests(), ["/noble.tgz", "/noble.tgz"]);
    assert_eq!(sha256_of(&cached), sha256);
    let manifest = std::fs::read_to_string(a_cache.join(format!("{sha256}.tgz.json"))).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest["source"], mirror.url.as_str(), "{manifest}");
    assert_eq!(root_state(&a, &token).await["state"], "ready");
    // The machine checked what it fetched from A.
    let results = store.script_results(record.id).await.unwrap();
    let deploy = results
        .iter()
        .find(|result| result.name == "fleet-deploy")
        .expect("the deploy script ran");
    assert_eq!(deploy.status, "passed");
    assert!(
        deploy
            .stdout
            .contains(&format!("sha256 {sha256} of {} bytes matches", image.len())),
        "{deploy:?}"
    );
    assert!(!on_a.leased().is_empty(), "it booted through A's DHCP");

    // The events: the deploy step ran once, carried out by A's term, and the power-on after it
    // started is A's.
    let events = events_of(&store, &name).await;
    let steps: Vec<&fleet::model::records::Event> = events
        .iter()
        .filter(|event| event.kind == "apply")
        .filter(|event| {
            event
                .action
                .as_deref()
                .is_some_and(|action| action.starts_with("deploy"))
        })
        .collect();
    let started_count = steps
        .iter()
        .filter(|event| event.action.as_deref() == Some("deploy started"))
        .count();
    assert_eq!(started_count, 1, "{steps:#?}");
    assert!(
        steps
            .iter()
            .all(|event| event.detail["by"] == a_holder.as_str()),
        "{steps:#?}"
    );
    let deploy_started = steps[0];
    let actions: Vec<_> = events
        .iter()
        .filter(|event| event.kind == "action" && event.action.as_deref() == Some("deploy"))
        .collect();
    assert_eq!(actions.len(), 1, "{actions:#?}");
    // The power command the deploy decided: named by the apply whose steps A's term ran, after
    // B was dead (its chassis commands above came after the kill).
    let powered: Vec<_> = events
        .iter()
        .filter(|event| event.kind == "power" && event.id > deploy_started.id)
        .collect();
    assert_eq!(powered.len(), 1, "{events:#?}");
    let power = powered[0];
    assert_eq!(power.action.as_deref(), Some("deploy"), "{power:#?}");
    assert_eq!(power.actor, deploy_started.actor, "{power:#?}");
    assert!(
        power
            .actor
            .contains(deploy_started.detail["apply"].as_str().unwrap()),
        "{power:#?}"
    );
    assert!(
        ["on", "cycle"].contains(&power.detail["command"].as_str().unwrap_or_default()),
        "{power:#?}"
    );
    eprintln!(
        "failover deploy: B killed, A led {:.1} s later; A's power command: {} ({}); \
         chassis after the kill: {:?}; wiring: {:?}; whole test {:.1} s",
        took_over.as_secs_f64(),
        power.detail["command"],
        power.reason.as_deref().unwrap_or_default(),
        after_kill,
        wiring.log(),
        started.elapsed().as_secs_f64()
    );
    watcher.abort();
    drop(a);
    drop_postgres_store(store).await;
}
