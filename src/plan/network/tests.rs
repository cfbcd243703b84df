//! Table tests of the renderer: each bond mode, VLANs on bonds, bridges over bonds, each link
//! mode, MTU, MACs, routes, DNS, errors.

use super::*;
use crate::config::load_str;
use crate::plan::{allocate, Addresses};

const SUBNETS: &str = r#"
[subnets.rack1]
cidr = "10.10.0.0/24"
gateway = "10.10.0.1"
dns = ["10.10.0.2", "1.1.1.1"]
domain = "rack1.example.net"
dynamic_range = { start = "10.10.0.100", end = "10.10.0.199" }

[subnets.storage]
cidr = "10.30.0.0/24"
gateway = "10.30.0.1"

[subnets.v6]
cidr = "fd00:10::/64"
gateway = "fd00:10::1"
"#;

/// A fleet of the subnets above, one template `t` with `interfaces`, and machine `m` using it
/// (with `machine_extra` lines).
fn fleet(interfaces: &str, machine_extra: &str) -> Fleet {
    let text = format!(
        "{SUBNETS}\n[network_templates.t]\ninterfaces = [\n{interfaces}\n]\n\n\
         [[machine]]\nname = \"m\"\nmacs = [\"52:54:00:00:00:01\"]\nnetwork = \"t\"\n{machine_extra}\n"
    );
    load_str("test.toml", &text)
        .map_err(|diagnostics| diagnostics.render(false))
        .unwrap()
}

fn observed(names: &[&str]) -> Vec<ObservedInterface> {
    names
        .iter()
        .enumerate()
        .map(|(at, name)| ObservedInterface {
            name: name.to_string(),
            mac: MacAddr::parse(&format!("52:54:00:00:00:{:02x}", at + 1)).unwrap(),
        })
        .collect()
}

fn render(fleet: &Fleet, names: &[&str]) -> Result<NetworkConfig, NetworkError> {
    let addresses: Addresses = allocate(fleet, &[]);
    assert!(addresses.problems.is_empty(), "{:?}", addresses.problems);
    let mine: Vec<&Allocation> = addresses.of_machine("m").collect();
    render_network(
        &fleet.network_templates["t"],
        &observed(names),
        &mine,
        fleet,
    )
}

fn rendered(interfaces: &str, names: &[&str]) -> NetworkConfig {
    render(&fleet(interfaces, ""), names).unwrap()
}

fn bond_parameters(config: &NetworkConfig, name: &str) -> BondParameters {
    match &config.interface(name).unwrap().kind {
        RenderedKind::Bond { parameters, .. } => parameters.clone(),
        other => panic!("{name} is {other:?}"),
    }
}

const TWO_MEMBERS: &str = r#"  { name = "eth0" },
  { name = "eth1" },"#;

/// Bond mode, then the lacp_rate, xmit_hash_policy and num_grat_arp it gets.
type ModeRow = (
    &'static str,
    Option<LacpRate>,
    Option<&'static str>,
    Option<u8>,
);

#[test]
fn every_bond_mode_gets_the_parameters_it_uses_and_no_other() {
    // mode, lacp_rate, xmit_hash_policy, num_grat_arp (MAAS's defaults where they apply)
    let table: [ModeRow; 7] = [
        ("balance-rr", None, None, None),
        ("active-backup", None, None, Some(1)),
        ("balance-xor", None, Some("layer2"), None),
        ("broadcast", None, None, None),
        ("802.3ad", Some(LacpRate::Fast), Some("layer2"), None),
        ("balance-tlb", None, Some("layer2"), None),
        ("balance-alb", None, None, None),
    ];
    for (mode, lacp, hash, grat) in table {
        let config = rendered(
            &format!(
                "{TWO_MEMBERS}\n  {{ name = \"bond0\", type = \"bond\", members = [\"eth0\", \"eth1\"], bond_mode = \"{mode}\", subnet = \"rack1\" }},"
            ),
            &["eth0", "eth1"],
        );
        let parameters = bond_parameters(&config, "bond0");
        assert_eq!(parameters.mode.as_str(), mode);
        assert_eq!(parameters.miimon, 100, "{mode}");
        assert_eq!((parameters.updelay, parameters.downdelay), (0, 0), "{mode}");
        assert_eq!(parameters.lacp_rate, lacp, "{mode}");
        assert_eq!(parameters.xmit_hash_policy.as_deref(), hash, "{mode}");
        assert_eq!(parameters.num_grat_arp, grat, "{mode}");
        let yaml = config.netplan_yaml();
        assert!(yaml.contains(&format!("mode: {mode}")), "{yaml}");
        assert_eq!(yaml.contains("lacp-rate"), lacp.is_some(), "{mode}: {yaml}");
        assert_eq!(
            yaml.contains("transmit-hash-policy"),
            hash.is_some(),
            "{mode}: {yaml}"
        );
        assert_eq!(
            yaml.contains("gratuitous-arp: 1"),
            grat.is_some(),
            "{mode}: {yaml}"
        );
    }
}

#[test]
fn the_default_bond_mode_is_maas_balance_rr() {
    let config = rendered(
        &format!("{TWO_MEMBERS}\n  {{ name = \"bond0\", type = \"bond\", members = [\"eth0\", \"eth1\"] }},"),
        &["eth0", "eth1"],
    );
    assert_eq!(bond_parameters(&config, "bond0").mode, BondMode::BalanceRr);
}

#[test]
fn written_bond_parameters_are_rendered() {
    let config = rendered(
        &format!(
            "{TWO_MEMBERS}\n  {{ name = \"bond0\", type = \"bond\", members = [\"eth0\", \"eth1\"], bond_mode = \"802.3ad\", miimon = 50, updelay = 200, downdelay = 100, lacp_rate = \"slow\", xmit_hash_policy = \"layer3+4\" }},"
        ),
        &["eth0", "eth1"],
    );
    let parameters = bond_parameters(&config, "bond0");
    assert_eq!(
        (parameters.miimon, parameters.updelay, parameters.downdelay),
        (50, 200, 100)
    );
    let yaml = config.netplan_yaml();
    for expected in [
        "mii-monitor-interval: 50",
        "up-delay: 200",
        "down-delay: 100",
        "lacp-rate: slow",
        "transmit-hash-policy: layer3+4",
    ] {
        assert!(yaml.contains(expected), "no {expected} in\n{yaml}");
    }
    let active_backup = rendered(
        &format!(
            "{TWO_MEMBERS}\n  {{ name = \"bond0\", type = \"bond\", members = [\"eth0\", \"eth1\"], bond_mode = \"active-backup\", num_grat_arp = 5 }},"
        ),
        &["eth0", "eth1"],
    );
    assert!(active_backup.netplan_yaml().contains("gratuitous-arp: 5"));
}

#[test]
fn physical_interfaces_are_matched_by_commissioned_mac_and_renamed() {
    let config = rendered(
        r#"  { name = "eno1", subnet = "rack1" },"#,
        &["ens3", "eno1"],
    );
    let eno1 = config.interface("eno1").unwrap();
    assert_eq!(eno1.mac.unwrap().to_string(), "52:54:00:00:00:02");
    let yaml = config.netplan_yaml();
    assert!(yaml.contains("macaddress: \"52:54:00:00:00:02\""), "{yaml}");
    assert!(yaml.contains("set-name: eno1"), "{yaml}");
    assert!(
        !yaml.contains("ens3"),
        "an interface the template leaves out stays out:\n{yaml}"
    );
}

#[test]
fn a_template_interface_the_machine_lacks_is_an_error_naming_what_it_has() {
    let fleet = fleet(r#"  { name = "eth0" }, { name = "eth9" },"#, "");
    let error = render(&fleet, &["eth0", "eth1"]).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("`eth9`"), "{message}");
    assert!(
        message.contains("eth0 (52:54:00:00:00:01), eth1 (52:54:00:00:00:02)"),
        "{message}"
    );
    let uncommissioned = render(&fleet, &[]).unwrap_err().to_string();
    assert!(
        uncommissioned.contains("no commissioned interfaces"),
        "{uncommissioned}"
    );
}

#[test]
fn the_machine_own_mac_overrides_commissioning() {
    let fleet = fleet(
        r#"  { name = "eth0", subnet = "rack1" },"#,
        r#"interfaces = [{ name = "eth0", subnet = "rack1", mac = "aa:bb:cc:00:00:01" }]"#,
    );
    let config = render(&fleet, &["eth0"]).unwrap();
    assert_eq!(
        config.interface("eth0").unwrap().mac.unwrap().to_string(),
        "aa:bb:cc:00:00:01"
    );
    // ... and needs no commissioning at all.
    assert!(render(&fleet, &[]).is_ok());
}

#[test]
fn vlans_on_a_bond_and_a_bridge_over_the_bond() {
    let config = rendered(
        &format!(
            "{TWO_MEMBERS}
  {{ name = \"bond0\", type = \"bond\", members = [\"eth0\", \"eth1\"], bond_mode = \"802.3ad\", mtu = 9000 }},
  {{ name = \"bond0.30\", type = \"vlan\", parent = \"bond0\", id = 30, subnet = \"storage\", mtu = 9000 }},
  {{ name = \"br0\", type = \"bridge\", members = [\"bond0\"], subnet = \"rack1\", stp = true, forward_delay = 4 }},"
        ),
        &["eth0", "eth1"],
    );
    let bond = config.interface("bond0").unwrap();
    assert_eq!(
        bond.mac,
        config.interface("eth0").unwrap().mac,
        "a bond takes its first member's MAC"
    );
    assert_eq!(bond.mtu, Some(9000));
    let vlan = config.interface("bond0.30").unwrap();
    assert_eq!(
        vlan.kind,
        RenderedKind::Vlan {
            parent: "bond0".into(),
            id: 30
        }
    );
    assert_eq!(vlan.addresses[0].to_string(), "10.30.0.2/24");
    let bridge = config.interface("br0").unwrap();
    assert_eq!(
        bridge.mac, bond.mac,
        "a bridge takes its first member's (the bond's) MAC"
    );
    let yaml = config.netplan_yaml();
    for expected in [
        "bonds:",
        "vlans:",
        "bridges:",
        "id: 30",
        "link: bond0",
        "stp: true",
        "forward-delay: 4",
        "mtu: 9000",
    ] {
        assert!(yaml.contains(expected), "no {expected} in\n{yaml}");
    }
}

#[test]
fn link_modes_static_auto_dhcp_and_link_up() {
    let fleet = fleet(
        r#"  { name = "eth0", subnet = "rack1", link = "static" },
  { name = "eth1", subnet = "storage" },
  { name = "eth2", link = "dhcp" },
  { name = "eth3", subnet = "v6", link = "dhcp" },
  { name = "eth4", link = "link_up" },"#,
        r#"interfaces = [{ name = "eth0", subnet = "rack1", ip = "10.10.0.50" }]"#,
    );
    let config = render(&fleet, &["eth0", "eth1", "eth2", "eth3", "eth4"]).unwrap();
    let eth0 = config.interface("eth0").unwrap();
    assert_eq!(eth0.link, LinkMode::Static);
    assert_eq!(eth0.addresses[0].to_string(), "10.10.0.50/24");
    assert_eq!(eth0.nameservers.len(), 2);
    assert_eq!(eth0.search, vec!["rack1.example.net".to_string()]);
    let eth1 = config.interface("eth1").unwrap();
    assert_eq!(eth1.link, LinkMode::Auto);
    assert_eq!(eth1.addresses[0].to_string(), "10.30.0.2/24");
    let eth2 = config.interface("eth2").unwrap();
    assert!(eth2.dhcp4 && !eth2.dhcp6 && eth2.addresses.is_empty());
    let eth3 = config.interface("eth3").unwrap();
    assert!(
        eth3.dhcp6 && !eth3.dhcp4,
        "DHCP on an IPv6 subnet is DHCPv6"
    );
    let eth4 = config.interface("eth4").unwrap();
    assert!(eth4.addresses.is_empty() && !eth4.dhcp4 && !eth4.dhcp6 && eth4.routes.is_empty());
    let yaml = config.netplan_yaml();
    assert!(
        yaml.contains("dhcp4: true") && yaml.contains("dhcp6: true"),
        "{yaml}"
    );
}

#[test]
fn one_default_route_per_family_through_the_first_addressed_interface() {
    let fleet = fleet(
        r#"  { name = "eth0", link = "dhcp" },
  { name = "eth1", subnet = "storage" },
  { name = "eth2", subnet = "rack1" },
  { name = "eth3", subnet = "v6" },"#,
        "",
    );
    let config = render(&fleet, &["eth0", "eth1", "eth2", "eth3"]).unwrap();
    let routes = |name: &str| config.interface(name).unwrap().routes.clone();
    assert!(
        routes("eth0").is_empty(),
        "DHCP links take the DHCP server's route"
    );
    assert_eq!(routes("eth1").len(), 1);
    assert_eq!(routes("eth1")[0].via.to_string(), "10.30.0.1");
    assert_eq!(routes("eth1")[0].to.to_string(), "0.0.0.0/0");
    assert!(routes("eth2").is_empty(), "one IPv4 default route only");
    assert_eq!(routes("eth3")[0].to.to_string(), "::/0");
}

/// The fleet file's own check refuses such an entry; the renderer does not rely on it.
#[test]
fn an_address_for_an_interface_the_template_lacks_is_an_error() {
    let fleet = fleet(r#"  { name = "eth0", link = "dhcp" },"#, "");
    let stray = Allocation {
        machine: "m".parse().unwrap(),
        interface: "eth7".into(),
        subnet: "rack1".into(),
        ip: "10.10.0.7".parse().unwrap(),
        origin: crate::plan::AddressOrigin::Static,
    };
    let template = &fleet.network_templates["t"];
    let message = render_network(template, &observed(&["eth0"]), &[&stray], &fleet)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("`eth7`") && message.contains("10.10.0.7"),
        "{message}"
    );
}

#[test]
fn an_auto_interface_without_its_address_is_an_error() {
    let fleet = fleet(r#"  { name = "eth0", subnet = "rack1" },"#, "");
    let error = render_network(
        &fleet.network_templates["t"],
        &observed(&["eth0"]),
        &[],
        &fleet,
    )
    .unwrap_err();
    assert!(
        matches!(error, NetworkError::MissingAddress { .. }),
        "{error}"
    );
}

#[test]
fn the_json_shape_round_trips_and_the_digest_follows_the_content() {
    let config = rendered(
        &format!("{TWO_MEMBERS}\n  {{ name = \"bond0\", type = \"bond\", members = [\"eth0\", \"eth1\"], subnet = \"rack1\" }},"),
        &["eth0", "eth1"],
    );
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["interfaces"][2]["type"], "bond");
    assert_eq!(json["interfaces"][2]["parameters"]["mode"], "balance-rr");
    assert_eq!(json["interfaces"][2]["addresses"][0], "10.10.0.2/24");
    let back: NetworkConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, config);
    assert_eq!(config.digest(), back.digest());
    assert_eq!(config.digest().len(), 16);
    let mut changed = config.clone();
    changed.interfaces[2].mtu = Some(9000);
    assert_ne!(changed.digest(), config.digest());
}

#[test]
fn the_table_has_one_aligned_line_per_interface() {
    let config = rendered(
        &format!(
            "{TWO_MEMBERS}
  {{ name = \"bond0\", type = \"bond\", members = [\"eth0\", \"eth1\"], bond_mode = \"802.3ad\", subnet = \"rack1\", mtu = 9000 }},
  {{ name = \"bond0.30\", type = \"vlan\", parent = \"bond0\", id = 30, link = \"dhcp\" }},"
        ),
        &["eth0", "eth1"],
    );
    let table = config.table(4);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines
        .iter()
        .all(|line| line.starts_with("    ") && !line.starts_with("     ")));
    assert_eq!(
        lines[0],
        "    eth0      physical 52:54:00:00:00:01  link up, no address"
    );
    assert!(lines[2].starts_with("    bond0     bond 802.3ad of eth0+eth1 52:54:00:00:00:01, miimon 100, lacp fast, hash layer2, mtu 9000  10.10.0.2/24 via 10.10.0.1 dns 10.10.0.2,1.1.1.1 search rack1.example.net"), "{}", lines[2]);
    assert_eq!(lines[3], "    bond0.30  vlan 30 on bond0  dhcp4");
}

#[test]
fn the_netplan_yaml_of_a_bonded_machine() {
    let fleet = fleet(
        r#"  { name = "eth0" },
  { name = "eth1" },
  { name = "bond0", type = "bond", members = ["eth0", "eth1"], bond_mode = "active-backup", subnet = "rack1" },"#,
        "",
    );
    let yaml = render(&fleet, &["eth0", "eth1"]).unwrap().netplan_yaml();
    let expected = "\
# Written by fleet from network template `t`.
network:
  version: 2
  ethernets:
    eth0:
      match:
        macaddress: \"52:54:00:00:00:01\"
      set-name: eth0
    eth1:
      match:
        macaddress: \"52:54:00:00:00:02\"
      set-name: eth1
  bonds:
    bond0:
      interfaces:
      - eth0
      - eth1
      macaddress: \"52:54:00:00:00:01\"
      parameters:
        mode: active-backup
        mii-monitor-interval: 100
        up-delay: 0
        down-delay: 0
        gratuitous-arp: 1
      addresses:
      - 10.10.0.2/24
      routes:
      - to: 0.0.0.0/0
        via: \"10.10.0.1\"
      nameservers:
        addresses:
        - \"10.10.0.2\"
        - \"1.1.1.1\"
        search:
        - rack1.example.net
";
    assert_eq!(yaml, expected);
}
