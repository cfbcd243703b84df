//! Checks between the interfaces of one network template: what each interface may stand on,
//! following MAAS's interface forms (maasserver/forms/interface.py) where it has a rule.
//!
//! Run once every name and link resolves (the reader's own checks passed), so every member
//! and parent named here is an interface of the template.

use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{InterfaceKind, InterfaceSpec, LinkMode, NetworkTemplate};
use crate::config::syntax::Span;
use std::collections::HashMap;

/// The MTU an interface has when the template gives none (Ethernet's).
pub const DEFAULT_MTU: u32 = 1500;

/// One template's interfaces with where each was written.
struct Declared<'t> {
    interfaces: &'t [InterfaceSpec],
    spans: &'t [Span],
    mtu_spans: &'t [Option<Span>],
    by_name: HashMap<&'t str, usize>,
}

impl<'t> Declared<'t> {
    fn get(&self, name: &str) -> Option<(usize, &'t InterfaceSpec)> {
        let at = *self.by_name.get(name)?;
        Some((at, &self.interfaces[at]))
    }
}

pub(super) fn check(
    template: &NetworkTemplate,
    spans: &[Span],
    mtu_spans: &[Option<Span>],
    problems: &mut Problems,
) {
    let declared = Declared {
        interfaces: &template.interfaces,
        spans,
        mtu_spans,
        by_name: template
            .interfaces
            .iter()
            .enumerate()
            .map(|(at, interface)| (interface.name.as_str(), at))
            .collect(),
    };
    check_members(&declared, problems);
    check_vlan_parents(&declared, problems);
    check_cycles(&declared, problems);
}

fn members_of(interface: &InterfaceSpec) -> &[String] {
    match &interface.kind {
        InterfaceKind::Bond { members, .. } | InterfaceKind::Bridge { members, .. } => members,
        _ => &[],
    }
}

fn kind_name(kind: &InterfaceKind) -> &'static str {
    match kind {
        InterfaceKind::Physical => "physical",
        InterfaceKind::Bond { .. } => "bond",
        InterfaceKind::Bridge { .. } => "bridge",
        InterfaceKind::Vlan { .. } => "vlan",
    }
}

/// Each member in one bond or bridge at most, of a kind its owner can hold, with no address of
/// its own; a bond's members all on one network.
fn check_members(declared: &Declared, problems: &mut Problems) {
    let mut owner_of: HashMap<&str, &str> = HashMap::new();
    for (at, owner) in declared.interfaces.iter().enumerate() {
        let span = declared.spans[at];
        let is_bond = matches!(owner.kind, InterfaceKind::Bond { .. });
        for member_name in members_of(owner) {
            let Some((member_at, member)) = declared.get(member_name) else {
                continue;
            };
            if let Some(first) = owner_of.insert(member_name, &owner.name) {
                problems.push(
                    Problem::new(
                        span,
                        format!("interface `{member_name}` is already a member of `{first}`"),
                    )
                    .help("an interface belongs to one bond or bridge at most"),
                );
            }
            let member_kind = kind_name(&member.kind);
            if is_bond && member_kind != "physical" {
                problems.error(
                    span,
                    format!(
                        "bond `{}` has member `{member_name}`, a {member_kind}: a bond's members are physical interfaces",
                        owner.name
                    ),
                );
            }
            if !is_bond && member_kind == "bridge" {
                problems.error(
                    span,
                    format!(
                        "bridge `{}` has member `{member_name}`, another bridge: a bridge cannot hold a bridge",
                        owner.name
                    ),
                );
            }
            if member.link != LinkMode::LinkUp {
                let problem = Problem::new(
                    declared.spans[member_at],
                    format!(
                        "`{member_name}` is a member of `{}`, so it takes no address of its own (its link is `{}`)",
                        owner.name,
                        member.link.as_str()
                    ),
                );
                problems.push(problem.help(format!(
                    "give the address to `{}`, and write link = \"link_up\" here",
                    owner.name
                )));
            }
        }
        if is_bond {
            check_same_network(declared, owner, span, problems);
        }
    }
}

/// MAAS: "All parents must belong to the same VLAN." Here a member's network is the subnet it
/// names (with `link = "link_up"`); members that name none are left out.
fn check_same_network(
    declared: &Declared,
    bond: &InterfaceSpec,
    span: Span,
    problems: &mut Problems,
) {
    let networks: Vec<(&str, &str)> = members_of(bond)
        .iter()
        .filter_map(|name| declared.get(name))
        .filter_map(|(_, member)| Some((member.name.as_str(), member.subnet.as_deref()?)))
        .collect();
    let Some((first_member, first_subnet)) = networks.first() else {
        return;
    };
    if let Some((other_member, other_subnet)) =
        networks.iter().find(|(_, subnet)| subnet != first_subnet)
    {
        problems.error(
            span,
            format!(
                "all members of bond `{}` must be on the same network: `{first_member}` is on subnet `{first_subnet}`, `{other_member}` on `{other_subnet}`",
                bond.name
            ),
        );
    }
}

/// A VLAN stands on a physical interface, a bond or a bridge (not another VLAN, not a bond's
/// member), with an MTU no larger than its parent's.
fn check_vlan_parents(declared: &Declared, problems: &mut Problems) {
    let bond_members: HashMap<&str, &str> = declared
        .interfaces
        .iter()
        .filter(|owner| matches!(owner.kind, InterfaceKind::Bond { .. }))
        .flat_map(|owner| {
            members_of(owner)
                .iter()
                .map(move |member| (member.as_str(), owner.name.as_str()))
        })
        .collect();
    for (at, vlan) in declared.interfaces.iter().enumerate() {
        let InterfaceKind::Vlan { parent, .. } = &vlan.kind else {
            continue;
        };
        let Some((_, parent_spec)) = declared.get(parent) else {
            continue;
        };
        let span = declared.spans[at];
        if matches!(parent_spec.kind, InterfaceKind::Vlan { .. }) {
            problems.error(
                span,
                format!(
                    "VLAN `{}` stands on `{parent}`, another VLAN: a VLAN's parent is a physical interface, a bond or a bridge",
                    vlan.name
                ),
            );
        }
        if let Some(bond) = bond_members.get(parent.as_str()) {
            problems.error(
                span,
                format!(
                    "VLAN `{}` stands on `{parent}`, which is a member of bond `{bond}`: put the VLAN on `{bond}`",
                    vlan.name
                ),
            );
        }
        check_vlan_mtu(declared, at, parent_spec, problems);
    }
}

fn check_vlan_mtu(declared: &Declared, at: usize, parent: &InterfaceSpec, problems: &mut Problems) {
    let vlan = &declared.interfaces[at];
    let (Some(mtu), Some(span)) = (vlan.mtu, declared.mtu_spans[at]) else {
        return;
    };
    let parent_mtu = parent.mtu.unwrap_or(DEFAULT_MTU);
    if mtu > parent_mtu {
        let written = if parent.mtu.is_some() {
            ""
        } else {
            " (the default)"
        };
        let problem = Problem::new(
            span,
            format!(
                "VLAN `{}` has mtu {mtu}, above the mtu of its parent `{}`: {parent_mtu}{written}",
                vlan.name, parent.name
            ),
        );
        problems.push(problem.help(format!("raise the mtu of `{}` too", parent.name)));
    }
}

/// No interface may stand on itself through VLANs and bridges (`br0` holding `vlan5`, whose
/// parent is `br0`).
fn check_cycles(declared: &Declared, problems: &mut Problems) {
    for (at, start) in declared.interfaces.iter().enumerate() {
        if stands_on(declared, start, &start.name) {
            problems.error(
                declared.spans[at],
                format!(
                    "interface `{}` stands on itself (through its members or parent)",
                    start.name
                ),
            );
        }
    }
}

/// Whether `interface` stands, directly or not, on `target`: a walk that visits each interface
/// once (a walk along every path would be exponential in a template built to be).
fn stands_on(declared: &Declared, interface: &InterfaceSpec, target: &str) -> bool {
    let mut visited = vec![false; declared.interfaces.len()];
    let mut pending = vec![interface];
    while let Some(current) = pending.pop() {
        for name in below(current) {
            if name == target {
                return true;
            }
            if let Some((at, next)) = declared.get(name) {
                if !std::mem::replace(&mut visited[at], true) {
                    pending.push(next);
                }
            }
        }
    }
    false
}

/// What an interface stands on: a VLAN's parent, a bond's or bridge's members.
fn below(interface: &InterfaceSpec) -> &[String] {
    match &interface.kind {
        InterfaceKind::Vlan { parent, .. } => std::slice::from_ref(parent),
        _ => members_of(interface),
    }
}
