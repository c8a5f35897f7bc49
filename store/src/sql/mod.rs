//! One SQL backend over two dialects. Every statement the store runs is
//! written once, with numbered placeholders (`$1`, which SQLite reads as
//! well), standard casts (`CAST(x AS BIGINT)`) and standard upserts
//! (`ON CONFLICT ... DO`), in [`sql_backend!`]; the backends
//! ([`crate::sqlite`], [`crate::postgres`]) supply only what differs:
//!
//! - **locking** ([`Dialect`]): row locks (`FOR UPDATE`, `FOR SHARE`,
//!   `SKIP LOCKED`) on PostgreSQL; nothing on SQLite, whose one writer
//!   serialises every write transaction;
//! - **the claim**: one statement each ([`crate::chunks`]);
//! - **transactions**: a write transaction ([`Tx`]) is `BEGIN IMMEDIATE`
//!   in this process's writer queue on SQLite, a plain `BEGIN` on PostgreSQL;
//!   a read of several statements runs on one snapshot (`REPEATABLE READ`
//!   on PostgreSQL, any transaction on SQLite);
//! - **the ledger's months**: partitions made ahead and a month's partition
//!   locked while it is rolled up, on PostgreSQL; nothing on SQLite;
//! - **batch insert**: `INSERT ... SELECT FROM UNNEST(arrays)` on PostgreSQL,
//!   a prepared statement per row on SQLite;
//! - **notify**: `pg_notify` and `LISTEN` on PostgreSQL; one node needs none;
//! - **plans and clocks**: `EXPLAIN` against `EXPLAIN QUERY PLAN`, the
//!   database's clock on PostgreSQL.
//!
//! [`sql_backend!`] expands to the `Backend` implementation of a backend type
//! that has those pieces as inherent items (see the macro's docs): the same
//! text, compiled against each driver's types.

use std::ops::{Deref, DerefMut};

use sqlx::{Database, Transaction};

mod helpers;
mod shared;
pub(crate) use helpers::sql_helpers;
pub(crate) use shared::sql_backend;

/// `err` (a driver error as a [`crate::StoreError`], its codes read by
/// `$fault`) and `.db()` on a driver result, for a backend module.
macro_rules! driver_errors {
    ($fault:path) => {
        fn err(e: sqlx::Error) -> StoreError {
            crate::error::classify(e, $fault)
        }

        trait Db<T> {
            fn db(self) -> Result<T>;
        }

        impl<T> Db<T> for std::result::Result<T, sqlx::Error> {
            fn db(self) -> Result<T> {
                self.map_err(err)
            }
        }
    };
}
pub(crate) use driver_errors;

/// What differs between the dialects' statements, as fragments the shared
/// statements splice in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dialect {
    /// Appended to a `SELECT` that reads rows it is about to change.
    pub lock_rows: &'static str,
    /// Appended to a `SELECT` whose rows must not change until commit.
    pub share_rows: &'static str,
    /// Appended to a `SELECT` that takes rows nobody else holds, skipping the rest.
    pub lock_rows_or_skip: &'static str,
    /// The claim statement ([`crate::chunks`]).
    pub claim: &'static str,
    /// The prefix that turns a statement into its plan.
    pub explain: &'static str,
    /// Holds off every insert into the ledger until the transaction ends, if
    /// other writers could insert meanwhile.
    pub lock_ledger: Option<&'static str>,
    /// Lifts the statement timeout for the rest of the transaction: a month's
    /// roll-up reads the whole month, which may take longer than any hot path may.
    pub long_statements: Option<&'static str>,
    /// A subquery of the strings of the JSON array bound to `$3`.
    pub json_strings_of_3: &'static str,
}

/// A transaction, and whatever turn the backend took to start it (a write
/// transaction's place in SQLite's writer queue; nothing for a read).
pub(crate) struct Tx<DB: Database, Turn> {
    tx: Transaction<'static, DB>,
    _turn: Turn,
}

impl<DB: Database, Turn> Tx<DB, Turn> {
    pub(crate) fn new(tx: Transaction<'static, DB>, turn: Turn) -> Self {
        Self { tx, _turn: turn }
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// Rolls back now, not when the pool next uses the connection: whoever
    /// comes next finds the rows this transaction held free.
    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl<DB: Database, Turn> Deref for Tx<DB, Turn> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.tx
    }
}

impl<DB: Database, Turn> DerefMut for Tx<DB, Turn> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}

/// The turn of a backend whose writers need none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoTurn;

/// The names [`sql_backend!`] uses, for the module that expands it.
pub(crate) mod prelude {
    pub(crate) use std::collections::BTreeMap;
    pub(crate) use std::sync::Arc;

    pub(crate) use async_trait::async_trait;
    pub(crate) use sqlx::Row;
    pub(crate) use tessera_metering::event::{month_of, AttemptRef};
    pub(crate) use tessera_metering::tiers::MonthUsage;
    pub(crate) use tessera_metering::{Lane, Outcome, Pass, UsageEvent};

    pub(crate) use crate::backend::{
        Backend, EndedAttempt, GpuTotals, Reaped, Reserve, Result, Retained, Settled, StoredSegment, Submit, Submitted,
    };
    pub(crate) use crate::binds::{self, JOB_INSERT_COLUMNS};
    pub(crate) use crate::chunks;
    pub(crate) use crate::error::StoreError;
    pub(crate) use crate::faults::Faults;
    pub(crate) use crate::rows::{self, Columns, CHUNK_COLUMNS, CURRENT_COLUMNS, JOB_COLUMNS, JOB_RETURNING};
    pub(crate) use crate::storage;
    pub(crate) use crate::transition::{self, AttemptEnd};
    pub(crate) use crate::types::{
        chunk_plan, Chunk, ChunkKind, ChunkState, Claimed, EventFilter, Job, JobFilter, JobId, JobState, LaneDepth,
        Lease, NewJob, Tenant, TenantId, UsageTotals, Worker, WorkerId, WorkerInfo,
    };
    pub(crate) use crate::LOST_LEASE_REASON;
}

/// Queued jobs and the oldest's age per lane (the `jobs_queued` index).
pub(crate) const DEPTHS_SQL: &str = "SELECT lane_rank, COUNT(*) AS queued, MIN(created_at_ms) AS oldest FROM jobs
             WHERE state = 'queued' GROUP BY lane_rank";
