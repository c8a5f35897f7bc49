//! tessera-metering: turns GPU work into exact, durable, billable usage.
//!
//! Data flow:
//! - [`clock`]: timestamp ticks → integer nanoseconds per [`clock::Pass`].
//! - [`price`]: the operator's [`price::PriceBook`] (TOML) and [`price::quote`]:
//!   `B x t x R x F x M` plus add-ons, in decimal, rounded half-up to cents, with
//!   the expected operator cost.
//! - [`tiers`]: each tier's feature map and monthly caps; admission checks.
//! - [`ledger`]: the [`ledger::Store`] (SQLite, WAL): tenants, reservations, and
//!   the append-only usage events with deterministic ids.
//! - [`export`]: events as CSV or CloudEvents, raw or in time buckets.
//! - [`prom`]: Prometheus counters fed from the same integers as the ledger.

pub mod clock;
pub mod export;
pub mod ledger;
pub mod price;
pub mod prom;
pub mod tiers;

pub use clock::{GpuClock, Pass, PassTimes, TimingSource};
pub use ledger::{AttemptRef, Outcome, Store, UsageEvent};
pub use price::{quote, PriceBook, Quote, QuoteRequest};
pub use prom::Metrics;
