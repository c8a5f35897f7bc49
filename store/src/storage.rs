//! Storage metered by elapsed time, written once for every backend (numbered
//! placeholders, `$1`, which both drivers read).
//!
//! Every file the store keeps for a tenant is a row of `stored_objects`: a
//! job's clip from the settlement that archived it, a chunk's segment from the
//! settlement that kept it, each until the transaction that forgets it (the
//! store's clock, both ends). The fleet's upkeep closes storage periods in
//! order from a watermark (`meters.storage`), each into one ledger event per
//! tenant, in one transaction with the watermark's move:
//!
//! ```text
//! byte-seconds(tenant, [a, b)) = ⌊ Σ bytes × |[stored, removed) ∩ [a, b)| in ms / 1000 ⌋
//! ```
//!
//! The sum is exact (128-bit, in byte-milliseconds); the only rounding is the
//! floor to whole byte-seconds, so each event is low by less than one
//! byte-second. A tick that runs late or stalls closes every period it missed
//! on its next run (a bounded number per run), so no interval is skipped, and
//! the watermark and the events commit together (and the events' ids are the
//! tenant and period), so none is counted twice, whichever worker leads.

use std::collections::BTreeMap;

use tessera_metering::UsageEvent;

use crate::rows::Columns;
use crate::Result;

/// A new object: `$1` path, `$2` kind, `$3` chunk, `$4` bytes, `$5` now, `$6` job.
pub(crate) const STORE_OBJECT: &str = "INSERT INTO stored_objects
        (path, tenant_id, job_id, kind, chunk, bytes, stored_at_ms)
    SELECT $1, tenant_id, id, $2, $3, $4, $5 FROM jobs WHERE id = $6
    ON CONFLICT (path) DO NOTHING";

/// A job's clip is gone: `$1` job, `$2` now.
pub(crate) const REMOVE_CLIP: &str = "UPDATE stored_objects SET removed_at_ms = $2
    WHERE job_id = $1 AND kind = 'clip' AND removed_at_ms IS NULL";

/// A job's segments are gone: `$1` job, `$2` now.
pub(crate) const REMOVE_SEGMENTS: &str = "UPDATE stored_objects SET removed_at_ms = $2
    WHERE job_id = $1 AND kind = 'segment' AND removed_at_ms IS NULL";

/// One range's segment is gone (it renders again): `$1` job, `$2` chunk, `$3` now.
pub(crate) const REMOVE_SEGMENT: &str = "UPDATE stored_objects SET removed_at_ms = $3
    WHERE job_id = $1 AND kind = 'segment' AND chunk = $2 AND removed_at_ms IS NULL";

/// The storage meter's watermark and period.
pub(crate) const WATERMARK: &str = "SELECT closed_to_ms, period_ms FROM meters WHERE name = 'storage'";

/// Starts the meter at `$1` (a period boundary) with period `$2`.
pub(crate) const START_METER: &str = "INSERT INTO meters (name, closed_to_ms, period_ms) VALUES ('storage', $1, $2)
    ON CONFLICT (name) DO NOTHING";

/// Moves the watermark to `$1` (and the period to `$2`, applied from there on).
pub(crate) const MOVE_WATERMARK: &str = "UPDATE meters SET closed_to_ms = $1, period_ms = $2 WHERE name = 'storage'";

/// The objects stored during `[$1, $2)`, each with the part of it it was
/// stored: the live ones (from their index) and those removed since `$1`.
pub(crate) const STORED_DURING: &str = "
    SELECT o.tenant_id AS tenant_id, COALESCE(t.tier, '') AS tier, o.bytes AS bytes,
           CASE WHEN o.stored_at_ms > $1 THEN o.stored_at_ms ELSE $1 END AS from_ms,
           CAST($2 AS BIGINT) AS to_ms
    FROM stored_objects o LEFT JOIN tenants t ON t.id = o.tenant_id
    WHERE o.removed_at_ms IS NULL AND o.stored_at_ms < $2
    UNION ALL
    SELECT o.tenant_id AS tenant_id, COALESCE(t.tier, '') AS tier, o.bytes AS bytes,
           CASE WHEN o.stored_at_ms > $1 THEN o.stored_at_ms ELSE $1 END AS from_ms,
           CASE WHEN o.removed_at_ms < $2 THEN o.removed_at_ms ELSE $2 END AS to_ms
    FROM stored_objects o LEFT JOIN tenants t ON t.id = o.tenant_id
    WHERE o.removed_at_ms IS NOT NULL AND o.removed_at_ms > $1 AND o.stored_at_ms < $2";

/// A named watermark (`$1`), such as how far the upkeep's sweep has read.
pub(crate) const MARK: &str = "SELECT closed_to_ms FROM meters WHERE name = $1";

/// Moves the watermark `$1` to `$2` (forward only).
pub(crate) const SET_MARK: &str = "INSERT INTO meters (name, closed_to_ms, period_ms) VALUES ($1, $2, 0)
    ON CONFLICT (name) DO UPDATE SET closed_to_ms = excluded.closed_to_ms
    WHERE meters.closed_to_ms < excluded.closed_to_ms";

/// At most this many periods are closed per run: a meter that stalled for
/// long catches up over a few runs rather than in one long transaction.
pub(crate) const MAX_PERIODS_PER_RUN: usize = 48;

/// Where the meter starts when it has never run: the start of the period
/// `now_ms` is in (nothing before the upgrade is metered twice).
pub(crate) fn first_boundary(now_ms: i64, period_ms: i64) -> i64 {
    now_ms.div_euclid(period_ms) * period_ms
}

/// The periods `[a, a + period)` that have ended by `now_ms`, from `closed_to_ms` on.
pub(crate) fn due_periods(closed_to_ms: i64, period_ms: i64, now_ms: i64) -> Vec<i64> {
    let mut due = Vec::new();
    let mut a = closed_to_ms;
    while a + period_ms <= now_ms && due.len() < MAX_PERIODS_PER_RUN {
        due.push(a);
        a += period_ms;
    }
    due
}

/// One event per tenant for the period `[start, start + period)` from the rows
/// of [`STORED_DURING`], in id order (two leaders overlapping at a hand-over
/// lock rows in the same order).
pub(crate) fn period_events<R: Columns>(rows: &[R], start: i64, period_ms: i64) -> Result<Vec<UsageEvent>> {
    let mut byte_ms: BTreeMap<(String, String), i128> = BTreeMap::new();
    for r in rows {
        let (from, to) = (r.int("from_ms")?, r.int("to_ms")?);
        let held = i128::from((to - from).max(0));
        *byte_ms.entry((r.text("tenant_id")?, r.text("tier")?)).or_default() += i128::from(r.int("bytes")?) * held;
    }
    let mut events: Vec<UsageEvent> = byte_ms
        .into_iter()
        .filter(|(_, ms)| *ms > 0)
        .map(|((tenant, tier), ms)| {
            let byte_seconds = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
            UsageEvent::storage_period(&tenant, &tier, start, period_ms, byte_seconds)
        })
        .collect();
    events.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_close_in_order_and_a_stalled_meter_catches_up() {
        assert_eq!(first_boundary(3_601_000, 3_600_000), 3_600_000);
        assert_eq!(due_periods(0, 1_000, 999), Vec::<i64>::new());
        assert_eq!(due_periods(0, 1_000, 1_000), vec![0]);
        assert_eq!(due_periods(0, 1_000, 3_500), vec![0, 1_000, 2_000]);
        assert_eq!(due_periods(0, 1, 1_000).len(), MAX_PERIODS_PER_RUN);
    }
}
