//! `fleet serve`: the controller, with settings from the command line over the fleet file.

use super::Connection;
use anyhow::Context;
use clap::Args;
use fleet::controller::{serve as run_controller, ServeOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Fleet files or directories (the controller's settings come from their [controller] table)
    #[arg(short = 'f', long = "file")]
    pub files: Vec<PathBuf>,
    /// sqlite://PATH or postgres://USER@HOST/DB [default: sqlite file in the state directory]
    #[arg(long, env = "FLEET_DATABASE")]
    pub database: Option<String>,
    /// The API's address [default: the fleet file's, else 127.0.0.1:5240]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Watch the fleet files: re-plan on every save and on a timer, and apply the steps that
    /// are not destructive (destructive ones wait for `fleet apply --allow-destroy`)
    #[arg(long, requires = "files")]
    pub watch: bool,
    /// With --watch: seconds between reconciles when no file changes
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_seconds: u64,
}

pub async fn serve(args: ServeArgs, connection: &Connection) -> anyhow::Result<ExitCode> {
    let mut options = ServeOptions {
        listen: "127.0.0.1:5240".parse().expect("a valid default address"),
        database: None,
        state_dir: connection.state_dir.clone(),
        boot_interfaces: Vec::new(),
        fleet: None,
        watch: args.watch.then(|| fleet::apply::watch::WatchOptions {
            files: args.files.clone(),
            state_dir: connection.state_dir.clone(),
            interval: std::time::Duration::from_secs(args.reconcile_seconds),
        }),
    };
    if !args.files.is_empty() {
        match fleet::config::load(&args.files) {
            Ok(fleet) => {
                super::validate::apply_controller_settings(&fleet, &mut options, connection)?;
                options.fleet = Some(fleet);
            }
            Err(diagnostics) => {
                eprint!("{}", diagnostics.render(super::output::colour_enabled()));
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    if let Some(listen) = args.listen {
        options.listen = listen;
    }
    if args.database.is_some() {
        options.database = args.database;
    }
    run_controller(options, shutdown_signal())
        .await
        .context("the controller stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
