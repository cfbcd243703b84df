//! `fleet adopt`: fleet TOML for what the controller observes, so that the next plan is empty.

use super::plan::observed;
use super::Connection;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct AdoptArgs {
    /// Write the TOML here instead of to standard output
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub async fn run(connection: &Connection, args: &AdoptArgs) -> anyhow::Result<ExitCode> {
    let observed = observed(connection, None).await?;
    let text = fleet::plan::adopt_toml(&observed);
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "Wrote {} machines to {}; `fleet plan -f {}` shows no steps for them.",
                observed.machines.len(),
                path.display(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
