//! Error replies in RabbitMQ's shape: `{"error": ..., "reason": ...}`, always JSON.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::node::NodeError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub reason: String,
}

impl ApiError {
    /// RabbitMQ's 404 body, exactly.
    pub fn not_found() -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, error: "Object Not Found".into(), reason: "Not Found".into() }
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, error: "bad_request".into(), reason: reason.into() }
    }

    pub fn unauthorized(reason: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::UNAUTHORIZED, error: "not_authorized".into(), reason: reason.into() }
    }

    /// A logged-in user without the tag or permission the route needs.
    pub fn forbidden(reason: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::UNAUTHORIZED, error: "not_authorised".into(), reason: reason.into() }
    }

    pub fn internal(reason: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, error: "internal_error".into(), reason: reason.into() }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        match e {
            NodeError::Invalid(r) => ApiError::bad_request(r),
            NodeError::NotFound(_) => ApiError::not_found(),
            NodeError::Failed(r) => ApiError::internal(r),
            NodeError::Unavailable(r) => {
                ApiError { status: StatusCode::SERVICE_UNAVAILABLE, error: "service_unavailable".into(), reason: r }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "reason": self.reason});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""));
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
