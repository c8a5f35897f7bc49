//! The join: the last step of a chunked clip, run by whichever worker claims
//! the job's join chunk once every range is done (fenced like any attempt).
//!
//! 1. checks every segment against the size and SHA-256 its settlement recorded;
//! 2. streams their frames, a frame at a time, into the clip's AVI, with the
//!    OpenDML index built for the whole clip (no re-encoding);
//! 3. runs the whole-clip gates: frame count, duration, and a sampled PSNR (the
//!    middle frame rendered again on this GPU against the joined frame, which
//!    catches a segment out of place);
//! 4. archives the clip with a sidecar listing its chunks, and settles the job
//!    with its one billable output; the segments are removed afterwards.
//!
//! A job cancelled before every range was done is delivered by its join too,
//! as far as its frames run without a gap: the segments of the ranges from the
//! first frame on (a cancelled range's partial segment ends them) are joined
//! the same way into a partial clip (its sidecar says so, with its frame
//! range), archived as the job's output, downloadable, and billed exactly its
//! frames at the quote's rates. Frames after a gap are not delivered, so not
//! billed; nothing delivered, nothing billed. (A cancel after the last range
//! is too late to save anything: the clip is joined and delivered.)

use std::path::PathBuf;
use std::sync::Arc;

use tessera_metering::{AdmittedQuote, AttemptRef, Pass, PassTimes};
use tessera_store::{Chunk, ChunkKind, ChunkState, Claimed, Delivered, Segment};

use super::{archive, frames, settle, AttemptError, Beating, Finished, Rendered};
use crate::encode::mux::{segment, StreamInfo, RIFF_LIMIT};
use crate::render::ring::FrameHooks;
use crate::render::{FrameRing, Readback, SampledFrame};
use crate::service::Service;
use crate::spec::JobSpec;
use crate::usage::{Bill, UsageRecorder};

/// Joins (or, for a cancelled job, settles) the chunks of `claimed`'s job.
pub(super) async fn join_and_settle(
    svc: &Arc<Service>,
    claimed: Claimed,
    spec: JobSpec,
    quote: AdmittedQuote,
    attempt: AttemptRef,
) -> &'static str {
    // The join reads no cancel or loss mid-way: its settlement is fenced.
    let (beating, _beat) = Beating::start(svc, &claimed.lease);
    let outcome = match svc.store.chunks(&claimed.job.id).await {
        Err(e) => settle::unrendered(svc, &claimed, AttemptError::store(e)).await,
        // A cancel that came after every frame was rendered is too late to
        // save anything: the clip is joined and delivered, as it is billed.
        Ok(chunks) if claimed.job.cancel_requested && segments_of(&chunks).is_err() => {
            let prefix = delivered_prefix(&chunks);
            assemble(svc, &claimed, spec, quote, attempt, chunks, Some(prefix)).await
        }
        Ok(chunks) => assemble(svc, &claimed, spec, quote, attempt, chunks, None).await,
    };
    beating.stop();
    outcome
}

/// A cancelled job's deliverable frames: the segments of its ranges from the
/// first frame on, in frame order, up to the first range without one or the
/// first partial one (a range cancelled mid-way), which ends them.
fn delivered_prefix(chunks: &[Chunk]) -> Vec<(u32, Segment)> {
    let mut ranges: Vec<&Chunk> = chunks.iter().filter(|c| c.kind == ChunkKind::Range).collect();
    ranges.sort_by_key(|c| c.first_frame);
    let mut prefix = Vec::new();
    for c in ranges {
        let Some(s) = &c.segment else { break };
        prefix.push((c.index, s.clone()));
        if s.frames < c.frames {
            break;
        }
    }
    prefix
}

/// The segments of every range with its chunk index, in frame order; an
/// error if a range is not done.
fn segments_of(chunks: &[Chunk]) -> Result<Vec<(u32, Segment)>, AttemptError> {
    chunks
        .iter()
        .filter(|c| c.kind == ChunkKind::Range)
        .map(|c| match (&c.state, &c.segment) {
            (ChunkState::Done, Some(s)) => Ok((c.index, s.clone())),
            (state, _) => Err(AttemptError::failed(format!("join: chunk {} is {state} without a segment", c.index))),
        })
        .collect()
}

/// Joins `segments` (every range's, or a cancelled job's `delivered` prefix)
/// into the clip, archives it, settles the job and removes the segments.
async fn assemble(
    svc: &Arc<Service>,
    claimed: &Claimed,
    spec: JobSpec,
    quote: AdmittedQuote,
    attempt: AttemptRef,
    chunks: Vec<Chunk>,
    delivered: Option<Vec<(u32, Segment)>>,
) -> &'static str {
    let cancelled = delivered.is_some();
    let segments = match delivered.map_or_else(|| segments_of(&chunks), Ok) {
        Ok(s) => s,
        Err(e) => return settle::unrendered(svc, claimed, e).await,
    };
    let gpu = match svc.store.chunk_gpu_ns(&claimed.job.id).await {
        Ok(g) => g,
        Err(e) => return settle::unrendered(svc, claimed, AttemptError::store(e)).await,
    };
    let bill = Bill::whole(&spec, &quote);
    let work = Join {
        svc: svc.clone(),
        claimed: claimed.clone(),
        spec,
        quote,
        attempt,
        chunks: chunks.clone(),
        gpu,
        segments,
        cancelled,
    };
    let rt = tokio::runtime::Handle::current();
    let finished = match tokio::task::spawn_blocking(move || work.run(&rt)).await {
        Ok(f) => f,
        Err(_) => {
            let e = AttemptError::failed("the join stopped before it ended");
            return settle::unrendered(svc, claimed, e).await;
        }
    };
    let joined = matches!(finished.rendered, Ok(Rendered::Complete { .. } | Rendered::Cancelled { .. }));
    let outcome = settle::settle(svc, claimed, &bill, finished).await;
    if joined && matches!(outcome, "succeeded" | "cancelled") {
        remove_segments(svc, claimed, &chunks).await;
    }
    outcome
}

/// What the blocking part of a join works with.
struct Join {
    svc: Arc<Service>,
    claimed: Claimed,
    spec: JobSpec,
    quote: AdmittedQuote,
    attempt: AttemptRef,
    chunks: Vec<Chunk>,
    gpu: std::collections::BTreeMap<(u32, Pass), i64>,
    segments: Vec<(u32, Segment)>,
    /// The job was cancelled: `segments` are the frames it delivers.
    cancelled: bool,
}

impl Join {
    fn run(self, rt: &tokio::runtime::Handle) -> Finished {
        let svc = &self.svc;
        let timing = svc.ctx.timing_source();
        let mut recorder = UsageRecorder::new(&svc.store, &svc.metrics, self.attempt.clone(), timing)
            .fenced(self.claimed.lease.clone());
        let partial = frames::partial_path_of(svc, &self.claimed.lease, "avi");
        let rendered = self.join(rt, &mut recorder, &partial);
        if rendered.is_err() {
            frames::remove(&partial);
        }
        let closing = rt.block_on(recorder.close());
        Finished { rendered, closing }
    }

    fn join(
        &self,
        rt: &tokio::runtime::Handle,
        recorder: &mut UsageRecorder<'_>,
        partial: &std::path::Path,
    ) -> Result<Rendered, AttemptError> {
        let (svc, spec) = (&self.svc, &self.spec);
        injected_damage(&self.claimed, &self.segments);
        // Every segment as its range recorded it; a damaged or lost one is
        // removed and its range rendered again, the others kept.
        let mut damaged = Vec::new();
        for (index, s) in &self.segments {
            let path = std::path::Path::new(&s.path);
            match archive::sha256_file(path) {
                Ok(sha) if sha == s.sha256 => {}
                Ok(_) => damaged.push((*index, format!("segment of chunk {index} does not match its recorded hash"))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    damaged.push((*index, format!("segment of chunk {index} is gone ({})", s.path)))
                }
                Err(e) => return Err(AttemptError::io(&format!("join: reading segment {}", s.path), &e)),
            }
        }
        let mut segments = self.segments.clone();
        if self.cancelled && !damaged.is_empty() {
            // Nothing renders again for a cancelled job: it delivers its
            // frames up to the first damaged segment.
            let first_bad = damaged.iter().map(|(i, _)| *i).min().unwrap_or(0);
            let keep = segments.iter().position(|(i, _)| *i == first_bad).unwrap_or(segments.len());
            tracing::warn!(lease = %self.claimed.lease, ?damaged, "a cancelled job delivers its frames up to a damaged segment");
            segments.truncate(keep);
            damaged.clear();
        }
        if !damaged.is_empty() {
            for (index, _) in &damaged {
                if let Some((_, s)) = self.segments.iter().find(|(i, _)| i == index) {
                    frames::remove(std::path::Path::new(&s.path));
                }
            }
            let reason = damaged.iter().map(|(_, why)| why.as_str()).collect::<Vec<_>>().join("; ");
            return Ok(Rendered::Redo { ranges: damaged.into_iter().map(|(i, _)| i).collect(), reason });
        }
        // A cancelled job's clip: the frames its segments hold, from the first.
        let part;
        let spec = if self.cancelled {
            let mut p = spec.clone();
            p.frames = segments.iter().map(|(_, s)| s.frames).sum();
            part = p;
            &part
        } else {
            spec
        };
        if spec.frames == 0 {
            return Ok(Rendered::Cancelled { frames: 0, bill: None, delivered: Delivered::Nothing });
        }
        let list: Vec<(PathBuf, u32)> = segments.iter().map(|(_, s)| (PathBuf::from(&s.path), s.frames)).collect();
        let info = StreamInfo { width: spec.width, height: spec.height, fps: spec.fps, frames: spec.frames };
        let sample_at = spec.frames / 2;
        let mut sampled = None;
        let frames = segment::join(&list, partial, info, RIFF_LIMIT, |i, jpeg| {
            if i == sample_at {
                sampled = Some(jpeg.to_vec());
            }
        })
        .map_err(|e| match e {
            segment::SegmentError::Io { path, source } => AttemptError::io(&format!("join: reading {path}"), &source),
            segment::SegmentError::Mux(m) => AttemptError::mux(&m),
            other => AttemptError::failed(format!("join: {other}")),
        })?;
        if frames != spec.frames {
            return Err(AttemptError::failed(format!(
                "quality gate: joined clip has {frames} frames, spec asked {}",
                spec.frames
            )));
        }
        let duration = f64::from(frames) / f64::from(spec.fps);
        // A preview lasts its frames, not the whole clip's duration.
        let asked = spec.delivered_duration_s();
        if (duration - asked).abs() > 0.5 / f64::from(spec.fps) + 1e-9 {
            return Err(AttemptError::failed(format!("quality gate: clip lasts {duration} s, spec asked {asked} s")));
        }
        // The sampled frame again, on this GPU: the joined one must match it.
        // Through the frame loop every render takes, one frame long.
        let mut ring = FrameRing::new(&svc.ctx, spec.render_plan(), 1, Readback::Jpeg).map_err(frames::gpu)?;
        let mut gate = GateRender { at: Some(sample_at), rt, recorder: &mut *recorder, rgba: None };
        ring.run(&mut gate)?;
        let (Some(rgba), Some(joined)) = (gate.rgba, sampled) else {
            return Err(AttemptError::failed("quality gate: no sampled frame to compare"));
        };
        frames::psnr_gate(&rgba, &joined, svc.config.psnr_floor_db)?;
        let mut usage = recorder.totals();
        for ((_, pass), ns) in &self.gpu {
            usage.add(*pass, u64::try_from(*ns).unwrap_or(0));
        }
        let clip = archive::ClipOf {
            claimed: &self.claimed,
            spec,
            quote: &self.quote,
            tier: &self.attempt.tier,
            chunks: Some(self.chunk_list(&recorder.totals())),
            partial: self.cancelled.then_some("cancelled"),
            // A joined clip's figures are its chunks' (`chunks`), each its own render's.
            stats: None,
        };
        let output = archive::archive(svc, &clip, partial, &usage)?;
        if self.cancelled {
            let bill = Bill::of(&self.spec, &self.quote, spec.frames);
            return Ok(Rendered::Cancelled {
                frames: spec.frames,
                bill: Some(bill),
                delivered: Delivered::Clip(output),
            });
        }
        // The frames this attempt rendered (its GPU time is one frame's): what
        // the concurrency controller's per-frame estimate may learn from.
        Ok(Rendered::Complete { frames: 1, output })
    }

    /// The sidecar's chunks: frame range, worker, attempts, GPU time per pass.
    fn chunk_list(&self, join_gpu: &PassTimes) -> serde_json::Value {
        let list: Vec<serde_json::Value> = self
            .chunks
            .iter()
            .map(|c| {
                let mut usage = PassTimes::default();
                for ((_, pass), ns) in self.gpu.range((c.index, Pass::Render)..=(c.index, Pass::Encode)) {
                    usage.add(*pass, u64::try_from(*ns).unwrap_or(0));
                }
                let (worker, attempts) = if c.kind == ChunkKind::Join {
                    usage = add(usage, join_gpu);
                    (Some(self.claimed.lease.owner.clone()), c.attempts)
                } else {
                    (c.worker.clone(), c.attempts)
                };
                serde_json::json!({
                    "index": c.index, "kind": c.kind, "first_frame": c.first_frame, "frames": c.frames,
                    "worker": worker, "attempts": attempts,
                    "usage_ns": {"render": usage.render_ns, "stitch": usage.stitch_ns, "encode": usage.encode_ns},
                })
            })
            .collect();
        serde_json::Value::Array(list)
    }
}

fn add(mut a: PassTimes, b: &PassTimes) -> PassTimes {
    a.render_ns += b.render_ns;
    a.stitch_ns += b.stitch_ns;
    a.encode_ns += b.encode_ns;
    a
}

/// Test-only fault hook: `TESSERA_FAULTS=damage_segment` cuts the first
/// range's segment short before a job's first join reads it, as a failing
/// volume would. Compiled only with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
fn injected_damage(claimed: &Claimed, segments: &[(u32, Segment)]) {
    if std::env::var("TESSERA_FAULTS").as_deref() != Ok("damage_segment") || claimed.chunk.attempts != 1 {
        return;
    }
    if let Some((_, s)) = segments.first() {
        if let Ok(bytes) = std::fs::read(&s.path) {
            let written = std::fs::write(&s.path, &bytes[..bytes.len().saturating_sub(10)]);
            tracing::warn!(path = %s.path, ok = written.is_ok(), "injected fault: segment cut short");
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
fn injected_damage(_claimed: &Claimed, _segments: &[(u32, Segment)]) {}

/// Removes a finished job's segments, then records that they are gone (what
/// is left, the upkeep sweep removes later).
async fn remove_segments(svc: &Service, claimed: &Claimed, chunks: &[Chunk]) {
    for s in chunks.iter().filter_map(|c| c.segment.as_ref()) {
        frames::remove(std::path::Path::new(&s.path));
    }
    if let Err(e) = svc.store.forget_segments(&claimed.job.id).await {
        svc.errors.warn("forgetting a joined clip's segments", &e);
    }
}

/// The hooks of a join's gate re-render: frame `at` alone, metered, its RGBA
/// kept for the PSNR gate.
struct GateRender<'r, 'u, 's> {
    at: Option<u32>,
    rt: &'r tokio::runtime::Handle,
    recorder: &'u mut UsageRecorder<'s>,
    rgba: Option<Vec<u8>>,
}

impl FrameHooks for GateRender<'_, '_, '_> {
    type Error = AttemptError;

    fn next_frame(&mut self) -> Result<Option<u32>, AttemptError> {
        Ok(self.at.take())
    }

    fn sample(&self, _: u32) -> bool {
        true
    }

    fn accept(&mut self, index: u32, frame: SampledFrame) -> Result<(), AttemptError> {
        self.rt.block_on(self.recorder.frame(index, &frame.frame.times)).map_err(AttemptError::store)?;
        self.rgba = frame.rgba;
        Ok(())
    }
}
