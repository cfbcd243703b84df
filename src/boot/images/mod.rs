//! The controller's image set: every file of every `[images.NAME]` (kernel, initrd, root),
//! checked before it is served.
//!
//! - A local `path` is read when the fleet is loaded: its SHA-256 against the fleet file's; a
//!   compressed root image's decompressed size and SHA-256 (computed once, remembered in the
//!   cache while the file's size, mtime, inode and SHA-256 stay the same); a qcow2 root image is
//!   converted to raw into the cache.
//! - A `url` is downloaded once into the cache ([`cache`]) in the background: resumed after a
//!   cut, its SHA-256 streamed while it arrives, a wrong digest an error naming both (the
//!   partial file removed), then decompressed or converted to record its raw size and digest.
//! - Every file served (and every [`DeployImage`]) is first compared with the stamp (size,
//!   mtime, inode) it had when checked: a file changed on disk is refused (state `changed`)
//!   until the next load (a restart, or a fleet file saved under `fleet serve --watch`).
//! - A file this controller cannot have itself — a `path` that is not on its disk (another
//!   controller's), or a `url` that failed — is fetched from another controller of the store
//!   that has it ([`peers`]), into the cache, under the same digest check as a download.

pub mod cache;
pub mod digest;
mod download;
pub mod peers;

pub use cache::{ImageCache, PruneReport, PrunedFile};
pub use digest::{sha256_of_file, Stamp};
pub use peers::Peers;

use crate::config::{ArtifactLocation, Fleet, Image, ImageFormat};
use cache::{Checked, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// A file only other controllers can give (a `path` not on this disk) whose fetch failed is
/// asked for again when a machine or a deployment needs it, at most this often.
const ASK_PEERS_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// The files of an image that can be served, by their name in the URL.
pub const IMAGE_FILES: [&str; 3] = ["kernel", "initrd", "root"];

/// A file the boot endpoints may serve, as checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFile {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// The decompressed stream of a root image (the same as size/sha256 for raw ones).
    pub raw_size: Option<u64>,
    pub raw_sha256: Option<String>,
    pub stamp: Stamp,
}

impl VerifiedFile {
    fn from_checked(path: PathBuf, checked: &Checked) -> VerifiedFile {
        VerifiedFile {
            path,
            size: checked.size,
            sha256: checked.sha256.clone(),
            raw_size: checked.raw_size,
            raw_sha256: checked.raw_sha256.clone(),
            stamp: checked.stamp,
        }
    }

    fn checked(&self) -> Checked {
        Checked {
            size: self.size,
            sha256: self.sha256.clone(),
            raw_size: self.raw_size,
            raw_sha256: self.raw_sha256.clone(),
            stamp: self.stamp,
        }
    }
}

/// A root image as a deployment needs it (the deployment JSON's `image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployImage {
    pub name: String,
    /// As served: qcow2 is served as raw.
    pub format: ImageFormat,
    /// The bytes served at `url_path`.
    pub size: u64,
    pub sha256: String,
    /// The decompressed stream (equal to size/sha256 for raw images).
    pub raw_size: u64,
    pub raw_sha256: String,
    /// `/boot/files/NAME/root` on the boot listener.
    pub url_path: String,
}

/// Why an image's file cannot be served or deployed now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageUnavailable {
    #[error("image `{0}` is not in the fleet file")]
    Unknown(String),
    #[error("image `{image}` has no {file}")]
    NoFile { image: String, file: String },
    #[error("image `{image}`: the {file} is downloading ({progress}); try again when `fleet images` says ready")]
    Downloading {
        image: String,
        file: String,
        progress: String,
    },
    #[error(
        "image `{image}`: the {file} is being checked (its digests computed); try again shortly"
    )]
    Checking { image: String, file: String },
    #[error("image `{image}`: the {file} failed: {reason}")]
    Failed {
        image: String,
        file: String,
        reason: String,
    },
    #[error(
        "image `{image}`: the {file} {path} changed on disk after it was checked, so it is not \
         served; the controller checks it again when it loads the fleet (restart it, or save a \
         fleet file under `fleet serve --watch`)"
    )]
    Changed {
        image: String,
        file: String,
        path: PathBuf,
    },
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
    #[error("image `{image}`: the {file} {path}: {reason} (it is not served)")]
    Prepare {
        image: String,
        file: String,
        path: PathBuf,
        reason: String,
    },
}

/// One row of `fleet images` (`GET /api/v1/images`): one file of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFileView {
    pub image: String,
    /// kernel, initrd or root.
    pub file: String,
    /// A root image's format as written, and as served (qcow2 is served as raw).
    pub format: Option<ImageFormat>,
    pub served_format: Option<ImageFormat>,
    pub url: Option<String>,
    pub path: Option<String>,
    /// The file served (in the cache for downloads and conversions).
    pub served_path: Option<String>,
    /// Of the bytes served; the fleet file's digest while not ready.
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub raw_size: Option<u64>,
    pub raw_sha256: Option<String>,
    /// ready, downloading, checking, failed, changed.
    pub state: String,
    /// Why failed or changed; the progress while downloading.
    pub detail: Option<String>,
    pub downloaded: Option<u64>,
    pub total: Option<u64>,
    /// Machines of the fleet file that deploy this image.
    pub used_by: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FileState {
    Ready(VerifiedFile),
    Downloading { done: u64, total: Option<u64> },
    Checking,
    Failed(String),
    Changed(PathBuf),
}

#[derive(Debug, Clone)]
struct Entry {
    location: ArtifactLocation,
    expected: Option<String>,
    /// Root images only.
    format: Option<ImageFormat>,
    /// The cache key of a download or a conversion (`<sha256>.<kind>`).
    key: Option<String>,
    state: FileState,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<(String, String), Entry>,
    used_by: BTreeMap<String, usize>,
}

/// The images' files and their states; shared by the boot routes, the API and the downloads.
#[derive(Debug, Default)]
pub struct BootImages {
    cache: Option<ImageCache>,
    inner: RwLock<Inner>,
    /// Cache keys being downloaded now (one task each).
    active: Mutex<BTreeSet<String>>,
    /// The other controllers of the store, asked for files this one cannot have itself
    /// (PostgreSQL stores only: a SQLite store has one controller).
    peers: Option<Peers>,
    /// When each cache key's fetch last failed (for [`ASK_PEERS_AGAIN_AFTER`]).
    failed_at: Mutex<BTreeMap<String, Instant>>,
    /// This set, once shared ([`BootImages::start_downloads`] keeps it): what a request that
    /// starts a fetch hands the fetch's task.
    me: Mutex<std::sync::Weak<BootImages>>,
}

impl BootImages {
    /// Checks every local file (SHA-256 when the fleet file gives one; readable always; raw
    /// digests and conversions of root images) and looks every URL up in the cache. Files that
    /// fail are not served, each with its error; URLs not cached wait for
    /// [`BootImages::start_downloads`]. Reads whole files: call it from a blocking context
    /// ([`BootImages::load_async`] does).
    pub fn load(
        images: &BTreeMap<String, Image>,
        cache: Option<ImageCache>,
    ) -> (BootImages, Vec<ImageError>) {
        BootImages::load_with_peers(images, cache, None)
    }

    /// [`BootImages::load`], with the other controllers of the store to ask for the files this
    /// one cannot have itself (a `path` with a sha256 that is not on this disk waits for them
    /// instead of failing).
    pub fn load_with_peers(
        images: &BTreeMap<String, Image>,
        cache: Option<ImageCache>,
        peers: Option<Peers>,
    ) -> (BootImages, Vec<ImageError>) {
        let sources = Sources {
            cache: cache.as_ref(),
            peers: peers.is_some(),
        };
        let (inner, errors) = build(images, sources, &BTreeSet::new(), &BTreeMap::new());
        let loaded = BootImages {
            cache,
            inner: RwLock::new(inner),
            active: Mutex::default(),
            peers,
            failed_at: Mutex::default(),
            me: Mutex::default(),
        };
        (loaded, errors)
    }

    pub async fn load_async(
        images: BTreeMap<String, Image>,
        cache: Option<ImageCache>,
        peers: Option<Peers>,
    ) -> (BootImages, Vec<ImageError>) {
        // A panic while hashing leaves nothing verified, so nothing is served.
        tokio::task::spawn_blocking(move || BootImages::load_with_peers(&images, cache, peers))
            .await
            .unwrap_or_default()
    }

    /// Loads the fleet's images again (a fleet file saved under `--watch`): files changed since
    /// they were checked are checked again, new URLs downloaded.
    pub async fn reload(
        self: &Arc<Self>,
        images: BTreeMap<String, Image>,
        used_by: BTreeMap<String, usize>,
    ) {
        let this = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            let active = this
                .active
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let before = this.read().entries.clone();
            let sources = Sources {
                cache: this.cache.as_ref(),
                peers: this.peers.is_some(),
            };
            build(&images, sources, &active, &before)
        })
        .await;
        let Ok((mut inner, errors)) = built else {
            return;
        };
        for error in &errors {
            eprintln!("  images  error: {error}");
        }
        inner.used_by = used_by;
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = inner;
        self.start_downloads();
    }

    /// Counts, per image, the fleet's machines that deploy it (`fleet images`' `used_by`).
    pub fn set_used_by(&self, fleet: &Fleet) {
        self.write().used_by = used_by(fleet);
    }

    /// Adds a file without checking it (tests, and files the controller made itself).
    pub fn insert(&mut self, image: &str, file: &str, verified: VerifiedFile) {
        let entry = Entry {
            location: ArtifactLocation::Path(verified.path.clone()),
            expected: None,
            format: None,
            key: None,
            state: FileState::Ready(verified),
        };
        self.write()
            .entries
            .insert((image.to_string(), file.to_string()), entry);
    }

    /// The file, if it is ready (without looking at the disk).
    pub fn file(&self, image: &str, file: &str) -> Option<VerifiedFile> {
        match &self.read().entries.get(&key_of(image, file))?.state {
            FileState::Ready(verified) => Some(verified.clone()),
            _ => None,
        }
    }

    /// How many files are ready.
    pub fn ready_count(&self) -> usize {
        let inner = self.read();
        let ready = inner.entries.values();
        ready
            .filter(|entry| matches!(entry.state, FileState::Ready(_)))
            .count()
    }

    pub fn is_bootable(&self, image: &str) -> bool {
        self.file(image, "kernel").is_some() && self.file(image, "initrd").is_some()
    }

    /// The file to serve now: ready, and unchanged on disk since it was checked (a changed
    /// file's state becomes `changed`, and it stays refused until the next load).
    pub fn servable(&self, image: &str, file: &str) -> Result<VerifiedFile, ImageUnavailable> {
        let verified = {
            let inner = self.read();
            let Some(entry) = inner.entries.get(&key_of(image, file)) else {
                return Err(self.missing(&inner, image, file));
            };
            match &entry.state {
                FileState::Ready(verified) => verified.clone(),
                FileState::Failed(_) if self.may_ask_peers_again(entry) => {
                    drop(inner);
                    return Err(self.ask_peers_again(image, file));
                }
                state => return Err(unavailable(image, file, state)),
            }
        };
        if verified.stamp.still_matches(&verified.path) {
            return Ok(verified);
        }
        eprintln!(
            "  images  image `{image}`: the {file} {} changed on disk after it was checked; refused until the next load",
            verified.path.display()
        );
        let changed = FileState::Changed(verified.path.clone());
        if let Some(entry) = self.write().entries.get_mut(&key_of(image, file)) {
            entry.state = changed.clone();
        }
        Err(unavailable(image, file, &changed))
    }

    /// The ready file whose bytes have SHA-256 `sha256` (what another controller asks for),
    /// if it is unchanged on disk since its check.
    pub fn file_by_digest(&self, sha256: &str) -> Option<VerifiedFile> {
        let inner = self.read();
        let ready = inner
            .entries
            .values()
            .filter_map(|entry| match &entry.state {
                FileState::Ready(verified) => Some(verified),
                _ => None,
            });
        let found = ready
            .filter(|verified| verified.sha256.eq_ignore_ascii_case(sha256))
            .find(|verified| verified.stamp.still_matches(&verified.path));
        found.cloned()
    }

    /// Whether a failed file is one only other controllers can give (a `path` not on this
    /// disk), not being fetched, and its last attempt long enough ago to ask again.
    fn may_ask_peers_again(&self, entry: &Entry) -> bool {
        let (Some(_), ArtifactLocation::Path(_), Some(key)) =
            (&self.peers, &entry.location, &entry.key)
        else {
            return false;
        };
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let long_ago = failed_at
            .get(key)
            .is_none_or(|at| at.elapsed() >= ASK_PEERS_AGAIN_AFTER);
        !active.contains(key) && long_ago && tokio::runtime::Handle::try_current().is_ok()
    }

    /// Starts asking the other controllers again for a file needed now (once the set is
    /// shared, as it is in a controller); says it is on its way.
    fn ask_peers_again(&self, image: &str, file: &str) -> ImageUnavailable {
        let shared = self
            .me
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        let mut inner = self.write();
        let Some(entry) = inner.entries.get_mut(&key_of(image, file)) else {
            return self.missing(&inner, image, file);
        };
        let Some(shared) = shared else {
            return unavailable(image, file, &entry.state);
        };
        entry.state = FileState::Downloading {
            done: 0,
            total: None,
        };
        let waiting = unavailable(image, file, &entry.state);
        drop(inner);
        shared.start_downloads();
        waiting
    }

    /// The root image `name` as a deployment needs it, if it can be served now.
    pub fn deploy_image(&self, name: &str) -> Result<DeployImage, ImageUnavailable> {
        let verified = self.servable(name, "root")?;
        let format = self
            .read()
            .entries
            .get(&key_of(name, "root"))
            .and_then(|entry| entry.format)
            .unwrap_or(ImageFormat::Raw);
        Ok(DeployImage {
            name: name.to_string(),
            format: format.served(),
            size: verified.size,
            raw_size: verified.raw_size.unwrap_or(verified.size),
            raw_sha256: verified
                .raw_sha256
                .clone()
                .unwrap_or_else(|| verified.sha256.clone()),
            sha256: verified.sha256,
            url_path: format!("/boot/files/{name}/root"),
        })
    }

    /// Every file of every image, for `fleet images`.
    pub fn list(&self) -> Vec<ImageFileView> {
        let inner = self.read();
        let rows = inner.entries.iter().map(|((image, file), entry)| {
            view(image, file, entry, *inner.used_by.get(image).unwrap_or(&0))
        });
        rows.collect()
    }

    /// Removes the cached files no image of the current fleet uses (`fleet images prune`).
    pub fn prune(&self, dry_run: bool) -> std::io::Result<PruneReport> {
        let Some(cache) = &self.cache else {
            return Ok(PruneReport {
                dry_run,
                ..PruneReport::default()
            });
        };
        let mut keep = BTreeSet::new();
        for entry in self.read().entries.values() {
            if let Some(key) = &entry.key {
                keep.extend(ImageCache::names_of_key(key));
            }
            if let ArtifactLocation::Path(path) = &entry.location {
                keep.insert(ImageCache::name_of_checked(path));
            }
        }
        cache.prune(&keep, dry_run)
    }

    /// Starts one background download per cache key that is waiting for one and has none
    /// running. Needs a tokio runtime.
    pub fn start_downloads(self: &Arc<Self>) {
        *self.me.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(self);
        let waiting: Vec<Fetch> = {
            let inner = self.read();
            let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
            let mut waiting = Vec::new();
            for ((image, file), entry) in &inner.entries {
                // A URL, or a path this controller does not have (only those wait for a fetch).
                let (Some(key), Some(expected)) = (&entry.key, &entry.expected) else {
                    continue;
                };
                if matches!(entry.state, FileState::Downloading { .. })
                    && active.insert(key.clone())
                {
                    waiting.push(Fetch {
                        key: key.clone(),
                        location: entry.location.clone(),
                        expected: expected.clone(),
                        format: entry.format,
                        image: image.clone(),
                        what: format!("image `{image}`'s {file}"),
                    });
                }
            }
            waiting
        };
        for fetch in waiting {
            let this = self.clone();
            tokio::spawn(async move {
                this.fetch(&fetch).await;
                this.active
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&fetch.key);
            });
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn missing(&self, inner: &Inner, image: &str, file: &str) -> ImageUnavailable {
        let known = inner.entries.keys().any(|(name, _)| name == image);
        if known {
            ImageUnavailable::NoFile {
                image: image.into(),
                file: file.into(),
            }
        } else {
            ImageUnavailable::Unknown(image.into())
        }
    }

    /// Sets the state of every file with this cache key.
    fn set_state(&self, key: &str, state: impl Fn(&str) -> FileState) {
        let mut inner = self.write();
        for ((image, _), entry) in inner.entries.iter_mut() {
            if entry.key.as_deref() == Some(key) {
                entry.state = state(image);
            }
        }
    }
}

/// What one background download fetches.
struct Fetch {
    key: String,
    /// A URL is downloaded first; a path (not on this controller) is only asked of peers.
    location: ArtifactLocation,
    expected: String,
    format: Option<ImageFormat>,
    /// The first image that names it, and "image `noble`'s root", for the log.
    image: String,
    what: String,
}

/// Attempts before a download is given up (until the next load); waits double from 1 s.
const ATTEMPTS: u32 = 6;

impl BootImages {
    async fn fetch(&self, fetch: &Fetch) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        // A reload may have raced a download that finished: the cache has it then.
        if let Some(verified) = cached(&cache, &fetch.key) {
            return self.set_state(&fetch.key, |_| FileState::Ready(verified.clone()));
        }
        let (source, size) = match self.fetch_source(&cache, fetch).await {
            Ok(fetched) => fetched,
            Err(failure) => {
                let reason = |image: &str| failure.reason(image);
                eprintln!("  images  {}: {}", fetch.what, reason(&fetch.image));
                self.failed_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(fetch.key.clone(), Instant::now());
                return self.set_state(&fetch.key, |image| FileState::Failed(reason(image)));
            }
        };
        let sha256 = fetch.expected.to_ascii_lowercase();
        self.set_state(&fetch.key, |_| FileState::Checking);
        let finished = {
            let (cache, key, format) = (cache.clone(), fetch.key.clone(), fetch.format);
            let source = source.clone();
            tokio::task::spawn_blocking(move || {
                finish_download(&cache, &key, &source, format, size, &sha256)
            })
            .await
            .unwrap_or_else(|error| Err(format!("the check panicked: {error}")))
        };
        match finished {
            Ok(verified) => {
                eprintln!(
                    "  images  {}: downloaded from {source} and checked ({} bytes, served from {})",
                    fetch.what,
                    size,
                    verified.path.display()
                );
                self.set_state(&fetch.key, |_| FileState::Ready(verified.clone()));
            }
            Err(reason) => {
                eprintln!("  images  {}: {reason}", fetch.what);
                self.set_state(&fetch.key, |_| FileState::Failed(reason.clone()));
            }
        }
    }

    /// The file's bytes in the partial file, with the fleet file's SHA-256: from its URL, else
    /// (the URL failed, or the file is a path this controller does not have) from another
    /// controller of the store. Returns where they came from and their size.
    async fn fetch_source(
        &self,
        cache: &ImageCache,
        fetch: &Fetch,
    ) -> Result<(String, u64), FetchFailure> {
        let partial = cache.partial(&fetch.key);
        let here = match &fetch.location {
            ArtifactLocation::Url(url) => match self.download(cache, fetch, url).await {
                Ok((sha256, size)) if sha256.eq_ignore_ascii_case(&fetch.expected) => {
                    return Ok((url.clone(), size))
                }
                Ok((sha256, size)) => {
                    let _ = std::fs::remove_file(&partial);
                    FetchFailure::WrongDigest {
                        size,
                        sha256,
                        expected: fetch.expected.clone(),
                    }
                }
                Err(reason) => FetchFailure::Url(reason),
            },
            ArtifactLocation::Path(path) => FetchFailure::NotHere(path.clone()),
        };
        let Some(peers) = &self.peers else {
            return Err(here);
        };
        eprintln!(
            "  images  {}: {}; asking the other controllers of the store",
            fetch.what,
            here.reason(&fetch.image)
        );
        let mut logged = Logged::default();
        let mut progress = |done: u64, total: Option<u64>| {
            self.set_state(&fetch.key, |_| FileState::Downloading { done, total });
            logged.log(&fetch.what, done, total);
        };
        peers::fetch_from_peers(peers, &fetch.expected, &partial, &mut progress)
            .await
            .map_err(|from_peers| FetchFailure::Peers {
                here: Box::new(here),
                from_peers,
            })
    }

    /// Downloads into the partial file, resuming after cuts, with waits doubling from 1 s.
    async fn download(
        &self,
        cache: &ImageCache,
        fetch: &Fetch,
        url: &str,
    ) -> Result<(String, u64), String> {
        let client = download::client()?;
        let partial = cache.partial(&fetch.key);
        let mut logged = Logged::default();
        let mut last_error = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                eprintln!(
                    "  images  {}: {last_error}; resuming (attempt {} of {ATTEMPTS})",
                    fetch.what,
                    attempt + 1
                );
                tokio::time::sleep(std::time::Duration::from_secs(1 << (attempt - 1))).await;
            }
            let mut progress = |done: u64, total: Option<u64>| {
                self.set_state(&fetch.key, |_| FileState::Downloading { done, total });
                logged.log(&fetch.what, done, total);
            };
            let no_headers = reqwest::header::HeaderMap::new();
            match download::fetch_once(&client, url, no_headers, &partial, &mut progress).await {
                Ok(done) => return Ok(done),
                Err(download::DownloadError::Fatal(reason)) => return Err(reason),
                Err(download::DownloadError::Retry(reason)) => last_error = reason,
            }
        }
        Err(format!(
            "{last_error}; gave up after {ATTEMPTS} attempts (the next load tries again, resuming)"
        ))
    }
}

/// Why a file could not be fetched.
enum FetchFailure {
    /// The URL failed (after its attempts).
    Url(String),
    /// The URL gave other bytes (removed).
    WrongDigest {
        size: u64,
        sha256: String,
        expected: String,
    },
    /// A path that is not on this controller.
    NotHere(PathBuf),
    /// Then the other controllers failed too.
    Peers {
        here: Box<FetchFailure>,
        from_peers: String,
    },
}

impl FetchFailure {
    /// The failed state's reason for `image`.
    fn reason(&self, image: &str) -> String {
        match self {
            FetchFailure::Url(reason) => reason.clone(),
            FetchFailure::WrongDigest {
                size,
                sha256,
                expected,
            } => format!(
                "image `{image}`: downloaded {size} bytes with SHA-256 {sha256}, but the fleet \
                 file says {expected}; the download was removed (check the URL and the sha256)"
            ),
            FetchFailure::NotHere(path) => {
                format!("{} is not on this controller", path.display())
            }
            FetchFailure::Peers { here, from_peers } => {
                format!("{}; {from_peers}", here.reason(image))
            }
        }
    }
}

/// Progress lines: one per 10 % (or per 256 MiB when the size is not known).
#[derive(Default)]
struct Logged {
    step: Option<u64>,
}

impl Logged {
    fn log(&mut self, what: &str, done: u64, total: Option<u64>) {
        let step = match total {
            Some(total) if total > 0 => done * 10 / total,
            _ => done >> 28,
        };
        if self.step == Some(step) {
            return;
        }
        self.step = Some(step);
        match total {
            Some(total) if total > 0 => eprintln!(
                "  images  {what}: downloading, {done} of {total} bytes ({} %)",
                done * 100 / total
            ),
            _ => eprintln!("  images  {what}: downloading, {done} bytes"),
        }
    }
}

/// The machines of the fleet per image they deploy.
pub fn used_by(fleet: &Fleet) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for machine in fleet.machines.iter() {
        if let Some(image) = &machine.image {
            *counts.entry(image.clone()).or_insert(0) += 1;
        }
    }
    counts
}

fn key_of(image: &str, file: &str) -> (String, String) {
    (image.to_string(), file.to_string())
}

fn unavailable(image: &str, file: &str, state: &FileState) -> ImageUnavailable {
    let (image, file) = (image.to_string(), file.to_string());
    match state {
        FileState::Ready(_) => ImageUnavailable::Checking { image, file },
        FileState::Downloading { done, total } => ImageUnavailable::Downloading {
            image,
            file,
            progress: progress_text(*done, *total),
        },
        FileState::Checking => ImageUnavailable::Checking { image, file },
        FileState::Failed(reason) => ImageUnavailable::Failed {
            image,
            file,
            reason: reason.clone(),
        },
        FileState::Changed(path) => ImageUnavailable::Changed {
            image,
            file,
            path: path.clone(),
        },
    }
}

fn progress_text(done: u64, total: Option<u64>) -> String {
    match total {
        Some(total) if total > 0 => format!("{} %, {done} of {total} bytes", done * 100 / total),
        _ => format!("{done} bytes so far"),
    }
}

fn view(image: &str, file: &str, entry: &Entry, used_by: usize) -> ImageFileView {
    let (url, path) = match &entry.location {
        ArtifactLocation::Url(url) => (Some(url.clone()), None),
        ArtifactLocation::Path(path) => (None, Some(path.display().to_string())),
    };
    let mut row = ImageFileView {
        image: image.to_string(),
        file: file.to_string(),
        format: entry.format,
        served_format: entry.format.map(ImageFormat::served),
        url,
        path,
        served_path: None,
        size: None,
        sha256: entry.expected.clone(),
        raw_size: None,
        raw_sha256: None,
        state: String::new(),
        detail: None,
        downloaded: None,
        total: None,
        used_by,
    };
    row.state = match &entry.state {
        FileState::Ready(verified) => {
            row.served_path = Some(verified.path.display().to_string());
            row.size = Some(verified.size);
            row.sha256 = Some(verified.sha256.clone());
            row.raw_size = verified.raw_size;
            row.raw_sha256 = verified.raw_sha256.clone();
            "ready"
        }
        FileState::Downloading { done, total } => {
            row.downloaded = Some(*done);
            row.total = *total;
            row.detail = Some(progress_text(*done, *total));
            "downloading"
        }
        FileState::Checking => "checking",
        FileState::Failed(reason) => {
            row.detail = Some(reason.clone());
            "failed"
        }
        FileState::Changed(path) => {
            row.detail = Some(format!(
                "{} changed on disk after it was checked; checked again at the next load",
                path.display()
            ));
            "changed"
        }
    }
    .to_string();
    row
}

// ---------------------------------------------------------------------------------------------
// Loading (blocking)

/// Where a load may find files besides the fleet file's paths.
#[derive(Clone, Copy)]
struct Sources<'a> {
    cache: Option<&'a ImageCache>,
    /// Whether other controllers may be asked (a path not on this disk then waits for them).
    peers: bool,
}

fn build(
    images: &BTreeMap<String, Image>,
    sources: Sources<'_>,
    active: &BTreeSet<String>,
    before: &BTreeMap<(String, String), Entry>,
) -> (Inner, Vec<ImageError>) {
    let cache = sources.cache;
    if let Some(cache) = cache {
        if let Err(error) = cache.create() {
            eprintln!(
                "  images  cannot create the image cache {}: {error}",
                cache.dir().display()
            );
        }
    }
    let mut inner = Inner::default();
    let mut errors = Vec::new();
    for image in images.values() {
        for (file, location, expected, format) in image_artifacts(image) {
            let key = match location {
                ArtifactLocation::Url(_) => {
                    expected.map(|sha| ImageCache::key(sha, &kind(file, format)))
                }
                ArtifactLocation::Path(_) => None,
            };
            let mut entry = Entry {
                location: location.clone(),
                expected: expected.cloned(),
                format,
                key,
                state: FileState::Checking,
            };
            let name = (image.name.clone(), file.to_string());
            if let Some(kept) = unchanged_local(before.get(&name), &entry) {
                entry.state = kept;
                inner.entries.insert(name, entry);
                continue;
            }
            let what = Artifact {
                image: &image.name,
                file,
                cache,
                peers: sources.peers,
            };
            entry.state = match what.check(&mut entry, active) {
                Ok(state) => state,
                Err(error) => {
                    let state = FileState::Failed(error.to_string());
                    errors.push(error);
                    state
                }
            };
            inner
                .entries
                .insert((image.name.clone(), file.to_string()), entry);
        }
    }
    (inner, errors)
}

/// A local file served as it is (not converted), ready before, declared the same and unchanged
/// on disk: kept as checked, so that a fleet file saved under `--watch` does not hash every
/// image again.
fn unchanged_local(before: Option<&Entry>, entry: &Entry) -> Option<FileState> {
    let before = before?;
    let same = before.location == entry.location
        && before.expected == entry.expected
        && before.format == entry.format;
    let (FileState::Ready(verified), ArtifactLocation::Path(path)) =
        (&before.state, &entry.location)
    else {
        return None;
    };
    let unchanged = same && verified.path == *path && verified.stamp.still_matches(path);
    unchanged.then(|| FileState::Ready(verified.clone()))
}

/// What a file is called in the cache: kernel, initrd, or the root image's format.
fn kind(file: &str, format: Option<ImageFormat>) -> String {
    match format {
        Some(format) if file == "root" => format.as_str().to_string(),
        _ => file.to_string(),
    }
}

type ArtifactRow<'a> = (
    &'static str,
    &'a ArtifactLocation,
    Option<&'a String>,
    Option<ImageFormat>,
);

fn image_artifacts(image: &Image) -> Vec<ArtifactRow<'_>> {
    let mut artifacts = Vec::new();
    if let Some(kernel) = &image.kernel {
        artifacts.push(("kernel", &kernel.location, kernel.sha256.as_ref(), None));
    }
    if let Some(initrd) = &image.initrd {
        artifacts.push(("initrd", &initrd.location, initrd.sha256.as_ref(), None));
    }
    if let Some(root) = &image.root {
        let row = (
            "root",
            &root.location,
            root.sha256.as_ref(),
            Some(root.format),
        );
        artifacts.push(row);
    }
    artifacts
}

/// One file of one image being checked at load.
struct Artifact<'a> {
    image: &'a str,
    file: &'static str,
    cache: Option<&'a ImageCache>,
    peers: bool,
}

impl Artifact<'_> {
    fn check(&self, entry: &mut Entry, active: &BTreeSet<String>) -> Result<FileState, ImageError> {
        match entry.location.clone() {
            ArtifactLocation::Path(path) => match self.check_path(&path, entry) {
                Err(ImageError::Unreadable { source, .. }) if self.may_fetch(entry) => {
                    Ok(self.wait_for_peers(&path, &source, entry, active))
                }
                checked => checked,
            },
            ArtifactLocation::Url(url) => Ok(self.check_url(&url, entry, active)),
        }
    }

    /// Whether a local file this controller cannot read may come from another controller: only
    /// with a digest to check it against and a cache to keep it in.
    fn may_fetch(&self, entry: &Entry) -> bool {
        self.peers && self.cache.is_some() && entry.expected.is_some()
    }

    /// A local file this controller cannot read (another controller's): ready if fetched from
    /// a peer before (in the cache under its digest), else waiting for the peers.
    fn wait_for_peers(
        &self,
        path: &Path,
        why: &std::io::Error,
        entry: &mut Entry,
        active: &BTreeSet<String>,
    ) -> FileState {
        let (Some(cache), Some(expected)) = (self.cache, &entry.expected) else {
            return FileState::Failed(format!("{} cannot be read: {why}", path.display()));
        };
        let key = ImageCache::key(expected, &kind(self.file, entry.format));
        entry.key = Some(key.clone());
        let waiting = FileState::Downloading {
            done: 0,
            total: None,
        };
        if active.contains(&key) {
            return waiting;
        }
        if let Some(verified) = cached(cache, &key) {
            return FileState::Ready(verified);
        }
        eprintln!(
            "  images  image `{}`: the {} {} is not on this controller ({why}): asking the \
             other controllers of the store for SHA-256 {expected}",
            self.image,
            self.file,
            path.display()
        );
        waiting
    }

    /// A URL: ready if the cache has it (checked again if its stamp changed), else waiting
    /// for its download.
    fn check_url(&self, url: &str, entry: &Entry, active: &BTreeSet<String>) -> FileState {
        let (Some(cache), Some(key)) = (self.cache, &entry.key) else {
            return FileState::Failed(format!(
                "{url} cannot be downloaded: no image cache (the controller has no state directory)"
            ));
        };
        if active.contains(key) {
            return FileState::Downloading {
                done: 0,
                total: None,
            };
        }
        match cached(cache, key) {
            Some(verified) => FileState::Ready(verified),
            None => FileState::Downloading {
                done: 0,
                total: None,
            },
        }
    }

    /// A local file: its SHA-256 against the fleet file's, then what a root image needs.
    fn check_path(&self, path: &Path, entry: &mut Entry) -> Result<FileState, ImageError> {
        let unreadable = |source| ImageError::Unreadable {
            image: self.image.into(),
            file: self.file.into(),
            path: path.to_path_buf(),
            source,
        };
        let stamp = Stamp::of(path).map_err(unreadable)?;
        let (actual, size) = sha256_of_file(path).map_err(unreadable)?;
        if let Some(expected) = &entry.expected {
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(ImageError::ChecksumMismatch {
                    image: self.image.into(),
                    file: self.file.into(),
                    path: path.to_path_buf(),
                    expected: expected.to_ascii_lowercase(),
                    actual,
                });
            }
        }
        let verified = VerifiedFile {
            path: path.to_path_buf(),
            size,
            sha256: actual,
            raw_size: None,
            raw_sha256: None,
            stamp,
        };
        let Some(format) = entry.format else {
            return Ok(FileState::Ready(verified));
        };
        let prepare = |reason| ImageError::Prepare {
            image: self.image.into(),
            file: self.file.into(),
            path: path.to_path_buf(),
            reason,
        };
        if format == ImageFormat::Qcow2 {
            let cache = self.cache.ok_or_else(|| {
                prepare("a qcow2 image needs the image cache to be converted".into())
            })?;
            let key = ImageCache::key(&verified.sha256, format.as_str());
            entry.key = Some(key.clone());
            let source = path.display().to_string();
            let converted = match cached(cache, &key) {
                Some(converted) => converted,
                None => convert_qcow2(cache, &key, path, &source, size, &verified.sha256)
                    .map_err(prepare)?,
            };
            return Ok(FileState::Ready(converted));
        }
        with_raw_digest(self.cache, verified, format)
            .map(FileState::Ready)
            .map_err(prepare)
    }
}

/// A cached file that is still what its manifest says: ready (a changed one is hashed again;
/// a wrong one removed, so that it is downloaded again).
fn cached(cache: &ImageCache, key: &str) -> Option<VerifiedFile> {
    let manifest = cache.read_manifest(key)?;
    let path = cache.path(&manifest.file.to_string_lossy());
    if manifest.served.stamp.still_matches(&path) {
        return Some(VerifiedFile::from_checked(path, &manifest.served));
    }
    let rehashed = sha256_of_file(&path).ok();
    let stamp = Stamp::of(&path).ok();
    match (rehashed, stamp) {
        (Some((sha256, size)), Some(stamp))
            if sha256 == manifest.served.sha256 && size == manifest.served.size =>
        {
            let mut manifest = manifest;
            manifest.served.stamp = stamp;
            let _ = cache.write_manifest(key, &manifest);
            Some(VerifiedFile::from_checked(path, &manifest.served))
        }
        _ => {
            eprintln!(
                "  images  {} is not what its manifest says any more: removed, fetched again",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(cache.path(&format!("{key}.json")));
            None
        }
    }
}

/// A root image's decompressed size and SHA-256: the same as its own for raw images; for
/// compressed ones remembered in the cache (keyed by path, stamp and SHA-256), else computed.
fn with_raw_digest(
    cache: Option<&ImageCache>,
    mut verified: VerifiedFile,
    format: ImageFormat,
) -> Result<VerifiedFile, String> {
    let Some(tool) = format.decompressor() else {
        verified.raw_size = Some(verified.size);
        verified.raw_sha256 = Some(verified.sha256.clone());
        return Ok(verified);
    };
    let remembered = cache.and_then(|cache| cache.remembered(&verified.path));
    if let Some(remembered) = remembered.filter(|known| {
        known.served.stamp == verified.stamp && known.served.sha256 == verified.sha256
    }) {
        verified.raw_size = remembered.served.raw_size;
        verified.raw_sha256 = remembered.served.raw_sha256;
        return Ok(verified);
    }
    let (raw_sha256, raw_size) = digest::decompressed_digest(tool, &verified.path)?;
    verified.raw_size = Some(raw_size);
    verified.raw_sha256 = Some(raw_sha256);
    if let Some(cache) = cache {
        let manifest = Manifest {
            source: verified.path.display().to_string(),
            format: Some(format),
            size: verified.size,
            sha256: verified.sha256.clone(),
            file: verified.path.clone(),
            served: verified.checked(),
        };
        let _ = cache.remember(&verified.path, &manifest);
    }
    Ok(verified)
}

/// qcow2 → `<key>.raw` in the cache, with its manifest.
fn convert_qcow2(
    cache: &ImageCache,
    key: &str,
    source_path: &Path,
    source: &str,
    size: u64,
    sha256: &str,
) -> Result<VerifiedFile, String> {
    let target = cache.converted(key);
    eprintln!(
        "  images  converting {} (qcow2) to raw: {}",
        source_path.display(),
        target.display()
    );
    digest::qcow2_to_raw(source_path, &target)?;
    let stamp = Stamp::of(&target).map_err(|error| error.to_string())?;
    let (raw_sha256, raw_size) = sha256_of_file(&target).map_err(|error| error.to_string())?;
    let served = Checked {
        size: raw_size,
        sha256: raw_sha256.clone(),
        raw_size: Some(raw_size),
        raw_sha256: Some(raw_sha256),
        stamp,
    };
    let manifest = Manifest {
        source: source.to_string(),
        format: Some(ImageFormat::Qcow2),
        size,
        sha256: sha256.to_string(),
        file: PathBuf::from(format!("{key}.raw")),
        served,
    };
    cache
        .write_manifest(key, &manifest)
        .map_err(|error| format!("cannot write the manifest: {error}"))?;
    Ok(VerifiedFile::from_checked(target, &manifest.served))
}

/// A download whose digest was right: renamed into place, then converted (qcow2: the download
/// is removed once converted) or its raw digest computed, and its manifest written.
fn finish_download(
    cache: &ImageCache,
    key: &str,
    url: &str,
    format: Option<ImageFormat>,
    size: u64,
    sha256: &str,
) -> Result<VerifiedFile, String> {
    let downloaded = cache.path(key);
    std::fs::rename(cache.partial(key), &downloaded).map_err(|error| {
        format!(
            "cannot rename the download into {}: {error}",
            downloaded.display()
        )
    })?;
    if format == Some(ImageFormat::Qcow2) {
        let converted = convert_qcow2(cache, key, &downloaded, url, size, sha256);
        let _ = std::fs::remove_file(&downloaded);
        return converted;
    }
    let stamp = Stamp::of(&downloaded).map_err(|error| error.to_string())?;
    let verified = VerifiedFile {
        path: downloaded,
        size,
        sha256: sha256.to_string(),
        raw_size: None,
        raw_sha256: None,
        stamp,
    };
    let verified = match format {
        Some(format) => with_raw_digest(None, verified, format).inspect_err(|_| {
            // Not what its format says: kept, it would only take space until fetched again.
            let _ = std::fs::remove_file(cache.path(key));
        })?,
        None => verified,
    };
    let manifest = Manifest {
        source: url.to_string(),
        format,
        size,
        sha256: sha256.to_string(),
        file: PathBuf::from(key),
        served: verified.checked(),
    };
    cache
        .write_manifest(key, &manifest)
        .map_err(|error| format!("cannot write the manifest: {error}"))?;
    Ok(verified)
}

#[cfg(test)]
mod tests;
