-- The quote a job was admitted with (tessera_metering::AdmittedQuote as JSON):
-- what it is billed, whatever price book a later worker runs with. Jobs
-- admitted before this column are billed their stored price_micros.
ALTER TABLE jobs ADD COLUMN quote_json TEXT;
