//! Plan and apply endpoints: the observed snapshot the CLI plans against, and applies
//! (start one, follow its progress).

use super::{Actor, ApiError, ApiState};
use crate::apply::{progress, queue_apply, ApplyError, ApplyProgress, ApplyRequest, ApplyStarted};
use crate::plan::Observed;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

/// `GET /api/v1/observed`: every machine as the planner reads it.
pub async fn observed(State(state): State<ApiState>) -> Result<Json<Observed>, ApiError> {
    Ok(Json(crate::apply::observe(&state.store).await?))
}

/// `POST /api/v1/applies`: checks the plan's fingerprints and queues it for the leader's
/// executor (on whichever controller leads; this one's at once when it leads).
pub async fn start(
    State(state): State<ApiState>,
    Actor(actor): Actor,
    body: Result<Json<ApplyRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ApplyStarted>), ApiError> {
    let Json(request) = body.map_err(|rejection| {
        ApiError::bad_request(format!("the plan is not valid: {}", rejection.body_text()))
    })?;
    let started = queue_apply(
        &state.store,
        request,
        &actor,
        Some(state.applies_queued.as_ref()),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}

/// `GET /api/v1/applies/{id}`: per machine, how far the apply got.
pub async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ApplyProgress>, ApiError> {
    Ok(Json(progress(&state.store, &id).await?))
}

impl From<ApplyError> for ApiError {
    fn from(error: ApplyError) -> Self {
        match error {
            ApplyError::Busy(holder) => ApiError::new(
                StatusCode::CONFLICT,
                "busy",
                ApplyError::Busy(holder.clone()).to_string(),
            )
            .with("holder", &holder.holder)
            .with("since", super::views::rfc3339(holder.since)),
            ApplyError::BadPlan(_) => ApiError::bad_request(error.to_string()),
            ApplyError::Unknown(_) => ApiError::not_found(error.to_string()),
            ApplyError::Store(error) => error.into(),
        }
    }
}
