//! `[[machine]]`: one table per machine, named by its `name` key.
//!
//! An array of tables rather than `[machines.NAME]` because a fleet of thousands is usually
//! generated or adopted, and a record with a `name` field diffs and greps well; the name is then
//! validated like any other value (a DNS label), and duplicates are reported across files.

use super::{deploy, expectations, images::arch, power, reference, tags, Reference};
use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{
    Arch, CloneSpec, DeploySettings, DesiredState, Expectations, MachineInterface, PowerSpec,
};
use crate::config::read::{parse_spanned, Spanned, TableReader};
use crate::config::syntax::{Item, Span, Value};
use crate::model::{MacAddr, MachineName, Status};
use std::net::IpAddr;
use std::path::Path;

pub const KEYS: &[&str] = &[
    "name",
    "macs",
    "pxe_mac",
    "arch",
    "power",
    "profile",
    "storage",
    "network",
    "image",
    "state",
    "locked",
    "owner",
    "clone_from",
    "commission",
    "deployed",
    "tags",
    "expect",
    "interfaces",
    "comment",
    "kernel_params",
    "ephemeral_kernel_params",
    "ssh_keys",
    "user_data",
    "vendor_data",
];
pub const CLONE_KEYS: &[&str] = &["source", "storage", "interfaces"];
pub const INTERFACE_KEYS: &[&str] = &["name", "subnet", "ip", "mac"];

#[derive(Debug)]
pub struct MachineDecl {
    pub name: Spanned<MachineName>,
    pub macs: Vec<Spanned<MacAddr>>,
    pub pxe_mac: Option<Spanned<MacAddr>>,
    pub arch: Option<Arch>,
    pub power: Option<PowerSpec>,
    /// Where `power` was written, for duplicate BMC addresses.
    pub power_span: Option<Span>,
    pub profile: Option<Reference>,
    pub storage: Option<Reference>,
    pub network: Option<Reference>,
    pub image: Option<Reference>,
    pub state: Option<Spanned<DesiredState>>,
    pub locked: Option<Spanned<bool>>,
    pub owner: Option<String>,
    pub clone_from: Option<CloneDecl>,
    pub commission: Option<Spanned<bool>>,
    pub live: Option<Spanned<bool>>,
    pub tags: Vec<String>,
    pub expect: Expectations,
    pub interfaces: Vec<InterfaceDecl>,
    pub comment: Option<String>,
    /// Its own deployment settings, if it gives any (most machines do not: boxed, a machine
    /// that gives none pays 8 bytes instead of 200); the profile's fill in what these leave out.
    pub deploy: Option<Box<DeploySettings>>,
}

#[derive(Debug)]
pub struct CloneDecl {
    pub spec: CloneSpec,
    pub source_span: Span,
    pub span: Span,
}

#[derive(Debug)]
pub struct InterfaceDecl {
    pub interface: MachineInterface,
    pub span: Span,
    pub subnet_span: Span,
    pub ip_span: Option<Span>,
}

pub fn read_all(
    root: &TableReader<'_, '_>,
    base_dir: &Path,
    machines: &mut Vec<MachineDecl>,
    problems: &mut Problems,
) {
    let Some(item) = root.item("machine") else {
        return;
    };
    let Value::Array(array) = &item.value else {
        let problem = Problem::new(item.span, "`machine` must be an array of tables");
        problems.push(problem.help("write each machine under its own [[machine]] header"));
        return;
    };
    for item in array.iter() {
        read_element(&item, base_dir, machines, problems);
    }
}

/// One `[[machine]]` table.
fn read_element(
    item: &Item<'_, '_>,
    base_dir: &Path,
    machines: &mut Vec<MachineDecl>,
    problems: &mut Problems,
) {
    if let Some(table) = TableReader::from_item(item, "a machine", problems) {
        machines.extend(read(&table, base_dir, problems));
    }
}

fn read(
    generic: &TableReader<'_, '_>,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<MachineDecl> {
    let name: Option<Spanned<MachineName>> = generic
        .required_string("name", problems)
        .and_then(|name| parse_spanned(name, problems));
    let reader = match &name {
        Some(name) => generic.named("machine", name.value.as_str()),
        None => TableReader::new(generic.table, generic.span, "this machine"),
    };
    reader.check_keys(KEYS, problems);
    let power_span = reader.item("power").map(|item| item.span);
    let machine = MachineDecl {
        macs: macs(&reader, problems),
        pxe_mac: reader.parsed("pxe_mac", problems),
        arch: arch(&reader, "arch", problems),
        power: power::read(&reader, base_dir, problems),
        power_span,
        profile: reference(&reader, "profile", problems),
        storage: reference(&reader, "storage", problems),
        network: reference(&reader, "network", problems),
        image: reference(&reader, "image", problems),
        state: desired_state(&reader, problems),
        locked: reader.boolean("locked", problems),
        owner: reader.owned_string("owner", problems),
        clone_from: clone_from(&reader, problems),
        commission: reader.boolean("commission", problems),
        live: reader.boolean("deployed", problems),
        tags: tags(&reader, problems),
        expect: expectations(&reader, problems),
        interfaces: interfaces(&reader, problems),
        comment: reader.owned_string("comment", problems),
        deploy: Some(deploy::read(&reader, base_dir, problems))
            .filter(|deploy| !deploy.is_empty())
            .map(Box::new),
        name: name?,
    };
    Some(machine)
}

fn macs(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Vec<Spanned<MacAddr>> {
    let list = reader.string_list("macs", problems);
    list.into_iter()
        .filter_map(|mac| parse_spanned(mac, problems))
        .collect()
}

/// Only resting statuses a plan can drive a machine to; the others get a reason.
fn desired_state(
    reader: &TableReader<'_, '_>,
    problems: &mut Problems,
) -> Option<Spanned<DesiredState>> {
    let text = reader.string("state", problems)?;
    if let Some(state) = DesiredState::parse(text.value) {
        return Some(Spanned::new(state, text.span));
    }
    let reason = match text.value.parse::<Status>() {
        Ok(status) if status.is_in_progress() => format!(
            "`{}` is an in-progress status, not a state to ask for",
            text.value
        ),
        Ok(status) if status.is_failed() => {
            format!("`{}` is a failure, not a state to ask for", text.value)
        }
        Ok(_) => format!(
            "`{}` is observed by the controller, not a state to ask for",
            text.value
        ),
        Err(_) => format!("`{}` is not a machine state", text.value),
    };
    let problem = Problem::new(text.span, reason);
    let suggestion = crate::config::read::with_suggestion(problem, text.value, DesiredState::NAMES);
    problems.push(suggestion);
    None
}

/// `clone_from = "m1"` (storage and interfaces) or `{ source = "m1", storage = true }`.
fn clone_from(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Option<CloneDecl> {
    let item = reader.item("clone_from")?;
    if let Value::String(source) = &item.value {
        let source = parse_spanned::<MachineName>(Spanned::new(*source, item.span), problems)?;
        let spec = CloneSpec {
            source: source.value,
            storage: true,
            interfaces: true,
        };
        return Some(CloneDecl {
            spec,
            source_span: item.span,
            span: item.span,
        });
    }
    let table = TableReader::from_item(&item, "`clone_from`", problems)?;
    table.check_keys(CLONE_KEYS, problems);
    let storage = table
        .boolean("storage", problems)
        .is_some_and(|flag| flag.value);
    let interfaces = table
        .boolean("interfaces", problems)
        .is_some_and(|flag| flag.value);
    let source: Spanned<MachineName> = table
        .required_string("source", problems)
        .and_then(|text| parse_spanned(text, problems))?;
    if !storage && !interfaces {
        let problem = Problem::new(item.span, "either storage or interfaces must be chosen");
        problems.push(problem.help("add storage = true and/or interfaces = true"));
    }
    let spec = CloneSpec {
        source: source.value,
        storage,
        interfaces,
    };
    Some(CloneDecl {
        spec,
        source_span: source.span,
        span: item.span,
    })
}

/// `interfaces = [{ name = "eth0", subnet = "rack1", ip = "10.0.1.10" }]`.
fn interfaces(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Vec<InterfaceDecl> {
    let items = reader.array("interfaces", problems).unwrap_or_default();
    items
        .iter()
        .filter_map(|item| interface(&item, problems))
        .collect()
}

fn interface(item: &Item<'_, '_>, problems: &mut Problems) -> Option<InterfaceDecl> {
    let table = TableReader::from_item(item, "an interface", problems)?;
    table.check_keys(INTERFACE_KEYS, problems);
    let ip: Option<Spanned<IpAddr>> = table
        .string("ip", problems)
        .and_then(|text| crate::config::read::ip_address(text, problems));
    let mac: Option<Spanned<MacAddr>> = table.parsed("mac", problems);
    let name = table.required_string("name", problems);
    let subnet = table.required_string("subnet", problems)?;
    let interface = MachineInterface {
        name: name?.value.to_string(),
        subnet: subnet.value.to_string(),
        ip: ip.as_ref().map(|ip| ip.value),
        mac: mac.map(|mac| mac.value),
    };
    Some(InterfaceDecl {
        interface,
        span: item.span,
        subnet_span: subnet.span,
        ip_span: ip.map(|ip| ip.span),
    })
}
