//! The statements of the chunk state machine, written once with numbered
//! placeholders (`$1`, which both drivers read); only the claim has a
//! statement per dialect.
//! Each backend sequences them in one transaction: it locks the job, then the
//! fenced chunk, asks [`crate::transition::settle_chunk`] what both become,
//! and writes that. Lock order (PostgreSQL): whatever waits for a lock takes
//! the job's row first (settlements, reaps, cancels); the claim locks a chunk
//! and then its job without waiting (`SKIP LOCKED`), and a heartbeat locks
//! only its chunk, so no two transactions can wait on each other.

/// A running attempt's guard: job, chunk, attempt number, lease owner, state.
/// Binds `$1` job, `$2` chunk, `$3` attempt, `$4` owner.
macro_rules! fence {
    () => {
        "job_id = $1 AND idx = $2 AND attempt = $3 AND lease_owner = $4 AND state = 'running'"
    };
}

/// The claim's share rule for a candidate chunk `c`: the claiming worker
/// (`$2`) holds fewer running chunks of its job than its share, the job's
/// chunks divided among the `$4` live workers of the fleet, rounded up. A
/// lone worker (`$4` = 1) may take every chunk; in a fleet a clip spreads,
/// and a worker that dies takes only its share of a clip with it.
macro_rules! within_share {
    () => {
        "(SELECT COUNT(*) FROM chunks h WHERE h.job_id = c.job_id AND h.state = 'running' AND h.lease_owner = $2)
          < (SELECT (COUNT(*) + $4 - 1) / $4 FROM chunks r WHERE r.job_id = c.job_id AND r.kind <> 'join')"
    };
}

/// The claim's candidates on SQLite (under its one write lock, no row locks):
/// the first queued chunk of the most overdue aged job, else the first in
/// lane, rank and chunk order, within the worker's share (index-ordered
/// scans). Binds `$1` now, `$2` owner, `$3` lease, `$4` sharers.
pub(crate) const CLAIM_SQLITE: &str = concat!(
    "UPDATE chunks SET state = 'running', attempts = attempts + 1, lease_owner = $2, worker = $2,
        lease_until_ms = $1 + $3
    WHERE rowid = COALESCE(
        (SELECT c.rowid FROM chunks c WHERE c.state = 'queued' AND c.deadline_ms <= $1 AND c.not_before_ms <= $1
            AND ",
    within_share!(),
    "
         ORDER BY c.deadline_ms, c.job_id, c.idx LIMIT 1),
        (SELECT c.rowid FROM chunks c WHERE c.state = 'queued' AND c.not_before_ms <= $1 AND ",
    within_share!(),
    "
         ORDER BY c.lane_rank, c.rank_ms, c.job_id, c.idx LIMIT 1))
    RETURNING job_id, idx"
);

/// The claim on PostgreSQL, one statement: the same order and share as
/// [`CLAIM_SQLITE`], each candidate locked with its job's row (`FOR UPDATE OF
/// c, j SKIP LOCKED`), so a chunk another worker is claiming, or one whose
/// job's row a settlement or a cancel holds, is skipped and the next
/// candidate taken in the same statement: no head-of-line stall.
pub(crate) const CLAIM_POSTGRES: &str = concat!(
    "WITH aged AS (
        SELECT c.job_id, c.idx FROM chunks c JOIN jobs j ON j.id = c.job_id
        WHERE c.state = 'queued' AND c.deadline_ms <= $1 AND c.not_before_ms <= $1 AND ",
    within_share!(),
    "
        ORDER BY c.deadline_ms, c.job_id, c.idx LIMIT 1 FOR UPDATE OF c, j SKIP LOCKED),
     ranked AS (
        SELECT c.job_id, c.idx FROM chunks c JOIN jobs j ON j.id = c.job_id
        WHERE c.state = 'queued' AND c.not_before_ms <= $1 AND NOT EXISTS (SELECT 1 FROM aged) AND ",
    within_share!(),
    "
        ORDER BY c.lane_rank, c.rank_ms, c.job_id, c.idx LIMIT 1 FOR UPDATE OF c, j SKIP LOCKED),
     picked AS (SELECT job_id, idx FROM aged UNION ALL SELECT job_id, idx FROM ranked LIMIT 1)
    UPDATE chunks SET state = 'running', attempts = chunks.attempts + 1, lease_owner = $2, worker = $2,
        lease_until_ms = $1 + $3
    FROM picked WHERE chunks.job_id = picked.job_id AND chunks.idx = picked.idx
    RETURNING chunks.job_id, chunks.idx"
);

/// A new job's chunk, ranked like its job: `$1` job, `$2` index, `$3` kind,
/// `$4` first frame, `$5` frames, `$6` state.
pub(crate) const INSERT_CHUNK: &str = "INSERT INTO chunks (job_id, idx, kind, first_frame, frames, state, lane_rank,
        rank_ms, deadline_ms, not_before_ms)
    SELECT id, $2, $3, $4, $5, $6, lane_rank, rank_ms, deadline_ms, not_before_ms FROM jobs WHERE id = $1";

/// The claimed chunk's job counts the attempt: `$1` job, `$2` worker, `$3` now.
pub(crate) const START_ATTEMPT: &str = "UPDATE jobs SET attempts = attempts + 1, state = 'running', worker = $2,
        started_at_ms = COALESCE(started_at_ms, $3)
    WHERE id = $1 RETURNING attempts";

/// `$1` job, `$2` chunk, `$3` attempt number.
pub(crate) const NUMBER_ATTEMPT: &str = "UPDATE chunks SET attempt = $3 WHERE job_id = $1 AND idx = $2";

/// `$1` job, `$2` attempt, `$3` chunk, `$4` worker, `$5` now.
pub(crate) const RECORD_ATTEMPT: &str =
    "INSERT INTO attempts (job_id, attempt, chunk, worker, started_at_ms) VALUES ($1, $2, $3, $4, $5)";

/// The attempt is over (settled or reaped): `$1` job, `$2` attempt, `$3` now.
pub(crate) const END_ATTEMPT: &str = "UPDATE attempts SET ended_at_ms = $3 WHERE job_id = $1 AND attempt = $2";

/// Attempts that ended in `[$1, $2)`, oldest first, at most `$3`, with what
/// of theirs the store keeps (the job's clip, their chunk's segment): the
/// upkeep removes every other file of theirs.
pub(crate) const ENDED_ATTEMPTS: &str = "SELECT a.job_id AS job_id, a.attempt AS attempt, a.ended_at_ms AS ended_at_ms,
        j.output_path AS output_path, j.metadata_path AS metadata_path, c.segment_path AS segment_path
    FROM attempts a JOIN jobs j ON j.id = a.job_id LEFT JOIN chunks c ON c.job_id = a.job_id AND c.idx = a.chunk
    WHERE a.ended_at_ms IS NOT NULL AND a.ended_at_ms >= $1 AND a.ended_at_ms < $2
    ORDER BY a.ended_at_ms, a.job_id, a.attempt LIMIT $3";

/// Renews a lease with the chunk's progress: fence, `$5` until, `$6` frames.
pub(crate) const HEARTBEAT: &str =
    concat!("UPDATE chunks SET lease_until_ms = $5, frames_done = $6 WHERE ", fence!(), " RETURNING job_id");

/// Whether the attempt still holds its lease, for a fenced ledger append. On
/// PostgreSQL the backend adds `FOR SHARE`: a reap of the chunk (which updates
/// it) then waits for the append to commit and counts its events, or the
/// append waits for the reap and finds the lease gone. Locks only the chunk,
/// like a heartbeat.
pub(crate) const HOLDS_LEASE: &str = concat!("SELECT job_id FROM chunks WHERE ", fence!());

/// Whether a cancel is asked (read without a lock: a heartbeat never waits
/// on its job's row, which settlements hold while they change its chunks).
pub(crate) const CANCEL_ASKED: &str = "SELECT cancel_requested FROM jobs WHERE id = $1";

/// The fenced chunk's row, for a settlement.
pub(crate) const FENCED: &str = concat!("SELECT kind, interruptions FROM chunks WHERE ", fence!());

/// The settling chunk's siblings: `$1` job, `$2` the settling chunk.
pub(crate) const SIBLINGS: &str = "SELECT
        CAST(COALESCE(SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 0) AS BIGINT) AS running,
        CAST(COALESCE(SUM(CASE WHEN kind = 'range' AND state IN ('queued', 'running') THEN 1 ELSE 0 END), 0)
            AS BIGINT) AS open
    FROM chunks WHERE job_id = $1 AND idx <> $2";

/// Writes the settled chunk: fence, then `$5`.. the [`crate::transition::ChunkUpdate`].
pub(crate) const UPDATE_CHUNK: &str = concat!(
    "UPDATE chunks SET state = $5, interruptions = $6, frames_done = $7, not_before_ms = $8, rank_ms = $9,
        segment_path = COALESCE($10, segment_path), segment_bytes = COALESCE($11, segment_bytes),
        segment_sha256 = COALESCE($12, segment_sha256), lease_owner = NULL, lease_until_ms = NULL
    WHERE ",
    fence!()
);

/// The job ended: its unfinished chunks end with it (`$1` job, `$2` state).
/// A running one's worker finds its lease gone at its next heartbeat.
pub(crate) const CLOSE_OTHERS: &str = "UPDATE chunks SET state = $2, lease_owner = NULL, lease_until_ms = NULL
    WHERE job_id = $1 AND state IN ('blocked', 'queued', 'running')";

/// The join may start (`$1` job, `$2` now).
pub(crate) const UNBLOCK_JOIN: &str = "UPDATE chunks SET state = 'queued', not_before_ms = $2
    WHERE job_id = $1 AND kind = 'join' AND state = 'blocked'";

/// A range whose segment is gone renders again (`$1` job, `$2` chunk, `$3` now).
pub(crate) const REDO_RANGE: &str = "UPDATE chunks SET state = 'queued', frames_done = 0, not_before_ms = $3,
        segment_path = NULL, segment_bytes = NULL, segment_sha256 = NULL
    WHERE job_id = $1 AND idx = $2 AND kind = 'range' AND state = 'done'";

/// Frames the job's ranges have done (`$1` job).
pub(crate) const FRAMES_DONE: &str = "SELECT CAST(COALESCE(SUM(frames_done), 0) AS BIGINT) AS frames
    FROM chunks WHERE job_id = $1 AND kind <> 'join'";

/// Cancelling a running job: its queued ranges end at once (`$1` job).
pub(crate) const CANCEL_QUEUED: &str =
    "UPDATE chunks SET state = 'cancelled' WHERE job_id = $1 AND state = 'queued' AND kind <> 'join'";

/// Running and done ranges of a job (`$1` job), for a cancel.
pub(crate) const PROGRESS: &str = "SELECT
        CAST(COALESCE(SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 0) AS BIGINT) AS running,
        CAST(COALESCE(SUM(CASE WHEN kind = 'range' AND (state = 'done' OR frames_done > 0) THEN 1 ELSE 0 END), 0)
            AS BIGINT) AS started
    FROM chunks WHERE job_id = $1";

/// GPU nanoseconds of a job per chunk and pass (`$1` job).
pub(crate) const CHUNK_GPU: &str = "SELECT COALESCE(a.chunk, 0) AS chunk, u.pass AS pass,
        CAST(SUM(u.quantity) AS BIGINT) AS ns
    FROM usage_events u LEFT JOIN attempts a ON a.job_id = u.job_id AND a.attempt = u.attempt
    WHERE u.job_id = $1 AND u.kind = 'gpu' GROUP BY COALESCE(a.chunk, 0), u.pass";

/// Every segment on disk, with its job's tenant and state (storage metering, sweep).
pub(crate) const SEGMENTS: &str = "SELECT c.job_id AS job_id, c.idx AS idx, c.segment_path AS segment_path,
        COALESCE(c.segment_bytes, 0) AS bytes, j.tenant_id AS tenant_id, COALESCE(t.tier, '') AS tier,
        j.state AS state
    FROM chunks c JOIN jobs j ON j.id = c.job_id LEFT JOIN tenants t ON t.id = j.tenant_id
    WHERE c.segment_path IS NOT NULL ORDER BY c.job_id, c.idx";

/// The job's segments are gone from disk (`$1` job).
pub(crate) const FORGET_SEGMENTS: &str = "UPDATE chunks SET segment_path = NULL WHERE job_id = $1";
