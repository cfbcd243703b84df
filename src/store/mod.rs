//! The store: machines, their hardware, script results, DHCP leases, plans, locks and the
//! append-only event history, on SQLite (default, a file) or PostgreSQL (shared by several
//! controllers), through sqlx's `Any` driver with one SQL text for both.
//!
//! Invariants:
//! - Every change of a machine's life-cycle and the events that record it commit in one
//!   transaction; a killed controller loses no committed event and leaves no half change.
//! - Updates are guarded by the machine's generation number: a writer that read generation N
//!   updates only if the row is still at N, else it gets [`StoreError::Conflict`].
//! - Columns are TEXT and BIGINT only (what `Any` carries on both backends); times are Unix
//!   milliseconds; JSON is stored as TEXT.
//! - Events are never updated; deleting a machine keeps its history. Only retention deletes
//!   events ([`Store::prune_events`]: the oldest first, never those of a machine's current run).
//! - Operator tokens are kept as the hash of their secret, never the secret; a revoked token
//!   keeps its row and its name (`operator_tokens.rs`).
//! - What belongs to one machine (interfaces, disks, script results, its `machine_state`: run,
//!   token and secret hashes, erase mode, held addresses, the clone recorded onto it, its stored
//!   deployment configuration, the secrets kept for it) is deleted with it, in the same
//!   transaction (ON DELETE CASCADE).
//! - A secret kept for a machine (`secrets.rs`) is stored only encrypted with the controllers'
//!   key and bound to the machine's id and its purpose; a wrong key is named, never a secret.
//! - Two machines never hold one address on a subnet (UNIQUE (subnet, address)); a held
//!   address never moves to another machine (`addresses.rs`).
//! - A copy of the store (`copy.rs`: `fleet db backup`, `restore`, `migrate-to`) carries every
//!   table the database lists, from one snapshot, in one transaction; it never keeps its own
//!   list of tables.

use crate::model::{Action, InvalidTransition, MacAddr, Outcome};
use serde::{Deserialize, Serialize};

mod addresses;
mod apply;
mod changes;
mod clones;
mod codec;
mod controllers;
pub mod copy;
mod db;
mod deployments;
mod events;
mod feed;
mod leadership;
mod leases;
mod locks;
mod machine_state;
mod machines;
mod monitor;
mod operator_tokens;
mod plans;
mod power_outbox;
pub mod private;
mod scripts;
pub mod secret_box;
mod secrets;
mod settings;

pub use crate::model::records::{
    Disk, Event, EventFilter, Hardware, Interface, Lease, MachineRecord, MachineSummary, NewEvent,
    NewMachine, PendingPower, PowerIntent, ScriptResult,
};
pub use addresses::{CommittedAddress, HeldAddressMacs, StoredAddress};
pub use apply::{ApplyStepRow, PlanInFlight, APPLYING, QUEUED};
pub use changes::{Change, ChangeWatch};
pub use clones::{cloned_parts, CloneOrder, ClonePair, CloneVerdict};
pub use controllers::{ControllerRecord, HEARTBEAT_INTERVAL, SILENT_AFTER_INTERVALS};
pub use db::{now_ms, redact_url, sqlite_file, Store};
pub use deployments::{DeploymentDigests, StoredDeployment};
pub use feed::{EventFeed, FeedStart, EVENTS_CHANNEL, FALLBACK_READ};
pub use leadership::{LeaderTerm, LEADER_TERM};
pub use leases::{ChangedLeases, RefusedLease};
pub use machine_state::{
    new_secret, secret_hash, Callback, MachineRun, MachineState, Registration, ReportedProgress,
    SecretUse, BOOT_OVERFLOW, BOOT_SECRETS_PER_BOOT,
};
pub use monitor::InProgress;
pub use operator_tokens::{NewOperatorToken, OperatorRole, OperatorToken};
pub use power_outbox::PendingPowerRow;
pub use secret_box::{SecretKey, SecretKeyError, SECRET_KEY_ENV, SECRET_KEY_FILE};

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot open the database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot create the directory {path} for the SQLite database: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the SQLite database {path} private to this user (mode 0600): {source}")]
    Private {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot turn on WAL journaling for the SQLite database {url} (journal mode is `{mode}`); put the file on a local disk that supports shared memory")]
    NoWal { url: String, mode: String },
    #[error(
        "database migration failed: {0} (a database written by a newer fleet needs that fleet)"
    )]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database's schema is at version {found}, newer than this fleet {program} knows (up to {known}): a newer fleet migrated it (another controller on this database?); run that version here too — this one changes nothing")]
    NewerSchema {
        found: i64,
        known: i64,
        program: &'static str,
    },
    #[error("no machine named `{0}`")]
    UnknownMachine(String),
    #[error("a machine named `{0}` already exists")]
    DuplicateName(String),
    #[error("cannot create machine `{name}`: {source}")]
    InvalidInitialStatus {
        name: String,
        source: InvalidTransition,
    },
    #[error("MAC {mac} already belongs to machine `{owner}`")]
    DuplicateMac { mac: MacAddr, owner: String },
    #[error("machine `{0}` was changed by someone else meanwhile; read it again and retry")]
    Conflict(String),
    #[error("IP {ip} is already leased to MAC {holder}; delete that lease first")]
    DuplicateIp {
        ip: std::net::Ipv4Addr,
        holder: MacAddr,
    },
    #[error("address {ip} on subnet {subnet} is held by machine {holder} (interface {interface})")]
    AddressTaken {
        ip: std::net::IpAddr,
        subnet: String,
        holder: String,
        interface: String,
    },
    #[error("lock `{0}` kept changing hands while we tried to take it; retry")]
    LockChurn(String),
    #[error("no plan with id `{0}`")]
    UnknownPlan(String),
    #[error("an operator token named `{0}` exists already (names of revoked tokens stay taken): choose another name")]
    DuplicateToken(String),
    #[error("no operator token named `{0}` (`fleet token list` shows them)")]
    UnknownToken(String),
    #[error("operator token `{0}` is revoked: it stays so; create a token with another name")]
    TokenRevoked(String),
    #[error("operator token `{0}` has expired: create a token with another name")]
    TokenExpired(String),
    #[error("operator token `{0}` is the last valid admin token: create another admin token first (`fleet token create NAME --role admin`), then revoke this one")]
    LastAdminToken(String),
    #[error("{path} is not a fleet store or backup: {detail}")]
    NotAStore {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("the backup file {path}: {error}")]
    BackupFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("the store {location} is not empty ({tables}); nothing was copied")]
    NotEmpty { location: String, tables: String },
    #[error(
        "the stores {from} and {to} do not have the same tables: {difference}; nothing was copied"
    )]
    SchemaDiffers {
        from: String,
        to: String,
        difference: String,
    },
    #[error("copying table {table} failed after {rows} rows: {error}; nothing was copied")]
    CopyTable {
        table: String,
        rows: u64,
        error: sqlx::Error,
    },
    #[error(
        "after the copy, table {table} of {location} holds {found} rows where {copied} were copied"
    )]
    CountMismatch {
        location: String,
        table: String,
        copied: u64,
        found: u64,
    },
    #[error(
        "column {table}.{column} is `{declared}`: the copy carries TEXT and BIGINT columns only"
    )]
    UnsupportedColumn {
        table: String,
        column: String,
        declared: String,
    },
    #[error("the foreign keys of tables {0} form a cycle: no order fills them")]
    ForeignKeyCycle(String),
    #[error("machine `{machine}`: this controller has no secret key, so it cannot keep or read the machine's {purpose} in the store (give every controller the same key: {env} or --secret-key-file)", env = secret_box::SECRET_KEY_ENV)]
    NoSecretKey { machine: String, purpose: String },
    #[error("machine `{machine}`: no {purpose} is kept in the store for it")]
    NoSecret { machine: String, purpose: String },
    #[error("machine `{machine}`: its {purpose} was written with the secret key {written_with}, and this controller's key is {ours}: the keys do not match (give every controller on this database the same key: {env} or --secret-key-file)", env = secret_box::SECRET_KEY_ENV)]
    SecretKeyMismatch {
        machine: String,
        purpose: String,
        written_with: String,
        ours: String,
    },
    #[error("machine `{machine}`: its {purpose} in the store does not decrypt with this controller's key {key}, which wrote it: the stored row was altered or copied from another machine")]
    SecretUnreadable {
        machine: String,
        purpose: String,
        key: String,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("this controller no longer leads the database ({0}); the write was refused, and the leader now in office carries on")]
    Fenced(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

/// The SQLSTATE migration 0016's fence raises for a write of a term that is over.
const FENCED_SQLSTATE: &str = "FL001";

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(database)
                if database.code().as_deref() == Some(FENCED_SQLSTATE) =>
            {
                StoreError::Fenced(database.message().to_string())
            }
            _ => StoreError::Database(error),
        }
    }
}

/// What an accepted action changes, as the controller commits it.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit<'a> {
    pub actor: &'a str,
    /// The action taken, if the change is one (a settlement is not).
    pub action: Option<Action>,
    /// The comment or the failure reason, kept as the status reason when the status changes.
    pub reason: Option<&'a str>,
    pub outcome: &'a Outcome,
    /// The image to record (deploy).
    pub image: Option<&'a str>,
    /// A power command follows this change (the outcome's, or the power-off after a failure):
    /// the change's generation becomes the machine's `power_decided`.
    pub decides_power: bool,
    /// The disk erase a release asked for, stored in the same transaction as the status: a
    /// crash between two writes would have left a secure or full erase to run as a quick one.
    pub erase_mode: Option<crate::model::EraseMode>,
}

/// A named lock (one apply at a time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub name: String,
    pub holder: String,
    /// Unix ms.
    pub since: i64,
    /// Unix ms; a holder that stops refreshing is presumed dead.
    pub heartbeat: i64,
}

/// A saved plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPlan {
    pub id: String,
    pub created_at: i64,
    pub status: String,
    pub body: serde_json::Value,
}
