//! The HTTP API (`/v1`), built by [`app`] and tested in-process with `oneshot`.
//!
//! Every operation is registered through `utoipa_axum`'s `routes!`, which
//! takes its path, method, parameters and responses from the handler's
//! `#[utoipa::path]`: the router and `/openapi.json` ([`openapi`]) come from
//! the same list. Every error is JSON ([`ApiError`]). Any worker of a fleet
//! answers any request: everything comes from the shared store and data
//! directory. Each request leaves one access-log line ([`access_log`]).

mod access_log;
mod account;
mod error;
mod jobs;
pub mod openapi;
pub mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use tessera_store::Tenant;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) use error::ApiResult;
pub use error::{ApiError, ErrorCode};
pub(crate) use jobs::own_job;

use super::Service;
use views::{Health, Ready};

/// The API's operations, each with its OpenAPI description.
fn api() -> OpenApiRouter<Arc<Service>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
        .routes(routes!(account::create_tenant))
        .routes(routes!(account::workers))
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel))
        .routes(routes!(super::download::output))
        .routes(routes!(jobs::metadata))
        .routes(routes!(account::quote_handler))
        .routes(routes!(account::usage))
}

/// The OpenAPI document the router serves, for `book`'s tiers, rates and features.
pub fn openapi_document(book: &tessera_metering::PriceBook) -> serde_json::Value {
    openapi::document(api().split_for_parts().1, book)
}

/// Routes of the API port.
pub fn app(svc: Arc<Service>) -> Router {
    let (router, _) = api().split_for_parts();
    router
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .layer(axum::middleware::from_fn(access_log::log))
        .layer(axum::extract::DefaultBodyLimit::max(svc.config.max_body_bytes))
        .with_state(svc)
}

/// Routes of the metrics port.
pub fn metrics_app(svc: Arc<Service>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(svc): State<Arc<Service>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], svc.metrics.render())
            }),
        )
        .with_state(svc)
}

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", operation_id = "healthz",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Ready to take traffic: the store answers, the GPU has no error, and the
/// worker is not draining.
#[utoipa::path(get, path = "/readyz", tag = "ops", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready: the body says which part is not", body = Ready),
    ))]
async fn readyz(State(svc): State<Arc<Service>>) -> Response {
    let store = svc.store.ping().await.is_ok();
    let gpu = svc.ctx.check_errors().is_ok();
    let draining = svc.shutting_down();
    let status = if store && gpu && !draining { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Ready {
        store,
        gpu,
        draining,
        adapter: svc.ctx.adapter.name.clone(),
        worker: svc.worker.to_string(),
        backend: svc.store.kind().as_str().to_string(),
    };
    (status, Json(body)).into_response()
}

/// This document: OpenAPI 3.1, generated from the handlers, the catalog and the price book.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn openapi_json(State(svc): State<Arc<Service>>) -> Json<serde_json::Value> {
    Json(svc.openapi.get_or_init(|| openapi_document(&svc.book)).clone())
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "missing Authorization: Bearer KEY")
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Authorization must be `Bearer KEY`"))
}

/// The calling tenant, after the rate limit.
pub(crate) async fn tenant(svc: &Service, headers: &HeaderMap) -> ApiResult<Tenant> {
    let key = bearer(headers)?;
    if svc.config.admin_key.as_deref() == Some(key) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the admin key cannot act as a tenant"));
    }
    let t = svc
        .store
        .tenant_by_key_hash(&hash_key(key))
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown API key"))?;
    access_log::note_tenant(t.id.as_str());
    if !svc.rate_allow(t.id.as_str()) {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; slow down"));
    }
    Ok(t)
}

/// Checks the admin key for `what`.
fn admin(svc: &Service, headers: &HeaderMap, what: &str) -> ApiResult<()> {
    let key = bearer(headers)?;
    let Some(admin) = svc.config.admin_key.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} is disabled: TESSERA_ADMIN_KEY is not set"),
        ));
    };
    if key != admin {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("{what} needs the admin key")));
    }
    Ok(())
}

fn body(b: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body is too large")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
        }
    })
}

fn utf8(b: &Bytes) -> ApiResult<&str> {
    std::str::from_utf8(b).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", "body is not UTF-8"))
}

/// Token bucket per tenant.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: std::sync::Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn allow(&self, tenant: &str, per_s: u32) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let burst = f64::from(per_s.max(1)) * 2.0;
        let now = Instant::now();
        let (tokens, last) = b.entry(tenant.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * f64::from(per_s)).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
