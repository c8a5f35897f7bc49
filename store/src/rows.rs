//! Decoding rows into domain types, once for every sqlx backend.

use std::str::FromStr;

use sqlx::{ColumnIndex, Decode, Row, Type};
use tessera_metering::event::output_seconds;
use tessera_metering::price::from_micros;
use tessera_metering::tiers::MonthUsage;
use tessera_metering::{EventKind, Lane, Outcome, Pass, TimingSource, UsageEvent};

use crate::backend::{Retained, StoredSegment};
use crate::error::StoreError;
use crate::transition::ChunkCurrent;
use crate::transition::Current;
use crate::types::{
    ArchivedOutput, Chunk, ChunkKind, ChunkState, Job, JobId, JobState, LaneDepth, Lease, Segment, Tenant, TenantId,
    UsageTotals, Worker, WorkerId, WorkerInfo,
};

type Result<T> = std::result::Result<T, StoreError>;

/// The columns of a job read `FROM jobs`, in the order [`job`] reads them. An
/// unfinished job's progress is its chunks' sum, read live (heartbeats write
/// only their chunk's row, never the job's, so they never wait on its lock).
pub(crate) const JOB_COLUMNS: &str = "id, tenant_id, idempotency_key, body_hash, spec_json, template, lane, state,
    attempts, failures, interruptions, max_failures, max_interruptions, frames_total,
    CASE WHEN state IN ('queued', 'running') THEN (SELECT CAST(COALESCE(SUM(c.frames_done), 0) AS BIGINT)
        FROM chunks c WHERE c.job_id = jobs.id AND c.kind <> 'join') ELSE frames_done END AS frames_done,
    fps, price_micros, quote_json,
    created_at_ms, not_before_ms, started_at_ms, finished_at_ms, cancel_requested, errors_json,
    worker, output_path, output_bytes, output_sha256, metadata_path";

/// [`JOB_COLUMNS`] for a `RETURNING` clause (a new job: no progress yet).
pub(crate) const JOB_RETURNING: &str = "id, tenant_id, idempotency_key, body_hash, spec_json, template, lane, state,
    attempts, failures, interruptions, max_failures, max_interruptions, frames_total, frames_done, fps, price_micros,
    quote_json, created_at_ms, not_before_ms, started_at_ms, finished_at_ms, cancel_requested, errors_json,
    worker, output_path, output_bytes, output_sha256, metadata_path";

/// The columns of a chunk, in the order [`chunk`] reads them.
pub(crate) const CHUNK_COLUMNS: &str = "job_id, idx, kind, first_frame, frames, state, attempt, attempts,
    interruptions, frames_done, worker, lease_owner, lease_until_ms, segment_path, segment_bytes, segment_sha256";

/// What the transition rules read from a locked row.
pub(crate) const CURRENT_COLUMNS: &str = "attempts, failures, interruptions, max_failures, max_interruptions,
    cancel_requested, rank_base_ms, rank_ms, frames_total, frames_done, errors_json";

/// The columns of a usage event of `usage_events u`, as [`event`] reads them, the outcome of a GPU event taken from
/// its attempt's end (`usage_events e`) when the event itself has none.
pub(crate) const EVENT_COLUMNS_WITH_OUTCOME: &str = "u.id AS id, u.tenant_id AS tenant_id, u.tier AS tier,
    u.job_id AS job_id, u.attempt AS attempt, u.kind AS kind, u.pass AS pass, u.seq AS seq, u.frames AS frames,
    u.quantity AS quantity, u.fps AS fps, u.resolution AS resolution, u.variant AS variant,
    u.amount_micros AS amount_micros, u.timing AS timing, COALESCE(u.outcome, e.outcome) AS outcome,
    u.occurred_at_ms AS occurred_at_ms";

/// Typed column access for any sqlx row whose backend stores these types.
pub(crate) trait Columns {
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn flag(&self, col: &str) -> Result<bool>;
}

impl<R> Columns for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, col: &str) -> Result<i64> {
        self.try_get(col).map_err(|e| StoreError::corrupt("row", format!("{col}: {e}")))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        self.try_get(col).map_err(|e| StoreError::corrupt("row", format!("{col}: {e}")))
    }
    fn text(&self, col: &str) -> Result<String> {
        self.try_get(col).map_err(|e| StoreError::corrupt("row", format!("{col}: {e}")))
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.try_get(col).map_err(|e| StoreError::corrupt("row", format!("{col}: {e}")))
    }
    fn flag(&self, col: &str) -> Result<bool> {
        self.try_get(col).map_err(|e| StoreError::corrupt("row", format!("{col}: {e}")))
    }
}

fn count(r: &impl Columns, col: &str) -> Result<u32> {
    u32::try_from(r.int(col)?).map_err(|_| StoreError::corrupt("row", format!("{col} out of range")))
}

fn parsed<T: FromStr<Err = String>>(what: &'static str, s: &str) -> Result<T> {
    s.parse().map_err(|e: String| StoreError::corrupt(what, e))
}

fn errors(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(|e| StoreError::corrupt("errors_json", e))
}

/// The `state` column.
pub(crate) fn state(r: &impl Columns) -> Result<JobState> {
    parsed("job state", &r.text("state")?)
}

pub(crate) fn job(r: &impl Columns) -> Result<Job> {
    let state = state(r)?;
    let id = JobId::new(r.text("id")?);
    let attempts = count(r, "attempts")?;
    let output = match (r.opt_text("output_path")?, r.opt_text("output_sha256")?) {
        (Some(path), Some(sha256)) => Some(ArchivedOutput {
            path,
            bytes: r.opt_int("output_bytes")?.unwrap_or(0),
            sha256,
            metadata_path: r.opt_text("metadata_path")?.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(Job {
        tenant_id: TenantId::new(r.text("tenant_id")?),
        idempotency_key: r.opt_text("idempotency_key")?,
        body_hash: r.text("body_hash")?,
        spec_json: r.text("spec_json")?,
        template: r.text("template")?,
        lane: parsed::<Lane>("lane", &r.text("lane")?)?,
        state,
        attempts,
        failures: count(r, "failures")?,
        interruptions: count(r, "interruptions")?,
        max_failures: count(r, "max_failures")?,
        max_interruptions: count(r, "max_interruptions")?,
        frames_total: count(r, "frames_total")?,
        frames_done: count(r, "frames_done")?,
        fps: count(r, "fps")?,
        price_micros: r.int("price_micros")?,
        quote: match r.opt_text("quote_json")? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| StoreError::corrupt("quote_json", json))?),
            None => None,
        },
        created_at_ms: r.int("created_at_ms")?,
        not_before_ms: r.int("not_before_ms")?,
        started_at_ms: r.opt_int("started_at_ms")?,
        finished_at_ms: r.opt_int("finished_at_ms")?,
        cancel_requested: r.flag("cancel_requested")?,
        errors: errors(&r.text("errors_json")?)?,
        worker: r.opt_text("worker")?.map(WorkerId::new),
        output,
        id,
    })
}

pub(crate) fn chunk(r: &impl Columns) -> Result<Chunk> {
    let segment = match (r.opt_text("segment_path")?, r.opt_text("segment_sha256")?) {
        (Some(path), Some(sha256)) => Some(Segment {
            path,
            bytes: r.opt_int("segment_bytes")?.unwrap_or(0),
            sha256,
            frames: count(r, "frames_done")?,
        }),
        _ => None,
    };
    Ok(Chunk {
        job: JobId::new(r.text("job_id")?),
        index: count(r, "idx")?,
        kind: parsed::<ChunkKind>("chunk kind", &r.text("kind")?)?,
        first_frame: count(r, "first_frame")?,
        frames: count(r, "frames")?,
        state: parsed::<ChunkState>("chunk state", &r.text("state")?)?,
        attempt: count(r, "attempt")?,
        attempts: count(r, "attempts")?,
        interruptions: count(r, "interruptions")?,
        frames_done: count(r, "frames_done")?,
        worker: r.opt_text("worker")?.map(WorkerId::new),
        lease_until_ms: r.opt_int("lease_until_ms")?,
        segment,
    })
}

/// GPU nanoseconds per (chunk, pass) from rows of (chunk, pass, ns).
pub(crate) fn chunk_gpu<R: Columns>(rows: &[R]) -> Result<std::collections::BTreeMap<(u32, Pass), i64>> {
    rows.iter().map(|r| Ok(((count(r, "chunk")?, pass(&r.text("pass")?)?), r.int("ns")?))).collect()
}

pub(crate) fn stored_segment(r: &impl Columns) -> Result<StoredSegment> {
    Ok(StoredSegment {
        job: JobId::new(r.text("job_id")?),
        chunk: count(r, "idx")?,
        path: r.text("segment_path")?,
        bytes: r.int("bytes")?,
        tenant: TenantId::new(r.text("tenant_id")?),
        tier: r.text("tier")?,
        job_state: state(r)?,
    })
}

/// The lease of a running chunk row.
pub(crate) fn chunk_lease(r: &impl Columns) -> Result<Lease> {
    Ok(Lease {
        job: JobId::new(r.text("job_id")?),
        chunk: count(r, "idx")?,
        attempt: count(r, "attempt")?,
        owner: WorkerId::new(r.text("lease_owner")?),
    })
}

/// The settling chunk (`kind`, `interruptions`) and its siblings (`running`, `open`).
pub(crate) fn chunk_current(r: &impl Columns, siblings: &impl Columns) -> Result<ChunkCurrent> {
    Ok(ChunkCurrent {
        kind: parsed::<ChunkKind>("chunk kind", &r.text("kind")?)?,
        interruptions: count(r, "interruptions")?,
        others_running: count(siblings, "running")?,
        others_open: count(siblings, "open")?,
    })
}

pub(crate) fn current(r: &impl Columns) -> Result<Current> {
    Ok(Current {
        attempts: count(r, "attempts")?,
        failures: count(r, "failures")?,
        interruptions: count(r, "interruptions")?,
        max_failures: count(r, "max_failures")?,
        max_interruptions: count(r, "max_interruptions")?,
        cancel_requested: r.flag("cancel_requested")?,
        rank_base_ms: r.int("rank_base_ms")?,
        rank_ms: r.int("rank_ms")?,
        frames_total: count(r, "frames_total")?,
        frames_done: count(r, "frames_done")?,
        errors: errors(&r.text("errors_json")?)?,
    })
}

pub(crate) fn tenant(r: &impl Columns) -> Result<Tenant> {
    Ok(Tenant { id: TenantId::new(r.text("id")?), name: r.text("name")?, tier: r.text("tier")? })
}

pub(crate) fn pass(s: &str) -> Result<Pass> {
    Pass::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| StoreError::corrupt("pass", s))
}

fn timing(s: &str) -> Result<TimingSource> {
    match s {
        "gpu" => Ok(TimingSource::Gpu),
        "host" => Ok(TimingSource::Host),
        other => Err(StoreError::corrupt("timing", other)),
    }
}

/// An event; `outcome` may come from a join with the attempt's end.
pub(crate) fn event(r: &impl Columns) -> Result<UsageEvent> {
    let opt_u32 = |col: &str| -> Result<Option<u32>> { Ok(r.opt_int(col)?.and_then(|v| u32::try_from(v).ok())) };
    Ok(UsageEvent {
        id: r.text("id")?,
        tenant_id: r.text("tenant_id")?,
        tier: r.text("tier")?,
        job_id: r.text("job_id")?,
        attempt: count(r, "attempt")?,
        kind: parsed::<EventKind>("event kind", &r.text("kind")?)?,
        pass: r.opt_text("pass")?.as_deref().map(pass).transpose()?,
        seq: u64::try_from(r.int("seq")?).unwrap_or(0),
        frames: count(r, "frames")?,
        quantity: r.int("quantity")?,
        fps: opt_u32("fps")?,
        resolution: r.opt_text("resolution")?,
        variant: r.opt_text("variant")?,
        amount_micros: r.int("amount_micros")?,
        timing: r.opt_text("timing")?.as_deref().map(timing).transpose()?,
        outcome: r.opt_text("outcome")?.as_deref().map(|s| parsed::<Outcome>("outcome", s)).transpose()?,
        occurred_at_ms: r.int("occurred_at_ms")?,
    })
}

pub(crate) fn worker(r: &impl Columns) -> Result<Worker> {
    Ok(Worker {
        info: WorkerInfo {
            id: WorkerId::new(r.text("id")?),
            host: r.text("host")?,
            api_addr: r.text("api_addr")?,
            adapter: r.text("adapter")?,
            version: r.text("version")?,
        },
        started_at_ms: r.int("started_at_ms")?,
        last_heartbeat_ms: r.int("last_heartbeat_ms")?,
        jobs_in_flight: count(r, "jobs_in_flight")?,
        stopped_at_ms: r.opt_int("stopped_at_ms")?,
    })
}

/// A tenant's month in one statement, so one snapshot: billed outputs and open
/// reservations (neither released nor billed yet). Two statements could each
/// miss a job settling between them, and an admission would then overshoot.
pub(crate) const MONTH_USAGE_SQL: &str = "
    SELECT 'billed' AS what, fps, CAST(SUM(quantity) AS BIGINT) AS frames,
           CAST(SUM(amount_micros) AS BIGINT) AS micros
    FROM usage_events WHERE tenant_id = $1 AND month = $2 AND kind = 'output' GROUP BY fps
    UNION ALL
    SELECT 'reserved' AS what, r.fps AS fps, CAST(SUM(r.frames) AS BIGINT) AS frames,
           CAST(SUM(r.amount_micros) AS BIGINT) AS micros
    FROM reservations r
    WHERE r.tenant_id = $1 AND r.month = $2 AND r.released = 0
      AND NOT EXISTS (SELECT 1 FROM usage_events u WHERE u.id = r.job_id || '/output' AND u.month = r.month)
    GROUP BY r.fps";

/// A month's usage from the rows of [`MONTH_USAGE_SQL`].
pub(crate) fn month_usage<R: Columns>(rows: &[R]) -> Result<MonthUsage> {
    let mut usage = MonthUsage::default();
    for r in rows {
        let fps = r.opt_int("fps")?.and_then(|f| u32::try_from(f).ok()).unwrap_or(1);
        let (seconds, money) = (output_seconds(r.int("frames")?, fps), from_micros(r.int("micros")?));
        if r.text("what")? == "billed" {
            usage.used_seconds += seconds;
            usage.spent += money;
        } else {
            usage.reserved_seconds += seconds;
            usage.reserved_spend += money;
        }
    }
    Ok(usage)
}

/// Queue depth per lane from rows of (lane_rank, queued, oldest).
pub(crate) fn depths<R: Columns>(rows: &[R]) -> Result<Vec<(Lane, LaneDepth)>> {
    rows.iter()
        .map(|r| {
            let rank = r.int("lane_rank")?;
            let lane = Lane::ALL
                .into_iter()
                .find(|l| l.rank() == rank)
                .ok_or_else(|| StoreError::corrupt("lane_rank", rank))?;
            Ok((lane, LaneDepth { queued: r.int("queued")?, oldest_created_ms: r.opt_int("oldest")? }))
        })
        .collect()
}

pub(crate) fn retained(r: &impl Columns) -> Result<Retained> {
    Ok(Retained {
        job: JobId::new(r.text("id")?),
        tenant: TenantId::new(r.text("tenant_id")?),
        tier: r.text("tier")?,
        attempt: count(r, "attempts")?,
        bytes: r.int("bytes")?,
        finished_at_ms: r.int("finished_at_ms")?,
        output_path: r.text("output_path")?,
        metadata_path: r.opt_text("metadata_path")?,
    })
}

/// The statement both backends run for [`usage_totals`] of tenant `$1`, on
/// the snapshot that read `$2`, the first open month: the closed months'
/// rollups and the open months' rows (`usage_by_tenant_month`, on PostgreSQL
/// only the open months' partitions), so its cost follows a month's usage,
/// not the ledger's. A rollup keys no pass as `''` and no fps as 0.
pub(crate) const USAGE_TOTALS_SQL: &str = "SELECT kind, NULLIF(pass, '') AS pass, NULLIF(fps, 0) AS fps,
        CAST(SUM(quantity) AS BIGINT) AS quantity, CAST(SUM(micros) AS BIGINT) AS micros
    FROM (SELECT kind, COALESCE(pass, '') AS pass, COALESCE(fps, 0) AS fps, quantity, amount_micros AS micros
          FROM usage_events
          WHERE tenant_id = $1 AND month >= $2 AND kind <> 'attempt_end'
          UNION ALL
          SELECT kind, pass, fps, quantity, micros FROM usage_rollups WHERE tenant_id = $1) t
    GROUP BY kind, pass, fps";

/// The price charged over the whole ledger, on the snapshot that read `$1`,
/// the first open month: the closed months' rollups and the open months'
/// outputs (`usage_outputs` on PostgreSQL, `usage_outputs_by_month` on SQLite: an index-only scan).
pub(crate) const CHARGED_SQL: &str = "SELECT
        CAST((SELECT COALESCE(SUM(micros), 0) FROM usage_rollups WHERE kind = 'output')
           + (SELECT COALESCE(SUM(amount_micros), 0) FROM usage_events
              WHERE kind = 'output' AND month >= $1) AS BIGINT) AS micros";

/// A tenant's usage from rows of (kind, pass, fps, quantity, micros).
pub(crate) fn usage_totals<R: Columns>(rows: &[R]) -> Result<UsageTotals> {
    let mut t = UsageTotals::default();
    for r in rows {
        let quantity = r.int("quantity")?;
        match parsed::<EventKind>("event kind", &r.text("kind")?)? {
            EventKind::Gpu => {
                if let Some(p) = r.opt_text("pass")? {
                    *t.gpu_ns.entry(pass(&p)?).or_default() += quantity;
                }
            }
            EventKind::Output => {
                let fps = r.opt_int("fps")?.and_then(|f| u32::try_from(f).ok()).unwrap_or(1);
                let e = t.output.entry(fps).or_default();
                e.0 += quantity;
                e.1 += r.int("micros")?;
            }
            EventKind::Egress => t.egress_bytes += quantity,
            EventKind::Storage => t.storage_byte_seconds += quantity,
            EventKind::AttemptEnd => {}
        }
    }
    Ok(t)
}

/// A page of the ledger in `(occurred_at_ms, id)` order, after a key: `$1`
/// from, `$2` to, `$3` and `$4` the last row's time and id (the key), `$5` the
/// page size, and, with `tenant`, `$6` the tenant's id. Each page is an
/// index range scan (`usage_by_time`, or `usage_by_tenant_time` for a
/// tenant), so an export of any size streams at a flat cost per row.
pub(crate) fn events_page_sql(tenant: bool) -> String {
    format!(
        "SELECT {EVENT_COLUMNS_WITH_OUTCOME} FROM usage_events u
         LEFT JOIN usage_events e ON e.kind = 'attempt_end' AND e.job_id = u.job_id AND e.attempt = u.attempt
           AND u.kind = 'gpu'
         WHERE u.occurred_at_ms >= $1 AND u.occurred_at_ms < $2 {}
           AND (u.occurred_at_ms, u.id) > ($3, $4)
         ORDER BY u.occurred_at_ms, u.id LIMIT $5",
        if tenant { "AND u.tenant_id = $6" } else { "" }
    )
}

pub(crate) fn ended_attempt(r: &impl Columns) -> Result<crate::backend::EndedAttempt> {
    let kept = ["output_path", "metadata_path", "segment_path"]
        .into_iter()
        .map(|c| r.opt_text(c))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok(crate::backend::EndedAttempt {
        job: JobId::new(r.text("job_id")?),
        attempt: count(r, "attempt")?,
        ended_at_ms: r.int("ended_at_ms")?,
        kept,
    })
}
