//! The API's error body and status codes.
//!
//! Every error response is `{"error": {"code": "...", "message": "..."}}`. The
//! code is stable and meant for programs; the message says what was wrong,
//! on which value, and what to do. Internal failures are logged once here
//! and answered without their details.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    header: Option<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl ApiError {
    /// Builds an error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            header: None,
        }
    }

    /// Adds a header to the response, such as `Retry-After`.
    pub fn with_header(
        mut self,
        name: axum::http::HeaderName,
        value: axum::http::HeaderValue,
    ) -> Self {
        self.header = Some((name, value));
        self
    }

    /// 400: the body is not JSON.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// 400: missing or unknown command.
    pub fn unknown_command(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unknown_command", message)
    }

    /// 422: well-formed JSON that is not a valid task or change.
    pub fn invalid_task(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_task", message)
    }

    /// 404: nothing at this id or route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500: logged here, returned without details.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the hub failed to handle the request; its log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        let message = error.to_string();
        match error {
            EngineError::UnknownTask(_) => {
                Self::new(StatusCode::NOT_FOUND, "unknown_task", message)
            }
            EngineError::NotStartable(_) => Self::invalid_task(message),
            EngineError::InstanceNotFound(_) => Self::not_found(message),
            EngineError::VersionConflict { .. } => {
                Self::new(StatusCode::CONFLICT, "version_conflict", message)
            }
            EngineError::Finished(_) => Self::new(StatusCode::CONFLICT, "task_finished", message),
            EngineError::NotHeld { .. } => Self::new(StatusCode::CONFLICT, "not_held", message),
            EngineError::Invalid(_) => Self::invalid_task(message),
            EngineError::Storage(_) | EngineError::Write(_) => Self::internal(&error),
        }
    }
}
