//! The store's domain types: typed ids, job states, leases, jobs, tenants,
//! workers, and the filters of queries. No backend type appears here.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tessera_metering::event::output_seconds;
use tessera_metering::{Lane, Pass};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// Wraps an id read from a trusted place (the store, a lease).
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// A fresh random id.
            pub fn random() -> Self {
                Self(format!("{}{:016x}", $prefix, random_u64()))
            }

            /// Parses an id from outside (a URL): the prefix and 16 hex digits.
            pub fn parse(s: &str) -> Option<Self> {
                let hex = s.strip_prefix($prefix)?;
                (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Self(s.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A job: `j_` and 16 hex digits.
    JobId,
    "j_"
);
id_type!(
    /// A tenant: `t_` and 16 hex digits.
    TenantId,
    "t_"
);
id_type!(
    /// One run of a `tessera serve` process (a new id at every start): `w_` and
    /// 16 hex digits. Leases are held by a worker id, so a restarted process
    /// never mistakes its predecessor's leases for its own.
    WorkerId,
    "w_"
);

/// 64 random bits from the OS.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // No OS randomness: time and a counter still make ids unique per process.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return tessera_metering::event::fnv1a(format!("{:?}|{n}", std::time::SystemTime::now()).as_bytes());
    }
    u64::from_le_bytes(b)
}

/// Where a job is in its life.
///
/// `queued` → `running` (claimed under a lease) → `succeeded`, or back to
/// `queued` (a failed attempt with backoff, or an interrupted one), or `dead`
/// (failure or interruption budget spent, or an error retrying cannot fix), or
/// `cancelled`. A queued job can be cancelled at once; a running one is flagged
/// and its attempt stops at its next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Dead, JobState::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// No transition leaves a final state.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job state `{s}` (queued, running, succeeded, dead, cancelled)"))
    }
}

/// The right to run one attempt of a job: every transition of the attempt is
/// guarded by all three fields, so a worker whose lease was taken over (its
/// attempt requeued and claimed again) can change nothing of the new attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    pub job: JobId,
    /// The chunk of the job the attempt renders (or joins).
    pub chunk: u32,
    /// The attempt's number, counted over the whole job (every chunk's claims),
    /// so `(job, attempt)` names one attempt and its ledger ids never collide.
    pub attempt: u32,
    pub owner: WorkerId,
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} chunk {} attempt {} held by {}", self.job, self.chunk, self.attempt, self.owner)
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub tier: String,
}

/// A finished clip in the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedOutput {
    pub path: String,
    pub bytes: i64,
    pub sha256: String,
    pub metadata_path: String,
}

/// A job as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub idempotency_key: Option<String>,
    pub body_hash: String,
    pub spec_json: String,
    pub template: String,
    pub lane: Lane,
    pub state: JobState,
    /// Attempts started (claims).
    pub attempts: u32,
    /// Attempts that failed (the job's fault, or an unknown cause).
    pub failures: u32,
    /// Attempts lost to a vanished or paused worker, a drain or a full disk.
    pub interruptions: u32,
    pub max_failures: u32,
    pub max_interruptions: u32,
    pub frames_total: u32,
    pub frames_done: u32,
    pub fps: u32,
    pub price_micros: i64,
    /// The quote the job was admitted with, which it is billed (none for jobs
    /// admitted before quotes were stored: those are billed `price_micros`).
    pub quote: Option<tessera_metering::AdmittedQuote>,
    pub created_at_ms: i64,
    pub not_before_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub cancel_requested: bool,
    pub errors: Vec<String>,
    /// The worker that last claimed one of its chunks (each chunk holds its
    /// own lease: [`Chunk::lease`]).
    pub worker: Option<WorkerId>,
    pub output: Option<ArchivedOutput>,
}

/// A job to admit and enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub idempotency_key: Option<String>,
    pub body_hash: String,
    pub spec_json: String,
    pub template: String,
    pub lane: Lane,
    pub frames_total: u32,
    pub fps: u32,
    pub price_micros: i64,
    /// The quote as admitted: stored with the job, billed whatever book a later worker has.
    pub quote: Option<tessera_metering::AdmittedQuote>,
    /// Expected cost in milliseconds of queue age (bigger jobs wait a little longer).
    pub est_cost_ms: i64,
    /// Past this wait the job goes ahead of every lane (aging).
    pub max_wait_ms: i64,
    pub max_failures: u32,
    pub max_interruptions: u32,
    /// Frames per chunk (0: the whole clip is one chunk).
    pub chunk_frames: u32,
}

/// A claimed chunk of a job and the lease its attempt runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub job: Job,
    pub chunk: Chunk,
    pub lease: Lease,
}

/// What a chunk does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChunkKind {
    /// The clip in one piece: renders and archives the final clip itself.
    Whole,
    /// A range of frames rendered into a segment, joined later.
    Range,
    /// Joins the segments into the final clip once every range is done (or
    /// settles a cancelled job for the frames its ranges delivered).
    Join,
}

/// Where a chunk is.
///
/// `blocked` (a join waiting for its ranges) → `queued` → `running` →
/// `done`, or back to `queued` (retry), or `cancelled` / `dead` with its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChunkState {
    Blocked,
    Queued,
    Running,
    Done,
    Cancelled,
    Dead,
}

macro_rules! str_enum {
    ($t:ident { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $($t::$v => $s),* }
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($t::$v),)*
                    other => Err(format!("unknown {} `{other}`", stringify!($t))),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(ChunkKind { Whole => "whole", Range => "range", Join => "join" });
str_enum!(ChunkState {
    Blocked => "blocked", Queued => "queued", Running => "running", Done => "done",
    Cancelled => "cancelled", Dead => "dead",
});

/// A finished range's frames in the shared data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub path: String,
    pub bytes: i64,
    pub sha256: String,
    pub frames: u32,
}

/// One chunk of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chunk {
    pub job: JobId,
    pub index: u32,
    pub kind: ChunkKind,
    pub first_frame: u32,
    /// Frames it renders (0 for a join).
    pub frames: u32,
    pub state: ChunkState,
    /// The job-wide number of its current (or last) attempt.
    pub attempt: u32,
    /// Its attempts (claims).
    pub attempts: u32,
    pub interruptions: u32,
    pub frames_done: u32,
    /// The worker holding it, or the last one that held it.
    pub worker: Option<WorkerId>,
    pub lease_until_ms: Option<i64>,
    pub segment: Option<Segment>,
}

impl Chunk {
    /// The chunk its attempts' usage event ids name (`JOB/cN/ATTEMPT/...`):
    /// none for a clip in one piece, whose ids stay `JOB/ATTEMPT/...`.
    pub fn event_index(&self) -> Option<u32> {
        (self.kind != ChunkKind::Whole).then_some(self.index)
    }

    /// The lease of its running attempt.
    pub fn lease(&self) -> Option<Lease> {
        match (self.state, &self.worker) {
            (ChunkState::Running, Some(owner)) => {
                Some(Lease { job: self.job.clone(), chunk: self.index, attempt: self.attempt, owner: owner.clone() })
            }
            _ => None,
        }
    }
}

/// How a clip of `frames_total` frames splits into chunks of `chunk_frames`:
/// (kind, first frame, frames). One `whole` chunk when it fits in one (or
/// `chunk_frames` is 0); else consecutive ranges and a join after them.
pub fn chunk_plan(frames_total: u32, chunk_frames: u32) -> Vec<(ChunkKind, u32, u32)> {
    if chunk_frames == 0 || frames_total <= chunk_frames {
        return vec![(ChunkKind::Whole, 0, frames_total)];
    }
    let mut plan: Vec<_> = (0..frames_total)
        .step_by(chunk_frames as usize)
        .map(|first| (ChunkKind::Range, first, chunk_frames.min(frames_total - first)))
        .collect();
    plan.push((ChunkKind::Join, frames_total, 0));
    plan
}

/// A job listing's filters; the cursor is the last job of the previous page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub lane: Option<Lane>,
    /// List jobs created before this (created_at_ms, id).
    pub before: Option<(i64, JobId)>,
    pub limit: u32,
}

/// Which usage events a query covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Tenant name or id.
    pub tenant: Option<String>,
}

/// A tenant's usage, summed by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// GPU nanoseconds per pass, over every attempt (operator cost).
    pub gpu_ns: BTreeMap<Pass, i64>,
    /// Billed output per frame rate: (frames, micro-units charged).
    pub output: BTreeMap<u32, (i64, i64)>,
    pub egress_bytes: i64,
    pub storage_byte_seconds: i64,
}

impl UsageTotals {
    /// Seconds of billed output, exact.
    pub fn output_seconds(&self) -> Decimal {
        self.output.iter().map(|(fps, (frames, _))| output_seconds(*frames, *fps)).sum()
    }

    /// Money charged for output, in micro-units.
    pub fn charged_micros(&self) -> i64 {
        self.output.values().map(|(_, micros)| micros).sum()
    }
}

/// Queue depth and oldest queued job of a lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneDepth {
    pub queued: i64,
    pub oldest_created_ms: Option<i64>,
}

/// What a `tessera serve` process says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub host: String,
    pub api_addr: String,
    pub adapter: String,
    pub version: String,
}

/// A registered worker and its last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    #[serde(flatten)]
    pub info: WorkerInfo,
    pub started_at_ms: i64,
    pub last_heartbeat_ms: i64,
    pub jobs_in_flight: u32,
    /// Set when it stopped cleanly (drained).
    pub stopped_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_their_own_shape() {
        let j = JobId::random();
        assert_eq!(JobId::parse(j.as_str()), Some(j.clone()));
        assert!(j.as_str().starts_with("j_") && j.as_str().len() == 18);
        assert_eq!(JobId::parse("t_0123456789abcdef"), None);
        assert_eq!(JobId::parse("j_0123456789abcdeg"), None);
        assert_eq!(JobId::parse("j_../../etc/passwd"), None);
        assert_ne!(WorkerId::random(), WorkerId::random());
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
        }
        assert_eq!("blocked".parse::<ChunkState>(), Ok(ChunkState::Blocked));
        assert_eq!("join".parse::<ChunkKind>(), Ok(ChunkKind::Join));
    }

    #[test]
    fn clips_split_into_consecutive_ranges_and_a_join() {
        assert_eq!(chunk_plan(48, 0), vec![(ChunkKind::Whole, 0, 48)]);
        assert_eq!(chunk_plan(48, 48), vec![(ChunkKind::Whole, 0, 48)]);
        let plan = chunk_plan(50, 24);
        assert_eq!(
            plan,
            vec![
                (ChunkKind::Range, 0, 24),
                (ChunkKind::Range, 24, 24),
                (ChunkKind::Range, 48, 2),
                (ChunkKind::Join, 50, 0)
            ]
        );
        let covered: u32 = plan.iter().map(|c| c.2).sum();
        assert_eq!(covered, 50);
    }
}
