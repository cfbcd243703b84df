//! `fleet plan`: the fleet files against what the controller has observed.

use super::client::Client;
use super::output::colour_enabled;
use super::Connection;
use anyhow::{anyhow, Context};
use clap::Args;
use fleet::config::Fleet;
use fleet::plan::{plan, render_human, render_json, Observed, Plan, RenderOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the observed snapshot {}", file.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not an observed snapshot", file.display()));
    }
    let client = Client::new(connection)?;
    client
        .get::<Observed>("/observed")
        .await?
        .map_err(|failure| anyhow!("the controller refused to list its machines: {failure}"))
}

/// Loads, observes and plans; `Err(code)` when the fleet files are invalid.
pub async fn make_plan(
    connection: &Connection,
    files: &[PathBuf],
    observed_file: Option<&Path>,
) -> anyhow::Result<Result<Plan, ExitCode>> {
    let fleet = match load_fleet(files) {
        Ok(fleet) => fleet,
        Err(code) => return Ok(Err(code)),
    };
    let observed = observed(connection, observed_file).await?;
    Ok(Ok(plan(&fleet, &observed)))
}

pub fn render_options(show_unchanged: bool) -> RenderOptions {
    RenderOptions {
        colour: colour_enabled(),
        show_unchanged,
    }
}

pub async fn run(connection: &Connection, args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let plan = match make_plan(connection, &args.files, args.observed.as_deref()).await? {
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
    if args.json {
        print!("{}", render_json(&plan));
    } else {
        print!(
            "{}",
            render_human(&plan, render_options(args.show_unchanged))
        );
    }
    Ok(match (args.detailed_exitcode, plan.is_empty()) {
        (true, false) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}
