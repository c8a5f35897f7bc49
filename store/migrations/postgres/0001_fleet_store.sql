-- tessera's store on PostgreSQL: tenants, jobs (fenced leases, stored score),
-- cap reservations, the append-only usage ledger, the worker registry.
-- The score's formula lives in store/src/score.rs.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL,
    api_key_hash TEXT UNIQUE,
    created_at_ms BIGINT NOT NULL);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    idempotency_key TEXT,
    body_hash TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    template TEXT NOT NULL,
    lane TEXT NOT NULL CHECK (lane IN ('urgent', 'standard', 'bulk')),
    lane_rank BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    attempts BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    interruptions BIGINT NOT NULL DEFAULT 0,
    max_failures BIGINT NOT NULL,
    max_interruptions BIGINT NOT NULL,
    frames_total BIGINT NOT NULL,
    frames_done BIGINT NOT NULL DEFAULT 0,
    fps BIGINT NOT NULL,
    price_micros BIGINT NOT NULL,
    rank_base_ms BIGINT NOT NULL,
    rank_ms BIGINT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    not_before_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    finished_at_ms BIGINT,
    lease_owner TEXT,
    lease_until_ms BIGINT,
    worker TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    errors_json TEXT NOT NULL DEFAULT '[]',
    output_path TEXT,
    output_bytes BIGINT,
    output_sha256 TEXT,
    metadata_path TEXT,
    UNIQUE (tenant_id, idempotency_key));
-- The claim: queued jobs in lane then rank order, and aged jobs by deadline.
CREATE INDEX jobs_claim ON jobs (lane_rank, rank_ms, id) WHERE state = 'queued';
CREATE INDEX jobs_aged ON jobs (deadline_ms, id) WHERE state = 'queued';
-- The reaper: running jobs by lease expiry.
CREATE INDEX jobs_leases ON jobs (lease_until_ms) WHERE state = 'running';
CREATE INDEX jobs_retained ON jobs (finished_at_ms) WHERE output_path IS NOT NULL;
CREATE INDEX jobs_tenant ON jobs (tenant_id, created_at_ms, id);

CREATE TABLE reservations (
    job_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    month TEXT NOT NULL,
    frames BIGINT NOT NULL,
    fps BIGINT NOT NULL,
    amount_micros BIGINT NOT NULL,
    released BIGINT NOT NULL DEFAULT 0);
CREATE INDEX reservations_open ON reservations (tenant_id, month) WHERE released = 0;

CREATE TABLE usage_events (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    job_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    kind TEXT NOT NULL,
    pass TEXT,
    seq BIGINT NOT NULL,
    frames BIGINT NOT NULL DEFAULT 0,
    quantity BIGINT NOT NULL,
    fps BIGINT,
    resolution TEXT,
    variant TEXT,
    amount_micros BIGINT NOT NULL DEFAULT 0,
    timing TEXT,
    outcome TEXT,
    occurred_at_ms BIGINT NOT NULL,
    month TEXT NOT NULL);
CREATE INDEX usage_by_tenant_time ON usage_events (tenant_id, occurred_at_ms);
CREATE INDEX usage_by_job ON usage_events (job_id, attempt);
CREATE INDEX usage_by_tenant_month ON usage_events (tenant_id, month, kind);
-- An event's attempt outcome: one index entry per attempt, not per event.
CREATE INDEX usage_attempt_ends ON usage_events (job_id, attempt) WHERE kind = 'attempt_end';

-- Append-only: recorded usage is never updated, deleted or truncated.
CREATE FUNCTION usage_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'usage_events is append-only';
END
$$;
CREATE TRIGGER usage_no_update BEFORE UPDATE OR DELETE ON usage_events
    FOR EACH ROW EXECUTE FUNCTION usage_events_append_only();
CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_events_append_only();

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    api_addr TEXT NOT NULL,
    adapter TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL,
    jobs_in_flight BIGINT NOT NULL DEFAULT 0,
    stopped_at_ms BIGINT);

-- Periodic work one worker does for the fleet (storage metering, retention).
CREATE TABLE leaders (task TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL);
