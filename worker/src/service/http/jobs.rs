//! `/v1/jobs`: submit, list, get, cancel, and a finished job's metadata (its
//! clip is [`super::download`]). A tenant sees only its own jobs: anything
//! else is 404, as if it did not exist.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use tessera_metering::price::{from_micros, to_micros};
use tessera_metering::{quote, AdmittedQuote, Lane};
use tessera_store::{Job, JobFilter, JobId, JobState, NewJob, StoreError, Submitted, Tenant};
use utoipa::IntoParams;

use super::error::{ApiError, ApiResult};
use super::openapi::SpecBody;
use super::views::{ChunkView, ErrorBody, JobPage, JobView, TenantErrors};
use super::{body, tenant, utf8};
use crate::service::Service;
use crate::spec::{self, SpecFormat, SpecLimits};

/// The `Idempotency-Key` header, checked as the document's pattern says.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    v.to_str()
        .ok()
        .filter(|k| (1..=128).contains(&k.len()) && k.bytes().all(|c| c.is_ascii_graphic()))
        .map(|k| Some(k.to_string()))
        .ok_or_else(|| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                "bad_idempotency_key",
                "Idempotency-Key",
                "must be 1 to 128 visible ASCII characters",
            )
        })
}

/// Submits a job: validated, priced, admitted against the tenant's tier and queued in one step.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs", operation_id = "submit_job",
    request_body(content = SpecBody, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$",
        description = "Makes the submission safe to retry: the same key and body return the same job (200)")),
    responses(
        (status = 201, description = "Queued", body = JobView,
            headers(("Location" = String, description = "The job's URL")),
            links(
                ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
                ("CancelJob" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/id")))),
                ("GetOutput" = (operation_id = "get_output", parameters(("id" = "$response.body#/id")))),
                ("GetMetadata" = (operation_id = "get_metadata", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 200, description = "The job this Idempotency-Key and body already made", body = JobView),
        (status = 400, description = "Not JSON, or a bad Idempotency-Key", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused with another body, or the tenant's tier left the price book", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "The spec is invalid; `fields` names each problem", body = ErrorBody),
        TenantErrors,
    ),
    security(("tenant_key" = []))
)]
pub(super) async fn submit(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let t = tenant(&svc, &headers).await?;
    let b = body(b)?;
    let key = idempotency_key(&headers)?;
    let raw = spec::parse(utf8(&b)?, SpecFormat::Json).map_err(ApiError::spec)?;
    let js = raw.validate(&SpecLimits::from_price_book(&svc.book)).map_err(ApiError::spec)?;
    let q = quote(&svc.book, &js.quote_request())
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", e.to_string()))?;
    // The quote is stored with the job: it is what the job is billed, on
    // whichever worker (and price book) finishes it.
    let admitted = AdmittedQuote::new(&svc.book, &js.quote_request(), &q, js.frames)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", e.to_string()))?;
    let spec_json = serde_json::to_string(&raw).map_err(ApiError::internal)?;
    let body_hash = hex::encode(Sha256::digest(spec_json.as_bytes()));
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
        spec_json,
        template: js.template.id(),
        lane,
        frames_total: js.frames,
        fps: js.fps,
        price_micros: to_micros(q.price),
        quote: Some(admitted),
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
            let detail = serde_json::to_string(&a).unwrap_or_default();
            let mut err = ApiError::field(StatusCode::FORBIDDEN, "admission_refused", "tier", detail);
            err.message = a.to_string();
            err
        }
        other => ApiError::store(other),
    })?;
    let job = match &submitted {
        Submitted::New { job, .. } => job,
        Submitted::Existing(j) | Submitted::Conflict(j) => j,
    };
    super::access_log::note_job(job.id.as_str());
    match submitted {
        Submitted::New { job, warnings } => {
            svc.wake.notify_one();
            svc.svc_metrics.submitted.with_label_values(&[job.lane.as_str()]).inc();
            let mut v = JobView::new(&job, &svc.book.currency);
            v.warnings = Some(warnings);
            let location = format!("/v1/jobs/{}", job.id);
            Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(v)).into_response())
        }
        Submitted::Existing(j) => Ok((StatusCode::OK, Json(JobView::new(&j, &svc.book.currency))).into_response()),
        Submitted::Conflict(j) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            format!("Idempotency-Key was used for job {} with another body", j.id),
        )),
    }
}

/// The calling tenant's job `id`, or 404 (also for an id that is not even
/// text: axum's own answer would be a plain-text 400).
pub(crate) async fn own_job(svc: &Service, t: &Tenant, id: Result<Path<String>, PathRejection>) -> ApiResult<Job> {
    let id = id.ok().and_then(|Path(id)| JobId::parse(&id)).ok_or_else(|| ApiError::not_found("job"))?;
    match svc.store.job(&id).await.map_err(ApiError::store)? {
        Some(j) if j.tenant_id == t.id => {
            super::access_log::note_job(j.id.as_str());
            Ok(j)
        }
        _ => Err(ApiError::not_found("job")),
    }
}

/// One job, with its chunks and the GPU time metered so far.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = String, Path, pattern = "^j_[0-9a-fA-F]{16}$", description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        TenantErrors,
    ),
    security(("tenant_key" = []))
)]
pub(super) async fn get_job(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    let t = tenant(&svc, &headers).await?;
    let j = own_job(&svc, &t, id).await?;
    let mut v = JobView::new(&j, &svc.book.currency);
    let chunks = svc.store.chunks(&j.id).await.map_err(ApiError::store)?;
    v.chunks = Some(chunks.iter().map(ChunkView::from).collect());
    let usage = svc.store.job_gpu_ns(&j.id).await.map_err(ApiError::store)?;
    v.usage_gpu_ns = Some(usage.iter().map(|(p, ns)| (p.as_str().to_string(), *ns)).collect());
    let billed = svc.store.billed_output(&j.id).await.map_err(ApiError::store)?;
    v.billed = Some(billed.map(|(_, micros)| from_micros(micros).to_string()));
    v.billed_frames = Some(billed.map(|(frames, _)| frames));
    Ok(Json(v))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, serde::Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only jobs in this state.
    state: Option<JobState>,
    /// Only jobs in this lane.
    lane: Option<Lane>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^-?[0-9]{1,18}:j_[0-9a-fA-F]{16}$")]
    cursor: Option<String>,
}

/// Parses a cursor exactly as the document's pattern for `cursor` describes it.
fn parse_cursor(c: &str) -> Option<(i64, JobId)> {
    let (ms, id) = c.split_once(':')?;
    let digits = ms.strip_prefix('-').unwrap_or(ms);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((ms.parse().ok()?, JobId::parse(id)?))
}

/// The calling tenant's jobs, newest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "A bad query parameter", body = ErrorBody),
        TenantErrors,
    ),
    security(("tenant_key" = []))
)]
pub(super) async fn list(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<JobPage>> {
    let t = tenant(&svc, &headers).await?;
    let Query(q) = q.map_err(|e| ApiError::bad_query(e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_query("limit must be 1 to 200"));
    }
    let before = q.cursor.as_deref().map(|c| parse_cursor(c).ok_or_else(|| ApiError::bad_query("bad cursor")));
    let filter = JobFilter { state: q.state, lane: q.lane, before: before.transpose()?, limit };
    let jobs = svc.store.jobs(&t.id, &filter).await.map_err(ApiError::store)?;
    let next =
        (jobs.len() as u32 == limit).then(|| jobs.last().map(|j| format!("{}:{}", j.created_at_ms, j.id))).flatten();
    Ok(Json(JobPage { jobs: jobs.iter().map(|j| JobView::new(j, &svc.book.currency)).collect(), next_cursor: next }))
}

/// Cancels a job: a queued one at once (its reservation released), a running
/// one at its next frame (billed for the frames delivered). Cancelling a
/// finished job changes nothing.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job",
    params(("id" = String, Path, pattern = "^j_[0-9a-fA-F]{16}$", description = "Job id")),
    responses(
        (status = 200, description = "The job after the request", body = JobView),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        TenantErrors,
    ),
    security(("tenant_key" = []))
)]
pub(super) async fn cancel(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<JobView>> {
    let t = tenant(&svc, &headers).await?;
    let j = own_job(&svc, &t, id).await?;
    let j =
        svc.store.request_cancel(&j.id).await.map_err(ApiError::store)?.ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(JobView::new(&j, &svc.book.currency)))
}

/// The metadata sidecar of a finished job's clip.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/metadata", tag = "jobs", operation_id = "get_metadata",
    params(("id" = String, Path, pattern = "^j_[0-9a-fA-F]{16}$", description = "Job id")),
    responses(
        (status = 200, description = "The sidecar: spec, frames, chunks, GPU time per pass, checksums",
            content_type = "application/json", body = Object),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 409, description = "The job has no output (yet)", body = ErrorBody),
        (status = 410, description = "The output is no longer retained", body = ErrorBody),
        TenantErrors,
    ),
    security(("tenant_key" = []))
)]
pub(super) async fn metadata(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let t = tenant(&svc, &headers).await?;
    let j = own_job(&svc, &t, id).await?;
    let path = j
        .output
        .map(|o| o.metadata_path)
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "not_ready", format!("job is {}, no metadata", j.state)))?;
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|_| ApiError::new(StatusCode::GONE, "expired", "metadata is no longer retained"))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}
