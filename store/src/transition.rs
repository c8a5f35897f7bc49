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
use crate::types::{ArchivedOutput, ChunkKind, ChunkState, JobState, Segment};

/// How an attempt ended, as its worker (or the reaper) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The clip is archived; the job's billable output goes with this.
    Succeeded(ArchivedOutput),
    /// A range chunk's frames are in their segment (nothing billed yet).
    Segment(Segment),
    /// Stopped by a cancel after delivering `frames` frames, billed for
    /// those, with what keeps them: the partial clip of a whole chunk or a
    /// join, the partial segment of a range (joined and delivered by the
    /// job's join), or nothing when no frame was rendered.
    Cancelled { frames: u32, delivered: Delivered },
    /// The attempt failed. `retryable: false` for errors no retry can fix.
    Failed { error: String, retry_in_ms: i64, retryable: bool },
    /// Lost to something that was not the job's fault.
    Interrupted { reason: String, retry_in_ms: i64 },
    /// A join found these ranges' segments damaged or gone: they are rendered
    /// again and the join waits for them (an interruption of the join).
    Redo { ranges: Vec<u32>, reason: String },
}

/// What a cancelled attempt keeps of the frames it rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// No frame: nothing kept, nothing billed.
    Nothing,
    /// The partial clip, archived as the job's output (a whole chunk or a join).
    Clip(ArchivedOutput),
    /// A range's frames so far, in a segment its job's join delivers.
    Segment(Segment),
}

impl AttemptEnd {
    /// The outcome recorded in the attempt's `attempt_end` event.
    pub fn outcome(&self) -> Outcome {
        match self {
            AttemptEnd::Succeeded(_) | AttemptEnd::Segment(_) => Outcome::Succeeded,
            AttemptEnd::Cancelled { .. } => Outcome::Cancelled,
            AttemptEnd::Failed { .. } => Outcome::Failed,
            AttemptEnd::Interrupted { .. } | AttemptEnd::Redo { .. } => Outcome::Interrupted,
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
        AttemptEnd::Cancelled { frames, delivered } => {
            u.state = JobState::Cancelled;
            u.frames_done = *frames;
            if let Delivered::Clip(output) = delivered {
                u.output = Some(output.clone());
            }
        }
        // Decided by `settle_chunk`; here they change nothing of the job.
        AttemptEnd::Segment(_) | AttemptEnd::Redo { .. } => {}
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

/// What a decision needs from the locked row of the settling chunk and its siblings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCurrent {
    pub kind: ChunkKind,
    pub interruptions: u32,
    /// Other chunks of the job still running.
    pub others_running: u32,
    /// Other range chunks not done yet (queued or running).
    pub others_open: u32,
}

/// The chunk's row after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkUpdate {
    pub state: ChunkState,
    pub interruptions: u32,
    pub frames_done: u32,
    pub not_before_ms: i64,
    pub rank_ms: i64,
    pub segment: Option<Segment>,
}

/// A chunk's settlement: its row, its job's row, and what happens to the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSettlement {
    pub chunk: ChunkUpdate,
    /// The job's row; a state that is not final is `Running` while other
    /// chunks run, else `Queued`.
    pub job: JobUpdate,
    /// The job ended: its unfinished chunks end in this state.
    pub close_others: Option<ChunkState>,
    /// The join may start: every range is done, or the job is cancelled and
    /// no range runs any more (the join then settles what was delivered).
    pub unblock_join: bool,
    /// Ranges to render again (their segments are gone), queued at once.
    pub redo: Vec<u32>,
}

/// Decides a chunk's settlement. The budgets: failures are the job's (summed
/// over its chunks), interruptions are the chunk's, so a long clip in a fleet
/// that loses workers is not dead-lettered for their number of chunks.
pub fn settle_chunk(
    now_ms: i64,
    job: &Current,
    chunk: &ChunkCurrent,
    end: &AttemptEnd,
) -> Result<ChunkSettlement, String> {
    match (chunk.kind, end) {
        (ChunkKind::Range, AttemptEnd::Succeeded(_)) => {
            return Err("a range chunk ends with a segment, not an archived clip".into())
        }
        (ChunkKind::Whole | ChunkKind::Join, AttemptEnd::Segment(_)) => {
            return Err("only a range chunk ends with a segment".into())
        }
        (ChunkKind::Whole | ChunkKind::Range, AttemptEnd::Redo { .. }) => {
            return Err("only a join sends ranges back to be rendered again".into())
        }
        (ChunkKind::Range, AttemptEnd::Cancelled { delivered: Delivered::Clip(_), .. }) => {
            return Err("a cancelled range keeps a segment, not a clip".into())
        }
        (ChunkKind::Whole | ChunkKind::Join, AttemptEnd::Cancelled { delivered: Delivered::Segment(_), .. }) => {
            return Err("only a range keeps a segment".into())
        }
        _ => {}
    }
    // A join that fails or is interrupted runs again whatever a cancel asked:
    // the next join decides (it bills a cancelled job's delivered frames, or
    // delivers a clip whose frames were all rendered before the cancel).
    let cancel_requested = job.cancel_requested && chunk.kind != ChunkKind::Join;
    let budget = Current { interruptions: chunk.interruptions, cancel_requested, ..job.clone() };
    let mut u = settle(now_ms, &budget, end);
    let chunk_interruptions = u.interruptions;
    u.interruptions = job.interruptions + (chunk_interruptions - chunk.interruptions);
    let mut c = ChunkUpdate {
        state: match u.state {
            JobState::Queued | JobState::Running => ChunkState::Queued,
            JobState::Succeeded => ChunkState::Done,
            JobState::Cancelled => ChunkState::Cancelled,
            JobState::Dead => ChunkState::Dead,
        },
        interruptions: chunk_interruptions,
        frames_done: u.frames_done,
        not_before_ms: u.not_before_ms,
        rank_ms: u.rank_ms,
        segment: None,
    };
    let mut unblock_join = false;
    let mut redo = Vec::new();
    if let AttemptEnd::Redo { ranges, reason } = end {
        // Counted on the join's interruption budget, so a volume that keeps
        // losing segments still ends the job.
        c.interruptions = chunk.interruptions + 1;
        u.interruptions = job.interruptions + 1;
        u.errors.push(format!("attempt {} interrupted: {reason}; rendering chunks {ranges:?} again", job.attempts));
        if c.interruptions >= job.max_interruptions {
            u.errors.push(format!("dead-lettered after {} interruptions of its join", c.interruptions));
            u.state = JobState::Dead;
            u.finished_at_ms = Some(now_ms);
            u.release_reservation = true;
            c.state = ChunkState::Dead;
        } else {
            c.state = ChunkState::Blocked;
            redo = ranges.clone();
        }
    }
    if chunk.kind == ChunkKind::Range {
        let last_running = chunk.others_running == 0;
        if let AttemptEnd::Segment(seg) = end {
            c.state = ChunkState::Done;
            c.frames_done = seg.frames;
            c.segment = Some(seg.clone());
            unblock_join = chunk.others_open == 0 || (job.cancel_requested && last_running);
        } else if c.state == ChunkState::Cancelled {
            // Its frames so far stay, for the join to deliver.
            if let AttemptEnd::Cancelled { delivered: Delivered::Segment(seg), .. } = end {
                c.frames_done = seg.frames;
                c.segment = Some(seg.clone());
            }
            // The job ends at its join, once no range runs.
            unblock_join = last_running;
        }
        if u.state != JobState::Dead {
            u.state = JobState::Queued;
            u.finished_at_ms = None;
            u.release_reservation = false;
            u.output = None;
        }
    }
    if !u.state.is_final() && chunk.others_running > 0 {
        u.state = JobState::Running;
    }
    let close_others = match u.state {
        JobState::Dead => Some(ChunkState::Dead),
        JobState::Cancelled => Some(ChunkState::Cancelled),
        _ => None,
    };
    Ok(ChunkSettlement { chunk: c, job: u, close_others, unblock_join, redo })
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

    fn range(others_running: u32, others_open: u32) -> ChunkCurrent {
        ChunkCurrent { kind: ChunkKind::Range, interruptions: 0, others_running, others_open }
    }

    fn segment() -> AttemptEnd {
        AttemptEnd::Segment(Segment { path: "s".into(), bytes: 9, sha256: "00".into(), frames: 24 })
    }

    #[test]
    fn the_last_range_unblocks_the_join_and_only_the_join_finishes_the_job() {
        let s = settle_chunk(5, &cur(), &range(1, 1), &segment()).unwrap();
        assert_eq!((s.chunk.state, s.chunk.frames_done, s.job.state), (ChunkState::Done, 24, JobState::Running));
        assert!(!s.unblock_join && !s.job.release_reservation && s.close_others.is_none());
        let s = settle_chunk(5, &cur(), &range(0, 0), &segment()).unwrap();
        assert!(s.unblock_join);
        assert_eq!(s.job.state, JobState::Queued);
        let join = ChunkCurrent { kind: ChunkKind::Join, ..range(0, 0) };
        assert!(settle_chunk(5, &cur(), &join, &segment()).is_err());
        let out = ArchivedOutput { path: "c".into(), bytes: 1, sha256: "00".into(), metadata_path: "m".into() };
        let s = settle_chunk(5, &cur(), &join, &AttemptEnd::Succeeded(out)).unwrap();
        assert_eq!((s.job.state, s.chunk.state), (JobState::Succeeded, ChunkState::Done));
        assert!(s.job.release_reservation);
        // A join that finds segments damaged sends their ranges back and waits.
        let redo = AttemptEnd::Redo { ranges: vec![1], reason: "segment 1 damaged".into() };
        let s = settle_chunk(5, &cur(), &join, &redo).unwrap();
        assert_eq!((s.chunk.state, s.redo.clone(), s.job.state), (ChunkState::Blocked, vec![1], JobState::Queued));
        assert_eq!((s.job.interruptions, s.chunk.interruptions, s.job.outcome), (1, 1, Outcome::Interrupted));
        assert!(settle_chunk(5, &cur(), &range(0, 0), &redo).is_err());
        let tired = ChunkCurrent { interruptions: 1, ..join.clone() };
        assert_eq!(settle_chunk(5, &cur(), &tired, &redo).unwrap().job.state, JobState::Dead);
        // A join interrupted after a cancel runs again: it alone settles the job.
        let asked = Current { cancel_requested: true, ..cur() };
        let lost = AttemptEnd::Interrupted { reason: "drain".into(), retry_in_ms: 0 };
        let s = settle_chunk(5, &asked, &join, &lost).unwrap();
        assert_eq!((s.job.state, s.chunk.state), (JobState::Queued, ChunkState::Queued));
    }

    #[test]
    fn a_range_retries_alone_and_kills_its_job_when_the_budget_is_spent() {
        let lost = AttemptEnd::Interrupted { reason: "lease expired".into(), retry_in_ms: 0 };
        let s = settle_chunk(5, &Current { interruptions: 7, ..cur() }, &range(2, 3), &lost).unwrap();
        assert_eq!((s.chunk.state, s.chunk.interruptions, s.job.interruptions), (ChunkState::Queued, 1, 8));
        assert_eq!((s.job.state, s.close_others), (JobState::Running, None));
        // The interruption budget is the chunk's.
        let tired = ChunkCurrent { interruptions: 1, ..range(2, 3) };
        let s = settle_chunk(5, &cur(), &tired, &lost).unwrap();
        assert_eq!((s.job.state, s.close_others), (JobState::Dead, Some(ChunkState::Dead)));
        // The failure budget is the job's.
        let s = settle_chunk(5, &Current { failures: 2, ..cur() }, &range(0, 3), &failed(true)).unwrap();
        assert_eq!((s.job.state, s.chunk.state), (JobState::Dead, ChunkState::Dead));
        assert!(s.job.release_reservation);
    }

    #[test]
    fn a_cancelled_range_leaves_the_job_to_its_join() {
        let asked = Current { cancel_requested: true, ..cur() };
        let s =
            settle_chunk(5, &asked, &range(1, 2), &AttemptEnd::Cancelled { frames: 3, delivered: Delivered::Nothing })
                .unwrap();
        assert_eq!((s.chunk.state, s.chunk.frames_done, s.job.state), (ChunkState::Cancelled, 3, JobState::Running));
        assert!(!s.unblock_join && !s.job.release_reservation);
        let s = settle_chunk(5, &asked, &range(0, 2), &failed(true)).unwrap();
        assert_eq!((s.chunk.state, s.job.state, s.unblock_join), (ChunkState::Cancelled, JobState::Queued, true));
        let s = settle_chunk(5, &asked, &range(0, 2), &segment()).unwrap();
        assert!(s.unblock_join);
    }

    #[test]
    fn final_states_release_and_cancel_wins() {
        let out =
            ArchivedOutput { path: "c.avi".into(), bytes: 1, sha256: "00".into(), metadata_path: "c.json".into() };
        let u = settle(7, &cur(), &AttemptEnd::Succeeded(out.clone()));
        assert_eq!((u.state, u.frames_done, u.output, u.finished_at_ms), (JobState::Succeeded, 48, Some(out), Some(7)));
        assert!(u.release_reservation);
        let u = settle(7, &cur(), &AttemptEnd::Cancelled { frames: 5, delivered: Delivered::Nothing });
        assert_eq!((u.state, u.frames_done, u.outcome), (JobState::Cancelled, 5, Outcome::Cancelled));
        let asked = Current { cancel_requested: true, ..cur() };
        let u = settle(7, &asked, &failed(true));
        assert_eq!((u.state, u.outcome, u.release_reservation), (JobState::Cancelled, Outcome::Failed, true));
    }
}
