//! `GET /metrics` on the operator API's listener: the controller's counters in the Prometheus
//! text exposition format ([`crate::metrics`]), where Prometheus looks by default.
//!
//! Under an operator token like every route of this listener but `/api/v1/version`: a
//! read-only token is enough (`fleet token create prometheus --role read-only`; Prometheus
//! sends it with `authorization: { credentials_file: ... }` and trusts the API's certificate
//! with `tls_config: { ca_file: <state_dir>/tls/cert.pem }`). The counts and rates are not
//! secret, but what the fleet is doing is an operator's to see, and the listener's rule stays
//! one rule.

use super::{require_operator, ApiError, ApiState};
use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub(super) fn router(state: ApiState) -> Router<ApiState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state, require_operator))
}

/// The text exposition, with the machines per status read now (one grouped query).
async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let counts = state.store.machine_counts_by_status().await?;
    let text = state.metrics.render(&counts);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}
