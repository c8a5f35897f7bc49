//! Rendering the frames a spec delivers into a muxer: the whole clip, or the
//! part its frame range asks for (one frame, for a single-frame output), with
//! frames in flight ([`super::ring`]).

use std::time::{Duration, Instant};

use serde::Serialize;
use tessera_metering::{PassTimes, TimingSource};

use super::frame::{RenderError, SampledFrame};
use super::ring::{FrameHooks, FrameRing};
use super::stats::{ns_since, HostTimes, RenderStats};
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
    /// Wall time of the frame loop alone (no renderer set-up).
    pub frame_loop: Duration,
    pub gpu: PassTimes,
    /// Host time per stage (record, wait, readback, entropy, mux, ledger).
    pub host: HostTimes,
    /// Where JPEG frames were Huffman-coded.
    pub entropy: Entropy,
    /// Bytes read back from the GPU, and bytes of the frames written.
    pub readback_bytes: u64,
    pub output_bytes: u64,
    pub frames_in_flight: u32,
    pub timing: TimingSource,
}

impl ClipSummary {
    /// The figures `--stats` writes.
    pub fn stats(&self, spec: &JobSpec) -> RenderStats {
        RenderStats {
            frames: self.frames,
            width: spec.width,
            height: spec.height,
            tiles: self.tiles,
            frames_in_flight: self.frames_in_flight,
            entropy: self.entropy,
            timing: self.timing.as_str(),
            wall_ns: u64::try_from(self.wall.as_nanos()).unwrap_or(u64::MAX),
            loop_ns: u64::try_from(self.frame_loop.as_nanos()).unwrap_or(u64::MAX),
            gpu_ns: (&self.gpu).into(),
            host_ns: (&self.host).into(),
            readback_bytes: self.readback_bytes,
            output_bytes: self.output_bytes,
        }
    }
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

/// The hooks of a clip written by `tessera render`: every frame in order,
/// into the muxer, then `on_frame`; host time and bytes added up.
struct ClipHooks<'m, 'f> {
    frames: u32,
    next: u32,
    muxer: &'m mut dyn Muxer,
    on_frame: &'f mut dyn FnMut(u32, &PassTimes) -> Result<(), ClipError>,
    gpu: PassTimes,
    host: HostTimes,
    readback_bytes: u64,
    output_bytes: u64,
}

impl FrameHooks for ClipHooks<'_, '_> {
    type Error = ClipError;

    fn next_frame(&mut self) -> Result<Option<u32>, ClipError> {
        let next = (self.next < self.frames).then_some(self.next);
        self.next = self.next.saturating_add(1).min(self.frames);
        Ok(next)
    }

    fn accept(&mut self, index: u32, sampled: SampledFrame) -> Result<(), ClipError> {
        let frame = sampled.frame;
        let muxing = Instant::now();
        self.muxer.write_frame(&frame.data)?;
        let mux_ns = ns_since(muxing);
        let metering = Instant::now();
        (self.on_frame)(index, &frame.times)?;
        self.host.merge(&HostTimes { mux_ns, ledger_ns: ns_since(metering), ..frame.host });
        self.gpu.merge(&frame.times);
        self.readback_bytes += frame.readback_bytes;
        self.output_bytes += frame.data.len() as u64;
        Ok(())
    }
}

/// Renders the frames `spec` delivers into `muxer`, `frames_in_flight` deep,
/// calling `on_frame` with each frame's index in the output and its pass
/// times after it is written (its time is the frame's `ledger_ns`); an error
/// from it stops the render.
pub fn render_clip(
    ctx: &GpuContext,
    spec: &JobSpec,
    muxer: &mut dyn Muxer,
    frames_in_flight: u32,
    on_frame: &mut dyn FnMut(u32, &PassTimes) -> Result<(), ClipError>,
) -> Result<ClipSummary, ClipError> {
    if !muxer.is_clip() && spec.frames != 1 {
        return Err(ClipError::NotOneFrame { frames: spec.frames });
    }
    let start = Instant::now();
    let mut ring = FrameRing::new(ctx, spec.render_plan(), frames_in_flight, muxer.input())?;
    let info = StreamInfo { width: spec.width, height: spec.height, fps: spec.fps, frames: spec.frames };
    muxer.write_header(&info)?;
    let mut hooks = ClipHooks {
        frames: spec.frames,
        next: 0,
        muxer,
        on_frame,
        gpu: PassTimes::default(),
        host: HostTimes::default(),
        readback_bytes: 0,
        output_bytes: 0,
    };
    let looping = Instant::now();
    if let Err(e) = ring.run(&mut hooks) {
        // The frames in flight ran on the GPU: they are metered, not written.
        ring.drop_unsubmitted();
        while let Some(collected) = ring.collect() {
            let metered = match collected {
                Ok((index, frame)) => (hooks.on_frame)(index, &frame.frame.times).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = metered {
                tracing::warn!(error = %why, "a frame in flight of a failed render was not metered");
            }
        }
        return Err(e);
    }
    let frame_loop = looping.elapsed();
    hooks.muxer.finish()?;
    Ok(ClipSummary {
        frames: spec.frames,
        tiles: spec.tiler.len(),
        wall: start.elapsed(),
        frame_loop,
        gpu: hooks.gpu,
        host: hooks.host,
        entropy: ctx.entropy(),
        readback_bytes: hooks.readback_bytes,
        output_bytes: hooks.output_bytes,
        frames_in_flight: ring.depth(),
        timing: ring.timing_source(),
    })
}
