//! `fleet apply [PLAN]`: apply a saved plan (or a fresh one), follow it to the end, and print
//! each machine's outcome.

use super::client::Client;
use super::output::{colour_enabled, new_table};
use super::plan::{make_plan, render_options};
use super::Connection;
use anyhow::{bail, Context};
use clap::Args;
use comfy_table::Cell;
use fleet::apply::{ApplyProgress, ApplyRequest, ApplyStarted, MachineProgress};
use fleet::plan::{render_human, Plan};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How often progress is read from the controller.
const POLL: Duration = Duration::from_millis(200);
/// How long `fleet apply` keeps asking for progress it cannot read (the controller restarting, a
/// leader taking over, a loaded store): the apply itself goes on regardless.
const FOLLOW_PATIENCE: Duration = Duration::from_secs(60);

/// A refusal that may pass (the controller's own failure), not an answer (unknown apply, a
/// token without the right).
fn passing_failure(failure: &super::client::ApiFailure) -> bool {
    failure.code == "internal" || failure.code.starts_with('5')
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// A plan saved by `fleet plan --out` [default: plan the fleet files now]
    #[arg(value_name = "PLAN")]
    pub plan: Option<PathBuf>,
    /// Fleet files or directories, when no saved plan is given [default: fleet.toml]
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Apply a fresh plan without asking
    #[arg(long)]
    pub yes: bool,
    /// Let destructive steps run (erase, redeploy, release of a deployed machine)
    #[arg(long)]
    pub allow_destroy: bool,
    /// Refuse every machine if any one changed since the saved plan
    #[arg(long)]
    pub strict: bool,
}

fn read_saved_plan(path: &PathBuf) -> anyhow::Result<Plan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the plan {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a plan saved by `fleet plan --out`",
            path.display()
        )
    })
}

/// Asks on the terminal; only `yes` agrees.
fn ask(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} Only 'yes' is accepted: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

pub async fn run(connection: &Connection, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    let saved = args.plan.is_some();
    let plan = match &args.plan {
        Some(path) => read_saved_plan(path)?,
        None => match make_plan(connection, &args.files, None).await? {
            Ok(plan) => plan,
            Err(code) => return Ok(code),
        },
    };
    if !saved {
        print!("{}", render_human(&plan, render_options(false)));
    }
    if plan.is_empty() {
        println!("Nothing to apply.");
        return Ok(ExitCode::SUCCESS);
    }
    if !saved && !args.yes {
        if !interactive {
            bail!("not a terminal, so nobody can approve the plan: pass --yes, or save it with `fleet plan --out` and apply that");
        }
        if !ask("Apply this plan?")? {
            println!("Apply cancelled.");
            return Ok(ExitCode::FAILURE);
        }
    }
    let mut allow_destroy = args.allow_destroy;
    let destructive = plan.destructive_steps();
    if destructive > 0 && !allow_destroy && interactive {
        allow_destroy = ask(&format!(
            "The plan has {destructive} destructive steps (data or running systems are lost)."
        ))?;
    }
    let request = ApplyRequest {
        plan,
        allow_destroy,
        strict: args.strict,
    };
    let client = Client::new(connection)?;
    let started: ApplyStarted = match client.post("/applies", &request).await? {
        Ok(started) => started,
        Err(failure) => {
            eprintln!("error: {failure}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for refusal in &started.refused {
        eprintln!("refused {}: {}", refusal.machine, refusal.reason);
    }
    let progress = follow(&client, &started).await?;
    print_outcomes(&progress);
    let all_done = progress
        .machines
        .iter()
        .all(|machine| machine.state == "done");
    Ok(if all_done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads progress until the apply has finished: a progress bar on a terminal, else one line per
/// change of a machine's state.
pub(super) async fn follow(
    client: &Client,
    started: &ApplyStarted,
) -> anyhow::Result<ApplyProgress> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(started.accepted.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} machines  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut seen: BTreeMap<String, (String, Option<String>, Option<String>)> = BTreeMap::new();
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let why = match client.get(&format!("/applies/{}", started.id)).await {
            Ok(Ok(progress)) => {
                failing_since = None;
                Ok(progress)
            }
            // Passing: the controller is restarting, a leader taking over, a loaded store.
            Err(error) => Err(format!("{error:#}")),
            Ok(Err(failure)) if passing_failure(&failure) => Err(failure.to_string()),
            Ok(Err(failure)) => bail!("cannot follow apply {}: {failure}", started.id),
        };
        let progress: ApplyProgress = match why {
            Ok(progress) => progress,
            Err(why) => {
                let since = match failing_since {
                    Some(since) => since,
                    None => {
                        eprintln!(
                            "cannot read apply {}'s progress ({why}); it goes on on the controller, asking again for up to {} s",
                            started.id,
                            FOLLOW_PATIENCE.as_secs()
                        );
                        *failing_since.insert(std::time::Instant::now())
                    }
                };
                if since.elapsed() > FOLLOW_PATIENCE {
                    bail!(
                        "cannot follow apply {} for {} s: {why} (it may still be running: `fleet apply` again shows its machines)",
                        started.id,
                        FOLLOW_PATIENCE.as_secs()
                    );
                }
                tokio::time::sleep(POLL * 5).await;
                continue;
            }
        };
        for machine in &progress.machines {
            let now = (
                machine.state.clone(),
                machine.current.clone(),
                machine.detail.clone(),
            );
            if seen.get(&machine.name) != Some(&now) {
                report(machine, bar.as_ref());
                seen.insert(machine.name.clone(), now);
            }
        }
        if let Some(bar) = &bar {
            let finished = progress
                .machines
                .iter()
                .filter(|m| matches!(m.state.as_str(), "done" | "failed"))
                .count();
            bar.set_position(finished as u64);
        }
        if progress.finished() {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(progress);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn report(machine: &MachineProgress, bar: Option<&indicatif::ProgressBar>) {
    let step = machine.current.as_deref().unwrap_or("-");
    let mut line = format!(
        "{}: {} ({step}, {}/{} steps)",
        machine.name, machine.state, machine.steps_done, machine.steps
    );
    if let (Some(reason), "failed" | "refused") = (&machine.reason, machine.state.as_str()) {
        line.push_str(&format!(": {reason}"));
    }
    if let (Some(detail), "running") = (&machine.detail, machine.state.as_str()) {
        line.push_str(&format!(": {detail}"));
    }
    match bar {
        Some(bar) => {
            bar.set_message(format!("{} {step}", machine.name));
            bar.println(line);
        }
        None => eprintln!("{line}"),
    }
}

fn print_outcomes(progress: &ApplyProgress) {
    let mut table = new_table(&["MACHINE", "OUTCOME", "STEPS", "REASON"]);
    for machine in &progress.machines {
        let mut outcome = Cell::new(&machine.state);
        if colour_enabled() {
            outcome = match machine.state.as_str() {
                "done" => outcome.fg(comfy_table::Color::Green),
                _ => outcome.fg(comfy_table::Color::Red),
            };
        }
        let reason = match machine.state.as_str() {
            "done" => String::new(),
            _ => machine.reason.clone().unwrap_or_default(),
        };
        table.add_row(vec![
            Cell::new(&machine.name),
            outcome,
            Cell::new(format!("{}/{}", machine.steps_done, machine.steps)),
            Cell::new(reason),
        ]);
    }
    println!("{table}");
    let count = |state: &str| {
        progress
            .machines
            .iter()
            .filter(|m| m.state == state)
            .count()
    };
    println!(
        "Apply {}: {} done, {} failed, {} refused.",
        progress.id,
        count("done"),
        count("failed"),
        count("refused")
    );
}
