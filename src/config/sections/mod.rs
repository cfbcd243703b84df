//! Reading each section of one file into owned, typed declarations that keep the spans the
//! cross-checks (in `check`) need. Errors within one value or table are reported here.

mod controller;
mod deploy;
mod images;
mod machines;
mod network;
mod policy;
mod power;
mod profiles;
mod scripts;
mod storage;
mod subnets;

pub use controller::ControllerDecl;
pub use machines::{InterfaceDecl, MachineDecl};
pub use network::NetworkDecl;
pub use policy::PolicyDecl;
pub use profiles::ProfileDecl;
pub use subnets::SubnetDecl;

use super::diagnostics::{Problem, Problems};
use super::model::{
    ControllerSettings, Expectations, Image, MachineSpec, NetworkTemplate, Policy, Profile, Script,
    StorageTemplate, Subnet,
};
use super::read::{Spanned, TableReader};
use super::size::{SizeSpec, MIB};
use super::syntax::{Item, Span, Table, Value};
use schemars::{JsonSchema, Schema};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Everything declared so far, across files.
#[derive(Debug, Default)]
pub struct Declarations {
    /// One per file that has a `[controller]`; more than one is an error.
    pub controllers: Vec<ControllerDecl>,
    pub policies: Vec<PolicyDecl>,
    pub subnets: Vec<SubnetDecl>,
    pub images: Vec<Named<Image>>,
    pub storage_templates: Vec<Named<StorageTemplate>>,
    pub network_templates: Vec<NetworkDecl>,
    pub profiles: Vec<ProfileDecl>,
    pub machines: Vec<MachineDecl>,
    pub scripts: Vec<Named<Script>>,
}

/// A declaration under `[section.NAME]`, with where its name was written.
#[derive(Debug)]
pub struct Named<T> {
    pub name: Spanned<String>,
    pub value: T,
}

/// A name that must match something declared elsewhere.
pub type Reference = Spanned<String>;

pub const TOP_LEVEL_KEYS: &[&str] = &[
    "include",
    "controller",
    "subnets",
    "images",
    "storage_templates",
    "network_templates",
    "profiles",
    "machine",
    "policy",
    "scripts",
];

/// The top level of one fleet file, for `fleet schema` only: a fleet is assembled from several
/// files, so no reader fills this. Each section is the type its reader produces, and the test
/// below keeps these fields equal to [`TOP_LEVEL_KEYS`].
#[derive(JsonSchema)]
#[schemars(
    title = "fleet file",
    description = "A fleet file. Several files make one fleet (see `include`).",
    deny_unknown_fields
)]
#[allow(dead_code)]
struct FleetFile {
    /// Files, directories (every *.toml, sorted) or `*` patterns, relative to this file.
    include: Option<Include>,
    controller: Option<ControllerSettings>,
    subnets: Option<BTreeMap<String, Subnet>>,
    images: Option<BTreeMap<String, Image>>,
    storage_templates: Option<BTreeMap<String, StorageTemplate>>,
    network_templates: Option<BTreeMap<String, NetworkTemplate>>,
    profiles: Option<BTreeMap<String, Profile>>,
    /// One `[[machine]]` table per machine.
    machine: Option<Vec<MachineSpec>>,
    policy: Option<Policy>,
    /// The operator's own commissioning and test scripts, by name.
    scripts: Option<BTreeMap<String, Script>>,
}

/// `include = "x.toml"` or `include = ["racks/*.toml", "more/"]` (read by `load`).
#[derive(JsonSchema)]
#[schemars(untagged)]
#[allow(dead_code)]
enum Include {
    One(String),
    Many(Vec<String>),
}

/// The JSON Schema of a fleet file (`fleet schema`), for editors (taplo, Even Better TOML):
/// draft 07, which they all read.
pub fn json_schema() -> serde_json::Value {
    let mut settings = schemars::generate::SchemaSettings::draft07();
    // First, so that draft 07's own transforms see what it leaves.
    settings.transforms.insert(0, Box::new(toml_has_no_null));
    let schema = settings
        .into_generator()
        .into_root_schema_for::<FleetFile>();
    schema.to_value()
}

/// TOML has no null: a key is given or left out. Takes out the `null` that schemars allows for
/// an `Option` and the `None` defaults, and the defaults of whole tables (each key inside gives
/// its own, in the form the file writes it, where the table's would be in memory's form).
fn toml_has_no_null(schema: &mut Schema) {
    schemars::transform::transform_subschemas(&mut toml_has_no_null, schema);
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object
        .get("default")
        .is_some_and(|default| default.is_null() || default.is_object())
    {
        object.remove("default");
    }
    if let Some(Json::Array(types)) = object.get_mut("type") {
        types.retain(|kind| kind != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            object.insert("type".into(), only);
        }
    }
    if let Some(Json::Array(choices)) = object.get_mut("enum") {
        choices.retain(|choice| !choice.is_null());
    }
    if let Some(Json::Array(options)) = object.get_mut("anyOf") {
        options.retain(|option| option.get("type").is_none_or(|kind| kind != "null"));
        // One schema left (an `Option`'s): that schema, beside the field's description.
        if let [Json::Object(only)] = options.as_mut_slice() {
            let only = std::mem::take(only);
            object.remove("anyOf");
            for (key, value) in only {
                object.entry(key).or_insert(value);
            }
        }
    }
}

pub fn read_document(
    root: Table<'_, '_>,
    base_dir: &Path,
    declarations: &mut Declarations,
    problems: &mut Problems,
) {
    let reader = TableReader::new(root, Span::default(), "the fleet file");
    reader.check_keys(TOP_LEVEL_KEYS, problems);
    if let Some(table) = reader.table("controller", "[controller]", problems) {
        declarations
            .controllers
            .push(controller::read(table, base_dir, problems));
    }
    if let Some(table) = reader.table("policy", "[policy]", problems) {
        declarations.policies.push(policy::read(table, problems));
    }
    for_each_named(
        &reader,
        "subnets",
        "subnet",
        problems,
        |name, table, problems| {
            declarations
                .subnets
                .extend(subnets::read(name, table, problems));
        },
    );
    for_each_named(
        &reader,
        "images",
        "image",
        problems,
        |name, table, problems| {
            declarations
                .images
                .extend(images::read(name, table, base_dir, problems));
        },
    );
    for_each_named(
        &reader,
        "storage_templates",
        "storage template",
        problems,
        |name, table, problems| {
            declarations
                .storage_templates
                .extend(storage::read(name, table, base_dir, problems));
        },
    );
    for_each_named(
        &reader,
        "network_templates",
        "network template",
        problems,
        |name, table, problems| {
            declarations
                .network_templates
                .push(network::read(name, table, problems));
        },
    );
    for_each_named(
        &reader,
        "profiles",
        "profile",
        problems,
        |name, table, problems| {
            declarations
                .profiles
                .push(profiles::read(name, table, base_dir, problems));
        },
    );
    for_each_named(
        &reader,
        "scripts",
        "script",
        problems,
        |name, table, problems| {
            declarations
                .scripts
                .extend(scripts::read(name, table, base_dir, problems));
        },
    );
    machines::read_all(&reader, base_dir, &mut declarations.machines, problems);
}

/// Calls `read` for every `[section.NAME]` table, with a reader named "kind `NAME`".
fn for_each_named<'t, 'a>(
    root: &TableReader<'t, 'a>,
    section: &str,
    kind: &str,
    problems: &mut Problems,
    mut read: impl FnMut(Spanned<String>, TableReader<'_, 'a>, &mut Problems),
) {
    let Some(item) = root.item(section) else {
        return;
    };
    let Value::Table(table) = &item.value else {
        problems.error(
            item.span,
            format!("`{section}` must be a table of {kind}s, such as [{section}.NAME]"),
        );
        return;
    };
    for entry in table.entries() {
        let context = format!("{kind} `{}`", entry.key);
        let name = Spanned::new(entry.key.to_string(), entry.key_span);
        if let Some(reader) = TableReader::from_item(&entry.item, &context, problems) {
            read(name, reader, problems);
        }
    }
}

// ---- helpers shared by several sections ----

pub fn reference(
    reader: &TableReader<'_, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<Reference> {
    reader
        .string(key, problems)
        .map(|text| Spanned::new(text.value.to_string(), text.span))
}

/// A size written as a string (`"8GiB"`, `"20%"`) or an integer number of bytes.
pub fn size(
    reader: &TableReader<'_, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<Spanned<SizeSpec>> {
    let item = reader.item(key)?;
    size_of_item(&item, key, problems)
}

pub fn size_of_item(
    item: &Item<'_, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<Spanned<SizeSpec>> {
    let parsed = match &item.value {
        Value::Integer(bytes) if *bytes >= 0 => Ok(SizeSpec::Bytes(*bytes as u64)),
        Value::String(text) => SizeSpec::parse(text).map_err(|error| error.to_string()),
        other => Err(format!(
            "`{key}` must be a size such as \"512MiB\" or a number of bytes, found {}",
            other.type_name()
        )),
    };
    match parsed {
        Ok(size) => Some(Spanned::new(size, item.span)),
        Err(message) => {
            problems.error(item.span, message);
            None
        }
    }
}

/// An absolute size in bytes (no percentage).
pub fn absolute_size(
    reader: &TableReader<'_, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<Spanned<u64>> {
    let size = size(reader, key, problems)?;
    match size.value {
        SizeSpec::Bytes(bytes) => Some(Spanned::new(bytes, size.span)),
        SizeSpec::Percent(_) => {
            let problem = Problem::new(
                size.span,
                format!("`{key}` must be an absolute size, not a percentage"),
            );
            problems.push(problem.help("write it with a unit, such as \"8GiB\""));
            None
        }
    }
}

/// `root_size = "2GiB"` below a minimum of 3 GiB, with the minimum in the message.
pub fn check_minimum(
    size: &Spanned<u64>,
    minimum: u64,
    what: &str,
    problems: &mut Problems,
) -> bool {
    if size.value >= minimum {
        return true;
    }
    let message = format!(
        "{what} of {} is below the minimum of {}",
        super::size::human_bytes(size.value),
        super::size::human_bytes(minimum)
    );
    problems.error(size.span, message);
    false
}

pub const EXPECT_KEYS: &[&str] = &["min_cpus", "min_memory", "min_disks", "min_disk_size"];

/// `expect = { min_cpus = 8, min_memory = "32GiB", min_disks = 2, min_disk_size = "500GB" }`.
pub fn expectations(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Expectations {
    let Some(expect) = reader.table("expect", "`expect`", problems) else {
        return Expectations::default();
    };
    expect.check_keys(EXPECT_KEYS, problems);
    Expectations {
        min_cpus: expect
            .integer("min_cpus", 1, u32::MAX as i64, problems)
            .map(|n| n.value as u32),
        min_memory_mib: absolute_size(&expect, "min_memory", problems)
            .map(|bytes| bytes.value / MIB),
        min_disks: expect
            .integer("min_disks", 1, u32::MAX as i64, problems)
            .map(|n| n.value as u32),
        min_disk_size_bytes: absolute_size(&expect, "min_disk_size", problems)
            .map(|bytes| bytes.value),
    }
}

/// Relative paths in a file are relative to that file's directory.
pub fn resolve_path(base_dir: &Path, path: &str) -> PathBuf {
    base_dir.join(path)
}

/// Tags: lowercase words, as used in `protected.tags` and by the plan's filters.
pub fn tags(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Vec<String> {
    let mut tags = Vec::new();
    for tag in reader.string_list("tags", problems) {
        let valid = !tag.value.is_empty()
            && tag.value.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
            });
        if valid {
            tags.push(tag.value.to_string());
        } else {
            problems.error(
                tag.span,
                format!(
                    "tag `{}` may hold only lowercase letters, digits, `-`, `_` and `.`",
                    tag.value
                ),
            );
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{PowerSpec, Timeouts};
    use std::collections::BTreeSet;

    /// The keys each reader accepts, by the name of the type whose schema describes them.
    const KEY_LISTS: &[(&str, &[&str])] = &[
        ("ControllerSettings", controller::KEYS),
        ("Subnet", subnets::KEYS),
        ("IpRange", subnets::RANGE_KEYS),
        ("ReservedRange", subnets::RESERVED_KEYS),
        ("Image", images::KEYS),
        ("Artifact", images::ARTIFACT_KEYS),
        ("RootImage", images::ROOT_KEYS),
        ("StorageTemplate", storage::KEYS),
        ("DiskSelector", storage::SELECTOR_KEYS),
        ("CustomDisk", storage::DISK_KEYS),
        ("CustomPartition", storage::PARTITION_KEYS),
        ("CustomRaid", storage::RAID_KEYS),
        ("CustomVolumeGroup", storage::VOLUME_GROUP_KEYS),
        ("CustomLogicalVolume", storage::LOGICAL_VOLUME_KEYS),
        ("NetworkTemplate", network::KEYS),
        ("InterfaceSpec", network::INTERFACE_KEYS),
        ("Profile", profiles::KEYS),
        ("Expectations", EXPECT_KEYS),
        ("VendorData", deploy::VENDOR_KEYS),
        ("UserData", deploy::USER_DATA_KEYS),
        ("MachineSpec", machines::KEYS),
        ("CloneSpec", machines::CLONE_KEYS),
        ("MachineInterface", machines::INTERFACE_KEYS),
        ("Policy", policy::KEYS),
        ("Protected", policy::PROTECTED_KEYS),
        ("Timeouts", Timeouts::KEYS),
        ("RateLimits", crate::config::model::RateLimits::KEYS),
        ("EventPolicy", crate::config::model::EventPolicy::KEYS),
        ("Script", scripts::KEYS),
        ("SecretRef", power::SECRET_KEYS),
    ];

    /// The keys of the power table, by its `type`.
    const POWER_KEYS: &[(&str, &[&str])] = &[
        ("manual", &["type"]),
        ("ipmi", power::IPMI_KEYS),
        ("redfish", power::REDFISH_KEYS),
        ("webhook", power::WEBHOOK_KEYS),
        ("qemu", power::QEMU_KEYS),
    ];

    /// The property names of a schema and of its `anyOf`/`oneOf`/`allOf` parts (a flattened
    /// enum's variants, the table form of a value that may also be a string).
    fn keys_of(schema: &Json) -> BTreeSet<String> {
        let own = schema["properties"].as_object().into_iter().flatten();
        let mut keys: BTreeSet<String> = own.map(|(key, _)| key.clone()).collect();
        for combinator in ["anyOf", "oneOf", "allOf"] {
            for part in schema[combinator].as_array().into_iter().flatten() {
                keys.extend(keys_of(part));
            }
        }
        keys
    }

    fn sorted(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|key| key.to_string()).collect()
    }

    /// Every key a reader accepts is in the schema, and the schema has no key a reader
    /// refuses: it names the same keys, and refuses others (`additionalProperties: false`).
    #[test]
    fn the_schema_has_the_keys_the_readers_accept() {
        let schema = json_schema();
        assert_eq!(keys_of(&schema), sorted(TOP_LEVEL_KEYS));
        assert_eq!(schema["additionalProperties"], false);
        let definitions = &schema["definitions"];
        for (definition, keys) in KEY_LISTS {
            let found = &definitions[definition];
            assert_eq!(keys_of(found), sorted(keys), "{definition}");
            // Closed: the table itself, or each table form of a value that may be a string.
            let closed = |part: &Json| part["additionalProperties"] == false;
            let forms = ["anyOf", "oneOf"].map(|combinator| found[combinator].as_array());
            let tables: Vec<&Json> = (forms.into_iter().flatten().flatten())
                .filter(|form| form["properties"].is_object())
                .collect();
            assert!(
                closed(found) || (!tables.is_empty() && tables.into_iter().all(closed)),
                "{definition} takes unknown keys: {found}"
            );
        }
        let power = &definitions["PowerSpec"]["oneOf"];
        for (kind, keys) in POWER_KEYS {
            let variant = power
                .as_array()
                .into_iter()
                .flatten()
                .find(|variant| variant["properties"]["type"]["const"] == *kind);
            let variant = variant.unwrap_or_else(|| panic!("no power type {kind} in {power}"));
            assert_eq!(keys_of(variant), sorted(keys), "power type {kind}");
            assert_eq!(variant["additionalProperties"], false, "power type {kind}");
        }
        assert_eq!(power.as_array().map(Vec::len), Some(PowerSpec::TYPES.len()));
    }
}
