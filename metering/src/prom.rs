//! Prometheus export behind a small API, so the exposition library can be
//! swapped here alone. Metric names are the constants below; labels are bounded
//! (tenants are operator-created, everything else comes from fixed sets).
//!
//! Usage counters keep exact integers (nanoseconds, frames, micro-units, bytes)
//! and are exposed in base units (seconds, currency) only when scraped, so they
//! equal the ledger's integers exactly instead of drifting with float sums.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::clock::{Pass, PassTimes, TimingSource};
use crate::event::{AttemptRef, Outcome};

/// GPU seconds of finished attempts, by tenant, tier, pass, outcome and timing source.
pub const GPU_SECONDS_TOTAL: &str = "tessera_gpu_seconds_total";
/// GPU seconds as they accrue, frame by frame, before an attempt's outcome is known.
pub const GPU_ACCRUED_SECONDS_TOTAL: &str = "tessera_gpu_accrued_seconds_total";
/// Seconds of billable output, by tenant, tier, resolution, fps and variant.
pub const OUTPUT_SECONDS_TOTAL: &str = "tessera_output_seconds_total";
/// Money, by tenant, tier, bucket (price, compute, encode, storage, egress) and currency.
pub const CHARGES_TOTAL: &str = "tessera_charges_total";
/// Byte-seconds of archived output retained, by tenant.
pub const STORAGE_BYTE_SECONDS_TOTAL: &str = "tessera_storage_byte_seconds_total";
/// Bytes served, by tenant.
pub const EGRESS_BYTES_TOTAL: &str = "tessera_egress_bytes_total";

/// Queued jobs per lane (gauge).
pub const QUEUE_DEPTH: &str = "tessera_queue_depth";
/// Age of the oldest queued job per lane (gauge).
pub const QUEUE_OLDEST_AGE_SECONDS: &str = "tessera_queue_oldest_age_seconds";
/// Finished jobs by lane and outcome.
pub const JOBS_TOTAL: &str = "tessera_jobs_total";
/// Jobs that started after their lane's wait SLO.
pub const SLA_BREACHES_TOTAL: &str = "tessera_sla_breaches_total";
/// Time from submission (or retry time) to start, per lane.
pub const QUEUE_WAIT_SECONDS: &str = "tessera_queue_wait_seconds";
/// Run time of attempts, per lane.
pub const RUN_SECONDS: &str = "tessera_run_seconds";
/// Attempts running now (gauge).
pub const JOBS_IN_FLIGHT: &str = "tessera_jobs_in_flight";
/// The adaptive limit on attempts in flight (gauge).
pub const CONCURRENCY_LIMIT: &str = "tessera_concurrency_limit";
/// Histogram: jobs whose frames shared one GPU submission (grouping).
pub const SUBMISSION_JOBS: &str = "tessera_submission_jobs";
/// Frame rings an attempt started with, by source: `new` (buffers, tiles and
/// pipelines made for it) or `reused` (the ring of the job's previous chunk).
pub const FRAME_RINGS_TOTAL: &str = "tessera_frame_rings_total";
/// Jobs accepted by this worker's API, per lane.
pub const JOBS_SUBMITTED_TOTAL: &str = "tessera_jobs_submitted_total";
/// Each lane's max wait, past which a queued job goes ahead of every lane (gauge).
pub const LANE_MAX_WAIT_SECONDS: &str = "tessera_lane_max_wait_seconds";
/// The worker registry as this worker sees it, by state (alive, missing) (gauge).
pub const FLEET_WORKERS: &str = "tessera_fleet_workers";
/// GPU errors by kind (validation, out_of_memory, internal, device_lost, uncaptured).
pub const GPU_ERRORS_TOTAL: &str = "tessera_gpu_errors_total";
/// The fleet ledger's total price charged, read from the store.
pub const LEDGER_CHARGES_TOTAL: &str = "tessera_ledger_charges_total";

#[derive(Debug, Clone, Copy)]
enum Scale {
    /// value = integer / divisor
    Divide(f64),
    /// value = integer / (the label at this index, as a number): frames / fps
    DivideByLabel(usize),
}

/// A counter family holding exact integers per label set.
#[derive(Debug)]
struct ExactCounterVec {
    desc: Desc,
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    scale: Scale,
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl ExactCounterVec {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str], scale: Scale) -> Arc<Self> {
        let desc =
            Desc::new(name.into(), help.into(), labels.iter().map(|l| l.to_string()).collect(), Default::default())
                .expect("metric descriptors are valid");
        Arc::new(Self { desc, name, help, labels, scale, values: Mutex::default() })
    }

    fn add(&self, labels: &[&str], v: u64) {
        debug_assert_eq!(labels.len(), self.labels.len());
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let slot = values.entry(labels.iter().map(|l| l.to_string()).collect()).or_insert(0);
        *slot = slot.saturating_add(v);
    }

    fn sum_where(&self, filter: &dyn Fn(&[String]) -> bool) -> u64 {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.iter().filter(|(k, _)| filter(k)).map(|(_, v)| *v).sum()
    }
}

#[derive(Debug)]
struct Exposed(Arc<ExactCounterVec>);

impl Collector for Exposed {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let c = &self.0;
        let values = c.values.lock().unwrap_or_else(|e| e.into_inner());
        let metrics: Vec<Metric> = values
            .iter()
            .map(|(labels, &v)| {
                let divisor = match c.scale {
                    Scale::Divide(d) => d,
                    Scale::DivideByLabel(i) => labels[i].parse::<f64>().unwrap_or(1.0).max(1.0),
                };
                let pairs = c
                    .labels
                    .iter()
                    .zip(labels)
                    .map(|(name, value)| {
                        let mut p = LabelPair::default();
                        p.set_name(name.to_string());
                        p.set_value(value.clone());
                        p
                    })
                    .collect();
                let mut counter = Counter::default();
                counter.set_value(v as f64 / divisor);
                let mut m = Metric::from_label(pairs);
                m.set_counter(counter);
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(c.name.into());
        family.set_help(c.help.into());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(metrics);
        vec![family]
    }
}

/// An attempt rebuilt from ledger events: who, how it ended, how it was timed, its GPU time.
type ReplayedAttempt = (AttemptRef, Option<Outcome>, TimingSource, PassTimes);

/// The worker's usage metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    currency: String,
    gpu: Arc<ExactCounterVec>,
    gpu_accrued: Arc<ExactCounterVec>,
    output: Arc<ExactCounterVec>,
    charges: Arc<ExactCounterVec>,
    storage: Arc<ExactCounterVec>,
    egress: Arc<ExactCounterVec>,
    ledger_charges: Arc<ExactCounterVec>,
}

impl Metrics {
    pub fn new(currency: &str) -> Self {
        let registry = Registry::new();
        let gpu = ExactCounterVec::new(
            GPU_SECONDS_TOTAL,
            "GPU seconds of finished attempts, measured per pass.",
            &["tenant", "tier", "pass", "outcome", "timing"],
            Scale::Divide(1e9),
        );
        let gpu_accrued = ExactCounterVec::new(
            GPU_ACCRUED_SECONDS_TOTAL,
            "GPU seconds as they accrue frame by frame, outcome not yet known.",
            &["tenant", "tier", "pass", "timing"],
            Scale::Divide(1e9),
        );
        let output = ExactCounterVec::new(
            OUTPUT_SECONDS_TOTAL,
            "Seconds of billable output delivered.",
            &["tenant", "tier", "resolution", "fps", "variant"],
            Scale::DivideByLabel(3),
        );
        let charges = ExactCounterVec::new(
            CHARGES_TOTAL,
            "Money by bucket: the customer price, and the operator's compute, encode, storage and egress cost.",
            &["tenant", "tier", "bucket", "currency"],
            Scale::Divide(1e6),
        );
        let storage = ExactCounterVec::new(
            STORAGE_BYTE_SECONDS_TOTAL,
            "Byte-seconds of archived output retained.",
            &["tenant"],
            Scale::Divide(1.0),
        );
        let egress =
            ExactCounterVec::new(EGRESS_BYTES_TOTAL, "Bytes of output served.", &["tenant"], Scale::Divide(1.0));
        let ledger_charges = ExactCounterVec::new(
            LEDGER_CHARGES_TOTAL,
            "The price charged over the fleet's whole ledger, as last read from the store.",
            &["currency"],
            Scale::Divide(1e6),
        );
        for c in [&gpu, &gpu_accrued, &output, &charges, &storage, &egress, &ledger_charges] {
            registry.register(Box::new(Exposed(c.clone()))).expect("metric names are unique");
        }
        let currency = currency.into();
        Self { registry, currency, gpu, gpu_accrued, output, charges, storage, egress, ledger_charges }
    }

    /// The registry, for the worker's own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One frame's pass times, as they accrue.
    pub fn record_accrued(&self, a: &AttemptRef, timing: TimingSource, times: &PassTimes) {
        for pass in Pass::ALL {
            let ns = times.get(pass);
            if ns > 0 {
                self.gpu_accrued.add(&[&a.tenant_id, &a.tier, pass.as_str(), timing.as_str()], ns);
            }
        }
    }

    /// A finished attempt's pass totals with its outcome.
    pub fn record_attempt(&self, a: &AttemptRef, outcome: Outcome, timing: TimingSource, totals: &PassTimes) {
        for pass in Pass::ALL {
            self.gpu.add(&[&a.tenant_id, &a.tier, pass.as_str(), outcome.as_str(), timing.as_str()], totals.get(pass));
        }
    }

    /// A job's billable output and its price (micro-units).
    pub fn record_output(
        &self,
        a: &AttemptRef,
        resolution: &str,
        fps: u32,
        variant: &str,
        frames: u64,
        price_micros: i64,
    ) {
        self.output.add(&[&a.tenant_id, &a.tier, resolution, &fps.to_string(), variant], frames);
        self.record_charge(a, "price", price_micros);
    }

    /// Money into a bucket (price, compute, encode, storage, egress).
    pub fn record_charge(&self, a: &AttemptRef, bucket: &str, micros: i64) {
        self.charges.add(&[&a.tenant_id, &a.tier, bucket, &self.currency], u64::try_from(micros).unwrap_or(0));
    }

    /// Retained bytes over time, and their cost to the operator (bucket `storage`).
    pub fn record_storage(&self, book: &crate::price::PriceBook, tenant_id: &str, tier: &str, byte_seconds: u64) {
        self.storage.add(&[tenant_id], byte_seconds);
        let cost = per_gb_micros(byte_seconds, book.cost.storage_per_gb_second);
        self.charges.add(&[tenant_id, tier, "storage", &self.currency], cost);
    }

    /// Bytes served, and their cost to the operator (bucket `egress`).
    pub fn record_egress(&self, book: &crate::price::PriceBook, tenant_id: &str, tier: &str, bytes: u64) {
        self.egress.add(&[tenant_id], bytes);
        let cost = per_gb_micros(bytes, book.cost.egress_per_gb);
        self.charges.add(&[tenant_id, tier, "egress", &self.currency], cost);
    }

    /// The ledger's total price as just read from the store. The ledger only
    /// grows, so a smaller figure (a read racing a slower one) is ignored: the
    /// counter never goes down.
    pub fn set_ledger_charged(&self, micros: u64) {
        let mut values = self.ledger_charges.values.lock().unwrap_or_else(|e| e.into_inner());
        let slot = values.entry(vec![self.currency.clone()]).or_insert(0);
        *slot = (*slot).max(micros);
    }

    /// Creates a tenant's money and GPU-time series at zero, so that a
    /// Prometheus `increase()` over a window sees its first job in full: a
    /// series that appears with a value already on it loses that value to the
    /// range functions (they only count increases between samples).
    /// `timing` is this worker's timing source; labels no event would use are
    /// not created.
    pub fn touch_tenant(&self, tenant_id: &str, tier: &str, timing: TimingSource) {
        for bucket in CHARGE_BUCKETS {
            self.charges.add(&[tenant_id, tier, bucket, &self.currency], 0);
        }
        for pass in Pass::ALL {
            for outcome in Outcome::ALL {
                self.gpu.add(&[tenant_id, tier, pass.as_str(), outcome.as_str(), timing.as_str()], 0);
            }
            self.gpu_accrued.add(&[tenant_id, tier, pass.as_str(), timing.as_str()], 0);
        }
    }

    /// Rebuilds the counters from ledger events (for example after a restart):
    /// the metrics are a view of the store. Compute and encode cost use `book`.
    pub fn replay(&self, book: &crate::price::PriceBook, events: &[crate::event::UsageEvent]) {
        use crate::event::EventKind;
        let mut attempts: BTreeMap<(String, u32), ReplayedAttempt> = BTreeMap::new();
        for e in events {
            let a = AttemptRef {
                tenant_id: e.tenant_id.clone(),
                tier: e.tier.clone(),
                job_id: e.job_id.clone(),
                attempt: e.attempt,
                chunk: None,
            };
            match e.kind {
                EventKind::Gpu => {
                    let (Some(pass), Some(timing)) = (e.pass, e.timing) else { continue };
                    let mut t = PassTimes::default();
                    t.add(pass, u64::try_from(e.quantity).unwrap_or(0));
                    self.record_accrued(&a, timing, &t);
                    let entry = attempts.entry((e.job_id.clone(), e.attempt)).or_insert((
                        a,
                        None,
                        timing,
                        PassTimes::default(),
                    ));
                    entry.3.merge(&t);
                    entry.1 = entry.1.or(e.outcome);
                }
                EventKind::AttemptEnd => {
                    let entry = attempts.entry((e.job_id.clone(), e.attempt)).or_insert((
                        a,
                        None,
                        TimingSource::Gpu,
                        PassTimes::default(),
                    ));
                    entry.1 = e.outcome;
                }
                EventKind::Output => {
                    let fps = e.fps.unwrap_or(1);
                    let res = e.resolution.clone().unwrap_or_default();
                    let variant = e.variant.clone().unwrap_or_default();
                    self.record_output(
                        &a,
                        &res,
                        fps,
                        &variant,
                        u64::try_from(e.quantity).unwrap_or(0),
                        e.amount_micros,
                    );
                }
                EventKind::Storage => {
                    self.record_storage(book, &e.tenant_id, &e.tier, u64::try_from(e.quantity).unwrap_or(0))
                }
                EventKind::Egress => {
                    self.record_egress(book, &e.tenant_id, &e.tier, u64::try_from(e.quantity).unwrap_or(0))
                }
            }
        }
        for (a, outcome, timing, totals) in attempts.into_values() {
            let Some(outcome) = outcome else { continue };
            self.record_attempt(&a, outcome, timing, &totals);
            self.record_gpu_cost(book, &a, &totals);
        }
    }

    /// Compute (render + stitch) and encode cost of an attempt's GPU time.
    pub fn record_gpu_cost(&self, book: &crate::price::PriceBook, a: &AttemptRef, totals: &PassTimes) {
        let (compute, encode) = gpu_cost_micros(book, totals);
        self.record_charge(a, "compute", compute);
        self.record_charge(a, "encode", encode);
    }

    /// Exact GPU nanoseconds of finished attempts of a tenant and pass (all outcomes).
    pub fn gpu_ns(&self, tenant_id: &str, pass: Pass) -> u64 {
        self.gpu.sum_where(&|k| k[0] == tenant_id && k[2] == pass.as_str())
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The buckets of `tessera_charges_total`: the price tenants pay, then the
/// operator's cost by what it pays for.
pub const CHARGE_BUCKETS: [&str; 5] = ["price", "compute", "encode", "storage", "egress"];

/// Operator cost in micro-units of `units` (bytes, or byte-seconds) at `rate` per 10^9 of them.
fn per_gb_micros(units: u64, rate: rust_decimal::Decimal) -> u64 {
    use rust_decimal::{Decimal, RoundingStrategy};
    let cost = (Decimal::from(units) / Decimal::from(1_000_000_000u64) * rate)
        .round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero);
    u64::try_from(crate::price::to_micros(cost)).unwrap_or(0)
}

/// Operator cost in micro-units of an attempt's GPU time: (compute, encode).
pub fn gpu_cost_micros(book: &crate::price::PriceBook, totals: &PassTimes) -> (i64, i64) {
    use rust_decimal::{Decimal, RoundingStrategy};
    let micros = |ns: u64, rate: Decimal| {
        crate::price::to_micros(
            (Decimal::from(ns) / Decimal::from(1_000_000_000u64) * rate)
                .round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero),
        )
    };
    (
        micros(totals.render_ns + totals.stitch_ns, book.cost.compute_per_gpu_second),
        micros(totals.encode_ns, book.cost.encode_per_gpu_second),
    )
}
