//! Simulated machines (`fleet::sim`) against a real controller (`fleet serve`), through its real
//! sockets only: DHCP relayed to `[controller] dhcp_listen`, TFTP, the boot HTTP routes and the
//! machine API; their BMCs answer the `webhook` power driver over HTTP. No root, loopback only.

use crate::support::controller::{stderr, stdout, TestController};
use fleet::model::Status;
use fleet::sim::{Faults, SimFleet, SimNetwork, SimOptions};
use fleet::store::Store;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A port of 127.0.0.1 free a moment ago (the controller binds it next).
fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

pub(crate) struct Setup {
    pub(crate) directory: tempfile::TempDir,
    pub(crate) network: SimNetwork,
}

/// A directory with loaders, an ephemeral image, and the controller's boot addresses.
pub(crate) fn setup() -> Setup {
    let directory = tempfile::tempdir().unwrap();
    let loaders = directory.path().join("loaders");
    std::fs::create_dir(&loaders).unwrap();
    // Several TFTP blocks each, so the transfer is more than one packet.
    std::fs::write(loaders.join("ipxe.efi"), vec![0x4d; 5000]).unwrap();
    std::fs::write(loaders.join("undionly.kpxe"), vec![0x55; 3000]).unwrap();
    std::fs::write(directory.path().join("vmlinuz"), vec![1u8; 4096]).unwrap();
    std::fs::write(directory.path().join("initrd"), vec![2u8; 4096]).unwrap();
    let network = SimNetwork {
        dhcp: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
        tftp: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
        relay: Ipv4Addr::LOCALHOST,
    };
    Setup { directory, network }
}

impl Setup {
    /// The fleet file: the boot services on loopback, a subnet the relay address is in (its
    /// pool on 127.77.0.0/24, so each machine has a loopback address of its own), short limits,
    /// and `machines`.
    pub(crate) fn fleet_file(&self, machines: &str) -> PathBuf {
        let dir = self.directory.path();
        let path = dir.join("fleet.toml");
        let text = format!(
            r#"[controller]
ephemeral_image = "ephemeral"
dhcp_listen = "{dhcp}"
tftp_listen = "{tftp}"
loader_dir = "{loaders}"

[subnets.sim]
cidr = "127.0.0.0/8"
dynamic_range = {{ start = "127.77.0.10", end = "127.77.0.250" }}

[images.ephemeral]
kernel = {{ path = "{dir}/vmlinuz" }}
initrd = {{ path = "{dir}/initrd" }}

[policy]
power_poll_seconds = 0
parallelism = 200

[policy.timeouts]
boot = "45s"
heartbeat = "6s"

{machines}"#,
            dhcp = self.network.dhcp,
            tftp = self.network.tftp,
            loaders = dir.join("loaders").display(),
            dir = dir.display(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn start_controller(&self, fleet_file: &Path) -> TestController {
        let state = self.directory.path().join("state");
        TestController::start_in(&state, &["-f", fleet_file.to_str().unwrap()])
    }

    async fn sims(&self, first_index: u32, count: u32, faults: HashMap<u32, Faults>) -> SimFleet {
        SimFleet::start(SimOptions {
            count,
            first_index,
            network: self.network,
            bmc_listen: "127.0.0.1:0".parse().unwrap(),
            faults,
        })
        .await
        .unwrap()
    }
}

/// The name enlistment gives a machine: `enlisted-` and its boot MAC's hex.
pub(crate) fn enlisted_name(machine: &fleet::sim::SimMachine) -> String {
    format!(
        "enlisted-{}",
        machine.hardware.boot_mac().to_string().replace(':', "")
    )
}

/// Runs `fleet ARGS` against the controller off the runtime's threads (the simulated machines
/// go on meanwhile).
pub(crate) async fn fleet_cli(controller: &TestController, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let (state_dir, api_url) = (controller.state_dir.clone(), controller.api_url.clone());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::support::controller::FLEET)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--server")
            .arg(&api_url)
            .args(&args)
            .env_remove("FLEET_SERVER")
            .env_remove("FLEET_TOKEN")
            .env_remove("FLEET_TLS_FINGERPRINT")
            .env("XDG_CONFIG_HOME", state_dir.join("client-config"))
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("fleet runs")
    })
    .await
    .unwrap()
}

/// `fleet apply -f FLEET_FILE --yes` against the controller (see [`fleet_cli`]).
async fn fleet_apply(controller: &TestController, fleet_file: &Path) -> std::process::Output {
    fleet_cli(
        controller,
        &["apply", "-f", fleet_file.to_str().unwrap(), "--yes"],
    )
    .await
}

async fn status_of(store: &Store, name: &str) -> Option<(Status, Option<String>)> {
    let record = store.machine(name).await.unwrap()?;
    Some((record.lifecycle.status, record.status_reason))
}

/// Waits until `name` is in `status`, within `limit`; its reason.
async fn wait_for_status(
    store: &Store,
    sims: &SimFleet,
    name: &str,
    status: Status,
    limit: Duration,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let now = status_of(store, name).await;
        if let Some((current, reason)) = &now {
            if *current == status {
                return reason.clone();
            }
        }
        if Instant::now() > deadline {
            let notes: Vec<_> = sims.machines.iter().map(|m| (m.index, m.notes())).collect();
            panic!("{name} is {now:?}, not {status} after {limit:?}; the machines did: {notes:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Machines power on undeclared and enlist themselves; adopted with their BMCs in the fleet
/// file, `fleet apply` commissions and tests them to ready; the controller records exactly the
/// simulated hardware.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_machines_enlist_then_commission_and_test_to_ready() {
    let setup = setup();
    let fleet_file = setup.fleet_file("");
    let controller = setup.start_controller(&fleet_file);
    let store = controller.store().await;
    let sims = setup.sims(100, 3, HashMap::new()).await;
    let started = Instant::now();
    for machine in &sims.machines {
        machine.power_on();
    }
    for machine in &sims.machines {
        let name = enlisted_name(machine);
        wait_for_status(&store, &sims, &name, Status::New, Duration::from_secs(20)).await;
    }
    // Enlistment ends with `after poweroff`: each machine powers itself off.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sims.machines.iter().any(|machine| machine.is_on()) {
        assert!(
            Instant::now() < deadline,
            "the machines stayed on after enlisting"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let enlisted = started.elapsed();
    // Adopted: their BMCs in the fleet file, wanted ready.
    let machines: String = sims
        .machines
        .iter()
        .map(|machine| sims.machine_toml(machine, &enlisted_name(machine), "state = \"ready\""))
        .collect();
    let fleet_file = setup.fleet_file(&machines);
    let applied = fleet_apply(&controller, &fleet_file).await;
    assert!(
        applied.status.success(),
        "{}\n{}",
        stdout(&applied),
        stderr(&applied)
    );
    for machine in &sims.machines {
        let name = enlisted_name(machine);
        wait_for_status(&store, &sims, &name, Status::Ready, Duration::from_secs(30)).await;
        let record = store.machine(&name).await.unwrap().unwrap();
        let hardware = &machine.hardware;
        assert_eq!(record.hardware.cpus, Some(i64::from(hardware.cpus)));
        assert_eq!(record.hardware.memory_mib, Some(hardware.memory_kib / 1024));
        assert_eq!(
            fleet::sim::recorded_disks(&record.disks),
            hardware.disk_identities(),
            "{name}"
        );
        let interfaces: Vec<_> = record
            .interfaces
            .iter()
            .map(|interface| (interface.name.clone(), interface.mac))
            .collect();
        let simulated: Vec<_> = hardware
            .nics
            .iter()
            .map(|nic| (nic.name.clone(), nic.mac))
            .collect();
        assert_eq!(interfaces, simulated, "{name}");
        // It went through testing on the way (the built-in tests ran).
        let results = store.script_results(record.id).await.unwrap();
        assert!(
            results
                .iter()
                .any(|result| result.name == "fleet-disk-read" && result.status == "passed"),
            "{results:?}"
        );
    }
    eprintln!(
        "3 simulated machines: enlisted in {:.1} s, ready {:.1} s after the first power-on",
        enlisted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Faults end in the statuses the life-cycle prescribes, with their reasons: a failing test →
/// failed_testing naming it; a machine gone silent → failed_commissioning by the heartbeat
/// clock; a BMC that refuses → failed_commissioning naming the power driver; a lost DHCP reply
/// only costs a retransmission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_give_the_statuses_and_reasons_of_the_life_cycle() {
    let setup = setup();
    let mut faults: HashMap<u32, Faults> = HashMap::new();
    for (index, fault) in [
        (200, "lost-dhcp=2"),
        (200, "slow-disk=2"),
        (201, "fail-script=fleet-disk-read"),
        (202, "silent"),
        (203, "bmc-refuses"),
        (204, "bmc-hangs"),
    ] {
        faults.entry(index).or_default().add(fault).unwrap();
    }
    // The machines are declared before the controller starts: placeholders to know the BMC URL.
    let sims = setup.sims(200, 5, faults).await;
    let names = ["healthy", "bad-test", "silent", "bad-bmc", "hung-bmc"];
    let machines: String = sims
        .machines
        .iter()
        .zip(names)
        .map(|(machine, name)| sims.machine_toml(machine, name, "state = \"ready\""))
        .collect();
    let fleet_file = setup.fleet_file(&machines);
    let controller = setup.start_controller(&fleet_file);
    let store = controller.store().await;
    let applied = fleet_apply(&controller, &fleet_file).await;
    let shown = format!("{}\n{}", stdout(&applied), stderr(&applied));
    assert!(
        !applied.status.success(),
        "failures make apply fail:\n{shown}"
    );
    let limit = Duration::from_secs(30);
    // Lost DHCP replies and a slow disk only cost time.
    wait_for_status(&store, &sims, "healthy", Status::Ready, limit).await;
    let healthy = store.machine("healthy").await.unwrap().unwrap();
    let results = store.script_results(healthy.id).await.unwrap();
    let disk_read = results
        .iter()
        .find(|result| result.name == "fleet-disk-read")
        .expect("the disk test ran");
    assert!(
        disk_read.runtime_ms.is_some_and(|ms| ms >= 2000),
        "{disk_read:?}"
    );
    let reason = wait_for_status(&store, &sims, "bad-test", Status::FailedTesting, limit).await;
    assert!(
        reason.as_deref().is_some_and(
            |reason| reason.contains("fleet-disk-read") && reason.contains("simulated failure")
        ),
        "{reason:?}"
    );
    let reason = wait_for_status(&store, &sims, "silent", Status::FailedCommissioning, limit).await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|reason| reason.contains("not heard from")),
        "{reason:?}"
    );
    // The watch powered the silent machine off through its BMC.
    let silent = sims.machine(202).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while silent.is_on() {
        assert!(Instant::now() < deadline, "the silent machine is still on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reason =
        wait_for_status(&store, &sims, "bad-bmc", Status::FailedCommissioning, limit).await;
    assert!(
        reason
            .as_deref()
            .is_some_and(|reason| reason.contains("webhook")),
        "{reason:?}"
    );
    assert!(
        !sims.machine(203).unwrap().is_on(),
        "a refusing BMC powered nothing"
    );
    assert!(
        shown.contains("bad-test") && shown.contains("silent"),
        "{shown}"
    );
}

/// Rescue mode (the rescue script's result, heartbeats while it waits), exit rescue, and a
/// release with a quick erase (the erase script's result per simulated disk), powered through
/// the simulated BMC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescue_exit_rescue_and_a_release_with_erase_behind_a_slow_bmc() {
    let setup = setup();
    // After its first boot its BMC answers each command 3 s after carrying it out: the rescue
    // and erase boots fetch their iPXE script (after a 1 s self test) while the controller still
    // waits for the answer, and each must be a boot of its own, not the previous one, whose
    // exchange was spent.
    let mut slow_bmc = Faults::default();
    slow_bmc.add("bmc-answers-late=3").unwrap();
    let sims = setup.sims(300, 1, HashMap::from([(300, slow_bmc)])).await;
    let machine = &sims.machines[0];
    let machines = sims.machine_toml(machine, "node", "state = \"ready\"");
    let fleet_file = setup.fleet_file(&machines);
    let controller = setup.start_controller(&fleet_file);
    let store = controller.store().await;
    let applied = fleet_apply(&controller, &fleet_file).await;
    assert!(applied.status.success(), "{}", stderr(&applied));
    let limit = Duration::from_secs(20);
    wait_for_status(&store, &sims, "node", Status::Ready, limit).await;

    let rescue = fleet_cli(&controller, &["machine", "rescue", "node"]).await;
    assert!(rescue.status.success(), "{}", stderr(&rescue));
    wait_for_status(&store, &sims, "node", Status::RescueMode, limit).await;
    assert!(machine.is_on(), "a machine in rescue mode waits, powered");
    let shown = fleet_cli(&controller, &["machine", "show", "node", "--json"]).await;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["rescue"]["ssh"], false, "{}", shown["rescue"]);
    let exit = fleet_cli(&controller, &["machine", "exit-rescue", "node"]).await;
    assert!(exit.status.success(), "{}", stderr(&exit));
    wait_for_status(&store, &sims, "node", Status::Ready, limit).await;
    let deadline = Instant::now() + limit;
    while machine.is_on() {
        assert!(Instant::now() < deadline, "still on after exit-rescue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    controller.make_deployed(&store, "node").await;
    let body = serde_json::json!({"options": {"erase": "quick"}});
    let (code, answer) = controller
        .http()
        .post("/machines/node/actions/release", body)
        .await;
    assert_eq!(code, 200, "{answer}");
    wait_for_status(&store, &sims, "node", Status::Ready, limit).await;
    // Each of its three boots made its own exchange at the first try (the simulator boots
    // again after a refused one, which would hide the refusal but for its notes).
    let failed_boots: Vec<String> = machine
        .notes()
        .into_iter()
        .filter(|note| note.contains("boot failed"))
        .collect();
    assert!(failed_boots.is_empty(), "{failed_boots:#?}");
    let record = store.machine("node").await.unwrap().unwrap();
    assert_eq!(record.lifecycle.owner, None);
    let results = store.script_results(record.id).await.unwrap();
    let erase = results
        .iter()
        .find(|result| result.name == "fleet-erase-quick")
        .expect("the erase ran");
    assert_eq!(erase.status, "passed");
    assert_eq!(erase.results["mode"], "quick");
    let erased: Vec<&str> = erase.results["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|disk| disk["name"].as_str().unwrap())
        .collect();
    let simulated: Vec<&str> = machine
        .hardware
        .disks
        .iter()
        .map(|disk| disk.name.as_str())
        .collect();
    assert_eq!(erased, simulated);
}

/// `fleet demo`: a controller and simulated machines on loopback, without root, ends with the
/// table of what happened to each machine — deployed ones (one a clone), one failed with its
/// reason, two that enlisted on their own.
#[test]
fn fleet_demo_takes_a_small_fleet_through_the_life_cycle_and_reports_each_machine() {
    let started = Instant::now();
    let output = std::process::Command::new(crate::support::controller::FLEET)
        .args(["demo", "--machines", "6"])
        .env("NO_COLOR", "1")
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("fleet-demo-test-config"),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .expect("fleet runs");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "{out}\n{err}");
    let table = out
        .split("== what happened to each machine")
        .nth(1)
        .unwrap_or_else(|| panic!("no table:\n{out}"));
    let row = |name: &str| -> String {
        table
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .to_string()
    };
    let web = row("web-01 ");
    assert!(
        web.contains("deployed") && web.contains("commission → test → deploy"),
        "{web}"
    );
    let clone = row("web-04 ");
    assert!(
        clone.contains("deployed") && clone.contains("clone → deploy (clone of web-01)"),
        "{clone}"
    );
    assert!(row("db-01 ").contains("deployed"), "{table}");
    let failed = row("spare-01 ");
    assert!(
        failed.contains("failed_testing")
            && failed.contains("test fleet-disk-read failed (exit 3)"),
        "{failed}"
    );
    let enlisted: Vec<&str> = table
        .lines()
        .filter(|line| line.starts_with("enlisted-"))
        .collect();
    assert_eq!(enlisted.len(), 2, "{table}");
    assert!(
        enlisted
            .iter()
            .all(|line| line.contains(" new ") && line.contains("enlist")),
        "{table}"
    );
    assert!(!err.contains("closed pool"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

/// 200 simulated machines, 10 % of them given a fault (a failing test, silence, a refusing
/// BMC, spread over the fleet), commissioned by one `fleet apply`: each ends in the status the
/// life-cycle prescribes, with its reason, and every other machine is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_machines_with_ten_percent_faults_end_where_the_life_cycle_says() {
    const COUNT: u32 = 200;
    let setup = setup();
    let kinds = ["fail-script=fleet-memtest", "silent", "bmc-refuses"];
    let faulted = fleet::sim::share_of_fleet(COUNT, 10);
    assert_eq!(faulted.len(), 20);
    let mut faults: HashMap<u32, Faults> = HashMap::new();
    for (at, offset) in faulted.iter().enumerate() {
        let fault = kinds[at % kinds.len()];
        faults.entry(1000 + offset).or_default().add(fault).unwrap();
    }
    let sims = setup.sims(1000, COUNT, faults).await;
    let name = |machine: &fleet::sim::SimMachine| format!("m-{:03}", machine.index - 1000);
    let machines: String = sims
        .machines
        .iter()
        .map(|machine| sims.machine_toml(machine, &name(machine), "state = \"ready\""))
        .collect();
    let fleet_file = setup.fleet_file(&machines);
    let controller = setup.start_controller(&fleet_file);
    let store = controller.store().await;
    let started = Instant::now();
    let applied = fleet_apply(&controller, &fleet_file).await;
    assert!(!applied.status.success(), "the faults fail the apply");
    let applied_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    for machine in &sims.machines {
        let name = name(machine);
        let faults = &machine.faults;
        let (expected, words) = if faults.failing_script.is_some() {
            (Status::FailedTesting, "fleet-memtest")
        } else if faults.silent {
            (Status::FailedCommissioning, "not heard from")
        } else if faults.bmc_refuses {
            (Status::FailedCommissioning, "webhook")
        } else {
            (Status::Ready, "")
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let reason = wait_for_status(&store, &sims, &name, expected, left).await;
        assert!(
            reason.as_deref().unwrap_or_default().contains(words),
            "{name} ({}): {reason:?}",
            faults.describe()
        );
    }
    let summaries = store.machine_summaries().await.unwrap();
    let ready = summaries
        .iter()
        .filter(|m| m.status == Status::Ready)
        .count();
    assert_eq!(ready, 180, "every machine without a fault is ready");
    eprintln!(
        "{COUNT} simulated machines, 20 faulted: apply ended after {:.1} s, all settled after {:.1} s",
        applied_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// `fleet sim --power-on` against a running `fleet serve`: its machines enlist through the
/// controller's sockets, and it prints their `[[machine]]` tables under the enlisted names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_sim_machines_enlist_with_a_running_controller() {
    let setup = setup();
    let fleet_file = setup.fleet_file("");
    let controller = setup.start_controller(&fleet_file);
    let store = controller.store().await;
    let output = setup.directory.path().join("sim.out");
    let mut sim = std::process::Command::new(crate::support::controller::FLEET)
        .args([
            "sim",
            "--machines",
            "2",
            "--first-index",
            "400",
            "--power-on",
        ])
        .arg("--dhcp")
        .arg(setup.network.dhcp.to_string())
        .arg("--tftp")
        .arg(setup.network.tftp.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fleet sim starts");
    let names = ["enlisted-025e00000190", "enlisted-025e00000191"];
    let deadline = Instant::now() + Duration::from_secs(20);
    for name in names {
        while status_of(&store, name).await.map(|(status, _)| status) != Some(Status::New) {
            assert!(Instant::now() < deadline, "{name} did not enlist");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = sim.kill();
    let _ = sim.wait();
    let printed = std::fs::read_to_string(&output).unwrap();
    for name in names {
        assert!(printed.contains(&format!("name = \"{name}\"")), "{printed}");
    }
    assert!(printed.contains("type = \"webhook\""), "{printed}");
}

/// A controller killed with SIGKILL while it hands out leases forgets none it acknowledged: an
/// ACK leaves only once its lease is committed (issue 16). 200 PXE clients ask through the
/// relay, one every 10 ms; the controller is killed as soon as 100 are acknowledged, with others
/// in flight; every (MAC, address) any client was acknowledged is in the store afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_killed_while_acking_keeps_every_lease_it_acknowledged() {
    use fleet::sim::{dhcp_lease, sim_mac, DhcpClient};
    use std::sync::{Arc, Mutex};
    const CLIENTS: u32 = 200;
    const KILL_AFTER: usize = 100;
    let setup = setup();
    let fleet_file = setup.fleet_file("");
    let mut controller = setup.start_controller(&fleet_file);
    let (server, relay) = (setup.network.dhcp, setup.network.relay);
    // The DHCP socket answers (it may come up just after the operator API).
    let first = sim_mac(900, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first_ip = loop {
        match dhcp_lease(server, relay, first, DhcpClient::PxeRom, &mut 0).await {
            Ok(answer) => break answer.ip,
            Err(error) => assert!(Instant::now() < deadline, "no DHCP answer: {error}"),
        }
    };
    let acked = Arc::new(Mutex::new(vec![(first, first_ip)]));
    let enough = Arc::new(tokio::sync::Notify::new());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let (acked, enough) = (acked.clone(), enough.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * u64::from(index))).await;
                let mac = sim_mac(1000 + index, 0);
                if let Ok(answer) = dhcp_lease(server, relay, mac, DhcpClient::PxeRom, &mut 0).await
                {
                    let mut acked = acked.lock().unwrap();
                    acked.push((mac, answer.ip));
                    if acked.len() > KILL_AFTER {
                        enough.notify_one();
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), enough.notified())
        .await
        .expect("100 clients acknowledged within 60 s");
    controller.kill();
    // Whatever a client received was sent before the kill; give replies in flight a moment to
    // arrive, then stop the clients still waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    clients.iter().for_each(|client| client.abort());
    let acked = acked.lock().unwrap().clone();
    let store = controller.store().await;
    let stored: HashMap<_, _> = store
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|lease| (lease.mac, lease.ip))
        .collect();
    let forgotten: Vec<_> = acked
        .iter()
        .filter(|(mac, ip)| stored.get(mac) != Some(ip))
        .collect();
    assert!(
        forgotten.is_empty(),
        "{} of {} acknowledged leases are not in the store after the kill: {forgotten:?}",
        forgotten.len(),
        acked.len()
    );
    assert!(
        acked.len() <= CLIENTS as usize - 20,
        "the kill came after nearly every client was acknowledged ({}): it proves nothing",
        acked.len()
    );
    let mut addresses: Vec<_> = acked.iter().map(|(_, ip)| *ip).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(
        addresses.len(),
        acked.len(),
        "an address was acknowledged to two MACs"
    );
    eprintln!(
        "{} leases acknowledged before and around the kill, all in the store",
        acked.len()
    );
}

/// A fleet file for one of several controllers on one database: its own boot sockets, an
/// address pool for thousands of machines (each simulated machine binds the loopback address
/// it leased), every machine worked on at once.
fn shared_fleet_file(setup: &Setup, machines: &str) -> PathBuf {
    let path = setup.fleet_file(machines);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("end = \"127.77.0.250\"", "end = \"127.77.31.250\"")
        .replace("parallelism = 200", "parallelism = 2000")
        // A killed controller's machines lost their boot server and fail by this limit; the
        // test runs alone, so the short limit holds and the test ends sooner.
        .replace("boot = \"45s\"", "boot = \"20s\"");
    std::fs::write(&path, text).unwrap();
    path
}

/// The leader's term once `wanted` holds for it, within `limit` of `since`; else fails saying
/// `failure`.
async fn wait_for_leader(
    store: &Store,
    since: Instant,
    limit: Duration,
    wanted: impl Fn(&fleet::store::LeaderTerm) -> bool,
    failure: &str,
) -> fleet::store::LeaderTerm {
    loop {
        if let Some(term) = store.leader().await.unwrap() {
            if wanted(&term) {
                return term;
            }
        }
        assert!(since.elapsed() < limit, "{failure}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `done` holds for the machines' summaries, within `limit`.
async fn wait_for_machines(
    store: &Store,
    what: &str,
    limit: Duration,
    done: impl Fn(&[fleet::model::records::MachineSummary]) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let machines = store.machine_summaries().await.unwrap();
        if done(&machines) {
            return;
        }
        if Instant::now() > deadline {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for machine in &machines {
                *counts.entry(machine.status.to_string()).or_default() += 1;
            }
            panic!("{what}: not after {limit:?}; statuses {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Issue 16's scale-out must-show: three `fleet serve` on one PostgreSQL, each the boot server of
/// a third of the simulated machines (1,000 unless FLEET_SCALE_OUT_MACHINES says otherwise).
/// They enlist through all three; `fleet apply` (posted to a follower) commissions and tests
/// them; the leader is killed with SIGKILL mid-apply; another leads within 10 s and the apply
/// goes on. Every machine ends ready or failed with a reason (the killed controller's own
/// machines lose their boot server), the two surviving controllers' machines ready (at most 2 %
/// failed, with a reason: see the comment at that check); no
/// address went to two machines (in the store and as the machines saw it); no machine was
/// commissioned twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_controllers_share_the_machines_and_outlive_their_leader() {
    let total: u32 = std::env::var("FLEET_SCALE_OUT_MACHINES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1000);
    let url = crate::support::db::empty_postgres_database().await;
    let setups = [setup(), setup(), setup()];
    let mut controllers: Vec<TestController> = Vec::new();
    for setup in &setups {
        let fleet_file = shared_fleet_file(setup, "");
        let state = setup.directory.path().join("state");
        let fleet_file = fleet_file.to_str().unwrap();
        // Alone in its phase with 1,000 machines: the controllers' own pool size.
        let mut controller = TestController::start_with_env(
            &state,
            "127.0.0.1:0",
            &["-f", fleet_file, "--database", &url],
            &[("FLEET_DATABASE_MAX_CONNECTIONS", "16")],
        );
        if let Some(first) = controllers.first() {
            // Only the controller that made the database wrote an operator token.
            controller.token = first.token.clone();
        }
        controllers.push(controller);
    }
    let ids: Vec<String> = controllers
        .iter()
        .map(|controller| {
            // Written once the controller has registered, which may come just after its API.
            let file = controller.state_dir.join("controller-id");
            let deadline = Instant::now() + Duration::from_secs(20);
            while !file.exists() {
                assert!(Instant::now() < deadline, "no {}", file.display());
                std::thread::sleep(Duration::from_millis(50));
            }
            std::fs::read_to_string(&file).unwrap().trim().to_string()
        })
        .collect();
    let store = Store::open(&url).await.unwrap();
    let share = total.div_ceil(3);
    let mut fleets = Vec::new();
    for (number, setup) in (0u32..).zip(&setups) {
        let count = share.min(total - share * number);
        fleets.push(setup.sims(10_000 * number, count, HashMap::new()).await);
    }
    let started = Instant::now();
    for machine in fleets.iter().flat_map(|fleet| &fleet.machines) {
        machine.power_on();
    }
    let everyone = total as usize;
    wait_for_machines(
        &store,
        "all enlisted",
        Duration::from_secs(300),
        |machines| machines.len() == everyone && machines.iter().all(|m| m.status == Status::New),
    )
    .await;
    let enlisted = started.elapsed();
    // Enlistment ends with `after poweroff`, once the enlistment run's scripts are done: on two
    // loaded cores about a minute for 1,000 machines, the limit only catches a hang.
    let deadline = Instant::now() + Duration::from_secs(300);
    while fleets
        .iter()
        .flat_map(|fleet| &fleet.machines)
        .any(|machine| machine.is_on())
    {
        if Instant::now() >= deadline {
            let on: Vec<_> = fleets
                .iter()
                .flat_map(|fleet| &fleet.machines)
                .filter(|machine| machine.is_on())
                .collect();
            let notes: Vec<String> = on
                .iter()
                .take(3)
                .map(|machine| format!("{}: {:?}", machine.index, machine.notes()))
                .collect();
            let logs: Vec<String> = controllers
                .iter()
                .map(|controller| {
                    let log = controller.log();
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(20)..].join("\n")
                })
                .collect();
            panic!(
                "{} machines stayed on after enlisting; the first: {notes:#?}\n\
                 the controllers' last log lines:\n{}",
                on.len(),
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_off = started.elapsed();

    // Adopted in one fleet file and applied through a controller that does not lead.
    let leader = store.leader().await.unwrap().expect("a leader");
    let killed = ids
        .iter()
        .position(|id| *id == leader.controller_id)
        .expect("the leader is one of the three");
    let follower = (killed + 1) % 3;
    let machines: String = fleets
        .iter()
        .flat_map(|fleet| {
            fleet.machines.iter().map(move |machine| {
                fleet.machine_toml(machine, &enlisted_name(machine), "state = \"ready\"")
            })
        })
        .collect();
    let fleet_file = shared_fleet_file(&setups[follower], &machines);
    let apply_log = setups[follower].directory.path().join("apply.log");
    let mut apply = std::process::Command::new(crate::support::controller::FLEET)
        .arg("--state-dir")
        .arg(&controllers[follower].state_dir)
        .arg("--server")
        .arg(&controllers[follower].api_url)
        .args(["--token", &controllers[follower].token])
        .args(["apply", "-f", fleet_file.to_str().unwrap(), "--yes"])
        .env("XDG_CONFIG_HOME", setups[follower].directory.path())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&apply_log).unwrap())
        .stderr(std::fs::File::create(apply_log.with_extension("err")).unwrap())
        .spawn()
        .expect("fleet apply starts");

    // Mid-apply: a third of the machines on their way.
    let third = everyone / 3;
    let apply_said = || {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let said = format!(
            "{}\n--- stderr:\n{}",
            read(&apply_log),
            read(&apply_log.with_extension("err"))
        );
        // The end says why (the plan before it is a screen per machine).
        let start = said.len().saturating_sub(3_000);
        let start = (start..said.len())
            .find(|at| said.is_char_boundary(*at))
            .unwrap_or(0);
        said[start..].to_string()
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Ok(Some(status)) = apply.try_wait() {
        let logs: Vec<String> = controllers
            .iter()
            .flat_map(|controller| {
                let log = controller.log();
                log.lines()
                    .filter(|line| line.contains("ERROR") || line.contains("WARN"))
                    .take(20)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        panic!(
            "fleet apply ended at once ({status}): {}\n--- the controllers' warnings:\n{}",
            apply_said(),
            logs.join("\n")
        );
    }
    wait_for_machines(
        &store,
        "a third commissioning",
        Duration::from_secs(300),
        |machines| {
            machines
                .iter()
                .filter(|m| {
                    matches!(
                        m.status,
                        Status::Commissioning | Status::Testing | Status::Ready
                    )
                })
                .count()
                >= third
        },
    )
    .await;
    let killed_at = Instant::now();
    controllers[killed].kill();
    let new_leader = wait_for_leader(
        &store,
        killed_at,
        Duration::from_secs(10),
        |term| term.controller_id != ids[killed] && term.expires_at > 0,
        "no other controller leads 10 s after the leader was killed",
    )
    .await;
    let took_over = killed_at.elapsed();
    assert!(new_leader.generation > leader.generation);

    // Everyone settles: ready, or failed with a reason.
    wait_for_machines(
        &store,
        "all settled",
        Duration::from_secs(420),
        |machines| {
            machines
                .iter()
                .all(|m| m.status == Status::Ready || m.status.is_failed())
        },
    )
    .await;
    let settled = started.elapsed();
    let _ = apply.kill();
    let _ = apply.wait();
    let mut ready = 0;
    let mut survivors = 0;
    let mut survivors_failed = Vec::new();
    for (number, fleet) in fleets.iter().enumerate() {
        for machine in &fleet.machines {
            let name = enlisted_name(machine);
            let (status, reason) = status_of(&store, &name).await.unwrap();
            if number != killed {
                survivors += 1;
            }
            if status == Status::Ready {
                ready += 1;
                continue;
            }
            assert!(
                reason.as_deref().is_some_and(|reason| !reason.is_empty()),
                "{name} ended {status} with no reason"
            );
            if number != killed {
                survivors_failed.push(format!("{name} {status}: {reason:?}"));
            }
        }
    }
    // The surviving controllers' machines are ready, but for the odd one whose result upload
    // a loaded store failed: the machine API answers 500 when its store fails, and the
    // ephemeral environment fails the run on it instead of retrying (a known gap, seen in 1 of 9
    // runs here; ARCHITECTURE's applies paragraph under leadership says so).
    assert!(
        survivors_failed.len() * 50 <= survivors,
        "more than 2 % of the surviving controllers' {survivors} machines failed: {survivors_failed:#?}"
    );
    if !survivors_failed.is_empty() {
        eprintln!("surviving controllers' machines that failed: {survivors_failed:#?}");
    }

    // No address went to two machines: in the store, and as the machines saw it.
    let shared: Vec<(String, i64)> = sqlx::query_as(
        "SELECT ip, CAST(COUNT(*) AS BIGINT) FROM leases GROUP BY ip HAVING COUNT(*) > 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(shared.is_empty(), "addresses leased twice: {shared:?}");
    let mut holders: HashMap<Ipv4Addr, u32> = HashMap::new();
    for machine in fleets.iter().flat_map(|fleet| &fleet.machines) {
        for ip in machine.leased() {
            if let Some(other) = holders.insert(ip, machine.index) {
                assert_eq!(
                    other, machine.index,
                    "{ip} was acknowledged to machines {other} and {}",
                    machine.index
                );
            }
        }
    }
    // No machine was commissioned twice: one commission action each, whoever led.
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT machine, CAST(COUNT(*) AS BIGINT) FROM events \
         WHERE kind = 'action' AND action = 'commission' GROUP BY machine HAVING COUNT(*) > 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(twice.is_empty(), "commissioned more than once: {twice:?}");
    eprintln!(
        "{total} machines through 3 controllers: all enlisted after {:.1} s, their enlistment \
         runs done after {:.1} s; leader killed, another led {:.1} s later; all settled after {:.1} s: {ready} ready, {} failed (the \
         killed controller's own machines)",
        enlisted.as_secs_f64(),
        all_off.as_secs_f64(),
        took_over.as_secs_f64(),
        settled.as_secs_f64(),
        everyone - ready
    );
    drop(controllers);
    crate::support::db::drop_postgres_store(store).await;
}

/// Every row of the tables a leader's duties write (machines, events, the applies and their
/// steps, locks, the machines' runs and results), as PostgreSQL prints them, sorted: two
/// snapshots are equal when nothing was written in between.
async fn leader_written_rows(store: &Store) -> Vec<String> {
    let mut rows = Vec::new();
    for table in [
        "machines",
        "events",
        "plans",
        "apply_steps",
        "locks",
        "machine_state",
        "script_results",
    ] {
        let text: Vec<(String,)> =
            sqlx::query_as(&format!("SELECT CAST(t AS TEXT) FROM {table} t ORDER BY 1"))
                .fetch_all(store.pool())
                .await
                .unwrap();
        rows.extend(text.into_iter().map(|(row,)| format!("{table} {row}")));
    }
    rows
}

/// Issue 16's fencing must-show, with an apply in flight. Two `fleet serve` on one PostgreSQL:
/// the leader (its own boot sockets, which no machine uses) runs `fleet apply`'s commissioning
/// of simulated machines that boot through the other. The leader is stopped with SIGSTOP while
/// its first machines commission and others wait for their turn; the other controller leads
/// once the term is over and resumes the apply to its end. The old leader is then resumed with
/// SIGCONT, armed (failpoint `leader-steps-down-late`) to keep its duties running 10 s after it
/// learns its term is over, so that they act on what they knew — rather than race its election —
/// and the fence alone stands between them and the store: each of its machine tasks attempts a
/// write (a step marked done or started) and its executor the apply lock's release, every one
/// is refused (its log says so, machine by machine), and nothing in the store changed from
/// before the SIGCONT to after its duties stopped. Every machine ends ready or failed with a
/// reason, and no step ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_mid_apply_then_resumed_has_every_write_refused() {
    const COUNT: u32 = 24;
    const PARALLELISM: usize = 8;
    let url = crate::support::db::empty_postgres_database().await;
    let store = Store::open(&url).await.unwrap();
    let (old_setup, boot_setup) = (setup(), setup());
    let old_file = old_setup.fleet_file("");
    let mut old = TestController::start_with_env(
        &old_setup.directory.path().join("state"),
        "127.0.0.1:0",
        &["-f", old_file.to_str().unwrap(), "--database", &url],
        &[("FLEET_FAILPOINTS", "leader-steps-down-late")],
    );
    let old_id = old.controller_id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let old_term = loop {
        if let Some(term) = store.leader().await.unwrap() {
            assert_eq!(
                term.controller_id, old_id,
                "the first controller started leads"
            );
            break term;
        }
        assert!(Instant::now() < deadline, "nobody leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Each machine's disk test takes 3 s more: the first turn is still at work when the
    // leader is stopped.
    let mut faults: HashMap<u32, Faults> = HashMap::new();
    for index in 0..COUNT {
        faults
            .entry(5000 + index)
            .or_default()
            .add("slow-disk=3")
            .unwrap();
    }
    let sims = boot_setup.sims(5000, COUNT, faults).await;
    let name = |machine: &fleet::sim::SimMachine| format!("p-{:02}", machine.index - 5000);
    let machines: String = sims
        .machines
        .iter()
        .map(|machine| sims.machine_toml(machine, &name(machine), "state = \"ready\""))
        .collect();
    let fleet_file = boot_setup.fleet_file(&machines);
    let text = std::fs::read_to_string(&fleet_file)
        .unwrap()
        .replace("parallelism = 200", &format!("parallelism = {PARALLELISM}"));
    std::fs::write(&fleet_file, text).unwrap();
    let mut boot = TestController::start_in(
        &boot_setup.directory.path().join("state"),
        &["-f", fleet_file.to_str().unwrap(), "--database", &url],
    );
    boot.token = old.token.clone();
    let boot_id = boot.controller_id();

    // `fleet apply` through the controller that does not lead, in the background.
    let apply_log = boot_setup.directory.path().join("apply.log");
    let mut apply = std::process::Command::new(crate::support::controller::FLEET)
        .arg("--state-dir")
        .arg(&boot.state_dir)
        .args(["--server", &boot.api_url, "--token", &boot.token])
        .args(["apply", "-f", fleet_file.to_str().unwrap(), "--yes"])
        .env("XDG_CONFIG_HOME", boot_setup.directory.path())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&apply_log).unwrap())
        .stderr(std::fs::File::create(apply_log.with_extension("err")).unwrap())
        .spawn()
        .expect("fleet apply starts");

    // Mid-apply: the first turn at work (none ready yet, no power command under way), the
    // others waiting for their turn.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let summaries = store.machine_summaries().await.unwrap();
        let working = summaries
            .iter()
            .filter(|m| matches!(m.status, Status::Commissioning | Status::Testing))
            .count();
        let ready = summaries
            .iter()
            .filter(|m| m.status == Status::Ready)
            .count();
        let (powering,): (i64,) = sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM machines WHERE power_pending IS NOT NULL",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if working == PARALLELISM && ready == 0 && powering == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline && ready == 0,
            "the first turn did not get to work: {working} commissioning or testing, {ready} ready; {}",
            std::fs::read_to_string(apply_log.with_extension("err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = i32::try_from(old.child.id()).unwrap();
    // SAFETY: signals a child process this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();

    // The other controller leads once the term is over, and resumes the apply.
    let new_term = wait_for_leader(
        &store,
        stopped,
        Duration::from_secs(30),
        |term| term.controller_id == boot_id,
        "the other controller does not lead 30 s after the leader was stopped",
    )
    .await;
    let took_over = stopped.elapsed();
    let took_over_at = fleet::store::now_ms();
    assert!(new_term.generation > old_term.generation);
    let applies = store.plans_with_status("applying").await.unwrap();
    assert_eq!(applies.len(), 1, "the apply is in flight: {applies:?}");
    let apply_id = applies[0].id.clone();
    let settled = |summaries: &[fleet::model::records::MachineSummary]| {
        summaries
            .iter()
            .all(|m| m.status == Status::Ready || m.status.is_failed())
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let finished = store.plan(&apply_id).await.unwrap().unwrap().status == "applied";
        let summaries = store.machine_summaries().await.unwrap();
        if finished && summaries.len() == COUNT as usize && settled(&summaries) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the apply did not end under the new leader; {}",
            std::fs::read_to_string(apply_log.with_extension("err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The machines power themselves off at the end of their run: then nothing moves.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sims.machines.iter().any(|machine| machine.is_on()) {
        assert!(Instant::now() < deadline, "machines stayed on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = apply.kill();
    let _ = apply.wait();
    let before = leader_written_rows(&store).await;

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let resumed = Instant::now();
    // Told by the database that another controller leads, or (its connections refused when
    // the server has none left for it) unable to renew in time: either way, after the failpoint's
    // 10 s.
    let term = format!("term {}", old_term.generation);
    let stepped_down = |log: &str| {
        log.lines()
            .any(|line| line.contains(&term) && line.contains("; duties stopped"))
    };
    while !stepped_down(&old.log()) {
        assert!(
            resumed.elapsed() < Duration::from_secs(60),
            "the resumed leader did not stop its duties: {}",
            old.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = leader_written_rows(&store).await;
    let old_log = old.log();
    old.kill();

    // The old leader learnt it lost the term, and every write its duties attempted was refused.
    assert!(
        old_log.contains(&format!("{term} is over: "))
            && old_log.contains("duties stop in 10 s (failpoint leader-steps-down-late)"),
        "{old_log}"
    );
    let refused: Vec<&str> = old_log
        .lines()
        .filter(|line| line.contains("no longer leads the database"))
        .collect();
    for machine in &sims.machines {
        let field = format!("machine={}", name(machine));
        assert!(
            refused.iter().any(|line| {
                line.contains("apply of the machine stopped") && line.ends_with(&field)
            }),
            "{}'s task attempted no write, or it was not refused: {old_log}",
            name(machine)
        );
    }
    assert!(
        refused
            .iter()
            .any(|line| line.contains(&format!("{apply_id} stopped"))),
        "the executor's release of the lock was refused: {old_log}"
    );
    let changed: Vec<String> = after
        .iter()
        .filter(|row| !before.contains(row))
        .chain(before.iter().filter(|row| !after.contains(row)))
        .cloned()
        .collect();
    assert!(
        changed.is_empty(),
        "the store changed after the old leader resumed: {changed:#?}"
    );
    // Nothing in the old leader's name since the takeover (and the lock is free).
    let (late,): (i64,) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM events WHERE at >= $1 AND detail LIKE $2",
    )
    .bind(took_over_at)
    .bind(format!("%{}%", old_term.holder))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        late, 0,
        "events in the old leader's name after the takeover"
    );
    assert_eq!(store.lock_holder("apply").await.unwrap(), None);
    assert_eq!(
        store.leader().await.unwrap().unwrap().controller_id,
        boot_id
    );

    // The new leader resumed the apply; every step ended, none ran twice.
    let steps = store.apply_steps(&apply_id).await.unwrap();
    let open: Vec<_> = steps
        .iter()
        .filter(|step| !matches!(step.state.as_str(), "done" | "failed" | "skipped"))
        .collect();
    assert!(open.is_empty(), "steps left open: {open:#?}");
    let mut by_new_leader = 0;
    let mut ready = 0;
    for machine in &sims.machines {
        let name = name(machine);
        let events = crate::leader_applies::events_of(&store, &name).await;
        let count =
            |kind: &str, action: &str| crate::leader_applies::count_events(&events, kind, action);
        assert_eq!(count("action", "commission"), 1, "{name}: {events:#?}");
        assert!(count("apply", "commission started") <= 1, "{name}");
        assert!(count("apply", "add started") <= 1, "{name}");
        assert_eq!(
            count("apply", "commission done") + count("apply", "commission failed"),
            1,
            "{name}"
        );
        by_new_leader += events
            .iter()
            .filter(|event| event.kind == "apply" && event.detail["by"] == new_term.holder.as_str())
            .count();
        let (status, reason) = status_of(&store, &name).await.unwrap();
        if status == Status::Ready {
            ready += 1;
        } else {
            assert!(
                status.is_failed() && reason.is_some_and(|reason| !reason.is_empty()),
                "{name} ended {status} without a reason"
            );
        }
    }
    assert!(by_new_leader > 0, "the new leader ran none of the apply");
    eprintln!(
        "{COUNT} machines: leader stopped mid-apply, another led {:.1} s later; {ready} ready; \
         the resumed leader's {} refused writes left the store as it was",
        took_over.as_secs_f64(),
        refused.len()
    );
    drop((old, boot));
    crate::support::db::drop_postgres_store(store).await;
}
