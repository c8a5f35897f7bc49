//! Response bodies: typed, so the OpenAPI document describes exactly what the
//! handlers serialize (`utoipa::ToSchema` on the same structs).

use std::collections::BTreeMap;

use serde::Serialize;
use tessera_metering::price::from_micros;
use tessera_metering::price::Quote;
use tessera_metering::tiers::AdmissionError;
use tessera_metering::{AdmittedQuote, Lane};
use tessera_store::{Chunk, ChunkKind, ChunkState, Job, JobState, Worker};
use utoipa::ToSchema;

use crate::spec::FieldError;

/// `{"error": {...}}`: every 4xx and 5xx body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, in words and per field.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_spec`, `not_found`.
    pub code: String,
    pub message: String,
    /// One entry per offending field (`tiles.cols`, `params.speed`); may be empty.
    pub fields: Vec<FieldErrorView>,
}

/// One problem with one field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldErrorView {
    pub field: String,
    pub message: String,
}

impl From<&FieldError> for FieldErrorView {
    fn from(e: &FieldError) -> Self {
        Self { field: e.field.clone(), message: e.message.clone() }
    }
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    pub status: String,
}

/// `GET /readyz`: ready when the store answers, the GPU is sound and the worker is not draining.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub store: bool,
    pub gpu: bool,
    pub draining: bool,
    pub adapter: String,
    pub worker: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
}

/// A finished job's clip.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputView {
    pub bytes: i64,
    pub sha256: String,
    /// Where to download the clip.
    pub url: String,
    /// Where to read the clip's metadata sidecar.
    pub metadata: String,
}

/// A chunk of a job: which frames, where it is, who holds (or held) it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkView {
    pub index: u32,
    pub kind: ChunkKind,
    pub first_frame: u32,
    pub frames: u32,
    pub state: ChunkState,
    pub attempts: u32,
    pub interruptions: u32,
    pub frames_done: u32,
    pub worker: Option<String>,
}

impl From<&Chunk> for ChunkView {
    fn from(c: &Chunk) -> Self {
        Self {
            index: c.index,
            kind: c.kind,
            first_frame: c.first_frame,
            frames: c.frames,
            state: c.state,
            attempts: c.attempts,
            interruptions: c.interruptions,
            frames_done: c.frames_done,
            worker: c.worker.as_ref().map(|w| w.to_string()),
        }
    }
}

/// A job as its tenant sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[schema(pattern = "^j_[0-9a-f]{16}$")]
    pub id: String,
    pub state: JobState,
    pub lane: Lane,
    /// The template's id, `name@version`.
    pub template: String,
    /// Attempts started.
    pub attempts: u32,
    /// Failures allowed before the job is dead.
    pub max_attempts: u32,
    pub failures: u32,
    pub interruptions: u32,
    pub max_interruptions: u32,
    /// The worker that last claimed one of its chunks.
    pub worker: Option<String>,
    pub frames_done: u32,
    pub frames_total: u32,
    /// The quoted price, a decimal string in `currency`: what the job is
    /// billed when every frame is delivered.
    pub price: String,
    pub currency: String,
    /// The quote as admitted (rates, the price book's fingerprint, line
    /// items): the job is billed by it whatever book a later worker runs with.
    /// Null for jobs admitted before quotes were stored.
    pub quote: Option<AdmittedQuote>,
    /// `GET /v1/jobs/{id}` only: what was billed, a decimal string in
    /// `currency` (the quote, or the same rates for the frames a cancel
    /// delivered); null until the job is billed, and for a job that delivered nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billed: Option<Option<String>>,
    /// `GET /v1/jobs/{id}` only: the frames billed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billed_frames: Option<Option<u32>>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub cancel_requested: bool,
    pub errors: Vec<String>,
    pub output: Option<OutputView>,
    /// The spec as admitted, defaults filled in.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// `GET /v1/jobs/{id}` only: the job's chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<ChunkView>>,
    /// `GET /v1/jobs/{id}` only: GPU nanoseconds metered per pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_gpu_ns: Option<BTreeMap<String, i64>>,
    /// `POST /v1/jobs` (201) only: admission warnings (budget nearly spent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

impl JobView {
    pub fn new(j: &Job, currency: &str) -> Self {
        Self {
            id: j.id.to_string(),
            state: j.state,
            lane: j.lane,
            template: j.template.clone(),
            attempts: j.attempts,
            max_attempts: j.max_failures,
            failures: j.failures,
            interruptions: j.interruptions,
            max_interruptions: j.max_interruptions,
            worker: j.worker.as_ref().map(|w| w.to_string()),
            frames_done: j.frames_done,
            frames_total: j.frames_total,
            price: from_micros(j.price_micros).to_string(),
            currency: j.quote.as_ref().map_or(currency, |q| q.currency.as_str()).to_string(),
            quote: j.quote.clone(),
            billed: None,
            billed_frames: None,
            created_at_ms: j.created_at_ms,
            started_at_ms: j.started_at_ms,
            finished_at_ms: j.finished_at_ms,
            cancel_requested: j.cancel_requested,
            errors: j.errors.clone(),
            output: j.output.as_ref().map(|o| OutputView {
                bytes: o.bytes,
                sha256: o.sha256.clone(),
                url: format!("/v1/jobs/{}/output", j.id),
                metadata: format!("/v1/jobs/{}/metadata", j.id),
            }),
            spec: serde_json::from_str(&j.spec_json).unwrap_or_default(),
            chunks: None,
            usage_gpu_ns: None,
            warnings: None,
        }
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /v1/tenants` (201): the new tenant and its API key, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantCreated {
    #[schema(pattern = "^t_[0-9a-f]{16}$")]
    pub id: String,
    pub name: String,
    pub tier: String,
    /// The tenant's API key: stored only as a hash, never shown again.
    pub api_key: String,
}

/// A registered worker and its last heartbeat.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    pub api_addr: String,
    pub adapter: String,
    pub version: String,
    pub started_at_ms: i64,
    pub last_heartbeat_ms: i64,
    pub jobs_in_flight: u32,
    pub stopped_at_ms: Option<i64>,
    /// Heartbeat within the lease (at least 3 s) and not stopped.
    pub alive: bool,
    /// The worker that answered this request.
    pub this: bool,
}

impl WorkerView {
    pub fn new(w: &Worker, alive: bool, this: bool) -> Self {
        Self {
            id: w.info.id.to_string(),
            host: w.info.host.clone(),
            api_addr: w.info.api_addr.clone(),
            adapter: w.info.adapter.clone(),
            version: w.info.version.clone(),
            started_at_ms: w.started_at_ms,
            last_heartbeat_ms: w.last_heartbeat_ms,
            jobs_in_flight: w.jobs_in_flight,
            stopped_at_ms: w.stopped_at_ms,
            alive,
            this,
        }
    }
}

/// `GET /v1/workers`: the fleet.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
}

/// Would the calling tenant's tier admit this job now?
#[derive(Debug, Serialize, ToSchema)]
pub struct Admission {
    pub admissible: bool,
    /// When admissible: warnings (budget nearly spent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
    /// When not: which limit refuses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<AdmissionError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/quote`: the price and whether the tenant's tier admits it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuoteView {
    #[serde(flatten)]
    pub quote: Quote,
    pub admission: Admission,
}

/// This month's use against the tier's caps.
#[derive(Debug, Serialize, ToSchema)]
pub struct MonthView {
    pub output_seconds: String,
    pub reserved_seconds: String,
    pub spent: String,
    pub reserved_spend: String,
}

/// `GET /v1/usage`: the tenant's metered usage, from the ledger.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub tenant: String,
    pub tier: String,
    pub currency: String,
    /// GPU nanoseconds per pass, every attempt.
    pub gpu_ns: BTreeMap<String, i64>,
    /// Billed output, exact decimal seconds.
    pub output_seconds: String,
    /// Charges, a decimal string in `currency`.
    pub charges: String,
    pub egress_bytes: i64,
    pub storage_byte_seconds: i64,
    pub this_month: MonthView,
}

/// The errors any tenant operation may answer, for its `#[utoipa::path]`.
#[derive(Debug, utoipa::IntoResponses)]
pub enum TenantErrors {
    /// Missing or unknown API key
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// Refused: the admin key cannot act as a tenant, or (`POST /v1/jobs`) the
    /// tier does not admit the job (`admission_refused`, naming the limit)
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Rate limited; `Retry-After` says when to try again
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// The store is unavailable; retry after `Retry-After`
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The errors any operator operation may answer.
#[derive(Debug, utoipa::IntoResponses)]
pub enum AdminErrors {
    /// Missing Authorization
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// Not the admin key, or no admin key is configured
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The store is unavailable; retry after `Retry-After`
    #[response(status = 503)]
    Unavailable(ErrorBody),
}
