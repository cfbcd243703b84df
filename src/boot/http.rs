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
//! - `GET /boot/booted?mac=MAC[&stage=TEXT]`: the ephemeral environment says it is up; a `boot`
//!   event only (no credential: it does not count as the machine being heard from).
//!
//! None of them carries a credential, so none writes an event per request: each goes through
//! the event summaries ([`crate::boot::summary`]): the first of its kind (per known machine, or
//! for unknown MACs) in an interval is written at once, the rest are counted into one summary.
//! The routes are rate-limited per source address ([`crate::boot::throttle`]).
//!
//! Image files are verified against the fleet file's SHA-256 when the controller loads them
//! ([`BootImages::load`]); only verified files are ever served.

use crate::boot::ipxe::{self, BootAction, EphemeralBoot};
use crate::boot::summary::{EventSummaries, Occurrence};
use crate::boot::throttle::{RequestGuard, SourceAddress};
use crate::config::{ArtifactLocation, Image};
use crate::model::MacAddr;
use crate::store::{NewEvent, Store, StoreError};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// The files of an image that can be served, by their name in the URL.
pub const IMAGE_FILES: [&str; 3] = ["kernel", "initrd", "root"];

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
        .route("/boot/{script}", get(boot_script))
        .with_state(Arc::new(state))
}

#[derive(Debug, thiserror::Error)]
pub enum BootHttpError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for BootHttpError {
    fn into_response(self) -> Response {
        let status = match &self {
            BootHttpError::NotFound(_) => StatusCode::NOT_FOUND,
            BootHttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
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
    let machine = state.store.machine_by_mac(mac).await?;
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
    let (what, sample) = match &name {
        Some(_) => ("boot scripts served", summary),
        None => ("boot-script requests for unknown MACs", mac.to_string()),
    };
    let occurrence = Occurrence {
        what,
        machine: name,
        variant: None,
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
        .file(image, file)
        .ok_or_else(|| {
            BootHttpError::NotFound(format!("image `{image}` has no verified file `{file}`"))
        })?
        .clone();
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    // ServeFile streams from disk in chunks and answers Range with 206 and Content-Range.
    let response = match ServeFile::new(&verified.path).oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    };
    let machine = match mac {
        Some(mac) => state
            .store
            .machine_by_mac(mac)
            .await
            .ok()
            .flatten()
            .map(|m| m.name.as_str().to_string()),
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
    let machine = state
        .store
        .machine_by_mac(mac)
        .await?
        .map(|machine| machine.name.as_str().to_string());
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
// Images

/// A file the boot endpoints may serve: checked against the fleet file when loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFile {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// The images' files, verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootImages {
    files: BTreeMap<(String, String), VerifiedFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image `{image}`: the {file} {path} has SHA-256 {actual}, but the fleet file says {expected}; \
         the file changed or the fleet file is wrong (it is not served)"
    )]
    ChecksumMismatch {
        image: String,
        file: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("image `{image}`: cannot read the {file} {path}: {source} (it is not served)")]
    Unreadable {
        image: String,
        file: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image `{image}`: the {file} is a URL ({url}); downloading images is not built yet, give a local path")]
    Remote {
        image: String,
        file: String,
        url: String,
    },
}

impl BootImages {
    /// Verifies every file of every image (SHA-256 when the fleet file gives one; readable
    /// always). Files that fail are left out, each with its error. Reads whole files: call it
    /// from a blocking context ([`BootImages::load_async`] does).
    pub fn load(images: &BTreeMap<String, Image>) -> (BootImages, Vec<ImageError>) {
        let mut loaded = BootImages::default();
        let mut errors = Vec::new();
        for image in images.values() {
            for (file, location, expected) in image_artifacts(image) {
                match verify(&image.name, file, location, expected) {
                    Ok(verified) => {
                        loaded
                            .files
                            .insert((image.name.clone(), file.to_string()), verified);
                    }
                    Err(error) => errors.push(error),
                }
            }
        }
        (loaded, errors)
    }

    pub async fn load_async(images: BTreeMap<String, Image>) -> (BootImages, Vec<ImageError>) {
        // A panic while hashing leaves nothing verified, so nothing is served.
        tokio::task::spawn_blocking(move || BootImages::load(&images))
            .await
            .unwrap_or_default()
    }

    /// Adds a file without checking it (tests, and files the controller made itself).
    pub fn insert(&mut self, image: &str, file: &str, verified: VerifiedFile) {
        self.files
            .insert((image.to_string(), file.to_string()), verified);
    }

    pub fn file(&self, image: &str, file: &str) -> Option<&VerifiedFile> {
        self.files.get(&(image.to_string(), file.to_string()))
    }

    pub fn is_bootable(&self, image: &str) -> bool {
        self.file(image, "kernel").is_some() && self.file(image, "initrd").is_some()
    }
}

fn image_artifacts(image: &Image) -> Vec<(&'static str, &ArtifactLocation, Option<&String>)> {
    let mut artifacts = Vec::new();
    if let Some(kernel) = &image.kernel {
        artifacts.push(("kernel", &kernel.location, kernel.sha256.as_ref()));
    }
    if let Some(initrd) = &image.initrd {
        artifacts.push(("initrd", &initrd.location, initrd.sha256.as_ref()));
    }
    if let Some(root) = &image.root {
        artifacts.push(("root", &root.location, root.sha256.as_ref()));
    }
    artifacts
}

fn verify(
    image: &str,
    file: &str,
    location: &ArtifactLocation,
    expected: Option<&String>,
) -> Result<VerifiedFile, ImageError> {
    let path = match location {
        ArtifactLocation::Path(path) => path.clone(),
        ArtifactLocation::Url(url) => {
            return Err(ImageError::Remote {
                image: image.into(),
                file: file.into(),
                url: url.clone(),
            })
        }
    };
    let unreadable = |source| ImageError::Unreadable {
        image: image.into(),
        file: file.into(),
        path: path.clone(),
        source,
    };
    let (actual, size) = sha256_of_file(&path).map_err(unreadable)?;
    if let Some(expected) = expected {
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(ImageError::ChecksumMismatch {
                image: image.into(),
                file: file.into(),
                path,
                expected: expected.to_ascii_lowercase(),
                actual,
            });
        }
    }
    Ok(VerifiedFile {
        path,
        size,
        sha256: actual,
    })
}

/// SHA-256 (hex) and size of a file, read in 1 MiB pieces.
pub fn sha256_of_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let count = file.read(&mut buffer)?;
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
        size += count as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
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
    store: &Store,
    stop: tokio::sync::watch::Receiver<()>,
) -> BootState {
    let policy = fleet.map(|fleet| fleet.policy.clone()).unwrap_or_default();
    let interval = std::time::Duration::from_secs(u64::from(policy.events.summary_seconds));
    let summaries = EventSummaries::new(interval);
    summaries.spawn_writer(store.clone(), stop.clone());
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
    let (images, errors) = BootImages::load_async(fleet.images.clone()).await;
    for error in &errors {
        eprintln!("  images  error: {error}");
    }
    eprintln!("  images  {} files verified", images.files.len());
    state.images = Arc::new(images);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, Artifact};

    fn image_with_kernel(path: &Path, sha256: Option<&str>) -> BTreeMap<String, Image> {
        let image = Image {
            name: "ephemeral".into(),
            arch: Arch::Amd64,
            os: None,
            release: None,
            kernel: Some(Artifact {
                location: ArtifactLocation::Path(path.to_path_buf()),
                sha256: sha256.map(String::from),
            }),
            initrd: None,
            root: None,
        };
        BTreeMap::from([("ephemeral".to_string(), image)])
    }

    #[test]
    fn a_checksum_mismatch_names_image_file_and_both_digests() {
        let file = tempfile::NamedTempFile::new().expect("a file");
        std::fs::write(file.path(), b"kernel bytes").expect("written");
        let wrong = "00".repeat(32);
        let (images, errors) = BootImages::load(&image_with_kernel(file.path(), Some(&wrong)));
        assert!(images.file("ephemeral", "kernel").is_none());
        let message = errors[0].to_string();
        let (actual, _) = sha256_of_file(file.path()).expect("hashed");
        for part in [
            "`ephemeral`",
            "kernel",
            &wrong,
            &actual,
            &file.path().display().to_string(),
        ] {
            assert!(message.contains(part), "{message} lacks {part}");
        }
        let (images, errors) = BootImages::load(&image_with_kernel(
            file.path(),
            Some(&actual.to_uppercase()),
        ));
        assert!(errors.is_empty());
        assert_eq!(images.file("ephemeral", "kernel").map(|f| f.size), Some(12));
    }
}
