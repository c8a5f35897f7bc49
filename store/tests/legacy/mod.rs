//! Upgrading a data directory of the single-node releases. `fixtures/legacy-v0.db`
//! was written by the release before this store (commit 9fea671), one worker
//! with one job at a time:
//! - tenant `acme` (tier mid) with an API key;
//! - job `j_b49b8daf61f740be` succeeded and downloaded;
//! - job `j_375d0efb03d06087` was running when the worker was `kill -9`ed; the
//!   restarted worker recorded "attempt 1: worker lost" (a failure, then) and
//!   was killed again during attempt 2, leaving it `running`;
//! - job `j_c4f5aeb7a6fb7b78` succeeded;
//! - job `j_59ec6c70db543fde` queued behind them; its `cancel_requested` was
//!   then set by hand to the state the old release's cancel race left behind
//!   (queued, cancel requested, never claimed again, reservation held).
//!
//! Opening it migrates it in place; nothing recorded is lost.

use std::sync::Arc;

use rust_decimal::Decimal;
use tessera_metering::event::ManualClock;
use tessera_metering::{EventKind, Lane, Pass};
use tessera_store::{JobId, JobState, Store, StoreUrl, WorkerId};

const KEY_HASH: &str = "9b4e3c4d2e278212f0fc6ac8c7d5ceb5f1390425fbdb105a3aeb6237eaea398c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_data_directory_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-v0.db");
    std::fs::copy(&fixture, dir.path().join("tessera.db")).unwrap();
    let url = StoreUrl::in_data_dir(dir.path());
    // The fixture's day, a few minutes after the last worker died: its leases
    // have expired, and "this month" is the fixture's month whatever day the
    // test runs on.
    let clock = Arc::new(ManualClock::at("2026-11-26T15:00:00Z"));
    let store = Store::open_with_clock(&url, clock.clone()).await.unwrap();
    let acme = store.tenant("acme").await.unwrap().expect("the tenant survived");
    assert_eq!(acme.tier, "mid");
    assert_eq!(store.tenant_by_key_hash(KEY_HASH).await.unwrap(), Some(acme.clone()), "its API key still works");

    let done = store.job(&JobId::new("j_b49b8daf61f740be")).await.unwrap().unwrap();
    assert_eq!((done.state, done.attempts, done.failures, done.interruptions), (JobState::Succeeded, 1, 0, 0));
    assert_eq!((done.lane, done.fps, done.frames_done, done.max_failures), (Lane::Standard, 24, 6, 6));
    assert_eq!(done.idempotency_key.as_deref(), Some("legacy-a"));
    assert!(done.output.is_some(), "its clip is still on record");

    // The old "worker lost" error is an interruption now, not a failure.
    let lost = JobId::new("j_375d0efb03d06087");
    let running = store.job(&lost).await.unwrap().unwrap();
    assert_eq!((running.state, running.lane, running.attempts), (JobState::Running, Lane::Bulk, 2));
    assert_eq!((running.failures, running.interruptions), (0, 1), "{:?}", running.errors);
    // The cancel the old release lost is honoured: cancelled, reservation released.
    let cancelled = store.job(&JobId::new("j_59ec6c70db543fde")).await.unwrap().unwrap();
    assert_eq!((cancelled.state, cancelled.attempts), (JobState::Cancelled, 0));
    assert!(cancelled.finished_at_ms.is_some());

    // The job a killed worker left running: requeued by any reaper as an
    // interruption, then claimed again as attempt 3; nothing else is claimable.
    let me = WorkerId::random();
    let reaped = store.reap(&me, &[], 10).await.unwrap();
    assert_eq!(reaped.len(), 1);
    let r = &reaped[0].job;
    assert_eq!((r.id.clone(), r.state, r.interruptions, r.failures), (lost.clone(), JobState::Queued, 2, 0));
    let claimed = store.claim(&me, 60_000).await.unwrap().unwrap();
    assert_eq!((claimed.job.id, claimed.lease.attempt), (lost.clone(), 3));
    assert!(store.claim(&me, 60_000).await.unwrap().is_none(), "a cancelled or finished job was claimed");

    // The ledger: every event still there and readable, GPU events as
    // one-frame windows; only the still-running job holds a reservation.
    let events = store.events(&Default::default()).await.unwrap();
    assert_eq!(events.len(), 100, "99 recorded events and the reaper's attempt end");
    assert!(events.iter().filter(|e| e.kind == EventKind::Gpu).all(|e| e.frames == 1));
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::Output).count(), 2);
    assert!(store.has_output(&done.id).await.unwrap());
    assert!(store.job_gpu_ns(&done.id).await.unwrap()[&Pass::Render] > 0);
    // Only the 6 s clip in flight is reserved, against the month it was admitted in.
    assert_eq!(store.month_usage(&acme.id).await.unwrap().reserved_seconds, Decimal::from(6));
    // December starts: the job admitted in November still counts against
    // November, and December's cap is untouched.
    clock.set(month_start("2026-12-01T00:00:00Z"));
    assert_eq!(store.month_usage(&acme.id).await.unwrap().reserved_seconds, Decimal::ZERO);
    assert_eq!(store.month_usage_of(&acme.id, "2026-11").await.unwrap().reserved_seconds, Decimal::from(6));
    // Appends stay append-only after the upgrade.
    let (update, delete) = store.tamper_with_ledger().await.unwrap();
    assert!(update.is_some() && delete.is_some());
    // Opening it again applies nothing twice.
    drop(store);
    let again = Store::open_with_clock(&url, clock).await.unwrap();
    assert_eq!(again.events(&Default::default()).await.unwrap().len(), 100);
}

fn month_start(rfc3339: &str) -> i64 {
    tessera_metering::event::Clock::now_ms(&ManualClock::at(rfc3339))
}
