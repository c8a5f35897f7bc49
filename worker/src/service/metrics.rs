//! The service's queue, job, fleet and GPU-error metrics, registered next to
//! the usage counters, and the adaptive concurrency limit
//! ([`ConcurrencyController`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use prometheus_names::*;
use tessera_metering::prom as prometheus_names;

use tessera_metering::PriceBook;

use crate::gpu::{GpuContext, GpuErrorCounts};
use crate::spec::{JobSpec, RawSpec, SpecLimits};

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
    pub frame_rings: prometheus::IntCounterVec,
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
            frame_rings: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    FRAME_RINGS_TOTAL,
                    "Frame rings attempts started with: new, or reused from the job's previous chunk.",
                ),
                &["source"],
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
        registry.register(Box::new(m.frame_rings.clone()))?;
        registry.register(Box::new(m.lane_max_wait.clone()))?;
        registry.register(Box::new(m.fleet_workers.clone()))?;
        registry.register(Box::new(GpuErrors::new(ctx)?))?;
        // Every lane's series exist at zero from the start, so that range
        // functions (`increase()` in the alerts) see a lane's first job,
        // dead letter or breach instead of a series born at 1.
        for source in ["new", "reused"] {
            m.frame_rings.with_label_values(&[source]);
        }
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

/// What makes two frames' GPU times comparable: the same shader work (template
/// and variant), the same tiling, and a similar size (within half an octave of
/// pixels; times are compared per pixel). The controller compares each frame
/// with the best recent time of its own kind, so a change in the mix of jobs
/// (a 4K clip after many small ones, a heavy template after a light one) is
/// not mistaken for contention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameKind {
    key: KindKey,
    pixels: u64,
}

/// Work (`template@version/variant`), tiles, size class.
type KindKey = (String, u32, u32);

impl FrameKind {
    pub fn new(work: &str, tiles: u32, width: u32, height: u32) -> Self {
        let pixels = u64::from(width.max(1)) * u64::from(height.max(1));
        let size_class = (2.0 * (pixels as f64).log2()).round() as u32;
        Self { key: (work.to_string(), tiles.max(1), size_class), pixels }
    }

    /// The kind of a validated spec's frames.
    pub fn of(spec: &JobSpec) -> Self {
        let work = format!("{}/{}", spec.template.id(), spec.variant.as_str());
        Self::new(&work, spec.tiler.cols * spec.tiler.rows, spec.width, spec.height)
    }

    /// The kind of a stored job's frames, its spec validated again as its
    /// attempt did; `None` when it no longer validates.
    pub fn of_stored(spec_json: &str, book: &PriceBook) -> Option<Self> {
        let raw: RawSpec = serde_json::from_str(spec_json).ok()?;
        raw.validate(&SpecLimits::from_price_book(book)).ok().map(|s| Self::of(&s))
    }
}

/// Cut to `limit × CUT.0 / CUT.1`.
const CUT: (usize, usize) = (3, 4);
/// A window's slowdown above this cuts: contention, not noise.
const RISE: f64 = 1.25;
/// The limit grows only while the slowdown is at most this.
const FLAT: f64 = 1.10;
/// A cut for slowdown must bring it below this fraction of what it was...
const RELIEF: f64 = 0.9;
/// ...within this many windows with samples once the cut binds...
const CHECK_WINDOWS: u32 = 2;
/// ...if the jobs in flight fell below this fraction of those at the cut (else
/// the check says nothing: the cut may have come while they were rising).
const FELL: f64 = 0.85;
/// Busy windows in a row with a slowdown between `FLAT` and `RISE` after
/// which a cut probes whether concurrency is the cause (a minute).
const PROBE_AFTER: u32 = 30;
/// How far a baseline moves towards a faster time (fast), and towards a
/// slower one (slowly, and only from windows within `FLAT`: never from a
/// window that may be contention, so a saturated GPU does not become the
/// norm and let the limit creep up).
const TO_FASTER: f64 = 0.5;
const TO_SLOWER: f64 = 1.0 / 32.0;
/// Frame kinds remembered; the least recently seen goes first.
const MAX_KINDS: usize = 256;

/// Adaptive concurrency: AIMD on what the GPU reports, never on demand.
///
/// The scheduler calls [`adjust`](Self::adjust) every 2 s (a window). The
/// window's *slowdown* is the GPU time of the frames finished in it (fed by
/// [`observe_gpu`](Self::observe_gpu) at each settlement) over what the same
/// frames took at the GPU's best recent speed. Each [`FrameKind`] has its
/// baseline, GPU ns per pixel-frame: an EWMA that follows faster times
/// quickly and slower ones slowly, so it sits near the best recent times
/// without one fast or slow window moving it much. Past its saturation point a
/// GPU gives each job a smaller share and every frame takes longer (its
/// throughput stays flat), so a slowdown says the limit is past that point.
///
/// - **Cut** ×3/4 (never below `min`) when the window had GPU errors that
///   mean the device is short of memory or failing (out of memory, internal,
///   device lost: [`observe_device_errors`](Self::observe_device_errors), or
///   [`observe_error`](Self::observe_error)), or when the slowdown passes 1.25.
/// - **Grow** +1 (up to `max`) while the limit binds (in flight within an
///   eighth of it) and the slowdown is at most 1.10: the GPU has headroom.
/// - **Hold** otherwise: an idle worker's limit does not drift up to `max`, a
///   window without finished frames says nothing, and a slowdown between 1.10
///   and 1.25 is the GPU near saturation.
///
/// A cut for slowdown is checked: two windows with samples after it binds,
/// if the jobs in flight did fall, the slowdown must have fallen by a tenth
/// from its peak. If not, concurrency was not the cause (the GPU itself got
/// slower: clocks, another process on it), so every baseline moves up by that
/// slowdown instead of cutting again and again; the limit, cut once, grows
/// back. A busy worker that holds between 1.10 and 1.25
/// for a minute cuts once, checked the same way, to tell a GPU slightly slower
/// than its baseline (which then moves) from one near saturation (which stays).
///
/// Queue wait is not an input: it measures demand, and cutting on it made
/// more demand lower the limit and raise the wait further. Memory pressure is
/// read only as the out-of-memory errors the jobs' error scopes catch: wgpu
/// has no portable query of an adapter's free memory.
#[derive(Debug, Clone)]
pub struct ConcurrencyController {
    pub limit: usize,
    pub min: usize,
    pub max: usize,
    kinds: HashMap<KindKey, Kind>,
    /// Errors in this window.
    errors: u64,
    /// The device's error count (the kinds that count) at the last look.
    device_errors: u64,
    /// The pending check of the last cut for slowdown.
    check: Option<CutCheck>,
    /// Busy windows in a row between `FLAT` and `RISE`.
    near_saturation: u32,
    /// Windows so far (when each kind was last seen).
    window: u64,
}

/// One frame kind: its baseline and this window's samples.
#[derive(Debug, Clone, Default)]
struct Kind {
    /// GPU ns per pixel-frame at the GPU's best recent speed.
    baseline: Option<f64>,
    ns: u64,
    pixel_frames: f64,
    seen: u64,
}

#[derive(Debug, Clone, Copy)]
struct CutCheck {
    /// The highest slowdown since the cut, and the jobs in flight at the cut.
    slowdown: f64,
    in_flight: usize,
    windows_left: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Cut,
    Grow,
    Hold,
}

impl ConcurrencyController {
    pub fn new(initial: usize, max: usize) -> Self {
        Self {
            limit: initial.clamp(1, max.max(1)),
            min: 1,
            max: max.max(1),
            kinds: HashMap::new(),
            errors: 0,
            device_errors: 0,
            check: None,
            near_saturation: 0,
            window: 0,
        }
    }

    /// A finished attempt's GPU time over the `frames` it rendered, all of
    /// `kind`.
    pub fn observe_gpu(&mut self, kind: &FrameKind, ns: u64, frames: u64) {
        if ns == 0 || frames == 0 {
            return;
        }
        if !self.kinds.contains_key(&kind.key) && self.kinds.len() >= MAX_KINDS {
            if let Some(oldest) = self.kinds.iter().min_by_key(|(_, k)| k.seen).map(|(key, _)| key.clone()) {
                self.kinds.remove(&oldest);
            }
        }
        let k = self.kinds.entry(kind.key.clone()).or_default();
        k.ns += ns;
        k.pixel_frames += frames as f64 * kind.pixels as f64;
        k.seen = self.window;
    }

    /// A GPU error in this window (any number in one window cut once). The
    /// worker feeds the device's own counts instead
    /// ([`observe_device_errors`](Self::observe_device_errors)): a failed
    /// attempt is not counted as such, since most failures are the job's own
    /// (a quality gate, a poisoned job's invalid commands) and one tenant's
    /// bad jobs must not pin every tenant's limit at the minimum.
    pub fn observe_error(&mut self) {
        self.errors += 1;
    }

    /// The device's error counts: the out-of-memory, internal and device-lost
    /// errors since the last look are this window's. Validation errors (a
    /// job's own invalid commands, which fail only that job) and uncaptured
    /// ones do not count: they say nothing about load.
    pub fn observe_device_errors(&mut self, counts: &GpuErrorCounts) {
        let n = [&counts.out_of_memory, &counts.internal, &counts.device_lost]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>();
        self.errors += n.saturating_sub(self.device_errors);
        self.device_errors = n;
    }

    /// The window's GPU time over what its frames took at the baselines; `None`
    /// without a frame of a kind seen before.
    fn slowdown(&self) -> Option<f64> {
        let (mut measured, mut expected) = (0.0, 0.0);
        for k in self.kinds.values() {
            if let Some(b) = k.baseline.filter(|_| k.pixel_frames > 0.0) {
                measured += k.ns as f64;
                expected += b * k.pixel_frames;
            }
        }
        (expected > 0.0).then(|| measured / expected)
    }

    /// Ends the window: re-evaluates the limit with `in_flight` attempts
    /// running now; returns the new limit.
    pub fn adjust(&mut self, in_flight: usize) -> usize {
        let errors = std::mem::take(&mut self.errors);
        let busy = in_flight >= self.limit - self.limit / 8;
        let slowdown = self.slowdown();
        let (step, rebase) = match slowdown {
            _ if errors > 0 => (Step::Cut, None),
            None => (Step::Hold, None),
            Some(s) => self.rule(s, in_flight, busy),
        };
        match step {
            Step::Cut => self.limit = (self.limit * CUT.0 / CUT.1).max(self.min),
            Step::Grow => self.limit = (self.limit + 1).min(self.max),
            Step::Hold => {}
        }
        let settled = step != Step::Cut && errors == 0 && self.check.is_none();
        self.learn(rebase, settled && slowdown.is_some_and(|s| s <= FLAT));
        self.window += 1;
        self.limit
    }

    /// The step for a window whose slowdown is `s`, and the factor to move
    /// every baseline by when a cut turned out not to relieve the GPU.
    fn rule(&mut self, s: f64, in_flight: usize, busy: bool) -> (Step, Option<f64>) {
        if let Some(check) = self.check.as_mut() {
            // The check counts windows once the cut binds (attempts started
            // before it have finished).
            if in_flight <= self.limit {
                check.windows_left = check.windows_left.saturating_sub(1);
            }
            // Frame times lag the jobs in flight (a finished job's time is
            // its whole run's): the slowdown may peak after the cut.
            check.slowdown = check.slowdown.max(s);
            if check.windows_left > 0 {
                return (Step::Hold, None);
            }
            let fell = (in_flight as f64) < FELL * check.in_flight as f64;
            let relieved = s < RELIEF * check.slowdown;
            self.check = None;
            if fell && !relieved {
                self.near_saturation = 0;
                return (Step::Hold, Some(s));
            }
        }
        let near = busy && s > FLAT && s <= RISE;
        self.near_saturation = if near { self.near_saturation + 1 } else { 0 };
        if s > RISE || self.near_saturation >= PROBE_AFTER {
            self.near_saturation = 0;
            self.check = Some(CutCheck { slowdown: s, in_flight, windows_left: CHECK_WINDOWS });
            (Step::Cut, None)
        } else if busy && s <= FLAT {
            (Step::Grow, None)
        } else {
            (Step::Hold, None)
        }
    }

    /// Moves the baselines to this window's times (towards slower ones only
    /// when `slower`), or all by `rebase`; clears the window's samples.
    fn learn(&mut self, rebase: Option<f64>, slower: bool) {
        for k in self.kinds.values_mut() {
            let x = (k.pixel_frames > 0.0).then(|| k.ns as f64 / k.pixel_frames);
            k.baseline = match (k.baseline, x, rebase) {
                (Some(b), _, Some(r)) => Some(b * r),
                (None, x, _) => x,
                (Some(b), Some(x), None) if x < b => Some(b + (x - b) * TO_FASTER),
                (Some(b), Some(x), None) if slower => Some(b + (x - b) * TO_SLOWER),
                (b, _, _) => b,
            };
            k.ns = 0;
            k.pixel_frames = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 ms per frame of a 1080p frame: the GPU at its best.
    const BASE_NS: u64 = 1_000_000;

    fn hd() -> FrameKind {
        FrameKind::new("orbit@2/general", 1, 1920, 1080)
    }

    /// One window: `frames` frames of `kind` at `slowdown` × the base time,
    /// `in_flight` running at its end.
    fn window(c: &mut ConcurrencyController, kind: &FrameKind, slowdown: f64, in_flight: usize) -> usize {
        let per_frame = (BASE_NS as f64 * slowdown * kind.pixels as f64 / (1920.0 * 1080.0)) as u64;
        c.observe_gpu(kind, per_frame * 48, 48);
        c.adjust(in_flight)
    }

    /// A controller whose baseline for `hd()` is learnt, idle, at `limit`.
    fn warmed(limit: usize, max: usize) -> ConcurrencyController {
        let mut c = ConcurrencyController::new(limit, max);
        assert_eq!(window(&mut c, &hd(), 1.0, 0), limit);
        c
    }

    #[test]
    fn rising_queue_wait_alone_never_cuts() {
        // Demand twice what the GPU serves: the backlog, and with it every
        // job's queue wait, grows each window. The GPU's per-frame time is
        // flat, so nothing it reports says overload: the limit never drops.
        let mut c = warmed(8, 32);
        let (mut backlog, mut waits) = (0usize, Vec::new());
        for _ in 0..40 {
            let before = c.limit;
            backlog += 2 * c.limit;
            let started = backlog.min(c.limit);
            backlog -= started;
            waits.push(backlog as f64 / c.limit as f64 * 2.0);
            assert!(window(&mut c, &hd(), 1.0, started) >= before);
        }
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "the queue wait rose every window: {waits:?}");
        assert_eq!(c.limit, 32);
    }

    #[test]
    fn a_busy_gpu_with_flat_frame_times_grows_by_one_per_window_up_to_max() {
        let mut c = warmed(4, 12);
        for want in [5, 6, 7, 8, 9, 10, 11, 12, 12, 12] {
            let limit = c.limit;
            assert_eq!(window(&mut c, &hd(), 1.0, limit), want);
        }
        // Noise of a few per cent is still flat.
        let mut c = warmed(4, 12);
        for (i, want) in (5..=12).enumerate() {
            let limit = c.limit;
            assert_eq!(window(&mut c, &hd(), [1.05, 0.96, 1.0, 1.04][i % 4], limit), want);
        }
    }

    #[test]
    fn a_clear_rise_in_gpu_time_per_frame_cuts() {
        let mut c = warmed(16, 32);
        assert_eq!(window(&mut c, &hd(), 1.2, 16), 16, "below 1.25: hold, not cut");
        assert_eq!(window(&mut c, &hd(), 1.6, 16), 12);
        // The same rise on a worker that is not full cuts too.
        let mut c = warmed(16, 32);
        assert_eq!(window(&mut c, &hd(), 1.6, 10), 12);
        // Never below the minimum.
        let mut c = warmed(1, 32);
        assert_eq!(window(&mut c, &hd(), 3.0, 1), 1);
    }

    #[test]
    fn gpu_errors_cut() {
        let mut c = warmed(16, 32);
        c.observe_error();
        c.observe_error();
        assert_eq!(window(&mut c, &hd(), 1.0, 16), 12, "two errors in a window: one cut");
        c.observe_error();
        assert_eq!(c.adjust(0), 9, "a window with errors and no finished frame still cuts");
        // The device's own counts: out of memory cuts, validation does not.
        let counts = GpuErrorCounts::default();
        let mut c = warmed(16, 32);
        counts.validation.fetch_add(3, Ordering::Relaxed);
        c.observe_device_errors(&counts);
        assert_eq!(window(&mut c, &hd(), 1.0, 16), 17);
        counts.out_of_memory.fetch_add(1, Ordering::Relaxed);
        c.observe_device_errors(&counts);
        assert_eq!(window(&mut c, &hd(), 1.0, 17), 12);
        c.observe_device_errors(&counts);
        assert_eq!(window(&mut c, &hd(), 1.0, 12), 13, "an error is counted once");
    }

    #[test]
    fn an_idle_worker_holds_its_limit() {
        let mut c = warmed(8, 32);
        for _ in 0..50 {
            assert_eq!(window(&mut c, &hd(), 1.0, 2), 8);
            assert_eq!(c.adjust(0), 8, "no finished frames");
        }
        // Within an eighth of the limit the limit binds: it grows.
        assert_eq!(window(&mut c, &hd(), 1.0, 6), 8);
        assert_eq!(window(&mut c, &hd(), 1.0, 7), 9);
    }

    #[test]
    fn recovery_after_a_cut_is_additive() {
        let mut c = warmed(16, 32);
        assert_eq!(window(&mut c, &hd(), 1.6, 16), 12);
        // The cut relieved the GPU: one window to see it bind, then +1 each.
        let mut seen = Vec::new();
        for _ in 0..6 {
            let limit = c.limit;
            seen.push(window(&mut c, &hd(), 1.0, limit));
        }
        assert_eq!(seen, [12, 13, 14, 15, 16, 17]);
    }

    #[test]
    fn a_slowdown_the_cut_does_not_relieve_moves_the_baseline_instead_of_cutting_again() {
        // The GPU itself got 1.6× slower (clocks, another process): a cut
        // does not bring per-frame time down, so it is cut once, not to 1.
        let mut c = warmed(16, 32);
        assert_eq!(window(&mut c, &hd(), 1.6, 16), 12);
        assert_eq!(window(&mut c, &hd(), 1.6, 12), 12);
        assert_eq!(window(&mut c, &hd(), 1.6, 12), 12);
        assert_eq!(window(&mut c, &hd(), 1.6, 12), 13, "1.6 is the new normal");
        assert_eq!(window(&mut c, &hd(), 1.6, 13), 14);
    }

    #[test]
    fn a_change_of_job_mix_is_not_contention() {
        // Three kinds of frames, 1.5 ms to 30 ms each at the GPU's best.
        let small = FrameKind::new("orbit@2/general", 1, 320, 180);
        let dunes = FrameKind::new("dunes@1/general", 4, 1920, 1080);
        let uhd = FrameKind::new("orbit@2/general", 1, 3840, 2160);
        let feed = |c: &mut ConcurrencyController, kind: &FrameKind, cost: f64| {
            let per_frame = BASE_NS as f64 * cost * kind.pixels as f64 / (1920.0 * 1080.0);
            c.observe_gpu(kind, (per_frame * 48.0) as u64, 48);
        };
        let mut c = ConcurrencyController::new(8, 32);
        for (kind, cost) in [(&small, 1.0), (&dunes, 3.0), (&uhd, 1.0), (&hd(), 1.0)] {
            feed(&mut c, kind, cost);
        }
        assert_eq!(c.adjust(8), 8, "first sight of every kind: nothing to compare with");
        // Windows of one kind each, the heaviest after the lightest: per frame
        // the time jumps 90×, against each kind's own baseline it is flat.
        let mut seen = Vec::new();
        for (kind, cost) in [(&small, 1.0), (&uhd, 1.0), (&small, 1.0), (&dunes, 3.0), (&uhd, 1.0)] {
            feed(&mut c, kind, cost);
            let limit = c.limit;
            seen.push(c.adjust(limit));
        }
        assert_eq!(seen, [9, 10, 11, 12, 13]);
        // A size in the same class (within half an octave) shares the
        // baseline, per pixel.
        let wide = FrameKind::new("orbit@2/general", 1, 2048, 1080);
        assert_eq!(wide.key, hd().key);
        let limit = c.limit;
        assert_eq!(window(&mut c, &hd(), 1.0, limit), 14);
        feed(&mut c, &wide, 1.0);
        assert_eq!(c.adjust(14), 15);
        // But contention shows whatever the mix: every kind slower by 1.5.
        feed(&mut c, &small, 1.5);
        feed(&mut c, &dunes, 4.5);
        assert_eq!(c.adjust(15), 11);
    }

    #[test]
    fn noise_neither_cuts_nor_stops_growth_for_long() {
        // Per-window times uniform within ±10 % of the same mean, the worker
        // always busy: the limit never drops and reaches max.
        let mut c = warmed(4, 32);
        let mut seed = 7u64;
        for _ in 0..300 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let noise = 0.9 + 0.2 * ((seed >> 33) as f64 / (1u64 << 31) as f64);
            let limit = c.limit;
            assert!(window(&mut c, &hd(), noise, limit) >= limit, "cut by noise at {noise}");
        }
        assert_eq!(c.limit, 32);
    }

    #[test]
    fn a_busy_worker_held_near_saturation_probes_with_one_cut() {
        // Contention: per-frame time ∝ in flight past 8. At 9 the slowdown
        // is 1.125, between grow and cut: held, then a minute later probed.
        let contended = |n: usize| (n as f64 / 8.0).max(1.0);
        let mut c = warmed(8, 32);
        assert_eq!(window(&mut c, &hd(), contended(8), 8), 9);
        for _ in 0..PROBE_AFTER - 1 {
            assert_eq!(window(&mut c, &hd(), contended(9), 9), 9);
        }
        assert_eq!(window(&mut c, &hd(), contended(9), 9), 6, "the probe");
        // The cut relieved the GPU: its baseline stays, the limit grows back.
        let mut seen = Vec::new();
        for _ in 0..4 {
            let limit = c.limit;
            seen.push(window(&mut c, &hd(), contended(limit), limit));
        }
        assert_eq!(seen, [6, 7, 8, 9]);
        // A GPU 15 % slower whatever the concurrency: the probe does not
        // relieve it, so the baseline moves and the limit grows again.
        let mut c = warmed(8, 32);
        for _ in 0..PROBE_AFTER {
            window(&mut c, &hd(), 1.15, 8);
        }
        assert_eq!(c.limit, 6);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let limit = c.limit;
            seen.push(window(&mut c, &hd(), 1.15, limit));
        }
        assert_eq!(seen, [6, 6, 7, 8]);
    }

    #[test]
    fn a_stored_spec_gives_its_frame_kind() {
        let book = PriceBook::default_book();
        let orbit = include_str!("../../../examples/orbit.json");
        let kind = FrameKind::of_stored(orbit, &book).expect("the example validates");
        assert_eq!(kind, FrameKind::new("orbit@2/general", 4, 1920, 1080));
        assert_eq!(FrameKind::of_stored("{\"template\": \"nope\"}", &book), None);
    }
}
