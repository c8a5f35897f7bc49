-- The schema of the single-node releases, as they created it (IF NOT EXISTS):
-- a data directory written by them is adopted as version 1 and upgraded by
-- the migrations after this one.
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, tier TEXT NOT NULL,
    api_key_hash TEXT, created_at_ms INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS reservations (
    job_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, month TEXT NOT NULL,
    frames INTEGER NOT NULL, fps INTEGER NOT NULL, amount_micros INTEGER NOT NULL,
    released INTEGER NOT NULL DEFAULT 0);

CREATE TABLE IF NOT EXISTS usage_events (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, tier TEXT NOT NULL, job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL, kind TEXT NOT NULL, pass TEXT, seq INTEGER NOT NULL,
    quantity INTEGER NOT NULL, fps INTEGER, resolution TEXT, variant TEXT,
    amount_micros INTEGER NOT NULL DEFAULT 0, timing TEXT, outcome TEXT,
    occurred_at_ms INTEGER NOT NULL, month TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS usage_by_tenant_time ON usage_events (tenant_id, occurred_at_ms);
CREATE INDEX IF NOT EXISTS usage_by_job ON usage_events (job_id, attempt);
CREATE TRIGGER IF NOT EXISTS usage_no_update BEFORE UPDATE ON usage_events
    BEGIN SELECT RAISE(ABORT, 'usage_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS usage_no_delete BEFORE DELETE ON usage_events
    BEGIN SELECT RAISE(ABORT, 'usage_events is append-only'); END;

CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, idempotency_key TEXT, body_hash TEXT NOT NULL,
    spec_json TEXT NOT NULL, template TEXT NOT NULL, lane TEXT NOT NULL, lane_rank INTEGER NOT NULL,
    tier_bonus REAL NOT NULL, est_cost_ms INTEGER NOT NULL, max_wait_ms INTEGER NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    frames_total INTEGER NOT NULL, frames_done INTEGER NOT NULL DEFAULT 0,
    price_micros INTEGER NOT NULL, created_at_ms INTEGER NOT NULL, not_before_ms INTEGER NOT NULL,
    started_at_ms INTEGER, finished_at_ms INTEGER, lease_owner TEXT, lease_until_ms INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0, errors_json TEXT NOT NULL DEFAULT '[]',
    output_path TEXT, output_bytes INTEGER, output_sha256 TEXT, metadata_path TEXT,
    UNIQUE (tenant_id, idempotency_key));
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, not_before_ms);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant_id, created_at_ms);
