//! netplan v2 YAML of a [`NetworkConfig`]: the document is built as serde structs in netplan's
//! own shape and spelling, and written by serde-saphyr.

use super::{NetworkConfig, RenderedInterface, RenderedKind};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct Document<'c> {
    network: Network<'c>,
}

#[derive(Serialize)]
struct Network<'c> {
    version: u8,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    ethernets: BTreeMap<&'c str, Device<'c>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    bonds: BTreeMap<&'c str, Device<'c>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    vlans: BTreeMap<&'c str, Device<'c>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    bridges: BTreeMap<&'c str, Device<'c>>,
}

/// One device of any kind; netplan's key order as its documentation writes it.
#[derive(Serialize, Default)]
struct Device<'c> {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    matching: Option<Match>,
    #[serde(rename = "set-name", skip_serializing_if = "Option::is_none")]
    set_name: Option<&'c str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<&'c str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interfaces: Option<&'c [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    macaddress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Parameters<'c>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dhcp4: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dhcp6: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<Nameservers>,
}

#[derive(Serialize)]
struct Match {
    macaddress: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Parameters<'c> {
    Bond(BondParameters<'c>),
    Bridge(BridgeParameters),
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct BondParameters<'c> {
    mode: &'static str,
    mii_monitor_interval: u32,
    up_delay: u32,
    down_delay: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    lacp_rate: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transmit_hash_policy: Option<&'c str>,
    /// Spelled right: netplan has read `gratuitous-arp` since 0.97 (MAAS still writes the old
    /// misspelling `gratuitious-arp` for older releases).
    #[serde(skip_serializing_if = "Option::is_none")]
    gratuitous_arp: Option<u8>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct BridgeParameters {
    stp: bool,
    forward_delay: u32,
}

#[derive(Serialize)]
struct Route {
    to: String,
    via: String,
}

#[derive(Serialize)]
struct Nameservers {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    search: Vec<String>,
}

pub(super) fn to_yaml(config: &NetworkConfig) -> String {
    let mut network = Network {
        version: 2,
        ethernets: BTreeMap::new(),
        bonds: BTreeMap::new(),
        vlans: BTreeMap::new(),
        bridges: BTreeMap::new(),
    };
    for interface in &config.interfaces {
        let section = match interface.kind {
            RenderedKind::Physical => &mut network.ethernets,
            RenderedKind::Bond { .. } => &mut network.bonds,
            RenderedKind::Vlan { .. } => &mut network.vlans,
            RenderedKind::Bridge { .. } => &mut network.bridges,
        };
        section.insert(interface.name.as_str(), device(interface));
    }
    let yaml = serde_saphyr::to_string(&Document { network })
        .expect("plain structs of strings, numbers and booleans always serialize");
    format!(
        "# Written by fleet from network template `{}`.\n{yaml}",
        config.template
    )
}

fn device(interface: &RenderedInterface) -> Device<'_> {
    let mac = interface.mac.map(|mac| mac.to_string());
    let mut device = Device {
        mtu: interface.mtu,
        dhcp4: interface.dhcp4.then_some(true),
        dhcp6: interface.dhcp6.then_some(true),
        addresses: interface.addresses.iter().map(|a| a.to_string()).collect(),
        routes: interface
            .routes
            .iter()
            .map(|route| Route {
                to: route.to.to_string(),
                via: route.via.to_string(),
            })
            .collect(),
        nameservers: nameservers(interface),
        ..Device::default()
    };
    match &interface.kind {
        RenderedKind::Physical => {
            device.matching = mac.map(|macaddress| Match { macaddress });
            device.set_name = Some(&interface.name);
        }
        RenderedKind::Bond {
            members,
            parameters,
        } => {
            device.interfaces = Some(members);
            device.macaddress = mac;
            device.parameters = Some(Parameters::Bond(BondParameters {
                mode: parameters.mode.as_str(),
                mii_monitor_interval: parameters.miimon,
                up_delay: parameters.updelay,
                down_delay: parameters.downdelay,
                lacp_rate: parameters.lacp_rate.map(|rate| rate.as_str()),
                transmit_hash_policy: parameters.xmit_hash_policy.as_deref(),
                gratuitous_arp: parameters.num_grat_arp,
            }));
        }
        RenderedKind::Vlan { parent, id } => {
            device.id = Some(*id);
            device.link = Some(parent);
        }
        RenderedKind::Bridge {
            members,
            parameters,
        } => {
            device.interfaces = Some(members);
            device.macaddress = mac;
            device.parameters = Some(Parameters::Bridge(BridgeParameters {
                stp: parameters.stp,
                forward_delay: parameters.forward_delay,
            }));
        }
    }
    device
}

fn nameservers(interface: &RenderedInterface) -> Option<Nameservers> {
    if interface.nameservers.is_empty() && interface.search.is_empty() {
        return None;
    }
    Some(Nameservers {
        addresses: interface
            .nameservers
            .iter()
            .map(|ip| ip.to_string())
            .collect(),
        search: interface.search.clone(),
    })
}
