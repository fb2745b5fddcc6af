//! Reading a JSON request body with the API's own errors: 415 without a
//! JSON content type, 413 past the size limit, 400 for invalid JSON (with
//! the line and column).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde_json::Value;

use super::error::ApiError;

/// A request body parsed as JSON.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "the body must be JSON with `content-type: application/json` (got {:?})",
                    content_type
                ),
            ));
        }

        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the body is larger than the hub accepts (see --max-body-bytes); send less data per task",
                )
            } else {
                ApiError::new(rejection.status(), "invalid_body", rejection.body_text())
            }
        })?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|err| ApiError::invalid_json(format!("the body is not valid JSON: {err}")))?;
        Ok(Self(value))
    }
}
