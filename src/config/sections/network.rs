//! `[network_templates.NAME]`: interfaces (physical, bond, bridge, VLAN) and how each links.

use super::{reference, Reference};
use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{
    BondMode, InterfaceKind, InterfaceSpec, LacpRate, LinkMode, NetworkTemplate,
};
use crate::config::read::{check_choice, with_suggestion, Spanned, TableReader};
use crate::config::syntax::Span;
use std::collections::HashMap;

mod relations;

pub const KEYS: &[&str] = &["interfaces"];
pub const INTERFACE_KEYS: &[&str] = &[
    "name",
    "type",
    "mtu",
    "link",
    "subnet",
    "members",
    "bond_mode",
    "miimon",
    "updelay",
    "downdelay",
    "lacp_rate",
    "xmit_hash_policy",
    "num_grat_arp",
    "stp",
    "forward_delay",
    "parent",
    "id",
];
pub const INTERFACE_TYPES: &[&str] = &["physical", "bond", "bridge", "vlan"];
/// The smallest MTU IPv4 allows a link to carry (RFC 791 reassembly minimum plus headers).
pub const MINIMUM_MTU: i64 = 552;

/// Which keys belong to which interface type.
const TYPE_KEYS: &[(&str, &[&str])] = &[
    (
        "bond",
        &[
            "bond_mode",
            "miimon",
            "updelay",
            "downdelay",
            "lacp_rate",
            "xmit_hash_policy",
            "num_grat_arp",
        ],
    ),
    ("bridge", &["stp", "forward_delay"]),
    ("vlan", &["parent", "id"]),
];

#[derive(Debug)]
pub struct NetworkDecl {
    pub name: Spanned<String>,
    pub template: NetworkTemplate,
    /// Every `subnet = "..."` of the interfaces, for the cross-check.
    pub subnet_references: Vec<Reference>,
}

pub fn read(
    name: Spanned<String>,
    reader: TableReader<'_, '_>,
    problems: &mut Problems,
) -> NetworkDecl {
    reader.check_keys(KEYS, problems);
    let mut template = NetworkTemplate {
        name: name.value.clone(),
        interfaces: Vec::new(),
    };
    let mut subnet_references = Vec::new();
    let mut names: Vec<Spanned<String>> = Vec::new();
    let mut links: Vec<(Spanned<String>, Span)> = Vec::new();
    let mut mtu_spans: Vec<Option<Span>> = Vec::new();
    for item in reader
        .array("interfaces", problems)
        .unwrap_or_default()
        .iter()
    {
        let Some(table) = TableReader::from_item(&item, "an interface", problems) else {
            continue;
        };
        let Some(interface) = read_interface(&table, &mut subnet_references, &mut links, problems)
        else {
            continue;
        };
        names.push(Spanned::new(interface.name.clone(), table.span));
        mtu_spans.push(table.key_span("mtu"));
        template.interfaces.push(interface);
    }
    if reader.item("interfaces").is_none() {
        problems.error(
            reader.span,
            format!("{} has no `interfaces`", reader.context()),
        );
    }
    check_unique_names(&names, problems);
    check_links(&names, &links, problems);
    // Interfaces that did not read are left out of the template, and the relations of those
    // that did are checked: members and parents that name nothing were reported just above.
    let spans: Vec<Span> = names.iter().map(|name| name.span).collect();
    relations::check(&template, &spans, &mtu_spans, problems);
    NetworkDecl {
        name,
        template,
        subnet_references,
    }
}

fn read_interface(
    table: &TableReader<'_, '_>,
    subnet_references: &mut Vec<Reference>,
    links: &mut Vec<(Spanned<String>, Span)>,
    problems: &mut Problems,
) -> Option<InterfaceSpec> {
    table.check_keys(INTERFACE_KEYS, problems);
    let name = table.required_string("name", problems)?;
    let kind_name = table
        .string("type", problems)
        .map_or("physical", |kind| kind.value);
    if let Some(kind) = table.string("type", problems) {
        if !check_choice("type", &kind, INTERFACE_TYPES, problems) {
            return None;
        }
    }
    check_type_keys(table, kind_name, problems);
    let subnet = reference(table, "subnet", problems);
    let link = link_mode(table, subnet.as_ref(), problems);
    for member in table
        .string_list("members", problems)
        .into_iter()
        .chain(table.string("parent", problems))
    {
        links.push((
            Spanned::new(member.value.to_string(), member.span),
            table.span,
        ));
    }
    let kind = interface_kind(table, kind_name, problems)?;
    let interface = InterfaceSpec {
        name: name.value.to_string(),
        kind,
        mtu: table
            .integer("mtu", MINIMUM_MTU, 65535, problems)
            .map(|mtu| mtu.value as u32),
        link,
        subnet: subnet.as_ref().map(|subnet| subnet.value.clone()),
    };
    subnet_references.extend(subnet);
    Some(interface)
}

fn check_type_keys(table: &TableReader<'_, '_>, kind: &str, problems: &mut Problems) {
    for (owner, keys) in TYPE_KEYS.iter().filter(|(owner, _)| *owner != kind) {
        for key in keys.iter().copied() {
            if let Some(span) = table.key_span(key) {
                problems.error(
                    span,
                    format!("`{key}` belongs to `{owner}` interfaces, and this one is a `{kind}`"),
                );
            }
        }
    }
    let wants_members = matches!(kind, "bond" | "bridge");
    match (wants_members, table.key_span("members")) {
        (false, Some(span)) => {
            problems.error(span, format!("a `{kind}` interface has no `members`"))
        }
        (true, None) => problems.error(table.span, format!("a `{kind}` interface needs `members`")),
        _ => {}
    }
}

/// `auto` and `static` take an address from a subnet, so they need one; without a subnet the
/// default is `link_up`, with one `auto`.
fn link_mode(
    table: &TableReader<'_, '_>,
    subnet: Option<&Reference>,
    problems: &mut Problems,
) -> LinkMode {
    let default = if subnet.is_some() {
        LinkMode::Auto
    } else {
        LinkMode::LinkUp
    };
    let Some(text) = table.choice("link", LinkMode::NAMES, problems) else {
        return default;
    };
    let mode = LinkMode::parse(text.value).unwrap_or(default);
    if matches!(mode, LinkMode::Auto | LinkMode::Static) && subnet.is_none() {
        let problem = Problem::new(
            text.span,
            format!(
                "link `{}` needs a `subnet` to take its address from",
                text.value
            ),
        );
        problems.push(problem.help("add subnet = \"NAME\", or use link = \"dhcp\" or \"link_up\""));
    }
    mode
}

fn interface_kind(
    table: &TableReader<'_, '_>,
    kind: &str,
    problems: &mut Problems,
) -> Option<InterfaceKind> {
    let members = || {
        table
            .string_list("members", &mut Problems::default())
            .iter()
            .map(|m| m.value.to_string())
            .collect()
    };
    let kind = match kind {
        "bond" => bond(table, members(), problems)?,
        "bridge" => bridge(table, members(), problems),
        "vlan" => InterfaceKind::Vlan {
            parent: table.required_string("parent", problems)?.value.to_string(),
            id: table
                .required("id", problems)
                .and(table.integer("id", 1, 4094, problems))?
                .value as u16,
        },
        _ => InterfaceKind::Physical,
    };
    Some(kind)
}

/// A bond, with MAAS's defaults filled in for the parameters its mode uses (and only those).
fn bond(
    table: &TableReader<'_, '_>,
    members: Vec<String>,
    problems: &mut Problems,
) -> Option<InterfaceKind> {
    let bond_mode = bond_mode(table, problems)?;
    let mut milliseconds = |key| {
        table
            .integer(key, 0, i64::from(u32::MAX), problems)
            .map(|ms| ms.value as u32)
    };
    let miimon = milliseconds("miimon").unwrap_or_else(InterfaceKind::default_miimon);
    let updelay = milliseconds("updelay").unwrap_or(0);
    let downdelay = milliseconds("downdelay").unwrap_or(0);
    check_delays(table, miimon, problems);
    Some(InterfaceKind::Bond {
        members,
        bond_mode,
        miimon,
        updelay,
        downdelay,
        lacp_rate: lacp_rate(table, bond_mode, problems),
        xmit_hash_policy: xmit_hash_policy(table, bond_mode, problems),
        num_grat_arp: num_grat_arp(table, bond_mode, problems),
    })
}

/// The kernel counts up and down delays in whole link-monitoring intervals: it rounds any other
/// value down with a warning nobody reads, so a value that is not a multiple is refused here.
fn check_delays(table: &TableReader<'_, '_>, miimon: u32, problems: &mut Problems) {
    for key in ["updelay", "downdelay"] {
        let Some(delay) = table.integer(key, 0, i64::from(u32::MAX), &mut Problems::default())
        else {
            continue;
        };
        if miimon > 0 && delay.value % i64::from(miimon) != 0 {
            problems.error(
                delay.span,
                format!(
                    "`{key}` must be a multiple of `miimon` ({miimon} ms), found {}",
                    delay.value
                ),
            );
        }
    }
}

fn bridge(
    table: &TableReader<'_, '_>,
    members: Vec<String>,
    problems: &mut Problems,
) -> InterfaceKind {
    let stp = table.boolean("stp", problems).is_some_and(|stp| stp.value);
    let forward_delay = table.integer("forward_delay", 0, 30, problems);
    if let Some(delay) = forward_delay
        .as_ref()
        .filter(|delay| stp && delay.value < 2)
    {
        problems.error(
            delay.span,
            format!(
                "with `stp = true` the kernel takes a `forward_delay` of 2 to 30 seconds, found {}",
                delay.value
            ),
        );
    }
    InterfaceKind::Bridge {
        members,
        stp,
        forward_delay: forward_delay.map_or_else(InterfaceKind::default_forward_delay, |delay| {
            delay.value as u32
        }),
    }
}

fn bond_mode(table: &TableReader<'_, '_>, problems: &mut Problems) -> Option<BondMode> {
    let Some(mode) = table.string("bond_mode", problems) else {
        return Some(BondMode::default());
    };
    check_choice("bond_mode", &mode, BondMode::NAMES, problems)
        .then(|| BondMode::parse(mode.value))
        .flatten()
}

/// A key that only some bond modes use: an error where the mode does not.
fn only_in_modes(
    table: &TableReader<'_, '_>,
    key: &str,
    applies: bool,
    modes: &str,
    problems: &mut Problems,
) -> bool {
    match table.item(key).map(|value| value.span) {
        Some(span) if !applies => {
            problems.error(span, format!("`{key}` applies only to bond_mode {modes}"));
            false
        }
        _ => applies,
    }
}

/// LACP rate only means something in 802.3ad mode; there MAAS's default is fast.
fn lacp_rate(
    table: &TableReader<'_, '_>,
    mode: BondMode,
    problems: &mut Problems,
) -> Option<LacpRate> {
    let applies = mode == BondMode::Ieee8023ad;
    if !only_in_modes(table, "lacp_rate", applies, "\"802.3ad\"", problems) {
        return None;
    }
    let rate = table.choice("lacp_rate", &["fast", "slow"], problems);
    Some(match rate.map(|rate| rate.value) {
        Some("slow") => LacpRate::Slow,
        _ => LacpRate::Fast,
    })
}

/// The transmit hash policy of the modes that hash; there the default is layer2.
fn xmit_hash_policy(
    table: &TableReader<'_, '_>,
    mode: BondMode,
    problems: &mut Problems,
) -> Option<String> {
    let modes = "\"balance-xor\", \"802.3ad\" and \"balance-tlb\"";
    if !only_in_modes(
        table,
        "xmit_hash_policy",
        mode.hashes_transmits(),
        modes,
        problems,
    ) {
        return None;
    }
    let policy = table.choice(
        "xmit_hash_policy",
        InterfaceKind::XMIT_HASH_POLICIES,
        problems,
    );
    Some(policy.map_or("layer2", |policy| policy.value).to_string())
}

/// Gratuitous ARPs after a failover: active-backup only (MAAS drops it elsewhere); default 1.
fn num_grat_arp(
    table: &TableReader<'_, '_>,
    mode: BondMode,
    problems: &mut Problems,
) -> Option<u8> {
    let applies = mode.sends_gratuitous_arps();
    if !only_in_modes(
        table,
        "num_grat_arp",
        applies,
        "\"active-backup\"",
        problems,
    ) {
        return None;
    }
    let count = table.integer("num_grat_arp", 0, 255, problems);
    Some(count.map_or(1, |count| count.value as u8))
}

fn check_unique_names(names: &[Spanned<String>], problems: &mut Problems) {
    let mut first: HashMap<&str, Span> = HashMap::new();
    for name in names {
        if let Some(earlier) = first.insert(&name.value, name.span) {
            let problem = Problem::new(
                name.span,
                format!("interface `{}` is declared twice", name.value),
            );
            problems.push(problem.related(earlier, "first declared"));
        }
    }
}

/// Bond and bridge members and VLAN parents must be interfaces of the same template.
fn check_links(
    names: &[Spanned<String>],
    links: &[(Spanned<String>, Span)],
    problems: &mut Problems,
) {
    let known: Vec<&str> = names.iter().map(|name| name.value.as_str()).collect();
    for (target, _) in links {
        if !known.contains(&target.value.as_str()) {
            let problem = Problem::new(
                target.span,
                format!("no interface `{}` in this template", target.value),
            );
            problems.push(with_suggestion(problem, &target.value, &known));
        }
    }
}
