//! `fleet bench lifecycle` and `fleet bench deploy`: N simulated machines (`fleet::sim`, in this
//! process) against `fleet serve` as a child process on a temporary state directory (SQLite, or
//! a fresh PostgreSQL database), from cold — nothing in the store — through enlist, commission
//! and test to ready; `deploy` then deploys them all and measures the image bytes served per
//! second. The controller's memory and CPU are read from /proc while it runs, so the figures
//! are its own and not this process's (which runs the machines).
//!
//! `--controllers K` (PostgreSQL only) runs K `fleet serve` children on the one fresh database,
//! each the boot server (DHCP, TFTP, HTTP, machine API) of its share of the machines, as
//! `sim::three_controllers_share_the_machines_and_outlive_their_leader` does; the apply is
//! posted once (to the first), the leader runs it, and the figures are per controller and summed.

use super::client::Client;
use super::demo::{free_udp_port, gzip, loopback_fleet_base, write_boot_files};
use super::Connection;
use anyhow::{bail, Context};
use fleet::api::views::{ControllerView, MachineRow};
use fleet::apply::{ApplyProgress, ApplyRequest, ApplyStarted};
use fleet::model::{PowerState, Status};
use fleet::sim::{SimFleet, SimMachine, SimNetwork, SimOptions};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the machines' statuses and the controller's /proc figures are read: 0.1 ms per
/// machine, from 0.1 s to 1 s — often enough for phase times, rarely enough that listing the
/// fleet costs the controller little.
fn sample_every(machines: usize) -> Duration {
    Duration::from_micros(100 * machines as u64)
        .clamp(Duration::from_millis(100), Duration::from_millis(1000))
}
/// The simulated machines' addresses: the pool starts here (127.77.0.0/16, loopback).
const POOL_START: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 10);
/// The most machines the pool holds (to 127.77.255.250).
const MAX_MACHINES: u32 = 65_000;
/// The most controllers one run starts (two cores: more measure the scheduler, not fleet).
const MAX_CONTROLLERS: u32 = 16;
/// The goal of issue 15: 10,000 machines to ready in under 60 s, the controller under 1 GiB.
const GOAL_MACHINES: f64 = 10_000.0;
const GOAL_SECONDS: f64 = 60.0;
const GOAL_MIB: f64 = 1024.0;

/// What to measure.
pub struct LifecycleOptions {
    pub machines: u32,
    /// An administrator's PostgreSQL URL: a fresh database is created through it for the run
    /// and dropped after. `None`: SQLite in the state directory (`fleet serve`'s default).
    pub database: Option<String>,
    /// How many `fleet serve` share the database, each the boot server of an even share of
    /// the machines (more than one: PostgreSQL only).
    pub controllers: u32,
    /// Record the controller with `perf record` and print its top symbols.
    pub perf: bool,
    /// Deploy every machine once ready, with an image of this many MiB.
    pub deploy_image_mib: Option<u32>,
    /// Give up waiting after this long from the first power-on, and report how far it got.
    pub time_limit: Duration,
}

pub async fn run(options: LifecycleOptions) -> anyhow::Result<ExitCode> {
    if options.machines == 0 || options.machines > MAX_MACHINES {
        bail!("--machines is 1 to {MAX_MACHINES}");
    }
    if options.controllers == 0 || options.controllers > MAX_CONTROLLERS {
        bail!("--controllers is 1 to {MAX_CONTROLLERS}");
    }
    if options.controllers > 1 && options.database.is_none() {
        bail!(
            "--controllers {} needs --database postgres://ADMIN@HOST/DB: several controllers share one PostgreSQL database, and SQLite is one controller's store (give an administrator's URL; the run creates and drops a database of its own)",
            options.controllers
        );
    }
    if options.machines < options.controllers {
        bail!(
            "--machines ({}) must be at least --controllers ({}): each controller is the boot server of a share of the machines",
            options.machines,
            options.controllers
        );
    }
    raise_open_file_limit(u64::from(options.machines) * FILES_PER_MACHINE + 1024)?;
    let directory = tempfile::Builder::new().prefix("fleet-bench.").tempdir()?;
    let dir = directory.path().to_path_buf();
    let database = match &options.database {
        Some(admin_url) => Some(FreshDatabase::create(admin_url).await?),
        None => None,
    };
    let measured = measure(&options, &dir, database.as_ref()).await;
    if let Some(database) = database {
        database.drop_it().await;
    }
    measured
}

/// Open files per simulated machine, counted for the bench process and each controller alike:
/// its BMC's socket, its HTTP connection kept alive, a DHCP or TFTP socket while it boots, and
/// one spare.
const FILES_PER_MACHINE: u64 = 4;

/// Raises this process's open-file limit (which the controllers it starts inherit) to `wanted`,
/// within the hard limit — or past it as root, as far as the kernel's `fs.nr_open` goes. 10,000
/// machines need about 40,000; a default of 1,024 (or this machine's 20,000) stops the bench
/// with "Too many open files" halfway.
fn raise_open_file_limit(wanted: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(());
    }
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let target = wanted.min(ceiling.max(hard));
    if target > hard && setrlimit(Resource::RLIMIT_NOFILE, target, target).is_ok() {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, target.min(hard), hard)?;
    if target.min(hard) < wanted {
        eprintln!(
            "fleet bench: open files limited to {} (hard limit; {wanted} wanted): a run this size may stop with \"Too many open files\" (raise it with `ulimit -n` as root)",
            target.min(hard)
        );
    }
    Ok(())
}

/// How many machines each of `controllers` boots: an even split, the first ones one more.
fn shares(machines: u32, controllers: u32) -> Vec<u32> {
    (0..controllers)
        .map(|number| machines / controllers + u32::from(number < machines % controllers))
        .collect()
}

async fn measure(
    options: &LifecycleOptions,
    dir: &Path,
    database: Option<&FreshDatabase>,
) -> anyhow::Result<ExitCode> {
    write_boot_files(dir)?;
    if let Some(mib) = options.deploy_image_mib {
        write_incompressible_image(dir, mib)?;
    }
    let several = options.controllers > 1;
    // Every controller on one database seals and opens the BMC passwords with the same key.
    let secret_key_file = match several {
        true => Some(write_secret_key(dir)?),
        false => None,
    };
    let database_url = database.map(|database| database.url.clone());
    let mut fleets = Vec::new();
    let mut starts = Vec::new();
    let mut first_index = 0;
    for (number, share) in shares(options.machines, options.controllers)
        .into_iter()
        .enumerate()
    {
        // Its own boot ports: the machines of this share ask this controller only.
        let network = SimNetwork {
            dhcp: SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
            tftp: SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
            relay: Ipv4Addr::LOCALHOST,
        };
        fleets.push(
            SimFleet::start(SimOptions {
                count: share,
                first_index,
                network,
                bmc_listen: "127.0.0.1:0".parse()?,
                faults: HashMap::new(),
            })
            .await?,
        );
        first_index += share;
        // One controller keeps the names it always had (state, controller.log).
        let suffix = match several {
            true => format!("-{}", number + 1),
            false => String::new(),
        };
        let settings_file = dir.join(format!("fleet-0-controller{suffix}.toml"));
        std::fs::write(
            &settings_file,
            fleet_header(dir, network, options.machines)?,
        )?;
        starts.push(ChildStart {
            label: match several {
                true => format!("controller {}", number + 1),
                false => "the controller".to_string(),
            },
            settings_file,
            state_dir: dir.join(format!("state{suffix}")),
            log: dir.join(format!("controller{suffix}.log")),
            database: database_url.clone(),
            secret_key_file: secret_key_file.clone(),
        });
    }
    let mut controllers = Controllers::start(&starts).await?;
    let perf = match options.perf {
        true => PerfRecording::start(&controllers.pids(), dir),
        false => None,
    };
    let outcome = drive(
        options,
        dir,
        &fleets,
        &starts[0].state_dir,
        &mut controllers,
    )
    .await;
    let controller_figures = controllers.stop();
    let perf_top = perf.map(PerfRecording::finish);
    let outcome = outcome?;
    let backend = match database {
        Some(database) => format!("PostgreSQL (fresh database {})", database.name),
        None => "SQLite (fleet serve's default, in its state directory)".to_string(),
    };
    print_report(
        options,
        &backend,
        &outcome,
        &controller_figures,
        perf_top.as_deref(),
    );
    Ok(if outcome.all_ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A random key for the controllers' sealed secrets, in `DIR/secret.key` (64 hex digits, 0600).
fn write_secret_key(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("secret.key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(hex::encode(rand::random::<[u8; 32]>()).as_bytes())?;
    Ok(path)
}

/// The controller's settings: its boot services on loopback, a pool of one loopback address
/// per machine, the ephemeral image; everything else is `fleet serve`'s default.
fn fleet_header(dir: &Path, network: SimNetwork, machines: u32) -> anyhow::Result<String> {
    let pool_end = Ipv4Addr::from(u32::from(POOL_START) + machines + 64);
    let base = loopback_fleet_base(dir, network, "bench", (POOL_START, pool_end))?;
    Ok(format!(
        r#"# fleet bench: {machines} simulated machines on loopback
{base}[network_templates.bench]
interfaces = [{{ name = "eth0", link = "dhcp", subnet = "bench" }}]

[profiles.web]
storage = "flat"
network = "bench"
image = "debian"

"#
    ))
}

/// The fleet file that adopts every enlisted machine (of every controller's share) with its
/// BMC: all at once (parallelism = the fleet), wanted `state` (`ready`, or `deployed` with the
/// web profile). Its `[controller]` section is the first controller's, to which it is posted.
fn fleet_file_for(dir: &Path, fleets: &[SimFleet], deployed: bool) -> anyhow::Result<String> {
    let count = machines_of(fleets).count();
    let network = fleets[0].machines[0].network;
    let mut text = fleet_header(dir, network, count as u32)?;
    text.push_str(&format!("[policy]\nparallelism = {count}\n\n"));
    let extra = match deployed {
        true => "profile = \"web\"\nstate = \"deployed\"\nowner = \"bench\"\n",
        false => "state = \"ready\"\n",
    };
    for sims in fleets {
        for machine in &sims.machines {
            text.push_str(&sims.machine_toml(machine, &enlisted_name(machine), extra));
        }
    }
    Ok(text)
}

/// Every simulated machine, of every controller's share.
fn machines_of(fleets: &[SimFleet]) -> impl Iterator<Item = &Arc<SimMachine>> {
    fleets.iter().flat_map(|fleet| &fleet.machines)
}

/// The name enlistment gives a machine: `enlisted-` and its boot MAC's hex.
fn enlisted_name(machine: &SimMachine) -> String {
    format!(
        "enlisted-{}",
        machine.hardware.boot_mac().to_string().replace(':', "")
    )
}

/// A root image of `mib` MiB that gzip cannot shrink (so the bytes served are the bytes
/// written), in place of the demo's compressible one.
fn write_incompressible_image(dir: &Path, mib: u32) -> anyhow::Result<()> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..mib as usize * 1024 * 1024)
        .map(|_| {
            // xorshift64: cheap, and random enough for gzip.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(dir.join("debian.tgz"), gzip(&bytes)?)?;
    Ok(())
}

/// What happened, and when.
struct Outcome {
    machines: usize,
    /// Seconds from the first power-on: every machine enlisted (and powered itself off); the
    /// apply started (plan made, posted); every machine past commissioning; every one ready.
    enlisted: f64,
    applying: f64,
    commissioned: Option<f64>,
    ready: f64,
    ready_count: usize,
    /// The controllers' CPU seconds from their start to the last machine ready: each one's,
    /// in their order.
    controller_cpu_to_ready: Vec<f64>,
    /// The machines each controller was the boot server of, in their order.
    shares: Vec<usize>,
    /// Which controller (index) held the leadership when the apply was posted and when the
    /// last machine was ready; `None`: not asked (one controller) or none led.
    leader_at_apply: Option<usize>,
    leader_at_ready: Option<usize>,
    failed: Vec<String>,
    /// The deploy phase, if asked: seconds from its apply's start, and the image's size.
    deploy: Option<DeployOutcome>,
    /// This process's CPU seconds (the simulated machines, the plans, the polling).
    bench_cpu: f64,
    load_before: String,
    load_after: String,
}

struct DeployOutcome {
    seconds: f64,
    /// The controller's CPU seconds during the deploy phase.
    controller_cpu: f64,
    deployed: usize,
    image_bytes: u64,
}

impl Outcome {
    fn all_ready(&self) -> bool {
        self.ready_count == self.machines
            && self
                .deploy
                .as_ref()
                .is_none_or(|deploy| deploy.deployed == self.machines)
    }
}

async fn drive(
    options: &LifecycleOptions,
    dir: &Path,
    fleets: &[SimFleet],
    state_dir: &Path,
    controller: &mut Controllers,
) -> anyhow::Result<Outcome> {
    // The first controller made the database (and its operator token): the bench talks to it.
    let api_url = controller.api_urls[0].clone();
    let connection = Connection {
        server: Some(api_url),
        tls_fingerprint: None,
        token: None,
        state_dir: state_dir.to_path_buf(),
    };
    let client = Client::new(&connection)?;
    let load_before = load_average();
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    for machine in machines_of(fleets) {
        machine.power_on();
    }
    let deadline = started + options.time_limit;
    wait_until_enlisted(fleets, controller, deadline).await?;
    let enlisted = started.elapsed().as_secs_f64();
    let ready_file = dir.join("fleet-1-ready.toml");
    std::fs::write(&ready_file, fleet_file_for(dir, fleets, false)?)?;
    let apply = start_apply(&connection, &client, &ready_file).await?;
    let applying = started.elapsed().as_secs_f64();
    let leader_at_apply = controller.leader(&client).await?;
    let followed = follow(
        &client,
        &apply,
        controller,
        &[Status::New, Status::Commissioning],
        &[Status::New, Status::Commissioning, Status::Testing],
        deadline,
    )
    .await?;
    let commissioned = followed.first_phase_over.map(|at| at - started);
    let ready = started.elapsed().as_secs_f64();
    let controller_cpu_to_ready = controller.cpu_seconds_each();
    let leader_at_ready = controller.leader(&client).await?;
    let rows: Vec<MachineRow> = client.get("/machines").await??;
    let ready_count = rows
        .iter()
        .filter(|row| row.status == Status::Ready)
        .count();
    let mut failed = followed.failed;
    let deploy = match options.deploy_image_mib {
        Some(_) => {
            let deadline = Instant::now() + options.time_limit;
            let deployed =
                deploy_all(dir, fleets, &connection, &client, controller, deadline).await?;
            failed.extend(deployed.1);
            Some(deployed.0)
        }
        None => None,
    };
    Ok(Outcome {
        machines: machines_of(fleets).count(),
        enlisted,
        applying,
        commissioned: commissioned.map(|at| at.as_secs_f64()),
        ready,
        ready_count,
        controller_cpu_to_ready,
        shares: fleets.iter().map(|fleet| fleet.machines.len()).collect(),
        leader_at_apply,
        leader_at_ready,
        failed,
        deploy,
        bench_cpu: own_cpu_seconds() - cpu_before,
        load_before,
        load_after: load_average(),
    })
}

/// Waits until every machine enlisted: enlistment ends with `after poweroff`, so a machine
/// that booted and is off again has enlisted (a failed boot retries with the power on).
async fn wait_until_enlisted(
    fleets: &[SimFleet],
    controller: &mut Controllers,
    deadline: Instant,
) -> anyhow::Result<()> {
    let enlisted = |machine: &&Arc<SimMachine>| machine.boots() >= 1 && !machine.is_on();
    while !machines_of(fleets).all(|machine| enlisted(&machine)) {
        controller.sample()?;
        if Instant::now() > deadline {
            let waiting: Vec<_> = machines_of(fleets).filter(|m| !enlisted(m)).collect();
            bail!(
                "{} of {} machines did not enlist within the time limit; the first did: {:?}",
                waiting.len(),
                machines_of(fleets).count(),
                waiting[0].notes()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Plans `file` against the controller and starts applying it, as `fleet apply --yes` does.
async fn start_apply(
    connection: &Connection,
    client: &Client,
    file: &Path,
) -> anyhow::Result<ApplyStarted> {
    let plan = match super::plan::make_plan(connection, &[PathBuf::from(file)], None).await? {
        Ok(plan) => plan,
        Err(_) => bail!("planning {} failed (see above)", file.display()),
    };
    let request = ApplyRequest {
        plan,
        allow_destroy: false,
        strict: false,
    };
    let started: ApplyStarted = match client.post("/applies", &request).await? {
        Ok(started) => started,
        Err(failure) => bail!("the apply was refused: {failure}"),
    };
    if let Some(refusal) = started.refused.first() {
        bail!(
            "{} machines refused, e.g. {}: {}",
            started.refused.len(),
            refusal.machine,
            refusal.reason
        );
    }
    Ok(started)
}

struct Followed {
    /// When no machine was left in a status of `first` (e.g. new or commissioning): the end
    /// of the first phase.
    first_phase_over: Option<Instant>,
    /// `NAME: REASON` of each machine that failed.
    failed: Vec<String>,
}

/// Reads the machines' statuses until none is in one of `working` and the apply finished,
/// sampling the controller meanwhile. The statuses (one list of the fleet a second) tell the
/// phases; the apply's progress is read only to end.
async fn follow(
    client: &Client,
    started: &ApplyStarted,
    controller: &mut Controllers,
    first: &[Status],
    working: &[Status],
    deadline: Instant,
) -> anyhow::Result<Followed> {
    let mut first_phase_over = None;
    loop {
        controller.sample()?;
        let rows: Vec<MachineRow> = client.get("/machines").await??;
        let counts = |statuses: &[Status]| {
            rows.iter()
                .filter(|row| statuses.contains(&row.status))
                .count()
        };
        if first_phase_over.is_none() && counts(first) == 0 {
            first_phase_over = Some(Instant::now());
        }
        if Instant::now() > deadline {
            let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
            for row in &rows {
                *by_status.entry(row.status.as_str()).or_default() += 1;
            }
            return Ok(Followed {
                first_phase_over,
                failed: vec![format!(
                    "TIME LIMIT reached; machines by status: {by_status:?}"
                )],
            });
        }
        if counts(working) == 0 {
            let progress: ApplyProgress = client
                .get(&format!("/applies/{}", started.id))
                .await?
                .map_err(|failure| anyhow::anyhow!("following apply {}: {failure}", started.id))?;
            if progress.finished() {
                let failed = progress
                    .machines
                    .iter()
                    .filter(|machine| machine.state != "done")
                    .map(|machine| {
                        let reason = machine.reason.as_deref().unwrap_or(&machine.state);
                        format!("{}: {reason}", machine.name)
                    })
                    .collect();
                return Ok(Followed {
                    first_phase_over,
                    failed,
                });
            }
        }
        tokio::time::sleep(sample_every(rows.len())).await;
    }
}

/// Deploys every (ready) machine with the web profile and its image; the seconds the apply took
/// and the machines that fetched and checked the image.
async fn deploy_all(
    dir: &Path,
    fleets: &[SimFleet],
    connection: &Connection,
    client: &Client,
    controller: &mut Controllers,
    deadline: Instant,
) -> anyhow::Result<(DeployOutcome, Vec<String>)> {
    wait_until_recorded_off(client, controller, deadline).await?;
    let deploy_file = dir.join("fleet-2-deployed.toml");
    std::fs::write(&deploy_file, fleet_file_for(dir, fleets, true)?)?;
    let started = Instant::now();
    let cpu_before = controller.cpu_seconds();
    let apply = start_apply(connection, client, &deploy_file).await?;
    let followed = follow(
        client,
        &apply,
        controller,
        &[Status::Ready],
        &[Status::Ready, Status::Deploying],
        deadline,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let deployed = machines_of(fleets)
        .filter(|machine| machine.called_back())
        .count();
    let image_bytes = std::fs::metadata(dir.join("debian.tgz"))?.len();
    Ok((
        DeployOutcome {
            seconds,
            controller_cpu: controller.cpu_seconds() - cpu_before,
            deployed,
            image_bytes,
        },
        followed.failed,
    ))
}

/// Waits until the controller records every machine off: a machine powers itself off after
/// its tests, and a plan made while its power still reads `on` is refused at apply ("changed
/// since the plan").
async fn wait_until_recorded_off(
    client: &Client,
    controller: &mut Controllers,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        controller.sample()?;
        let rows: Vec<MachineRow> = client.get("/machines").await??;
        let on = rows
            .iter()
            .filter(|row| row.power == PowerState::On)
            .count();
        if on == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{on} machines still recorded on when the time limit came");
        }
        tokio::time::sleep(sample_every(rows.len())).await;
    }
}

/// How to start one `fleet serve` child.
struct ChildStart {
    /// How the report and errors name it: `the controller`, or `controller N`.
    label: String,
    settings_file: PathBuf,
    state_dir: PathBuf,
    /// Its stdout; its stderr goes beside it (`.stderr`).
    log: PathBuf,
    database: Option<String>,
    secret_key_file: Option<PathBuf>,
}

/// The `fleet serve` children of one run, in their order (the first made the database).
struct Controllers {
    children: Vec<ChildController>,
    /// Each one's API URL and controller id (from its state directory), in their order.
    api_urls: Vec<String>,
    ids: Vec<String>,
}

impl Controllers {
    /// Starts the first and waits until it serves (it migrates the database and writes the
    /// operator token the bench uses), then the others, and waits for them too.
    async fn start(starts: &[ChildStart]) -> anyhow::Result<Controllers> {
        let mut controllers = Controllers {
            children: Vec::new(),
            api_urls: Vec::new(),
            ids: Vec::new(),
        };
        let several = starts.len() > 1;
        let (first, others) = starts.split_first().context("no controller to start")?;
        controllers.children.push(ChildController::start(first)?);
        controllers.wait_until_up(first, several).await?;
        for start in others {
            controllers.children.push(ChildController::start(start)?);
        }
        for start in others {
            controllers.wait_until_up(start, several).await?;
        }
        Ok(controllers)
    }

    /// Waits until the child of `start` (the next not yet up, in their order) serves, and
    /// notes its API URL (and, with `several`, its controller id).
    async fn wait_until_up(&mut self, start: &ChildStart, several: bool) -> anyhow::Result<()> {
        let child = &mut self.children[self.api_urls.len()];
        self.api_urls
            .push(child.wait_until_up(&start.state_dir).await?);
        if several {
            self.ids.push(child.wait_for_id(&start.state_dir).await?);
        }
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(ChildController::pid).collect()
    }

    /// Samples every one; fails if one died.
    fn sample(&mut self) -> anyhow::Result<()> {
        self.children
            .iter_mut()
            .try_for_each(ChildController::sample)
    }

    /// Their CPU seconds, summed, at the last sample.
    fn cpu_seconds(&self) -> f64 {
        self.children.iter().map(ChildController::cpu_seconds).sum()
    }

    fn cpu_seconds_each(&self) -> Vec<f64> {
        self.children
            .iter()
            .map(ChildController::cpu_seconds)
            .collect()
    }

    /// Which one holds the leadership now, by `GET /controllers` (several controllers only).
    async fn leader(&self, client: &Client) -> anyhow::Result<Option<usize>> {
        if self.children.len() < 2 {
            return Ok(None);
        }
        let rows: Vec<ControllerView> = client.get("/controllers").await??;
        let leader = rows.iter().find(|row| row.leader);
        Ok(leader.and_then(|row| self.ids.iter().position(|id| *id == row.id)))
    }

    /// Stops them all (a last sample of each while all still run, then SIGTERM to all at once,
    /// so they stop together): their figures, in their order.
    fn stop(mut self) -> Vec<ControllerFigures> {
        for child in &mut self.children {
            let _ = child.sample();
        }
        for child in &self.children {
            send_signal(child.pid(), "TERM");
        }
        self.children
            .into_iter()
            .map(ChildController::wait_stopped)
            .collect()
    }
}

/// `fleet serve -f FILE` as a child process, and what /proc says of it.
struct ChildController {
    child: Child,
    label: String,
    log: PathBuf,
    figures: ControllerFigures,
}

#[derive(Default, Clone)]
struct ControllerFigures {
    /// VmHWM: the most resident memory it ever had (KiB).
    peak_kib: u64,
    user_seconds: f64,
    system_seconds: f64,
    /// CPU seconds per thread, by thread id: (name, seconds) at the last sample.
    threads: HashMap<u32, (String, f64)>,
    /// The command line, for the report.
    command: String,
    /// Its warnings and errors, by message (fields dropped), most frequent first.
    warnings: Vec<(usize, String)>,
}

/// /proc counts CPU time in USER_HZ ticks, 100 per second on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;

impl ChildController {
    fn start(start: &ChildStart) -> anyhow::Result<ChildController> {
        let log = &start.log;
        let mut command = Command::new(std::env::current_exe()?);
        // Loopback addresses: the defaults (5240, 0.0.0.0:5248) may be taken, or not loopback.
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--boot-listen"])
            .arg("127.0.0.1:0")
            .arg("-f")
            .arg(&start.settings_file)
            .arg("--state-dir")
            .arg(&start.state_dir)
            .env_remove("FLEET_DATABASE")
            .env_remove(fleet::store::SECRET_KEY_ENV)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::create(log.with_extension("stderr"))?);
        if let Some(url) = &start.database {
            command.arg("--database").arg(url);
        }
        if let Some(key) = &start.secret_key_file {
            command.arg("--secret-key-file").arg(key);
        }
        let shown = std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|word| word.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let child = command
            .spawn()
            .with_context(|| format!("starting fleet serve ({})", start.label))?;
        Ok(ChildController {
            child,
            label: start.label.clone(),
            log: log.clone(),
            figures: ControllerFigures {
                command: shown,
                ..ControllerFigures::default()
            },
        })
    }

    /// User and system CPU seconds at the last sample.
    fn cpu_seconds(&self) -> f64 {
        self.figures.user_seconds + self.figures.system_seconds
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_until_up(&mut self, state_dir: &Path) -> anyhow::Result<String> {
        let api_url_file = state_dir.join(fleet::controller::API_URL_FILE);
        match self.wait_for_text(&api_url_file).await? {
            Some(url) => Ok(url),
            None => {
                let stderr =
                    std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default();
                bail!("fleet serve ({}) did not start:\n{stderr}", self.label);
            }
        }
    }

    /// The trimmed text of `file` once it is written (not empty); `None` if the controller
    /// exits first or 60 s pass.
    async fn wait_for_text(&mut self, file: &Path) -> anyhow::Result<Option<String>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(file) {
                if !text.trim().is_empty() {
                    return Ok(Some(text.trim().to_string()));
                }
            }
            if Instant::now() > deadline || self.child.try_wait()?.is_some() {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its controller id, written into its state directory once it has registered (which may
    /// come just after its API).
    async fn wait_for_id(&mut self, state_dir: &Path) -> anyhow::Result<String> {
        let id_file = state_dir.join("controller-id");
        match self.wait_for_text(&id_file).await? {
            Some(id) => Ok(id),
            None => bail!(
                "fleet serve ({}) wrote no {} within 60 s",
                self.label,
                id_file.display()
            ),
        }
    }

    /// Reads its memory and CPU (whole process and per thread) from /proc; fails if it died.
    fn sample(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let stderr =
                std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default();
            bail!("fleet serve ({}) stopped ({status}):\n{stderr}", self.label);
        }
        let proc_dir = PathBuf::from(format!("/proc/{}", self.pid()));
        if let Some(kib) = vm_hwm_kib(&proc_dir.join("status")) {
            self.figures.peak_kib = self.figures.peak_kib.max(kib);
        }
        if let Some((_, user, system)) = cpu_of(&proc_dir.join("stat")) {
            self.figures.user_seconds = user;
            self.figures.system_seconds = system;
        }
        for entry in std::fs::read_dir(proc_dir.join("task"))?.flatten() {
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some((name, user, system)) = cpu_of(&entry.path().join("stat")) {
                self.figures.threads.insert(tid, (name, user + system));
            }
        }
        Ok(())
    }

    /// Once sent SIGTERM: waits until it stopped (it closes its store), 20 s at most, and
    /// counts its warnings.
    fn wait_stopped(mut self) -> ControllerFigures {
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default();
        self.figures.warnings = warnings_by_message(&stderr);
        std::mem::take(&mut self.figures)
    }
}

impl Drop for ChildController {
    fn drop(&mut self) {
        // An error on the way: never leave a controller behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends SIGNAL to a child of ours by its id, with kill(1) (nix is built without `signal`).
fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Counts the controller's WARN and ERROR lines by message: the ANSI colours, the time, the
/// target and the fields (` key=value`) dropped.
fn warnings_by_message(stderr: &str) -> Vec<(usize, String)> {
    let colours = regex::Regex::new("\x1b\\[[0-9;]*m").expect("a valid regex");
    let fields = regex::Regex::new(" [a-z_.]+=.*$").expect("a valid regex");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in stderr.lines() {
        let line = colours.replace_all(line, "");
        let Some(at) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
            continue;
        };
        let message = line[at..].trim();
        let message = fields.replace(message, "");
        // Numbers vary from line to line (counts, addresses): one entry per shape.
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        *counts.entry(message).or_default() += 1;
    }
    let mut sorted: Vec<(usize, String)> = counts.into_iter().map(|(m, n)| (n, m)).collect();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    sorted
}

fn vm_hwm_kib(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (name, user seconds, system seconds) of a /proc stat file (a process's or a thread's).
fn cpu_of(stat: &Path) -> Option<(String, f64, f64)> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The name is in parentheses and may hold spaces: the fields follow its last `)`.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5); after the name, 12 and 13 (0-based 11, 12).
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((name, user / TICKS_PER_SECOND, system / TICKS_PER_SECOND))
}

/// The controller's CPU by thread name (digits and dashes at the end dropped: the tokio
/// workers are one line), largest first.
fn cpu_by_thread_kind(figures: &ControllerFigures) -> Vec<(String, f64)> {
    let mut kinds: BTreeMap<String, f64> = BTreeMap::new();
    for (name, seconds) in figures.threads.values() {
        let kind = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_');
        *kinds.entry(kind.to_string()).or_default() += seconds;
    }
    let mut sorted: Vec<(String, f64)> = kinds.into_iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    sorted
}

fn own_cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return f64::NAN;
    };
    (usage.user_time().num_microseconds() + usage.system_time().num_microseconds()) as f64 / 1e6
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `perf record` of the controller while the bench runs (if perf is there and allowed).
struct PerfRecording {
    child: Child,
    data: PathBuf,
}

impl PerfRecording {
    /// Records the processes `pids` (all the controllers, in one profile).
    fn start(pids: &[u32], dir: &Path) -> Option<PerfRecording> {
        let data = dir.join("perf.data");
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["record", "-F", "499", "-g", "-o"])
            .arg(&data)
            .args(["-p", &pids.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => Some(PerfRecording { child, data }),
            Err(error) => {
                eprintln!("fleet bench: perf record did not start ({error}); no profile");
                None
            }
        }
    }

    /// Stops the recording (it ends with the controller anyway) and returns the top symbols.
    fn finish(mut self) -> String {
        send_signal(self.child.id(), "INT");
        let _ = self.child.wait();
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--percent-limit",
                "1.5",
                "-i",
            ])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output();
        match report {
            Ok(output) => String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
                .take(20)
                .map(|line| format!("    {}\n", line.trim_end()))
                .collect(),
            Err(error) => format!("    perf report failed: {error}\n"),
        }
    }
}

/// A PostgreSQL database of its own for one run, created and dropped through an
/// administrator's URL.
struct FreshDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    async fn create(admin_url: &str) -> anyhow::Result<FreshDatabase> {
        use sqlx::Connection as _;
        let name = format!(
            "fleet_bench_{}_{:08x}",
            fleet::store::now_ms() / 1000,
            rand::random::<u32>()
        );
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating the database {name}"))?;
        let _ = admin.close().await;
        let mut url = reqwest::Url::parse(admin_url).context("the --database URL")?;
        url.set_path(&format!("/{name}"));
        Ok(FreshDatabase {
            admin_url: admin_url.to_string(),
            name,
            url: url.to_string(),
        })
    }

    async fn drop_it(self) {
        use sqlx::Connection as _;
        let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await else {
            eprintln!("fleet bench: could not drop the database {}", self.name);
            return;
        };
        let dropped = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await;
        if let Err(error) = dropped {
            eprintln!("fleet bench: dropping the database {}: {error}", self.name);
        }
        let _ = admin.close().await;
    }
}

/// The figures of several controllers as one: CPU, peaks (each one's own peak, so the sum is
/// at most what they held at once), threads and warnings added up.
fn summed(each: &[ControllerFigures]) -> ControllerFigures {
    let mut sum = ControllerFigures {
        command: each
            .first()
            .map(|one| one.command.clone())
            .unwrap_or_default(),
        ..ControllerFigures::default()
    };
    let mut warnings: HashMap<String, usize> = HashMap::new();
    for one in each {
        sum.peak_kib += one.peak_kib;
        sum.user_seconds += one.user_seconds;
        sum.system_seconds += one.system_seconds;
        // Thread ids are unique across the processes of one machine.
        sum.threads.extend(one.threads.clone());
        for (count, message) in &one.warnings {
            *warnings.entry(message.clone()).or_default() += count;
        }
    }
    sum.warnings = warnings.into_iter().map(|(m, n)| (n, m)).collect();
    sum.warnings
        .sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    sum
}

fn print_report(
    options: &LifecycleOptions,
    backend: &str,
    outcome: &Outcome,
    each: &[ControllerFigures],
    perf_top: Option<&str>,
) {
    let several = each.len() > 1;
    let controller = &summed(each);
    let machines = outcome.machines as f64;
    let per_second = outcome.ready_count as f64 / outcome.ready;
    let cpu: f64 = outcome.controller_cpu_to_ready.iter().sum();
    let peak_mib = controller.peak_kib as f64 / 1024.0;
    println!(
        "bench {}: {} machines, cold (empty store) → enlist → commission → test → ready{}, on {backend}{}",
        if outcome.deploy.is_some() { "deploy" } else { "lifecycle" },
        outcome.machines,
        if outcome.deploy.is_some() { " → deployed" } else { "" },
        match several {
            true => format!(", {} controllers (each the boot server of a share of the machines)", each.len()),
            false => String::new(),
        },
    );
    println!(
        "  settings: {}{}; every setting fleet serve's default but the loopback addresses and [policy] parallelism = {} (the whole fleet at once); the simulated machines run in the bench process (own address each in 127.77.0.0/16, 1 s power-on self test each boot)",
        controller.command,
        match several {
            true => format!(" (and {} more, each with its own state directory and fleet file: its own DHCP and TFTP ports; one --secret-key-file for all; the apply posted once, to controller 1)", each.len() - 1),
            false => String::new(),
        },
        outcome.machines
    );
    println!(
        "  result: {} of {} ready, {} failed",
        outcome.ready_count,
        outcome.machines,
        outcome.failed.len()
    );
    for failure in outcome.failed.iter().take(5) {
        println!("    failed {failure}");
    }
    println!(
        "  wall {:.1} s from the first power-on: {per_second:.1} machines per second to ready",
        outcome.ready
    );
    let commissioned = outcome
        .commissioned
        .map_or("?".to_string(), |at| format!("{at:.1}"));
    println!(
        "  phases (seconds from the first power-on, each when the last machine got there): all enlisted {:.1}, plan made and apply started {:.1}, all commissioned {commissioned}, all tested and ready {:.1}",
        outcome.enlisted, outcome.applying, outcome.ready
    );
    println!(
        "  {} to ready: peak memory (VmHWM) {peak_mib:.0} MiB{}{}, CPU {cpu:.1} s = {:.2} ms per machine, {:.0} % of one core over the run; whole run user {:.1} s, system {:.1} s",
        match several {
            true => format!("{} controllers summed", each.len()),
            false => "controller".to_string(),
        },
        if several { " (each one's own peak, added)" } else { "" },
        if outcome.deploy.is_some() { " (whole run)" } else { "" },
        cpu * 1000.0 / machines,
        cpu * 100.0 / outcome.ready,
        controller.user_seconds,
        controller.system_seconds,
    );
    if several {
        print_each_controller(outcome, each);
    }
    let split: Vec<String> = cpu_by_thread_kind(controller)
        .iter()
        .filter(|(_, seconds)| *seconds >= 0.05)
        .map(|(name, seconds)| format!("{name} {seconds:.1} s"))
        .collect();
    println!(
        "  {} CPU by thread (live threads at the end): {}",
        if several {
            "controllers'"
        } else {
            "controller"
        },
        split.join(", ")
    );
    let warnings = &controller.warnings;
    if !warnings.is_empty() {
        let total: usize = warnings.iter().map(|(count, _)| count).sum();
        println!(
            "  {} warnings and errors: {total}, the most frequent:",
            if several {
                "controllers'"
            } else {
                "controller"
            }
        );
        for (count, message) in warnings.iter().take(3) {
            println!("    {count} × {message}");
        }
    }
    println!(
        "  bench process (the simulated machines, plans, polling): CPU {:.1} s",
        outcome.bench_cpu
    );
    println!(
        "  load average (1, 5, 15 min): {} before, {} after (2 cores, shared with other work)",
        outcome.load_before, outcome.load_after
    );
    if let Some(deploy) = &outcome.deploy {
        let bytes = deploy.image_bytes as f64 * deploy.deployed as f64;
        println!(
            "  deploy: {} of {} deployed (image {:.1} MiB, fetched and checked by each) in {:.1} s: {:.1} MiB/s of image served over the whole deploy phase (power cycles and boots included), {:.1} deployments per second; controller CPU in the phase {:.1} s = {:.1} ms per MiB served",
            deploy.deployed,
            outcome.machines,
            deploy.image_bytes as f64 / 1048576.0,
            deploy.seconds,
            bytes / 1048576.0 / deploy.seconds,
            deploy.deployed as f64 / deploy.seconds,
            deploy.controller_cpu,
            deploy.controller_cpu * 1000.0 / (bytes / 1048576.0),
        );
    }
    let scaled = GOAL_MACHINES / per_second;
    println!(
        "  goal (issue 15): 10,000 to ready in < {GOAL_SECONDS} s with the controller < {GOAL_MIB} MiB; at this rate 10,000 take {scaled:.0} s{}",
        if options.machines as f64 >= GOAL_MACHINES {
            match outcome.ready < GOAL_SECONDS && peak_mib < GOAL_MIB && outcome.all_ready() {
                true => " — met".to_string(),
                false => format!(
                    " — NOT met ({:.1}× the time, {:.0} % of the memory)",
                    outcome.ready / GOAL_SECONDS,
                    peak_mib * 100.0 / GOAL_MIB
                ),
            }
        } else {
            String::new()
        }
    );
    if let Some(top) = perf_top {
        println!("  perf record of the controller, top symbols (self):\n{top}");
    }
}

/// One line per controller (its share, its peak, its CPU to ready), then which one led.
fn print_each_controller(outcome: &Outcome, each: &[ControllerFigures]) {
    let name = |index: Option<usize>| match index {
        Some(index) => format!("controller {}", index + 1),
        None => "none".to_string(),
    };
    for (index, figures) in each.iter().enumerate() {
        let cpu = outcome.controller_cpu_to_ready[index];
        let led = match (outcome.leader_at_apply, outcome.leader_at_ready) {
            (Some(at_apply), Some(at_ready)) if at_apply == index && at_ready == index => {
                ", leader"
            }
            (Some(at_apply), _) if at_apply == index => ", leader when the apply was posted",
            (_, Some(at_ready)) if at_ready == index => ", leader when the last was ready",
            _ => "",
        };
        println!(
            "    controller {} (boot server of {} machines{led}): peak memory (VmHWM) {:.0} MiB, CPU to ready {cpu:.1} s ({:.0} % of one core), whole run user {:.1} s, system {:.1} s",
            index + 1,
            outcome.shares[index],
            figures.peak_kib as f64 / 1024.0,
            cpu * 100.0 / outcome.ready,
            figures.user_seconds,
            figures.system_seconds,
        );
    }
    match outcome.leader_at_apply == outcome.leader_at_ready {
        true => println!(
            "  led by: {} (the reconcile loop, the apply's executor, timeouts, power), from the apply to the last machine ready",
            name(outcome.leader_at_apply)
        ),
        false => println!(
            "  led by: {} when the apply was posted, {} when the last machine was ready (the leadership moved)",
            name(outcome.leader_at_apply),
            name(outcome.leader_at_ready)
        ),
    }
}
