//! The embedded backend: one SQLite file in the data directory (WAL,
//! `synchronous=FULL`: a commit is on disk before it is acknowledged, even
//! across power loss). One node: SQLite's write lock serialises every
//! transaction, so the claim needs no row locks.
//!
//! SQLite has one writer at a time. This process's writers take turns in a
//! FIFO queue before they ask SQLite ([`SqliteBackend::turn`]): SQLite's own
//! busy handler sleeps and retries, which is not fair, and under load one
//! writer could miss the lock for its whole timeout and fail with "database is
//! locked". The busy timeout then only covers other processes (a CLI command
//! beside the server). Every write transaction starts with `BEGIN IMMEDIATE`
//! (the write lock up front, not an upgrade half-way, which SQLite refuses
//! without waiting), rolls back on any error, and a connection left in a
//! transaction by a failed commit (a full disk) is closed instead of going
//! back to the pool, where it would hold the lock and wedge every later writer.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tessera_metering::event::{month_of, AttemptRef};
use tessera_metering::tiers::MonthUsage;
use tessera_metering::{Lane, Outcome, Pass, UsageEvent};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::backend::{
    Backend, BackendKind, EndedAttempt, GpuTotals, Reaped, Reserve, Result, Retained, Settled, StoredSegment, Submit,
    Submitted,
};
use crate::binds::{self, EVENT_INSERT_COLUMNS, JOB_INSERT_COLUMNS};
use crate::chunks;
use crate::error::{classify, Fault, StoreError};
use crate::faults::Faults;
use crate::rows::{self, sqlite_static as q, Columns, CHUNK_COLUMNS, CURRENT_COLUMNS, JOB_COLUMNS, JOB_RETURNING};
use crate::storage;
use crate::transition::{self, AttemptEnd};
use crate::types::{
    chunk_plan, Chunk, ChunkKind, ChunkState, Claimed, EventFilter, Job, JobFilter, JobId, JobState, LaneDepth, Lease,
    NewJob, Tenant, TenantId, UsageTotals, Worker, WorkerId, WorkerInfo,
};
use crate::LOST_LEASE_REASON;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds a lease to the `?1`..`?4` of a fenced statement.
fn fence<'q>(query: SqliteQuery<'q>, lease: &Lease) -> SqliteQuery<'q> {
    query
        .bind(lease.job.as_str().to_string())
        .bind(i64::from(lease.chunk))
        .bind(i64::from(lease.attempt))
        .bind(lease.owner.as_str().to_string())
}

/// What SQLite's (extended) result codes mean for the caller.
fn fault(code: &str, _message: &str) -> Option<Fault> {
    match code.parse::<i64>().ok()? & 0xff {
        13 => Some(Fault::NoSpace),          // SQLITE_FULL
        5 | 6 => Some(Fault::Busy),          // SQLITE_BUSY, SQLITE_LOCKED
        10 | 14 => Some(Fault::Unavailable), // SQLITE_IOERR, SQLITE_CANTOPEN
        _ => None,
    }
}

fn err(e: sqlx::Error) -> StoreError {
    classify(e, fault)
}

trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for std::result::Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(err)
    }
}

/// A write transaction, and this process's turn at SQLite's one writer.
struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _turn: OwnedMutexGuard<()>,
}

impl WriteTx {
    async fn commit(self) -> Result<()> {
        self.tx.commit().await.db()
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

/// The SQLite backend.
#[derive(Debug)]
pub struct SqliteBackend {
    pool: SqlitePool,
    /// This process's writers, in turn.
    writer: Arc<Mutex<()>>,
    faults: Faults,
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub async fn open(url: &str, path: &Path) -> Result<Self> {
        let open_err = |reason: String| StoreError::Open { url: url.to_string(), reason };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(format!("creating {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Other processes (a CLI command beside the server); this one's writers queue.
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .before_acquire(|conn, _| Box::pin(crate::fit_for_reuse(conn)))
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Migrate { backend: "sqlite", reason: e.to_string() })?;
        Ok(Self { pool, writer: Arc::new(Mutex::new(())), faults: Faults::default() })
    }

    /// Waits for this process's turn to write (FIFO).
    async fn turn(&self) -> OwnedMutexGuard<()> {
        self.writer.clone().lock_owned().await
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Starts a write transaction, in turn.
    async fn write(&self) -> Result<WriteTx> {
        let turn = self.turn().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await.db()?;
        Ok(WriteTx { tx, _turn: turn })
    }

    async fn job_in(tx: &mut SqliteConnection, id: &str) -> Result<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await.db()?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn month_usage_in(tx: &mut SqliteConnection, tenant: &str, month: &str) -> Result<MonthUsage> {
        let sql = rows::sqlite_placeholders(rows::MONTH_USAGE_SQL);
        let rows = sqlx::query(&sql).bind(tenant).bind(month).fetch_all(&mut *tx).await.db()?;
        rows::month_usage(&rows)
    }

    /// Appends events inside `tx`; for each, whether it was new.
    async fn append_in(tx: &mut sqlx::SqliteConnection, events: &[UsageEvent]) -> Result<Vec<bool>> {
        let sql = format!(
            "INSERT INTO usage_events ({EVENT_INSERT_COLUMNS}) VALUES ({}, {}) ON CONFLICT (id) DO NOTHING",
            binds::placeholders("?", 1, 17),
            binds::billing_month_sql("?6", "?4", "?18")
        );
        let mut inserted = Vec::with_capacity(events.len());
        for e in events {
            let res = binds::event(sqlx::query(&sql), e).execute(&mut *tx).await.db()?;
            inserted.push(res.rows_affected() == 1);
        }
        Ok(inserted)
    }

    async fn release_in(tx: &mut sqlx::SqliteConnection, job: &str) -> Result<()> {
        sqlx::query("UPDATE reservations SET released = 1 WHERE job_id = ?").bind(job).execute(&mut *tx).await.db()?;
        Ok(())
    }

    /// Applies a transition to the fenced chunk of `lease` and its job inside
    /// `tx` (under the write lock, so nothing changes between read and write).
    async fn transition_in(
        tx: &mut SqliteConnection,
        lease: &Lease,
        end: &AttemptEnd,
        now_ms: i64,
    ) -> Result<transition::ChunkSettlement> {
        let job = sqlx::query(&format!("SELECT {CURRENT_COLUMNS} FROM jobs WHERE id = ?1"))
            .bind(lease.job.as_str())
            .fetch_optional(&mut *tx)
            .await
            .db()?
            .ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        let chunk = fence(sqlx::query(q(chunks::FENCED)), lease)
            .fetch_optional(&mut *tx)
            .await
            .db()?
            .ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        let siblings = sqlx::query(q(chunks::SIBLINGS))
            .bind(lease.job.as_str())
            .bind(i64::from(lease.chunk))
            .fetch_one(&mut *tx)
            .await
            .db()?;
        let cur = rows::chunk_current(&chunk, &siblings)?;
        // Errors name the settling attempt, not the job's latest.
        let job = transition::Current { attempts: lease.attempt, ..rows::current(&job)? };
        let mut s =
            transition::settle_chunk(now_ms, &job, &cur, end).map_err(|e| StoreError::corrupt("settlement", e))?;
        let res = binds::chunk_update(fence(sqlx::query(q(chunks::UPDATE_CHUNK)), lease), &s.chunk)
            .execute(&mut *tx)
            .await
            .db()?;
        if res.rows_affected() != 1 {
            return Err(StoreError::LeaseLost(lease.clone()));
        }
        if let Some(state) = s.close_others {
            let close = sqlx::query(q(chunks::CLOSE_OTHERS)).bind(lease.job.as_str()).bind(state.as_str());
            close.execute(&mut *tx).await.db()?;
        }
        if s.unblock_join {
            let unblock = sqlx::query(q(chunks::UNBLOCK_JOIN)).bind(lease.job.as_str()).bind(now_ms);
            unblock.execute(&mut *tx).await.db()?;
        }
        let ended =
            sqlx::query(q(chunks::END_ATTEMPT)).bind(lease.job.as_str()).bind(i64::from(lease.attempt)).bind(now_ms);
        ended.execute(&mut *tx).await.db()?;
        for idx in &s.redo {
            let gone =
                sqlx::query(q(storage::REMOVE_SEGMENT)).bind(lease.job.as_str()).bind(i64::from(*idx)).bind(now_ms);
            gone.execute(&mut *tx).await.db()?;
        }
        if let Some(seg) = &s.chunk.segment {
            let kept = sqlx::query(q(storage::STORE_OBJECT))
                .bind(&seg.path)
                .bind("segment")
                .bind(Some(i64::from(lease.chunk)));
            kept.bind(seg.bytes).bind(now_ms).bind(lease.job.as_str()).execute(&mut *tx).await.db()?;
        }
        if let Some(out) = &s.job.output {
            let kept = sqlx::query(q(storage::STORE_OBJECT)).bind(&out.path).bind("clip").bind(None::<i64>);
            kept.bind(out.bytes).bind(now_ms).bind(lease.job.as_str()).execute(&mut *tx).await.db()?;
        }
        for idx in &s.redo {
            let redo = sqlx::query(q(chunks::REDO_RANGE)).bind(lease.job.as_str()).bind(i64::from(*idx)).bind(now_ms);
            redo.execute(&mut *tx).await.db()?;
        }
        if !s.job.state.is_final() {
            let done = sqlx::query(q(chunks::FRAMES_DONE)).bind(lease.job.as_str()).fetch_one(&mut *tx).await.db()?;
            s.job.frames_done = u32::try_from(done.int("frames")?).unwrap_or(0);
        }
        let sql = format!("UPDATE jobs SET {} WHERE id = ?13", binds::assignments("?", 1));
        binds::update(sqlx::query(&sql), &s.job).bind(lease.job.as_str()).execute(&mut *tx).await.db()?;
        if s.job.release_reservation {
            Self::release_in(tx, lease.job.as_str()).await?;
        }
        Ok(s)
    }

    /// Inserts a new job's chunks (after its row) inside `tx`.
    async fn insert_chunks(tx: &mut SqliteConnection, job: &NewJob) -> Result<()> {
        let sql = q(chunks::INSERT_CHUNK);
        for (idx, (kind, first, frames)) in chunk_plan(job.frames_total, job.chunk_frames).into_iter().enumerate() {
            let state = if kind == ChunkKind::Join { ChunkState::Blocked } else { ChunkState::Queued };
            sqlx::query(sql)
                .bind(job.id.as_str())
                .bind(idx as i64)
                .bind(kind.as_str())
                .bind(i64::from(first))
                .bind(i64::from(frames))
                .bind(state.as_str())
                .execute(&mut *tx)
                .await
                .db()?;
        }
        Ok(())
    }

    /// Numbers the attempt of a claimed chunk and reads what its worker needs.
    async fn start_attempt(
        tx: &mut SqliteConnection,
        job: &str,
        idx: i64,
        owner: &WorkerId,
        now_ms: i64,
    ) -> Result<Claimed> {
        let attempts = sqlx::query(q(chunks::START_ATTEMPT)).bind(job).bind(owner.as_str()).bind(now_ms);
        let attempt = attempts.fetch_one(&mut *tx).await.db()?.int("attempts")?;
        let number = sqlx::query(q(chunks::NUMBER_ATTEMPT)).bind(job).bind(idx).bind(attempt);
        number.execute(&mut *tx).await.db()?;
        let record = sqlx::query(q(chunks::RECORD_ATTEMPT)).bind(job).bind(attempt).bind(idx);
        record.bind(owner.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
        let chunk = sqlx::query(&format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE job_id = ?1 AND idx = ?2"))
            .bind(job)
            .bind(idx)
            .fetch_one(&mut *tx)
            .await
            .db()?;
        let lease = rows::chunk_lease(&chunk)?;
        let chunk = rows::chunk(&chunk)?;
        let job = Self::job_in(tx, job).await?.ok_or_else(|| StoreError::corrupt("claim", "chunk without a job"))?;
        Ok(Claimed { job, chunk, lease })
    }

    async fn gpu_ns_in(
        tx: &mut sqlx::SqliteConnection,
        job: &str,
        attempt: Option<u32>,
    ) -> Result<BTreeMap<Pass, i64>> {
        let rows: Vec<SqliteRow> = sqlx::query(
            "SELECT pass, SUM(quantity) AS ns FROM usage_events
             WHERE job_id = ?1 AND kind = 'gpu' AND (?2 IS NULL OR attempt = ?2) GROUP BY pass",
        )
        .bind(job)
        .bind(attempt.map(i64::from))
        .fetch_all(&mut *tx)
        .await
        .db()?;
        rows.iter().map(|r| Ok((rows::pass(&r.text("pass")?)?, r.int("ns")?))).collect()
    }
}

/// An `EXPLAIN QUERY PLAN`'s rows as text, each step indented under its parent.
fn sqlite_plan(rows: &[SqliteRow]) -> Result<String> {
    let mut depth = std::collections::HashMap::new();
    let mut lines = Vec::with_capacity(rows.len());
    for r in rows {
        let d = depth.get(&r.int("parent")?).map_or(0, |d| d + 1);
        depth.insert(r.int("id")?, d);
        lines.push(format!("{}{}", "  ".repeat(d), r.text("detail")?));
    }
    Ok(lines.join("\n"))
}

/// Queued jobs and the oldest's age per lane (the `jobs_queued` index).
const DEPTHS_SQL: &str = "SELECT lane_rank, COUNT(*) AS queued, MIN(created_at_ms) AS oldest FROM jobs
             WHERE state = 'queued' GROUP BY lane_rank";

#[async_trait]
impl Backend for SqliteBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Sqlite
    }

    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn server_clock_ms(&self) -> Result<Option<i64>> {
        Ok(None)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.db()?;
        Ok(())
    }

    async fn create_tenant(&self, t: &Tenant, api_key_hash: Option<&str>, now_ms: i64) -> Result<()> {
        let _turn = self.turn().await;
        let res =
            sqlx::query("INSERT INTO tenants (id, name, tier, api_key_hash, created_at_ms) VALUES (?, ?, ?, ?, ?)")
                .bind(t.id.as_str())
                .bind(&t.name)
                .bind(&t.tier)
                .bind(api_key_hash)
                .bind(now_ms)
                .execute(&self.pool)
                .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::TenantExists(t.name.clone())),
            Err(e) => Err(err(e)),
        }
    }

    async fn set_api_key(&self, tenant: &TenantId, api_key_hash: &str) -> Result<()> {
        let _turn = self.turn().await;
        let res = sqlx::query("UPDATE tenants SET api_key_hash = ? WHERE id = ?")
            .bind(api_key_hash)
            .bind(tenant.as_str())
            .execute(&self.pool)
            .await
            .db()?;
        match res.rows_affected() {
            1 => Ok(()),
            _ => Err(StoreError::UnknownTenant(tenant.to_string())),
        }
    }

    async fn tenant(&self, name_or_id: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, tier FROM tenants WHERE name = ?1 OR id = ?1")
            .bind(name_or_id)
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.as_ref().map(rows::tenant).transpose()
    }

    async fn tenant_by_key_hash(&self, api_key_hash: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, tier FROM tenants WHERE api_key_hash = ?")
            .bind(api_key_hash)
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.as_ref().map(rows::tenant).transpose()
    }

    async fn tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT id, name, tier FROM tenants ORDER BY name").fetch_all(&self.pool).await.db()?;
        rows.iter().map(rows::tenant).collect()
    }

    async fn month_usage(&self, tenant: &TenantId, month: &str) -> Result<MonthUsage> {
        let mut conn = self.pool.acquire().await.db()?;
        Self::month_usage_in(&mut conn, tenant.as_str(), month).await
    }

    async fn submit(&self, s: &Submit<'_>) -> Result<Submitted> {
        let mut tx = self.write().await?;
        if let Some(key) = &s.job.idempotency_key {
            let existing =
                sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = ? AND idempotency_key = ?"))
                    .bind(s.tenant.id.as_str())
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await
                    .db()?;
            if let Some(row) = existing {
                let job = rows::job(&row)?;
                return Ok(if job.body_hash == s.job.body_hash {
                    Submitted::Existing(job)
                } else {
                    Submitted::Conflict(job)
                });
            }
        }
        let month = month_of(s.now_ms);
        let usage = Self::month_usage_in(&mut tx, s.tenant.id.as_str(), &month).await?;
        let warnings = s.tier.check_caps(&s.tenant.tier, &usage, s.output_seconds, s.price)?;
        sqlx::query(
            "INSERT INTO reservations (job_id, tenant_id, month, frames, fps, amount_micros) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(s.job.id.as_str())
        .bind(s.tenant.id.as_str())
        .bind(&month)
        .bind(i64::from(s.job.frames_total))
        .bind(i64::from(s.job.fps))
        .bind(s.job.price_micros)
        .execute(&mut *tx)
        .await
        .db()?;
        let sql = format!(
            "INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({}, 'queued') RETURNING {JOB_RETURNING}",
            binds::placeholders("?", 1, 19)
        );
        let row =
            binds::new_job(sqlx::query(&sql), s.job, s.tier_weight_ms, s.now_ms).fetch_one(&mut *tx).await.db()?;
        let job = rows::job(&row)?;
        Self::insert_chunks(&mut tx, s.job).await?;
        self.faults.check("submit")?;
        tx.commit().await?;
        Ok(Submitted::New { job, warnings })
    }

    #[cfg(feature = "testing")]
    async fn enqueue_unchecked(&self, jobs: &[NewJob], tier_weight_ms: i64, now_ms: i64) -> Result<()> {
        let mut tx = self.write().await?;
        let sql =
            format!("INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({}, 'queued')", binds::placeholders("?", 1, 19));
        for job in jobs {
            binds::new_job(sqlx::query(&sql), job, tier_weight_ms, now_ms).execute(&mut *tx).await.db()?;
            Self::insert_chunks(&mut tx, job).await?;
        }
        tx.commit().await
    }

    async fn reserve(&self, r: &Reserve<'_>) -> Result<Vec<String>> {
        let mut tx = self.write().await?;
        let exists = sqlx::query("SELECT 1 FROM reservations WHERE job_id = ?").bind(r.job.as_str());
        if exists.fetch_optional(&mut *tx).await.db()?.is_some() {
            return Ok(Vec::new());
        }
        let month = month_of(r.now_ms);
        let usage = Self::month_usage_in(&mut tx, r.tenant.id.as_str(), &month).await?;
        let warnings = r.tier.check_caps(&r.tenant.tier, &usage, r.output_seconds, r.price)?;
        sqlx::query(
            "INSERT INTO reservations (job_id, tenant_id, month, frames, fps, amount_micros) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(r.job.as_str())
        .bind(r.tenant.id.as_str())
        .bind(&month)
        .bind(i64::from(r.frames))
        .bind(i64::from(r.fps))
        .bind(tessera_metering::price::to_micros(r.price))
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await?;
        Ok(warnings)
    }

    async fn finish_reserved(&self, job: &JobId, events: &[UsageEvent]) -> Result<Vec<bool>> {
        let mut tx = self.write().await?;
        let inserted = Self::append_in(&mut tx, events).await?;
        Self::release_in(&mut tx, job.as_str()).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn job(&self, id: &JobId) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn jobs(&self, tenant: &TenantId, f: &JobFilter) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = ?1 AND (?2 IS NULL OR state = ?2)
             AND (?3 IS NULL OR lane = ?3)
             AND (?4 IS NULL OR created_at_ms < ?4 OR (created_at_ms = ?4 AND id < ?5))
             ORDER BY created_at_ms DESC, id DESC LIMIT ?6"
        ))
        .bind(tenant.as_str())
        .bind(f.state.map(JobState::as_str))
        .bind(f.lane.map(Lane::as_str))
        .bind(f.before.as_ref().map(|b| b.0))
        .bind(f.before.as_ref().map(|b| b.1.as_str()))
        .bind(i64::from(f.limit))
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(rows::job).collect()
    }

    async fn request_cancel(&self, id: &JobId, now_ms: i64) -> Result<Option<Job>> {
        // Under the write lock, the state read here is the state changed here.
        let mut tx = self.write().await?;
        let state = sqlx::query("SELECT state FROM jobs WHERE id = ?").bind(id.as_str());
        let Some(row) = state.fetch_optional(&mut *tx).await.db()? else { return Ok(None) };
        if !rows::state(&row)?.is_final() {
            let progress = sqlx::query(q(chunks::PROGRESS)).bind(id.as_str()).fetch_one(&mut *tx).await.db()?;
            let (running, started) = (progress.int("running")?, progress.int("started")?);
            if running == 0 && started == 0 {
                // Nothing delivered and nothing running: cancelled at once.
                sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at_ms = ? WHERE id = ?")
                    .bind(now_ms)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .db()?;
                let close = sqlx::query(q(chunks::CLOSE_OTHERS)).bind(id.as_str()).bind(ChunkState::Cancelled.as_str());
                close.execute(&mut *tx).await.db()?;
                Self::release_in(&mut tx, id.as_str()).await?;
            } else {
                // Running chunks stop at their next frame; the job ends when
                // its last one settles (at its join when it has one).
                let flag = sqlx::query("UPDATE jobs SET cancel_requested = TRUE WHERE id = ?").bind(id.as_str());
                flag.execute(&mut *tx).await.db()?;
                sqlx::query(q(chunks::CANCEL_QUEUED)).bind(id.as_str()).execute(&mut *tx).await.db()?;
                if running == 0 {
                    let unblock = sqlx::query(q(chunks::UNBLOCK_JOIN)).bind(id.as_str()).bind(now_ms);
                    unblock.execute(&mut *tx).await.db()?;
                }
            }
        }
        let job = Self::job_in(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn claim(&self, owner: &WorkerId, now_ms: i64, lease_ms: i64, sharers: u32) -> Result<Option<Claimed>> {
        let mut tx = self.write().await?;
        let row = sqlx::query(q(chunks::CLAIM_SQLITE))
            .bind(now_ms)
            .bind(owner.as_str())
            .bind(lease_ms)
            .bind(i64::from(sharers.max(1)))
            .fetch_optional(&mut *tx)
            .await
            .db()?;
        let Some(row) = row else { return Ok(None) };
        let claimed = Self::start_attempt(&mut tx, &row.text("job_id")?, row.int("idx")?, owner, now_ms).await?;
        tx.commit().await?;
        Ok(Some(claimed))
    }

    async fn heartbeat(&self, lease: &Lease, until_ms: i64, frames_done: u32) -> Result<bool> {
        let mut tx = self.write().await?;
        let beat = fence(sqlx::query(q(chunks::HEARTBEAT)), lease).bind(until_ms).bind(i64::from(frames_done));
        beat.fetch_optional(&mut *tx).await.db()?.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        let row = sqlx::query(q(chunks::CANCEL_ASKED)).bind(lease.job.as_str()).fetch_one(&mut *tx).await.db()?;
        let cancel = row.flag("cancel_requested")?;
        tx.commit().await?;
        Ok(cancel)
    }

    async fn settle(&self, lease: &Lease, end: &AttemptEnd, events: &[UsageEvent], now_ms: i64) -> Result<Settled> {
        let mut tx = self.write().await?;
        Self::transition_in(&mut tx, lease, end, now_ms).await?;
        let inserted = Self::append_in(&mut tx, events).await?;
        let job =
            Self::job_in(&mut tx, lease.job.as_str()).await?.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        self.faults.check("settle")?;
        tx.commit().await?;
        Ok(Settled { job, inserted })
    }

    async fn reap(&self, now_ms: i64, me: &WorkerId, live: &[JobId], limit: u32) -> Result<Vec<Reaped>> {
        let mut tx = self.write().await?;
        let live = serde_json::to_string(&live).map_err(|e| StoreError::Query(e.to_string()))?;
        let expired = sqlx::query(
            "SELECT c.job_id AS job_id, c.idx AS idx, c.kind AS kind, c.attempt AS attempt, c.lease_owner AS lease_owner,
                    j.tenant_id AS tenant_id, COALESCE(t.tier, '') AS tier
             FROM chunks c JOIN jobs j ON j.id = c.job_id LEFT JOIN tenants t ON t.id = j.tenant_id
             WHERE c.state = 'running' AND c.lease_until_ms < ?1
               AND (c.lease_owner <> ?2 OR c.job_id NOT IN (SELECT value FROM json_each(?3)))
             ORDER BY c.lease_until_ms LIMIT ?4",
        )
        .bind(now_ms)
        .bind(me.as_str())
        .bind(live)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .db()?;
        let lost = AttemptEnd::Interrupted { reason: LOST_LEASE_REASON.into(), retry_in_ms: 0 };
        let mut reaped = Vec::with_capacity(expired.len());
        for row in &expired {
            let lease = rows::chunk_lease(row)?;
            let tier = row.text("tier")?;
            match Self::transition_in(&mut tx, &lease, &lost, now_ms).await {
                Ok(_) => {}
                // An earlier row of this reap ended the job and with it this chunk.
                Err(StoreError::LeaseLost(_)) => continue,
                Err(e) => return Err(e),
            }
            let attempt = AttemptRef {
                tenant_id: row.text("tenant_id")?,
                tier: tier.clone(),
                job_id: lease.job.to_string(),
                attempt: lease.attempt,
                chunk: (row.text("kind")? != ChunkKind::Whole.as_str()).then_some(lease.chunk),
            };
            let end = UsageEvent { occurred_at_ms: now_ms, ..UsageEvent::attempt_end(&attempt, Outcome::Interrupted) };
            Self::append_in(&mut tx, &[end]).await?;
            let gpu_ns = Self::gpu_ns_in(&mut tx, lease.job.as_str(), Some(lease.attempt)).await?;
            let job =
                Self::job_in(&mut tx, lease.job.as_str()).await?.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
            reaped.push(Reaped { lease, tier, job, gpu_ns });
        }
        self.faults.check("reap")?;
        tx.commit().await?;
        Ok(reaped)
    }

    async fn chunks(&self, job: &JobId) -> Result<Vec<Chunk>> {
        let rows = sqlx::query(&format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE job_id = ?1 ORDER BY idx"))
            .bind(job.as_str())
            .fetch_all(&self.pool)
            .await
            .db()?;
        rows.iter().map(rows::chunk).collect()
    }

    async fn chunk_gpu_ns(&self, job: &JobId) -> Result<BTreeMap<(u32, Pass), i64>> {
        let rows = sqlx::query(q(chunks::CHUNK_GPU)).bind(job.as_str()).fetch_all(&self.pool).await.db()?;
        rows::chunk_gpu(&rows)
    }

    async fn segments(&self) -> Result<Vec<StoredSegment>> {
        let rows = sqlx::query(chunks::SEGMENTS).fetch_all(&self.pool).await.db()?;
        rows.iter().map(rows::stored_segment).collect()
    }

    async fn ended_attempts(&self, from_ms: i64, to_ms: i64, limit: u32) -> Result<Vec<EndedAttempt>> {
        let rows = sqlx::query(q(chunks::ENDED_ATTEMPTS))
            .bind(from_ms)
            .bind(to_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
        rows.iter().map(rows::ended_attempt).collect()
    }

    async fn mark(&self, name: &str) -> Result<Option<i64>> {
        let row = sqlx::query(q(storage::MARK)).bind(name).fetch_optional(&self.pool).await.db()?;
        row.map(|r| r.int("closed_to_ms")).transpose()
    }

    async fn set_mark(&self, name: &str, ms: i64) -> Result<()> {
        sqlx::query(q(storage::SET_MARK)).bind(name).bind(ms).execute(&self.pool).await.db()?;
        Ok(())
    }

    async fn forget_segments(&self, job: &JobId, now_ms: i64) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(q(chunks::FORGET_SEGMENTS)).bind(job.as_str()).execute(&mut *tx).await.db()?;
        sqlx::query(q(storage::REMOVE_SEGMENTS)).bind(job.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
        tx.commit().await
    }

    async fn close_storage_periods(&self, now_ms: i64, period_ms: i64) -> Result<(Vec<UsageEvent>, Vec<bool>)> {
        let mut tx = self.write().await?;
        let start = storage::first_boundary(now_ms, period_ms);
        sqlx::query(q(storage::START_METER)).bind(start).bind(period_ms).execute(&mut *tx).await.db()?;
        let mark = sqlx::query(q(storage::WATERMARK)).fetch_one(&mut *tx).await.db()?;
        let (closed_to, _) = (mark.int("closed_to_ms")?, mark.int("period_ms")?);
        let mut events = Vec::new();
        let mut to = closed_to;
        for a in storage::due_periods(closed_to, period_ms, now_ms) {
            let rows =
                sqlx::query(q(storage::STORED_DURING)).bind(a).bind(a + period_ms).fetch_all(&mut *tx).await.db()?;
            events.extend(storage::period_events(&rows, a, period_ms)?);
            to = a + period_ms;
        }
        let inserted = Self::append_in(&mut tx, &events).await?;
        sqlx::query(q(storage::MOVE_WATERMARK)).bind(to).bind(period_ms).execute(&mut *tx).await.db()?;
        tx.commit().await?;
        Ok((events, inserted))
    }

    async fn depths(&self) -> Result<Vec<(Lane, LaneDepth)>> {
        let rows = sqlx::query(DEPTHS_SQL).fetch_all(&self.pool).await.db()?;
        rows::depths(&rows)
    }

    async fn explain_claim(&self) -> Result<String> {
        let sql = format!("EXPLAIN QUERY PLAN {}", q(chunks::CLAIM_SQLITE));
        let rows =
            sqlx::query(&sql).bind(0i64).bind("w_explain").bind(1i64).bind(3i64).fetch_all(&self.pool).await.db()?;
        let plan: Vec<String> = rows.iter().map(|r| r.text("detail")).collect::<Result<_>>()?;
        Ok(plan.join("\n"))
    }

    async fn explain_hot_paths(&self) -> Result<Vec<(String, String)>> {
        let sample: Vec<(String, i64)> = sqlx::query(crate::backend::EXPLAIN_SAMPLE_SQL)
            .fetch_all(&self.pool)
            .await
            .db()?
            .iter()
            .map(|r| Ok((r.text("tenant_id")?, r.int("occurred_at_ms")?)))
            .collect::<Result<_>>()?;
        let (tenant, month) = crate::backend::explain_binds(&sample, tessera_metering::event::now_ms());
        let plan = |sql: String| format!("EXPLAIN QUERY PLAN {sql}");
        let mut plans = vec![("claim".to_string(), self.explain_claim().await?)];
        let rows = sqlx::query(&plan(DEPTHS_SQL.into())).fetch_all(&self.pool).await.db()?;
        plans.push(("depths".into(), sqlite_plan(&rows)?));
        let sql = plan(rows::sqlite_placeholders(rows::USAGE_TOTALS_SQL));
        let rows = sqlx::query(&sql).bind(&tenant).fetch_all(&self.pool).await.db()?;
        plans.push(("usage totals of a tenant".into(), sqlite_plan(&rows)?));
        let sql = plan(rows::sqlite_placeholders(rows::MONTH_USAGE_SQL));
        let rows = sqlx::query(&sql).bind(&tenant).bind(&month).fetch_all(&self.pool).await.db()?;
        plans.push(("month usage of a tenant".into(), sqlite_plan(&rows)?));
        for with_tenant in [true, false] {
            let sql = plan(rows::sqlite_placeholders(&rows::events_page_sql(with_tenant)));
            let mut q = sqlx::query(&sql).bind(i64::MIN).bind(i64::MAX).bind(i64::MIN).bind("").bind(1000i64);
            if with_tenant {
                q = q.bind(&tenant);
            }
            let rows = q.fetch_all(&self.pool).await.db()?;
            let name = if with_tenant { "events page of a tenant" } else { "events page of all tenants" };
            plans.push((name.into(), sqlite_plan(&rows)?));
        }
        Ok(plans)
    }

    #[cfg(feature = "testing")]
    async fn tamper_with_ledger(&self) -> Result<(Option<String>, Option<String>)> {
        let _turn = self.turn().await;
        let update = sqlx::query("UPDATE usage_events SET quantity = 0").execute(&self.pool).await;
        let delete = sqlx::query("DELETE FROM usage_events").execute(&self.pool).await;
        Ok((update.err().map(|e| e.to_string()), delete.err().map(|e| e.to_string())))
    }

    async fn append_fenced(&self, lease: &Lease, events: &[UsageEvent]) -> Result<Vec<bool>> {
        let mut tx = self.write().await?;
        let held = fence(sqlx::query(q(chunks::HOLDS_LEASE)), lease).fetch_optional(&mut *tx).await.db()?;
        held.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        let inserted = Self::append_in(&mut tx, events).await?;
        self.faults.check("append")?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn append(&self, events: &[UsageEvent]) -> Result<Vec<bool>> {
        let mut tx = self.write().await?;
        let inserted = Self::append_in(&mut tx, events).await?;
        self.faults.check("append")?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn events_page(
        &self,
        f: &EventFilter,
        tenant: Option<&TenantId>,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<UsageEvent>> {
        let sql = rows::sqlite_placeholders(&rows::events_page_sql(tenant.is_some()));
        let (after_ms, after_id) = after.unwrap_or((i64::MIN, String::new()));
        let mut q = sqlx::query(&sql)
            .bind(f.from_ms.unwrap_or(i64::MIN))
            .bind(f.to_ms.unwrap_or(i64::MAX))
            .bind(after_ms)
            .bind(after_id)
            .bind(i64::from(limit));
        if let Some(t) = tenant {
            q = q.bind(t.as_str().to_string());
        }
        let rows = q.fetch_all(&self.pool).await.db()?;
        rows.iter().map(rows::event).collect()
    }

    async fn job_gpu_ns(&self, job: &JobId) -> Result<BTreeMap<Pass, i64>> {
        let mut conn = self.pool.acquire().await.db()?;
        Self::gpu_ns_in(&mut conn, job.as_str(), None).await
    }

    async fn usage_totals(&self, tenant: &TenantId) -> Result<UsageTotals> {
        let sql = rows::sqlite_placeholders(rows::USAGE_TOTALS_SQL);
        let rows = sqlx::query(&sql).bind(tenant.as_str()).fetch_all(&self.pool).await.db()?;
        rows::usage_totals(&rows)
    }

    async fn gpu_ns_totals(&self) -> Result<GpuTotals> {
        let rows = sqlx::query(
            "SELECT g.tenant_id AS tenant_id, g.pass AS pass, COALESCE(e.outcome, 'running') AS outcome,
                    SUM(g.quantity) AS ns
             FROM usage_events g LEFT JOIN usage_events e
               ON e.kind = 'attempt_end' AND e.job_id = g.job_id AND e.attempt = g.attempt
             WHERE g.kind = 'gpu' GROUP BY 1, 2, 3",
        )
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(|r| Ok(((r.text("tenant_id")?, r.text("pass")?, r.text("outcome")?), r.int("ns")?))).collect()
    }

    async fn ledger_charged_micros(&self) -> Result<i64> {
        let row =
            sqlx::query("SELECT COALESCE(SUM(amount_micros), 0) AS micros FROM usage_events WHERE kind = 'output'")
                .fetch_one(&self.pool)
                .await
                .db()?;
        row.int("micros")
    }

    async fn billed_output(&self, job: &JobId) -> Result<Option<(i64, i64)>> {
        let row = sqlx::query("SELECT quantity, amount_micros FROM usage_events WHERE id = ?")
            .bind(format!("{job}/output"))
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.map(|r| Ok((r.int("quantity")?, r.int("amount_micros")?))).transpose()
    }

    async fn retained(&self, finished_before_ms: Option<i64>) -> Result<Vec<Retained>> {
        let rows = sqlx::query(
            "SELECT j.id AS id, j.tenant_id AS tenant_id, COALESCE(t.tier, '') AS tier, j.attempts AS attempts,
                    COALESCE(j.output_bytes, 0) AS bytes, COALESCE(j.finished_at_ms, 0) AS finished_at_ms,
                    j.output_path AS output_path, j.metadata_path AS metadata_path
             FROM jobs j LEFT JOIN tenants t ON t.id = j.tenant_id
             WHERE j.output_path IS NOT NULL AND (?1 IS NULL OR j.finished_at_ms < ?1)",
        )
        .bind(finished_before_ms)
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(rows::retained).collect()
    }

    async fn forget_output(&self, job: &JobId, now_ms: i64) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE jobs SET output_path = NULL, metadata_path = NULL WHERE id = ?")
            .bind(job.as_str())
            .execute(&mut *tx)
            .await
            .db()?;
        sqlx::query(q(storage::REMOVE_CLIP)).bind(job.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
        tx.commit().await
    }

    async fn register_worker(&self, w: &WorkerInfo, now_ms: i64) -> Result<()> {
        let mut tx = self.write().await?;
        // Workers gone for a week leave the registry.
        sqlx::query("DELETE FROM workers WHERE last_heartbeat_ms < ?")
            .bind(now_ms - crate::WORKER_FORGOTTEN_AFTER_MS)
            .execute(&mut *tx)
            .await
            .db()?;
        sqlx::query(
            "INSERT INTO workers (id, host, api_addr, adapter, version, started_at_ms, last_heartbeat_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (id) DO UPDATE SET host = ?2, api_addr = ?3, adapter = ?4, version = ?5,
                 last_heartbeat_ms = ?6, stopped_at_ms = NULL",
        )
        .bind(w.id.as_str())
        .bind(&w.host)
        .bind(&w.api_addr)
        .bind(&w.adapter)
        .bind(&w.version)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .db()?;
        tx.commit().await
    }

    async fn worker_heartbeat(&self, id: &WorkerId, jobs_in_flight: u32, now_ms: i64) -> Result<()> {
        let _turn = self.turn().await;
        sqlx::query("UPDATE workers SET last_heartbeat_ms = ?, jobs_in_flight = ? WHERE id = ?")
            .bind(now_ms)
            .bind(i64::from(jobs_in_flight))
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .db()?;
        Ok(())
    }

    async fn worker_stopped(&self, id: &WorkerId, now_ms: i64) -> Result<()> {
        let _turn = self.turn().await;
        sqlx::query("UPDATE workers SET stopped_at_ms = ?, jobs_in_flight = 0 WHERE id = ?")
            .bind(now_ms)
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .db()?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<Worker>> {
        let rows = sqlx::query(
            "SELECT id, host, api_addr, adapter, version, started_at_ms, last_heartbeat_ms, jobs_in_flight,
                    stopped_at_ms FROM workers ORDER BY started_at_ms DESC, id",
        )
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(rows::worker).collect()
    }

    async fn try_lead(&self, task: &str, worker: &WorkerId, now_ms: i64, ttl_ms: i64) -> Result<bool> {
        let _turn = self.turn().await;
        let res = sqlx::query(
            "INSERT INTO leaders (task, holder, until_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (task) DO UPDATE SET holder = ?2, until_ms = ?3
             WHERE leaders.holder = ?2 OR leaders.until_ms < ?4",
        )
        .bind(task)
        .bind(worker.as_str())
        .bind(now_ms + ttl_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .db()?;
        Ok(res.rows_affected() == 1)
    }

    async fn listen(&self, _wake: Arc<tokio::sync::Notify>) -> Result<()> {
        // One node: the process that queues work wakes its own dispatcher.
        Ok(())
    }
}
