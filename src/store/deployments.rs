//! The deployment configuration a plan's configure step stored per machine (`deployment_configs`,
//! migration 0010): the storage layout and network configuration as JSON with their digests, and
//! their origin. The planner compares the digests; the deployment reads the configuration.

use super::codec::get;
use super::{now_ms, Store, StoreError};
use serde_json::Value;

/// One machine's stored deployment configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeployment {
    pub layout: Option<Value>,
    pub layout_digest: Option<String>,
    pub network: Option<Value>,
    pub network_digest: Option<String>,
    /// `fleet file`, or `clone of NAME`.
    pub origin: String,
}

/// What the planner reads of every machine's: the digests and the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentDigests {
    pub machine: String,
    pub layout_digest: Option<String>,
    pub network_digest: Option<String>,
    pub origin: String,
}

impl Store {
    /// Stores (or replaces) the machine's deployment configuration.
    pub async fn store_deployment(
        &self,
        name: &str,
        deployment: &StoredDeployment,
    ) -> Result<(), StoreError> {
        let text = |value: &Option<Value>| value.as_ref().map(Value::to_string);
        let result = sqlx::query(
            "INSERT INTO deployment_configs \
                 (machine_id, layout, layout_digest, network, network_digest, origin, stored_at) \
             SELECT id, $2, $3, $4, $5, $6, $7 FROM machines WHERE name = $1 \
             ON CONFLICT (machine_id) DO UPDATE SET layout = excluded.layout, \
                 layout_digest = excluded.layout_digest, network = excluded.network, \
                 network_digest = excluded.network_digest, origin = excluded.origin, \
                 stored_at = excluded.stored_at",
        )
        .bind(name)
        .bind(text(&deployment.layout))
        .bind(deployment.layout_digest.as_deref())
        .bind(text(&deployment.network))
        .bind(deployment.network_digest.as_deref())
        .bind(deployment.origin.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::UnknownMachine(name.to_string()));
        }
        Ok(())
    }

    /// The machine's stored deployment configuration, if a configure step stored one.
    pub async fn deployment(&self, name: &str) -> Result<Option<StoredDeployment>, StoreError> {
        let row = sqlx::query(
            "SELECT d.layout, d.layout_digest, d.network, d.network_digest, d.origin \
             FROM deployment_configs d JOIN machines m ON m.id = d.machine_id WHERE m.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let json = |column: &str| -> Result<Option<Value>, StoreError> {
            let text: Option<String> = get(&row, column)?;
            text.map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|error| StoreError::Corrupt(format!("column `{column}`: {error}")))
        };
        Ok(Some(StoredDeployment {
            layout: json("layout")?,
            layout_digest: get(&row, "layout_digest")?,
            network: json("network")?,
            network_digest: get(&row, "network_digest")?,
            origin: get(&row, "origin")?,
        }))
    }

    /// Every machine's stored digests and origin, by machine name.
    pub async fn deployment_digests(&self) -> Result<Vec<DeploymentDigests>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.name, d.layout_digest, d.network_digest, d.origin \
             FROM deployment_configs d JOIN machines m ON m.id = d.machine_id ORDER BY m.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeploymentDigests {
                    machine: get(row, "name")?,
                    layout_digest: get(row, "layout_digest")?,
                    network_digest: get(row, "network_digest")?,
                    origin: get(row, "origin")?,
                })
            })
            .collect()
    }
}
