-- Chunks: a job's frames split into ranges that any worker claims, leases and
-- retries on its own, and a join that assembles them (store/src/transition.rs
-- decides every transition). Attempt numbers stay job-wide; `attempts` maps
-- each to the chunk it ran, for the GPU time per chunk.

CREATE TABLE chunks (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('whole', 'range', 'join')),
    first_frame INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('blocked', 'queued', 'running', 'done', 'cancelled', 'dead')),
    attempt INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    interruptions INTEGER NOT NULL DEFAULT 0,
    lane_rank INTEGER NOT NULL,
    rank_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    not_before_ms INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until_ms INTEGER,
    worker TEXT,
    frames_done INTEGER NOT NULL DEFAULT 0,
    segment_path TEXT,
    segment_bytes INTEGER,
    segment_sha256 TEXT,
    PRIMARY KEY (job_id, idx));
CREATE INDEX chunks_claim ON chunks (lane_rank, rank_ms, job_id, idx) WHERE state = 'queued';
CREATE INDEX chunks_aged ON chunks (deadline_ms, job_id, idx) WHERE state = 'queued';
CREATE INDEX chunks_leases ON chunks (lease_until_ms) WHERE state = 'running';
CREATE INDEX chunks_segments ON chunks (job_id) WHERE segment_path IS NOT NULL;

CREATE TABLE attempts (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    worker TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt));

-- Every job written before chunks is one whole chunk, in its job's state.
INSERT INTO chunks (job_id, idx, kind, first_frame, frames, state, attempt, attempts, interruptions, lane_rank,
                    rank_ms, deadline_ms, not_before_ms, lease_owner, lease_until_ms, worker, frames_done)
    SELECT id, 0, 'whole', 0, frames_total, CASE state WHEN 'succeeded' THEN 'done' ELSE state END, attempts,
           attempts, interruptions, lane_rank, rank_ms, deadline_ms, not_before_ms, lease_owner, lease_until_ms,
           worker, frames_done
    FROM jobs;
UPDATE jobs SET lease_owner = NULL, lease_until_ms = NULL;
DROP INDEX jobs_claim;
DROP INDEX jobs_aged;
DROP INDEX jobs_leases;
