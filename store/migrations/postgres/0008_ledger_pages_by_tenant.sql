-- A tenant's ledger pages (`events_page` with a tenant, ordered by
-- (occurred_at_ms, id)) read in index order and stop at the page's end: the
-- tenant index carries the id, the page key's tie-breaker. Without it the
-- planner walks `usage_by_time` across every tenant's rows and filters, a
-- cost that grows as the tenant's share of the ledger shrinks. Replaces the
-- (tenant_id, occurred_at_ms) index, which this one serves as a prefix.
DROP INDEX IF EXISTS usage_by_tenant_time;
CREATE INDEX usage_by_tenant_time ON usage_events (tenant_id, occurred_at_ms, id);
