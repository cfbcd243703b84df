//! The controller's image cache, `<state_dir>/images/` (blocking file operations):
//!
//! - `<sha256>.<kind>`: a downloaded file, named by the SHA-256 the fleet file gives it and
//!   what it is (`kernel`, `initrd`, or the root image's format: `tar-xz`, `raw-zst`, ...);
//!   `<sha256>.<kind>.partial` while it downloads (resumed from its length);
//! - `<sha256>.qcow2.raw`: a qcow2 image (downloaded or a local path) converted to raw;
//! - `<key>.json`: the manifest of a cached file: source, format, the source's size and
//!   SHA-256, the file served with its size, SHA-256, decompressed size and SHA-256, and its
//!   stamp when checked. A file whose stamp no longer matches is checked again;
//! - `checked/<hash of the path>.json`: what was computed once for a local `path` image (its
//!   decompressed size and SHA-256), valid while the file's stamp and SHA-256 are the same.

use super::digest::Stamp;
use crate::config::ImageFormat;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ImageCache {
    dir: PathBuf,
}

/// What a file served holds, as checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    pub size: u64,
    pub sha256: String,
    /// The decompressed stream (compressed images); the same as size/sha256 for raw ones.
    pub raw_size: Option<u64>,
    pub raw_sha256: Option<String>,
    pub stamp: Stamp,
}

/// A cached file's manifest (`<key>.json`), or a local image's remembered check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The URL or path it came from.
    pub source: String,
    pub format: Option<ImageFormat>,
    /// The source's size and SHA-256 (what the fleet file names).
    pub size: u64,
    pub sha256: String,
    /// The file served: a name in the cache directory, or a local path.
    pub file: PathBuf,
    pub served: Checked,
}

/// What `fleet images prune` removed (or, with `dry_run`, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub directory: String,
    pub removed: Vec<PrunedFile>,
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedFile {
    pub file: String,
    pub bytes: u64,
}

const CHECKED_DIR: &str = "checked";

impl ImageCache {
    pub fn in_state_dir(state_dir: &Path) -> ImageCache {
        ImageCache {
            dir: state_dir.join("images"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir.join(CHECKED_DIR))
    }

    /// The name of a downloaded file: `<sha256>.<kind>`.
    pub fn key(sha256: &str, kind: &str) -> String {
        format!("{}.{kind}", sha256.to_ascii_lowercase())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn partial(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.partial"))
    }

    pub fn converted(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.raw"))
    }

    fn manifest_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The name of a local path's remembered check in `checked/`.
    pub fn checked_name(path: &Path) -> String {
        let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
        format!("{}.json", &hex::encode(digest)[..32])
    }

    pub fn read_manifest(&self, key: &str) -> Option<Manifest> {
        read_json(&self.manifest_path(key))
    }

    pub fn write_manifest(&self, key: &str, manifest: &Manifest) -> std::io::Result<()> {
        write_json(&self.manifest_path(key), manifest)
    }

    pub fn remembered(&self, path: &Path) -> Option<Manifest> {
        read_json(&self.dir.join(CHECKED_DIR).join(Self::checked_name(path)))
    }

    pub fn remember(&self, path: &Path, manifest: &Manifest) -> std::io::Result<()> {
        let file = self.dir.join(CHECKED_DIR).join(Self::checked_name(path));
        write_json(&file, manifest)
    }

    /// Removes every file of the cache (and of `checked/`) whose name `keep` does not hold;
    /// with `dry_run`, only says which.
    pub fn prune(&self, keep: &BTreeSet<String>, dry_run: bool) -> std::io::Result<PruneReport> {
        let mut report = PruneReport {
            dry_run,
            directory: self.dir.display().to_string(),
            ..PruneReport::default()
        };
        for sub in ["", CHECKED_DIR] {
            let dir = self.dir.join(sub);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            for entry in entries {
                let entry = entry?;
                let metadata = entry.metadata()?;
                let name = Path::new(sub).join(entry.file_name());
                let name = name.to_string_lossy().into_owned();
                if !metadata.is_file() || keep.contains(&name) {
                    continue;
                }
                if !dry_run {
                    std::fs::remove_file(entry.path())?;
                }
                report.files += 1;
                report.bytes += metadata.len();
                report.removed.push(PrunedFile {
                    file: name,
                    bytes: metadata.len(),
                });
            }
        }
        report.removed.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(report)
    }

    /// The names `prune` keeps for a downloaded file's key (file, partial, manifest, raw).
    pub fn names_of_key(key: &str) -> [String; 4] {
        [
            key.to_string(),
            format!("{key}.partial"),
            format!("{key}.json"),
            format!("{key}.raw"),
        ]
    }

    /// The name `prune` keeps for a local path's remembered check.
    pub fn name_of_checked(path: &Path) -> String {
        Path::new(CHECKED_DIR)
            .join(Self::checked_name(path))
            .to_string_lossy()
            .into_owned()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Written whole: a temporary file renamed over the old one.
fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}
