//! `/api/v1/controllers`: the controllers sharing this store (`fleet controllers`).

use super::views::{rfc3339, ControllerView};
use super::{ApiError, ApiState};
use crate::store::{now_ms, HEARTBEAT_INTERVAL, SILENT_AFTER_INTERVALS};
use axum::extract::State;
use axum::Json;

/// `GET /api/v1/controllers`: every controller that wrote a heartbeat, by id.
pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<ControllerView>>, ApiError> {
    let now = now_ms();
    let interval_ms = i64::try_from(HEARTBEAT_INTERVAL.as_millis()).unwrap_or(i64::MAX);
    let silent_after_ms = interval_ms.saturating_mul(SILENT_AFTER_INTERVALS);
    let rows = state.store.controllers().await?;
    let leader = state.store.leader().await?;
    let leads = |id: &str| leader.as_ref().filter(|term| term.controller_id == id);
    Ok(Json(
        rows.into_iter()
            .map(|record| {
                let age_ms = (now - record.heartbeat_at).max(0);
                ControllerView {
                    leader: leads(&record.id).is_some(),
                    leader_term: leads(&record.id).map(|term| term.generation),
                    this_one: state.controller_id.as_deref() == Some(record.id.as_str()),
                    id: record.id,
                    hostname: record.hostname,
                    api_url: record.api_url,
                    boot_url: record.boot_url,
                    networks: record.networks,
                    version: record.version,
                    started_at: rfc3339(record.started_at),
                    heartbeat_at: rfc3339(record.heartbeat_at),
                    heartbeat_age_seconds: age_ms / 1000,
                    silent: age_ms > silent_after_ms,
                }
            })
            .collect(),
    ))
}
