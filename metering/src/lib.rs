//! tessera-metering: turns GPU work into exact, integer usage figures.
//!
//! Data flow: the worker's GPU timer resolves timestamp queries into raw ticks;
//! [`clock::GpuClock`] converts ticks to integer nanoseconds with the queue's
//! timestamp period; [`clock::PassTimes`] accumulates those nanoseconds per
//! [`clock::Pass`] (render, stitch, encode) so that every measured nanosecond is
//! counted exactly once. The price book, tiers, ledger and Prometheus export build
//! on these integers; nothing here uses a float sum for usage.

pub mod clock;

pub use clock::{GpuClock, Pass, PassTimes, TimingSource};
