//! What the machine API keeps per machine: its own API token, its current run, the erase mode
//! its latest release asked for. One row of `machine_state` per machine (made on first write),
//! keyed by the machine's id: it is deleted with its machine (ON DELETE CASCADE), so a machine
//! re-added under the same name gets a new token and no run of the old one.
//!
//! Callers name the machine; a write for a machine that does not exist is
//! [`StoreError::UnknownMachine`] and writes nothing.

use super::codec::{get, get_opt_parsed};
use super::{Store, StoreError};
use crate::model::EraseMode;

/// A run of the machine API: the id handed out with the instructions and its role
/// (`commissioning`, `testing`, ... as `model::Role` spells it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRun {
    pub id: String,
    pub role: String,
}

/// A machine's state, as [`Store::machine_state`] reads it. Everything is `None` until written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineState {
    /// The machine's own API token.
    pub token: Option<String>,
    /// The run it is doing (the latest one handed out).
    pub run: Option<MachineRun>,
    /// The disk erase its latest release with erase asked for.
    pub erase_mode: Option<EraseMode>,
}

impl Store {
    /// The state of the machine named `name`, or `None` if there is no such machine.
    pub async fn machine_state(&self, name: &str) -> Result<Option<MachineState>, StoreError> {
        let row = sqlx::query(
            "SELECT s.token, s.run, s.run_role, s.erase_mode FROM machines m \
             LEFT JOIN machine_state s ON s.machine_id = m.id WHERE m.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let run: Option<String> = get(&row, "run")?;
        let role: Option<String> = get(&row, "run_role")?;
        Ok(Some(MachineState {
            token: get(&row, "token")?,
            run: run.zip(role).map(|(id, role)| MachineRun { id, role }),
            erase_mode: get_opt_parsed(&row, "erase_mode")?,
        }))
    }

    /// The machine's API token, if it has one (and exists).
    pub async fn machine_token(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .machine_state(name)
            .await?
            .and_then(|state| state.token))
    }

    /// The machine's API token, `candidate` becoming it if it has none. The first writer wins,
    /// also between controllers racing on PostgreSQL (the upsert keeps a token already there).
    pub async fn machine_token_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, StoreError> {
        let row = sqlx::query(
            "INSERT INTO machine_state (machine_id, token) \
             SELECT id, $2 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE \
             SET token = COALESCE(machine_state.token, excluded.token) \
             RETURNING token",
        )
        .bind(name)
        .bind(candidate)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::UnknownMachine(name.to_string()))?;
        let token: Option<String> = get(&row, "token")?;
        token.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "machine `{name}`'s token is empty right after it was written"
            ))
        })
    }

    /// The run the machine is doing, if any.
    pub async fn machine_run(&self, name: &str) -> Result<Option<MachineRun>, StoreError> {
        Ok(self.machine_state(name).await?.and_then(|state| state.run))
    }

    /// Makes `run` the machine's current run (whatever it was doing before is over).
    pub async fn set_machine_run(&self, name: &str, run: &MachineRun) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO machine_state (machine_id, run, run_role) \
             SELECT id, $2, $3 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE \
             SET run = excluded.run, run_role = excluded.run_role",
        )
        .bind(name)
        .bind(run.id.as_str())
        .bind(run.role.as_str())
        .execute(&self.pool)
        .await?;
        require_machine(result.rows_affected(), name)
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
        let result = sqlx::query(
            "INSERT INTO machine_state (machine_id, erase_mode) \
             SELECT id, $2 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE SET erase_mode = excluded.erase_mode",
        )
        .bind(name)
        .bind(mode.as_str())
        .execute(&self.pool)
        .await?;
        require_machine(result.rows_affected(), name)
    }
}

fn require_machine(rows_affected: u64, name: &str) -> Result<(), StoreError> {
    if rows_affected == 0 {
        Err(StoreError::UnknownMachine(name.to_string()))
    } else {
        Ok(())
    }
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
