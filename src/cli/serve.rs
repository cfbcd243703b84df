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
    /// The operator API's address, HTTPS [default: the fleet file's, else 127.0.0.1:5240]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The boot listener's address, plain HTTP: iPXE scripts, kernels, images, the machine API
    /// [default: the fleet file's, else 0.0.0.0:5248]
    #[arg(long)]
    pub boot_listen: Option<SocketAddr>,
    /// The API's certificate chain, PEM (with --tls-key) [default: the fleet file's tls_cert,
    /// else a self-signed one made in the state directory on first start]
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The file with the key the store's secrets (BMC passwords) are sealed with: 32 bytes, 64
    /// hex digits or base64; the same on every controller of one database. Or give the key in
    /// FLEET_SECRET_KEY (not both) [default: the fleet file's secret_key_file, else
    /// <state_dir>/secret.key, made on first start]
    #[arg(long)]
    pub secret_key_file: Option<PathBuf>,
    /// Watch the fleet files: re-plan on every save and on a timer, and apply the steps that
    /// are not destructive (destructive ones wait for `fleet apply --allow-destroy`)
    #[arg(long, requires = "files")]
    pub watch: bool,
    /// With --watch: seconds between reconciles when no file changes
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_seconds: u64,
}

pub async fn serve(args: ServeArgs, connection: &Connection) -> anyhow::Result<ExitCode> {
    let defaults = fleet::config::ControllerSettings::default();
    let mut options = ServeOptions {
        listen: defaults.listen,
        boot_listen: defaults.boot_listen,
        tls: None,
        database: None,
        state_dir: connection.state_dir.clone(),
        secret_key_file: None,
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
    if let Some(boot_listen) = args.boot_listen {
        options.boot_listen = boot_listen;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        options.tls = Some(fleet::config::OperatorCertificate { cert, key });
    }
    if args.secret_key_file.is_some() {
        options.secret_key_file = args.secret_key_file;
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
