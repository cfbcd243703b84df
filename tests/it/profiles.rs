//! Profiles that extend others, the deployment keys (kernel parameters, SSH keys, user and
//! vendor data), and `fleet explain`, which says where each of a machine's values comes from.

use assert_cmd::Command;
use fleet::config::{self, Layer, Role};
use std::path::{Path, PathBuf};

const FLEET: &str = "tests/fixtures/profiles/fleet.toml";
const BROKEN: &str = "tests/fixtures/profiles/broken.toml";

fn load() -> config::Fleet {
    match config::load(&[PathBuf::from(FLEET)]) {
        Ok(fleet) => fleet,
        Err(diagnostics) => panic!("{}", diagnostics.render(false)),
    }
}

const OPS_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA3ldeHeRPLQ0TyMDBzbdW7Y36B+kNNg1blrHZsywfgX ops@base";
const ALICE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII9DtyWaBjAxCUHbUGp99CrMtd4FVh5wNYmepcWF3Kz8 alice@laptop";

#[test]
fn a_chain_of_profiles_fills_in_what_each_leaves_out() {
    let fleet = load();
    let g1 = fleet.machine("g1").unwrap();
    // gpu's own kernel parameters replace base's; the rest comes from base.
    assert_eq!(g1.deploy.kernel_command_line(), "console=ttyS0 nomodeset");
    assert_eq!(g1.deploy.ephemeral_command_line(), "console=ttyS1,115200");
    assert_eq!(g1.deploy.ssh_keys, [OPS_KEY]);
    let vendor = &g1.deploy.vendor_data;
    assert_eq!(
        vendor.http_proxy.as_deref(),
        Some("http://proxy.example.net:3128")
    );
    assert_eq!(
        vendor.ntp_servers.as_deref(),
        Some(&["ntp1.example.net".to_string()][..])
    );
    assert_eq!(g1.tags, ["base", "gpu"], "tags add up along the chain");
    assert_eq!(g1.image.as_deref(), Some("noble"), "the policy's default");
    assert!(g1.deploy.user_data.is_none());
    // A machine that writes none of the keys shares its profile's settings.
    let gpu = &fleet.profiles["gpu"];
    assert!(std::sync::Arc::ptr_eq(&g1.deploy, &gpu.deploy));
    assert_eq!(gpu.extends.as_deref(), Some("base"));
}

#[test]
fn a_machine_overrides_its_profile_chain_key_by_key() {
    let fleet = load();
    let g2 = fleet.machine("g2").unwrap();
    // Three layers: gpu-big → gpu → base, under the machine's own keys.
    assert_eq!(
        g2.deploy.kernel_params.as_deref(),
        Some(&[][..]),
        "[] clears"
    );
    assert_eq!(g2.deploy.ephemeral_command_line(), "console=ttyS1,115200");
    assert_eq!(g2.deploy.ssh_keys, [OPS_KEY, ALICE_KEY], "keys add up");
    let vendor = &g2.deploy.vendor_data;
    assert_eq!(
        vendor.http_proxy.as_deref(),
        Some("http://other.example.net:3128")
    );
    assert_eq!(
        vendor.ntp_servers.as_deref(),
        Some(&["ntp1.example.net".to_string()][..]),
        "the keys the machine leaves out of vendor_data are still base's"
    );
    assert_eq!(g2.expect.min_memory_mib, Some(256 * 1024));
    let user_data = g2.deploy.user_data.as_ref().unwrap();
    assert!(user_data
        .text
        .starts_with("#cloud-config\npackages: [nvidia-driver]"));
    assert!(user_data
        .file
        .as_ref()
        .unwrap()
        .ends_with("profiles/gpu.yaml"));
    let plain = fleet.machine("plain").unwrap();
    assert!(plain.deploy.is_empty());
}

/// Loads `BROKEN` and asserts exactly these errors, each at its line:column.
#[test]
fn every_error_of_profiles_and_deployment_keys_is_placed() {
    let expected: &[(usize, usize, &str)] = &[
        (3, 11, "profile cycle: a → b → a"),
        (9, 11, "no profile is named `nope`"),
        (
            12,
            17,
            "`kernel_params` holds a newline or another control character",
        ),
        (13, 27, "`fleet.url=http://x` is set by the controller"),
        (
            14,
            13,
            "the key says `ssh-rsa`, but its data is a `ssh-ed25519` key",
        ),
        (14, 95, "this is not an SSH public key"),
        (14, 110, "`ssh-ed2551` is not an SSH key type"),
        (
            15,
            13,
            "the user data begins with `packages: [htop]`, and cloud-init would ignore it",
        ),
        (
            16,
            30,
            "`http_proxy` must be an http:// or https:// URL, found `ftp://proxy.example.net`",
        ),
        (16, 69, "`apt_proxy` carries credentials"),
        (16, 109, "`bad_name` is not an NTP server"),
        (16, 136, "`10.0.0.1` is not a DNS search domain"),
        (16, 149, "unknown key `ntp` in `vendor_data`"),
        (19, 22, "cannot read the user data file"),
        (20, 17, "`kernel_params` has an unclosed `\"`"),
        (26, 13, "this is a private key"),
    ];
    let diagnostics = match config::load(&[PathBuf::from(BROKEN)]) {
        Ok(_) => panic!("{BROKEN} should not validate"),
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
            "no `{message}` at {line}:{column}; found:\n{}",
            found.join("\n")
        );
    }
    assert_eq!(diagnostics.len(), expected.len(), "{}", found.join("\n"));
    // The credentials are not repeated in the message.
    assert!(!found.iter().any(|line| line.contains("u:p@")));
}

#[test]
fn explain_tells_where_each_value_comes_from() {
    let explanation = config::explain(&[PathBuf::from(FLEET)], "g2", None).unwrap();
    assert_eq!(explanation.profiles, ["gpu-big", "gpu", "base"]);
    let field = |name: &str| {
        (explanation.fields.iter())
            .find(|field| field.field == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    // Two profile layers and the machine: the machine's `[]` wins.
    let kernel = field("kernel_params");
    let places: Vec<(Layer, Option<&str>, Option<usize>, Role)> = (kernel.layers.iter())
        .map(|layer| {
            (
                layer.layer,
                layer.profile.as_deref(),
                layer.line,
                layer.role,
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            (Layer::Machine, None, Some(34), Role::Wins),
            (Layer::Profile, Some("gpu"), Some(16), Role::Overridden),
            (Layer::Profile, Some("base"), Some(9), Role::Overridden),
        ]
    );
    assert_eq!(kernel.value, "");
    let ephemeral = field("ephemeral_kernel_params");
    assert_eq!(ephemeral.value, "console=ttyS1,115200");
    assert_eq!(ephemeral.layers.len(), 1);
    assert_eq!(ephemeral.layers[0].profile.as_deref(), Some("gpu"));
    let image = field("image");
    assert_eq!(image.layers[0].layer, Layer::Policy);
    assert_eq!(image.layers[0].line, Some(6));
    assert_eq!(field("arch").layers[0].layer, Layer::Default);
    let keys = field("ssh_keys");
    assert!(keys.layers.iter().all(|layer| layer.role == Role::Adds));
    assert_eq!(keys.layers.len(), 2);
    assert_eq!(field("vendor_data.ntp_servers").layers[0].line, Some(11));
    assert_eq!(
        field("vendor_data.apt_proxy").value,
        serde_json::Value::Null
    );
}

fn fleet_command() -> Command {
    let mut command = Command::cargo_bin("fleet").unwrap();
    command.env("NO_COLOR", "1");
    command
}

/// The closing note's figure: `fleet explain` for a value that comes through two profile
/// layers (gpu over base), in both forms.
#[test]
fn fleet_explain_shows_two_profile_layers() {
    let output = fleet_command()
        .args(["explain", "g1", "kernel_params", "-f", FLEET])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(output).unwrap();
    let expected = format!(
        "machine g1 (profile gpu → base)\n\
         kernel_params = \"console=ttyS0 nomodeset\"\n    \
         ← profile gpu ({FLEET}:16) wins: [\"console=ttyS0\", \"nomodeset\"]\n    \
         ✗ profile base ({FLEET}:9) overridden: \"console=ttyS0\"\n"
    );
    assert_eq!(text, expected);

    let output = fleet_command()
        .args(["explain", "g1", "kernel_params", "--json", "-f", FLEET])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let json: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(json["machine"], "g1");
    assert_eq!(json["profiles"], serde_json::json!(["gpu", "base"]));
    let field = &json["fields"][0];
    assert_eq!(field["field"], "kernel_params");
    assert_eq!(field["value"], "console=ttyS0 nomodeset");
    assert_eq!(field["combine"], "nearest");
    let layers = field["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0]["profile"], "gpu");
    assert_eq!(layers[0]["line"], 16);
    assert_eq!(layers[0]["role"], "wins");
    assert_eq!(layers[1]["profile"], "base");
    assert_eq!(layers[1]["line"], 9);
    assert_eq!(layers[1]["role"], "overridden");
    assert_eq!(
        Path::new(layers[1]["file"].as_str().unwrap()),
        Path::new(FLEET)
    );
}

#[test]
fn fleet_explain_refuses_an_unknown_machine_or_field() {
    let output = fleet_command()
        .args(["explain", "g3", "-f", FLEET])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let stderr = String::from_utf8(output).unwrap();
    assert!(stderr.contains("no machine is named `g3`"), "{stderr}");
    let output = fleet_command()
        .args(["explain", "g1", "kernel_param", "-f", FLEET])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let stderr = String::from_utf8(output).unwrap();
    assert!(
        stderr.contains(
            "`kernel_param` is not a field a profile can give (did you mean `kernel_params`?)"
        ),
        "{stderr}"
    );
    // A group: every key of vendor_data.
    let output = fleet_command()
        .args(["explain", "g1", "vendor_data", "-f", FLEET])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(output).unwrap();
    assert!(
        text.contains("vendor_data.http_proxy = \"http://proxy.example.net:3128\""),
        "{text}"
    );
    assert!(text.contains("vendor_data.apt_proxy is not set"), "{text}");
}

/// The example's own section: r1-gpu1 through gpu and base.
#[test]
fn the_example_gpu_machine_takes_its_profile_chain() {
    let fleet = match config::load(&[PathBuf::from("fleet.toml.example")]) {
        Ok(fleet) => fleet,
        Err(diagnostics) => panic!("{}", diagnostics.render(false)),
    };
    let machine = fleet.machine("r1-gpu1").unwrap();
    let deploy = &machine.deploy;
    assert_eq!(
        deploy.kernel_command_line(),
        "console=tty0 console=ttyS0,115200 nomodeset"
    );
    assert_eq!(deploy.ephemeral_command_line(), "console=ttyS0,115200");
    assert_eq!(deploy.ssh_keys.len(), 2, "base's and the machine's");
    let vendor = &deploy.vendor_data;
    assert_eq!(
        vendor.http_proxy.as_deref(),
        Some("http://proxy.example.net:3128")
    );
    assert_eq!(
        vendor.apt_proxy.as_deref(),
        Some("http://apt-cache.example.net:3142")
    );
    assert_eq!(
        vendor.ntp_servers.as_deref(),
        Some(&["ntp.gpu.example.net".to_string()][..])
    );
    assert!(deploy
        .user_data
        .as_ref()
        .unwrap()
        .text
        .starts_with("#cloud-config"));
}
