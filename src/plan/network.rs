//! Network configurations: a network template rendered for one machine (pure).
//!
//! - Every physical interface is matched by the MAC commissioning recorded (or the MAC the
//!   machine's own `interfaces` entry gives), and renamed to the template's name: the installed
//!   OS names NICs otherwise than the commissioning environment did, MACs do not change.
//! - Bonds and bridges take the MAC of their first member (as MAAS does), so DHCP reservations
//!   and switch port security see one stable address whatever the member order at boot.
//! - An interface with an allocated address (link `auto` or `static`, or an entry of the
//!   machine's own `interfaces`) gets it with the prefix length of its subnet, that subnet's DNS
//!   servers and search domain; `dhcp` asks DHCP (v4, or v6 on an IPv6 subnet); `link_up` only
//!   brings the link up.
//! - The default route: per address family, via the gateway of the first interface, in template
//!   order, that carries an address (auto or static) on a subnet with a gateway. One default
//!   route per family, never two competing ones; DHCP links get theirs from the DHCP server.
//!
//! The output is [`NetworkConfig`] (its JSON is the plan's), [`NetworkConfig::netplan_yaml`]
//! (netplan v2, what Ubuntu's and Debian's cloud images read) and a compact table.

use super::{Allocation, ObservedInterface};
use crate::config::{
    BondMode, Fleet, InterfaceKind, InterfaceSpec, LacpRate, LinkMode, MachineSpec,
    NetworkTemplate, Subnet,
};
use crate::model::MacAddr;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

mod netplan;
mod table;
#[cfg(test)]
mod tests;

/// One machine's rendered network configuration (its JSON form is this struct).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The template it was rendered from.
    pub template: String,
    /// In template order.
    pub interfaces: Vec<RenderedInterface>,
}

/// One interface as the installed system configures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedInterface {
    /// The name the installed system gives it (`set-name` for physical interfaces).
    pub name: String,
    #[serde(flatten)]
    pub kind: RenderedKind,
    /// Physical: the MAC it is matched by; bond and bridge: the MAC it takes; VLAN: none
    /// (its parent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// How it links: an allocated address makes it `auto` or `static` whatever the template
    /// said (the machine's own `interfaces` entry wins).
    pub link: LinkMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Address and prefix length, such as "10.0.0.5/24".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dhcp4: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dhcp6: bool,
    /// The default routes through this interface (at most one per address family).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RenderedKind {
    Physical,
    Bond {
        members: Vec<String>,
        parameters: BondParameters,
    },
    Vlan {
        parent: String,
        id: u16,
    },
    Bridge {
        members: Vec<String>,
        parameters: BridgeParameters,
    },
}

/// A bond's parameters: the ones its mode uses, MAAS's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BondParameters {
    pub mode: BondMode,
    /// Milliseconds.
    pub miimon: u32,
    pub updelay: u32,
    pub downdelay: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacp_rate: Option<LacpRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xmit_hash_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_grat_arp: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeParameters {
    pub stp: bool,
    /// Seconds.
    pub forward_delay: u32,
}

/// A route: `to` is a network ("0.0.0.0/0" for the default route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub to: IpNet,
    pub via: IpAddr,
}

/// Why a template does not render for a machine (a plan error for that machine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
    /// The template names a physical interface the machine does not have.
    #[error("network template `{template}` has interface `{interface}`, and the machine has {}", describe_interfaces(.available))]
    MissingInterface {
        template: String,
        interface: String,
        /// The machine's interfaces as "name (mac)".
        available: Vec<String>,
    },
    /// An auto or static interface with no address allocated (the allocation's own problem
    /// says why).
    #[error(
        "interface `{interface}` links `{link}` on subnet `{subnet}` but has no address allocated"
    )]
    MissingAddress {
        interface: String,
        link: &'static str,
        subnet: String,
    },
    /// An address allocated to an interface the template does not have.
    #[error("the machine gives interface `{interface}` an address ({ip}), and network template `{template}` has no interface `{interface}`")]
    UnknownInterface {
        template: String,
        interface: String,
        ip: IpAddr,
    },
}

fn describe_interfaces(available: &[String]) -> String {
    if available.is_empty() {
        "no commissioned interfaces (commission it, or give `mac` in its `interfaces`)".to_string()
    } else {
        available.join(", ")
    }
}

/// Renders `template` for a machine with the commissioned `interfaces` and the static
/// `addresses` allocated to it (`fleet` gives the subnets: prefix, gateway, DNS, domain).
///
/// The machine (whose own `interfaces = [{ name, mac }]` override commissioned MACs) is the
/// one the addresses belong to; with no address there is nothing of the machine's to apply,
/// since every such entry asks for an address. [`render_machine_network`] takes it explicitly.
pub fn render_network(
    template: &NetworkTemplate,
    interfaces: &[ObservedInterface],
    addresses: &[&Allocation],
    fleet: &Fleet,
) -> Result<NetworkConfig, NetworkError> {
    let machine = addresses
        .first()
        .and_then(|allocation| fleet.machine(allocation.machine.as_str()));
    render_machine_network(template, machine, interfaces, addresses, fleet)
}

/// [`render_network`] for a known machine.
pub fn render_machine_network(
    template: &NetworkTemplate,
    machine: Option<&MachineSpec>,
    interfaces: &[ObservedInterface],
    addresses: &[&Allocation],
    fleet: &Fleet,
) -> Result<NetworkConfig, NetworkError> {
    check_addresses_fit(template, addresses)?;
    let macs = resolve_macs(template, machine, interfaces)?;
    let mut rendered = Vec::with_capacity(template.interfaces.len());
    for spec in &template.interfaces {
        let allocation = addresses
            .iter()
            .find(|allocation| allocation.interface == spec.name);
        let mut interface = RenderedInterface {
            name: spec.name.clone(),
            kind: rendered_kind(&spec.kind),
            mac: macs.get(spec.name.as_str()).copied(),
            mtu: spec.mtu,
            link: spec.link,
            subnet: spec.subnet.clone(),
            addresses: Vec::new(),
            dhcp4: false,
            dhcp6: false,
            routes: Vec::new(),
            nameservers: Vec::new(),
            search: Vec::new(),
        };
        address(&mut interface, allocation.copied(), fleet)?;
        rendered.push(interface);
    }
    add_default_routes(&mut rendered, fleet);
    Ok(NetworkConfig {
        template: template.name.clone(),
        interfaces: rendered,
    })
}

/// Every allocated address belongs to an interface of the template.
fn check_addresses_fit(
    template: &NetworkTemplate,
    addresses: &[&Allocation],
) -> Result<(), NetworkError> {
    let stray = addresses.iter().find(|allocation| {
        !template
            .interfaces
            .iter()
            .any(|spec| spec.name == allocation.interface)
    });
    match stray {
        Some(allocation) => Err(NetworkError::UnknownInterface {
            template: template.name.clone(),
            interface: allocation.interface.clone(),
            ip: allocation.ip,
        }),
        None => Ok(()),
    }
}

/// The MAC of every interface that has one: physical ones from the machine's own entry or
/// commissioning, bonds and bridges from their own entry or their first member.
fn resolve_macs<'t>(
    template: &'t NetworkTemplate,
    machine: Option<&MachineSpec>,
    observed: &[ObservedInterface],
) -> Result<BTreeMap<&'t str, MacAddr>, NetworkError> {
    let declared = |name: &str| {
        machine
            .into_iter()
            .flat_map(|machine| &machine.interfaces)
            .find(|entry| entry.name == name)
            .and_then(|entry| entry.mac)
    };
    let mut macs = BTreeMap::new();
    for spec in &template.interfaces {
        if matches!(spec.kind, InterfaceKind::Physical) {
            let mac = declared(&spec.name)
                .or_else(|| commissioned_mac(observed, &spec.name))
                .ok_or_else(|| missing(template, spec, observed))?;
            macs.insert(spec.name.as_str(), mac);
        }
    }
    // Bonds and bridges after their members: as many passes as the template is deep.
    for _ in 0..template.interfaces.len() {
        for spec in &template.interfaces {
            let members = match &spec.kind {
                InterfaceKind::Bond { members, .. } | InterfaceKind::Bridge { members, .. } => {
                    members
                }
                _ => continue,
            };
            let first_member = members.first().and_then(|name| macs.get(name.as_str()));
            if let Some(mac) = declared(&spec.name).or(first_member.copied()) {
                macs.insert(spec.name.as_str(), mac);
            }
        }
    }
    Ok(macs)
}

fn commissioned_mac(observed: &[ObservedInterface], name: &str) -> Option<MacAddr> {
    observed
        .iter()
        .find(|interface| interface.name == name)
        .map(|interface| interface.mac)
}

fn missing(
    template: &NetworkTemplate,
    spec: &InterfaceSpec,
    observed: &[ObservedInterface],
) -> NetworkError {
    NetworkError::MissingInterface {
        template: template.name.clone(),
        interface: spec.name.clone(),
        available: observed
            .iter()
            .map(|interface| format!("{} ({})", interface.name, interface.mac))
            .collect(),
    }
}

fn rendered_kind(kind: &InterfaceKind) -> RenderedKind {
    match kind {
        InterfaceKind::Physical => RenderedKind::Physical,
        InterfaceKind::Bond {
            members,
            bond_mode,
            miimon,
            updelay,
            downdelay,
            lacp_rate,
            xmit_hash_policy,
            num_grat_arp,
        } => RenderedKind::Bond {
            members: members.clone(),
            parameters: BondParameters {
                mode: *bond_mode,
                miimon: *miimon,
                updelay: *updelay,
                downdelay: *downdelay,
                // The reader fills these only for the modes that use them; a template built
                // in code might not, so the mode decides here too.
                lacp_rate: lacp_rate.filter(|_| *bond_mode == BondMode::Ieee8023ad),
                xmit_hash_policy: xmit_hash_policy
                    .clone()
                    .filter(|_| bond_mode.hashes_transmits()),
                num_grat_arp: num_grat_arp.filter(|_| bond_mode.sends_gratuitous_arps()),
            },
        },
        InterfaceKind::Vlan { parent, id } => RenderedKind::Vlan {
            parent: parent.clone(),
            id: *id,
        },
        InterfaceKind::Bridge {
            members,
            stp,
            forward_delay,
        } => RenderedKind::Bridge {
            members: members.clone(),
            parameters: BridgeParameters {
                stp: *stp,
                forward_delay: *forward_delay,
            },
        },
    }
}

/// The addressing of one interface: its allocated address, DHCP, or none.
fn address(
    interface: &mut RenderedInterface,
    allocation: Option<&Allocation>,
    fleet: &Fleet,
) -> Result<(), NetworkError> {
    if let Some(allocation) = allocation {
        let Some(subnet) = fleet.subnet(&allocation.subnet) else {
            return Err(NetworkError::Invalid(format!(
                "interface `{}` has an address on subnet `{}`, which the fleet does not declare",
                interface.name, allocation.subnet
            )));
        };
        static_address(interface, allocation, subnet);
        return Ok(());
    }
    match interface.link {
        LinkMode::Auto | LinkMode::Static => Err(NetworkError::MissingAddress {
            interface: interface.name.clone(),
            link: interface.link.as_str(),
            subnet: interface.subnet.clone().unwrap_or_default(),
        }),
        LinkMode::Dhcp => {
            let ipv6 = interface
                .subnet
                .as_deref()
                .and_then(|name| fleet.subnet(name))
                .is_some_and(|subnet| matches!(subnet.cidr, IpNet::V6(_)));
            interface.dhcp6 = ipv6;
            interface.dhcp4 = !ipv6;
            Ok(())
        }
        LinkMode::LinkUp => Ok(()),
    }
}

fn static_address(interface: &mut RenderedInterface, allocation: &Allocation, subnet: &Subnet) {
    // The machine's own entry may give an address on an interface the template left to DHCP
    // or link_up: the address wins, as it does in the allocation.
    if !interface.link.takes_address() {
        interface.link = match allocation.origin {
            super::AddressOrigin::Static => LinkMode::Static,
            _ => LinkMode::Auto,
        };
    }
    interface.subnet = Some(subnet.name.clone());
    interface.addresses = IpNet::new(allocation.ip, subnet.cidr.prefix_len())
        .into_iter()
        .collect();
    interface.nameservers = subnet.dns.clone();
    interface.search = subnet.domain.iter().cloned().collect();
}

/// One default route per address family, through the first addressed interface (template
/// order) whose subnet has a gateway.
fn add_default_routes(interfaces: &mut [RenderedInterface], fleet: &Fleet) {
    let mut routed = [false, false];
    for interface in interfaces.iter_mut() {
        let gateway = interface
            .subnet
            .as_deref()
            .filter(|_| !interface.addresses.is_empty())
            .and_then(|name| fleet.subnet(name))
            .and_then(|subnet| subnet.gateway);
        let Some(gateway) = gateway else {
            continue;
        };
        let (family, to) = match gateway {
            IpAddr::V4(_) => (0, "0.0.0.0/0"),
            IpAddr::V6(_) => (1, "::/0"),
        };
        if routed[family] {
            continue;
        }
        routed[family] = true;
        // Room for one (a push makes room for four): most interfaces have one route at most.
        interface.routes.reserve_exact(1);
        interface.routes.push(Route {
            to: to.parse().expect("a default route parses"),
            via: gateway,
        });
    }
}

impl NetworkConfig {
    /// netplan v2 YAML, as written to `/etc/netplan/50-fleet.yaml` on the installed system.
    pub fn netplan_yaml(&self) -> String {
        netplan::to_yaml(self)
    }

    /// A compact table for `fleet plan`, each line indented by `indent` spaces.
    pub fn table(&self, indent: usize) -> String {
        table::render(self, indent)
    }

    /// A short, stable digest of the whole configuration (hex), for attribute diffs: two
    /// configurations with the same digest render the same files.
    pub fn digest(&self) -> String {
        crate::plan::fingerprint::json_digest(self)
    }

    pub fn interface(&self, name: &str) -> Option<&RenderedInterface> {
        self.interfaces
            .iter()
            .find(|interface| interface.name == name)
    }
}
