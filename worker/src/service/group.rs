//! Grouping: running jobs that share a template, a lane and a frame size
//! render frame by frame in one GPU submission.
//!
//! A claimed job becomes a [`Member`] and [`Groups::join`]s an open group of its
//! template, lane and size that has room (fewer than `group_max` members), or starts a
//! new one on a blocking thread. Groups batch continuously: a member joins at
//! the next frame boundary and leaves when its clip ends, so a steady queue keeps
//! groups full even though slots free up one at a time. Every round records the
//! next frame of each member into one command encoder and submits it once; each
//! member's renderer carries its own timestamp queries, so every job is metered
//! for its own passes, to the nanosecond, whoever shares its submission. Where
//! passes are timed on the host (software adapters), a submission cannot be
//! split between jobs, so `group_max` is 1 there.
//!
//! A GPU error in one member's commands ends that member's attempt only: each
//! member's frame is a command buffer of its own, finished inside its own
//! error scopes, and the others' buffers are submitted without it
//! ([`crate::gpu::scope::submit_shared`], which also says what happens when
//! the shared submit itself fails).
//!
//! Lanes never share a group: an urgent job's frames do not wait for bulk
//! frames; nor do sizes: a small job's frames do not wait for a 4K job's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::gpu::scope::submit_shared;

use super::attempt::frames::{gpu, ActiveJob, SpareRenderers, Step};
use super::attempt::{AttemptError, Member};
use super::Service;

/// A group's members waiting to join and how many it holds.
#[derive(Debug, Default)]
struct Inbox {
    joining: Vec<Member>,
    members: usize,
    closed: bool,
    /// The job whose next chunk the group waits for, holding its ring, while
    /// it has no member.
    awaits: Option<String>,
}

/// A group's inbox, and the signal that a member joined (a group with no
/// member waits on it while it keeps a spare ring).
#[derive(Debug, Default)]
struct GroupCell {
    inbox: Mutex<Inbox>,
    joined: Condvar,
}

type Group = Arc<GroupCell>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The open groups, by template, lane and size.
#[derive(Debug)]
pub struct Groups {
    max: AtomicUsize,
    open: Mutex<HashMap<String, Vec<Group>>>,
}

impl Groups {
    pub fn new(max: usize) -> Self {
        Self { max: AtomicUsize::new(max.max(1)), open: Mutex::default() }
    }

    /// Most jobs one submission holds.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Changes the group size for jobs claimed from now on (benches compare
    /// with and without grouping in one run). Callers keep it at 1 where passes
    /// are timed on the host.
    pub fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Ordering::Relaxed);
    }

    /// Hands `member` to an open group of its template, lane and size, or starts one.
    /// Must be called within the Tokio runtime.
    pub fn join(&self, svc: &Arc<Service>, member: Member) {
        // Members of a group wait for each other's frames every round: a 720p
        // job must not wait for a 4K job's frames, so sizes never share one.
        let key = format!(
            "{}|{}|{}x{}",
            member.claimed.job.template, member.claimed.job.lane, member.spec.width, member.spec.height
        );
        let max = self.max();
        let job = member.claimed.job.id.to_string();
        let mut open = lock(&self.open);
        let groups = open.entry(key.clone()).or_default();
        // The group holding the job's ring first, then one that is rendering
        // (so jobs batch), then one waiting for another job's next chunk.
        let rank = |inbox: &Inbox| match &inbox.awaits {
            Some(j) if *j == job => 0,
            _ if inbox.members > 0 => 1,
            _ => 2,
        };
        let best = groups
            .iter()
            .filter_map(|g| {
                let inbox = lock(&g.inbox);
                (!inbox.closed && inbox.members < max).then(|| (rank(&inbox), g))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, g)| g.clone());
        if let Some(group) = best {
            let mut inbox = lock(&group.inbox);
            inbox.members += 1;
            inbox.awaits = None;
            inbox.joining.push(member);
            group.joined.notify_one();
            return;
        }
        let inbox = Inbox { joining: vec![member], members: 1, closed: false, awaits: None };
        let group: Group = Arc::new(GroupCell { inbox: Mutex::new(inbox), joined: Condvar::new() });
        groups.push(group.clone());
        drop(open);
        let (svc, rt) = (svc.clone(), Handle::current());
        tokio::task::spawn_blocking(move || run_group(&svc, &key, &group, &rt));
    }

    /// Ends `group` unless a member is waiting to join it; returns whether it ended.
    fn close_if_idle(&self, key: &str, group: &Group) -> bool {
        let mut open = lock(&self.open);
        let mut inbox = lock(&group.inbox);
        if !inbox.joining.is_empty() {
            return false;
        }
        inbox.closed = true;
        drop(inbox);
        forget(&mut open, key, group);
        true
    }
}

/// Takes a closed group out of the open list.
fn forget(open: &mut HashMap<String, Vec<Group>>, key: &str, group: &Group) {
    if let Some(list) = open.get_mut(key) {
        list.retain(|g| !Arc::ptr_eq(g, group));
        if list.is_empty() {
            open.remove(key);
        }
    }
}

/// Closes a group however its thread ends; members still waiting to join are
/// dropped, which their attempts see as a failed (retried) attempt.
struct CloseOnDrop<'a> {
    groups: &'a Groups,
    key: &'a str,
    group: &'a Group,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        let mut open = lock(&self.groups.open);
        let stranded = {
            let mut inbox = lock(&self.group.inbox);
            inbox.closed = true;
            std::mem::take(&mut inbox.joining)
        };
        forget(&mut open, self.key, self.group);
        drop(open);
        drop(stranded);
    }
}

/// The group's thread: admits joiners, renders one frame of every member per
/// round, and ends members whose clips are done, cancelled or failed.
fn run_group(svc: &Arc<Service>, key: &str, group: &Group, rt: &Handle) {
    let _close = CloseOnDrop { groups: &svc.groups, key, group };
    let mut active: Vec<ActiveJob<'_>> = Vec::new();
    let mut spares = SpareRenderers::default();
    loop {
        let joining = std::mem::take(&mut lock(&group.inbox).joining);
        let before = active.len() + joining.len();
        active.extend(joining.into_iter().filter_map(|m| ActiveJob::start(svc, m, rt, &mut spares)));
        if !active.is_empty() {
            active = round(svc, active, rt, &mut spares);
        }
        let left = before - active.len();
        lock(&group.inbox).members -= left;
        if active.is_empty() {
            // A spare ring waits a while for its job's next chunk.
            let member_came = spares.job().is_some_and(|job| await_member(svc, group, job));
            if !member_came && svc.groups.close_if_idle(key, group) {
                return;
            }
        }
    }
}

/// Waits up to `--spare-ring-linger-ms` for a member to join a group that
/// has none and keeps `job`'s ring for its next chunk (which
/// [`Groups::join`] sends here first); returns whether one did. A draining
/// worker does not wait.
fn await_member(svc: &Service, group: &GroupCell, job: &str) -> bool {
    let deadline = Instant::now() + svc.config.spare_ring_linger;
    let mut inbox = lock(&group.inbox);
    inbox.awaits = Some(job.to_string());
    loop {
        if !inbox.joining.is_empty() {
            inbox.awaits = None;
            return true;
        }
        let now = Instant::now();
        if svc.shutting_down() || now >= deadline {
            inbox.awaits = None;
            return false;
        }
        // Wakes at least every 100 ms to see a drain begin.
        let wait = (deadline - now).min(Duration::from_millis(100));
        inbox = group.joined.wait_timeout(inbox, wait).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// One frame of every member; returns the members still rendering.
fn round<'s>(
    svc: &'s Arc<Service>,
    active: Vec<ActiveJob<'s>>,
    rt: &Handle,
    spares: &mut SpareRenderers<'s>,
) -> Vec<ActiveJob<'s>> {
    let mut running = Vec::with_capacity(active.len());
    for job in active {
        match job.before_frame(svc) {
            Step::Continue(job) => running.push(job),
            Step::Complete(job) => job.finish(svc, rt, spares),
            Step::Ended(job, rendered) => job.end(rt, rendered),
        }
    }
    if running.is_empty() {
        return running;
    }
    let results = render_round(svc, &mut running, rt);
    let mut still = Vec::with_capacity(running.len());
    for (job, result) in running.into_iter().zip(results) {
        match result {
            Ok(()) => still.push(job),
            Err(e) => job.end(rt, Err(e)),
        }
    }
    still
}

/// One step of every job's frame loop. Where passes are timed on the host,
/// each job renders its next frame alone and accepts it (a group holds one
/// job there). Elsewhere every job with a free slot in its ring records its
/// next frame, all into one submission; then every job whose ring is full (or
/// that takes no more frames) reads back its oldest frame and accepts it, on
/// this thread, in its own error scopes. So with two frames in flight the GPU
/// renders this round's frames while the host reads back, gates, writes and
/// meters the last round's. Entropy coding runs on the GPU, so what is left
/// for the host per frame (a copy out of a mapped buffer, the JFIF headers,
/// the mux and the meter) is too little to be worth a thread; `--entropy cpu`
/// codes each frame on every core already.
fn render_round(svc: &Service, jobs: &mut [ActiveJob<'_>], rt: &Handle) -> Vec<Result<(), AttemptError>> {
    let mut results: Vec<Result<(), AttemptError>> = jobs.iter().map(|_| Ok(())).collect();
    let mut taking: Vec<(usize, &mut ActiveJob<'_>)> = Vec::new();
    for (i, job) in jobs.iter_mut().enumerate() {
        if !job.takes_frame() {
            continue;
        }
        if job.records() {
            taking.push((i, job));
        } else {
            svc.svc_metrics.submission_jobs.observe(1.0);
            results[i] = job.render_alone(svc, rt);
        }
    }
    if !taking.is_empty() {
        let shared = submit_shared(&svc.ctx, &mut taking, |(_, job)| job.record());
        for &n in &shared.submissions {
            svc.svc_metrics.submission_jobs.observe(n as f64);
        }
        for ((i, job), submitted) in taking.iter_mut().zip(shared.jobs) {
            match submitted {
                Ok(submission) => job.submitted(&submission),
                Err(e) => results[*i] = Err(gpu(e)),
            }
        }
    }
    for (job, result) in jobs.iter_mut().zip(&mut results) {
        if result.is_ok() && job.records() && job.collects() {
            *result = job.collect(svc, rt);
        }
    }
    results
}
