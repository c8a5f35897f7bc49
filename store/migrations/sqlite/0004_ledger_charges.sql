-- Every worker reads the ledger's total price charged every 30 s
-- (`tessera_ledger_charges_total`). Only output events carry a price (one per
-- job, against many GPU events): a covering partial index keeps the sum off
-- the GPU rows.
CREATE INDEX usage_outputs ON usage_events (kind, amount_micros) WHERE kind = 'output';
