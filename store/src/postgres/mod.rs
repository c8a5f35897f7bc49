//! The fleet backend: many workers on one PostgreSQL.
//!
//! - The claim is one statement: `FOR UPDATE SKIP LOCKED` over the partial
//!   indexes `jobs_aged (deadline_ms, id)` and `jobs_claim (lane_rank, rank_ms,
//!   id)`, so concurrent workers never wait on each other's rows.
//! - Transitions lock the fenced row (`FOR UPDATE`), admissions lock the
//!   tenant's row, so two admissions of one tenant cannot both take the last of
//!   a cap while other tenants admit in parallel.
//! - Ledger appends are one `INSERT ... SELECT FROM UNNEST(...)` per batch with
//!   `ON CONFLICT (id) DO NOTHING RETURNING id`: duplicates from any worker are
//!   skipped, and the caller learns which rows were new.
//! - Queueing work sends `NOTIFY tessera_jobs`; workers `LISTEN` for it as a
//!   wake-up hint and poll anyway.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use tessera_metering::event::{month_of, AttemptRef};
use tessera_metering::tiers::MonthUsage;
use tessera_metering::{Lane, Outcome, Pass, UsageEvent};

use crate::backend::{
    Backend, BackendKind, EndedAttempt, GpuTotals, Reaped, Reserve, Result, Retained, Settled, StoredSegment, Submit,
    Submitted,
};
use crate::binds::{self, EVENT_INSERT_COLUMNS, JOB_INSERT_COLUMNS};
use crate::chunks;
use crate::error::{classify, Fault, StoreError};
use crate::faults::Faults;
use crate::rows::{self, Columns, CHUNK_COLUMNS, CURRENT_COLUMNS, JOB_COLUMNS, JOB_RETURNING};
use crate::storage;
use crate::transition::{self, AttemptEnd};
use crate::types::{
    chunk_plan, Chunk, ChunkKind, ChunkState, Claimed, EventFilter, Job, JobFilter, JobId, JobState, LaneDepth, Lease,
    NewJob, Tenant, TenantId, UsageTotals, Worker, WorkerId, WorkerInfo,
};
use crate::LOST_LEASE_REASON;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel workers listen on for queued work.
const CHANNEL: &str = "tessera_jobs";
/// Rows per ledger statement.
const APPEND_BATCH: usize = 4096;

/// What PostgreSQL's SQLSTATEs mean for the caller.
fn fault(code: &str, _message: &str) -> Option<Fault> {
    match code {
        "53100" => Some(Fault::NoSpace),                            // disk_full
        "40001" | "40P01" | "55P03" | "57014" => Some(Fault::Busy), // serialization, deadlock, lock/statement timeout
        c if c.starts_with("53") => Some(Fault::Busy),              // insufficient resources, too many connections
        c if c.starts_with("08") || c.starts_with("57P") => Some(Fault::Unavailable), // connection, shutdown
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

type Tx = Transaction<'static, Postgres>;

/// The PostgreSQL backend.
#[derive(Debug)]
pub struct PgBackend {
    pool: PgPool,
    faults: Faults,
}

impl PgBackend {
    /// Connects to `url` and migrates the database (under PostgreSQL's advisory
    /// lock, so workers starting together migrate once).
    pub async fn open(shown: &str, url: &str) -> Result<Self> {
        let open_err = |reason: String| StoreError::Open { url: shown.to_string(), reason };
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl { url: shown.to_string(), reason: e.to_string() })?
            .application_name("tessera");
        // Migrations run on a connection of their own, without the timeouts
        // below: a long migration (or waiting for another worker's, under the
        // migrator's advisory lock) must not be cut off half-way.
        let mut migrating = PgConnection::connect_with(&options).await.map_err(|e| open_err(e.to_string()))?;
        MIGRATOR
            .run(&mut migrating)
            .await
            .map_err(|e| StoreError::Migrate { backend: "postgres", reason: e.to_string() })?;
        if let Err(e) = migrating.close().await {
            tracing::debug!(error = %e, "closing the migration connection");
        }
        // A statement stuck behind a lock or a slow disk fails instead of
        // hanging a worker, and a worker paused (or hung) inside a transaction
        // loses its session instead of holding row locks.
        let options = options.options([
            ("statement_timeout", "30s"),
            ("lock_timeout", "10s"),
            ("idle_in_transaction_session_timeout", "30s"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .before_acquire(|conn, _| Box::pin(crate::fit_for_reuse(conn)))
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Self { pool, faults: Faults::default() })
    }

    async fn begin(&self) -> Result<Tx> {
        self.pool.begin().await.db()
    }

    async fn notify(tx: &mut PgConnection) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *tx).await.db()?;
        Ok(())
    }

    async fn job_in(tx: &mut PgConnection, id: &str) -> Result<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await.db()?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn month_usage_in(tx: &mut PgConnection, tenant: &str, month: &str) -> Result<MonthUsage> {
        let rows = sqlx::query(rows::MONTH_USAGE_SQL).bind(tenant).bind(month).fetch_all(&mut *tx).await.db()?;
        rows::month_usage(&rows)
    }

    /// Appends events inside `tx`, a batch per statement; for each, whether it was new.
    async fn append_in(tx: &mut PgConnection, events: &[UsageEvent]) -> Result<Vec<bool>> {
        let mut inserted = Vec::with_capacity(events.len());
        for batch in events.chunks(APPEND_BATCH) {
            let new: HashSet<String> = unnest_events(batch)
                .fetch_all(&mut *tx)
                .await
                .db()?
                .iter()
                .map(|r| r.text("id"))
                .collect::<Result<_>>()?;
            // An id twice in one batch is inserted once: only its first copy is new.
            let mut seen = HashSet::new();
            inserted.extend(batch.iter().map(|e| new.contains(&e.id) && seen.insert(e.id.as_str())));
        }
        Ok(inserted)
    }

    async fn release_in(tx: &mut PgConnection, job: &str) -> Result<()> {
        sqlx::query("UPDATE reservations SET released = 1 WHERE job_id = $1").bind(job).execute(&mut *tx).await.db()?;
        Ok(())
    }

    /// Applies a transition to the fenced chunk of `lease` and its job inside `tx`.
    async fn transition_in(
        tx: &mut PgConnection,
        lease: &Lease,
        end: &AttemptEnd,
        now_ms: i64,
    ) -> Result<transition::ChunkSettlement> {
        // The job's row first: see the lock order in `chunks`.
        let job = sqlx::query(&format!("SELECT {CURRENT_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"))
            .bind(lease.job.as_str())
            .fetch_optional(&mut *tx)
            .await
            .db()?
            .ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        let fenced = format!("{} FOR UPDATE", chunks::FENCED);
        let chunk = fence(sqlx::query(&fenced), lease)
            .fetch_optional(&mut *tx)
            .await
            .db()?
            .ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        let siblings = sqlx::query(chunks::SIBLINGS)
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
        let res = binds::chunk_update(fence(sqlx::query(chunks::UPDATE_CHUNK), lease), &s.chunk)
            .execute(&mut *tx)
            .await
            .db()?;
        if res.rows_affected() != 1 {
            return Err(StoreError::LeaseLost(lease.clone()));
        }
        if let Some(state) = s.close_others {
            let close = sqlx::query(chunks::CLOSE_OTHERS).bind(lease.job.as_str()).bind(state.as_str());
            close.execute(&mut *tx).await.db()?;
        }
        if s.unblock_join {
            sqlx::query(chunks::UNBLOCK_JOIN).bind(lease.job.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
        }
        let ended =
            sqlx::query(chunks::END_ATTEMPT).bind(lease.job.as_str()).bind(i64::from(lease.attempt)).bind(now_ms);
        ended.execute(&mut *tx).await.db()?;
        for idx in &s.redo {
            let gone = sqlx::query(storage::REMOVE_SEGMENT).bind(lease.job.as_str()).bind(i64::from(*idx)).bind(now_ms);
            gone.execute(&mut *tx).await.db()?;
        }
        if let Some(seg) = &s.chunk.segment {
            let kept =
                sqlx::query(storage::STORE_OBJECT).bind(&seg.path).bind("segment").bind(Some(i64::from(lease.chunk)));
            kept.bind(seg.bytes).bind(now_ms).bind(lease.job.as_str()).execute(&mut *tx).await.db()?;
        }
        if let Some(out) = &s.job.output {
            let kept = sqlx::query(storage::STORE_OBJECT).bind(&out.path).bind("clip").bind(None::<i64>);
            kept.bind(out.bytes).bind(now_ms).bind(lease.job.as_str()).execute(&mut *tx).await.db()?;
        }
        for idx in &s.redo {
            let redo = sqlx::query(chunks::REDO_RANGE).bind(lease.job.as_str()).bind(i64::from(*idx)).bind(now_ms);
            redo.execute(&mut *tx).await.db()?;
        }
        if !s.job.state.is_final() {
            let done = sqlx::query(chunks::FRAMES_DONE).bind(lease.job.as_str()).fetch_one(&mut *tx).await.db()?;
            s.job.frames_done = u32::try_from(done.int("frames")?).unwrap_or(0);
        }
        let sql = format!("UPDATE jobs SET {} WHERE id = $13", binds::assignments("$", 1));
        binds::update(sqlx::query(&sql), &s.job).bind(lease.job.as_str()).execute(&mut *tx).await.db()?;
        if s.job.release_reservation {
            Self::release_in(tx, lease.job.as_str()).await?;
        }
        if s.chunk.state == ChunkState::Queued || s.unblock_join || !s.redo.is_empty() {
            Self::notify(tx).await?;
        }
        Ok(s)
    }

    /// Inserts a new job's chunks (after its row) inside `tx`.
    async fn insert_chunks(tx: &mut PgConnection, job: &NewJob) -> Result<()> {
        for (idx, (kind, first, frames)) in chunk_plan(job.frames_total, job.chunk_frames).into_iter().enumerate() {
            let state = if kind == ChunkKind::Join { ChunkState::Blocked } else { ChunkState::Queued };
            sqlx::query(chunks::INSERT_CHUNK)
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
        tx: &mut PgConnection,
        job: &str,
        idx: i64,
        owner: &WorkerId,
        now_ms: i64,
    ) -> Result<Claimed> {
        let attempts = sqlx::query(chunks::START_ATTEMPT).bind(job).bind(owner.as_str()).bind(now_ms);
        let attempt = attempts.fetch_one(&mut *tx).await.db()?.int("attempts")?;
        sqlx::query(chunks::NUMBER_ATTEMPT).bind(job).bind(idx).bind(attempt).execute(&mut *tx).await.db()?;
        let record = sqlx::query(chunks::RECORD_ATTEMPT).bind(job).bind(attempt).bind(idx);
        record.bind(owner.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
        let chunk = sqlx::query(&format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE job_id = $1 AND idx = $2"))
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

    async fn gpu_ns_in(tx: &mut PgConnection, job: &str, attempt: Option<u32>) -> Result<BTreeMap<Pass, i64>> {
        let rows: Vec<PgRow> = sqlx::query(
            "SELECT pass, SUM(quantity)::BIGINT AS ns FROM usage_events
             WHERE job_id = $1 AND kind = 'gpu' AND ($2::BIGINT IS NULL OR attempt = $2) GROUP BY pass",
        )
        .bind(job)
        .bind(attempt.map(i64::from))
        .fetch_all(&mut *tx)
        .await
        .db()?;
        rows.iter().map(|r| Ok((rows::pass(&r.text("pass")?)?, r.int("ns")?))).collect()
    }

    async fn reserve_in(
        tx: &mut PgConnection,
        job: &str,
        tenant: &str,
        month: &str,
        frames: u32,
        fps: u32,
        micros: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO reservations (job_id, tenant_id, month, frames, fps, amount_micros) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(job)
        .bind(tenant)
        .bind(month)
        .bind(i64::from(frames))
        .bind(i64::from(fps))
        .bind(micros)
        .execute(&mut *tx)
        .await
        .db()?;
        Ok(())
    }

    /// Locks the tenant's row: admissions of one tenant take turns.
    async fn lock_tenant(tx: &mut PgConnection, tenant: &TenantId) -> Result<()> {
        let row = sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE").bind(tenant.as_str());
        row.fetch_optional(&mut *tx).await.db()?.ok_or_else(|| StoreError::UnknownTenant(tenant.to_string()))?;
        Ok(())
    }
}

/// Binds a lease to the `$1`..`$4` of a fenced statement.
fn fence<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    lease: &Lease,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    q.bind(lease.job.as_str().to_string())
        .bind(i64::from(lease.chunk))
        .bind(i64::from(lease.attempt))
        .bind(lease.owner.as_str().to_string())
}

/// The bulk insert of a batch of events, one array per column.
fn unnest_events(batch: &[UsageEvent]) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    fn col<T>(batch: &[UsageEvent], f: impl Fn(&UsageEvent) -> T) -> Vec<T> {
        batch.iter().map(f).collect()
    }
    sqlx::query(unnest_sql())
        .bind(col(batch, |e| e.id.clone()))
        .bind(col(batch, |e| e.tenant_id.clone()))
        .bind(col(batch, |e| e.tier.clone()))
        .bind(col(batch, |e| e.job_id.clone()))
        .bind(col(batch, |e| i64::from(e.attempt)))
        .bind(col(batch, |e| e.kind.as_str().to_string()))
        .bind(col(batch, |e| e.pass.map(|p| p.as_str().to_string())))
        .bind(col(batch, |e| i64::try_from(e.seq).unwrap_or(i64::MAX)))
        .bind(col(batch, |e| i64::from(e.frames)))
        .bind(col(batch, |e| e.quantity))
        .bind(col(batch, |e| e.fps.map(i64::from)))
        .bind(col(batch, |e| e.resolution.clone()))
        .bind(col(batch, |e| e.variant.clone()))
        .bind(col(batch, |e| e.amount_micros))
        .bind(col(batch, |e| e.timing.map(|t| t.as_str().to_string())))
        .bind(col(batch, |e| e.outcome.map(|o| o.as_str().to_string())))
        .bind(col(batch, |e| e.occurred_at_ms))
        .bind(col(batch, |e| month_of(e.occurred_at_ms)))
}

/// EXPLAIN plans the claim as of now (without running it).
fn now_ms_for_explain() -> i64 {
    tessera_metering::event::now_ms()
}

fn unnest_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "INSERT INTO usage_events ({EVENT_INSERT_COLUMNS})
             SELECT u.id, u.tenant_id, u.tier, u.job_id, u.attempt, u.kind, u.pass, u.seq, u.frames, u.quantity,
                 u.fps, u.resolution, u.variant, u.amount_micros, u.timing, u.outcome, u.occurred_at_ms, {month}
             FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[],
                 $7::TEXT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::TEXT[], $13::TEXT[],
                 $14::BIGINT[], $15::TEXT[], $16::TEXT[], $17::BIGINT[], $18::TEXT[])
                 AS u({EVENT_INSERT_COLUMNS})
             ON CONFLICT (id) DO NOTHING RETURNING id",
            month = binds::billing_month_sql("u.kind", "u.job_id", "u.month")
        )
    })
}

/// Queued jobs and the oldest's age per lane (the `jobs_queued` index).
const DEPTHS_SQL: &str = "SELECT lane_rank, COUNT(*) AS queued, MIN(created_at_ms) AS oldest FROM jobs
             WHERE state = 'queued' GROUP BY lane_rank";

#[async_trait]
impl Backend for PgBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Postgres
    }

    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn server_clock_ms(&self) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now_ms")
            .fetch_one(&self.pool)
            .await
            .db()?;
        Ok(Some(row.int("now_ms")?))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.db()?;
        Ok(())
    }

    async fn create_tenant(&self, t: &Tenant, api_key_hash: Option<&str>, now_ms: i64) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO tenants (id, name, tier, api_key_hash, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
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
        let res = sqlx::query("UPDATE tenants SET api_key_hash = $1 WHERE id = $2")
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
        let row = sqlx::query("SELECT id, name, tier FROM tenants WHERE name = $1 OR id = $1")
            .bind(name_or_id)
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.as_ref().map(rows::tenant).transpose()
    }

    async fn tenant_by_key_hash(&self, api_key_hash: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, tier FROM tenants WHERE api_key_hash = $1")
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
        let mut tx = self.begin().await?;
        Self::lock_tenant(&mut tx, &s.tenant.id).await?;
        if let Some(key) = &s.job.idempotency_key {
            // Under the tenant's lock: a racing submission with this key has committed or not started.
            let existing =
                sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2"))
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
        let j = s.job;
        Self::reserve_in(&mut tx, j.id.as_str(), s.tenant.id.as_str(), &month, j.frames_total, j.fps, j.price_micros)
            .await?;
        let sql = format!(
            "INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({}, 'queued') RETURNING {JOB_RETURNING}",
            binds::placeholders("$", 1, 19)
        );
        let row = binds::new_job(sqlx::query(&sql), j, s.tier_weight_ms, s.now_ms).fetch_one(&mut *tx).await.db()?;
        let job = rows::job(&row)?;
        Self::insert_chunks(&mut tx, j).await?;
        Self::notify(&mut tx).await?;
        self.faults.check("submit")?;
        tx.commit().await.db()?;
        Ok(Submitted::New { job, warnings })
    }

    #[cfg(feature = "testing")]
    async fn enqueue_unchecked(&self, jobs: &[NewJob], tier_weight_ms: i64, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        let sql =
            format!("INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({}, 'queued')", binds::placeholders("$", 1, 19));
        for job in jobs {
            binds::new_job(sqlx::query(&sql), job, tier_weight_ms, now_ms).execute(&mut *tx).await.db()?;
            Self::insert_chunks(&mut tx, job).await?;
        }
        Self::notify(&mut tx).await?;
        tx.commit().await.db()
    }

    async fn reserve(&self, r: &Reserve<'_>) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        Self::lock_tenant(&mut tx, &r.tenant.id).await?;
        let exists = sqlx::query("SELECT 1 FROM reservations WHERE job_id = $1").bind(r.job.as_str());
        if exists.fetch_optional(&mut *tx).await.db()?.is_some() {
            return Ok(Vec::new());
        }
        let month = month_of(r.now_ms);
        let usage = Self::month_usage_in(&mut tx, r.tenant.id.as_str(), &month).await?;
        let warnings = r.tier.check_caps(&r.tenant.tier, &usage, r.output_seconds, r.price)?;
        let micros = tessera_metering::price::to_micros(r.price);
        Self::reserve_in(&mut tx, r.job.as_str(), r.tenant.id.as_str(), &month, r.frames, r.fps, micros).await?;
        tx.commit().await.db()?;
        Ok(warnings)
    }

    async fn finish_reserved(&self, job: &JobId, events: &[UsageEvent]) -> Result<Vec<bool>> {
        let mut tx = self.begin().await?;
        let inserted = Self::append_in(&mut tx, events).await?;
        Self::release_in(&mut tx, job.as_str()).await?;
        tx.commit().await.db()?;
        Ok(inserted)
    }

    async fn job(&self, id: &JobId) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn jobs(&self, tenant: &TenantId, f: &JobFilter) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND ($2::TEXT IS NULL OR state = $2)
             AND ($3::TEXT IS NULL OR lane = $3)
             AND ($4::BIGINT IS NULL OR created_at_ms < $4 OR (created_at_ms = $4 AND id < $5))
             ORDER BY created_at_ms DESC, id DESC LIMIT $6"
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
        let mut tx = self.begin().await?;
        // The job's row is locked first, so a settlement or a reap changing its
        // chunks meanwhile cannot slip between reading and changing them.
        let state = sqlx::query("SELECT state FROM jobs WHERE id = $1 FOR UPDATE").bind(id.as_str());
        let Some(row) = state.fetch_optional(&mut *tx).await.db()? else { return Ok(None) };
        if !rows::state(&row)?.is_final() {
            let progress = sqlx::query(chunks::PROGRESS).bind(id.as_str()).fetch_one(&mut *tx).await.db()?;
            let (running, started) = (progress.int("running")?, progress.int("started")?);
            if running == 0 && started == 0 {
                // Nothing delivered and nothing running: cancelled at once.
                sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at_ms = $1 WHERE id = $2")
                    .bind(now_ms)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .db()?;
                let close = sqlx::query(chunks::CLOSE_OTHERS).bind(id.as_str()).bind(ChunkState::Cancelled.as_str());
                close.execute(&mut *tx).await.db()?;
                Self::release_in(&mut tx, id.as_str()).await?;
            } else {
                // Running chunks stop at their next frame; the job ends when
                // its last one settles (at its join when it has one).
                let flag = sqlx::query("UPDATE jobs SET cancel_requested = TRUE WHERE id = $1").bind(id.as_str());
                flag.execute(&mut *tx).await.db()?;
                sqlx::query(chunks::CANCEL_QUEUED).bind(id.as_str()).execute(&mut *tx).await.db()?;
                if running == 0 {
                    sqlx::query(chunks::UNBLOCK_JOIN).bind(id.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
                    Self::notify(&mut tx).await?;
                }
            }
        }
        let job = Self::job_in(&mut tx, id.as_str()).await?;
        tx.commit().await.db()?;
        Ok(job)
    }

    async fn claim(&self, owner: &WorkerId, now_ms: i64, lease_ms: i64, sharers: u32) -> Result<Option<Claimed>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(chunks::CLAIM_POSTGRES)
            .bind(now_ms)
            .bind(owner.as_str())
            .bind(lease_ms)
            .bind(i64::from(sharers.max(1)))
            .fetch_optional(&mut *tx)
            .await
            .db()?;
        let Some(row) = row else { return Ok(None) };
        let claimed = Self::start_attempt(&mut tx, &row.text("job_id")?, row.int("idx")?, owner, now_ms).await?;
        tx.commit().await.db()?;
        Ok(Some(claimed))
    }

    async fn heartbeat(&self, lease: &Lease, until_ms: i64, frames_done: u32) -> Result<bool> {
        let mut tx = self.begin().await?;
        let beat = fence(sqlx::query(chunks::HEARTBEAT), lease).bind(until_ms).bind(i64::from(frames_done));
        beat.fetch_optional(&mut *tx).await.db()?.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        let row = sqlx::query(chunks::CANCEL_ASKED).bind(lease.job.as_str()).fetch_one(&mut *tx).await.db()?;
        let cancel = row.flag("cancel_requested")?;
        tx.commit().await.db()?;
        Ok(cancel)
    }

    async fn settle(&self, lease: &Lease, end: &AttemptEnd, events: &[UsageEvent], now_ms: i64) -> Result<Settled> {
        let mut tx = self.begin().await?;
        Self::transition_in(&mut tx, lease, end, now_ms).await?;
        let inserted = Self::append_in(&mut tx, events).await?;
        let job =
            Self::job_in(&mut tx, lease.job.as_str()).await?.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        self.faults.check("settle")?;
        tx.commit().await.db()?;
        Ok(Settled { job, inserted })
    }

    async fn reap(&self, now_ms: i64, me: &WorkerId, live: &[JobId], limit: u32) -> Result<Vec<Reaped>> {
        let mut tx = self.begin().await?;
        let live: Vec<&str> = live.iter().map(JobId::as_str).collect();
        let expired = sqlx::query(
            "SELECT c.job_id AS job_id, c.idx AS idx, c.kind AS kind, c.attempt AS attempt, c.lease_owner AS lease_owner,
                    j.tenant_id AS tenant_id, COALESCE(t.tier, '') AS tier
             FROM chunks c JOIN jobs j ON j.id = c.job_id LEFT JOIN tenants t ON t.id = j.tenant_id
             WHERE c.state = 'running' AND c.lease_until_ms < $1
               AND (c.lease_owner <> $2 OR NOT (c.job_id = ANY($3::TEXT[])))
             ORDER BY c.lease_until_ms LIMIT $4",
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
            // Job first (another reaper or a settlement holding it: skipped),
            // then the chunk, still expired under the lock.
            let job = sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE SKIP LOCKED").bind(lease.job.as_str());
            if job.fetch_optional(&mut *tx).await.db()?.is_none() {
                continue;
            }
            let expired = format!("{} AND lease_until_ms < $5 FOR UPDATE", chunks::FENCED);
            if fence(sqlx::query(&expired), &lease).bind(now_ms).fetch_optional(&mut *tx).await.db()?.is_none() {
                continue;
            }
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
        if let Err(e) = self.faults.check("reap") {
            // Rolled back now, not when the pool next uses the connection: the
            // next reaper skips rows this one still holds.
            tx.rollback().await.db()?;
            return Err(e);
        }
        tx.commit().await.db()?;
        Ok(reaped)
    }

    async fn depths(&self) -> Result<Vec<(Lane, LaneDepth)>> {
        let rows = sqlx::query(DEPTHS_SQL).fetch_all(&self.pool).await.db()?;
        rows::depths(&rows)
    }

    async fn chunks(&self, job: &JobId) -> Result<Vec<Chunk>> {
        let rows = sqlx::query(&format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE job_id = $1 ORDER BY idx"))
            .bind(job.as_str())
            .fetch_all(&self.pool)
            .await
            .db()?;
        rows.iter().map(rows::chunk).collect()
    }

    async fn chunk_gpu_ns(&self, job: &JobId) -> Result<BTreeMap<(u32, Pass), i64>> {
        let rows = sqlx::query(chunks::CHUNK_GPU).bind(job.as_str()).fetch_all(&self.pool).await.db()?;
        rows::chunk_gpu(&rows)
    }

    async fn segments(&self) -> Result<Vec<StoredSegment>> {
        let rows = sqlx::query(chunks::SEGMENTS).fetch_all(&self.pool).await.db()?;
        rows.iter().map(rows::stored_segment).collect()
    }

    async fn ended_attempts(&self, from_ms: i64, to_ms: i64, limit: u32) -> Result<Vec<EndedAttempt>> {
        let rows = sqlx::query(chunks::ENDED_ATTEMPTS)
            .bind(from_ms)
            .bind(to_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .db()?;
        rows.iter().map(rows::ended_attempt).collect()
    }

    async fn mark(&self, name: &str) -> Result<Option<i64>> {
        let row = sqlx::query(storage::MARK).bind(name).fetch_optional(&self.pool).await.db()?;
        row.map(|r| r.int("closed_to_ms")).transpose()
    }

    async fn set_mark(&self, name: &str, ms: i64) -> Result<()> {
        sqlx::query(storage::SET_MARK).bind(name).bind(ms).execute(&self.pool).await.db()?;
        Ok(())
    }

    async fn forget_segments(&self, job: &JobId, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(chunks::FORGET_SEGMENTS).bind(job.as_str()).execute(&mut *tx).await.db()?;
        sqlx::query(storage::REMOVE_SEGMENTS).bind(job.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
        tx.commit().await.db()
    }

    async fn close_storage_periods(&self, now_ms: i64, period_ms: i64) -> Result<(Vec<UsageEvent>, Vec<bool>)> {
        static WATERMARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let mut tx = self.begin().await?;
        let start = storage::first_boundary(now_ms, period_ms);
        sqlx::query(storage::START_METER).bind(start).bind(period_ms).execute(&mut *tx).await.db()?;
        // The leader's lock: a second worker closing periods waits, then finds them closed.
        let watermark = WATERMARK.get_or_init(|| format!("{} FOR UPDATE", storage::WATERMARK));
        let mark = sqlx::query(watermark).fetch_one(&mut *tx).await.db()?;
        let closed_to = mark.int("closed_to_ms")?;
        let mut events = Vec::new();
        let mut to = closed_to;
        for a in storage::due_periods(closed_to, period_ms, now_ms) {
            let rows =
                sqlx::query(storage::STORED_DURING).bind(a).bind(a + period_ms).fetch_all(&mut *tx).await.db()?;
            events.extend(storage::period_events(&rows, a, period_ms)?);
            to = a + period_ms;
        }
        let inserted = Self::append_in(&mut tx, &events).await?;
        sqlx::query(storage::MOVE_WATERMARK).bind(to).bind(period_ms).execute(&mut *tx).await.db()?;
        tx.commit().await.db()?;
        Ok((events, inserted))
    }

    async fn explain_claim(&self) -> Result<String> {
        let sql = format!("EXPLAIN {}", chunks::CLAIM_POSTGRES);
        let rows = sqlx::query(&sql)
            .bind(now_ms_for_explain())
            .bind("w_explain")
            .bind(1i64)
            .bind(3i64)
            .fetch_all(&self.pool)
            .await
            .db()?;
        let lines: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(0).map_err(err)).collect::<Result<_>>()?;
        Ok(lines.join("\n"))
    }

    async fn explain_hot_paths(&self) -> Result<Vec<(String, String)>> {
        let sample: Vec<(String, i64)> = sqlx::query(crate::backend::EXPLAIN_SAMPLE_SQL)
            .fetch_all(&self.pool)
            .await
            .db()?
            .iter()
            .map(|r| Ok((r.text("tenant_id")?, r.int("occurred_at_ms")?)))
            .collect::<Result<_>>()?;
        let (tenant, month) = crate::backend::explain_binds(&sample, now_ms_for_explain());
        let plan = |sql: &str| format!("EXPLAIN {sql}");
        let text = |rows: Vec<PgRow>| -> Result<String> {
            let lines: Vec<String> =
                rows.iter().map(|r| r.try_get::<String, _>(0).map_err(err)).collect::<Result<_>>()?;
            Ok(lines.join("\n"))
        };
        let mut plans = vec![("claim".to_string(), self.explain_claim().await?)];
        let rows = sqlx::query(&plan(DEPTHS_SQL)).fetch_all(&self.pool).await.db()?;
        plans.push(("depths".into(), text(rows)?));
        let rows = sqlx::query(&plan(rows::USAGE_TOTALS_SQL)).bind(&tenant).fetch_all(&self.pool).await.db()?;
        plans.push(("usage totals of a tenant".into(), text(rows)?));
        let rows =
            sqlx::query(&plan(rows::MONTH_USAGE_SQL)).bind(&tenant).bind(&month).fetch_all(&self.pool).await.db()?;
        plans.push(("month usage of a tenant".into(), text(rows)?));
        for with_tenant in [true, false] {
            let sql = plan(&rows::events_page_sql(with_tenant));
            let mut q = sqlx::query(&sql).bind(i64::MIN).bind(i64::MAX).bind(i64::MIN).bind("").bind(1000i64);
            if with_tenant {
                q = q.bind(&tenant);
            }
            let rows = q.fetch_all(&self.pool).await.db()?;
            let name = if with_tenant { "events page of a tenant" } else { "events page of all tenants" };
            plans.push((name.into(), text(rows)?));
        }
        Ok(plans)
    }

    #[cfg(feature = "testing")]
    async fn tamper_with_ledger(&self) -> Result<(Option<String>, Option<String>)> {
        let update = sqlx::query("UPDATE usage_events SET quantity = 0").execute(&self.pool).await;
        let delete = sqlx::query("DELETE FROM usage_events").execute(&self.pool).await;
        Ok((update.err().map(|e| e.to_string()), delete.err().map(|e| e.to_string())))
    }

    async fn append_fenced(&self, lease: &Lease, events: &[UsageEvent]) -> Result<Vec<bool>> {
        static HOLDS_LEASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = HOLDS_LEASE.get_or_init(|| format!("{} FOR SHARE", chunks::HOLDS_LEASE));
        let mut tx = self.begin().await?;
        let held = fence(sqlx::query(sql), lease).fetch_optional(&mut *tx).await.db()?;
        held.ok_or_else(|| StoreError::LeaseLost(lease.clone()))?;
        let inserted = Self::append_in(&mut tx, events).await?;
        self.faults.check("append")?;
        tx.commit().await.db()?;
        Ok(inserted)
    }

    async fn append(&self, events: &[UsageEvent]) -> Result<Vec<bool>> {
        let mut tx = self.begin().await?;
        let inserted = Self::append_in(&mut tx, events).await?;
        self.faults.check("append")?;
        tx.commit().await.db()?;
        Ok(inserted)
    }

    async fn events_page(
        &self,
        f: &EventFilter,
        tenant: Option<&TenantId>,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<UsageEvent>> {
        let sql = rows::events_page_sql(tenant.is_some());
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
        let rows = sqlx::query(rows::USAGE_TOTALS_SQL).bind(tenant.as_str()).fetch_all(&self.pool).await.db()?;
        rows::usage_totals(&rows)
    }

    async fn gpu_ns_totals(&self) -> Result<GpuTotals> {
        let rows = sqlx::query(
            "SELECT g.tenant_id AS tenant_id, g.pass AS pass, COALESCE(e.outcome, 'running') AS outcome,
                    SUM(g.quantity)::BIGINT AS ns
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
        let row = sqlx::query(
            "SELECT COALESCE(SUM(amount_micros), 0)::BIGINT AS micros FROM usage_events WHERE kind = 'output'",
        )
        .fetch_one(&self.pool)
        .await
        .db()?;
        row.int("micros")
    }

    async fn billed_output(&self, job: &JobId) -> Result<Option<(i64, i64)>> {
        let row = sqlx::query("SELECT quantity, amount_micros FROM usage_events WHERE id = $1")
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
             WHERE j.output_path IS NOT NULL AND ($1::BIGINT IS NULL OR j.finished_at_ms < $1)",
        )
        .bind(finished_before_ms)
        .fetch_all(&self.pool)
        .await
        .db()?;
        rows.iter().map(rows::retained).collect()
    }

    async fn forget_output(&self, job: &JobId, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE jobs SET output_path = NULL, metadata_path = NULL WHERE id = $1")
            .bind(job.as_str())
            .execute(&mut *tx)
            .await
            .db()?;
        sqlx::query(storage::REMOVE_CLIP).bind(job.as_str()).bind(now_ms).execute(&mut *tx).await.db()?;
        tx.commit().await.db()
    }

    async fn register_worker(&self, w: &WorkerInfo, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        // Workers gone for a week leave the registry.
        sqlx::query("DELETE FROM workers WHERE last_heartbeat_ms < $1")
            .bind(now_ms - crate::WORKER_FORGOTTEN_AFTER_MS)
            .execute(&mut *tx)
            .await
            .db()?;
        sqlx::query(
            "INSERT INTO workers (id, host, api_addr, adapter, version, started_at_ms, last_heartbeat_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (id) DO UPDATE SET host = $2, api_addr = $3, adapter = $4, version = $5,
                 last_heartbeat_ms = $6, stopped_at_ms = NULL",
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
        tx.commit().await.db()
    }

    async fn worker_heartbeat(&self, id: &WorkerId, jobs_in_flight: u32, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE workers SET last_heartbeat_ms = $1, jobs_in_flight = $2 WHERE id = $3")
            .bind(now_ms)
            .bind(i64::from(jobs_in_flight))
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .db()?;
        Ok(())
    }

    async fn worker_stopped(&self, id: &WorkerId, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE workers SET stopped_at_ms = $1, jobs_in_flight = 0 WHERE id = $2")
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
        let res = sqlx::query(
            "INSERT INTO leaders (task, holder, until_ms) VALUES ($1, $2, $3)
             ON CONFLICT (task) DO UPDATE SET holder = $2, until_ms = $3
             WHERE leaders.holder = $2 OR leaders.until_ms < $4",
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

    async fn listen(&self, wake: Arc<tokio::sync::Notify>) -> Result<()> {
        loop {
            let mut listener = match PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %err(e), "LISTEN unavailable; polling only, retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %err(e), "LISTEN failed; polling only, retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            // `recv` reconnects by itself after a lost connection; a wake-up is a hint only.
            loop {
                match listener.recv().await {
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %err(e), "LISTEN connection lost; polling only, retrying in 5 s");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        break;
                    }
                }
            }
        }
    }
}
