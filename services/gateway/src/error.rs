//! Errors as HTTP answers: a status and a JSON body `{"code", "reason"}` a client can act on.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prism_core::contract::Classify;
use prism_core::ports::claims::IndexError;
use prism_core::ports::store::StoreError;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub reason: String,
}

/// Every error's body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code, e.g. `too_many_bytes`.
    code: String,
    /// What went wrong and what to do about it.
    reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            reason: reason.into(),
        }
    }

    pub fn bad_request(code: &str, reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, reason)
    }

    pub fn not_found(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = %self.code, reason = %self.reason, "request failed");
        }
        let body = ErrorBody {
            code: self.code,
            reason: self.reason,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Bad input is the client's (4xx); a server away is ours (503), never a 500 for what was sent.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let status = match &error {
            StoreError::NotFound { .. } | StoreError::NoSuchBucket { .. } => StatusCode::NOT_FOUND,
            StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::UnsupportedKey { .. } | StoreError::SymbolicLink { .. } => {
                StatusCode::BAD_REQUEST
            }
            // The client stopped sending (or too slowly, see the body timeout).
            StoreError::Interrupted { .. } => StatusCode::REQUEST_TIMEOUT,
            StoreError::Changed { .. } => StatusCode::CONFLICT,
            StoreError::Misconfigured { .. } | StoreError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<IndexError> for ApiError {
    fn from(error: IndexError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error.code(),
            error.to_string(),
        )
    }
}

impl From<prism_core::ports::bus::BusError> for ApiError {
    fn from(error: prism_core::ports::bus::BusError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error.code(),
            error.to_string(),
        )
    }
}
