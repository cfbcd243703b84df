//! `/api/v1/images`: the controller's images (`fleet images`) and the pruning of its image
//! cache (`fleet images prune`).

use super::views::{ImageFileView, PruneImages, PruneReport};
use super::{ApiError, ApiState};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

/// `GET /api/v1/images`: every file of every image with its size, digests and state.
pub async fn list(State(state): State<ApiState>) -> Json<Vec<ImageFileView>> {
    let rows = state.boot.as_ref().map(|boot| boot.images.list());
    Json(rows.unwrap_or_default())
}

/// `POST /api/v1/images/prune`: removes the cached files no image of the current fleet uses
/// (`{"dry_run": true}`: only says which).
pub async fn prune(
    State(state): State<ApiState>,
    body: Result<Json<PruneImages>, JsonRejection>,
) -> Result<Json<PruneReport>, ApiError> {
    let Json(body) = body.map_err(|rejection| {
        ApiError::bad_request(format!(
            "the prune request is not valid: {} (send {{\"dry_run\": true or false}})",
            rejection.body_text()
        ))
    })?;
    let Some(boot) = state.boot.as_ref() else {
        return Ok(Json(PruneReport {
            dry_run: body.dry_run,
            ..PruneReport::default()
        }));
    };
    let images = boot.images.clone();
    let pruned = tokio::task::spawn_blocking(move || images.prune(body.dry_run)).await;
    let failed = |message: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "prune_failed",
            format!("cannot prune the image cache: {message}"),
        )
    };
    match pruned {
        Ok(Ok(report)) => Ok(Json(report)),
        Ok(Err(error)) => Err(failed(error.to_string())),
        Err(error) => Err(failed(error.to_string())),
    }
}
