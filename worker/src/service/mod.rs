//! `tessera serve`: the long-running worker.
//!
//! Data path: [`http`] validates, admits (tier, caps) and queues a job in
//! [`jobs`]; the dispatcher claims the best queued job ([`jobs::JobStore::claim`]:
//! aged-out first, then lane, then score) whenever fewer than the adaptive limit
//! ([`metrics::ConcurrencyController`]) are in flight; [`runner`] holds its lease
//! (renewed by heartbeat) and hands it to a render [`group`] of its template and
//! lane, which renders the frames of all its jobs in shared GPU submissions,
//! gates and archives each clip, and meters every frame of every job;
//! failures go back with [`retry::backoff`] or to the dead letters. On start,
//! jobs left `running` by a killed worker are recovered.

pub mod config;
pub mod group;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod retry;
pub mod runner;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_metering::ledger::{now_ms, LedgerError, Store};
use tessera_metering::{AttemptRef, Metrics, Outcome, PriceBook, UsageEvent};

pub use config::ServeConfig;

use crate::gpu::GpuContext;

/// Everything the service's tasks share.
#[derive(Debug)]
pub struct Service {
    pub config: ServeConfig,
    pub ctx: Arc<GpuContext>,
    pub store: Store,
    pub jobs: jobs::JobStore,
    pub book: PriceBook,
    pub metrics: Metrics,
    pub svc_metrics: metrics::ServiceMetrics,
    /// This process's lease owner id.
    pub owner: String,
    pub controller: Mutex<metrics::ConcurrencyController>,
    /// Render groups: jobs sharing a template render in one submission.
    pub groups: group::Groups,
    pub wake: tokio::sync::Notify,
    in_flight: AtomicUsize,
    shutting_down: AtomicBool,
    seq: AtomicU64,
    rate: http::RateLimiter,
}

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] LedgerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Service {
    pub async fn new(config: ServeConfig, ctx: Arc<GpuContext>, book: PriceBook) -> Result<Arc<Self>, ServeError> {
        let store = Store::open(&config.data).await?;
        if ctx.enable_disk_pipeline_cache(&config.data.join("pipeline-cache")) {
            tracing::info!("compiled pipelines persist in {}", config.data.join("pipeline-cache").display());
        }
        let jobs = jobs::JobStore::new(store.pool().clone()).await?;
        let metrics = Metrics::new(&book.currency);
        let svc_metrics = metrics::ServiceMetrics::register(metrics.registry())?;
        // Counters are a view of the ledger: rebuild them after a restart.
        let events = store.events(&Default::default()).await?;
        metrics.replay(&book, &events);
        let controller = metrics::ConcurrencyController::new(config.initial_concurrency, config.max_concurrency);
        svc_metrics.concurrency_limit.set(controller.limit as i64);
        // One submission can be split between jobs only by GPU timestamps.
        let group_max = if ctx.timestamps { config.group_max } else { 1 };
        if group_max < config.group_max {
            tracing::info!("passes are timed on the host on this adapter: jobs render in submissions of their own");
        }
        let mut raw = [0u8; 8];
        let _ = getrandom::getrandom(&mut raw);
        Ok(Arc::new(Self {
            owner: format!("w_{}", hex::encode(raw)),
            config,
            ctx,
            store,
            jobs,
            book,
            metrics,
            svc_metrics,
            controller: Mutex::new(controller),
            groups: group::Groups::new(group_max),
            wake: tokio::sync::Notify::new(),
            in_flight: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            rate: http::RateLimiter::default(),
        }))
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
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

    /// Queued work relative to the concurrency limit, for backoff.
    pub fn overload(&self) -> f64 {
        self.in_flight.load(Ordering::Relaxed) as f64 / self.limit().max(1) as f64
    }

    fn finish_attempt(&self) {
        let n = self.in_flight.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.svc_metrics.in_flight.set(n as i64);
        self.wake.notify_one();
    }

    /// Requeues jobs whose worker died: their attempt ends as failed (its GPU
    /// time stays the operator's cost) and they retry like any failed attempt.
    pub async fn recover(&self, all_running: bool) -> Result<usize, LedgerError> {
        let cutoff = if all_running { i64::MAX } else { now_ms() };
        let orphans = self.jobs.expired(cutoff).await?;
        for (id, attempt, tenant_id, cancelled) in &orphans {
            if let Some(t) = self.store.tenant(tenant_id).await? {
                let a = AttemptRef { tenant_id: t.id, tier: t.tier, job_id: id.clone(), attempt: *attempt };
                self.store.append(&[UsageEvent::attempt_end(&a, Outcome::Failed)]).await?;
            }
            let job = self.jobs.get(id).await?;
            let dead = job.as_ref().is_some_and(|j| j.attempts >= j.max_attempts);
            if *cancelled {
                self.jobs.cancelled(id, job.map(|j| j.frames_done).unwrap_or(0)).await?;
                self.store.release(id).await?;
            } else {
                self.jobs.fail(id, "worker lost (crash or kill); lease expired", 0, dead).await?;
                if dead {
                    self.store.release(id).await?;
                }
            }
        }
        Ok(orphans.len())
    }

    /// Claims and starts jobs while there is room under the limit.
    async fn dispatch(self: &Arc<Self>) {
        while !self.shutting_down() && self.in_flight.load(Ordering::Relaxed) < self.limit() {
            let job = match self.jobs.claim(&self.owner, self.config.lease.as_millis() as i64).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "claim failed");
                    return;
                }
            };
            let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            self.svc_metrics.in_flight.set(n as i64);
            tokio::spawn(runner::run(self.clone(), job));
        }
    }

    async fn update_queue_metrics(&self) {
        let Ok(depths) = self.jobs.depths().await else { return };
        for lane in ["urgent", "standard", "bulk"] {
            let d = depths.iter().find(|(l, _)| l == lane).map(|(_, d)| d.clone()).unwrap_or_default();
            self.svc_metrics.queue_depth.with_label_values(&[lane]).set(d.queued);
            let age = d.oldest_created_ms.map(|c| (now_ms() - c).max(0) as f64 / 1000.0).unwrap_or(0.0);
            self.svc_metrics.oldest_age.with_label_values(&[lane]).set(age);
        }
    }
}

/// Runs the worker until SIGTERM or Ctrl-C: API and metrics servers, dispatcher,
/// lease sweeper, adaptive concurrency, storage metering and retention.
pub async fn serve(svc: Arc<Service>) -> Result<(), ServeError> {
    // Partial clips of attempts a killed worker left behind: never outputs.
    if let Ok(dir) = std::fs::read_dir(svc.config.data.join("clips")) {
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let recovered = svc.recover(true).await?;
    if recovered > 0 {
        tracing::warn!(recovered, "requeued jobs left running by a previous worker");
    }
    let listen = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr: addr.to_string(), source })
    };
    let api = listen(svc.config.listen).await?;
    let metrics = listen(svc.config.metrics_listen).await?;
    println!(
        "tessera serving on http://{} (metrics on http://{}/metrics), data in {}, GPU {}",
        api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        metrics.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        svc.config.data.display(),
        svc.ctx.adapter.name
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (app, metrics_app) = (http::app(svc.clone()), http::metrics_app(svc.clone()));
    let (rx1, rx2) = (stop_rx.clone(), stop_rx.clone());
    let api_task = tokio::spawn(async move { axum::serve(api, app).with_graceful_shutdown(stopped(rx1)).await });
    let metrics_task =
        tokio::spawn(async move { axum::serve(metrics, metrics_app).with_graceful_shutdown(stopped(rx2)).await });
    let background = tokio::spawn(background(svc.clone()));
    shutdown_signal().await;
    tracing::warn!("shutting down: no new claims; waiting for attempts in flight");
    svc.shutting_down.store(true, Ordering::Relaxed);
    background.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while svc.in_flight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(e) = svc.ctx.save_pipeline_cache() {
        tracing::warn!(error = %e, "could not save the pipeline cache");
    }
    let _ = stop_tx.send(true);
    let _ = api_task.await;
    let _ = metrics_task.await;
    Ok(())
}

/// The dispatcher, lease sweeper, concurrency controller, storage metering and
/// retention loop; `serve` runs it, and so can an embedding (benches).
pub async fn run_background(svc: Arc<Service>) {
    background(svc).await
}

async fn background(svc: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let (mut n, storage_period) = (0u64, Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = svc.wake.notified() => {}
        }
        svc.dispatch().await;
        n += 1;
        if n % 5 == 0 {
            let _ = svc.recover(false).await;
            svc.update_queue_metrics().await;
        }
        if n % 50 == 0 {
            if let Err(e) = svc.ctx.save_pipeline_cache() {
                tracing::warn!(error = %e, "could not save the pipeline cache");
            }
        }
        if n % 10 == 0 {
            let in_flight = svc.in_flight.load(Ordering::Relaxed);
            let limit = svc.controller.lock().unwrap_or_else(|e| e.into_inner()).adjust(in_flight);
            svc.svc_metrics.concurrency_limit.set(limit as i64);
        }
        if n % (storage_period.as_millis() as u64 / 200) == 0 {
            let period = (now_ms() as u64) / storage_period.as_millis() as u64;
            runner::storage_and_retention(&svc, period, storage_period).await;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
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
