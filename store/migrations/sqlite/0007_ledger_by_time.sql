-- A ledger export without a tenant pages through the ledger in time order:
-- each page an index range scan, whatever the ledger's size.
CREATE INDEX usage_by_time ON usage_events (occurred_at_ms, id);
