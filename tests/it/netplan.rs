//! Every network template of the example fleet file and of the fixtures, rendered for a machine
//! that has its interfaces and addresses, is accepted by the real `netplan generate` (Debian
//! package netplan.io, installed by .ci/setup-netplan), and the systemd-networkd files it writes
//! match the interfaces by the MACs commissioning recorded.

use fleet::config::{self, Fleet, InterfaceKind, LinkMode, NetworkTemplate};
use fleet::model::MacAddr;
use fleet::plan::network::render_network;
use fleet::plan::{excluded, AddressOrigin, Allocation, ObservedInterface};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fleet files whose templates are checked: the example and every fixture or example
/// file that loads on its own (the broken fixtures and the included fragments do not).
fn fleet_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("fleet.toml.example")];
    for root in ["tests/fixtures", "examples"] {
        collect_toml(Path::new(root), &mut files);
    }
    files.sort();
    files
}

fn collect_toml(directory: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.ends_with("broken") {
            collect_toml(&path, files);
        } else if path
            .extension()
            .is_some_and(|extension| extension == "toml")
        {
            files.push(path);
        }
    }
}

/// A machine for `template`: one commissioned NIC per physical interface (under the name the
/// ephemeral environment would give it, which need not be the template's) and the lowest
/// usable address of the subnet of each interface that takes one.
fn machine_for(
    template: &NetworkTemplate,
    fleet: &Fleet,
) -> (Vec<ObservedInterface>, Vec<Allocation>) {
    let mut observed = Vec::new();
    let mut addresses = Vec::new();
    for (at, interface) in template.interfaces.iter().enumerate() {
        if matches!(interface.kind, InterfaceKind::Physical) {
            observed.push(ObservedInterface {
                name: interface.name.clone(),
                mac: MacAddr::parse(&format!("52:54:00:77:{:02x}:{:02x}", at / 256, at % 256))
                    .unwrap(),
            });
        }
        let subnet = interface
            .subnet
            .as_deref()
            .and_then(|name| fleet.subnet(name));
        if let (true, Some(subnet)) = (interface.link.takes_address(), subnet) {
            let ip = subnet
                .cidr
                .hosts()
                .find(|ip| excluded(subnet, *ip).is_none())
                .expect("a subnet with a free address");
            addresses.push(Allocation {
                machine: "netplan-check".parse().unwrap(),
                interface: interface.name.clone(),
                subnet: subnet.name.clone(),
                ip,
                origin: if interface.link == LinkMode::Static {
                    AddressOrigin::Static
                } else {
                    AddressOrigin::Allocated
                },
            });
        }
    }
    (observed, addresses)
}

fn netplan_command() -> PathBuf {
    for directory in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let candidate = Path::new(directory).join("netplan");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "netplan is not installed: this test runs the real `netplan generate` on every rendered \
         configuration. Install it with `bash .ci/setup-netplan` (Debian package netplan.io)."
    );
}

/// Writes the YAML under a fresh root, runs `netplan generate --root-dir`, and returns the
/// generated systemd-networkd files (name, contents).
fn generate(netplan: &Path, label: &str, yaml: &str) -> Vec<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("etc/netplan");
    std::fs::create_dir_all(&directory).unwrap();
    let file = directory.join("50-fleet.yaml");
    std::fs::write(&file, yaml).unwrap();
    // netplan warns about (and newer releases refuse) a configuration others can read.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new(netplan)
        .arg("generate")
        .arg("--root-dir")
        .arg(root.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "netplan generate refused {label}:\n{}\n--- the YAML:\n{yaml}",
        String::from_utf8_lossy(&output.stderr)
    );
    let networkd = root.path().join("run/systemd/network");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&networkd)
        .unwrap_or_else(|error| panic!("{label}: no {}: {error}", networkd.display()))
        .flatten()
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(entry.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn netplan_generate_accepts_every_rendered_template() {
    let netplan = netplan_command();
    let mut checked = Vec::new();
    for path in fleet_files() {
        let Ok(fleet) = config::load(std::slice::from_ref(&path)) else {
            continue;
        };
        for template in fleet.network_templates.values() {
            let label = format!("template `{}` of {}", template.name, path.display());
            let (observed, addresses) = machine_for(template, &fleet);
            let addresses: Vec<&Allocation> = addresses.iter().collect();
            let config = render_network(template, &observed, &addresses, &fleet)
                .unwrap_or_else(|error| panic!("{label} does not render: {error}"));
            let files = generate(&netplan, &label, &config.netplan_yaml());
            for interface in &observed {
                let network = format!("10-netplan-{}.network", interface.name);
                let contents = files
                    .iter()
                    .find(|(name, _)| *name == network)
                    .map(|(_, contents)| contents.as_str())
                    .unwrap_or_else(|| panic!("{label}: no {network} among {files:?}"));
                assert!(
                    contents.contains(&format!("PermanentMACAddress={}", interface.mac)),
                    "{label}: {network} does not match {} by MAC:\n{contents}",
                    interface.mac
                );
                assert!(
                    contents.contains(&format!("Name={}", interface.name)),
                    "{label}: {network} does not name {}:\n{contents}",
                    interface.name
                );
            }
            checked.push(label);
        }
    }
    for expected in [
        "template `bonded` of fleet.toml.example",
        "template `lacp-vlans` of fleet.toml.example",
        "template `bridged` of fleet.toml.example",
        "template `failover` of fleet.toml.example",
        "template `lacp` of tests/fixtures/network/every-mode.toml",
        "template `plain` of tests/fixtures/network/every-mode.toml",
    ] {
        assert!(
            checked.iter().any(|label| label == expected),
            "{expected} was not checked; checked: {checked:#?}"
        );
    }
}

/// What netplan makes of one bond: the parameters reach systemd-networkd's bond device.
#[test]
fn the_bond_parameters_reach_systemd_networkd() {
    let netplan = netplan_command();
    let path = PathBuf::from("fleet.toml.example");
    let fleet = config::load(std::slice::from_ref(&path)).unwrap();
    let template = &fleet.network_templates["lacp-vlans"];
    let (observed, addresses) = machine_for(template, &fleet);
    let addresses: Vec<&Allocation> = addresses.iter().collect();
    let config = render_network(template, &observed, &addresses, &fleet).unwrap();
    let files = generate(&netplan, "lacp-vlans", &config.netplan_yaml());
    let netdev = files
        .iter()
        .find(|(name, _)| name == "10-netplan-bond0.netdev")
        .map(|(_, contents)| contents.clone())
        .unwrap_or_else(|| panic!("no bond0.netdev among {files:?}"));
    for expected in [
        "Kind=bond",
        "Mode=802.3ad",
        "LACPTransmitRate=fast",
        "TransmitHashPolicy=layer3+4",
        "MIIMonitorSec=100ms",
        "UpDelaySec=200ms",
        "DownDelaySec=200ms",
        "MTUBytes=9000",
        &format!("MACAddress={}", observed[0].mac),
    ] {
        assert!(netdev.contains(expected), "no {expected} in:\n{netdev}");
    }
    let bond_network = files
        .iter()
        .find(|(name, _)| name == "10-netplan-bond0.network")
        .map(|(_, contents)| contents.clone())
        .unwrap();
    assert!(
        bond_network.contains("Address=10.10.0.10/24"),
        "{bond_network}"
    );
    assert!(
        bond_network.contains("Gateway=10.10.0.1") || bond_network.contains("[Route]"),
        "{bond_network}"
    );
    assert!(bond_network.contains("VLAN=bond0.30"), "{bond_network}");
}
