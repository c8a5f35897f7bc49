//! Settling an attempt: how it ended becomes one fenced store transaction (the
//! job's next state, the last usage events, the billable output, the
//! reservation's release), then the counters move for what the ledger took.
//!
//! A settlement that meets a transient store fault (a full disk, a busy or
//! unreachable database) is retried with backoff until it commits or the lease
//! turns out to be lost: the worker recovers by itself once the cause is gone.
//! A lost lease means another worker has the job: this attempt's clip is
//! discarded and only its GPU time is recorded, as the operator's cost.

use std::time::Duration;

use tessera_metering::{AttemptRef, EventKind, Outcome, UsageEvent};
use tessera_store::{AttemptEnd, Chunk, ChunkState, Claimed, Delivered, Job, JobState, Lease, StoreError};

use super::{archive, AttemptError, Finished, Rendered};
use crate::service::retry::{backoff, random_unit};
use crate::service::Service;
use crate::usage::{Bill, Closing};

/// Settles an attempt whose frames are done; returns the outcome label of
/// `tessera_jobs_total`.
pub(super) async fn settle(svc: &Service, claimed: &Claimed, bill: &Bill, finished: Finished) -> &'static str {
    let Finished { rendered, closing } = finished;
    // The concurrency controller compares GPU time per pixel-frame with the
    // best recent time of frames of the same kind (template, tiles, size).
    let observe = |frames: u32| {
        let Some(kind) = crate::service::metrics::FrameKind::of_stored(&claimed.job.spec_json, &svc.book) else {
            return;
        };
        let mut c = svc.controller.lock().unwrap_or_else(|e| e.into_inner());
        c.observe_gpu(&kind, closing.totals.total_ns(), u64::from(frames));
    };
    let (end, bill, files) = match rendered {
        Ok(Rendered::Complete { frames, output }) => {
            observe(frames);
            let files = vec![output.path.clone(), output.metadata_path.clone()];
            (AttemptEnd::Succeeded(output), Some(bill.clone()), files)
        }
        Ok(Rendered::Segment { segment }) => {
            observe(segment.frames);
            let files = vec![segment.path.clone()];
            (AttemptEnd::Segment(segment), None, files)
        }
        Ok(Rendered::Cancelled { frames, bill, delivered }) => {
            let files = match &delivered {
                Delivered::Nothing => Vec::new(),
                Delivered::Clip(o) => vec![o.path.clone(), o.metadata_path.clone()],
                Delivered::Segment(s) => vec![s.path.clone()],
            };
            (AttemptEnd::Cancelled { frames, delivered }, bill, files)
        }
        Ok(Rendered::Redo { ranges, reason }) => {
            tracing::warn!(lease = %claimed.lease, %reason, ?ranges, "segments damaged: their ranges render again");
            (AttemptEnd::Redo { ranges, reason }, None, Vec::new())
        }
        Err(AttemptError::LeaseLost) => return abandon(svc, &claimed.lease, &closing).await,
        Err(e) => (end_of_error(svc, &claimed.job, &claimed.lease, &e), None, Vec::new()),
    };
    write(svc, claimed, &end, &closing, bill.as_ref(), &files).await
}

/// Settles an attempt that never rendered a frame (its stored spec or tenant
/// is unusable, or the store could not be read).
pub(super) async fn unrendered(svc: &Service, claimed: &Claimed, e: AttemptError) -> &'static str {
    let lease = &claimed.lease;
    if e == AttemptError::LeaseLost {
        return "abandoned";
    }
    // The tier only labels the attempt's closing events; a store that cannot
    // name it must not keep the failure from being settled, but is logged.
    let tenant = match svc.store.tenant(claimed.job.tenant_id.as_str()).await {
        Ok(t) => t,
        Err(err) => {
            tracing::error!(job = %lease.job, error = %err, "reading the tenant of a failed attempt; its events carry no tier");
            None
        }
    };
    let attempt = AttemptRef {
        tenant_id: claimed.job.tenant_id.to_string(),
        tier: tenant.map(|t| t.tier).unwrap_or_default(),
        job_id: lease.job.to_string(),
        attempt: lease.attempt,
        chunk: claimed.chunk.event_index(),
    };
    let timing =
        if svc.ctx.timestamps { tessera_metering::TimingSource::Gpu } else { tessera_metering::TimingSource::Host };
    let closing = Closing { attempt, timing, totals: Default::default(), pending: Vec::new() };
    let end = end_of_error(svc, &claimed.job, lease, &e);
    write(svc, claimed, &end, &closing, None, &[]).await
}

/// The store's view of an attempt error, with its retry delay.
fn end_of_error(svc: &Service, job: &Job, lease: &Lease, e: &AttemptError) -> AttemptEnd {
    let delay = |n: u32| {
        let c = &svc.config;
        backoff(n, c.backoff_base, c.backoff_cap, svc.overload(), random_unit()).as_millis() as i64
    };
    let end = match e {
        AttemptError::Failed { message, retryable } => {
            AttemptEnd::Failed { error: message.clone(), retry_in_ms: delay(job.failures + 1), retryable: *retryable }
        }
        AttemptError::Interrupted { reason, backoff } => {
            let retry_in_ms = if *backoff { delay(job.interruptions + 1) } else { 0 };
            AttemptEnd::Interrupted { reason: reason.clone(), retry_in_ms }
        }
        AttemptError::LeaseLost => AttemptEnd::Interrupted { reason: e.to_string(), retry_in_ms: 0 },
    };
    tracing::warn!(%lease, error = %e, "attempt did not succeed");
    end
}

/// The label of `tessera_jobs_total` for a settled job.
fn label(job: &Job, outcome: Outcome) -> &'static str {
    match (job.state, outcome) {
        (JobState::Succeeded, _) => "succeeded",
        (JobState::Cancelled, _) => "cancelled",
        (JobState::Dead, _) => "dead",
        (_, Outcome::Interrupted) => "interrupted",
        _ => "retried",
    }
}

/// Writes the settlement, retrying transient store faults. `files` are the
/// attempt's clip or segment, removed when the store did not take them.
pub(super) async fn write(
    svc: &Service,
    claimed: &Claimed,
    end: &AttemptEnd,
    closing: &Closing,
    bill: Option<&Bill>,
    files: &[String],
) -> &'static str {
    let (lease, outcome) = (&claimed.lease, end.outcome());
    let events = closing.events(outcome, bill);
    let mut pause = Duration::from_millis(250);
    // Whether an earlier try failed in transit: it may have committed anyway.
    let mut retried = false;
    let failure = loop {
        match svc.store.settle(lease, end, &events).await {
            Ok(settled) => {
                closing.record(&svc.metrics, &svc.book, outcome, &events, &settled.inserted);
                return label(&settled.job, outcome);
            }
            Err(e) if e.is_transient() && !svc.drain_expired() => {
                svc.errors.warn("settling an attempt (retrying)", &e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                retried = true;
            }
            Err(e) => break e,
        }
    };
    let landed = if retried { landed(svc, claimed, end).await } else { Landed::NotOurs };
    match (landed, &failure) {
        (Landed::Ours(job), _) => {
            // The settlement committed; its answer was lost: count it as such.
            closing.record(&svc.metrics, &svc.book, outcome, &events, &vec![true; events.len()]);
            label(&job, outcome)
        }
        (Landed::Unknown, _) => {
            tracing::error!(%lease, error = %failure, "could not tell whether the settlement landed; its clip is kept");
            "unsettled"
        }
        (Landed::NotOurs, StoreError::LeaseLost(_)) => {
            archive::discard(files);
            abandon(svc, lease, closing).await
        }
        (Landed::NotOurs, _) => {
            tracing::error!(%lease, error = %failure, "could not settle the attempt; its lease will expire and the job requeue");
            archive::discard(files);
            "unsettled"
        }
    }
}

/// What the store shows of a settlement whose answer was lost.
enum Landed {
    /// It committed: the job as it is now.
    Ours(Box<Job>),
    NotOurs,
    /// The store could not be read to tell.
    Unknown,
}

/// Reads the job back to tell whether this attempt's settlement committed.
async fn landed(svc: &Service, claimed: &Claimed, end: &AttemptEnd) -> Landed {
    let mut pause = Duration::from_millis(250);
    for _ in 0..6 {
        let read = match svc.store.chunks(&claimed.lease.job).await {
            Ok(chunks) => svc.store.job(&claimed.lease.job).await.map(|j| j.map(|j| (j, chunks))),
            Err(e) => Err(e),
        };
        match read {
            Ok(Some((job, chunks))) if settled_by(&job, &chunks, claimed, end) => return Landed::Ours(Box::new(job)),
            Ok(_) => return Landed::NotOurs,
            Err(e) if e.is_transient() => {
                svc.errors.warn("reading back a settlement (retrying)", &e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(job = %claimed.lease.job, error = %e, "reading back a settlement failed; its outcome is unknown");
                return Landed::Unknown;
            }
        }
    }
    Landed::Unknown
}

/// Whether `job` and its `chunks` (read back) carry this attempt's
/// settlement. Only this attempt archives (or keeps a segment) under its own
/// file name, and its chunk still names it as its last attempt; only a
/// settlement increments the failures (never a reap), only this attempt
/// cancels with its frame count; an interruption looks like a reap, and
/// either way the attempt is over.
fn settled_by(job: &Job, chunks: &[Chunk], claimed: &Claimed, end: &AttemptEnd) -> bool {
    let lease = &claimed.lease;
    let Some(chunk) = chunks.iter().find(|c| c.index == lease.chunk && c.attempt == lease.attempt) else {
        return false;
    };
    let over = chunk.state != ChunkState::Running;
    match end {
        AttemptEnd::Segment(seg) => chunk.segment.as_ref().is_some_and(|s| s.path == seg.path),
        AttemptEnd::Succeeded(output) => job.output.as_ref().is_some_and(|o| o.path == output.path),
        AttemptEnd::Failed { .. } => over && job.failures > claimed.job.failures,
        AttemptEnd::Cancelled { frames, delivered } => {
            let kept = match delivered {
                Delivered::Nothing => true,
                Delivered::Clip(o) => job.output.as_ref().is_some_and(|j| j.path == o.path),
                Delivered::Segment(s) => chunk.segment.as_ref().is_some_and(|c| c.path == s.path),
            };
            let ours = chunk.state == ChunkState::Cancelled && chunk.frames_done == *frames;
            kept && (ours || (over && job.state == JobState::Cancelled && job.frames_done == *frames))
        }
        AttemptEnd::Interrupted { .. } => false,
        AttemptEnd::Redo { .. } => over && chunk.state == ChunkState::Blocked,
    }
}

/// The lease was taken over: the attempt's last GPU window is still recorded
/// (operator cost, never the customer's), nothing else.
async fn abandon(svc: &Service, lease: &Lease, closing: &Closing) -> &'static str {
    let gpu: Vec<UsageEvent> = closing.pending.iter().filter(|e| e.kind == EventKind::Gpu).cloned().collect();
    let mut pause = Duration::from_millis(250);
    for _ in 0..8 {
        match svc.store.append(&gpu).await {
            Ok(inserted) => {
                closing.record(&svc.metrics, &svc.book, Outcome::Interrupted, &gpu, &inserted);
                tracing::warn!(%lease, "attempt abandoned: its lease was taken over; its GPU time is the operator's cost");
                return "abandoned";
            }
            Err(e) if e.is_transient() => {
                svc.errors.warn("recording an abandoned attempt's GPU time (retrying)", &e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(%lease, error = %e, "could not record an abandoned attempt's GPU time");
                break;
            }
        }
    }
    "abandoned"
}
