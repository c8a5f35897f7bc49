//! The HTTP API (`/v1`), built by [`app`] and tested in-process with `oneshot`.
//!
//! Every error is JSON, `{"error": {"code", "message", "fields"}}`, with a 4xx
//! status for anything the caller can fix; a store that is full, busy or
//! unreachable answers 503 with `Retry-After`; other 5xx bodies hide details,
//! which are logged once. A tenant sees only its own jobs, outputs and usage:
//! anything else is 404, as if it did not exist. Any worker of a fleet answers
//! any request: everything comes from the shared store and data directory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use tessera_metering::price::{from_micros, to_micros};
use tessera_metering::{quote, Lane};
use tessera_store::{tier_of, Chunk, Job, JobFilter, JobId, JobState, NewJob, StoreError, Submitted, Tenant};

use super::Service;
use crate::spec::{self, FieldError, SpecFormat, SpecLimits};

/// The API's error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Vec<FieldError>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), fields: Vec::new() }
    }
    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; it has been logged")
    }
    fn bad_query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", message)
    }

    /// A store error: transient faults are 503 (try again), a tier missing from
    /// the price book is the operator's to fix (409), the rest is internal.
    fn store(e: StoreError) -> Self {
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "fields": self.fields}});
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut resp = (self.status, Json(body)).into_response();
        if retry {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Routes of the API port.
pub fn app(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/v1/tenants", post(create_tenant))
        .route("/v1/workers", get(workers))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel))
        .route("/v1/jobs/{id}/output", get(super::download::output))
        .route("/v1/jobs/{id}/metadata", get(metadata))
        .route("/v1/quote", post(quote_handler))
        .route("/v1/usage", get(usage))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
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

pub const OPENAPI: &str = include_str!("openapi.json");

/// Ready to take traffic: the store answers, the GPU has no error, and the
/// worker is not draining.
async fn readyz(State(svc): State<Arc<Service>>) -> Response {
    let store = svc.store.ping().await.is_ok();
    let gpu = svc.ctx.check_errors().is_ok();
    let draining = svc.shutting_down();
    let status = if store && gpu && !draining { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({"store": store, "gpu": gpu, "draining": draining, "adapter": svc.ctx.adapter.name,
                      "worker": svc.worker, "backend": svc.store.kind().as_str()});
    (status, Json(body)).into_response()
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
    if !svc.rate_allow(t.id.as_str()) {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; slow down"));
    }
    Ok(t)
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

fn json_body(b: &Bytes) -> ApiResult<serde_json::Value> {
    let text =
        std::str::from_utf8(b).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", "body is not UTF-8"))?;
    serde_json::from_str(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("body is not JSON: {e}")))
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

/// The fleet: every registered worker, with its last heartbeat (admin key).
async fn workers(State(svc): State<Arc<Service>>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    admin(&svc, &headers, "listing workers")?;
    let now = tessera_metering::event::now_ms();
    let alive_within = (svc.config.lease.as_millis() as i64).max(3_000);
    let list: Vec<serde_json::Value> = svc
        .store
        .workers()
        .await
        .map_err(ApiError::store)?
        .into_iter()
        .map(|w| {
            let alive = w.stopped_at_ms.is_none() && now - w.last_heartbeat_ms <= alive_within;
            let mut v = serde_json::to_value(&w).unwrap_or_default();
            v["alive"] = json!(alive);
            v["this"] = json!(w.info.id == svc.worker);
            v
        })
        .collect();
    Ok(Json(json!({"workers": list})))
}

async fn create_tenant(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    admin(&svc, &headers, "creating tenants")?;
    let v = json_body(&body(b)?)?;
    let field = |name: &str| -> ApiResult<String> {
        v.get(name).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| {
            let mut e =
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("`{name}` must be a string"));
            e.fields.push(FieldError { field: name.into(), message: "required string".into() });
            e
        })
    };
    let (name, tier) = (field("name")?, field("tier")?);
    if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "`name` must be 1 to 64 printable characters",
        ));
    }
    let mut raw = [0u8; 24];
    getrandom::getrandom(&mut raw).map_err(ApiError::internal)?;
    let api_key = format!("tsk_{}", hex::encode(raw));
    // The tenant and its key's hash are one row, written once.
    let t = svc.store.create_tenant(&svc.book, &name, &tier, Some(&hash_key(&api_key))).await.map_err(|e| match e {
        StoreError::TenantExists(_) => ApiError::new(StatusCode::CONFLICT, "exists", e.to_string()),
        StoreError::UnknownTier { .. } => {
            let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string());
            err.fields.push(FieldError { field: "tier".into(), message: e.to_string() });
            err
        }
        other => ApiError::store(other),
    })?;
    Ok((StatusCode::CREATED, Json(json!({"id": t.id, "name": t.name, "tier": t.tier, "api_key": api_key})))
        .into_response())
}

fn spec_error(e: spec::SpecError) -> ApiError {
    let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", e.to_string());
    if let spec::SpecError::Syntax { .. } = e {
        err.status = StatusCode::BAD_REQUEST;
        err.code = "bad_json";
    }
    err.fields = e.field_errors();
    err
}

fn job_view(svc: &Service, j: &Job) -> serde_json::Value {
    let spec: serde_json::Value = serde_json::from_str(&j.spec_json).unwrap_or_default();
    json!({
        "id": j.id, "state": j.state, "lane": j.lane, "template": j.template,
        "attempts": j.attempts, "max_attempts": j.max_failures,
        "failures": j.failures, "interruptions": j.interruptions, "max_interruptions": j.max_interruptions,
        "worker": j.worker,
        "frames_done": j.frames_done, "frames_total": j.frames_total,
        "price": from_micros(j.price_micros).to_string(), "currency": svc.book.currency,
        "created_at_ms": j.created_at_ms, "started_at_ms": j.started_at_ms, "finished_at_ms": j.finished_at_ms,
        "cancel_requested": j.cancel_requested, "errors": j.errors,
        "output": j.output.as_ref().map(|o| json!({"bytes": o.bytes, "sha256": o.sha256,
            "url": format!("/v1/jobs/{}/output", j.id), "metadata": format!("/v1/jobs/{}/metadata", j.id)})),
        "spec": spec,
    })
}

/// A chunk in the job view: which frames, where it is, who holds (or held) it.
fn chunk_view(c: &Chunk) -> serde_json::Value {
    json!({
        "index": c.index, "kind": c.kind, "first_frame": c.first_frame, "frames": c.frames,
        "state": c.state, "attempts": c.attempts, "interruptions": c.interruptions,
        "frames_done": c.frames_done, "worker": c.worker,
    })
}

async fn submit(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let t = tenant(&svc, &headers).await?;
    let b = body(b)?;
    let text =
        std::str::from_utf8(&b).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", "body is not UTF-8"))?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 128 && k.chars().all(|c| c.is_ascii_graphic()))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_idempotency_key",
                        "Idempotency-Key must be 1 to 128 visible ASCII characters",
                    )
                })?
                .to_string(),
        ),
    };
    let raw = spec::parse(text, SpecFormat::Json).map_err(spec_error)?;
    let js = raw.validate(&SpecLimits::from_price_book(&svc.book)).map_err(spec_error)?;
    let q = quote(&svc.book, &js.quote_request())
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", e.to_string()))?;
    let body_hash = hex::encode(Sha256::digest(serde_json::to_vec(&raw).unwrap_or_default()));
    // A keyed job's id is its tenant, key and body, the same on every worker;
    // a job without a key gets a random one.
    let id = match &key {
        Some(k) => {
            let seed = format!("{}|{k}|{body_hash}", t.id);
            JobId::new(format!("j_{:016x}", tessera_metering::event::fnv1a(seed.as_bytes())))
        }
        None => JobId::random(),
    };
    let lane = js.lane;
    let new = NewJob {
        id,
        tenant_id: t.id.clone(),
        idempotency_key: key,
        body_hash,
        spec_json: serde_json::to_string(&raw).map_err(ApiError::internal)?,
        template: js.template.id(),
        lane,
        frames_total: js.frames,
        fps: js.fps,
        price_micros: to_micros(q.price),
        est_cost_ms: (u64::from(js.width) * u64::from(js.height) * u64::from(js.frames) / 20_000) as i64,
        max_wait_ms: svc.config.lane(lane).max_wait.as_millis() as i64,
        max_failures: svc.config.max_attempts,
        max_interruptions: svc.config.max_interruptions,
        chunk_frames: svc.config.chunk_frames_at(js.fps),
    };
    // Admission (tier, caps) and the enqueue commit together: a refused job is
    // never queued, a queued job always holds its reservation.
    let submitted = svc.store.submit(&svc.book, &t, &new, &js.quote_request(), q.price).await.map_err(|e| match e {
        StoreError::Admission(a) => {
            let mut err = ApiError::new(StatusCode::FORBIDDEN, "admission_refused", a.to_string());
            err.fields
                .push(FieldError { field: "tier".into(), message: serde_json::to_string(&a).unwrap_or_default() });
            err
        }
        other => ApiError::store(other),
    })?;
    match submitted {
        Submitted::New { job, warnings } => {
            svc.wake.notify_one();
            let mut v = job_view(&svc, &job);
            v["warnings"] = json!(warnings);
            let location = format!("/v1/jobs/{}", job.id);
            Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(v)).into_response())
        }
        Submitted::Existing(j) => Ok((StatusCode::OK, Json(job_view(&svc, &j))).into_response()),
        Submitted::Conflict(j) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            format!("Idempotency-Key was used for job {} with another body", j.id),
        )),
    }
}

pub(crate) async fn own_job(svc: &Service, t: &Tenant, id: &str) -> ApiResult<Job> {
    let id = JobId::parse(id).ok_or_else(|| ApiError::not_found("job"))?;
    match svc.store.job(&id).await.map_err(ApiError::store)? {
        Some(j) if j.tenant_id == t.id => Ok(j),
        _ => Err(ApiError::not_found("job")),
    }
}

async fn get_job(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&svc, &headers).await?;
    let j = own_job(&svc, &t, &id).await?;
    let mut v = job_view(&svc, &j);
    let chunks = svc.store.chunks(&j.id).await.map_err(ApiError::store)?;
    v["chunks"] = json!(chunks.iter().map(chunk_view).collect::<Vec<_>>());
    let usage = svc.store.job_gpu_ns(&j.id).await.map_err(ApiError::store)?;
    let usage: std::collections::BTreeMap<&str, i64> = usage.iter().map(|(p, ns)| (p.as_str(), *ns)).collect();
    v["usage_gpu_ns"] = json!(usage);
    Ok(Json(v))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    lane: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&svc, &headers).await?;
    let Query(q) = q.map_err(|e| ApiError::bad_query(e.body_text()))?;
    let state = q.state.as_deref().map(str::parse::<JobState>).transpose().map_err(ApiError::bad_query)?;
    let lane = q.lane.as_deref().map(str::parse::<Lane>).transpose().map_err(ApiError::bad_query)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_query("limit must be 1 to 200"));
    }
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let bad = || ApiError::bad_query("bad cursor");
            let (ms, id) = c.split_once(':').ok_or_else(bad)?;
            Some((ms.parse::<i64>().map_err(|_| bad())?, JobId::parse(id).ok_or_else(bad)?))
        }
    };
    let jobs = svc.store.jobs(&t.id, &JobFilter { state, lane, before, limit }).await.map_err(ApiError::store)?;
    let next =
        (jobs.len() as u32 == limit).then(|| jobs.last().map(|j| format!("{}:{}", j.created_at_ms, j.id))).flatten();
    Ok(Json(json!({"jobs": jobs.iter().map(|j| job_view(&svc, j)).collect::<Vec<_>>(), "next_cursor": next})))
}

async fn cancel(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&svc, &headers).await?;
    let j = own_job(&svc, &t, &id).await?;
    // A queued job is cancelled (and its reservation released) at once; a
    // running one stops at its next frame.
    let j =
        svc.store.request_cancel(&j.id).await.map_err(ApiError::store)?.ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(job_view(&svc, &j)))
}

async fn metadata(State(svc): State<Arc<Service>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    let t = tenant(&svc, &headers).await?;
    let j = own_job(&svc, &t, &id).await?;
    let path = j
        .output
        .map(|o| o.metadata_path)
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "not_ready", format!("job is {}, no metadata", j.state)))?;
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|_| ApiError::new(StatusCode::GONE, "expired", "metadata is no longer retained"))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

async fn quote_handler(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&svc, &headers).await?;
    let b = body(b)?;
    let text =
        std::str::from_utf8(&b).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", "body is not UTF-8"))?;
    let js = spec::parse(text, SpecFormat::Json)
        .and_then(|r| r.validate(&SpecLimits::from_price_book(&svc.book)))
        .map_err(spec_error)?;
    let req = js.quote_request();
    let q = quote(&svc.book, &req)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", e.to_string()))?;
    let tier = tier_of(&svc.book, &t.tier).map_err(ApiError::store)?;
    let usage = svc.store.month_usage(&t.id).await.map_err(ApiError::store)?;
    let verdict = match tier.check_features(&t.tier, &req, js.lane) {
        Ok(()) => tier
            .check_caps(&t.tier, &usage, req.output_seconds, q.price)
            .map(|w| json!({"admissible": true, "warnings": w})),
        Err(e) => Err(e),
    };
    let mut v = serde_json::to_value(&q).map_err(ApiError::internal)?;
    v["admission"] = verdict.unwrap_or_else(|e| json!({"admissible": false, "refusal": e, "message": e.to_string()}));
    Ok(Json(v))
}

async fn usage(State(svc): State<Arc<Service>>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&svc, &headers).await?;
    // Summed by the store: a tenant's ledger is never loaded whole.
    let totals = svc.store.usage_totals(&t.id).await.map_err(ApiError::store)?;
    let gpu: std::collections::BTreeMap<&str, i64> = totals.gpu_ns.iter().map(|(p, ns)| (p.as_str(), *ns)).collect();
    let month = svc.store.month_usage(&t.id).await.map_err(ApiError::store)?;
    Ok(Json(json!({
        "tenant": t.name, "tier": t.tier, "currency": svc.book.currency,
        "gpu_ns": gpu, "output_seconds": totals.output_seconds().normalize().to_string(),
        "charges": from_micros(totals.charged_micros()).to_string(),
        "egress_bytes": totals.egress_bytes, "storage_byte_seconds": totals.storage_byte_seconds,
        "this_month": {"output_seconds": month.used_seconds.normalize().to_string(), "reserved_seconds": month.reserved_seconds.normalize().to_string(),
                       "spent": month.spent.to_string(), "reserved_spend": month.reserved_spend.to_string()},
    })))
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
