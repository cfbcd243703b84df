//! The HTTP boot endpoints, mounted on the controller's boot listener (plain HTTP) without the
//! operator token (booting machines have none):
//!
//! - `GET /boot/{mac}.ipxe`: the iPXE script for that MAC, as its machine's status demands
//!   ([`crate::boot::ipxe`]); a `boot` event. A known machine's ephemeral script carries a
//!   fresh one-shot boot secret (`fleet.boot=`), never a token, and the machine's
//!   `ephemeral_kernel_params` from the fleet file `fleet serve` started with.
//! - `GET /boot/files/{image}/{kernel|initrd|root}` and `GET /boot/by-mac/{mac}/{image}/{file}`:
//!   an image's files, streamed from disk with Range requests; a `transfer` event (on the
//!   machine of `mac` for the second form, which the boot scripts use).
//! - `GET /boot/peer/files/{sha256}`: a ready image file by its SHA-256, for another controller
//!   of the store that needs it ([`crate::boot::images::peers`]); only with a proof made with
//!   the controllers' secret key (else 401), Range as above, no event (one log line).
//! - `GET /boot/booted?mac=MAC[&stage=TEXT]`: the ephemeral environment says it is up; a `boot`
//!   event only (no credential: it does not count as the machine being heard from).
//!
//! None of them carries a credential, so none writes an event per request: each goes through
//! the event summaries ([`crate::boot::summary`]): the first of its kind (per known machine, or
//! for unknown MACs) in an interval is written at once, the rest are counted into one summary.
//! The routes are rate-limited per source address ([`crate::boot::throttle`]).
//!
//! Image files are verified against the fleet file's SHA-256 when the controller loads them
//! or downloads them ([`crate::boot::images`]); only verified files are ever served, and a
//! file changed on disk after its check is refused (409).

pub use crate::boot::images::{
    sha256_of_file, BootImages, DeployImage, ImageError, ImageUnavailable, VerifiedFile,
    IMAGE_FILES,
};
use crate::boot::ipxe::{self, BootAction, EphemeralBoot};
use crate::boot::summary::{EventSummaries, Occurrence};
use crate::boot::throttle::{RequestGuard, SourceAddress};
use crate::model::MacAddr;
use crate::store::{NewEvent, Store, StoreError};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// What the boot endpoints share.
#[derive(Debug, Clone)]
pub struct BootState {
    pub store: Store,
    pub images: Arc<BootImages>,
    /// How machines reach the controller (`http_boot_url`); `None`: from the request's `Host`.
    pub base_url: Option<String>,
    /// The image booted for enlistment, commissioning, testing, rescue...
    pub ephemeral_image: Option<String>,
    /// Each machine's `ephemeral_kernel_params` (only machines that have some), from the fleet
    /// file `fleet serve` was started with.
    pub ephemeral_kernel_params: Arc<BTreeMap<String, String>>,
    /// Where the boot requests' events are counted ([`crate::boot::summary`]).
    pub summaries: EventSummaries,
    /// The rate limits of requests without a credential, for the API's middleware.
    pub guard: Arc<RequestGuard>,
    /// The first-stage loaders of `loader_dir` (file name → path), the files TFTP serves, for
    /// UEFI HTTP boot clients, which DHCP sends to `/boot/loaders/NAME` (ipxe.efi...).
    pub loaders: Arc<BTreeMap<String, std::path::PathBuf>>,
    /// Where the boot files' bytes sent are counted (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The summaries' writer: it writes the last summaries once told to stop, so the
    /// controller waits for it ([`BootState::finish_summaries`]) before closing the store.
    pub summary_writer: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl BootState {
    /// Waits (at most 10 s) for the summaries' writer, which ends once the boot services were
    /// told to stop, having written the last summaries: called before the store closes, so
    /// they are not lost (they were, with "attempted to acquire a connection on a closed pool").
    pub async fn finish_summaries(&self) {
        let writer = self
            .summary_writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), writer).await;
        }
    }
}

/// The boot endpoints' routes, ready to merge into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>(state: BootState) -> Router<S> {
    Router::new()
        .route("/boot/booted", get(booted))
        .route("/boot/files/{image}/{file}", get(image_file))
        .route(
            "/boot/by-mac/{mac}/{image}/{file}",
            get(image_file_for_machine),
        )
        .route("/boot/loaders/{file}", get(loader_file))
        .route("/boot/peer/files/{sha256}", get(peer_file))
        .route("/boot/{script}", get(boot_script))
        .with_state(Arc::new(state))
}

#[derive(Debug, thiserror::Error)]
pub enum BootHttpError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An image's file that changed on disk after it was checked.
    #[error("{0}")]
    Conflict(String),
    /// An image's file not ready yet (downloading, being checked).
    #[error("{0}")]
    Unavailable(String),
    /// A peer request without a valid proof.
    #[error("{0}")]
    Unauthorized(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for BootHttpError {
    fn into_response(self) -> Response {
        let status = match &self {
            BootHttpError::NotFound(_) => StatusCode::NOT_FOUND,
            BootHttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BootHttpError::Conflict(_) => StatusCode::CONFLICT,
            BootHttpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            BootHttpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            BootHttpError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, format!("{self}\n")).into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// Scripts

async fn boot_script(
    State(state): State<Arc<BootState>>,
    UrlPath(script): UrlPath<String>,
    SourceAddress(source): SourceAddress,
    headers: HeaderMap,
) -> Result<Response, BootHttpError> {
    let mac_text = script.strip_suffix(".ipxe").ok_or_else(|| {
        BootHttpError::NotFound(format!("/boot/{script} (scripts are /boot/MAC.ipxe)"))
    })?;
    let mac =
        MacAddr::parse(mac_text).map_err(|error| BootHttpError::BadRequest(error.to_string()))?;
    let base_url = base_url(&state, &headers);
    let machine = state.store.machine_row_by_mac(mac).await?;
    let status = machine.as_ref().map(|machine| machine.lifecycle.status);
    let name = machine
        .as_ref()
        .map(|machine| machine.name.as_str().to_string());
    let action = match &machine {
        Some(record) => ipxe::boot_action_installed(
            record.lifecycle.status,
            install_done(&state.store, record).await?,
        ),
        None => ipxe::boot_action(None),
    };
    let (script, summary) = match (action, &name, status) {
        (BootAction::Ephemeral(role), _, _) => {
            ephemeral_script(&state, role, mac, machine.as_ref(), &base_url).await?
        }
        (BootAction::LocalDisk, Some(name), Some(status)) => (
            ipxe::render_local_disk(name, status),
            "boot from the local disk".to_string(),
        ),
        (_, Some(name), Some(status)) => (
            ipxe::render_power_off(name, status),
            "power off".to_string(),
        ),
        // Unreachable: no machine means enlistment, which is ephemeral.
        _ => (
            ipxe::render_unavailable("no machine"),
            "nothing".to_string(),
        ),
    };
    let event = NewEvent {
        machine: name.clone(),
        kind: "boot".to_string(),
        actor: "boot".to_string(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some(format!("iPXE script served: {summary}")),
        detail: serde_json::json!({ "mac": mac.to_string(), "status": status.map(|s| s.as_str()), "script": summary }),
    };
    // A known machine's scripts are keyed by what they tell it (a fixed set: each ephemeral
    // role and image, the local disk, power off), so the first of each kind in an interval is
    // its own event at once: "boot from the local disk" right after an install is not counted
    // into a summary of the install's own boot, written a minute later.
    let (what, variant, sample) = match &name {
        Some(_) => ("boot scripts served", Some(summary.clone()), summary),
        None => (
            "boot-script requests for unknown MACs",
            None,
            mac.to_string(),
        ),
    };
    let occurrence = Occurrence {
        what,
        machine: name,
        variant,
        source,
        sample: Some(sample),
        event,
    };
    state.summaries.record(&state.store, occurrence).await;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        script,
    )
        .into_response())
}

/// Whether the machine's deployment installer signalled done in its current deploying status
/// (read only for deploying machines).
async fn install_done(
    store: &Store,
    record: &crate::store::MachineRecord,
) -> Result<bool, StoreError> {
    if record.lifecycle.status != crate::model::Status::Deploying {
        return Ok(false);
    }
    let mut watched = record.watched();
    watched.install_done = store
        .machine_state(record.name.as_str())
        .await?
        .and_then(|state| state.install_done_at);
    Ok(watched.install_done_at().is_some())
}

/// The ephemeral environment's script, or a script saying why it cannot boot.
async fn ephemeral_script(
    state: &BootState,
    role: ipxe::Role,
    mac: MacAddr,
    machine: Option<&crate::store::MachineRecord>,
    base_url: &str,
) -> Result<(String, String), BootHttpError> {
    let Some(image) = state.ephemeral_image.as_deref() else {
        let reason = "the controller has no ephemeral image ([controller] ephemeral_image)";
        return Ok((ipxe::render_unavailable(reason), reason.to_string()));
    };
    if !state.images.is_bootable(image) {
        let reason = format!("the ephemeral image `{image}` has no verified kernel and initrd");
        return Ok((ipxe::render_unavailable(&reason), reason));
    }
    let secret = match machine {
        Some(record) => Some(boot_secret(&state.store, record).await?),
        None => None,
    };
    let name = machine.map(|record| record.name.as_str());
    let extra = name.and_then(|name| state.ephemeral_kernel_params.get(name));
    let boot = EphemeralBoot {
        role,
        mac,
        machine: name,
        boot_secret: secret.as_deref(),
        base_url,
        image,
        extra_kernel_params: extra.map_or("", String::as_str),
    };
    Ok((
        ipxe::render_ephemeral(&boot),
        format!("ephemeral environment ({}), image {image}", role.as_str()),
    ))
}

/// A one-shot boot secret for this script: useless but for one exchange for a run token
/// (the machine API's exchange); only its SHA-256 is kept, never the secret.
async fn boot_secret(
    store: &Store,
    record: &crate::store::MachineRecord,
) -> Result<String, StoreError> {
    use crate::store::{new_secret, secret_hash};
    let secret = new_secret();
    store
        .add_boot_secret(
            record.name.as_str(),
            &secret_hash(&secret),
            record.boot_started,
        )
        .await?;
    Ok(secret)
}

fn base_url(state: &BootState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.base_url {
        return url.trim_end_matches('/').to_string();
    }
    // The machine reached us at this Host, so it can reach the kernel there too.
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| {
            host.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
        })
        .unwrap_or("127.0.0.1:5248");
    format!("http://{host}")
}

// ---------------------------------------------------------------------------------------------
// Files

#[derive(Debug, serde::Deserialize)]
struct BootedQuery {
    mac: Option<String>,
    stage: Option<String>,
}

/// A first-stage loader for a UEFI HTTP boot client: only the files of `loader_dir` (by name;
/// nothing under it, no other path), with Range. Counted like the other boot files.
async fn loader_file(
    State(state): State<Arc<BootState>>,
    UrlPath(file): UrlPath<String>,
    SourceAddress(source): SourceAddress,
    request: Request,
) -> Result<Response, BootHttpError> {
    let path = state.loaders.get(&file).ok_or_else(|| {
        BootHttpError::NotFound(format!(
            "/boot/loaders/{file}: not a loader of the controller's loader_dir"
        ))
    })?;
    let response = serve_counted(path, request, &state.metrics).await;
    let event = NewEvent {
        machine: None,
        kind: "transfer".to_string(),
        actor: "boot".to_string(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some(format!("HTTP loader {file}")),
        detail: serde_json::json!({
            "protocol": "http", "loader": file, "status": response.status().as_u16(),
        }),
    };
    // The file names are the loader directory's own (others were refused above).
    let occurrence = Occurrence {
        what: "boot loaders sent over HTTP",
        machine: None,
        variant: Some(file.clone()),
        source,
        sample: source.map(|address| address.to_string()),
        event,
    };
    state.summaries.record(&state.store, occurrence).await;
    Ok(response)
}

/// The file at `path` as `ServeFile` answers `request` (Range, HEAD, conditional requests),
/// its body's bytes counted into the metrics as they go out: as hyper polls the body, which it
/// does as the socket takes them, so a client that goes away stops the count.
async fn serve_counted(
    path: &std::path::Path,
    request: Request,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Response {
    use http_body_util::BodyExt;
    let response = match ServeFile::new(path).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let metrics = metrics.clone();
    response.map(move |body| {
        let counted = body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                metrics.http_boot_sent(data.len() as u64);
            }
            frame
        });
        axum::body::Body::new(counted)
    })
}

/// The loaders TFTP serves ([`crate::boot::tftp::loader_files`]); none when the directory
/// cannot be read (TFTP says why at start).
fn loaders_in(directory: &std::path::Path) -> BTreeMap<String, std::path::PathBuf> {
    crate::boot::tftp::loader_files(directory)
        .map(|loaders| loaders.into_iter().collect())
        .unwrap_or_default()
}

async fn image_file(
    State(state): State<Arc<BootState>>,
    UrlPath((image, file)): UrlPath<(String, String)>,
    SourceAddress(source): SourceAddress,
    request: Request,
) -> Result<Response, BootHttpError> {
    serve_image_file(&state, None, &image, &file, source, request).await
}

async fn image_file_for_machine(
    State(state): State<Arc<BootState>>,
    UrlPath((mac, image, file)): UrlPath<(String, String, String)>,
    SourceAddress(source): SourceAddress,
    request: Request,
) -> Result<Response, BootHttpError> {
    let mac = MacAddr::parse(&mac).map_err(|error| BootHttpError::BadRequest(error.to_string()))?;
    serve_image_file(&state, Some(mac), &image, &file, source, request).await
}

async fn serve_image_file(
    state: &BootState,
    mac: Option<MacAddr>,
    image: &str,
    file: &str,
    source: Option<std::net::IpAddr>,
    request: Request,
) -> Result<Response, BootHttpError> {
    let verified = state
        .images
        .servable(image, file)
        .map_err(|refusal| match refusal {
            ImageUnavailable::Changed { .. } => BootHttpError::Conflict(refusal.to_string()),
            ImageUnavailable::Downloading { .. } | ImageUnavailable::Checking { .. } => {
                BootHttpError::Unavailable(refusal.to_string())
            }
            _ => BootHttpError::NotFound(refusal.to_string()),
        })?;
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    // ServeFile streams from disk in chunks and answers Range with 206 and Content-Range.
    let response = serve_counted(&verified.path, request, &state.metrics).await;
    let machine = match mac {
        Some(mac) => state.store.machine_name_by_mac(mac).await.ok().flatten(),
        None => None,
    };
    let event = NewEvent {
        machine: machine.clone(),
        kind: "transfer".to_string(),
        actor: "boot".to_string(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some(format!("HTTP {file} of image {image}")),
        detail: serde_json::json!({
            "protocol": "http", "image": image, "file": file, "size": verified.size,
            "range": range, "status": response.status().as_u16(), "mac": mac.map(|mac| mac.to_string()),
        }),
    };
    // The image and file are ones the fleet file declares (others were refused above).
    let what = if machine.is_some() {
        "boot files sent"
    } else {
        "boot files sent to no known machine"
    };
    let occurrence = Occurrence {
        what,
        machine,
        variant: Some(format!("{image} {file}")),
        source,
        sample: mac.map(|mac| mac.to_string()),
        event,
    };
    state.summaries.record(&state.store, occurrence).await;
    Ok(response)
}

/// An image file for another controller of the store, by its SHA-256, once the request's proof
/// checks with this controller's secret key.
async fn peer_file(
    State(state): State<Arc<BootState>>,
    UrlPath(sha256): UrlPath<String>,
    SourceAddress(source): SourceAddress,
    request: Request,
) -> Result<Response, BootHttpError> {
    use crate::boot::images::peers;
    let proof = request
        .headers()
        .get(peers::PROOF_HEADER)
        .and_then(|value| value.to_str().ok());
    let from = source.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
    let key = state.store.secret_key();
    if let Err(refusal) = peers::check_proof_header(key, proof, &sha256, crate::store::now_ms()) {
        eprintln!("  images  refused a peer's request for {sha256} from {from}: {refusal}");
        return Err(BootHttpError::Unauthorized(format!("refused: {refusal}")));
    }
    let verified = state.images.file_by_digest(&sha256).ok_or_else(|| {
        BootHttpError::NotFound(format!(
            "no ready image file with SHA-256 {sha256} on this controller"
        ))
    })?;
    eprintln!(
        "  images  sending {} (SHA-256 {sha256}) to the controller at {from}",
        verified.path.display()
    );
    Ok(serve_counted(&verified.path, request, &state.metrics).await)
}

async fn booted(
    State(state): State<Arc<BootState>>,
    SourceAddress(source): SourceAddress,
    Query(query): Query<BootedQuery>,
) -> Result<Response, BootHttpError> {
    let mac_text = query
        .mac
        .as_deref()
        .ok_or_else(|| BootHttpError::BadRequest("mac=MAC is required".into()))?;
    let mac =
        MacAddr::parse(mac_text).map_err(|error| BootHttpError::BadRequest(error.to_string()))?;
    let machine = state.store.machine_name_by_mac(mac).await?;
    // Recorded as an event only: the call carries no credential, so it does not count as the
    // machine being heard from (anyone could keep a silent machine's clocks from running out).
    let stage: String = query
        .stage
        .unwrap_or_else(|| "booted".into())
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let event = NewEvent {
        machine: machine.clone(),
        kind: "boot".to_string(),
        actor: "machine".to_string(),
        action: None,
        from_status: None,
        to_status: None,
        reason: Some(format!("the ephemeral environment called back: {stage}")),
        detail: serde_json::json!({ "mac": mac.to_string(), "stage": stage }),
    };
    let (what, sample) = match &machine {
        Some(_) => ("boot call-backs", stage),
        None => ("boot call-backs for unknown MACs", mac.to_string()),
    };
    let occurrence = Occurrence {
        what,
        machine,
        variant: None,
        source,
        sample: Some(sample),
        event,
    };
    state.summaries.record(&state.store, occurrence).await;
    Ok((StatusCode::OK, "ok\n").into_response())
}

// ---------------------------------------------------------------------------------------------
// Start-up inside `fleet serve`

/// Starts the boot services that live beside the API: TFTP on the fleet file's `tftp_listen`
/// (only with a fleet file; a failure to bind is reported and the rest runs), the writer of the
/// event summaries, and the state of the HTTP boot endpoints, with the images verified and the
/// policy's rate limits. TFTP and the summaries stop when `stop` is dropped or changes. Progress
/// goes to stderr, one line per part, like the rest of `fleet serve`.
pub async fn start_with_controller(
    fleet: Option<&crate::config::Fleet>,
    state_dir: &std::path::Path,
    peers: Option<crate::boot::images::Peers>,
    store: &Store,
    metrics: &Arc<crate::metrics::Metrics>,
    stop: tokio::sync::watch::Receiver<()>,
) -> BootState {
    let policy = fleet.map(|fleet| fleet.policy.clone()).unwrap_or_default();
    let interval = std::time::Duration::from_secs(u64::from(policy.events.summary_seconds));
    let summaries = EventSummaries::new(interval);
    let writer = summaries.spawn_writer(store.clone(), stop.clone());
    let guard = Arc::new(RequestGuard::new(
        &policy.rate_limits,
        summaries.clone(),
        store.clone(),
    ));
    let limits = &policy.rate_limits;
    eprintln!(
        "  limits  per address: {} requests without a credential at once, then {} a minute; \
         {} enlistments at once, then {} a minute",
        limits.anonymous_burst,
        limits.anonymous_per_minute,
        limits.enlist_burst,
        limits.enlist_per_minute
    );
    let mut state = BootState {
        store: store.clone(),
        images: Arc::default(),
        base_url: None,
        ephemeral_image: None,
        ephemeral_kernel_params: Arc::default(),
        summaries,
        guard,
        loaders: Arc::default(),
        metrics: metrics.clone(),
        summary_writer: Arc::new(std::sync::Mutex::new(Some(writer))),
    };
    let Some(fleet) = fleet else {
        eprintln!("  boot    no fleet file: HTTP boot scripts only (no TFTP, no images)");
        return state;
    };
    let settings = &fleet.controller;
    let mut stop = stop;
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    match crate::boot::tftp::controller::start(
        settings.tftp_listen,
        settings.loader_dir.clone(),
        store.clone(),
        state.summaries.clone(),
        metrics.clone(),
        shutdown,
    )
    .await
    {
        Ok((address, loaders)) => {
            eprintln!(
                "  tftp    listening on {address} ({loaders} loaders from {})",
                settings.loader_dir.display()
            )
        }
        Err(error) => eprintln!("  tftp    not running: {error}; the rest runs"),
    }
    let cache = crate::boot::images::ImageCache::in_state_dir(state_dir);
    let (images, errors) =
        BootImages::load_async(fleet.images.clone(), Some(cache.clone()), peers).await;
    for error in &errors {
        eprintln!("  images  error: {error}");
    }
    images.set_used_by(fleet);
    let images = Arc::new(images);
    images.start_downloads();
    let waiting = images
        .list()
        .iter()
        .filter(|row| row.state != "ready")
        .count();
    eprintln!(
        "  images  {} files verified, {waiting} not (yet); cache {}",
        images.ready_count(),
        cache.dir().display()
    );
    state.images = images;
    state.loaders = Arc::new(loaders_in(&settings.loader_dir));
    state.base_url = settings.http_boot_url.clone();
    state.ephemeral_image = settings.ephemeral_image.clone();
    state.ephemeral_kernel_params = Arc::new(ephemeral_kernel_params(fleet));
    state
}

/// Machine name → its ephemeral environment's extra kernel parameters, for those that have any.
fn ephemeral_kernel_params(fleet: &crate::config::Fleet) -> BTreeMap<String, String> {
    let with_params = fleet.machines.iter().filter_map(|machine| {
        let params = machine.deploy.ephemeral_command_line();
        (!params.is_empty()).then(|| (machine.name.as_str().to_string(), params))
    });
    with_params.collect()
}
