//! Script results uploaded by machines during commissioning and testing.

use super::codec::{get, get_json, json_text};
use super::{ScriptResult, Store, StoreError};
use sqlx::any::AnyRow;

const INSERT_RESULT: &str =
    "INSERT INTO script_results (machine_id, run_id, name, kind, status, exit_code, runtime_ms, \
         stdout, stderr, results, at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id";

/// The same parameters as [`INSERT_RESULT`]: the first three find the row.
const UPDATE_RESULT: &str = "UPDATE script_results SET kind = $4, status = $5, exit_code = $6, \
         runtime_ms = $7, stdout = $8, stderr = $9, results = $10, at = $11 \
     WHERE machine_id = $1 AND run_id = $2 AND name = $3 RETURNING id";

impl Store {
    /// Stores a result (its `id` is ignored) and returns the id given to it.
    pub async fn add_script_result(&self, result: &ScriptResult) -> Result<i64, StoreError> {
        let row = bind_result(sqlx::query(INSERT_RESULT), result)
            .fetch_one(&self.pool)
            .await?;
        get(&row, "id")
    }

    /// Stores a script's report for its run: the first one (usually `running`) adds the row,
    /// later ones (the result) replace it in place, keeping its id (results list in the order
    /// the scripts started). One statement for the result: a DELETE and an INSERT in a write
    /// transaction took four, twice per script of every machine.
    pub async fn put_script_result(&self, result: &ScriptResult) -> Result<i64, StoreError> {
        let updated = bind_result(sqlx::query(UPDATE_RESULT), result)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = updated {
            return get(&row, "id");
        }
        self.add_script_result(result).await
    }

    /// Marks the machine's pending and running scripts `aborted` (the machine was aborted or
    /// failed while they ran); returns how many.
    pub async fn abort_running_scripts(&self, machine_id: i64) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE script_results SET status = 'aborted' \
             WHERE machine_id = $1 AND status IN ('pending', 'running')",
        )
        .bind(machine_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// The results of one run of a machine, in the order they were added.
    pub async fn run_results(
        &self,
        machine_id: i64,
        run_id: &str,
    ) -> Result<Vec<ScriptResult>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, machine_id, run_id, name, kind, status, exit_code, runtime_ms, stdout, stderr, results, at \
             FROM script_results WHERE machine_id = $1 AND run_id = $2 ORDER BY id",
        )
        .bind(machine_id)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(script_result_from_row).collect()
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

/// Binds a result to [`INSERT_RESULT`]'s parameters.
fn bind_result<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    result: &'q ScriptResult,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
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
