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

use std::path::Path;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::backend::BackendKind;
use crate::binds::EVENT_INSERT_COLUMNS;
use crate::error::Fault;
use crate::sql::prelude::*;
use crate::sql::{driver_errors, sql_backend, Dialect, NoTurn, Tx};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// What SQLite's (extended) result codes mean for the caller.
fn fault(code: &str, _message: &str) -> Option<Fault> {
    match code.parse::<i64>().ok()? & 0xff {
        13 => Some(Fault::NoSpace),          // SQLITE_FULL
        5 | 6 => Some(Fault::Busy),          // SQLITE_BUSY, SQLITE_LOCKED
        10 | 14 => Some(Fault::Unavailable), // SQLITE_IOERR, SQLITE_CANTOPEN
        _ => None,
    }
}

driver_errors!(fault);

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

    const KIND: BackendKind = BackendKind::Sqlite;
    /// No row locks: the one writer serialises every write transaction.
    const SQL: Dialect = Dialect {
        lock_rows: "",
        share_rows: "",
        lock_rows_or_skip: "",
        claim: chunks::CLAIM_SQLITE,
        explain: "EXPLAIN QUERY PLAN",
        lock_ledger: None,
        long_statements: None,
        json_strings_of_3: "SELECT value FROM json_each($3)",
    };

    /// Starts a write transaction, in turn.
    async fn write(&self) -> Result<Tx<Sqlite, OwnedMutexGuard<()>>> {
        let turn = self.turn().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await.db()?;
        Ok(Tx::new(tx, turn))
    }

    /// A read transaction: SQLite reads one snapshot until it ends.
    async fn snapshot(&self) -> Result<Tx<Sqlite, NoTurn>> {
        Ok(Tx::new(self.pool.begin().await.db()?, NoTurn))
    }

    /// One table: no partitions to make.
    async fn make_months(&self, _months: &[String]) -> Result<()> {
        Ok(())
    }

    /// The write transaction holds off every other insert already.
    async fn lock_month(_tx: &mut SqliteConnection, _month: &str) -> Result<()> {
        Ok(())
    }

    /// One node: the process that queues work wakes its own dispatcher.
    async fn notify(_tx: &mut SqliteConnection) -> Result<()> {
        Ok(())
    }

    /// Appends events inside `tx`; for each, whether it was new.
    async fn append_in(tx: &mut SqliteConnection, events: &[UsageEvent]) -> Result<Vec<bool>> {
        let sql = format!(
            "INSERT INTO usage_events ({EVENT_INSERT_COLUMNS}) VALUES ({}, {}) ON CONFLICT (id) DO NOTHING",
            binds::placeholders("$", 1, 17),
            binds::billing_month_sql("$6", "$4", "$18")
        );
        let mut inserted = Vec::with_capacity(events.len());
        for e in events {
            let res = binds::event(sqlx::query(&sql), e).execute(&mut *tx).await.db()?;
            inserted.push(res.rows_affected() == 1);
        }
        Ok(inserted)
    }

    /// One node keeps its own time.
    async fn db_clock_ms(&self) -> Result<Option<i64>> {
        Ok(None)
    }

    /// An `EXPLAIN QUERY PLAN`'s rows as text, each step indented under its parent.
    fn plan_text(rows: &[SqliteRow]) -> Result<String> {
        let mut depth = std::collections::HashMap::new();
        let mut lines = Vec::with_capacity(rows.len());
        for r in rows {
            let d = depth.get(&r.int("parent")?).map_or(0, |d| d + 1);
            depth.insert(r.int("id")?, d);
            lines.push(format!("{}{}", "  ".repeat(d), r.text("detail")?));
        }
        Ok(lines.join("\n"))
    }

    /// One node: nothing to listen to.
    async fn listen_for_work(&self, _wake: Arc<tokio::sync::Notify>) -> Result<()> {
        Ok(())
    }
}

sql_backend!(SqliteBackend, SqliteConnection, SqliteRow);
