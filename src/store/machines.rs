//! Machines: creating, reading, committing life-cycle changes (generation-guarded, with their
//! events in the same transaction), power, heartbeats, hardware and configuration.

use super::codec::{
    bool_int, get, get_bool, get_json, get_mac, get_name, get_opt_bool, get_opt_parsed, get_power,
    get_status, json_text, status_text,
};
use super::events::insert_event;
use super::{
    Backend, Commit, Disk, Hardware, Interface, MachineRecord, MachineSummary, NewEvent,
    NewMachine, PendingPower, PowerIntent, Store, StoreError,
};
use crate::model::{Action, Lifecycle, MacAddr, MachineName, PowerState, Status};
use crate::plan::Firmware;
use crate::store::now_ms;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use std::collections::HashSet;

const MACHINE_COLUMNS: &str = "id, name, status, previous_status, locked, power, owner, commissioned, \
     deployed_os, generation, status_reason, status_since, last_heard, boot_started, power_decided, boot_mac, power_intent, power_intent_passing, power_intent_why, arch, \
     power_type, power_params, bmc_address, image, tags, cpus, cpu_model, cpu_speed_mhz, memory_mib, facts, created_at, updated_at";

/// The columns a [`HardwareDetail::Lean`] record is read from, on the machines table `m`.
pub(super) const LEAN_MACHINE_COLUMNS: &str = "m.id, m.name, m.status, m.previous_status, m.locked, \
     m.power, m.owner, m.commissioned, m.deployed_os, m.generation, m.status_reason, m.status_since, \
     m.last_heard, m.boot_started, m.power_decided, m.boot_mac, m.power_intent, m.power_intent_passing, \
     m.power_intent_why, m.arch, m.firmware, m.power_type, m.power_params, m.bmc_address, m.image, m.tags, \
     m.cpus, m.cpu_speed_mhz, m.memory_mib, m.created_at, m.updated_at";

/// The columns of a summary, in [`PackedSummary`]'s order.
const SUMMARY_COLUMNS: &str =
    "m.name, m.status, m.power, m.locked, m.arch, m.cpus, m.memory_mib, m.owner, d.storage_bytes";

/// Disk sizes are summed per machine in a derived table rather than by grouping the machines.
/// CAST: PostgreSQL's SUM(BIGINT) is NUMERIC, which `Any` lacks.
const SUMMARY_FROM: &str = "FROM machines m \
     LEFT JOIN (SELECT machine_id, CAST(SUM(size_bytes) AS BIGINT) AS storage_bytes \
                FROM disks GROUP BY machine_id) d ON d.machine_id = m.id";

/// The power type of a machine nobody has said how to power.
const UNCONFIGURED: &str = "unconfigured";

impl Store {
    /// Creates a machine in its initial status, with one interface per MAC, and records a
    /// `created` event, in one transaction.
    pub async fn create_machine(
        &self,
        new: &NewMachine,
        actor: &str,
    ) -> Result<MachineRecord, StoreError> {
        let mut transaction = self.begin_write().await?;
        let id = insert_new_machine(&mut transaction, new, actor, now_ms()).await?;
        let record = load_machine_by_id(&mut transaction, id).await?;
        transaction.commit().await?;
        Ok(record)
    }

    /// Creates many machines in one transaction (all or none): for imports and tests.
    pub async fn create_machines(&self, new: &[NewMachine], actor: &str) -> Result<(), StoreError> {
        let mut transaction = self.begin_write().await?;
        let now = now_ms();
        for machine in new {
            insert_new_machine(&mut transaction, machine, actor, now).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// A machine with its interfaces and disks.
    pub async fn machine(&self, name: &str) -> Result<Option<MachineRecord>, StoreError> {
        let mut transaction = self.begin_read().await?;
        let id = machine_id(&mut transaction, name).await?;
        let record = match id {
            Some(id) => Some(load_machine_by_id(&mut transaction, id).await?),
            None => None,
        };
        transaction.commit().await?;
        Ok(record)
    }

    /// The machine one of whose interfaces has this MAC.
    pub async fn machine_by_mac(&self, mac: MacAddr) -> Result<Option<MachineRecord>, StoreError> {
        let mut transaction = self.begin_read().await?;
        let row = sqlx::query("SELECT machine_id FROM interfaces WHERE mac = $1")
            .bind(mac.to_string())
            .fetch_optional(&mut *transaction)
            .await?;
        let record = match row {
            Some(row) => {
                Some(load_machine_by_id(&mut transaction, get(&row, "machine_id")?).await?)
            }
            None => None,
        };
        transaction.commit().await?;
        Ok(record)
    }

    /// Every machine in an in-progress status, without the hardware detail (lean records), in
    /// one query: what the executor follows its machines with.
    pub async fn in_progress_rows(&self) -> Result<Vec<MachineRecord>, StoreError> {
        // The statuses are the model's own names, not input: written into the text.
        let statuses: Vec<String> = Status::ALL
            .iter()
            .filter(|status| status.is_in_progress())
            .map(|status| format!("'{}'", status.as_str()))
            .collect();
        let rows = sqlx::query(&format!(
            "SELECT {LEAN_MACHINE_COLUMNS} FROM machines m WHERE m.status IN ({})",
            statuses.join(", ")
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| machine_from_columns(row, HardwareDetail::Lean))
            .collect()
    }

    /// The name of the machine one of whose interfaces has this MAC, in one query.
    pub async fn machine_name_by_mac(&self, mac: MacAddr) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT m.name FROM interfaces i JOIN machines m ON m.id = i.machine_id WHERE i.mac = $1",
        )
        .bind(mac.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| get(&row, "name")).transpose()
    }

    /// [`Store::machine_by_mac`] without the hardware detail (a [`HardwareDetail::Lean`] record:
    /// no facts beyond the firmware, no interfaces, no disks), in one query: what the boot
    /// services read for each boot file they serve.
    pub async fn machine_row_by_mac(
        &self,
        mac: MacAddr,
    ) -> Result<Option<MachineRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {LEAN_MACHINE_COLUMNS} FROM interfaces i JOIN machines m ON m.id = i.machine_id \
             WHERE i.mac = $1"
        ))
        .bind(mac.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| machine_from_columns(&row, HardwareDetail::Lean))
            .transpose()
    }

    /// Every MAC the store knows, with the name of its machine (for services that must name
    /// the machine behind a MAC without a query per packet).
    pub async fn machine_macs(&self) -> Result<Vec<(MacAddr, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT interfaces.mac AS mac, machines.name AS name \
             FROM interfaces JOIN machines ON machines.id = interfaces.machine_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let mac: String = get(row, "mac")?;
                let mac =
                    MacAddr::parse(&mac).map_err(|error| StoreError::Corrupt(error.to_string()))?;
                Ok((mac, get(row, "name")?))
            })
            .collect()
    }

    /// How many machines each status has (statuses without machines left out): one grouped
    /// query, for `/metrics` at every scrape. COUNT(*) is cast to BIGINT so both backends hand
    /// `Any` an i64.
    pub async fn machine_counts_by_status(&self) -> Result<Vec<(Status, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, CAST(COUNT(*) AS BIGINT) AS count FROM machines GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((get_status(row, "status")?, get(row, "count")?)))
            .collect()
    }

    /// Every machine, one row each, sorted by name.
    pub async fn machine_summaries(&self) -> Result<Vec<MachineSummary>, StoreError> {
        let mut summaries = match self.backend() {
            Backend::Sqlite => self.summaries_packed().await?,
            Backend::Postgres => self.summaries_by_rows().await?,
        };
        // Sorted here, not in SQL: PostgreSQL's collation may not be byte order, SQLite's is.
        summaries.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(summaries)
    }

    /// One row per machine, through `Any`: what PostgreSQL sends fastest.
    async fn summaries_by_rows(&self) -> Result<Vec<MachineSummary>, StoreError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS} {SUMMARY_FROM}");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(summary_from_row).collect()
    }

    /// The whole list as one JSON text. On SQLite every row costs a hop from sqlx's worker
    /// thread and an `Any` conversion; for 10,000 machines that is ~35 ms against ~7 ms for one
    /// json_group_array (release build). On PostgreSQL json_agg is no faster than rows.
    async fn summaries_packed(&self) -> Result<Vec<MachineSummary>, StoreError> {
        let sql = format!(
            "SELECT json_group_array(json_array({SUMMARY_COLUMNS})) AS packed {SUMMARY_FROM}"
        );
        let row = sqlx::query(&sql).fetch_one(&self.pool).await?;
        let packed: Vec<PackedSummary> = get_json(&row, "packed")?;
        Ok(packed
            .into_iter()
            .map(PackedSummary::into_summary)
            .collect())
    }

    /// Carries out an accepted action's outcome (or a settlement) on `machine` as it was read:
    /// the life-cycle fields, the events, and the deletion if asked, in one transaction. Fails
    /// with [`StoreError::Conflict`] if the machine changed since it was read; nothing is written
    /// then. Returns the machine as it is now, or `None` if it was deleted.
    pub async fn commit(
        &self,
        machine: &MachineRecord,
        commit: &Commit<'_>,
    ) -> Result<Option<MachineRecord>, StoreError> {
        let mut transaction = self.begin_write().await?;
        let now = now_ms();
        let name = machine.name.as_str();
        // Read before the delete takes the held addresses with it; recorded after `deleted`.
        let mut released = Vec::new();
        if commit.outcome.delete {
            released =
                super::addresses::release_events(&mut transaction, machine.id, name, commit.actor)
                    .await?;
            delete_machine_guarded(&mut transaction, machine).await?;
        } else {
            update_lifecycle_guarded(&mut transaction, machine, commit, now).await?;
            if let Some(mode) = commit.erase_mode {
                super::machine_state::write_erase_mode(&mut transaction, name, mode).await?;
            }
        }
        for event in commit_events(machine, commit).into_iter().chain(released) {
            insert_event(&mut transaction, &event, now).await?;
        }
        let record = if commit.outcome.delete {
            None
        } else {
            Some(load_machine_by_id(&mut transaction, machine.id).await?)
        };
        transaction.commit().await?;
        tracing::debug!(
            machine = name,
            generation = machine.generation + 1,
            "committed"
        );
        Ok(record)
    }

    /// Records that `action` was refused, with the machine's status at the time.
    pub async fn record_refusal(
        &self,
        machine: &str,
        action: Action,
        actor: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO events (at, machine, kind, actor, action, from_status, reason, detail) \
             VALUES ($1, $2, 'refused', $3, $4, (SELECT status FROM machines WHERE name = $2), $5, '{}')",
        )
        .bind(now_ms())
        .bind(machine)
        .bind(actor)
        .bind(action.as_str())
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the machine's power state as found (or as set); a `power` event only when it changed.
    pub async fn set_power(
        &self,
        name: &str,
        power: PowerState,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        // The UPDATE is guarded by the power read; on PostgreSQL a commit may change it in
        // between, and then we read again.
        for _ in 0..3 {
            if self.set_power_once(name, power, actor, reason).await? {
                return Ok(());
            }
        }
        Err(StoreError::Conflict(name.to_string()))
    }

    /// `false` if the power state changed between our read and our write.
    async fn set_power_once(
        &self,
        name: &str,
        power: PowerState,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.begin_write().await?;
        let row = sqlx::query("SELECT power FROM machines WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *transaction)
            .await?
            .ok_or_else(|| StoreError::UnknownMachine(name.to_string()))?;
        let before = get_power(&row, "power")?;
        if before == power {
            return Ok(true);
        }
        let change = PowerChange {
            name,
            before,
            after: power,
            generation: None,
            actor,
            reason,
        };
        if !write_power_change(&mut transaction, &change).await? {
            return Ok(false);
        }
        transaction.commit().await?;
        Ok(true)
    }

    /// Records a power state found by the power poller, with a `power` event, only if it
    /// differs from `record`'s and the machine is still as `record` was read (same generation
    /// and power): a poll never overwrites what an action wrote meanwhile, and a poll that
    /// finds nothing new writes nothing (no generation bump, no event). `true` if it wrote.
    pub async fn record_found_power(
        &self,
        record: &MachineRecord,
        found: PowerState,
        actor: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let before = record.lifecycle.power;
        if before == found {
            return Ok(false);
        }
        let mut transaction = self.begin_write().await?;
        let change = PowerChange {
            name: record.name.as_str(),
            before,
            after: found,
            generation: Some(record.generation),
            actor,
            reason: Some(reason),
        };
        if !write_power_change(&mut transaction, &change).await? {
            return Ok(false);
        }
        // Found: whether it matched fleet's intent or not, the intent is settled.
        sqlx::query(
            "UPDATE machines SET power_intent = NULL, power_intent_passing = NULL, power_intent_why = NULL \
             WHERE name = $1",
        )
        .bind(record.name.as_str())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// The machine itself was heard from. Does not bump the generation: heartbeats are frequent
    /// and change nothing a decision rests on, so they must not make commits conflict.
    pub async fn heard_from(&self, name: &str) -> Result<(), StoreError> {
        let result = sqlx::query("UPDATE machines SET last_heard = $1 WHERE name = $2")
            .bind(now_ms())
            .bind(name)
            .execute(&self.pool)
            .await?;
        require_one_row(result.rows_affected(), name)
    }

    /// A power command that boots the machine (on, cycle) ran: its boot clock starts now. Does
    /// not bump the generation (like a heartbeat, it changes nothing a decision rests on).
    pub async fn boot_clock_started(&self, name: &str) -> Result<(), StoreError> {
        let result = sqlx::query("UPDATE machines SET boot_started = $1 WHERE name = $2")
            .bind(now_ms())
            .bind(name)
            .execute(&self.pool)
            .await?;
        require_one_row(result.rows_affected(), name)
    }

    /// Records what fleet expects the machine's power to become (`None`: nothing). Does not
    /// bump the generation: it records fleet's expectation, not a change of the machine.
    pub async fn set_power_intent(
        &self,
        name: &str,
        intent: Option<&PowerIntent>,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE machines SET power_intent = $1, power_intent_passing = $2, power_intent_why = $3 \
             WHERE name = $4",
        )
        .bind(intent.map(|intent| intent.target.as_str()))
        .bind(intent.and_then(|intent| intent.passing.map(|passing| passing.as_str())))
        .bind(intent.map(|intent| intent.why.as_str()))
        .bind(name)
        .execute(&self.pool)
        .await?;
        require_one_row(result.rows_affected(), name)
    }

    /// The power poll saw the intent's target while the store already said so: the intent is
    /// fulfilled and dropped, if the machine is still at the generation read (no bump).
    pub async fn fulfil_power_intent(&self, record: &MachineRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE machines SET power_intent = NULL, power_intent_passing = NULL, power_intent_why = NULL \
             WHERE name = $1 AND generation = $2",
        )
        .bind(record.name.as_str())
        .bind(record.generation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that a queued power command was dropped, and why, as a `power` event.
    pub async fn record_power_dropped(
        &self,
        name: &str,
        command: &str,
        why: &str,
        made_for_generation: i64,
    ) -> Result<(), StoreError> {
        let event = NewEvent {
            machine: Some(name.to_string()),
            kind: "power".into(),
            actor: "controller".into(),
            action: None,
            from_status: None,
            to_status: None,
            reason: Some(format!("power {command} dropped: {why}")),
            detail: json!({ "dropped": command, "made_for": made_for_generation }),
        };
        let mut connection = self.pool.acquire().await?;
        insert_event(&mut connection, &event, now_ms()).await?;
        Ok(())
    }

    /// Overwrites the life-cycle fields, bypassing the rules: for tests, repair tools and the
    /// throwaway copy `fleet plan --simulate` seeds from a snapshot (never the real store).
    /// Records a `forced` event. `power_configured` is not stored: it follows the power type
    /// (see [`Store::update_config`]).
    pub async fn write_lifecycle(
        &self,
        name: &str,
        lifecycle: &Lifecycle,
        actor: &str,
        reason: &str,
    ) -> Result<MachineRecord, StoreError> {
        let mut transaction = self.begin_write().await?;
        let id = machine_id(&mut transaction, name)
            .await?
            .ok_or_else(|| StoreError::UnknownMachine(name.to_string()))?;
        let before = load_machine_by_id(&mut transaction, id).await?;
        let now = now_ms();
        let status_changed = before.lifecycle.status != lifecycle.status;
        let written = LifecycleWrite {
            lifecycle,
            status_since: if status_changed {
                now
            } else {
                before.status_since
            },
            status_reason: if status_changed {
                Some(reason)
            } else {
                before.status_reason.as_deref()
            },
            image: None,
            decides_power: false,
            pending_power: None,
        };
        write_lifecycle_row(&mut transaction, &before, &written, now).await?;
        let event = NewEvent {
            machine: Some(name.to_string()),
            kind: "forced".into(),
            actor: actor.into(),
            action: None,
            from_status: Some(before.lifecycle.status),
            to_status: Some(lifecycle.status),
            reason: Some(reason.to_string()),
            detail: json!({ "before": before.lifecycle, "after": lifecycle }),
        };
        insert_event(&mut transaction, &event, now).await?;
        let record = load_machine_by_id(&mut transaction, id).await?;
        transaction.commit().await?;
        Ok(record)
    }

    /// Replaces what commissioning found: hardware facts, interfaces and disks. `arch: None`
    /// keeps the architecture already known.
    pub async fn replace_hardware(
        &self,
        name: &str,
        arch: Option<&str>,
        hardware: &Hardware,
        interfaces: &[Interface],
        disks: &[Disk],
    ) -> Result<(), StoreError> {
        let mut transaction = self.begin_write().await?;
        let id = machine_id(&mut transaction, name)
            .await?
            .ok_or_else(|| StoreError::UnknownMachine(name.to_string()))?;
        write_hardware(&mut transaction, id, arch, hardware).await?;
        replace_interfaces(&mut transaction, id, name, interfaces).await?;
        replace_disks(&mut transaction, id, disks).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// [`Store::replace_hardware`] for a machine as it was read (`before`): its interfaces and
    /// disks are rewritten only where they differ from `before`'s (commissioning reports them
    /// script by script, and most scripts change neither).
    pub async fn update_hardware(
        &self,
        before: &MachineRecord,
        arch: Option<&str>,
        hardware: &Hardware,
        interfaces: &[Interface],
        disks: &[Disk],
    ) -> Result<(), StoreError> {
        let (id, name) = (before.id, before.name.as_str());
        let mut transaction = self.begin_write().await?;
        if !write_hardware(&mut transaction, id, arch, hardware).await? {
            return Err(StoreError::UnknownMachine(name.to_string()));
        }
        if interfaces != before.interfaces.as_slice() {
            replace_interfaces(&mut transaction, id, name, interfaces).await?;
        }
        if disks != before.disks.as_slice() {
            replace_disks(&mut transaction, id, disks).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Sets what the fleet file says of a machine: power driver, tags, and the image to deploy
    /// (`None` keeps the image recorded, which may be the one deployed).
    pub async fn update_config(
        &self,
        name: &str,
        power_type: &str,
        power_params: &serde_json::Value,
        tags: &[String],
        image: Option<&str>,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE machines SET power_type = $1, power_params = $2, tags = $3, image = COALESCE($4, image), \
                 generation = generation + 1, updated_at = $5 \
             WHERE name = $6",
        )
        .bind(power_type)
        .bind(json_text(power_params))
        .bind(json_text(tags))
        .bind(image)
        .bind(now_ms())
        .bind(name)
        .execute(&self.pool)
        .await?;
        require_one_row(result.rows_affected(), name)
    }
}

/// A change of a machine's stored power.
struct PowerChange<'a> {
    name: &'a str,
    before: PowerState,
    after: PowerState,
    /// Only if the machine is still at this generation (else only if its power is `before`).
    generation: Option<i64>,
    actor: &'a str,
    reason: Option<&'a str>,
}

/// Writes the change and its `power` event; `false` (nothing written) if the machine changed
/// since it was read.
async fn write_power_change(
    connection: &mut AnyConnection,
    change: &PowerChange<'_>,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let guard = if change.generation.is_some() {
        "AND generation = $5"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE machines SET power = $1, generation = generation + 1, updated_at = $2 \
         WHERE name = $3 AND power = $4 {guard}"
    );
    let mut query = sqlx::query(&sql)
        .bind(change.after.as_str())
        .bind(now)
        .bind(change.name)
        .bind(change.before.as_str());
    if let Some(generation) = change.generation {
        query = query.bind(generation);
    }
    if query.execute(&mut *connection).await?.rows_affected() == 0 {
        return Ok(false);
    }
    let event = NewEvent {
        machine: Some(change.name.to_string()),
        kind: "power".into(),
        actor: change.actor.into(),
        action: None,
        from_status: None,
        to_status: None,
        reason: change.reason.map(str::to_string),
        detail: json!({ "from": change.before, "to": change.after }),
    };
    insert_event(connection, &event, now).await?;
    Ok(true)
}

fn require_one_row(rows_affected: u64, name: &str) -> Result<(), StoreError> {
    if rows_affected == 0 {
        return Err(StoreError::UnknownMachine(name.to_string()));
    }
    Ok(())
}

/// Inserts a machine, its interfaces and its `created` event; returns its id.
pub(crate) async fn insert_new_machine(
    connection: &mut AnyConnection,
    new: &NewMachine,
    actor: &str,
    now: i64,
) -> Result<i64, StoreError> {
    let name = new.name.as_str();
    let mut lifecycle =
        Lifecycle::created(new.status).map_err(|source| StoreError::InvalidInitialStatus {
            name: name.to_string(),
            source,
        })?;
    if new.status == Status::Deployed {
        lifecycle.deployed_os = new.deployed_os.clone();
    }
    if machine_id(connection, name).await?.is_some() {
        return Err(StoreError::DuplicateName(name.to_string()));
    }
    check_macs_free(connection, name, None, &new.macs).await?;
    let row = sqlx::query(
        "INSERT INTO machines (name, status, previous_status, locked, power, owner, commissioned, deployed_os, \
             generation, status_since, arch, power_type, power_params, bmc_address, image, tags, facts, \
             created_at, updated_at, boot_mac) \
         VALUES ($1, $2, NULL, 0, $3, NULL, 0, $4, 1, $5, $6, $7, $8, $9, $10, $11, '{}', $5, $5, $12) \
         RETURNING id",
    )
    .bind(name)
    .bind(lifecycle.status.as_str())
    .bind(lifecycle.power.as_str())
    .bind(lifecycle.deployed_os.as_deref())
    .bind(now)
    .bind(new.arch.as_deref())
    .bind(new.power_type.as_str())
    .bind(json_text(&new.power_params))
    .bind(new.bmc_address.as_deref())
    .bind(new.image.as_deref())
    .bind(json_text(&new.tags))
    .bind(new.macs.first().map(|mac| mac.to_string()))
    .fetch_one(&mut *connection)
    .await
    .map_err(|error| conflict_if_unique_violation(error, name))?;
    let id: i64 = get(&row, "id")?;
    for (index, mac) in new.macs.iter().enumerate() {
        // Interface names are placeholders until commissioning reports the real ones.
        let interface = Interface {
            name: format!("eth{index}"),
            mac: *mac,
            link_up: None,
            speed_mbps: None,
            driver: None,
        };
        insert_interface(connection, id, &interface, name).await?;
    }
    let event = NewEvent {
        machine: Some(name.to_string()),
        kind: "created".into(),
        actor: actor.into(),
        action: None,
        from_status: None,
        to_status: Some(lifecycle.status),
        reason: None,
        detail: json!({ "macs": new.macs, "power_type": new.power_type }),
    };
    insert_event(connection, &event, now).await?;
    Ok(id)
}

/// Writes the machine's hardware columns (a new generation); false when there is no machine `id`.
async fn write_hardware(
    connection: &mut AnyConnection,
    id: i64,
    arch: Option<&str>,
    hardware: &Hardware,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE machines SET arch = COALESCE($1, arch), cpus = $2, cpu_model = $3, cpu_speed_mhz = $4, \
             memory_mib = $5, facts = $6, firmware = $7, generation = generation + 1, updated_at = $8 \
         WHERE id = $9",
    )
    .bind(arch)
    .bind(hardware.cpus)
    .bind(hardware.cpu_model.as_deref())
    .bind(hardware.cpu_speed_mhz)
    .bind(hardware.memory_mib)
    .bind(json_text(&hardware.facts))
    .bind(Firmware::from_facts(&hardware.facts).map(Firmware::as_str))
    .bind(now_ms())
    .bind(id)
    .execute(&mut *connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Replaces the machine's interfaces; refused (`DuplicateMac`) if one's MAC is another machine's.
async fn replace_interfaces(
    connection: &mut AnyConnection,
    id: i64,
    name: &str,
    interfaces: &[Interface],
) -> Result<(), StoreError> {
    let macs: Vec<MacAddr> = interfaces.iter().map(|interface| interface.mac).collect();
    check_macs_free(connection, name, Some(id), &macs).await?;
    sqlx::query("DELETE FROM interfaces WHERE machine_id = $1")
        .bind(id)
        .execute(&mut *connection)
        .await?;
    for interface in interfaces {
        insert_interface(connection, id, interface, name).await?;
    }
    Ok(())
}

async fn replace_disks(
    connection: &mut AnyConnection,
    id: i64,
    disks: &[Disk],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM disks WHERE machine_id = $1")
        .bind(id)
        .execute(&mut *connection)
        .await?;
    for disk in disks {
        insert_disk(connection, id, disk).await?;
    }
    Ok(())
}

/// On PostgreSQL another controller may insert the same name or MAC between our check and our
/// INSERT; the UNIQUE constraint stops it. Reported as a conflict: retrying gives the precise error.
fn conflict_if_unique_violation(error: sqlx::Error, name: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(database_error) if database_error.is_unique_violation() => {
            StoreError::Conflict(name.to_string())
        }
        _ => StoreError::from(error),
    }
}

/// Fails with `DuplicateMac` if a MAC is listed twice or belongs to another machine than
/// `own_id`. Checked before inserting so that the error names the owner; the UNIQUE constraint
/// still stops a concurrent writer on PostgreSQL.
async fn check_macs_free(
    connection: &mut AnyConnection,
    name: &str,
    own_id: Option<i64>,
    macs: &[MacAddr],
) -> Result<(), StoreError> {
    let mut seen = HashSet::new();
    for mac in macs {
        if !seen.insert(*mac) {
            return Err(StoreError::DuplicateMac {
                mac: *mac,
                owner: name.to_string(),
            });
        }
        let owner = sqlx::query(
            "SELECT m.id, m.name FROM interfaces i JOIN machines m ON m.id = i.machine_id WHERE i.mac = $1",
        )
        .bind(mac.to_string())
        .fetch_optional(&mut *connection)
        .await?;
        if let Some(row) = owner {
            if Some(get::<i64>(&row, "id")?) != own_id {
                return Err(StoreError::DuplicateMac {
                    mac: *mac,
                    owner: get(&row, "name")?,
                });
            }
        }
    }
    Ok(())
}

/// `machine` names the machine in a conflict error.
async fn insert_interface(
    connection: &mut AnyConnection,
    machine_id: i64,
    interface: &Interface,
    machine: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO interfaces (machine_id, name, mac, link_up, speed_mbps, driver) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(machine_id)
    .bind(interface.name.as_str())
    .bind(interface.mac.to_string())
    .bind(interface.link_up.map(bool_int))
    .bind(interface.speed_mbps)
    .bind(interface.driver.as_deref())
    .execute(&mut *connection)
    .await
    .map_err(|error| conflict_if_unique_violation(error, machine))?;
    Ok(())
}

async fn insert_disk(
    connection: &mut AnyConnection,
    machine_id: i64,
    disk: &Disk,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO disks (machine_id, name, model, serial, id_path, size_bytes, block_size, rotational, bus) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(machine_id)
    .bind(disk.name.as_str())
    .bind(disk.model.as_deref())
    .bind(disk.serial.as_deref())
    .bind(disk.id_path.as_deref())
    .bind(disk.size_bytes)
    .bind(disk.block_size)
    .bind(disk.rotational.map(bool_int))
    .bind(disk.bus.as_deref())
    .execute(&mut *connection)
    .await?;
    Ok(())
}

pub(crate) async fn machine_id(
    connection: &mut AnyConnection,
    name: &str,
) -> Result<Option<i64>, StoreError> {
    let row = sqlx::query("SELECT id FROM machines WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *connection)
        .await?;
    row.map(|row| get(&row, "id")).transpose()
}

pub(crate) async fn load_machine_by_id(
    connection: &mut AnyConnection,
    id: i64,
) -> Result<MachineRecord, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {MACHINE_COLUMNS} FROM machines WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *connection)
    .await?
    .ok_or_else(|| StoreError::Corrupt(format!("machine id {id} vanished inside a transaction")))?;
    let mut record = machine_from_row(&row)?;
    let interface_rows = sqlx::query(
        "SELECT name, mac, link_up, speed_mbps, driver FROM interfaces WHERE machine_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *connection)
    .await?;
    record.interfaces = interface_rows
        .iter()
        .map(interface_from_row)
        .collect::<Result<_, _>>()?;
    let disk_rows = sqlx::query(
        "SELECT name, model, serial, id_path, bus, size_bytes, block_size, rotational FROM disks \
         WHERE machine_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *connection)
    .await?;
    record.disks = disk_rows
        .iter()
        .map(disk_from_row)
        .collect::<Result<_, _>>()?;
    Ok(record)
}

/// The facts planning reads, from the `firmware` column: `{"arch": {"firmware": "uefi"}}`, or
/// null when commissioning did not report it.
fn lean_facts(firmware: Option<String>) -> serde_json::Value {
    match firmware {
        Some(firmware) => serde_json::json!({ "arch": { "firmware": firmware } }),
        None => serde_json::Value::Null,
    }
}

fn machine_from_row(row: &AnyRow) -> Result<MachineRecord, StoreError> {
    machine_from_columns(row, HardwareDetail::Full)
}

/// How much of the hardware a query selected.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum HardwareDetail {
    /// Every machine column.
    Full,
    /// No `cpu_model` and `facts` (parsing 100k facts costs time): the facts are reduced to
    /// the `firmware` column (`{"arch": {"firmware": ...}}`), all that planning reads of them.
    Lean,
}

pub(super) fn machine_from_columns(
    row: &AnyRow,
    detail: HardwareDetail,
) -> Result<MachineRecord, StoreError> {
    let full = detail == HardwareDetail::Full;
    let power_type: String = get(row, "power_type")?;
    let lifecycle = Lifecycle {
        status: get_status(row, "status")?,
        previous_status: get_opt_parsed(row, "previous_status")?,
        locked: get_bool(row, "locked")?,
        power: get_power(row, "power")?,
        owner: get(row, "owner")?,
        commissioned: get_bool(row, "commissioned")?,
        deployed_os: get(row, "deployed_os")?,
        power_configured: power_type != UNCONFIGURED,
    };
    Ok(MachineRecord {
        id: get(row, "id")?,
        name: get_name(row, "name")?,
        lifecycle,
        generation: get(row, "generation")?,
        status_reason: get(row, "status_reason")?,
        status_since: get(row, "status_since")?,
        last_heard: get(row, "last_heard")?,
        boot_started: get(row, "boot_started")?,
        power_decided: get(row, "power_decided")?,
        boot_mac: get_opt_parsed(row, "boot_mac")?,
        power_intent: match get_opt_parsed::<PowerState>(row, "power_intent")? {
            Some(target) => Some(PowerIntent {
                target,
                passing: get_opt_parsed(row, "power_intent_passing")?,
                why: get::<Option<String>>(row, "power_intent_why")?.unwrap_or_default(),
            }),
            None => None,
        },
        arch: get(row, "arch")?,
        power_type,
        power_params: get_json(row, "power_params")?,
        bmc_address: get(row, "bmc_address")?,
        image: get(row, "image")?,
        tags: get_json(row, "tags")?,
        hardware: Hardware {
            cpus: get(row, "cpus")?,
            cpu_model: if full { get(row, "cpu_model")? } else { None },
            cpu_speed_mhz: get(row, "cpu_speed_mhz")?,
            memory_mib: get(row, "memory_mib")?,
            facts: if full {
                get_json(row, "facts")?
            } else {
                lean_facts(get(row, "firmware")?)
            },
        },
        interfaces: Vec::new(),
        disks: Vec::new(),
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

fn interface_from_row(row: &AnyRow) -> Result<Interface, StoreError> {
    Ok(Interface {
        name: get(row, "name")?,
        mac: get_mac(row, "mac")?,
        link_up: get_opt_bool(row, "link_up")?,
        speed_mbps: get(row, "speed_mbps")?,
        driver: get(row, "driver")?,
    })
}

fn disk_from_row(row: &AnyRow) -> Result<Disk, StoreError> {
    Ok(Disk {
        name: get(row, "name")?,
        model: get(row, "model")?,
        serial: get(row, "serial")?,
        id_path: get(row, "id_path")?,
        bus: get(row, "bus")?,
        size_bytes: get(row, "size_bytes")?,
        block_size: get(row, "block_size")?,
        rotational: get_opt_bool(row, "rotational")?,
    })
}

fn summary_from_row(row: &AnyRow) -> Result<MachineSummary, StoreError> {
    Ok(MachineSummary {
        name: get_name(row, "name")?,
        status: get_status(row, "status")?,
        power: get_power(row, "power")?,
        locked: get_bool(row, "locked")?,
        arch: get(row, "arch")?,
        cpus: get(row, "cpus")?,
        memory_mib: get(row, "memory_mib")?,
        storage_bytes: get(row, "storage_bytes")?,
        owner: get(row, "owner")?,
    })
}

/// One machine of the packed summary list: a JSON array in [`SUMMARY_COLUMNS`]' order.
#[derive(serde::Deserialize)]
struct PackedSummary(
    MachineName,
    Status,
    PowerState,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

impl PackedSummary {
    fn into_summary(self) -> MachineSummary {
        let PackedSummary(
            name,
            status,
            power,
            locked,
            arch,
            cpus,
            memory_mib,
            owner,
            storage_bytes,
        ) = self;
        MachineSummary {
            name,
            status,
            power,
            locked: locked != 0,
            arch,
            cpus,
            memory_mib,
            storage_bytes,
            owner,
        }
    }
}

/// The life-cycle columns to write, with the status bookkeeping already worked out.
struct LifecycleWrite<'a> {
    lifecycle: &'a Lifecycle,
    status_since: i64,
    status_reason: Option<&'a str>,
    /// `None` keeps the image recorded.
    image: Option<&'a str>,
    /// A power command follows: the new generation becomes `power_decided`.
    decides_power: bool,
    /// The command, stored in the power outbox with the decision (JSON of [`PendingPower`]);
    /// `None` with `decides_power` clears an older one (overtaken).
    pending_power: Option<String>,
}

async fn update_lifecycle_guarded(
    connection: &mut AnyConnection,
    machine: &MachineRecord,
    commit: &Commit<'_>,
    now: i64,
) -> Result<(), StoreError> {
    let outcome = commit.outcome;
    // A self-transition (disk_erasing -> disk_erasing) restarts the status too.
    let status_changed =
        !outcome.changes.is_empty() || outcome.after.status != machine.lifecycle.status;
    let written = LifecycleWrite {
        lifecycle: &outcome.after,
        status_since: if status_changed {
            now
        } else {
            machine.status_since
        },
        status_reason: if status_changed {
            commit.reason
        } else {
            machine.status_reason.as_deref()
        },
        image: commit.image,
        decides_power: commit.decides_power,
        pending_power: pending_power(commit)?,
    };
    write_lifecycle_row(connection, machine, &written, now).await
}

/// What a commit that decides power leaves in the outbox: the outcome's command, or the
/// power-off after a failure (a settlement that powers off).
fn pending_power(commit: &Commit<'_>) -> Result<Option<String>, StoreError> {
    if !commit.decides_power {
        return Ok(None);
    }
    let outcome = commit.outcome;
    let pending = PendingPower {
        command: outcome.power.unwrap_or(crate::model::PowerCommand::Off(
            crate::model::PowerOffMode::Hard,
        )),
        follow_up: outcome.follow_up,
        actor: commit.actor.to_string(),
        after_failure: outcome.power.is_none(),
    };
    serde_json::to_string(&pending)
        .map(Some)
        .map_err(|error| StoreError::Corrupt(format!("a pending power command: {error}")))
}

/// The generation-guarded UPDATE: writes only if the row is still at the generation read.
async fn write_lifecycle_row(
    connection: &mut AnyConnection,
    machine: &MachineRecord,
    written: &LifecycleWrite<'_>,
    now: i64,
) -> Result<(), StoreError> {
    let lifecycle = written.lifecycle;
    let result = sqlx::query(
        "UPDATE machines SET status = $1, previous_status = $2, locked = $3, power = $4, owner = $5, \
             commissioned = $6, deployed_os = $7, status_since = $8, status_reason = $9, \
             image = COALESCE($10, image), generation = generation + 1, updated_at = $11, \
             power_decided = CASE WHEN $14 = 1 THEN generation + 1 ELSE power_decided END, \
             power_pending = CASE WHEN $14 = 1 THEN $15 ELSE power_pending END, \
             power_pending_at = CASE WHEN $14 = 1 THEN $11 ELSE power_pending_at END \
         WHERE id = $12 AND generation = $13",
    )
    .bind(lifecycle.status.as_str())
    .bind(status_text(lifecycle.previous_status))
    .bind(bool_int(lifecycle.locked))
    .bind(lifecycle.power.as_str())
    .bind(lifecycle.owner.as_deref())
    .bind(bool_int(lifecycle.commissioned))
    .bind(lifecycle.deployed_os.as_deref())
    .bind(written.status_since)
    .bind(written.status_reason)
    .bind(written.image)
    .bind(now)
    .bind(machine.id)
    .bind(machine.generation)
    .bind(bool_int(written.decides_power))
    .bind(written.pending_power.as_deref())
    .execute(&mut *connection)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::Conflict(machine.name.to_string()));
    }
    Ok(())
}

/// Deletes the machine if it is still at the generation read. Its interfaces, disks, script
/// results and `machine_state` (token, run, erase mode) go with it (ON DELETE CASCADE); its
/// leases are removed; its events stay.
async fn delete_machine_guarded(
    connection: &mut AnyConnection,
    machine: &MachineRecord,
) -> Result<(), StoreError> {
    // Leases first, while the interfaces still say which MACs were the machine's. Undone with
    // the rest if the guard below fails.
    sqlx::query(
        "DELETE FROM leases WHERE machine = $1 OR mac IN (SELECT mac FROM interfaces WHERE machine_id = $2)",
    )
    .bind(machine.name.as_str())
    .bind(machine.id)
    .execute(&mut *connection)
    .await?;
    let result = sqlx::query("DELETE FROM machines WHERE id = $1 AND generation = $2")
        .bind(machine.id)
        .bind(machine.generation)
        .execute(&mut *connection)
        .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::Conflict(machine.name.to_string()));
    }
    Ok(())
}

/// The events a commit records, in order: the action, each status change, the power command,
/// the deletion.
fn commit_events(machine: &MachineRecord, commit: &Commit<'_>) -> Vec<NewEvent> {
    let outcome = commit.outcome;
    let action_name = commit.action.map(|action| action.as_str().to_string());
    let event = |kind: &str| NewEvent {
        machine: Some(machine.name.to_string()),
        kind: kind.to_string(),
        actor: commit.actor.to_string(),
        action: action_name.clone(),
        from_status: None,
        to_status: None,
        reason: commit.reason.map(str::to_string),
        detail: json!({}),
    };
    let mut events = Vec::new();
    if commit.action.is_some() {
        events.push(NewEvent {
            from_status: Some(machine.lifecycle.status),
            to_status: Some(outcome.after.status),
            detail: json!({ "notes": outcome.notes, "power": outcome.power }),
            ..event("action")
        });
    }
    for change in &outcome.changes {
        events.push(NewEvent {
            from_status: Some(change.from),
            to_status: Some(change.to),
            ..event("status")
        });
    }
    if let Some(command) = outcome.power {
        // The command is only asked for here: the state it leads to is recorded by its own
        // power event once the driver has answered (or failed).
        events.push(NewEvent {
            detail: json!({ "command": command, "from": machine.lifecycle.power, "requested": true }),
            ..event("power")
        });
    }
    if outcome.delete {
        events.push(NewEvent {
            from_status: Some(machine.lifecycle.status),
            ..event("deleted")
        });
    }
    events
}
