//! The fleet backend: many workers on one PostgreSQL. Its statements are the
//! shared ones ([`crate::sql`]); what is PostgreSQL's own:
//!
//! - The claim is one statement: `FOR UPDATE SKIP LOCKED` over the partial
//!   indexes `jobs_aged (deadline_ms, id)` and `jobs_claim (lane_rank, rank_ms,
//!   id)`, so concurrent workers never wait on each other's rows.
//! - Transitions lock the fenced row (`FOR UPDATE`), admissions lock the
//!   tenant's row, so two admissions of one tenant cannot both take the last of
//!   a cap while other tenants admit in parallel.
//! - Ledger appends are one `INSERT ... SELECT FROM UNNEST(...)` per batch,
//!   skipping ids any month's partition holds (`NOT EXISTS`, and
//!   `ON CONFLICT (id, month) DO NOTHING` for a racing copy), `RETURNING id`:
//!   duplicates from any worker are skipped, and the caller learns which rows
//!   were new.
//! - The ledger is partitioned by month; a month's roll-up locks its
//!   partition ([`crate::rollup`]).
//! - Queueing work sends `NOTIFY tessera_jobs`; workers `LISTEN` for it as a
//!   wake-up hint and poll anyway.
//! - Leases run on the database's clock ([`PgBackend::db_clock_ms`]).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use crate::backend::BackendKind;
use crate::binds::EVENT_INSERT_COLUMNS;
use crate::error::Fault;
use crate::sql::prelude::*;
use crate::sql::{driver_errors, sql_backend, Dialect, NoTurn, Tx};

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

driver_errors!(fault);

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

    const KIND: BackendKind = BackendKind::Postgres;
    const SQL: Dialect = Dialect {
        lock_rows: " FOR UPDATE",
        share_rows: " FOR SHARE",
        lock_rows_or_skip: " FOR UPDATE SKIP LOCKED",
        claim: chunks::CLAIM_POSTGRES,
        explain: "EXPLAIN",
        lock_ledger: Some("LOCK TABLE usage_events IN SHARE MODE"),
        long_statements: Some("SET LOCAL statement_timeout = '15min'"),
        json_strings_of_3: "SELECT jsonb_array_elements_text(CAST($3 AS JSONB))",
    };

    /// A write transaction: row locks, not turns, keep writers apart.
    async fn write(&self) -> Result<Tx<Postgres, NoTurn>> {
        Ok(Tx::new(self.pool.begin().await.db()?, NoTurn))
    }

    /// A read-only transaction on one snapshot.
    async fn snapshot(&self) -> Result<Tx<Postgres, NoTurn>> {
        let mut tx = self.pool.begin().await.db()?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await.db()?;
        Ok(Tx::new(tx, NoTurn))
    }

    /// Makes the ledger's partitions of `months` (see the migration
    /// `0009_ledger_by_month`); a month whose rows are in the default
    /// partition already stays there.
    async fn make_months(&self, months: &[String]) -> Result<()> {
        for m in months {
            let made = sqlx::query("SELECT usage_events_partition($1) AS made").bind(m);
            if !made.fetch_one(&self.pool).await.db()?.flag("made")? {
                tracing::warn!(month = %m, "the ledger's rows of this month are in its default partition");
            }
        }
        Ok(())
    }

    /// Holds off inserts into `month` until the transaction ends.
    async fn lock_month(tx: &mut PgConnection, month: &str) -> Result<()> {
        sqlx::query("SELECT usage_events_lock_month($1)").bind(month).execute(&mut *tx).await.db()?;
        Ok(())
    }

    async fn turn(&self) -> NoTurn {
        NoTurn
    }

    async fn notify(tx: &mut PgConnection) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *tx).await.db()?;
        Ok(())
    }

    /// Appends events inside `tx`, a batch per statement; for each, whether it was new.
    ///
    /// An event's copies all come from its job (an attempt's windows sent
    /// again, the output any attempt of the job may deliver; a tenant's
    /// storage period): appends of one job's events take the job's lock in
    /// turn, so two copies of an event are never inserted side by side and
    /// exactly-once does not rest on `ON CONFLICT` alone across the ledger's
    /// partitions. (Once, in CI, sixteen writers re-sending one job's events
    /// were told 4100 of 4000 events were new; not reproduced since.) Locks are
    /// taken in key order, so appends of several jobs cannot deadlock.
    async fn append_in(tx: &mut PgConnection, events: &[UsageEvent]) -> Result<Vec<bool>> {
        let mut jobs: Vec<String> = events.iter().map(|e| format!("{}/{}", e.tenant_id, e.job_id)).collect();
        jobs.sort_unstable();
        jobs.dedup();
        for job in &jobs {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7041))")
                .bind(job)
                .execute(&mut *tx)
                .await
                .db()?;
        }
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

    /// The database server's clock, which leases run on.
    async fn db_clock_ms(&self) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now_ms")
            .fetch_one(&self.pool)
            .await
            .db()?;
        Ok(Some(row.int("now_ms")?))
    }

    /// `EXPLAIN`'s rows: one text column, a line each.
    fn plan_text(rows: &[PgRow]) -> Result<String> {
        let lines: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(0).map_err(err)).collect::<Result<_>>()?;
        Ok(lines.join("\n"))
    }

    /// Wakes `wake` at every `NOTIFY` of queued work, reconnecting as needed.
    async fn listen_for_work(&self, wake: Arc<tokio::sync::Notify>) -> Result<()> {
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
             WHERE NOT EXISTS (SELECT 1 FROM usage_events e WHERE e.id = u.id)
             ON CONFLICT (id, month) DO NOTHING RETURNING id",
            month = binds::billing_month_sql("u.kind", "u.job_id", "u.month")
        )
    })
}

sql_backend!(PgBackend, PgConnection, PgRow);
