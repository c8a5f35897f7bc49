//! tessera-store: all of tessera's persistence behind one boundary.
//!
//! [`Store`] owns tenants and their keys, jobs and their leases, cap
//! reservations, the usage ledger, retention and the worker registry. Its API
//! speaks domain types ([`JobState`], [`Lane`](tessera_metering::Lane),
//! [`Lease`], [`UsageEvent`](tessera_metering::UsageEvent), ...); no backend
//! type crosses it, and nothing outside this crate writes SQL.
//!
//! - [`types`]: typed ids, states, leases, jobs, tenants, workers.
//! - [`score`]: the queue's order, computed in Rust and stored as a column.
//! - [`transition`]: the state machine's decisions (retry, interruption,
//!   dead letter, cancel), pure and shared by every backend.
//! - [`backend`]: the driver interface; [`sqlite`] (the embedded default, one
//!   file in the data directory) and [`postgres`] (a fleet of workers on one
//!   database) implement it, each with its own versioned migrations
//!   (`migrations/<backend>/`), applied when the store opens.
//! - [`testing`]: throwaway PostgreSQL databases for tests and benches.
//!
//! The conformance suite in `tests/conformance.rs` runs against every backend.

pub mod backend;
mod binds;
mod chunks;
pub mod error;
pub mod faults;
pub mod postgres;
pub mod rollup;
mod rows;
pub mod score;
mod sql;
pub mod sqlite;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transition;
pub mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rust_decimal::Decimal;
use tessera_metering::event::{month_of, Clock, SystemClock};
use tessera_metering::tiers::{MonthUsage, Tier};
use tessera_metering::{EventKind, Pass, PriceBook, QuoteRequest, UsageEvent};

pub use backend::{Backend, BackendKind, EndedAttempt, GpuTotals, Reaped, Retained, Settled, StoredSegment, Submitted};
pub use error::StoreError;
pub use transition::{AttemptEnd, Delivered};
pub use types::{
    chunk_plan, ArchivedOutput, Chunk, ChunkKind, ChunkState, Claimed, EventFilter, Job, JobFilter, JobId, JobState,
    LaneDepth, Lease, NewJob, Segment, Tenant, TenantId, UsageTotals, Worker, WorkerId, WorkerInfo,
};

pub type Result<T> = std::result::Result<T, StoreError>;

/// Why the reaper requeues an attempt.
pub(crate) const LOST_LEASE_REASON: &str = "worker lost (crashed, killed or paused past its lease); lease expired";
/// Workers without a heartbeat for this long leave the registry.
pub(crate) const WORKER_FORGOTTEN_AFTER_MS: i64 = 7 * 86_400_000;

/// The pool's check before handing out a connection: one still in a
/// transaction (a commit that failed, say on a full disk, and a rollback that
/// could not run) is closed rather than reused, so it can never hold a lock.
pub(crate) async fn fit_for_reuse<C: sqlx::Connection>(conn: &mut C) -> std::result::Result<bool, sqlx::Error> {
    if conn.is_in_transaction() {
        // A rollback queued when the transaction was dropped runs before the ping.
        conn.ping().await?;
    }
    Ok(!conn.is_in_transaction())
}

/// Where a store lives: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| StoreError::BadUrl { url: redact(url), reason: reason.into() };
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(bad("no file: write sqlite://PATH, like sqlite://tessera-data/tessera.db"));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_string()));
        }
        Err(bad("use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"))
    }

    /// The embedded default: `tessera.db` in the data directory.
    pub fn in_data_dir(dir: &Path) -> Self {
        StoreUrl::Sqlite(dir.join("tessera.db"))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            StoreUrl::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

/// A URL with its password replaced, for messages and logs.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            format!("{scheme}://{}:***@{host}", user.split(':').next().unwrap_or_default())
        }
        _ => url.to_string(),
    }
}

/// The database server's clock, read through this host's: the offset between
/// the two is measured at open and every [`ServerClock::RESYNC`] (to within
/// half a round trip), so reading the time costs no query. Every lease, month
/// and storage period of a PostgreSQL fleet is on this clock.
#[derive(Debug, Default)]
pub struct ServerClock {
    offset_ms: std::sync::atomic::AtomicI64,
}

impl ServerClock {
    const RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

    async fn sync(&self, backend: &dyn Backend) -> Result<()> {
        let before = tessera_metering::event::now_ms();
        let Some(server) = backend.server_clock_ms().await? else { return Ok(()) };
        let after = tessera_metering::event::now_ms();
        let offset = server - (before + after) / 2;
        self.offset_ms.store(offset, std::sync::atomic::Ordering::Relaxed);
        if offset.abs() > 1_000 {
            tracing::warn!(
                offset_ms = offset,
                "this host's clock is off the database's: the fleet keeps the database's time"
            );
        }
        Ok(())
    }

    async fn keep_in_sync(clock: std::sync::Weak<Self>, backend: std::sync::Weak<dyn Backend>) {
        loop {
            tokio::time::sleep(Self::RESYNC).await;
            let (Some(clock), Some(backend)) = (clock.upgrade(), backend.upgrade()) else { return };
            if let Err(e) = clock.sync(backend.as_ref()).await {
                tracing::debug!(error = %e, "reading the database's clock (the last offset stays)");
            }
        }
    }
}

impl Clock for ServerClock {
    fn now_ms(&self) -> i64 {
        tessera_metering::event::now_ms() + self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A render admitted outside the queue: what it reserves against the caps.
#[derive(Debug, Clone, Copy)]
pub struct Reservation<'a> {
    pub job: &'a JobId,
    pub request: &'a QuoteRequest,
    pub lane: tessera_metering::Lane,
    pub frames: u32,
    pub price: Decimal,
}

/// The store: one backend behind the domain API.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    url: String,
    /// Every time the store stamps (admission month, leases, retention) comes from here.
    clock: Arc<dyn Clock>,
}

impl Store {
    /// Opens the store at `url` and applies its migrations.
    pub async fn open(url: &StoreUrl) -> Result<Self> {
        match url {
            StoreUrl::Sqlite(_) => Self::open_on(url, Arc::new(SystemClock)).await,
            // A fleet keeps time by its database: leases, months and periods
            // then mean the same instant on every worker, whatever their clocks.
            StoreUrl::Postgres(_) => {
                let clock = Arc::new(ServerClock::default());
                let store = Self::open_on(url, clock.clone()).await?;
                clock.sync(store.backend.as_ref()).await?;
                tokio::spawn(ServerClock::keep_in_sync(Arc::downgrade(&clock), Arc::downgrade(&store.backend)));
                Ok(store)
            }
        }
    }

    /// Opens the store on a clock a test sets (`ManualClock`).
    #[cfg(feature = "testing")]
    pub async fn open_with_clock(url: &StoreUrl, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open_on(url, clock).await
    }

    async fn open_on(url: &StoreUrl, clock: Arc<dyn Clock>) -> Result<Self> {
        let shown = url.to_string();
        let backend: Arc<dyn Backend> = match url {
            StoreUrl::Sqlite(path) => Arc::new(sqlite::SqliteBackend::open(&shown, path).await?),
            StoreUrl::Postgres(u) => Arc::new(postgres::PgBackend::open(&shown, u).await?),
        };
        Ok(Self { backend, url: shown, clock })
    }

    /// The store's URL, password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Now, on the store's clock (what months, leases and retention follow).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The store's clock, for the service's own timestamps.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    pub fn kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// Test-only: makes the next transaction passing `point` fail before commit.
    #[cfg(feature = "testing")]
    pub fn inject_fault(&self, point: &'static str) {
        self.backend.faults().arm(point);
    }

    pub async fn ping(&self) -> Result<()> {
        self.backend.ping().await
    }

    // Tenants.

    /// Creates a tenant of a tier of `book`, with the hash of its API key if any.
    pub async fn create_tenant(
        &self,
        book: &PriceBook,
        name: &str,
        tier: &str,
        api_key_hash: Option<&str>,
    ) -> Result<Tenant> {
        tier_of(book, tier)?;
        let tenant = Tenant { id: TenantId::random(), name: name.into(), tier: tier.into() };
        self.backend.create_tenant(&tenant, api_key_hash, self.now_ms()).await?;
        Ok(tenant)
    }

    pub async fn set_api_key(&self, tenant: &TenantId, api_key_hash: &str) -> Result<()> {
        self.backend.set_api_key(tenant, api_key_hash).await
    }

    /// A tenant by name or id.
    pub async fn tenant(&self, name_or_id: &str) -> Result<Option<Tenant>> {
        self.backend.tenant(name_or_id).await
    }

    pub async fn tenant_by_key_hash(&self, api_key_hash: &str) -> Result<Option<Tenant>> {
        self.backend.tenant_by_key_hash(api_key_hash).await
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        self.backend.tenants().await
    }

    // Admission and the queue.

    /// This month's usage of a tenant: billed outputs and open reservations.
    pub async fn month_usage(&self, tenant: &TenantId) -> Result<MonthUsage> {
        self.backend.month_usage(tenant, &month_of(self.now_ms())).await
    }

    /// A tenant's usage of `month` (`YYYY-MM`, UTC). A job counts against the
    /// month it was admitted in, from its reservation to its bill, even when it
    /// settles in the next one: the cap that admitted it is the one it uses.
    pub async fn month_usage_of(&self, tenant: &TenantId, month: &str) -> Result<MonthUsage> {
        self.backend.month_usage(tenant, month).await
    }

    /// Admits `job` against its tenant's tier (feature map, then the monthly caps
    /// under the store's lock, so concurrent submissions cannot overshoot) and
    /// queues it, in one transaction. An idempotency key seen before returns the
    /// existing job (or a conflict when the body differs) and reserves nothing.
    pub async fn submit(
        &self,
        book: &PriceBook,
        tenant: &Tenant,
        job: &NewJob,
        req: &QuoteRequest,
        price: Decimal,
    ) -> Result<Submitted> {
        let tier = tier_of(book, &tenant.tier)?;
        tier.check_features(&tenant.tier, req, job.lane)?;
        let s = backend::Submit {
            job,
            tenant,
            tier,
            output_seconds: req.output_seconds,
            price,
            tier_weight_ms: i64::from(tier.queue_weight_s) * 1000,
            now_ms: self.now_ms(),
        };
        self.backend.submit(&s).await
    }

    /// Inserts queued jobs without admission or reservation (benchmarks).
    #[cfg(feature = "testing")]
    pub async fn enqueue_unchecked(&self, jobs: &[NewJob], tier_weight_ms: i64) -> Result<()> {
        self.backend.enqueue_unchecked(jobs, tier_weight_ms, self.now_ms()).await
    }

    /// Admits a render that is not queued (`tessera render --tenant`): checks
    /// the tier and reserves its output against the caps. Idempotent per job id.
    pub async fn reserve(&self, book: &PriceBook, tenant: &Tenant, r: &Reservation<'_>) -> Result<Vec<String>> {
        let tier = tier_of(book, &tenant.tier)?;
        tier.check_features(&tenant.tier, r.request, r.lane)?;
        let reserve = backend::Reserve {
            job: r.job,
            tenant,
            tier,
            frames: r.frames,
            fps: r.request.fps,
            output_seconds: r.request.output_seconds,
            price: r.price,
            now_ms: self.now_ms(),
        };
        self.backend.reserve(&reserve).await
    }

    /// Ends a render admitted with [`Store::reserve`]: its events (the billable
    /// output among them, once per job) and the reservation's release commit together.
    pub async fn finish_reserved(&self, job: &JobId, events: &[UsageEvent]) -> Result<Vec<bool>> {
        self.backend.finish_reserved(job, events).await
    }

    pub async fn job(&self, id: &JobId) -> Result<Option<Job>> {
        self.backend.job(id).await
    }

    /// A tenant's jobs, newest first.
    pub async fn jobs(&self, tenant: &TenantId, filter: &JobFilter) -> Result<Vec<Job>> {
        self.backend.jobs(tenant, filter).await
    }

    pub async fn request_cancel(&self, id: &JobId) -> Result<Option<Job>> {
        self.backend.request_cancel(id, self.now_ms()).await
    }

    /// Claims the next chunk for `owner` under a lease of `lease_ms`.
    pub async fn claim(&self, owner: &WorkerId, lease_ms: i64) -> Result<Option<Claimed>> {
        self.backend.claim(owner, self.now_ms(), lease_ms, 1).await
    }

    /// Claims the next chunk for `owner` in a fleet of `peers` other live
    /// workers: of any one job, `owner` holds at most its share of the chunks
    /// (divided among itself and its peers, rounded up), so a clip spreads
    /// over the fleet instead of piling onto whoever polled first, and a
    /// worker that dies takes at most its share of a clip with it.
    pub async fn claim_sharing(&self, owner: &WorkerId, lease_ms: i64, peers: u32) -> Result<Option<Claimed>> {
        self.backend.claim(owner, self.now_ms(), lease_ms, peers.saturating_add(1)).await
    }

    /// Renews `lease` for `lease_ms` and records progress; returns whether a
    /// cancel was requested. [`StoreError::LeaseLost`] once the lease is gone.
    pub async fn heartbeat(&self, lease: &Lease, lease_ms: i64, frames_done: u32) -> Result<bool> {
        self.backend.heartbeat(lease, self.now_ms() + lease_ms, frames_done).await
    }

    /// Ends the attempt of `lease`: its next state, its ledger events and the
    /// reservation's release when final, in one fenced transaction. Only a
    /// succeeded or cancelled attempt may carry the job's billable output, and
    /// every other event must be the attempt's own.
    pub async fn settle(&self, lease: &Lease, end: &AttemptEnd, events: &[UsageEvent]) -> Result<Settled> {
        let delivers = matches!(end, AttemptEnd::Succeeded(_) | AttemptEnd::Cancelled { .. });
        for e in events {
            let own = e.job_id == lease.job.as_str() && (e.kind == EventKind::Output || e.attempt == lease.attempt);
            if !own || (e.kind == EventKind::Output && !delivers) {
                return Err(StoreError::Query(format!("event {} does not belong to the settlement of {lease}", e.id)));
            }
        }
        if let Some(output) = events.iter().find(|e| e.kind == EventKind::Output) {
            let job = self.backend.job(&lease.job).await?.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
            check_bill(&job, output)?;
        }
        self.backend.settle(lease, end, events, self.now_ms()).await
    }

    /// Requeues expired leases, at most `limit`: any other worker's, and those
    /// of `me` whose attempt is not among the `live` ones it is running.
    pub async fn reap(&self, me: &WorkerId, live: &[JobId], limit: u32) -> Result<Vec<Reaped>> {
        self.backend.reap(self.now_ms(), me, live, limit).await
    }

    pub async fn depths(&self) -> Result<Vec<(tessera_metering::Lane, LaneDepth)>> {
        self.backend.depths().await
    }

    /// A job's chunks, in order.
    pub async fn chunks(&self, job: &JobId) -> Result<Vec<Chunk>> {
        self.backend.chunks(job).await
    }

    /// GPU nanoseconds of a job per (chunk, pass): the attempts of each chunk summed.
    pub async fn chunk_gpu_ns(&self, job: &JobId) -> Result<BTreeMap<(u32, Pass), i64>> {
        self.backend.chunk_gpu_ns(job).await
    }

    /// Every segment on disk, with its job's tenant and state.
    pub async fn segments(&self) -> Result<Vec<StoredSegment>> {
        self.backend.segments().await
    }

    /// Attempts that ended in `[from_ms, to_ms)`, oldest first, at most
    /// `limit`, each with the files of it the store keeps: what the upkeep's
    /// sweep reads instead of listing the clips directory.
    pub async fn ended_attempts(&self, from_ms: i64, to_ms: i64, limit: u32) -> Result<Vec<EndedAttempt>> {
        self.backend.ended_attempts(from_ms, to_ms, limit).await
    }

    /// A named watermark of the fleet's upkeep (how far its sweep has read),
    /// shared by whichever worker leads it.
    pub async fn mark(&self, name: &str) -> Result<Option<i64>> {
        self.backend.mark(name).await
    }

    /// Moves a named watermark forward (a stale leader cannot move it back).
    pub async fn set_mark(&self, name: &str, ms: i64) -> Result<()> {
        self.backend.set_mark(name, ms).await
    }

    /// Records that a job's segments were removed from disk.
    pub async fn forget_segments(&self, job: &JobId) -> Result<()> {
        self.backend.forget_segments(job, self.now_ms()).await
    }

    /// The query plan of the claim statement (EXPLAIN), for operators and benches.
    pub async fn explain_claim(&self) -> Result<String> {
        self.backend.explain_claim().await
    }

    /// The query plans (EXPLAIN on PostgreSQL, EXPLAIN QUERY PLAN on SQLite)
    /// of the statements the fleet runs all the time, as (name, plan): the
    /// claim, the queue depths, a tenant's usage totals and month usage
    /// (`/v1/usage`), and a 1000-event page of the ledger of one tenant and of
    /// all. The tenant bound is the one with the most of the latest 1000
    /// events, the month that of the latest event. For operators and benches:
    /// none of these plans should scan `usage_events`, `jobs` or `chunks`.
    pub async fn explain_hot_paths(&self) -> Result<Vec<(String, String)>> {
        self.backend.explain_hot_paths().await
    }

    // The ledger.

    /// Appends events, skipping ids already recorded; for each, whether it was
    /// new. When this returns, every event is durable. A billable output is
    /// refused here: it is written only with the settlement that earns it
    /// ([`Store::settle`], [`Store::finish_reserved`]).
    pub async fn append(&self, events: &[UsageEvent]) -> Result<Vec<bool>> {
        if let Some(e) = events.iter().find(|e| e.kind == EventKind::Output) {
            return Err(StoreError::Query(format!("output {} may only be written by its settlement", e.id)));
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.backend.append(events).await
    }

    /// Appends a running attempt's events (its GPU windows) only while it
    /// holds `lease`: in the same transaction as the check, so a reap either
    /// comes after and counts them, or came first and the append answers
    /// [`StoreError::LeaseLost`]. A late window never reaches the ledger behind
    /// the reaper's back; the attempt records it when it abandons, with its counters.
    pub async fn append_for(&self, lease: &Lease, events: &[UsageEvent]) -> Result<Vec<bool>> {
        if let Some(e) = events.iter().find(|e| e.kind == EventKind::Output || e.job_id != lease.job.as_str()) {
            return Err(StoreError::Query(format!("event {} is not a GPU window of {lease}", e.id)));
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.backend.append_fenced(lease, events).await
    }

    /// Events matching `filter`, oldest first, GPU events with their attempt's
    /// outcome, all in memory: for tests and small ranges. An export pages
    /// through [`Store::events_page`] instead.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<UsageEvent>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.events_page(filter, after.take(), 10_000).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.occurred_at_ms, last.id.clone()));
            let full = page.len() == 10_000;
            all.extend(page);
            if !full {
                break;
            }
        }
        Ok(all)
    }

    /// One page of `limit` events matching `filter`, oldest first, after the
    /// key `(occurred_at_ms, id)` of the previous page's last event: a ledger
    /// of any size is read a page at a time, each an index range scan. A
    /// tenant named by name is resolved to its id first, so the ledger is
    /// read by its tenant index.
    pub async fn events_page(
        &self,
        filter: &EventFilter,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<UsageEvent>> {
        let tenant = match &filter.tenant {
            None => None,
            Some(t) => match self.backend.tenant(t).await? {
                Some(found) => Some(found.id),
                None => return Ok(Vec::new()),
            },
        };
        self.backend.events_page(filter, tenant.as_ref(), after, limit.max(1)).await
    }

    /// A tenant's usage, summed in the store (not event by event in memory).
    pub async fn usage_totals(&self, tenant: &TenantId) -> Result<types::UsageTotals> {
        self.backend.usage_totals(tenant).await
    }

    /// GPU nanoseconds of one job per pass, over all its attempts.
    pub async fn job_gpu_ns(&self, job: &JobId) -> Result<BTreeMap<Pass, i64>> {
        self.backend.job_gpu_ns(job).await
    }

    pub async fn gpu_ns_totals(&self) -> Result<GpuTotals> {
        self.backend.gpu_ns_totals().await
    }

    /// The price charged over the whole ledger, in micro-units (the sum of
    /// every output event's amount): what the workers' `price` counters add
    /// up to, and what the drift alert compares them with.
    pub async fn ledger_charged_micros(&self) -> Result<i64> {
        self.backend.ledger_charged_micros().await
    }

    /// Whether the job already has its billable output.
    pub async fn has_output(&self, job: &JobId) -> Result<bool> {
        Ok(self.backend.billed_output(job).await?.is_some())
    }

    /// What the job was billed, if it was: (frames delivered, amount in micro-units).
    pub async fn billed_output(&self, job: &JobId) -> Result<Option<(u32, i64)>> {
        Ok(self.backend.billed_output(job).await?.map(|(f, m)| (u32::try_from(f).unwrap_or(0), m)))
    }

    /// Tries to update and delete recorded usage; both must fail (the ledger is
    /// append-only). Returns their errors, `None` where one was allowed.
    /// Only with the `testing` feature: no release build can even try.
    #[cfg(feature = "testing")]
    pub async fn tamper_with_ledger(&self) -> Result<(Option<String>, Option<String>)> {
        self.backend.tamper_with_ledger().await
    }

    // Retention.

    /// Retained clips, all or those finished before a time.
    pub async fn retained(&self, finished_before_ms: Option<i64>) -> Result<Vec<Retained>> {
        self.backend.retained(finished_before_ms).await
    }

    pub async fn forget_output(&self, job: &JobId) -> Result<()> {
        self.backend.forget_output(job, self.now_ms()).await
    }

    /// Closes the storage periods that have ended (see [`storage`]): one
    /// ledger event per tenant and period, byte-seconds from each object's
    /// archive to its removal. `period_ms` must divide a day. Returns the
    /// events and whether each was new (for the counters).
    pub async fn close_storage_periods(&self, period_ms: i64) -> Result<(Vec<UsageEvent>, Vec<bool>)> {
        if period_ms <= 0 || 86_400_000 % period_ms != 0 {
            return Err(StoreError::Query(format!("a storage period of {period_ms} ms does not divide a day")));
        }
        self.backend.close_storage_periods(self.now_ms(), period_ms).await
    }

    /// The ledger's monthly upkeep (see [`rollup`]): partitions made ahead on
    /// PostgreSQL, and the months that ended a day ago rolled up. Returns the
    /// months it closed.
    pub async fn maintain_ledger(&self) -> Result<Vec<String>> {
        self.backend.maintain_ledger(self.now_ms()).await
    }

    // Workers.

    pub async fn register_worker(&self, w: &WorkerInfo) -> Result<()> {
        self.backend.register_worker(w, self.now_ms()).await
    }

    pub async fn worker_heartbeat(&self, id: &WorkerId, jobs_in_flight: u32) -> Result<()> {
        self.backend.worker_heartbeat(id, jobs_in_flight, self.now_ms()).await
    }

    pub async fn worker_stopped(&self, id: &WorkerId) -> Result<()> {
        self.backend.worker_stopped(id, self.now_ms()).await
    }

    pub async fn workers(&self) -> Result<Vec<Worker>> {
        self.backend.workers().await
    }

    /// Whether `worker` leads the periodic fleet task `task` for the next `ttl_ms`.
    pub async fn try_lead(&self, task: &str, worker: &WorkerId, ttl_ms: i64) -> Result<bool> {
        self.backend.try_lead(task, worker, self.now_ms(), ttl_ms).await
    }

    /// Wakes `wake` whenever another process queues work; returns at once on
    /// backends without such a signal, else runs until the store closes.
    pub async fn listen(&self, wake: Arc<tokio::sync::Notify>) -> Result<()> {
        self.backend.listen(wake).await
    }
}

/// The bill is the quote: a job's billable output must carry what its
/// admitted quote prices the delivered frames at (the quoted price for every
/// frame ordered, the same rates for fewer). A job admitted before quotes were
/// stored is held to its stored price when delivered whole.
fn check_bill(job: &Job, output: &UsageEvent) -> Result<()> {
    let frames = output.quantity;
    let quoted = match &job.quote {
        Some(q) => Some(tessera_metering::price::to_micros(q.price_of(u32::try_from(frames).unwrap_or(u32::MAX)))),
        None if frames == i64::from(job.frames_total) => Some(job.price_micros),
        None => None,
    };
    match quoted {
        Some(quoted) if quoted != output.amount_micros => Err(StoreError::NotTheQuote {
            job: job.id.to_string(),
            frames,
            quoted_micros: quoted,
            billed_micros: output.amount_micros,
        }),
        _ => Ok(()),
    }
}

/// The tier `name` of `book`, or a clear error (never a panic) when an operator
/// removed it from the price book.
pub fn tier_of<'b>(book: &'b PriceBook, name: &str) -> Result<&'b Tier> {
    book.tiers.get(name).ok_or_else(|| StoreError::UnknownTier {
        tier: name.into(),
        known: book.tiers.keys().cloned().collect::<Vec<_>>().join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_a_backend_and_hide_passwords() {
        assert_eq!(StoreUrl::parse("sqlite://data/t.db").unwrap(), StoreUrl::Sqlite("data/t.db".into()));
        assert_eq!(StoreUrl::parse("sqlite:///abs/t.db").unwrap(), StoreUrl::Sqlite("/abs/t.db".into()));
        let pg = StoreUrl::parse("postgres://u:secret@db:5432/tessera").unwrap();
        assert_eq!(pg.to_string(), "postgres://u:***@db:5432/tessera");
        let err = StoreUrl::parse("mysql://u:secret@h/db").unwrap_err().to_string();
        assert!(err.contains("postgres://") && !err.contains("secret"), "{err}");
        assert!(StoreUrl::parse("sqlite://").is_err());
    }
}
