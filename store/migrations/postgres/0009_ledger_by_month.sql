-- The ledger partitioned by month, and closed months rolled up.
--
-- `usage_events` becomes a table partitioned by LIST (month), one partition a
-- month (`usage_events_YYYY_MM`, made ahead of time by the upkeep through
-- `usage_events_partition`) and a default partition for any month that has
-- none. A month's queries (admission's month usage, the live months of the
-- totals) read its partition alone; no query of the hot paths reads a closed
-- month's rows.
--
-- Ids stay unique across partitions: the primary key is (id, month), and an
-- append skips an id any partition already holds (see the backend's insert);
-- an event's month is fixed by its id (an output's is its reservation's, the
-- rest their occurrence's, which the writer fixes once).
--
-- `usage_rollups` holds the sums of every month before `ledger_rollup.open_from`:
-- the upkeep closes a month (its rows summed under a lock that holds off
-- inserts into it) a day after it ends, and a row that arrives for a closed
-- month later (a job admitted in it and delivered after) is added to the
-- rollup by a trigger in the same transaction. So a total is rollups plus the
-- open months' rows, whatever the ledger's size.

ALTER TABLE usage_events RENAME TO usage_events_before_0009;

CREATE TABLE usage_events (
    id TEXT NOT NULL,
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
    month TEXT NOT NULL,
    PRIMARY KEY (id, month)) PARTITION BY LIST (month);
CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT;

-- Makes the partition of month `m` ('YYYY-MM') unless it exists; false when
-- the default partition already holds rows of `m` (they stay there, and the
-- month is read from there).
CREATE FUNCTION usage_events_partition(m TEXT) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    part TEXT := 'usage_events_' || replace(m, '-', '_');
BEGIN
    IF m !~ '^[0-9]{4}-[0-9]{2}$' THEN
        RETURN FALSE;
    END IF;
    IF to_regclass(part) IS NOT NULL THEN
        RETURN TRUE;
    END IF;
    IF EXISTS (SELECT 1 FROM usage_events_default WHERE month = m) THEN
        RETURN FALSE;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF usage_events FOR VALUES IN (%L)', part, m);
    EXECUTE format('CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON %I
        FOR EACH STATEMENT EXECUTE FUNCTION usage_events_append_only()', part);
    RETURN TRUE;
END
$$;

DO $$
DECLARE
    m TEXT;
BEGIN
    FOR m IN SELECT DISTINCT month FROM usage_events_before_0009
             UNION SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')
             UNION SELECT to_char((now() AT TIME ZONE 'UTC') + INTERVAL '1 month', 'YYYY-MM') LOOP
        PERFORM usage_events_partition(m);
    END LOOP;
END
$$;

INSERT INTO usage_events SELECT id, tenant_id, tier, job_id, attempt, kind, pass, seq, frames, quantity, fps,
    resolution, variant, amount_micros, timing, outcome, occurred_at_ms, month FROM usage_events_before_0009;
DROP TABLE usage_events_before_0009;

-- The old table's indexes went with it; the same, on every partition.
CREATE INDEX usage_by_tenant_time ON usage_events (tenant_id, occurred_at_ms, id);
CREATE INDEX usage_by_job ON usage_events (job_id, attempt);
CREATE INDEX usage_by_tenant_month ON usage_events (tenant_id, month, kind);
CREATE INDEX usage_attempt_ends ON usage_events (job_id, attempt) WHERE kind = 'attempt_end';
CREATE INDEX usage_by_time ON usage_events (occurred_at_ms, id);
-- The open months' charges (every worker, every 30 s): an index-only scan.
CREATE INDEX usage_outputs ON usage_events (month) INCLUDE (amount_micros) WHERE kind = 'output';

CREATE TRIGGER usage_no_update BEFORE UPDATE OR DELETE ON usage_events
    FOR EACH ROW EXECUTE FUNCTION usage_events_append_only();
CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_events_append_only();
CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON usage_events_default
    FOR EACH STATEMENT EXECUTE FUNCTION usage_events_append_only();

-- Closed months' sums per tenant, month, kind, pass ('' for none) and fps (0 for none).
CREATE TABLE usage_rollups (
    tenant_id TEXT NOT NULL,
    month TEXT NOT NULL,
    kind TEXT NOT NULL,
    pass TEXT NOT NULL,
    fps BIGINT NOT NULL,
    quantity BIGINT NOT NULL,
    micros BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, month, kind, pass, fps));
CREATE INDEX usage_rollups_by_kind ON usage_rollups (kind) INCLUDE (micros);

-- The first month not rolled up: every row of an earlier month is in
-- `usage_rollups`. '' until the first upkeep that finds rows: nothing closed.
CREATE TABLE ledger_rollup (
    one BIGINT PRIMARY KEY CHECK (one = 1),
    open_from TEXT NOT NULL);
INSERT INTO ledger_rollup (one, open_from) SELECT 1, COALESCE(MIN(month), '') FROM usage_events;

CREATE FUNCTION usage_late_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.month < (SELECT open_from FROM ledger_rollup) THEN
        INSERT INTO usage_rollups (tenant_id, month, kind, pass, fps, quantity, micros)
        VALUES (NEW.tenant_id, NEW.month, NEW.kind, COALESCE(NEW.pass, ''), COALESCE(NEW.fps, 0), NEW.quantity,
                NEW.amount_micros)
        ON CONFLICT (tenant_id, month, kind, pass, fps) DO UPDATE
            SET quantity = usage_rollups.quantity + EXCLUDED.quantity, micros = usage_rollups.micros + EXCLUDED.micros;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER usage_late_rollup AFTER INSERT ON usage_events
    FOR EACH ROW WHEN (NEW.kind <> 'attempt_end') EXECUTE FUNCTION usage_late_rollup();

-- Holds off inserts into month `m` until the transaction ends (its partition
-- and the default one), so that the rows summed are all the rows.
CREATE FUNCTION usage_events_lock_month(m TEXT) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    part TEXT := 'usage_events_' || replace(m, '-', '_');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        EXECUTE format('LOCK TABLE %I IN SHARE MODE', part);
    END IF;
    LOCK TABLE usage_events_default IN SHARE MODE;
END
$$;
