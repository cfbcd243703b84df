//! Named locks held across controllers (one apply at a time). A holder refreshes its heartbeat;
//! one that stops for longer than the caller's `stale_after_ms` is presumed dead and may be
//! taken over.

use super::codec::get;
use super::{LockHolder, Store, StoreError};
use crate::store::now_ms;
use sqlx::AnyConnection;

impl Store {
    /// Takes the lock `name` for `holder`: `Ok(Ok(lock))` when taken (or already held by
    /// `holder`, whose heartbeat is then refreshed), `Ok(Err(current))` when someone else holds it.
    pub async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        stale_after_ms: i64,
    ) -> Result<Result<LockHolder, LockHolder>, StoreError> {
        // On PostgreSQL the row can vanish between two statements (its holder unlocked): then
        // start again; the next round finds the lock free.
        for _ in 0..3 {
            if let Some(outcome) = self.try_lock_once(name, holder, stale_after_ms).await? {
                return Ok(outcome);
            }
        }
        Err(StoreError::LockChurn(name.to_string()))
    }

    /// One attempt; `None` if the lock vanished under it.
    async fn try_lock_once(
        &self,
        name: &str,
        holder: &str,
        stale_after_ms: i64,
    ) -> Result<Option<Result<LockHolder, LockHolder>>, StoreError> {
        let mut transaction = self.begin_write().await?;
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO locks (name, holder, since, heartbeat) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        if inserted.rows_affected() == 1 {
            transaction.commit().await?;
            let taken = LockHolder {
                name: name.into(),
                holder: holder.into(),
                since: now,
                heartbeat: now,
            };
            return Ok(Some(Ok(taken)));
        }
        let Some(current) = read_lock(&mut transaction, name).await? else {
            return Ok(None);
        };
        let outcome = if current.holder == holder {
            set_lock(&mut transaction, &current, holder, current.since, now).await?
        } else if current.heartbeat < now.saturating_sub(stale_after_ms) {
            tracing::warn!(lock = name, dead = %current.holder, by = holder, "taking over a stale lock");
            set_lock(&mut transaction, &current, holder, now, now).await?
        } else {
            Some(Err(current))
        };
        transaction.commit().await?;
        Ok(outcome)
    }

    /// Refreshes the heartbeat; `false` if `holder` no longer holds the lock (it was taken over).
    pub async fn refresh_lock(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE locks SET heartbeat = $1 WHERE name = $2 AND holder = $3")
            .bind(now_ms())
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Releases the lock; `false` if `holder` did not hold it.
    pub async fn unlock(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM locks WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }
}

async fn read_lock(
    connection: &mut AnyConnection,
    name: &str,
) -> Result<Option<LockHolder>, StoreError> {
    let row = sqlx::query("SELECT holder, since, heartbeat FROM locks WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *connection)
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(LockHolder {
        name: name.to_string(),
        holder: get(&row, "holder")?,
        since: get(&row, "since")?,
        heartbeat: get(&row, "heartbeat")?,
    }))
}

/// Rewrites the lock only if it is still as read, so that of two controllers taking over the
/// same stale lock on PostgreSQL (READ COMMITTED) exactly one wins; the other gets the winner
/// (`None` if the lock vanished meanwhile).
async fn set_lock(
    connection: &mut AnyConnection,
    current: &LockHolder,
    holder: &str,
    since: i64,
    now: i64,
) -> Result<Option<Result<LockHolder, LockHolder>>, StoreError> {
    let result = sqlx::query(
        "UPDATE locks SET holder = $1, since = $2, heartbeat = $3 \
         WHERE name = $4 AND holder = $5 AND heartbeat = $6",
    )
    .bind(holder)
    .bind(since)
    .bind(now)
    .bind(current.name.as_str())
    .bind(current.holder.as_str())
    .bind(current.heartbeat)
    .execute(&mut *connection)
    .await?;
    if result.rows_affected() == 1 {
        let taken = LockHolder {
            name: current.name.clone(),
            holder: holder.into(),
            since,
            heartbeat: now,
        };
        return Ok(Some(Ok(taken)));
    }
    Ok(read_lock(connection, &current.name).await?.map(Err))
}
