//! Rendering a whole clip (or one frame of it) into a muxer.

use std::ops::Range;
use std::time::{Duration, Instant};

use serde::Serialize;
use tessera_metering::{PassTimes, TimingSource};

use super::frame::{FrameRenderer, RenderError};
use crate::encode::mux::{MuxError, Muxer, StreamInfo};
use crate::gpu::GpuContext;
use crate::spec::JobSpec;

/// What a clip render did.
#[derive(Debug, Clone, Serialize)]
pub struct ClipSummary {
    pub frames: u32,
    pub tiles: usize,
    pub wall: Duration,
    pub gpu: PassTimes,
    /// Host time spent entropy-coding on the CPU (JPEG outputs).
    pub cpu_encode_ns: u64,
    pub timing: TimingSource,
}

/// Errors rendering a clip.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Mux(#[from] MuxError),
    #[error("frame {frame} is past the clip's last frame {last} ({frames} frames)")]
    FrameOutOfRange { frame: u32, last: u32, frames: u32 },
    #[error("recording usage failed: {0}")]
    Usage(#[from] tessera_store::StoreError),
}

/// The frames a muxer wants: every frame for a clip, `single` for one-frame outputs.
pub fn frame_range(spec: &JobSpec, muxer: &dyn Muxer, single: u32) -> Result<Range<u32>, ClipError> {
    if muxer.is_clip() {
        return Ok(0..spec.frames);
    }
    if single >= spec.frames {
        return Err(ClipError::FrameOutOfRange { frame: single, last: spec.frames - 1, frames: spec.frames });
    }
    Ok(single..single + 1)
}

/// Renders `frames` of `spec` into `muxer`, calling `on_frame` with each frame's
/// index and pass times after it is written; an error from it stops the render.
pub fn render_clip(
    ctx: &GpuContext,
    spec: &JobSpec,
    muxer: &mut dyn Muxer,
    frames: Range<u32>,
    on_frame: &mut dyn FnMut(u32, &PassTimes) -> Result<(), ClipError>,
) -> Result<ClipSummary, ClipError> {
    let start = Instant::now();
    let mut renderer = FrameRenderer::new(ctx, spec.render_plan())?;
    let info = StreamInfo { width: spec.width, height: spec.height, fps: spec.fps, frames: frames.len() as u32 };
    muxer.write_header(&info)?;
    let mut gpu = PassTimes::default();
    let mut cpu_encode_ns = 0u64;
    for index in frames.clone() {
        let frame = renderer.render_frame(index, muxer.input())?;
        muxer.write_frame(&frame.data)?;
        gpu.merge(&frame.times);
        cpu_encode_ns += frame.cpu_encode_ns;
        on_frame(index, &frame.times)?;
    }
    muxer.finish()?;
    Ok(ClipSummary {
        frames: frames.len() as u32,
        tiles: spec.tiler.len(),
        wall: start.elapsed(),
        gpu,
        cpu_encode_ns,
        timing: renderer.timing_source(),
    })
}
