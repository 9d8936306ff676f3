//! The one error type of the admin API and the JSON shape every failure is answered with:
//! `{"error": {"code": "...", "message": "...", "field"?: "..."}}`.
//! Database and internal errors become a bare 500, logged once here and never described to the caller.
//! The `/oauth/*` endpoints answer in the RFC 6749 section 5.2 shape instead, as their RFCs require.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or semantically invalid input; `field` names the offending field when there is one.
    #[error("{message}")]
    BadRequest {
        /// The field at fault (dotted path for nested JSON).
        field: Option<String>,
        /// Lowercase, concrete description.
        message: String,
    },
    /// No credentials, or credentials that do not identify anyone.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but the role or client does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// The addressed resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with existing state (duplicate id, ...).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the endpoint accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The body's content type is not one the endpoint reads (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many requests; retry after the given number of seconds.
    #[error("rate limit exceeded, retry in {retry_after}s")]
    RateLimited {
        /// Seconds until a request will be accepted again.
        retry_after: u64,
    },
    /// An OAuth 2.0 protocol error (RFC 6749 section 5.2 shape).
    #[error("{error}: {description}")]
    OAuth {
        /// HTTP status (400, or 401 for `invalid_client`).
        status: StatusCode,
        /// The registered error code, e.g. `invalid_grant`.
        error: &'static str,
        /// Human-readable description.
        description: String,
    },
    /// A database failure: 500, logged, never described to the caller.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Any other internal failure: 500, logged, never described to the caller.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A 400 without a specific field.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field: None,
            message: message.into(),
        }
    }

    /// An OAuth `invalid_request` (400).
    pub fn oauth(error: &'static str, description: impl Into<String>) -> ApiError {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::OAuth {
            status,
            error,
            description: description.into(),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::OAuth { status, .. } => *status,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error.code` of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::OAuth { error, .. } => error,
            ApiError::Database(_) | ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = match &self {
            ApiError::Database(e) => {
                tracing::error!(error = %e, "database error");
                json!({"error": {"code": "internal", "message": "internal error"}})
            }
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                json!({"error": {"code": "internal", "message": "internal error"}})
            }
            ApiError::OAuth {
                error, description, ..
            } => {
                json!({"error": error, "error_description": description})
            }
            ApiError::BadRequest {
                field: Some(field),
                message,
            } => {
                json!({"error": {"code": self.code(), "message": message, "field": field}})
            }
            other => json!({"error": {"code": other.code(), "message": other.to_string()}}),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::RateLimited { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"edgewarden-admin\""),
                );
            }
            ApiError::OAuth {
                error: "invalid_client",
                ..
            } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"edgewarden\""),
                );
            }
            _ => {}
        }
        if matches!(self, ApiError::OAuth { .. }) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        response
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
