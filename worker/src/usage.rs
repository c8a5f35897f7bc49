//! Metered rendering: an attempt's GPU time becomes usage events, one per pass
//! and *window* of frames (about a second of GPU work: see BENCHMARKS.md for
//! why not one per frame), appended to the ledger in the background while the
//! next frames render. The last window, the attempt's end and the job's
//! billable output go into the ledger with the attempt's settlement, in one
//! transaction; the Prometheus counters move only for what the ledger took.

use std::time::{Duration, Instant};

use tessera_metering::price::to_micros;
use tessera_metering::{
    AdmittedQuote, AttemptRef, EventKind, Metrics, Outcome, Pass, PassTimes, PriceBook, TimingSource, UsageEvent,
};
use tessera_store::{Lease, Store, StoreError, Tenant};

use crate::spec::JobSpec;

/// A window closes once this much GPU time accrued...
const WINDOW_GPU_NS: u64 = 1_000_000_000;
/// ...or this much wall time passed, so a crash loses at most this much metering.
const WINDOW_WALL: Duration = Duration::from_secs(10);

/// A deterministic job id from the tenant, the spec and a key.
pub fn job_id(tenant: &Tenant, spec: &JobSpec, key: &str) -> tessera_store::JobId {
    let text = format!("{}|{}|{}", tenant.id, serde_json::to_string(spec).unwrap_or_default(), key);
    tessera_store::JobId::new(format!("j_{:016x}", tessera_metering::event::fnv1a(text.as_bytes())))
}

/// Frames accrued since the last window closed.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    first: u32,
    frames: u32,
    times: PassTimes,
}

/// A window the ledger did not take, and why.
type UnwrittenBatch = (StoreError, Vec<UsageEvent>);

/// Records one attempt's usage as it runs.
#[derive(Debug)]
pub struct UsageRecorder<'a> {
    store: &'a Store,
    metrics: &'a Metrics,
    attempt: AttemptRef,
    timing: TimingSource,
    window: Window,
    opened: Instant,
    totals: PassTimes,
    /// The previous window, committing in the background while frames render;
    /// a batch that could not be written comes back for the settlement.
    inflight: Option<tokio::task::JoinHandle<Result<(), UnwrittenBatch>>>,
    /// Events of windows whose write failed: they go with the settlement.
    unwritten: Vec<UsageEvent>,
    /// The lease the attempt runs under: each window is appended only while
    /// it holds it, so a worker paused past its lease and resumed cannot slip
    /// windows into the ledger after the reaper counted the attempt; those
    /// windows go with the attempt's abandonment instead, counters and all.
    lease: Option<Lease>,
}

/// What is left of an attempt's metering when its frames are done: the events
/// its settlement must write, and the GPU time for the counters.
#[derive(Debug)]
pub struct Closing {
    pub attempt: AttemptRef,
    pub timing: TimingSource,
    /// GPU time of the whole attempt.
    pub totals: PassTimes,
    /// GPU events of the last, unwritten window.
    pub pending: Vec<UsageEvent>,
}

impl<'a> UsageRecorder<'a> {
    pub fn new(store: &'a Store, metrics: &'a Metrics, attempt: AttemptRef, timing: TimingSource) -> Self {
        Self {
            store,
            metrics,
            attempt,
            timing,
            window: Window::default(),
            opened: Instant::now(),
            totals: PassTimes::default(),
            inflight: None,
            unwritten: Vec::new(),
            lease: None,
        }
    }

    /// Appends every window fenced by `lease` (a queued job's attempt).
    pub fn fenced(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    pub fn attempt(&self) -> &AttemptRef {
        &self.attempt
    }

    /// GPU time of the attempt so far.
    pub fn totals(&self) -> PassTimes {
        self.totals
    }

    /// Frame `index`'s pass times; closes the window when it holds a second of
    /// GPU time or ten of wall time. Frames arrive in order.
    pub async fn frame(&mut self, index: u32, times: &PassTimes) -> Result<(), StoreError> {
        if self.window.frames == 0 {
            self.window.first = index;
        }
        self.window.frames += 1;
        self.window.times.merge(times);
        self.totals.merge(times);
        self.metrics.record_accrued(&self.attempt, self.timing, times);
        if self.window.times.total_ns() >= WINDOW_GPU_NS || self.opened.elapsed() >= WINDOW_WALL {
            self.flush().await?;
        }
        Ok(())
    }

    /// The window's events (one per pass that ran), and a new empty window.
    fn take_window(&mut self) -> Vec<UsageEvent> {
        let w = std::mem::take(&mut self.window);
        self.opened = Instant::now();
        Pass::ALL
            .into_iter()
            .filter(|p| w.times.get(*p) > 0)
            .map(|p| UsageEvent::gpu(&self.attempt, p, u64::from(w.first), w.frames, w.times.get(p), self.timing))
            .collect()
    }

    /// Starts writing the window. The commit (an fsync) runs in the background
    /// while the next frames render; the next flush or `close` waits for it, so
    /// at most one batch is in flight and none is dropped. Must be called within
    /// a Tokio runtime.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        self.wait_inflight().await?;
        let batch = self.take_window();
        if !batch.is_empty() {
            let (store, lease) = (self.store.clone(), self.lease.clone());
            self.inflight = Some(tokio::spawn(async move {
                let appended = match &lease {
                    Some(lease) => store.append_for(lease, &batch).await,
                    None => store.append(&batch).await,
                };
                match appended {
                    Ok(_) => Ok(()),
                    Err(e) => Err((e, batch)),
                }
            }));
        }
        Ok(())
    }

    /// Waits for the window in flight; a failed batch is kept for the settlement.
    async fn wait_inflight(&mut self) -> Result<(), StoreError> {
        let Some(handle) = self.inflight.take() else { return Ok(()) };
        match handle.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((e, batch))) => {
                self.unwritten.extend(batch);
                Err(e)
            }
            Err(e) => Err(StoreError::Query(format!("ledger writer task: {e}"))),
        }
    }

    /// Ends the recording: waits for the window in flight and hands over what
    /// is not in the ledger yet (the last window, and any window whose write
    /// failed), for the settlement to write in its transaction.
    pub async fn close(mut self) -> Closing {
        if let Err(e) = self.wait_inflight().await {
            tracing::warn!(attempt = ?self.attempt, error = %e, "a usage window goes with the settlement");
        }
        let mut pending = std::mem::take(&mut self.unwritten);
        pending.extend(self.take_window());
        Closing { attempt: self.attempt.clone(), timing: self.timing, totals: self.totals, pending }
    }
}

/// What a delivered clip is billed: `frames` frames under the job's admitted
/// quote (the whole order: the quoted price; part of it: the same rates for
/// the frames delivered).
#[derive(Debug, Clone)]
pub struct Bill {
    pub resolution: String,
    pub fps: u32,
    pub variant: String,
    pub frames: u32,
    pub price_micros: i64,
}

impl Bill {
    /// The bill for delivering `frames` frames of `spec` under `quote`.
    pub fn of(spec: &JobSpec, quote: &AdmittedQuote, frames: u32) -> Self {
        Self {
            resolution: quote.resolution_bucket.clone(),
            fps: spec.fps,
            variant: spec.variant.as_str().to_string(),
            frames,
            price_micros: to_micros(quote.price_of(frames)),
        }
    }

    /// The bill for every frame of `spec`: the quoted price.
    pub fn whole(spec: &JobSpec, quote: &AdmittedQuote) -> Self {
        Self::of(spec, quote, spec.frames)
    }

    /// The job's billable output event.
    pub fn event(&self, attempt: &AttemptRef) -> UsageEvent {
        let price = tessera_metering::price::from_micros(self.price_micros);
        UsageEvent::output(attempt, self.frames, self.fps, &self.resolution, &self.variant, price)
    }
}

impl Closing {
    /// The events an attempt ending with `outcome` writes: its last GPU window,
    /// its end, and the billable output when it delivered frames.
    pub fn events(&self, outcome: Outcome, bill: Option<&Bill>) -> Vec<UsageEvent> {
        let mut events = self.pending.clone();
        events.push(UsageEvent::attempt_end(&self.attempt, outcome));
        if let Some(bill) = bill.filter(|b| b.frames > 0) {
            events.push(bill.event(&self.attempt));
        }
        events
    }

    /// Moves the counters for what the ledger took: `events[i]` where
    /// `inserted[i]`. The attempt's GPU time is counted with its outcome once
    /// its end was recorded (by this worker); GPU events recorded after another
    /// worker ended the attempt count on their own.
    pub fn record(
        &self,
        metrics: &Metrics,
        book: &PriceBook,
        outcome: Outcome,
        events: &[UsageEvent],
        inserted: &[bool],
    ) {
        let new = || events.iter().zip(inserted).filter(|(_, n)| **n).map(|(e, _)| e);
        let a = &self.attempt;
        if new().any(|e| e.kind == EventKind::AttemptEnd) {
            metrics.record_attempt(a, outcome, self.timing, &self.totals);
            metrics.record_gpu_cost(book, a, &self.totals);
        } else {
            let mut late = PassTimes::default();
            for e in new().filter(|e| e.kind == EventKind::Gpu) {
                if let Some(pass) = e.pass {
                    late.add(pass, u64::try_from(e.quantity).unwrap_or(0));
                }
            }
            metrics.record_attempt(a, outcome, self.timing, &late);
            metrics.record_gpu_cost(book, a, &late);
        }
        for e in new().filter(|e| e.kind == EventKind::Output) {
            let (res, variant) = (e.resolution.clone().unwrap_or_default(), e.variant.clone().unwrap_or_default());
            let frames = u64::try_from(e.quantity).unwrap_or(0);
            metrics.record_output(a, &res, e.fps.unwrap_or(1), &variant, frames, e.amount_micros);
        }
    }
}
