//! The fleet's periodic upkeep, done by one worker at a time (the store's
//! leadership lease decides which), in a task of its own beside the
//! scheduler's claim loop: storage metering (the store closes each storage
//! period into one event per tenant, from a watermark: see
//! `tessera_store::storage`), retention, and sweeping partial clips that no
//! running attempt owns.

use std::sync::Arc;
use std::time::Duration;

use tessera_store::{ChunkState, JobId};

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
/// output, once they are older than two leases: `JOB.aN.*.partial` of an
/// attempt whose worker was killed mid-write, and `JOB.aN.avi`/`.json` of an
/// attempt whose worker died between archiving and settling (or lost its lease
/// then). Files of a running attempt and of the job's output are kept.
async fn sweep_stale_files(svc: &Service) {
    sweep_ended_segments(svc).await;
    let Ok(dir) = std::fs::read_dir(svc.config.data.join("clips")) else { return };
    let quiet = svc.config.lease * 2;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((job, attempt)) = attempt_file(&name) else { continue };
        let old = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if old.is_none_or(|age| age < quiet) {
            continue;
        }
        let path = entry.path();
        let found = match svc.store.job(&job).await {
            Ok(Some(j)) => svc.store.chunks(&job).await.map(|c| Some((j, c))),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let keep = match found {
            Ok(Some((j, chunks))) => {
                let running = chunks.iter().any(|c| c.state == ChunkState::Running && c.attempt == attempt);
                let segment =
                    chunks.iter().filter_map(|c| c.segment.as_ref()).any(|s| std::path::Path::new(&s.path) == path);
                let output = j.output.as_ref().is_some_and(|o| {
                    [o.path.as_str(), o.metadata_path.as_str()].iter().any(|p| std::path::Path::new(p) == path)
                });
                running || segment || output
            }
            Ok(None) => false,
            Err(e) => return svc.errors.warn("sweeping stale clips", &e),
        };
        if !keep {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %name, error = %e, "could not remove a stale clip");
            }
        }
    }
}

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

/// The job and attempt of an attempt's file: `JOB.aN.avi`, `JOB.aN.json`,
/// `JOB.aN.seg` (a chunk's segment), or any of them with `.partial`.
fn attempt_file(name: &str) -> Option<(JobId, u32)> {
    let name = name.strip_suffix(".partial").unwrap_or(name);
    let stem =
        name.strip_suffix(".avi").or_else(|| name.strip_suffix(".json")).or_else(|| name.strip_suffix(".seg"))?;
    let (job, attempt) = stem.split_once(".a")?;
    Some((JobId::parse(job)?, attempt.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_name_their_attempt() {
        let (job, n) = attempt_file("j_0123456789abcdef.a3.avi.partial").unwrap();
        assert_eq!((job.as_str(), n), ("j_0123456789abcdef", 3));
        for name in [
            "j_0123456789abcdef.a3.json.partial",
            "j_0123456789abcdef.a3.avi",
            "j_0123456789abcdef.a3.json",
            "j_0123456789abcdef.a3.seg",
            "j_0123456789abcdef.a3.seg.partial",
        ] {
            assert_eq!(attempt_file(name).map(|(_, n)| n), Some(3), "{name}");
        }
        assert!(attempt_file("notes.a1.avi.partial").is_none());
        assert!(attempt_file("j_0123456789abcdef.a3.mp4").is_none());
    }
}
