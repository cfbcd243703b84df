//! Reading fleet files: paths and directories, `include`s (with cycles caught), the digest.
//!
//! Each file is parsed, read into owned declarations and dropped before its includes are read,
//! so only one syntax tree is alive at a time.

use super::diagnostics::{Diagnostics, Problem, Problems, SourceFile};
use super::read::{expect_string, Spanned};
use super::sections::{read_document, Declarations};
use super::syntax::{self, Span, Table, Value};
use super::{check, Fleet};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// From this many bytes of fleet files on, their digest is computed on a thread of its own.
const DIGEST_BESIDE_BYTES: usize = 1 << 20;

/// Fewer bytes of TOML than a `[[machine]]` table usually takes (the synthetic fleet's take 300).
const MIN_MACHINE_BYTES: usize = 200;

#[derive(Default)]
struct Loader {
    sources: Vec<SourceFile>,
    problems: Problems,
    declarations: Declarations,
    /// Canonical paths already read: a file included twice is read once.
    seen: HashSet<PathBuf>,
    /// Canonical paths of the files being read, outermost first, for include cycles.
    stack: Vec<PathBuf>,
    has_syntax_errors: bool,
    /// Set by [`decode_toml`]: keep each document as tagged JSON instead of reading it.
    decode: bool,
    decoded: Vec<serde_json::Value>,
}

/// Loads fleet files and directories (every `*.toml` in a directory, sorted by name).
pub fn load(paths: &[PathBuf]) -> Result<Fleet, Diagnostics> {
    let mut loader = Loader::default();
    for path in paths {
        loader.load_argument(path);
    }
    loader.finish()
}

/// One file read and parsed exactly as [`load`] reads and parses it (same reading, same UTF-8
/// check, same parser, same syntax errors), returned as the document in toml-test's tagged JSON
/// (`{"type": "integer", "value": "1"}`) instead of being read into declarations. For the test
/// that runs the official TOML suite through the loader.
pub fn decode_toml(path: &Path) -> Result<serde_json::Value, Diagnostics> {
    let mut loader = Loader {
        decode: true,
        ..Loader::default()
    };
    loader.load_file(path, None);
    match loader.decoded.pop() {
        Some(document) if loader.problems.is_empty() => Ok(document),
        _ => Err(Diagnostics::from_problems(
            loader.problems,
            Arc::new(loader.sources),
        )),
    }
}

/// Loads one fleet file from text; its includes are resolved relative to the directory part of
/// `file_name` (the current directory for a bare name).
pub fn load_str(file_name: &str, text: &str) -> Result<Fleet, Diagnostics> {
    let mut loader = Loader::default();
    let path = PathBuf::from(file_name);
    let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    loader.load_text(path, canonical, text.to_string());
    loader.finish()
}

impl Loader {
    fn load_argument(&mut self, path: &Path) {
        if path.is_dir() {
            match toml_files_in(path) {
                Ok(files) if files.is_empty() => {
                    self.unplaced(path, "this directory holds no *.toml file")
                }
                Ok(files) => files.iter().for_each(|file| self.load_file(file, None)),
                Err(error) => self.unplaced(path, &format!("cannot read this directory: {error}")),
            }
        } else {
            self.load_file(path, None);
        }
    }

    fn unplaced(&mut self, path: &Path, message: &str) {
        self.problems
            .unplaced
            .push((path.to_path_buf(), message.to_string()));
    }

    /// `included_at`: the span of the include string, where errors about this file point.
    fn load_file(&mut self, path: &Path, included_at: Option<Span>) {
        let canonical = match std::fs::canonicalize(path) {
            Ok(canonical) => canonical,
            Err(error) => {
                return self.file_error(
                    path,
                    included_at,
                    &format!("cannot open `{}`: {error}", path.display()),
                )
            }
        };
        if let Some(at) = self.stack.iter().position(|open| *open == canonical) {
            return self.include_cycle(at, &canonical, included_at);
        }
        if !self.seen.insert(canonical.clone()) {
            return;
        }
        match std::fs::read(path).map(String::from_utf8) {
            Ok(Ok(text)) => self.load_text(path.to_path_buf(), canonical, text),
            Ok(Err(error)) => self.not_utf8(path, error),
            Err(error) => self.file_error(
                path,
                included_at,
                &format!("cannot read `{}`: {error}", path.display()),
            ),
        }
    }

    /// A file that is not UTF-8 (TOML must be): an error at the first bad byte.
    fn not_utf8(&mut self, path: &Path, error: std::string::FromUtf8Error) {
        let file_index = self.sources.len() as u32;
        let at = error.utf8_error().valid_up_to();
        let byte = error.as_bytes()[at];
        // The lossy text keeps every byte offset up to the bad byte.
        let text = String::from_utf8_lossy(error.as_bytes()).into_owned();
        self.sources.push(SourceFile::new(path.to_path_buf(), text));
        self.has_syntax_errors = true;
        self.problems.error(
            Span::new(file_index, at, at + '\u{fffd}'.len_utf8()),
            format!("this file is not UTF-8: byte 0x{byte:02x} here is not a character"),
        );
    }

    fn file_error(&mut self, path: &Path, included_at: Option<Span>, message: &str) {
        match included_at {
            Some(span) => self.problems.error(span, message),
            None => self.unplaced(path, message),
        }
    }

    fn include_cycle(&mut self, at: usize, canonical: &Path, included_at: Option<Span>) {
        let mut names: Vec<String> = self.stack[at..]
            .iter()
            .map(|path| file_name(path))
            .collect();
        names.push(file_name(canonical));
        let message = format!("include cycle: {}", names.join(" → "));
        match included_at {
            Some(span) => self.problems.error(span, message),
            None => self.unplaced(canonical, &message),
        }
    }

    fn load_text(&mut self, path: PathBuf, canonical: PathBuf, text: String) {
        let file_index = self.sources.len() as u32;
        self.seen.insert(canonical.clone());
        self.sources.push(SourceFile::new(path.clone(), text));
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let includes = self.read_source(file_index, &base_dir);
        self.stack.push(canonical);
        for (include, span) in includes {
            self.load_file(&include, Some(span));
        }
        self.stack.pop();
    }

    /// Parses and reads one source; returns the files it includes, in order.
    fn read_source(&mut self, file_index: u32, base_dir: &Path) -> Vec<(PathBuf, Span)> {
        let text = &self.sources[file_index as usize].text;
        let (declarations, problems) = (&mut self.declarations, &mut self.problems);
        // Room for the machines up front: a declaration is large, and growing the vector by
        // doubling copied it over and over (an eighth of loading 100,000 machines). A machine
        // takes a few hundred bytes of TOML; room reserved beyond that is never touched.
        declarations
            .machines
            .reserve(text.len() / MIN_MACHINE_BYTES);
        let (decode, decoded) = (self.decode, &mut self.decoded);
        let read = |root: Table<'_, '_>| {
            if decode {
                decoded.push(syntax::tagged_json(root));
                return Vec::new();
            }
            read_document(root, base_dir, declarations, problems);
            include_list(root, base_dir, problems)
        };
        match syntax::parse(text, file_index, read) {
            Ok(includes) => includes,
            Err(errors) => {
                self.has_syntax_errors = true;
                for error in errors {
                    let mut problem = Problem::new(error.span, error.message);
                    if let Some((span, note)) = error.related {
                        problem = problem.related(span, note);
                    }
                    self.problems.push(problem);
                }
                Vec::new()
            }
        }
    }

    fn finish(mut self) -> Result<Fleet, Diagnostics> {
        let paths: Vec<PathBuf> = self
            .sources
            .iter()
            .map(|source| source.path.clone())
            .collect();
        // After a syntax error the declarations are incomplete: cross-checks would only add
        // false "unknown profile" errors, so they wait for the syntax to be fixed.
        let fleet = if self.has_syntax_errors {
            None
        } else {
            // The digest (SHA-256 of every byte: 30 MB at 100,000 machines) is computed beside
            // the cross-checks, which do not need it; small fleets are not worth a thread.
            let (sources, declarations, problems) =
                (&self.sources, self.declarations, &mut self.problems);
            let bytes: usize = sources.iter().map(|source| source.text.len()).sum();
            Some(if bytes < DIGEST_BESIDE_BYTES {
                check::build_fleet(declarations, paths, digest(sources), problems)
            } else {
                std::thread::scope(|scope| {
                    let digesting = scope.spawn(|| digest(sources));
                    let mut fleet =
                        check::build_fleet(declarations, paths, String::new(), problems);
                    fleet.digest = digesting
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    fleet
                })
            })
        };
        match fleet {
            Some(fleet) if self.problems.is_empty() => Ok(fleet),
            _ => Err(Diagnostics::from_problems(
                self.problems,
                Arc::new(self.sources),
            )),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

fn digest(sources: &[SourceFile]) -> String {
    let mut hasher = Sha256::new();
    for source in sources {
        hasher.update((source.text.len() as u64).to_le_bytes());
        hasher.update(source.text.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// `include = "x.toml"` or `include = ["racks/*.toml", "more/"]`, expanded to files.
fn include_list(
    root: Table<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Vec<(PathBuf, Span)> {
    let Some(entry) = root.get("include") else {
        return Vec::new();
    };
    let patterns: Vec<Spanned<&str>> = match &entry.item.value {
        Value::Array(array) => array
            .iter()
            .filter_map(|item| expect_string(&item, "include", problems))
            .collect(),
        _ => expect_string(&entry.item, "include", problems)
            .into_iter()
            .collect(),
    };
    let mut files = Vec::new();
    for pattern in patterns {
        match expand_include(base_dir, pattern.value) {
            Ok(found) => files.extend(found.into_iter().map(|path| (path, pattern.span))),
            Err(message) => problems.error(pattern.span, message),
        }
    }
    files
}

/// A file, a directory (its `*.toml`), or a pattern with `*` / `?` in its last component.
fn expand_include(base_dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = base_dir.join(pattern);
    let last = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    if last.contains(['*', '?']) {
        let directory = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let matches = files_matching(&directory, &last)
            .map_err(|error| format!("cannot read `{}`: {error}", directory.display()))?;
        if matches.is_empty() {
            return Err(format!("no file matches `{}`", path.display()));
        }
        return Ok(matches);
    }
    if path.is_dir() {
        let files = toml_files_in(&path)
            .map_err(|error| format!("cannot read `{}`: {error}", path.display()))?;
        return Ok(files);
    }
    if !path.exists() {
        return Err(format!(
            "the included file `{}` does not exist",
            path.display()
        ));
    }
    Ok(vec![path])
}

fn toml_files_in(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    files_matching(directory, "*.toml")
}

fn files_matching(directory: &Path, pattern: &str) -> std::io::Result<Vec<PathBuf>> {
    let directory = if directory.as_os_str().is_empty() {
        Path::new(".")
    } else {
        directory
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if wildcard_match(pattern, &name) && entry.path().is_file() {
            files.push(directory.join(name));
        }
    }
    files.sort();
    Ok(files)
}

/// `*` matches any run of characters, `?` one character. Hidden files match only an explicit dot.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    matches_from(&pattern, &name)
}

fn matches_from(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|skip| matches_from(rest, &name[skip..])),
        Some(('?', rest)) => !name.is_empty() && matches_from(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && matches_from(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest computed beside the checks (large fleets) is the one computed inline.
    #[test]
    fn the_digest_of_a_large_fleet_is_the_same() {
        let text = crate::config::synthetic_fleet_toml(8_000);
        assert!(text.len() > DIGEST_BESIDE_BYTES);
        let fleet = match load_str("large.toml", &text) {
            Ok(fleet) => fleet,
            Err(diagnostics) => panic!("{}", diagnostics.render(false)),
        };
        let source = SourceFile::new(PathBuf::from("large.toml"), text);
        assert_eq!(fleet.digest, digest(std::slice::from_ref(&source)));
        assert_eq!(fleet.digest.len(), 64);
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.toml", "rack1.toml"));
        assert!(wildcard_match("rack?.toml", "rack1.toml"));
        assert!(!wildcard_match("*.toml", "rack1.toml.bak"));
        assert!(!wildcard_match("*.toml", ".hidden.toml"));
    }
}
