//! Saved plans: what `fleet plan` computed, for `fleet apply` to carry out.

use super::codec::{get, get_json, json_text};
use super::{Store, StoreError, StoredPlan};

impl Store {
    /// Saves a plan; saving the same id again replaces it.
    pub async fn save_plan(&self, plan: &StoredPlan) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plans (id, created_at, status, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, status = excluded.status, \
                 body = excluded.body",
        )
        .bind(plan.id.as_str())
        .bind(plan.created_at)
        .bind(plan.status.as_str())
        .bind(json_text(&plan.body))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn plan(&self, id: &str) -> Result<Option<StoredPlan>, StoreError> {
        let row = sqlx::query("SELECT id, created_at, status, body FROM plans WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredPlan {
            id: get(&row, "id")?,
            created_at: get(&row, "created_at")?,
            status: get(&row, "status")?,
            body: get_json(&row, "body")?,
        }))
    }

    pub async fn set_plan_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        let result = sqlx::query("UPDATE plans SET status = $1 WHERE id = $2")
            .bind(status)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::UnknownPlan(id.to_string()));
        }
        Ok(())
    }
}
