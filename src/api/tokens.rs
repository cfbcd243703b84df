//! `/api/v1/tokens`: operator tokens, for admin tokens only. A secret is in the answer of create
//! and rotate, and nowhere else: the store keeps only its hash.

use super::views::{CreateToken, IssuedTokenView, TokenView};
use super::{Actor, ApiError, ApiState};
use crate::services::token::{check_token_name, create_token, rotate_token, IssuedToken};
use crate::store::{OperatorRole, StoreError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

/// The longest lifetime `expires_in_seconds` may give (100 years): beyond it, leave it out.
const MAX_LIFETIME_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// `GET /api/v1/tokens`: every token, revoked ones included; no secrets.
pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<TokenView>>, ApiError> {
    let tokens = state.store.operator_tokens().await?;
    Ok(Json(tokens.iter().map(TokenView::from).collect()))
}

/// `POST /api/v1/tokens`.
pub async fn create(
    State(state): State<ApiState>,
    Actor(actor): Actor,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<IssuedTokenView>), ApiError> {
    let Json(body) = body.map_err(|rejection| {
        ApiError::bad_request(format!(
            "the token request is not valid: {} (send {{\"name\": NAME, \"role\": \"admin\" or \"read-only\", \"expires_in_seconds\": N}})",
            rejection.body_text()
        ))
    })?;
    check_token_name(&body.name).map_err(ApiError::bad_request)?;
    let expires_at = match body.expires_in_seconds {
        Some(seconds) if seconds == 0 || seconds > MAX_LIFETIME_SECONDS => {
            return Err(ApiError::bad_request(format!(
                "expires_in_seconds must be from 1 to {MAX_LIFETIME_SECONDS} (got {seconds}); leave it out for a token that does not expire"
            )))
        }
        // In range: at most 100 years of milliseconds, far inside an i64.
        Some(seconds) => Some(crate::store::now_ms() + seconds as i64 * 1000),
        None => None,
    };
    let role = body.role.unwrap_or(OperatorRole::Admin);
    let issued = create_token(&state.store, &body.name, role, expires_at, &actor).await?;
    Ok((StatusCode::CREATED, Json(issued_view(issued))))
}

/// `POST /api/v1/tokens/{name}/rotate`: a new secret; the former one stops working.
pub async fn rotate(
    State(state): State<ApiState>,
    Actor(actor): Actor,
    Path(name): Path<String>,
) -> Result<Json<IssuedTokenView>, ApiError> {
    let issued = rotate_token(&state.store, &name, &actor).await?;
    Ok(Json(issued_view(issued)))
}

/// `DELETE /api/v1/tokens/{name}`: revokes the token (its row and name stay, for the history).
pub async fn revoke(
    State(state): State<ApiState>,
    Actor(actor): Actor,
    Path(name): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let revoked = state
        .store
        .revoke_operator_token(&name, &actor, crate::store::now_ms())
        .await?;
    Ok(Json(TokenView::from(&revoked)))
}

fn issued_view(issued: IssuedToken) -> IssuedTokenView {
    IssuedTokenView {
        token: TokenView::from(&issued.token),
        secret: issued.secret,
    }
}

/// The store's refusals about tokens, as the client should see them.
pub(super) fn token_error(error: &StoreError) -> Option<ApiError> {
    let (status, code, name) = match error {
        StoreError::UnknownToken(name) => (StatusCode::NOT_FOUND, "not_found", name),
        StoreError::DuplicateToken(name) => (StatusCode::CONFLICT, "conflict", name),
        StoreError::TokenRevoked(name) => (StatusCode::CONFLICT, "revoked", name),
        StoreError::TokenExpired(name) => (StatusCode::CONFLICT, "expired", name),
        StoreError::LastAdminToken(name) => (StatusCode::CONFLICT, "last_admin", name),
        _ => return None,
    };
    Some(ApiError::new(status, code, error.to_string()).with("token", name))
}
