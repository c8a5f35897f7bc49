-- Closed months rolled up (see the PostgreSQL migration `0009_ledger_by_month`,
-- which also partitions the ledger by month; one node keeps one table).
--
-- `usage_rollups` holds the sums of every month before `ledger_rollup.open_from`:
-- the upkeep closes a month a day after it ends (under SQLite's one writer, no
-- insert can slip in while it sums), and a row that arrives for a closed month
-- later is added to the rollup by a trigger in the same transaction. So a
-- total is rollups plus the open months' rows, whatever the ledger's size.

CREATE TABLE usage_rollups (
    tenant_id TEXT NOT NULL,
    month TEXT NOT NULL,
    kind TEXT NOT NULL,
    pass TEXT NOT NULL,
    fps INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    micros INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, month, kind, pass, fps));
CREATE INDEX usage_rollups_by_kind ON usage_rollups (kind, micros);

-- The first month not rolled up ('' until the first upkeep that finds rows).
CREATE TABLE ledger_rollup (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    open_from TEXT NOT NULL);
INSERT INTO ledger_rollup (one, open_from) SELECT 1, COALESCE(MIN(month), '') FROM usage_events;

CREATE TRIGGER usage_late_rollup AFTER INSERT ON usage_events
    WHEN NEW.kind <> 'attempt_end' AND NEW.month < (SELECT open_from FROM ledger_rollup)
BEGIN
    INSERT INTO usage_rollups (tenant_id, month, kind, pass, fps, quantity, micros)
    VALUES (NEW.tenant_id, NEW.month, NEW.kind, COALESCE(NEW.pass, ''), COALESCE(NEW.fps, 0), NEW.quantity,
            NEW.amount_micros)
    ON CONFLICT (tenant_id, month, kind, pass, fps) DO UPDATE
        SET quantity = quantity + excluded.quantity, micros = micros + excluded.micros;
END;

-- The open months' charges (every 30 s): an index-only scan of this month's
-- outputs, replacing the index of every output.
DROP INDEX IF EXISTS usage_outputs;
CREATE INDEX usage_outputs_by_month ON usage_events (month, amount_micros) WHERE kind = 'output';
-- A month's rows, for its roll-up (PostgreSQL reads the month's partition).
CREATE INDEX usage_by_month ON usage_events (month, kind);
