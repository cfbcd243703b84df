//! `fleet demo [--machines N]`: fleet at work without a rack and without root. A controller on a
//! temporary SQLite store (a temporary directory), a demo fleet file of its own (profiles,
//! storage and network templates, an image, a clone), N simulated machines (`fleet::sim`) whose
//! traffic crosses the controller's real sockets on loopback, and two more that enlist on their
//! own. Two plans are shown and applied with the progress display — commission and test
//! everyone, then deploy (one machine cloned from another) — and a table ends it: each machine,
//! what happened to it, and why a machine failed.

use super::apply::ApplyArgs;
use super::client::Client;
use super::output::new_table;
use super::Connection;
use anyhow::{bail, Context};
use clap::Args;
use comfy_table::Cell;
use fleet::api::views::{EventView, MachineDetail};
use fleet::sim::{Faults, SimFleet, SimMachine, SimNetwork, SimOptions};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How many machines the demo fleet declares (two more enlist on their own)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=500))]
    pub machines: u32,
    /// Keep the temporary directory (the fleet file, the store) and say where it is
    #[arg(long)]
    pub keep: bool,
}

/// What a declared machine of the demo is.
struct DemoMachine {
    name: String,
    index: u32,
    /// The profile: web (flat storage) or db (LVM); `None`: a spare, left ready.
    profile: Option<&'static str>,
    clone_of: Option<String>,
}

/// The demo's machines: 60 % web servers, 20 % databases, the rest spares; the fourth web
/// server (same hardware shape as the first) is cloned from the first.
fn demo_machines(count: u32) -> Vec<DemoMachine> {
    let webs = (count * 3).div_ceil(5).max(1);
    let dbs = count / 5;
    (0..count)
        .map(|index| {
            let (name, profile) = if index < webs {
                (format!("web-{:02}", index + 1), Some("web"))
            } else if index < webs + dbs {
                (format!("db-{:02}", index - webs + 1), Some("db"))
            } else {
                (format!("spare-{:02}", index - webs - dbs + 1), None)
            };
            let clone_of = (index == 3 && webs > 3).then(|| "web-01".to_string());
            DemoMachine {
                name,
                index,
                profile,
                clone_of,
            }
        })
        .collect()
}

/// The machine whose disk test fails: the last one declared (never the clone's source or
/// destination).
fn failing_index(count: u32) -> u32 {
    count - 1
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let directory = tempfile::Builder::new().prefix("fleet-demo.").tempdir()?;
    let dir = directory.path().to_path_buf();
    let network = SimNetwork {
        dhcp: SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
        tftp: SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
        relay: Ipv4Addr::LOCALHOST,
    };
    write_boot_files(&dir)?;
    let count = args.machines;
    let mut faults: HashMap<u32, Faults> = HashMap::new();
    faults
        .entry(failing_index(count))
        .or_default()
        .add("fail-script=fleet-disk-read")?;
    // Two more machines than declared: they enlist on their own.
    let sims = SimFleet::start(SimOptions {
        count: count + 2,
        first_index: 0,
        network,
        bmc_listen: "127.0.0.1:0".parse()?,
        faults,
    })
    .await?;
    let machines = demo_machines(count);
    let first = dir.join("fleet-1-commission.toml");
    std::fs::write(&first, fleet_file(&dir, network, &sims, &machines, false)?)?;
    let second = dir.join("fleet-2-deploy.toml");
    std::fs::write(&second, fleet_file(&dir, network, &sims, &machines, true)?)?;
    let state_dir = dir.join("state");
    let controller = start_controller(&first, &state_dir).await?;
    let connection = Connection {
        server: Some(controller.api_url.clone()),
        tls_fingerprint: None,
        token: None,
        state_dir: state_dir.clone(),
    };
    let shown = show(&connection, &sims, &machines, [&first, &second]).await;
    let boot_url = controller.boot_url.clone();
    controller.stop().await;
    drop(sims);
    shown?;
    println!(
        "\n{} machines in {:.1} s, without root, on loopback: DHCP {}, TFTP {}, boot HTTP and the machine API at {}.",
        count + 2,
        started.elapsed().as_secs_f64(),
        network.dhcp,
        network.tftp,
        boot_url
    );
    if args.keep {
        let kept = directory.keep();
        println!("Kept {} (fleet files, store, state).", kept.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Enlistment, the two applies and the table.
async fn show(
    connection: &Connection,
    sims: &SimFleet,
    machines: &[DemoMachine],
    [first, second]: [&Path; 2],
) -> anyhow::Result<()> {
    let count = machines.len();
    println!(
        "\n== {} simulated machines (BMCs at {}); 2 of them, undeclared, power on and enlist",
        count + 2,
        sims.bmc_url
    );
    for machine in &sims.machines[count..] {
        machine.power_on();
    }
    wait_for_enlistment(connection, &sims.machines[count..]).await?;
    println!(
        "\n== fleet apply -f {}   (commission and test every declared machine)",
        first.display()
    );
    apply(connection, first).await?;
    println!("\n== fleet apply -f {}   (deploy: web on flat storage, db on LVM, web-04 cloned from web-01)", second.display());
    apply(connection, second).await?;
    println!("\n== what happened to each machine");
    print_story(connection, machines, sims).await
}

/// What the demo's and the benchmark's fleet files share: the controller's boot services on
/// `network` (loopback ports, no root), a subnet named `subnet` on 127.0.0.0/8 whose pool runs
/// over `pool`, the ephemeral image and the Debian image written into `dir`, a flat template.
pub(super) fn loopback_fleet_base(
    dir: &Path,
    network: SimNetwork,
    subnet: &str,
    (pool_start, pool_end): (Ipv4Addr, Ipv4Addr),
) -> anyhow::Result<String> {
    let root_sha = sha256_of(&dir.join("debian.tgz"))?;
    Ok(format!(
        r#"[controller]
ephemeral_image = "ephemeral"
dhcp_listen = "{dhcp}"
tftp_listen = "{tftp}"
loader_dir = "{dir}/loaders"

[subnets.{subnet}]
cidr = "127.0.0.0/8"
dynamic_range = {{ start = "{pool_start}", end = "{pool_end}" }}

[images.ephemeral]
kernel = {{ path = "{dir}/vmlinuz" }}
initrd = {{ path = "{dir}/initrd" }}

[images.debian]
os = "debian"
release = "12"
root = {{ path = "{dir}/debian.tgz", sha256 = "{root_sha}", format = "tgz" }}

[storage_templates.flat]
layout = "flat"

"#,
        dhcp = network.dhcp,
        tftp = network.tftp,
        dir = dir.display(),
    ))
}

/// A UDP port free on 127.0.0.1 for the controller to bind, chosen below the system's ephemeral
/// range. The controller binds it only after this returns; a port from the ephemeral range
/// could meanwhile be handed to any socket bound to port 0 (the simulated machines' own DHCP
/// and TFTP clients among them), and did: TFTP did not run and every boot timed out.
pub(super) fn free_udp_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Ports handed out by this process, so two calls in a row never give the same one.
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = ephemeral_start.saturating_sub(12_000).max(10_000);
    if ephemeral_start <= low {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        return Ok(socket.local_addr()?.port());
    }
    let span = ephemeral_start - low;
    // Another process choosing the same way starts elsewhere.
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| now.subsec_nanos());
    for _ in 0..span {
        let turn = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = low + seed.wrapping_add(turn) % span;
        let port = u16::try_from(port)?;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free UDP port on 127.0.0.1 below {ephemeral_start}")
}

/// The loaders TFTP serves, the ephemeral kernel and initrd, and the root image (gzip: the
/// controller decompresses it once to learn what machines will write).
pub(super) fn write_boot_files(dir: &Path) -> anyhow::Result<()> {
    write_ephemeral_files(dir)?;
    let root: Vec<u8> = (0..4 * 1024 * 1024u32).map(|at| (at % 251) as u8).collect();
    let gzipped = gzip(&root)?;
    std::fs::write(dir.join("debian.tgz"), gzipped)?;
    Ok(())
}

/// Stand-ins for the loaders TFTP serves (`DIR/loaders`) and the ephemeral kernel and initrd
/// (`DIR/vmlinuz`, `DIR/initrd`): simulated machines fetch them and run nothing of them.
pub(super) fn write_ephemeral_files(dir: &Path) -> anyhow::Result<()> {
    let loaders = dir.join("loaders");
    std::fs::create_dir(&loaders)?;
    std::fs::write(loaders.join("ipxe.efi"), vec![0x4d; 64 * 1024])?;
    std::fs::write(loaders.join("undionly.kpxe"), vec![0x55; 64 * 1024])?;
    std::fs::write(dir.join("vmlinuz"), vec![1u8; 256 * 1024])?;
    std::fs::write(dir.join("initrd"), vec![2u8; 1024 * 1024])?;
    Ok(())
}

pub(super) fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-nc1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip (the controller needs it for tgz images too)")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip's writer"))??;
    if !output.status.success() {
        bail!("gzip failed");
    }
    Ok(output.stdout)
}

pub(super) fn sha256_of(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(path)?)))
}

/// The demo fleet file; `deploy`: the second one (web and db machines deployed, the clone).
fn fleet_file(
    dir: &Path,
    network: SimNetwork,
    sims: &SimFleet,
    machines: &[DemoMachine],
    deploy: bool,
) -> anyhow::Result<String> {
    let base = loopback_fleet_base(
        dir,
        network,
        "demo",
        (
            Ipv4Addr::new(127, 77, 0, 10),
            Ipv4Addr::new(127, 77, 3, 250),
        ),
    )?;
    let mut text = format!(
        r#"# fleet demo: {count} simulated machines on loopback
{base}[storage_templates.lvm]
layout = "lvm"
lv_size = "80%"

[network_templates.demo]
interfaces = [{{ name = "eth0", link = "dhcp", subnet = "demo" }}]

[profiles.web]
storage = "flat"
network = "demo"
image = "debian"
tags = ["web"]

[profiles.db]
storage = "lvm"
network = "demo"
image = "debian"
tags = ["db"]
expect = {{ min_cpus = 8 }}

[policy]
parallelism = 64
power_poll_seconds = 0

[policy.timeouts]
boot = "60s"
heartbeat = "30s"

"#,
        count = machines.len(),
    );
    for machine in machines {
        let sim = sims
            .machine(machine.index)
            .context("a simulated machine per declared one")?;
        let mut extra = String::new();
        if let Some(profile) = machine.profile {
            extra.push_str(&format!("profile = \"{profile}\"\n"));
        }
        match (deploy, machine.profile) {
            (true, Some(_)) => extra.push_str("state = \"deployed\"\nowner = \"demo\"\n"),
            _ => extra.push_str("state = \"ready\"\n"),
        }
        if let (true, Some(source)) = (deploy, &machine.clone_of) {
            extra.push_str(&format!(
                "clone_from = {{ source = \"{source}\", storage = true, interfaces = true }}\n"
            ));
        }
        text.push_str(&sims.machine_toml(sim, &machine.name, &extra));
        text.push('\n');
    }
    Ok(text)
}

/// The controller, in this process, on the demo's state directory.
pub(super) struct DemoController {
    pub api_url: String,
    pub boot_url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl DemoController {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

async fn start_controller(fleet_file: &Path, state_dir: &Path) -> anyhow::Result<DemoController> {
    let fleet = match fleet::config::load(&[fleet_file.to_path_buf()]) {
        Ok(fleet) => fleet,
        Err(diagnostics) => bail!("the demo fleet file: {}", diagnostics.render(false)),
    };
    start_controller_with(fleet, state_dir).await
}

/// A controller in this process for `fleet` (its boot settings, images, subnets), on
/// `state_dir`, its API and boot HTTP on loopback ports of the system's choosing.
pub(super) async fn start_controller_with(
    fleet: fleet::config::Fleet,
    state_dir: &Path,
) -> anyhow::Result<DemoController> {
    let options = fleet::controller::ServeOptions {
        listen: "127.0.0.1:0".parse()?,
        boot_listen: "127.0.0.1:0".parse()?,
        tls: None,
        database: None,
        state_dir: state_dir.to_path_buf(),
        secret_key_file: None,
        boot_interfaces: Vec::new(),
        fleet: Some(fleet),
        watch: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(error) = fleet::controller::serve(options, shutdown).await {
            eprintln!("fleet demo: the controller stopped: {error}");
        }
    });
    let api_url_file = state_dir.join(fleet::controller::API_URL_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    let api_url = loop {
        if let Ok(text) = std::fs::read_to_string(&api_url_file) {
            if !text.trim().is_empty() {
                break text.trim().to_string();
            }
        }
        if Instant::now() > deadline || task.is_finished() {
            bail!("the controller did not start (see above)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let boot_url = std::fs::read_to_string(state_dir.join(fleet::controller::BOOT_URL_FILE))?
        .trim()
        .to_string();
    Ok(DemoController {
        api_url,
        boot_url,
        stop,
        task,
    })
}

async fn wait_for_enlistment(
    connection: &Connection,
    machines: &[Arc<SimMachine>],
) -> anyhow::Result<()> {
    let client = Client::new(connection)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for machine in machines {
        let name = format!(
            "enlisted-{}",
            machine.hardware.boot_mac().to_string().replace(':', "")
        );
        loop {
            let shown: Result<MachineDetail, _> = client.get(&format!("/machines/{name}")).await?;
            if shown.is_ok() {
                println!("{name}: enlisted itself (new)");
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} did not enlist: {:?}", machine.notes());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn apply(connection: &Connection, file: &Path) -> anyhow::Result<()> {
    let args = ApplyArgs {
        plan: None,
        files: vec![PathBuf::from(file)],
        yes: true,
        allow_destroy: false,
        strict: false,
    };
    // A failed machine fails the apply: the demo goes on and reports it.
    super::apply::run(connection, &args).await?;
    Ok(())
}

/// One row per machine: its status, hardware, what happened (from its events) and why it failed.
async fn print_story(
    connection: &Connection,
    machines: &[DemoMachine],
    sims: &SimFleet,
) -> anyhow::Result<()> {
    let client = Client::new(connection)?;
    let mut names: Vec<String> = machines
        .iter()
        .map(|machine| machine.name.clone())
        .collect();
    for machine in &sims.machines[machines.len()..] {
        names.push(format!(
            "enlisted-{}",
            machine.hardware.boot_mac().to_string().replace(':', "")
        ));
    }
    // Where each machine's deployment came from: `fleet file`, or `clone of NAME`.
    let observed: fleet::plan::Observed = client.get("/observed").await??;
    let origins: HashMap<String, String> = observed
        .machines
        .iter()
        .filter_map(|machine| {
            let origin = machine.deployment.as_ref()?.origin.clone();
            Some((machine.name.to_string(), origin))
        })
        .collect();
    let mut table = new_table(&["MACHINE", "STATUS", "HARDWARE", "WHAT HAPPENED", "REASON"]);
    for name in &names {
        let shown = match client
            .get::<MachineDetail>(&format!("/machines/{name}"))
            .await?
        {
            Ok(shown) => shown.machine,
            Err(failure) => bail!("{name}: {failure}"),
        };
        let events: Vec<EventView> = client
            .get(&format!("/events?machine={name}&limit=10000"))
            .await??;
        let disks = shown.disks.len();
        let hardware = format!(
            "{} CPUs, {} GiB, {disks} disk{}",
            shown.hardware.cpus.unwrap_or(0),
            shown.hardware.memory_mib.unwrap_or(0) / 1024,
            if disks == 1 { "" } else { "s" }
        );
        table.add_row(vec![
            Cell::new(name),
            Cell::new(shown.status.as_str()),
            Cell::new(hardware),
            Cell::new(story(&events, origins.get(name.as_str()))),
            Cell::new(shown.status_reason.unwrap_or_default()),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// The steps of a machine's life, oldest first: enlist → commission → test → clone → deploy.
/// `origin`: where its deployment's configuration came from (`clone of NAME`: a clone).
fn story(events: &[EventView], origin: Option<&String>) -> String {
    let cloned = origin.and_then(|origin| origin.strip_prefix("clone of "));
    let mut ordered: Vec<&EventView> = events.iter().collect();
    ordered.sort_by_key(|event| event.id);
    let mut steps: Vec<&str> = Vec::new();
    for event in ordered {
        let step = match (event.kind.as_str(), event.to) {
            ("enlist", _) => Some("enlist"),
            ("clone", _)
                if event
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("cloned ")) =>
            {
                Some("clone")
            }
            (_, Some(status)) => match status.as_str() {
                "commissioning" => Some("commission"),
                "testing" => Some("test"),
                "deploying" if cloned.is_some() => Some("clone → deploy"),
                "deploying" => Some("deploy"),
                "ready" | "deployed" | "new" => None,
                failed if failed.starts_with("failed") => Some("FAILED"),
                _ => None,
            },
            _ => None,
        };
        if let Some(step) = step {
            if steps.last() != Some(&step) {
                steps.push(step);
            }
        }
    }
    let mut told = steps.join(" → ");
    if let Some(source) = cloned {
        told.push_str(&format!(" (clone of {source})"));
    }
    told
}
