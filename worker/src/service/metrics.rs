//! The service's queue, job, fleet and GPU-error metrics, registered next to
//! the usage counters.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use prometheus_names::*;
use tessera_metering::prom as prometheus_names;

use crate::gpu::{GpuContext, GpuErrorCounts};

/// The `outcome` label values of `tessera_jobs_total`.
pub const JOB_OUTCOMES: [&str; 7] =
    ["succeeded", "cancelled", "dead", "retried", "interrupted", "abandoned", "unsettled"];

/// Scheduler and runner metrics.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    pub queue_depth: prometheus::IntGaugeVec,
    pub oldest_age: prometheus::GaugeVec,
    pub jobs: prometheus::IntCounterVec,
    pub sla_breaches: prometheus::IntCounterVec,
    pub queue_wait: prometheus::HistogramVec,
    pub run_time: prometheus::HistogramVec,
    pub in_flight: prometheus::IntGauge,
    pub concurrency_limit: prometheus::IntGauge,
    pub submission_jobs: prometheus::Histogram,
    pub submitted: prometheus::IntCounterVec,
    pub lane_max_wait: prometheus::GaugeVec,
    pub fleet_workers: prometheus::IntGaugeVec,
}

impl ServiceMetrics {
    /// Registers the metrics; GPU errors are read from `ctx` when scraped.
    pub fn register(registry: &prometheus::Registry, ctx: Arc<GpuContext>) -> prometheus::Result<Self> {
        let buckets = vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
        let m = Self {
            queue_depth: prometheus::IntGaugeVec::new(
                prometheus::Opts::new(QUEUE_DEPTH, "Queued jobs per lane."),
                &["lane"],
            )?,
            oldest_age: prometheus::GaugeVec::new(
                prometheus::Opts::new(QUEUE_OLDEST_AGE_SECONDS, "Age of the oldest queued job per lane."),
                &["lane"],
            )?,
            jobs: prometheus::IntCounterVec::new(
                prometheus::Opts::new(JOBS_TOTAL, "Finished jobs by lane and outcome."),
                &["lane", "outcome"],
            )?,
            sla_breaches: prometheus::IntCounterVec::new(
                prometheus::Opts::new(SLA_BREACHES_TOTAL, "Jobs that started after their lane's wait SLO."),
                &["lane"],
            )?,
            queue_wait: prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(QUEUE_WAIT_SECONDS, "Time from submission or retry to start.")
                    .buckets(buckets.clone()),
                &["lane"],
            )?,
            run_time: prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(RUN_SECONDS, "Run time of attempts.").buckets(buckets),
                &["lane"],
            )?,
            in_flight: prometheus::IntGauge::new(JOBS_IN_FLIGHT, "Attempts running now.")?,
            concurrency_limit: prometheus::IntGauge::new(CONCURRENCY_LIMIT, "Adaptive limit on attempts in flight.")?,
            submission_jobs: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(SUBMISSION_JOBS, "Jobs whose frames shared one GPU submission.")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
            )?,
            submitted: prometheus::IntCounterVec::new(
                prometheus::Opts::new(JOBS_SUBMITTED_TOTAL, "Jobs accepted by this worker's API, per lane."),
                &["lane"],
            )?,
            lane_max_wait: prometheus::GaugeVec::new(
                prometheus::Opts::new(
                    LANE_MAX_WAIT_SECONDS,
                    "Queue wait after which a lane's job goes ahead of every lane (its max wait).",
                ),
                &["lane"],
            )?,
            fleet_workers: prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    FLEET_WORKERS,
                    "Workers in the fleet's registry by state: alive, or missing (heartbeat overdue, not stopped).",
                ),
                &["state"],
            )?,
        };
        registry.register(Box::new(m.queue_depth.clone()))?;
        registry.register(Box::new(m.oldest_age.clone()))?;
        registry.register(Box::new(m.jobs.clone()))?;
        registry.register(Box::new(m.sla_breaches.clone()))?;
        registry.register(Box::new(m.queue_wait.clone()))?;
        registry.register(Box::new(m.run_time.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.concurrency_limit.clone()))?;
        registry.register(Box::new(m.submission_jobs.clone()))?;
        registry.register(Box::new(m.submitted.clone()))?;
        registry.register(Box::new(m.lane_max_wait.clone()))?;
        registry.register(Box::new(m.fleet_workers.clone()))?;
        registry.register(Box::new(GpuErrors::new(ctx)?))?;
        // Every lane's series exist at zero from the start, so that range
        // functions (`increase()` in the alerts) see a lane's first job,
        // dead letter or breach instead of a series born at 1.
        for lane in tessera_metering::Lane::ALL.map(|l| l.as_str()) {
            for outcome in JOB_OUTCOMES {
                m.jobs.with_label_values(&[lane, outcome]);
            }
            m.sla_breaches.with_label_values(&[lane]);
            m.submitted.with_label_values(&[lane]);
            m.queue_wait.with_label_values(&[lane]);
            m.run_time.with_label_values(&[lane]);
        }
        Ok(m)
    }
}

/// `tessera_gpu_errors_total`, read from the device's own counts when scraped
/// (they are kept where the errors are caught, in the GPU layer).
struct GpuErrors {
    desc: Desc,
    ctx: Arc<GpuContext>,
}

impl std::fmt::Debug for GpuErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuErrors").finish_non_exhaustive()
    }
}

impl GpuErrors {
    const HELP: &'static str = "GPU errors by kind: caught by a job's error scope (validation, out_of_memory, internal), the device loss, or outside every scope (uncaptured).";

    fn new(ctx: Arc<GpuContext>) -> prometheus::Result<Self> {
        let desc = Desc::new(GPU_ERRORS_TOTAL.into(), Self::HELP.into(), vec!["kind".into()], Default::default())?;
        Ok(Self { desc, ctx })
    }
}

impl Collector for GpuErrors {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let counts = self.ctx.error_counts().snapshot();
        let metrics = GpuErrorCounts::KINDS
            .iter()
            .zip(counts)
            .map(|(kind, n)| {
                let mut label = LabelPair::default();
                label.set_name("kind".into());
                label.set_value(kind.to_string());
                let mut counter = Counter::default();
                counter.set_value(n as f64);
                let mut m = Metric::from_label(vec![label]);
                m.set_counter(counter);
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(GPU_ERRORS_TOTAL.into());
        family.set_help(Self::HELP.into());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(metrics);
        vec![family]
    }
}

/// Adaptive concurrency: cut the limit when in-flight work passes ~65 % of it
/// while p95 queue wait or GPU time per frame rises; grow it when they fall.
#[derive(Debug, Clone)]
pub struct ConcurrencyController {
    pub limit: usize,
    pub min: usize,
    pub max: usize,
    prev_wait_p95: Option<f64>,
    prev_gpu_per_frame: Option<f64>,
    waits: Vec<f64>,
    gpu_ns: u64,
    frames: u64,
}

impl ConcurrencyController {
    pub fn new(initial: usize, max: usize) -> Self {
        Self {
            limit: initial.clamp(1, max.max(1)),
            min: 1,
            max: max.max(1),
            prev_wait_p95: None,
            prev_gpu_per_frame: None,
            waits: Vec::new(),
            gpu_ns: 0,
            frames: 0,
        }
    }

    pub fn observe_wait(&mut self, seconds: f64) {
        self.waits.push(seconds);
    }

    pub fn observe_gpu(&mut self, ns: u64, frames: u64) {
        self.gpu_ns += ns;
        self.frames += frames;
    }

    /// Re-evaluates the limit from the window's samples; returns the new limit.
    pub fn adjust(&mut self, in_flight: usize) -> usize {
        let p95 = percentile(&mut self.waits, 0.95);
        let per_frame = (self.frames > 0).then(|| self.gpu_ns as f64 / self.frames as f64);
        let rising = |now: Option<f64>, before: Option<f64>| matches!((now, before), (Some(n), Some(b)) if n > b * 1.1);
        let falling =
            |now: Option<f64>, before: Option<f64>| matches!((now, before), (Some(n), Some(b)) if n < b * 0.9);
        let busy = in_flight as f64 >= 0.65 * self.limit as f64;
        if busy && (rising(p95, self.prev_wait_p95) || rising(per_frame, self.prev_gpu_per_frame)) {
            self.limit = (self.limit * 3 / 4).max(self.min);
        } else if falling(p95, self.prev_wait_p95) || (busy && !rising(per_frame, self.prev_gpu_per_frame)) {
            self.limit = (self.limit + 1).min(self.max);
        }
        if p95.is_some() {
            self.prev_wait_p95 = p95;
        }
        if per_frame.is_some() {
            self.prev_gpu_per_frame = per_frame;
        }
        self.waits.clear();
        self.gpu_ns = 0;
        self.frames = 0;
        self.limit
    }
}

fn percentile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    Some(v[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_when_busy_and_slowing_grows_when_easing() {
        let mut c = ConcurrencyController::new(16, 32);
        c.observe_wait(1.0);
        c.observe_gpu(1_000_000, 10);
        assert_eq!(c.adjust(12), 17); // busy, nothing rising yet: probe upwards
        c.observe_wait(3.0);
        c.observe_gpu(1_000_000, 10);
        assert_eq!(c.adjust(12), 12); // p95 wait tripled while 12 >= 65 % of 17
        c.observe_wait(0.5);
        c.observe_gpu(900_000, 10);
        assert_eq!(c.adjust(3), 13); // waits fell
        for _ in 0..40 {
            c.observe_wait(10.0);
            c.observe_gpu(10_000_000, 1);
            c.adjust(100);
        }
        assert!(c.limit >= 1);
    }
}
