//! Opening the store: which backend a URL names, the SQLite file and its pragmas, the pool,
//! the migrations, and how transactions begin.

use super::changes::ChangeHub;
use super::{Backend, StoreError};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a SQLite writer waits for another writer before giving up with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite serialises writers anyway; a few connections let readers run beside one writer.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// PostgreSQL connections a controller's pool may hold, unless `FLEET_DATABASE_MAX_CONNECTIONS`
/// says otherwise: several controllers share the server's `max_connections` (100 by default),
/// each holding this pool, its leader's fenced pool and one LISTEN connection.
const POSTGRES_MAX_CONNECTIONS: u32 = 16;
/// A pooled connection idle this long is closed, so a burst does not hold the server's
/// connection slots for the next ten minutes (sqlx's default).
const POSTGRES_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The size of a controller's PostgreSQL pool: `FLEET_DATABASE_MAX_CONNECTIONS` (2 or more), or
/// [`POSTGRES_MAX_CONNECTIONS`].
fn postgres_max_connections() -> u32 {
    std::env::var("FLEET_DATABASE_MAX_CONNECTIONS")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|connections| *connections >= 2)
        .unwrap_or(POSTGRES_MAX_CONNECTIONS)
}

/// What `Store::open_single_file` expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SingleFile {
    /// A new file (a backup being written).
    New,
    /// A file a fleet store was written into (a backup being read).
    Existing,
}

/// The store. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    /// Where it is, for messages: the SQLite file's path, or the PostgreSQL URL with any
    /// password hidden (`redact_url`).
    location: Arc<str>,
    /// The controllers' key for the secrets the store keeps (`secrets.rs`); without one, they
    /// can be neither written nor read.
    pub(crate) secret_key: Option<super::secret_box::SecretKey>,
    /// PostgreSQL: the LISTEN connection that wakes event feeds and the readers of other
    /// controllers' changes (`changes.rs`), opened by the first of them.
    pub(crate) changes: Option<Arc<ChangeHub>>,
}

/// Now, in Unix milliseconds: the store's only clock.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn install_drivers() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(sqlx::any::install_default_drivers);
}

/// What `open` makes of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Postgres(String),
    /// A file path (never `:memory:`: a store must outlive its connections) and URL parameters.
    Sqlite {
        path: PathBuf,
        params: Option<String>,
    },
}

fn parse_target(url: &str) -> Result<Target, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url.to_string()));
    }
    let unsupported = || StoreError::UnsupportedUrl(redact_url(url));
    let rest = match url.strip_prefix("sqlite:") {
        Some(rest) => rest.strip_prefix("//").unwrap_or(rest),
        // A plain path, unless it looks like some other scheme.
        None if url.contains("://") => return Err(unsupported()),
        None => {
            return Ok(Target::Sqlite {
                path: PathBuf::from(url),
                params: None,
            })
        }
    };
    let (path, params) = match rest.split_once('?') {
        Some((path, params)) => (path, Some(params.to_string())),
        None => (rest, None),
    };
    if path.is_empty() || path.contains(":memory:") {
        return Err(unsupported());
    }
    Ok(Target::Sqlite {
        path: PathBuf::from(path),
        params,
    })
}

/// The file a SQLite URL (or plain path) names; `None` for PostgreSQL or a URL `open` refuses.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    match parse_target(url) {
        Ok(Target::Sqlite { path, .. }) => Some(path),
        _ => None,
    }
}

/// The URL with any password replaced by `***`, for error messages and logs. A URL without a
/// password comes back as it was written; one that does not parse but has an `@` (where a
/// password could hide) keeps only its scheme.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) if parsed.password().is_some() => match parsed.set_password(Some("***")) {
            Ok(()) => parsed.into(),
            Err(()) => hidden(text),
        },
        Ok(_) => text.to_string(),
        Err(_) if text.contains('@') => hidden(text),
        Err(_) => text.to_string(),
    }
}

fn hidden(text: &str) -> String {
    match text.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://(the rest is not shown)"),
        None => "(a URL that is not shown)".to_string(),
    }
}

/// A SQLite URL for `path` that sqlx parses back to the same path: `%`, `?` and `#` escaped.
pub(crate) fn sqlite_url(path: &Path, params: Option<&str>) -> String {
    let mut encoded = String::new();
    for character in path.to_string_lossy().chars() {
        match character {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            other => encoded.push(other),
        }
    }
    let params = params.unwrap_or("");
    let mode = if params.split('&').any(|pair| pair.starts_with("mode=")) {
        ""
    } else {
        "mode=rwc"
    };
    let separator = if params.is_empty() || mode.is_empty() {
        ""
    } else {
        "&"
    };
    format!("sqlite://{encoded}?{params}{separator}{mode}")
}

impl Store {
    /// Opens (creating if need be) and migrates the database at `url`: `sqlite://PATH`, a plain
    /// path, or `postgres://USER@HOST/DB`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_drivers();
        let store = match parse_target(url)? {
            Target::Postgres(url) => open_postgres(&url).await?,
            Target::Sqlite { path, params } => open_sqlite(&path, params.as_deref()).await?,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// This store, reading and writing the secrets it keeps with `key` (every controller on one
    /// database must be given the same key).
    pub fn with_secret_key(mut self, key: super::secret_box::SecretKey) -> Store {
        self.secret_key = Some(key);
        self
    }

    /// The controllers' key, if this store was given one (peer requests prove themselves
    /// with it: `boot::images::peers`).
    pub fn secret_key(&self) -> Option<&super::secret_box::SecretKey> {
        self.secret_key.as_ref()
    }

    /// The id of the secret key this store was given, if any.
    pub fn secret_key_id(&self) -> Option<&str> {
        self.secret_key.as_ref().map(|key| key.id())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the database is, for messages: the SQLite file's path, or the PostgreSQL URL with
    /// any password hidden.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A SQLite file on one connection in the rollback-journal mode (not WAL), migrated: a file
    /// that is whole by itself once closed (no `-wal` beside it), for backups (`copy.rs`).
    /// A new file is created 0600; an existing one must hold a fleet schema (`_sqlx_migrations`)
    /// not newer than this build's, and is migrated up to it.
    pub(crate) async fn open_single_file(
        path: &Path,
        file: SingleFile,
    ) -> Result<Store, StoreError> {
        install_drivers();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let path = path.as_path();
        super::private::prepare_database_file(path).map_err(|source| StoreError::Private {
            path: path.to_path_buf(),
            source,
        })?;
        let url = sqlite_url(path, None);
        let open_error = |source| StoreError::Open {
            url: url.clone(),
            source,
        };
        let options = AnyConnectOptions::from_str(&url).map_err(open_error)?;
        let pool = pool_options()
            .max_connections(1)
            .acquire_timeout(SQLITE_BUSY_TIMEOUT * 2)
            .after_connect(|connection, _meta| {
                Box::pin(async move {
                    connection.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let store = Store {
            pool,
            backend: Backend::Sqlite,
            location: Arc::from(path.display().to_string()),
            secret_key: None,
            changes: None,
        };
        if file == SingleFile::Existing {
            let not_a_store = |detail: String| StoreError::NotAStore {
                path: path.to_path_buf(),
                detail,
            };
            let found = sqlx::query(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_one(&store.pool)
            .await
            .map_err(|error| not_a_store(error.to_string()))?;
            if found.try_get::<i64, _>(0)? == 0 {
                store.close().await;
                return Err(not_a_store(
                    "it has no fleet schema (no _sqlx_migrations table)".into(),
                ));
            }
        }
        store.migrate().await?;
        Ok(store)
    }

    /// The latest migration applied to this database (0: none).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// The connection pool, for tests and diagnostics (`PRAGMA journal_mode`, `current_database()`).
    /// Everything else goes through the typed methods, which keep the invariants.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection; waits for the ones in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        self.refuse_a_newer_schema(migrator).await?;
        // sqlx runs them under a lock on PostgreSQL (an advisory lock): of several controllers
        // starting at once, one migrates and the others wait, then find nothing to do.
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// A database that a newer fleet migrated is left alone, with an error that says so, before
    /// anything runs against a schema this program does not know.
    async fn refuse_a_newer_schema(&self, migrator: &Migrator) -> Result<(), StoreError> {
        let known = migrator
            .iter()
            .map(|migration| migration.version)
            .max()
            .unwrap_or(0);
        // No table yet: a new database.
        let Ok(row) = sqlx::query("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
        else {
            return Ok(());
        };
        let found: Option<i64> = row.try_get(0).unwrap_or(None);
        match found {
            Some(found) if found > known => Err(StoreError::NewerSchema {
                found,
                known,
                program: env!("CARGO_PKG_VERSION"),
            }),
            _ => Ok(()),
        }
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout), so that a read-then-write
    /// transaction cannot fail half-way with SQLITE_BUSY when another writer got there first.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let statement = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        begin_whole(&self.pool, statement).await
    }

    /// Begins a read-only transaction: several SELECTs that see one snapshot (a machine with
    /// its interfaces and disks).
    pub(crate) async fn begin_read(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let statement = match self.backend {
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        };
        begin_whole(&self.pool, statement).await
    }
}

/// Begins a transaction in a task of its own, so that a caller cancelled meanwhile (an HTTP
/// client gone, an aborted task, a timeout) cannot cut `BEGIN` in half. sqlx 0.8.6 on PostgreSQL
/// counts the transaction only once `BEGIN`'s answer is read: a future dropped in between
/// leaves the pooled connection inside a transaction nobody rolls back
/// (launchbadge/sqlx#4393, fixed in a later sqlx by #4394), and the next borrower's statements
/// run in it — a read-only one refused an UPDATE, and then every statement on that connection
/// failed with "current transaction is aborted" (seen with 1,000 simulated machines on three
/// controllers: machine API answers 500, machines failed). Finished in its task, the
/// transaction is either handed over or dropped there, which rolls it back.
async fn begin_whole(
    pool: &sqlx::AnyPool,
    statement: &'static str,
) -> Result<Transaction<'static, Any>, StoreError> {
    let pool = pool.clone();
    let begun = tokio::spawn(async move { pool.begin_with(statement).await });
    match begun.await {
        Ok(transaction) => Ok(transaction?),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // The runtime is stopping: as if the pool had closed.
        Err(_) => Err(sqlx::Error::PoolClosed.into()),
    }
}

async fn open_postgres(url: &str) -> Result<Store, StoreError> {
    let open_error = |source| StoreError::Open {
        url: redact_url(url),
        source,
    };
    let options = AnyConnectOptions::from_str(url).map_err(open_error)?;
    let pool = pool_options()
        .max_connections(postgres_max_connections())
        .idle_timeout(POSTGRES_IDLE_TIMEOUT)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(open_error)?;
    Ok(Store {
        pool,
        backend: Backend::Postgres,
        location: Arc::from(redact_url(url)),
        secret_key: None,
        changes: Some(ChangeHub::new(url)),
    })
}

/// How long a fenced (leader's) PostgreSQL session may sit idle inside a transaction, or run one
/// statement: a leader paused mid-transaction holds the leadership row share-locked, and a
/// takeover waits for it; the server ends such a session after this, so the wait is bounded.
const FENCED_SESSION_LIMIT: &str = "5s";
/// A leader needs few connections: the executor, the timeout watch, the power poll.
const FENCED_MAX_CONNECTIONS: u32 = 8;

impl Store {
    /// The store as the leader of `term` writes to it: on PostgreSQL a pool of its own whose
    /// sessions carry the term as `fleet.fence`, so every write on them is refused
    /// ([`StoreError::Fenced`]) once another controller holds a newer term
    /// (migration 0016's `fleet_check_fence`). On SQLite, which serves one controller, the
    /// same store. Close it when the term ends.
    pub async fn fenced(&self, url: &str, term: &super::LeaderTerm) -> Result<Store, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(self.clone());
        }
        let open_error = |source| StoreError::Open {
            url: redact_url(url),
            source,
        };
        let options = AnyConnectOptions::from_str(url).map_err(open_error)?;
        let fence = term.fence().replace('\'', "''");
        let pool = pool_options()
            .max_connections(FENCED_MAX_CONNECTIONS.min(postgres_max_connections()))
            .min_connections(0)
            .idle_timeout(POSTGRES_IDLE_TIMEOUT)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _meta| {
                let fence = fence.clone();
                Box::pin(async move {
                    connection
                        .execute(format!("SET fleet.fence = '{fence}'").as_str())
                        .await?;
                    let limit = FENCED_SESSION_LIMIT;
                    connection
                        .execute(
                            format!("SET idle_in_transaction_session_timeout = '{limit}'").as_str(),
                        )
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(open_error)?;
        Ok(Store {
            pool,
            backend: Backend::Postgres,
            location: self.location.clone(),
            secret_key: self.secret_key.clone(),
            changes: self.changes.clone(),
        })
    }
}

/// Every pool's options: a wait for a connection past sqlx's slow threshold (2 s) is logged at
/// debug, not as a warning. Under a load it cannot keep up with (10,000 simulated machines on
/// two cores) sqlx warned once per request, 282,000 lines of one run, and the writing cost CPU;
/// the machine API's latency is in `/metrics` (`fleet_http_request_duration_seconds`).
fn pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new().acquire_slow_level(log::LevelFilter::Debug)
}

async fn open_sqlite(path: &Path, params: Option<&str>) -> Result<Store, StoreError> {
    // Absolute, so that the URL has no host part for `url` to reinterpret (`sqlite://data/x.db`).
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        super::private::create_private_directory(parent).map_err(|source| {
            StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            }
        })?;
    }
    if !params.is_some_and(|params| params.contains("mode=ro") || params.contains("mode=memory")) {
        super::private::prepare_database_file(&path).map_err(|source| StoreError::Private {
            path: path.clone(),
            source,
        })?;
    }
    let url = sqlite_url(&path, params);
    let open_error = |source| StoreError::Open {
        url: url.clone(),
        source,
    };
    let options = AnyConnectOptions::from_str(&url).map_err(open_error)?;
    let pool = pool_options()
        .max_connections(SQLITE_MAX_CONNECTIONS)
        .acquire_timeout(SQLITE_BUSY_TIMEOUT * 2)
        .after_connect(|connection, _meta| {
            Box::pin(async move {
                // Per connection: these pragmas are not stored in the file.
                let busy_ms = SQLITE_BUSY_TIMEOUT.as_millis();
                connection
                    .execute(format!("PRAGMA busy_timeout = {busy_ms}").as_str())
                    .await?;
                connection.execute("PRAGMA foreign_keys = ON").await?;
                // In WAL mode, NORMAL loses no committed transaction when the process is killed
                // (only, at worst, the last ones on a power cut), and fsyncs far less than FULL.
                connection.execute("PRAGMA synchronous = NORMAL").await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(open_error)?;
    enable_wal(&pool, &url).await?;
    Ok(Store {
        pool,
        backend: Backend::Sqlite,
        location: Arc::from(path.display().to_string()),
        secret_key: None,
        changes: None,
    })
}

/// WAL is a property of the file (it persists); set it once, on one connection, before anyone
/// else writes: changing the journal mode needs an exclusive lock that busy_timeout does not wait for.
async fn enable_wal(pool: &AnyPool, url: &str) -> Result<(), StoreError> {
    let row = sqlx::query("PRAGMA journal_mode = WAL")
        .fetch_one(pool)
        .await
        .map_err(|source| StoreError::Open {
            url: url.to_string(),
            source,
        })?;
    let mode: String = row.try_get(0)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal {
            url: url.to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend() {
        assert_eq!(
            parse_target("postgres://u@h/db").unwrap(),
            Target::Postgres("postgres://u@h/db".into())
        );
        assert!(matches!(
            parse_target("postgresql://h/db").unwrap(),
            Target::Postgres(_)
        ));
        let sqlite = |path: &str, params: Option<&str>| Target::Sqlite {
            path: PathBuf::from(path),
            params: params.map(str::to_string),
        };
        assert_eq!(
            parse_target("sqlite:///var/lib/fleet.db").unwrap(),
            sqlite("/var/lib/fleet.db", None)
        );
        assert_eq!(
            parse_target("sqlite://fleet.db?mode=rw").unwrap(),
            sqlite("fleet.db", Some("mode=rw"))
        );
        assert_eq!(
            parse_target("sqlite:data/fleet.db").unwrap(),
            sqlite("data/fleet.db", None)
        );
        assert_eq!(
            parse_target("/tmp/a b/fleet.db").unwrap(),
            sqlite("/tmp/a b/fleet.db", None)
        );
        assert!(parse_target("mysql://h/db").is_err());
        assert!(parse_target("sqlite::memory:").is_err());
    }

    #[test]
    fn sqlite_urls_escape_what_sqlx_would_split_on() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/a?b#c%d.db"), None),
            "sqlite:///tmp/a%3Fb%23c%25d.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url(Path::new("f.db"), Some("mode=ro")),
            "sqlite://f.db?mode=ro"
        );
        assert_eq!(
            sqlite_url(Path::new("f.db"), Some("cache=shared")),
            "sqlite://f.db?cache=shared&mode=rwc"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://fleet:s3cret@db:5432/fleet"),
            "postgres://fleet:***@db:5432/fleet"
        );
        assert_eq!(
            redact_url("postgres://fleet@db/fleet"),
            "postgres://fleet@db/fleet"
        );
        assert_eq!(
            redact_url("sqlite://.fleet/fleet.db"),
            "sqlite://.fleet/fleet.db"
        );
        assert_eq!(redact_url(".fleet/fleet.db"), ".fleet/fleet.db");
        // The last `@` ends the user information.
        assert_eq!(
            redact_url("postgres://fleet:p@ss@db/fleet"),
            "postgres://fleet:***@db/fleet"
        );
        assert_eq!(
            redact_url("postgres://fleet:s3cret@db:99999/fleet"),
            "postgres://(the rest is not shown)"
        );
    }
}
