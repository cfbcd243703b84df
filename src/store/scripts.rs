//! Script results uploaded by machines during commissioning and testing.

use super::codec::{get, get_json, json_text};
use super::{ScriptResult, Store, StoreError};
use sqlx::any::AnyRow;

impl Store {
    /// Stores a result (its `id` is ignored) and returns the id given to it.
    pub async fn add_script_result(&self, result: &ScriptResult) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO script_results (machine_id, run_id, name, kind, status, exit_code, runtime_ms, \
                 stdout, stderr, results, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(result.machine_id)
        .bind(result.run_id.as_str())
        .bind(result.name.as_str())
        .bind(result.kind.as_str())
        .bind(result.status.as_str())
        .bind(result.exit_code)
        .bind(result.runtime_ms)
        .bind(result.stdout.as_str())
        .bind(result.stderr.as_str())
        .bind(json_text(&result.results))
        .bind(result.at)
        .fetch_one(&self.pool)
        .await?;
        get(&row, "id")
    }

    /// A machine's script results, in the order they were added.
    pub async fn script_results(&self, machine_id: i64) -> Result<Vec<ScriptResult>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, machine_id, run_id, name, kind, status, exit_code, runtime_ms, stdout, stderr, results, at \
             FROM script_results WHERE machine_id = $1 ORDER BY id",
        )
        .bind(machine_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(script_result_from_row).collect()
    }
}

fn script_result_from_row(row: &AnyRow) -> Result<ScriptResult, StoreError> {
    Ok(ScriptResult {
        id: get(row, "id")?,
        machine_id: get(row, "machine_id")?,
        run_id: get(row, "run_id")?,
        name: get(row, "name")?,
        kind: get(row, "kind")?,
        status: get(row, "status")?,
        exit_code: get(row, "exit_code")?,
        runtime_ms: get(row, "runtime_ms")?,
        stdout: get(row, "stdout")?,
        stderr: get(row, "stderr")?,
        results: get_json(row, "results")?,
        at: get(row, "at")?,
    })
}
