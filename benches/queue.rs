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
//! - Hot paths at the largest queue size with a large ledger: the ledger is
//!   loaded (`TESSERA_BENCH_LEDGER_ROWS`, default 10M rows: 200 tenants, one of
//!   them with a tenth of the rows, over six months, GPU windows with their
//!   attempts' ends, egress and storage periods; no billed outputs, which only
//!   a settlement writes) into the store still holding the queue, then: claim
//!   p50/p99, queue depths (`Store::depths`, every second on every worker),
//!   `/v1/usage`'s store calls (`usage_totals`, `month_usage`) for the big
//!   tenant, and 1000-event ledger pages of that tenant and of all; and the
//!   plans of each statement (`Store::explain_hot_paths`), the bench failing
//!   when one scans `usage_events`, `jobs` or `chunks` sequentially. On
//!   PostgreSQL the load is followed by `VACUUM ANALYZE` (through `psql`), as
//!   autovacuum would do on a live ledger.
//!
//! PostgreSQL: the server in `TESSERA_BENCH_POSTGRES` (or `TESSERA_TEST_POSTGRES`),
//! a fresh database per case. `TESSERA_BENCH_QUEUE_SIZES` (default
//! `1000,10000,100000`), `TESSERA_BENCH_WORKERS` (default 8) and
//! `TESSERA_BENCH_EVENTS` (default 400000) and `TESSERA_BENCH_LEDGER_ROWS`
//! (default 10000000) size the runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rust_decimal::Decimal;
use tessera_metering::event::{month_of, now_ms};
use tessera_metering::{AttemptRef, EventKind, Lane, Outcome, Pass, PriceBook, QuoteRequest, TimingSource, UsageEvent};
use tessera_store::testing::TestDatabase;
use tessera_store::{EventFilter, JobId, NewJob, Store, StoreUrl, Submitted, Tenant, TenantId, WorkerId};

/// What one backend case needs: the store, and what keeps it alive.
struct Case {
    store: Store,
    _dir: tempfile::TempDir,
    db: Option<TestDatabase>,
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
    Ok(Case { store: Store::open(&url).await?, _dir: dir, db })
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

/// Rows of one simulated job in the loaded ledger: 3 passes x 12 GPU windows,
/// the attempt's end, its billed output, 7 egress requests, and 5 storage
/// periods of its tenant.
const JOB_ROWS: usize = 50;
/// The loaded ledger spans the six months before now.
const LEDGER_SPAN_MS: i64 = 183 * 86_400_000;
const LEDGER_TENANTS: u64 = 200;

/// The big tenant (a tenth of the ledger) or one of the 199 others (ids only:
/// the ledger does not check them against `tenants`).
fn ledger_tenant(job: usize, big: &str, rng: &mut Lcg) -> String {
    if job % 10 == 0 {
        big.into()
    } else {
        format!("t_{:03}", 1 + rng.next() % (LEDGER_TENANTS - 1))
    }
}

/// The events of simulated job `job` of `jobs`, dated in order over the span.
fn ledger_job(job: usize, jobs: usize, start_ms: i64, big: &str, rng: &mut Lcg) -> Vec<UsageEvent> {
    let at = start_ms + (job as i64) * (LEDGER_SPAN_MS / jobs.max(1) as i64);
    let a = AttemptRef {
        tenant_id: ledger_tenant(job, big, rng),
        tier: "mid".into(),
        job_id: format!("j_{job:08}"),
        attempt: 1,
        chunk: None,
    };
    let mut events = Vec::with_capacity(JOB_ROWS);
    for w in 0..12u64 {
        for pass in Pass::ALL {
            let ns = 2_000_000 + rng.next() % 40_000_000;
            let e = UsageEvent::gpu(&a, pass, w * 24, 24, ns, TimingSource::Gpu);
            events.push(UsageEvent { occurred_at_ms: at + (w as i64) * 1_000, ..e });
        }
    }
    let end = UsageEvent::attempt_end(&a, Outcome::Succeeded);
    events.push(UsageEvent { occurred_at_ms: at + 12_000, ..end });
    // The billable output: written by `finish_reserved`, not `append`.
    events.push(UsageEvent {
        occurred_at_ms: at + 12_500,
        ..UsageEvent::output(&a, 288, 24, "1280x720", "standard", Decimal::new(5, 2))
    });
    for r in 0..7u64 {
        let e = UsageEvent::egress(&a, "w_bench", r, 100_000 + (rng.next() % 1_000_000) as i64);
        events.push(UsageEvent { occurred_at_ms: at + 13_000 + r as i64, ..e });
    }
    for p in 0..5i64 {
        // Distinct per tenant: the job's own milliseconds.
        events.push(UsageEvent::storage_period(&a.tenant_id, "mid", at + 20_000 + p, 60_000, 1 << 30));
    }
    debug_assert_eq!(events.len(), JOB_ROWS);
    events
}

/// Appends about `rows` ledger rows in batches of 10k (one transaction each),
/// two appenders at a time, a tenth of them `big`'s. Returns (rows appended, seconds).
async fn load_ledger(store: &Store, rows: usize, big: &TenantId) -> anyhow::Result<(usize, f64)> {
    let jobs = rows.div_ceil(JOB_ROWS);
    let start_ms = now_ms() - LEDGER_SPAN_MS;
    let per_batch = 10_000 / JOB_ROWS;
    let t = Instant::now();
    let tasks: Vec<_> = (0..2usize)
        .map(|k| {
            let (store, big) = (store.clone(), big.to_string());
            tokio::spawn(async move {
                let mut rng = Lcg(100 + k as u64);
                let mut appended = 0usize;
                let mut first = k * per_batch;
                while first < jobs {
                    let (outputs, batch): (Vec<UsageEvent>, Vec<UsageEvent>) = (first..(first + per_batch).min(jobs))
                        .flat_map(|j| ledger_job(j, jobs, start_ms, &big, &mut rng))
                        .partition(|e| e.kind == EventKind::Output);
                    let mut new = store.append(&batch).await?;
                    // `append` refuses outputs: the batch's outputs end their
                    // (never reserved) renders in one `finish_reserved` call.
                    new.extend(store.finish_reserved(&JobId::new(outputs[0].job_id.clone()), &outputs).await?);
                    anyhow::ensure!(new.iter().all(|n| *n), "a loaded event was already in the ledger");
                    appended += new.len();
                    first += 2 * per_batch;
                }
                anyhow::Ok(appended)
            })
        })
        .collect();
    let mut appended = 0;
    for task in tasks {
        appended += task.await??;
    }
    Ok((appended, t.elapsed().as_secs_f64()))
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// `YYYY-MM` of the month before `month` (`YYYY-MM`).
fn previous_month(month: &str) -> String {
    let (y, m) = month.split_once('-').unwrap_or(("1970", "01"));
    let (y, m): (i32, u32) = (y.parse().unwrap_or(1970), m.parse().unwrap_or(1));
    if m == 1 {
        format!("{}-12", y - 1)
    } else {
        format!("{y}-{:02}", m - 1)
    }
}

/// `YYYY-MM` of the month after `month` (`YYYY-MM`).
fn next_month(month: &str) -> String {
    let (y, m) = month.split_once('-').unwrap_or(("1970", "01"));
    let (y, m): (i32, u32) = (y.parse().unwrap_or(1970), m.parse().unwrap_or(1));
    if m == 12 {
        format!("{}-01", y + 1)
    } else {
        format!("{y}-{:02}", m + 1)
    }
}

/// The ledger's partitions of `months` (bench-only, through `psql`; the
/// upkeep makes each month's ahead of time in production).
fn make_partitions(url: &str, months: &[String]) -> anyhow::Result<()> {
    let sql: String = months.iter().map(|m| format!("SELECT usage_events_partition('{m}');")).collect();
    let out = std::process::Command::new("psql")
        .args([url.split('?').next().unwrap_or(url), "-v", "ON_ERROR_STOP=1", "-qc", &sql])
        .output()
        .context("running psql to make the ledger's partitions")?;
    anyhow::ensure!(out.status.success(), "making partitions failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The planner's statistics, as autovacuum would leave them on a live ledger
/// (bench-only: through `psql`, which the PostgreSQL server comes with).
fn vacuum_analyze(url: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = std::process::Command::new("psql")
        // sqlx's own parameters (`?statement-cache-capacity=...`) are not libpq's.
        .args([url.split('?').next().unwrap_or(url), "-v", "ON_ERROR_STOP=1", "-qc", "VACUUM ANALYZE"])
        .output()
        .context("running psql for VACUUM ANALYZE")?;
    anyhow::ensure!(out.status.success(), "VACUUM ANALYZE failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(t.elapsed().as_secs_f64())
}

/// Times `samples` runs of `f` (after one warm-up run): (p50, p99) in ms.
async fn time<F, Fut, T>(samples: usize, mut f: F) -> anyhow::Result<(f64, f64)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = tessera_store::Result<T>>,
{
    f(0).await?;
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        f(i).await?;
        lat.push(t.elapsed());
    }
    Ok((pct(&mut lat, 0.5), pct(&mut lat, 0.99)))
}

/// The lines of a plan that scan a whole hot table: PostgreSQL's `Seq Scan
/// on` (also `Parallel Seq Scan on`) of `usage_events` or a month's
/// partition of it, `jobs` or `chunks`, unless the table has no pages at all
/// (`cost=0.00..0.00`: next month's partition, made ahead, or the default
/// one, which holds only rows of months without a partition); SQLite's bare
/// `SCAN x` (no `USING ... INDEX`) of any table (its plans name tables by
/// alias; `SEARCH` is an index lookup, and `SCAN CONSTANT ROW`, a subquery's
/// rows or a `CO-ROUTINE`'s are no table).
fn full_scans(plan: &str) -> Vec<&str> {
    let coroutines: Vec<&str> = plan.lines().filter_map(|l| l.trim().strip_prefix("CO-ROUTINE ")).collect();
    plan.lines()
        .map(str::trim)
        .filter(|line| {
            let seq = ["usage_events", "jobs", "chunks"]
                .iter()
                .any(|t| line.contains(&format!("Seq Scan on {t} ")) || line.ends_with(&format!("Seq Scan on {t}")))
                || line.contains("Seq Scan on usage_events_");
            let sqlite = line.strip_prefix("SCAN ").is_some_and(|rest| {
                !rest.contains("USING")
                    && !rest.starts_with("CONSTANT ROW")
                    && !rest.starts_with('(')
                    && !coroutines.contains(&rest)
            });
            (seq && !line.contains("(cost=0.00..0.00 ")) || sqlite
        })
        .collect()
}

struct HotPaths {
    rows: usize,
    load_s: f64,
    /// Months the upkeep rolled up after the load, and its seconds.
    rollup: (usize, f64),
    analyze_s: Option<f64>,
    queued: usize,
    figures: Vec<(&'static str, usize, f64, f64)>,
    plans: Vec<(String, String)>,
}

/// The hot paths of a store holding a queue, once a ledger of `rows` rows is loaded.
async fn hot_paths(case: &Case, rows: usize) -> anyhow::Result<HotPaths> {
    let store = &case.store;
    let big = store.create_tenant(&PriceBook::default_book(), "ledger-big", "mid", None).await?.id;
    if let Some(db) = &case.db {
        // The partitions the upkeep would have made, month after month.
        let mut months = vec![month_of(now_ms() - LEDGER_SPAN_MS)];
        while months.last() != Some(&month_of(now_ms())) {
            months.push(next_month(months.last().map(String::as_str).unwrap_or_default()));
        }
        make_partitions(db.url(), &months)?;
    }
    let (rows, load_s) = load_ledger(store, rows, &big).await?;
    // The upkeep's roll-up of the months that ended (all but this one).
    let t = Instant::now();
    let closed = store.maintain_ledger().await?;
    let rollup = (closed.len(), t.elapsed().as_secs_f64());
    let analyze_s = case.db.as_ref().map(|db| vacuum_analyze(db.url())).transpose()?;
    let mut queued: usize = store.depths().await?.iter().map(|(_, d)| d.queued as usize).sum();
    if queued < 400 {
        // Toy sizes: the claims bench emptied the queue.
        let t = store.create_tenant(&PriceBook::default_book(), "bench-hot", "mid", None).await?;
        let mut rng = Lcg(13);
        let batch: Vec<NewJob> = (0..400).map(|_| job(&t, &mut rng)).collect();
        store.enqueue_unchecked(&batch, 60_000).await?;
        queued += batch.len();
    }
    let mut figures = Vec::new();
    let me = WorkerId::random();
    let claims = (queued / 2).min(200);
    let (p50, p99) = time(claims, |_| store.claim(&me, 60_000)).await?;
    figures.push(("claim", claims, p50, p99));
    let (p50, p99) = time(300, |_| store.depths()).await?;
    figures.push(("queue depths (`Store::depths`)", 300, p50, p99));
    let (p50, p99) = time(20, |_| store.usage_totals(&big)).await?;
    figures.push(("`/v1/usage`: usage totals of the big tenant", 20, p50, p99));
    let (p50, p99) = time(100, |_| store.ledger_charged_micros()).await?;
    figures.push(("charges of the whole ledger (every worker, every 30 s)", 100, p50, p99));
    let (p50, p99) = time(100, |_| store.month_usage(&big)).await?;
    figures.push(("`/v1/usage`: month usage of the big tenant, this month", 100, p50, p99));
    let last_month = previous_month(&month_of(now_ms()));
    let (p50, p99) = time(100, |_| store.month_usage_of(&big, &last_month)).await?;
    figures.push(("month usage of the big tenant, last (full) month", 100, p50, p99));
    for tenant in [Some(big.to_string()), None] {
        let filter = EventFilter { tenant: tenant.clone(), ..EventFilter::default() };
        // Consecutive pages from the start, each after the previous page's last key.
        let mut keys = vec![None];
        for _ in 0..50 {
            let page = store.events_page(&filter, keys.last().cloned().flatten(), 1_000).await?;
            let Some(last) = page.last() else { break };
            keys.push(Some((last.occurred_at_ms, last.id.clone())));
        }
        let pages = keys.len();
        let (p50, p99) = time(pages, |i| store.events_page(&filter, keys[i % keys.len()].clone(), 1_000)).await?;
        let who = if tenant.is_some() { "big tenant" } else { "all tenants" };
        figures.push((leak(format!("ledger page of 1000, {who}, first {pages} pages")), pages, p50, p99));
        // A page deep in the ledger: after the key of an event of the last day.
        let recent = EventFilter { from_ms: Some(now_ms() - 86_400_000), ..filter.clone() };
        let deep = store.events_page(&recent, None, 1).await?.first().map(|e| (e.occurred_at_ms, e.id.clone()));
        let (p50, p99) = time(10, |_| store.events_page(&filter, deep.clone(), 1_000)).await?;
        figures.push((leak(format!("ledger page of 1000, {who}, after a key of the last day")), 10, p50, p99));
    }
    let plans = store.explain_hot_paths().await?;
    Ok(HotPaths { rows, load_s, rollup, analyze_s, queued, figures, plans })
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
    let ledger_rows = env_usize("TESSERA_BENCH_LEDGER_ROWS", 10_000_000)?;
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
    let mut largest = Vec::new();
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
                largest.push((backend.to_string(), case));
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
    // The hot paths, in the stores still holding the largest queue.
    let mut scans = Vec::new();
    for (backend, case) in largest {
        let h = rt.block_on(hot_paths(&case, ledger_rows))?;
        let analyzed = h.analyze_s.map(|s| format!(", then VACUUM ANALYZE in {s:.1} s")).unwrap_or_default();
        println!(
            "\nhot paths on {backend}: {} jobs queued, {} ledger rows loaded in {:.1} s ({:.0} rows/s), \
             {} ended months rolled up in {:.1} s{analyzed}\n",
            h.queued,
            h.rows,
            h.load_s,
            h.rows as f64 / h.load_s,
            h.rollup.0,
            h.rollup.1
        );
        println!("| backend | statement | samples | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|");
        for (name, samples, p50, p99) in &h.figures {
            println!("| {backend} | {name} | {samples} | {p50:.3} | {p99:.3} |");
        }
        for (name, plan) in &h.plans {
            println!("\n{name} plan on {backend}:\n\n```text\n{}\n```", plan.trim_end());
            scans.extend(full_scans(plan).into_iter().map(|l| format!("{backend} {name}: {l}")));
        }
    }
    anyhow::ensure!(scans.is_empty(), "hot-path plans scan a whole table:\n{}", scans.join("\n"));
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
