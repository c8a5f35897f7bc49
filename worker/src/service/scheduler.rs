//! A worker's scheduler loop: claims work while there is room under the
//! adaptive limit, reaps expired leases (any other worker's, and its own that
//! no running attempt holds), heartbeats
//! the registry, publishes queue metrics, adapts the concurrency limit, saves
//! and saves the pipeline cache. The fleet's upkeep runs in a task of its own
//! ([`upkeep::run_loop`]): a slow sweep or meter never delays a claim.
//!
//! It wakes every 200 ms and whenever work is queued (here, or anywhere in
//! the fleet on PostgreSQL's NOTIFY): the wake-up is a hint, polling the
//! fallback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_metering::{AttemptRef, Lane, Outcome, PassTimes};

use super::{attempt, upkeep, Service};

/// Runs until the worker drains.
pub(super) async fn run(svc: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The reaper looks a few times per lease, so a lost worker's jobs wait little.
    let reap_every = (svc.config.lease / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    tokio::spawn(upkeep::run_loop(svc.clone()));
    let mut due = Due::default();
    while !svc.shutting_down() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = svc.wake.notified() => {}
        }
        dispatch(&svc).await;
        if due.check("reap", reap_every) {
            reap(&svc).await;
        }
        if due.check("registry", Duration::from_secs(1)) {
            heartbeat_worker(&svc).await;
            count_idle_peers(&svc).await;
            queue_metrics(&svc).await;
        }
        if due.check("fleet", Duration::from_secs(5)) {
            fleet_metrics(&svc).await;
        }
        if due.check("ledger", svc.config.ledger_metrics_every) {
            ledger_metrics(&svc).await;
        }
        if due.check("concurrency", Duration::from_secs(2)) {
            let mut controller = svc.controller.lock().unwrap_or_else(|e| e.into_inner());
            controller.observe_device_errors(svc.ctx.error_counts());
            let limit = controller.adjust(svc.in_flight());
            drop(controller);
            svc.svc_metrics.concurrency_limit.set(limit as i64);
        }
        if due.check("pipeline cache", Duration::from_secs(10)) {
            if let Err(e) = svc.ctx.save_pipeline_cache() {
                svc.errors.warn("saving the pipeline cache", &e);
            }
        }
    }
}

/// The registry's alive and missing workers, and a zero series for every
/// tenant's money and GPU time (see `Metrics::touch_tenant`): tenants created
/// through another worker show up here within one period.
async fn fleet_metrics(svc: &Service) {
    match svc.store.workers().await {
        Ok(workers) => {
            let now = svc.store.now_ms();
            let alive = workers.iter().filter(|w| svc.worker_alive(w, now)).count() as i64;
            let missing = workers.iter().filter(|w| w.stopped_at_ms.is_none()).count() as i64 - alive;
            svc.svc_metrics.fleet_workers.with_label_values(&["alive"]).set(alive);
            svc.svc_metrics.fleet_workers.with_label_values(&["missing"]).set(missing);
        }
        Err(e) => svc.errors.warn("reading the worker registry", &e),
    }
    match svc.store.tenants().await {
        Ok(tenants) => {
            for t in &tenants {
                svc.metrics.touch_tenant(t.id.as_str(), &t.tier, svc.ctx.timing_source());
            }
        }
        Err(e) => svc.errors.warn("listing tenants for their metrics", &e),
    }
}

async fn ledger_metrics(svc: &Service) {
    match svc.store.ledger_charged_micros().await {
        Ok(micros) => svc.metrics.set_ledger_charged(u64::try_from(micros).unwrap_or(0)),
        Err(e) => svc.errors.warn("reading the ledger's total charges", &e),
    }
}

/// When each periodic task last ran.
#[derive(Debug, Default)]
struct Due(std::collections::HashMap<&'static str, Instant>);

impl Due {
    /// Whether `task` is due (and marks it run).
    fn check(&mut self, task: &'static str, every: Duration) -> bool {
        let now = Instant::now();
        match self.0.get(task) {
            Some(last) if now.duration_since(*last) < every => false,
            _ => {
                self.0.insert(task, now);
                true
            }
        }
    }
}

/// The other live workers, and how many of them have nothing in flight, as
/// the registry shows them (heartbeats every second).
async fn count_idle_peers(svc: &Service) {
    match svc.store.workers().await {
        Ok(workers) => {
            let now = svc.store.now_ms();
            let peers: Vec<_> =
                workers.iter().filter(|w| w.info.id != svc.worker && svc.worker_alive(w, now)).collect();
            let idle = peers.iter().filter(|w| w.jobs_in_flight == 0).count();
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            svc.peers.store(count(peers.len()), std::sync::atomic::Ordering::Relaxed);
            svc.idle_peers.store(count(idle), std::sync::atomic::Ordering::Relaxed);
        }
        Err(e) => svc.errors.warn("reading the worker registry", &e),
    }
}

/// Claims and starts attempts while there is room under the limit, never
/// more than its share of one clip among the fleet's live workers. While
/// other workers are idle it claims one chunk per wake-up (the others wake
/// too, on the same notification or their next tick), so work spreads over
/// the fleet instead of piling onto whichever worker polled first; alone or
/// among busy workers it fills its limit at once.
async fn dispatch(svc: &Arc<Service>) {
    // A lost device stays lost: claiming would only fail jobs that a healthy
    // worker can run. They stay queued for the fleet; readiness is already 503.
    if svc.ctx.device_lost().is_some() {
        return;
    }
    let lease_ms = svc.config.lease.as_millis() as i64;
    let peers = svc.peers.load(std::sync::atomic::Ordering::Relaxed);
    let mut claims = if svc.idle_peers.load(std::sync::atomic::Ordering::Relaxed) > 0 { 1 } else { usize::MAX };
    while !svc.shutting_down() && svc.in_flight() < svc.limit() && claims > 0 {
        match svc.store.claim_sharing(&svc.worker, lease_ms, peers).await {
            Ok(Some(claimed)) => {
                claims -= 1;
                svc.start_attempt(&claimed.job.id);
                tokio::spawn(attempt::run(svc.clone(), claimed));
            }
            Ok(None) => return,
            Err(e) => {
                svc.errors.warn("claiming a job", &e);
                return;
            }
        }
    }
}

/// Requeues the attempts of workers that stopped heartbeating their leases
/// (crashed, killed, paused, cut off), and counts their GPU time as interrupted.
async fn reap(svc: &Service) {
    let reaped = match svc.store.reap(&svc.worker, &svc.live_jobs(), 64).await {
        Ok(r) => r,
        Err(e) => return svc.errors.warn("reaping expired leases", &e),
    };
    let timing = svc.ctx.timing_source();
    for r in &reaped {
        tracing::warn!(lease = %r.lease, state = %r.job.state, "requeued the attempt of a lost worker");
        let a = AttemptRef {
            tenant_id: r.job.tenant_id.to_string(),
            tier: r.tier.clone(),
            job_id: r.job.id.to_string(),
            attempt: r.lease.attempt,
            chunk: None,
        };
        let mut totals = PassTimes::default();
        for (pass, ns) in &r.gpu_ns {
            totals.add(*pass, u64::try_from(*ns).unwrap_or(0));
        }
        svc.metrics.record_attempt(&a, Outcome::Interrupted, timing, &totals);
        svc.metrics.record_gpu_cost(&svc.book, &a, &totals);
        let outcome = match r.job.state {
            tessera_store::JobState::Dead => "dead",
            tessera_store::JobState::Cancelled => "cancelled",
            _ => "interrupted",
        };
        svc.svc_metrics.jobs.with_label_values(&[r.job.lane.as_str(), outcome]).inc();
    }
    if !reaped.is_empty() {
        svc.wake.notify_one();
    }
}

async fn heartbeat_worker(svc: &Service) {
    let n = u32::try_from(svc.in_flight()).unwrap_or(u32::MAX);
    if let Err(e) = svc.store.worker_heartbeat(&svc.worker, n).await {
        svc.errors.warn("heartbeating the worker registry", &e);
    }
}

async fn queue_metrics(svc: &Service) {
    let depths = match svc.store.depths().await {
        Ok(d) => d,
        Err(e) => return svc.errors.warn("reading queue depths", &e),
    };
    for lane in Lane::ALL {
        let d = depths.iter().find(|(l, _)| *l == lane).map(|(_, d)| *d).unwrap_or_default();
        svc.svc_metrics.queue_depth.with_label_values(&[lane.as_str()]).set(d.queued);
        let age = d.oldest_created_ms.map(|c| (svc.store.now_ms() - c).max(0) as f64 / 1000.0).unwrap_or(0.0);
        svc.svc_metrics.oldest_age.with_label_values(&[lane.as_str()]).set(age);
    }
}
