//! `[images.NAME]`: a kernel and initrd to boot, and/or an OS image to write to disk.

use super::{resolve_path, Named};
use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{Arch, Artifact, ArtifactLocation, Image, ImageFormat, RootImage};
use crate::config::read::{Spanned, TableReader};
use std::path::Path;

pub const KEYS: &[&str] = &["arch", "os", "release", "kernel", "initrd", "root"];
pub const ARTIFACT_KEYS: &[&str] = &["url", "path", "sha256"];
pub const ROOT_KEYS: &[&str] = &["url", "path", "sha256", "format"];

pub fn read(
    name: Spanned<String>,
    reader: TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<Named<Image>> {
    reader.check_keys(KEYS, problems);
    let image = Image {
        name: name.value.clone(),
        arch: arch(&reader, "arch", problems).unwrap_or_default(),
        os: reader.owned_string("os", problems),
        release: reader.owned_string("release", problems),
        kernel: artifact(&reader, "kernel", base_dir, problems),
        initrd: artifact(&reader, "initrd", base_dir, problems),
        root: root_image(&reader, base_dir, problems),
    };
    check_complete(&reader, &image, problems);
    Some(Named { name, value: image })
}

pub fn arch(reader: &TableReader<'_, '_>, key: &str, problems: &mut Problems) -> Option<Arch> {
    reader
        .choice(key, Arch::NAMES, problems)
        .and_then(|text| Arch::parse(text.value))
}

/// A kernel without an initrd (or the reverse) cannot boot; an image with nothing is useless.
fn check_complete(reader: &TableReader<'_, '_>, image: &Image, problems: &mut Problems) {
    let span = reader.span;
    match (&image.kernel, &image.initrd) {
        (Some(_), None) => problems.error(
            reader.key_span("kernel").unwrap_or(span),
            "a kernel needs an `initrd` beside it",
        ),
        (None, Some(_)) => problems.error(
            reader.key_span("initrd").unwrap_or(span),
            "an initrd needs a `kernel` beside it",
        ),
        _ => {}
    }
    let given = ["kernel", "initrd", "root"]
        .iter()
        .any(|key| reader.item(key).is_some());
    if !given {
        let problem = Problem::new(
            span,
            format!(
                "{} has neither `kernel` and `initrd` nor `root`",
                reader.context()
            ),
        );
        problems.push(
            problem.help("give a kernel and an initrd to boot, and/or a root image to deploy"),
        );
    }
}

fn artifact(
    reader: &TableReader<'_, '_>,
    key: &str,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<Artifact> {
    let context = format!("`{key}`");
    let table = reader.table(key, &context, problems)?;
    table.check_keys(ARTIFACT_KEYS, problems);
    let (location, sha256) = location_and_digest(&table, base_dir, problems)?;
    Some(Artifact { location, sha256 })
}

fn root_image(
    reader: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<RootImage> {
    let table = reader.table("root", "`root`", problems)?;
    table.check_keys(ROOT_KEYS, problems);
    let format = table.required_string("format", problems).and_then(|text| {
        if text.value == "squashfs" {
            let problem = Problem::new(
                text.span,
                "`squashfs` is not a root image format: fleet writes root tarballs and whole-disk images",
            );
            problems.push(problem.help(
                "repack it as a tarball (`unsquashfs` then `tar -C squashfs-root -cJf root.tar.xz .`, \
                 format \"tar-xz\") or give a disk image (raw, raw-gz, raw-xz, raw-zst, qcow2)",
            ));
            return None;
        }
        crate::config::read::check_choice("format", &text, ImageFormat::NAMES, problems)
            .then(|| ImageFormat::parse(text.value))
            .flatten()
    });
    let (location, sha256) = location_and_digest(&table, base_dir, problems)?;
    Some(RootImage {
        location,
        sha256,
        format: format?,
    })
}

/// Exactly one of `url` and `path`; a `sha256` for URLs (downloads are verified).
fn location_and_digest(
    table: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<(ArtifactLocation, Option<String>)> {
    let url = table.string("url", problems);
    let path = table.string("path", problems);
    let sha256 = table
        .string("sha256", problems)
        .and_then(|digest| sha256(digest, problems));
    let location = match (url, path) {
        (Some(url), None) => {
            if table.item("sha256").is_none() {
                let problem = Problem::new(
                    url.span,
                    "a download needs its `sha256`, so that it can be verified",
                );
                problems
                    .push(problem.help("add sha256 = \"<64 hex digits>\" (sha256sum prints it)"));
            }
            super::controller::checked_http_url(&url, "url", problems)
                .then(|| ArtifactLocation::Url(url.value.to_string()))?
        }
        (None, Some(path)) => ArtifactLocation::Path(resolve_path(base_dir, path.value)),
        (Some(_), Some(path)) => {
            problems.error(path.span, "give either `url` or `path`, not both");
            return None;
        }
        (None, None) => {
            problems.error(
                table.span,
                format!("{} needs a `url` or a `path`", table.context()),
            );
            return None;
        }
    };
    Some((location, sha256))
}

/// 64 hex digits, kept lowercase.
pub fn sha256(digest: Spanned<&str>, problems: &mut Problems) -> Option<String> {
    if digest.value.len() == 64 && digest.value.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some(digest.value.to_ascii_lowercase());
    }
    let problem = Problem::new(
        digest.span,
        format!(
            "a sha256 is 64 hex digits; this one has {} characters",
            digest.value.chars().count()
        ),
    );
    let problem = if digest.value.chars().all(|c| c.is_ascii_hexdigit()) {
        problem
    } else {
        Problem::new(
            digest.span,
            "a sha256 is 64 hex digits (0-9, a-f); this one has other characters",
        )
    };
    problems.push(problem);
    None
}
