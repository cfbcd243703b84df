//! DHCP leases, one per MAC, each IP leased at most once.

use super::codec::{get, get_mac, get_parsed};
use super::{Backend, Lease, Store, StoreError};
use crate::model::MacAddr;
use sqlx::any::AnyRow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Rows per statement of a lease batch (8 bound values each, well under SQLite's and
/// PostgreSQL's limits).
const ROWS_PER_STATEMENT: usize = 100;

/// A lease of a batch that the database refused: its address is held by another MAC whose
/// lease has not expired (`holder`, as stored; `None` if it could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLease {
    pub lease: Lease,
    pub holder: Option<Lease>,
}

/// Leases other controllers wrote since a read, and where the next read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedLeases {
    pub leases: Vec<Lease>,
    /// The database's clock when they were read (Unix ms).
    pub read_at: i64,
}

const LEASE_COLUMNS: &str = "mac, ip, subnet, hostname, machine, expires_at";

impl Store {
    /// Inserts or replaces the lease of `lease.mac`. Fails with [`StoreError::DuplicateIp`] if
    /// the IP is leased to another MAC (the caller frees expired leases first).
    pub async fn upsert_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut transaction = self.begin_write().await?;
        let holder = sqlx::query("SELECT mac FROM leases WHERE ip = $1 AND mac <> $2")
            .bind(lease.ip.to_string())
            .bind(lease.mac.to_string())
            .fetch_optional(&mut *transaction)
            .await?;
        if let Some(row) = holder {
            return Err(StoreError::DuplicateIp {
                ip: lease.ip,
                holder: get_mac(&row, "mac")?,
            });
        }
        sqlx::query(
            "INSERT INTO leases (mac, ip, subnet, hostname, machine, expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (mac) DO UPDATE SET ip = excluded.ip, subnet = excluded.subnet, \
                 hostname = excluded.hostname, machine = excluded.machine, expires_at = excluded.expires_at",
        )
        .bind(lease.mac.to_string())
        .bind(lease.ip.to_string())
        .bind(lease.subnet.as_str())
        .bind(lease.hostname.as_deref())
        .bind(lease.machine.as_deref())
        .bind(lease.expires_at)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Writes a batch of lease changes of `controller` in one transaction: `released` MACs lose
    /// their rows, each of `leases` is stored for its MAC unless its address is held by another
    /// MAC whose lease has not expired by the database's clock. The address's UNIQUE constraint
    /// and the upsert's condition decide, so controllers writing at once cannot both win an
    /// address, and no batch deletes or overwrites another MAC's live lease. Returns the leases
    /// refused (the others are committed). A MAC's own row on another address is replaced.
    pub async fn write_lease_batch(
        &self,
        controller: &str,
        leases: &[Lease],
        released: &[MacAddr],
    ) -> Result<Vec<RefusedLease>, StoreError> {
        if leases.is_empty() && released.is_empty() {
            return Ok(Vec::new());
        }
        let mut transaction = self.begin_write().await?;
        for chunk in released.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM leases WHERE mac IN ({})",
                placeholders(self.backend(), 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for mac in chunk {
                query = query.bind(mac.to_string());
            }
            query.execute(&mut *transaction).await?;
        }
        // In address order: two controllers' batches lock contested rows in the same order, so
        // they wait for each other instead of deadlocking.
        let mut in_order: Vec<&Lease> = leases.iter().collect();
        in_order.sort_by_key(|lease| lease.ip);
        let mut refused = Vec::new();
        for chunk in in_order.chunks(ROWS_PER_STATEMENT) {
            self.delete_own_other_rows(&mut transaction, chunk).await?;
            let won = self
                .upsert_unless_held(&mut transaction, controller, chunk)
                .await?;
            let lost: Vec<&Lease> = chunk
                .iter()
                .copied()
                .filter(|lease| !won.contains(&lease.mac))
                .collect();
            if !lost.is_empty() {
                refused.extend(self.holders_of(&mut transaction, &lost).await?);
            }
        }
        transaction.commit().await?;
        Ok(refused)
    }

    /// Deletes the rows of the chunk's MACs that hold another address than the one written
    /// now: a MAC has one lease, and its old row would break the MAC's uniqueness.
    async fn delete_own_other_rows(
        &self,
        transaction: &mut sqlx::Transaction<'static, sqlx::Any>,
        chunk: &[&Lease],
    ) -> Result<(), StoreError> {
        let count = chunk.len();
        let sql = format!(
            "DELETE FROM leases WHERE mac IN ({}) AND mac || ' ' || ip NOT IN ({})",
            placeholders(self.backend(), 1, count),
            placeholders(self.backend(), count + 1, count)
        );
        let mut query = sqlx::query(&sql);
        for lease in chunk {
            query = query.bind(lease.mac.to_string());
        }
        for lease in chunk {
            query = query.bind(format!("{} {}", lease.mac, lease.ip));
        }
        query.execute(&mut **transaction).await?;
        Ok(())
    }

    /// Inserts the chunk's leases; an address already in a row is taken over only from the
    /// same MAC or from an expired lease. Returns the MACs whose lease was written.
    async fn upsert_unless_held(
        &self,
        transaction: &mut sqlx::Transaction<'static, sqlx::Any>,
        controller: &str,
        chunk: &[&Lease],
    ) -> Result<HashSet<MacAddr>, StoreError> {
        let now = self.database_now();
        let rows: Vec<String> = (0..chunk.len())
            .map(|row| format!("({}, {now})", placeholders(self.backend(), row * 7 + 1, 7)))
            .collect();
        let sql = format!(
            "INSERT INTO leases (mac, ip, subnet, hostname, machine, expires_at, controller, updated_at) \
             VALUES {} \
             ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac, subnet = excluded.subnet, \
                 hostname = excluded.hostname, machine = excluded.machine, \
                 expires_at = excluded.expires_at, controller = excluded.controller, \
                 updated_at = excluded.updated_at \
             WHERE leases.mac = excluded.mac OR leases.expires_at <= {now} \
             RETURNING mac",
            rows.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for lease in chunk {
            query = query
                .bind(lease.mac.to_string())
                .bind(lease.ip.to_string())
                .bind(lease.subnet.clone())
                .bind(lease.hostname.clone())
                .bind(lease.machine.clone())
                .bind(lease.expires_at)
                .bind(controller.to_string());
        }
        let written = query.fetch_all(&mut **transaction).await?;
        written.iter().map(|row| get_mac(row, "mac")).collect()
    }

    /// The refused leases with the rows holding their addresses.
    async fn holders_of(
        &self,
        transaction: &mut sqlx::Transaction<'static, sqlx::Any>,
        lost: &[&Lease],
    ) -> Result<Vec<RefusedLease>, StoreError> {
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE ip IN ({})",
            placeholders(self.backend(), 1, lost.len())
        );
        let mut query = sqlx::query(&sql);
        for lease in lost {
            query = query.bind(lease.ip.to_string());
        }
        let rows = query.fetch_all(&mut **transaction).await?;
        let holders = rows
            .iter()
            .map(lease_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(lost
            .iter()
            .map(|lease| RefusedLease {
                lease: (*lease).clone(),
                holder: holders.iter().find(|held| held.ip == lease.ip).cloned(),
            })
            .collect())
    }

    /// The leases controllers other than `controller` wrote at or after `since` (the database's
    /// clock, Unix ms), and the database's clock before the read.
    pub async fn leases_changed_since(
        &self,
        controller: &str,
        since: i64,
    ) -> Result<ChangedLeases, StoreError> {
        let read_at = self.database_clock_ms().await?;
        let rows = sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE updated_at >= $1 AND controller <> $2"
        ))
        .bind(since)
        .bind(controller)
        .fetch_all(&self.pool)
        .await?;
        let leases = rows
            .iter()
            .map(lease_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ChangedLeases { leases, read_at })
    }

    /// The database's clock (Unix ms): what lease expiry and `updated_at` are judged by.
    pub async fn database_clock_ms(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(&format!("SELECT {} AS now", self.database_now()))
            .fetch_one(&self.pool)
            .await?;
        get(&row, "now")
    }

    pub async fn lease_by_mac(&self, mac: MacAddr) -> Result<Option<Lease>, StoreError> {
        self.lease_where("mac", mac.to_string()).await
    }

    pub async fn lease_by_ip(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        self.lease_where("ip", ip.to_string()).await
    }

    /// Whether there was a lease to delete.
    pub async fn delete_lease(&self, mac: MacAddr) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM leases WHERE mac = $1")
            .bind(mac.to_string())
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Every lease, by IP.
    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {LEASE_COLUMNS} FROM leases"))
            .fetch_all(&self.pool)
            .await?;
        let mut leases = rows
            .iter()
            .map(lease_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // By address, not by text ("10.0.0.10" sorts before "10.0.0.9" as text).
        leases.sort_by_key(|lease| lease.ip);
        Ok(leases)
    }

    /// `column` is one of our own column names, never input.
    async fn lease_where(
        &self,
        column: &'static str,
        value: String,
    ) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE {column} = $1"
        ))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(lease_from_row).transpose()
    }
}

/// `count` placeholders numbered from `first`: `$N` for PostgreSQL; plain `?` for SQLite, where
/// numbered ones make binding quadratic (SQLite looks each name up in a list: with hundreds of
/// parameters that was a quarter of the DHCP server's CPU in a flood).
fn placeholders(backend: Backend, first: usize, count: usize) -> String {
    (first..first + count)
        .map(|index| match backend {
            Backend::Sqlite => "?".to_string(),
            Backend::Postgres => format!("${index}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn lease_from_row(row: &AnyRow) -> Result<Lease, StoreError> {
    Ok(Lease {
        mac: get_mac(row, "mac")?,
        ip: get_parsed(row, "ip")?,
        subnet: get(row, "subnet")?,
        hostname: get(row, "hostname")?,
        machine: get(row, "machine")?,
        expires_at: get(row, "expires_at")?,
    })
}
