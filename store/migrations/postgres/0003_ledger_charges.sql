-- Every worker reads the ledger's total price charged every 30 s
-- (`tessera_ledger_charges_total`, compared with the workers' counters).
-- Only output events carry a price: one per job, against many GPU events,
-- so this partial covering index keeps that sum an index-only scan.
CREATE INDEX usage_outputs ON usage_events (occurred_at_ms) INCLUDE (amount_micros) WHERE kind = 'output';
