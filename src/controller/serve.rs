//! Starting the controller: state directory, store, token, API listener; then serving until
//! told to stop.

use crate::api::{self, ApiState};
use crate::power::PowerDrivers;
use crate::services::token::{prepare_at_start, write_token_file, StartTokens, TOKEN_FILE};
use crate::store::{Store, StoreError};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file in the state directory that names the API's address, for commands on this host.
pub const API_URL_FILE: &str = "api-url";

/// Everything `fleet serve` needs, already merged from the command line and the fleet file.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// `sqlite://...` or `postgres://...`; default: `sqlite://<state_dir>/fleet.db`.
    pub database: Option<String>,
    pub state_dir: PathBuf,
    /// Interfaces the boot services (DHCP) are asked to serve.
    pub boot_interfaces: Vec<String>,
    /// The fleet file, when one was given: the boot services read theirs from it.
    pub fleet: Option<crate::config::Fleet>,
    /// `--watch`: the reconcile loop over the fleet files (needs `fleet`).
    pub watch: Option<crate::apply::watch::WatchOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {address}: {source} (is another controller running? use --listen)")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the API server failed: {0}")]
    Serve(std::io::Error),
}

/// The SQLite file used when no database is given.
pub fn default_database(state_dir: &Path) -> String {
    format!("sqlite://{}", state_dir.join("fleet.db").display())
}

/// Runs the controller until `shutdown` completes. Start-up progress goes to stderr, one line
/// per part, so a person sees what runs and what does not.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // The state directory holds the operator token and (by default) the store: ours alone.
    let state_dir = &options.state_dir;
    crate::store::private::create_private_directory(state_dir)
        .and_then(|()| crate::store::private::restrict_directory(state_dir))
        .map_err(|source| ServeError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
    let database = options
        .database
        .clone()
        .unwrap_or_else(|| default_database(&options.state_dir));
    let store = Store::open(&database).await?;
    let tokens = describe_start_tokens(&options.state_dir, prepare_at_start(&store).await?)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Bind {
            address: options.listen,
            source,
        })?;
    let address = listener.local_addr().map_err(ServeError::Serve)?;
    let api_url = format!("http://{address}");
    let _ = std::fs::write(options.state_dir.join(API_URL_FILE), format!("{api_url}\n"));
    eprintln!("fleet controller {}", env!("CARGO_PKG_VERSION"));
    eprintln!(
        "  store   {} ({})",
        crate::store::redact_url(&database),
        backend_name(&store)
    );
    eprintln!("  token   {tokens}");
    eprintln!("  api     listening on {api_url}");
    // TFTP runs until `stop_boot` is dropped, after the API stops.
    let (stop_boot, boot_stopped) = tokio::sync::watch::channel(());
    let dhcp = super::dhcp::start_dhcp(
        options.fleet.as_ref(),
        &options.boot_interfaces,
        &store,
        boot_stopped.clone(),
    )
    .await;
    let boot =
        crate::boot::http::start_with_controller(options.fleet.as_ref(), &store, boot_stopped)
            .await;
    let drivers = PowerDrivers::standard();
    start_executor(&store, &drivers).await;
    let mut settings =
        crate::services::machine_api::MachineApiSettings::new(options.fleet.as_ref());
    settings.state_dir = Some(options.state_dir.clone());
    let machine_api = crate::services::machine_api::SharedSettings::new(settings);
    let watch = start_watch(&options, &store, &drivers, &machine_api);
    let poll_seconds = options.fleet.as_ref().map_or_else(
        || crate::config::Policy::default().power_poll_seconds,
        |fleet| fleet.policy.power_poll_seconds,
    );
    let power_poll = crate::services::power_poll::start(&store, &drivers, poll_seconds);
    let event_policy = options
        .fleet
        .as_ref()
        .map_or_else(Default::default, |fleet| fleet.policy.events);
    let retention = crate::services::event_retention::start(&store, event_policy);
    let monitor = crate::services::monitor::start_monitor(
        store.clone(),
        drivers.clone(),
        machine_api.clone(),
    );
    let scripts = machine_api.current().scripts.clone();
    eprintln!(
        "  scripts {} for machines to run ({} of the fleet file's)",
        scripts.len(),
        scripts.iter().filter(|script| !script.builtin).count()
    );
    let state = ApiState {
        machine_api,
        store: store.clone(),
        drivers,
        boot: Some(boot),
    };
    let result = api::serve(listener, state, shutdown)
        .await
        .map_err(ServeError::Serve);
    if let Some(watch) = watch {
        watch.abort();
    }
    monitor.abort();
    retention.abort();
    if let Some(power_poll) = power_poll {
        power_poll.abort();
    }
    drop(stop_boot);
    if let Some(leases) = dhcp {
        if let Err(error) = leases.close().await {
            eprintln!("  dhcp    could not write the last leases: {error}");
        }
    }
    store.close().await;
    eprintln!("fleet controller stopped");
    result
}

/// Writes the token file when the controller made an admin token, and says what there is.
fn describe_start_tokens(state_dir: &Path, tokens: StartTokens) -> Result<String, ServeError> {
    let file = state_dir.join(TOKEN_FILE);
    Ok(match tokens {
        StartTokens::Made { name, secret } => {
            let path =
                write_token_file(state_dir, &secret).map_err(|source| ServeError::StateDir {
                    path: state_dir.to_path_buf(),
                    source,
                })?;
            format!("{} (admin token `{name}`, made now)", path.display())
        }
        StartTokens::Moved { name } => format!(
            "{} (the former plain token, now admin token `{name}`, kept hashed)",
            file.display()
        ),
        StartTokens::Present if file.exists() => format!("{}", file.display()),
        // Another controller on this database made the tokens: its host has the file.
        StartTokens::Present => "none in this state directory: use a token an admin made \
             (`fleet token create NAME`, then FLEET_TOKEN)"
            .to_string(),
    })
}

/// Resumes the applies a killed controller left running (each step either followed to its end
/// or failed with a reason; none runs twice).
async fn start_executor(store: &Store, drivers: &PowerDrivers) {
    match crate::apply::resume_unfinished(store, drivers).await {
        Ok(0) => {}
        Ok(count) => eprintln!("  apply   resumed {count} unfinished apply"),
        Err(error) => eprintln!("  apply   cannot resume unfinished applies: {error}"),
    }
}

/// Starts the reconcile loop of `--watch`; a watcher that cannot start is reported and the
/// controller runs without it.
fn start_watch(
    options: &ServeOptions,
    store: &Store,
    drivers: &PowerDrivers,
    machine_api: &crate::services::machine_api::SharedSettings,
) -> Option<tokio::task::JoinHandle<()>> {
    let (mut watch, fleet) = (options.watch.clone()?, options.fleet.clone()?);
    // The fleet file's [controller] may have moved the state directory after --watch was read.
    watch.state_dir = options.state_dir.clone();
    let (files, interval) = (watch.files.len(), watch.interval.as_secs());
    // The machine API's scripts and the timeout watch's limits follow each new fleet.
    let shared = machine_api.clone();
    let follow: crate::apply::watch::OnNewFleet = Arc::new(move |fleet| shared.follow(fleet));
    match crate::apply::watch::start_watch(store, drivers, watch, fleet, Some(follow)) {
        Ok(handle) => {
            eprintln!("  watch   {files} fleet file argument(s); reconciles on each save and every {interval} s");
            Some(handle)
        }
        Err(error) => {
            eprintln!("  watch   {error}; the controller runs without --watch");
            None
        }
    }
}

fn backend_name(store: &Store) -> &'static str {
    match store.backend() {
        crate::store::Backend::Sqlite => "SQLite",
        crate::store::Backend::Postgres => "PostgreSQL",
    }
}
