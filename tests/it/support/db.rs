//! Stores for tests, on SQLite (a real file in a temporary directory) and on PostgreSQL (a fresh
//! database per test on the server named by `FLEET_TEST_POSTGRES`).
//!
//! Write a store test once and run it on both with [`both_backends!`]:
//!
//! ```ignore
//! both_backends!(creates_a_machine, |store| async move {
//!     store.create_machine(&new_machine("node-1"), "test").await.unwrap();
//! });
//! ```
//!
//! That generates `creates_a_machine::sqlite` and `creates_a_machine::postgres`.

#![allow(dead_code)] // Each test module uses its own part of the helpers.

use fleet::store::Store;
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicBool, Ordering};
use tempfile::TempDir;

/// The PostgreSQL server the tests use, as an administrator able to create databases.
pub const DEFAULT_TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Test databases are named `fleet_test_<unix seconds>_<random>`.
const TEST_DATABASE_PREFIX: &str = "fleet_test_";

/// Databases left by earlier runs (a panicking test never drops its own) are dropped once they
/// are this old; younger ones may belong to a run going on beside this one.
const LEFTOVER_AGE_SECONDS: u64 = 30 * 60;

/// A store on a new SQLite file in a new temporary directory (removed when the `TempDir` drops).
pub async fn sqlite_store() -> (Store, TempDir) {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let path = directory.path().join("fleet.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap_or_else(|error| panic!("open the SQLite store {}: {error}", path.display()));
    (store, directory)
}

pub fn test_postgres_url() -> String {
    std::env::var("FLEET_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_TEST_POSTGRES.to_string())
}

/// A store on a new, empty PostgreSQL database. Fails (never skips) if the server is unreachable.
/// Drop it with [`drop_postgres_store`]; databases a test leaves behind are swept by a later run.
pub async fn postgres_store() -> Store {
    let url = empty_postgres_database().await;
    Store::open(&url)
        .await
        .unwrap_or_else(|error| panic!("open the PostgreSQL store {url}: {error}"))
}

/// The URL of a new PostgreSQL database without any table (for a store written by an older
/// fleet: apply its migrations, then `Store::open`). Drop it with [`drop_postgres_store`].
pub async fn empty_postgres_database() -> String {
    let admin_url = test_postgres_url();
    let mut admin = connect_admin(&admin_url).await;
    sweep_leftover_databases(&mut admin).await;
    let database = format!(
        "{TEST_DATABASE_PREFIX}{}_{:08x}",
        unix_seconds(),
        rand::random::<u32>()
    );
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|error| panic!("create the test database {database}: {error}"));
    let _ = admin.close().await;
    with_database(&admin_url, &database)
}

/// Closes the store and drops its database. Dropping is clean-up, not a check: when the server
/// cannot drop it in time (a CI run once failed here, its message cut off: on a loaded machine a
/// killed controller's sessions can outlive FORCE's 5 s wait), it is tried again, then left for
/// the sweep of a later run with a warning, instead of failing the test that used it.
pub async fn drop_postgres_store(store: Store) {
    let row = sqlx::query("SELECT CAST(current_database() AS TEXT) AS name")
        .fetch_one(store.pool())
        .await;
    store.close().await;
    let database: String = match row {
        Ok(row) => sqlx::Row::get(&row, "name"),
        Err(error) => {
            eprintln!("warning: cannot read the test database's name to drop it: {error}; a later run sweeps it");
            return;
        }
    };
    assert!(
        database.starts_with(TEST_DATABASE_PREFIX),
        "refusing to drop `{database}`"
    );
    let mut last_error = None;
    for attempt in 0..5 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        let mut admin = match PgConnection::connect(&test_postgres_url()).await {
            Ok(admin) => admin,
            Err(error) => {
                last_error = Some(error);
                continue;
            }
        };
        let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
        match dropped {
            Ok(_) => return,
            Err(error) => last_error = Some(error),
        }
    }
    if let Some(error) = last_error {
        eprintln!(
            "warning: cannot drop the test database {database}: {error}; a later run sweeps it"
        );
    }
}

async fn connect_admin(url: &str) -> PgConnection {
    match PgConnection::connect(url).await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "PostgreSQL is not reachable at {}: {error}\n\
             The store tests run on PostgreSQL too (they are never skipped). They need a server \
             where this role may log in and create databases. `sudo bash .ci/setup` starts the \
             local cluster and creates the role fleet_test (then use \
             FLEET_TEST_POSTGRES=postgres://fleet_test:fleet_test@127.0.0.1:5432/postgres, as \
             .ci/test does); or start one with\n  \
             docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16\n\
             and point FLEET_TEST_POSTGRES at it (default {DEFAULT_TEST_POSTGRES}).",
            fleet::store::redact_url(url)
        ),
    }
}

/// Drops the test databases earlier runs left behind (once per test process).
async fn sweep_leftover_databases(admin: &mut PgConnection) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let rows = sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'fleet\\_test\\_%'")
        .fetch_all(&mut *admin)
        .await
        .expect("list the leftover test databases");
    let now = unix_seconds();
    for row in rows {
        let database: String = sqlx::Row::get(&row, "datname");
        let created = database
            .strip_prefix(TEST_DATABASE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|seconds| seconds.parse::<u64>().ok());
        if created.is_some_and(|created| now.saturating_sub(created) > LEFTOVER_AGE_SECONDS) {
            // Best effort: another run may be sweeping the same one.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// `url` with its database (the path) replaced by `database`, keeping any `?parameters`.
fn with_database(url: &str, database: &str) -> String {
    let (base, parameters) = match url.split_once('?') {
        Some((base, parameters)) => (base, Some(parameters)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |index| index + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match parameters {
        Some(parameters) => format!("{server}/{database}?{parameters}"),
        None => format!("{server}/{database}"),
    }
}

/// Writes a store test once and runs it on both backends, as `NAME::sqlite` and `NAME::postgres`.
/// The body gets a `Store`; the SQLite file and the PostgreSQL database are removed afterwards.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, |$store:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (store, _directory) = $crate::support::db::sqlite_store().await;
                let $store: fleet::store::Store = store.clone();
                $body.await;
                store.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let store = $crate::support::db::postgres_store().await;
                let $store: fleet::store::Store = store.clone();
                $body.await;
                $crate::support::db::drop_postgres_store(store).await;
            }
        }
    };
}

#[test]
fn database_is_replaced_in_the_url() {
    assert_eq!(
        with_database("postgres://u@h:5432/postgres", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        with_database("postgres://u@h/postgres?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
}
