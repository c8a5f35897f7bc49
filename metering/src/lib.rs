//! tessera-metering: turns GPU work into exact, billable usage. Pure: no I/O
//! and no SQL; the `tessera-store` crate persists what this crate describes.
//!
//! Data flow:
//! - [`clock`]: timestamp ticks → integer nanoseconds per [`clock::Pass`].
//! - [`price`]: the operator's [`price::PriceBook`] (TOML) and [`price::quote`]:
//!   `B x t x R x F x M` plus add-ons, in decimal, rounded half-up to cents, with
//!   the expected operator cost.
//! - [`tiers`]: each tier's feature map, monthly caps and queue weight; admission checks.
//! - [`lane`]: the queue lanes.
//! - [`event`]: usage events with deterministic ids, the ledger's rows.
//! - [`export`]: events as CSV or CloudEvents, raw or in time buckets.
//! - [`prom`]: Prometheus counters fed from the same integers as the ledger.

pub mod clock;
pub mod event;
pub mod export;
pub mod lane;
pub mod price;
pub mod prom;
pub mod tiers;

pub use clock::{GpuClock, Pass, PassTimes, TimingSource};
pub use event::{AttemptRef, EventKind, Outcome, UsageEvent};
pub use lane::Lane;
pub use price::{quote, AdmittedQuote, PriceBook, Quote, QuoteRequest};
pub use prom::Metrics;
