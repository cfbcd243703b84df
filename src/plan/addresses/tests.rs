use super::*;
use proptest::prelude::*;

const RACK: &str = r#"
[subnets.rack]
cidr = "10.0.0.0/24"
gateway = "10.0.0.1"
dynamic_range = { start = "10.0.0.100", end = "10.0.0.199" }
reserved = [{ start = "10.0.0.2", end = "10.0.0.9", comment = "switches" }]

[network_templates.auto]
interfaces = [{ name = "eth0", subnet = "rack", link = "auto" }]
"#;

/// A fleet of `subnets` (TOML) and one machine per entry: (name, extra machine keys).
fn fleet(subnets: &str, machines: &[(&str, &str)]) -> Fleet {
    let mut text = subnets.to_string();
    for (index, (name, extra)) in machines.iter().enumerate() {
        text.push_str(&format!(
            "\n[[machine]]\nname = \"{name}\"\nmacs = [\"52:54:00:00:{:02x}:{:02x}\"]\n{extra}\n",
            index / 256,
            index % 256
        ));
    }
    crate::config::load_str("fleet.toml", &text)
        .unwrap_or_else(|errors| panic!("test fleet is invalid: {errors:?}\n{text}"))
}

fn auto(name: &str) -> (&str, &str) {
    (name, "network = \"auto\"")
}

fn held(machine: &str, ip: &str) -> HeldAddress {
    HeldAddress {
        machine: machine.into(),
        interface: "eth0".into(),
        subnet: "rack".into(),
        ip: ip.parse().unwrap(),
    }
}

/// `machine=ip(origin)` per allocation, then `machine: message` per problem.
fn summary(addresses: &Addresses) -> Vec<String> {
    let allocations = addresses.allocations.iter().map(|allocation| {
        format!(
            "{}={}({:?})",
            allocation.machine, allocation.ip, allocation.origin
        )
    });
    let problems = addresses
        .problems
        .iter()
        .map(|problem| format!("{}: {}", problem.machine, problem.message));
    allocations.chain(problems).collect()
}

fn check(subnets: &str, machines: &[(&str, &str)], held: &[HeldAddress], expected: &[&str]) {
    let addresses = allocate(&fleet(subnets, machines), held);
    assert_eq!(summary(&addresses), expected);
    assert!(duplicates(&addresses).is_empty(), "{addresses:?}");
}

#[test]
fn auto_takes_the_lowest_free_addresses_in_machine_name_order() {
    // Written out of order: names decide, not the file.
    check(
        RACK,
        &[auto("c"), auto("a"), auto("b")],
        &[],
        &[
            "a=10.0.0.10(Allocated)",
            "b=10.0.0.11(Allocated)",
            "c=10.0.0.12(Allocated)",
        ],
    );
}

#[test]
fn a_static_address_is_never_handed_to_an_auto_interface() {
    let with_static = "network = \"auto\"\ninterfaces = [{ name = \"eth0\", subnet = \"rack\", ip = \"10.0.0.10\" }]";
    check(
        RACK,
        &[auto("a"), ("b", with_static), auto("c")],
        &[],
        &[
            "a=10.0.0.11(Allocated)",
            "b=10.0.0.10(Static)",
            "c=10.0.0.12(Allocated)",
        ],
    );
}

#[test]
fn a_held_address_sticks_to_its_machine_whatever_is_added_before_it() {
    check(
        RACK,
        &[auto("a"), auto("b"), auto("z")],
        &[held("z", "10.0.0.10")],
        &[
            "a=10.0.0.11(Allocated)",
            "b=10.0.0.12(Allocated)",
            "z=10.0.0.10(Held)",
        ],
    );
}

#[test]
fn an_address_held_by_a_machine_gone_from_the_file_stays_taken() {
    check(
        RACK,
        &[auto("a")],
        &[held("gone", "10.0.0.10")],
        &["a=10.0.0.11(Allocated)"],
    );
}

#[test]
fn a_static_address_held_by_another_machine_is_refused_naming_the_holder() {
    let with_static = "network = \"auto\"\ninterfaces = [{ name = \"eth0\", subnet = \"rack\", ip = \"10.0.0.10\" }]";
    check(
        RACK,
        &[("b", with_static)],
        &[held("a", "10.0.0.10")],
        &["b: address 10.0.0.10 is already held by machine a (interface eth0)"],
    );
}

#[test]
fn a_full_subnet_is_a_problem_for_the_last_machines_in_name_order() {
    // 10.0.0.0/29: .1 to .6 usable, .1 the gateway: five addresses.
    let small = r#"
[subnets.rack]
cidr = "10.0.0.0/29"
gateway = "10.0.0.1"

[network_templates.auto]
interfaces = [{ name = "eth0", subnet = "rack", link = "auto" }]
"#;
    let names = ["m1", "m2", "m3", "m4", "m5", "m6"];
    let machines: Vec<_> = names.iter().map(|name| auto(name)).collect();
    check(
        small,
        &machines,
        &[],
        &[
            "m1=10.0.0.2(Allocated)",
            "m2=10.0.0.3(Allocated)",
            "m3=10.0.0.4(Allocated)",
            "m4=10.0.0.5(Allocated)",
            "m5=10.0.0.6(Allocated)",
            "m6: subnet `rack` (10.0.0.0/29) has no free address left outside its dynamic and reserved ranges",
        ],
    );
}

#[test]
fn auto_jumps_over_a_dynamic_range_that_starts_the_subnet() {
    let subnet = r#"
[subnets.rack]
cidr = "10.0.0.0/24"
dynamic_range = { start = "10.0.0.1", end = "10.0.0.250" }

[network_templates.auto]
interfaces = [{ name = "eth0", subnet = "rack", link = "auto" }]
"#;
    check(
        subnet,
        &[auto("a"), auto("b")],
        &[],
        &["a=10.0.0.251(Allocated)", "b=10.0.0.252(Allocated)"],
    );
}

#[test]
fn ipv6_starts_after_the_subnet_router_address_and_skips_the_gateway() {
    let subnet = r#"
[subnets.rack]
cidr = "2001:db8::/64"
gateway = "2001:db8::1"

[network_templates.auto]
interfaces = [{ name = "eth0", subnet = "rack", link = "auto" }]
"#;
    check(
        subnet,
        &[auto("a"), auto("b")],
        &[],
        &["a=2001:db8::2(Allocated)", "b=2001:db8::3(Allocated)"],
    );
}

#[test]
fn a_slash_31_uses_both_of_its_addresses() {
    let subnet = r#"
[subnets.link]
cidr = "10.0.0.0/31"

[network_templates.auto]
interfaces = [{ name = "eth0", subnet = "link", link = "auto" }]
"#;
    check(
        subnet,
        &[auto("a"), auto("b")],
        &[],
        &["a=10.0.0.0(Allocated)", "b=10.0.0.1(Allocated)"],
    );
}

#[test]
fn a_machines_own_interface_entry_without_ip_is_auto_on_its_subnet() {
    let two = r#"
[subnets.rack]
cidr = "10.0.0.0/24"

[subnets.storage]
cidr = "10.9.0.0/24"

[network_templates.auto]
interfaces = [{ name = "eth0", subnet = "rack", link = "auto" }]
"#;
    check(
        two,
        &[(
            "a",
            "network = \"auto\"\ninterfaces = [{ name = \"eth0\", subnet = \"storage\" }]",
        )],
        &[],
        &["a=10.9.0.1(Allocated)"],
    );
}

#[test]
fn a_template_static_interface_without_an_ip_is_a_problem_saying_what_to_write() {
    let subnet = r#"
[subnets.rack]
cidr = "10.0.0.0/24"

[network_templates.fixed]
interfaces = [{ name = "eth0", subnet = "rack", link = "static" }]
"#;
    let addresses = allocate(&fleet(subnet, &[("a", "network = \"fixed\"")]), &[]);
    assert!(addresses.allocations.is_empty());
    assert_eq!(addresses.problems.len(), 1);
    assert!(
        addresses.problems[0].message.contains("gives no `ip`"),
        "{:?}",
        addresses.problems
    );
}

#[test]
fn dhcp_and_link_up_interfaces_ask_for_nothing() {
    let subnet = r#"
[subnets.rack]
cidr = "10.0.0.0/24"

[network_templates.quiet]
interfaces = [
  { name = "eth0", subnet = "rack", link = "dhcp" },
  { name = "eth1", subnet = "rack", link = "link_up" },
]
"#;
    check(subnet, &[("a", "network = \"quiet\"")], &[], &[]);
}

#[test]
fn the_excluded_reasons_name_the_rule() {
    let rack = &fleet(RACK, &[]).subnets[0];
    let why = |ip: &str| excluded(rack, ip.parse().unwrap());
    assert_eq!(why("10.0.0.50"), None);
    assert!(why("10.0.1.5").unwrap().contains("outside subnet `rack`"));
    assert!(why("10.0.0.0").unwrap().contains("network or broadcast"));
    assert!(why("10.0.0.255").unwrap().contains("network or broadcast"));
    assert!(why("10.0.0.1").unwrap().contains("gateway"));
    assert!(why("10.0.0.150").unwrap().contains("dynamic range"));
    assert!(why("10.0.0.5").unwrap().contains("reserved range"));
}

#[test]
fn the_controllers_own_addresses_are_never_a_machines() {
    // The controller sits on the rack subnet outside the reserved range: .10 (boot_listen, the
    // lowest free address otherwise), .11 (the host of http_boot_url); listen on every address
    // and tftp on loopback name none.
    let controller = r#"
[controller]
listen = "0.0.0.0:5240"
boot_listen = "10.0.0.10:5248"
tftp_listen = "127.0.0.1:69"
http_boot_url = "http://10.0.0.11:5248"
"#;
    let subnets = format!("{controller}{RACK}");
    assert_eq!(
        controller_addresses(&fleet(&subnets, &[])),
        [
            ("10.0.0.10".parse().unwrap(), "boot_listen"),
            ("10.0.0.11".parse().unwrap(), "http_boot_url")
        ]
    );
    check(
        &subnets,
        &[
            auto("a"),
            auto("b"),
            (
                "c",
                "interfaces = [{ name = \"eth0\", subnet = \"rack\", ip = \"10.0.0.11\" }]",
            ),
        ],
        &[],
        &[
            "a=10.0.0.12(Allocated)",
            "b=10.0.0.13(Allocated)",
            "c: address 10.0.0.11 is the controller's own (`[controller] http_boot_url`)",
        ],
    );
    // Without the controller's settings, .10 is the lowest free address.
    check(RACK, &[auto("a")], &[], &["a=10.0.0.10(Allocated)"]);
}

// ---- properties ----

/// Random fleets on two small subnets: each machine auto on one of them, some with held
/// addresses from an earlier allocation.
fn random_fleet(count: usize, subnet_of: &[bool]) -> Fleet {
    let subnets = r#"
[subnets.a]
cidr = "10.1.0.0/26"
gateway = "10.1.0.1"
dynamic_range = { start = "10.1.0.10", end = "10.1.0.19" }
reserved = [{ start = "10.1.0.30", end = "10.1.0.33" }]

[subnets.b]
cidr = "10.2.0.0/27"

[network_templates.on_a]
interfaces = [{ name = "eth0", subnet = "a", link = "auto" }]

[network_templates.on_b]
interfaces = [{ name = "eth0", subnet = "b", link = "auto" }]
"#;
    let names: Vec<String> = (0..count).map(|index| format!("m{index:03}")).collect();
    let machines: Vec<(&str, &str)> = names
        .iter()
        .zip(subnet_of)
        .map(|(name, on_a)| {
            let template = if *on_a {
                "network = \"on_a\""
            } else {
                "network = \"on_b\""
            };
            (name.as_str(), template)
        })
        .collect();
    fleet(subnets, &machines)
}

fn as_held(addresses: &Addresses) -> Vec<HeldAddress> {
    addresses
        .allocations
        .iter()
        .map(|allocation| HeldAddress {
            machine: allocation.machine.to_string(),
            interface: allocation.interface.clone(),
            subnet: allocation.subnet.clone(),
            ip: allocation.ip,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Unique, inside the subnet, outside the dynamic and reserved ranges; once held, an
    /// address does not move when machines are added or removed.
    #[test]
    fn addresses_are_unique_valid_and_stable(
        subnet_of in proptest::collection::vec(any::<bool>(), 1..60),
        removed in proptest::collection::vec(any::<bool>(), 60),
        added in 0usize..20,
    ) {
        let first = random_fleet(subnet_of.len(), &subnet_of);
        let addresses = allocate(&first, &[]);
        prop_assert!(duplicates(&addresses).is_empty());
        for allocation in &addresses.allocations {
            let subnet = first.subnets.iter().find(|s| s.name == allocation.subnet).unwrap();
            prop_assert_eq!(excluded(subnet, allocation.ip), None);
        }
        // Every machine got an address or a "no free address" problem, never both, never neither.
        prop_assert_eq!(
            addresses.allocations.len() + addresses.problems.len(),
            subnet_of.len()
        );

        // Apply: what was allocated is now held. Then remove some machines and add others.
        let held = as_held(&addresses);
        let mut later_subnets = subnet_of.clone();
        later_subnets.extend(std::iter::repeat_n(true, added));
        let later = random_fleet(later_subnets.len(), &later_subnets);
        let mut kept = later.clone();
        kept.machines.retain(|machine| {
            let index: usize = machine.name.as_str()[1..].parse().unwrap();
            !removed.get(index).copied().unwrap_or(false)
        });
        let again = allocate(&kept, &held);
        prop_assert!(duplicates(&again).is_empty());
        for before in &addresses.allocations {
            if let Some(after) = again.of_machine(before.machine.as_str()).next() {
                prop_assert_eq!(after.ip, before.ip);
                prop_assert_eq!(after.origin, AddressOrigin::Held);
            }
        }
        // A removed machine's held address is never handed to another.
        for after in &again.allocations {
            if let Some(holder) = held.iter().find(|held| held.ip == after.ip && held.subnet == after.subnet) {
                prop_assert_eq!(&holder.machine, after.machine.as_str());
            }
        }
    }
}
