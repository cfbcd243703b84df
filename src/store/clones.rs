//! Clones (`fleet clone`): one row per destination in `machine_clones` (migration 0011), keyed
//! by the destination's id so it goes with the machine (ON DELETE CASCADE).
//!
//! A clone is checked and written in one transaction per destination, on the records as they
//! are inside it: a destination whose status changed since the request was made is judged on
//! its new status. The destination's generation moves (plans made before the clone no longer
//! apply to it), guarded by the generation read, so a writer that got in between on
//! PostgreSQL makes this one a [`StoreError::Conflict`] to retry.

use super::codec::{get, get_bool, get_name, json_text};
use super::events::insert_event;
use super::machines::{load_machine_by_id, machine_id};
use super::{MachineRecord, NewEvent, Store, StoreError};
use crate::model::MachineName;
use crate::plan::clone::{CloneMapping, CloneRecord};
use crate::store::now_ms;
use serde_json::json;
use sqlx::AnyConnection;

/// One destination of a clone request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneOrder<'a> {
    pub source: &'a str,
    pub destination: &'a str,
    pub storage: bool,
    pub interfaces: bool,
    /// The operator token's name: the actor of the events.
    pub actor: &'a str,
    /// Check only: nothing is written, not even a refusal.
    pub dry_run: bool,
}

/// What became of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneVerdict {
    Cloned(CloneMapping),
    /// A dry run that would have cloned.
    WouldClone(CloneMapping),
    /// Every reason, each a sentence.
    Refused(Vec<String>),
}

/// The two machines of a clone as the transaction found them (`None`: no such machine).
pub struct ClonePair<'a> {
    pub source: Option<&'a MachineRecord>,
    pub destination: Option<&'a MachineRecord>,
}

impl Store {
    /// Checks `order` with `check` on the source and destination as they are inside one
    /// transaction, and, unless it is a dry run, records the clone (or the refusal) with its
    /// events in that transaction.
    pub async fn clone_machine(
        &self,
        order: &CloneOrder<'_>,
        check: impl FnOnce(ClonePair<'_>) -> Result<CloneMapping, Vec<String>>,
    ) -> Result<CloneVerdict, StoreError> {
        let mut transaction = if order.dry_run {
            self.begin_read().await?
        } else {
            self.begin_write().await?
        };
        let source = load_named(&mut transaction, order.source).await?;
        let destination = load_named(&mut transaction, order.destination).await?;
        let verdict = check(ClonePair {
            source: source.as_ref(),
            destination: destination.as_ref(),
        });
        let now = now_ms();
        let verdict = match (verdict, &destination) {
            (Ok(mapping), _) if order.dry_run => CloneVerdict::WouldClone(mapping),
            (Ok(mapping), Some(destination)) => {
                record_clone(&mut transaction, order, destination, &mapping, now).await?;
                CloneVerdict::Cloned(mapping)
            }
            (Ok(_), None) => {
                return Err(StoreError::Corrupt(format!(
                    "a clone onto `{}` passed its check without the machine",
                    order.destination
                )))
            }
            (Err(reasons), Some(destination)) if !order.dry_run => {
                let event = refusal_event(order, destination, &reasons);
                insert_event(&mut transaction, &event, now).await?;
                CloneVerdict::Refused(reasons)
            }
            (Err(reasons), _) => CloneVerdict::Refused(reasons),
        };
        transaction.commit().await?;
        Ok(verdict)
    }

    /// Every recorded clone, by destination name.
    pub async fn clone_records(&self) -> Result<Vec<(MachineName, CloneRecord)>, StoreError> {
        self.read_clones("").await
    }

    /// The clone recorded onto `name`, if any.
    pub async fn clone_record(&self, name: &str) -> Result<Option<CloneRecord>, StoreError> {
        let mut found = self.read_clones(name).await?;
        Ok(found.pop().map(|(_, record)| record))
    }

    /// The clones onto `only` (every one when it is empty).
    async fn read_clones(&self, only: &str) -> Result<Vec<(MachineName, CloneRecord)>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.name AS name, c.source AS source, c.storage AS storage, \
                 c.interfaces AS interfaces, c.at AS at \
             FROM machine_clones c JOIN machines m ON m.id = c.machine_id \
             WHERE $1 = '' OR m.name = $1",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let record = CloneRecord {
                    source: get_name(row, "source")?,
                    storage: get_bool(row, "storage")?,
                    interfaces: get_bool(row, "interfaces")?,
                    at: get(row, "at")?,
                };
                Ok((get_name(row, "name")?, record))
            })
            .collect()
    }
}

async fn load_named(
    connection: &mut AnyConnection,
    name: &str,
) -> Result<Option<MachineRecord>, StoreError> {
    match machine_id(connection, name).await? {
        Some(id) => Ok(Some(load_machine_by_id(connection, id).await?)),
        None => Ok(None),
    }
}

/// Moves the destination's generation (guarded), replaces its clone row and records an event on
/// each machine.
async fn record_clone(
    connection: &mut AnyConnection,
    order: &CloneOrder<'_>,
    destination: &MachineRecord,
    mapping: &CloneMapping,
    now: i64,
) -> Result<(), StoreError> {
    let moved = sqlx::query(
        "UPDATE machines SET generation = generation + 1, updated_at = $1 \
         WHERE id = $2 AND generation = $3",
    )
    .bind(now)
    .bind(destination.id)
    .bind(destination.generation)
    .execute(&mut *connection)
    .await?;
    if moved.rows_affected() == 0 {
        return Err(StoreError::Conflict(destination.name.to_string()));
    }
    sqlx::query(
        "INSERT INTO machine_clones \
             (machine_id, source, storage, interfaces, disk_map, interface_map, actor, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (machine_id) DO UPDATE SET source = $2, storage = $3, interfaces = $4, \
             disk_map = $5, interface_map = $6, actor = $7, at = $8",
    )
    .bind(destination.id)
    .bind(order.source)
    .bind(i64::from(order.storage))
    .bind(i64::from(order.interfaces))
    .bind(json_text(&mapping.disks.clone().unwrap_or_default()))
    .bind(json_text(&mapping.interfaces.clone().unwrap_or_default()))
    .bind(order.actor)
    .bind(now)
    .execute(&mut *connection)
    .await?;
    for event in clone_events(order, mapping) {
        insert_event(connection, &event, now).await?;
    }
    Ok(())
}

/// `storage and interfaces`, `storage`, `interfaces`.
pub fn cloned_parts(storage: bool, interfaces: bool) -> &'static str {
    match (storage, interfaces) {
        (true, true) => "storage and interfaces",
        (true, false) => "storage",
        _ => "interfaces",
    }
}

/// The events of a clone: on the destination, then on the source.
fn clone_events(order: &CloneOrder<'_>, mapping: &CloneMapping) -> [NewEvent; 2] {
    let parts = cloned_parts(order.storage, order.interfaces);
    let detail = json!({
        "source": order.source,
        "destination": order.destination,
        "storage": order.storage,
        "interfaces": order.interfaces,
        "disk_map": mapping.disks,
        "interface_map": mapping.interfaces,
    });
    let event = |machine: &str, reason: String| NewEvent {
        machine: Some(machine.to_string()),
        kind: "clone".into(),
        actor: order.actor.into(),
        action: Some("clone".into()),
        from_status: None,
        to_status: None,
        reason: Some(reason),
        detail: detail.clone(),
    };
    [
        event(
            order.destination,
            format!("cloned {parts} from {}", order.source),
        ),
        event(
            order.source,
            format!("cloned to {} ({parts})", order.destination),
        ),
    ]
}

fn refusal_event(
    order: &CloneOrder<'_>,
    destination: &MachineRecord,
    reasons: &[String],
) -> NewEvent {
    NewEvent {
        machine: Some(order.destination.to_string()),
        kind: "refused".into(),
        actor: order.actor.into(),
        action: Some("clone".into()),
        from_status: Some(destination.lifecycle.status),
        to_status: None,
        reason: Some(format!(
            "clone from {} refused: {}",
            order.source,
            crate::plan::clone::reasons_line(reasons)
        )),
        detail: json!({ "source": order.source, "reasons": reasons }),
    }
}
