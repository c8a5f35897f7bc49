//! The job state machine's decisions, pure and shared by every backend.
//!
//! A backend locks the row of a fenced attempt (job id, attempt number, lease
//! owner, state `running`), reads [`Current`], asks [`settle`] what the row
//! becomes, writes the [`JobUpdate`] and the attempt's ledger events, and
//! commits, all in one transaction. The rules live here once:
//!
//! - success and cancel are final and release the job's cap reservation;
//! - a failure spends the failure budget: requeued with backoff and a lower
//!   rank, or dead when the budget is spent or retrying cannot help;
//! - an interruption (lease expired, drain, full disk) spends the separate,
//!   larger interruption budget and keeps the job's rank, so a job that keeps
//!   losing its worker is still dead-lettered in the end;
//! - a job whose cancel was requested ends cancelled whatever its attempt did.

use tessera_metering::Outcome;

use crate::score;
use crate::types::{ArchivedOutput, JobState};

/// How an attempt ended, as its worker (or the reaper) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The clip is archived; the job's billable output goes with this.
    Succeeded(ArchivedOutput),
    /// Stopped by a cancel after delivering `frames` frames (billed for those).
    Cancelled { frames: u32 },
    /// The attempt failed. `retryable: false` for errors no retry can fix.
    Failed { error: String, retry_in_ms: i64, retryable: bool },
    /// Lost to something that was not the job's fault.
    Interrupted { reason: String, retry_in_ms: i64 },
}

impl AttemptEnd {
    /// The outcome recorded in the attempt's `attempt_end` event.
    pub fn outcome(&self) -> Outcome {
        match self {
            AttemptEnd::Succeeded(_) => Outcome::Succeeded,
            AttemptEnd::Cancelled { .. } => Outcome::Cancelled,
            AttemptEnd::Failed { .. } => Outcome::Failed,
            AttemptEnd::Interrupted { .. } => Outcome::Interrupted,
        }
    }
}

/// What a decision needs from the locked row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub attempts: u32,
    pub failures: u32,
    pub interruptions: u32,
    pub max_failures: u32,
    pub max_interruptions: u32,
    pub cancel_requested: bool,
    pub rank_base_ms: i64,
    pub rank_ms: i64,
    pub frames_total: u32,
    pub frames_done: u32,
    pub errors: Vec<String>,
}

/// The row after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUpdate {
    pub state: JobState,
    pub failures: u32,
    pub interruptions: u32,
    pub not_before_ms: i64,
    pub rank_ms: i64,
    pub errors: Vec<String>,
    pub finished_at_ms: Option<i64>,
    pub frames_done: u32,
    pub output: Option<ArchivedOutput>,
    /// The job is final: its cap reservation is released in the same transaction.
    pub release_reservation: bool,
    pub outcome: Outcome,
}

/// Decides what the row of the attempt `cur` describes becomes after `end`.
pub fn settle(now_ms: i64, cur: &Current, end: &AttemptEnd) -> JobUpdate {
    let mut u = JobUpdate {
        state: JobState::Queued,
        failures: cur.failures,
        interruptions: cur.interruptions,
        not_before_ms: now_ms,
        rank_ms: cur.rank_ms,
        errors: cur.errors.clone(),
        finished_at_ms: None,
        frames_done: cur.frames_done,
        output: None,
        release_reservation: false,
        outcome: end.outcome(),
    };
    match end {
        AttemptEnd::Succeeded(output) => {
            u.state = JobState::Succeeded;
            u.frames_done = cur.frames_total;
            u.output = Some(output.clone());
        }
        AttemptEnd::Cancelled { frames } => {
            u.state = JobState::Cancelled;
            u.frames_done = *frames;
        }
        AttemptEnd::Failed { error, retry_in_ms, retryable } => {
            u.failures += 1;
            u.errors.push(format!("attempt {}: {error}", cur.attempts));
            u.rank_ms = score::rank_ms(cur.rank_base_ms, u.failures);
            u.not_before_ms = now_ms.saturating_add((*retry_in_ms).max(0));
            if !retryable || u.failures >= cur.max_failures {
                u.state = JobState::Dead;
            }
            u.frames_done = 0;
        }
        AttemptEnd::Interrupted { reason, retry_in_ms } => {
            u.interruptions += 1;
            u.errors.push(format!("attempt {} interrupted: {reason}", cur.attempts));
            u.not_before_ms = now_ms.saturating_add((*retry_in_ms).max(0));
            if u.interruptions >= cur.max_interruptions {
                u.errors.push(format!(
                    "dead-lettered after {} interruptions (limit {})",
                    u.interruptions, cur.max_interruptions
                ));
                u.state = JobState::Dead;
            }
            u.frames_done = 0;
        }
    }
    if cur.cancel_requested && u.state == JobState::Queued {
        u.state = JobState::Cancelled;
    }
    if u.state.is_final() {
        u.finished_at_ms = Some(now_ms);
        u.release_reservation = true;
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur() -> Current {
        Current {
            attempts: 2,
            failures: 1,
            interruptions: 0,
            max_failures: 3,
            max_interruptions: 2,
            cancel_requested: false,
            rank_base_ms: 1_000,
            rank_ms: 1_000 + score::FAILURE_PENALTY_MS,
            frames_total: 48,
            frames_done: 20,
            errors: vec!["attempt 1: boom".into()],
        }
    }

    fn failed(retryable: bool) -> AttemptEnd {
        AttemptEnd::Failed { error: "GPU lost".into(), retry_in_ms: 250, retryable }
    }

    #[test]
    fn failures_spend_the_failure_budget_and_interruptions_their_own() {
        let u = settle(10, &cur(), &failed(true));
        assert_eq!((u.state, u.failures, u.not_before_ms, u.frames_done), (JobState::Queued, 2, 260, 0));
        assert_eq!(u.rank_ms, 1_000 + 2 * score::FAILURE_PENALTY_MS);
        assert_eq!(u.errors.last().unwrap(), "attempt 2: GPU lost");
        assert!(!u.release_reservation && u.finished_at_ms.is_none());
        let last = Current { failures: 2, ..cur() };
        assert_eq!(settle(10, &last, &failed(true)).state, JobState::Dead);
        assert_eq!(settle(10, &cur(), &failed(false)).state, JobState::Dead);
        // An interruption keeps the failure count and the rank.
        let lost = AttemptEnd::Interrupted { reason: "lease expired".into(), retry_in_ms: 0 };
        let u = settle(10, &Current { failures: 2, ..cur() }, &lost);
        assert_eq!((u.state, u.failures, u.interruptions, u.rank_ms), (JobState::Queued, 2, 1, cur().rank_ms));
        let u = settle(10, &Current { interruptions: 1, ..cur() }, &lost);
        assert_eq!(u.state, JobState::Dead);
        assert!(u.release_reservation && u.errors.last().unwrap().contains("2 interruptions"));
    }

    #[test]
    fn final_states_release_and_cancel_wins() {
        let out =
            ArchivedOutput { path: "c.avi".into(), bytes: 1, sha256: "00".into(), metadata_path: "c.json".into() };
        let u = settle(7, &cur(), &AttemptEnd::Succeeded(out.clone()));
        assert_eq!((u.state, u.frames_done, u.output, u.finished_at_ms), (JobState::Succeeded, 48, Some(out), Some(7)));
        assert!(u.release_reservation);
        let u = settle(7, &cur(), &AttemptEnd::Cancelled { frames: 5 });
        assert_eq!((u.state, u.frames_done, u.outcome), (JobState::Cancelled, 5, Outcome::Cancelled));
        let asked = Current { cancel_requested: true, ..cur() };
        let u = settle(7, &asked, &failed(true));
        assert_eq!((u.state, u.outcome, u.release_reservation), (JobState::Cancelled, Outcome::Failed, true));
    }
}
