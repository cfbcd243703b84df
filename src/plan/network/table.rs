//! The compact human form of a [`NetworkConfig`]: one line per interface, names aligned.

use super::{NetworkConfig, RenderedInterface, RenderedKind};
use std::fmt::Write;

pub(super) fn render(config: &NetworkConfig, indent: usize) -> String {
    let width = config
        .interfaces
        .iter()
        .map(|interface| interface.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for interface in &config.interfaces {
        let mut line = format!(
            "{:indent$}{:<width$}  {}",
            "",
            interface.name,
            kind(interface)
        );
        if let Some(mtu) = interface.mtu {
            let _ = write!(line, ", mtu {mtu}");
        }
        let _ = writeln!(line, "  {}", addressing(interface));
        out.push_str(&line);
    }
    out
}

fn kind(interface: &RenderedInterface) -> String {
    let mac = interface
        .mac
        .map(|mac| format!(" {mac}"))
        .unwrap_or_default();
    match &interface.kind {
        RenderedKind::Physical => format!("physical{mac}"),
        RenderedKind::Bond {
            members,
            parameters,
        } => {
            let mut text = format!(
                "bond {} of {}{mac}, miimon {}",
                parameters.mode.as_str(),
                members.join("+"),
                parameters.miimon
            );
            if parameters.updelay > 0 || parameters.downdelay > 0 {
                let _ = write!(
                    text,
                    ", updelay {} downdelay {}",
                    parameters.updelay, parameters.downdelay
                );
            }
            if let Some(rate) = parameters.lacp_rate {
                let _ = write!(text, ", lacp {}", rate.as_str());
            }
            if let Some(policy) = &parameters.xmit_hash_policy {
                let _ = write!(text, ", hash {policy}");
            }
            if let Some(count) = parameters.num_grat_arp {
                let _ = write!(text, ", grat_arp {count}");
            }
            text
        }
        RenderedKind::Vlan { parent, id } => format!("vlan {id} on {parent}"),
        RenderedKind::Bridge {
            members,
            parameters,
        } => format!(
            "bridge of {}{mac}, stp {}, forward_delay {}",
            members.join("+"),
            if parameters.stp { "on" } else { "off" },
            parameters.forward_delay
        ),
    }
}

fn addressing(interface: &RenderedInterface) -> String {
    let mut parts: Vec<String> = interface
        .addresses
        .iter()
        .map(|address| address.to_string())
        .collect();
    for route in &interface.routes {
        parts.push(format!("via {}", route.via));
    }
    if !interface.nameservers.is_empty() {
        let servers: Vec<String> = interface
            .nameservers
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        parts.push(format!("dns {}", servers.join(",")));
    }
    if !interface.search.is_empty() {
        parts.push(format!("search {}", interface.search.join(",")));
    }
    match (interface.dhcp4, interface.dhcp6) {
        (true, true) => parts.push("dhcp4+dhcp6".into()),
        (true, false) => parts.push("dhcp4".into()),
        (false, true) => parts.push("dhcp6".into()),
        (false, false) => {}
    }
    if parts.is_empty() {
        parts.push("link up, no address".into());
    }
    parts.join(" ")
}
