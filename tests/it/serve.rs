//! `fleet serve -f fleet.toml.example` on a host whose only interface is loopback (a fresh
//! network namespace): the boot interfaces it names are reported absent, and the rest runs.

use crate::support::controller::FLEET;
use crate::support::netns::NetNs;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn the_example_serves_on_a_loopback_only_host() {
    let namespace = NetNs::new("fs");
    let state = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/fleet.toml.example");
    let controller = namespace
        .command(FLEET)
        .args([
            "serve",
            "-f",
            example,
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_serving(state.path());
    let client = |args: &[&str]| {
        namespace
            .command(FLEET)
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .output()
            .unwrap()
    };
    let added = client(&[
        "machine",
        "add",
        "try-1",
        "--mac",
        "52:54:00:00:00:09",
        "--power-type",
        "manual",
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let listed = client(&["machines", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows[0]["name"], "try-1");
    assert_eq!(rows[0]["status"], "commissioning");
    // SIGTERM: a clean stop, with the start-up report on stderr.
    std::process::Command::new("kill")
        .args(["-TERM", &controller.id().to_string()])
        .status()
        .unwrap();
    let output = controller.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}");
    assert!(
        report
            .contains("eth1: interface absent or without an IPv4 address on this host; no DHCP on it (the rest runs)"),
        "{report}"
    );
    assert!(
        report.contains("api     listening on https://127.0.0.1:"),
        "{report}"
    );
    // The example's boot listener: all interfaces, dialled through loopback here.
    assert!(
        report.contains("boot    listening on http://127.0.0.1:5248"),
        "{report}"
    );
    assert!(report.contains("fleet controller stopped"), "{report}");
}

/// `fleet serve` starts DHCP on the fleet file's boot interface; busybox udhcpc on the other end
/// of a veth pair gets an address from the dynamic range, and the lease reaches the store.
#[test]
fn fleet_serve_answers_dhcp_on_its_boot_interface() {
    use crate::support::netns::link;
    let (server, client) = (NetNs::new("fd"), NetNs::new("fc"));
    let (server_end, client_end) = link(&server, "10.78.0.1/24", &client, "");
    let state = tempfile::tempdir().unwrap();
    let fleet_file = state.path().join("fleet.toml");
    std::fs::write(
        &fleet_file,
        format!(
            r#"[controller]
listen = "10.78.0.1:5240"
tftp_listen = "10.78.0.1:69"
dhcp_interfaces = ["{server_end}"]

[subnets.lab]
cidr = "10.78.0.0/24"
gateway = "10.78.0.1"
dns = ["10.78.0.1"]
interface = "{server_end}"
dynamic_range = {{ start = "10.78.0.100", end = "10.78.0.150" }}
"#
        ),
    )
    .unwrap();
    // A machine added by hand (in the store, not in the fleet file) gets its lease events too.
    let client_mac = client_mac_of(&client, &client_end);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = format!("sqlite://{}", state.path().join("fleet.db").display());
    runtime.block_on(async {
        let store = fleet::store::Store::open(&database).await.unwrap();
        let new = fleet::store::NewMachine {
            name: fleet::model::MachineName::parse("lab-1").unwrap(),
            status: fleet::model::Status::New,
            macs: vec![client_mac],
            arch: None,
            power_type: "manual".into(),
            power_params: serde_json::json!({}),
            bmc_address: None,
            image: None,
            tags: vec![],
            deployed_os: None,
        };
        store.create_machine(&new, "test").await.unwrap();
        store.close().await;
    });
    let controller = server
        .command(FLEET)
        .args(["serve", "-f"])
        .arg(&fleet_file)
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_serving(state.path());
    let bound = state.path().join("bound.env");
    let script = state.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
            bound.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let lease = client
        .command("busybox")
        .args([
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "10",
            "-T",
            "1",
            "-A",
            "1",
            "-i",
            &client_end,
            "-s",
        ])
        .arg(&script)
        .output()
        .expect("busybox runs (.ci/setup-dhcp installs busybox-static)");
    let environment = std::fs::read_to_string(&bound).unwrap_or_default();
    std::process::Command::new("kill")
        .args(["-TERM", &controller.id().to_string()])
        .status()
        .unwrap();
    let output = controller.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(
        lease.status.success(),
        "udhcpc: {}\n{report}",
        String::from_utf8_lossy(&lease.stderr)
    );
    assert!(
        environment.contains("ip=10.78.0.1"),
        "an address from the dynamic range: {environment}"
    );
    assert!(environment.contains("router=10.78.0.1"), "{environment}");
    assert!(
        report.contains(&format!("dhcp    {server_end} (10.78.0.1): serving")),
        "{report}"
    );
    // The lease was written to the store before the controller stopped, with events on lab-1.
    let (leases, events) = runtime.block_on(async {
        let store = fleet::store::Store::open(&database).await.unwrap();
        let filter = fleet::store::EventFilter {
            machine: Some("lab-1".into()),
            ..Default::default()
        };
        (
            store.leases().await.unwrap(),
            store.events(&filter).await.unwrap(),
        )
    });
    let lease_events: Vec<_> = events
        .iter()
        .filter(|event| event.kind == "lease")
        .collect();
    assert!(
        !lease_events.is_empty(),
        "lease events on lab-1: {events:#?}"
    );
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(
        leases[0].ip.to_string().starts_with("10.78.0.1"),
        "{leases:?}"
    );
}

/// Waits until the controller has written the API's address into its state directory.
fn wait_until_serving(state_dir: &std::path::Path) {
    let api_url = state_dir.join("api-url");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api_url.exists() {
        assert!(Instant::now() < deadline, "the controller did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The MAC address of `interface` inside `namespace`.
fn client_mac_of(namespace: &NetNs, interface: &str) -> fleet::model::MacAddr {
    // /sys/class/net shows the reader's namespace: ask `ip` inside the namespace instead.
    let output = namespace.ip(&["-o", "link", "show", interface]);
    let line = String::from_utf8_lossy(&output.stdout).to_string();
    let mac = line
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .expect("a link/ether address");
    fleet::model::MacAddr::parse(mac).unwrap()
}
