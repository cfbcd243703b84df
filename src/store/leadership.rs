//! The leader's term (`leadership`, migration 0016): one row naming the controller that runs the
//! reconcile loop, the executor, the timeout watch, the power poll and event retention, until
//! when by the database's clock, and the term's generation. Claiming, renewing and resigning are
//! single statements, so two controllers claiming at once get one winner from the database
//! itself; on PostgreSQL a claim that meets a row share-locked by the old leader's writes waits
//! at most [`CLAIM_LOCK_WAIT`] and is tried again later.

use super::codec::get;
use super::{Backend, Store, StoreError};
use serde::Serialize;
use std::time::Duration;

/// How long a term lasts after its last renewal. A follower takes over at most this long after
/// the leader stopped renewing (plus its own claim interval).
pub const LEADER_TERM: Duration = Duration::from_secs(6);
/// How long a claim waits for the leadership row when an old term's writes hold it.
const CLAIM_LOCK_WAIT: &str = "1s";
/// The one row's key.
const ROW: &str = "leader";

/// One term of leadership as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderTerm {
    /// The controller id and its process instance (`ID/INSTANCE`): a restarted controller is a
    /// new holder, so its old process's writes are fenced too.
    pub holder: String,
    pub controller_id: String,
    /// Grows with every new term; the fence compares it.
    pub generation: i64,
    /// Unix ms by the database's clock.
    pub expires_at: i64,
}

impl LeaderTerm {
    /// What the leader's sessions carry as `fleet.fence`.
    pub fn fence(&self) -> String {
        format!("{} {}", self.holder, self.generation)
    }
}

impl Store {
    /// The database's clock in Unix ms, as SQL: every controller judges terms by the same clock.
    pub(super) fn database_now(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => "fleet_now_ms()",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// Takes or renews the leadership for `holder` (of controller `controller_id`) for
    /// `term`. It is granted when no term is current, when the current one is `holder`'s own
    /// (`held`: the generation it holds), or when it belongs to an earlier process of the same
    /// controller (restarted: that process is gone). A renewal keeps the generation; every
    /// other grant starts a new one. `None`: another controller leads.
    pub async fn claim_leadership(
        &self,
        holder: &str,
        controller_id: &str,
        held: Option<i64>,
        term: Duration,
    ) -> Result<Option<LeaderTerm>, StoreError> {
        let now = self.database_now();
        let sql = format!(
            "INSERT INTO leadership (name, holder, controller_id, generation, expires_at) \
             VALUES ($1, $2, $3, 1, {now} + $4) \
             ON CONFLICT (name) DO UPDATE SET \
             generation = CASE WHEN leadership.holder = excluded.holder \
                 AND leadership.generation = $5 AND leadership.expires_at > {now} \
                 THEN leadership.generation ELSE leadership.generation + 1 END, \
             holder = excluded.holder, controller_id = excluded.controller_id, \
             expires_at = excluded.expires_at \
             WHERE (leadership.holder = excluded.holder AND leadership.generation = $5) \
                OR leadership.controller_id = excluded.controller_id \
                OR leadership.expires_at <= {now} \
             RETURNING holder, controller_id, generation, expires_at"
        );
        let term_ms = i64::try_from(term.as_millis()).unwrap_or(i64::MAX);
        let mut transaction = self.begin_write().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query(&format!("SET LOCAL lock_timeout = '{CLAIM_LOCK_WAIT}'"))
                .execute(&mut *transaction)
                .await?;
        }
        let row = sqlx::query(&sql)
            .bind(ROW)
            .bind(holder)
            .bind(controller_id)
            .bind(term_ms)
            .bind(held.unwrap_or(-1))
            .fetch_optional(&mut *transaction)
            .await;
        let row = match row {
            Ok(row) => row,
            // The old term's writes still hold the row: not now.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
                return Ok(None)
            }
            Err(error) => return Err(error.into()),
        };
        transaction.commit().await?;
        row.map(|row| term_of(&row)).transpose()
    }

    /// The current term, if one is current by the database's clock.
    pub async fn leader(&self) -> Result<Option<LeaderTerm>, StoreError> {
        let sql = format!(
            "SELECT holder, controller_id, generation, expires_at FROM leadership \
             WHERE name = $1 AND expires_at > {}",
            self.database_now()
        );
        let row = sqlx::query(&sql)
            .bind(ROW)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| term_of(&row)).transpose()
    }

    /// Ends `holder`'s term at once (a controller stopping), so a follower need not wait for
    /// it to expire. Nothing happens if the term is no longer `holder`'s.
    pub async fn resign_leadership(&self, holder: &str, generation: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leadership SET expires_at = 0 \
             WHERE name = $1 AND holder = $2 AND generation = $3",
        )
        .bind(ROW)
        .bind(holder)
        .bind(generation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn term_of(row: &sqlx::any::AnyRow) -> Result<LeaderTerm, StoreError> {
    Ok(LeaderTerm {
        holder: get(row, "holder")?,
        controller_id: get(row, "controller_id")?,
        generation: get(row, "generation")?,
        expires_at: get(row, "expires_at")?,
    })
}
