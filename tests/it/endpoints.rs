//! Who may call what: the table of every HTTP endpoint, its listener and who may call it (the
//! closing note of issue 12 prints the same table). The table is checked against the routes in
//! the source, so a new route cannot be added without deciding who may call it; then every
//! endpoint that takes a credential is called with no token, a wrong one, another machine's, an
//! expired one, a revoked one and a read-only one, and must refuse each that is not its own.

use crate::support::controller::TestController;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// The operator API: HTTPS on `listen`.
    Api,
    /// The boot routes and the machine API: plain HTTP on `boot_listen`.
    Boot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// No credential. Each says why that is safe and what bounds it.
    Anonymous(&'static str),
    /// A read-only or an admin operator token.
    Reader,
    /// An admin operator token only.
    Admin,
    /// The token of the machine's current run (from the one exchange of its boot).
    Machine,
    /// A one-shot secret: a boot or registration secret traded once for a run token, or a
    /// deployment's call-back secret (the installed system's one call).
    OneShotSecret,
    /// Another controller of the store: a proof made with the controllers' secret key (the
    /// `x-fleet-peer` header), never a token.
    Peer,
}

#[derive(Debug, Clone, Copy)]
struct Endpoint {
    listener: Listener,
    method: &'static str,
    path: &'static str,
    who: Who,
}

const fn endpoint(
    listener: Listener,
    method: &'static str,
    path: &'static str,
    who: Who,
) -> Endpoint {
    Endpoint {
        listener,
        method,
        path,
        who,
    }
}

use Listener::{Api, Boot};
use Who::{Admin, Anonymous, Machine, OneShotSecret, Peer, Reader};

/// Every endpoint of the controller.
const ENDPOINTS: &[Endpoint] = &[
    endpoint(Api, "GET", "/api/v1/version", Anonymous("name, version, store kind and power types only")),
    endpoint(Api, "GET", "/api/v1/machines", Reader),
    endpoint(Api, "POST", "/api/v1/machines", Admin),
    endpoint(Api, "GET", "/api/v1/machines/{name}", Reader),
    endpoint(Api, "POST", "/api/v1/machines/{name}/actions/{action}", Admin),
    endpoint(Api, "POST", "/api/v1/machines/{name}/registration", Admin),
    endpoint(Api, "POST", "/api/v1/machines/{name}/clone", Admin),
    endpoint(Api, "GET", "/api/v1/events", Reader),
    endpoint(Api, "GET", "/api/v1/events/stream", Reader),
    endpoint(Api, "GET", "/api/v1/observed", Reader),
    endpoint(Api, "POST", "/api/v1/applies", Admin),
    endpoint(Api, "GET", "/api/v1/applies/{id}", Reader),
    endpoint(Api, "GET", "/api/v1/controllers", Reader),
    endpoint(Api, "GET", "/api/v1/images", Reader),
    endpoint(Api, "POST", "/api/v1/images/prune", Admin),
    endpoint(Api, "GET", "/api/v1/tokens", Admin),
    endpoint(Api, "POST", "/api/v1/tokens", Admin),
    endpoint(Api, "DELETE", "/api/v1/tokens/{name}", Admin),
    endpoint(Api, "POST", "/api/v1/tokens/{name}/rotate", Admin),
    endpoint(Api, "GET", "/metrics", Reader),
    endpoint(Boot, "GET", "/boot/{script}", Anonymous("the iPXE script: a one-shot boot secret, never a token; rate-limited per source address")),
    endpoint(Boot, "GET", "/boot/files/{image}/{file}", Anonymous("kernels, initrds, images: nothing secret; rate-limited per source address")),
    endpoint(Boot, "GET", "/boot/by-mac/{mac}/{image}/{file}", Anonymous("the same files, counted on the machine; rate-limited per source address")),
    endpoint(Boot, "GET", "/boot/loaders/{file}", Anonymous("first-stage loaders (ipxe.efi) for UEFI HTTP boot, the files TFTP serves; rate-limited per source address")),
    endpoint(Boot, "GET", "/boot/peer/files/{sha256}", Peer),
    endpoint(Boot, "GET", "/boot/booted", Anonymous("a boot stage report: an event (summarised), never counts as the machine heard from")),
    endpoint(Boot, "GET", "/scripts/fleet-runner.sh", Anonymous("the public runner script")),
    endpoint(Boot, "GET", "/scripts/register-live.sh", Anonymous("the public register-live script")),
    endpoint(Boot, "GET", "/metadata/v1/known", Anonymous("`known` or `unknown`, never a name; rate-limited per source address")),
    endpoint(Boot, "POST", "/metadata/v1/enlist", Anonymous("creates `new` records or fills empty fields; never returns an existing machine's credentials; its own stricter rate limit")),
    endpoint(Boot, "POST", "/metadata/v1/machines/{name}/exchange", OneShotSecret),
    endpoint(Boot, "GET", "/metadata/v1/machines/{name}/instructions", Machine),
    endpoint(Boot, "GET", "/metadata/v1/machines/{name}/scripts/{script}", Machine),
    endpoint(Boot, "POST", "/metadata/v1/machines/{name}/results", Machine),
    endpoint(Boot, "POST", "/metadata/v1/machines/{name}/heartbeat", Machine),
    endpoint(Boot, "POST", "/metadata/v1/machines/{name}/signal", Machine),
    endpoint(Boot, "GET", "/metadata/v1/machines/{name}/deployment", Machine),
    endpoint(Boot, "POST", "/metadata/v1/machines/{name}/deployed", OneShotSecret),
];

/// The files that declare routes, and the prefix their routes are nested under.
const ROUTE_FILES: &[(&str, &str)] = &[
    ("src/api/mod.rs", "/api/v1"),
    ("src/api/scrape.rs", ""),
    ("src/api/metadata.rs", ""),
    ("src/boot/http.rs", ""),
];

/// Every `.route("PATH"` in `text`.
fn routes_in(text: &str) -> Vec<String> {
    text.split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

#[test]
fn every_route_in_the_source_is_in_the_table_and_the_table_has_no_other() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut declared = Vec::new();
    for (file, prefix) in ROUTE_FILES {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        for route in routes_in(&text) {
            // api/mod.rs nests the operator routes under /api/v1 but writes /api/v1/version whole.
            let full = if route.starts_with("/api/") || prefix.is_empty() {
                route
            } else {
                format!("{prefix}{route}")
            };
            declared.push(full);
        }
    }
    declared.sort();
    declared.dedup();
    let mut tabled: Vec<String> = ENDPOINTS.iter().map(|e| e.path.to_string()).collect();
    tabled.sort();
    tabled.dedup();
    assert_eq!(
        declared, tabled,
        "the routes in the source and the endpoint table differ: place every new route in ENDPOINTS with who may call it"
    );
}

/// The credentials the refusal test tries (besides none and a wrong one).
struct Credentials {
    admin: String,
    read_only: String,
    expired_operator: String,
    revoked_operator: String,
    /// Another machine's current run token.
    second_machine: String,
    /// The token of `first`'s run that has ended.
    ended_run: String,
}

const WRONG: &str = "0000000000000000000000000000000000000000000000000000000000000000";

async fn make_operator_token(
    controller: &TestController,
    name: &str,
    expires: Option<u64>,
) -> String {
    let mut body = serde_json::json!({ "name": name, "role": "admin" });
    if name == "reader" {
        body["role"] = "read-only".into();
    }
    if let Some(seconds) = expires {
        body["expires_in_seconds"] = seconds.into();
    }
    let (code, answer) = controller.http().post("/tokens", body).await;
    assert_eq!(code, 201, "{answer}");
    answer["secret"].as_str().expect("a secret").to_string()
}

/// Enlists a new machine (its enlist run's token comes with the new record).
async fn enlist(controller: &TestController, mac: &str) -> (String, String) {
    let body = serde_json::json!({ "architecture": "amd64", "boot_mac": mac, "macs": [mac] });
    let answer = reqwest::Client::new()
        .post(format!("{}/metadata/v1/enlist", controller.url))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 201);
    let text = answer.text().await.unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{key} ")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    (value("machine"), value("token"))
}

/// Ends a machine's enlist run: its final signal.
async fn end_run(controller: &TestController, name: &str, token: &str) {
    let client = reqwest::Client::new();
    let instructions = client
        .get(format!(
            "{}/metadata/v1/machines/{name}/instructions",
            controller.url
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let run = instructions
        .lines()
        .find_map(|line| line.strip_prefix("run "))
        .unwrap_or_else(|| panic!("no run in {instructions}"))
        .to_string();
    let answer = client
        .post(format!(
            "{}/metadata/v1/machines/{name}/signal",
            controller.url
        ))
        .bearer_auth(token)
        .body(serde_json::json!({ "run": run, "result": "ok" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
}

async fn credentials(controller: &TestController) -> (Credentials, String) {
    let read_only = make_operator_token(controller, "reader", None).await;
    let expired_operator = make_operator_token(controller, "short-lived", Some(1)).await;
    let revoked_operator = make_operator_token(controller, "revoked", None).await;
    let (code, answer) = controller.http().delete("/tokens/revoked").await;
    assert_eq!(code, 200, "{answer}");
    let (ended_name, ended_run) = enlist(controller, "52:54:00:e0:00:01").await;
    end_run(controller, &ended_name, &ended_run).await;
    let (second, second_machine) = enlist(controller, "52:54:00:e0:00:02").await;
    assert_ne!(second, ended_name);
    // The machine whose endpoints are called is `ended_name`, its run over; the short-lived
    // operator token expires meanwhile.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let credentials = Credentials {
        admin: controller.token.clone(),
        read_only,
        expired_operator,
        revoked_operator,
        second_machine,
        ended_run,
    };
    (credentials, ended_name)
}

fn concrete(path: &str, machine: &str) -> String {
    path.replace("{name}", machine)
        .replace("{action}", "lock")
        .replace("{id}", "1")
        .replace("{script}", "00-arch")
        .replace("{sha256}", &"0".repeat(64))
}

async fn call(
    controller: &TestController,
    endpoint: &Endpoint,
    machine: &str,
    token: Option<&str>,
) -> (u16, String) {
    let (client, base) = match endpoint.listener {
        Api => (controller.pinned_client(), controller.api_url.clone()),
        Boot => (reqwest::Client::new(), controller.url.clone()),
    };
    let method = reqwest::Method::from_bytes(endpoint.method.as_bytes()).unwrap();
    let mut request = client
        .request(
            method,
            format!("{base}{}", concrete(endpoint.path, machine)),
        )
        .header("content-type", "application/json")
        .body("{}");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// What each credential must get from an endpoint that `who` guards: the refusal's status, or
/// `None` where the credential is the right one.
fn expected_refusal(who: Who, credential: &str) -> Option<u16> {
    match (who, credential) {
        (Reader, "admin" | "read-only") | (Admin, "admin") => None,
        (Admin, "read-only") => Some(403),
        (Reader | Admin, _) => Some(401),
        (Machine, "another machine's") => Some(403),
        (Machine, _) => Some(401),
        (Peer, _) => Some(401),
        (OneShotSecret | Anonymous(_), _) => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_guarded_endpoint_refuses_every_credential_but_its_own() {
    let controller = TestController::start();
    let (credentials, machine) = credentials(&controller).await;
    let tries: [(&str, Option<&str>); 8] = [
        ("none", None),
        ("wrong", Some(WRONG)),
        ("another machine's", Some(&credentials.second_machine)),
        ("expired operator", Some(&credentials.expired_operator)),
        ("revoked operator", Some(&credentials.revoked_operator)),
        ("ended run", Some(&credentials.ended_run)),
        ("read-only", Some(&credentials.read_only)),
        ("admin", Some(&credentials.admin)),
    ];
    let mut checked = 0;
    for endpoint in ENDPOINTS {
        if matches!(endpoint.who, Anonymous(_) | OneShotSecret) {
            continue;
        }
        for (credential, token) in tries {
            let Some(refusal) = expected_refusal(endpoint.who, credential) else {
                continue;
            };
            let (status, answer) = call(&controller, endpoint, &machine, token).await;
            assert_eq!(
                status, refusal,
                "{} {} with {credential} token: {answer}",
                endpoint.method, endpoint.path
            );
            checked += 1;
        }
    }
    assert!(checked >= 100, "only {checked} refusals checked");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_one_shot_exchange_refuses_a_wrong_secret_and_tokens() {
    let controller = TestController::start();
    let (name, token) = enlist(&controller, "52:54:00:e1:00:01").await;
    let exchange = ENDPOINTS
        .iter()
        .find(|endpoint| endpoint.who == OneShotSecret)
        .unwrap();
    for body in [
        serde_json::json!({ "boot": WRONG }),
        serde_json::json!({ "boot": token }),
        serde_json::json!({ "registration": WRONG }),
    ] {
        let answer = reqwest::Client::new()
            .post(format!(
                "{}{}",
                controller.url,
                concrete(exchange.path, &name)
            ))
            .bearer_auth(&controller.token)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        assert!(
            status >= 400 && !text.contains("token "),
            "{body}: {status} {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_routes_are_not_on_the_boot_listener_nor_boot_routes_on_the_api() {
    let controller = TestController::start();
    for endpoint in ENDPOINTS {
        let other = match endpoint.listener {
            Api => Endpoint {
                listener: Boot,
                ..*endpoint
            },
            Boot => Endpoint {
                listener: Api,
                ..*endpoint
            },
        };
        let (status, answer) = call(&controller, &other, "m", Some(&controller.token)).await;
        assert_eq!(
            status, 404,
            "{} {} on the wrong listener: {answer}",
            endpoint.method, endpoint.path
        );
    }
}
