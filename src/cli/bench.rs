//! `fleet bench`: measures the speed targets and prints the figures. Each measurement runs the
//! real `fleet` binary as a child process, as a person would, and reads its peak memory from
//! the kernel's accounting of children.

use clap::Subcommand;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// `fleet validate` of a synthetic fleet (target: 100,000 machines under 1 s and 500 MB)
    Validate {
        #[arg(long, default_value_t = 100_000)]
        machines: usize,
    },
    /// `fleet plan` of a synthetic fleet against a synthetic observed snapshot: parse, validate,
    /// diff, render (target: 100,000 machines under 1 s and 500 MB)
    Plan {
        #[arg(long, default_value_t = 100_000)]
        machines: usize,
        /// Write the fleet file and the observed snapshot into this directory and keep them
        /// (to profile `fleet plan -f DIR/fleet.toml --observed DIR/observed.json` directly)
        #[arg(long, value_name = "DIR")]
        keep: Option<std::path::PathBuf>,
    },
    /// `fleet machines --json` through the API (target: 10,000 machines under 1 s)
    Machines {
        #[arg(long, default_value_t = 10_000)]
        machines: usize,
    },
    /// Kernel and initrd over HTTP from `fleet serve` (default settings) to 100 clients at once:
    /// requests/s, MB/s, latency p50/p99, the controller's peak memory
    Http(super::bench_http::HttpBenchArgs),
    /// Simulated machines from cold (an empty store) through enlist, commission and test to
    /// ready against `fleet serve` (a child process): machines per second, the controller's
    /// peak memory and CPU, where the time goes (goal: 10,000 under 60 s, under 1 GiB)
    Lifecycle {
        #[arg(long, default_value_t = 1_000)]
        machines: u32,
        /// An administrator's postgres:// URL: the run gets a fresh database created (and
        /// dropped) through it [default: SQLite in the controller's state directory]
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// Run this many `fleet serve` on the one database (needs --database), each the boot
        /// server of an even share of the machines; the apply is posted once and the figures
        /// are per controller and summed
        #[arg(long, default_value_t = 1, value_name = "K")]
        controllers: u32,
        /// Record the controller with `perf record` and print its top symbols
        #[arg(long)]
        perf: bool,
        /// Stop waiting after this many seconds from the first power-on and report how far
        /// the machines got
        #[arg(long, default_value_t = 900)]
        time_limit: u64,
    },
    /// The life-cycle to ready, then every machine deployed: image bytes served per second
    Deploy {
        #[arg(long, default_value_t = 1_000)]
        machines: u32,
        /// The root image's size (incompressible, so the bytes served are the bytes written)
        #[arg(long, default_value_t = 4)]
        image_mib: u32,
        /// As for `lifecycle`
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// As for `lifecycle` (each of the two phases)
        #[arg(long, default_value_t = 900)]
        time_limit: u64,
    },
}

pub async fn bench(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Validate { machines } => bench_validate(machines),
        BenchCommand::Machines { machines } => bench_machines(machines).await,
        BenchCommand::Plan { machines, keep } => bench_plan(machines, keep.as_deref()),
        BenchCommand::Http(args) => super::bench_http::bench_http(args).await,
        BenchCommand::Lifecycle {
            machines,
            database,
            controllers,
            perf,
            time_limit,
        } => {
            let options = super::bench_lifecycle::LifecycleOptions {
                machines,
                database,
                controllers,
                perf,
                deploy_image_mib: None,
                time_limit: Duration::from_secs(time_limit),
            };
            super::bench_lifecycle::run(options).await
        }
        BenchCommand::Deploy {
            machines,
            image_mib,
            database,
            time_limit,
        } => {
            let options = super::bench_lifecycle::LifecycleOptions {
                machines,
                database,
                controllers: 1,
                perf: false,
                deploy_image_mib: Some(image_mib),
                time_limit: Duration::from_secs(time_limit),
            };
            super::bench_lifecycle::run(options).await
        }
    }
}

/// Runs per measurement: the median of five stands a stray spike of another process on two
/// cores, which the median of three did not.
const RUNS: usize = 5;

/// Wall time and peak resident memory of one child run.
struct ChildRun {
    elapsed: Duration,
    /// User + system CPU time of the child: what the run costs, whatever else the machine does.
    cpu_seconds: f64,
    peak_rss_mib: f64,
    success: bool,
    /// `phase NAME SECONDS` lines the child wrote (`fleet plan` writes them for the bench).
    phases: Vec<(String, f64)>,
}

fn run_child(args: &[&str], state_dir: Option<&Path>) -> anyhow::Result<ChildRun> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(state_dir) = state_dir {
        command.arg("--state-dir").arg(state_dir);
    }
    command.env(super::plan::PHASE_TIMES_VARIABLE, "1");
    let cpu_before = children_usage().1;
    let started = Instant::now();
    let output = command.output()?;
    let elapsed = started.elapsed();
    let (children_peak_rss_mib, cpu_after) = children_usage();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The child's own peak; getrusage's includes this process's (see report_peak_memory).
    let peak_rss_mib = stderr
        .lines()
        .find_map(|line| {
            line.strip_prefix("peak_rss_kib ")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(children_peak_rss_mib, |kib| kib / 1024.0);
    if !output.status.success() {
        eprintln!("{stderr}");
    }
    let phases = stderr
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("phase ")?.split(' ');
            let name = words.next()?.to_string();
            Some((name, words.next()?.parse().ok()?))
        })
        .collect();
    Ok(ChildRun {
        phases,
        elapsed,
        cpu_seconds: cpu_after - cpu_before,
        peak_rss_mib,
        success: output.status.success(),
    })
}

/// The largest peak RSS among waited-for children (MiB) and their total CPU time (seconds),
/// from getrusage(RUSAGE_CHILDREN).
fn children_usage() -> (f64, f64) {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let Ok(usage) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
        return (f64::NAN, f64::NAN);
    };
    let seconds = |time: nix::sys::time::TimeVal| time.num_microseconds() as f64 / 1e6;
    (
        usage.max_rss() as f64 / 1024.0,
        seconds(usage.user_time()) + seconds(usage.system_time()),
    )
}

fn bench_validate(machines: usize) -> anyhow::Result<ExitCode> {
    let directory = tempfile::tempdir()?;
    let path = directory.path().join("fleet.toml");
    std::fs::write(&path, fleet::config::synthetic_fleet_toml(machines))?;
    let size_mib = std::fs::metadata(&path)?.len() as f64 / 1048576.0;
    let path_text = path.display().to_string();
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(run_child(&["validate", "-f", &path_text], None)?);
    }
    report(
        "validate",
        machines,
        &format!("{size_mib:.1} MiB of TOML"),
        &runs,
        1.0,
        500.0,
    )
}

fn bench_plan(machines: usize, keep: Option<&Path>) -> anyhow::Result<ExitCode> {
    let temporary = tempfile::tempdir()?;
    let directory = match keep {
        Some(keep) => {
            std::fs::create_dir_all(keep)?;
            keep
        }
        None => temporary.path(),
    };
    let fleet_path = directory.join("fleet.toml");
    let text = fleet::config::synthetic_fleet_toml(machines);
    std::fs::write(&fleet_path, &text)?;
    let loaded = fleet::config::load_str("fleet.toml", &text)
        .map_err(|diagnostics| anyhow::anyhow!("{}", diagnostics.render(false)))?;
    let observed = synthetic_observed(&loaded);
    let observed_path = directory.join("observed.json");
    std::fs::write(&observed_path, serde_json::to_string(&observed)?)?;
    let (fleet_text, observed_text) = (
        fleet_path.display().to_string(),
        observed_path.display().to_string(),
    );
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let args = ["plan", "-f", &fleet_text, "--observed", &observed_text];
        runs.push(run_child(&args, None)?);
    }
    report(
        "plan",
        machines,
        "every 7th machine absent, the rest ready with disks, interfaces, firmware, held \
         addresses and stored configurations; every layout, network and address resolved; \
         human rendering",
        &runs,
        1.0,
        500.0,
    )
}

/// What a store might hold for the synthetic fleet: every seventh machine not yet added, the
/// others commissioned and ready with the fleet file's power and tags (so most get steps), two
/// disks, one or two interfaces, UEFI (every fifth BIOS), the addresses an earlier apply
/// committed and the deployment configurations it stored (so a machine that is not deployed
/// shows no layout or network change: the steady state, not 100,000 first configurations).
fn synthetic_observed(fleet: &fleet::config::Fleet) -> fleet::plan::Observed {
    let mut observed = fleet::plan::synthetic_observed(fleet);
    let first = fleet::plan::allocate(fleet, &[]);
    observed.addresses = first
        .allocations
        .iter()
        .filter(|allocation| observed.machine(allocation.machine.as_str()).is_some())
        .map(|allocation| fleet::plan::HeldAddress {
            machine: allocation.machine.to_string(),
            interface: allocation.interface.clone(),
            subnet: allocation.subnet.clone(),
            ip: allocation.ip,
        })
        .collect();
    let planned = fleet::plan::plan(fleet, &observed);
    for machine in &mut observed.machines {
        let deployment = planned
            .machine(machine.name.as_str())
            .and_then(|planned| planned.deployment.as_ref());
        machine.deployment = deployment.map(|deployment| fleet::plan::AppliedDeployment {
            layout_digest: deployment.layout.clone(),
            network_digest: deployment.network_digest.clone(),
            origin: deployment.origin.clone(),
        });
    }
    observed
}

async fn bench_machines(machines: usize) -> anyhow::Result<ExitCode> {
    let directory = tempfile::tempdir()?;
    let state_dir = directory.path().to_path_buf();
    let database = fleet::controller::default_database(&state_dir);
    let store = fleet::store::Store::open(&database).await?;
    let new: Vec<fleet::store::NewMachine> = (0..machines).map(synthetic_machine).collect();
    store.create_machines(&new, "bench").await?;
    store.close().await;
    let mut controller = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--boot-listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(&state_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let api_url_file = state_dir.join(fleet::controller::API_URL_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api_url_file.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(run_child(&["machines", "--json"], Some(&state_dir))?);
    }
    let _ = controller.kill();
    let _ = controller.wait();
    report(
        "machines --json",
        machines,
        "through the API on SQLite",
        &runs,
        1.0,
        f64::INFINITY,
    )
}

fn synthetic_machine(index: usize) -> fleet::store::NewMachine {
    let bytes = (index as u32).to_be_bytes();
    let mac = fleet::model::MacAddr([0x52, 0x54, bytes[0], bytes[1], bytes[2], bytes[3]]);
    fleet::store::NewMachine {
        name: fleet::model::MachineName::parse(&format!("node-{index:06}")).expect("a valid name"),
        status: fleet::model::Status::New,
        macs: vec![mac],
        arch: Some("amd64".into()),
        power_type: "manual".into(),
        power_params: serde_json::json!({}),
        bmc_address: None,
        image: None,
        tags: vec!["bench".into()],
        deployed_os: None,
    }
}

fn report(
    what: &str,
    machines: usize,
    detail: &str,
    runs: &[ChildRun],
    target_seconds: f64,
    target_mib: f64,
) -> anyhow::Result<ExitCode> {
    let mut seconds: Vec<f64> = runs.iter().map(|run| run.elapsed.as_secs_f64()).collect();
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    let mut cpu: Vec<f64> = runs.iter().map(|run| run.cpu_seconds).collect();
    cpu.sort_by(f64::total_cmp);
    let median_cpu = cpu[cpu.len() / 2];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    let peak = runs.iter().map(|run| run.peak_rss_mib).fold(0.0, f64::max);
    let all_ok = runs.iter().all(|run| run.success);
    let meets = all_ok && median < target_seconds && peak < target_mib;
    println!(
        "bench {what}: {machines} machines ({detail}): median {median:.3} s of {} runs (min {:.3}, max {:.3}), CPU {median_cpu:.3} s, peak RSS {peak:.0} MiB, load {load}; target < {target_seconds} s{} — {}",
        runs.len(),
        seconds[0],
        seconds[seconds.len() - 1],
        if target_mib.is_finite() { format!(" and < {target_mib} MiB") } else { String::new() },
        if meets { "met" } else if all_ok { "NOT met" } else { "the command failed" }
    );
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in runs.iter().flat_map(|run| &run.phases) {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    if !names.is_empty() {
        let parts: Vec<String> = names
            .iter()
            .map(|name| {
                let mut times: Vec<f64> = runs
                    .iter()
                    .flat_map(|run| &run.phases)
                    .filter(|(phase, _)| phase == name)
                    .map(|(_, seconds)| *seconds)
                    .collect();
                times.sort_by(f64::total_cmp);
                format!("{name} {:.3}", times[times.len() / 2])
            })
            .collect();
        println!("  phases (median wall seconds): {}", parts.join(", "));
    }
    Ok(if meets {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
