//! Tenants, the fleet, quotes and usage: `/v1/tenants` and `/v1/workers` for
//! the operator (admin key), `/v1/quote` and `/v1/usage` for a tenant.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use tessera_metering::price::from_micros;
use tessera_metering::quote;
use tessera_store::{tier_of, StoreError};

use super::error::{ApiError, ApiResult};
use super::openapi::{NewTenantBody, SpecBody};
use super::views::{
    AdminErrors, Admission, ErrorBody, MonthView, QuoteView, TenantCreated, TenantErrors, UsageView, WorkerList,
    WorkerView,
};
use super::{admin, body, hash_key, tenant, utf8};
use crate::service::Service;
use crate::spec::{self, SpecFormat, SpecLimits};

/// The fleet: every registered worker, with its last heartbeat.
#[utoipa::path(
    get, path = "/v1/workers", tag = "admin", operation_id = "list_workers",
    responses(
        (status = 200, description = "Every registered worker", body = WorkerList),
        AdminErrors,
    ),
    security(("admin_key" = []))
)]
pub(super) async fn workers(State(svc): State<Arc<Service>>, headers: HeaderMap) -> ApiResult<Json<WorkerList>> {
    admin(&svc, &headers, "listing workers")?;
    let now = svc.store.now_ms();
    let workers = svc.store.workers().await.map_err(ApiError::store)?;
    let workers =
        workers.iter().map(|w| WorkerView::new(w, svc.worker_alive(w, now), w.info.id == svc.worker)).collect();
    Ok(Json(WorkerList { workers }))
}

/// The name of a new tenant, checked as the document's `NewTenant` pattern states.
fn tenant_name(v: &Value) -> ApiResult<String> {
    let invalid = |m: &str| ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "name", m);
    let name = v.get("name").and_then(Value::as_str).ok_or_else(|| invalid("required string"))?;
    if name.chars().count() > 64 || name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(invalid("must be 1 to 64 characters, without control characters, not only white space"));
    }
    Ok(name.to_string())
}

/// Creates a tenant and its API key.
#[utoipa::path(
    post, path = "/v1/tenants", tag = "admin", operation_id = "create_tenant",
    request_body(content = NewTenantBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the API key is shown only now", body = TenantCreated),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 409, description = "A tenant of that name exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid; `fields` names it", body = ErrorBody),
        AdminErrors,
    ),
    security(("admin_key" = []))
)]
pub(super) async fn create_tenant(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    admin(&svc, &headers, "creating tenants")?;
    let b = body(b)?;
    let v: Value = serde_json::from_str(utf8(&b)?)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("body is not JSON: {e}")))?;
    let unprocessable = |field: &str, m: &str| ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "invalid", field, m);
    let obj = v.as_object().ok_or_else(|| unprocessable("", "the body must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "name" | "tier")) {
        return Err(unprocessable(k, "unknown field (expected `name` and `tier`)"));
    }
    let name = tenant_name(&v)?;
    let tier = v.get("tier").and_then(Value::as_str).ok_or_else(|| unprocessable("tier", "required string"))?;
    let mut raw = [0u8; 24];
    getrandom::getrandom(&mut raw).map_err(ApiError::internal)?;
    let api_key = format!("tsk_{}", hex::encode(raw));
    // The tenant and its key's hash are one row, written once.
    let t = svc.store.create_tenant(&svc.book, &name, tier, Some(&hash_key(&api_key))).await.map_err(|e| match e {
        StoreError::TenantExists(_) => ApiError::new(StatusCode::CONFLICT, "exists", e.to_string()),
        StoreError::UnknownTier { .. } => unprocessable("tier", &e.to_string()),
        other => ApiError::store(other),
    })?;
    svc.metrics.touch_tenant(t.id.as_str(), &t.tier, svc.ctx.timing_source());
    let created = TenantCreated { id: t.id.to_string(), name: t.name, tier: t.tier, api_key };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Prices a spec and says whether the calling tenant's tier would admit it now.
#[utoipa::path(
    post, path = "/v1/quote", tag = "billing", operation_id = "quote",
    request_body(content = SpecBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The price, its breakdown and the admission verdict", body = QuoteView),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 409, description = "The tenant's tier left the price book", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "The spec is invalid; `fields` names each problem", body = ErrorBody),
        TenantErrors,
    ),
    security(("tenant_key" = []))
)]
pub(super) async fn quote_handler(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<QuoteView>> {
    let t = tenant(&svc, &headers).await?;
    let b = body(b)?;
    let js = spec::parse(utf8(&b)?, SpecFormat::Json)
        .and_then(|r| r.validate(&SpecLimits::from_price_book(&svc.book)))
        .map_err(ApiError::spec)?;
    let req = js.quote_request();
    let q = quote(&svc.book, &req)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", e.to_string()))?;
    let tier = tier_of(&svc.book, &t.tier).map_err(ApiError::store)?;
    let usage = svc.store.month_usage(&t.id).await.map_err(ApiError::store)?;
    let verdict = tier
        .check_features(&t.tier, &req, js.lane)
        .and_then(|()| tier.check_caps(&t.tier, &usage, req.output_seconds, q.price));
    let admission = match verdict {
        Ok(warnings) => Admission { admissible: true, warnings: Some(warnings), refusal: None, message: None },
        Err(e) => Admission { admissible: false, warnings: None, message: Some(e.to_string()), refusal: Some(e) },
    };
    Ok(Json(QuoteView { quote: q, admission }))
}

/// The calling tenant's metered usage, summed from the ledger.
#[utoipa::path(
    get, path = "/v1/usage", tag = "billing", operation_id = "usage",
    responses(
        (status = 200, description = "Totals over the ledger and this month's use", body = UsageView),
        TenantErrors,
    ),
    security(("tenant_key" = []))
)]
pub(super) async fn usage(State(svc): State<Arc<Service>>, headers: HeaderMap) -> ApiResult<Json<UsageView>> {
    let t = tenant(&svc, &headers).await?;
    // Summed by the store: a tenant's ledger is never loaded whole.
    let totals = svc.store.usage_totals(&t.id).await.map_err(ApiError::store)?;
    let month = svc.store.month_usage(&t.id).await.map_err(ApiError::store)?;
    Ok(Json(UsageView {
        tenant: t.name,
        tier: t.tier,
        currency: svc.book.currency.clone(),
        gpu_ns: totals.gpu_ns.iter().map(|(p, ns)| (p.as_str().to_string(), *ns)).collect(),
        output_seconds: totals.output_seconds().normalize().to_string(),
        charges: from_micros(totals.charged_micros()).to_string(),
        egress_bytes: totals.egress_bytes,
        storage_byte_seconds: totals.storage_byte_seconds,
        this_month: MonthView {
            output_seconds: month.used_seconds.normalize().to_string(),
            reserved_seconds: month.reserved_seconds.normalize().to_string(),
            spent: month.spent.to_string(),
            reserved_spend: month.reserved_spend.to_string(),
        },
    }))
}
