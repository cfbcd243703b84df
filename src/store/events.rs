//! The append-only history. Events are inserted (alone or inside a change's transaction) and
//! read; never updated. Retention deletes the oldest ([`Store::delete_events_older_than`],
//! [`Store::delete_events_up_to`]), in bounded batches, never an event of a machine's current
//! run: a machine in an in-progress status keeps every event since its status began.

use super::codec::{get, get_json, get_opt_parsed, json_text, status_text};
use super::{Event, EventFilter, NewEvent, Store, StoreError};
use crate::store::now_ms;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

/// Events that retention may never delete: those of a machine in an in-progress status
/// (commissioning, testing, deploying...) written since that status began, the record of the
/// run the machine is in. Correlated with the outer `events` row.
fn current_run_clause() -> String {
    let statuses: Vec<String> = crate::model::Status::ALL
        .iter()
        .filter(|status| status.is_in_progress())
        .map(|status| format!("'{}'", status.as_str()))
        .collect();
    format!(
        "NOT EXISTS (SELECT 1 FROM machines m WHERE m.name = events.machine \
         AND m.status IN ({}) AND events.at >= m.status_since)",
        statuses.join(", ")
    )
}

impl Store {
    /// Deletes at most `batch` events older than `at_ms` (Unix ms), oldest first, except those of
    /// a machine's current run; returns how many. The `events_at` index finds them.
    pub async fn delete_events_older_than(
        &self,
        at_ms: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 AND {} \
             ORDER BY at, id LIMIT $2)",
            current_run_clause()
        );
        let done = sqlx::query(&sql)
            .bind(at_ms)
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes at most `batch` events with an id up to `last_id`, oldest first, except those of a
    /// machine's current run; returns how many.
    pub async fn delete_events_up_to(&self, last_id: i64, batch: u32) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id <= $1 AND {} \
             ORDER BY id LIMIT $2)",
            current_run_clause()
        );
        let done = sqlx::query(&sql)
            .bind(last_id)
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// The id of the newest event beyond the newest `keep` (every event with this id or lower is
    /// beyond the count), or `None` when there are no more than `keep`. Reads two ends of the
    /// primary key, and walks it only when the ids span more than `keep`.
    pub async fn events_beyond_count(&self, keep: u64) -> Result<Option<i64>, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let row = sqlx::query("SELECT MIN(id) AS low, MAX(id) AS high FROM events")
            .fetch_one(&self.pool)
            .await?;
        let (low, high): (Option<i64>, Option<i64>) = (get(&row, "low")?, get(&row, "high")?);
        let (Some(low), Some(high)) = (low, high) else {
            return Ok(None);
        };
        // Ids are unique: a span of at most `keep` ids holds at most `keep` events.
        if high.saturating_sub(low) < keep {
            return Ok(None);
        }
        let row = sqlx::query("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1")
            .bind(keep)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| get(&row, "id")).transpose()
    }

    /// How many events the store holds (a full count: for tests and tools).
    pub async fn count_events(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS count FROM events")
            .fetch_one(&self.pool)
            .await?;
        get(&row, "count")
    }

    /// Appends one event with its time given (Unix ms): for tests and imports.
    pub async fn append_event_at(&self, event: &NewEvent, at_ms: i64) -> Result<i64, StoreError> {
        let mut connection = self.pool.acquire().await?;
        insert_event(&mut connection, event, at_ms).await
    }

    /// Appends one event on its own; returns its id.
    pub async fn append_event(&self, event: &NewEvent) -> Result<i64, StoreError> {
        let mut connection = self.pool.acquire().await?;
        insert_event(&mut connection, event, now_ms()).await
    }

    /// Events matching `filter`, oldest first. With a limit, the newest `limit` of them.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        // The SQL is put together from fixed pieces; values are always bound.
        let mut conditions = Vec::new();
        let mut parameter = 0;
        let mut next_parameter = || {
            parameter += 1;
            format!("${parameter}")
        };
        if filter.machine.is_some() {
            conditions.push(format!("machine = {}", next_parameter()));
        }
        if filter.after_id.is_some() {
            conditions.push(format!("id > {}", next_parameter()));
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        // Newest first so that LIMIT keeps the newest; reversed below.
        let limit_clause = match filter.limit {
            Some(_) => format!("LIMIT {}", next_parameter()),
            None => String::new(),
        };
        let sql = format!(
            "SELECT id, at, machine, kind, actor, action, from_status, to_status, reason, detail \
             FROM events {where_clause} ORDER BY id DESC {limit_clause}"
        );
        let mut query = sqlx::query(&sql);
        if let Some(machine) = &filter.machine {
            query = query.bind(machine.as_str());
        }
        if let Some(after_id) = filter.after_id {
            query = query.bind(after_id);
        }
        if let Some(limit) = filter.limit {
            query = query.bind(limit.max(0));
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        events.reverse();
        Ok(events)
    }
}

/// Inserts an event on `connection` (a transaction, to commit it with the change it records).
pub(crate) async fn insert_event(
    connection: &mut AnyConnection,
    event: &NewEvent,
    at: i64,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO events (at, machine, kind, actor, action, from_status, to_status, reason, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(at)
    .bind(event.machine.as_deref())
    .bind(event.kind.as_str())
    .bind(event.actor.as_str())
    .bind(event.action.as_deref())
    .bind(status_text(event.from_status))
    .bind(status_text(event.to_status))
    .bind(event.reason.as_deref())
    .bind(json_text(&event.detail))
    .fetch_one(&mut *connection)
    .await?;
    // This process's followers read again (it commits soon after; on PostgreSQL the trigger of
    // migration 0018 wakes every controller's at the commit).
    super::feed::event_inserted();
    get(&row, "id")
}

pub(super) fn event_from_row(row: &AnyRow) -> Result<Event, StoreError> {
    Ok(Event {
        id: get(row, "id")?,
        at: get(row, "at")?,
        machine: get(row, "machine")?,
        kind: get(row, "kind")?,
        actor: get(row, "actor")?,
        action: get(row, "action")?,
        from_status: get_opt_parsed(row, "from_status")?,
        to_status: get_opt_parsed(row, "to_status")?,
        reason: get(row, "reason")?,
        detail: get_json(row, "detail")?,
    })
}
