//! `[scripts.NAME]`: an operator's own commissioning or test script, read from a file beside
//! the fleet file. The controller serves it to machines after the built-in scripts.

use super::{resolve_path, Named};
use crate::config::diagnostics::Problems;
use crate::config::model::{Script, ScriptKind};
use crate::config::read::{Spanned, TableReader};
use std::path::Path;

pub const KEYS: &[&str] = &["file", "kind", "timeout", "destructive"];

pub fn read(
    name: Spanned<String>,
    reader: TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<Named<Script>> {
    reader.check_keys(KEYS, problems);
    check_name(&name, problems);
    let kind = match reader.choice("kind", &["commissioning", "testing"], problems) {
        Some(choice) if choice.value == "testing" => ScriptKind::Testing,
        Some(_) => ScriptKind::Commissioning,
        None => {
            if reader.item("kind").is_none() {
                problems.error(
                    reader.span,
                    format!(
                        "script `{}` needs `kind = \"commissioning\"` or `kind = \"testing\"`",
                        name.value
                    ),
                );
            }
            return None;
        }
    };
    let timeout_seconds = match reader.item("timeout") {
        Some(item) => super::policy::duration_seconds("timeout", &item.value, item.span, problems)?,
        None => Script::default_timeout_seconds(),
    };
    let destructive = reader
        .boolean("destructive", problems)
        .map(|flag| flag.value)
        .unwrap_or(false);
    let text = script_text(&reader, &name, base_dir, problems)?;
    let script = Script {
        kind,
        timeout_seconds,
        destructive,
        path: text.0,
        text: text.1,
    };
    Some(Named {
        name,
        value: script,
    })
}

/// Script names travel in URLs and in the shell runner's instruction lines.
fn check_name(name: &Spanned<String>, problems: &mut Problems) {
    let valid = !name.value.is_empty()
        && name
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        problems.error(
            name.span,
            format!(
                "script name `{}` may hold only letters, digits, `-`, `_` and `.`",
                name.value
            ),
        );
    }
    if name.value.contains("fleet-") && name.value.starts_with(|c: char| c.is_ascii_digit()) {
        problems.error(
            name.span,
            format!(
                "script name `{}` looks like a built-in script's (NN-fleet-...): choose another",
                name.value
            ),
        );
    }
}

/// The script's file, read now so that a missing or unreadable file is an error at its line.
fn script_text(
    reader: &TableReader<'_, '_>,
    name: &Spanned<String>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<(std::path::PathBuf, String)> {
    let Some(file) = reader.string("file", problems) else {
        if reader.item("file").is_none() {
            problems.error(
                reader.span,
                format!(
                    "script `{}` needs `file = \"path/to/script.sh\"`",
                    name.value
                ),
            );
        }
        return None;
    };
    let path = resolve_path(base_dir, file.value);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => {
            problems.error(
                file.span,
                format!("the script file {} is empty", path.display()),
            );
            None
        }
        Ok(text) => Some((path, text)),
        Err(error) => {
            problems.error(
                file.span,
                format!("cannot read the script file {}: {error}", path.display()),
            );
            None
        }
    }
}
