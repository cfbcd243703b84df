//! Copying a whole store into another (`fleet db backup`, `restore`, `migrate-to`).
//!
//! The tables, their columns and the order they are filled in come from the database itself
//! (`sqlite_master` and `pragma_table_info`, or `information_schema` and `pg_constraint`), never
//! from a list kept here: a table a new migration adds is carried without a change to this file.
//! Every table but sqlx's `_sqlx_migrations` (each store has its own, written by its own
//! migrations) and SQLite's `sqlite_*` is copied, parents before the tables whose foreign keys
//! point at them.
//!
//! Invariants:
//! - The source is read in one read transaction (one snapshot: REPEATABLE READ on PostgreSQL; a
//!   WAL read transaction on SQLite), so the copy is consistent while controllers write.
//! - The target is written in one transaction: on any error nothing of the copy is left.
//! - Both stores are at the same schema version (each was migrated by this build), and their
//!   tables and columns are the same; otherwise nothing is copied.
//! - A target that holds any row is refused unless the caller asked to replace what it holds.
//! - Ids continue after the copy as they would have in the source: PostgreSQL's identity
//!   sequences and SQLite's `sqlite_sequence` are set to the source's (never below the highest
//!   id copied), so an id handed out and deleted in the source is not handed out again.
//! - Columns are TEXT and BIGINT only; a column of another type is an error naming it.

use super::db::SingleFile;
use super::{Backend, Store, StoreError};
use futures_util::TryStreamExt;
use sqlx::{Any, Row, Transaction};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most values one INSERT binds: SQLite's historic limit (999), which every build accepts.
const MAX_BINDS: usize = 999;

/// The table sqlx records each store's migrations in: each store keeps its own.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// What to do with a target that already holds rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenNotEmpty {
    /// Copy nothing and say which tables hold rows.
    Refuse,
    /// Delete every row of every table first, in the same transaction as the copy.
    Replace,
}

/// One table as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub name: String,
    pub columns: Vec<ColumnShape>,
    /// The tables its foreign keys point at (itself left out).
    pub parents: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnShape {
    pub name: String,
    pub kind: ColumnKind,
}

/// What a column holds: fleet's columns are TEXT or BIGINT (INTEGER for SQLite's row ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Integer,
    Text,
}

/// One value read from a row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    Null,
    Integer(i64),
    Text(String),
}

/// How many rows each table has, in the order they were copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<TableCount>,
    /// The schema version (the latest migration) both stores are at.
    pub schema_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: String,
    /// Rows read from the source and written to the target.
    pub copied: u64,
    /// Rows the target holds once the copy committed (read back afterwards): equal to `copied`.
    pub found: u64,
}

impl CopyReport {
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|table| table.copied).sum()
    }
}

/// The store's tables (but `_sqlx_migrations` and SQLite's own), each with its columns and the
/// tables it points at, parents first (then by name).
pub async fn tables(store: &Store) -> Result<Vec<TableShape>, StoreError> {
    let mut transaction = store.begin_read().await?;
    let shapes = read_tables(&mut transaction, store.backend()).await?;
    transaction.commit().await?;
    Ok(shapes)
}

/// Every row of `table`, each as its values in the order of `shape.columns`, sorted: for
/// comparing two stores (tests, checks).
pub async fn table_rows(store: &Store, shape: &TableShape) -> Result<Vec<Vec<Value>>, StoreError> {
    let sql = select_sql(shape);
    let rows = sqlx::query(&sql).fetch_all(store.pool()).await?;
    let mut values = rows
        .iter()
        .map(|row| decode_row(row, shape))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| StoreError::CopyTable {
            table: shape.name.clone(),
            rows: 0,
            error,
        })?;
    values.sort();
    Ok(values)
}

/// Copies every row of every table of `source` into `target`, in one read transaction and one
/// write transaction, then counts the target's rows and checks they are the rows copied.
pub async fn copy_store(
    source: &Store,
    target: &Store,
    when_not_empty: WhenNotEmpty,
) -> Result<CopyReport, StoreError> {
    let source_version = source.schema_version().await?;
    let target_version = target.schema_version().await?;
    if source_version != target_version {
        return Err(StoreError::SchemaDiffers {
            from: source.location().to_string(),
            to: target.location().to_string(),
            difference: format!(
                "the source is at migration {source_version}, the target at {target_version}"
            ),
        });
    }
    let mut reading = source.begin_read().await?;
    let shapes = read_tables(&mut reading, source.backend()).await?;
    let mut writing = target.begin_write().await?;
    let target_shapes = read_tables(&mut writing, target.backend()).await?;
    if let Some(difference) = shape_difference(&shapes, &target_shapes) {
        return Err(StoreError::SchemaDiffers {
            from: source.location().to_string(),
            to: target.location().to_string(),
            difference,
        });
    }

    let held = count_all(&mut writing, &shapes).await?;
    let not_empty: Vec<String> = held
        .iter()
        .filter(|(_, rows)| **rows > 0)
        .map(|(table, rows)| format!("{table}: {rows} rows"))
        .collect();
    if !not_empty.is_empty() {
        match when_not_empty {
            WhenNotEmpty::Refuse => {
                return Err(StoreError::NotEmpty {
                    location: target.location().to_string(),
                    tables: not_empty.join(", "),
                })
            }
            WhenNotEmpty::Replace => {
                for shape in shapes.iter().rev() {
                    sqlx::query(&format!("DELETE FROM {}", quote(&shape.name)))
                        .execute(&mut *writing)
                        .await
                        .map_err(|error| StoreError::CopyTable {
                            table: shape.name.clone(),
                            rows: 0,
                            error,
                        })?;
                }
            }
        }
    }

    let mut copied = Vec::with_capacity(shapes.len());
    for shape in &shapes {
        let rows = copy_table(&mut reading, &mut writing, shape).await?;
        copied.push((shape.name.clone(), rows));
    }
    let last_ids = last_ids(&mut reading, source.backend(), &shapes).await?;
    continue_ids(&mut writing, target.backend(), &shapes, &last_ids).await?;
    writing.commit().await?;
    reading.commit().await?;

    let mut reading_back = target.begin_read().await?;
    let found = count_all(&mut reading_back, &shapes).await?;
    reading_back.commit().await?;
    let mut tables = Vec::with_capacity(copied.len());
    for (table, copied) in copied {
        let found = found.get(&table).copied().unwrap_or(0);
        if found != copied {
            return Err(StoreError::CountMismatch {
                location: target.location().to_string(),
                table,
                copied,
                found,
            });
        }
        tables.push(TableCount {
            table,
            copied,
            found,
        });
    }
    Ok(CopyReport {
        tables,
        schema_version: source_version,
    })
}

/// Writes a backup of `source` to `to`: a SQLite file made by this build's migrations holding
/// every row, written whole (a temporary file in a private directory beside it, renamed over
/// `to`) and readable by its owner only (0600: it holds token hashes).
pub async fn backup(source: &Store, to: &Path) -> Result<CopyReport, StoreError> {
    let file_error = |path: &Path| {
        let path = path.to_path_buf();
        move |error| StoreError::BackupFile { path, error }
    };
    let to = std::path::absolute(to).map_err(file_error(to))?;
    // Renamed over the live SQLite file, the backup would leave that store's -wal beside it.
    if source.backend() == Backend::Sqlite {
        let same = |path: &Path| std::fs::canonicalize(path).ok();
        if same(&to).is_some() && same(&to) == same(Path::new(source.location())) {
            return Err(StoreError::BackupFile {
                path: to,
                error: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "it is the store being backed up: write the backup to another file",
                ),
            });
        }
    }
    let directory = to.parent().unwrap_or(Path::new("/"));
    let scratch = tempfile::Builder::new()
        .prefix(".fleet-backup-")
        .tempdir_in(directory)
        .map_err(file_error(directory))?;
    let temporary = scratch.path().join("backup.db");
    let copy = Store::open_single_file(&temporary, SingleFile::New).await?;
    let copied = copy_store(source, &copy, WhenNotEmpty::Refuse).await;
    copy.close().await;
    let report = copied?;
    std::fs::File::open(&temporary)
        .and_then(|file| file.sync_all())
        .map_err(file_error(&temporary))?;
    std::fs::rename(&temporary, &to).map_err(file_error(&to))?;
    // The new name's directory entry, so a crash right after does not lose the rename.
    if let Ok(directory) = std::fs::File::open(directory) {
        let _ = directory.sync_all();
    }
    Ok(report)
}

/// A backup file opened for reading: a private copy of it, migrated up to this build's schema
/// (an older backup's file is left as it was). Refused when the file is missing, is not a fleet
/// store, or was written by a newer fleet (`StoreError::NewerSchema`).
pub struct OpenBackup {
    pub store: Store,
    /// The schema version the file was written at, before any migration of the copy.
    pub written_at: i64,
    _scratch: tempfile::TempDir,
}

impl OpenBackup {
    pub async fn open(from: &Path) -> Result<OpenBackup, StoreError> {
        let file_error = |path: &Path| {
            let path = path.to_path_buf();
            move |error| StoreError::BackupFile { path, error }
        };
        if !std::fs::metadata(from).map_err(file_error(from))?.is_file() {
            return Err(StoreError::NotAStore {
                path: from.to_path_buf(),
                detail: "it is not a file".into(),
            });
        }
        let scratch = tempfile::Builder::new()
            .prefix("fleet-restore-")
            .tempdir()
            .map_err(file_error(&std::env::temp_dir()))?;
        let copy: PathBuf = scratch.path().join("backup.db");
        std::fs::copy(from, &copy).map_err(file_error(from))?;
        let written_at = written_version(&copy, from).await?;
        let store = Store::open_single_file(&copy, SingleFile::Existing)
            .await
            .map_err(|error| match error {
                StoreError::NotAStore { detail, .. } => StoreError::NotAStore {
                    path: from.to_path_buf(),
                    detail,
                },
                other => other,
            })?;
        Ok(OpenBackup {
            store,
            written_at,
            _scratch: scratch,
        })
    }

    pub async fn close(self) {
        self.store.close().await;
    }
}

/// The schema version a backup file was written at, read without changing it (0 when it has
/// no migrations table: `open_single_file` then says it is not a store).
async fn written_version(copy: &Path, from: &Path) -> Result<i64, StoreError> {
    use sqlx::Connection;
    super::db::install_drivers();
    let url = super::db::sqlite_url(copy, Some("mode=ro"));
    let not_a_store = |error: sqlx::Error| StoreError::NotAStore {
        path: from.to_path_buf(),
        detail: error.to_string(),
    };
    let mut connection = sqlx::AnyConnection::connect(&url)
        .await
        .map_err(not_a_store)?;
    let has_table = sqlx::query(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(&mut connection)
    .await
    .map_err(not_a_store)?
    .try_get::<i64, _>(0)?;
    let version = if has_table > 0 {
        sqlx::query("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut connection)
            .await?
            .try_get::<Option<i64>, _>(0)?
            .unwrap_or(0)
    } else {
        0
    };
    let _ = connection.close().await;
    Ok(version)
}

async fn read_tables(
    transaction: &mut Transaction<'static, Any>,
    backend: Backend,
) -> Result<Vec<TableShape>, StoreError> {
    let names: Vec<String> = match backend {
        Backend::Sqlite => sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND substr(name, 1, 7) <> 'sqlite_' AND name <> $1 ORDER BY name",
        ),
        Backend::Postgres => sqlx::query(
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
             AND table_name <> $1 ORDER BY 1",
        ),
    }
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut **transaction)
    .await?
    .iter()
    .map(|row| row.try_get::<String, _>(0))
    .collect::<Result<_, _>>()?;

    let mut shapes = Vec::with_capacity(names.len());
    for name in names {
        let columns = read_columns(transaction, backend, &name).await?;
        let parents = match backend {
            Backend::Sqlite => sqlx::query("SELECT \"table\" FROM pragma_foreign_key_list($1)"),
            Backend::Postgres => sqlx::query(
                "SELECT CAST(parent.relname AS TEXT) FROM pg_constraint c \
                 JOIN pg_class child ON child.oid = c.conrelid \
                 JOIN pg_class parent ON parent.oid = c.confrelid \
                 WHERE c.contype = 'f' AND child.relname = $1 \
                 AND child.relnamespace = CAST(current_schema() AS regnamespace)",
            ),
        }
        .bind(&name)
        .fetch_all(&mut **transaction)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<BTreeSet<_>, _>>()?
        .into_iter()
        .filter(|parent| *parent != name)
        .collect();
        shapes.push(TableShape {
            name,
            columns,
            parents,
        });
    }
    parents_first(shapes)
}

async fn read_columns(
    transaction: &mut Transaction<'static, Any>,
    backend: Backend,
    table: &str,
) -> Result<Vec<ColumnShape>, StoreError> {
    let rows = match backend {
        Backend::Sqlite => sqlx::query("SELECT name, type FROM pragma_table_info($1) ORDER BY cid"),
        Backend::Postgres => sqlx::query(
            "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 \
             ORDER BY ordinal_position",
        ),
    }
    .bind(table)
    .fetch_all(&mut **transaction)
    .await?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(0)?;
        let declared: String = row.try_get(1)?;
        let kind = match declared.to_ascii_lowercase().as_str() {
            "bigint" | "integer" => ColumnKind::Integer,
            "text" => ColumnKind::Text,
            _ => {
                return Err(StoreError::UnsupportedColumn {
                    table: table.to_string(),
                    column: name,
                    declared,
                })
            }
        };
        columns.push(ColumnShape { name, kind });
    }
    Ok(columns)
}

/// Orders the tables so that every table comes after the tables its foreign keys point at
/// (Kahn's algorithm; among tables that are ready, by name).
fn parents_first(shapes: Vec<TableShape>) -> Result<Vec<TableShape>, StoreError> {
    let known: BTreeSet<String> = shapes.iter().map(|shape| shape.name.clone()).collect();
    let mut waiting: BTreeMap<String, TableShape> = shapes
        .into_iter()
        .map(|shape| (shape.name.clone(), shape))
        .collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut ordered = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() {
        let ready: Vec<String> = waiting
            .values()
            .filter(|shape| {
                shape
                    .parents
                    .iter()
                    .all(|parent| placed.contains(parent) || !known.contains(parent))
            })
            .map(|shape| shape.name.clone())
            .collect();
        if ready.is_empty() {
            let cycle: Vec<&str> = waiting.keys().map(String::as_str).collect();
            return Err(StoreError::ForeignKeyCycle(cycle.join(", ")));
        }
        for name in ready {
            if let Some(shape) = waiting.remove(&name) {
                placed.insert(name);
                ordered.push(shape);
            }
        }
    }
    Ok(ordered)
}

/// What differs between two stores' tables and columns (by name; column order may differ),
/// or `None`.
fn shape_difference(source: &[TableShape], target: &[TableShape]) -> Option<String> {
    let by_name = |shapes: &[TableShape]| -> BTreeMap<String, BTreeMap<String, ColumnKind>> {
        shapes
            .iter()
            .map(|shape| {
                let columns = shape
                    .columns
                    .iter()
                    .map(|column| (column.name.clone(), column.kind))
                    .collect();
                (shape.name.clone(), columns)
            })
            .collect()
    };
    let source = by_name(source);
    let target = by_name(target);
    let mut differences = Vec::new();
    for (table, columns) in &source {
        let Some(target_columns) = target.get(table) else {
            differences.push(format!("table {table} is missing in the target"));
            continue;
        };
        for (column, kind) in columns {
            match target_columns.get(column) {
                None => differences.push(format!("column {table}.{column} is missing in the target")),
                Some(target_kind) if target_kind != kind => differences.push(format!(
                    "column {table}.{column} is {kind:?} in the source, {target_kind:?} in the target"
                )),
                Some(_) => {}
            }
        }
        for column in target_columns.keys() {
            if !columns.contains_key(column) {
                differences.push(format!("column {table}.{column} is missing in the source"));
            }
        }
    }
    for table in target.keys() {
        if !source.contains_key(table) {
            differences.push(format!("table {table} is missing in the source"));
        }
    }
    (!differences.is_empty()).then(|| differences.join("; "))
}

async fn count_all(
    transaction: &mut Transaction<'static, Any>,
    shapes: &[TableShape],
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut counts = BTreeMap::new();
    for shape in shapes {
        let rows: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {}", quote(&shape.name)))
            .fetch_one(&mut **transaction)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|error| StoreError::CopyTable {
                table: shape.name.clone(),
                rows: 0,
                error,
            })?;
        counts.insert(shape.name.clone(), u64::try_from(rows).unwrap_or(0));
    }
    Ok(counts)
}

/// Streams one table's rows from `reading` into `writing`, a batch of rows per INSERT.
async fn copy_table(
    reading: &mut Transaction<'static, Any>,
    writing: &mut Transaction<'static, Any>,
    shape: &TableShape,
) -> Result<u64, StoreError> {
    let failed = |rows: u64| {
        let table = shape.name.clone();
        move |error| StoreError::CopyTable { table, rows, error }
    };
    let width = shape.columns.len().max(1);
    let batch_rows = (MAX_BINDS / width).max(1);
    let select = select_sql(shape);
    let mut stream = sqlx::query(&select).fetch(&mut **reading);
    let mut batch: Vec<Vec<Value>> = Vec::with_capacity(batch_rows);
    let mut copied: u64 = 0;
    while let Some(row) = stream.try_next().await.map_err(failed(copied))? {
        batch.push(decode_row(&row, shape).map_err(failed(copied))?);
        if batch.len() == batch_rows {
            insert_batch(writing, shape, &batch)
                .await
                .map_err(failed(copied))?;
            copied += batch.len() as u64;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        insert_batch(writing, shape, &batch)
            .await
            .map_err(failed(copied))?;
        copied += batch.len() as u64;
    }
    Ok(copied)
}

fn select_sql(shape: &TableShape) -> String {
    let columns: Vec<String> = shape
        .columns
        .iter()
        .map(|column| quote(&column.name))
        .collect();
    format!("SELECT {} FROM {}", columns.join(", "), quote(&shape.name))
}

fn decode_row(row: &sqlx::any::AnyRow, shape: &TableShape) -> Result<Vec<Value>, sqlx::Error> {
    shape
        .columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            Ok(match column.kind {
                ColumnKind::Integer => match row.try_get::<Option<i64>, _>(index)? {
                    Some(value) => Value::Integer(value),
                    None => Value::Null,
                },
                ColumnKind::Text => match row.try_get::<Option<String>, _>(index)? {
                    Some(value) => Value::Text(value),
                    None => Value::Null,
                },
            })
        })
        .collect()
}

async fn insert_batch(
    writing: &mut Transaction<'static, Any>,
    shape: &TableShape,
    rows: &[Vec<Value>],
) -> Result<(), sqlx::Error> {
    let columns: Vec<String> = shape
        .columns
        .iter()
        .map(|column| quote(&column.name))
        .collect();
    let width = shape.columns.len();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(&shape.name),
        columns.join(", ")
    );
    for row in 0..rows.len() {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * width + column + 1));
        }
        sql.push(')');
    }
    let mut query = sqlx::query(&sql);
    for row in rows {
        for (value, column) in row.iter().zip(&shape.columns) {
            query = match (value, column.kind) {
                (Value::Integer(value), _) => query.bind(*value),
                (Value::Text(value), _) => query.bind(value.clone()),
                (Value::Null, ColumnKind::Integer) => query.bind(None::<i64>),
                (Value::Null, ColumnKind::Text) => query.bind(None::<String>),
            };
        }
    }
    query.execute(&mut **writing).await?;
    Ok(())
}

/// The last id each table's id generator handed out in the source (SQLite's `sqlite_sequence`,
/// PostgreSQL's identity sequences), by table.
async fn last_ids(
    reading: &mut Transaction<'static, Any>,
    backend: Backend,
    shapes: &[TableShape],
) -> Result<BTreeMap<String, i64>, StoreError> {
    let mut last = BTreeMap::new();
    match backend {
        Backend::Sqlite => {
            let rows = sqlx::query("SELECT name, seq FROM sqlite_sequence")
                .fetch_all(&mut **reading)
                .await?;
            for row in rows {
                last.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
            }
        }
        Backend::Postgres => {
            for (table, column) in identity_columns(reading, shapes).await? {
                let row = sqlx::query(
                    "SELECT pg_sequence_last_value(CAST(pg_get_serial_sequence($1, $2) AS regclass))",
                )
                .bind(quote(&table))
                .bind(&column)
                .fetch_one(&mut **reading)
                .await?;
                if let Some(value) = row.try_get::<Option<i64>, _>(0)? {
                    last.insert(table, value);
                }
            }
        }
    }
    Ok(last)
}

/// The PostgreSQL columns filled by an identity (or serial) sequence, as (table, column).
async fn identity_columns(
    transaction: &mut Transaction<'static, Any>,
    shapes: &[TableShape],
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT) \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() \
         AND (is_identity = 'YES' OR column_default LIKE 'nextval(%') \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut **transaction)
    .await?;
    let known: BTreeSet<&str> = shapes.iter().map(|shape| shape.name.as_str()).collect();
    let mut columns = Vec::new();
    for row in rows {
        let table: String = row.try_get(0)?;
        if known.contains(table.as_str()) {
            columns.push((table, row.try_get(1)?));
        }
    }
    Ok(columns)
}

/// Sets the target's id generators so the next id is after both the highest id copied and the
/// source's last one.
async fn continue_ids(
    writing: &mut Transaction<'static, Any>,
    backend: Backend,
    shapes: &[TableShape],
    last_ids: &BTreeMap<String, i64>,
) -> Result<(), StoreError> {
    match backend {
        Backend::Sqlite => {
            // Explicit ids already moved `sqlite_sequence` up to the highest one copied; only a
            // source that handed out (and deleted) higher ones needs more. A table whose rows
            // were all deleted has no row there yet.
            for (table, last) in last_ids {
                let updated =
                    sqlx::query("UPDATE sqlite_sequence SET seq = $1 WHERE name = $2 AND seq < $1")
                        .bind(*last)
                        .bind(table)
                        .execute(&mut **writing)
                        .await?
                        .rows_affected();
                if updated == 0 {
                    sqlx::query(
                        "INSERT INTO sqlite_sequence (name, seq) SELECT $1, $2 \
                         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = $1)",
                    )
                    .bind(table)
                    .bind(*last)
                    .execute(&mut **writing)
                    .await?;
                }
            }
        }
        Backend::Postgres => {
            for (table, column) in identity_columns(writing, shapes).await? {
                let last = last_ids.get(&table).copied().unwrap_or(0);
                // setval(seq, n, true): n was handed out, the next id is n + 1 (and
                // `pg_sequence_last_value` reads n, for a copy of this copy); with nothing handed
                // out, setval(seq, 1, false): the next id is 1.
                let sql = format!(
                    "SELECT setval(CAST(pg_get_serial_sequence($1, $2) AS regclass), \
                     GREATEST(COALESCE(MAX({column}), 0), $3, 1), \
                     GREATEST(COALESCE(MAX({column}), 0), $3) > 0) FROM {table}",
                    column = quote(&column),
                    table = quote(&table),
                );
                sqlx::query(&sql)
                    .bind(quote(&table))
                    .bind(&column)
                    .bind(last)
                    .fetch_one(&mut **writing)
                    .await
                    .map_err(|error| StoreError::CopyTable {
                        table: table.clone(),
                        rows: 0,
                        error,
                    })?;
            }
        }
    }
    Ok(())
}

/// An identifier in double quotes (both backends' SQL).
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str, parents: &[&str]) -> TableShape {
        TableShape {
            name: name.into(),
            columns: vec![ColumnShape {
                name: "id".into(),
                kind: ColumnKind::Integer,
            }],
            parents: parents.iter().map(|parent| parent.to_string()).collect(),
        }
    }

    fn names(shapes: &[TableShape]) -> Vec<&str> {
        shapes.iter().map(|shape| shape.name.as_str()).collect()
    }

    #[test]
    fn parents_come_before_the_tables_pointing_at_them() {
        let ordered = parents_first(vec![
            shape("a_child", &["machines"]),
            shape("grandchild", &["a_child"]),
            shape("events", &[]),
            shape("machines", &[]),
        ])
        .unwrap();
        assert_eq!(
            names(&ordered),
            ["events", "machines", "a_child", "grandchild"]
        );
    }

    #[test]
    fn a_foreign_key_cycle_is_named() {
        let error = parents_first(vec![
            shape("a", &["b"]),
            shape("b", &["a"]),
            shape("c", &[]),
        ])
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            StoreError::ForeignKeyCycle("a, b".into()).to_string()
        );
    }

    #[test]
    fn differences_name_the_table_and_the_column() {
        let mut other = shape("machines", &[]);
        other.columns.push(ColumnShape {
            name: "firmware".into(),
            kind: ColumnKind::Text,
        });
        assert_eq!(
            shape_difference(&[shape("machines", &[])], &[other, shape("leases", &[])]).unwrap(),
            "column machines.firmware is missing in the source; table leases is missing in the source"
        );
        assert_eq!(
            shape_difference(&[shape("a", &[])], &[shape("a", &[])]),
            None
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("table"), "\"table\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
