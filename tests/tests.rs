//! tessera's integration tests: one binary, one module per area.
//!
//! GPU tests run on whatever adapter `TESSERA_ADAPTER`/`TESSERA_BACKEND` pick
//! (Mesa lavapipe in CI) at small frame sizes; full-size figures live in
//! `benches/`.

mod util;

mod api;
mod avi;
mod billing;
mod chunks;
mod cli;
mod determinism;
mod download;
mod encode;
mod fleet;
mod golden;
mod gpu_errors;
mod ledger;
mod loadtest;
mod metering;
mod prometheus;
mod recovery;
mod service;
mod shaders;
mod spec;
mod stitch;
mod tiling;
mod yuv;
