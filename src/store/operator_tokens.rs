//! Operator tokens: one row per named token in `operator_tokens`, holding the SHA-256 of its
//! secret (never the secret: `services::token` hashes), its role, and its life (created, last
//! used, expiry, revocation). A revoked token keeps its row and its name, so every actor name in
//! the history names one token's whole life; a name is never reused.
//!
//! Every change (create, rotate, revoke) commits with the `token` event that records it.

use super::codec::{get, get_parsed};
use super::events::insert_event;
use super::{NewEvent, Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorRole {
    /// Everything, managing tokens included.
    #[serde(rename = "admin")]
    Admin,
    /// Reads only (GET).
    #[serde(rename = "read-only")]
    ReadOnly,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Admin => "admin",
            OperatorRole::ReadOnly => "read-only",
        }
    }
}

impl std::fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OperatorRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "admin" => Ok(OperatorRole::Admin),
            "read-only" => Ok(OperatorRole::ReadOnly),
            other => Err(format!("unknown role `{other}`: admin or read-only")),
        }
    }
}

/// One token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorToken {
    pub name: String,
    pub role: OperatorRole,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    /// Unix ms, like the times below.
    pub created_at: i64,
    /// Kept to the minute (`Store::note_operator_token_use`).
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl OperatorToken {
    /// Neither revoked nor expired at `now`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| expiry > now)
    }
}

/// A token to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOperatorToken<'a> {
    pub name: &'a str,
    pub role: OperatorRole,
    pub secret_hash: &'a str,
    pub expires_at: Option<i64>,
}

/// How often the last use is written at most: a token calling the API in a loop costs one write
/// a minute, not one per request.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// A valid admin token other than `$1` at `$2` (ms).
const ANOTHER_VALID_ADMIN: &str = "SELECT COUNT(*) AS n FROM operator_tokens \
     WHERE role = 'admin' AND name <> $1 AND revoked_at IS NULL \
     AND (expires_at IS NULL OR expires_at > $2)";

impl Store {
    /// Every token, revoked ones included, by name.
    pub async fn operator_tokens(&self) -> Result<Vec<OperatorToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, role, secret_hash, created_at, last_used_at, expires_at, revoked_at \
             FROM operator_tokens ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// The token whose secret hashes to `secret_hash`, if any: one indexed read (the column is
    /// unique), so checking a request does not read every token. Looking up by the hash leaks
    /// nothing useful: knowing part of a stored SHA-256 gives no secret that hashes to it.
    pub async fn operator_token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<OperatorToken>, StoreError> {
        let row = sqlx::query(
            "SELECT name, role, secret_hash, created_at, last_used_at, expires_at, revoked_at \
             FROM operator_tokens WHERE secret_hash = $1",
        )
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Creates a token and records it (actor `actor`). A name already taken, even by a revoked
    /// token, is [`StoreError::DuplicateToken`].
    pub async fn create_operator_token(
        &self,
        token: &NewOperatorToken<'_>,
        actor: &str,
        now: i64,
    ) -> Result<OperatorToken, StoreError> {
        let mut transaction = self.begin_write().await?;
        if !insert_token(&mut transaction, token, now).await? {
            return Err(StoreError::DuplicateToken(token.name.to_string()));
        }
        let expiry = token
            .expires_at
            .map(|at| format!(", expires {}", crate::model::rfc3339(at)))
            .unwrap_or_default();
        let reason = format!("`{}` ({}{expiry})", token.name, token.role);
        record(&mut transaction, token.name, "created", reason, actor, now).await?;
        let created = read_token(&mut transaction, token.name).await?;
        transaction.commit().await?;
        created.ok_or_else(|| StoreError::UnknownToken(token.name.to_string()))
    }

    /// Creates an admin token named `name` if no valid admin token exists at `now`: `None` when
    /// one does, or when another controller created `name` meanwhile. For the controller's
    /// start; the check and the insert are one statement, so racing controllers make one.
    pub async fn create_first_admin_token(
        &self,
        name: &str,
        secret_hash: &str,
        now: i64,
    ) -> Result<Option<OperatorToken>, StoreError> {
        let mut transaction = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO operator_tokens (name, role, secret_hash, created_at) \
             SELECT $1, 'admin', $2, $3 WHERE NOT EXISTS (SELECT 1 FROM operator_tokens \
             WHERE role = 'admin' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3)) \
             ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(secret_hash)
        .bind(now)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        let reason = format!("`{name}` (admin): no valid admin token at the controller's start");
        record(&mut transaction, name, "created", reason, "controller", now).await?;
        let created = read_token(&mut transaction, name).await?;
        transaction.commit().await?;
        Ok(created)
    }

    /// Moves the plain operator token an older fleet kept in `settings` under `setting_key`
    /// into the table as an admin token named `name` (`secret_hash` is its hash), and deletes
    /// the setting, in one transaction. `false` when the setting is gone (another controller
    /// moved it) or `name` is taken.
    pub async fn move_plain_operator_token(
        &self,
        setting_key: &str,
        name: &str,
        secret_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(setting_key)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        let token = NewOperatorToken {
            name,
            role: OperatorRole::Admin,
            secret_hash,
            expires_at: None,
        };
        if deleted == 0 || !insert_token(&mut transaction, &token, now).await? {
            return Ok(false);
        }
        let reason =
            format!("`{name}` (admin): the plain token of an older fleet, now kept as a hash");
        record(&mut transaction, name, "created", reason, "controller", now).await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// Gives the token `name` a new secret (`secret_hash`); role and expiry stay. A revoked or
    /// expired token is not rotated.
    pub async fn rotate_operator_token(
        &self,
        name: &str,
        secret_hash: &str,
        actor: &str,
        now: i64,
    ) -> Result<OperatorToken, StoreError> {
        let mut transaction = self.begin_write().await?;
        let token = usable_token(&mut transaction, name, now).await?;
        sqlx::query("UPDATE operator_tokens SET secret_hash = $2 WHERE name = $1")
            .bind(name)
            .bind(secret_hash)
            .execute(&mut *transaction)
            .await?;
        let reason = format!("`{name}`: its former secret no longer works");
        record(&mut transaction, name, "rotated", reason, actor, now).await?;
        transaction.commit().await?;
        Ok(OperatorToken {
            secret_hash: secret_hash.to_string(),
            ..token
        })
    }

    /// Revokes the token `name` (its row stays). The last valid admin token is not revoked
    /// ([`StoreError::LastAdminToken`]): nobody could manage tokens after it.
    pub async fn revoke_operator_token(
        &self,
        name: &str,
        actor: &str,
        now: i64,
    ) -> Result<OperatorToken, StoreError> {
        let mut transaction = self.begin_write().await?;
        // Two admins revoking the last two admin tokens at once on PostgreSQL: both would see
        // the other's token still valid. Touching every admin row first makes such
        // transactions wait for each other (SQLite's BEGIN IMMEDIATE already serialises them).
        sqlx::query("UPDATE operator_tokens SET role = role WHERE role = 'admin'")
            .execute(&mut *transaction)
            .await?;
        let token = read_token(&mut transaction, name)
            .await?
            .ok_or_else(|| StoreError::UnknownToken(name.to_string()))?;
        if token.revoked_at.is_some() {
            return Err(StoreError::TokenRevoked(name.to_string()));
        }
        if token.role == OperatorRole::Admin && token.is_valid_at(now) {
            let others: i64 = get(
                &sqlx::query(ANOTHER_VALID_ADMIN)
                    .bind(name)
                    .bind(now)
                    .fetch_one(&mut *transaction)
                    .await?,
                "n",
            )?;
            if others == 0 {
                return Err(StoreError::LastAdminToken(name.to_string()));
            }
        }
        sqlx::query("UPDATE operator_tokens SET revoked_at = $2 WHERE name = $1")
            .bind(name)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        let reason = format!("`{name}`: it no longer works");
        record(&mut transaction, name, "revoked", reason, actor, now).await?;
        transaction.commit().await?;
        Ok(OperatorToken {
            revoked_at: Some(now),
            ..token
        })
    }

    /// Notes that the token `name` was used at `now`, unless that was already noted within the
    /// last minute (`last_used_at` is what the caller read).
    pub async fn note_operator_token_use(
        &self,
        name: &str,
        last_used_at: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        if last_used_at.is_some_and(|last| now - last < LAST_USED_RESOLUTION_MS) {
            return Ok(());
        }
        sqlx::query(
            "UPDATE operator_tokens SET last_used_at = $2 \
             WHERE name = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Inserts a token; `false` when the name (or, astronomically unlikely, the hash) is taken.
async fn insert_token(
    connection: &mut AnyConnection,
    token: &NewOperatorToken<'_>,
    now: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO operator_tokens (name, role, secret_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(token.name)
    .bind(token.role.as_str())
    .bind(token.secret_hash)
    .bind(now)
    .bind(token.expires_at)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

async fn read_token(
    connection: &mut AnyConnection,
    name: &str,
) -> Result<Option<OperatorToken>, StoreError> {
    let row = sqlx::query(
        "SELECT name, role, secret_hash, created_at, last_used_at, expires_at, revoked_at \
         FROM operator_tokens WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&mut *connection)
    .await?;
    row.as_ref().map(token_from_row).transpose()
}

/// The token `name`, if it is neither revoked nor expired at `now`.
async fn usable_token(
    connection: &mut AnyConnection,
    name: &str,
    now: i64,
) -> Result<OperatorToken, StoreError> {
    let token = read_token(connection, name)
        .await?
        .ok_or_else(|| StoreError::UnknownToken(name.to_string()))?;
    if token.revoked_at.is_some() {
        return Err(StoreError::TokenRevoked(name.to_string()));
    }
    if !token.is_valid_at(now) {
        return Err(StoreError::TokenExpired(name.to_string()));
    }
    Ok(token)
}

/// The `token` event of a change to the token `name`.
async fn record(
    connection: &mut AnyConnection,
    name: &str,
    action: &str,
    reason: String,
    actor: &str,
    now: i64,
) -> Result<(), StoreError> {
    let event = NewEvent {
        machine: None,
        kind: "token".to_string(),
        actor: actor.to_string(),
        action: Some(action.to_string()),
        from_status: None,
        to_status: None,
        reason: Some(reason),
        detail: serde_json::json!({ "token": name }),
    };
    insert_event(connection, &event, now).await?;
    Ok(())
}

fn token_from_row(row: &AnyRow) -> Result<OperatorToken, StoreError> {
    Ok(OperatorToken {
        name: get(row, "name")?,
        role: get_parsed(row, "role")?,
        secret_hash: get(row, "secret_hash")?,
        created_at: get(row, "created_at")?,
        last_used_at: get(row, "last_used_at")?,
        expires_at: get(row, "expires_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_as_they_are_written() {
        for role in [OperatorRole::Admin, OperatorRole::ReadOnly] {
            assert_eq!(role.as_str().parse::<OperatorRole>(), Ok(role));
        }
        assert!("root".parse::<OperatorRole>().is_err());
    }

    #[test]
    fn a_token_past_its_expiry_or_revoked_is_not_valid() {
        let token = OperatorToken {
            name: "ci".into(),
            role: OperatorRole::ReadOnly,
            secret_hash: String::new(),
            created_at: 0,
            last_used_at: None,
            expires_at: Some(1_000),
            revoked_at: None,
        };
        assert!(token.is_valid_at(999));
        assert!(!token.is_valid_at(1_000));
        let revoked = OperatorToken {
            expires_at: None,
            revoked_at: Some(5),
            ..token
        };
        assert!(!revoked.is_valid_at(0));
    }
}
