-- Storage metered by elapsed time: every file the store keeps for a tenant
-- (a job's clip, a chunk's segment) is an object with the time it was stored
-- and the time it was removed. The fleet's upkeep closes storage periods in
-- order from a watermark (`meters`), each into one ledger event per tenant:
-- byte-seconds = Σ bytes × the part of the period each object was stored. A
-- stalled or late tick closes the periods it missed; none is skipped or
-- counted twice, whichever worker leads and however often it restarts.
CREATE TABLE stored_objects (
    path TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('clip', 'segment')),
    chunk BIGINT,
    bytes BIGINT NOT NULL,
    stored_at_ms BIGINT NOT NULL,
    removed_at_ms BIGINT);
CREATE INDEX stored_objects_live ON stored_objects (tenant_id) WHERE removed_at_ms IS NULL;
CREATE INDEX stored_objects_removed ON stored_objects (removed_at_ms) WHERE removed_at_ms IS NOT NULL;
CREATE INDEX stored_objects_job ON stored_objects (job_id) WHERE removed_at_ms IS NULL;

-- Watermarks of periodic meters: `storage` = the end of the last closed period.
CREATE TABLE meters (name TEXT PRIMARY KEY, closed_to_ms BIGINT NOT NULL, period_ms BIGINT NOT NULL);

-- What is stored now, from the time of this upgrade on: clips on record and
-- the segments of chunked jobs.
INSERT INTO stored_objects (path, tenant_id, job_id, kind, chunk, bytes, stored_at_ms)
    SELECT output_path, tenant_id, id, 'clip', NULL, COALESCE(output_bytes, 0), COALESCE(finished_at_ms, 0)
    FROM jobs WHERE output_path IS NOT NULL;
INSERT INTO stored_objects (path, tenant_id, job_id, kind, chunk, bytes, stored_at_ms)
    SELECT c.segment_path, j.tenant_id, c.job_id, 'segment', c.idx, COALESCE(c.segment_bytes, 0), 0
    FROM chunks c JOIN jobs j ON j.id = c.job_id WHERE c.segment_path IS NOT NULL;

-- Queue depths per lane read the queued jobs from an index, not every job ever.
CREATE INDEX jobs_queued ON jobs (lane_rank, created_at_ms) WHERE state = 'queued';
