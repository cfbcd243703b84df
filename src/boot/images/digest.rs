//! Reading image files (blocking): SHA-256 of a file, of its decompressed stream (Debian's
//! `gzip`, `xz`, `zstd`), qcow2 → raw with `qemu-img convert`, and the stamp (size, mtime,
//! inode) that tells a file changed after it was checked.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// What a file looked like when it was checked: a different size, modification time or inode
/// afterwards means it changed (or was replaced) and must be checked again before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl Stamp {
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let metadata = std::fs::metadata(path)?;
        Ok(Stamp {
            size: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            inode: metadata.ino(),
        })
    }

    /// Whether the file at `path` is still the one stamped (an unreadable file is not).
    pub fn still_matches(&self, path: &Path) -> bool {
        Stamp::of(path).is_ok_and(|now| now == *self)
    }
}

/// SHA-256 (hex) and size of a file, read in 1 MiB pieces.
pub fn sha256_of_file(path: &Path) -> std::io::Result<(String, u64)> {
    sha256_of_reader(std::fs::File::open(path)?)
}

pub fn sha256_of_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let count = reader.read(&mut buffer)?;
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
        size += count as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// SHA-256 and size of what `tool` (e.g. `["xz", "-dc"]`) writes when fed the file: the
/// decompressed stream machines write. Debian's tools, as the machines use.
pub fn decompressed_digest(tool: [&str; 2], path: &Path) -> Result<(String, u64), String> {
    let input = std::fs::File::open(path).map_err(|error| format!("cannot read it: {error}"))?;
    let mut child = Command::new(tool[0])
        .arg(tool[1])
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            format!(
                "cannot run `{}` to decompress it: {error} (install Debian's gzip, xz-utils and zstd)",
                tool[0]
            )
        })?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let digest = sha256_of_reader(stdout);
    let output = child
        .wait_with_output()
        .map_err(|error| format!("`{} {}` failed: {error}", tool[0], tool[1]))?;
    if !output.status.success() {
        return Err(format!(
            "`{} {}` could not decompress it ({}): {}",
            tool[0],
            tool[1],
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    digest.map_err(|error| format!("reading `{} {}`'s output: {error}", tool[0], tool[1]))
}

/// Converts a qcow2 file to raw at `target` (through `TARGET.converting`, renamed when whole),
/// refusing an image with a backing file (it would read another file of this host).
pub fn qcow2_to_raw(source: &Path, target: &Path) -> Result<(), String> {
    let info = Command::new("qemu-img")
        .args(["info", "-f", "qcow2", "--output=json"])
        .arg(source)
        .output()
        .map_err(|error| {
            format!("cannot run `qemu-img` to convert it: {error} (install Debian's qemu-utils)")
        })?;
    if !info.status.success() {
        return Err(format!(
            "`qemu-img info` says it is not a qcow2 image: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    let info: serde_json::Value = serde_json::from_slice(&info.stdout)
        .map_err(|error| format!("`qemu-img info` printed no JSON: {error}"))?;
    if let Some(backing) = info.get("backing-filename") {
        return Err(format!(
            "it has a backing file ({backing}); give a self-contained image (`qemu-img convert -O qcow2` flattens it)"
        ));
    }
    let mut partial = target.as_os_str().to_owned();
    partial.push(".converting");
    let partial = std::path::PathBuf::from(partial);
    let output = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(source)
        .arg(&partial)
        .output()
        .map_err(|error| format!("cannot run `qemu-img convert`: {error}"))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "`qemu-img convert` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    std::fs::rename(&partial, target)
        .map_err(|error| format!("cannot rename {}: {error}", partial.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xz_stream_digest_is_the_digest_of_what_it_holds() {
        let directory = tempfile::tempdir().expect("a directory");
        let plain = directory.path().join("disk.img");
        std::fs::write(&plain, vec![7u8; 300_000]).expect("written");
        let status = Command::new("xz")
            .args(["-k", "-T1"])
            .arg(&plain)
            .status()
            .expect("xz runs");
        assert!(status.success());
        let compressed = directory.path().join("disk.img.xz");
        let expected = sha256_of_file(&plain).expect("hashed");
        let actual = decompressed_digest(["xz", "-dc"], &compressed).expect("decompressed");
        assert_eq!(actual, expected);
        // (Debian's zstd reads xz too; gzip does not.)
        let refused = decompressed_digest(["gzip", "-dc"], &compressed).expect_err("not gzip");
        assert!(refused.contains("gzip -dc"), "{refused}");
    }
}
