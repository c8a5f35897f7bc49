//! The frames of an attempt, on a render group's thread: its frame ring
//! ([`crate::render::ring`], frames in flight), the partial clip, the usage
//! recorder, the per-frame quality gates; at the end, the clip-level gates
//! and the archive. What happens in the store afterwards is
//! [`super::settle`]'s business, on the async side.
//!
//! A GPU error in this attempt's commands fails this attempt alone: the
//! renderer runs each frame's GPU work inside the attempt's own error scopes
//! (see [`crate::gpu::scope`]), on the group's thread or, for readbacks, on
//! the frame's own thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tessera_metering::PassTimes;
use tessera_store::{ChunkKind, Delivered, Lease, Segment};

use super::{archive, AttemptError, Finished, Member, Rendered};
use crate::encode::mux::{AviMuxer, Muxer, SegmentWriter, StreamInfo};
use crate::render::stats::ns_since;
use crate::render::{FrameRing, HostTimes, Readback, RenderStats, SampledFrame};
use crate::service::Service;
use crate::usage::{Bill, UsageRecorder};

/// The frame ring of a group's last finished chunk, kept for the job's next
/// chunk: a chunk that reuses it skips making its buffers and tiles. Keyed by
/// job (a job's chunks share its spec, so its render plan). It lives as long
/// as the group, which waits a while for a member when it holds a spare
/// (`--spare-ring-linger-ms`, 2 s: the scheduler claims every 200 ms), so a
/// worker whose chunks run one after the other renders them all with one ring.
#[derive(Debug, Default)]
pub(in crate::service) struct SpareRenderers<'s> {
    spare: Vec<(String, FrameRing<'s>)>,
}

impl<'s> SpareRenderers<'s> {
    /// Rings kept at most: each holds a frame's buffers per frame in flight.
    const KEEP: usize = 1;
    /// The job whose ring is kept, if any (the one kept longest).
    pub fn job(&self) -> Option<&str> {
        self.spare.first().map(|(job, _)| job.as_str())
    }

    fn take(&mut self, job: &str) -> Option<FrameRing<'s>> {
        let at = self.spare.iter().position(|(j, _)| j == job)?;
        Some(self.spare.remove(at).1)
    }

    fn put(&mut self, job: String, renderer: FrameRing<'s>) {
        if self.spare.len() == Self::KEEP {
            self.spare.remove(0);
        }
        self.spare.push((job, renderer));
    }
}

/// What [`ActiveJob::before_frame`] decided.
#[derive(Debug)]
pub(in crate::service) enum Step<'s> {
    Continue(ActiveJob<'s>),
    /// Every frame is in (or the job was cancelled and its frames in flight
    /// are in): [`ActiveJob::finish`] archives it.
    Complete(ActiveJob<'s>),
    Ended(ActiveJob<'s>, Result<Rendered, AttemptError>),
}

/// An attempt being rendered by a group.
#[derive(Debug)]
pub(in crate::service) struct ActiveJob<'s> {
    member: Member,
    recorder: UsageRecorder<'s>,
    ring: FrameRing<'s>,
    /// The clip (a whole chunk) or the segment (a range chunk).
    mux: Box<dyn Muxer + Send>,
    partial: PathBuf,
    /// The chunk's frames: `first .. end`; `next_take` is the next to
    /// render, `next` the next to be read back and accepted.
    first: u32,
    end: u32,
    next_take: u32,
    next: u32,
    /// What the frames so far cost the host, and the bytes read back and written.
    host: HostTimes,
    readback_bytes: u64,
    output_bytes: u64,
    started: Instant,
}

pub(in crate::service) fn gpu(e: crate::render::RenderError) -> AttemptError {
    AttemptError::from(e)
}

/// `clips/JOB.aN.avi.partial` (or `.seg.partial` for a range chunk): every
/// attempt writes a file of its own, so a stale worker on a shared volume
/// never touches another attempt's clip or segment.
pub(super) fn partial_path(svc: &Service, member: &Member) -> PathBuf {
    let ext = if member.claimed.chunk.kind == ChunkKind::Range { "seg" } else { "avi" };
    partial_path_of(svc, &member.claimed.lease, ext)
}

/// `clips/JOB.aN.EXT.partial` of the attempt of `lease`.
pub(super) fn partial_path_of(svc: &Service, lease: &Lease, ext: &str) -> PathBuf {
    svc.config.data.join("clips").join(format!("{}.a{}.{ext}.partial", lease.job, lease.attempt))
}

impl<'s> ActiveJob<'s> {
    /// Opens the attempt's renderer (a spare one of the job's, if the group
    /// kept one) and partial clip; on failure the attempt ends (and is
    /// answered) here.
    pub fn start(
        svc: &'s Service,
        member: Member,
        rt: &tokio::runtime::Handle,
        spares: &mut SpareRenderers<'s>,
    ) -> Option<Self> {
        let timing = svc.ctx.timing_source();
        let recorder = UsageRecorder::new(&svc.store, &svc.metrics, member.attempt.clone(), timing)
            .fenced(member.claimed.lease.clone());
        let partial = partial_path(svc, &member);
        let clips = svc.config.data.join("clips");
        let opened = std::fs::create_dir_all(&clips)
            .map_err(|e| AttemptError::io(&format!("creating {}", clips.display()), &e))
            .and_then(|()| match spares.take(&member.claimed.job.id.to_string()) {
                Some(ring) => {
                    svc.svc_metrics.frame_rings.with_label_values(&["reused"]).inc();
                    Ok(ring)
                }
                None => {
                    let depth = svc.config.frames_in_flight;
                    let ring = FrameRing::new(&svc.ctx, member.spec.render_plan(), depth, Readback::Jpeg);
                    if ring.is_ok() {
                        svc.svc_metrics.frame_rings.with_label_values(&["new"]).inc();
                    }
                    ring.map_err(gpu)
                }
            })
            .and_then(|renderer| {
                let mut mux: Box<dyn Muxer + Send> = match member.claimed.chunk.kind {
                    ChunkKind::Range => Box::new(SegmentWriter::new(&partial)),
                    _ => Box::new(AviMuxer::new(&partial)),
                };
                let s = &member.spec;
                let info = StreamInfo { width: s.width, height: s.height, fps: s.fps, frames: s.frames };
                mux.write_header(&info).map_err(|e| AttemptError::mux(&e))?;
                Ok((renderer, mux))
            });
        let chunk = &member.claimed.chunk;
        let (first, end) = match chunk.kind {
            ChunkKind::Range => (chunk.first_frame, chunk.first_frame + chunk.frames),
            _ => (0, member.spec.frames),
        };
        match opened {
            Ok((ring, mux)) => Some(Self {
                member,
                recorder,
                ring,
                mux,
                partial,
                first,
                end,
                next_take: first,
                next: first,
                host: HostTimes::default(),
                readback_bytes: 0,
                output_bytes: 0,
                started: Instant::now(),
            }),
            Err(e) => {
                remove(&partial);
                let closing = rt.block_on(recorder.close());
                answer(member, Finished { rendered: Err(e), closing });
                None
            }
        }
    }

    /// Ends the attempt at a round's start when its clip is complete (every
    /// frame taken and read back), the job was cancelled (and the frames in
    /// flight are read back), the lease was lost, the worker is draining,
    /// or (tests) a fault is injected.
    pub fn before_frame(mut self, svc: &Service) -> Step<'s> {
        let m = &self.member;
        if m.lost.load(Ordering::Relaxed) {
            return Step::Ended(self, Err(AttemptError::LeaseLost));
        }
        let all_taken = self.next_take >= self.end || self.cancelled();
        if all_taken {
            // Every frame is taken: the ones in flight come back this round
            // and the attempt completes, drain or not.
            return match self.ring.in_flight() {
                0 => Step::Complete(self),
                _ => Step::Continue(self),
            };
        }
        if svc.shutting_down() {
            return Step::Ended(self, Err(AttemptError::drain()));
        }
        let frame = self.next_take - self.first;
        if let Err(e) = injected_fault(m, frame) {
            return Step::Ended(self, Err(e));
        }
        arm_gpu_fault(m, frame, &mut self.ring);
        Step::Continue(self)
    }

    fn cancelled(&self) -> bool {
        self.member.cancel.load(Ordering::Relaxed)
    }

    /// Ends an attempt whose frames are all in: closes its recording, keeps
    /// a range's frame ring for the job's next chunk, and hands the file work
    /// (the muxer's index and sync, the hash of the segment or the clip, the
    /// sidecar) and the answer to a blocking task of its own, so that the
    /// group's other members keep rendering meanwhile.
    pub fn finish(self, svc: &Arc<Service>, rt: &tokio::runtime::Handle, spares: &mut SpareRenderers<'s>) {
        let cancelled = self.cancelled();
        let frames = self.next - self.first;
        let stats = self.stats(svc, frames);
        let usage = self.recorder.totals();
        let end = self.end;
        let Self { member, recorder, ring, mux, partial, .. } = self;
        // A range's ring serves the job's next range; after the last range
        // (ranges are claimed in order) only the join is left, which renders
        // one frame with a ring of its own.
        if member.claimed.chunk.kind == ChunkKind::Range && !cancelled && end < member.spec.frames {
            spares.put(member.claimed.job.id.to_string(), ring);
        }
        let closing = rt.block_on(recorder.close());
        let svc = Arc::clone(svc);
        let mut finishing = Finishing { member, mux, partial, frames, cancelled, stats, usage };
        rt.spawn_blocking(move || {
            let rendered = finishing.end_clip(&svc);
            remove(&finishing.partial);
            answer(finishing.member, Finished { rendered, closing });
        });
    }

    /// The figures of the frames rendered so far, for the sidecar.
    fn stats(&self, svc: &Service, frames: u32) -> RenderStats {
        let spec = &self.member.spec;
        RenderStats {
            frames,
            width: spec.width,
            height: spec.height,
            tiles: spec.tiler.len(),
            frames_in_flight: self.ring.depth(),
            entropy: svc.ctx.entropy(),
            timing: self.ring.timing_source().as_str(),
            // The attempt's clock starts once its ring is made.
            wall_ns: ns_since(self.started),
            loop_ns: ns_since(self.started),
            gpu_ns: (&self.recorder.totals()).into(),
            host_ns: (&self.host).into(),
            readback_bytes: self.readback_bytes,
            output_bytes: self.output_bytes,
        }
    }

    /// Whether the attempt takes its next frame this round: it has frames
    /// left, was not cancelled, and its ring has a free slot.
    pub fn takes_frame(&self) -> bool {
        self.next_take < self.end && !self.cancelled() && !self.ring.is_full()
    }

    /// Whether the attempt reads a frame back this round: its ring is full,
    /// or it takes no more frames and some are still in flight.
    pub fn collects(&self) -> bool {
        self.ring.in_flight() > 0 && (self.ring.is_full() || self.next_take >= self.end || self.cancelled())
    }

    /// Whether its frames are recorded into shared submissions (GPU
    /// timestamps) rather than rendered alone.
    pub fn records(&self) -> bool {
        self.ring.records()
    }

    /// Renders the next frame alone (passes timed on the host), reads it
    /// back and accepts it.
    pub fn render_alone(&mut self, svc: &Service, rt: &tokio::runtime::Handle) -> Result<(), AttemptError> {
        let index = self.next_take;
        let frame = self.ring.render_now(index, index == self.first).map_err(gpu)?;
        self.next_take += 1;
        self.accept(svc, rt, index, frame)
    }

    /// Records the next frame into a command buffer of its own, for a
    /// submission shared with other jobs; invalid commands fail here, this
    /// attempt's alone. A chunk's first frame is also the PSNR gate's
    /// sample: its RGBA frame comes back too.
    pub fn record(&mut self) -> Result<wgpu::CommandBuffer, crate::render::RenderError> {
        let index = self.next_take;
        self.ring.record(index, index == self.first)
    }

    /// The recorded frame went out in `submission`.
    pub fn submitted(&mut self, submission: &wgpu::SubmissionIndex) {
        self.ring.submitted(submission);
        self.next_take += 1;
    }

    /// Reads back the oldest frame in flight and accepts it.
    pub fn collect(&mut self, svc: &Service, rt: &tokio::runtime::Handle) -> Result<(), AttemptError> {
        match self.ring.collect() {
            Some(collected) => {
                let (index, frame) = collected.map_err(gpu)?;
                self.accept(svc, rt, index, frame)
            }
            None => Ok(()),
        }
    }

    /// Meters the frame, checks the quality gates and appends it to the clip.
    fn accept(
        &mut self,
        svc: &Service,
        rt: &tokio::runtime::Handle,
        index: u32,
        sampled: SampledFrame,
    ) -> Result<(), AttemptError> {
        debug_assert_eq!(index, self.next, "frames come back in order");
        let i = index;
        let frame = sampled.frame;
        // Metered first: a frame that fails a gate still used the GPU.
        let metering = Instant::now();
        rt.block_on(self.recorder.frame(i, &frame.times)).map_err(AttemptError::store)?;
        let ledger_ns = ns_since(metering);
        if let Some(rgba) = &sampled.rgba {
            psnr_gate(rgba, &frame.data, svc.config.psnr_floor_db)?;
        }
        if frame.nonzero_ac == Some(0) {
            return Err(AttemptError::failed(format!("quality gate: frame {i} is blank (no detail at all)")));
        }
        let muxing = Instant::now();
        self.mux.write_frame(&frame.data).map_err(|e| AttemptError::mux(&e))?;
        self.host.merge(&HostTimes { mux_ns: ns_since(muxing), ledger_ns, ..frame.host });
        self.readback_bytes += frame.readback_bytes;
        self.output_bytes += frame.data.len() as u64;
        self.next += 1;
        self.member.frames_done.store(self.next - self.first, Ordering::Relaxed);
        Ok(())
    }

    /// Ends an attempt that stopped early (an error, a lost lease, a drain):
    /// meters its frames in flight, closes the recording, removes its
    /// partial file and answers the attempt.
    pub fn end(mut self, rt: &tokio::runtime::Handle, rendered: Result<Rendered, AttemptError>) {
        if !matches!(rendered, Err(AttemptError::LeaseLost)) {
            self.meter_in_flight(rt);
        }
        let Self { member, recorder, partial, .. } = self;
        remove(&partial);
        let closing = rt.block_on(recorder.close());
        answer(member, Finished { rendered, closing });
    }

    /// Reads back the frames still in flight of an attempt that ends early
    /// and meters them: their passes ran on the GPU, whatever becomes of the
    /// attempt. Best effort: the attempt is ending anyway.
    fn meter_in_flight(&mut self, rt: &tokio::runtime::Handle) {
        // A frame recorded but never submitted (its submission failed) never ran.
        self.ring.drop_unsubmitted();
        while let Some(collected) = self.ring.collect() {
            let metered = match collected {
                Ok((index, frame)) => {
                    rt.block_on(self.recorder.frame(index, &frame.frame.times)).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = metered {
                tracing::warn!(lease = %self.member.claimed.lease, error = %e, "a frame in flight of an ending attempt was not metered");
            }
        }
    }
}

/// An attempt whose frames are all in, being archived off the group's thread.
struct Finishing {
    member: Member,
    mux: Box<dyn Muxer + Send>,
    partial: PathBuf,
    /// Frames rendered, and whether the job was cancelled.
    frames: u32,
    cancelled: bool,
    stats: RenderStats,
    usage: PassTimes,
}

impl Finishing {
    fn end_clip(&mut self, svc: &Service) -> Result<Rendered, AttemptError> {
        let cancelled = self.cancelled;
        self.mux.finish().map_err(|e| AttemptError::mux(&e))?;
        let (frames, spec) = (self.frames, &self.member.spec);
        if self.member.claimed.chunk.kind == ChunkKind::Range {
            // A cancelled range keeps its frames so far in a segment: the
            // job's join delivers (and bills) the clip's frames up to there.
            if cancelled {
                let delivered = match frames {
                    0 => Delivered::Nothing,
                    _ => Delivered::Segment(self.keep_segment(frames)?),
                };
                return Ok(Rendered::Cancelled { frames, bill: None, delivered });
            }
            return self.keep_segment(frames).map(|segment| Rendered::Segment { segment });
        }
        if cancelled {
            // What was rendered before the cancel is delivered, a partial
            // clip archived as the job's output, and billed: those frames at
            // the quote's rates. No frame: nothing kept, nothing billed.
            if frames == 0 {
                return Ok(Rendered::Cancelled { frames, bill: None, delivered: Delivered::Nothing });
            }
            let mut part = spec.clone();
            part.frames = frames;
            let clip = archive::ClipOf {
                spec: &part,
                partial: Some("cancelled"),
                stats: Some(self.stats.clone()),
                ..archive::ClipOf::member(&self.member)
            };
            let output = archive::archive(svc, &clip, &self.partial, &self.usage)?;
            let bill = Bill::of(spec, &self.member.quote, frames);
            return Ok(Rendered::Cancelled { frames, bill: Some(bill), delivered: Delivered::Clip(output) });
        }
        let duration = f64::from(frames) / f64::from(spec.fps);
        // A preview lasts its frames, not the whole clip's duration.
        let asked = spec.delivered_duration_s();
        if (duration - asked).abs() > 0.5 / f64::from(spec.fps) + 1e-9 {
            return Err(AttemptError::failed(format!("quality gate: clip lasts {duration} s, spec asked {asked} s")));
        }
        let clip = archive::ClipOf { stats: Some(self.stats.clone()), ..archive::ClipOf::member(&self.member) };
        let output = archive::archive(svc, &clip, &self.partial, &self.usage)?;
        Ok(Rendered::Complete { frames, output })
    }

    /// Moves a finished segment into place (`clips/JOB.aN.seg`): from here on
    /// it survives this worker, and the settlement records its size and hash.
    fn keep_segment(&self, frames: u32) -> Result<Segment, AttemptError> {
        let io = |what: &str, e: std::io::Error| AttemptError::io(&format!("segment: {what}"), &e);
        let path = self.partial.with_extension("");
        std::fs::rename(&self.partial, &path).map_err(|e| io("moving it into place", e))?;
        let bytes = std::fs::metadata(&path).map_err(|e| io("reading it", e))?.len() as i64;
        let sha256 = archive::sha256_file(&path).map_err(|e| io("hashing it", e))?;
        Ok(Segment { path: path.to_string_lossy().into_owned(), bytes, sha256, frames })
    }
}

/// Hands the attempt's end to its task. If the task is gone (the process is
/// going down), nothing will settle the attempt: its archived clip, if any,
/// is removed, and its lease expires for another worker to requeue the job.
fn answer(member: Member, finished: Finished) {
    let lease = member.claimed.lease.clone();
    if let Err(unsent) = member.reply.send(finished) {
        tracing::warn!(%lease, "the attempt's task is gone; its result is dropped");
        match unsent.rendered {
            Ok(Rendered::Complete { output, .. }) => archive::discard(&[output.path, output.metadata_path]),
            Ok(Rendered::Segment { segment })
            | Ok(Rendered::Cancelled { delivered: Delivered::Segment(segment), .. }) => {
                remove(Path::new(&segment.path))
            }
            Ok(Rendered::Cancelled { delivered: Delivered::Clip(output), .. }) => {
                archive::discard(&[output.path, output.metadata_path])
            }
            _ => {}
        }
    }
}

pub(super) fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a partial clip");
        }
    }
}

pub(super) fn psnr_gate(rgba: &[u8], jpeg: &[u8], floor: f64) -> Result<(), AttemptError> {
    let decoded = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| AttemptError::failed(format!("quality gate: encoded frame does not decode: {e}")))?
        .to_rgba8();
    let (mut sum, mut n) = (0f64, 0f64);
    for (a, b) in rgba.chunks_exact(4).zip(decoded.as_raw().chunks_exact(4)) {
        for c in 0..3 {
            let d = f64::from(a[c]) - f64::from(b[c]);
            sum += d * d;
            n += 1.0;
        }
    }
    let mse = sum / n.max(1.0);
    if !rgba.chunks_exact(4).any(|p| p[..3] != rgba[..3]) {
        return Err(AttemptError::failed("quality gate: frame 0 is blank (one colour)"));
    }
    let psnr = if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0 * 255.0 / mse).log10() };
    if psnr < floor {
        return Err(AttemptError::failed(format!(
            "quality gate: encode PSNR {psnr:.1} dB is below the {floor} dB floor"
        )));
    }
    Ok(())
}

/// Test-only GPU fault hook: `TESSERA_FAULTS=fail_attempts=K` makes attempts 1..=K
/// fail at frame 1 as if the device were lost. Compiled only with the
/// `fault-injection` feature, which only the test build enables.
#[cfg(feature = "fault-injection")]
fn injected_fault(member: &Member, frame: u32) -> Result<(), AttemptError> {
    let Ok(spec) = std::env::var("TESSERA_FAULTS") else { return Ok(()) };
    let limit = spec.strip_prefix("fail_attempts=").and_then(|k| k.parse::<u32>().ok()).unwrap_or(0);
    let attempt = member.claimed.lease.attempt;
    if frame == 1 && attempt <= limit {
        return Err(AttemptError::failed(format!("injected GPU fault: device lost (attempt {attempt})")));
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
fn injected_fault(_member: &Member, _frame: u32) -> Result<(), AttemptError> {
    Ok(())
}

/// Test-only GPU fault hook: with `TESSERA_FAULTS=gpu_error=KEY` (one item of
/// a comma-separated list), the second frame of every attempt of the job
/// submitted with `Idempotency-Key: KEY` records a buffer copy out of bounds
/// into its commands: a real wgpu validation error, which must fail that
/// attempt and no other job's. Compiled only with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
fn arm_gpu_fault(member: &Member, frame: u32, renderer: &mut FrameRing<'_>) {
    let Ok(faults) = std::env::var("TESSERA_FAULTS") else { return };
    let wanted = faults.split(',').find_map(|f| f.trim().strip_prefix("gpu_error="));
    if frame == 1 && wanted.is_some() && member.claimed.job.idempotency_key.as_deref() == wanted {
        tracing::warn!(job = %member.claimed.job.id, "injected GPU fault: an out-of-bounds copy in this job's commands");
        renderer.poison_next_frame();
    }
}

#[cfg(not(feature = "fault-injection"))]
fn arm_gpu_fault(_member: &Member, _frame: u32, _renderer: &mut FrameRing<'_>) {}
