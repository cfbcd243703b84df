//! `fleet validate` and `fleet schema`: pure, no controller needed.

use super::Connection;
use clap::Args;
use fleet::config::Fleet;
use fleet::controller::ServeOptions;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Fleet files or directories [default: fleet.toml]
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// Positional fleet files, as an alternative to -f
    #[arg(value_name = "FILE")]
    pub positional: Vec<PathBuf>,
}

pub fn validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut files: Vec<PathBuf> = args.files.iter().chain(&args.positional).cloned().collect();
    if files.is_empty() {
        files.push(PathBuf::from("fleet.toml"));
    }
    match fleet::config::load(&files) {
        Ok(fleet) => {
            println!("{}", summary(&fleet, &files));
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => {
            eprint!("{}", diagnostics.render(super::output::colour_enabled()));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn summary(fleet: &Fleet, files: &[PathBuf]) -> String {
    let names: Vec<String> = files
        .iter()
        .map(|file| file.display().to_string())
        .collect();
    format!(
        "{}: valid — {} machines, {} subnets, {} images, {} profiles, {} scripts ({} files)",
        names.join(", "),
        fleet.machines.len(),
        fleet.subnets.len(),
        fleet.images.len(),
        fleet.profiles.len(),
        fleet.scripts.len(),
        fleet.sources.len()
    )
}

pub fn schema() -> anyhow::Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&fleet::config::json_schema())?
    );
    Ok(ExitCode::SUCCESS)
}

/// The fleet file's [controller] table, under what the command line says.
pub fn apply_controller_settings(
    fleet: &Fleet,
    options: &mut ServeOptions,
    connection: &Connection,
) -> anyhow::Result<()> {
    let settings = &fleet.controller;
    options.listen = settings.listen;
    options.boot_listen = settings.boot_listen;
    options.tls = settings.tls.clone();
    options.database = settings.database.clone();
    options.secret_key_file = settings.secret_key_file.clone();
    // An explicit --state-dir / FLEET_STATE_DIR wins over the file.
    if connection.state_dir.as_path() == std::path::Path::new(".fleet") {
        options.state_dir = settings.state_dir.clone();
    }
    options.boot_interfaces = settings.dhcp_interfaces.clone();
    Ok(())
}
