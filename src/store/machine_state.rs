//! What the machine API keeps per machine: its current run and the hash of that run's token,
//! the hashes of the one-shot boot secrets of its current boot, a one-shot registration secret
//! (machines added live), the erase mode its latest release asked for. One row of
//! `machine_state` per machine (made on first write), keyed by the machine's id: it is deleted
//! with its machine (ON DELETE CASCADE), so a machine re-added under the same name starts afresh.
//!
//! Secrets and tokens reach the store only as their SHA-256 (hex, made by the caller): never
//! the values themselves. Callers name the machine; a write for a machine that does not exist
//! is [`StoreError::UnknownMachine`] and writes nothing.

use super::codec::{get, get_opt_parsed};
use super::machines::{machine_from_columns, HardwareDetail, LEAN_MACHINE_COLUMNS};
use super::MachineRecord;
use super::{now_ms, Store, StoreError};
use crate::model::{DeployProgress, EraseMode};
use sqlx::any::AnyRow;

/// The most boot secrets one boot keeps: iPXE fetches its script once or twice per boot, so
/// more than this means someone else is fetching it (see [`Store::add_boot_secret`]).
pub const BOOT_SECRETS_PER_BOOT: usize = 16;

/// What `boot_exchanged_from` says when more boot scripts were served than one boot fetches.
pub const BOOT_OVERFLOW: &str = "overflow";

/// 32 random bytes, hex: a boot secret, a registration secret or a run token.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut random = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut random);
    hex::encode(random)
}

/// What the store keeps of a secret or token: its SHA-256, hex.
pub fn secret_hash(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// A run of the machine API: its id and its role (`commissioning`, `testing`, ... as
/// `model::Role` spells it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRun {
    pub id: String,
    pub role: String,
}

/// A machine's state, as [`Store::machine_state`] reads it. Everything is `None` until written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineState {
    /// The run it is doing (the latest one started).
    pub run: Option<MachineRun>,
    /// The SHA-256 of the current run's token.
    pub run_token_hash: Option<String>,
    /// When the current run ended (its final signal), Unix ms.
    pub run_ended_at: Option<i64>,
    /// The SHA-256s of the boot secrets handed out for the current boot, oldest first.
    pub boot_secrets: Vec<String>,
    /// Where the current boot's one exchange came from ([`BOOT_OVERFLOW`]: too many scripts).
    pub boot_exchanged_from: Option<String>,
    /// The registration secret of a machine added live, if one was made.
    pub registration: Option<Registration>,
    /// The disk erase its latest release with erase asked for.
    pub erase_mode: Option<EraseMode>,
    /// The last progress a deploying run reported, and when (Unix ms).
    pub progress: Option<ReportedProgress>,
    /// When a deploying run's installer signalled done (Unix ms).
    pub install_done_at: Option<i64>,
    /// The call-back credential of the latest deployment fetched.
    pub callback: Option<Callback>,
}

/// The last progress of a deploying run, with the runner's stage and when it came.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReportedProgress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(flatten)]
    pub progress: DeployProgress,
    #[serde(default)]
    pub at: i64,
}

/// A deployment's one-shot call-back secret (its SHA-256), minted when the deployment was
/// fetched by `run`; `used_from` once its one call came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub hash: String,
    pub run: Option<String>,
    pub used_from: Option<String>,
}

/// A one-shot registration secret (its SHA-256) for `register-live.sh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub hash: String,
    pub expires_at: i64,
    pub used_from: Option<String>,
}

/// How an exchange of a one-shot secret went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretUse {
    /// This exchange is the one: the secret is spent.
    Won,
    /// The secret was good, but its one exchange had already happened, from this address.
    AlreadyUsed { first_from: String },
    /// A registration secret past its expiry (Unix ms).
    Expired { at: i64 },
    /// Not a secret of this machine (or of its current boot).
    Unknown,
}

const STATE_COLUMNS: &str = "s.run, s.run_role, s.run_token_hash, s.run_ended_at, \
     s.boot_secrets, s.boot_exchanged_from, s.registration_hash, s.registration_expires, \
     s.registration_used_from, s.erase_mode, s.progress, s.install_done_at, s.callback_hash, \
     s.callback_run, s.callback_used_from";

impl Store {
    /// The state of the machine named `name`, or `None` if there is no such machine.
    pub async fn machine_state(&self, name: &str) -> Result<Option<MachineState>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {STATE_COLUMNS} FROM machines m \
             LEFT JOIN machine_state s ON s.machine_id = m.id WHERE m.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(state_from_row).transpose()
    }

    /// The machine's row without its hardware detail (a [`HardwareDetail::Lean`] record: no
    /// facts beyond the firmware, no CPU model, no interfaces, no disks) and its state, in one
    /// query: what the machine API reads on every call of a machine (its authorization).
    pub async fn machine_row_and_state(
        &self,
        name: &str,
    ) -> Result<Option<(MachineRecord, MachineState)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {LEAN_MACHINE_COLUMNS}, {STATE_COLUMNS} FROM machines m \
             LEFT JOIN machine_state s ON s.machine_id = m.id WHERE m.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record = machine_from_columns(&row, HardwareDetail::Lean)?;
        Ok(Some((record, state_from_row(&row)?)))
    }

    /// The run the machine is doing, if any.
    pub async fn machine_run(&self, name: &str) -> Result<Option<MachineRun>, StoreError> {
        Ok(self.machine_state(name).await?.and_then(|state| state.run))
    }

    /// Makes `run` the machine's current run, with the token whose SHA-256 is `token_hash`:
    /// whatever it was doing before is over, and the former run's token is no longer kept.
    pub async fn start_machine_run(
        &self,
        name: &str,
        run: &MachineRun,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO machine_state (machine_id, run, run_role, run_token_hash) \
             SELECT id, $2, $3, $4 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE \
             SET run = excluded.run, run_role = excluded.run_role, \
                 run_token_hash = excluded.run_token_hash, run_ended_at = NULL",
        )
        .bind(name)
        .bind(run.id.as_str())
        .bind(run.role.as_str())
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        require_machine(result.rows_affected(), name)
    }

    /// The run `run` ended (its final signal): its token opens nothing any more. Nothing
    /// happens if the machine is on another run by now.
    pub async fn end_machine_run(&self, name: &str, run: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE machine_state SET run_ended_at = $3 \
             WHERE machine_id = (SELECT id FROM machines WHERE name = $1) AND run = $2",
        )
        .bind(name)
        .bind(run)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The machine whose current run's token has this SHA-256, if any.
    pub async fn machine_of_run_token(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT m.name FROM machine_state s JOIN machines m ON m.id = s.machine_id \
             WHERE s.run_token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| get(&row, "name")).transpose()
    }

    /// Keeps the SHA-256 of a boot secret just put in the machine's iPXE script. One boot may
    /// fetch its script more than once, so every secret of the boot is kept and any one of them
    /// may make the boot's one exchange. A new boot starts when the current one was exchanged
    /// and the machine's `boot_started` (its latest power command) moved on since: then the
    /// secrets of the old boot are dropped. More than [`BOOT_SECRETS_PER_BOOT`] scripts for one
    /// boot: the hash is not kept and the boot counts as exchanged ([`BOOT_OVERFLOW`]), so any
    /// later exchange of one of its secrets is refused as a second one. One statement, so two
    /// fetches at once both keep their secret.
    pub async fn add_boot_secret(
        &self,
        name: &str,
        hash: &str,
        boot_started: Option<i64>,
    ) -> Result<(), StoreError> {
        let new_boot = "(machine_state.boot_exchanged_from IS NOT NULL \
             AND COALESCE(machine_state.boot_epoch, -1) <> $3) \
             OR machine_state.boot_secrets IS NULL";
        let full = "length(machine_state.boot_secrets) >= $4";
        let sql = format!(
            "INSERT INTO machine_state (machine_id, boot_secrets) \
             SELECT id, $2 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE SET \
             boot_secrets = CASE WHEN {new_boot} THEN excluded.boot_secrets \
                 WHEN {full} THEN machine_state.boot_secrets \
                 ELSE machine_state.boot_secrets || ' ' || excluded.boot_secrets END, \
             boot_exchanged_from = CASE WHEN {new_boot} THEN NULL \
                 WHEN {full} THEN COALESCE(machine_state.boot_exchanged_from, '{BOOT_OVERFLOW}') \
                 ELSE machine_state.boot_exchanged_from END, \
             boot_epoch = CASE WHEN {new_boot} THEN NULL \
                 WHEN {full} AND machine_state.boot_exchanged_from IS NULL THEN $3 \
                 ELSE machine_state.boot_epoch END"
        );
        let full_length = (BOOT_SECRETS_PER_BOOT * (hash.len() + 1) - 1) as i64;
        let result = sqlx::query(&sql)
            .bind(name)
            .bind(hash)
            .bind(boot_started.unwrap_or(0))
            .bind(full_length)
            .execute(&self.pool)
            .await?;
        require_machine(result.rows_affected(), name)
    }

    /// Spends a boot secret (its SHA-256): the first exchange of the machine's current boot
    /// wins, whichever of the boot's secrets it presents; `from` is where it came from and
    /// `boot_started` the machine's boot clock, which a later power command moves on.
    pub async fn use_boot_secret(
        &self,
        name: &str,
        hash: &str,
        from: &str,
        boot_started: Option<i64>,
    ) -> Result<SecretUse, StoreError> {
        let result = sqlx::query(
            "UPDATE machine_state SET boot_exchanged_from = $3, boot_epoch = $4 \
             WHERE machine_id = (SELECT id FROM machines WHERE name = $1) \
             AND boot_exchanged_from IS NULL \
             AND (' ' || boot_secrets || ' ') LIKE ('% ' || $2 || ' %')",
        )
        .bind(name)
        .bind(hash)
        .bind(from)
        .bind(boot_started.unwrap_or(0))
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 {
            return Ok(SecretUse::Won);
        }
        let state = self.machine_state(name).await?.unwrap_or_default();
        Ok(
            match (
                state.boot_secrets.iter().any(|kept| kept == hash),
                state.boot_exchanged_from,
            ) {
                (true, Some(first_from)) => SecretUse::AlreadyUsed { first_from },
                _ => SecretUse::Unknown,
            },
        )
    }

    /// Keeps a new registration secret (its SHA-256) for the machine, replacing any earlier one.
    pub async fn set_registration(
        &self,
        name: &str,
        hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO machine_state (machine_id, registration_hash, registration_expires) \
             SELECT id, $2, $3 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE \
             SET registration_hash = excluded.registration_hash, \
                 registration_expires = excluded.registration_expires, \
                 registration_used_from = NULL",
        )
        .bind(name)
        .bind(hash)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        require_machine(result.rows_affected(), name)
    }

    /// Spends the machine's registration secret (its SHA-256), once, before it expires.
    pub async fn use_registration(
        &self,
        name: &str,
        hash: &str,
        from: &str,
    ) -> Result<SecretUse, StoreError> {
        let now = now_ms();
        let result = sqlx::query(
            "UPDATE machine_state SET registration_used_from = $3 \
             WHERE machine_id = (SELECT id FROM machines WHERE name = $1) \
             AND registration_hash = $2 AND registration_used_from IS NULL \
             AND registration_expires > $4",
        )
        .bind(name)
        .bind(hash)
        .bind(from)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 {
            return Ok(SecretUse::Won);
        }
        let registration = self
            .machine_state(name)
            .await?
            .and_then(|state| state.registration)
            .filter(|registration| registration.hash == hash);
        Ok(match registration {
            Some(Registration {
                used_from: Some(first_from),
                ..
            }) => SecretUse::AlreadyUsed { first_from },
            Some(registration) if registration.expires_at <= now => SecretUse::Expired {
                at: registration.expires_at,
            },
            _ => SecretUse::Unknown,
        })
    }

    /// The disk erase the machine's latest release with erase asked for, if any.
    pub async fn erase_mode(&self, name: &str) -> Result<Option<EraseMode>, StoreError> {
        Ok(self
            .machine_state(name)
            .await?
            .and_then(|state| state.erase_mode))
    }

    /// Records the disk erase a release asked for, which the machine runs when it boots.
    pub async fn set_erase_mode(&self, name: &str, mode: EraseMode) -> Result<(), StoreError> {
        let mut connection = self.pool.acquire().await?;
        let written = write_erase_mode(&mut connection, name, mode).await?;
        require_machine(written, name)
    }
}

/// Upserts `name`'s erase mode on `connection` (a transaction's, for [`Store::commit`]); the
/// rows written (0: no such machine).
pub(super) async fn write_erase_mode(
    connection: &mut sqlx::AnyConnection,
    name: &str,
    mode: EraseMode,
) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "INSERT INTO machine_state (machine_id, erase_mode) \
         SELECT id, $2 FROM machines WHERE name = $1 \
         ON CONFLICT (machine_id) DO UPDATE SET erase_mode = excluded.erase_mode",
    )
    .bind(name)
    .bind(mode.as_str())
    .execute(&mut *connection)
    .await?;
    Ok(result.rows_affected())
}

impl Store {
    /// Keeps the last progress a deploying run reported (replacing the one before).
    pub async fn set_progress(
        &self,
        name: &str,
        progress: &ReportedProgress,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(progress)
            .map_err(|error| StoreError::Corrupt(format!("progress: {error}")))?;
        let result = sqlx::query(
            "INSERT INTO machine_state (machine_id, progress, progress_at) \
             SELECT id, $2, $3 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE \
             SET progress = excluded.progress, progress_at = excluded.progress_at",
        )
        .bind(name)
        .bind(text)
        .bind(progress.at)
        .execute(&self.pool)
        .await?;
        require_machine(result.rows_affected(), name)
    }

    /// A deploying run's installer signalled done at `at` (Unix ms): netboot is off for the
    /// machine and the call-back clock runs from then.
    pub async fn set_install_done(&self, name: &str, at: i64) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO machine_state (machine_id, install_done_at) \
             SELECT id, $2 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE SET install_done_at = excluded.install_done_at",
        )
        .bind(name)
        .bind(at)
        .execute(&self.pool)
        .await?;
        require_machine(result.rows_affected(), name)
    }

    /// Keeps a new call-back secret's SHA-256 for the deployment `run` fetched: the one before
    /// (an earlier fetch's) is void from now on.
    pub async fn set_callback(&self, name: &str, run: &str, hash: &str) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO machine_state (machine_id, callback_hash, callback_run) \
             SELECT id, $2, $3 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE SET callback_hash = excluded.callback_hash, \
                 callback_run = excluded.callback_run, callback_used_from = NULL",
        )
        .bind(name)
        .bind(hash)
        .bind(run)
        .execute(&self.pool)
        .await?;
        require_machine(result.rows_affected(), name)
    }

    /// Spends the machine's call-back secret (its SHA-256), once: `Won` for the one call that
    /// uses it, `AlreadyUsed` for any later one, `Unknown` for anything else. One statement,
    /// so two calls at once cannot both win.
    pub async fn use_callback(
        &self,
        name: &str,
        hash: &str,
        from: &str,
    ) -> Result<SecretUse, StoreError> {
        let result = sqlx::query(
            "UPDATE machine_state SET callback_used_from = $3 \
             WHERE machine_id = (SELECT id FROM machines WHERE name = $1) \
             AND callback_hash = $2 AND callback_used_from IS NULL",
        )
        .bind(name)
        .bind(hash)
        .bind(from)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 {
            return Ok(SecretUse::Won);
        }
        let callback = self
            .machine_state(name)
            .await?
            .and_then(|state| state.callback)
            .filter(|callback| callback.hash == hash);
        Ok(match callback.and_then(|callback| callback.used_from) {
            Some(first_from) => SecretUse::AlreadyUsed { first_from },
            None => SecretUse::Unknown,
        })
    }
}

fn require_machine(rows_affected: u64, name: &str) -> Result<(), StoreError> {
    if rows_affected == 0 {
        Err(StoreError::UnknownMachine(name.to_string()))
    } else {
        Ok(())
    }
}

/// A machine's state from a row with [`STATE_COLUMNS`] (all null: a machine with no state row yet).
fn state_from_row(row: &AnyRow) -> Result<MachineState, StoreError> {
    let run: Option<String> = get(row, "run")?;
    let role: Option<String> = get(row, "run_role")?;
    let secrets: Option<String> = get(row, "boot_secrets")?;
    let registration_hash: Option<String> = get(row, "registration_hash")?;
    let registration_expires: Option<i64> = get(row, "registration_expires")?;
    let registration_used_from: Option<String> = get(row, "registration_used_from")?;
    let progress: Option<String> = get(row, "progress")?;
    let callback_hash: Option<String> = get(row, "callback_hash")?;
    Ok(MachineState {
        // A progress that does not read back is shown as none, never an error.
        progress: progress.and_then(|text| serde_json::from_str(&text).ok()),
        install_done_at: get(row, "install_done_at")?,
        callback: match callback_hash {
            Some(hash) => Some(Callback {
                hash,
                run: get(row, "callback_run")?,
                used_from: get(row, "callback_used_from")?,
            }),
            None => None,
        },
        run: run.zip(role).map(|(id, role)| MachineRun { id, role }),
        run_token_hash: get(row, "run_token_hash")?,
        run_ended_at: get(row, "run_ended_at")?,
        boot_secrets: secrets
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        boot_exchanged_from: get(row, "boot_exchanged_from")?,
        registration: registration_hash.map(|hash| Registration {
            hash,
            expires_at: registration_expires.unwrap_or(0),
            used_from: registration_used_from,
        }),
        erase_mode: get_opt_parsed(row, "erase_mode")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erase_modes_are_stored_as_the_api_spells_them() {
        for mode in [EraseMode::Quick, EraseMode::Secure, EraseMode::Full] {
            assert_eq!(
                serde_json::to_value(mode).unwrap(),
                serde_json::json!(mode.as_str())
            );
            assert_eq!(mode.as_str().parse::<EraseMode>(), Ok(mode));
        }
        assert!("wipe".parse::<EraseMode>().is_err());
    }
}
