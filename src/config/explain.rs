//! `fleet explain`: where each effective value of one machine comes from — the machine, its
//! profile, the profiles that one extends, the policy's default or fleet's own default.
//!
//! Loading keeps no positions for the values it resolves (100,000 machines load in about a
//! second, and a position per machine and field would cost more than reading them). Instead,
//! for the one machine asked about, the fleet files are parsed again and only the tables of that
//! machine, of the profiles on its chain and of `[policy]` are looked at.

use super::diagnostics::{Diagnostics, SourceFile};
use super::model::{Fleet, MachineSpec};
use super::size::{human_bytes, MIB};
use super::syntax::{self, Item, Table, Value};
use serde::Serialize;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// The fields a profile can give a machine, in the order `fleet explain` prints them. `expect.*`
/// and `vendor_data.*` are each taken from the nearest layer that gives them, key by key.
pub const FIELDS: &[&str] = &[
    "storage",
    "network",
    "image",
    "arch",
    "tags",
    "expect.min_cpus",
    "expect.min_memory",
    "expect.min_disks",
    "expect.min_disk_size",
    "kernel_params",
    "ephemeral_kernel_params",
    "ssh_keys",
    "user_data",
    "vendor_data.http_proxy",
    "vendor_data.apt_proxy",
    "vendor_data.ntp_servers",
    "vendor_data.dns_search",
];

/// The fields whose layers add up (every layer's values, farthest first, without duplicates);
/// in every other field the nearest layer that gives a value wins whole.
pub const UNION_FIELDS: &[&str] = &["tags", "ssh_keys"];

/// One machine's effective values and where each came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub machine: String,
    /// Its profile, then the profile that one extends, and so on.
    pub profiles: Vec<String>,
    pub fields: Vec<FieldOrigin>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldOrigin {
    pub field: &'static str,
    /// The effective value; null when no layer gives one.
    pub value: Json,
    pub combine: Combine,
    /// Every layer that gives a value, the winning one first, then nearest first.
    pub layers: Vec<LayerOrigin>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// The nearest layer's value.
    Nearest,
    /// Every layer's values together.
    Union,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerOrigin {
    pub layer: Layer,
    /// The profile's name, for a profile layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Where the key is written; none for fleet's own default.
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    /// The value as this layer writes it (TOML).
    pub written: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Machine,
    Profile,
    /// `[policy] default_image`.
    Policy,
    /// fleet's own default (amd64).
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Its value is the effective one.
    Wins,
    /// A nearer layer's value is used instead.
    Overridden,
    /// Its values are part of the effective ones (tags, SSH keys).
    Adds,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("the fleet files are not valid")]
    Invalid(Diagnostics),
    #[error("no machine is named `{name}`{}", did_you_mean(.suggestion))]
    UnknownMachine {
        name: String,
        suggestion: Option<String>,
    },
    #[error(
        "`{field}` is not a field a profile can give{}; the fields are {}",
        did_you_mean(.suggestion),
        FIELDS.join(", ")
    )]
    UnknownField {
        field: String,
        suggestion: Option<String>,
    },
    #[error("cannot read {}: {reason}", .path.display())]
    Read { path: PathBuf, reason: String },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|best| format!(" (did you mean `{best}`?)"))
        .unwrap_or_default()
}

/// Loads the fleet files and explains `field` (every field when `None`; `expect` or
/// `vendor_data` for all of theirs) of machine `name`.
pub fn explain(
    paths: &[PathBuf],
    name: &str,
    field: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let fleet = super::load(paths).map_err(ExplainError::Invalid)?;
    let fields = chosen_fields(field)?;
    let machine = find_machine(&fleet, name)?;
    let profiles = profile_chain(&fleet, machine);
    let mut settings = Vec::new();
    for (index, path) in fleet.sources.iter().enumerate() {
        let text = std::fs::read_to_string(path).map_err(|error| ExplainError::Read {
            path: path.clone(),
            reason: error.to_string(),
        })?;
        let source = SourceFile::new(path.clone(), text);
        let wanted = Wanted {
            machine: name,
            profiles: &profiles,
            source: &source,
        };
        // Only valid files reach here: they parsed a moment ago.
        if let Ok(found) = syntax::parse(&source.text, index as u32, |root| wanted.settings(root)) {
            settings.extend(found);
        }
    }
    let fields = fields
        .into_iter()
        .map(|field| field_origin(field, machine, &profiles, &settings))
        .collect();
    Ok(Explanation {
        machine: name.to_string(),
        profiles,
        fields,
    })
}

fn chosen_fields(field: Option<&str>) -> Result<Vec<&'static str>, ExplainError> {
    let Some(field) = field else {
        return Ok(FIELDS.to_vec());
    };
    let chosen: Vec<&'static str> = FIELDS
        .iter()
        .copied()
        .filter(|known| {
            *known == field
                || known
                    .strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
        .collect();
    if chosen.is_empty() {
        return Err(ExplainError::UnknownField {
            field: field.to_string(),
            suggestion: super::read::closest(field, FIELDS.iter().copied()).map(str::to_string),
        });
    }
    Ok(chosen)
}

fn find_machine<'f>(fleet: &'f Fleet, name: &str) -> Result<&'f MachineSpec, ExplainError> {
    // Sorted by name when loaded.
    match fleet
        .machines
        .binary_search_by(|machine| machine.name.as_str().cmp(name))
    {
        Ok(at) => Ok(&fleet.machines[at]),
        Err(_) => Err(ExplainError::UnknownMachine {
            name: name.to_string(),
            suggestion: super::read::closest(
                name,
                fleet.machines.iter().map(|machine| machine.name.as_str()),
            )
            .map(str::to_string),
        }),
    }
}

/// The machine's profile and the ones it extends, nearest first (loading refused cycles).
fn profile_chain(fleet: &Fleet, machine: &MachineSpec) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    let mut next = machine.profile.clone();
    while let Some(name) = next.filter(|name| !chain.contains(name)) {
        next = fleet
            .profiles
            .get(&name)
            .and_then(|profile| profile.extends.clone());
        chain.push(name);
    }
    chain
}

/// Who wrote a setting.
#[derive(Debug, Clone, PartialEq)]
enum Writer {
    Machine,
    Profile(String),
    Policy,
}

/// One key written by one of the layers looked at.
#[derive(Debug)]
struct Setting {
    writer: Writer,
    field: &'static str,
    file: PathBuf,
    line: usize,
    written: String,
}

/// The tables one explanation looks at, in one file.
struct Wanted<'w> {
    machine: &'w str,
    profiles: &'w [String],
    source: &'w SourceFile,
}

impl Wanted<'_> {
    fn settings(&self, root: Table<'_, '_>) -> Vec<Setting> {
        let mut found = Vec::new();
        if let Some(Value::Table(profiles)) = root.get("profiles").map(|entry| entry.item.value) {
            for name in self.profiles {
                if let Some(Value::Table(table)) = profiles.get(name).map(|entry| entry.item.value)
                {
                    self.fields_of(table, Writer::Profile(name.clone()), &mut found);
                }
            }
        }
        if let Some(Value::Array(machines)) = root.get("machine").map(|entry| entry.item.value) {
            let is_named = |table: &Table<'_, '_>| {
                table.get("name").is_some_and(
                    |name| matches!(name.item.value, Value::String(text) if text == self.machine),
                )
            };
            let found_machine = machines.iter().find_map(|item| match item.value {
                Value::Table(table) if is_named(&table) => Some(table),
                _ => None,
            });
            if let Some(table) = found_machine {
                self.fields_of(table, Writer::Machine, &mut found);
            }
        }
        if let Some(Value::Table(policy)) = root.get("policy").map(|entry| entry.item.value) {
            if let Some(entry) = policy.get("default_image") {
                found.push(self.setting(Writer::Policy, "image", entry.key_span, entry.item));
            }
        }
        found
    }

    fn fields_of(&self, table: Table<'_, '_>, writer: Writer, found: &mut Vec<Setting>) {
        for field in FIELDS {
            let (outer, inner) = match field.split_once('.') {
                Some((outer, inner)) => (outer, Some(inner)),
                None => (*field, None),
            };
            let Some(mut entry) = table.get(outer) else {
                continue;
            };
            if let Some(inner) = inner {
                let Value::Table(sub) = entry.item.value else {
                    continue;
                };
                let Some(inner_entry) = sub.get(inner) else {
                    continue;
                };
                entry = inner_entry;
            }
            found.push(self.setting(writer.clone(), field, entry.key_span, entry.item));
        }
    }

    fn setting(
        &self,
        writer: Writer,
        field: &'static str,
        key_span: syntax::Span,
        item: Item<'_, '_>,
    ) -> Setting {
        let text = &self.source.text;
        let written = text
            .get(item.span.start as usize..item.span.end as usize)
            .unwrap_or_default()
            .to_string();
        Setting {
            writer,
            field,
            file: self.source.path.clone(),
            line: self.source.line_column(key_span.start as usize).0,
            written,
        }
    }
}

fn field_origin(
    field: &'static str,
    machine: &MachineSpec,
    profiles: &[String],
    settings: &[Setting],
) -> FieldOrigin {
    // Nearest first: the machine, its profile, the one that extends... then the policy.
    let mut writers = vec![Writer::Machine];
    writers.extend(profiles.iter().cloned().map(Writer::Profile));
    writers.push(Writer::Policy);
    let combine = if UNION_FIELDS.contains(&field) {
        Combine::Union
    } else {
        Combine::Nearest
    };
    let mut layers: Vec<LayerOrigin> = Vec::new();
    for writer in &writers {
        let Some(setting) = settings
            .iter()
            .find(|setting| setting.field == field && setting.writer == *writer)
        else {
            continue;
        };
        let role = match (combine, layers.is_empty()) {
            (Combine::Union, _) => Role::Adds,
            (Combine::Nearest, true) => Role::Wins,
            (Combine::Nearest, false) => Role::Overridden,
        };
        layers.push(layer_origin(setting, role));
    }
    if field == "arch" && layers.is_empty() {
        layers.push(LayerOrigin {
            layer: Layer::Default,
            profile: None,
            file: None,
            line: None,
            written: format!("\"{}\"", machine.arch.as_str()),
            role: Role::Wins,
        });
    }
    FieldOrigin {
        field,
        value: effective_value(field, machine),
        combine,
        layers,
    }
}

fn layer_origin(setting: &Setting, role: Role) -> LayerOrigin {
    let (layer, profile) = match &setting.writer {
        Writer::Machine => (Layer::Machine, None),
        Writer::Profile(name) => (Layer::Profile, Some(name.clone())),
        Writer::Policy => (Layer::Policy, None),
    };
    LayerOrigin {
        layer,
        profile,
        file: Some(setting.file.clone()),
        line: Some(setting.line),
        written: setting.written.clone(),
        role,
    }
}

/// The machine's effective value of `field`, as loading resolved it.
fn effective_value(field: &str, machine: &MachineSpec) -> Json {
    let bytes = |value: Option<u64>| value.map(|bytes| human_bytes(bytes).into());
    let deploy = &machine.deploy;
    let vendor = &deploy.vendor_data;
    let value: Option<Json> = match field {
        "storage" => machine.storage.clone().map(Json::from),
        "network" => machine.network.clone().map(Json::from),
        "image" => machine.image.clone().map(Json::from),
        "arch" => Some(machine.arch.as_str().into()),
        "tags" => Some(machine.tags.clone().into()),
        "expect.min_cpus" => machine.expect.min_cpus.map(Json::from),
        "expect.min_memory" => bytes(machine.expect.min_memory_mib.map(|mib| mib * MIB)),
        "expect.min_disks" => machine.expect.min_disks.map(Json::from),
        "expect.min_disk_size" => bytes(machine.expect.min_disk_size_bytes),
        "kernel_params" => deploy
            .kernel_params
            .is_some()
            .then(|| deploy.kernel_command_line().into()),
        "ephemeral_kernel_params" => (deploy.ephemeral_kernel_params.is_some())
            .then(|| deploy.ephemeral_command_line().into()),
        "ssh_keys" => Some(deploy.ssh_keys.clone().into()),
        "user_data" => deploy
            .user_data
            .as_ref()
            .map(|user_data| serde_json::json!({ "file": user_data.file, "text": user_data.text })),
        "vendor_data.http_proxy" => vendor.http_proxy.clone().map(Json::from),
        "vendor_data.apt_proxy" => vendor.apt_proxy.clone().map(Json::from),
        "vendor_data.ntp_servers" => vendor.ntp_servers.clone().map(Json::from),
        "vendor_data.dns_search" => vendor.dns_search.clone().map(Json::from),
        _ => None,
    };
    value.unwrap_or(Json::Null)
}

impl Explanation {
    /// One block per field: `field = value`, then a line per layer (the winning one first).
    pub fn render(&self) -> String {
        let mut out = format!("machine {}", self.machine);
        if !self.profiles.is_empty() {
            out.push_str(&format!(" (profile {})", self.profiles.join(" → ")));
        }
        out.push('\n');
        for field in &self.fields {
            out.push_str(&field.render());
        }
        out
    }
}

impl FieldOrigin {
    fn render(&self) -> String {
        let mut out = match &self.value {
            Json::Null => format!("{} is not set\n", self.field),
            value => format!("{} = {}\n", self.field, shown_value(value)),
        };
        if self.combine == Combine::Union && self.layers.len() > 1 {
            out.push_str("    (every layer's values add up)\n");
        }
        let described: Vec<String> = self.layers.iter().map(LayerOrigin::describe).collect();
        let width = described.iter().map(|text| text.chars().count()).max();
        for (layer, described) in self.layers.iter().zip(&described) {
            out.push_str(&format!(
                "    {} {described:<width$} {}\n",
                match layer.role {
                    Role::Wins => "←",
                    Role::Overridden => "✗",
                    Role::Adds => "+",
                },
                layer.remark(),
                width = width.unwrap_or_default(),
            ));
        }
        out
    }
}

impl LayerOrigin {
    /// `profile gpu (fleet.toml:20)`.
    pub fn describe(&self) -> String {
        let who = match (self.layer, &self.profile) {
            (Layer::Profile, Some(name)) => format!("profile {name}"),
            (Layer::Machine, _) | (Layer::Profile, None) => "machine".to_string(),
            (Layer::Policy, _) => "policy default".to_string(),
            (Layer::Default, _) => "fleet's default".to_string(),
        };
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{who} ({}:{line})", short_path(file)),
            _ => who,
        }
    }

    fn remark(&self) -> String {
        let written = one_line(&self.written);
        match self.role {
            Role::Wins => format!("wins: {written}"),
            Role::Overridden => format!("overridden: {written}"),
            Role::Adds => format!("adds {written}"),
        }
    }
}

fn short_path(path: &Path) -> String {
    let text = path.display().to_string();
    text.strip_prefix("./").map(str::to_string).unwrap_or(text)
}

/// A value on one line, cut at 72 characters (user data, long key lists).
fn one_line(text: &str) -> String {
    let joined: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= 72 {
        return joined;
    }
    let cut: String = joined.chars().take(71).collect();
    format!("{cut}…")
}

fn shown_value(value: &Json) -> String {
    match value {
        Json::Object(user_data) => match (user_data.get("file"), user_data.get("text")) {
            (Some(Json::String(file)), Some(Json::String(text))) => {
                format!("{{ file = \"{file}\" }} ({} lines)", text.lines().count())
            }
            (_, Some(Json::String(text))) => format!(
                "{} ({} lines)",
                one_line(text.lines().next().unwrap_or_default()),
                text.lines().count()
            ),
            _ => value.to_string(),
        },
        Json::Array(items) => {
            let shown: Vec<String> = items
                .iter()
                .map(|item| one_line(&item.to_string()))
                .collect();
            format!("[{}]", shown.join(", "))
        }
        other => other.to_string(),
    }
}
