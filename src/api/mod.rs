//! The controller's HTTP API (axum). Operator endpoints under `/api/v1`, authenticated by the
//! operator token (`Authorization: Bearer TOKEN`); JSON in and out; errors as
//! `{"error": {"code", "message", ...}}`.
//!
//! The server takes an already-bound listener and a shutdown future, so tests bind port 0.

mod error;
mod machines;
mod metadata;
mod plans;
pub mod views;

pub use error::ApiError;
/// The machine API's body decoders, for the fuzz tests (`tests/it/fuzz.rs`).
pub use metadata::{decode_enlist, decode_heartbeat, decode_result, decode_signal};

use crate::power::PowerDrivers;
use crate::services::token::tokens_match;
use crate::store::Store;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::future::Future;
use std::sync::Arc;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub drivers: PowerDrivers,
    pub operator_token: Arc<String>,
    /// The HTTP boot endpoints (`/boot/...`, no token), when the controller serves them.
    pub boot: Option<crate::boot::http::BootState>,
    /// What booted machines are told to run (`/metadata/v1/...`).
    pub machine_api: crate::services::machine_api::SharedSettings,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let operator = Router::new()
        .route("/machines", get(machines::list).post(machines::add))
        .route("/machines/{name}", get(machines::show))
        .route("/machines/{name}/actions/{action}", post(machines::action))
        .route("/events", get(machines::events))
        .route("/observed", get(plans::observed))
        .route("/applies", post(plans::start))
        .route("/applies/{id}", get(plans::show))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    let mut routes = Router::new()
        .route("/api/v1/version", get(version))
        .nest("/api/v1", operator)
        .merge(metadata::router());
    if let Some(boot) = state.boot.clone() {
        routes = routes.merge(crate::boot::http::router(boot));
    }
    routes.fallback(not_found).with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn version(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": "fleet",
        "version": env!("CARGO_PKG_VERSION"),
        "store": state.store.backend(),
        "power_types": state.drivers.power_types(),
    }))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// The person acting, as the client names it (`X-Fleet-Actor`), else "operator".
pub fn actor_of(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-fleet-actor")
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| "operator".to_string())
}

async fn require_operator(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        Some(token) if tokens_match(&state.operator_token, token.trim()) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the operator token is wrong: use the one in the controller's state directory (operator-token)",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no operator token: send `Authorization: Bearer TOKEN` (FLEET_TOKEN, or the controller's \
             state directory file operator-token)",
        )),
    }
}
