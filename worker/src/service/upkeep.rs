//! The fleet's periodic upkeep, done by one worker at a time (the store's
//! leadership lease decides which), in a task of its own beside the
//! scheduler's claim loop: storage metering (the store closes each storage
//! period into one event per tenant, from a watermark: see
//! `tessera_store::storage`), the ledger's months (partitions made ahead,
//! ended months rolled up: see `tessera_store::rollup`), retention, and
//! sweeping partial clips that no running attempt owns.

use std::sync::Arc;
use std::time::Duration;

use tessera_store::JobId;

use super::Service;

/// How often the upkeep meters storage and applies retention.
pub(super) const PERIOD: Duration = Duration::from_secs(60);

/// Runs the upkeep until the worker drains: metering and retention every
/// [`PERIOD`] (or the storage period, if shorter), the sweep every two leases.
pub(super) async fn run_loop(svc: Arc<Service>) {
    let sweep_every = (svc.config.lease * 2).max(Duration::from_secs(5));
    let lead_ttl = sweep_every * 3;
    let meter_every = PERIOD.min(svc.config.storage_period).max(Duration::from_millis(200));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut metered, mut swept): (Option<tokio::time::Instant>, Option<tokio::time::Instant>) = (None, None);
    while !svc.shutting_down() {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        if metered.is_none_or(|t| now.duration_since(t) >= meter_every) {
            metered = Some(now);
            run(&svc, lead_ttl).await;
        }
        if swept.is_none_or(|t| now.duration_since(t) >= sweep_every) {
            swept = Some(now);
            sweep(&svc, lead_ttl).await;
        }
    }
}

/// Whether this worker leads the fleet's upkeep, taking or renewing the lead
/// for `ttl`: the leader renews it at every sweep, so a leader that died hands
/// the upkeep over within one `ttl`.
async fn leads(svc: &Service, ttl: Duration) -> bool {
    match svc.store.try_lead("upkeep", &svc.worker, ttl.as_millis() as i64).await {
        Ok(lead) => lead,
        Err(e) => {
            svc.errors.warn("taking the upkeep lead", &e);
            false
        }
    }
}

/// Meters storage and applies retention, if this worker leads.
async fn run(svc: &Service, lead_ttl: Duration) {
    if leads(svc, lead_ttl).await {
        meter_storage(svc).await;
        maintain_ledger(svc).await;
        retention(svc).await;
    }
}

/// Sweeps the files of attempts that are over without being an output, if this worker leads.
async fn sweep(svc: &Service, lead_ttl: Duration) {
    if leads(svc, lead_ttl).await {
        sweep_stale_files(svc).await;
    }
}

/// Closes the storage periods that ended: the store writes one event per
/// tenant and period (byte-seconds from each clip's and segment's archive to
/// its removal), and the counters move for the events that are new.
async fn meter_storage(svc: &Service) {
    let period_ms = svc.config.storage_period.as_millis() as i64;
    match svc.store.close_storage_periods(period_ms).await {
        Ok((events, inserted)) => {
            for (e, _) in events.iter().zip(inserted).filter(|(_, new)| *new) {
                svc.metrics.record_storage(&svc.book, &e.tenant_id, &e.tier, u64::try_from(e.quantity).unwrap_or(0));
            }
        }
        Err(e) => svc.errors.warn("metering storage", &e),
    }
}

/// Makes the ledger's partitions of this month and the next, and rolls up the
/// months that ended a day ago, so that the totals read a month's rows, not
/// the ledger's.
async fn maintain_ledger(svc: &Service) {
    match svc.store.maintain_ledger().await {
        Ok(closed) if !closed.is_empty() => tracing::info!(months = ?closed, "rolled up the ledger's closed months"),
        Ok(_) => {}
        Err(e) => svc.errors.warn("rolling up the ledger's months", &e),
    }
}

/// Deletes clips past the retention period, then forgets them in the store.
async fn retention(svc: &Service) {
    let cutoff = svc.store.now_ms() - svc.config.retention.as_millis() as i64;
    let expired = match svc.store.retained(Some(cutoff)).await {
        Ok(r) => r,
        Err(e) => return svc.errors.warn("listing expired clips", &e),
    };
    for r in expired {
        let gone =
            [Some(&r.output_path), r.metadata_path.as_ref()].into_iter().flatten().all(
                |p| match std::fs::remove_file(p) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                    Err(e) => {
                        tracing::warn!(path = %p, error = %e, "could not delete an expired clip");
                        false
                    }
                },
            );
        if gone {
            if let Err(e) = svc.store.forget_output(&r.job).await {
                svc.errors.warn("forgetting an expired clip", &e);
            }
        }
    }
}

/// Removes the files of attempts that are over without being the job's
/// output, two leases after they ended: `JOB.aN.*.partial` of an attempt
/// whose worker was killed mid-write, and `JOB.aN.avi`/`.json`/`.seg` of an
/// attempt whose worker died between archiving and settling (or lost its
/// lease then). The store says which attempts ended since the last sweep (a
/// watermark shared by whichever worker leads), and what of each it keeps:
/// no directory listing, and a cost per sweep that follows the attempts that
/// ended, not the size of the archive.
async fn sweep_stale_files(svc: &Service) {
    sweep_ended_segments(svc).await;
    let quiet = (svc.config.lease * 2).as_millis() as i64;
    let mut from = match svc.store.mark(SWEEP_MARK).await {
        Ok(mark) => mark.unwrap_or(0),
        Err(e) => return svc.errors.warn("reading the sweep's watermark", &e),
    };
    let to = svc.store.now_ms() - quiet;
    let clips = svc.config.data.join("clips");
    for _ in 0..SWEEP_BATCHES {
        let ended = match svc.store.ended_attempts(from, to, SWEEP_BATCH).await {
            Ok(ended) => ended,
            Err(e) => return svc.errors.warn("listing ended attempts", &e),
        };
        for a in &ended {
            for name in attempt_files(&a.job, a.attempt) {
                let path = clips.join(&name);
                if a.kept.iter().any(|k| std::path::Path::new(k) == path) {
                    continue;
                }
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(file = %name, error = %e, "could not remove a stale clip");
                    }
                    _ => {}
                }
            }
        }
        let full = ended.len() == SWEEP_BATCH as usize;
        // Past the last attempt read (attempts ending in the same millisecond
        // as a full batch's last are read again: removing twice is harmless).
        from = match ended.last() {
            Some(last) if full => last.ended_at_ms.max(from + i64::from(last.ended_at_ms == from)),
            _ => to,
        };
        if let Err(e) = svc.store.set_mark(SWEEP_MARK, from).await {
            return svc.errors.warn("moving the sweep's watermark", &e);
        }
        if !full {
            break;
        }
    }
}

/// The sweep's watermark in the store: attempts that ended before it are swept.
const SWEEP_MARK: &str = "sweep";
/// Attempts read per batch, and batches per sweep (the rest wait for the next).
const SWEEP_BATCH: u32 = 500;
const SWEEP_BATCHES: usize = 20;

/// Removes the segments of jobs that ended (a join that died after settling,
/// a job dead-lettered with some ranges done), then forgets them.
async fn sweep_ended_segments(svc: &Service) {
    let segments = match svc.store.segments().await {
        Ok(s) => s,
        Err(e) => return svc.errors.warn("listing segments", &e),
    };
    let mut ended: Vec<&JobId> = Vec::new();
    for s in segments.iter().filter(|s| s.job_state.is_final()) {
        match std::fs::remove_file(&s.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %s.path, error = %e, "could not remove an ended job's segment");
            }
            _ if ended.last() != Some(&&s.job) => ended.push(&s.job),
            _ => {}
        }
    }
    for job in ended {
        if let Err(e) = svc.store.forget_segments(job).await {
            svc.errors.warn("forgetting an ended job's segments", &e);
        }
    }
}

/// Every file an attempt may leave in the clips directory: its clip and
/// sidecar, or its segment, each finished or `.partial`.
fn attempt_files(job: &JobId, attempt: u32) -> [String; 6] {
    ["avi", "json", "seg", "avi.partial", "json.partial", "seg.partial"].map(|ext| format!("{job}.a{attempt}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempts_files_are_named_by_its_job_and_number() {
        let names = attempt_files(&JobId::new("j_0123456789abcdef"), 3);
        assert_eq!(names[0], "j_0123456789abcdef.a3.avi");
        assert_eq!(names[5], "j_0123456789abcdef.a3.seg.partial");
    }
}
