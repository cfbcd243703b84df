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
    let api_url = state.path().join("api-url");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api_url.exists() {
        assert!(Instant::now() < deadline, "the controller did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
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
            .contains("eth1: interface absent on this host; no boot service on it (the rest runs)"),
        "{report}"
    );
    assert!(
        report.contains("api     listening on http://127.0.0.1:"),
        "{report}"
    );
    assert!(report.contains("fleet controller stopped"), "{report}");
}
