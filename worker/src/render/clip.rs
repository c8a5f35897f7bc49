//! Rendering the frames a spec delivers into a muxer: the whole clip, or the
//! part its frame range asks for (one frame, for a single-frame output).

use std::time::{Duration, Instant};

use serde::Serialize;
use tessera_metering::{PassTimes, TimingSource};

use super::frame::{FrameRenderer, RenderError};
use crate::encode::jpeg::gpu_entropy::Entropy;
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
    /// Host time spent encoding after the GPU (JPEG outputs): the readback
    /// and the JFIF file, and with CPU entropy the Huffman coding.
    pub cpu_encode_ns: u64,
    /// Where JPEG frames were Huffman-coded.
    pub entropy: Entropy,
    /// Bytes read back from the GPU, and bytes of the frames written.
    pub readback_bytes: u64,
    pub output_bytes: u64,
    pub timing: TimingSource,
}

/// Errors rendering a clip.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Mux(#[from] MuxError),
    #[error("a single-frame output takes a spec that delivers one frame; this one delivers {frames}")]
    NotOneFrame { frames: u32 },
    #[error("recording usage failed: {0}")]
    Usage(#[from] tessera_store::StoreError),
}

/// Renders the frames `spec` delivers into `muxer`, calling `on_frame` with
/// each frame's index in the output and its pass times after it is written; an
/// error from it stops the render.
pub fn render_clip(
    ctx: &GpuContext,
    spec: &JobSpec,
    muxer: &mut dyn Muxer,
    on_frame: &mut dyn FnMut(u32, &PassTimes) -> Result<(), ClipError>,
) -> Result<ClipSummary, ClipError> {
    if !muxer.is_clip() && spec.frames != 1 {
        return Err(ClipError::NotOneFrame { frames: spec.frames });
    }
    let start = Instant::now();
    let mut renderer = FrameRenderer::new(ctx, spec.render_plan())?;
    let info = StreamInfo { width: spec.width, height: spec.height, fps: spec.fps, frames: spec.frames };
    muxer.write_header(&info)?;
    let mut gpu = PassTimes::default();
    let (mut cpu_encode_ns, mut readback_bytes, mut output_bytes) = (0u64, 0u64, 0u64);
    for index in 0..spec.frames {
        let frame = renderer.render_frame(index, muxer.input())?;
        muxer.write_frame(&frame.data)?;
        gpu.merge(&frame.times);
        cpu_encode_ns += frame.cpu_encode_ns;
        readback_bytes += frame.readback_bytes;
        output_bytes += frame.data.len() as u64;
        on_frame(index, &frame.times)?;
    }
    muxer.finish()?;
    Ok(ClipSummary {
        frames: spec.frames,
        tiles: spec.tiler.len(),
        wall: start.elapsed(),
        gpu,
        cpu_encode_ns,
        entropy: ctx.entropy(),
        readback_bytes,
        output_bytes,
        timing: renderer.timing_source(),
    })
}
