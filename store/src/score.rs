//! The queue's order, computed here and nowhere else.
//!
//! Within a lane, a job's priority is `tier weight + age - size - failures`
//! (in seconds of queue age). Every queued job ages at the same rate, so the
//! order it induces never changes with time, and the score can be stored as a
//! sortable column: the *rank*, a virtual enqueue time in milliseconds,
//! `created - tier weight + size + failures x penalty`, lower first. The claim
//! reads it through an index ordered by (lane, rank); no SQL computes it.
//!
//! Aging sits beside the score: past its lane's maximum wait (its *deadline*) a
//! job goes ahead of every lane, most overdue first, so nothing starves.

/// What one failed attempt costs a job in the queue, in ms of queue age.
pub const FAILURE_PENALTY_MS: i64 = 5_000;

/// The inputs of a job's place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreInputs {
    pub created_at_ms: i64,
    /// The tier's `queue_weight_s` from the price book, in ms.
    pub tier_weight_ms: i64,
    /// Expected cost of the job in ms of queue age (smaller jobs first).
    pub est_cost_ms: i64,
}

impl ScoreInputs {
    /// The part of the rank that never changes: stored with the job so a
    /// requeue can recompute the rank from its failure count alone.
    pub fn rank_base_ms(self) -> i64 {
        self.created_at_ms.saturating_sub(self.tier_weight_ms).saturating_add(self.est_cost_ms)
    }
}

/// The rank of a job with `failures` failed attempts: lower is claimed first.
pub fn rank_ms(rank_base_ms: i64, failures: u32) -> i64 {
    rank_base_ms.saturating_add(i64::from(failures) * FAILURE_PENALTY_MS)
}

/// When a job created at `created_at_ms` goes ahead of every lane.
pub fn deadline_ms(created_at_ms: i64, max_wait_ms: i64) -> i64 {
    created_at_ms.saturating_add(max_wait_ms.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The score as the brief states it, at time `now`, in seconds.
    fn score(i: ScoreInputs, failures: u32, now: i64) -> f64 {
        i.tier_weight_ms as f64 / 1000.0 + (now - i.created_at_ms) as f64 / 1000.0
            - i.est_cost_ms as f64 / 1000.0
            - f64::from(failures) * FAILURE_PENALTY_MS as f64 / 1000.0
    }

    #[test]
    fn rank_orders_jobs_as_the_score_does_at_any_time() {
        let jobs = [
            (ScoreInputs { created_at_ms: 1_000, tier_weight_ms: 0, est_cost_ms: 10 }, 0),
            (ScoreInputs { created_at_ms: 5_000, tier_weight_ms: 30_000, est_cost_ms: 10 }, 0),
            (ScoreInputs { created_at_ms: 2_000, tier_weight_ms: 10_000, est_cost_ms: 9_000 }, 1),
            (ScoreInputs { created_at_ms: 3_000, tier_weight_ms: 0, est_cost_ms: 0 }, 2),
        ];
        for now in [5_000, 60_000, 10_000_000] {
            for a in &jobs {
                for b in &jobs {
                    let by_rank = rank_ms(a.0.rank_base_ms(), a.1) < rank_ms(b.0.rank_base_ms(), b.1);
                    let by_score = score(a.0, a.1, now) > score(b.0, b.1, now);
                    assert_eq!(by_rank, by_score, "{a:?} vs {b:?} at {now}");
                }
            }
        }
        assert_eq!(deadline_ms(1_000, 60_000), 61_000);
    }
}
