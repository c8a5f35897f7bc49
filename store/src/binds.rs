//! Binding domain values to statements, once for every sqlx backend. Each
//! backend's SQL lists the columns in the order these functions bind them.

use sqlx::query::Query;
use sqlx::{Database, Encode, Type};
use tessera_metering::event::month_of;
use tessera_metering::UsageEvent;

use crate::score::{self, ScoreInputs};
use crate::transition::{ChunkUpdate, JobUpdate};
use crate::types::{Lease, NewJob};

type Q<'q, DB> = Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// Columns of [`event`], in order.
pub(crate) const EVENT_INSERT_COLUMNS: &str = "id, tenant_id, tier, job_id, attempt, kind, pass, seq, frames, quantity,
    fps, resolution, variant, amount_micros, timing, outcome, occurred_at_ms, month";

/// The ledger month of a row being inserted, as SQL over its `kind`, `job_id`
/// and `month` (the month it occurred in): a job's billable output counts in
/// the month its reservation was made, the month whose cap admitted it, even
/// when it settles after midnight on the 1st; every other row counts in the
/// month it occurred. So a job admitted at 23:59:59 on the 30th of November
/// and delivered on the 1st of December is reserved against, and billed in,
/// November: no month pays for a job another month's cap admitted.
pub(crate) fn billing_month_sql(kind: &str, job_id: &str, month: &str) -> String {
    format!(
        "CASE WHEN {kind} = 'output' THEN COALESCE((SELECT r.month FROM reservations r WHERE r.job_id = {job_id}), {month}) ELSE {month} END"
    )
}

/// Binds the 18 columns of [`EVENT_INSERT_COLUMNS`].
pub(crate) fn event<'q, DB>(q: Q<'q, DB>, e: &UsageEvent) -> Q<'q, DB>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
{
    q.bind(e.id.clone())
        .bind(e.tenant_id.clone())
        .bind(e.tier.clone())
        .bind(e.job_id.clone())
        .bind(i64::from(e.attempt))
        .bind(e.kind.as_str().to_string())
        .bind(e.pass.map(|p| p.as_str().to_string()))
        .bind(i64::try_from(e.seq).unwrap_or(i64::MAX))
        .bind(i64::from(e.frames))
        .bind(e.quantity)
        .bind(e.fps.map(i64::from))
        .bind(e.resolution.clone())
        .bind(e.variant.clone())
        .bind(e.amount_micros)
        .bind(e.timing.map(|t| t.as_str().to_string()))
        .bind(e.outcome.map(|o| o.as_str().to_string()))
        .bind(e.occurred_at_ms)
        .bind(month_of(e.occurred_at_ms))
}

/// Binds a lease to the `$1`..`$4` of a fenced statement (`chunks::FENCED`):
/// job, chunk, attempt number, lease owner.
pub(crate) fn lease<'q, DB>(q: Q<'q, DB>, lease: &Lease) -> Q<'q, DB>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
{
    q.bind(lease.job.as_str().to_string())
        .bind(i64::from(lease.chunk))
        .bind(i64::from(lease.attempt))
        .bind(lease.owner.as_str().to_string())
}

/// Columns of [`new_job`], in order; state is `queued`.
pub(crate) const JOB_INSERT_COLUMNS: &str = "id, tenant_id, idempotency_key, body_hash, spec_json, template, lane,
    lane_rank, max_failures, max_interruptions, frames_total, fps, price_micros, quote_json, rank_base_ms, rank_ms,
    deadline_ms, created_at_ms, not_before_ms, state";

/// Binds the 19 values of [`JOB_INSERT_COLUMNS`] before `state`.
pub(crate) fn new_job<'q, DB>(q: Q<'q, DB>, j: &NewJob, tier_weight_ms: i64, now_ms: i64) -> Q<'q, DB>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
{
    let inputs = ScoreInputs { created_at_ms: now_ms, tier_weight_ms, est_cost_ms: j.est_cost_ms };
    let base = inputs.rank_base_ms();
    q.bind(j.id.as_str().to_string())
        .bind(j.tenant_id.as_str().to_string())
        .bind(j.idempotency_key.clone())
        .bind(j.body_hash.clone())
        .bind(j.spec_json.clone())
        .bind(j.template.clone())
        .bind(j.lane.as_str().to_string())
        .bind(j.lane.rank())
        .bind(i64::from(j.max_failures))
        .bind(i64::from(j.max_interruptions))
        .bind(i64::from(j.frames_total))
        .bind(i64::from(j.fps))
        .bind(j.price_micros)
        .bind(j.quote.as_ref().and_then(|q| serde_json::to_string(q).ok()))
        .bind(base)
        .bind(score::rank_ms(base, 0))
        .bind(score::deadline_ms(now_ms, j.max_wait_ms))
        .bind(now_ms)
        .bind(now_ms)
}

/// Columns [`update`] sets, in order (`lease_owner` and `lease_until_ms` are
/// cleared by the statement itself).
pub(crate) const UPDATE_COLUMNS: [&str; 12] = [
    "state",
    "failures",
    "interruptions",
    "not_before_ms",
    "rank_ms",
    "errors_json",
    "finished_at_ms",
    "frames_done",
    "output_path",
    "output_bytes",
    "output_sha256",
    "metadata_path",
];

/// Binds the 12 values of [`UPDATE_COLUMNS`].
pub(crate) fn update<'q, DB>(q: Q<'q, DB>, u: &JobUpdate) -> Q<'q, DB>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
{
    let out = u.output.as_ref();
    q.bind(u.state.as_str().to_string())
        .bind(i64::from(u.failures))
        .bind(i64::from(u.interruptions))
        .bind(u.not_before_ms)
        .bind(u.rank_ms)
        .bind(serde_json::to_string(&u.errors).unwrap_or_else(|_| "[]".into()))
        .bind(u.finished_at_ms)
        .bind(i64::from(u.frames_done))
        .bind(out.map(|o| o.path.clone()))
        .bind(out.map(|o| o.bytes))
        .bind(out.map(|o| o.sha256.clone()))
        .bind(out.map(|o| o.metadata_path.clone()))
}

/// Binds `$5`..`$12` of [`crate::chunks::UPDATE_CHUNK`] after its fence.
pub(crate) fn chunk_update<'q, DB>(q: Q<'q, DB>, c: &ChunkUpdate) -> Q<'q, DB>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
{
    let seg = c.segment.as_ref();
    q.bind(c.state.as_str().to_string())
        .bind(i64::from(c.interruptions))
        .bind(i64::from(c.frames_done))
        .bind(c.not_before_ms)
        .bind(c.rank_ms)
        .bind(seg.map(|s| s.path.clone()))
        .bind(seg.map(|s| s.bytes))
        .bind(seg.map(|s| s.sha256.clone()))
}

/// `col1 = <p>1, col2 = <p>2, ...` for an UPDATE, numbering placeholders from `first`.
pub(crate) fn assignments(placeholder: &str, first: usize) -> String {
    UPDATE_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = {placeholder}{}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `<p>first, <p>first+1, ...`: `n` numbered placeholders.
pub(crate) fn placeholders(placeholder: &str, first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("{placeholder}{i}")).collect::<Vec<_>>().join(", ")
}
