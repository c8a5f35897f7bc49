//! The store's conformance suite: every test below runs once against SQLite
//! (`sqlite::`) and once against PostgreSQL (`postgres::`, on a database of its
//! own on the server `TESSERA_TEST_POSTGRES` names; skipped loudly without it,
//! a failure in CI). A new backend passes this suite before it is used.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use tessera_metering::event::Clock;
use tessera_metering::tiers::AdmissionError;
use tessera_metering::{
    AdmittedQuote, AttemptRef, EventKind, Lane, Outcome, Pass, PriceBook, QuoteRequest, TimingSource, UsageEvent,
};
use tessera_store::{
    ArchivedOutput, AttemptEnd, Delivered, JobFilter, JobId, JobState, Lease, NewJob, Reservation, Store, StoreError,
    Submitted, Tenant, UsageTotals, WorkerId, WorkerInfo,
};

mod legacy;

/// Declares each test once per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = Store::open(&StoreUrl::in_data_dir(dir.path())).await.unwrap();
                    super::$name(store).await;
                }
            )*
            use tessera_store::{Store, StoreUrl};
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(server) = tessera_store::testing::postgres_server() else { return };
                    let db = tessera_store::testing::TestDatabase::create(&server).await.unwrap();
                    let store = Store::open(&StoreUrl::parse(db.url()).unwrap()).await.unwrap();
                    super::$name(store).await;
                    drop(db);
                }
            )*
            use tessera_store::{Store, StoreUrl};
        }
    };
}

/// Declares each test once per backend, on a store whose clock the test sets.
macro_rules! conformance_clocked {
    ($($name:ident),* $(,)?) => {
        mod sqlite_clocked {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let clock = std::sync::Arc::new(ManualClock::new(0));
                    let url = StoreUrl::in_data_dir(dir.path());
                    let store = Store::open_with_clock(&url, clock.clone()).await.unwrap();
                    super::$name(store, clock).await;
                }
            )*
            use tessera_metering::event::ManualClock;
            use tessera_store::{Store, StoreUrl};
        }
        mod postgres_clocked {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(server) = tessera_store::testing::postgres_server() else { return };
                    let db = tessera_store::testing::TestDatabase::create(&server).await.unwrap();
                    let clock = std::sync::Arc::new(ManualClock::new(0));
                    let url = StoreUrl::parse(db.url()).unwrap();
                    let store = Store::open_with_clock(&url, clock.clone()).await.unwrap();
                    super::$name(store, clock).await;
                    drop(db);
                }
            )*
            use tessera_metering::event::ManualClock;
            use tessera_store::{Store, StoreUrl};
        }
    };
}

conformance_clocked!(
    a_job_admitted_in_a_months_last_second_counts_in_that_month,
    a_reaped_attempt_appends_nothing_behind_the_reaper,
    storage_is_billed_for_the_time_each_clip_is_kept,
    queue_order_is_lane_then_rank_and_aging_wins,
    a_stale_attempt_is_fenced_out,
    failures_back_off_then_dead_letter,
    the_reaper_requeues_expired_leases_of_other_workers,
    transactions_roll_back_after_an_injected_error,
    workers_register_and_one_leads_each_task,
    listings_pages_and_depths,
    closed_months_roll_up_and_every_total_stays_exact,
);

conformance!(
    tenants_and_keys,
    a_job_runs_from_submission_to_one_bill,
    idempotency_keys_give_one_job_and_409_on_another_body,
    concurrent_admissions_never_exceed_a_cap,
    concurrent_claims_take_each_job_once,
    interruptions_spend_their_own_budget,
    cancel_a_queued_and_a_running_job,
    the_ledger_records_each_event_exactly_once,
    renders_outside_the_queue_reserve_and_bill_once,
    a_chunked_job_spreads_over_workers_and_joins_once,
    a_chunked_job_cancels_and_dies_as_one,
    a_clip_spreads_over_idle_workers,
);

fn book() -> PriceBook {
    PriceBook::default_book()
}

async fn tenant(store: &Store, name: &str, tier: &str) -> Tenant {
    store.create_tenant(&book(), name, tier, None).await.unwrap()
}

fn new_job(t: &Tenant, lane: Lane, key: Option<&str>, frames: u32) -> NewJob {
    NewJob {
        id: JobId::random(),
        tenant_id: t.id.clone(),
        idempotency_key: key.map(Into::into),
        body_hash: "body-1".into(),
        spec_json: "{}".into(),
        template: "orbit@2".into(),
        lane,
        frames_total: frames,
        fps: 24,
        price_micros: 10_000,
        quote: Some(admitted(frames)),
        est_cost_ms: 0,
        max_wait_ms: 3_600_000,
        max_failures: 3,
        max_interruptions: 3,
        chunk_frames: 0,
    }
}

/// The quote a job of `frames` frames at 24 fps is admitted with: 0.01 for the lot.
fn admitted(frames: u32) -> AdmittedQuote {
    AdmittedQuote {
        currency: "USD".into(),
        price: Decimal::new(1, 2),
        rate_per_output_second: Decimal::new(24, 2) / Decimal::from(frames),
        frames,
        fps: 24,
        resolution_bucket: "720p".into(),
        book: "0123456789abcdef".into(),
        line_items: vec![],
    }
}

fn request(frames: u32) -> QuoteRequest {
    QuoteRequest {
        width: 1280,
        height: 720,
        fps: 24,
        output_seconds: Decimal::from(frames) / Decimal::from(24),
        advanced: false,
        addons: vec![],
    }
}

async fn submit(store: &Store, t: &Tenant, job: &NewJob) -> Submitted {
    store.submit(&book(), t, job, &request(job.frames_total), Decimal::new(job.price_micros, 6)).await.unwrap()
}

async fn queued(store: &Store, t: &Tenant, lane: Lane) -> JobId {
    let job = new_job(t, lane, None, 24);
    match submit(store, t, &job).await {
        Submitted::New { job, .. } => job.id,
        other => panic!("not admitted: {other:?}"),
    }
}

fn attempt(t: &Tenant, lease: &Lease) -> AttemptRef {
    AttemptRef {
        tenant_id: t.id.to_string(),
        tier: t.tier.clone(),
        job_id: lease.job.to_string(),
        attempt: lease.attempt,
        chunk: None,
    }
}

fn archived(job: &JobId) -> ArchivedOutput {
    ArchivedOutput {
        path: format!("clips/{job}.avi"),
        bytes: 100,
        sha256: "ab".into(),
        metadata_path: format!("clips/{job}.json"),
    }
}

/// The events of a successful attempt: GPU time, its end, the billable output.
fn success_events(t: &Tenant, lease: &Lease, frames: u32) -> Vec<UsageEvent> {
    let a = attempt(t, lease);
    vec![
        UsageEvent::gpu(&a, Pass::Render, 0, frames, 5_000, TimingSource::Gpu),
        UsageEvent::attempt_end(&a, Outcome::Succeeded),
        UsageEvent::output(&a, frames, 24, "720p", "general", Decimal::new(1, 2)),
    ]
}

/// The leases of a job's running chunks.
async fn leases(store: &Store, job: &JobId) -> Vec<Lease> {
    store.chunks(job).await.unwrap().iter().filter_map(|c| c.lease()).collect()
}

fn worker() -> WorkerId {
    WorkerId::random()
}

async fn outputs_of(store: &Store, job: &JobId) -> Vec<UsageEvent> {
    let all = store.events(&Default::default()).await.unwrap();
    all.into_iter().filter(|e| e.job_id == job.as_str() && e.kind == EventKind::Output).collect()
}

async fn tenants_and_keys(store: Store) {
    let a = store.create_tenant(&book(), "acme", "mid", Some("hash-a")).await.unwrap();
    assert!(a.id.as_str().starts_with("t_"));
    let dup = store.create_tenant(&book(), "acme", "short", None).await.unwrap_err();
    assert!(matches!(dup, StoreError::TenantExists(ref n) if n == "acme"), "{dup}");
    let bad = store.create_tenant(&book(), "b", "platinum", None).await.unwrap_err();
    assert!(matches!(bad, StoreError::UnknownTier { .. }) && bad.to_string().contains("enterprise"), "{bad}");
    let b = tenant(&store, "globex", "enterprise").await;
    store.set_api_key(&b.id, "hash-b").await.unwrap();
    assert_eq!(store.tenant_by_key_hash("hash-a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.tenant_by_key_hash("hash-b").await.unwrap(), Some(b.clone()));
    assert_eq!(store.tenant_by_key_hash("nope").await.unwrap(), None);
    assert_eq!(store.tenant("acme").await.unwrap(), Some(a.clone()));
    assert_eq!(store.tenant(a.id.as_str()).await.unwrap(), Some(a.clone()));
    assert_eq!(store.tenants().await.unwrap(), vec![a, b]);
    let missing = store.set_api_key(&tessera_store::TenantId::random(), "h").await.unwrap_err();
    assert!(matches!(missing, StoreError::UnknownTenant(_)), "{missing}");
    store.ping().await.unwrap();
}

async fn a_job_runs_from_submission_to_one_bill(store: Store) {
    let t = tenant(&store, "acme", "mid").await;
    let job = new_job(&t, Lane::Standard, Some("order-1"), 48);
    let Submitted::New { job: fresh, warnings } = submit(&store, &t, &job).await else { panic!("not new") };
    assert!(warnings.is_empty());
    assert_eq!((fresh.state, fresh.attempts, fresh.lane), (JobState::Queued, 0, Lane::Standard));
    assert_eq!(fresh.quote, Some(admitted(48)), "the quote is stored as admitted");
    assert_eq!(store.month_usage(&t.id).await.unwrap().reserved_seconds, Decimal::from(2));

    let w = worker();
    let claimed = store.claim(&w, 10_000).await.unwrap().expect("a job to claim");
    assert_eq!(claimed.job.id, job.id);
    assert_eq!(claimed.job.quote, job.quote, "the claimed job carries its quote");
    assert_eq!(claimed.lease, Lease { job: job.id.clone(), chunk: 0, attempt: 1, owner: w.clone() });
    assert_eq!((claimed.job.state, claimed.job.worker.as_ref()), (JobState::Running, Some(&w)));
    assert!(store.claim(&w, 10_000).await.unwrap().is_none(), "one job, claimed twice");

    assert!(!store.heartbeat(&claimed.lease, 10_000, 20).await.unwrap());
    assert_eq!(store.job(&job.id).await.unwrap().unwrap().frames_done, 20);

    // The bill is the quote: a worker pricing from a changed price book (0.02
    // for the same clip) is refused, and nothing of its settlement persists.
    let mut events = success_events(&t, &claimed.lease, 48);
    events[2].amount_micros = 20_000;
    let refused = store.settle(&claimed.lease, &AttemptEnd::Succeeded(archived(&job.id)), &events).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::NotTheQuote { quoted_micros: 10_000, billed_micros: 20_000, .. }),
        "{refused}"
    );
    assert!(!store.has_output(&job.id).await.unwrap());
    assert_eq!(store.job(&job.id).await.unwrap().unwrap().state, JobState::Running);
    let events = success_events(&t, &claimed.lease, 48);
    let settled = store.settle(&claimed.lease, &AttemptEnd::Succeeded(archived(&job.id)), &events).await.unwrap();
    assert_eq!(settled.inserted, vec![true, true, true]);
    let done = settled.job;
    assert_eq!((done.state, done.frames_done), (JobState::Succeeded, 48));
    assert_eq!(leases(&store, &job.id).await, vec![]);
    assert_eq!(done.output, Some(archived(&job.id)));
    assert_eq!(done.worker, Some(w.clone()), "the job names the worker that ran it");
    assert!(done.finished_at_ms.is_some());
    // Billed once: the output counts as used, the reservation is gone.
    let usage = store.month_usage(&t.id).await.unwrap();
    assert_eq!((usage.used_seconds, usage.reserved_seconds), (Decimal::from(2), Decimal::ZERO));
    assert_eq!(outputs_of(&store, &job.id).await.len(), 1);
    assert!(store.has_output(&job.id).await.unwrap());
    assert_eq!(store.billed_output(&job.id).await.unwrap(), Some((48, 10_000)));
    assert_eq!(store.job_gpu_ns(&job.id).await.unwrap().get(&Pass::Render), Some(&5_000));
    // The tenant's totals, summed by the store, agree with the events.
    store.append(&[UsageEvent::egress(&attempt(&t, &claimed.lease), "w_a", 1, 700)]).await.unwrap();
    let totals = store.usage_totals(&t.id).await.unwrap();
    assert_eq!(totals.gpu_ns.get(&Pass::Render), Some(&5_000));
    assert_eq!(
        (totals.output_seconds(), totals.charged_micros(), totals.egress_bytes),
        (Decimal::from(2), 10_000, 700)
    );
    assert_eq!(store.usage_totals(&tessera_store::TenantId::random()).await.unwrap(), Default::default());
    // A tenant's events, by name or id alike (read by its index); another's, none.
    let other = tenant(&store, "globex", "mid").await;
    let ours: Vec<UsageEvent> =
        store.events(&Default::default()).await.unwrap().into_iter().filter(|e| e.tenant_id == t.id.as_str()).collect();
    assert!(!ours.is_empty());
    for name in [t.name.clone(), t.id.to_string()] {
        let f = tessera_store::EventFilter { tenant: Some(name), ..Default::default() };
        assert_eq!(store.events(&f).await.unwrap(), ours);
    }
    for name in [other.name.clone(), "nobody".to_string()] {
        let f = tessera_store::EventFilter { tenant: Some(name), ..Default::default() };
        assert!(store.events(&f).await.unwrap().is_empty());
    }
    // A settled lease is spent.
    let again = store.heartbeat(&claimed.lease, 10_000, 1).await.unwrap_err();
    assert!(matches!(again, StoreError::LeaseLost(_)), "{again}");
    // Settling may not bill for an attempt that delivered nothing, nor record
    // another attempt's events.
    let w2 = worker();
    let other = queued(&store, &t, Lane::Bulk).await;
    let c = store.claim(&w2, 10_000).await.unwrap().unwrap();
    assert_eq!(c.job.id, other);
    let fail = AttemptEnd::Failed { error: "x".into(), retry_in_ms: 0, retryable: true };
    let refused = store.settle(&c.lease, &fail, &success_events(&t, &c.lease, 24)).await.unwrap_err();
    assert!(refused.to_string().contains("does not belong"), "{refused}");
    let foreign = success_events(&t, &claimed.lease, 48);
    assert!(store.settle(&c.lease, &fail, &foreign[..1]).await.is_err());
}

async fn idempotency_keys_give_one_job_and_409_on_another_body(store: Store) {
    let t = tenant(&store, "acme", "mid").await;
    let first = new_job(&t, Lane::Standard, Some("k"), 24);
    let Submitted::New { job, .. } = submit(&store, &t, &first).await else { panic!() };
    // The same key and body (even under another id) is the same job.
    let again = NewJob { id: JobId::random(), ..first.clone() };
    assert_eq!(submit(&store, &t, &again).await, Submitted::Existing(job.clone()));
    let other_body = NewJob { id: JobId::random(), body_hash: "body-2".into(), ..first.clone() };
    assert_eq!(submit(&store, &t, &other_body).await, Submitted::Conflict(job.clone()));
    // Another tenant's key space is its own.
    let u = tenant(&store, "globex", "mid").await;
    assert!(matches!(submit(&store, &u, &new_job(&u, Lane::Standard, Some("k"), 24)).await, Submitted::New { .. }));
    // Sixteen racing submissions with one new key: one job, one reservation.
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move {
                let job = NewJob { id: JobId::random(), ..new_job(&t, Lane::Bulk, Some("race"), 24) };
                submit(&store, &t, &job).await
            })
        })
        .collect();
    let mut new = 0;
    for r in racers {
        if matches!(r.await.unwrap(), Submitted::New { .. }) {
            new += 1;
        }
    }
    assert_eq!(new, 1, "one key, {new} jobs");
    let mine = store.jobs(&t.id, &JobFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(mine.len(), 2);
    assert_eq!(store.month_usage(&t.id).await.unwrap().reserved_seconds, Decimal::from(2), "reservations leaked");
}

async fn concurrent_admissions_never_exceed_a_cap(store: Store) {
    // The short tier caps output at 600 s a month: 40 jobs of 30 s at once admit exactly 20.
    let t = tenant(&store, "racer", "short").await;
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move {
                let job = new_job(&t, Lane::Standard, None, 720);
                store.submit(&book(), &t, &job, &request(720), Decimal::new(36, 2)).await
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Submitted::New { .. }) => admitted += 1,
            Err(StoreError::Admission(refusal)) => match *refusal {
                AdmissionError::OutputCap { ref tier, cap, .. } => {
                    assert_eq!((tier.as_str(), cap), ("short", Decimal::from(600)));
                }
                other => panic!("unexpected refusal: {other}"),
            },
            other => panic!("unexpected result: {other:?}"),
        }
    }
    assert_eq!(admitted, 20);
    let usage = store.month_usage(&t.id).await.unwrap();
    assert_eq!(usage.reserved_seconds, Decimal::from(600), "refused admissions left reservations behind");
    // The feature map is checked first: the urgent lane is not in the short tier.
    let urgent = new_job(&t, Lane::Urgent, None, 24);
    let e = store.submit(&book(), &t, &urgent, &request(24), Decimal::ONE).await.unwrap_err();
    assert!(matches!(e, StoreError::Admission(ref a) if matches!(**a, AdmissionError::Lane { .. })), "{e}");
    // A tier removed from the price book is a clear error, not a panic.
    let mut smaller = book();
    smaller.tiers.remove("short");
    let e = store.submit(&smaller, &t, &new_job(&t, Lane::Bulk, None, 24), &request(24), Decimal::ONE).await;
    assert!(matches!(e, Err(StoreError::UnknownTier { .. })), "{e:?}");
}

async fn concurrent_claims_take_each_job_once(store: Store) {
    let t = tenant(&store, "acme", "enterprise").await;
    let jobs: Vec<NewJob> = (0..60).map(|i| new_job(&t, Lane::ALL[i % 3], None, 24)).collect();
    store.enqueue_unchecked(&jobs, 0).await.unwrap();
    let claimers: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let w = worker();
                let mut mine = Vec::new();
                while let Some(c) = store.claim(&w, 60_000).await.unwrap() {
                    mine.push(c.job.id);
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!((all.len(), unique.len()), (60, 60), "a job was claimed twice or not at all");
}

async fn a_stale_attempt_is_fenced_out(store: Store, clock: Arc<tessera_metering::event::ManualClock>) {
    clock.set(at("2026-06-10T12:00:00Z"));
    let t = tenant(&store, "acme", "mid").await;
    let id = queued(&store, &t, Lane::Standard).await;
    let (paused, healthy) = (worker(), worker());
    let old = store.claim(&paused, 1).await.unwrap().unwrap().lease;
    clock.advance(20);
    // The paused worker's lease expired; another worker's reaper takes it over.
    let reaped = store.reap(&healthy, &[], 100).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].lease, old);
    let new = store.claim(&healthy, 60_000).await.unwrap().unwrap().lease;
    assert_eq!((new.job.clone(), new.attempt), (id.clone(), 2));
    // The paused worker wakes up: it can change nothing of attempt 2.
    for e in [
        store.heartbeat(&old, 60_000, 99).await.unwrap_err(),
        store.settle(&old, &AttemptEnd::Succeeded(archived(&id)), &success_events(&t, &old, 24)).await.unwrap_err(),
        store.settle(&old, &AttemptEnd::Cancelled { frames: 3, delivered: Delivered::Nothing }, &[]).await.unwrap_err(),
        store
            .settle(&old, &AttemptEnd::Failed { error: "late".into(), retry_in_ms: 0, retryable: true }, &[])
            .await
            .unwrap_err(),
        store.settle(&old, &AttemptEnd::Interrupted { reason: "late".into(), retry_in_ms: 0 }, &[]).await.unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::LeaseLost(ref l) if *l == old), "{e}");
    }
    let job = store.job(&id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts, job.frames_done), (JobState::Running, 2, 0));
    assert_eq!(leases(&store, &id).await, vec![new.clone()]);
    assert!(outputs_of(&store, &id).await.is_empty(), "the stale attempt billed the customer");
    // What it metered stays the operator's cost: its GPU events are recorded.
    let stale_gpu = UsageEvent::gpu(&attempt(&t, &old), Pass::Render, 0, 24, 7_000, TimingSource::Gpu);
    assert_eq!(store.append(std::slice::from_ref(&stale_gpu)).await.unwrap(), vec![true]);
    // Attempt 2 completes and bills once, from attempt 2.
    store.settle(&new, &AttemptEnd::Succeeded(archived(&id)), &success_events(&t, &new, 24)).await.unwrap();
    let outputs = outputs_of(&store, &id).await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].attempt, 2);
    let job = store.job(&id).await.unwrap().unwrap();
    assert_eq!((job.state, job.interruptions, job.failures), (JobState::Succeeded, 1, 0));
    assert!(job.errors[0].contains("lease expired"), "{:?}", job.errors);
}

async fn failures_back_off_then_dead_letter(store: Store, clock: Arc<tessera_metering::event::ManualClock>) {
    clock.set(at("2026-06-10T12:00:00Z"));
    let t = tenant(&store, "acme", "mid").await;
    let id = queued(&store, &t, Lane::Standard).await;
    let w = worker();
    let fail = |ms| AttemptEnd::Failed { error: "GPU: device lost".into(), retry_in_ms: ms, retryable: true };
    let lease = store.claim(&w, 60_000).await.unwrap().unwrap().lease;
    assert_eq!(lease.job, id);
    let end = UsageEvent::attempt_end(&attempt(&t, &lease), Outcome::Failed);
    let s = store.settle(&lease, &fail(300), &[end]).await.unwrap();
    assert_eq!((s.job.state, s.job.failures, s.job.attempts), (JobState::Queued, 1, 1));
    assert!(s.job.not_before_ms > store.now_ms() + 100);
    assert!(store.claim(&w, 60_000).await.unwrap().is_none(), "claimed during its backoff");
    clock.advance(350);
    let lease = store.claim(&w, 60_000).await.unwrap().expect("claimable after its backoff").lease;
    store.settle(&lease, &fail(0), &[]).await.unwrap();
    let lease = store.claim(&w, 60_000).await.unwrap().unwrap().lease;
    let s = store.settle(&lease, &fail(0), &[]).await.unwrap();
    assert_eq!((s.job.state, s.job.failures, s.job.attempts), (JobState::Dead, 3, 3));
    assert_eq!(s.job.errors.len(), 3);
    assert!(s.job.errors[2].starts_with("attempt 3: GPU: device lost"), "{:?}", s.job.errors);
    assert_eq!(
        store.month_usage(&t.id).await.unwrap().reserved_seconds,
        Decimal::ZERO,
        "a dead job keeps its reservation"
    );
    assert!(store.claim(&w, 60_000).await.unwrap().is_none());
    // An error no retry can fix dead-letters at once.
    let id = queued(&store, &t, Lane::Standard).await;
    let lease = store.claim(&w, 60_000).await.unwrap().unwrap().lease;
    let fatal = AttemptEnd::Failed { error: "stored spec is invalid".into(), retry_in_ms: 0, retryable: false };
    let s = store.settle(&lease, &fatal, &[]).await.unwrap();
    assert_eq!((s.job.id, s.job.state, s.job.attempts), (id, JobState::Dead, 1));
}

async fn interruptions_spend_their_own_budget(store: Store) {
    let t = tenant(&store, "acme", "mid").await;
    let id = queued(&store, &t, Lane::Standard).await;
    let w = worker();
    // A failure, then interruptions: the failure budget (3) is untouched by them.
    let lease = store.claim(&w, 60_000).await.unwrap().unwrap().lease;
    store
        .settle(&lease, &AttemptEnd::Failed { error: "boom".into(), retry_in_ms: 0, retryable: true }, &[])
        .await
        .unwrap();
    let drain = AttemptEnd::Interrupted { reason: "worker draining (SIGTERM)".into(), retry_in_ms: 0 };
    for n in 1..=2 {
        let lease = store.claim(&w, 60_000).await.unwrap().expect("a drained job is claimable at once").lease;
        let s = store.settle(&lease, &drain, &[]).await.unwrap();
        assert_eq!((s.job.state, s.job.failures, s.job.interruptions), (JobState::Queued, 1, n));
    }
    // The third interruption reaches the cap (3): dead-lettered, with its reason.
    let lease = store.claim(&w, 60_000).await.unwrap().unwrap().lease;
    let s = store.settle(&lease, &drain, &[]).await.unwrap();
    assert_eq!(
        (s.job.id, s.job.state, s.job.failures, s.job.interruptions, s.job.attempts),
        (id, JobState::Dead, 1, 3, 4)
    );
    assert!(s.job.errors.last().unwrap().contains("3 interruptions"), "{:?}", s.job.errors);
}

async fn queue_order_is_lane_then_rank_and_aging_wins(store: Store, clock: Arc<tessera_metering::event::ManualClock>) {
    clock.set(at("2026-06-10T12:00:00Z"));
    let ent = tenant(&store, "big", "enterprise").await;
    let mid = tenant(&store, "small", "mid").await;
    // Bulk first, then standard from a low tier, then standard from a high tier, then urgent.
    let bulk = queued(&store, &ent, Lane::Bulk).await;
    let std_mid = queued(&store, &mid, Lane::Standard).await;
    clock.advance(5);
    let std_ent = queued(&store, &ent, Lane::Standard).await;
    let urgent = queued(&store, &ent, Lane::Urgent).await;
    let w = worker();
    let mut order = Vec::new();
    while let Some(c) = store.claim(&w, 60_000).await.unwrap() {
        order.push(c.job.id);
    }
    // Within a lane the enterprise tier's 30 s weight beats mid's 10 s and a few ms of age.
    assert_eq!(order, vec![urgent, std_ent, std_mid, bulk]);
    // Aging: a bulk job past its lane's wait goes ahead of a stream of urgent work,
    // and not a tick before. Each round queues one urgent job and claims one job,
    // 10 ms of store time apart.
    let aged = NewJob { max_wait_ms: 150, ..new_job(&ent, Lane::Bulk, None, 24) };
    submit(&store, &ent, &aged).await;
    let submitted_at = clock.now_ms();
    loop {
        queued(&store, &ent, Lane::Urgent).await;
        let c = store.claim(&w, 60_000).await.unwrap().unwrap();
        let waited = clock.now_ms() - submitted_at;
        if c.job.id == aged.id {
            assert!(waited >= 150, "the bulk job jumped the urgent lane after {waited} ms");
            assert!(waited <= 160, "the aged job waited {waited} ms past its 150 ms");
            break;
        }
        assert!(waited < 5_000, "the aged job starved");
        clock.advance(10);
    }
}

async fn cancel_a_queued_and_a_running_job(store: Store) {
    let t = tenant(&store, "acme", "mid").await;
    let first = queued(&store, &t, Lane::Standard).await;
    let w = worker();
    let lease = store.claim(&w, 60_000).await.unwrap().unwrap().lease;
    assert_eq!(lease.job, first);
    let second = queued(&store, &t, Lane::Standard).await;
    let c = store.request_cancel(&second).await.unwrap().unwrap();
    assert_eq!((c.state, c.attempts), (JobState::Cancelled, 0));
    assert!(store.claim(&w, 60_000).await.unwrap().is_none(), "a cancelled job was claimed");
    let r = store.request_cancel(&first).await.unwrap().unwrap();
    assert_eq!((r.state, r.cancel_requested), (JobState::Running, true));
    assert!(store.heartbeat(&lease, 60_000, 3).await.unwrap(), "the heartbeat did not see the cancel");
    // Stopped after 3 frames: billed for those.
    let a = attempt(&t, &lease);
    let events = [
        UsageEvent::attempt_end(&a, Outcome::Cancelled),
        UsageEvent::output(&a, 3, 24, "720p", "general", Decimal::ZERO),
    ];
    // The three frames are kept: the partial clip is the job's output.
    let partial = ArchivedOutput { bytes: 30, ..archived(&first) };
    let end = AttemptEnd::Cancelled { frames: 3, delivered: Delivered::Clip(partial.clone()) };
    let s = store.settle(&lease, &end, &events).await.unwrap();
    assert_eq!((s.job.state, s.job.frames_done), (JobState::Cancelled, 3));
    assert_eq!(s.job.output, Some(partial), "a cancelled job's delivered frames are its output");
    assert_eq!(outputs_of(&store, &first).await[0].quantity, 3);
    let usage = store.month_usage(&t.id).await.unwrap();
    assert_eq!((usage.used_seconds, usage.reserved_seconds), (Decimal::new(125, 3), Decimal::ZERO));
    // Cancelling a finished job changes nothing.
    assert_eq!(store.request_cancel(&second).await.unwrap().unwrap().state, JobState::Cancelled);
    assert_eq!(store.request_cancel(&JobId::random()).await.unwrap(), None);
}

async fn the_ledger_records_each_event_exactly_once(store: Store) {
    let a = AttemptRef { tenant_id: "t_1".into(), tier: "mid".into(), job_id: "j_1".into(), attempt: 1, chunk: None };
    let events: Vec<UsageEvent> = (0..10)
        .map(|i| UsageEvent::gpu(&a, Pass::ALL[i % 3], i as u64 * 24, 24, 1_000 + i as u64, TimingSource::Gpu))
        .collect();
    assert_eq!(store.append(&events).await.unwrap(), vec![true; 10]);
    assert_eq!(store.append(&events).await.unwrap(), vec![false; 10], "a retry recorded events twice");
    let mut mixed = events[3..5].to_vec();
    mixed.push(UsageEvent::gpu(&a, Pass::Render, 999, 1, 1, TimingSource::Host));
    mixed.push(mixed[2].clone());
    assert_eq!(store.append(&mixed).await.unwrap(), vec![false, false, true, false]);
    // Sixteen concurrent writers re-sending overlapping batches: each waits its
    // turn (never "database is locked"), and every id is recorded once.
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (store, a) = (store.clone(), a.clone());
            tokio::spawn(async move {
                let mut new = 0;
                for round in 0..4u64 {
                    let batch: Vec<UsageEvent> = (0..500u64)
                        .map(|i| {
                            let frame = 10_000 + (i + w * 250 + round * 100) % 4_000;
                            UsageEvent::gpu(&a, Pass::Encode, frame, 1, 1, TimingSource::Gpu)
                        })
                        .collect();
                    new += store.append(&batch).await.unwrap().iter().filter(|n| **n).count();
                }
                new
            })
        })
        .collect();
    let mut new = 0;
    for w in writers {
        new += w.await.unwrap();
    }
    assert_eq!(new, 4_000, "concurrent writers recorded {new} of 4000 distinct events");
    let all = store.events(&Default::default()).await.unwrap();
    let ids: BTreeSet<_> = all.iter().map(|e| e.id.clone()).collect();
    assert_eq!((all.len(), ids.len()), (4_011, 4_011));
    // Paged by the key of each page's last event: the same events, in order.
    let (mut paged, mut after) = (Vec::new(), None);
    loop {
        let page = store.events_page(&Default::default(), after.take(), 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.occurred_at_ms, last.id.clone()));
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let e = all.iter().find(|e| e.id == events[4].id).unwrap();
    assert_eq!(e, &events[4], "an event did not come back as written");
    // Append-only: recorded usage cannot be changed or deleted.
    let (update, delete) = store.tamper_with_ledger().await.unwrap();
    assert!(update.is_some_and(|e| e.contains("append-only")), "the ledger allowed an update");
    assert!(delete.is_some_and(|e| e.contains("append-only")), "the ledger allowed a delete");
    assert_eq!(store.events(&Default::default()).await.unwrap().len(), 4_011);
    // The billable output is one event per job, whatever attempt delivers it.
    let out1 = UsageEvent::output(&a, 24, 24, "720p", "general", Decimal::ONE);
    let out2 = UsageEvent::output(&AttemptRef { attempt: 2, ..a.clone() }, 24, 24, "720p", "general", Decimal::TWO);
    let refused = store.append(std::slice::from_ref(&out1)).await.unwrap_err();
    assert!(refused.to_string().contains("only be written by its settlement"), "{refused}");
    let job = JobId::new("j_1");
    assert_eq!(store.finish_reserved(&job, &[out1, out2]).await.unwrap(), vec![true, false]);
}

async fn the_reaper_requeues_expired_leases_of_other_workers(
    store: Store,
    clock: Arc<tessera_metering::event::ManualClock>,
) {
    clock.set(at("2026-06-10T12:00:00Z"));
    let t = tenant(&store, "acme", "mid").await;
    let (me, lost, alive) = (worker(), worker(), worker());
    // A millisecond apart: same-instant jobs of one lane and tier are taken in id order.
    let a = queued(&store, &t, Lane::Standard).await;
    clock.advance(1);
    let b = queued(&store, &t, Lane::Standard).await;
    clock.advance(1);
    let c = queued(&store, &t, Lane::Standard).await;
    let la = store.claim(&lost, 1).await.unwrap().unwrap().lease;
    let lb = store.claim(&alive, 60_000).await.unwrap().unwrap().lease;
    let lc = store.claim(&me, 1).await.unwrap().unwrap().lease;
    assert_eq!((la.job.clone(), lb.job.clone(), lc.job.clone()), (a.clone(), b.clone(), c.clone()));
    // The lost attempt had metered some GPU time, and its job a cancel request.
    store.append(&[UsageEvent::gpu(&attempt(&t, &la), Pass::Render, 0, 5, 42, TimingSource::Gpu)]).await.unwrap();
    clock.advance(20);
    // My own expired lease is alive (I am running its attempt): only the lost
    // worker's is reaped.
    let reaped = store.reap(&me, std::slice::from_ref(&c), 100).await.unwrap();
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    assert_eq!((reaped[0].lease.clone(), reaped[0].tier.as_str()), (la.clone(), "mid"));
    assert_eq!(reaped[0].gpu_ns.get(&Pass::Render), Some(&42));
    assert_eq!((reaped[0].job.state, reaped[0].job.interruptions, reaped[0].job.failures), (JobState::Queued, 1, 0));
    let ends: Vec<_> = store
        .events(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::AttemptEnd)
        .collect();
    assert_eq!(ends.len(), 1);
    assert_eq!(
        (ends[0].job_id.as_str(), ends[0].attempt, ends[0].outcome),
        (a.as_str(), 1, Some(Outcome::Interrupted))
    );
    // The interrupted attempt's GPU time is the operator's, marked interrupted.
    let totals = store.gpu_ns_totals().await.unwrap();
    assert_eq!(totals.get(&(t.id.to_string(), "render".into(), "interrupted".into())), Some(&42));
    // Another worker reaps mine; a cancelled job whose worker vanished ends cancelled.
    store.request_cancel(&c).await.unwrap();
    let reaped = store.reap(&lost, &[], 100).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!((reaped[0].job.id.clone(), reaped[0].job.state), (c, JobState::Cancelled));
    assert!(store.reap(&lost, &[], 100).await.unwrap().is_empty());
    assert_eq!(store.job(&b).await.unwrap().unwrap().state, JobState::Running);
    // A lease of mine that none of my running attempts holds (a settlement
    // failed for good) is reaped by my own reaper too.
    queued(&store, &t, Lane::Standard).await;
    let ld = store.claim(&me, 1).await.unwrap().unwrap().lease;
    clock.advance(20);
    let reaped = store.reap(&me, &[], 100).await.unwrap();
    assert_eq!(reaped.iter().map(|r| r.lease.clone()).collect::<Vec<_>>(), vec![ld]);
}

async fn transactions_roll_back_after_an_injected_error(
    store: Store,
    clock: Arc<tessera_metering::event::ManualClock>,
) {
    clock.set(at("2026-06-10T12:00:00Z"));
    let t = tenant(&store, "acme", "mid").await;
    // Admission and enqueue commit together or not at all.
    let job = new_job(&t, Lane::Standard, Some("k"), 24);
    store.inject_fault("submit");
    let e = store.submit(&book(), &t, &job, &request(24), Decimal::ONE).await.unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    assert_eq!(store.job(&job.id).await.unwrap(), None);
    assert_eq!(store.month_usage(&t.id).await.unwrap().reserved_seconds, Decimal::ZERO, "the reservation leaked");
    assert!(matches!(submit(&store, &t, &job).await, Submitted::New { .. }), "the store did not recover");
    // A settlement that fails leaves the attempt running, its events unwritten.
    let w = worker();
    let lease = store.claim(&w, 60_000).await.unwrap().unwrap().lease;
    let events = success_events(&t, &lease, 24);
    store.inject_fault("settle");
    assert!(store.settle(&lease, &AttemptEnd::Succeeded(archived(&job.id)), &events).await.is_err());
    let j = store.job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Running);
    assert_eq!(leases(&store, &j.id).await, vec![lease.clone()]);
    assert!(store.events(&Default::default()).await.unwrap().is_empty(), "events of a rolled-back settlement");
    let s = store.settle(&lease, &AttemptEnd::Succeeded(archived(&job.id)), &events).await.unwrap();
    assert_eq!((s.job.state, s.inserted), (JobState::Succeeded, vec![true; 3]));
    // A failed reap leaves the lease for the next reaper.
    let id = queued(&store, &t, Lane::Bulk).await;
    let lease = store.claim(&w, 1).await.unwrap().unwrap().lease;
    clock.advance(10);
    store.inject_fault("reap");
    assert!(store.reap(&worker(), &[], 10).await.is_err());
    assert_eq!(leases(&store, &id).await, vec![lease.clone()]);
    assert_eq!(store.reap(&worker(), &[], 10).await.unwrap().len(), 1);
    // A failed append records nothing; its retry records everything once.
    let a =
        AttemptRef { tenant_id: t.id.to_string(), tier: "mid".into(), job_id: id.to_string(), attempt: 1, chunk: None };
    let batch: Vec<_> = (0..5).map(|i| UsageEvent::gpu(&a, Pass::Stitch, i, 1, 9, TimingSource::Host)).collect();
    store.inject_fault("append");
    assert!(store.append(&batch).await.is_err());
    assert_eq!(store.append(&batch).await.unwrap(), vec![true; 5]);
}

async fn renders_outside_the_queue_reserve_and_bill_once(store: Store) {
    let t = tenant(&store, "acme", "short").await;
    let id = JobId::random();
    let price = Decimal::new(30, 2);
    let warnings = store
        .reserve(
            &book(),
            &t,
            &Reservation { job: &id, request: &request(480), lane: Lane::Standard, frames: 480, price },
        )
        .await
        .unwrap();
    assert!(warnings.is_empty());
    // Reserving the same render again changes nothing.
    store
        .reserve(
            &book(),
            &t,
            &Reservation { job: &id, request: &request(480), lane: Lane::Standard, frames: 480, price },
        )
        .await
        .unwrap();
    assert_eq!(store.month_usage(&t.id).await.unwrap().reserved_seconds, Decimal::from(20));
    let a = AttemptRef {
        tenant_id: t.id.to_string(),
        tier: t.tier.clone(),
        job_id: id.to_string(),
        attempt: 1,
        chunk: None,
    };
    let events = vec![
        UsageEvent::gpu(&a, Pass::Render, 0, 480, 99, TimingSource::Host),
        UsageEvent::attempt_end(&a, Outcome::Succeeded),
        UsageEvent::output(&a, 480, 24, "720p", "general", price),
    ];
    assert_eq!(store.finish_reserved(&id, &events).await.unwrap(), vec![true; 3]);
    assert_eq!(store.finish_reserved(&id, &events).await.unwrap(), vec![false; 3]);
    let usage = store.month_usage(&t.id).await.unwrap();
    assert_eq!((usage.used_seconds, usage.reserved_seconds, usage.spent), (Decimal::from(20), Decimal::ZERO, price));
    // 580 s of the 600 s cap are left: nineteen 30 s renders fit, the twentieth is refused.
    let mut admitted = 0;
    loop {
        match store
            .reserve(
                &book(),
                &t,
                &Reservation { job: &JobId::random(), request: &request(720), lane: Lane::Bulk, frames: 720, price },
            )
            .await
        {
            Ok(_) => admitted += 1,
            Err(StoreError::Admission(a)) => {
                assert!(matches!(*a, AdmissionError::OutputCap { .. }), "{a}");
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(admitted < 100, "the cap never held");
    }
    assert_eq!(admitted, 19);
}

async fn workers_register_and_one_leads_each_task(store: Store, clock: Arc<tessera_metering::event::ManualClock>) {
    clock.set(at("2026-06-10T12:00:00Z"));
    let info = |host: &str| WorkerInfo {
        id: WorkerId::random(),
        host: host.into(),
        api_addr: format!("{host}:8080"),
        adapter: "llvmpipe".into(),
        version: "0.1.0".into(),
    };
    let (a, b) = (info("gpu-a"), info("gpu-b"));
    store.register_worker(&a).await.unwrap();
    store.register_worker(&b).await.unwrap();
    store.worker_heartbeat(&a.id, 3).await.unwrap();
    store.worker_stopped(&b.id).await.unwrap();
    let all = store.workers().await.unwrap();
    assert_eq!(all.len(), 2);
    let wa = all.iter().find(|w| w.info == a).unwrap();
    let wb = all.iter().find(|w| w.info == b).unwrap();
    assert_eq!((wa.jobs_in_flight, wa.stopped_at_ms.is_some()), (3, false));
    assert!(wb.stopped_at_ms.is_some());
    // One leader per task at a time; it renews; another takes over once it lapses.
    assert!(store.try_lead("storage", &a.id, 100).await.unwrap());
    assert!(!store.try_lead("storage", &b.id, 100).await.unwrap());
    assert!(store.try_lead("storage", &a.id, 100).await.unwrap());
    assert!(store.try_lead("retention", &b.id, 100).await.unwrap());
    clock.advance(150);
    assert!(store.try_lead("storage", &b.id, 100).await.unwrap());
    assert!(!store.try_lead("storage", &a.id, 100).await.unwrap());
    // No server, no signal: listen returns (SQLite) or keeps running (PostgreSQL).
    let wake = Arc::new(tokio::sync::Notify::new());
    let listening = tokio::spawn({
        let store = store.clone();
        let wake = wake.clone();
        async move { store.listen(wake).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    if store.kind() == tessera_store::BackendKind::Postgres {
        // A job queued anywhere wakes the listener.
        let t = tenant(&store, "acme", "mid").await;
        queued(&store, &t, Lane::Standard).await;
        tokio::time::timeout(Duration::from_secs(5), wake.notified()).await.expect("no NOTIFY reached the listener");
        listening.abort();
    } else {
        listening.await.unwrap().unwrap();
    }
}

async fn listings_pages_and_depths(store: Store, clock: Arc<tessera_metering::event::ManualClock>) {
    clock.set(at("2026-06-10T12:00:00Z"));
    let t = tenant(&store, "acme", "enterprise").await;
    let u = tenant(&store, "other", "enterprise").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(queued(&store, &t, Lane::ALL[i % 3]).await);
        clock.advance(2);
    }
    queued(&store, &u, Lane::Bulk).await;
    let w = worker();
    store.claim(&w, 60_000).await.unwrap();
    let depths = store.depths().await.unwrap();
    let depth = |lane| depths.iter().find(|(l, _)| *l == lane).map(|(_, d)| d.queued).unwrap_or(0);
    assert_eq!((depth(Lane::Urgent), depth(Lane::Standard), depth(Lane::Bulk)), (2, 2, 3));
    // Pages of 3, newest first, with a cursor; filters by state and lane.
    let mut seen = Vec::new();
    let mut filter = JobFilter { limit: 3, ..Default::default() };
    loop {
        let page = store.jobs(&t.id, &filter).await.unwrap();
        seen.extend(page.iter().map(|j| j.id.clone()));
        match page.last() {
            Some(last) if page.len() == 3 => filter.before = Some((last.created_at_ms, last.id.clone())),
            _ => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let bulk = store.jobs(&t.id, &JobFilter { lane: Some(Lane::Bulk), limit: 50, ..Default::default() }).await.unwrap();
    assert_eq!(bulk.len(), 2);
    let running = JobFilter { state: Some(JobState::Running), limit: 50, ..Default::default() };
    assert_eq!(store.jobs(&t.id, &running).await.unwrap().len(), 1);
    let plan = store.explain_claim().await.unwrap();
    assert!(plan.contains("chunks_claim"), "the claim does not use its index:\n{plan}");
}

fn segment(lease: &Lease, frames: u32) -> AttemptEnd {
    AttemptEnd::Segment(tessera_store::Segment {
        path: format!("clips/{}.a{}.seg", lease.job, lease.attempt),
        bytes: 1000,
        sha256: "cd".into(),
        frames,
    })
}

fn gpu_events(t: &Tenant, lease: &Lease, ns: i64) -> Vec<UsageEvent> {
    let a = attempt(t, lease);
    vec![
        UsageEvent::gpu(&a, Pass::Render, 0, 1, ns as u64, TimingSource::Gpu),
        UsageEvent::attempt_end(&a, Outcome::Succeeded),
    ]
}

async fn a_chunked_job_spreads_over_workers_and_joins_once(store: Store) {
    use tessera_store::{ChunkKind, ChunkState};
    let t = tenant(&store, "acme", "mid").await;
    let job = NewJob { chunk_frames: 24, ..new_job(&t, Lane::Standard, None, 50) };
    submit(&store, &t, &job).await;
    let chunks = store.chunks(&job.id).await.unwrap();
    let plan: Vec<_> = chunks.iter().map(|c| (c.kind, c.first_frame, c.frames, c.state)).collect();
    assert_eq!(
        plan,
        vec![
            (ChunkKind::Range, 0, 24, ChunkState::Queued),
            (ChunkKind::Range, 24, 24, ChunkState::Queued),
            (ChunkKind::Range, 48, 2, ChunkState::Queued),
            (ChunkKind::Join, 50, 0, ChunkState::Blocked),
        ]
    );
    // Three workers take one chunk each; attempt numbers are job-wide.
    let (a, b, c) = (worker(), worker(), worker());
    let ca = store.claim(&a, 60_000).await.unwrap().unwrap();
    let cb = store.claim(&b, 60_000).await.unwrap().unwrap();
    let cc = store.claim(&c, 60_000).await.unwrap().unwrap();
    let got: Vec<_> = [&ca, &cb, &cc].iter().map(|x| (x.lease.chunk, x.lease.attempt, x.chunk.first_frame)).collect();
    assert_eq!(got, vec![(0, 1, 0), (1, 2, 24), (2, 3, 48)]);
    assert!(store.claim(&a, 60_000).await.unwrap().is_none(), "the join waits for its ranges");
    // Progress sums over chunks.
    store.heartbeat(&ca.lease, 60_000, 10).await.unwrap();
    store.heartbeat(&cb.lease, 60_000, 5).await.unwrap();
    assert_eq!(store.job(&job.id).await.unwrap().unwrap().frames_done, 15);
    // Chunk 1 finishes; chunk 0's worker is lost: only chunk 0 runs again.
    store.settle(&cb.lease, &segment(&cb.lease, 24), &gpu_events(&t, &cb.lease, 200)).await.unwrap();
    let lost = AttemptEnd::Interrupted { reason: "lease expired".into(), retry_in_ms: 0 };
    let s = store.settle(&ca.lease, &lost, &gpu_events(&t, &ca.lease, 70)[..1]).await.unwrap();
    assert_eq!((s.job.state, s.job.interruptions, s.job.frames_done), (JobState::Running, 1, 24));
    let again = store.claim(&b, 60_000).await.unwrap().unwrap();
    assert_eq!((again.lease.chunk, again.lease.attempt, again.chunk.attempts), (0, 4, 2));
    let late = store.heartbeat(&ca.lease, 60_000, 11).await.unwrap_err();
    assert!(matches!(late, StoreError::LeaseLost(_)), "{late}");
    let wrong = store.settle(&again.lease, &AttemptEnd::Succeeded(archived(&job.id)), &[]).await.unwrap_err();
    assert!(wrong.to_string().contains("segment"), "a range must end with a segment: {wrong}");
    store.settle(&again.lease, &segment(&again.lease, 24), &gpu_events(&t, &again.lease, 100)).await.unwrap();
    assert!(store.claim(&a, 60_000).await.unwrap().is_none());
    let s = store.settle(&cc.lease, &segment(&cc.lease, 2), &gpu_events(&t, &cc.lease, 30)).await.unwrap();
    assert_eq!((s.job.state, s.job.frames_done), (JobState::Queued, 50));
    // The last range unblocks the join, which any worker claims; it alone bills.
    let join = store.claim(&c, 60_000).await.unwrap().expect("the join");
    assert_eq!((join.chunk.kind, join.lease.chunk, join.lease.attempt), (ChunkKind::Join, 3, 5));
    assert!(!store.has_output(&job.id).await.unwrap());
    let segs: Vec<_> = store.segments().await.unwrap().into_iter().map(|s| s.chunk).collect();
    assert_eq!(segs, vec![0, 1, 2]);
    let done = store
        .settle(&join.lease, &AttemptEnd::Succeeded(archived(&job.id)), &success_events(&t, &join.lease, 50))
        .await
        .unwrap()
        .job;
    assert_eq!((done.state, done.frames_done, done.attempts), (JobState::Succeeded, 50, 5));
    assert_eq!(outputs_of(&store, &job.id).await.len(), 1);
    let usage = store.month_usage(&t.id).await.unwrap();
    assert_eq!(usage.reserved_seconds, Decimal::ZERO);
    let chunks = store.chunks(&job.id).await.unwrap();
    let view: Vec<_> = chunks.iter().map(|c| (c.state, c.attempts, c.worker.clone().unwrap())).collect();
    assert_eq!(
        view,
        vec![
            (ChunkState::Done, 2, b.clone()),
            (ChunkState::Done, 1, b.clone()),
            (ChunkState::Done, 1, c.clone()),
            (ChunkState::Done, 1, c.clone()),
        ]
    );
    // GPU time per chunk sums to the job's.
    let per_chunk = store.chunk_gpu_ns(&job.id).await.unwrap();
    let want: std::collections::BTreeMap<_, _> =
        [((0, Pass::Render), 170), ((1, Pass::Render), 200), ((2, Pass::Render), 30), ((3, Pass::Render), 5_000)]
            .into_iter()
            .collect();
    assert_eq!(per_chunk, want);
    assert_eq!(store.job_gpu_ns(&job.id).await.unwrap().get(&Pass::Render), Some(&5_400));
    store.forget_segments(&job.id).await.unwrap();
    assert!(store.segments().await.unwrap().is_empty());
}

async fn a_chunked_job_cancels_and_dies_as_one(store: Store) {
    use tessera_store::{ChunkKind, ChunkState};
    let t = tenant(&store, "acme", "mid").await;
    // Cancel: the running range stops, the queued ones end at once, the join bills what was delivered.
    let job = NewJob { chunk_frames: 24, ..new_job(&t, Lane::Standard, None, 72) };
    submit(&store, &t, &job).await;
    let w = worker();
    let first = store.claim(&w, 60_000).await.unwrap().unwrap();
    let cancelled = store.request_cancel(&job.id).await.unwrap().unwrap();
    assert_eq!((cancelled.state, cancelled.cancel_requested), (JobState::Running, true));
    let states: Vec<_> = store.chunks(&job.id).await.unwrap().iter().map(|c| c.state).collect();
    assert_eq!(states, vec![ChunkState::Running, ChunkState::Cancelled, ChunkState::Cancelled, ChunkState::Blocked]);
    assert!(store.heartbeat(&first.lease, 60_000, 5).await.unwrap(), "the running range hears the cancel");
    let kept = tessera_store::Segment {
        path: format!("clips/{}.a{}.seg", first.lease.job, first.lease.attempt),
        bytes: 500,
        sha256: "cd".into(),
        frames: 5,
    };
    let end = AttemptEnd::Cancelled { frames: 5, delivered: Delivered::Segment(kept.clone()) };
    let s = store.settle(&first.lease, &end, &[]).await.unwrap();
    let chunks = store.chunks(&job.id).await.unwrap();
    assert_eq!(chunks[0].segment, Some(kept), "a cancelled range keeps its frames for the join");
    assert_eq!(s.job.state, JobState::Queued, "the join settles a cancelled chunked job");
    let join = store.claim(&w, 60_000).await.unwrap().expect("the join");
    assert_eq!(join.chunk.kind, ChunkKind::Join);
    let a = attempt(&t, &join.lease);
    let bill = UsageEvent::output(&a, 5, 24, "720p", "general", admitted(72).price_of(5));
    let clip = ArchivedOutput { bytes: 480, ..archived(&job.id) };
    let end = AttemptEnd::Cancelled { frames: 5, delivered: Delivered::Clip(clip.clone()) };
    let done = store.settle(&join.lease, &end, &[bill]).await.unwrap().job;
    assert_eq!((done.state, done.frames_done, done.output), (JobState::Cancelled, 5, Some(clip)));
    assert_eq!(outputs_of(&store, &job.id).await[0].quantity, 5);
    assert_eq!(store.month_usage(&t.id).await.unwrap().reserved_seconds, Decimal::ZERO);

    // Death: a range that spends the job's failure budget ends every chunk;
    // a range still running elsewhere finds its lease gone.
    let job = NewJob { chunk_frames: 24, max_failures: 1, ..new_job(&t, Lane::Standard, None, 72) };
    submit(&store, &t, &job).await;
    let (x, y) = (store.claim(&w, 60_000).await.unwrap().unwrap(), store.claim(&w, 60_000).await.unwrap().unwrap());
    let boom = AttemptEnd::Failed { error: "boom".into(), retry_in_ms: 0, retryable: true };
    let dead = store.settle(&x.lease, &boom, &[]).await.unwrap().job;
    assert_eq!(dead.state, JobState::Dead);
    let states: Vec<_> = store.chunks(&job.id).await.unwrap().iter().map(|c| c.state).collect();
    assert_eq!(states, vec![ChunkState::Dead; 4]);
    assert!(matches!(store.heartbeat(&y.lease, 60_000, 3).await, Err(StoreError::LeaseLost(_))));
    assert!(store.claim(&w, 60_000).await.unwrap().is_none());
    // A queued chunked job with nothing delivered cancels at once.
    let job = NewJob { chunk_frames: 24, ..new_job(&t, Lane::Standard, None, 72) };
    submit(&store, &t, &job).await;
    assert_eq!(store.request_cancel(&job.id).await.unwrap().unwrap().state, JobState::Cancelled);
    assert!(store.claim(&w, 60_000).await.unwrap().is_none());

    // A join that finds a segment damaged sends that range back and waits for it.
    let job = NewJob { chunk_frames: 24, ..new_job(&t, Lane::Standard, None, 48) };
    submit(&store, &t, &job).await;
    for _ in 0..2 {
        let c = store.claim(&w, 60_000).await.unwrap().unwrap();
        store.settle(&c.lease, &segment(&c.lease, 24), &[]).await.unwrap();
    }
    let join = store.claim(&w, 60_000).await.unwrap().unwrap();
    let redo = AttemptEnd::Redo { ranges: vec![0], reason: "segment of chunk 0 does not match its hash".into() };
    assert!(store.settle(&first.lease, &redo, &[]).await.is_err(), "a range's lease cannot send ranges back");
    let s = store.settle(&join.lease, &redo, &[]).await.unwrap();
    assert_eq!((s.job.interruptions, s.job.failures), (1, 0));
    let chunks = store.chunks(&job.id).await.unwrap();
    let states: Vec<_> = chunks.iter().map(|c| c.state).collect();
    assert_eq!(states, vec![ChunkState::Queued, ChunkState::Done, ChunkState::Blocked]);
    assert!(chunks[0].segment.is_none() && chunks[1].segment.is_some());
    let again = store.claim(&w, 60_000).await.unwrap().unwrap();
    assert_eq!((again.lease.chunk, again.chunk.attempts), (0, 2));
    store.settle(&again.lease, &segment(&again.lease, 24), &[]).await.unwrap();
    let join = store.claim(&w, 60_000).await.unwrap().expect("the join again");
    assert_eq!(join.chunk.kind, ChunkKind::Join);
    let events = success_events(&t, &join.lease, 48);
    let done = store.settle(&join.lease, &AttemptEnd::Succeeded(archived(&job.id)), &events).await.unwrap().job;
    assert_eq!((done.state, done.frames_done), (JobState::Succeeded, 48));
}

/// `ms` as a time on the test's clock.
fn at(rfc3339: &str) -> i64 {
    tessera_metering::event::Clock::now_ms(&tessera_metering::event::ManualClock::at(rfc3339))
}

/// Events stamped with the test clock's time, as a worker on that day would.
fn stamped(mut events: Vec<UsageEvent>, ms: i64) -> Vec<UsageEvent> {
    events.iter_mut().for_each(|e| e.occurred_at_ms = ms);
    events
}

/// The month rule: a job is reserved against, and billed in, the month whose
/// cap admitted it, even when it settles in the next one (a queued job and a
/// render outside the queue, both admitted at 23:59:59 on the 30th of November).
async fn a_job_admitted_in_a_months_last_second_counts_in_that_month(
    store: Store,
    clock: Arc<tessera_metering::event::ManualClock>,
) {
    clock.set(at("2026-11-30T23:59:59Z"));
    let t = tenant(&store, "acme", "mid").await;
    let job = new_job(&t, Lane::Standard, None, 48);
    assert!(matches!(submit(&store, &t, &job).await, Submitted::New { .. }));
    let outside = JobId::random();
    let req = request(24);
    let r = Reservation { job: &outside, request: &req, lane: Lane::Standard, frames: 24, price: Decimal::new(1, 2) };
    store.reserve(&book(), &t, &r).await.unwrap();
    let nov = store.month_usage(&t.id).await.unwrap();
    assert_eq!((nov.reserved_seconds, nov.reserved_spend), (Decimal::from(3), Decimal::new(2, 2)));

    // Midnight: December's cap starts empty; November still holds both.
    clock.set(at("2026-12-01T00:00:00Z"));
    assert_eq!(store.month_usage(&t.id).await.unwrap(), Default::default());
    assert_eq!(store.month_usage_of(&t.id, "2026-11").await.unwrap(), nov);

    // Both settle in December and are billed in November, once.
    let w = worker();
    let c = store.claim(&w, 10_000).await.unwrap().expect("the job");
    let events = stamped(success_events(&t, &c.lease, 48), clock.now_ms());
    store.settle(&c.lease, &AttemptEnd::Succeeded(archived(&job.id)), &events).await.unwrap();
    let a = AttemptRef {
        tenant_id: t.id.to_string(),
        tier: t.tier.clone(),
        job_id: outside.to_string(),
        attempt: 1,
        chunk: None,
    };
    let out = stamped(vec![UsageEvent::output(&a, 24, 24, "720p", "general", Decimal::new(1, 2))], clock.now_ms());
    assert_eq!(store.finish_reserved(&outside, &out).await.unwrap(), vec![true]);

    let billed = store.month_usage_of(&t.id, "2026-11").await.unwrap();
    assert_eq!((billed.used_seconds, billed.spent), (Decimal::from(3), Decimal::new(2, 2)));
    assert_eq!((billed.reserved_seconds, billed.reserved_spend), (Decimal::ZERO, Decimal::ZERO));
    assert_eq!(store.month_usage(&t.id).await.unwrap(), Default::default(), "December pays for nothing");
    // GPU time and the attempt's end are the month they happened in: cost, not the bill.
    let gpu: Vec<_> = store.events(&Default::default()).await.unwrap();
    assert!(gpu.iter().all(|e| e.occurred_at_ms == at("2026-12-01T00:00:00Z")));

    // A later year: a job admitted on a leap day counts in February.
    clock.set(at("2028-02-29T23:59:59Z"));
    let leap = new_job(&t, Lane::Standard, None, 24);
    assert!(matches!(submit(&store, &t, &leap).await, Submitted::New { .. }));
    assert_eq!(store.month_usage_of(&t.id, "2028-02").await.unwrap().reserved_seconds, Decimal::from(1));
    clock.set(at("2028-03-01T00:00:01Z"));
    assert_eq!(store.month_usage(&t.id).await.unwrap(), Default::default());
}

/// The totals recomputed from every row of the ledger: what the rollups plus
/// the open months must always equal.
async fn totals_from_rows(store: &Store, tenant: &Tenant) -> (UsageTotals, i64) {
    let mut t = UsageTotals::default();
    let mut charged = 0;
    for e in store.events(&Default::default()).await.unwrap() {
        if e.kind == EventKind::Output {
            charged += e.amount_micros;
        }
        if e.tenant_id != tenant.id.as_str() {
            continue;
        }
        match e.kind {
            EventKind::Gpu => *t.gpu_ns.entry(e.pass.unwrap()).or_default() += e.quantity,
            EventKind::Output => {
                let o = t.output.entry(e.fps.unwrap()).or_default();
                o.0 += e.quantity;
                o.1 += e.amount_micros;
            }
            EventKind::Egress => t.egress_bytes += e.quantity,
            EventKind::Storage => t.storage_byte_seconds += e.quantity,
            EventKind::AttemptEnd => {}
        }
    }
    (t, charged)
}

/// A month is rolled up a day after it ends, once; the totals (`/v1/usage`,
/// the ledger's charges) equal the sums of every row before and after, and
/// a row billed in a closed month (a job admitted in it, delivered after)
/// still counts, once.
async fn closed_months_roll_up_and_every_total_stays_exact(
    store: Store,
    clock: Arc<tessera_metering::event::ManualClock>,
) {
    clock.set(at("2026-10-15T12:00:00Z"));
    let (t, other) = (tenant(&store, "acme", "mid").await, tenant(&store, "other", "mid").await);
    assert_eq!(store.maintain_ledger().await.unwrap(), Vec::<String>::new(), "an empty ledger closes nothing");
    let w = worker();
    for tenant in [&t, &other, &t] {
        let id = queued(&store, tenant, Lane::Standard).await;
        let c = store.claim(&w, 60_000).await.unwrap().unwrap();
        let events = stamped(success_events(tenant, &c.lease, 24), clock.now_ms());
        store.settle(&c.lease, &AttemptEnd::Succeeded(archived(&id)), &events).await.unwrap();
        clock.advance(1_000);
    }
    // Admitted in October's last second, running when October closes.
    clock.set(at("2026-10-31T23:59:59Z"));
    let late = queued(&store, &t, Lane::Standard).await;
    let late_lease = store.claim(&w, 600_000_000).await.unwrap().unwrap().lease;
    let october = totals_from_rows(&store, &t).await;
    assert_eq!((store.usage_totals(&t.id).await.unwrap(), store.ledger_charged_micros().await.unwrap()), october);
    assert_eq!(october.1, 30_000, "three outputs at 0.01");

    // Less than a day after October ended: nothing closes.
    clock.set(at("2026-11-01T12:00:00Z"));
    store.append(&stamped(gpu_events(&t, &late_lease, 7_000), clock.now_ms())).await.unwrap();
    assert_eq!(store.maintain_ledger().await.unwrap(), Vec::<String>::new());
    // A day after: October closes, once; the totals do not move.
    clock.set(at("2026-11-02T00:00:01Z"));
    assert_eq!(store.maintain_ledger().await.unwrap(), vec!["2026-10".to_string()]);
    assert_eq!(store.maintain_ledger().await.unwrap(), Vec::<String>::new(), "closed twice");
    let closed = totals_from_rows(&store, &t).await;
    assert_eq!(closed.0.gpu_ns[&Pass::Render], october.0.gpu_ns[&Pass::Render] + 7_000);
    assert_eq!((store.usage_totals(&t.id).await.unwrap(), store.ledger_charged_micros().await.unwrap()), closed);

    // The late job is delivered in November and billed in October, its
    // reservation's month: the closed month's rollup takes it.
    let events = stamped(success_events(&t, &late_lease, 24), clock.now_ms());
    store.settle(&late_lease, &AttemptEnd::Succeeded(archived(&late)), &events).await.unwrap();
    let after = totals_from_rows(&store, &t).await;
    assert_eq!(after.0.output[&24], (closed.0.output[&24].0 + 24, closed.0.output[&24].1 + 10_000));
    assert_eq!((store.usage_totals(&t.id).await.unwrap(), store.ledger_charged_micros().await.unwrap()), after);
    let billed = store.month_usage_of(&t.id, "2026-10").await.unwrap();
    assert_eq!((billed.used_seconds, billed.spent), (Decimal::from(3), Decimal::new(3, 2)));
    assert_eq!(store.usage_totals(&other.id).await.unwrap(), totals_from_rows(&store, &other).await.0);

    // Months later, November and the months after close in order; totals hold.
    clock.set(at("2027-02-02T00:00:00Z"));
    let storage = UsageEvent::storage_period(t.id.as_str(), "mid", at("2027-01-31T23:00:00Z"), 3_600_000, 1 << 40);
    store.append(&[storage]).await.unwrap();
    let months = store.maintain_ledger().await.unwrap();
    assert_eq!(months, ["2026-11", "2026-12", "2027-01"].map(String::from).to_vec());
    let all = totals_from_rows(&store, &t).await;
    assert_eq!(all.0.storage_byte_seconds, 1 << 40);
    assert_eq!((store.usage_totals(&t.id).await.unwrap(), store.ledger_charged_micros().await.unwrap()), all);
    // A failed close changes nothing and the next one closes the month.
    clock.set(at("2027-03-02T00:00:00Z"));
    store.inject_fault("rollup");
    assert!(store.maintain_ledger().await.is_err());
    assert_eq!(store.usage_totals(&t.id).await.unwrap(), all.0);
    assert_eq!(store.maintain_ledger().await.unwrap(), vec!["2027-02".to_string()]);
    assert_eq!(store.usage_totals(&t.id).await.unwrap(), all.0);
}

/// Counters = ledger after a pause: a worker paused past its lease and resumed
/// cannot append a GPU window after the reaper counted its attempt (the
/// reaper's count is the ledger's); its late window is refused, and written
/// with its abandonment, where its counters move too.
async fn a_reaped_attempt_appends_nothing_behind_the_reaper(
    store: Store,
    clock: Arc<tessera_metering::event::ManualClock>,
) {
    clock.set(at("2027-03-01T12:00:00Z"));
    let t = tenant(&store, "acme", "mid").await;
    let id = queued(&store, &t, Lane::Standard).await;
    let (paused, reaper) = (worker(), worker());
    let lease = store.claim(&paused, 1_000).await.unwrap().unwrap().lease;
    let a = attempt(&t, &lease);
    let window = |first: u64, ns: u64| UsageEvent::gpu(&a, Pass::Render, first, 10, ns, TimingSource::Gpu);
    assert_eq!(store.append_for(&lease, &[window(0, 1_000)]).await.unwrap(), vec![true]);
    // Only the attempt's own windows: no output, no other job's events.
    let out = UsageEvent::output(&a, 24, 24, "720p", "general", Decimal::new(1, 2));
    assert!(store.append_for(&lease, &[out]).await.is_err());
    let other = AttemptRef { job_id: "j_00000000000000ff".into(), ..a.clone() };
    assert!(store.append_for(&lease, &[UsageEvent::attempt_end(&other, Outcome::Failed)]).await.is_err());

    // Paused past its lease: another worker reaps the attempt and counts what the ledger holds.
    clock.advance(5_000);
    let reaped = store.reap(&reaper, &[], 10).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].gpu_ns.get(&Pass::Render), Some(&1_000));

    // Resumed: its next window is refused, and the ledger still holds what the reaper counted.
    let late = store.append_for(&lease, &[window(10, 2_000)]).await.unwrap_err();
    assert!(matches!(late, StoreError::LeaseLost(_)), "{late}");
    assert_eq!(store.job_gpu_ns(&id).await.unwrap().get(&Pass::Render), Some(&1_000));
    // A retried window that the ledger already took is not new, fenced or not.
    let again = store.claim(&reaper, 1_000).await.unwrap().unwrap().lease;
    assert_eq!(again.attempt, 2);
    let b = attempt(&t, &again);
    let w = UsageEvent::gpu(&b, Pass::Render, 0, 10, 500, TimingSource::Gpu);
    assert_eq!(store.append_for(&again, &[w.clone(), w]).await.unwrap(), vec![true, false]);
    // The abandonment writes the late window as the operator's cost.
    assert_eq!(store.append(&[window(10, 2_000)]).await.unwrap(), vec![true]);
    assert_eq!(store.job_gpu_ns(&id).await.unwrap().get(&Pass::Render), Some(&3_500));
}

/// Storage by elapsed time: one event per tenant and period, byte-seconds from
/// each clip's archive to its removal, exact to the byte-second, across a
/// stalled meter (five periods closed late in one run) and a repeated run.
async fn storage_is_billed_for_the_time_each_clip_is_kept(
    store: Store,
    clock: Arc<tessera_metering::event::ManualClock>,
) {
    const MINUTE: i64 = 60_000;
    let t0 = at("2027-01-10T00:00:00Z");
    clock.set(t0);
    let (acme, globex) = (tenant(&store, "acme", "mid").await, tenant(&store, "globex", "enterprise").await);
    let w = worker();
    // acme's clip (100 bytes) is archived at 10.5 s, globex's (3 bytes) at 20.333 s.
    let mut ids = Vec::new();
    for (t, at_ms, bytes) in [(&acme, 10_500, 100), (&globex, 20_333, 3)] {
        let id = queued(&store, t, Lane::Standard).await;
        clock.set(t0 + at_ms);
        let c = store.claim(&w, 60_000).await.unwrap().unwrap();
        assert_eq!(c.job.id, id);
        let out = ArchivedOutput { bytes, ..archived(&id) };
        store.settle(&c.lease, &AttemptEnd::Succeeded(out), &success_events(t, &c.lease, 24)).await.unwrap();
        ids.push(id);
    }
    let a = ids[0].clone();
    // The meter's first run starts it at the current period: nothing is due yet.
    clock.set(t0 + 30_000);
    let (events, _) = store.close_storage_periods(MINUTE).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    // Stalled for five minutes: the next run closes the five periods it missed.
    clock.set(t0 + 5 * MINUTE + 5_000);
    let (events, inserted) = store.close_storage_periods(MINUTE).await.unwrap();
    assert!(inserted.iter().all(|n| *n));
    let per = |events: &[UsageEvent], t: &Tenant| -> Vec<i64> {
        events.iter().filter(|e| e.tenant_id == t.id.as_str()).map(|e| e.quantity).collect()
    };
    assert_eq!(per(&events, &acme), vec![4_950, 6_000, 6_000, 6_000, 6_000]);
    // 3 bytes x 39.667 s = 119.001 byte-seconds: floored to 119.
    assert_eq!(per(&events, &globex), vec![119, 180, 180, 180, 180]);
    assert!(events.iter().all(|e| e.kind == EventKind::Storage && e.job_id.is_empty()));
    // Run again at once, or by another leader: nothing twice.
    assert!(store.close_storage_periods(MINUTE).await.unwrap().0.is_empty());
    // acme's clip is removed at 5 min 20 s: billed to that moment, then nothing.
    clock.set(t0 + 5 * MINUTE + 20_000);
    store.forget_output(&a).await.unwrap();
    clock.set(t0 + 7 * MINUTE);
    let (events, _) = store.close_storage_periods(MINUTE).await.unwrap();
    assert_eq!(per(&events, &acme), vec![2_000]);
    assert_eq!(per(&events, &globex), vec![180, 180]);
    // The ledger: size x time kept, to the byte-second (acme: 100 B x 309.5 s).
    let ledger = store.events(&Default::default()).await.unwrap();
    let total = |t: &Tenant| -> i64 {
        ledger.iter().filter(|e| e.kind == EventKind::Storage && e.tenant_id == t.id.as_str()).map(|e| e.quantity).sum()
    };
    assert_eq!(total(&acme), 30_950);
    let globex_exact = 3.0 * (7.0 * 60.0 - 20.333);
    assert!((total(&globex) as f64 - globex_exact).abs() < 1.0, "{} vs {globex_exact}", total(&globex));
    assert_eq!(store.usage_totals(&acme.id).await.unwrap().storage_byte_seconds, 30_950);
    // A period must divide a day.
    assert!(store.close_storage_periods(7 * MINUTE).await.is_err());
}

/// Claims spread: in a fleet a worker takes at most its share of a clip's
/// chunks (the chunks divided among the live workers, rounded up); a lone
/// worker takes every chunk.
async fn a_clip_spreads_over_idle_workers(store: Store) {
    let t = tenant(&store, "acme", "mid").await;
    let job = NewJob { chunk_frames: 24, ..new_job(&t, Lane::Standard, None, 240) };
    submit(&store, &t, &job).await;
    let (a, b, c) = (worker(), worker(), worker());
    let mut held = std::collections::BTreeMap::new();
    for w in [&a, &b, &c] {
        while let Some(claimed) = store.claim_sharing(w, 60_000, 2).await.unwrap() {
            assert_eq!(claimed.job.id, job.id);
            *held.entry(w.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!((held[&a], held[&b], held[&c]), (4, 4, 2), "ten chunks over three workers");
    // Alone (no peer), a worker takes what is queued: a second clip whole.
    let second = NewJob { chunk_frames: 24, ..new_job(&t, Lane::Standard, None, 96) };
    submit(&store, &t, &second).await;
    let mut alone = 0;
    while let Some(claimed) = store.claim_sharing(&a, 60_000, 0).await.unwrap() {
        assert_eq!(claimed.job.id, second.id);
        alone += 1;
    }
    assert_eq!(alone, 4);
}

/// On PostgreSQL a claim that meets a job whose row is locked (a settlement or
/// a cancel under way) skips it and takes the next candidate in the same
/// statement, instead of returning nothing for the tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_claim_skips_a_locked_job_and_takes_the_next() {
    use sqlx::Connection;
    let Some(server) = tessera_store::testing::postgres_server() else { return };
    let db = tessera_store::testing::TestDatabase::create(&server).await.unwrap();
    let store = Store::open(&tessera_store::StoreUrl::parse(db.url()).unwrap()).await.unwrap();
    let t = tenant(&store, "acme", "mid").await;
    let first = queued(&store, &t, Lane::Standard).await;
    let second = queued(&store, &t, Lane::Standard).await;
    // Another session holds the first job's row, as a settlement would.
    let mut other = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE").bind(first.as_str()).execute(&mut *tx).await.unwrap();
    let claimed = store.claim(&worker(), 60_000).await.unwrap().expect("the next job, not nothing");
    assert_eq!(claimed.job.id, second);
    tx.rollback().await.unwrap();
    let claimed = store.claim(&worker(), 60_000).await.unwrap().expect("the first job, once free");
    assert_eq!(claimed.job.id, first);
    drop(store);
    drop(db);
}
