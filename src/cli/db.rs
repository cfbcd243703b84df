//! `fleet db`: backup, restore and migrate-to. These open the databases themselves (no
//! controller, no API): run them with the controllers stopped for a restore or a migration; a
//! backup may run beside them (it reads one snapshot).

use super::Connection;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use fleet::store::copy::{self, CopyReport, OpenBackup, WhenNotEmpty};
use fleet::store::{redact_url, sqlite_file, Store, StoreError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Write a consistent copy of the whole store into one file (SQLite, mode 0600: it holds
    /// token hashes), restorable into SQLite or PostgreSQL
    Backup(BackupArgs),
    /// Copy a backup into a store: an empty one, unless --replace
    Restore(RestoreArgs),
    /// Copy the whole store into an empty database (postgres://...) migrated by this fleet, then
    /// check each table's row count
    MigrateTo(MigrateToArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The store: sqlite://PATH or postgres://USER@HOST/DB [default: the state directory's
    /// SQLite file]
    #[arg(long, env = "FLEET_DATABASE")]
    pub database: Option<String>,
    /// The file to write (replaced whole once the copy is complete)
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file `fleet db backup` wrote
    #[arg(long)]
    pub from: PathBuf,
    /// The store to restore into: sqlite://PATH or postgres://USER@HOST/DB [default: the state
    /// directory's SQLite file]
    #[arg(long, env = "FLEET_DATABASE")]
    pub database: Option<String>,
    /// Delete everything the store holds first (in the same transaction as the copy)
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct MigrateToArgs {
    /// The new store, e.g. postgres://USER:PASSWORD@HOST/DB: empty (fleet creates the tables)
    pub target: String,
    /// The store to copy from [default: the state directory's SQLite file]
    #[arg(long, env = "FLEET_DATABASE")]
    pub database: Option<String>,
}

pub async fn run(connection: &Connection, command: DbCommand) -> anyhow::Result<ExitCode> {
    match command {
        DbCommand::Backup(args) => backup(connection, args).await,
        DbCommand::Restore(args) => restore(connection, args).await,
        DbCommand::MigrateTo(args) => migrate_to(connection, args).await,
    }
}

async fn backup(connection: &Connection, args: BackupArgs) -> anyhow::Result<ExitCode> {
    let source = open_existing(connection, args.database.as_deref()).await?;
    let copied = copy::backup(&source, &args.to).await;
    source.close().await;
    let report = copied.with_context(|| {
        format!(
            "cannot back up {} to {}",
            source.location(),
            args.to.display()
        )
    })?;
    print_counts(&report);
    println!(
        "backup of {} written to {} ({} tables, {} rows, schema version {})",
        source.location(),
        args.to.display(),
        report.tables.len(),
        report.total_rows(),
        report.schema_version
    );
    Ok(ExitCode::SUCCESS)
}

async fn restore(connection: &Connection, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let backup = OpenBackup::open(&args.from)
        .await
        .with_context(|| format!("cannot read the backup {}", args.from.display()))?;
    let target_url = database_url(connection, args.database.as_deref());
    let target = match Store::open(&target_url).await {
        Ok(target) => target,
        Err(error) => {
            backup.close().await;
            return Err(error).context("the store to restore into");
        }
    };
    let when_not_empty = if args.replace {
        WhenNotEmpty::Replace
    } else {
        WhenNotEmpty::Refuse
    };
    let copied = copy::copy_store(&backup.store, &target, when_not_empty).await;
    let written_at = backup.written_at;
    backup.close().await;
    target.close().await;
    let report = match copied {
        Ok(report) => report,
        Err(error @ StoreError::NotEmpty { .. }) => {
            return Err(error).context(format!(
                "cannot restore {} (--replace would delete what the store holds first)",
                args.from.display()
            ))
        }
        Err(error) => {
            return Err(error).with_context(|| {
                format!(
                    "cannot restore {} into {}",
                    args.from.display(),
                    target.location()
                )
            })
        }
    };
    print_counts(&report);
    let migrated = if written_at < report.schema_version {
        format!(", migrated from schema version {written_at}")
    } else {
        String::new()
    };
    println!(
        "{} restored into {} ({} tables, {} rows, schema version {}{migrated})",
        args.from.display(),
        target.location(),
        report.tables.len(),
        report.total_rows(),
        report.schema_version
    );
    Ok(ExitCode::SUCCESS)
}

async fn migrate_to(connection: &Connection, args: MigrateToArgs) -> anyhow::Result<ExitCode> {
    let source_url = database_url(connection, args.database.as_deref());
    if source_url == args.target {
        bail!(
            "the target {} is the store itself",
            redact_url(&args.target)
        );
    }
    let source = open_existing(connection, args.database.as_deref()).await?;
    let target = match Store::open(&args.target).await {
        Ok(target) => target,
        Err(error) => {
            source.close().await;
            return Err(error).context("the target");
        }
    };
    let copied = copy::copy_store(&source, &target, WhenNotEmpty::Refuse).await;
    source.close().await;
    target.close().await;
    let report = copied.with_context(|| {
        format!(
            "cannot migrate {} to {}",
            source.location(),
            target.location()
        )
    })?;
    print_counts(&report);
    println!(
        "{} copied to {} ({} tables, {} rows, schema version {}); every table's row count matches",
        source.location(),
        target.location(),
        report.tables.len(),
        report.total_rows(),
        report.schema_version
    );
    Ok(ExitCode::SUCCESS)
}

/// The store's URL: --database, else the state directory's SQLite file.
fn database_url(connection: &Connection, database: Option<&str>) -> String {
    match database {
        Some(url) => url.to_string(),
        None => fleet::config::ControllerSettings {
            state_dir: connection.state_dir.clone(),
            ..fleet::config::ControllerSettings::default()
        }
        .database_url(),
    }
}

/// Opens the store to copy from; a SQLite file that is not there is an error (opening would
/// make an empty store).
async fn open_existing(connection: &Connection, database: Option<&str>) -> anyhow::Result<Store> {
    let url = database_url(connection, database);
    if let Some(path) = sqlite_file(&url) {
        if !path.is_file() {
            bail!(
                "there is no store at {} (give --database URL or --state-dir DIR)",
                path.display()
            );
        }
    }
    Ok(Store::open(&url).await?)
}

fn print_counts(report: &CopyReport) {
    let mut table = super::output::new_table(&["table", "rows copied", "rows found"]);
    for count in &report.tables {
        table.add_row(vec![
            count.table.clone(),
            count.copied.to_string(),
            count.found.to_string(),
        ]);
    }
    println!("{table}");
}
