//! Closed months rolled up, so that the ledger's totals cost what a month
//! costs, not what the ledger holds.
//!
//! The ledger is append-only and never shrinks. `usage_rollups` holds, per
//! tenant, month, kind, pass and fps, the sums of every month before
//! `ledger_rollup.open_from`; the totals (`/v1/usage`, the charges every
//! worker compares its counters with) read the rollups and the open months'
//! rows, on one snapshot. The upkeep leader closes a month
//! [`CLOSE_AFTER_MS`] after it ends ([`crate::Store::maintain_ledger`]): it
//! holds off inserts into that month (on PostgreSQL, a `SHARE` lock on the
//! month's partition and the default one; SQLite's one writer does that by
//! itself), sums its rows into the rollups and moves `open_from` past it, in
//! one transaction. A row that still arrives for a closed month (a job
//! admitted in it and delivered later is billed in it) is added to its rollup
//! by a trigger in the inserting transaction. So every row counts once,
//! either as a row of an open month or in a rollup, and rows stay in the
//! ledger for audit and export either way.
//!
//! On PostgreSQL the ledger is also partitioned by month
//! (`usage_events_YYYY_MM`, made ahead for this month and the next by the
//! same upkeep): a month's queries read its partition alone.

/// How long after its end a month is closed: late rows go through the rollup
/// trigger, which is correct but costs more than a plain insert.
pub const CLOSE_AFTER_MS: i64 = 86_400_000;

/// Months one call closes at most (a ledger migrated with years of history
/// catches up a year per upkeep run).
pub(crate) const MONTHS_PER_CALL: usize = 12;

/// Sums month `$1`'s rows into the rollups; the month has none yet (it is
/// open until this statement's transaction commits).
pub(crate) const ROLL_UP_MONTH: &str = "INSERT INTO usage_rollups (tenant_id, month, kind, pass, fps, quantity, micros)
    SELECT tenant_id, month, kind, COALESCE(pass, ''), COALESCE(fps, 0), CAST(SUM(quantity) AS BIGINT),
           CAST(SUM(amount_micros) AS BIGINT)
    FROM usage_events WHERE month = $1 AND kind <> 'attempt_end'
    GROUP BY tenant_id, month, kind, COALESCE(pass, ''), COALESCE(fps, 0)";

/// The month after `month` (`YYYY-MM`); a malformed month stays as it is.
pub(crate) fn next_month(month: &str) -> String {
    let parsed = month.split_once('-').and_then(|(y, m)| Some((y.parse::<i32>().ok()?, m.parse::<u32>().ok()?)));
    match parsed {
        Some((y, 12)) => format!("{:04}-01", y + 1),
        Some((y, m)) if (1..12).contains(&m) => format!("{y:04}-{:02}", m + 1),
        _ => month.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_follow_each_other() {
        assert_eq!(next_month("2026-11"), "2026-12");
        assert_eq!(next_month("2026-12"), "2027-01");
        assert_eq!(next_month("0000-00"), "0000-00");
        assert_eq!(next_month("junk"), "junk");
    }
}
