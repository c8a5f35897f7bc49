//! Metered rendering: admission against the tenant's tier, per-frame usage events
//! flushed to the ledger at least once per second of GPU work, and at the end
//! the attempt's outcome, the job's billable output and the Prometheus counters,
//! all from the same integer nanoseconds.

use std::time::{Duration, Instant};

use tessera_metering::ledger::{LedgerError, Tenant};
use tessera_metering::price::to_micros;
use tessera_metering::{
    AttemptRef, Metrics, Outcome, Pass, PassTimes, PriceBook, Quote, Store, TimingSource, UsageEvent,
};

use crate::spec::JobSpec;

/// Flush accrued events once this much GPU time or wall time has passed.
const FLUSH_GPU_NS: u64 = 1_000_000_000;
const FLUSH_WALL: Duration = Duration::from_secs(1);

/// A deterministic job id from the tenant, the spec and an idempotency key.
pub fn job_id(tenant: &Tenant, spec: &JobSpec, key: &str) -> String {
    let text = format!("{}|{}|{}", tenant.id, serde_json::to_string(spec).unwrap_or_default(), key);
    format!("j_{:016x}", tessera_metering::ledger::fnv1a(text.as_bytes()))
}

/// Records one attempt's usage as it runs.
#[derive(Debug)]
pub struct UsageRecorder<'a> {
    store: &'a Store,
    metrics: &'a Metrics,
    attempt: AttemptRef,
    timing: TimingSource,
    pending: Vec<UsageEvent>,
    pending_ns: u64,
    last_flush: Instant,
    totals: PassTimes,
    /// The previous flush, committing in the background while frames render.
    inflight: Option<tokio::task::JoinHandle<Result<u64, LedgerError>>>,
}

impl<'a> UsageRecorder<'a> {
    pub fn new(store: &'a Store, metrics: &'a Metrics, attempt: AttemptRef, timing: TimingSource) -> Self {
        Self {
            store,
            metrics,
            attempt,
            timing,
            pending: Vec::new(),
            pending_ns: 0,
            last_flush: Instant::now(),
            totals: PassTimes::default(),
            inflight: None,
        }
    }

    pub fn attempt(&self) -> &AttemptRef {
        &self.attempt
    }

    /// GPU time of the attempt so far.
    pub fn totals(&self) -> PassTimes {
        self.totals
    }

    /// One frame's pass times; flushes when a second of GPU or wall time accrued.
    pub async fn frame(&mut self, index: u32, times: &PassTimes) -> Result<(), LedgerError> {
        for pass in Pass::ALL {
            let ns = times.get(pass);
            if ns > 0 {
                self.pending.push(UsageEvent::gpu(&self.attempt, pass, u64::from(index), ns, self.timing));
            }
        }
        self.totals.merge(times);
        self.pending_ns += times.total_ns();
        self.metrics.record_accrued(&self.attempt, self.timing, times);
        if self.pending_ns >= FLUSH_GPU_NS || self.last_flush.elapsed() >= FLUSH_WALL {
            self.flush().await?;
        }
        Ok(())
    }

    /// Starts writing what has accrued. The commit (an fsync) runs in the
    /// background while the next frames render; the next flush or `finish`
    /// waits for it, so at most one batch is in flight and none is dropped.
    /// Must be called within a Tokio runtime.
    pub async fn flush(&mut self) -> Result<(), LedgerError> {
        self.wait_inflight().await?;
        if !self.pending.is_empty() {
            let store = self.store.clone();
            let batch = std::mem::take(&mut self.pending);
            self.inflight = Some(tokio::spawn(async move { store.append(&batch).await }));
        }
        self.pending_ns = 0;
        self.last_flush = Instant::now();
        Ok(())
    }

    async fn wait_inflight(&mut self) -> Result<(), LedgerError> {
        if let Some(handle) = self.inflight.take() {
            handle.await.map_err(|e| LedgerError::Query(sqlx::Error::Protocol(format!("ledger writer: {e}"))))??;
        }
        Ok(())
    }

    /// Ends the attempt. On success the job's output is billed once (a job already
    /// billed by an earlier attempt is not billed again); a cancelled job is billed
    /// for what it delivered, which `spec.frames` and `quote` then describe. The
    /// counters move only after the ledger committed. The job's cap reservation
    /// is left for the caller to release once the job is final.
    pub async fn finish(
        mut self,
        book: &PriceBook,
        spec: &JobSpec,
        quote: &Quote,
        outcome: Outcome,
    ) -> Result<PassTimes, LedgerError> {
        self.wait_inflight().await?;
        let mut events = std::mem::take(&mut self.pending);
        events.push(UsageEvent::attempt_end(&self.attempt, outcome));
        let delivered = outcome != Outcome::Failed && spec.frames > 0;
        let bill = delivered && !self.store.has_output(&self.attempt.job_id).await?;
        let bucket = book.resolution_bucket(spec.width, spec.height).to_string();
        if bill {
            events.push(UsageEvent::output(
                &self.attempt,
                spec.frames,
                spec.fps,
                &bucket,
                spec.variant.as_str(),
                quote.price,
            ));
        }
        self.store.append(&events).await?;
        // The reservation stays while the job may still be retried; whoever knows
        // the job is final releases it (`Store::release`).
        let a = &self.attempt;
        self.metrics.record_attempt(a, outcome, self.timing, &self.totals);
        self.metrics.record_gpu_cost(book, a, &self.totals);
        if bill {
            self.metrics.record_output(
                a,
                &bucket,
                spec.fps,
                spec.variant.as_str(),
                u64::from(spec.frames),
                to_micros(quote.price),
            );
        }
        Ok(self.totals)
    }
}
