//! Errors as OpenAI shapes them: `{"error": {"message", "type", "param", "code"}}` with the
//! HTTP status the `openai` SDKs map to their exception classes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Error;

/// An API error: what the client did wrong (4xx) or why the server cannot serve it now.
#[derive(Debug, Clone)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    /// 400: the request is malformed or out of range; `param` names the field.
    pub(super) fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        error.param = param.map(str::to_owned);
        error
    }

    /// 400 with a machine-readable `code` (`context_length_exceeded`...).
    pub(super) fn invalid_code(param: &str, code: &'static str, message: String) -> Self {
        let mut error = Self::invalid(Some(param), message);
        error.code = Some(code);
        error
    }

    /// 401: a missing or wrong API key.
    pub(super) fn unauthorized() -> Self {
        let mut error = Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or invalid API key: send `Authorization: Bearer <key>`",
        );
        error.code = Some("invalid_api_key");
        error
    }

    /// 404: a model (or adapter) this server does not serve.
    pub(super) fn model_not_found(model: &str, served: &[String]) -> Self {
        let mut error = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model `{model}` does not exist; this server serves: {}",
                served.join(", ")
            ),
        );
        error.param = Some("model".into());
        error.code = Some("model_not_found");
        error
    }

    /// 404 for a path, 405 for a method the path does not take.
    pub(super) fn no_route(status: StatusCode, method: &str, path: &str) -> Self {
        Self::new(
            status,
            "invalid_request_error",
            format!("no route for {method} {path}"),
        )
    }

    /// 409: the request conflicts with the server's state (an adapter in use).
    pub(super) fn conflict(message: String) -> Self {
        let mut error = Self::new(StatusCode::CONFLICT, "invalid_request_error", message);
        error.code = Some("conflict");
        error
    }

    /// 404 for a route this server has switched off.
    pub(super) fn no_route_because(message: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    /// 413: the body is over the limit.
    pub(super) fn too_large(limit: usize) -> Self {
        let mut error = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than this server's limit of {limit} bytes"),
        );
        error.code = Some("request_too_large");
        error
    }

    /// 429 with `Retry-After`: the queue is full.
    pub(super) fn queue_full(in_flight: usize, limit: usize) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server is at capacity ({in_flight} of {limit} sequences in flight); \
                 retry later"
            ),
        );
        error.code = Some("queue_full");
        error.retry_after_s = Some(1);
        error
    }

    /// 503: the server is shutting down.
    pub(super) fn draining() -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down and takes no new requests",
        );
        error.code = Some("shutting_down");
        error
    }

    /// 500: the server failed, not the request.
    pub(super) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body (also sent as an SSE event when a stream fails midway).
    pub(super) fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// The engine refuses what the client asked for (400) or fails (500).
impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidRequest { .. } => ApiError::invalid(None, error.to_string()),
            Error::InvalidSampling { .. } => ApiError::invalid(None, error.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
