//! DHCP leases, one per MAC, each IP leased at most once.

use super::codec::{get, get_mac, get_parsed};
use super::{Lease, Store, StoreError};
use crate::model::MacAddr;
use sqlx::any::AnyRow;
use std::net::Ipv4Addr;

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
