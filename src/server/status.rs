//! Kubernetes `Status` objects: the shape of every error the API returns.

use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An API failure, rendered as a Kubernetes `Status` with the matching HTTP code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: StatusCode,
    /// The Kubernetes `reason`: `NotFound`, `Conflict`, `Expired`, ...
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )
    }
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("request body is larger than {limit} bytes"),
        )
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The `Status` object, as Kubernetes writes it.
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(message),
            StoreError::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "AlreadyExists", message)
            }
            StoreError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "Conflict", message),
            StoreError::Gone { .. } => ApiError::new(StatusCode::GONE, "Expired", message),
            StoreError::Invalid { .. } => ApiError::bad_request(message),
            StoreError::Backend { .. } => ApiError::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code, axum::Json(self.to_status())).into_response();
        if self.code == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_kubernetes_codes_and_reasons() {
        let cases = [
            (
                StoreError::NotFound {
                    key: "Pod/default/a".into(),
                },
                404,
                "NotFound",
            ),
            (
                StoreError::AlreadyExists {
                    key: "Pod/default/a".into(),
                },
                409,
                "AlreadyExists",
            ),
            (
                StoreError::Conflict {
                    key: "Pod/default/a".into(),
                    expected: 1,
                    found: 2,
                },
                409,
                "Conflict",
            ),
            (
                StoreError::Gone {
                    requested: 1,
                    oldest: 5,
                },
                410,
                "Expired",
            ),
            (
                StoreError::Invalid { reason: "x".into() },
                400,
                "BadRequest",
            ),
            (
                StoreError::Backend {
                    path: "p".into(),
                    reason: "disk".into(),
                },
                500,
                "InternalError",
            ),
        ];
        for (e, code, reason) in cases {
            let status = ApiError::from(e).to_status();
            assert_eq!(status["code"], code);
            assert_eq!(status["reason"], reason);
            assert_eq!(status["kind"], "Status");
            assert_eq!(status["status"], "Failure");
        }
    }
}
