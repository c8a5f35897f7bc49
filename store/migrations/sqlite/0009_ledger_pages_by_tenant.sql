-- A tenant's ledger pages (`events_page` with a tenant, ordered by
-- (occurred_at_ms, id)) read in index order and stop at the page's end: the
-- tenant index carries the id, the page key's tie-breaker, so no page sorts
-- its rows in a temporary b-tree. Replaces the (tenant_id, occurred_at_ms)
-- index, which this one serves as a prefix.
DROP INDEX IF EXISTS usage_by_tenant_time;
CREATE INDEX usage_by_tenant_time ON usage_events (tenant_id, occurred_at_ms, id);
