//! Frames in flight: a ring of renderers of one plan, so the GPU renders the
//! next frames while the host reads back, codes and writes the one before.
//!
//! Frame `i` goes to slot `i % depth`; a slot takes its next frame only after
//! its last one was read back, so each slot's buffers (uniforms, tiles, frame
//! texture, encoder scratch, readback and timestamp buffers) are reused
//! frame after frame and never shared by two frames at once. Frames come back
//! in order. Every slot renders the same frame the same way, so a clip is the
//! same bytes at any depth.
//!
//! Passes timed on the host (no timestamp queries) must have the GPU to
//! themselves, so there the ring is one frame deep.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use tessera_metering::TimingSource;

use super::frame::{FrameRenderer, Readback, RenderError, RenderPlan, SampledFrame};
use super::stats::ns_since;
use crate::gpu::GpuContext;

/// Most frames a ring keeps in flight.
pub const MAX_FRAMES_IN_FLIGHT: u32 = 3;
/// Frames in flight unless asked otherwise: one rendering while one is read back.
pub const DEFAULT_FRAMES_IN_FLIGHT: u32 = 2;

/// A frame submitted and not yet read back.
struct InFlight {
    index: u32,
    slot: usize,
    submission: wgpu::SubmissionIndex,
    record_ns: u64,
}

/// The renderers of one clip, one per frame in flight.
#[derive(Debug)]
pub struct FrameRing<'a> {
    ctx: &'a GpuContext,
    slots: Vec<FrameRenderer<'a>>,
}

impl<'a> FrameRing<'a> {
    /// A ring `depth` frames deep (1..=[`MAX_FRAMES_IN_FLIGHT`]); one deep
    /// where passes are timed on the host.
    pub fn new(ctx: &'a GpuContext, plan: RenderPlan, depth: u32) -> Result<Self, RenderError> {
        let depth = if ctx.timestamps { depth.clamp(1, MAX_FRAMES_IN_FLIGHT) } else { 1 };
        let slots = (0..depth).map(|_| FrameRenderer::new(ctx, plan.clone())).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { ctx, slots })
    }

    /// Frames in flight.
    pub fn depth(&self) -> u32 {
        self.slots.len() as u32
    }

    pub fn timing_source(&self) -> TimingSource {
        self.slots[0].timing_source()
    }

    /// Renders `frames` in order and hands each to `sink` as it is read back,
    /// with `sample(i)` saying whether frame `i` brings its RGBA sample too.
    /// An error from the renderer or the sink stops the run; frames still in
    /// flight are dropped.
    pub fn run<E: From<RenderError>>(
        &mut self,
        frames: Range<u32>,
        readback: Readback,
        sample: impl Fn(u32) -> bool,
        mut sink: impl FnMut(u32, SampledFrame) -> Result<(), E>,
    ) -> Result<(), E> {
        let depth = self.slots.len();
        if depth == 1 {
            for index in frames {
                let frame = self.slots[0].render_sampled(index, readback, sample(index))?;
                sink(index, frame)?;
            }
            return Ok(());
        }
        let mut queue: VecDeque<InFlight> = VecDeque::with_capacity(depth);
        let mut next = frames.start;
        loop {
            // Fill the ring: the slot a frame takes was freed by the frame
            // `depth` before it, read back on the last turn.
            while queue.len() < depth && next < frames.end {
                let slot = (next - frames.start) as usize % depth;
                let start = Instant::now();
                let commands = self.slots[slot].record_commands(next, readback, sample(next))?;
                let submission = self.ctx.queue.submit([commands]);
                queue.push_back(InFlight { index: next, slot, submission, record_ns: ns_since(start) });
                next += 1;
            }
            let Some(oldest) = queue.pop_front() else { return Ok(()) };
            let mut sampled = self.slots[oldest.slot].collect_frame(&oldest.submission)?;
            sampled.frame.host.record_ns += oldest.record_ns;
            sink(oldest.index, sampled)?;
        }
    }
}
