//! Settings: small key/value pairs the controllers share (the install secret, ...). Nothing that
//! belongs to one machine: that is `machine_state` (see `machine_state.rs`), deleted with it.

use super::codec::get;
use super::{Store, StoreError};

impl Store {
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| get(&row, "value")).transpose()
    }

    /// The value in force for `key`, inserting `value` if there is none. The first writer wins,
    /// also between controllers racing on PostgreSQL: the losing INSERT does nothing and the
    /// SELECT returns the winner's value.
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        self.setting(key).await?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "setting `{key}` vanished right after it was written"
            ))
        })
    }

    /// Sets `key` to `value`, whatever it held.
    pub async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records `digest` as the fleet in force (the leader's, once it took it), and on
    /// PostgreSQL tells the other controllers at its commit (`fleet_reload`, the digest as
    /// payload), so that those following the leader's fleet load it at once.
    pub async fn announce_fleet(&self, digest: &str) -> Result<(), StoreError> {
        let mut transaction = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(FLEET_IN_FORCE)
        .bind(digest)
        .execute(&mut *transaction)
        .await?;
        if self.backend() == super::Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(super::Change::Fleet.channel())
                .bind(digest)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The digest of the fleet the leader last took into force ([`Store::announce_fleet`]).
    pub async fn announced_fleet(&self) -> Result<Option<String>, StoreError> {
        self.setting(FLEET_IN_FORCE).await
    }
}

/// The setting that holds the digest of the fleet in force.
pub const FLEET_IN_FORCE: &str = "fleet_in_force";
