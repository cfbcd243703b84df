//! `fleet bench http`: kernels and initrds served by `fleet serve` (the real binary, a child
//! process, default settings) to 100 clients at once over loopback, each from its own address
//! (127.0.1.N) as each machine of a rack has its own, so the per-address rate limits apply as
//! they would to a rack booting. Each client fetches the kernel, then the initrd, whole (as iPXE
//! does), again and again until the time is up. Reported: requests and MB per second, latency
//! to the last byte (p50, p99) per file, and the controller's peak memory (its VmHWM, read from
//! /proc before it is stopped).

use comfy_table::Table;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the bench is asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpBenchArgs {
    /// Clients fetching at once, each from its own loopback address
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=250))]
    pub clients: u16,
    /// How long the clients fetch, in seconds (each finishes the file it is fetching)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// The kernel's size in MiB
    #[arg(long, default_value_t = 10)]
    pub kernel_mib: u64,
    /// The initrd's size in MiB
    #[arg(long, default_value_t = 60)]
    pub initrd_mib: u64,
}

/// One fetch: which file, its bytes, and the time to its last byte.
struct Fetch {
    file: &'static str,
    bytes: u64,
    elapsed: Duration,
}

/// What one client did.
#[derive(Default)]
struct ClientResult {
    fetches: Vec<Fetch>,
    /// 429s: the per-address rate limits said no.
    throttled: u64,
    /// Any other answer than a 200 read to its end, or no answer.
    failed: u64,
}

/// Why a fetch brought no file.
enum Missed {
    Throttled,
    Failed,
}

pub async fn bench_http(args: HttpBenchArgs) -> anyhow::Result<ExitCode> {
    let directory = tempfile::tempdir()?;
    let fleet_file = write_boot_files(directory.path(), &args)?;
    let state_dir = directory.path().join("state");
    let mut controller = start_controller(&fleet_file, &state_dir).await?;
    let own_cpu_before = own_cpu_seconds();
    let controller_cpu_before = process_cpu_seconds(controller.child.id());
    let outcome = run_against(&controller, &args).await;
    let cpu = CpuUse {
        controller: process_cpu_seconds(controller.child.id()) - controller_cpu_before,
        clients: own_cpu_seconds() - own_cpu_before,
    };
    let peak_mib = peak_memory_mib(controller.child.id());
    let _ = controller.child.kill();
    let _ = controller.child.wait();
    let (results, wall) = outcome?;
    print_report(&args, &results, (wall, cpu), peak_mib, &controller.settings);
    Ok(ExitCode::SUCCESS)
}

struct Controller {
    child: Child,
    /// The boot listener, `http://127.0.0.1:PORT`.
    url: String,
    /// What `fleet serve` said about its limits (the defaults), printed with the figures.
    settings: Vec<String>,
}

/// The files (bytes that do not compress or repeat) and a fleet file naming them with their
/// SHA-256, as an operator's would: the controller checks them at start as always.
fn write_boot_files(directory: &Path, args: &HttpBenchArgs) -> anyhow::Result<std::path::PathBuf> {
    let kernel = directory.join("vmlinuz");
    let initrd = directory.join("initrd.img");
    write_random_file(&kernel, args.kernel_mib * 1024 * 1024)?;
    write_random_file(&initrd, args.initrd_mib * 1024 * 1024)?;
    let text = format!(
        "[controller]\ntftp_listen = \"127.0.0.1:0\"\n\n[images.bench]\n\
         kernel = {{ path = \"{}\", sha256 = \"{}\" }}\n\
         initrd = {{ path = \"{}\", sha256 = \"{}\" }}\n",
        kernel.display(),
        fleet::boot::http::sha256_of_file(&kernel)?.0,
        initrd.display(),
        fleet::boot::http::sha256_of_file(&initrd)?.0,
    );
    let path = directory.join("fleet.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn write_random_file(path: &Path, bytes: u64) -> anyhow::Result<()> {
    use rand::RngCore;
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1024 * 1024];
    let mut left = bytes;
    while left > 0 {
        rand::thread_rng().fill_bytes(&mut block);
        let take = left.min(block.len() as u64) as usize;
        file.write_all(&block[..take])?;
        left -= take as u64;
    }
    file.flush()?;
    Ok(())
}

/// `fleet serve -f FLEET` with its listeners on free loopback ports; waits for its boot URL.
async fn start_controller(fleet_file: &Path, state_dir: &Path) -> anyhow::Result<Controller> {
    let mut child = Command::new(std::env::current_exe()?)
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
        .arg(fleet_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let api_url_file = state_dir.join(fleet::controller::API_URL_FILE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !api_url_file.exists() {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("fleet serve exited at start ({status})");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "fleet serve did not start in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = std::fs::read_to_string(state_dir.join(fleet::controller::BOOT_URL_FILE))?
        .trim()
        .to_string();
    let settings = read_start_lines(&mut child, &url).await?;
    Ok(Controller {
        child,
        url,
        settings,
    })
}

/// Reads the controller's start-up lines until its images are checked; keeps the lines that
/// say how it serves (limits, images). The rest of its stderr is drained in the background.
async fn read_start_lines(child: &mut Child, url: &str) -> anyhow::Result<Vec<String>> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped");
    let (sender, receiver) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = sender.send(line);
        }
    });
    let mut kept = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = receiver
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| anyhow::anyhow!("fleet serve did not report its images"))?;
        let trimmed = line.trim().to_string();
        if trimmed.starts_with("limits") || trimmed.starts_with("boot") {
            kept.push(trimmed.clone());
        }
        if trimmed.starts_with("images") {
            kept.push(trimmed);
            break;
        }
    }
    kept.push(format!(
        "served from {url} (plain HTTP, tower-http ServeFile)"
    ));
    // Keep draining, so the controller never blocks on a full pipe.
    std::thread::spawn(move || while receiver.recv().is_ok() {});
    Ok(kept)
}

async fn run_against(
    controller: &Controller,
    args: &HttpBenchArgs,
) -> anyhow::Result<(Vec<ClientResult>, Duration)> {
    let base = Arc::new(format!("{}/boot/files/bench", controller.url));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        let client = reqwest::Client::builder()
            .local_address(client_address(index))
            .build()?;
        let base = base.clone();
        tasks.spawn(async move { fetch_until(client, &base, deadline).await });
    }
    let mut results = Vec::new();
    while let Some(result) = tasks.join_next().await {
        results.push(result?);
    }
    Ok((results, started.elapsed()))
}

/// Client N's own loopback address, 127.0.1.(N+1): the whole of 127.0.0.0/8 is the loopback's.
fn client_address(index: u16) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, (index + 1) as u8))
}

/// Kernel, initrd, kernel, ... until `deadline` (the fetch under way is finished).
async fn fetch_until(client: reqwest::Client, base: &str, deadline: Instant) -> ClientResult {
    let mut result = ClientResult::default();
    for file in ["kernel", "initrd"].into_iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        let started = Instant::now();
        match fetch_whole(&client, &format!("{base}/{file}")).await {
            Ok(bytes) => result.fetches.push(Fetch {
                file,
                bytes,
                elapsed: started.elapsed(),
            }),
            Err(missed) => {
                match missed {
                    Missed::Throttled => result.throttled += 1,
                    Missed::Failed => result.failed += 1,
                }
                // A refusal comes back at once: wait a little rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    result
}

/// The body's length when the answer is a 200 read to its end.
async fn fetch_whole(client: &reqwest::Client, url: &str) -> Result<u64, Missed> {
    let mut response = client.get(url).send().await.map_err(|_| Missed::Failed)?;
    match response.status() {
        reqwest::StatusCode::OK => {}
        reqwest::StatusCode::TOO_MANY_REQUESTS => return Err(Missed::Throttled),
        _ => return Err(Missed::Failed),
    }
    let mut bytes = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|_| Missed::Failed)? {
        bytes += chunk.len() as u64;
    }
    Ok(bytes)
}

/// CPU seconds (user + system) spent during the run, by the controller and by this process's
/// clients: on a shared 2-core machine, which side ran out shows in these.
struct CpuUse {
    controller: f64,
    clients: f64,
}

/// A process's user + system CPU seconds so far, from /proc/PID/stat (fields 14 and 15, in
/// clock ticks: USER_HZ, 100 on Linux whatever the kernel's own HZ).
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

fn own_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id())
}

/// The process's peak resident memory (VmHWM), in MiB.
fn peak_memory_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn print_report(
    args: &HttpBenchArgs,
    results: &[ClientResult],
    (wall, cpu): (Duration, CpuUse),
    peak_mib: f64,
    settings: &[String],
) {
    let seconds = wall.as_secs_f64();
    let mut table = Table::new();
    table.set_header([
        "file",
        "size",
        "requests",
        "requests/s",
        "MB/s",
        "p50",
        "p99",
        "max",
    ]);
    let sizes = [("kernel", args.kernel_mib), ("initrd", args.initrd_mib)];
    for (file, mib) in sizes {
        let fetches: Vec<&Fetch> = results
            .iter()
            .flat_map(|result| &result.fetches)
            .filter(|fetch| fetch.file == file)
            .collect();
        table.add_row(row(file, &format!("{mib} MiB"), &fetches, seconds));
    }
    let all: Vec<&Fetch> = results.iter().flat_map(|result| &result.fetches).collect();
    table.add_row(row("both", "", &all, seconds));
    let throttled: u64 = results.iter().map(|result| result.throttled).sum();
    let failed: u64 = results.iter().map(|result| result.failed).sum();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench http: {} clients (each its own address 127.0.1.N) fetching kernel then initrd \
         whole, for {} s (wall {seconds:.1} s)",
        args.clients, args.seconds
    );
    println!("controller: `fleet serve` with its default settings:");
    for line in settings {
        println!("  {line}");
    }
    println!("{table}");
    println!(
        "throttled (429): {throttled}; failed: {failed}; controller peak memory (VmHWM): \
         {peak_mib:.0} MiB; load average at the end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "CPU during the run: controller {:.1} s, the bench's clients {:.1} s (of {:.1} s on {} cores)",
        cpu.controller,
        cpu.clients,
        seconds,
        std::thread::available_parallelism().map_or(0, |cores| cores.get())
    );
}

fn row(file: &str, size: &str, fetches: &[&Fetch], seconds: f64) -> Vec<String> {
    let bytes: u64 = fetches.iter().map(|fetch| fetch.bytes).sum();
    let mut latencies: Vec<Duration> = fetches.iter().map(|fetch| fetch.elapsed).collect();
    latencies.sort();
    let at = |share: f64| -> String {
        if latencies.is_empty() {
            return "-".into();
        }
        let index = ((latencies.len() as f64 * share).ceil() as usize).clamp(1, latencies.len());
        format!("{:.0} ms", latencies[index - 1].as_secs_f64() * 1000.0)
    };
    vec![
        file.to_string(),
        size.to_string(),
        fetches.len().to_string(),
        format!("{:.1}", fetches.len() as f64 / seconds),
        format!("{:.0}", bytes as f64 / seconds / 1e6),
        at(0.50),
        at(0.99),
        at(1.0),
    ]
}
