//! Starting the controller: state directory, store, token, the API's certificate, the two
//! listeners (the operator API over TLS, the boot routes over plain HTTP); then serving until
//! told to stop.

use crate::api::{self, ApiState};
use crate::metrics::Metrics;
use crate::power::PowerDrivers;
use crate::services::token::{prepare_at_start, write_token_file, StartTokens, TOKEN_FILE};
use crate::store::{Store, StoreError};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file in the state directory that names the API's address, for commands on this host.
/// Written last at start, so a reader that finds it finds the other two as well.
pub const API_URL_FILE: &str = "api-url";
/// The file in the state directory with the API certificate's fingerprint (`SHA256:hex`): the
/// CLI on this host pins it.
pub const API_FINGERPRINT_FILE: &str = "api-fingerprint";
/// The file in the state directory that names the boot listener's address (`http://...`).
pub const BOOT_URL_FILE: &str = "boot-url";

/// Everything `fleet serve` needs, already merged from the command line and the fleet file.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The operator API (HTTPS).
    pub listen: SocketAddr,
    /// The boot routes (plain HTTP): iPXE scripts, kernels, images, the machine API.
    pub boot_listen: SocketAddr,
    /// The operator's certificate for the API; `None`: the one in `<state_dir>/tls/`.
    pub tls: Option<crate::config::OperatorCertificate>,
    /// `sqlite://...` or `postgres://...`; default: `sqlite://<state_dir>/fleet.db`.
    pub database: Option<String>,
    pub state_dir: PathBuf,
    /// The file with the key the store's secrets are sealed with (`--secret-key-file`, else
    /// `[controller] secret_key_file`); or the key in `FLEET_SECRET_KEY` (not both); without
    /// either, `<state_dir>/secret.key` (made on the first start).
    pub secret_key_file: Option<PathBuf>,
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
    #[error("the secret key: {0}")]
    SecretKey(#[from] super::secret_key::KeyChoiceError),
    #[error("cannot listen on {address} for the {what}: {source} (is another controller running? use {option})")]
    Bind {
        what: &'static str,
        option: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("the {what} server failed: {source}")]
    Serve {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The SQLite file used when no database is given.
pub fn default_database(state_dir: &Path) -> String {
    format!("sqlite://{}", state_dir.join("fleet.db").display())
}

/// Runs the controller until `shutdown` completes. Start-up progress goes to stderr, one line
/// per part, so a person sees what runs and what does not.
pub async fn serve(
    mut options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // The state directory holds the operator token and (by default) the store: ours alone.
    let state_dir = options.state_dir.clone();
    let state_dir = &state_dir;
    crate::store::private::create_private_directory(state_dir)
        .and_then(|()| crate::store::private::restrict_directory(state_dir))
        .map_err(|source| ServeError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
    let database = options
        .database
        .clone()
        .unwrap_or_else(|| default_database(&options.state_dir));
    let (secret_key, key_source) = super::secret_key::choose_secret_key(
        std::env::var_os(crate::store::SECRET_KEY_ENV).as_deref(),
        options.secret_key_file.as_deref(),
        state_dir,
    )?;
    let secret_key_id = secret_key.id().to_string();
    let store = Store::open(&database).await?.with_secret_key(secret_key);
    let tokens = describe_start_tokens(&options.state_dir, prepare_at_start(&store).await?)?;
    // The upgrade from controllers that kept reported BMC passwords in files of their own.
    let moved = crate::services::machine_api::enlist::move_password_files_into_store(
        &store,
        &state_dir.join("secrets"),
    )
    .await?;
    let certificate = super::tls::api_certificate(options.tls.as_ref(), state_dir, options.listen)?;
    let tls = super::tls::server_config(&certificate)?;
    let api_listener = bind(options.listen, "operator API", "--listen").await?;
    let boot_listener = bind(options.boot_listen, "boot HTTP", "--boot-listen").await?;
    let api_url = format!("https://{}", dialable(local_address(&api_listener)?));
    let boot_address = local_address(&boot_listener)?;
    let boot_url = format!("http://{}", dialable(boot_address));
    // DHCP tells machines the boot listener's port when no http_boot_url is given.
    if let Some(fleet) = options.fleet.as_mut() {
        fleet.controller.boot_listen = boot_address;
    }
    write_state_files(
        state_dir,
        &[
            (BOOT_URL_FILE, &boot_url),
            (API_FINGERPRINT_FILE, &certificate.fingerprint),
            (API_URL_FILE, &api_url),
        ],
    )?;
    eprintln!("fleet controller {}", env!("CARGO_PKG_VERSION"));
    eprintln!(
        "  store   {} ({})",
        crate::store::redact_url(&database),
        backend_name(&store)
    );
    eprintln!("  token   {tokens}");
    eprintln!("  secrets key {secret_key_id} {key_source}");
    if !moved.moved.is_empty() {
        eprintln!(
            "  secrets moved the BMC password files of {} into the store",
            moved.moved.join(", ")
        );
    }
    for (machine, why) in &moved.failed {
        eprintln!("  secrets the BMC password file of {machine} stays: {why}");
    }
    eprintln!("  api     listening on {api_url} (TLS)");
    eprintln!(
        "  cert    {} ({})",
        certificate.fingerprint,
        origin_text(&certificate.origin)
    );
    eprintln!("  boot    listening on {boot_url} (HTTP: iPXE scripts, images, the machine API)");
    // One fleet, shared by the machine API's settings and the watch (not a copy each).
    let fleet: Option<Arc<crate::config::Fleet>> = options.fleet.take().map(Arc::new);
    // TFTP runs until `stop_boot` is dropped, after the API stops.
    let (stop_boot, boot_stopped) = tokio::sync::watch::channel(());
    // One registry for every service's counters, handed out like the sockets (`GET /metrics`).
    let metrics = Arc::new(Metrics::new());
    let controller_id =
        super::heartbeat::controller_id(state_dir).map_err(|source| ServeError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
    let dhcp = super::dhcp::start_dhcp(
        &controller_id,
        fleet.as_deref(),
        &options.boot_interfaces,
        &store,
        &metrics,
        boot_stopped.clone(),
    )
    .await;
    // Image files this controller cannot have itself come from the others on a shared store.
    let peers =
        (store.backend() == crate::store::Backend::Postgres).then(|| crate::boot::images::Peers {
            store: store.clone(),
            controller_id: controller_id.clone(),
        });
    let boot = crate::boot::http::start_with_controller(
        fleet.as_deref(),
        state_dir,
        peers,
        &store,
        &metrics,
        boot_stopped,
    )
    .await;
    let heartbeat = start_heartbeat(
        &store,
        &controller_id,
        (&api_url, &boot_url),
        served_networks(fleet.as_deref(), &options.boot_interfaces, dhcp.is_some()),
    )
    .await;
    let drivers = PowerDrivers::standard();
    let mut settings = crate::services::machine_api::MachineApiSettings::new(fleet.clone());
    settings.state_dir = Some(options.state_dir.clone());
    let machine_api = crate::services::machine_api::SharedSettings::new(settings);
    let applies_queued = Arc::new(tokio::sync::Notify::new());
    let duties = leader_duties(LeaderDutyParts {
        applies_queued: applies_queued.clone(),
        options: options.clone(),
        fleet: fleet.clone(),
        drivers: drivers.clone(),
        metrics: metrics.clone(),
        machine_api: machine_api.clone(),
        images: boot.images.clone(),
    });
    let election = super::leader::Election::start(
        super::leader::Candidate {
            store: store.clone(),
            database: database.clone(),
            controller_id: controller_id.clone(),
        },
        duties,
    )
    .await;
    let following = follow_leaders_fleet(&options, &store, &machine_api, &boot.images);
    let scripts = machine_api.current().scripts.clone();
    eprintln!(
        "  scripts {} for machines to run ({} of the fleet file's)",
        scripts.len(),
        scripts.iter().filter(|script| !script.builtin).count()
    );
    let boot_at_end = boot.clone();
    let state = ApiState {
        machine_api,
        store: store.clone(),
        drivers,
        boot: Some(boot),
        controller_id: Some(controller_id),
        metrics,
        applies_queued,
    };
    let result = serve_both(api_listener, boot_listener, tls, state, shutdown).await;
    election.stop().await;
    if let Some(following) = following {
        following.abort();
    }
    heartbeat.abort();
    drop(stop_boot);
    boot_at_end.finish_summaries().await;
    if let Some(leases) = dhcp {
        if let Err(error) = leases.close().await {
            eprintln!("  dhcp    could not write the last leases: {error}");
        }
    }
    store.close().await;
    eprintln!("fleet controller stopped");
    result
}

/// Records this controller in the store and keeps its heartbeat going (`fleet controllers`).
async fn start_heartbeat(
    store: &Store,
    id: &str,
    (api_url, boot_url): (&str, &str),
    networks: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    let id = id.to_string();
    let now = crate::store::now_ms();
    let record = crate::store::ControllerRecord {
        id,
        hostname: super::heartbeat::hostname(),
        api_url: api_url.to_string(),
        boot_url: boot_url.to_string(),
        networks,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: now,
        heartbeat_at: now,
    };
    eprintln!("  peers   this controller is `{}` in the store", record.id);
    super::heartbeat::start_heartbeat(store, record).await
}

/// What this controller's DHCP serves, as `fleet controllers` shows it: each interface with
/// its address, and the relayed-requests socket; nothing when DHCP did not start.
fn served_networks(
    fleet: Option<&crate::config::Fleet>,
    interfaces: &[String],
    dhcp_started: bool,
) -> Vec<String> {
    if !dhcp_started {
        return Vec::new();
    }
    let mut networks: Vec<String> = interfaces
        .iter()
        .filter_map(|interface| {
            crate::boot::dhcp::interface_ipv4(interface)
                .map(|address| format!("{interface} {address}"))
        })
        .collect();
    if let Some(listen) = fleet.and_then(|fleet| fleet.controller.dhcp_listen) {
        networks.push(format!("relayed {listen}"));
    }
    networks
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

/// Serves the operator API and the boot routes until `shutdown` completes; the first that
/// fails stops both.
async fn serve_both(
    api_listener: tokio::net::TcpListener,
    boot_listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (stop, stopped) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(());
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<()>| async move {
        let _ = stopped.changed().await;
    };
    let api = api::serve_api(
        api_listener,
        tls,
        state.clone(),
        until_stopped(stopped.clone()),
    );
    let boot = api::serve_boot(boot_listener, state, until_stopped(stopped));
    let failed = |what: &'static str| move |source| ServeError::Serve { what, source };
    tokio::try_join!(async { api.await.map_err(failed("operator API")) }, async {
        boot.await.map_err(failed("boot HTTP"))
    },)?;
    Ok(())
}

async fn bind(
    address: SocketAddr,
    what: &'static str,
    option: &'static str,
) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind {
            what,
            option,
            address,
            source,
        })
}

fn local_address(listener: &tokio::net::TcpListener) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|source| ServeError::Serve {
        what: "controller",
        source,
    })
}

/// The address a client on this host dials: loopback for an unspecified (all-interfaces) one.
fn dialable(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), address.port())
        }
        _ => address,
    }
}

/// Writes each `(file, line)` into the state directory whole (a temporary file renamed), in
/// order: readers wait for the last one.
fn write_state_files(state_dir: &Path, files: &[(&str, &str)]) -> Result<(), ServeError> {
    for (name, line) in files {
        let path = state_dir.join(name);
        crate::store::private::write_private_file(&path, format!("{line}\n").as_bytes())
            .map_err(|source| ServeError::StateDir { path, source })?;
    }
    Ok(())
}

fn origin_text(origin: &super::tls::CertificateOrigin) -> String {
    use super::tls::CertificateOrigin;
    match origin {
        CertificateOrigin::Made(path) => format!("made now: {}", path.display()),
        CertificateOrigin::Kept(path) => format!("made on the first start: {}", path.display()),
        CertificateOrigin::Operator(path) => format!("tls_cert {}", path.display()),
    }
}

/// What the leader's duties are started from, at each term it wins.
struct LeaderDutyParts {
    options: ServeOptions,
    fleet: Option<Arc<crate::config::Fleet>>,
    drivers: PowerDrivers,
    metrics: Arc<Metrics>,
    machine_api: crate::services::machine_api::SharedSettings,
    images: Arc<crate::boot::http::BootImages>,
    /// Notified by the API (and the reconcile loop) when an apply is queued.
    applies_queued: Arc<tokio::sync::Notify>,
}

/// The duties only the leader runs, each on the store fenced with its term: the executor (the
/// queued applies, and first the one an earlier term left applying), the reconcile loop
/// (`--watch`), the power poll, event retention and the timeout watch.
fn leader_duties(parts: LeaderDutyParts) -> super::leader::Duties {
    let parts = Arc::new(parts);
    Arc::new(move |store: Store, term: &crate::store::LeaderTerm| {
        let parts = parts.clone();
        let holder = term.holder.clone();
        vec![tokio::spawn(async move {
            let _running = AbortOnDrop(start_leader_loops(&parts, store, holder));
            std::future::pending::<()>().await;
        })]
    })
}

/// The loops of the leader's duties; `holder`: the term's (`CONTROLLER_ID/INSTANCE`).
fn start_leader_loops(
    parts: &LeaderDutyParts,
    store: Store,
    holder: String,
) -> Vec<tokio::task::JoinHandle<()>> {
    let fleet = parts.fleet.as_deref();
    // The executor's tasks are its own: aborting it (the term ends) stops the apply it runs.
    let executor = crate::apply::Executor {
        store: store.clone(),
        drivers: parts.drivers.clone(),
        metrics: parts.metrics.clone(),
        holder,
        wake: parts.applies_queued.clone(),
    };
    let mut loops = vec![tokio::spawn(executor.run())];
    loops.extend(start_watch(
        &parts.options,
        parts.fleet.clone(),
        &store,
        &parts.applies_queued,
        &parts.machine_api,
        &parts.images,
    ));
    let poll_seconds = fleet.map_or_else(
        || crate::config::Policy::default().power_poll_seconds,
        |fleet| fleet.policy.power_poll_seconds,
    );
    loops.extend(crate::services::power_poll::start(
        &store,
        &parts.drivers,
        poll_seconds,
    ));
    let event_policy = fleet.map_or_else(Default::default, |fleet| fleet.policy.events);
    loops.push(crate::services::event_retention::start(
        &store,
        event_policy,
    ));
    loops.push(crate::services::power_outbox::start(&store, &parts.drivers));
    loops.push(crate::services::monitor::start_monitor(
        store,
        parts.drivers.clone(),
        parts.machine_api.clone(),
    ));
    loops
}

/// Tasks aborted when this is dropped: a leader's loops end with the task that started them.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the reconcile loop of `--watch`; a watcher that cannot start is reported and the
/// controller runs without it.
fn start_watch(
    options: &ServeOptions,
    fleet: Option<Arc<crate::config::Fleet>>,
    store: &Store,
    applies_queued: &Arc<tokio::sync::Notify>,
    machine_api: &crate::services::machine_api::SharedSettings,
    images: &Arc<crate::boot::http::BootImages>,
) -> Option<tokio::task::JoinHandle<()>> {
    let (mut watch, fleet) = (options.watch.clone()?, fleet?);
    // The fleet file's [controller] may have moved the state directory after --watch was read.
    watch.state_dir = options.state_dir.clone();
    let (files, interval) = (watch.files.len(), watch.interval.as_secs());
    let take = take_new_fleet(machine_api, images);
    // The controllers that follow (`follow_leaders_fleet`) learn of each fleet this term takes
    // at the announcement's commit: the one in force at the term's start, then each new one,
    // in that order (one task writes them in turn). The leader's fenced store: a deposed
    // leader announces nothing.
    let (announce, mut announcements) = tokio::sync::mpsc::unbounded_channel::<String>();
    let announcer = store.clone();
    tokio::spawn(async move {
        while let Some(digest) = announcements.recv().await {
            if let Err(error) = announcer.announce_fleet(&digest).await {
                eprintln!(
                    "  watch   cannot tell the other controllers of the fleet in force: {error}"
                );
            }
        }
    });
    let _ = announce.send(served_digest(machine_api).unwrap_or_else(|| fleet.digest.clone()));
    let follow: crate::apply::watch::OnNewFleet = Arc::new(move |fleet| {
        take(fleet);
        let _ = announce.send(fleet.digest.clone());
    });
    let wake = Some(applies_queued.clone());
    match crate::apply::watch::start_watch(store, wake, watch, fleet, Some(follow)) {
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

/// What this controller does with a new fleet, whether its own reconcile loop took it (as the
/// leader) or it follows the leader's.
fn take_new_fleet(
    machine_api: &crate::services::machine_api::SharedSettings,
    images: &Arc<crate::boot::http::BootImages>,
) -> crate::apply::watch::OnNewFleet {
    // The machine API's scripts and the timeout watch's limits follow each new fleet.
    let shared = machine_api.clone();
    // So do the images: changed files checked again, new URLs downloaded.
    let images = images.clone();
    Arc::new(move |fleet| {
        shared.follow(fleet);
        let (images, declared) = (images.clone(), fleet.images.clone());
        let used_by = crate::boot::images::used_by(fleet);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { images.reload(declared, used_by).await });
        }
    })
}

/// `--watch` on PostgreSQL: whether it leads or not, this controller follows the fleet the
/// leader takes into force (`apply::watch::start_following`). On SQLite the one controller
/// leads, and its reconcile loop is all there is.
fn follow_leaders_fleet(
    options: &ServeOptions,
    store: &Store,
    machine_api: &crate::services::machine_api::SharedSettings,
    images: &Arc<crate::boot::http::BootImages>,
) -> Option<tokio::task::JoinHandle<()>> {
    let watch = options.watch.as_ref()?;
    if store.backend() != crate::store::Backend::Postgres {
        return None;
    }
    let shared = machine_api.clone();
    let served = Arc::new(move || served_digest(&shared));
    Some(crate::apply::watch::start_following(
        store,
        watch.files.clone(),
        served,
        take_new_fleet(machine_api, images),
    ))
}

/// The digest of the fleet the machine API serves now.
fn served_digest(machine_api: &crate::services::machine_api::SharedSettings) -> Option<String> {
    machine_api
        .current()
        .fleet
        .as_ref()
        .map(|fleet| fleet.digest.clone())
}

fn backend_name(store: &Store) -> &'static str {
    match store.backend() {
        crate::store::Backend::Sqlite => "SQLite",
        crate::store::Backend::Postgres => "PostgreSQL",
    }
}
