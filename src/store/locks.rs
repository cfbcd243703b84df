//! Named locks held across controllers (one apply at a time). A holder refreshes its heartbeat;
//! one that stops for longer than the caller's `stale_after_ms` is presumed dead and may be
//! taken over. Every time here is the database's clock (`Store::database_now`), so controllers
//! whose clocks differ judge a heartbeat alike.

use super::codec::get;
use super::{LockHolder, Store, StoreError};
use sqlx::AnyConnection;

/// Who may take a lock another holder has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TakeOver {
    /// Only a holder whose heartbeat is stale.
    Stale,
    /// Also a holder that is not the current leader's (`leadership.holder`): its term ended, so
    /// it no longer acts (its writes are fenced) even if its heartbeat is recent.
    StaleOrNotLeading,
}

impl Store {
    /// Takes the lock `name` for `holder`: `Ok(Ok(lock))` when taken (or already held by
    /// `holder`, whose heartbeat is then refreshed), `Ok(Err(current))` when someone else holds it
    /// and has refreshed it within `stale_after_ms` by the database's clock.
    pub async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        stale_after_ms: i64,
    ) -> Result<Result<LockHolder, LockHolder>, StoreError> {
        self.take_lock(name, holder, stale_after_ms, TakeOver::Stale)
            .await
    }

    /// Takes the lock `name` for the leader's `holder` (`CONTROLLER_ID/INSTANCE`, the holder of
    /// the current term): like [`Store::try_lock`], and a lock whose holder is not the current
    /// term's is taken over at once — that holder led an earlier term, which is over (by the
    /// database's clock), so whatever it was doing has stopped or is refused by the fence.
    /// A lock the current leader holds is taken only when its heartbeat is stale.
    pub async fn try_lock_for_term(
        &self,
        name: &str,
        holder: &str,
        stale_after_ms: i64,
    ) -> Result<Result<LockHolder, LockHolder>, StoreError> {
        self.take_lock(name, holder, stale_after_ms, TakeOver::StaleOrNotLeading)
            .await
    }

    async fn take_lock(
        &self,
        name: &str,
        holder: &str,
        stale_after_ms: i64,
        take_over: TakeOver,
    ) -> Result<Result<LockHolder, LockHolder>, StoreError> {
        // On PostgreSQL the row can vanish between two statements (its holder unlocked): then
        // start again; the next round finds the lock free.
        for _ in 0..3 {
            if let Some(outcome) = self
                .take_lock_once(name, holder, stale_after_ms, take_over)
                .await?
            {
                return Ok(outcome);
            }
        }
        Err(StoreError::LockChurn(name.to_string()))
    }

    /// One attempt; `None` if the lock vanished under it.
    async fn take_lock_once(
        &self,
        name: &str,
        holder: &str,
        stale_after_ms: i64,
        take_over: TakeOver,
    ) -> Result<Option<Result<LockHolder, LockHolder>>, StoreError> {
        let now = self.database_now();
        let mut transaction = self.begin_write().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO locks (name, holder, since, heartbeat) \
             SELECT $1, $2, clock.now, clock.now FROM (SELECT {now} AS now) AS clock WHERE true \
             ON CONFLICT (name) DO NOTHING RETURNING holder, since, heartbeat"
        ))
        .bind(name)
        .bind(holder)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(row) = inserted {
            let taken = lock_of(name, &row)?;
            transaction.commit().await?;
            return Ok(Some(Ok(taken)));
        }
        let Some(current) = read_lock(&mut transaction, name).await? else {
            return Ok(None);
        };
        let outcome = if current.holder == holder {
            let refreshed = sqlx::query(&format!(
                "UPDATE locks SET heartbeat = {now} WHERE name = $1 AND holder = $2 \
                 RETURNING holder, since, heartbeat"
            ))
            .bind(name)
            .bind(holder)
            .fetch_optional(&mut *transaction)
            .await?;
            refreshed
                .map(|row| lock_of(name, &row).map(Ok))
                .transpose()?
        } else {
            self.take_over(
                &mut transaction,
                &current,
                holder,
                stale_after_ms,
                take_over,
            )
            .await?
        };
        transaction.commit().await?;
        Ok(outcome)
    }

    /// Rewrites the lock for `holder` only if it is still as read and may be taken over, so
    /// that of two controllers taking over the same lock on PostgreSQL (READ COMMITTED) exactly
    /// one wins; the other gets the winner (`None` if the lock vanished meanwhile).
    async fn take_over(
        &self,
        connection: &mut AnyConnection,
        current: &LockHolder,
        holder: &str,
        stale_after_ms: i64,
        take_over: TakeOver,
    ) -> Result<Option<Result<LockHolder, LockHolder>>, StoreError> {
        let now = self.database_now();
        let not_leading = match take_over {
            TakeOver::Stale => "",
            TakeOver::StaleOrNotLeading => {
                " OR locks.holder <> COALESCE((SELECT leadership.holder FROM leadership \
                   WHERE leadership.name = 'leader' AND leadership.expires_at > {now}), '')"
            }
        }
        .replace("{now}", now);
        let taken = sqlx::query(&format!(
            "UPDATE locks SET holder = $1, since = clock.now, heartbeat = clock.now \
             FROM (SELECT {now} AS now) AS clock \
             WHERE locks.name = $2 AND locks.holder = $3 AND locks.heartbeat = $4 \
               AND (locks.heartbeat < clock.now - $5{not_leading}) \
             RETURNING locks.holder AS holder, locks.since AS since, locks.heartbeat AS heartbeat"
        ))
        .bind(holder)
        .bind(current.name.as_str())
        .bind(current.holder.as_str())
        .bind(current.heartbeat)
        .bind(stale_after_ms)
        .fetch_optional(&mut *connection)
        .await?;
        if let Some(row) = taken {
            tracing::warn!(lock = %current.name, gone = %current.holder, by = holder, "taking over a lock whose holder is stale or no longer leads");
            return Ok(Some(Ok(lock_of(&current.name, &row)?)));
        }
        Ok(read_lock(connection, &current.name).await?.map(Err))
    }

    /// Refreshes the heartbeat; `false` if `holder` no longer holds the lock (it was taken over).
    pub async fn refresh_lock(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE locks SET heartbeat = {} WHERE name = $1 AND holder = $2",
            self.database_now()
        );
        let result = sqlx::query(&sql)
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

    /// Who holds the lock `name`, if anyone.
    pub async fn lock_holder(&self, name: &str) -> Result<Option<LockHolder>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        read_lock(&mut connection, name).await
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
    row.map(|row| lock_of(name, &row)).transpose()
}

fn lock_of(name: &str, row: &sqlx::any::AnyRow) -> Result<LockHolder, StoreError> {
    Ok(LockHolder {
        name: name.to_string(),
        holder: get(row, "holder")?,
        since: get(row, "since")?,
        heartbeat: get(row, "heartbeat")?,
    })
}
