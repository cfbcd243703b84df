//! The command line: argument parsing (clap) and one module per group of commands. Every
//! command except `validate`, `schema`, `explain`, `bench`, `serve` and `db` is a client of the
//! controller's API.

mod adopt;
mod apply;
mod bench;
mod bench_http;
mod bench_lifecycle;
mod client;
mod clone;
mod controllers;
mod db;
mod demo;
mod explain;
mod follow;
mod images;
mod machine;
mod output;
mod plan;
mod serve;
mod sim;
mod simulate;
mod token;
mod trust;
mod validate;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "fleet",
    version,
    about = "Declarative bare-metal provisioning",
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// How a client command reaches the controller.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The controller's operator API, https://HOST:PORT [default: the api-url its state
    /// directory names, else https://127.0.0.1:5240]
    #[arg(long, env = "FLEET_SERVER", global = true)]
    pub server: Option<String>,
    /// Accept only the controller certificate of this SHA-256 fingerprint (as `fleet serve`
    /// prints it) [default: the state directory's api-fingerprint, else the one trusted on first
    /// use in ~/.config/fleet/known_controllers]
    #[arg(long, env = "FLEET_TLS_FINGERPRINT", global = true)]
    pub tls_fingerprint: Option<String>,
    /// An operator token's secret [default: the controller's state directory file operator-token]
    #[arg(long, env = "FLEET_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The controller's state directory (token, api-url, api-fingerprint, SQLite file)
    #[arg(long, env = "FLEET_STATE_DIR", global = true, default_value = ".fleet")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check fleet files; every error at once with file:line:column
    Validate(validate::ValidateArgs),
    /// Print the JSON Schema of the fleet file, for editors
    Schema,
    /// Where each of a machine's values comes from: machine, profiles, policy (offline)
    Explain(explain::ExplainArgs),
    /// Run the controller: store, HTTP API (and boot services)
    Serve(serve::ServeArgs),
    /// One row per machine
    Machines {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show, add, or act on machines
    #[command(subcommand)]
    Machine(machine::MachineCommand),
    /// The history: status changes, actions, power, boots (--follow: as it is written)
    Events(machine::EventsArgs),
    /// The steps that take the machines from what the controller observes to the fleet files
    Plan(plan::PlanArgs),
    /// Apply a saved plan (or a fresh one) and follow it to the end
    Apply(apply::ApplyArgs),
    /// Copy a machine's storage and/or interfaces onto ready machines (neither is assumed)
    Clone(clone::CloneArgs),
    /// Write fleet TOML for what the controller observes (the next plan is then empty)
    Adopt(adopt::AdoptArgs),
    /// The images: size, digests and state of each file (`prune`: remove unused cached files)
    Images(images::ImagesArgs),
    /// The controllers sharing this controller's store: addresses, what their DHCP serves,
    /// version, last heartbeat
    Controllers {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Operator tokens: create (read-only or admin), list, revoke, rotate
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The store itself, without a controller: backup, restore, migrate-to (PostgreSQL)
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Measure fleet's speed targets and print the figures
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Simulated machines (with BMCs) against a controller's boot services, over its sockets
    Sim(sim::SimArgs),
    /// A controller and simulated machines on loopback, no root: enlist, commission, test,
    /// clone, deploy, and what happened to each machine
    Demo(demo::DemoArgs),
}

/// Runs the command line; the exit code follows the command's contract (README).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's controller runs in this process and its simulated machines enlist as unknown
    // MACs on purpose: its own table says what happened, so only errors are logged beside it.
    let default_level = match cli.command {
        Command::Demo(_) => "error",
        // A copy reads each table with one long SELECT: sqlx's slow-statement warning is expected.
        Command::Db(_) => "warn,sqlx::query=error",
        _ => "warn",
    };
    init_logging(default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    plan::report_peak_memory();
    code
}

/// Logs go to stderr at `default_level` unless `FLEET_LOG` says otherwise (`info`,
/// `fleet::boot=debug`, ...).
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only on a terminal: a log redirected to a file or a CI job stays plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(args) => validate::validate(&args),
        Command::Schema => validate::schema(),
        Command::Explain(args) => explain::run(&args),
        Command::Serve(args) => serve::serve(args, &cli.connection).await,
        Command::Machines { json } => machine::machines(&cli.connection, json).await,
        Command::Machine(command) => machine::machine(&cli.connection, command).await,
        Command::Events(args) => machine::events(&cli.connection, &args).await,
        Command::Plan(args) => plan::run(&cli.connection, &args).await,
        Command::Apply(args) => apply::run(&cli.connection, &args).await,
        Command::Adopt(args) => adopt::run(&cli.connection, &args).await,
        Command::Clone(args) => clone::run(&cli.connection, &args).await,
        Command::Images(args) => images::run(&cli.connection, &args).await,
        Command::Controllers { json } => controllers::run(&cli.connection, json).await,
        Command::Token(command) => token::token(&cli.connection, command).await,
        Command::Db(command) => db::run(&cli.connection, command).await,
        Command::Bench(command) => bench::bench(command).await,
        Command::Sim(args) => sim::run(&args).await,
        Command::Demo(args) => demo::run(&args).await,
    }
}
