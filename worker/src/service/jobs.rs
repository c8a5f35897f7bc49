//! The job table: jobs as the worker service keeps them, in the same SQLite store
//! as the usage ledger. Every state change is one statement or one transaction,
//! so a crash leaves each job in a state that `recover` can resume from.
//!
//! States: `queued` → `running` → `succeeded` | `queued` (retry after a failed
//! attempt, with `not_before_ms`) | `dead` (attempts exhausted, or an error that
//! retrying cannot fix) | `cancelled`.

use serde::Serialize;
use sqlx::{Row, SqlitePool};

use tessera_metering::ledger::{now_ms, LedgerError};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, idempotency_key TEXT, body_hash TEXT NOT NULL,
        spec_json TEXT NOT NULL, template TEXT NOT NULL, lane TEXT NOT NULL, lane_rank INTEGER NOT NULL,
        tier_bonus REAL NOT NULL, est_cost_ms INTEGER NOT NULL, max_wait_ms INTEGER NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
        frames_total INTEGER NOT NULL, frames_done INTEGER NOT NULL DEFAULT 0,
        price_micros INTEGER NOT NULL, created_at_ms INTEGER NOT NULL, not_before_ms INTEGER NOT NULL,
        started_at_ms INTEGER, finished_at_ms INTEGER, lease_owner TEXT, lease_until_ms INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0, errors_json TEXT NOT NULL DEFAULT '[]',
        output_path TEXT, output_bytes INTEGER, output_sha256 TEXT, metadata_path TEXT,
        UNIQUE (tenant_id, idempotency_key))",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, not_before_ms)",
    "CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant_id, created_at_ms)",
];

/// A job row.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub tenant_id: String,
    pub spec_json: String,
    pub template: String,
    pub lane: String,
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub frames_total: u32,
    pub frames_done: u32,
    pub price_micros: i64,
    pub created_at_ms: i64,
    pub not_before_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub cancel_requested: bool,
    pub errors: Vec<String>,
    pub output_path: Option<String>,
    pub output_bytes: Option<i64>,
    pub output_sha256: Option<String>,
    pub metadata_path: Option<String>,
    pub body_hash: String,
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub tenant_id: String,
    pub idempotency_key: Option<String>,
    pub body_hash: String,
    pub spec_json: String,
    pub template: String,
    pub lane: String,
    pub lane_rank: i64,
    pub tier_bonus: f64,
    pub est_cost_ms: i64,
    pub max_wait_ms: i64,
    pub max_attempts: u32,
    pub frames_total: u32,
    pub price_micros: i64,
}

/// What inserting a job did.
#[derive(Debug)]
pub enum Inserted {
    New(Job),
    /// The same idempotency key with the same body: the existing job.
    Existing(Job),
    /// The same key with another body.
    Conflict(Job),
}

const COLUMNS: &str = "id, tenant_id, spec_json, template, lane, state, attempts, max_attempts, frames_total,
    frames_done, price_micros, created_at_ms, not_before_ms, started_at_ms, finished_at_ms, cancel_requested,
    errors_json, output_path, output_bytes, output_sha256, metadata_path, body_hash";

fn row_to_job(r: &sqlx::sqlite::SqliteRow) -> Job {
    let errors: String = r.get(16);
    Job {
        id: r.get(0),
        tenant_id: r.get(1),
        spec_json: r.get(2),
        template: r.get(3),
        lane: r.get(4),
        state: r.get(5),
        attempts: r.get::<i64, _>(6) as u32,
        max_attempts: r.get::<i64, _>(7) as u32,
        frames_total: r.get::<i64, _>(8) as u32,
        frames_done: r.get::<i64, _>(9) as u32,
        price_micros: r.get(10),
        created_at_ms: r.get(11),
        not_before_ms: r.get(12),
        started_at_ms: r.get(13),
        finished_at_ms: r.get(14),
        cancel_requested: r.get::<i64, _>(15) != 0,
        errors: serde_json::from_str(&errors).unwrap_or_default(),
        output_path: r.get(17),
        output_bytes: r.get(18),
        output_sha256: r.get(19),
        metadata_path: r.get(20),
        body_hash: r.get(21),
    }
}

/// Filters of a job listing.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<String>,
    pub lane: Option<String>,
    /// Cursor: list jobs created before this (created_at_ms, id).
    pub before: Option<(i64, String)>,
    pub limit: u32,
}

/// Queue depth and oldest job age of a lane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaneDepth {
    pub queued: i64,
    pub oldest_created_ms: Option<i64>,
}

/// The job table.
#[derive(Debug, Clone)]
pub struct JobStore {
    pool: SqlitePool,
}

impl JobStore {
    pub async fn new(pool: SqlitePool) -> Result<Self, LedgerError> {
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Inserts a job, honouring the tenant's idempotency key.
    pub async fn insert(&self, job: &NewJob) -> Result<Inserted, LedgerError> {
        if let Some(key) = &job.idempotency_key {
            if let Some(existing) = self.by_key(&job.tenant_id, key).await? {
                return Ok(if existing.body_hash == job.body_hash {
                    Inserted::Existing(existing)
                } else {
                    Inserted::Conflict(existing)
                });
            }
        }
        let now = now_ms();
        let res = sqlx::query(
            "INSERT INTO jobs (id, tenant_id, idempotency_key, body_hash, spec_json, template, lane, lane_rank,
             tier_bonus, est_cost_ms, max_wait_ms, state, max_attempts, frames_total, price_micros, created_at_ms,
             not_before_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
        )
        .bind(&job.id)
        .bind(&job.tenant_id)
        .bind(&job.idempotency_key)
        .bind(&job.body_hash)
        .bind(&job.spec_json)
        .bind(&job.template)
        .bind(&job.lane)
        .bind(job.lane_rank)
        .bind(job.tier_bonus)
        .bind(job.est_cost_ms)
        .bind(job.max_wait_ms)
        .bind(i64::from(job.max_attempts))
        .bind(i64::from(job.frames_total))
        .bind(job.price_micros)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(Inserted::New(self.get(&job.id).await?.ok_or(sqlx::Error::RowNotFound)?)),
            // Two requests with the same key raced: the loser returns the winner's job.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let key = job.idempotency_key.as_deref().unwrap_or_default();
                let existing = self.by_key(&job.tenant_id, key).await?.ok_or(sqlx::Error::RowNotFound)?;
                Ok(if existing.body_hash == job.body_hash {
                    Inserted::Existing(existing)
                } else {
                    Inserted::Conflict(existing)
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn by_key(&self, tenant_id: &str, key: &str) -> Result<Option<Job>, LedgerError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE tenant_id = ? AND idempotency_key = ?"))
            .bind(tenant_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(row_to_job))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, LedgerError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(row_to_job))
    }

    /// A tenant's jobs, newest first.
    pub async fn list(&self, tenant_id: &str, f: &ListFilter) -> Result<Vec<Job>, LedgerError> {
        let (before_ms, before_id) = f.before.clone().unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE tenant_id = ? AND (? IS NULL OR state = ?) AND (? IS NULL OR lane = ?)
             AND (created_at_ms < ? OR (created_at_ms = ? AND id < ?))
             ORDER BY created_at_ms DESC, id DESC LIMIT ?"
        ))
        .bind(tenant_id)
        .bind(&f.state)
        .bind(&f.state)
        .bind(&f.lane)
        .bind(&f.lane)
        .bind(before_ms)
        .bind(before_ms)
        .bind(if before_id.is_empty() { "\u{10FFFF}".to_string() } else { before_id })
        .bind(i64::from(f.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(row_to_job).collect())
    }

    /// Cancels: a queued job becomes `cancelled` at once; a running one is flagged
    /// and stops at its next frame. Returns the job after the change.
    pub async fn cancel(&self, id: &str) -> Result<Option<Job>, LedgerError> {
        sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at_ms = ? WHERE id = ? AND state = 'queued'")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.get(id).await
    }

    /// Claims the best queued job: aged-out jobs first (oldest first), then by
    /// lane (urgent, standard, bulk), then by score (tier, age, size, errors).
    /// The claim and the lease are one transaction under the write lock.
    pub async fn claim(&self, owner: &str, lease_ms: i64) -> Result<Option<Job>, LedgerError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let now = now_ms();
        let picked: Result<Option<String>, sqlx::Error> = sqlx::query(
            "SELECT id FROM jobs WHERE state = 'queued' AND not_before_ms <= ?1 AND cancel_requested = 0
             ORDER BY CASE WHEN ?1 - created_at_ms >= max_wait_ms THEN 0 ELSE 1 END,
                      CASE WHEN ?1 - created_at_ms >= max_wait_ms THEN created_at_ms ELSE 0 END,
                      lane_rank,
                      tier_bonus + (?1 - created_at_ms) / 1000.0 - est_cost_ms / 1000.0 - attempts * 5.0 DESC,
                      created_at_ms, id
             LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map(|r| r.map(|r| r.get(0)));
        let result = match picked {
            Ok(Some(id)) => sqlx::query(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?, lease_until_ms = ?,
                 started_at_ms = COALESCE(started_at_ms, ?) WHERE id = ?",
            )
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(&id)
            .execute(&mut *conn)
            .await
            .map(|_| Some(id)),
            other => other,
        };
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end).execute(&mut *conn).await?;
        drop(conn);
        match result? {
            Some(id) => self.get(&id).await,
            None => Ok(None),
        }
    }

    /// Renews a lease; returns whether the job is still ours (and whether it was cancelled).
    pub async fn heartbeat(
        &self,
        id: &str,
        owner: &str,
        lease_ms: i64,
        frames_done: u32,
    ) -> Result<(bool, bool), LedgerError> {
        let res = sqlx::query(
            "UPDATE jobs SET lease_until_ms = ?, frames_done = ? WHERE id = ? AND lease_owner = ? AND state = 'running'",
        )
        .bind(now_ms() + lease_ms)
        .bind(i64::from(frames_done))
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        let cancelled = sqlx::query("SELECT cancel_requested FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .is_some_and(|r| r.get::<i64, _>(0) != 0);
        Ok((res.rows_affected() == 1, cancelled))
    }

    /// Marks a running job done with its archived output.
    pub async fn succeed(&self, id: &str, owner: &str, out: &ArchivedOutput) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE jobs SET state = 'succeeded', finished_at_ms = ?, frames_done = frames_total, output_path = ?,
             output_bytes = ?, output_sha256 = ?, metadata_path = ?, lease_owner = NULL
             WHERE id = ? AND lease_owner = ?",
        )
        .bind(now_ms())
        .bind(&out.path)
        .bind(out.bytes)
        .bind(&out.sha256)
        .bind(&out.metadata_path)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a running job as cancelled.
    pub async fn cancelled(&self, id: &str, frames_done: u32) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at_ms = ?, frames_done = ?, lease_owner = NULL WHERE id = ?",
        )
        .bind(now_ms())
        .bind(i64::from(frames_done))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A failed attempt: back to the queue after `delay_ms`, or `dead` when
    /// `dead` is set. The error joins the job's list.
    pub async fn fail(&self, id: &str, error: &str, delay_ms: i64, dead: bool) -> Result<(), LedgerError> {
        let job = self.get(id).await?.ok_or(sqlx::Error::RowNotFound)?;
        let mut errors = job.errors;
        errors.push(format!("attempt {}: {error}", job.attempts));
        let state = if dead { "dead" } else { "queued" };
        sqlx::query(
            "UPDATE jobs SET state = ?, errors_json = ?, not_before_ms = ?, lease_owner = NULL, lease_until_ms = NULL,
             finished_at_ms = CASE WHEN ? = 'dead' THEN ? ELSE NULL END WHERE id = ?",
        )
        .bind(state)
        .bind(serde_json::to_string(&errors).unwrap_or_default())
        .bind(now_ms() + delay_ms)
        .bind(state)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Running jobs whose lease has expired (their worker died): (id, attempt, cancel requested).
    pub async fn expired(&self, now: i64) -> Result<Vec<(String, u32, String, bool)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, attempts, tenant_id, cancel_requested FROM jobs WHERE state = 'running' AND lease_until_ms < ?",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get::<i64, _>(1) as u32, r.get(2), r.get::<i64, _>(3) != 0)).collect())
    }

    /// Running jobs held by `owner` (this process before a restart).
    pub async fn owned_by(&self, owner: &str) -> Result<Vec<String>, LedgerError> {
        let rows = sqlx::query("SELECT id FROM jobs WHERE state = 'running' AND lease_owner = ?")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Queue depth and oldest queued job per lane.
    pub async fn depths(&self) -> Result<Vec<(String, LaneDepth)>, LedgerError> {
        let rows =
            sqlx::query("SELECT lane, COUNT(*), MIN(created_at_ms) FROM jobs WHERE state = 'queued' GROUP BY lane")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(|r| (r.get(0), LaneDepth { queued: r.get(1), oldest_created_ms: r.get(2) })).collect())
    }

    /// Archived outputs finished before `cutoff_ms` (for retention).
    pub async fn expired_outputs(&self, cutoff_ms: i64) -> Result<Vec<Job>, LedgerError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE state = 'succeeded' AND output_path IS NOT NULL AND finished_at_ms < ?"
        ))
        .bind(cutoff_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(row_to_job).collect())
    }

    /// Archived outputs currently retained.
    pub async fn retained_outputs(&self) -> Result<Vec<Job>, LedgerError> {
        let rows =
            sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE state = 'succeeded' AND output_path IS NOT NULL"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(row_to_job).collect())
    }

    pub async fn forget_output(&self, id: &str) -> Result<(), LedgerError> {
        sqlx::query("UPDATE jobs SET output_path = NULL, metadata_path = NULL WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Where a finished clip was archived.
#[derive(Debug, Clone)]
pub struct ArchivedOutput {
    pub path: String,
    pub bytes: i64,
    pub sha256: String,
    pub metadata_path: String,
}
