//! `tessera serve`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{load_price_book, runtime, usage, CliError, StoreArgs};
use crate::encode::jpeg::gpu_entropy::Entropy;
use crate::gpu::GpuContext;
use crate::render::ring::{DEFAULT_FRAMES_IN_FLIGHT, MAX_FRAMES_IN_FLIGHT};
use crate::service::server::{ConnLimits, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS};
use crate::service::{self, ServeConfig, Service};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// API address (the image sets 0.0.0.0:8080).
    #[arg(long, env = "TESSERA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where JPEG frames are Huffman-coded: `gpu` reads back only the
    /// compressed scan; `cpu` reads back the coefficients and codes them on
    /// the CPU (the reference; the same bytes).
    #[arg(long, value_enum, env = "TESSERA_ENTROPY", default_value_t = Entropy::Gpu)]
    pub entropy: Entropy,
    /// Prometheus /metrics address (the image sets 0.0.0.0:9090).
    #[arg(long, env = "TESSERA_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    pub metrics_listen: SocketAddr,
    /// Most connections open at once on each listener (API and metrics, each
    /// its own). At the cap, new connections wait in the kernel's listen
    /// backlog until one closes.
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Longest a client may take to send a request's headers (from the
    /// connection's accept, or the end of its previous response),
    /// milliseconds; past it the connection is closed. Idle keep-alive
    /// connections are closed after as long.
    #[arg(long, env = "TESSERA_HEADER_READ_TIMEOUT_MS", default_value_t = DEFAULT_HEADER_READ_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// Jobs in flight to start from (the limit then adapts).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Most jobs in flight the adaptive limit may reach.
    #[arg(long, default_value_t = 32)]
    pub max_concurrency: usize,
    /// Most jobs of one template, lane and size rendered in one GPU submission (1 turns
    /// grouping off). Only where GPU timestamps time each job's passes.
    #[arg(long, default_value_t = 8)]
    pub group_max: usize,
    /// Frames of each job rendered ahead while the host reads back, gates,
    /// writes and meters the last (1–3). Only where GPU timestamps time each
    /// frame's passes; 1 elsewhere.
    #[arg(long, env = "TESSERA_FRAMES_IN_FLIGHT", default_value_t = DEFAULT_FRAMES_IN_FLIGHT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_FRAMES_IN_FLIGHT)))]
    pub frames_in_flight: u32,
    /// How long (ms) a render group that has finished a chunk waits for the
    /// job's next chunk, keeping its frame ring for it (buffers, tiles), before
    /// it ends and frees them.
    #[arg(long, env = "TESSERA_SPARE_RING_LINGER_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub spare_ring_linger_ms: u64,
    /// Failed attempts before a job is dead-lettered (its failure budget).
    #[arg(long, default_value_t = 6)]
    pub max_attempts: u32,
    /// Interrupted attempts (worker lost or drained, disk full, store
    /// unreachable) before a job is dead-lettered; they do not spend the
    /// failure budget.
    #[arg(long, default_value_t = 24)]
    pub max_interruptions: u32,
    /// Frames per chunk: a longer clip is split into chunks of this many
    /// frames that any worker of the fleet renders, then joined (0: never
    /// split). Default: two seconds of the clip's frames.
    #[arg(long, env = "TESSERA_CHUNK_FRAMES")]
    pub chunk_frames: Option<u32>,
    /// First retry delay, milliseconds (doubles per attempt, full jitter).
    #[arg(long, default_value_t = 500)]
    pub backoff_base_ms: u64,
    /// Longest retry delay, milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub backoff_cap_ms: u64,
    /// Longest a bulk job waits before it goes ahead of every lane, seconds.
    #[arg(long, default_value_t = 3600)]
    pub bulk_max_wait_s: u64,
    /// Lease of a running job, seconds (renewed by heartbeat).
    #[arg(long, default_value_t = 15)]
    pub lease_s: u64,
    /// How long archived clips are kept, hours.
    #[arg(long, default_value_t = 720)]
    pub retention_h: u64,
    /// Storage is billed per tenant and period of this many seconds (one
    /// ledger event each); it must divide a day (86400).
    #[arg(long, default_value_t = 3600)]
    pub storage_period_s: u64,
    /// How often the ledger's total price is read for
    /// `tessera_ledger_charges_total` (the drift alert's reference), seconds.
    #[arg(long, default_value_t = 30)]
    pub ledger_metrics_s: u64,
    /// Where this worker keeps its compiled pipelines (default:
    /// DATA/pipeline-cache/HOSTNAME, one per worker on a shared volume).
    #[arg(long, env = "TESSERA_PIPELINE_CACHE")]
    pub pipeline_cache: Option<std::path::PathBuf>,
    /// This worker's id in the registry and on its leases (default: the host
    /// name, which is the pod name on Kubernetes). Stable across restarts, so
    /// a restarted worker is the same worker; two live workers must not share one.
    #[arg(long, env = "TESSERA_WORKER_ID")]
    pub worker_id: Option<String>,
}

pub(super) fn serve(args: ServeArgs) -> Result<(), CliError> {
    let book = load_price_book(args.store.price_book.as_deref())?;
    let entropy = args.entropy;
    let counts = [args.concurrency as u64, u64::from(args.max_attempts), u64::from(args.max_interruptions)];
    if counts.contains(&0) || args.lease_s == 0 || args.group_max == 0 || args.ledger_metrics_s == 0 {
        return Err(usage(anyhow::anyhow!(
            "--concurrency, --max-attempts, --max-interruptions, --lease-s, --group-max and --ledger-metrics-s must be at least 1"
        )));
    }
    let mut config = ServeConfig::new(args.store.data.clone(), args.listen, args.metrics_listen);
    config.db = args.store.url()?;
    config.conn_limits = ConnLimits {
        max_connections: args.max_connections,
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
    };
    if let Some(id) = args.worker_id {
        let ok = (1..=128).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c));
        if !ok {
            return Err(usage(anyhow::anyhow!(
                "--worker-id must be 1 to 128 letters, digits, '-', '.', '_' or ':'; got `{id}`"
            )));
        }
        config.worker_id = id;
    }
    if let Some(dir) = args.pipeline_cache {
        config.pipeline_cache = dir;
    }
    config.max_interruptions = args.max_interruptions;
    config.chunk_frames = args.chunk_frames;
    config.initial_concurrency = args.concurrency;
    config.max_concurrency = args.max_concurrency.max(1);
    config.initial_concurrency = config.initial_concurrency.min(config.max_concurrency);
    config.max_attempts = args.max_attempts;
    config.group_max = args.group_max;
    config.frames_in_flight = args.frames_in_flight;
    config.spare_ring_linger = Duration::from_millis(args.spare_ring_linger_ms);
    config.backoff_base = Duration::from_millis(args.backoff_base_ms);
    config.backoff_cap = Duration::from_millis(args.backoff_cap_ms.max(args.backoff_base_ms));
    config.bulk.max_wait = Duration::from_secs(args.bulk_max_wait_s);
    config.lease = Duration::from_secs(args.lease_s);
    config.ledger_metrics_every = Duration::from_secs(args.ledger_metrics_s);
    config.retention = Duration::from_secs(args.retention_h * 3600);
    if args.storage_period_s == 0 || 86_400 % args.storage_period_s != 0 {
        return Err(usage(anyhow::anyhow!(
            "--storage-period-s must divide a day (86400 s), like 60, 900 or 3600; got {}",
            args.storage_period_s
        )));
    }
    config.storage_period = Duration::from_secs(args.storage_period_s);
    let ctx = Arc::new(GpuContext::open().map_err(runtime)?);
    ctx.set_entropy(entropy);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(runtime)?;
    rt.block_on(async move {
        let svc = Service::new(config, ctx, book).await.map_err(runtime)?;
        service::serve(svc).await.map_err(runtime)
    })
}
