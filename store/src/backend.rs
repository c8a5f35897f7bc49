//! The driver interface: what a storage backend implements. The conformance
//! suite (`store/tests/conformance.rs`) runs against every implementation.
//!
//! Rules every backend keeps:
//! - every method is one transaction, rolled back on any error, and a failed
//!   commit never returns a connection in a transaction to its pool;
//! - every transition of a running attempt is guarded by job id, attempt
//!   number, lease owner and state `running` ([`Backend::heartbeat`], which
//!   also records progress, and [`Backend::settle`]), and answers
//!   [`crate::StoreError::LeaseLost`] when the guard fails;
//! - ledger appends skip ids already recorded and report which rows are new;
//! - decisions (the next state, the rank) come from [`crate::transition`] and
//!   [`crate::score`], never from SQL.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use rust_decimal::Decimal;
use tessera_metering::tiers::{MonthUsage, Tier};
use tessera_metering::{Lane, Pass, UsageEvent};

use crate::error::StoreError;
use crate::transition::AttemptEnd;
use crate::types::{
    Chunk, Claimed, EventFilter, Job, JobFilter, JobId, JobState, LaneDepth, Lease, NewJob, Tenant, TenantId,
    UsageTotals, Worker, WorkerId, WorkerInfo,
};

pub type Result<T> = std::result::Result<T, StoreError>;

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// A job asking to be admitted and queued: admission (the cap reservation) and
/// the insert commit together or not at all.
#[derive(Debug, Clone)]
pub struct Submit<'a> {
    pub job: &'a NewJob,
    pub tenant: &'a Tenant,
    pub tier: &'a Tier,
    /// Output seconds of the clip, checked against the monthly cap.
    pub output_seconds: Decimal,
    pub price: Decimal,
    pub tier_weight_ms: i64,
    pub now_ms: i64,
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Admitted and queued, with the admission's warnings (budget at 80 %).
    New { job: Job, warnings: Vec<String> },
    /// The same idempotency key with the same body: the existing job.
    Existing(Job),
    /// The same idempotency key with another body: the existing job.
    Conflict(Job),
}

/// A cap reservation without a queued job (`tessera render --tenant`).
#[derive(Debug, Clone)]
pub struct Reserve<'a> {
    pub job: &'a JobId,
    pub tenant: &'a Tenant,
    pub tier: &'a Tier,
    pub frames: u32,
    pub fps: u32,
    pub output_seconds: Decimal,
    pub price: Decimal,
    pub now_ms: i64,
}

/// The result of a settled attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub job: Job,
    /// For each event passed in: whether it was new to the ledger.
    pub inserted: Vec<bool>,
}

/// An attempt the reaper requeued (or dead-lettered) after its lease expired.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaped {
    pub lease: Lease,
    pub tier: String,
    pub job: Job,
    /// GPU nanoseconds the lost attempt had recorded, per pass.
    pub gpu_ns: BTreeMap<Pass, i64>,
}

/// A retained clip, for storage metering and retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub job: JobId,
    pub tenant: TenantId,
    pub tier: String,
    pub attempt: u32,
    pub bytes: i64,
    pub finished_at_ms: i64,
    pub output_path: String,
    pub metadata_path: Option<String>,
}

/// A segment in the data directory, for storage metering and the sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSegment {
    pub job: JobId,
    pub chunk: u32,
    pub path: String,
    pub bytes: i64,
    pub tenant: TenantId,
    pub tier: String,
    pub job_state: JobState,
}

/// An attempt that is over, with the files of it the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedAttempt {
    pub job: JobId,
    pub attempt: u32,
    pub ended_at_ms: i64,
    /// Paths the store still records (the job's clip and sidecar, the
    /// chunk's segment): not to be removed.
    pub kept: Vec<String>,
}

/// The latest events' tenants and times, from which [`Backend::explain_hot_paths`]
/// binds its tenant and month (an index range scan of `usage_by_time`).
pub(crate) const EXPLAIN_SAMPLE_SQL: &str =
    "SELECT tenant_id, occurred_at_ms FROM usage_events ORDER BY occurred_at_ms DESC, id DESC LIMIT 1000";

/// The tenant with the most of the sampled events (the heaviest plausible
/// one, whose plans are the likeliest to scan) and the month of the latest
/// event; a made-up tenant and the month of `now_ms` on an empty ledger.
pub(crate) fn explain_binds(sample: &[(String, i64)], now_ms: i64) -> (String, String) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (tenant, _) in sample {
        *counts.entry(tenant.as_str()).or_default() += 1;
    }
    let tenant = counts.iter().max_by_key(|(_, n)| **n).map_or("t_explain", |(t, _)| *t).to_string();
    let latest = sample.first().map_or(now_ms, |(_, ms)| *ms);
    (tenant, tessera_metering::event::month_of(latest))
}

/// GPU nanoseconds per (tenant id, pass, attempt outcome or `running`).
pub type GpuTotals = BTreeMap<(String, String, String), i64>;

/// A storage backend.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;
    /// Test-only fault injection (a no-op without the `fault-injection` feature).
    fn faults(&self) -> &crate::faults::Faults;
    async fn ping(&self) -> Result<()>;
    /// The database server's own clock, where the fleet shares one (PostgreSQL);
    /// `None` where the store is this process's (SQLite).
    async fn server_clock_ms(&self) -> Result<Option<i64>>;

    // Tenants.
    /// Creates a tenant; [`StoreError::TenantExists`] when the name is taken.
    async fn create_tenant(&self, tenant: &Tenant, api_key_hash: Option<&str>, now_ms: i64) -> Result<()>;
    async fn set_api_key(&self, tenant: &TenantId, api_key_hash: &str) -> Result<()>;
    async fn tenant(&self, name_or_id: &str) -> Result<Option<Tenant>>;
    async fn tenant_by_key_hash(&self, api_key_hash: &str) -> Result<Option<Tenant>>;
    async fn tenants(&self) -> Result<Vec<Tenant>>;

    // Admission and the queue.
    async fn month_usage(&self, tenant: &TenantId, month: &str) -> Result<MonthUsage>;
    async fn submit(&self, s: &Submit<'_>) -> Result<Submitted>;
    /// Inserts queued jobs without admission (benchmarks).
    #[cfg(feature = "testing")]
    async fn enqueue_unchecked(&self, jobs: &[NewJob], tier_weight_ms: i64, now_ms: i64) -> Result<()>;
    async fn reserve(&self, r: &Reserve<'_>) -> Result<Vec<String>>;
    /// Ends a reservation made with [`Backend::reserve`], appending the
    /// render's events (its billable output among them) in the same transaction.
    async fn finish_reserved(&self, job: &JobId, events: &[UsageEvent]) -> Result<Vec<bool>>;
    async fn job(&self, id: &JobId) -> Result<Option<Job>>;
    async fn jobs(&self, tenant: &TenantId, filter: &JobFilter) -> Result<Vec<Job>>;
    /// A queued job is cancelled at once (and its reservation released); a
    /// running one is flagged and stops at its next frame.
    async fn request_cancel(&self, id: &JobId, now_ms: i64) -> Result<Option<Job>>;
    /// Claims the next chunk: of aged jobs first (most overdue first), then by
    /// lane, rank and chunk order, within `owner`'s share of its job among
    /// `sharers` workers (itself and the idle peers); leases it to `owner`
    /// until `now_ms + lease_ms`.
    async fn claim(&self, owner: &WorkerId, now_ms: i64, lease_ms: i64, sharers: u32) -> Result<Option<Claimed>>;
    /// Renews a lease; returns whether a cancel was requested.
    async fn heartbeat(&self, lease: &Lease, until_ms: i64, frames_done: u32) -> Result<bool>;
    /// Ends an attempt: the row's next state from [`crate::transition::settle`],
    /// `events` appended, the reservation released when final, in one transaction.
    async fn settle(&self, lease: &Lease, end: &AttemptEnd, events: &[UsageEvent], now_ms: i64) -> Result<Settled>;
    /// Requeues (or dead-letters) running attempts whose lease expired before
    /// `now_ms`: any other worker's, and those of the caller `me` that are not
    /// among the attempts it is running (`live`), which only a failed
    /// settlement leaves behind.
    async fn reap(&self, now_ms: i64, me: &WorkerId, live: &[JobId], limit: u32) -> Result<Vec<Reaped>>;
    async fn depths(&self) -> Result<Vec<(Lane, LaneDepth)>>;
    /// A job's chunks, in order.
    async fn chunks(&self, job: &JobId) -> Result<Vec<Chunk>>;
    /// GPU nanoseconds of a job per (chunk, pass).
    async fn chunk_gpu_ns(&self, job: &JobId) -> Result<BTreeMap<(u32, Pass), i64>>;
    /// Every segment on disk.
    async fn segments(&self) -> Result<Vec<StoredSegment>>;
    /// Attempts that ended in `[from_ms, to_ms)`, oldest first, at most `limit`.
    async fn ended_attempts(&self, from_ms: i64, to_ms: i64, limit: u32) -> Result<Vec<EndedAttempt>>;
    /// A named watermark of the fleet's upkeep, if set.
    async fn mark(&self, name: &str) -> Result<Option<i64>>;
    /// Moves a named watermark forward (never back).
    async fn set_mark(&self, name: &str, ms: i64) -> Result<()>;
    /// The job's segments were removed from disk.
    async fn forget_segments(&self, job: &JobId, now_ms: i64) -> Result<()>;
    /// The query plan of the claim, for operators and benchmarks.
    async fn explain_claim(&self) -> Result<String>;
    /// The query plans of the hot paths, as (name, plan): see
    /// [`crate::Store::explain_hot_paths`].
    async fn explain_hot_paths(&self) -> Result<Vec<(String, String)>>;

    // The ledger.
    /// Appends events; returns for each whether it was new.
    async fn append(&self, events: &[UsageEvent]) -> Result<Vec<bool>>;
    /// Appends a running attempt's events while it holds `lease`, in one
    /// transaction with the check; [`crate::StoreError::LeaseLost`] otherwise.
    async fn append_fenced(&self, lease: &Lease, events: &[UsageEvent]) -> Result<Vec<bool>>;
    /// A page of `limit` events matching `filter` (of `tenant`, by id), in
    /// `(occurred_at_ms, id)` order after the key `after`.
    async fn events_page(
        &self,
        filter: &EventFilter,
        tenant: Option<&TenantId>,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<UsageEvent>>;
    async fn job_gpu_ns(&self, job: &JobId) -> Result<BTreeMap<Pass, i64>>;
    async fn usage_totals(&self, tenant: &TenantId) -> Result<UsageTotals>;
    async fn gpu_ns_totals(&self) -> Result<GpuTotals>;
    async fn ledger_charged_micros(&self) -> Result<i64>;
    /// The job's billable output, if billed: (frames, amount in micro-units).
    async fn billed_output(&self, job: &JobId) -> Result<Option<(i64, i64)>>;
    /// Tries to change and delete recorded usage, which must fail: returns the
    /// errors of (update, delete), `None` where the ledger allowed it.
    #[cfg(feature = "testing")]
    async fn tamper_with_ledger(&self) -> Result<(Option<String>, Option<String>)>;

    // Retention.
    async fn retained(&self, finished_before_ms: Option<i64>) -> Result<Vec<Retained>>;
    async fn forget_output(&self, job: &JobId, now_ms: i64) -> Result<()>;
    /// Makes the ledger's partitions of this month and the next (PostgreSQL),
    /// then rolls up the months that ended [`crate::rollup::CLOSE_AFTER_MS`]
    /// before `now_ms` and are still open, oldest first. Returns the months closed.
    async fn maintain_ledger(&self, now_ms: i64) -> Result<Vec<String>>;

    /// Closes every storage period of `period_ms` that ended by `now_ms`
    /// since the meter's watermark ([`crate::storage`]): one event per tenant
    /// and period, appended with the watermark's move. Returns the events and
    /// whether each was new.
    async fn close_storage_periods(&self, now_ms: i64, period_ms: i64) -> Result<(Vec<UsageEvent>, Vec<bool>)>;

    // Workers.
    async fn register_worker(&self, w: &WorkerInfo, now_ms: i64) -> Result<()>;
    async fn worker_heartbeat(&self, id: &WorkerId, jobs_in_flight: u32, now_ms: i64) -> Result<()>;
    async fn worker_stopped(&self, id: &WorkerId, now_ms: i64) -> Result<()>;
    async fn workers(&self) -> Result<Vec<Worker>>;
    /// Takes or renews the lead of a periodic fleet task for `ttl_ms`.
    async fn try_lead(&self, task: &str, worker: &WorkerId, now_ms: i64, ttl_ms: i64) -> Result<bool>;

    /// Wakes `wake` when another process queues work (PostgreSQL: LISTEN).
    /// Returns at once where the backend has no such signal.
    async fn listen(&self, wake: Arc<tokio::sync::Notify>) -> Result<()>;
}
