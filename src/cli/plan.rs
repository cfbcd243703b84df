//! `fleet plan`: the fleet files against what the controller has observed.

use super::client::Client;
use super::output::colour_enabled;
use super::Connection;
use anyhow::{anyhow, Context};
use clap::Args;
use fleet::config::Fleet;
use fleet::plan::{
    plan, render_human_in_parts, render_json, Observed, Plan, RenderOptions, SnapshotReader,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// Fleet files or directories [default: fleet.toml]
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Save the plan (JSON, with per-machine fingerprints) for `fleet apply PLAN`
    #[arg(long, value_name = "PLAN")]
    pub out: Option<PathBuf>,
    /// Print the plan as JSON (the documented shape) instead of text
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on error
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Plan against an observed snapshot saved from `GET /api/v1/observed` instead of the controller
    #[arg(long, value_name = "FILE")]
    pub observed: Option<PathBuf>,
    /// Also list the machines that need no change
    #[arg(long)]
    pub show_unchanged: bool,
    /// Apply the plan on a throwaway copy instead (a controller in this process, seeded from
    /// the snapshot, simulated machines with the recorded hardware and simulated BMCs) and
    /// report per machine whether it would succeed or why it would fail. The real controller
    /// is only read.
    #[arg(long, conflicts_with_all = ["out", "show_unchanged"])]
    pub simulate: bool,
}

/// Loads the fleet files; diagnostics are printed and turned into exit code 1.
pub fn load_fleet(files: &[PathBuf]) -> Result<Fleet, ExitCode> {
    let mut files = files.to_vec();
    if files.is_empty() {
        files.push(PathBuf::from("fleet.toml"));
    }
    fleet::config::load(&files).map_err(|diagnostics| {
        eprint!("{}", diagnostics.render(colour_enabled()));
        ExitCode::FAILURE
    })
}

/// What the controller (or a saved snapshot) has observed.
pub async fn observed(connection: &Connection, file: Option<&Path>) -> anyhow::Result<Observed> {
    if let Some(file) = file {
        return observed_file(file);
    }
    let client = Client::new(connection)?;
    client
        .get::<Observed>("/observed")
        .await?
        .map_err(|failure| anyhow!("the controller refused to list its machines: {failure}"))
}

/// An observed snapshot saved from `GET /api/v1/observed`, read a part at a time (the whole
/// text is never held: see [`SnapshotReader`]); what that reader leaves (or an invalid
/// snapshot, to name the error) is read whole.
fn observed_file(file: &Path) -> anyhow::Result<Observed> {
    let cannot_read = || format!("cannot read the observed snapshot {}", file.display());
    let mut opened = std::fs::File::open(file).with_context(cannot_read)?;
    let length = opened
        .metadata()
        .map_or(0, |metadata| metadata.len() as usize);
    let mut reader = SnapshotReader::new(length);
    let mut part = vec![0; SNAPSHOT_PART_BYTES];
    loop {
        let read = match opened.read(&mut part) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error).with_context(cannot_read),
        };
        if !reader.feed(&part[..read]) {
            break;
        }
    }
    if let Some(observed) = reader.finish() {
        return Ok(observed);
    }
    let text = std::fs::read(file).with_context(cannot_read)?;
    Observed::from_json(&text)
        .with_context(|| format!("{} is not an observed snapshot", file.display()))
}

/// How much of a snapshot is read at a time.
const SNAPSHOT_PART_BYTES: usize = 1 << 20;

/// Set by `fleet bench plan` for its children: each phase's time goes to stderr as
/// `phase NAME SECONDS`.
pub const PHASE_TIMES_VARIABLE: &str = "FLEET_BENCH_PHASES";

/// `peak_rss_kib N` on stderr when `fleet bench` asks for it: this process's own peak (VmHWM).
/// The bench cannot use getrusage's children's peak: a child started by vfork + exec keeps the
/// parent's peak as its own (the kernel records the old address space's at exec), so it
/// reported the bench's memory (its generated inputs) whenever that was larger.
pub fn report_peak_memory() {
    if std::env::var_os(PHASE_TIMES_VARIABLE).is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        });
    if let Some(peak_kib) = peak_kib {
        eprintln!("peak_rss_kib {peak_kib}");
    }
}

/// Times the phases of one `fleet plan` when `fleet bench` asks for it.
struct Phases {
    enabled: bool,
    last: Instant,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            enabled: std::env::var_os(PHASE_TIMES_VARIABLE).is_some(),
            last: Instant::now(),
        }
    }

    fn done(&mut self, phase: &str) {
        let now = Instant::now();
        self.report(phase, now - self.last);
        self.last = now;
    }

    /// `phase NAME SECONDS RSS_MIB`: the resident memory when the phase ended.
    fn report(&self, phase: &str, elapsed: Duration) {
        if self.enabled {
            let resident_pages = std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|statm| statm.split(' ').nth(1)?.parse::<u64>().ok())
                .unwrap_or(0);
            eprintln!(
                "phase {phase} {:.4} {}",
                elapsed.as_secs_f64(),
                resident_pages * 4096 / 1048576
            );
        }
    }
}

/// Runs `work`, returning its result and how long it took.
fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let result = work();
    (result, started.elapsed())
}

/// The fleet files and the observed snapshot, read side by side: they are independent, and
/// together they are most of a large plan's time. An invalid fleet wins over an observation
/// that failed (the fleet's diagnostics are what the person must fix first).
async fn fleet_and_observed(
    connection: &Connection,
    files: &[PathBuf],
    observed_from: Option<&Path>,
    phases: &mut Phases,
) -> anyhow::Result<Result<(Fleet, Observed), ExitCode>> {
    let ((fleet, load_time), (observed, observed_time)) = match observed_from {
        Some(file) => std::thread::scope(|scope| {
            let reading = scope.spawn(|| timed(|| observed_file(file)));
            let loaded = timed(|| load_fleet(files));
            let read = reading.join().expect("the snapshot reader does not panic");
            (loaded, read)
        }),
        None => {
            let owned = files.to_vec();
            let loading = tokio::task::spawn_blocking(move || timed(|| load_fleet(&owned)));
            let started = Instant::now();
            let observed = observed(connection, None).await;
            let observed_time = started.elapsed();
            (loading.await?, (observed, observed_time))
        }
    };
    phases.report("load", load_time);
    phases.report("observed", observed_time);
    phases.done("load+observed");
    Ok(match fleet {
        Ok(fleet) => Ok((fleet, observed?)),
        Err(code) => Err(code),
    })
}

/// Loads, observes and plans; `Err(code)` when the fleet files are invalid. The inputs are
/// freed once the plan is made (`fleet apply` goes on for a long time).
pub async fn make_plan(
    connection: &Connection,
    files: &[PathBuf],
    observed_from: Option<&Path>,
) -> anyhow::Result<Result<Plan, ExitCode>> {
    plan_from(connection, files, observed_from, false).await
}

/// [`make_plan`]; with `exiting` the inputs are never freed: `fleet plan` ends right after
/// printing, and freeing 100,000 machines' records piece by piece was a tenth of its run.
async fn plan_from(
    connection: &Connection,
    files: &[PathBuf],
    observed_from: Option<&Path>,
    exiting: bool,
) -> anyhow::Result<Result<Plan, ExitCode>> {
    let mut phases = Phases::start();
    let (fleet, observed) =
        match fleet_and_observed(connection, files, observed_from, &mut phases).await? {
            Ok(both) => both,
            Err(code) => return Ok(Err(code)),
        };
    let planned = plan(&fleet, &observed);
    phases.done("plan");
    if exiting {
        std::mem::forget(fleet);
        std::mem::forget(observed);
    }
    Ok(Ok(planned))
}

pub fn render_options(show_unchanged: bool) -> RenderOptions {
    RenderOptions {
        colour: colour_enabled(),
        show_unchanged,
    }
}

pub async fn run(connection: &Connection, args: &PlanArgs) -> anyhow::Result<ExitCode> {
    if args.simulate {
        return super::simulate::run(connection, args).await;
    }
    let plan = match plan_from(connection, &args.files, args.observed.as_deref(), true).await? {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    if let Some(out) = &args.out {
        std::fs::write(out, render_json(&plan))
            .with_context(|| format!("cannot write the plan to {}", out.display()))?;
        eprintln!(
            "Saved the plan to {}: `fleet apply {}` applies exactly it (machines changed since are refused).",
            out.display(),
            out.display()
        );
    }
    let mut phases = Phases::start();
    if args.json {
        print!("{}", render_json(&plan));
    } else {
        // Printed as it is rendered: the whole text of a large plan is never held.
        let mut stdout = std::io::stdout().lock();
        render_human_in_parts(&plan, render_options(args.show_unchanged), |part| {
            stdout.write_all(part.as_bytes())
        })
        .and_then(|()| stdout.flush())
        .context("cannot print the plan")?;
    }
    phases.done("render");
    let code = match (args.detailed_exitcode, plan.is_empty()) {
        (true, false) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    };
    // The process ends here: the plan is not freed piece by piece.
    std::mem::forget(plan);
    Ok(code)
}
