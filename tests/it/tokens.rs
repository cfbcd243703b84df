//! Operator tokens against the real binary: named tokens, a read-only role, revocation, expiry,
//! rotation; the store keeps only hashes; every event's actor is the token's name; an older
//! store's plain token is moved and keeps working; the last admin token stays.

use crate::both_backends;
use crate::support::controller::{stderr, stdout, Api, TestController};
use crate::support::db::{drop_postgres_store, empty_postgres_database};
use fleet::services::token::{prepare_at_start, StartTokens};
use fleet::store::{NewOperatorToken, OperatorRole, Store, StoreError};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// Creates a token with the CLI (as the start-up admin token); returns its secret.
fn create_with_cli(controller: &TestController, args: &[&str]) -> String {
    let mut command = vec!["token", "create"];
    command.extend_from_slice(args);
    let output = controller.fleet(&command);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("FLEET_TOKEN"),
        "says how to use it: {}",
        stderr(&output)
    );
    let secret = stdout(&output).trim().to_string();
    assert_eq!(secret.len(), 64, "the secret alone on stdout: {secret}");
    secret
}

/// Creates a token through the API; returns its secret.
async fn create_with_api(api: &Api, body: Value) -> String {
    let (status, answer) = api.post("/tokens", body).await;
    assert_eq!(status, 201, "{answer}");
    answer["secret"].as_str().expect("a secret").to_string()
}

fn message(answer: &Value) -> &str {
    answer["error"]["message"].as_str().unwrap_or_default()
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_token_reads_but_every_change_is_refused_naming_its_role() {
    let controller = TestController::start();
    let admin = controller.http();
    admin.add_idle_machine("node-1", "52:54:00:00:01:01").await;
    let secret = create_with_cli(&controller, &["viewer", "--role", "read-only"]);
    let viewer = admin.with_token(&secret);

    for path in ["/machines", "/machines/node-1", "/events", "/observed"] {
        let (status, answer) = viewer.get(path).await;
        assert_eq!(status, 200, "GET {path}: {answer}");
    }
    let refused = [
        (
            Method::POST,
            "/machines",
            json!({"name": "node-2", "macs": []}),
        ),
        (Method::POST, "/machines/node-1/actions/delete", json!({})),
        (Method::POST, "/applies", json!({})),
        (Method::POST, "/tokens", json!({"name": "mine"})),
        (Method::POST, "/tokens/viewer/rotate", json!({})),
        (Method::DELETE, "/tokens/viewer", json!({})),
        (Method::GET, "/tokens", json!({})),
    ];
    for (method, path, body) in refused {
        let response = viewer
            .request(method.clone(), path)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
        assert_eq!(answer["error"]["role"], "read-only", "{answer}");
        assert!(
            message(&answer).contains("`viewer` is read-only")
                && message(&answer).contains("admin"),
            "{method} {path}: {answer}"
        );
    }
    // Nothing changed: node-1 is still there, no node-2, the viewer not rotated away.
    let (_, machines) = admin.get("/machines").await;
    assert_eq!(machines.as_array().unwrap().len(), 1, "{machines}");
    assert_eq!(viewer.get("/machines").await.0, 200);

    // The CLI with the read-only token: reads, and a change fails naming the role.
    let output = controller.fleet(&["--token", &secret, "machines"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = controller.fleet(&["--token", &secret, "machine", "delete", "node-1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("read-only"), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_and_expired_tokens_are_refused_saying_so() {
    let controller = TestController::start();
    let admin = controller.http();
    let revoked = create_with_api(&admin, json!({"name": "ci"})).await;
    assert_eq!(admin.with_token(&revoked).get("/machines").await.0, 200);
    let output = controller.fleet(&["token", "revoke", "ci"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (status, answer) = admin.with_token(&revoked).get("/machines").await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "token_revoked");
    assert!(message(&answer).contains("`ci` was revoked"), "{answer}");
    // A revoked name stays taken, and is not revoked twice.
    let (status, answer) = admin.post("/tokens", json!({"name": "ci"})).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        message(&answer).contains("revoked tokens stay taken"),
        "{answer}"
    );
    assert_eq!(admin.delete("/tokens/ci").await.0, 409);

    let expiring = create_with_api(
        &admin,
        json!({"name": "short", "role": "read-only", "expires_in_seconds": 1}),
    )
    .await;
    assert_eq!(admin.with_token(&expiring).get("/machines").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, answer) = admin.with_token(&expiring).get("/machines").await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "token_expired");
    assert!(message(&answer).contains("`short` expired at"), "{answer}");
    // Bad lifetimes and names are refused before anything is made.
    let output = controller.fleet(&["token", "create", "x", "--expires", "soon"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert_eq!(admin.post("/tokens", json!({"name": "a/b"})).await.0, 400);

    // The list shows every token, revoked and expired ones included, and no secret.
    let output = controller.fleet(&["token", "list"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let listed = stdout(&output);
    for expected in [
        "NAME",
        "LAST USED",
        "operator",
        "admin",
        "ci",
        "short",
        "read-only",
        "3 tokens",
    ] {
        assert!(listed.contains(expected), "{expected}: {listed}");
    }
    assert!(
        !listed.contains(&revoked) && !listed.contains(&expiring),
        "{listed}"
    );
    let output = controller.fleet(&["token", "list", "--json"]);
    let tokens: Value = serde_json::from_slice(&output.stdout).unwrap();
    let ci = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["name"] == "ci")
        .unwrap();
    assert!(ci["revoked_at"].is_string(), "{ci}");
    assert!(ci["last_used_at"].is_string(), "{ci}");
    assert!(
        ci.get("secret").is_none() && ci.get("secret_hash").is_none(),
        "{ci}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_token_takes_its_new_secret_only() {
    let controller = TestController::start();
    let admin = controller.http();
    let old = create_with_api(&admin, json!({"name": "deploy-bot", "role": "read-only"})).await;
    let output = controller.fleet(&["token", "rotate", "deploy-bot"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let new = stdout(&output).trim().to_string();
    assert_ne!(new, old);
    let (status, answer) = admin.with_token(&old).get("/machines").await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(admin.with_token(&new).get("/machines").await.0, 200);
    // Its role stayed.
    assert_eq!(
        admin
            .with_token(&new)
            .post("/machines", json!({"name": "x", "macs": []}))
            .await
            .0,
        403
    );
    let (_, events) = admin.get("/events").await;
    let rotated = events
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["kind"] == "token" && event["action"] == "rotated")
        .expect("a rotation event");
    assert_eq!(rotated["actor"], "operator", "{rotated}");
    assert_eq!(rotated["detail"]["token"], "deploy-bot", "{rotated}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_holds_hashes_of_tokens_and_never_a_secret() {
    let controller = TestController::start();
    let admin = controller.http();
    let mut secrets = vec![controller.token.clone()];
    secrets.push(create_with_api(&admin, json!({"name": "alice"})).await);
    secrets.push(create_with_api(&admin, json!({"name": "viewer", "role": "read-only"})).await);
    let (status, rotated) = admin.post("/tokens/viewer/rotate", json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    secrets.push(rotated["secret"].as_str().unwrap().to_string());

    let store = controller.store().await;
    let rows = sqlx::query("SELECT name, secret_hash FROM operator_tokens ORDER BY name")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let hashes: Vec<(String, String)> = rows
        .iter()
        .map(|row| (row.get("name"), row.get("secret_hash")))
        .collect();
    let expected = vec![
        ("alice".to_string(), hash(&secrets[1])),
        ("operator".to_string(), hash(&secrets[0])),
        ("viewer".to_string(), hash(&secrets[3])),
    ];
    assert_eq!(hashes, expected);
    let settings = sqlx::query("SELECT key, value FROM settings")
        .fetch_all(store.pool())
        .await
        .unwrap();
    for row in &settings {
        let value: String = row.get("value");
        assert!(
            !secrets.contains(&value),
            "setting {}",
            row.get::<String, _>("key")
        );
    }
    store.close().await;
    // Not in the SQLite file or its write-ahead log either, not even a former secret.
    for file in ["fleet.db", "fleet.db-wal"] {
        let bytes = std::fs::read(controller.state_dir.join(file)).unwrap_or_default();
        for secret in &secrets {
            let found = bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes());
            assert!(!found, "{file} holds a secret");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_events_actor_is_the_tokens_name_whatever_header_the_client_sets() {
    let controller = TestController::start();
    let admin = controller.http();
    let alice = admin.with_token(&create_with_api(&admin, json!({"name": "alice"})).await);
    let response = alice
        .request(Method::POST, "/machines")
        .header("X-Fleet-Actor", "mallory")
        .json(&json!({"name": "node-1", "macs": ["52:54:00:00:02:01"], "power": {"type": "manual"}, "commission": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let output = controller.fleet(&[
        "--token",
        &alice.token,
        "machine",
        "lock",
        "node-1",
        "--comment",
        "mine",
    ]);
    // Locking a new machine is refused; the refusal is an event too, by alice.
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let (_, events) = admin.get("/events").await;
    let events = events.as_array().unwrap();
    let of_node: Vec<&Value> = events
        .iter()
        .filter(|event| event["machine"] == "node-1")
        .collect();
    assert!(of_node.len() >= 2, "{events:?}");
    for event in of_node {
        assert_eq!(event["actor"], "alice", "{event}");
    }
    let created = events
        .iter()
        .find(|event| event["kind"] == "token" && event["detail"]["token"] == "alice")
        .expect("the token's creation is recorded");
    assert_eq!(created["action"], "created");
    assert_eq!(created["actor"], "operator");
    assert!(events.iter().all(|event| event["actor"] != "mallory"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_valid_admin_token_cannot_be_revoked() {
    let controller = TestController::start();
    let admin = controller.http();
    // A read-only token does not count as someone who could manage tokens.
    create_with_api(&admin, json!({"name": "viewer", "role": "read-only"})).await;
    let output = controller.fleet(&["token", "revoke", "operator"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("last valid admin token")
            && stderr(&output).contains("fleet token create"),
        "{}",
        stderr(&output)
    );
    assert_eq!(admin.get("/machines").await.0, 200);
    // An admin token that has expired does not count either.
    create_with_api(&admin, json!({"name": "brief", "expires_in_seconds": 1})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, answer) = admin.delete("/tokens/operator").await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "last_admin");

    // With another valid admin, it goes; and the other is then the last.
    let bob = admin.with_token(&create_with_api(&admin, json!({"name": "bob"})).await);
    assert_eq!(bob.delete("/tokens/operator").await.0, 200);
    assert_eq!(admin.get("/machines").await.0, 401);
    let (status, answer) = bob.delete("/tokens/bob").await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(bob.get("/tokens").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_stores_plain_token_is_hashed_at_start_and_keeps_working() {
    let directory = tempfile::tempdir().unwrap();
    let state = directory.path().join("state");
    let plain = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    {
        // What an older fleet left: the token in settings and in the token file.
        let store = Store::open(&format!("sqlite://{}", state.join("fleet.db").display()))
            .await
            .unwrap();
        store.put_setting("operator_token", plain).await.unwrap();
        store.close().await;
        fleet::services::token::write_token_file(&state, plain).unwrap();
    }
    let controller = TestController::start_in(&state, &[]);
    assert_eq!(controller.token, plain);
    assert_eq!(controller.http().get("/machines").await.0, 200);
    let output = controller.fleet(&["machines"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let store = controller.store().await;
    assert_eq!(store.setting("operator_token").await.unwrap(), None);
    let tokens = store.operator_tokens().await.unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0].name, "operator");
    assert_eq!(tokens[0].secret_hash, hash(plain));
    store.close().await;
    drop(controller);

    // The next start finds a valid admin token: nothing new is made, the file is the same.
    let controller = TestController::start_in(&state, &[]);
    assert_eq!(controller.token, plain);
    let (_, tokens) = controller.http().get("/tokens").await;
    assert_eq!(tokens.as_array().unwrap().len(), 1, "{tokens}");
}

#[tokio::test(flavor = "multi_thread")]
async fn controllers_on_one_database_accept_and_refuse_the_same_tokens() {
    let url = empty_postgres_database().await;
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let first = TestController::start_in(first_dir.path(), &["--database", &url]);
    let second = TestController::start_in(second_dir.path(), &["--database", &url]);
    // The second found an admin token and made none: its host has no token file.
    assert!(second.token.is_empty());
    assert!(!second_dir.path().join("operator-token").exists());
    let on_first = first.http();
    let on_second = second.http().with_token(&first.token);
    assert_eq!(on_second.get("/machines").await.0, 200);
    let secret = create_with_api(&on_first, json!({"name": "ci", "role": "read-only"})).await;
    assert_eq!(on_second.with_token(&secret).get("/events").await.0, 200);
    assert_eq!(on_first.delete("/tokens/ci").await.0, 200);
    assert_eq!(on_second.with_token(&secret).get("/events").await.0, 401);
    drop((first, second));
    drop_postgres_store(Store::open(&url).await.unwrap()).await;
}

// Controllers starting together on an older store: one moves its plain token, none makes
// another admin token, and the setting is gone.
both_backends!(
    racing_controllers_move_the_plain_token_once,
    |store| async move {
        store.put_setting("operator_token", "plain").await.unwrap();
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { prepare_at_start(&store).await.unwrap() })
            })
            .collect();
        let mut moved = 0;
        for racer in racers {
            match racer.await.unwrap() {
                StartTokens::Moved { name } => {
                    assert_eq!(name, "operator");
                    moved += 1;
                }
                StartTokens::Present => {}
                made @ StartTokens::Made { .. } => panic!("{made:?}"),
            }
        }
        assert_eq!(moved, 1);
        assert_eq!(store.setting("operator_token").await.unwrap(), None);
        let tokens = store.operator_tokens().await.unwrap();
        assert_eq!(tokens.len(), 1, "{tokens:?}");
        assert_eq!(tokens[0].secret_hash, hash("plain"));
    }
);

// Controllers starting together on a new store make one admin token between them.
both_backends!(
    racing_controllers_make_one_admin_token,
    |store| async move {
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { prepare_at_start(&store).await.unwrap() })
            })
            .collect();
        let mut made = Vec::new();
        for racer in racers {
            if let StartTokens::Made { name, secret } = racer.await.unwrap() {
                made.push((name, secret));
            }
        }
        assert_eq!(made.len(), 1, "{made:?}");
        let tokens = store.operator_tokens().await.unwrap();
        assert_eq!(tokens.len(), 1, "{tokens:?}");
        assert_eq!(tokens[0].secret_hash, hash(&made[0].1));
    }
);

// Two admins revoking each other's token at once: one revocation wins, the other is refused,
// so an admin token always remains.
both_backends!(
    admins_revoking_each_other_at_once_leave_one,
    |store| async move {
        for round in 0..5 {
            let names = [format!("a{round}"), format!("b{round}")];
            for name in &names {
                let hash = hash(name);
                let token = NewOperatorToken {
                    name,
                    role: OperatorRole::Admin,
                    secret_hash: &hash,
                    expires_at: None,
                };
                store
                    .create_operator_token(&token, "test", 0)
                    .await
                    .unwrap();
            }
            // The previous round's survivor goes, so the pair are the only admins.
            for token in store.operator_tokens().await.unwrap() {
                if token.revoked_at.is_none() && !names.contains(&token.name) {
                    let now = fleet::store::now_ms();
                    store
                        .revoke_operator_token(&token.name, "test", now)
                        .await
                        .unwrap();
                }
            }
            let racers: Vec<_> = names
                .iter()
                .map(|name| {
                    let (store, name) = (store.clone(), name.clone());
                    tokio::spawn(async move {
                        store
                            .revoke_operator_token(&name, "test", fleet::store::now_ms())
                            .await
                    })
                })
                .collect();
            let mut refused = 0;
            for racer in racers {
                match racer.await.unwrap() {
                    Ok(_) => {}
                    Err(StoreError::LastAdminToken(_)) => refused += 1,
                    Err(other) => panic!("{other}"),
                }
            }
            assert_eq!(refused, 1, "round {round}");
        }
    }
);

// A store whose only admin token has expired gets a new one at the next start, under a name of
// its own (`operator` stays the expired token's).
both_backends!(
    an_expired_last_admin_gets_a_successor_at_start,
    |store| async move {
        let hash = hash("old");
        let expired = NewOperatorToken {
            name: "operator",
            role: OperatorRole::Admin,
            secret_hash: &hash,
            expires_at: Some(1),
        };
        store
            .create_operator_token(&expired, "test", 0)
            .await
            .unwrap();
        match prepare_at_start(&store).await.unwrap() {
            StartTokens::Made { name, .. } => assert_eq!(name, "operator-2"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            prepare_at_start(&store).await.unwrap(),
            StartTokens::Present
        );
    }
);
