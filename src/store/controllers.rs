//! The controllers sharing this store (`fleet controllers`): each keeps one row, written when it
//! starts and rewritten by its heartbeat, so any controller can say which others exist, what
//! they serve, and which have gone silent. Rows stay after a controller stops (its last
//! heartbeat says when); a controller keeps its id in its state directory, so restarts reuse it.

use super::codec::get;
use super::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often a controller rewrites its row.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// A controller whose last heartbeat is older than this many intervals is shown as silent.
pub const SILENT_AFTER_INTERVALS: i64 = 3;

/// One controller as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    pub id: String,
    pub hostname: String,
    /// The operator API (`https://...`).
    pub api_url: String,
    /// The boot listener (`http://...`): iPXE scripts, images, the machine API.
    pub boot_url: String,
    /// What its DHCP serves: `INTERFACE ADDRESS` per interface (empty: no DHCP).
    pub networks: Vec<String>,
    pub version: String,
    /// Unix ms, by the controller's own clock, like `heartbeat_at`.
    pub started_at: i64,
    pub heartbeat_at: i64,
}

impl Store {
    /// Writes the controller's row (creating it on the first heartbeat).
    pub async fn record_controller(&self, record: &ControllerRecord) -> Result<(), StoreError> {
        let networks = serde_json::to_string(&record.networks)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        sqlx::query(
            "INSERT INTO controllers \
             (id, hostname, api_url, boot_url, networks, version, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, \
             api_url = excluded.api_url, boot_url = excluded.boot_url, \
             networks = excluded.networks, version = excluded.version, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&record.id)
        .bind(&record.hostname)
        .bind(&record.api_url)
        .bind(&record.boot_url)
        .bind(networks)
        .bind(&record.version)
        .bind(record.started_at)
        .bind(record.heartbeat_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every controller that ever wrote a heartbeat, by id.
    pub async fn controllers(&self) -> Result<Vec<ControllerRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, hostname, api_url, boot_url, networks, version, started_at, heartbeat_at \
             FROM controllers ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let networks: String = get(row, "networks")?;
                Ok(ControllerRecord {
                    id: get(row, "id")?,
                    hostname: get(row, "hostname")?,
                    api_url: get(row, "api_url")?,
                    boot_url: get(row, "boot_url")?,
                    networks: serde_json::from_str(&networks).map_err(|error| {
                        StoreError::Corrupt(format!("controller networks `{networks}`: {error}"))
                    })?,
                    version: get(row, "version")?,
                    started_at: get(row, "started_at")?,
                    heartbeat_at: get(row, "heartbeat_at")?,
                })
            })
            .collect()
    }
}
