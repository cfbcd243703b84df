//! The shape of the library stays true: every top-level module has a layer, and no module reaches
//! one in its own layer or above (which also rules out cycles). The pure parts reach no store, no
//! database, no runtime and no HTTP client. Read from the source text: every `crate::` path in
//! non-test code — use lines, inline paths, attributes — and `super::` paths that climb to the
//! crate root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/lib.rs` and its layer, lowest first. A module may use only
/// modules of lower layers.
const LAYERS: &[(&str, u8)] = &[
    ("model", 0),         // the life-cycle, records, names, roles, clocks: pure
    ("config", 1),        // fleet files: pure
    ("plan", 2),          // desired vs observed → plan: pure
    ("commissioning", 2), // the scripts machines run and the fact parser: pure
    ("store", 3),         // sqlx
    ("power", 3),         // power drivers
    ("metrics", 3),       // the counters the services share, the Prometheus text
    ("boot", 4),          // DHCP, TFTP, HTTP boot
    ("services", 4),      // one action on one machine, the machine API, the watches
    ("apply", 5),         // the executor
    ("api", 6),           // HTTP
    ("controller", 7),    // wiring: `fleet serve`
    ("sim", 8),           // simulated machines: a client of the controller's sockets, like cli
];

/// A client of the controller: it speaks to it over sockets only, so it may use the shared
/// types (model, config) and the fact format (commissioning), never the controller's insides.
const CLIENT_MODULES: &[(&str, &[&str])] = &[("sim", &["model", "config", "commissioning"])];

/// Parts that must stay pure, and what they may not reach.
const PURE: &[&str] = &[
    "src/model",
    "src/config",
    "src/plan",
    "src/commissioning",
    "src/boot/dhcp/handler.rs",
    "src/boot/dhcp/options.rs",
    "src/boot/ipxe.rs",
    "src/services/machine_api/rules.rs",
];
const NOT_IN_PURE: &[&str] = &["sqlx::", "tokio::", "reqwest::"];
/// The modules pure code may use.
const PURE_MODULES: &[&str] = &["model", "config", "plan", "commissioning"];

/// One place a module reaches another top-level module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reach {
    line: usize,
    target: String,
}

/// The source with comments and `#[cfg(test)] mod name { ... }` blocks blanked out (lines
/// kept, so line numbers stay true).
fn code_only(source: &str) -> String {
    let mut kept: Vec<String> = source.lines().map(strip_comment).collect();
    let mut index = 0;
    while index < kept.len() {
        let is_test_module = kept[index].trim() == "#[cfg(test)]"
            && kept
                .get(index + 1)
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.contains('{'));
        if !is_test_module {
            index += 1;
            continue;
        }
        let mut depth = 0i32;
        let mut line = index + 1;
        loop {
            depth += kept[line].matches('{').count() as i32;
            depth -= kept[line].matches('}').count() as i32;
            kept[line].clear();
            if depth <= 0 || line + 1 == kept.len() {
                break;
            }
            line += 1;
        }
        kept[index].clear();
        index = line + 1;
    }
    kept.join("\n")
}

/// The line without its `//` comment and with the text inside string literals blanked (a path
/// written in a message is not a use of the module).
fn strip_comment(line: &str) -> String {
    let mut kept = String::with_capacity(line.len());
    let mut in_string = false;
    let mut previous = ' ';
    for (at, character) in line.char_indices() {
        match character {
            '"' if previous != '\\' => in_string = !in_string,
            '/' if !in_string && line[at + 1..].starts_with('/') => return kept,
            _ => {}
        }
        kept.push(if in_string && character != '"' {
            ' '
        } else {
            character
        });
        previous = character;
    }
    kept
}

/// The top-level modules `code` reaches, with their lines. `module_path` is the file's module
/// path below the crate (`["services", "machine_api"]` for src/services/machine_api/mod.rs),
/// which resolves `super::`.
fn reaches(code: &str, module_path: &[String]) -> Vec<Reach> {
    let mut found = Vec::new();
    // Across lines: rustfmt breaks `use crate::{` groups over several.
    let mut searched = 0;
    while let Some(at) = code[searched..].find("crate::") {
        let start = searched + at;
        searched = start + "crate::".len();
        let before = code[..start].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        for target in first_segments(&code[searched..]) {
            found.push(Reach { line, target });
        }
    }
    for (number, line) in code.lines().enumerate() {
        for target in climbs_to_the_root(line, module_path) {
            found.push(Reach {
                line: number + 1,
                target,
            });
        }
    }
    found.sort_by_key(|reach| reach.line);
    found
}

/// `store::X` → `store`; `{model::A, store::B}` → `model`, `store` (the first segment of each
/// path in a group).
fn first_segments(path: &str) -> Vec<String> {
    let identifier = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = path.strip_prefix('{') else {
        return vec![identifier(path)];
    };
    let mut segments = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for (at, character) in group.char_indices() {
        match character {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && !c.is_whitespace() => {
                segments.push(identifier(&group[at..]));
                start = false;
            }
            _ => {}
        }
    }
    segments.retain(|segment| !segment.is_empty());
    segments
}

/// `super::super::store::X` written in a module two levels down reaches `store`.
fn climbs_to_the_root(line: &str, module_path: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("super::") {
        let before = rest[..at].chars().last();
        let mut path = &rest[at..];
        rest = &rest[at + "super::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut depth = module_path.len();
        while let Some(after) = path.strip_prefix("super::") {
            depth = depth.saturating_sub(1);
            path = after;
        }
        if depth == 0 {
            found.extend(first_segments(path));
        }
    }
    found
}

fn rust_files(directory: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// Files that are whole test modules (`#[cfg(test)] mod tests;` in their parent).
fn test_only_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut test_files = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let declared = pair[1]
                .trim()
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'));
            if let (true, Some(name)) = (pair[0].trim() == "#[cfg(test)]", declared) {
                let directory = if file.ends_with("mod.rs") || file.ends_with("lib.rs") {
                    file.parent().unwrap().to_path_buf()
                } else {
                    file.with_extension("")
                };
                test_files.push(directory.join(format!("{name}.rs")));
                test_files.push(directory.join(name).join("mod.rs"));
            }
        }
    }
    test_files
}

/// `src/services/machine_api/rules.rs` → `["services", "machine_api", "rules"]`.
fn module_path(source_root: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(source_root).unwrap().with_extension("");
    let mut path: Vec<String> = relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

/// Every breach of the layers and of purity in the library's source, one line each.
fn breaches(source_root: &Path) -> Vec<String> {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(source_root, &mut files);
    files.sort();
    let test_files = test_only_files(&files);
    let mut found = Vec::new();
    for file in &files {
        let module_path = module_path(source_root, file);
        let Some(top) = module_path.first().cloned() else {
            continue;
        };
        if top == "main" || top == "cli" || top == "lib" || test_files.contains(file) {
            continue; // the binary, the crate root and test modules
        }
        let shown = file.display().to_string();
        let Some(&layer) = layers.get(top.as_str()) else {
            found.push(format!(
                "{shown}: module `{top}` has no layer: place it in LAYERS"
            ));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let relative = format!("src/{}", file.strip_prefix(source_root).unwrap().display());
        let pure = PURE.iter().any(|pure| relative.starts_with(pure));
        for reach in reaches(&code, &module_path) {
            if pure && reach.target != top && !PURE_MODULES.contains(&reach.target.as_str()) {
                found.push(format!(
                    "{shown}:{}: pure code reaches `crate::{}`",
                    reach.line, reach.target
                ));
            }
            if reach.target == top || reach.target == "self" {
                continue;
            }
            let client_may_use = CLIENT_MODULES
                .iter()
                .find(|(client, _)| *client == top)
                .map(|(_, allowed)| *allowed);
            if let Some(allowed) = client_may_use {
                if layers.contains_key(reach.target.as_str())
                    && !allowed.contains(&reach.target.as_str())
                {
                    found.push(format!(
                        "{shown}:{}: `{top}` is a client of the controller and may use only {allowed:?}, not `{}`",
                        reach.line, reach.target
                    ));
                    continue;
                }
            }
            match layers.get(reach.target.as_str()) {
                Some(&target_layer) if target_layer < layer => {}
                Some(&target_layer) => found.push(format!(
                    "{shown}:{}: `{top}` (layer {layer}) uses `{}` (layer {target_layer}): {}",
                    reach.line,
                    reach.target,
                    if target_layer == layer {
                        "a sideways path between modules of one layer"
                    } else {
                        "an upward path"
                    }
                )),
                None => {} // a crate-root item (none today) or a macro path
            }
        }
        if pure {
            for (number, line) in code.lines().enumerate() {
                for forbidden in NOT_IN_PURE {
                    if line.contains(forbidden) {
                        found.push(format!(
                            "{shown}:{}: pure code reaches `{forbidden}`",
                            number + 1
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_modules_point_one_way_and_the_pure_parts_stay_pure() {
    let source_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(source_root.join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line
            .strip_prefix("pub mod ")
            .and_then(|rest| rest.strip_suffix(';'))
        {
            assert!(
                LAYERS.iter().any(|(module, _)| *module == name),
                "src/lib.rs declares `{name}`, which tests/it/layers.rs does not place in a layer"
            );
        }
    }
    let found = breaches(&source_root);
    assert!(
        found.is_empty(),
        "{} breach(es) of the layers (tests/it/layers.rs says which module sits where):\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_reader_finds_use_lines_groups_inline_paths_attributes_and_climbs() {
    let source = r#"
use crate::model::Status;
use crate::{config::Fleet, store::Store};
use crate::{
    boot::Something,
    apply::{self, Other},
};
// use crate::api::ignored_in_a_comment;
#[error("since {}", crate::api::views::rfc3339(.0))]
fn inline() { let _ = crate::power::PowerDrivers::default(); let url = "http://x//crate::apply"; }
fn climbs() { super::super::controller::serve(); }
#[cfg(test)]
mod tests {
    use crate::services::anything;
}
"#;
    let code = code_only(source);
    let path = ["services".to_string(), "machine_api".to_string()];
    let targets: Vec<(usize, String)> = reaches(&code, &path)
        .into_iter()
        .map(|reach| (reach.line, reach.target))
        .collect();
    let expected: Vec<(usize, String)> = [
        (2, "model"),
        (3, "config"),
        (3, "store"),
        (4, "boot"),
        (4, "apply"),
        (9, "api"),
        (10, "power"),
        (11, "controller"),
    ]
    .into_iter()
    .map(|(line, target)| (line, target.to_string()))
    .collect();
    assert_eq!(targets, expected);
}
