//! The frame loop: a ring of renderers of one plan, so the GPU renders the
//! next frames while the host reads back, codes, writes and meters the one
//! before; and [`FrameHooks`], what the loop does with each frame.
//!
//! Every frame of tessera goes through a ring: `tessera render`
//! ([`super::clip`]), a service attempt (a whole clip or a chunk, one frame
//! of each member of a render group per round), and a join's gate
//! re-render. [`FrameRing::run`] is the loop of one job on its own; a render
//! group drives its members' rings a step at a time ([`FrameRing::record`],
//! [`FrameRing::submitted`], [`FrameRing::collect`]) so that their frames
//! share submissions.
//!
//! Frame `n` taken goes to slot `n % depth`; a slot takes its next frame only
//! after its last one was read back, so each slot's buffers (uniforms, tiles,
//! frame texture, encoder scratch, readback and timestamp buffers) are reused
//! frame after frame and never hold two frames at once. Frames come back in
//! the order they were taken, and every slot renders a frame the same way, so
//! a clip is the same bytes at any depth.
//!
//! Passes timed on the host (no timestamp queries) must have the GPU to
//! themselves: there the ring is one deep and renders each frame alone
//! ([`FrameRing::render_now`]).

use std::collections::VecDeque;
use std::time::Instant;

use tessera_metering::TimingSource;

use super::frame::{FrameRenderer, Readback, RenderError, RenderPlan, SampledFrame};
use super::stats::ns_since;
use crate::gpu::GpuContext;

/// Most frames a ring keeps in flight.
pub const MAX_FRAMES_IN_FLIGHT: u32 = 3;
/// Frames in flight unless asked otherwise: one rendering while one is read back.
pub const DEFAULT_FRAMES_IN_FLIGHT: u32 = 2;

/// What a frame loop does: which frame comes next, and what becomes of each
/// frame once it is read back (metering, gates, the muxer).
pub trait FrameHooks {
    type Error: From<RenderError>;

    /// The next frame to render, asked before each is taken: `None` when the
    /// loop has no more to take (its frames are all taken, or it was
    /// cancelled); frames already in flight still come back. An error ends
    /// the loop at once.
    fn next_frame(&mut self) -> Result<Option<u32>, Self::Error>;

    /// Whether frame `index` also brings its RGBA8 frame back (a gate's sample).
    fn sample(&self, index: u32) -> bool {
        let _ = index;
        false
    }

    /// Frame `index`, read back.
    fn accept(&mut self, index: u32, frame: SampledFrame) -> Result<(), Self::Error>;
}

/// A frame taken into a slot and not yet read back.
#[derive(Debug)]
struct InFlight {
    index: u32,
    slot: usize,
    /// `None` between [`FrameRing::record`] and [`FrameRing::submitted`].
    submission: Option<wgpu::SubmissionIndex>,
    record_ns: u64,
}

/// The renderers of one clip, one per frame in flight.
#[derive(Debug)]
pub struct FrameRing<'a> {
    ctx: &'a GpuContext,
    slots: Vec<FrameRenderer<'a>>,
    readback: Readback,
    in_flight: VecDeque<InFlight>,
    /// Frames taken so far: the next goes to slot `taken % depth`.
    taken: usize,
}

impl<'a> FrameRing<'a> {
    /// A ring `depth` frames deep (1..=[`MAX_FRAMES_IN_FLIGHT`]) reading back
    /// `readback`; one deep where passes are timed on the host.
    pub fn new(ctx: &'a GpuContext, plan: RenderPlan, depth: u32, readback: Readback) -> Result<Self, RenderError> {
        let depth = if ctx.timestamps { depth.clamp(1, MAX_FRAMES_IN_FLIGHT) } else { 1 };
        let slots = (0..depth).map(|_| FrameRenderer::new(ctx, plan.clone())).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { ctx, slots, readback, in_flight: VecDeque::new(), taken: 0 })
    }

    /// Frames in flight at most.
    pub fn depth(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Frames taken and not yet read back.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether every slot holds a frame.
    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= self.slots.len()
    }

    /// Whether frames are recorded for submissions the caller makes (GPU
    /// timestamps time each frame's passes), rather than rendered alone.
    pub fn records(&self) -> bool {
        self.ctx.timestamps
    }

    pub fn timing_source(&self) -> TimingSource {
        self.slots[0].timing_source()
    }

    pub fn plan(&self) -> &RenderPlan {
        self.slots[0].plan()
    }

    /// Test-only: the next frame taken carries an invalid copy in its commands.
    #[cfg(feature = "fault-injection")]
    pub fn poison_next_frame(&mut self) {
        let slot = self.taken % self.slots.len();
        self.slots[slot].poison_next_frame();
    }

    /// Records frame `index` into the next free slot, in a command buffer of
    /// its own for the caller to submit (alone, or with other rings' frames)
    /// and report with [`FrameRing::submitted`]. Recording again before that
    /// (a shared submit that failed, retried alone) records the same slot again.
    pub fn record(&mut self, index: u32, sample: bool) -> Result<wgpu::CommandBuffer, RenderError> {
        let start = Instant::now();
        let pending = self.in_flight.back().filter(|f| f.submission.is_none()).map(|f| f.slot);
        let slot = pending.unwrap_or(self.taken % self.slots.len());
        if pending.is_none() && self.is_full() {
            return Err(RenderError::RingFull);
        }
        let commands = self.slots[slot].record_commands(index, self.readback, sample)?;
        let record_ns = ns_since(start);
        match self.in_flight.back_mut().filter(|_| pending.is_some()) {
            Some(f) => *f = InFlight { index, slot, submission: None, record_ns },
            None => {
                self.in_flight.push_back(InFlight { index, slot, submission: None, record_ns });
                self.taken += 1;
            }
        }
        Ok(commands)
    }

    /// The frame [`FrameRing::record`] recorded went out in `submission`.
    pub fn submitted(&mut self, submission: &wgpu::SubmissionIndex) {
        if let Some(f) = self.in_flight.back_mut().filter(|f| f.submission.is_none()) {
            f.submission = Some(submission.clone());
        }
    }

    /// Forgets a frame recorded and never submitted (its submission failed):
    /// it never ran, and its slot is free again.
    pub fn drop_unsubmitted(&mut self) {
        if self.in_flight.back().is_some_and(|f| f.submission.is_none()) {
            self.in_flight.pop_back();
            self.taken -= 1;
        }
    }

    /// Reads back the oldest frame in flight, once its submission is done;
    /// `None` when nothing is in flight.
    pub fn collect(&mut self) -> Option<Result<(u32, SampledFrame), RenderError>> {
        let f = self.in_flight.pop_front()?;
        let Some(submission) = &f.submission else { return Some(Err(RenderError::NothingRecorded)) };
        Some(self.slots[f.slot].collect_frame(submission).map(|mut sampled| {
            sampled.frame.host.record_ns += f.record_ns;
            (f.index, sampled)
        }))
    }

    /// Renders frame `index` alone and reads it back: the step where passes
    /// are timed on the host.
    pub fn render_now(&mut self, index: u32, sample: bool) -> Result<SampledFrame, RenderError> {
        self.taken += 1;
        self.slots[0].render_sampled(index, self.readback, sample)
    }

    /// One job's loop on its own: takes frames while `hooks` has them and a
    /// slot is free, each in a submission of its own, and hands each to
    /// `hooks` in order as it is read back. An error from the renderer or the
    /// hooks ends it; frames still in flight stay in the ring
    /// ([`FrameRing::collect`] takes them).
    pub fn run<H: FrameHooks>(&mut self, hooks: &mut H) -> Result<(), H::Error> {
        loop {
            if !self.records() {
                let Some(index) = hooks.next_frame()? else { return Ok(()) };
                let frame = self.render_now(index, hooks.sample(index))?;
                hooks.accept(index, frame)?;
                continue;
            }
            while !self.is_full() {
                let Some(index) = hooks.next_frame()? else { break };
                let commands = self.record(index, hooks.sample(index))?;
                let ctx = self.ctx;
                let submission = ctx.scoped(|| Ok::<_, RenderError>(ctx.queue.submit([commands])))?;
                self.submitted(&submission);
            }
            let Some(collected) = self.collect() else { return Ok(()) };
            let (index, frame) = collected?;
            hooks.accept(index, frame)?;
        }
    }
}
