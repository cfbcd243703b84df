//! Reads for the controller's watch over machines at work: which are in progress and since
//! when they were heard from, and which machine owns a BMC address (enlistment matching).

use super::codec::{get, get_status};
use super::machines::load_machine_by_id;
use super::{MachineRecord, Store, StoreError};
use crate::model::Status;

/// A machine in an in-progress status, as the timeout and heartbeat watch needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProgress {
    pub name: String,
    pub status: Status,
    /// Unix ms.
    pub status_since: i64,
    /// Unix ms.
    pub last_heard: Option<i64>,
    /// Unix ms.
    pub boot_started: Option<i64>,
    /// The generation read: the watch acts on the machine only while it is still at it.
    pub generation: i64,
    /// Unix ms: when a deploying run's installer signalled done.
    pub install_done: Option<i64>,
    /// The last progress a deploying run reported.
    pub progress: Option<crate::model::DeployProgress>,
    /// A decided power command is still in the outbox (`machines.power_pending`).
    pub power_pending: bool,
}

impl InProgress {
    /// What the clocks of `model::watch` need.
    pub fn watched(&self) -> crate::model::Watched {
        crate::model::Watched {
            status: self.status,
            status_since: self.status_since,
            boot_started: self.boot_started,
            last_heard: self.last_heard,
            install_done: self.install_done,
            power_pending: self.power_pending,
        }
    }
}

impl Store {
    /// Every machine whose status is in progress.
    pub async fn in_progress_machines(&self) -> Result<Vec<InProgress>, StoreError> {
        let statuses: Vec<&str> = Status::ALL
            .iter()
            .filter(|status| status.is_in_progress())
            .map(|status| status.as_str())
            .collect();
        let placeholders: Vec<String> = (1..=statuses.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT m.name, m.status, m.status_since, m.last_heard, m.boot_started, m.generation, \
             CAST(CASE WHEN m.power_pending IS NULL THEN 0 ELSE 1 END AS BIGINT) AS power_pending, \
             s.install_done_at, s.progress FROM machines m \
             LEFT JOIN machine_state s ON s.machine_id = m.id \
             WHERE m.status IN ({}) ORDER BY m.name",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for status in &statuses {
            query = query.bind(*status);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let status_since: i64 = get(row, "status_since")?;
                Ok(InProgress {
                    name: get(row, "name")?,
                    status: get_status(row, "status")?,
                    status_since,
                    last_heard: get(row, "last_heard")?,
                    boot_started: get(row, "boot_started")?,
                    generation: get(row, "generation")?,
                    install_done: get(row, "install_done_at")?,
                    power_pending: get::<i64>(row, "power_pending")? != 0,
                    progress: get::<Option<String>>(row, "progress")?
                        .and_then(|text| {
                            serde_json::from_str::<super::ReportedProgress>(&text).ok()
                        })
                        // An earlier deployment's progress says nothing of this one.
                        .filter(|reported| reported.at >= status_since)
                        .map(|reported| reported.progress),
                })
            })
            .collect()
    }

    /// The machines whose BMC has this address.
    pub async fn machines_by_bmc_address(
        &self,
        address: &str,
    ) -> Result<Vec<MachineRecord>, StoreError> {
        let mut transaction = self.begin_read().await?;
        let rows = sqlx::query("SELECT id FROM machines WHERE bmc_address = $1 ORDER BY id")
            .bind(address)
            .fetch_all(&mut *transaction)
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            records.push(load_machine_by_id(&mut transaction, get(row, "id")?).await?);
        }
        transaction.commit().await?;
        Ok(records)
    }
}
