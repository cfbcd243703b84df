//! `fleet controllers`: every `fleet serve` on one store keeps a row there (written at start,
//! rewritten by its heartbeat), so any of them can list the others.

use crate::support::controller::{stdout, TestController};
use crate::support::db::{drop_postgres_store, empty_postgres_database};
use fleet::store::{ControllerRecord, Store};
use serde_json::Value;

/// Two controllers on one PostgreSQL database list each other through either; a controller
/// restarted on its state directory keeps its id (no second row); one whose heartbeat stopped
/// long ago is shown silent.
#[tokio::test(flavor = "multi_thread")]
async fn controllers_on_one_database_list_each_other() {
    let url = empty_postgres_database().await;
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = TestController::start_in(first_dir.path(), &["--database", &url]);
    let mut second = TestController::start_in(second_dir.path(), &["--database", &url]);
    let second_id = std::fs::read_to_string(second_dir.path().join("controller-id")).unwrap();
    second.kill();
    let second = TestController::start_in(second_dir.path(), &["--database", &url]);
    let store = Store::open(&url).await.unwrap();
    store
        .record_controller(&ControllerRecord {
            id: "gone-1".into(),
            hostname: "rack-9".into(),
            api_url: "https://192.0.2.9:5240".into(),
            boot_url: "http://192.0.2.9:5248".into(),
            networks: vec!["eth1 192.0.2.9".into()],
            version: "0.0.1".into(),
            started_at: 1_000,
            heartbeat_at: 2_000,
        })
        .await
        .unwrap();

    let output = second.fleet(&["--token", &first.token, "controllers", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let rows: Vec<Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        rows.len(),
        3,
        "two controllers and the silent one: {rows:#?}"
    );
    let row = |id: &str| {
        rows.iter()
            .find(|row| row["id"] == id)
            .unwrap_or_else(|| panic!("no row {id}: {rows:#?}"))
    };
    let first_id = std::fs::read_to_string(first_dir.path().join("controller-id")).unwrap();
    let (first_row, second_row) = (row(first_id.trim()), row(second_id.trim()));
    assert_eq!(first_row["api_url"], first.api_url.as_str());
    assert_eq!(second_row["api_url"], second.api_url.as_str());
    assert_eq!(second_row["boot_url"], second.url.as_str());
    assert_eq!(second_row["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (
            first_row["this_one"].clone(),
            second_row["this_one"].clone()
        ),
        (false.into(), true.into())
    );
    assert_eq!(
        (first_row["silent"].clone(), second_row["silent"].clone()),
        (false.into(), false.into())
    );
    assert_eq!(row("gone-1")["silent"], true);

    let human = second.fleet(&["--token", &first.token, "controllers"]);
    let text = stdout(&human);
    assert!(
        text.contains("alive (this one)") && text.contains("silent"),
        "{text}"
    );
    assert!(
        text.contains("eth1 192.0.2.9") && text.contains("rack-9"),
        "{text}"
    );
    drop((first, second));
    drop_postgres_store(store).await;
}
