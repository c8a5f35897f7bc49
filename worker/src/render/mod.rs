//! Rendering: the template catalog, the tile plan, the GPU passes that turn a
//! spec into stitched frames, and the CPU reference of the stitch.
//!
//! Per frame: for each [`tiler::Tile`] the template pass renders the tile's rect
//! (core + halo) into its own HDR buffer, the bloom post-process runs on it, then
//! the stitch pass blends the tiles into the frame texture; see [`frame`].

pub mod catalog;
pub mod clip;
pub mod frame;
mod resources;
pub mod ring;
pub mod shaders;
pub mod stats;
pub mod stitch;
pub mod tiler;

pub use catalog::{Template, TEMPLATES};
pub use frame::{FrameRenderer, Readback, RenderError, RenderedFrame, SampledFrame};
pub use ring::FrameRing;
pub use stats::{HostTimes, RenderStats};
pub use tiler::{Tile, TileRect, Tiler};
