//! Service configuration: addresses, the store, lanes, retries, concurrency, retention.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tessera_metering::Lane;
use tessera_store::StoreUrl;

use super::server::ConnLimits;

/// Targets of one lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneTargets {
    /// Queue wait beyond which a job counts as an SLA breach.
    pub wait_slo: Duration,
    /// Queue wait beyond which a job goes ahead of every lane (aging).
    pub max_wait: Duration,
}

/// Seconds of frames per chunk unless `--chunk-frames` says otherwise: long
/// enough that a chunk's fixed costs (claim, segment, join) stay a few percent
/// of its frames, short enough that a 60 s clip spreads over 30 GPUs.
pub const DEFAULT_CHUNK_SECONDS: u32 = 2;

/// Everything `tessera serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Clips, sidecars and partial files: shared by every worker of a fleet.
    pub data: PathBuf,
    /// The store (`--db`): SQLite in the data directory by default.
    pub db: StoreUrl,
    /// Where this worker keeps its compiled pipelines (per worker and adapter).
    pub pipeline_cache: PathBuf,
    /// This worker's id in the registry and on its leases (`--worker-id`):
    /// the host (pod) name by default, so a restarted pod is the same worker
    /// (it reaps its own stale leases at once) and "missing" means missing.
    pub worker_id: String,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// Each listener's connection cap and header read timeout
    /// (`--max-connections`, `--header-read-timeout-ms`).
    pub conn_limits: ConnLimits,
    /// `TESSERA_ADMIN_KEY`: creates tenants. Without it, tenant creation is disabled.
    pub admin_key: Option<String>,
    pub urgent: LaneTargets,
    pub standard: LaneTargets,
    pub bulk: LaneTargets,
    /// Failed attempts before a job is dead-lettered (its failure budget).
    pub max_attempts: u32,
    /// Interrupted attempts (lost worker, drain, full disk) before a job is
    /// dead-lettered: a separate, larger budget, so infrastructure trouble
    /// does not spend the failure budget while a job that kills every worker
    /// it lands on still ends.
    pub max_interruptions: u32,
    /// Frames per chunk (`--chunk-frames`; 0: never split); `None`: two
    /// seconds of each clip's frames.
    pub chunk_frames: Option<u32>,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub lease: Duration,
    pub initial_concurrency: usize,
    pub max_concurrency: usize,
    /// Most jobs of one template, lane and size whose frames share a GPU submission
    /// (1: none). Used only where GPU timestamps time each job's passes.
    pub group_max: usize,
    /// Frames of each attempt in flight (1..=3; 1 where passes are timed on the host).
    pub frames_in_flight: u32,
    /// How long a render group with a finished chunk's frame ring waits for
    /// the job's next chunk (`--spare-ring-linger-ms`).
    pub spare_ring_linger: Duration,
    pub retention: Duration,
    /// Storage is billed per tenant and period of this length (it divides a
    /// day): one ledger event per tenant each period.
    pub storage_period: Duration,
    /// Requests per second a tenant may make (burst of twice that).
    pub rate_limit_per_s: u32,
    pub max_body_bytes: usize,
    /// Lowest PSNR (dB) a clip's sampled frame may have after encoding.
    pub psnr_floor_db: f64,
    /// How often the ledger's total price is read for its metric: a sum over
    /// one index entry per job, so not every second.
    pub ledger_metrics_every: Duration,
}

impl ServeConfig {
    pub fn new(data: PathBuf, listen: SocketAddr, metrics_listen: SocketAddr) -> Self {
        Self {
            db: StoreUrl::in_data_dir(&data),
            pipeline_cache: data.join("pipeline-cache").join(hostname()),
            worker_id: hostname(),
            data,
            listen,
            metrics_listen,
            conn_limits: ConnLimits::default(),
            admin_key: std::env::var("TESSERA_ADMIN_KEY").ok().filter(|k| !k.is_empty()),
            urgent: LaneTargets { wait_slo: Duration::from_secs(10), max_wait: Duration::from_secs(60) },
            standard: LaneTargets { wait_slo: Duration::from_secs(120), max_wait: Duration::from_secs(900) },
            bulk: LaneTargets { wait_slo: Duration::from_secs(1800), max_wait: Duration::from_secs(3600) },
            max_attempts: 6,
            max_interruptions: 24,
            chunk_frames: None,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            lease: Duration::from_secs(15),
            initial_concurrency: 16,
            max_concurrency: 32,
            group_max: 8,
            frames_in_flight: crate::render::ring::DEFAULT_FRAMES_IN_FLIGHT,
            spare_ring_linger: Duration::from_secs(2),
            retention: Duration::from_secs(30 * 86_400),
            storage_period: Duration::from_secs(3600),
            rate_limit_per_s: 50,
            max_body_bytes: 64 * 1024,
            psnr_floor_db: 25.0,
            ledger_metrics_every: Duration::from_secs(30),
        }
    }

    /// Frames per chunk of a clip at `fps`.
    pub fn chunk_frames_at(&self, fps: u32) -> u32 {
        self.chunk_frames.unwrap_or(DEFAULT_CHUNK_SECONDS * fps)
    }

    pub fn lane(&self, lane: Lane) -> LaneTargets {
        match lane {
            Lane::Urgent => self.urgent,
            Lane::Standard => self.standard,
            Lane::Bulk => self.bulk,
        }
    }
}

/// This machine's host name (the pod name on Kubernetes).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)))
        .unwrap_or_else(|| "localhost".into())
}
