//! Secrets kept for a machine (`secrets`, migration 0017): a BMC password its enlistment
//! reported, kept here so that every controller on the database can power the machine. Only
//! ever stored sealed with the store's key ([`super::secret_box`]), bound to the machine's id
//! and the purpose; the power parameters name it as `{"store": PURPOSE}`. Errors name the
//! machine, the purpose and the keys' ids, never a secret.

use super::codec::{get, json_text};
use super::machines::{insert_new_machine, load_machine_by_id, machine_id};
use super::secret_box::{associated_data, Sealed, SecretKey};
use super::{now_ms, MachineRecord, NewMachine, Store, StoreError};
use crate::config::SecretValue;
use sqlx::AnyConnection;

impl Store {
    fn key_for(&self, machine: &str, purpose: &str) -> Result<&SecretKey, StoreError> {
        self.secret_key
            .as_ref()
            .ok_or_else(|| StoreError::NoSecretKey {
                machine: machine.to_string(),
                purpose: purpose.to_string(),
            })
    }

    /// Creates a machine as [`Store::create_machine`] does, with `secrets` (purpose, value) kept
    /// for it in the same transaction: its power parameters may name them from the start.
    pub async fn create_machine_with_secrets(
        &self,
        new: &NewMachine,
        actor: &str,
        secrets: &[(&str, &SecretValue)],
    ) -> Result<MachineRecord, StoreError> {
        let name = new.name.as_str();
        let keys = secrets
            .iter()
            .map(|(purpose, _)| self.key_for(name, purpose))
            .collect::<Result<Vec<_>, _>>()?;
        let mut transaction = self.begin_write().await?;
        let id = insert_new_machine(&mut transaction, new, actor, now_ms()).await?;
        for (key, (purpose, secret)) in keys.into_iter().zip(secrets) {
            write_secret(&mut transaction, key, id, purpose, secret).await?;
        }
        let record = load_machine_by_id(&mut transaction, id).await?;
        transaction.commit().await?;
        Ok(record)
    }

    /// Keeps `secret` as the machine's `purpose` (replacing one kept before) and, in the same
    /// transaction, sets its power parameters to `power_params` when given (which name it).
    pub async fn keep_secret(
        &self,
        machine: &str,
        purpose: &str,
        secret: &SecretValue,
        power_params: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        let key = self.key_for(machine, purpose)?;
        let mut transaction = self.begin_write().await?;
        let id = machine_id(&mut transaction, machine)
            .await?
            .ok_or_else(|| StoreError::UnknownMachine(machine.to_string()))?;
        write_secret(&mut transaction, key, id, purpose, secret).await?;
        if let Some(params) = power_params {
            sqlx::query(
                "UPDATE machines SET power_params = $1, generation = generation + 1, \
                     updated_at = $2 WHERE id = $3",
            )
            .bind(json_text(params))
            .bind(now_ms())
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The machine's `purpose`, decrypted with this store's key. The machine is named by its
    /// id (a machine re-added under the same name is another machine); `machine` is its name,
    /// for errors.
    pub async fn secret(
        &self,
        machine_id: i64,
        machine: &str,
        purpose: &str,
    ) -> Result<SecretValue, StoreError> {
        let key = self.key_for(machine, purpose)?;
        let row = sqlx::query(
            "SELECT machine_id, nonce, ciphertext, key_id FROM secrets \
             WHERE machine_id = $1 AND purpose = $2",
        )
        .bind(machine_id)
        .bind(purpose)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NoSecret {
            machine: machine.to_string(),
            purpose: purpose.to_string(),
        })?;
        let written_with: String = get(&row, "key_id")?;
        if written_with != key.id() {
            return Err(StoreError::SecretKeyMismatch {
                machine: machine.to_string(),
                purpose: purpose.to_string(),
                written_with,
                ours: key.id().to_string(),
            });
        }
        let hex_column = |column: &str| -> Result<Vec<u8>, StoreError> {
            let text: String = get(&row, column)?;
            hex::decode(text)
                .map_err(|_| StoreError::Corrupt(format!("secrets.{column} is not hex")))
        };
        let sealed = Sealed {
            nonce: hex_column("nonce")?,
            ciphertext: hex_column("ciphertext")?,
        };
        let unreadable = || StoreError::SecretUnreadable {
            machine: machine.to_string(),
            purpose: purpose.to_string(),
            key: key.id().to_string(),
        };
        // The binding is the row's own machine: a row moved to another machine does not open.
        let bound_to: i64 = get(&row, "machine_id")?;
        let plain = key
            .open(&sealed, &associated_data(bound_to, purpose))
            .map_err(|_| unreadable())?;
        String::from_utf8(plain)
            .map(SecretValue::new)
            .map_err(|_| unreadable())
    }
}

/// Seals `secret` for the machine `machine_id` and stores it (replacing the one kept before).
async fn write_secret(
    connection: &mut AnyConnection,
    key: &SecretKey,
    machine_id: i64,
    purpose: &str,
    secret: &SecretValue,
) -> Result<(), StoreError> {
    let sealed = key.seal(
        secret.expose().as_bytes(),
        &associated_data(machine_id, purpose),
    );
    sqlx::query(
        "INSERT INTO secrets (machine_id, purpose, nonce, ciphertext, key_id, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (machine_id, purpose) DO UPDATE SET nonce = excluded.nonce, \
             ciphertext = excluded.ciphertext, key_id = excluded.key_id, \
             updated_at = excluded.updated_at",
    )
    .bind(machine_id)
    .bind(purpose)
    .bind(hex::encode(&sealed.nonce))
    .bind(hex::encode(&sealed.ciphertext))
    .bind(key.id())
    .bind(now_ms())
    .execute(&mut *connection)
    .await?;
    Ok(())
}
