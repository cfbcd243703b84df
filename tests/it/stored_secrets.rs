//! Secrets kept in the shared store (issue 16): a BMC password an enlisting machine reports is
//! sealed with the controllers' key and kept in the database, so any controller given the same
//! key can power the machine; one with another key says so, naming the machine and both keys,
//! and never shows the password. The database holds no password in plain text. A password file
//! an older controller kept in `<state_dir>/secrets/` is moved into the store at start.

use crate::support::controller::TestController;
use crate::support::db::{drop_postgres_store, empty_postgres_database};
use fleet::config::SecretRef;
use fleet::model::{PowerCommand, PowerState};
use fleet::power::{PowerDriver, PowerDrivers, PowerError, PowerFuture, PowerReport, PowerTarget};
use fleet::services::actions::{carry_out_power, power_target, MadeFor, PowerResult};
use fleet::store::{SecretKey, Store};
use serde_json::json;
use sqlx::Row;
use std::sync::{Arc, Mutex};

const PASSWORD: &str = "Enl1st-S3cret-77";
const MACHINE: &str = "enlisted-525400160001";

/// An `ipmi` driver that records the password each call resolved, and says the machine is on.
#[derive(Default)]
struct RecordingDriver {
    passwords: Mutex<Vec<String>>,
}

impl RecordingDriver {
    fn call(&self, target: &PowerTarget) -> Result<PowerReport, PowerError> {
        let reference = SecretRef::from_json(&target.params["password"]).expect("a reference");
        let password = target
            .resolve_secret(&reference)
            .map_err(|error| PowerError::Driver {
                driver: "ipmi".into(),
                target: target.machine.clone(),
                message: error.to_string(),
            })?;
        self.passwords.lock().unwrap().push(password);
        Ok(PowerReport {
            state: PowerState::On,
            note: None,
        })
    }
}

impl PowerDriver for RecordingDriver {
    fn power_type(&self) -> &'static str {
        "ipmi"
    }

    fn execute<'a>(
        &'a self,
        target: &'a PowerTarget,
        _command: PowerCommand,
    ) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move { self.call(target) })
    }

    fn query<'a>(&'a self, target: &'a PowerTarget) -> PowerFuture<'a, PowerReport> {
        Box::pin(async move { self.call(target) })
    }
}

fn write_key(path: &std::path::Path, byte: u8) -> SecretKey {
    std::fs::write(path, format!("{}\n", hex::encode([byte; 32]))).unwrap();
    SecretKey::read_file(path).unwrap()
}

/// Enlists `mac` with an IPMI BMC at `10.16.0.N` (N the MAC's last byte).
async fn enlist_with_bmc(url: &str, mac: &str, password: &str) -> (u16, String) {
    let last = u8::from_str_radix(&mac[mac.len() - 2..], 16).unwrap();
    let body = json!({
        "architecture": "amd64", "boot_mac": mac, "macs": [mac],
        "bmc": {"type": "ipmi", "address": format!("10.16.0.{last}"), "user": "fleet", "password": password},
    });
    let response = reqwest::Client::new()
        .post(format!("{url}/metadata/v1/enlist"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every TEXT a table holds, as one string (to search for a secret).
async fn table_text(store: &Store, table: &str) -> String {
    let rows = sqlx::query(&format!("SELECT * FROM {table}"))
        .fetch_all(store.pool())
        .await
        .unwrap();
    let mut text = String::new();
    for row in &rows {
        for index in 0..row.len() {
            if let Ok(Some(value)) = row.try_get::<Option<String>, _>(index) {
                text.push_str(&value);
                text.push('\n');
            }
        }
    }
    text
}

/// Enlisted through one controller on PostgreSQL; powered through a second store with the same
/// key (works, at every call), with another key (a clear error naming the machine and both
/// keys: in the store, and through a second controller's CLI), with none; the password is
/// nowhere in the database in plain text.
#[tokio::test(flavor = "multi_thread")]
async fn an_enlisted_bmc_password_is_sealed_in_the_shared_store_and_needs_the_same_key() {
    let url = empty_postgres_database().await;
    let directory = tempfile::tempdir().unwrap();
    let key_file = directory.path().join("fleet.key");
    let key = write_key(&key_file, 0x16);
    let state = directory.path().join("first");
    let controller = TestController::start_in(
        &state,
        &[
            "--database",
            &url,
            "--secret-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    assert!(
        !state.join("secret.key").exists(),
        "a key was given: none is made"
    );
    let (status, answer) = enlist_with_bmc(&controller.url, "52:54:00:16:00:01", PASSWORD).await;
    assert_eq!(status, 201, "{answer}");
    assert!(
        answer.starts_with(&format!("machine {MACHINE}\n")),
        "{answer}"
    );

    // Another controller's store, given the same key.
    let second = Store::open(&url)
        .await
        .unwrap()
        .with_secret_key(key.clone());
    let record = second.machine(MACHINE).await.unwrap().unwrap();
    assert_eq!(
        record.power_params["password"],
        json!({"store": "bmc-password"})
    );
    assert!(!state.join("secrets").exists(), "no password file");
    let target = power_target(&second, &record).await.unwrap();
    assert_eq!(
        target
            .resolve_secret(&SecretRef::Store("bmc-password".into()))
            .unwrap(),
        PASSWORD
    );
    assert!(!format!("{target:?}").contains(PASSWORD), "{target:?}");
    let recording = Arc::new(RecordingDriver::default());
    let mut drivers = PowerDrivers::standard();
    drivers.add(recording.clone());
    for _ in 0..2 {
        let record = second.machine(MACHINE).await.unwrap().unwrap();
        let result = carry_out_power(
            &second,
            &drivers,
            MACHINE,
            PowerCommand::On,
            MadeFor::decision(&record),
            "test",
        )
        .await
        .unwrap();
        assert!(matches!(result, PowerResult::Ran(_)), "{result:?}");
    }
    assert_eq!(*recording.passwords.lock().unwrap(), [PASSWORD, PASSWORD]);

    // Another key: a clear error, naming the machine and both keys, never the password.
    let other_key = SecretKey::from_bytes([0x61; 32]);
    let wrong = Store::open(&url)
        .await
        .unwrap()
        .with_secret_key(other_key.clone());
    let error = power_target(&wrong, &record).await.unwrap_err().to_string();
    assert!(error.contains(MACHINE), "{error}");
    assert!(error.contains("do not match"), "{error}");
    assert!(
        error.contains(key.id()) && error.contains(other_key.id()),
        "{error}"
    );
    assert!(!error.contains(PASSWORD), "{error}");
    let record = wrong.machine(MACHINE).await.unwrap().unwrap();
    let result = carry_out_power(
        &wrong,
        &drivers,
        MACHINE,
        PowerCommand::On,
        MadeFor::decision(&record),
        "test",
    )
    .await
    .unwrap();
    let PowerResult::Failed(failure) = result else {
        panic!("{result:?}");
    };
    assert!(failure.to_string().contains("do not match"), "{failure}");
    assert_eq!(recording.passwords.lock().unwrap().len(), 2, "not called");
    let record = wrong.machine(MACHINE).await.unwrap().unwrap();
    assert_eq!(record.lifecycle.power, PowerState::Error);

    // A second controller on the database with another key: its power-off fails, saying so.
    let other_key_file = directory.path().join("other.key");
    let other_file_key = write_key(&other_key_file, 0x62);
    let other_controller = TestController::start_in(
        &directory.path().join("second"),
        &[
            "--database",
            &url,
            "--secret-key-file",
            other_key_file.to_str().unwrap(),
        ],
    );
    let output = other_controller.fleet(&[
        "--token",
        &controller.token,
        "machine",
        "power-off",
        MACHINE,
    ]);
    let shown = output_text(&output);
    assert!(!output.status.success(), "{shown}");
    assert!(
        shown.contains("do not match")
            && shown.contains(key.id())
            && shown.contains(other_file_key.id()),
        "{shown}"
    );
    assert!(!shown.contains(PASSWORD), "{shown}");
    drop(other_controller);

    // No key at all.
    let keyless = Store::open(&url).await.unwrap();
    let error = power_target(&keyless, &record)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(MACHINE) && error.contains("no secret key"),
        "{error}"
    );

    // The database: the secret sealed (hex, with its key's id), and the password nowhere.
    let row = sqlx::query("SELECT purpose, nonce, ciphertext, key_id FROM secrets")
        .fetch_one(second.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("purpose"), "bmc-password");
    assert_eq!(row.get::<String, _>("key_id"), key.id());
    assert_eq!(row.get::<String, _>("nonce").len(), 48);
    let hex_password = hex::encode(PASSWORD);
    for table in ["secrets", "machines", "events", "machine_state"] {
        let text = table_text(&second, table).await;
        assert!(!text.contains(PASSWORD), "{table}: {text}");
        assert!(!text.contains(&hex_password), "{table}");
    }
    let events = table_text(&second, "events").await;
    assert!(events.contains("kept in the store"), "{events}");

    // A secret row moved onto another machine does not decrypt there.
    let (status, answer) = enlist_with_bmc(&controller.url, "52:54:00:16:00:02", "0ther-pw").await;
    assert_eq!(status, 201, "{answer}");
    let other = second
        .machine("enlisted-525400160002")
        .await
        .unwrap()
        .unwrap();
    sqlx::query("DELETE FROM secrets WHERE machine_id = $1")
        .bind(other.id)
        .execute(second.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO secrets (machine_id, purpose, nonce, ciphertext, key_id, updated_at) \
         SELECT $1, purpose, nonce, ciphertext, key_id, updated_at FROM secrets WHERE machine_id = $2",
    )
    .bind(other.id)
    .bind(record.id)
    .execute(second.pool())
    .await
    .unwrap();
    let error = power_target(&second, &other).await.unwrap_err().to_string();
    assert!(
        error.contains("enlisted-525400160002") && error.contains("copied from another machine"),
        "{error}"
    );
    assert!(!error.contains(PASSWORD), "{error}");

    // Deleting the machine deletes its secret.
    sqlx::query("DELETE FROM machines WHERE id = $1")
        .bind(record.id)
        .execute(second.pool())
        .await
        .unwrap();
    let left: i64 = sqlx::query("SELECT COUNT(*) FROM secrets WHERE machine_id = $1")
        .bind(record.id)
        .fetch_one(second.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    drop(controller);
    for store in [wrong, keyless] {
        store.close().await;
    }
    drop_postgres_store(second).await;
}

/// The upgrade: a password an older controller kept in `<state_dir>/secrets/NAME.bmc-password`
/// is moved into the store at start (sealed with the key the controller made for itself, the
/// reference rewritten, the file removed); a password file of the operator's stays as it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_file_of_an_older_controller_moves_into_the_store_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().unwrap();
    let state = directory.path().join("state");
    let database = format!("sqlite://{}", state.join("fleet.db").display());
    let old_file = state.join("secrets").join("rack-1.bmc-password");
    fleet::services::machine_api::enlist::write_secret_file(&old_file, "0ld-F1le-pw").unwrap();
    let operator_file = directory.path().join("operator-password");
    std::fs::write(&operator_file, "0perator-pw\n").unwrap();
    let store = Store::open(&database).await.unwrap();
    for (name, mac, file) in [
        ("rack-1", "52:54:00:16:01:01", &old_file),
        ("rack-2", "52:54:00:16:01:02", &operator_file),
    ] {
        let new = fleet::store::NewMachine {
            name: fleet::model::MachineName::parse(name).unwrap(),
            status: fleet::model::Status::New,
            macs: vec![fleet::model::MacAddr::parse(mac).unwrap()],
            arch: Some("amd64".into()),
            power_type: "ipmi".into(),
            power_params: json!({
                "address": format!("10.16.1.{}", &name[5..]), "user": "fleet",
                "password": {"file": file.display().to_string()},
            }),
            bmc_address: None,
            image: None,
            tags: Vec::new(),
            deployed_os: None,
        };
        store.create_machine(&new, "test").await.unwrap();
    }
    store.close().await;

    let controller = TestController::start_in(&state, &[]);
    let key_file = state.join("secret.key");
    assert_eq!(std::fs::read(&key_file).unwrap().len(), 32);
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!old_file.exists(), "the old file is removed");
    let key = SecretKey::read_file(&key_file).unwrap();
    let store = Store::open(&database).await.unwrap().with_secret_key(key);
    let moved = store.machine("rack-1").await.unwrap().unwrap();
    assert_eq!(
        moved.power_params["password"],
        json!({"store": "bmc-password"})
    );
    assert_eq!(moved.power_params["user"], "fleet");
    let target = power_target(&store, &moved).await.unwrap();
    assert_eq!(
        target
            .resolve_secret(&SecretRef::Store("bmc-password".into()))
            .unwrap(),
        "0ld-F1le-pw"
    );
    let kept = store.machine("rack-2").await.unwrap().unwrap();
    assert_eq!(
        kept.power_params["password"],
        json!({"file": operator_file.display().to_string()})
    );
    assert_eq!(
        std::fs::read_to_string(&operator_file).unwrap(),
        "0perator-pw\n"
    );
    drop(controller);
    // A restart finds nothing more to move, and the same key.
    let controller = TestController::start_in(&state, &[]);
    let again = store.machine("rack-1").await.unwrap().unwrap();
    assert_eq!(again.power_params, moved.power_params);
    assert_eq!(
        SecretKey::read_file(&key_file).unwrap().id(),
        store.secret_key_id().unwrap()
    );
    drop(controller);
    store.close().await;
}

/// The enlistment path of `vm::enlist_bmc` at the HTTP level, without a VM, on a lone controller
/// (SQLite, the key it makes itself): an enlistment with a BMC password; the sealed secret, the
/// reference, a second enlistment (matched by the BMC address) replacing nothing; a password
/// IPMI cannot hold refused without being repeated; the secrets in no API answer, CLI output,
/// event, log line or file of the state directory (the database's included).
#[tokio::test(flavor = "multi_thread")]
async fn a_reported_bmc_password_is_sealed_in_the_store_and_referenced() {
    let mut controller = TestController::start();
    let (first, second, too_long) = (
        "Enl1st-pw-FIRST-77",
        "Enl1st-pw-SECOND-88",
        "Enl1st-pw-far-too-long-for-ipmi",
    );
    let enlist = async |mac: &str, password: &str| {
        let body = serde_json::json!({
            "architecture": "amd64", "boot_mac": mac, "macs": [mac],
            "bmc": {"type": "ipmi", "address": "10.0.0.9", "user": "fleet", "password": password},
        });
        let response = reqwest::Client::new()
            .post(format!("{}/metadata/v1/enlist", controller.url))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let (status, answer) = enlist("52:54:00:77:00:01", first).await;
    assert_eq!(status, 201, "{answer}");
    assert!(
        answer.starts_with("machine enlisted-525400770001\n"),
        "{answer}"
    );
    let store = controller.store().await;
    let record = store
        .machine("enlisted-525400770001")
        .await
        .unwrap()
        .unwrap();
    let key = SecretKey::read_file(&controller.state_dir.join("secret.key")).unwrap();
    let keyed = store.clone().with_secret_key(key);
    let stored = async || {
        keyed
            .secret(record.id, "enlisted-525400770001", "bmc-password")
            .await
            .unwrap()
            .expose()
            .to_string()
    };
    assert_eq!(record.power_type, "ipmi");
    assert_eq!(record.bmc_address.as_deref(), Some("10.0.0.9"));
    assert_eq!(
        record.power_params,
        serde_json::json!({
            "address": "10.0.0.9", "user": "fleet",
            "password": {"store": "bmc-password"},
            "driver": "lan_2_0", "cipher_suite": 3, "privilege": "admin",
            "power_off_mode": "hard", "boot_type": "auto",
        })
    );
    assert_eq!(stored().await, first);
    assert!(!controller.state_dir.join("secrets").exists());

    // A second enlistment (another MAC, the same BMC): matched by the BMC address, it gets no
    // token and replaces nothing: the stored password is never overwritten by an anonymous
    // caller (issue 12).
    let (status, answer) = enlist("52:54:00:77:00:02", second).await;
    assert_eq!((status, answer.as_str()), (200, "known\nafter poweroff\n"));
    assert_eq!(stored().await, first);
    let again = store
        .machine("enlisted-525400770001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.power_params, record.power_params);

    let (status, answer) = enlist("52:54:00:77:00:03", too_long).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("at most 20"), "{answer}");

    let api = controller.http();
    let (_, events) = api.get("/events?limit=1000").await;
    let (_, machine) = api.get("/machines/enlisted-525400770001").await;
    let (_, machines) = api.get("/machines").await;
    let shown = controller.fleet(&["machine", "show", "enlisted-525400770001", "--json"]);
    let shown_human = controller.fleet(&["machine", "show", "enlisted-525400770001"]);
    let history = controller.fleet(&["events", "--json"]);
    assert!(
        events
            .to_string()
            .contains("its password kept in the store, encrypted"),
        "{events}"
    );
    let mut outputs = vec![
        ("answers", answer.clone()),
        ("events", events.to_string()),
        ("machine", machine.to_string()),
        ("machines", machines.to_string()),
        ("machine show --json", output_text(&shown)),
        ("machine show", output_text(&shown_human)),
        ("events --json", output_text(&history)),
    ];
    // Deleting the machine deletes its secret.
    let deleted = controller.fleet(&["machine", "delete", "enlisted-525400770001"]);
    assert!(deleted.status.success(), "{}", output_text(&deleted));
    let left: i64 = sqlx::query("SELECT COUNT(*) FROM secrets")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the secret outlived its machine");
    controller.kill();
    let log = controller.log();
    // The start-up lines say which key seals the store's secrets, and where it came from.
    let key_line = format!("secrets key {} made now in", keyed.secret_key_id().unwrap());
    assert!(log.contains(&key_line), "{log}");
    outputs.push(("the controller's log", log));
    for entry in std::fs::read_dir(&controller.state_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            outputs.push(("a state file", String::from_utf8_lossy(&bytes).to_string()));
        }
    }
    for (what, text) in outputs {
        for secret in [first, second, too_long] {
            assert!(!text.contains(secret), "a BMC password is in {what}");
        }
    }
}

/// `fleet adopt` writes an enlisted machine's power as stored, `password = { store =
/// "bmc-password" }`: a fleet file reads it back; another purpose is refused.
#[test]
fn a_fleet_file_may_name_the_stored_bmc_password() {
    let text = |password: &str| {
        format!(
            "[[machine]]\nname = \"rack-1\"\nmacs = [\"52:54:00:16:02:01\"]\n\
             power = {{ type = \"ipmi\", address = \"10.16.2.1\", user = \"fleet\", password = {password} }}\n"
        )
    };
    let fleet = fleet::config::load_str("fleet.toml", &text("{ store = \"bmc-password\" }"))
        .unwrap_or_else(|error| panic!("{}", error.render(false)));
    let machine = fleet.machine("rack-1").unwrap();
    let fleet::config::PowerSpec::Ipmi { password, .. } = &machine.power else {
        panic!("{:?}", machine.power);
    };
    assert_eq!(password, &Some(SecretRef::Store("bmc-password".into())));
    let refused = fleet::config::load_str("fleet.toml", &text("{ store = \"root-password\" }"));
    assert!(refused.is_err());
}
