//! The usage ledger: an append-only table of usage events with deterministic ids
//! in the embedded SQLite store (WAL, synchronous=FULL), plus tenants and the
//! reservations admission makes.
//!
//! Event ids are built from what an event is (`job/attempt/gpu/pass/seq`,
//! `job/output`, ...), and inserts ignore an id that is already there: a retry or
//! a restart that re-sends events never records one twice, and an event is
//! acknowledged only after its transaction committed. GPU events of an attempt
//! are the operator's cost; an attempt's outcome is its own `attempt_end` event;
//! the one `output` event of a job is what the customer is billed.
//!
//! Everything goes through [`Store`], whose SQL is plain enough for a PostgreSQL
//! backend to implement the same methods later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::clock::{Pass, TimingSource};
use crate::price::{from_micros, to_micros, PriceBook, QuoteRequest};
use crate::tiers::{AdmissionError, MonthUsage};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open the store in {dir}: {source}")]
    Open { dir: String, source: sqlx::Error },
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("tenant `{0}` already exists")]
    TenantExists(String),
    #[error("unknown tier `{tier}` (tiers: {known})")]
    UnknownTier { tier: String, known: String },
    #[error(transparent)]
    Admission(Box<AdmissionError>),
    #[error("bad time `{0}`: use RFC 3339, like 2026-11-25T00:00:00Z")]
    BadTime(String),
}

impl From<AdmissionError> for LedgerError {
    fn from(e: AdmissionError) -> Self {
        LedgerError::Admission(Box::new(e))
    }
}

/// A job asking for admission: what it would reserve against the caps.
#[derive(Debug, Clone, Copy)]
pub struct Reservation<'a> {
    pub job_id: &'a str,
    pub request: &'a QuoteRequest,
    pub lane: &'a str,
    pub frames: u32,
    pub price: Decimal,
}

/// What an event measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// GPU nanoseconds of one pass over one frame (operator cost).
    Gpu,
    /// Frames delivered for a job (customer-billable), with its price.
    Output,
    /// The end of an attempt, with its outcome.
    AttemptEnd,
    /// Byte-seconds of archived output retained (operator cost).
    Storage,
    /// Bytes served (operator cost).
    Egress,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Gpu => "gpu",
            EventKind::Output => "output",
            EventKind::AttemptEnd => "attempt_end",
            EventKind::Storage => "storage",
            EventKind::Egress => "egress",
        }
    }

    /// The unit of `quantity`.
    pub fn unit(self) -> &'static str {
        match self {
            EventKind::Gpu => "ns",
            EventKind::Output => "frames",
            EventKind::AttemptEnd => "",
            EventKind::Storage => "byte_seconds",
            EventKind::Egress => "bytes",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "gpu" => EventKind::Gpu,
            "output" => EventKind::Output,
            "attempt_end" => EventKind::AttemptEnd,
            "storage" => EventKind::Storage,
            "egress" => EventKind::Egress,
            _ => return Err(format!("unknown event kind `{s}`")),
        })
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One attempt of one job of one tenant: what every event of it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRef {
    pub tenant_id: String,
    pub tier: String,
    pub job_id: String,
    pub attempt: u32,
}

/// One usage event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub id: String,
    pub tenant_id: String,
    pub tier: String,
    pub job_id: String,
    pub attempt: u32,
    pub kind: EventKind,
    #[serde(default)]
    pub pass: Option<Pass>,
    pub seq: u64,
    pub quantity: i64,
    #[serde(default)]
    pub fps: Option<u32>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    /// Money in micro-units: the price of an output event.
    #[serde(default)]
    pub amount_micros: i64,
    #[serde(default)]
    pub timing: Option<TimingSource>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    pub occurred_at_ms: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl UsageEvent {
    fn base(a: &AttemptRef, id: String, kind: EventKind, seq: u64, quantity: i64) -> Self {
        Self {
            id,
            tenant_id: a.tenant_id.clone(),
            tier: a.tier.clone(),
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            kind,
            pass: None,
            seq,
            quantity,
            fps: None,
            resolution: None,
            variant: None,
            amount_micros: 0,
            timing: None,
            outcome: None,
            occurred_at_ms: now_ms(),
        }
    }

    /// GPU time of `pass` over frame `seq`.
    pub fn gpu(a: &AttemptRef, pass: Pass, seq: u64, ns: u64, timing: TimingSource) -> Self {
        let id = format!("{}/{}/gpu/{}/{seq}", a.job_id, a.attempt, pass.as_str());
        let mut e = Self::base(a, id, EventKind::Gpu, seq, i64::try_from(ns).unwrap_or(i64::MAX));
        e.pass = Some(pass);
        e.timing = Some(timing);
        e
    }

    /// The billable output of a job: one per job, whatever attempt delivered it.
    pub fn output(a: &AttemptRef, frames: u32, fps: u32, resolution: &str, variant: &str, price: Decimal) -> Self {
        let mut e = Self::base(a, format!("{}/output", a.job_id), EventKind::Output, 0, i64::from(frames));
        e.fps = Some(fps);
        e.resolution = Some(resolution.into());
        e.variant = Some(variant.into());
        e.amount_micros = to_micros(price);
        e
    }

    pub fn attempt_end(a: &AttemptRef, outcome: Outcome) -> Self {
        let mut e = Self::base(a, format!("{}/{}/end", a.job_id, a.attempt), EventKind::AttemptEnd, 0, 0);
        e.outcome = Some(outcome);
        e
    }

    /// Storage retained over period `seq` (for example the hour index).
    pub fn storage(a: &AttemptRef, seq: u64, byte_seconds: i64) -> Self {
        Self::base(a, format!("{}/storage/{seq}", a.job_id), EventKind::Storage, seq, byte_seconds)
    }

    /// Bytes served by request `seq`.
    pub fn egress(a: &AttemptRef, seq: u64, bytes: i64) -> Self {
        Self::base(a, format!("{}/egress/{seq}", a.job_id), EventKind::Egress, seq, bytes)
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub tier: String,
}

/// The embedded store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    dir: PathBuf,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tenants (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, tier TEXT NOT NULL,
        api_key_hash TEXT, created_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reservations (
        job_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, month TEXT NOT NULL,
        frames INTEGER NOT NULL, fps INTEGER NOT NULL, amount_micros INTEGER NOT NULL,
        released INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS usage_events (
        id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, tier TEXT NOT NULL, job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL, kind TEXT NOT NULL, pass TEXT, seq INTEGER NOT NULL,
        quantity INTEGER NOT NULL, fps INTEGER, resolution TEXT, variant TEXT,
        amount_micros INTEGER NOT NULL DEFAULT 0, timing TEXT, outcome TEXT,
        occurred_at_ms INTEGER NOT NULL, month TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS usage_by_tenant_time ON usage_events (tenant_id, occurred_at_ms)",
    "CREATE INDEX IF NOT EXISTS usage_by_job ON usage_events (job_id, attempt)",
    // Append-only: the ledger refuses updates and deletes of recorded usage.
    "CREATE TRIGGER IF NOT EXISTS usage_no_update BEFORE UPDATE ON usage_events
        BEGIN SELECT RAISE(ABORT, 'usage_events is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS usage_no_delete BEFORE DELETE ON usage_events
        BEGIN SELECT RAISE(ABORT, 'usage_events is append-only'); END",
];

/// `YYYY-MM` of a Unix-ms time, UTC.
pub fn month_of(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}", t.year(), u8::from(t.month()))
}

/// RFC 3339 of a Unix-ms time.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses RFC 3339 to Unix ms.
pub fn parse_time(s: &str) -> Result<i64, LedgerError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| LedgerError::BadTime(s.into()))
}

/// Output seconds of `frames` at `fps`, exact.
pub fn output_seconds(frames: i64, fps: u32) -> Decimal {
    Decimal::from(frames) / Decimal::from(fps.max(1))
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub async fn open(dir: &Path) -> Result<Self, LedgerError> {
        let open_err = |source| LedgerError::Open { dir: dir.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
        let options = SqliteConnectOptions::new()
            .filename(dir.join("tessera.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged, even across power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await.map_err(open_err)?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await.map_err(open_err)?;
        }
        Ok(Self { pool, dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates a tenant of `tier`.
    pub async fn create_tenant(&self, book: &PriceBook, name: &str, tier: &str) -> Result<Tenant, LedgerError> {
        if !book.tiers.contains_key(tier) {
            let known = book.tiers.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(LedgerError::UnknownTier { tier: tier.into(), known });
        }
        let id = format!("t_{:016x}", fnv1a(name.as_bytes()) ^ (now_ms() as u64).rotate_left(17));
        let res = sqlx::query("INSERT INTO tenants (id, name, tier, created_at_ms) VALUES (?, ?, ?, ?)")
            .bind(&id)
            .bind(name)
            .bind(tier)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => Ok(Tenant { id, name: name.into(), tier: tier.into() }),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(LedgerError::TenantExists(name.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// A tenant by name or id.
    pub async fn tenant(&self, name_or_id: &str) -> Result<Option<Tenant>, LedgerError> {
        let row = sqlx::query("SELECT id, name, tier FROM tenants WHERE name = ? OR id = ?")
            .bind(name_or_id)
            .bind(name_or_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Tenant { id: r.get(0), name: r.get(1), tier: r.get(2) }))
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>, LedgerError> {
        let rows = sqlx::query("SELECT id, name, tier FROM tenants ORDER BY name").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| Tenant { id: r.get(0), name: r.get(1), tier: r.get(2) }).collect())
    }

    /// Admits a job: checks the tier's feature map and caps, and reserves the
    /// job's output seconds and price, all under SQLite's write lock so that two
    /// admissions at the same moment cannot both take the last of a cap.
    /// Admitting a job id twice is idempotent. Returns warnings (budget at 80 %).
    pub async fn admit(
        &self,
        book: &PriceBook,
        tenant: &Tenant,
        job: Reservation<'_>,
    ) -> Result<Vec<String>, LedgerError> {
        let Reservation { job_id, request: req, lane, frames, price } = job;
        let tier = book.tiers.get(&tenant.tier).ok_or_else(|| LedgerError::UnknownTier {
            tier: tenant.tier.clone(),
            known: book.tiers.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        tier.check_features(&tenant.tier, req, lane)?;
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let result: Result<Vec<String>, LedgerError> = async {
            let existing = sqlx::query("SELECT 1 FROM reservations WHERE job_id = ?")
                .bind(job_id)
                .fetch_optional(&mut *conn)
                .await?;
            if existing.is_some() {
                return Ok(Vec::new());
            }
            let month = month_of(now_ms());
            let usage = month_usage(&mut conn, &tenant.id, &month).await?;
            let warnings = tier.check_caps(&tenant.tier, &usage, req.output_seconds, price)?;
            sqlx::query(
                "INSERT INTO reservations (job_id, tenant_id, month, frames, fps, amount_micros) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(job_id)
            .bind(&tenant.id)
            .bind(&month)
            .bind(i64::from(frames))
            .bind(i64::from(req.fps))
            .bind(to_micros(price))
            .execute(&mut *conn)
            .await?;
            Ok(warnings)
        }
        .await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end).execute(&mut *conn).await?;
        result
    }

    /// Releases a job's reservation (it finished, failed for good, or was cancelled).
    pub async fn release(&self, job_id: &str) -> Result<(), LedgerError> {
        sqlx::query("UPDATE reservations SET released = 1 WHERE job_id = ?").bind(job_id).execute(&self.pool).await?;
        Ok(())
    }

    /// This month's usage of a tenant.
    pub async fn month_usage(&self, tenant_id: &str) -> Result<MonthUsage, LedgerError> {
        let mut conn = self.pool.acquire().await?;
        month_usage(&mut conn, tenant_id, &month_of(now_ms())).await
    }

    /// Appends events in one transaction; ids already recorded are skipped.
    /// Returns how many were new. When this returns, every event is durable.
    pub async fn append(&self, events: &[UsageEvent]) -> Result<u64, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let mut inserted = 0;
        for e in events {
            let res = sqlx::query(
                "INSERT OR IGNORE INTO usage_events (id, tenant_id, tier, job_id, attempt, kind, pass, seq, quantity,
                 fps, resolution, variant, amount_micros, timing, outcome, occurred_at_ms, month)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&e.id)
            .bind(&e.tenant_id)
            .bind(&e.tier)
            .bind(&e.job_id)
            .bind(i64::from(e.attempt))
            .bind(e.kind.as_str())
            .bind(e.pass.map(Pass::as_str))
            .bind(i64::try_from(e.seq).unwrap_or(i64::MAX))
            .bind(e.quantity)
            .bind(e.fps.map(i64::from))
            .bind(&e.resolution)
            .bind(&e.variant)
            .bind(e.amount_micros)
            .bind(e.timing.map(TimingSource::as_str))
            .bind(e.outcome.map(Outcome::as_str))
            .bind(e.occurred_at_ms)
            .bind(month_of(e.occurred_at_ms))
            .execute(&mut *tx)
            .await?;
            inserted += res.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Whether the job already has its billable output (a retry must not bill again).
    pub async fn has_output(&self, job_id: &str) -> Result<bool, LedgerError> {
        let row = sqlx::query("SELECT 1 FROM usage_events WHERE id = ?")
            .bind(format!("{job_id}/output"))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// GPU nanoseconds of one job per pass, over all its attempts.
    pub async fn job_gpu_ns(&self, job_id: &str) -> Result<BTreeMap<String, i64>, LedgerError> {
        let rows =
            sqlx::query("SELECT pass, SUM(quantity) FROM usage_events WHERE job_id = ? AND kind = 'gpu' GROUP BY pass")
                .bind(job_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The tenant holding an API key, by the key's hash.
    pub async fn tenant_by_key_hash(&self, key_hash: &str) -> Result<Option<Tenant>, LedgerError> {
        let row = sqlx::query("SELECT id, name, tier FROM tenants WHERE api_key_hash = ?")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Tenant { id: r.get(0), name: r.get(1), tier: r.get(2) }))
    }

    /// GPU nanoseconds per (tenant id, pass, attempt outcome).
    pub async fn gpu_ns_totals(&self) -> Result<BTreeMap<(String, String, String), i64>, LedgerError> {
        let rows = sqlx::query(
            "SELECT g.tenant_id, g.pass, COALESCE(e.outcome, 'running'), SUM(g.quantity)
             FROM usage_events g LEFT JOIN usage_events e
               ON e.kind = 'attempt_end' AND e.job_id = g.job_id AND e.attempt = g.attempt
             WHERE g.kind = 'gpu' GROUP BY 1, 2, 3",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3))).collect())
    }

    /// Events matching `filter`, oldest first, each with its attempt's outcome.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<UsageEvent>, LedgerError> {
        let rows = sqlx::query(
            "SELECT u.id, u.tenant_id, u.tier, u.job_id, u.attempt, u.kind, u.pass, u.seq, u.quantity, u.fps,
                    u.resolution, u.variant, u.amount_micros, u.timing, COALESCE(u.outcome, e.outcome), u.occurred_at_ms
             FROM usage_events u
             LEFT JOIN tenants t ON t.id = u.tenant_id
             LEFT JOIN usage_events e ON e.kind = 'attempt_end' AND e.job_id = u.job_id AND e.attempt = u.attempt
               AND u.kind = 'gpu'
             WHERE u.occurred_at_ms >= ? AND u.occurred_at_ms < ?
               AND (? IS NULL OR u.tenant_id = ? OR t.name = ?)
             ORDER BY u.occurred_at_ms, u.id",
        )
        .bind(filter.from_ms.unwrap_or(i64::MIN))
        .bind(filter.to_ms.unwrap_or(i64::MAX))
        .bind(&filter.tenant)
        .bind(&filter.tenant)
        .bind(&filter.tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(row_to_event).collect()
    }
}

/// Which events an export covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Tenant name or id.
    pub tenant: Option<String>,
}

fn row_to_event(r: sqlx::sqlite::SqliteRow) -> Result<UsageEvent, LedgerError> {
    let kind: String = r.get(5);
    let pass: Option<String> = r.get(6);
    let timing: Option<String> = r.get(13);
    let outcome: Option<String> = r.get(14);
    let bad = |what: &str, v: &str| LedgerError::Query(sqlx::Error::Decode(format!("bad {what} `{v}`").into()));
    Ok(UsageEvent {
        id: r.get(0),
        tenant_id: r.get(1),
        tier: r.get(2),
        job_id: r.get(3),
        attempt: u32::try_from(r.get::<i64, _>(4)).unwrap_or(0),
        kind: kind.parse().map_err(|_| bad("kind", &kind))?,
        pass: match pass.as_deref() {
            None => None,
            Some("render") => Some(Pass::Render),
            Some("stitch") => Some(Pass::Stitch),
            Some("encode") => Some(Pass::Encode),
            Some(other) => return Err(bad("pass", other)),
        },
        seq: u64::try_from(r.get::<i64, _>(7)).unwrap_or(0),
        quantity: r.get(8),
        fps: r.get::<Option<i64>, _>(9).map(|f| f as u32),
        resolution: r.get(10),
        variant: r.get(11),
        amount_micros: r.get(12),
        timing: match timing.as_deref() {
            None => None,
            Some("gpu") => Some(TimingSource::Gpu),
            Some("host") => Some(TimingSource::Host),
            Some(other) => return Err(bad("timing", other)),
        },
        outcome: match outcome.as_deref() {
            None => None,
            Some("succeeded") => Some(Outcome::Succeeded),
            Some("failed") => Some(Outcome::Failed),
            Some("cancelled") => Some(Outcome::Cancelled),
            Some(other) => return Err(bad("outcome", other)),
        },
        occurred_at_ms: r.get(15),
    })
}

async fn month_usage(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    tenant_id: &str,
    month: &str,
) -> Result<MonthUsage, LedgerError> {
    let mut usage = MonthUsage::default();
    let used = sqlx::query(
        "SELECT fps, SUM(quantity), SUM(amount_micros) FROM usage_events
         WHERE tenant_id = ? AND month = ? AND kind = 'output' GROUP BY fps",
    )
    .bind(tenant_id)
    .bind(month)
    .fetch_all(&mut **conn)
    .await?;
    for r in used {
        let fps: Option<i64> = r.get(0);
        usage.used_seconds += output_seconds(r.get(1), fps.unwrap_or(1) as u32);
        usage.spent += from_micros(r.get(2));
    }
    // Reservations of jobs still in flight: neither released nor billed yet.
    let reserved = sqlx::query(
        "SELECT fps, SUM(frames), SUM(amount_micros) FROM reservations r
         WHERE tenant_id = ? AND month = ? AND released = 0
           AND NOT EXISTS (SELECT 1 FROM usage_events u WHERE u.id = r.job_id || '/output')
         GROUP BY fps",
    )
    .bind(tenant_id)
    .bind(month)
    .fetch_all(&mut **conn)
    .await?;
    for r in reserved {
        usage.reserved_seconds += output_seconds(r.get(1), r.get::<i64, _>(0) as u32);
        usage.reserved_spend += from_micros(r.get(2));
    }
    Ok(usage)
}

/// FNV-1a, for short stable ids.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
