//! Upgrading a data directory of the single-node releases: `fixtures/legacy-v0.db`
//! was written by the release before this store (commit 9fea671): tenant `acme`
//! (tier mid) with an API key, job `j_1e070fe9d3048421` succeeded and
//! downloaded, job `j_e1623a0163828da4` left `running` by a `kill -9` two
//! frames in. Opening it migrates it in place; nothing recorded is lost.

use tessera_metering::{EventKind, Lane, Pass};
use tessera_store::{JobId, JobState, Store, StoreUrl, WorkerId};

const KEY_HASH: &str = "5100dc5360f3d0e2f095d125db77f9a92bb9ec80a3c127ae1f7600366efac4e7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_data_directory_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-v0.db");
    std::fs::copy(&fixture, dir.path().join("tessera.db")).unwrap();
    let url = StoreUrl::in_data_dir(dir.path());
    let store = Store::open(&url).await.unwrap();
    let acme = store.tenant("acme").await.unwrap().expect("the tenant survived");
    assert_eq!(acme.tier, "mid");
    assert_eq!(store.tenant_by_key_hash(KEY_HASH).await.unwrap(), Some(acme.clone()), "its API key still works");

    let done = store.job(&JobId::new("j_1e070fe9d3048421")).await.unwrap().unwrap();
    assert_eq!((done.state, done.attempts, done.failures, done.interruptions), (JobState::Succeeded, 1, 0, 0));
    assert_eq!((done.lane, done.fps, done.frames_done, done.max_failures), (Lane::Standard, 24, 6, 6));
    assert_eq!(done.idempotency_key.as_deref(), Some("legacy-a"));
    assert!(done.output.is_some(), "its clip is still on record");

    // The job a killed worker left running: requeued by any reaper, as an
    // interruption (not a failure), then claimed again as attempt 2.
    let left = JobId::new("j_e1623a0163828da4");
    let running = store.job(&left).await.unwrap().unwrap();
    assert_eq!((running.state, running.lane), (JobState::Running, Lane::Bulk));
    let me = WorkerId::random();
    let reaped = store.reap(&me, 10).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(
        (reaped[0].job.id.clone(), reaped[0].job.state, reaped[0].job.interruptions),
        (left.clone(), JobState::Queued, 1)
    );
    let claimed = store.claim(&me, 60_000).await.unwrap().unwrap();
    assert_eq!((claimed.job.id, claimed.lease.attempt), (left.clone(), 2));

    // The ledger: every event still there and readable, GPU events as one-frame windows.
    let events = store.events(&Default::default()).await.unwrap();
    assert_eq!(events.len(), 25, "24 recorded events and the reaper's attempt end");
    assert!(events.iter().filter(|e| e.kind == EventKind::Gpu).all(|e| e.frames == 1));
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::Output).count(), 1);
    assert!(store.has_output(&done.id).await.unwrap());
    assert!(store.job_gpu_ns(&done.id).await.unwrap()[&Pass::Render] > 0);
    // Appends stay append-only after the upgrade.
    let (update, delete) = store.tamper_with_ledger().await.unwrap();
    assert!(update.is_some() && delete.is_some());
    // Opening it again applies nothing twice.
    drop(store);
    let again = Store::open(&url).await.unwrap();
    assert_eq!(again.events(&Default::default()).await.unwrap().len(), 25);
}
