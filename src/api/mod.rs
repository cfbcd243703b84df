//! The controller's HTTP servers (axum), two listeners:
//! - the operator API over TLS ([`serve_api`]): endpoints under `/api/v1`, authenticated by an
//!   operator token (`Authorization: Bearer TOKEN`): its name is the actor of what the call does,
//!   a read-only token may only read, and only admin tokens manage tokens. JSON in and out;
//!   errors as `{"error": {"code", "message", ...}}`;
//! - the boot listener over plain HTTP ([`serve_boot`]): iPXE scripts, kernels and images, the
//!   machine API (`/metadata/v1/...`, `/scripts/...`), rate-limited per source address.
//!
//! Each route is on one listener only; the other answers 404. Each server takes an already-bound
//! listener and a shutdown future, so tests bind port 0.

mod controllers;
mod deploy_image;
mod error;
mod events;
mod images;
mod machines;
mod metadata;
mod plans;
mod scrape;
mod tokens;
pub mod views;

pub use error::ApiError;
/// The machine API's body decoders, for the fuzz tests (`tests/it/fuzz.rs`).
pub use metadata::{decode_enlist, decode_heartbeat, decode_result, decode_signal};

use crate::metrics::{Listener, Metrics, RequestObservation};
use crate::model::rfc3339;
use crate::power::PowerDrivers;
use crate::services::token::{identify, Identified, Operator};
use crate::store::{OperatorRole, Store};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub drivers: PowerDrivers,
    /// The HTTP boot endpoints (`/boot/...`, no token), when the controller serves them.
    pub boot: Option<crate::boot::http::BootState>,
    /// What booted machines are told to run (`/metadata/v1/...`).
    pub machine_api: crate::services::machine_api::SharedSettings,
    /// This controller's id in the store's `controllers` table (`None` in tests without one).
    pub controller_id: Option<String>,
    /// The controller's counters (`GET /metrics`); both listeners file their requests here.
    pub metrics: Arc<Metrics>,
    /// Notified when an apply is queued here: the executor, when this controller leads, takes
    /// it at once rather than at its next look.
    pub applies_queued: Arc<tokio::sync::Notify>,
}

/// The largest plan `POST /applies` takes. axum's default (2 MB) refused the plan of 2,000
/// simulated machines with webhook power (about 1.3 KB a machine); this holds 100,000 such
/// machines. Only an operator gets this far (`require_operator` runs before the body is read).
const PLAN_LIMIT_BYTES: usize = 256 * 1024 * 1024;

/// The operator API's routes (`/api/v1/...`), for the TLS listener. Everything else, the boot
/// routes included, is a 404 here.
pub fn api_router(state: ApiState) -> Router {
    let operator = Router::new()
        .route("/machines", get(machines::list).post(machines::add))
        .route("/machines/{name}", get(machines::show))
        .route("/machines/{name}/actions/{action}", post(machines::action))
        .route("/machines/{name}/clone", post(machines::clone))
        .route(
            "/machines/{name}/registration",
            post(metadata::make_registration),
        )
        .route("/events", get(machines::events))
        .route("/events/stream", get(events::stream))
        .route("/observed", get(plans::observed))
        .route(
            "/applies",
            post(plans::start).layer(axum::extract::DefaultBodyLimit::max(PLAN_LIMIT_BYTES)),
        )
        .route("/applies/{id}", get(plans::show))
        .route("/controllers", get(controllers::list))
        .route("/images", get(images::list))
        .route("/images/prune", post(images::prune))
        .merge(tokens_router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    let metrics = state.metrics.clone();
    Router::new()
        .route("/api/v1/version", get(version))
        .nest("/api/v1", operator)
        .merge(scrape::router(state.clone()))
        .fallback(not_found)
        .with_state(state)
        .layer(middleware::from_fn_with_state(
            (metrics, Listener::Api),
            observe_request,
        ))
}

/// The boot listener's routes: the machine API (`/metadata/v1/...`, `/scripts/...`) and the
/// HTTP boot endpoints (`/boot/...`). The operator API is a 404 here: this listener is plain
/// HTTP on the boot network.
pub fn boot_router(state: ApiState) -> Router {
    let mut routes = metadata::router();
    let guard = state.boot.as_ref().map(|boot| boot.guard.clone());
    if let Some(boot) = state.boot.clone() {
        routes = routes.merge(crate::boot::http::router(boot));
    }
    let metrics = state.metrics.clone();
    let routes = routes.fallback(not_found).with_state(state);
    // Requests without a credential are rate-limited per source address, anything not found
    // included (`crate::boot::throttle`).
    let routes = match guard {
        Some(guard) => routes.layer(middleware::from_fn_with_state(
            guard,
            crate::boot::throttle::throttle,
        )),
        None => routes,
    };
    // Outermost, so throttled (429) requests are timed too.
    routes.layer(middleware::from_fn_with_state(
        (metrics, Listener::Boot),
        observe_request,
    ))
}

/// Times every request into the latency histogram, by its route's template (`MatchedPath`,
/// which axum sets before the layers of `Router::layer` run), never its raw path.
async fn observe_request(
    State((metrics, listener)): State<(Arc<Metrics>, Listener)>,
    request: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_string());
    let method = request.method().clone();
    let response = next.run(request).await;
    metrics.observe_request(&RequestObservation {
        listener,
        route: route.as_deref(),
        method: method.as_str(),
        status: response.status().as_u16(),
        elapsed: started.elapsed(),
    });
    response
}

/// `/tokens`: admin tokens only.
fn tokens_router() -> Router<ApiState> {
    Router::new()
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{name}", delete(tokens::revoke))
        .route("/tokens/{name}/rotate", post(tokens::rotate))
        .route_layer(middleware::from_fn(require_admin))
}

/// How long a connection may take to finish its request once the controller is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves the operator API over TLS on `listener` until `shutdown` completes. Handlers see the
/// peer's address (`ConnectInfo<SocketAddr>`).
pub async fn serve_api(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    // The event streams never finish on their own: they end when the controller stops.
    let (stop_streams, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_streams.send(true);
        stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    axum_server::tls_rustls::from_tcp_rustls(listener.into_std()?, config)?
        .handle(handle)
        .serve(
            api_router(state)
                .layer(axum::Extension(events::Stopping(stopping)))
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
}

/// Serves the boot routes over plain HTTP on `listener` until `shutdown` completes (firmware
/// cannot do TLS). Handlers see the peer's address (`ConnectInfo<SocketAddr>`).
pub async fn serve_boot(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        boot_router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
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

/// The name of the token a call came with: the actor of every event the call causes. Only
/// the token decides it; nothing the client sends besides the token does.
pub struct Actor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Operator>()
            .map(|operator| Actor(operator.name.clone()))
            .ok_or_else(|| {
                tracing::error!(
                    "{} has no operator: the route is outside require_operator",
                    parts.uri.path()
                );
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "this endpoint cannot tell who calls it; the controller's log has the detail",
                )
            })
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Resolves the bearer token to its name and role (`Operator`, a request extension for the
/// handlers); a read-only token may only read.
async fn require_operator(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(secret) = bearer_token(request.headers()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no operator token: send `Authorization: Bearer TOKEN` (FLEET_TOKEN, or the controller's \
             state directory file operator-token)",
        ));
    };
    let operator = match identify(&state.store, secret).await? {
        Identified::Operator(operator) => operator,
        Identified::Unknown => return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the operator token is wrong: use the one in the controller's state directory (operator-token), \
             or one an admin made with `fleet token create`",
        )),
        Identified::Expired { name, at } => return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            format!("operator token `{name}` expired at {}: ask an admin for a new one (`fleet token create`)", rfc3339(at)),
        )
        .with("token", name)),
        Identified::Revoked { name, at } => return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_revoked",
            format!("operator token `{name}` was revoked at {}: ask an admin for a new one (`fleet token create`)", rfc3339(at)),
        )
        .with("token", name)),
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if operator.role == OperatorRole::ReadOnly && !reads {
        return Err(forbidden(
            &operator,
            format!(
                "{} {} needs an admin token",
                request.method(),
                request.uri().path()
            ),
        ));
    }
    request.extensions_mut().insert(operator);
    Ok(next.run(request).await)
}

/// Admin tokens only, whatever the method (managing tokens). Runs inside `require_operator`.
async fn require_admin(request: Request, next: Next) -> Result<Response, ApiError> {
    match request.extensions().get::<Operator>() {
        Some(operator) if operator.role == OperatorRole::Admin => Ok(next.run(request).await),
        Some(operator) => Err(forbidden(
            operator,
            "managing tokens needs an admin token".into(),
        )),
        None => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "this endpoint cannot tell who calls it",
        )),
    }
}

fn forbidden(operator: &Operator, what: String) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "operator token `{}` is {}: it may only read (GET); {what}",
            operator.name, operator.role
        ),
    )
    .with("token", &operator.name)
    .with("role", operator.role)
}
