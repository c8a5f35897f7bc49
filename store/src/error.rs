//! The store's one error type. Backend errors are classified on the way out:
//! a full disk, a busy database and an unreachable one are *transient* (the
//! caller retries, the API answers 503), everything else is not. No backend
//! type appears in it.

use tessera_metering::tiers::AdmissionError;

use crate::types::Lease;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bad store URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot open the store at {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("migrating the {backend} store failed: {reason}")]
    Migrate { backend: &'static str, reason: String },
    #[error("no space left for the store: {0}")]
    NoSpace(String),
    #[error("the store is busy, try again: {0}")]
    Busy(String),
    #[error("the store is unreachable: {0}")]
    Unavailable(String),
    #[error("lease lost: {0} is no longer the running attempt")]
    LeaseLost(Lease),
    #[error("tenant `{0}` already exists")]
    TenantExists(String),
    #[error("unknown tier `{tier}` (tiers: {known})")]
    UnknownTier { tier: String, known: String },
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    #[error(transparent)]
    Admission(Box<AdmissionError>),
    #[error("corrupt {what} in the store: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("store query failed: {0}")]
    Query(String),
    /// A settlement's bill that is not the job's admitted quote for the frames
    /// it delivers (a worker pricing from another price book, say).
    #[error("job {job} was quoted {quoted_micros} micro-units for {frames} frames, a settlement billed {billed_micros}: the bill must be the quote")]
    NotTheQuote { job: String, frames: i64, quoted_micros: i64, billed_micros: i64 },
    #[cfg(feature = "fault-injection")]
    #[error("injected store fault at {0}")]
    Injected(&'static str),
}

impl StoreError {
    /// A fault that goes away by itself (space freed, load gone, database back):
    /// retry later rather than give up.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::NoSpace(_) | StoreError::Busy(_) | StoreError::Unavailable(_))
    }

    pub(crate) fn corrupt(what: &'static str, reason: impl std::fmt::Display) -> Self {
        StoreError::Corrupt { what, reason: reason.to_string() }
    }
}

impl From<AdmissionError> for StoreError {
    fn from(e: AdmissionError) -> Self {
        StoreError::Admission(Box::new(e))
    }
}

/// What a backend's error code means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    NoSpace,
    Busy,
    Unavailable,
}

/// Classifies a sqlx error; `db_fault` reads the backend's own error codes.
pub(crate) fn classify(e: sqlx::Error, db_fault: impl Fn(&str, &str) -> Option<Fault>) -> StoreError {
    let text = e.to_string();
    let fault = match &e {
        sqlx::Error::Io(io) if io.raw_os_error() == Some(28) => Some(Fault::NoSpace),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Some(Fault::Unavailable),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => Some(Fault::Unavailable),
        sqlx::Error::Database(db) => db.code().and_then(|c| db_fault(&c, db.message())),
        _ => None,
    };
    match fault {
        Some(Fault::NoSpace) => StoreError::NoSpace(text),
        Some(Fault::Busy) => StoreError::Busy(text),
        Some(Fault::Unavailable) => StoreError::Unavailable(text),
        None => StoreError::Query(text),
    }
}
