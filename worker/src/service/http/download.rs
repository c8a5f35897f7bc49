//! `GET /v1/jobs/{id}/output`: a finished job's clip, with `Range` support;
//! egress is metered in the ledger.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tessera_metering::{AttemptRef, UsageEvent};

use super::error::{ApiError, ApiResult};
use super::views::ErrorBody;
use super::{own_job, tenant};
use crate::service::Service;

/// Parses a single `bytes=` range against a length.
fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return None;
            }
            (len.saturating_sub(n), len - 1)
        }
        (s, "") => (s.parse().ok()?, len - 1),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(len - 1)),
    };
    (start <= end && start < len).then_some((start, end))
}

/// The clip of a finished job (MJPEG AVI), whole or one byte range.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/output", tag = "jobs", operation_id = "get_output",
    params(
        ("id" = String, Path, pattern = "^j_[0-9a-fA-F]{16}$", description = "Job id"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`"),
    ),
    responses(
        (status = 200, description = "The whole clip", content_type = "video/x-msvideo", body = Vec<u8>,
            headers(("Accept-Ranges" = String, description = "`bytes`"))),
        (status = 206, description = "The requested range", content_type = "video/x-msvideo", body = Vec<u8>,
            headers(("Content-Range" = String, description = "`bytes START-END/LENGTH`"))),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "The admin key cannot act as a tenant", body = ErrorBody),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 409, description = "The job has no output (yet)", body = ErrorBody),
        (status = 410, description = "The output is no longer retained", body = ErrorBody),
        (status = 416, description = "The range is not satisfiable",  body = ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */LENGTH`"))),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry", body = ErrorBody),
    ),
    security(("tenant_key" = []))
)]
pub(super) async fn output(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let t = tenant(&svc, &headers).await?;
    let j = own_job(&svc, &t, &id).await?;
    let path =
        j.output.as_ref().map(|o| o.path.clone()).ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "not_ready", format!("job is {}, no output", j.state))
        })?;
    let data = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::new(StatusCode::GONE, "expired", "output is no longer retained"))?;
    let len = data.len() as u64;
    let (status, slice, range) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (StatusCode::OK, &data[..], None),
        Some(r) => match (len > 0).then(|| parse_range(r, len)).flatten() {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, &data[s as usize..=e as usize], Some((s, e))),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                    Json(json!({"error": {"code": "bad_range", "message": "range not satisfiable", "fields": []}})),
                )
                    .into_response())
            }
        },
    };
    let a = AttemptRef {
        tenant_id: t.id.to_string(),
        tier: t.tier.clone(),
        job_id: j.id.to_string(),
        attempt: j.attempts,
        chunk: None,
    };
    let served = slice.len() as i64;
    let event = UsageEvent::egress(&a, svc.worker.as_str(), svc.next_seq(), served);
    if svc.store.append(&[event]).await.map_err(ApiError::store)?.first() == Some(&true) {
        svc.metrics.record_egress(t.id.as_str(), served as u64);
    }
    let mut resp = Response::new(Body::from(slice.to_vec()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, "video/x-msvideo".parse().expect("static header"));
    h.insert(header::ACCEPT_RANGES, "bytes".parse().expect("static header"));
    if let Some((s, e)) = range {
        h.insert(header::CONTENT_RANGE, format!("bytes {s}-{e}/{len}").parse().map_err(ApiError::internal)?);
    }
    Ok(resp)
}
