//! What the executor (src/apply) keeps in the store: the machines read in bulk for planning, and
//! the progress of each step of an apply (`apply_steps`, migration 0002).

use super::codec::{get, get_json, get_mac, json_text};
use super::machines::{machine_from_columns, HardwareDetail, LEAN_MACHINE_COLUMNS};
use super::{Backend, Disk, Interface, MachineRecord, Store, StoreError, StoredPlan};
use crate::store::now_ms;
use std::collections::HashMap;

/// `plans.status` of an apply recorded and waiting for the leader's executor.
pub const QUEUED: &str = "queued";
/// `plans.status` of an apply the leader carries out (or did, when its controller died).
pub const APPLYING: &str = "applying";

/// An apply queued or applying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInFlight {
    pub id: String,
    /// [`QUEUED`] or [`APPLYING`].
    pub status: String,
    pub created_at: i64,
}

/// One step's progress in an apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyStepRow {
    pub machine: String,
    pub step: i64,
    /// `pending`, `started`, `done`, `failed`, `refused`, `skipped`.
    pub state: String,
    /// The machine's generation read just before the step's action ran.
    pub generation: Option<i64>,
    pub reason: Option<String>,
    pub updated_at: i64,
}

impl Store {
    /// Every machine with its MACs and disks, sorted by name, in three queries whatever the
    /// fleet's size. Hardware `facts` are left empty: planning does not read them.
    pub async fn planning_records(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let mut transaction = self.begin_read().await?;
        let rows = sqlx::query(&format!("SELECT {LEAN_MACHINE_COLUMNS} FROM machines m"))
            .fetch_all(&mut *transaction)
            .await?;
        let mut records = rows
            .iter()
            .map(|row| machine_from_columns(row, HardwareDetail::Lean))
            .collect::<Result<Vec<_>, _>>()?;
        let at: HashMap<i64, usize> = records
            .iter()
            .enumerate()
            .map(|(index, record)| (record.id, index))
            .collect();
        let interfaces = sqlx::query("SELECT machine_id, name, mac FROM interfaces ORDER BY id")
            .fetch_all(&mut *transaction)
            .await?;
        for row in &interfaces {
            if let Some(index) = at.get(&get::<i64>(row, "machine_id")?) {
                records[*index].interfaces.push(Interface {
                    name: get(row, "name")?,
                    mac: get_mac(row, "mac")?,
                    link_up: None,
                    speed_mbps: None,
                    driver: None,
                });
            }
        }
        // Everything layouts and clone checks read of a disk: root_device chooses by name,
        // serial, by-id path, size or rotational; clone passes compare tags (ssd/rotary, bus).
        let disks = sqlx::query(
            "SELECT machine_id, name, model, serial, id_path, bus, size_bytes, rotational \
             FROM disks ORDER BY id",
        )
        .fetch_all(&mut *transaction)
        .await?;
        for row in &disks {
            if let Some(index) = at.get(&get::<i64>(row, "machine_id")?) {
                records[*index].disks.push(Disk {
                    name: get(row, "name")?,
                    model: get(row, "model")?,
                    serial: get(row, "serial")?,
                    id_path: get(row, "id_path")?,
                    bus: get(row, "bus")?,
                    size_bytes: get(row, "size_bytes")?,
                    block_size: None,
                    rotational: get::<Option<i64>>(row, "rotational")?.map(|flag| flag != 0),
                });
            }
        }
        transaction.commit().await?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// Records an apply's steps (all or none), each with its initial state and reason.
    pub async fn create_apply_steps(
        &self,
        apply_id: &str,
        steps: &[ApplyStepRow],
    ) -> Result<(), StoreError> {
        let mut transaction = self.begin_write().await?;
        insert_apply_steps(&mut transaction, apply_id, steps).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Queues an apply: its plan (status [`QUEUED`]) and its steps in one transaction, unless
    /// another apply is queued or applying — then that one is returned and nothing is written.
    /// Admissions on several controllers wait for each other (a table lock on PostgreSQL, the
    /// write transaction on SQLite), so of two at once exactly one is queued.
    pub async fn queue_plan(
        &self,
        plan: &StoredPlan,
        steps: &[ApplyStepRow],
    ) -> Result<Result<(), PlanInFlight>, StoreError> {
        let mut transaction = self.begin_write().await?;
        if self.backend() == Backend::Postgres {
            // Conflicts with itself and with writers of `plans`, not with readers.
            sqlx::query("LOCK TABLE plans IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *transaction)
                .await?;
        }
        let in_flight = sqlx::query(&format!(
            "SELECT id, status, created_at FROM plans WHERE status IN ('{QUEUED}', '{APPLYING}') \
             ORDER BY created_at, id LIMIT 1"
        ))
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(row) = in_flight {
            return Ok(Err(plan_in_flight(&row)?));
        }
        sqlx::query("INSERT INTO plans (id, created_at, status, body) VALUES ($1, $2, $3, $4)")
            .bind(plan.id.as_str())
            .bind(plan.created_at)
            .bind(QUEUED)
            .bind(json_text(&plan.body))
            .execute(&mut *transaction)
            .await?;
        insert_apply_steps(&mut transaction, &plan.id, steps).await?;
        transaction.commit().await?;
        Ok(Ok(()))
    }

    /// The applies queued or applying (without their bodies: the leader looks often), those
    /// applying first, then oldest first.
    pub async fn plans_in_flight(&self) -> Result<Vec<PlanInFlight>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT id, status, created_at FROM plans WHERE status IN ('{QUEUED}', '{APPLYING}') \
             ORDER BY CASE status WHEN '{APPLYING}' THEN 0 ELSE 1 END, created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(plan_in_flight).collect()
    }

    /// Every step of an apply, by machine then step.
    pub async fn apply_steps(&self, apply_id: &str) -> Result<Vec<ApplyStepRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT machine, step, state, generation, reason, updated_at FROM apply_steps \
             WHERE apply_id = $1",
        )
        .bind(apply_id)
        .fetch_all(&self.pool)
        .await?;
        let mut steps = rows
            .iter()
            .map(|row| {
                Ok(ApplyStepRow {
                    machine: get(row, "machine")?,
                    step: get(row, "step")?,
                    state: get(row, "state")?,
                    generation: get(row, "generation")?,
                    reason: get(row, "reason")?,
                    updated_at: get(row, "updated_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        steps.sort_by(|a, b| (a.machine.as_str(), a.step).cmp(&(b.machine.as_str(), b.step)));
        Ok(steps)
    }

    /// Moves one step to `state`.
    pub async fn set_apply_step(
        &self,
        apply_id: &str,
        machine: &str,
        step: i64,
        state: &str,
        generation: Option<i64>,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE apply_steps SET state = $1, generation = COALESCE($2, generation), reason = $3, \
                 updated_at = $4 \
             WHERE apply_id = $5 AND machine = $6 AND step = $7",
        )
        .bind(state)
        .bind(generation)
        .bind(reason)
        .bind(now_ms())
        .bind(apply_id)
        .bind(machine)
        .bind(step)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends one step (`done`, `failed`) and appends the event that says so, in one transaction:
    /// a run interrupted by a store error and tried again finds either both or neither, so the
    /// history never lacks the step's end nor tells it twice.
    pub async fn end_apply_step(
        &self,
        apply_id: &str,
        machine: &str,
        step: i64,
        state: &str,
        reason: Option<&str>,
        event: &super::NewEvent,
    ) -> Result<(), StoreError> {
        let mut transaction = self.begin_write().await?;
        sqlx::query(
            "UPDATE apply_steps SET state = $1, reason = $2, updated_at = $3 \
             WHERE apply_id = $4 AND machine = $5 AND step = $6",
        )
        .bind(state)
        .bind(reason)
        .bind(now_ms())
        .bind(apply_id)
        .bind(machine)
        .bind(step)
        .execute(&mut *transaction)
        .await?;
        super::events::insert_event(&mut transaction, event, now_ms()).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The saved plans (applies) in `status`, oldest first: for resuming after a restart.
    pub async fn plans_with_status(&self, status: &str) -> Result<Vec<StoredPlan>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, created_at, status, body FROM plans WHERE status = $1 ORDER BY created_at, id",
        )
        .bind(status)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredPlan {
                    id: get(row, "id")?,
                    created_at: get(row, "created_at")?,
                    status: get(row, "status")?,
                    body: get_json(row, "body")?,
                })
            })
            .collect()
    }
}

async fn insert_apply_steps(
    connection: &mut sqlx::AnyConnection,
    apply_id: &str,
    steps: &[ApplyStepRow],
) -> Result<(), StoreError> {
    for step in steps {
        sqlx::query(
            "INSERT INTO apply_steps (apply_id, machine, step, state, generation, reason, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(apply_id)
        .bind(step.machine.as_str())
        .bind(step.step)
        .bind(step.state.as_str())
        .bind(step.generation)
        .bind(step.reason.as_deref())
        .bind(step.updated_at)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

fn plan_in_flight(row: &sqlx::any::AnyRow) -> Result<PlanInFlight, StoreError> {
    Ok(PlanInFlight {
        id: get(row, "id")?,
        status: get(row, "status")?,
        created_at: get(row, "created_at")?,
    })
}
