//! The append-only history. Events are inserted (alone or inside a change's transaction) and
//! read; never updated or deleted.

use super::codec::{get, get_json, get_opt_parsed, json_text, status_text};
use super::{Event, EventFilter, NewEvent, Store, StoreError};
use crate::store::now_ms;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

impl Store {
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
    get(&row, "id")
}

fn event_from_row(row: &AnyRow) -> Result<Event, StoreError> {
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
