//! API errors. Each has two audiences: the client gets a JSON body that says what failed and
//! what to do; the controller's log gets the internal detail (store errors are not shown whole
//! to clients).

use crate::services::actions::ActionError;
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields for the client (machine, status, action ...).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: serde_json::Map::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn with(mut self, key: &str, value: impl serde::Serialize) -> Self {
        self.fields.insert(key.to_string(), json!(value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.fields;
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        (self.status, Json(json!({ "error": body }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if let Some(refusal) = super::tokens::token_error(&error) {
            return refusal;
        }
        match &error {
            StoreError::UnknownMachine(name) => {
                ApiError::not_found(error.to_string()).with("machine", name)
            }
            StoreError::DuplicateName(_) | StoreError::DuplicateMac { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            StoreError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "busy", error.to_string())
            }
            _ => {
                tracing::error!("store error: {error}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the controller's store failed; the controller's log has the detail",
                )
            }
        }
    }
}

impl From<ActionError> for ApiError {
    fn from(error: ActionError) -> Self {
        match error {
            ActionError::UnknownMachine(name) => {
                ApiError::not_found(format!("no machine named `{name}`")).with("machine", name)
            }
            ActionError::Refused { machine, refusal } => ApiError::new(
                StatusCode::CONFLICT,
                "refused",
                format!("machine `{machine}`: {refusal}"),
            )
            .with("machine", machine)
            .with("status", refusal.status)
            .with("action", refusal.action)
            .with("reason", refusal.reason),
            ActionError::PowerFailed {
                machine,
                command,
                error,
                record,
            } => {
                let status = (*record).as_ref().map(|record| record.lifecycle.status);
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "power_failed",
                    format!("machine `{machine}`: power {command} failed: {error}"),
                )
                .with("machine", machine)
                .with("status", status)
            }
            ActionError::Store(error) => error.into(),
        }
    }
}
