//! `fleet plan --simulate`: what an apply of the fleet files would do, found by doing it on a
//! throwaway copy. A controller starts in this process on a temporary directory (SQLite, ports
//! on loopback), its store seeded from the observed snapshot — every machine with its status,
//! MACs and recorded hardware — and one simulated machine (`fleet::sim`) stands in for each,
//! with the same MACs and hardware. The copy's power parameters point at the simulator's BMCs,
//! never at the real ones, and its boot services answer only the simulator's relay on loopback.
//! The plan is applied there by the real executor, and each machine's outcome is reported: it
//! would succeed, or it would fail and why. The real controller is only read (`/observed`).

use super::client::Client;
use super::demo::{free_udp_port, start_controller_with, write_ephemeral_files};
use super::output::new_table;
use super::plan::{load_fleet, observed, PlanArgs};
use super::Connection;
use anyhow::{anyhow, bail, Context};
use comfy_table::Cell;
use fleet::apply::{ApplyProgress, ApplyRequest, ApplyStarted};
use fleet::config::{Fleet, PowerSpec};
use fleet::model::{Lifecycle, MacAddr, MachineName, Status};
use fleet::plan::{
    desired_power, AddressOrigin, Allocation, Firmware, HeldAddress, Observed, ObservedMachine,
    Plan,
};
use fleet::sim::{SimDisk, SimFleet, SimHardware, SimNetwork, SimNic};
use fleet::store::{Disk, Hardware, Interface, NewMachine, Store};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

/// Who the throwaway copy's events name.
const ACTOR: &str = "fleet plan --simulate";

/// The throwaway copy's ephemeral image and loopback subnet (names no fleet file is likely to use).
const EPHEMERAL_IMAGE: &str = "fleet-simulate-ephemeral";
const LOOPBACK_SUBNET: &str = "fleet_simulate_loopback";

/// The copy's boot limit at most (seconds).
const SIMULATED_BOOT_LIMIT_SECONDS: u32 = 120;

/// One machine the simulation worked on.
#[derive(Debug, Serialize)]
struct SimulatedMachine {
    name: String,
    /// `succeed` or `fail`.
    outcome: &'static str,
    steps_done: usize,
    steps: usize,
    /// Why it would fail: the executor's reason, or what holds the plan back.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `--json`'s shape.
#[derive(Debug, Serialize)]
struct SimulationReport {
    simulated: usize,
    would_succeed: usize,
    would_fail: usize,
    machines: Vec<SimulatedMachine>,
}

pub async fn run(connection: &Connection, args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let mut fleet = match load_fleet(&args.files) {
        Ok(fleet) => fleet,
        Err(code) => return Ok(code),
    };
    let observed = observed(connection, args.observed.as_deref()).await?;
    let directory = tempfile::Builder::new()
        .prefix("fleet-simulate.")
        .tempdir()?;
    // The throwaway controller prints its banner and the apply its progress on stderr: say
    // whose they are.
    eprintln!(
        "fleet plan --simulate: {} observed machines copied into a throwaway controller in {} (the real controller is only read)",
        observed.machines.len(),
        directory.path().display()
    );
    let report = simulate(&mut fleet, &observed, directory.path()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(match (args.detailed_exitcode, report.simulated) {
        (true, simulated) if simulated > 0 => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

/// Seeds a throwaway controller on `dir`, applies the plan there and reports.
async fn simulate(
    fleet: &mut Fleet,
    observed: &Observed,
    dir: &Path,
) -> anyhow::Result<SimulationReport> {
    let network = SimNetwork {
        dhcp: SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
        tftp: SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
        relay: Ipv4Addr::LOCALHOST,
    };
    write_ephemeral_files(dir)?;
    let stand_ins = stand_ins(fleet, observed);
    let hardware = stand_ins.iter().map(|(_, hw)| hw.clone()).collect();
    let sims = SimFleet::start_with_hardware(hardware, network, "127.0.0.1:0".parse()?).await?;
    let names: Vec<&str> = stand_ins.iter().map(|(name, _)| name.as_str()).collect();
    let powers = point_at_the_simulation(fleet, &sims, &names, network, dir)?;
    let state_dir = dir.join("state");
    let controller = start_controller_with(fleet.clone(), &state_dir).await?;
    let outcome = match tftp_answers(network).await {
        Ok(()) => seed_and_apply(fleet, observed, &powers, &state_dir, &controller.api_url).await,
        Err(error) => Err(error),
    };
    controller.stop().await;
    drop(sims);
    outcome
}

/// The copy's TFTP serves a loader. A controller that could not bind its TFTP port runs
/// without it, and every stand-in's boot would time out: the simulation would report failures
/// that are its own.
async fn tftp_answers(network: SimNetwork) -> anyhow::Result<()> {
    let fetched = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        fleet::sim::tftp_get(network.tftp, Ipv4Addr::LOCALHOST, "undionly.kpxe"),
    )
    .await;
    match fetched {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => bail!(
            "the throwaway controller's TFTP on {} does not answer: {error}",
            network.tftp
        ),
        Err(_) => bail!(
            "the throwaway controller's TFTP on {} does not answer",
            network.tftp
        ),
    }
}

async fn seed_and_apply(
    fleet: &Fleet,
    observed: &Observed,
    powers: &Powers,
    state_dir: &Path,
    api_url: &str,
) -> anyhow::Result<SimulationReport> {
    seed_store(observed, powers, state_dir).await?;
    let connection = Connection {
        server: Some(api_url.to_string()),
        tls_fingerprint: None,
        token: None,
        state_dir: state_dir.to_path_buf(),
    };
    let client = Client::new(&connection)?;
    let copied: Observed = client
        .get("/observed")
        .await?
        .map_err(|failure| anyhow!("the throwaway controller's snapshot: {failure}"))?;
    let plan = fleet::plan::plan(fleet, &copied);
    let progress = if plan.is_empty() {
        None
    } else {
        Some(apply_in_the_copy(&client, &plan).await?)
    };
    Ok(report(&plan, progress.as_ref()))
}

/// The plan applied on the throwaway copy, followed to its end. Destructive steps run: nothing
/// there is real.
async fn apply_in_the_copy(client: &Client, plan: &Plan) -> anyhow::Result<ApplyProgress> {
    let request = ApplyRequest {
        plan: plan.clone(),
        allow_destroy: true,
        strict: false,
    };
    let started: ApplyStarted = client
        .post("/applies", &request)
        .await?
        .map_err(|failure| anyhow!("the throwaway controller refused the apply: {failure}"))?;
    super::apply::follow(client, &started).await
}

/// Per machine the plan works on: it would succeed (its steps all done), or fail (a step
/// failed or was refused, or the plan holds it back).
fn report(plan: &Plan, progress: Option<&ApplyProgress>) -> SimulationReport {
    let mut machines = Vec::new();
    for machine in &plan.machines {
        let applied =
            progress.and_then(|progress| progress.machines.iter().find(|m| m.name == machine.name));
        if !machine.blocked.is_empty() {
            machines.push(SimulatedMachine {
                name: machine.name.clone(),
                outcome: "fail",
                steps_done: 0,
                steps: machine.steps.len(),
                reason: Some(machine.blocked.join("; ")),
            });
        } else if let Some(applied) = applied {
            let done = applied.state == "done";
            machines.push(SimulatedMachine {
                name: machine.name.clone(),
                outcome: if done { "succeed" } else { "fail" },
                steps_done: applied.steps_done,
                steps: applied.steps,
                reason: (!done).then(|| {
                    applied
                        .reason
                        .clone()
                        .unwrap_or_else(|| format!("ended {}", applied.state))
                }),
            });
        }
    }
    let would_fail = machines.iter().filter(|m| m.outcome == "fail").count();
    SimulationReport {
        simulated: machines.len(),
        would_succeed: machines.len() - would_fail,
        would_fail,
        machines,
    }
}

fn print_report(report: &SimulationReport) {
    if !report.machines.is_empty() {
        let mut table = new_table(&["MACHINE", "WOULD", "STEPS", "REASON"]);
        for machine in &report.machines {
            table.add_row(vec![
                Cell::new(&machine.name),
                Cell::new(machine.outcome),
                Cell::new(format!("{}/{}", machine.steps_done, machine.steps)),
                Cell::new(machine.reason.clone().unwrap_or_default()),
            ]);
        }
        println!("{table}");
    }
    println!(
        "simulated {} machines: {} would succeed, {} would fail",
        report.simulated, report.would_succeed, report.would_fail
    );
}

/// A simulated machine per machine with a MAC, observed or declared: the observed ones with
/// their recorded hardware; those never commissioned, and the declared ones the store has not
/// seen, with a simulated shape carrying their MACs (commissioned in the simulation, they
/// report that shape: what they would really report is not known before).
fn stand_ins(fleet: &Fleet, observed: &Observed) -> Vec<(String, SimHardware)> {
    let mut stand_ins: BTreeMap<String, SimHardware> = BTreeMap::new();
    for machine in &observed.machines {
        let index = stand_ins.len() as u32;
        let hardware = if machine.macs.is_empty() {
            continue;
        } else if machine.hardware.is_known() {
            recorded_hardware(machine, index)
        } else {
            shape_with_macs(index, &machine.macs)
        };
        stand_ins.insert(machine.name.to_string(), hardware);
    }
    for spec in &fleet.machines {
        if observed.machine(spec.name.as_str()).is_none() && !spec.macs.is_empty() {
            let index = stand_ins.len() as u32;
            let mut macs = spec.macs.clone();
            if let Some(at) = spec
                .pxe_mac
                .and_then(|pxe| macs.iter().position(|m| *m == pxe))
            {
                macs[..=at].rotate_right(1);
            }
            stand_ins.insert(spec.name.to_string(), shape_with_macs(index, &macs));
        }
    }
    stand_ins.into_iter().collect()
}

/// The simulator's hardware for a machine as the store recorded it: its MACs (the boot MAC
/// first), disks, CPUs, memory and firmware.
fn recorded_hardware(machine: &ObservedMachine, index: u32) -> SimHardware {
    let recorded = &machine.hardware;
    let nics = machine
        .macs
        .iter()
        .enumerate()
        .map(|(at, mac)| SimNic {
            name: recorded
                .interfaces
                .iter()
                .find(|interface| interface.mac == *mac)
                .map_or_else(|| format!("eth{at}"), |interface| interface.name.clone()),
            mac: *mac,
            driver: "ixgbe".to_string(),
            speed: 10_000,
        })
        .collect();
    let disks = recorded
        .disks
        .iter()
        .enumerate()
        .map(|(at, disk)| SimDisk {
            name: disk.name.clone(),
            size_bytes: disk.size_bytes,
            serial: disk
                .serial
                .clone()
                .unwrap_or_else(|| format!("SIM{index:05}D{at}")),
            model: disk.model.clone().unwrap_or_else(|| "SIM DISK".to_string()),
            bus: disk.bus.clone().unwrap_or_else(|| "ata".to_string()),
            rotational: disk.rotational.unwrap_or(false),
        })
        .collect();
    SimHardware {
        cpus: recorded.cpus.unwrap_or(1).max(1) as u32,
        cpu_model: "Simulated stand-in".to_string(),
        cpu_mhz: 2000,
        memory_kib: recorded.memory_mib.unwrap_or(1024) * 1024,
        firmware: recorded
            .firmware
            .unwrap_or(Firmware::Uefi)
            .as_str()
            .to_string(),
        disks,
        nics,
        vendor: "fleet".to_string(),
        product: "simulated stand-in".to_string(),
        serial: format!("SIM{index:05}"),
    }
}

/// A simulated shape for a machine nobody has commissioned, with its declared MACs.
fn shape_with_macs(index: u32, macs: &[MacAddr]) -> SimHardware {
    let mut hardware = SimHardware::for_index(index);
    let template = hardware.nics[0].clone();
    hardware.nics = macs
        .iter()
        .enumerate()
        .map(|(at, mac)| SimNic {
            name: format!("eth{at}"),
            mac: *mac,
            ..template.clone()
        })
        .collect();
    hardware
}

/// The fleet as the throwaway controller runs it: its `[controller]` replaced by one on
/// loopback (the simulator's DHCP relay and TFTP ports, the stand-in loaders, no interface of
/// the host's), an ephemeral image and a loopback subnet added, no power polling, and every
/// machine's power on the simulator's BMC (`manual` for one without a stand-in): no real BMC
/// is ever called.
fn point_at_the_simulation(
    fleet: &mut Fleet,
    sims: &SimFleet,
    names: &[&str],
    network: SimNetwork,
    dir: &Path,
) -> anyhow::Result<Powers> {
    let mut text = format!(
        r#"[controller]
ephemeral_image = "{EPHEMERAL_IMAGE}"
dhcp_listen = "{dhcp}"
tftp_listen = "{tftp}"
loader_dir = "{dir}/loaders"

[subnets.{LOOPBACK_SUBNET}]
cidr = "127.0.0.0/8"
dynamic_range = {{ start = "127.77.0.10", end = "127.77.3.250" }}

[images.{EPHEMERAL_IMAGE}]
kernel = {{ path = "{dir}/vmlinuz" }}
initrd = {{ path = "{dir}/initrd" }}

"#,
        dhcp = network.dhcp,
        tftp = network.tftp,
        dir = dir.display(),
    );
    for (sim, name) in sims.machines.iter().zip(names) {
        text.push_str(&sims.machine_toml(sim, name, ""));
    }
    let file = dir.join("simulation.toml");
    std::fs::write(&file, text)?;
    let simulation = match fleet::config::load(&[file]) {
        Ok(simulation) => simulation,
        Err(diagnostics) => bail!(
            "the simulation's own fleet file: {}",
            diagnostics.render(false)
        ),
    };
    fleet.controller = simulation.controller;
    fleet
        .subnets
        .retain(|subnet| subnet.name != LOOPBACK_SUBNET);
    fleet.subnets.extend(simulation.subnets);
    fleet.subnets.sort_by(|a, b| a.name.cmp(&b.name));
    fleet.images.extend(simulation.images);
    fleet.policy.power_poll_seconds = 0;
    // Stand-ins boot in seconds: a boot that has not begun within this is the simulation's
    // own trouble, and waiting the fleet's limit (10 minutes by default) would hide it.
    fleet.policy.timeouts.boot = fleet.policy.timeouts.boot.min(SIMULATED_BOOT_LIMIT_SECONDS);
    let powers: Powers = simulation
        .machines
        .into_iter()
        .map(|stand_in| (stand_in.name.to_string(), stand_in.power))
        .collect();
    for spec in &mut fleet.machines {
        spec.power = power_of(&powers, spec.name.as_str());
    }
    Ok(powers)
}

/// Each stand-in's power (its BMC on the simulator), by machine name.
type Powers = BTreeMap<String, PowerSpec>;

/// The power the throwaway copy gives `name`: its stand-in's BMC, else manual.
fn power_of(powers: &Powers, name: &str) -> PowerSpec {
    powers.get(name).cloned().unwrap_or(PowerSpec::Manual)
}

/// Every observed machine written into the throwaway store as the snapshot has it: created
/// with its MACs, its recorded hardware, then its life-cycle forced (status, owner, lock,
/// power) with [`Store::write_lifecycle`] — allowed there only because the copy is thrown away.
async fn seed_store(observed: &Observed, powers: &Powers, state_dir: &Path) -> anyhow::Result<()> {
    let store = Store::open(&fleet::controller::default_database(state_dir))
        .await
        .context("opening the throwaway store")?;
    for machine in &observed.machines {
        seed_machine(&store, powers, machine)
            .await
            .with_context(|| format!("seeding {} into the throwaway store", machine.name))?;
    }
    seed_held_addresses(&store, &observed.addresses).await?;
    store.close().await;
    Ok(())
}

/// The static addresses the machines hold, so the copy's plan keeps them where they are.
async fn seed_held_addresses(store: &Store, held: &[HeldAddress]) -> anyhow::Result<()> {
    let mut by_machine: BTreeMap<&str, Vec<Allocation>> = BTreeMap::new();
    for address in held {
        let Ok(machine) = MachineName::parse(&address.machine) else {
            continue;
        };
        by_machine
            .entry(address.machine.as_str())
            .or_default()
            .push(Allocation {
                machine,
                interface: address.interface.clone(),
                subnet: address.subnet.clone(),
                ip: address.ip,
                origin: AddressOrigin::Held,
            });
    }
    for (machine, allocations) in by_machine {
        store
            .commit_addresses(machine, &allocations, ACTOR, None)
            .await
            .with_context(|| format!("seeding {machine}'s addresses into the throwaway store"))?;
    }
    Ok(())
}

async fn seed_machine(
    store: &Store,
    powers: &Powers,
    machine: &ObservedMachine,
) -> anyhow::Result<()> {
    let name = machine.name.as_str();
    // Its power: the stand-in's BMC, never the real one.
    let (power_type, power_params) = desired_power(&power_of(powers, name));
    let new = NewMachine {
        name: machine.name.clone(),
        status: Status::New,
        macs: machine.macs.clone(),
        arch: machine.arch.clone(),
        power_type,
        power_params,
        bmc_address: None,
        image: machine.image.clone(),
        tags: machine.tags.clone(),
        deployed_os: None,
    };
    store.create_machine(&new, ACTOR).await?;
    if machine.hardware.is_known() || !machine.hardware.interfaces.is_empty() {
        let (hardware, interfaces, disks) = recorded_records(machine);
        store
            .replace_hardware(
                name,
                machine.arch.as_deref(),
                &hardware,
                &interfaces,
                &disks,
            )
            .await?;
    }
    let lifecycle = Lifecycle {
        status: machine.status,
        previous_status: machine.previous_status,
        locked: machine.locked,
        power: machine.power,
        owner: machine.owner.clone(),
        commissioned: machine.commissioned,
        deployed_os: machine.deployed_os.clone(),
        power_configured: true,
    };
    let reason = machine
        .status_reason
        .as_deref()
        .unwrap_or("seeded from the observed snapshot");
    store
        .write_lifecycle(name, &lifecycle, ACTOR, reason)
        .await?;
    Ok(())
}

/// The store's records of a machine's recorded hardware.
fn recorded_records(machine: &ObservedMachine) -> (Hardware, Vec<Interface>, Vec<Disk>) {
    let recorded = &machine.hardware;
    let facts = match recorded.firmware {
        Some(firmware) => serde_json::json!({ "arch": { "firmware": firmware.as_str() } }),
        None => serde_json::json!({}),
    };
    let hardware = Hardware {
        cpus: recorded.cpus,
        cpu_model: None,
        cpu_speed_mhz: None,
        memory_mib: recorded.memory_mib,
        facts,
    };
    // An older snapshot may list no interfaces: the MACs are kept, named in order.
    let named: Vec<(String, MacAddr)> = if recorded.interfaces.is_empty() {
        let numbered = machine.macs.iter().enumerate();
        numbered
            .map(|(at, mac)| (format!("eth{at}"), *mac))
            .collect()
    } else {
        let listed = recorded.interfaces.iter();
        listed
            .map(|interface| (interface.name.clone(), interface.mac))
            .collect()
    };
    let interfaces = named
        .into_iter()
        .map(|(name, mac)| Interface {
            name,
            mac,
            link_up: Some(true),
            speed_mbps: None,
            driver: None,
        })
        .collect();
    let disks = recorded
        .disks
        .iter()
        .map(|disk| Disk {
            name: disk.name.clone(),
            model: disk.model.clone(),
            serial: disk.serial.clone(),
            id_path: disk.id_path.clone(),
            bus: disk.bus.clone(),
            size_bytes: disk.size_bytes,
            block_size: None,
            rotational: disk.rotational,
        })
        .collect();
    (hardware, interfaces, disks)
}
