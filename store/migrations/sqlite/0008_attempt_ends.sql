-- When each attempt ended (settled or reaped): the upkeep sweeps the files
-- of attempts that ended, in order from a watermark, instead of listing the
-- shared clips directory. Attempts that ended before this upgrade count as
-- ended now.
ALTER TABLE attempts ADD COLUMN ended_at_ms BIGINT;
UPDATE attempts SET ended_at_ms = 0
    WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = attempts.job_id AND c.attempt = attempts.attempt
                      AND c.state = 'running');
CREATE INDEX attempts_ended ON attempts (ended_at_ms) WHERE ended_at_ms IS NOT NULL;
