//! The power outbox (`machines.power_pending`, migration 0019): the power command a life-cycle
//! change decided is stored in the change's own transaction (`machines.rs`,
//! `write_lifecycle_row`), so a controller killed between the decision and the command leaves
//! it here instead of losing it. Its runner claims it (`power_pending_at` = now), keeps the
//! claim fresh while the driver works, and clears it when done; the leader takes the ones no one
//! has touched for a while. Every statement names the decision (`power_decided`), so a newer
//! decision is never cleared or claimed by an older one's runner.

use super::codec::get;
use super::{now_ms, PendingPower, Store, StoreError};

/// A stored power decision waiting to be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPowerRow {
    pub machine_id: i64,
    pub name: String,
    pub power_type: String,
    /// The generation of the decision (`power_decided`).
    pub decided: i64,
    pub pending: PendingPower,
}

impl Store {
    /// The decisions no one has worked on for `stale_ms`, oldest first, at most `limit`.
    pub async fn stale_pending_power(
        &self,
        stale_ms: i64,
        limit: i64,
    ) -> Result<Vec<PendingPowerRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, power_type, power_decided, power_pending FROM machines \
             WHERE power_pending IS NOT NULL AND power_pending_at < $1 \
             ORDER BY power_pending_at LIMIT $2",
        )
        .bind(now_ms() - stale_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let text: String = get(row, "power_pending")?;
                Ok(PendingPowerRow {
                    machine_id: get(row, "id")?,
                    name: get(row, "name")?,
                    power_type: get(row, "power_type")?,
                    decided: get(row, "power_decided")?,
                    pending: serde_json::from_str(&text).map_err(|error| {
                        StoreError::Corrupt(format!("power_pending `{text}`: {error}"))
                    })?,
                })
            })
            .collect()
    }

    /// Claims a stale decision for carrying it out: `true` if it is still pending, still the
    /// machine's latest power decision, and still stale (so of two claimants one wins).
    pub async fn claim_pending_power(
        &self,
        machine_id: i64,
        decided: i64,
        stale_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let result = sqlx::query(
            "UPDATE machines SET power_pending_at = $1 \
             WHERE id = $2 AND power_decided = $3 AND power_pending IS NOT NULL \
               AND power_pending_at < $4",
        )
        .bind(now)
        .bind(machine_id)
        .bind(decided)
        .bind(now - stale_ms)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Keeps the decision's claim fresh while its command runs.
    pub async fn touch_pending_power(
        &self,
        machine_id: i64,
        decided: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE machines SET power_pending_at = $1 \
             WHERE id = $2 AND power_decided = $3 AND power_pending IS NOT NULL",
        )
        .bind(now_ms())
        .bind(machine_id)
        .bind(decided)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The decision's command is done (ran, failed, dropped or not ours to run).
    pub async fn clear_pending_power(
        &self,
        machine_id: i64,
        decided: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE machines SET power_pending = NULL, power_pending_at = NULL \
             WHERE id = $1 AND power_decided = $2",
        )
        .bind(machine_id)
        .bind(decided)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The machine's pending power decision, if any (for tests and `fleet machine show`).
    pub async fn pending_power(&self, name: &str) -> Result<Option<PendingPower>, StoreError> {
        let row = sqlx::query("SELECT power_pending FROM machines WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some(text) = row
            .map(|row| get::<Option<String>>(&row, "power_pending"))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| StoreError::Corrupt(format!("power_pending `{text}`: {error}")))
    }
}
