//! What a TFTP client may read: files under the root directory (nothing that escapes it), and
//! generated files held in memory. The root is read-only by construction: nothing here writes.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why a request names no file the server will send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedPath {
    #[error("absolute paths are refused")]
    Absolute,
    #[error("paths that climb out of the root (`..`) are refused")]
    Climbs,
    #[error("the path leads out of the TFTP root (a symbolic link)")]
    LeavesRoot,
    #[error("file not found")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
}

/// Files served beside the root, by exact name: generated ones held in memory (e.g. iPXE
/// scripts), and published ones on disk, chosen when the server starts (see
/// [`publish_loader_directory`]). Cheap to clone; every clone sees the same files.
#[derive(Debug, Clone, Default)]
pub struct GeneratedFiles {
    memory: Arc<RwLock<BTreeMap<String, Bytes>>>,
    published: Arc<RwLock<BTreeMap<String, PathBuf>>>,
}

impl GeneratedFiles {
    pub fn insert(&self, name: impl Into<String>, content: impl Into<Bytes>) {
        if let Ok(mut files) = self.memory.write() {
            files.insert(name.into(), content.into());
        }
    }

    /// Serves the file at `path` (already trusted by the operator) under `name`.
    pub fn publish(&self, name: impl Into<String>, path: PathBuf) {
        if let Ok(mut files) = self.published.write() {
            files.insert(name.into(), path);
        }
    }

    pub fn get(&self, name: &str) -> Option<Bytes> {
        self.memory.read().ok()?.get(name).cloned()
    }

    fn published(&self, name: &str) -> Option<PathBuf> {
        self.published.read().ok()?.get(name).cloned()
    }
}

/// Publishes every regular file directly in `directory` under its own name ([`loader_files`]),
/// now. Returns how many files were published.
pub fn publish_loader_directory(
    directory: &Path,
    files: &GeneratedFiles,
) -> std::io::Result<usize> {
    let loaders = loader_files(directory)?;
    let count = loaders.len();
    for (name, real_path) in loaders {
        files.publish(name, real_path);
    }
    Ok(count)
}

/// Every regular file directly in `directory`, by name, with its real path (symbolic links
/// followed once). Why: Debian's `ipxe` package links `/usr/lib/ipxe/ipxe.efi` to
/// `/boot/ipxe.efi`, which the root check would refuse; the operator chose this directory, so
/// its entries as installed are trusted, while links appearing later still are not. TFTP and
/// HTTP boot (`/boot/loaders/NAME`) serve the same set.
pub fn loader_files(directory: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut loaders = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let Ok(real_path) = std::fs::canonicalize(entry.path()) else {
            continue;
        };
        if real_path.is_file() {
            loaders.push((entry.file_name().to_string_lossy().into_owned(), real_path));
        }
    }
    Ok(loaders)
}

/// A file to send.
#[derive(Debug)]
pub enum Source {
    Disk { path: PathBuf, size: u64 },
    Memory(Bytes),
}

impl Source {
    pub fn size(&self) -> u64 {
        match self {
            Source::Disk { size, .. } => *size,
            Source::Memory(bytes) => bytes.len() as u64,
        }
    }
}

/// Checks the requested name's shape: no `..`, no NUL. Backslashes (some firmware sends DOS
/// paths) count as separators, so `..\x` is caught too. A leading `/` (which some firmware
/// sends, e.g. `/undionly.kpxe`) names the root, as tftpd-hpa's `--secure` and dnsmasq take
/// it: the rest is looked up under the root like any relative name.
pub fn relative_path(requested: &str) -> Result<PathBuf, RefusedPath> {
    let normalised = requested.replace('\\', "/");
    let normalised = normalised.trim_start_matches('/');
    if normalised.contains('\0') {
        return Err(RefusedPath::NotFound);
    }
    let mut relative = PathBuf::new();
    for component in Path::new(&normalised).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(RefusedPath::Climbs),
            Component::RootDir | Component::Prefix(_) => return Err(RefusedPath::Absolute),
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(RefusedPath::NotFound);
    }
    Ok(relative)
}

/// Finds what to send for `requested`: a generated file, else a regular file under `root` whose
/// real path (symbolic links resolved) is still under the root's real path.
pub async fn resolve(
    root: &Path,
    generated: &GeneratedFiles,
    requested: &str,
) -> Result<Source, RefusedPath> {
    let relative = relative_path(requested)?;
    let name = relative.to_string_lossy();
    if let Some(content) = generated.get(&name) {
        return Ok(Source::Memory(content));
    }
    if let Some(path) = generated.published(&name) {
        let metadata = tokio::fs::metadata(&path)
            .await
            .map_err(|_| RefusedPath::NotFound)?;
        return Ok(Source::Disk {
            path,
            size: metadata.len(),
        });
    }
    let real_root = tokio::fs::canonicalize(root)
        .await
        .map_err(|_| RefusedPath::NotFound)?;
    let real_path = tokio::fs::canonicalize(root.join(&relative))
        .await
        .map_err(|_| RefusedPath::NotFound)?;
    if !real_path.starts_with(&real_root) {
        return Err(RefusedPath::LeavesRoot);
    }
    let metadata = tokio::fs::metadata(&real_path)
        .await
        .map_err(|_| RefusedPath::NotFound)?;
    if !metadata.is_file() {
        return Err(RefusedPath::NotAFile);
    }
    Ok(Source::Disk {
        path: real_path,
        size: metadata.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_names_pass() {
        assert_eq!(
            relative_path("undionly.kpxe"),
            Ok(PathBuf::from("undionly.kpxe"))
        );
        assert_eq!(
            relative_path("./efi/ipxe.efi"),
            Ok(PathBuf::from("efi/ipxe.efi"))
        );
        // A leading slash names the root, not the server's /.
        assert_eq!(
            relative_path("/undionly.kpxe"),
            Ok(PathBuf::from("undionly.kpxe"))
        );
        assert_eq!(
            relative_path("//efi/ipxe.efi"),
            Ok(PathBuf::from("efi/ipxe.efi"))
        );
        assert_eq!(
            relative_path("/etc/passwd"),
            Ok(PathBuf::from("etc/passwd"))
        );
        assert_eq!(
            relative_path("\\etc\\passwd"),
            Ok(PathBuf::from("etc/passwd"))
        );
        assert_eq!(relative_path("/../etc/passwd"), Err(RefusedPath::Climbs));
        assert_eq!(relative_path("/"), Err(RefusedPath::NotFound));
        assert_eq!(relative_path("../etc/passwd"), Err(RefusedPath::Climbs));
        assert_eq!(relative_path("a/../../b"), Err(RefusedPath::Climbs));
        assert_eq!(relative_path("..\\b"), Err(RefusedPath::Climbs));
        assert_eq!(relative_path("."), Err(RefusedPath::NotFound));
    }

    #[tokio::test]
    async fn symbolic_links_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().expect("a directory");
        std::fs::write(outside.path().join("secret"), b"x").expect("written");
        let root = tempfile::tempdir().expect("a directory");
        std::fs::write(root.path().join("loader"), b"abc").expect("written");
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .expect("symlink");
        std::os::unix::fs::symlink("loader", root.path().join("alias")).expect("symlink");
        let generated = GeneratedFiles::default();
        generated.insert("boot.ipxe", &b"#!ipxe\n"[..]);
        assert_eq!(
            resolve(root.path(), &generated, "link").await.err(),
            Some(RefusedPath::LeavesRoot)
        );
        assert_eq!(
            resolve(root.path(), &generated, "alias")
                .await
                .map(|s| s.size()),
            Ok(3)
        );
        assert_eq!(
            resolve(root.path(), &generated, "boot.ipxe")
                .await
                .map(|s| s.size()),
            Ok(7)
        );
        assert_eq!(
            resolve(root.path(), &generated, "missing").await.err(),
            Some(RefusedPath::NotFound)
        );
        assert_eq!(
            resolve(root.path(), &generated, ".").await.err(),
            Some(RefusedPath::NotFound)
        );
        // Published at start-up: a link out of the directory, as Debian's ipxe.efi is.
        assert_eq!(
            publish_loader_directory(root.path(), &generated).expect("published"),
            3
        );
        assert_eq!(
            resolve(root.path(), &generated, "link")
                .await
                .map(|s| s.size()),
            Ok(1)
        );
    }
}
