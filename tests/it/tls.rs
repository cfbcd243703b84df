//! Two listeners: the operator API over TLS, the boot routes over plain HTTP, each route on one
//! of them only; the CLI pins the API's certificate (the state directory's, one given, or one
//! trusted on first use) and refuses any other, naming both fingerprints.

use crate::support::controller::{stderr, stdout, TestController, FLEET};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `fleet ARGS` with nothing of a controller's state directory: the server, token and
/// configuration directory given, no fingerprint unless in `env`.
fn fleet_elsewhere(config_home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let empty_state = config_home.join("no-state-here");
    Command::new(FLEET)
        .arg("--state-dir")
        .arg(&empty_state)
        .args(args)
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_TLS_FINGERPRINT")
        .env("XDG_CONFIG_HOME", config_home)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("fleet runs")
}

fn fingerprint_of_pem(path: &Path) -> String {
    let certificate = CertificateDer::from_pem_file(path).expect("a PEM certificate");
    fleet::controller::tls::certificate_fingerprint(&certificate)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_machines_works_over_tls_with_the_state_directorys_certificate() {
    let mut controller = TestController::start();
    assert!(
        controller.api_url.starts_with("https://127.0.0.1:"),
        "{}",
        controller.api_url
    );
    assert!(
        controller.url.starts_with("http://127.0.0.1:"),
        "{}",
        controller.url
    );
    controller
        .http()
        .add_idle_machine("tls-1", "52:54:00:7c:00:01")
        .await;
    let output = controller.fleet(&["machines", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows[0]["name"], "tls-1");
    assert!(!stderr(&output).contains("trusting"), "{}", stderr(&output));

    // The certificate made on first start: its key readable by the controller's user only, its
    // fingerprint the one the CLI pinned and the one `fleet serve` printed.
    let tls = controller.state_dir.join("tls");
    assert_eq!(mode(&tls), 0o700);
    assert_eq!(mode(&tls.join("key.pem")), 0o600);
    let fingerprint = fingerprint_of_pem(&tls.join("cert.pem"));
    assert_eq!(controller.fingerprint(), fingerprint);
    controller.kill();
    let report = controller.log();
    assert!(
        report.contains(&format!("cert    {fingerprint}")),
        "{report}"
    );

    // Restarted on the same state directory: the same certificate, still pinned.
    let restarted = TestController::start_in(&controller.state_dir, &[]);
    assert_eq!(restarted.fingerprint(), fingerprint);
    let output = restarted.fleet(&["machines"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("tls-1"), "{}", stdout(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_is_trusted_on_first_use_and_another_certificate_later_is_refused() {
    let first_state = tempfile::tempdir().unwrap();
    let mut first = TestController::start_in(first_state.path(), &[]);
    let config = tempfile::tempdir().unwrap();
    let host_port = first.api_url.trim_start_matches("https://").to_string();
    let call = |controller: &TestController, env: &[(&str, &str)]| {
        let args = [
            "machines",
            "--server",
            &controller.api_url,
            "--token",
            &controller.token,
        ];
        fleet_elsewhere(config.path(), &args, env)
    };

    let output = call(&first, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let first_fingerprint = first.fingerprint();
    assert!(
        stderr(&output).contains(&format!(
            "trusting {host_port}'s certificate {first_fingerprint} (first use"
        )),
        "{}",
        stderr(&output)
    );
    let known = config.path().join("fleet").join("known_controllers");
    let remembered = std::fs::read_to_string(&known).unwrap();
    assert_eq!(remembered, format!("{host_port} {first_fingerprint}\n"));
    let output = call(&first, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("trusting"), "{}", stderr(&output));

    // Another controller on the same address, with a certificate of its own.
    first.kill();
    let second_state = tempfile::tempdir().unwrap();
    let second = TestController::start_listening(second_state.path(), &host_port, &[]);
    let second_fingerprint = second.fingerprint();
    assert_ne!(first_fingerprint, second_fingerprint);
    let output = call(&second, &[]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    for part in [
        &format!("refusing the controller at {host_port}"),
        &format!("presented the certificate {second_fingerprint}"),
        &format!("but {first_fingerprint} is pinned in {}", known.display()),
        &format!("delete the line `{host_port} {first_fingerprint}`"),
        &format!("FLEET_TLS_FINGERPRINT={second_fingerprint}"),
    ] {
        assert!(
            message.contains(part.as_str()),
            "{part:?} missing from: {message}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        remembered,
        "nothing learnt"
    );

    // Accepting it on purpose: by its fingerprint; a wrong one given is refused too.
    let output = call(&second, &[("FLEET_TLS_FINGERPRINT", &second_fingerprint)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = call(&second, &[("FLEET_TLS_FINGERPRINT", &first_fingerprint)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("by --tls-fingerprint"),
        "{}",
        stderr(&output)
    );

    // The first controller's state directory names this address but the first certificate.
    let output = Command::new(FLEET)
        .arg("--state-dir")
        .arg(first_state.path())
        .args(["machines", "--token", &second.token])
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_TLS_FINGERPRINT")
        .env("XDG_CONFIG_HOME", config.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("presented the certificate {second_fingerprint}"))
            && message.contains(&format!(
                "{first_fingerprint} is pinned by the state directory's"
            )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_route_answers_on_its_own_listener_only() {
    let controller = TestController::start();
    let plain = reqwest::Client::new();
    let pinned = controller.pinned_client();
    let status = async |client: &reqwest::Client, url: String| {
        let request = client.get(&url).bearer_auth(&controller.token);
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("{url}: {error}"));
        response.status().as_u16()
    };
    // The boot listener: the machine API and boot scripts, no operator route (not even with
    // the operator's token).
    let boot = &controller.url;
    assert_eq!(
        status(&plain, format!("{boot}/scripts/fleet-runner.sh")).await,
        200
    );
    assert_eq!(
        status(&plain, format!("{boot}/boot/52:54:00:7c:00:02.ipxe")).await,
        200
    );
    for path in ["/api/v1/version", "/api/v1/machines", "/api/v1/events"] {
        assert_eq!(status(&plain, format!("{boot}{path}")).await, 404, "{path}");
    }
    // The API listener: the operator routes, none of the boot ones.
    let api = &controller.api_url;
    assert_eq!(status(&pinned, format!("{api}/api/v1/machines")).await, 200);
    for path in [
        "/scripts/fleet-runner.sh",
        "/boot/52:54:00:7c:00:02.ipxe",
        "/metadata/v1/known?mac=52:54:00:7c:00:02",
    ] {
        assert_eq!(status(&pinned, format!("{api}{path}")).await, 404, "{path}");
    }
    // Plain HTTP to the API listener gets no answer; the CLI refuses an http:// server.
    let plain_api = api.replace("https://", "http://");
    let answer = plain
        .get(format!("{plain_api}/api/v1/version"))
        .send()
        .await;
    assert!(answer.is_err(), "plain HTTP answered: {answer:?}");
    let config = tempfile::tempdir().unwrap();
    let output = fleet_elsewhere(config.path(), &["machines", "--server", &plain_api], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!("served over TLS only: use {api}")),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operators_own_certificate_is_served_and_pinned() {
    let directory = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["ctl.example".to_string()]).unwrap();
    let certificate = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        directory.path().join("api.pem"),
        directory.path().join("api.key"),
    );
    std::fs::write(&cert_path, certificate.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let state = directory.path().join("state");
    let controller = TestController::start_in(
        &state,
        &[
            "--tls-cert",
            &cert_path.to_string_lossy(),
            "--tls-key",
            &key_path.to_string_lossy(),
        ],
    );
    let expected = fleet::controller::tls::certificate_fingerprint(certificate.der());
    assert_eq!(controller.fingerprint(), expected);
    assert!(
        !state.join("tls").exists(),
        "no certificate made when one is given"
    );
    let output = controller.fleet(&["machines"]);
    assert!(output.status.success(), "{}", stderr(&output));
}
