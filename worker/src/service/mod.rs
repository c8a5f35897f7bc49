//! `tessera serve`: one worker of a fleet (or the only one).
//!
//! Data path: [`http`] validates a job and asks the store to admit and queue it
//! in one transaction; [`scheduler`] claims the best queued job from the
//! store (aged first, then lane and rank) whenever fewer than the adaptive
//! limit ([`metrics::ConcurrencyController`]) are in flight; [`attempt`] owns
//! that attempt's life: its lease and heartbeat, its frames in a render
//! [`group`] of its template, lane and size, and its settlement in the store. Every
//! worker also reaps the expired leases of any other worker, registers itself
//! and heartbeats; one worker at a time does the fleet's [`upkeep`] (storage
//! metering, retention). Every worker serves the whole API: the store is the
//! truth, clips live in a data directory every worker can read; [`download`]
//! streams them from there, metered by the bytes sent.

pub mod attempt;
pub mod config;
pub mod download;
pub mod group;
pub mod http;
pub mod metrics;
pub mod retry;
mod scheduler;
pub mod server;
mod upkeep;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_metering::event::now_ms;
use tessera_metering::{Lane, Metrics, PriceBook};
use tessera_store::{JobId, Store, StoreError, WorkerId, WorkerInfo};

pub use config::ServeConfig;

use crate::gpu::GpuContext;

/// How long a drain waits for attempts in flight to settle.
const DRAIN: Duration = Duration::from_secs(30);

/// Everything the service's tasks share.
#[derive(Debug)]
pub struct Service {
    pub config: ServeConfig,
    pub ctx: Arc<GpuContext>,
    pub store: Store,
    pub book: PriceBook,
    pub metrics: Metrics,
    pub svc_metrics: metrics::ServiceMetrics,
    /// This process's id: it holds the leases of the attempts it runs.
    pub worker: WorkerId,
    /// The other live workers, and those of them with nothing in flight,
    /// from the registry (read every second): a clip's chunks are shared among
    /// the live ones ([`Store::claim_sharing`]), and while some are idle this
    /// worker claims one chunk per wake-up, so the idle ones get theirs.
    pub peers: std::sync::atomic::AtomicU32,
    pub idle_peers: std::sync::atomic::AtomicU32,
    pub controller: Mutex<metrics::ConcurrencyController>,
    /// Render groups: jobs sharing a template render in one submission.
    pub groups: group::Groups,
    /// Wakes the dispatcher: a job was queued here, or (PostgreSQL) anywhere.
    pub wake: Arc<tokio::sync::Notify>,
    /// Repeated store errors, logged once a while instead of every tick.
    pub errors: ErrorLog,
    in_flight: AtomicUsize,
    /// Egress writes of downloads that ended, which a shutdown waits for.
    egress: download::EgressWrites,
    /// The jobs whose attempts this process is running: the reaper never
    /// takes these, but does take this worker's other expired leases.
    /// Jobs with an attempt running here, and how many (chunks of one job may run side by side).
    live: Mutex<HashMap<JobId, u32>>,
    shutting_down: AtomicBool,
    drain_started: Mutex<Option<Instant>>,
    seq: AtomicU64,
    rate: http::RateLimiter,
    /// `/openapi.json`, built on first request from the router and the price book.
    openapi: std::sync::OnceLock<serde_json::Value>,
}

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("worker id `{id}` is in use by a live worker on {host}: give each worker its own --worker-id")]
    WorkerIdInUse { id: String, host: String },
}

impl Service {
    /// Opens the store (migrating it) and sets the service up; nothing runs yet.
    pub async fn new(config: ServeConfig, ctx: Arc<GpuContext>, book: PriceBook) -> Result<Arc<Self>, ServeError> {
        let store = Store::open(&config.db).await?;
        if ctx.enable_disk_pipeline_cache(&config.pipeline_cache) {
            tracing::info!("compiled pipelines persist in {}", config.pipeline_cache.display());
        }
        let metrics = Metrics::new(&book.currency);
        let svc_metrics = metrics::ServiceMetrics::register(metrics.registry(), ctx.clone())?;
        for lane in Lane::ALL {
            let max_wait = config.lane(lane).max_wait.as_secs_f64();
            svc_metrics.lane_max_wait.with_label_values(&[lane.as_str()]).set(max_wait);
        }
        let controller = metrics::ConcurrencyController::new(config.initial_concurrency, config.max_concurrency);
        svc_metrics.concurrency_limit.set(controller.limit as i64);
        // One submission can be split between jobs only by GPU timestamps.
        let group_max = if ctx.timestamps { config.group_max } else { 1 };
        if group_max < config.group_max {
            tracing::info!("passes are timed on the host on this adapter: jobs render in submissions of their own");
        }
        Ok(Arc::new(Self {
            worker: WorkerId::new(config.worker_id.clone()),
            peers: std::sync::atomic::AtomicU32::new(0),
            idle_peers: std::sync::atomic::AtomicU32::new(0),
            config,
            ctx,
            store,
            book,
            metrics,
            svc_metrics,
            controller: Mutex::new(controller),
            groups: group::Groups::new(group_max),
            wake: Arc::new(tokio::sync::Notify::new()),
            errors: ErrorLog::default(),
            in_flight: AtomicUsize::new(0),
            egress: download::EgressWrites::default(),
            live: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            drain_started: Mutex::new(None),
            seq: AtomicU64::new(0),
            rate: http::RateLimiter::default(),
            openapi: std::sync::OnceLock::new(),
        }))
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Starts a drain: no new claims; attempts in flight stop at their next
    /// frame and requeue at once, for another worker (or this one, restarted).
    pub fn start_drain(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.drain_started.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Instant::now);
    }

    /// A drain that ran out of time: settlements stop retrying.
    pub fn drain_expired(&self) -> bool {
        let started = *self.drain_started.lock().unwrap_or_else(|e| e.into_inner());
        started.is_some_and(|t| t.elapsed() > DRAIN)
    }

    /// A process-unique sequence number (ids of egress events, job ids without a key).
    pub fn next_seq(&self) -> u64 {
        (now_ms() as u64) << 20 | (self.seq.fetch_add(1, Ordering::Relaxed) & 0xF_FFFF)
    }

    fn rate_allow(&self, tenant: &str) -> bool {
        self.rate.allow(tenant, self.config.rate_limit_per_s)
    }

    fn limit(&self) -> usize {
        self.controller.lock().unwrap_or_else(|e| e.into_inner()).limit
    }

    /// Whether a registered worker counts as alive at `now_ms`: not stopped,
    /// and heartbeating (every second) within a lease, or 3 s at least.
    pub fn worker_alive(&self, w: &tessera_store::Worker, now_ms: i64) -> bool {
        let alive_within = (self.config.lease.as_millis() as i64).max(3_000);
        w.stopped_at_ms.is_none() && now_ms - w.last_heartbeat_ms <= alive_within
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Queued work relative to the concurrency limit, for backoff.
    pub fn overload(&self) -> f64 {
        self.in_flight() as f64 / self.limit().max(1) as f64
    }

    /// Counts a claimed attempt in flight.
    fn start_attempt(&self, job: &JobId) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()).entry(job.clone()).or_default() += 1;
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.svc_metrics.in_flight.set(n as i64);
    }

    /// The jobs of the attempts this process is running.
    fn live_jobs(&self) -> Vec<JobId> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    fn finish_attempt(&self, job: &JobId) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = live.get_mut(job) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(job);
            }
        }
        drop(live);
        let n = self.in_flight.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.svc_metrics.in_flight.set(n as i64);
        self.wake.notify_one();
    }

    /// What this worker tells the registry about itself.
    fn info(&self, api_addr: &str) -> WorkerInfo {
        WorkerInfo {
            id: self.worker.clone(),
            host: config::hostname(),
            api_addr: api_addr.to_string(),
            adapter: self.ctx.adapter.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// A worker id is stable across restarts: a restarted worker waits until the
/// registry shows its previous instance stale (a `kill -9` leaves it alive
/// for up to a lease), and refuses to start beside a live worker of the same
/// id, which would share its leases.
async fn wait_for_previous_instance(svc: &Service) -> Result<(), ServeError> {
    let alive_for = svc.config.lease.max(Duration::from_secs(3));
    let deadline = Instant::now() + alive_for * 2 + Duration::from_secs(1);
    loop {
        let workers = svc.store.workers().await?;
        let now = svc.store.now_ms();
        let Some(same) = workers.iter().find(|w| w.info.id == svc.worker && svc.worker_alive(w, now)) else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(ServeError::WorkerIdInUse { id: svc.worker.to_string(), host: same.info.host.clone() });
        }
        tracing::warn!(worker = %svc.worker, "waiting for the previous instance of this worker id to go stale");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Logs a recurring error once, then again only when it changes or every 30 s.
#[derive(Debug, Default)]
pub struct ErrorLog {
    last: Mutex<Option<(String, Instant)>>,
}

impl ErrorLog {
    pub fn warn(&self, what: &str, e: &dyn std::fmt::Display) {
        let text = format!("{what}: {e}");
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let repeat = last.as_ref().is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30));
        if !repeat {
            tracing::warn!("{text}");
            *last = Some((text, Instant::now()));
        }
    }
}

/// Runs the worker until SIGTERM or Ctrl-C: API and metrics servers, the
/// scheduler and upkeep; then drains.
pub async fn serve(svc: Arc<Service>) -> Result<(), ServeError> {
    let listen = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr: addr.to_string(), source })
    };
    let api = listen(svc.config.listen).await?;
    let metrics = listen(svc.config.metrics_listen).await?;
    let api_addr = api.local_addr().map(|a| a.to_string()).unwrap_or_default();
    wait_for_previous_instance(&svc).await?;
    svc.store.register_worker(&svc.info(&api_addr)).await?;
    println!(
        "tessera serving on http://{api_addr} (metrics on http://{}/metrics), worker {}, store {}, data in {}, GPU {}",
        metrics.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        svc.worker,
        svc.store.url(),
        svc.config.data.display(),
        svc.ctx.adapter.name
    );
    // The sender lives until the end of `serve`; the servers stop when it
    // says so (or is gone).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (app, metrics_app) = (http::app(svc.clone()), http::metrics_app(svc.clone()));
    // Each listener with its own connection cap and the header read timeout.
    let limits = svc.config.conn_limits;
    server::check_descriptor_limit(&limits);
    let api_task = tokio::spawn(server::run(api, app, limits, "API", stop_rx.clone()));
    let metrics_task = tokio::spawn(server::run(metrics, metrics_app, limits, "metrics", stop_rx.clone()));
    let background = tokio::spawn(run_background(svc.clone()));
    let listener = tokio::spawn({
        let svc = svc.clone();
        async move {
            if let Err(e) = svc.store.listen(svc.wake.clone()).await {
                tracing::warn!(error = %e, "no wake-ups from the store; polling only");
            }
        }
    });
    shutdown_signal().await;
    tracing::warn!("draining: no new claims; attempts in flight stop at their next frame and requeue");
    svc.start_drain();
    // The scheduler finishes its tick (a claim in progress is started, not
    // lost) and stops; the wake-up listener has nothing to finish.
    listener.abort();
    if let Err(e) = background.await {
        tracing::warn!(error = %e, "the scheduler task failed");
    }
    while svc.in_flight() > 0 && !svc.drain_expired() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(e) = svc.ctx.save_pipeline_cache() {
        tracing::warn!(error = %e, "could not save the pipeline cache");
    }
    if let Err(e) = svc.store.worker_stopped(&svc.worker).await {
        tracing::warn!(error = %e, "could not mark this worker stopped in the registry");
    }
    // Stops both servers; their tasks end with it.
    stop_tx.send_replace(true);
    for (name, task) in [("API", api_task), ("metrics", metrics_task)] {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "{name} server task failed");
        }
    }
    // The API server waited for its connections: every download has ended
    // and spawned its egress write, which must land before the process exits.
    download::settle(&svc, DRAIN).await;
    Ok(())
}

/// The scheduler and upkeep loop; `serve` runs it, and so can an embedding (benches).
pub async fn run_background(svc: Arc<Service>) {
    scheduler::run(svc).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
