//! tessera-worker: the library behind the `tessera` binary.
//!
//! One clip's data path, by module:
//!
//! - [`spec`]: a job spec (JSON or TOML) is parsed into a `RawSpec` and validated
//!   into a [`spec::JobSpec`] before any GPU work.
//! - [`gpu`]: the device (Vulkan by default), readback and timestamp timing.
//! - [`render`]: the template [`render::catalog`], the [`render::tiler`] that
//!   splits each frame into overlapping tiles, the GPU passes of a frame in
//!   [`render::frame`] (template → bloom → stitch), the CPU reference of the
//!   stitch in [`render::stitch`], and [`render::clip`], which drives a clip.
//! - [`encode`]: GPU colour conversion and the muxers that write files.
//! - [`usage`]: an attempt's GPU time as usage events, billed outputs.
//! - [`service`]: `tessera serve`, one worker of a fleet: API, scheduler, attempts.
//! - [`cli`]: the `tessera` command line.
//!
//! GPU time of every pass is measured in integer nanoseconds with
//! `tessera_metering`; everything persistent goes through `tessera_store`.

pub mod cli;
pub mod encode;
pub mod gpu;
pub mod host_pool;
pub mod render;
pub mod service;
pub mod spec;
pub mod usage;
