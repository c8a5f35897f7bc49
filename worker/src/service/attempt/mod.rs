//! One attempt's life, from claim to settlement, in one place:
//!
//! 1. [`run`] takes a claimed job and its [`Lease`], checks the stored spec and
//!    the tenant, and starts the lease's heartbeat (which also reports progress
//!    and picks up a cancel or a lost lease);
//! 2. a render group ([`crate::service::group`]) renders its frames
//!    ([`frames::ActiveJob`]): gates, metering, and at the end the archive;
//! 3. [`settle`] writes how it ended in one fenced transaction: the next state,
//!    the last usage events, the billable output, the reservation's release.
//!
//! How an attempt can end: succeeded (archived, billed), cancelled (billed for
//! the frames delivered), failed (the job's fault or an unknown cause: spends
//! the failure budget), interrupted (a drain, a full disk, a store that is
//! unreachable: spends the interruption budget), or abandoned (its lease was
//! taken over: nothing more of it reaches the job, its GPU time stays the
//! operator's cost).

mod archive;
pub(super) mod frames;
mod join;
mod settle;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_metering::{quote, AdmittedQuote, AttemptRef};
use tessera_store::{ArchivedOutput, ChunkKind, Claimed, Delivered, Lease, Segment, StoreError};

use super::Service;
use crate::spec::{JobSpec, RawSpec, SpecLimits};
use crate::usage::{Bill, Closing};

/// Why an attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// Spends the job's failure budget; `retryable: false` for errors no retry
    /// can fix (an invalid stored spec).
    Failed { message: String, retryable: bool },
    /// Not the job's fault: requeued on the interruption budget, after a
    /// backoff when the cause may last (a full disk) or at once (a drain).
    Interrupted { reason: String, backoff: bool },
    /// The lease was taken over: the attempt is no longer the job's.
    LeaseLost,
}

impl AttemptError {
    pub fn failed(message: impl Into<String>) -> Self {
        AttemptError::Failed { message: message.into(), retryable: true }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        AttemptError::Failed { message: message.into(), retryable: false }
    }

    /// A file error: a full disk or quota interrupts, anything else fails.
    pub fn io(context: &str, e: &std::io::Error) -> Self {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        match e.raw_os_error() {
            Some(ENOSPC | EDQUOT) => AttemptError::Interrupted {
                reason: format!("no space left on the data volume: {context}: {e}"),
                backoff: true,
            },
            _ => AttemptError::failed(format!("{context}: {e}")),
        }
    }

    /// A muxer error: writing the clip is file I/O.
    pub fn mux(e: &crate::encode::mux::MuxError) -> Self {
        match e {
            crate::encode::mux::MuxError::Io { path, source } => Self::io(&format!("writing {path}"), source),
            other => AttemptError::failed(other.to_string()),
        }
    }

    /// A store error: transient ones (full disk, busy, unreachable) interrupt.
    pub fn store(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost(_) => AttemptError::LeaseLost,
            e if e.is_transient() => AttemptError::Interrupted { reason: e.to_string(), backoff: true },
            e => AttemptError::failed(e.to_string()),
        }
    }

    /// The worker is draining (SIGTERM): another worker takes the job at once.
    pub fn drain() -> Self {
        AttemptError::Interrupted {
            reason: "worker draining (SIGTERM); the job continues on another worker".into(),
            backoff: false,
        }
    }
}

/// A GPU error in the attempt's own commands fails the attempt.
impl From<crate::render::RenderError> for AttemptError {
    fn from(e: crate::render::RenderError) -> Self {
        AttemptError::failed(format!("GPU: {e}"))
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Failed { message, .. } => f.write_str(message),
            AttemptError::Interrupted { reason, .. } => write!(f, "interrupted: {reason}"),
            AttemptError::LeaseLost => f.write_str("lease lost to another worker"),
        }
    }
}

/// How an attempt's frames ended when they did not fail.
#[derive(Debug)]
pub enum Rendered {
    /// Every frame passed its gates; the clip is archived. `frames`: the
    /// frames this attempt rendered (a join renders one, to check the clip).
    Complete { frames: u32, output: ArchivedOutput },
    /// Cancelled after `frames` frames, billed as `bill` (a range chunk's
    /// frames are billed by its job's join), with what keeps those frames:
    /// the partial clip (archived, downloadable), a range's partial segment
    /// (for the join), or nothing when no frame was rendered.
    Cancelled { frames: u32, bill: Option<Bill>, delivered: Delivered },
    /// A range chunk's frames are in their segment.
    Segment { segment: Segment },
    /// A join found the segments of these ranges damaged or gone (and removed
    /// what was left of them): they are rendered again, then joined.
    Redo { ranges: Vec<u32>, reason: String },
}

/// An attempt's frames are done: how, and what is left of its metering.
#[derive(Debug)]
pub struct Finished {
    pub rendered: Result<Rendered, AttemptError>,
    pub closing: Closing,
}

/// A claimed job handed to a render group, with what its attempt needs.
#[derive(Debug)]
pub struct Member {
    pub claimed: Claimed,
    pub spec: JobSpec,
    /// The quote the job was admitted with: what it is billed.
    pub quote: AdmittedQuote,
    pub bill: Bill,
    pub attempt: AttemptRef,
    /// Set by the heartbeat when the job is cancelled.
    pub cancel: Arc<AtomicBool>,
    /// Set by the heartbeat when the lease was taken over.
    pub lost: Arc<AtomicBool>,
    pub frames_done: Arc<AtomicU32>,
    /// Where the attempt's frames report their end.
    pub reply: tokio::sync::oneshot::Sender<Finished>,
}

/// Runs the attempt of `claimed` (already counted in flight) to its settlement.
pub async fn run(svc: Arc<Service>, claimed: Claimed) {
    let (lane, job_id) = (claimed.job.lane, claimed.job.id.clone());
    let job = &claimed.job;
    let wait_s = (svc.store.now_ms() - job.not_before_ms.max(job.created_at_ms)).max(0) as f64 / 1000.0;
    svc.svc_metrics.queue_wait.with_label_values(&[lane.as_str()]).observe(wait_s);
    if job.attempts == 1 && wait_s > svc.config.lane(lane).wait_slo.as_secs_f64() {
        svc.svc_metrics.sla_breaches.with_label_values(&[lane.as_str()]).inc();
    }
    let start = Instant::now();
    let outcome = match prepare(&svc, &claimed).await {
        Ok((spec, quote, attempt)) if claimed.chunk.kind == ChunkKind::Join => {
            join::join_and_settle(&svc, claimed, spec, quote, attempt).await
        }
        Ok((spec, quote, attempt)) => render_and_settle(&svc, claimed, spec, quote, attempt).await,
        Err(e) => settle::unrendered(&svc, &claimed, e).await,
    };
    svc.svc_metrics.run_time.with_label_values(&[lane.as_str()]).observe(start.elapsed().as_secs_f64());
    svc.svc_metrics.jobs.with_label_values(&[lane.as_str(), outcome]).inc();
    svc.finish_attempt(&job_id);
}

/// The stored spec, validated again, the quote it was admitted with, and the
/// tenant the attempt meters for. The quote is the job's own, never one made
/// from this worker's price book: a book changed since (an edit, a rolling
/// deploy) applies to new jobs only.
async fn prepare(svc: &Service, claimed: &Claimed) -> Result<(JobSpec, AdmittedQuote, AttemptRef), AttemptError> {
    let job = &claimed.job;
    let raw: RawSpec =
        serde_json::from_str(&job.spec_json).map_err(|e| AttemptError::fatal(format!("stored spec: {e}")))?;
    let spec = raw.validate(&SpecLimits::from_price_book(&svc.book)).map_err(|e| AttemptError::fatal(e.to_string()))?;
    let tenant = svc
        .store
        .tenant(job.tenant_id.as_str())
        .await
        .map_err(AttemptError::store)?
        .ok_or_else(|| AttemptError::fatal(format!("tenant {} no longer exists", job.tenant_id)))?;
    let admitted = match &job.quote {
        Some(q) => q.clone(),
        None => legacy_quote(svc, &spec, job.price_micros)?,
    };
    let attempt = AttemptRef {
        tenant_id: tenant.id.to_string(),
        tier: tenant.tier,
        job_id: job.id.to_string(),
        attempt: claimed.lease.attempt,
        chunk: claimed.chunk.event_index(),
    };
    Ok((spec, admitted, attempt))
}

/// A job admitted before quotes were stored: its rates from this worker's
/// book, its whole price the one it was admitted (and reserved) at.
fn legacy_quote(svc: &Service, spec: &JobSpec, price_micros: i64) -> Result<AdmittedQuote, AttemptError> {
    let req = spec.quote_request();
    let q = quote(&svc.book, &req).map_err(|e| AttemptError::fatal(e.to_string()))?;
    let mut admitted =
        AdmittedQuote::new(&svc.book, &req, &q, spec.frames).map_err(|e| AttemptError::fatal(e.to_string()))?;
    admitted.price = tessera_metering::price::from_micros(price_micros);
    Ok(admitted)
}

async fn render_and_settle(
    svc: &Arc<Service>,
    claimed: Claimed,
    spec: JobSpec,
    quote: AdmittedQuote,
    attempt: AttemptRef,
) -> &'static str {
    let (beating, beat) = Beating::start(svc, &claimed.lease);
    let (reply, result) = tokio::sync::oneshot::channel();
    let bill = Bill::whole(&spec, &quote);
    let member = Member {
        claimed: claimed.clone(),
        spec,
        quote,
        bill: bill.clone(),
        attempt: attempt.clone(),
        cancel: beat.cancel,
        lost: beat.lost,
        frames_done: beat.frames,
        reply,
    };
    svc.groups.join(svc, member);
    // The heartbeat keeps the lease while the settlement is written (which
    // may wait out a store outage), so a finished clip is not lost to a reap.
    let outcome = match result.await {
        Ok(done) => settle::settle(svc, &claimed, &bill, done).await,
        // The group's thread ended without answering (it panicked): nothing was
        // archived; the attempt failed.
        Err(_) => {
            let e = AttemptError::failed("the render thread stopped before the attempt ended");
            settle::unrendered(svc, &claimed, e).await
        }
    };
    beating.stop();
    outcome
}

/// A lease's heartbeat task, from the claim until the settlement is written.
struct Beating {
    finished: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Beating {
    /// Starts heartbeating `lease`; the [`Heartbeat`] carries what it learns.
    fn start(svc: &Arc<Service>, lease: &Lease) -> (Self, Heartbeat) {
        let beat = Heartbeat::default();
        let finished = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(heartbeat(svc.clone(), lease.clone(), beat.clone(), finished.clone()));
        (Self { finished, task }, beat)
    }

    /// The attempt is settled: its lease is spent, so a lost lease is no news.
    fn stop(self) {
        self.finished.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// What the heartbeat shares with the attempt's frames.
#[derive(Debug, Clone, Default)]
struct Heartbeat {
    cancel: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    frames: Arc<AtomicU32>,
}

/// Renews the lease every third of its length with the progress, and picks up
/// a cancel or a lost lease. A store that cannot be reached is retried: the
/// frames go on, and if the lease runs out meanwhile another worker may take it.
async fn heartbeat(svc: Arc<Service>, lease: Lease, beat: Heartbeat, finished: Arc<AtomicBool>) {
    let lease_ms = svc.config.lease.as_millis() as i64;
    let period = (svc.config.lease / 3).clamp(Duration::from_millis(100), Duration::from_secs(5));
    while !finished.load(Ordering::Relaxed) {
        tokio::time::sleep(period).await;
        match svc.store.heartbeat(&lease, lease_ms, beat.frames.load(Ordering::Relaxed)).await {
            Ok(cancel) => {
                if cancel {
                    beat.cancel.store(true, Ordering::Relaxed);
                }
            }
            Err(StoreError::LeaseLost(_)) => {
                // After the settlement the lease is spent: that is no loss.
                if !finished.load(Ordering::Relaxed) {
                    tracing::warn!(%lease, "lease lost: the attempt stops; another worker has the job");
                    beat.lost.store(true, Ordering::Relaxed);
                }
                return;
            }
            Err(e) => svc.errors.warn("heartbeat", &e),
        }
    }
}
