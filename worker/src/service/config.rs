//! Service configuration: addresses, lanes, retries, concurrency, retention.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Targets of one lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneTargets {
    /// Queue wait beyond which a job counts as an SLA breach.
    pub wait_slo: Duration,
    /// Queue wait beyond which a job goes ahead of every lane (aging).
    pub max_wait: Duration,
}

/// Everything `tessera serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// `TESSERA_ADMIN_KEY`: creates tenants. Without it, tenant creation is disabled.
    pub admin_key: Option<String>,
    pub urgent: LaneTargets,
    pub standard: LaneTargets,
    pub bulk: LaneTargets,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub lease: Duration,
    pub initial_concurrency: usize,
    pub max_concurrency: usize,
    /// Most jobs of one template and lane whose frames share a GPU submission
    /// (1: none). Used only where GPU timestamps time each job's passes.
    pub group_max: usize,
    pub retention: Duration,
    /// Requests per second a tenant may make (burst of twice that).
    pub rate_limit_per_s: u32,
    pub max_body_bytes: usize,
    /// Lowest PSNR (dB) a clip's sampled frame may have after encoding.
    pub psnr_floor_db: f64,
}

impl ServeConfig {
    pub fn new(data: PathBuf, listen: SocketAddr, metrics_listen: SocketAddr) -> Self {
        Self {
            data,
            listen,
            metrics_listen,
            admin_key: std::env::var("TESSERA_ADMIN_KEY").ok().filter(|k| !k.is_empty()),
            urgent: LaneTargets { wait_slo: Duration::from_secs(10), max_wait: Duration::from_secs(60) },
            standard: LaneTargets { wait_slo: Duration::from_secs(120), max_wait: Duration::from_secs(900) },
            bulk: LaneTargets { wait_slo: Duration::from_secs(1800), max_wait: Duration::from_secs(3600) },
            max_attempts: 6,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            lease: Duration::from_secs(15),
            initial_concurrency: 16,
            max_concurrency: 32,
            group_max: 8,
            retention: Duration::from_secs(30 * 86_400),
            rate_limit_per_s: 50,
            max_body_bytes: 64 * 1024,
            psnr_floor_db: 25.0,
        }
    }

    pub fn lane(&self, lane: &str) -> LaneTargets {
        match lane {
            "urgent" => self.urgent,
            "bulk" => self.bulk,
            _ => self.standard,
        }
    }
}

/// Rank of a lane in the queue: urgent first.
pub fn lane_rank(lane: &str) -> i64 {
    match lane {
        "urgent" => 0,
        "standard" => 1,
        _ => 2,
    }
}

/// Score bonus of a tier (seconds of queue age it is worth).
pub fn tier_bonus(tier: &str) -> f64 {
    match tier {
        "enterprise" => 30.0,
        "mid" => 10.0,
        _ => 0.0,
    }
}
