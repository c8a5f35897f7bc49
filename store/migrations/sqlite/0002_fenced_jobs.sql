-- Fenced job state machine, interruption budget, stored score, worker registry,
-- windowed GPU events. The score's formula lives in store/src/score.rs; the
-- backfill below computes it once for rows written by the single-node releases.

ALTER TABLE jobs RENAME COLUMN max_attempts TO max_failures;
ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN max_interruptions INTEGER NOT NULL DEFAULT 24;
ALTER TABLE jobs ADD COLUMN rank_base_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN rank_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN deadline_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN fps INTEGER NOT NULL DEFAULT 24;
ALTER TABLE jobs ADD COLUMN worker TEXT;
-- The single-node release wrote one error per failed attempt and counted a
-- killed worker's attempt ("worker lost ...") as one: those are interruptions.
UPDATE jobs SET
    failures = (SELECT COUNT(*) FROM json_each(errors_json) WHERE value NOT LIKE '%worker lost%'),
    interruptions = (SELECT COUNT(*) FROM json_each(errors_json) WHERE value LIKE '%worker lost%'),
    rank_base_ms = created_at_ms - CAST(tier_bonus * 1000 AS INTEGER) + est_cost_ms,
    deadline_ms = created_at_ms + max_wait_ms,
    fps = COALESCE(json_extract(spec_json, '$.fps'), 24),
    worker = lease_owner;
UPDATE jobs SET rank_ms = rank_base_ms + failures * 5000;
-- A cancel that met a failing attempt left its job queued with the request set,
-- never claimed again and holding its reservation: it is cancelled.
UPDATE jobs SET state = 'cancelled', finished_at_ms = COALESCE(finished_at_ms, not_before_ms)
    WHERE state = 'queued' AND cancel_requested <> 0;
-- Reservations of jobs that ended stop counting against the caps.
UPDATE reservations SET released = 1
    WHERE released = 0 AND job_id IN (SELECT id FROM jobs WHERE state IN ('succeeded', 'dead', 'cancelled'));
ALTER TABLE jobs DROP COLUMN tier_bonus;
ALTER TABLE jobs DROP COLUMN est_cost_ms;
ALTER TABLE jobs DROP COLUMN max_wait_ms;
DROP INDEX IF EXISTS jobs_queue;
DROP INDEX IF EXISTS jobs_tenant;
CREATE INDEX jobs_claim ON jobs (lane_rank, rank_ms, id) WHERE state = 'queued';
CREATE INDEX jobs_aged ON jobs (deadline_ms, id) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until_ms) WHERE state = 'running';
CREATE INDEX jobs_retained ON jobs (finished_at_ms) WHERE output_path IS NOT NULL;
CREATE INDEX jobs_tenant ON jobs (tenant_id, created_at_ms, id);

CREATE UNIQUE INDEX tenants_by_key ON tenants (api_key_hash);

DROP TRIGGER usage_no_update;
ALTER TABLE usage_events ADD COLUMN frames INTEGER NOT NULL DEFAULT 0;
UPDATE usage_events SET frames = 1 WHERE kind = 'gpu';
CREATE TRIGGER usage_no_update BEFORE UPDATE ON usage_events
    BEGIN SELECT RAISE(ABORT, 'usage_events is append-only'); END;
CREATE INDEX usage_by_tenant_month ON usage_events (tenant_id, month, kind);
-- An event's attempt outcome: one index entry per attempt, not per event.
CREATE INDEX usage_attempt_ends ON usage_events (job_id, attempt) WHERE kind = 'attempt_end';

CREATE INDEX reservations_open ON reservations (tenant_id, month) WHERE released = 0;

CREATE TABLE workers (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, api_addr TEXT NOT NULL, adapter TEXT NOT NULL,
    version TEXT NOT NULL, started_at_ms INTEGER NOT NULL, last_heartbeat_ms INTEGER NOT NULL,
    jobs_in_flight INTEGER NOT NULL DEFAULT 0, stopped_at_ms INTEGER);

-- Periodic work one worker does for the fleet (storage metering, retention).
CREATE TABLE leaders (task TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms INTEGER NOT NULL);
