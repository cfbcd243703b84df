//! Script results uploaded by machines during commissioning and testing.

use super::codec::{get, get_json, json_text};
use super::{ScriptResult, Store, StoreError};
use sqlx::any::AnyRow;

const INSERT_RESULT: &str =
    "INSERT INTO script_results (machine_id, run_id, name, kind, status, exit_code, runtime_ms, \
         stdout, stderr, results, at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id";

impl Store {
    /// Stores a result (its `id` is ignored) and returns the id given to it.
    pub async fn add_script_result(&self, result: &ScriptResult) -> Result<i64, StoreError> {
        let row = bind_result(sqlx::query(INSERT_RESULT), result)
            .fetch_one(&self.pool)
            .await?;
        get(&row, "id")
    }

    /// Stores a result, replacing the one of the same run and script (a script is reported
    /// `running` first, then with its end), in one transaction. Returns the id given to it.
    pub async fn put_script_result(&self, result: &ScriptResult) -> Result<i64, StoreError> {
        let mut transaction = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM script_results WHERE machine_id = $1 AND run_id = $2 AND name = $3",
        )
        .bind(result.machine_id)
        .bind(result.run_id.as_str())
        .bind(result.name.as_str())
        .execute(&mut *transaction)
        .await?;
        let row = bind_result(sqlx::query(INSERT_RESULT), result)
            .fetch_one(&mut *transaction)
            .await?;
        transaction.commit().await?;
        get(&row, "id")
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
