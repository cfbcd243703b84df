//! `fleet db backup`, `restore` and `migrate-to`, run as the binary: a SQLite store with a row
//! in every table is backed up and restored into SQLite and PostgreSQL, migrated to PostgreSQL,
//! and compared row by row; non-empty targets, newer backups and a copy failing half-way are
//! refused with nothing written.

use crate::support::controller::FLEET;
use crate::support::db::{drop_postgres_store, empty_postgres_database, sqlite_store};
use crate::support::machines::{manual_machine, uefi_hardware};
use fleet::model::MacAddr;
use fleet::store::copy::{self, TableShape};
use fleet::store::{
    ApplyStepRow, ControllerRecord, Disk, Interface, Lease, MachineRun, NewEvent, NewOperatorToken,
    OperatorRole, ScriptResult, Store, StoredDeployment, StoredPlan,
};
use serde_json::json;
use sqlx::Row;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

fn mac(text: &str) -> MacAddr {
    MacAddr::parse(text).unwrap()
}

/// Runs `fleet ARGS...` with no FLEET_* settings from the environment.
async fn fleet(args: &[&str]) -> Output {
    tokio::process::Command::new(FLEET)
        .args(args)
        .env_remove("FLEET_DATABASE")
        .env_remove("FLEET_STATE_DIR")
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_TOKEN")
        .output()
        .await
        .expect("run fleet")
}

/// `fleet db restore --from FROM --database DATABASE EXTRA...`.
async fn restore(from: &str, database: &str, extra: &[&str]) -> Output {
    let mut args = vec!["db", "restore", "--from", from, "--database", database];
    args.extend_from_slice(extra);
    fleet(&args).await
}

/// `fleet db backup --database DATABASE --to TO`.
async fn back_up(database: &str, to: &str) -> Output {
    fleet(&["db", "backup", "--database", database, "--to", to]).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "fleet failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "fleet should have failed\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stderr)
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A row in every table of the schema, written through the store's own methods where there is
/// one: machines with interfaces, disks, script results, a run and its token hash, events,
/// leases, operator tokens, a plan and its apply steps, a lock, settings, a controller, a stored
/// deployment, a held address and a recorded clone. A deleted machine leaves its id behind, so
/// the copy must not hand that id out again.
async fn fill(store: &Store) {
    let node1 = store
        .create_machine(
            &manual_machine("node-1", vec![mac("52:54:00:00:00:01")]),
            "alice",
        )
        .await
        .unwrap();
    let node2 = store
        .create_machine(
            &manual_machine("node-2", vec![mac("52:54:00:00:00:02")]),
            "alice",
        )
        .await
        .unwrap();
    store
        .create_machine(
            &manual_machine("gone", vec![mac("52:54:00:00:00:09")]),
            "alice",
        )
        .await
        .unwrap();
    store
        .replace_hardware(
            "node-1",
            Some("amd64"),
            &uefi_hardware(),
            &[
                Interface {
                    name: "eno1".into(),
                    mac: mac("52:54:00:00:00:01"),
                    link_up: Some(true),
                    speed_mbps: Some(10_000),
                    driver: Some("ixgbe".into()),
                },
                Interface {
                    name: "eno2".into(),
                    mac: mac("52:54:00:00:00:11"),
                    link_up: None,
                    speed_mbps: None,
                    driver: None,
                },
            ],
            &[Disk {
                name: "nvme0n1".into(),
                model: Some("Samsung 990 \"Pro\"".into()),
                serial: Some("S6B0NL0T123456".into()),
                id_path: Some("/dev/disk/by-id/nvme-eui.0025".into()),
                bus: Some("nvme".into()),
                size_bytes: 2_000_398_934_016,
                block_size: Some(512),
                rotational: Some(false),
            }],
        )
        .await
        .unwrap();
    store
        .add_script_result(&ScriptResult {
            id: 0,
            machine_id: node1.id,
            run_id: "run-1".into(),
            name: "00-cpu".into(),
            kind: "commissioning".into(),
            status: "passed".into(),
            exit_code: Some(0),
            runtime_ms: Some(1234),
            stdout: "cpu count=8\nüñíçødé ✓\n".into(),
            stderr: String::new(),
            results: json!({ "cpus": 8 }),
            at: 1_700_000_000_000,
        })
        .await
        .unwrap();
    store
        .start_machine_run(
            "node-1",
            &MachineRun {
                id: "run-1".into(),
                role: "commissioning".into(),
            },
            &fleet::store::secret_hash("run-token"),
        )
        .await
        .unwrap();
    store
        .store_deployment(
            "node-2",
            &StoredDeployment {
                layout: Some(json!({ "kind": "flat" })),
                layout_digest: Some("0123456789abcdef".into()),
                network: None,
                network_digest: None,
                origin: "fleet file".into(),
            },
        )
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO held_addresses (machine_id, interface, subnet, address, created_at) \
         VALUES ($1, 'eno1', 'prov', '10.0.0.21', 1700000000000)",
    )
    .bind(node1.id)
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO machine_clones \
         (machine_id, source, storage, interfaces, disk_map, interface_map, actor, at) \
         VALUES ($1, 'node-1', 1, 0, '{\"nvme0n1\":\"nvme0n1\"}', '{}', 'alice', 1700000000000)",
    )
    .bind(node2.id)
    .execute(store.pool())
    .await
    .unwrap();
    for number in 0..5 {
        store
            .append_event(&NewEvent {
                machine: Some("node-1".into()),
                kind: "note".into(),
                actor: "alice".into(),
                action: None,
                from_status: None,
                to_status: None,
                reason: Some(format!("note {number}")),
                detail: json!({ "n": number }),
            })
            .await
            .unwrap();
    }
    store
        .upsert_lease(&Lease {
            mac: mac("52:54:00:00:00:01"),
            ip: "10.0.0.100".parse().unwrap(),
            subnet: "prov".into(),
            hostname: Some("node-1".into()),
            machine: Some("node-1".into()),
            expires_at: 1_700_000_600_000,
        })
        .await
        .unwrap();
    for (name, role) in [
        ("ops", OperatorRole::Admin),
        ("grafana", OperatorRole::ReadOnly),
    ] {
        store
            .create_operator_token(
                &NewOperatorToken {
                    name,
                    role,
                    secret_hash: &fleet::store::secret_hash(name),
                    expires_at: None,
                },
                "fleet",
                1_700_000_000_000,
            )
            .await
            .unwrap();
    }
    store
        .save_plan(&StoredPlan {
            id: "apply-1".into(),
            created_at: 1_700_000_000_000,
            status: "applied".into(),
            body: json!({ "machines": [] }),
        })
        .await
        .unwrap();
    store
        .create_apply_steps(
            "apply-1",
            &[ApplyStepRow {
                machine: "node-1".into(),
                step: 0,
                state: "done".into(),
                generation: Some(3),
                reason: None,
                updated_at: 1_700_000_000_000,
            }],
        )
        .await
        .unwrap();
    store
        .clone()
        .with_secret_key(fleet::store::SecretKey::from_bytes([7; 32]))
        .keep_secret(
            "node-1",
            "bmc-password",
            &fleet::config::SecretValue::new("fixture-password"),
            None,
        )
        .await
        .unwrap();
    store
        .claim_leadership(
            "controller-a/1",
            "controller-a",
            None,
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap()
        .expect("a leadership term");
    store
        .try_lock("apply", "controller-a", 60_000)
        .await
        .unwrap()
        .unwrap();
    store
        .put_setting("install-secret", "s3cret-hash")
        .await
        .unwrap();
    store
        .record_controller(&ControllerRecord {
            id: "c-1".into(),
            hostname: "ctl-1".into(),
            api_url: "https://10.0.0.2:5240".into(),
            boot_url: "http://10.0.0.2:5248".into(),
            networks: vec!["eno1 10.0.0.2/24".into()],
            version: "0.1.0".into(),
            started_at: 1_700_000_000_000,
            heartbeat_at: 1_700_000_010_000,
        })
        .await
        .unwrap();
    // The highest machine id goes: a copy must not give it to the next machine.
    sqlx::query("DELETE FROM machines WHERE name = 'gone'")
        .execute(store.pool())
        .await
        .unwrap();
}

/// The tables of a SQLite store, read here from `sqlite_master` (not through the copy's code).
async fn sqlite_tables(store: &Store) -> BTreeSet<String> {
    sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite%' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|row| row.get::<String, _>(0))
    .collect()
}

/// Every table of `source` holds the same rows in `target`, and the copy's table list is every
/// table the migrations made.
async fn assert_same_rows(source: &Store, target: &Store) {
    let source_tables = copy::tables(source).await.unwrap();
    let target_tables = copy::tables(target).await.unwrap();
    let names = |tables: &[TableShape]| -> Vec<String> {
        tables.iter().map(|table| table.name.clone()).collect()
    };
    assert_eq!(names(&source_tables), names(&target_tables));
    for shape in &source_tables {
        let target_shape = target_tables
            .iter()
            .find(|table| table.name == shape.name)
            .unwrap();
        // Compare by the source's column order (PostgreSQL and SQLite may order them apart).
        let mut reordered = target_shape.clone();
        reordered.columns = shape.columns.clone();
        assert_eq!(
            copy::table_rows(source, shape).await.unwrap(),
            copy::table_rows(target, &reordered).await.unwrap(),
            "table {}",
            shape.name
        );
    }
}

/// Fails when a migration adds a table the fixture leaves empty: fill it in `fill`, and the
/// comparisons then prove the copy carries it.
async fn assert_every_table_has_rows(store: &Store) {
    let tables = copy::tables(store).await.unwrap();
    let carried: BTreeSet<String> = tables.iter().map(|table| table.name.clone()).collect();
    assert_eq!(carried, sqlite_tables(store).await, "the copy's tables");
    for table in &tables {
        let rows: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM \"{}\"", table.name))
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get(0);
        assert!(
            rows > 0,
            "table {} is empty in the fixture: a new table? fill it in db_ops::fill",
            table.name
        );
    }
}

/// New rows in a copy get ids after every id the source handed out (no collision, no reuse).
async fn assert_ids_continue(source: &Store, target: &Store) {
    for table in [
        "machines",
        "events",
        "interfaces",
        "disks",
        "script_results",
    ] {
        let highest = |store: &Store| {
            let sql = format!("SELECT COALESCE(MAX(id), 0) FROM {table}");
            let pool = store.pool().clone();
            async move {
                sqlx::query(&sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .get::<i64, _>(0)
            }
        };
        assert_eq!(highest(source).await, highest(target).await, "{table}");
    }
    let machine = target
        .create_machine(
            &manual_machine("after-restore", vec![mac("52:54:00:00:00:42")]),
            "bob",
        )
        .await
        .unwrap();
    let gone_id: i64 = sqlx::query("SELECT MAX(id) FROM machines WHERE name <> 'after-restore'")
        .fetch_one(target.pool())
        .await
        .unwrap()
        .get(0);
    // `gone` had the id after node-2's.
    assert_eq!(
        machine.id,
        gone_id + 2,
        "the deleted machine's id is not reused"
    );
    let source_event: i64 = sqlx::query("SELECT MAX(id) FROM events")
        .fetch_one(source.pool())
        .await
        .unwrap()
        .get(0);
    let event = target
        .append_event(&NewEvent {
            machine: None,
            kind: "note".into(),
            actor: "bob".into(),
            action: None,
            from_status: None,
            to_status: None,
            reason: None,
            detail: json!({}),
        })
        .await
        .unwrap();
    assert!(
        event > source_event,
        "event id {event} after {source_event}"
    );
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn filled_sqlite() -> (Store, tempfile::TempDir, PathBuf) {
    let (store, directory) = sqlite_store().await;
    fill(&store).await;
    let path = directory.path().join("fleet.db");
    (store, directory, path)
}

/// The filled SQLite store, and its backup (`backup.db` beside it) made with `fleet db backup`.
async fn backed_up_fixture() -> (Store, tempfile::TempDir, PathBuf) {
    let (source, directory, source_path) = filled_sqlite().await;
    let backup = directory.path().join("backup.db");
    succeeded(&back_up(&sqlite_url(&source_path), backup.to_str().unwrap()).await);
    (source, directory, backup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_backup_restores_into_sqlite_and_postgres() {
    let (source, directory, source_path) = filled_sqlite().await;
    assert_every_table_has_rows(&source).await;
    let backup = directory.path().join("backups").join("fleet-backup.db");
    std::fs::create_dir(backup.parent().unwrap()).unwrap();
    let stdout = succeeded(&back_up(&sqlite_url(&source_path), backup.to_str().unwrap()).await);
    assert!(stdout.contains("machines"), "{stdout}");
    assert!(stdout.contains("backup of"), "{stdout}");
    #[cfg(unix)]
    assert_eq!(mode(&backup), 0o600);
    // Written whole: nothing but the file is left beside it (no journal, no temporary directory).
    let beside: Vec<_> = std::fs::read_dir(backup.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("fleet-backup.db")]);

    // Into a new SQLite store (created by the restore).
    let restored_path = directory.path().join("restored").join("fleet.db");
    succeeded(&restore(backup.to_str().unwrap(), &sqlite_url(&restored_path), &[]).await);
    let restored = Store::open(&sqlite_url(&restored_path)).await.unwrap();
    assert_same_rows(&source, &restored).await;
    assert_ids_continue(&source, &restored).await;
    restored.close().await;

    // Into PostgreSQL.
    let url = empty_postgres_database().await;
    let stdout = succeeded(&restore(backup.to_str().unwrap(), &url, &[]).await);
    assert!(stdout.contains("restored into postgres://"), "{stdout}");
    assert!(!stdout.contains(":fleet_test@"), "password shown: {stdout}");
    let postgres = Store::open(&url).await.unwrap();
    assert_same_rows(&source, &postgres).await;
    assert_ids_continue(&source, &postgres).await;
    drop_postgres_store(postgres).await;
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_to_postgres_copies_every_row_and_its_backup_comes_back_to_sqlite() {
    let (source, directory, _) = filled_sqlite().await;
    let url = empty_postgres_database().await;
    // The state directory's SQLite file is the default source.
    let stdout = succeeded(
        &fleet(&[
            "--state-dir",
            directory.path().to_str().unwrap(),
            "db",
            "migrate-to",
            &url,
        ])
        .await,
    );
    assert!(
        stdout.contains("every table's row count matches"),
        "{stdout}"
    );
    let events: i64 = sqlx::query("SELECT COUNT(*) FROM events")
        .fetch_one(source.pool())
        .await
        .unwrap()
        .get(0);
    let events_line = stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some("events"))
        .unwrap_or_else(|| panic!("no events line: {stdout}"));
    assert_eq!(
        events_line.split_whitespace().collect::<Vec<_>>(),
        ["events", &events.to_string(), &events.to_string()]
    );
    let postgres = Store::open(&url).await.unwrap();
    assert_same_rows(&source, &postgres).await;

    // And back: a backup of the PostgreSQL store restores into SQLite with the same rows.
    let backup = directory.path().join("from-postgres.db");
    succeeded(&back_up(&url, backup.to_str().unwrap()).await);
    let back_path = directory.path().join("back").join("fleet.db");
    succeeded(&restore(backup.to_str().unwrap(), &sqlite_url(&back_path), &[]).await);
    let back = Store::open(&sqlite_url(&back_path)).await.unwrap();
    assert_same_rows(&source, &back).await;
    assert_ids_continue(&source, &back).await;
    back.close().await;
    assert_ids_continue(&source, &postgres).await;
    drop_postgres_store(postgres).await;
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_store_that_is_not_empty_unless_replace() {
    let (source, _directory, backup) = backed_up_fixture().await;
    let (target, target_directory) = sqlite_store().await;
    target
        .create_machine(
            &manual_machine("other", vec![mac("52:54:00:00:00:77")]),
            "bob",
        )
        .await
        .unwrap();
    let target_url = sqlite_url(&target_directory.path().join("fleet.db"));
    let stderr = failed(&restore(backup.to_str().unwrap(), &target_url, &[]).await);
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(stderr.contains("machines: 1 rows"), "{stderr}");
    assert!(stderr.contains("--replace"), "{stderr}");
    assert!(target.machine("other").await.unwrap().is_some());
    assert!(target.machine("node-1").await.unwrap().is_none());

    succeeded(&restore(backup.to_str().unwrap(), &target_url, &["--replace"]).await);
    assert_same_rows(&source, &target).await;
    target.close().await;
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_to_refuses_a_database_that_is_not_empty() {
    let (source, _directory, source_path) = filled_sqlite().await;
    let url = empty_postgres_database().await;
    let target = Store::open(&url).await.unwrap();
    target.put_setting("someone", "was here").await.unwrap();
    let stderr = failed(
        &fleet(&[
            "db",
            "migrate-to",
            &url,
            "--database",
            &sqlite_url(&source_path),
        ])
        .await,
    );
    assert!(
        stderr.contains("is not empty (settings: 1 rows)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(":***@"),
        "the URL, password hidden: {stderr}"
    );
    assert!(!stderr.contains(":fleet_test@"), "password shown: {stderr}");
    assert!(target.machine("node-1").await.unwrap().is_none());
    drop_postgres_store(target).await;
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_backup_a_newer_fleet_wrote() {
    let (source, directory, backup) = backed_up_fixture().await;
    {
        use sqlx::Connection;
        let mut connection =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", backup.display()))
                .await
                .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101, 'from the future', 1, x'00', 1)",
        )
        .execute(&mut connection)
        .await
        .unwrap();
        connection.close().await.unwrap();
    }
    let target_path = directory.path().join("target").join("fleet.db");
    let stderr = failed(&restore(backup.to_str().unwrap(), &sqlite_url(&target_path), &[]).await);
    assert!(stderr.contains("99990101"), "{stderr}");
    assert!(stderr.contains("newer than this fleet"), "{stderr}");
    assert!(!target_path.exists(), "the target was not even created");

    // A file that is not a fleet store at all.
    let junk = directory.path().join("junk.db");
    std::fs::write(&junk, b"not a database").unwrap();
    let stderr = failed(&restore(junk.to_str().unwrap(), &sqlite_url(&target_path), &[]).await);
    assert!(
        stderr.contains("is not a fleet store or backup"),
        "{stderr}"
    );
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_fails_half_way_leaves_the_target_as_it_was() {
    let (source, _directory, backup) = backed_up_fixture().await;
    let url = empty_postgres_database().await;
    let target = Store::open(&url).await.unwrap();
    // `events` is copied after `apply_steps` and `controllers` (parents first, then by name):
    // its rows break a rule the source did not have, half-way through the copy.
    sqlx::query("ALTER TABLE events ADD CONSTRAINT no_notes CHECK (kind <> 'note')")
        .execute(target.pool())
        .await
        .unwrap();
    let stderr = failed(&restore(backup.to_str().unwrap(), &url, &[]).await);
    assert!(
        stderr.contains("copying table events failed after 0 rows"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was copied"), "{stderr}");
    for table in copy::tables(&target).await.unwrap() {
        let rows: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM \"{}\"", table.name))
            .fetch_one(target.pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "table {} after the failed restore", table.name);
    }
    drop_postgres_store(target).await;
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_refuses_a_missing_store_and_the_store_itself() {
    let directory = tempfile::tempdir().unwrap();
    let backup = directory.path().join("backup.db");
    let stderr = failed(
        &fleet(&[
            "--state-dir",
            directory.path().join("nothing").to_str().unwrap(),
            "db",
            "backup",
            "--to",
            backup.to_str().unwrap(),
        ])
        .await,
    );
    assert!(stderr.contains("there is no store at"), "{stderr}");
    assert!(!backup.exists());

    // Nor is a backup written over the store itself.
    let (store, directory) = sqlite_store().await;
    fill(&store).await;
    let path = directory.path().join("fleet.db");
    let stderr = failed(&back_up(&sqlite_url(&path), path.to_str().unwrap()).await);
    assert!(
        stderr.contains("it is the store being backed up"),
        "{stderr}"
    );
    assert!(store.machine("node-1").await.unwrap().is_some());
    store.close().await;
}

// A backup read in one snapshot: machines are created (each with its interface and its event,
// in one transaction) all the while; every backup has each machine with its interface, and no
// interface without its machine (the backup's foreign keys would refuse it: interfaces are
// copied after machines, so reads outside one snapshot would see interfaces of machines created
// after `machines` was read).
crate::both_backends!(
    a_backup_taken_while_machines_are_created_is_one_snapshot,
    |store| async move {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let store = store.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut created = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let mac = format!("52:54:00:10:{:02x}:{:02x}", created / 256, created % 256);
                    store
                        .create_machine(
                            &manual_machine(&format!("busy-{created}"), vec![super::mac(&mac)]),
                            "writer",
                        )
                        .await
                        .unwrap();
                    created += 1;
                }
                created
            })
        };
        let directory = tempfile::tempdir().unwrap();
        let mut machines_seen = Vec::new();
        for round in 0..5 {
            let path = directory.path().join(format!("backup-{round}.db"));
            copy::backup(&store, &path).await.unwrap();
            let backup = copy::OpenBackup::open(&path).await.unwrap();
            let count = |sql: &'static str| {
                let pool = backup.store.pool().clone();
                async move {
                    sqlx::query(sql)
                        .fetch_one(&pool)
                        .await
                        .unwrap()
                        .get::<i64, _>(0)
                }
            };
            let machines = count("SELECT COUNT(*) FROM machines").await;
            assert_eq!(count("SELECT COUNT(*) FROM interfaces").await, machines);
            assert_eq!(
                count("SELECT COUNT(*) FROM events WHERE kind = 'created'").await,
                machines
            );
            machines_seen.push(machines);
            backup.close().await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let created = writer.await.unwrap();
        assert!(created > 0);
        assert!(
            machines_seen.windows(2).all(|pair| pair[0] <= pair[1]),
            "{machines_seen:?}"
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_an_older_fleet_wrote_is_migrated_on_restore_and_left_as_it_was() {
    // A backup as fleet wrote it before migration 0015 (`controllers`): its schema, a machine.
    let directory = tempfile::tempdir().unwrap();
    let migrations = directory.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut newest_kept = 0;
    for entry in std::fs::read_dir(&all).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let version: i64 = file.split('_').next().unwrap().parse().unwrap();
        if version < 15 {
            std::fs::copy(&path, migrations.join(&file)).unwrap();
            newest_kept = newest_kept.max(version);
        }
    }
    assert_eq!(newest_kept, 14);
    let backup = directory.path().join("old-backup.db");
    {
        use sqlx::Connection;
        let mut connection =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", backup.display()))
                .await
                .unwrap();
        sqlx::migrate::Migrator::new(migrations.as_path())
            .await
            .unwrap()
            .run(&mut connection)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO machines (name, status, status_since, created_at, updated_at) \
             VALUES ('old-node', 'ready', 1, 1, 1)",
        )
        .execute(&mut connection)
        .await
        .unwrap();
        connection.close().await.unwrap();
    }
    let before = std::fs::read(&backup).unwrap();

    let target_path = directory.path().join("target").join("fleet.db");
    let stdout =
        succeeded(&restore(backup.to_str().unwrap(), &sqlite_url(&target_path), &[]).await);
    assert!(
        stdout.contains("migrated from schema version 14"),
        "{stdout}"
    );
    let target = Store::open(&sqlite_url(&target_path)).await.unwrap();
    assert!(target.machine("old-node").await.unwrap().is_some());
    target.close().await;
    assert_eq!(
        std::fs::read(&backup).unwrap(),
        before,
        "the backup file is unchanged"
    );
}
