//! Held addresses: the static addresses applied plans gave machine interfaces. Once committed an
//! address sticks to its machine until the machine is deleted (its rows go with it); two machines
//! never hold one address on a subnet (UNIQUE (subnet, address), which also stops a second
//! controller applying at the same time on PostgreSQL).

use super::codec::{get, get_opt_parsed, get_parsed};
use super::events::insert_event;
use super::machines::machine_id;
use super::{NewEvent, Store, StoreError};
use crate::model::MacAddr;
use crate::plan::{Allocation, HeldAddress};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// An address a machine holds, as the store keeps it (`fleet machine show`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredAddress {
    pub machine: String,
    pub interface: String,
    pub subnet: String,
    pub ip: IpAddr,
    /// When it was committed, Unix ms.
    pub created_at: i64,
}

/// An address written by [`Store::commit_addresses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedAddress {
    pub interface: String,
    pub subnet: String,
    pub ip: IpAddr,
    /// The address the interface held before on that subnet (an explicit `ip` the operator
    /// changed); `None` for a new one.
    pub previous: Option<IpAddr>,
}

/// A held address with the MACs DHCP may give it to (`boot::dhcp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldAddressMacs {
    pub machine: String,
    pub interface: String,
    pub subnet: String,
    pub ip: IpAddr,
    /// The MAC of the machine's interface of that name (commissioning's names, or `eth0`, `eth1`
    /// ... for a machine created from a fleet file's `macs`), if it has one.
    pub interface_mac: Option<MacAddr>,
    /// The MAC the machine netboots from (its first interface's for records older than that).
    pub boot_mac: Option<MacAddr>,
}

const HELD_COLUMNS: &str = "m.name AS machine, h.interface, h.subnet, h.address, h.created_at";

impl Store {
    /// Every held address, by machine name, then interface and subnet (the planner's snapshot).
    pub async fn held_addresses(&self) -> Result<Vec<HeldAddress>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {HELD_COLUMNS} FROM held_addresses h JOIN machines m ON m.id = h.machine_id \
             ORDER BY m.name, h.interface, h.subnet"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let stored = stored_from_row(row)?;
                Ok(HeldAddress {
                    machine: stored.machine,
                    interface: stored.interface,
                    subnet: stored.subnet,
                    ip: stored.ip,
                })
            })
            .collect()
    }

    /// The addresses `machine` holds, by interface and subnet.
    pub async fn machine_addresses(&self, machine: &str) -> Result<Vec<StoredAddress>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {HELD_COLUMNS} FROM held_addresses h JOIN machines m ON m.id = h.machine_id \
             WHERE m.name = $1 ORDER BY h.interface, h.subnet"
        ))
        .bind(machine)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_from_row).collect()
    }

    /// Every held address with its machine's MACs, for the DHCP server's fixed addresses.
    pub async fn held_address_macs(&self) -> Result<Vec<HeldAddressMacs>, StoreError> {
        // The boot MAC, else the machine's first interface (records older than `boot_mac`).
        let rows = sqlx::query(
            "SELECT m.name AS machine, h.interface, h.subnet, h.address, \
                 (SELECT i.mac FROM interfaces i WHERE i.machine_id = h.machine_id \
                  AND i.name = h.interface ORDER BY i.id LIMIT 1) AS interface_mac, \
                 COALESCE(m.boot_mac, (SELECT i.mac FROM interfaces i WHERE i.machine_id = m.id \
                  ORDER BY i.id LIMIT 1)) AS boot_mac \
             FROM held_addresses h JOIN machines m ON m.id = h.machine_id \
             ORDER BY m.name, h.interface, h.subnet",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(HeldAddressMacs {
                    machine: get(row, "machine")?,
                    interface: get(row, "interface")?,
                    subnet: get(row, "subnet")?,
                    ip: get_parsed(row, "address")?,
                    interface_mac: optional_mac(row, "interface_mac")?,
                    boot_mac: optional_mac(row, "boot_mac")?,
                })
            })
            .collect()
    }

    /// Commits what a plan decided for `machine`'s addresses, in one transaction: each allocation
    /// the machine does not hold yet is inserted (or replaces what the interface held on that
    /// subnet: an explicit `ip` the operator changed), with an `address` event. An address another
    /// machine holds (one that took it after the plan was made) fails the whole commit with
    /// [`StoreError::AddressTaken`], and nothing is written. Allocations the machine already holds
    /// write nothing: an apply that changes no address does not even take the write lock.
    pub async fn commit_addresses(
        &self,
        machine: &str,
        allocations: &[Allocation],
        actor: &str,
        apply: Option<&str>,
    ) -> Result<Vec<CommittedAddress>, StoreError> {
        let held = self.machine_addresses(machine).await?;
        if allocations
            .iter()
            .all(|allocation| holds(&held, allocation))
        {
            return Ok(Vec::new());
        }
        let mut transaction = self.begin_write().await?;
        let id = machine_id(&mut transaction, machine)
            .await?
            .ok_or_else(|| StoreError::UnknownMachine(machine.to_string()))?;
        let held = held_by_interface(&mut transaction, id).await?;
        let now = super::now_ms();
        let mut committed = Vec::new();
        for allocation in allocations {
            let key = (allocation.interface.clone(), allocation.subnet.clone());
            let previous = held.get(&key).copied();
            if previous == Some(allocation.ip) {
                continue;
            }
            if let Some(taken) = holder_of(&mut transaction, allocation, Some(id)).await? {
                return Err(taken);
            }
            match write_address(&mut transaction, id, allocation, now).await {
                Ok(()) => {}
                Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                    // A concurrent writer (PostgreSQL) inserted it after our check; this
                    // transaction is dead, so name the holder from outside it.
                    drop(transaction);
                    return Err(self.taken_meanwhile(machine, allocation).await);
                }
                Err(error) => return Err(error.into()),
            }
            let event = address_event(machine, actor, allocation, previous, apply);
            insert_event(&mut transaction, &event, now).await?;
            committed.push(CommittedAddress {
                interface: allocation.interface.clone(),
                subnet: allocation.subnet.clone(),
                ip: allocation.ip,
                previous,
            });
        }
        transaction.commit().await?;
        Ok(committed)
    }

    async fn taken_meanwhile(&self, machine: &str, allocation: &Allocation) -> StoreError {
        let Ok(mut connection) = self.pool.acquire().await else {
            return StoreError::Conflict(machine.to_string());
        };
        match holder_of(&mut connection, allocation, None).await {
            Ok(Some(taken)) => taken,
            Ok(None) | Err(_) => StoreError::Conflict(machine.to_string()),
        }
    }
}

fn holds(held: &[StoredAddress], allocation: &Allocation) -> bool {
    held.iter().any(|address| {
        address.interface == allocation.interface
            && address.subnet == allocation.subnet
            && address.ip == allocation.ip
    })
}

/// What machine `id` holds, by (interface, subnet).
async fn held_by_interface(
    connection: &mut AnyConnection,
    id: i64,
) -> Result<BTreeMap<(String, String), IpAddr>, StoreError> {
    let rows =
        sqlx::query("SELECT interface, subnet, address FROM held_addresses WHERE machine_id = $1")
            .bind(id)
            .fetch_all(&mut *connection)
            .await?;
    rows.iter()
        .map(|row| {
            let key = (get(row, "interface")?, get(row, "subnet")?);
            Ok((key, get_parsed(row, "address")?))
        })
        .collect()
}

/// [`StoreError::AddressTaken`] if a machine other than `except` holds the allocation's address.
async fn holder_of(
    connection: &mut AnyConnection,
    allocation: &Allocation,
    except: Option<i64>,
) -> Result<Option<StoreError>, StoreError> {
    let row = sqlx::query(
        "SELECT m.id, m.name, h.interface FROM held_addresses h JOIN machines m ON m.id = h.machine_id \
         WHERE h.subnet = $1 AND h.address = $2",
    )
    .bind(allocation.subnet.as_str())
    .bind(allocation.ip.to_string())
    .fetch_optional(&mut *connection)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if Some(get::<i64>(&row, "id")?) == except {
        return Ok(None);
    }
    Ok(Some(StoreError::AddressTaken {
        ip: allocation.ip,
        subnet: allocation.subnet.clone(),
        holder: get(&row, "name")?,
        interface: get(&row, "interface")?,
    }))
}

/// Writes the allocation for machine `id`: whatever the interface held on that subnet, and the
/// address if another of the machine's own interfaces held it, make way first.
async fn write_address(
    connection: &mut AnyConnection,
    id: i64,
    allocation: &Allocation,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM held_addresses WHERE machine_id = $1 AND \
         ((interface = $2 AND subnet = $3) OR (subnet = $3 AND address = $4))",
    )
    .bind(id)
    .bind(allocation.interface.as_str())
    .bind(allocation.subnet.as_str())
    .bind(allocation.ip.to_string())
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "INSERT INTO held_addresses (machine_id, interface, subnet, address, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(allocation.interface.as_str())
    .bind(allocation.subnet.as_str())
    .bind(allocation.ip.to_string())
    .bind(now)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

fn address_event(
    machine: &str,
    actor: &str,
    allocation: &Allocation,
    previous: Option<IpAddr>,
    apply: Option<&str>,
) -> NewEvent {
    let (action, reason) = match previous {
        None => (
            "held",
            format!(
                "holds {} on subnet {} (interface {}) from now on",
                allocation.ip, allocation.subnet, allocation.interface
            ),
        ),
        Some(previous) => (
            "changed",
            format!(
                "holds {} on subnet {} (interface {}) instead of {previous}",
                allocation.ip, allocation.subnet, allocation.interface
            ),
        ),
    };
    NewEvent {
        machine: Some(machine.to_string()),
        kind: "address".into(),
        actor: actor.to_string(),
        action: Some(action.into()),
        from_status: None,
        to_status: None,
        reason: Some(reason),
        detail: json!({
            "interface": allocation.interface,
            "subnet": allocation.subnet,
            "ip": allocation.ip.to_string(),
            "origin": allocation.origin,
            "previous": previous.map(|ip| ip.to_string()),
            "apply": apply,
        }),
    }
}

/// The `address released` events of a machine about to be deleted (its rows go with it, ON
/// DELETE CASCADE): read inside the deleting transaction, before the delete.
pub(crate) async fn release_events(
    connection: &mut AnyConnection,
    id: i64,
    machine: &str,
    actor: &str,
) -> Result<Vec<NewEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT interface, subnet, address FROM held_addresses WHERE machine_id = $1 \
         ORDER BY interface, subnet",
    )
    .bind(id)
    .fetch_all(&mut *connection)
    .await?;
    rows.iter()
        .map(|row| {
            let (interface, subnet, address): (String, String, String) =
                (get(row, "interface")?, get(row, "subnet")?, get(row, "address")?);
            Ok(NewEvent {
                machine: Some(machine.to_string()),
                kind: "address".into(),
                actor: actor.to_string(),
                action: Some("released".into()),
                from_status: None,
                to_status: None,
                reason: Some(format!(
                    "{address} on subnet {subnet} (interface {interface}) released: the machine is deleted"
                )),
                detail: json!({ "interface": interface, "subnet": subnet, "ip": address }),
            })
        })
        .collect()
}

fn stored_from_row(row: &AnyRow) -> Result<StoredAddress, StoreError> {
    Ok(StoredAddress {
        machine: get(row, "machine")?,
        interface: get(row, "interface")?,
        subnet: get(row, "subnet")?,
        ip: get_parsed(row, "address")?,
        created_at: get(row, "created_at")?,
    })
}

fn optional_mac(row: &AnyRow, column: &str) -> Result<Option<MacAddr>, StoreError> {
    get_opt_parsed(row, column)
}
