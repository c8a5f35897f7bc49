//! [`ApiError`]: every error the API answers, as `{"error": {code, message, fields}}`.
//!
//! A 4xx names what the caller can fix; a store that is full, busy or
//! unreachable answers 503 with `Retry-After`; other 5xx bodies hide details,
//! which are logged once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tessera_store::StoreError;

use super::views::{ErrorBody, ErrorDetail, FieldErrorView};
use crate::spec::{self, FieldError};

/// The API's error.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) fields: Vec<FieldError>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), fields: Vec::new() }
    }

    /// An error about one field of the request (`field` as the caller wrote it).
    pub(crate) fn field(status: StatusCode, code: &'static str, field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(status, code, format!("{field}: {message}"));
        e.fields.push(FieldError { field: field.into(), message });
        e
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; it has been logged")
    }

    pub(crate) fn bad_query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", message)
    }

    /// A store error: transient faults are 503 (try again), a tier missing from
    /// the price book is the operator's to fix (409), the rest is internal.
    pub(crate) fn store(e: StoreError) -> Self {
        match e {
            e if e.is_transient() => {
                tracing::warn!(error = %e, "store unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("{e}; try again shortly"))
            }
            StoreError::UnknownTier { tier, known } => Self::new(
                StatusCode::CONFLICT,
                "tier_unavailable",
                format!("this tenant's tier `{tier}` is not in the price book (tiers: {known}); ask the operator"),
            ),
            other => Self::internal(other),
        }
    }

    /// A refused spec: syntax is 400, anything about a field is 422.
    pub(crate) fn spec(e: spec::SpecError) -> Self {
        let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", e.to_string());
        if let spec::SpecError::Syntax { .. } = e {
            err.status = StatusCode::BAD_REQUEST;
            err.code = "bad_json";
        }
        err.fields = e.field_errors();
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                fields: self.fields.iter().map(FieldErrorView::from).collect(),
            },
        };
        // A busy store and a rate limit both pass: say when to try again.
        let retry = matches!(self.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS);
        let mut resp = (self.status, Json(body)).into_response();
        if retry {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // The access log names the error without parsing the body.
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

/// The code of an error response, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

pub(crate) type ApiResult<T> = Result<T, ApiError>;
