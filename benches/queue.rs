//! The store under load, run by hand: `cargo bench --bench queue`.
//!
//! - Claims: with 1k, 10k and 100k jobs queued (lanes, tiers and sizes mixed),
//!   the latency of single claims (p50, p99) and the claims per second of four
//!   concurrent claimers, on SQLite and on PostgreSQL; the claim's plan at the
//!   largest size.
//! - Add to start: a job submitted (admission, reservation, enqueue) until a
//!   waiting worker has claimed it, woken by LISTEN/NOTIFY on PostgreSQL.
//! - Ledger ingestion: N simulated workers append usage events in batches,
//!   each re-sending a tenth of its previous batch; events per second, and the
//!   ledger checked for exactly-once at the end.
//!
//! PostgreSQL: the server in `TESSERA_BENCH_POSTGRES` (or `TESSERA_TEST_POSTGRES`),
//! a fresh database per case. `TESSERA_BENCH_QUEUE_SIZES` (default
//! `1000,10000,100000`), `TESSERA_BENCH_WORKERS` (default 8) and
//! `TESSERA_BENCH_EVENTS` (default 400000) size the runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rust_decimal::Decimal;
use tessera_metering::{AttemptRef, Lane, Pass, PriceBook, QuoteRequest, TimingSource, UsageEvent};
use tessera_store::testing::TestDatabase;
use tessera_store::{EventFilter, JobId, NewJob, Store, StoreUrl, Submitted, Tenant, WorkerId};

/// What one backend case needs: the store, and what keeps it alive.
struct Case {
    store: Store,
    _dir: tempfile::TempDir,
    _db: Option<TestDatabase>,
}

async fn open(backend: &str, server: Option<&str>) -> anyhow::Result<Case> {
    let dir = tempfile::tempdir()?;
    let (url, db) = match backend {
        "postgres" => {
            let db = TestDatabase::create(server.context("no PostgreSQL server")?).await?;
            (StoreUrl::parse(db.url())?, Some(db))
        }
        _ => (StoreUrl::in_data_dir(dir.path()), None),
    };
    Ok(Case { store: Store::open(&url).await?, _dir: dir, _db: db })
}

/// A deterministic stream of pseudo-random numbers (no dependency, same every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn job(t: &Tenant, rng: &mut Lcg) -> NewJob {
    NewJob {
        id: JobId::random(),
        tenant_id: t.id.clone(),
        idempotency_key: None,
        body_hash: "bench".into(),
        spec_json: "{}".into(),
        template: "orbit@2".into(),
        lane: Lane::ALL[(rng.next() % 3) as usize],
        frames_total: 48,
        fps: 24,
        price_micros: 10_000,
        quote: None,
        est_cost_ms: (rng.next() % 5_000) as i64,
        max_wait_ms: 3_600_000,
        max_failures: 6,
        max_interruptions: 24,
        chunk_frames: 0,
    }
}

/// The `q` quantile of `v` (sorted in place), in milliseconds.
fn pct(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN)
}

/// Queues `n` jobs over three tenants (three tiers' weights) in batches.
async fn seed(store: &Store, n: usize) -> anyhow::Result<()> {
    let book = PriceBook::default_book();
    let mut rng = Lcg(7);
    for (i, tier) in ["short", "mid", "enterprise"].iter().enumerate() {
        let t = store.create_tenant(&book, &format!("bench-{tier}"), tier, None).await?;
        let weight = i64::from(book.tiers[*tier].queue_weight_s) * 1000;
        let share = n / 3 + usize::from(i < n % 3);
        let mut left = share;
        while left > 0 {
            let batch: Vec<NewJob> = (0..left.min(5_000)).map(|_| job(&t, &mut rng)).collect();
            store.enqueue_unchecked(&batch, weight).await?;
            left -= batch.len();
        }
    }
    Ok(())
}

struct ClaimFigures {
    p50: f64,
    p99: f64,
    mean: f64,
    per_s: f64,
    seed_s: f64,
}

async fn claims(store: &Store, n: usize) -> anyhow::Result<ClaimFigures> {
    let t = Instant::now();
    seed(store, n).await?;
    let seed_s = t.elapsed().as_secs_f64();
    // Single claims, one after the other: latency.
    let me = WorkerId::random();
    let samples = n.min(1_000) / 2;
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        store.claim(&me, 60_000).await?.context("queue ran dry")?;
        lat.push(t.elapsed());
    }
    let mean = lat.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / lat.len() as f64;
    // Four workers claiming at once: throughput.
    let each = n.min(1_000) / 8;
    let t = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let w = WorkerId::random();
                for _ in 0..each {
                    store.claim(&w, 60_000).await?.context("queue ran dry")?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let per_s = (4 * each) as f64 / t.elapsed().as_secs_f64();
    Ok(ClaimFigures { p50: pct(&mut lat, 0.5), p99: pct(&mut lat, 0.99), mean, per_s, seed_s })
}

/// Submission (admission + enqueue) to claim by a waiting worker, `rounds` times.
async fn add_to_start(store: &Store, rounds: usize) -> anyhow::Result<(f64, f64, f64)> {
    let book = PriceBook::default_book();
    let t = store.create_tenant(&book, "latency", "enterprise", None).await?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::spawn({
        let (store, wake) = (store.clone(), wake.clone());
        async move { store.listen(wake).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(1);
    let claimer = tokio::spawn({
        let (store, wake) = (store.clone(), wake.clone());
        async move {
            let me = WorkerId::random();
            let mut lat = Vec::new();
            while let Some(submitted) = rx.recv().await {
                loop {
                    if store.claim(&me, 60_000).await?.is_some() {
                        lat.push(submitted.elapsed());
                        break;
                    }
                    // A worker's loop: a wake-up, or the 200 ms poll.
                    let _ = tokio::time::timeout(Duration::from_millis(200), wake.notified()).await;
                }
            }
            anyhow::Ok(lat)
        }
    });
    let mut rng = Lcg(11);
    let req = QuoteRequest {
        width: 1280,
        height: 720,
        fps: 24,
        output_seconds: Decimal::TWO,
        advanced: false,
        addons: vec![],
    };
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let start = Instant::now();
        let Submitted::New { .. } = store.submit(&book, &t, &job(&t, &mut rng), &req, Decimal::ONE).await? else {
            anyhow::bail!("not admitted");
        };
        if store.kind() == tessera_store::BackendKind::Sqlite {
            wake.notify_one(); // one node: the API wakes its own dispatcher
        }
        tx.send(start).await?;
    }
    drop(tx);
    let mut lat = claimer.await??;
    listener.abort();
    let mean = lat.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / lat.len() as f64;
    Ok((mean, pct(&mut lat, 0.5), pct(&mut lat, 0.99)))
}

/// `workers` writers append `total` distinct events in batches of 1000, each
/// batch re-sending the last 100 events of the writer's previous batch.
async fn ingest(store: &Store, workers: usize, total: usize) -> anyhow::Result<(f64, f64, usize)> {
    let per_worker = total / workers;
    let t = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let a = AttemptRef {
                    tenant_id: format!("t_{w}"),
                    tier: "mid".into(),
                    job_id: format!("j_{w}"),
                    attempt: 1,
                    chunk: None,
                };
                let (mut sent, mut new) = (0usize, 0usize);
                let mut previous: Vec<UsageEvent> = Vec::new();
                for start in (0..per_worker).step_by(1_000) {
                    let mut batch: Vec<UsageEvent> = previous.iter().rev().take(100).cloned().collect();
                    batch.extend((start..(start + 1_000).min(per_worker)).map(|i| {
                        UsageEvent::gpu(
                            &a,
                            Pass::ALL[i % 3],
                            (i / 3 * 24) as u64,
                            24,
                            1_000_000 + i as u64,
                            TimingSource::Gpu,
                        )
                    }));
                    sent += batch.len();
                    new += store.append(&batch).await?.iter().filter(|n| **n).count();
                    previous = batch;
                }
                anyhow::Ok((sent, new))
            })
        })
        .collect();
    let (mut sent, mut new) = (0, 0);
    for task in tasks {
        let (s, n) = task.await??;
        sent += s;
        new += n;
    }
    let secs = t.elapsed().as_secs_f64();
    // Exactly once: every distinct event is there, once.
    let events = store.events(&EventFilter::default()).await?;
    let distinct = workers * per_worker;
    anyhow::ensure!(new == distinct, "{new} events reported new, {distinct} distinct sent");
    anyhow::ensure!(
        events.len() == distinct,
        "the ledger holds {} events, {distinct} distinct were sent",
        events.len()
    );
    Ok((new as f64 / secs, sent as f64 / secs, sent - new))
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    Ok(std::env::var(name).ok().map(|s| s.parse()).transpose()?.unwrap_or(default))
}

fn main() -> anyhow::Result<()> {
    let server = std::env::var("TESSERA_BENCH_POSTGRES").or_else(|_| std::env::var("TESSERA_TEST_POSTGRES")).ok();
    let sizes: Vec<usize> = std::env::var("TESSERA_BENCH_QUEUE_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let workers = env_usize("TESSERA_BENCH_WORKERS", 8)?;
    let events = env_usize("TESSERA_BENCH_EVENTS", 400_000)?;
    let mut backends = vec!["sqlite"];
    match &server {
        Some(_) => backends.push("postgres"),
        None => println!("PostgreSQL skipped: set TESSERA_BENCH_POSTGRES=postgres://USER@HOST:PORT/postgres"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("{} cores; anchors: graphile-worker reports ~4 ms average from add to start, Lago's REST ingestion ~10k events/s", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("goals: p99 claim <= 10 ms at 100k queued; >= 50k usage events/s on 2 cores\n");
    println!("| backend | queued | seed s | claim p50 ms | claim p99 ms | claim mean ms | claims/s (4 claimers) |");
    println!("|---|---|---|---|---|---|---|");
    let mut plans = Vec::new();
    for backend in &backends {
        for &n in &sizes {
            let case = rt.block_on(open(backend, server.as_deref()))?;
            let f = rt.block_on(claims(&case.store, n))?;
            println!(
                "| {backend} | {n} | {:.1} | {:.3} | {:.3} | {:.3} | {:.0} |",
                f.seed_s, f.p50, f.p99, f.mean, f.per_s
            );
            if n == *sizes.iter().max().unwrap_or(&n) {
                plans.push((backend.to_string(), n, rt.block_on(case.store.explain_claim())?));
            }
        }
    }
    for (backend, n, plan) in plans {
        println!(
            "\nclaim plan on {backend} with {n} queued (~{} left after the bench's claims):\n\n```text\n{}\n```",
            n - n.min(1_000) / 2 - 4 * (n.min(1_000) / 8),
            plan.trim_end()
        );
    }
    println!("\n| backend | add to start mean ms | p50 ms | p99 ms | wake-up |");
    println!("|---|---|---|---|---|");
    for backend in &backends {
        let case = rt.block_on(open(backend, server.as_deref()))?;
        let (mean, p50, p99) = rt.block_on(add_to_start(&case.store, 200))?;
        let how = if *backend == "postgres" { "LISTEN/NOTIFY" } else { "in-process" };
        println!("| {backend} | {mean:.2} | {p50:.2} | {p99:.2} | {how} |");
    }
    println!("\n| backend | writers | distinct events | new events/s | offered events/s (with re-sends) | re-sent duplicates skipped |");
    println!("|---|---|---|---|---|---|");
    for backend in &backends {
        let case = rt.block_on(open(backend, server.as_deref()))?;
        let (new_s, offered_s, dups) = rt.block_on(ingest(&case.store, workers, events))?;
        println!(
            "| {backend} | {workers} | {} | {new_s:.0} | {offered_s:.0} | {dups} (exactly once: checked) |",
            workers * (events / workers)
        );
    }
    Ok(())
}
