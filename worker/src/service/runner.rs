//! Runs one attempt of a claimed job: hand it to a render group ([`super::group`])
//! that renders and encodes its frames on the GPU, check the quality gates,
//! archive the clip with its sidecar, and meter it; on failure, retry with
//! backoff or dead-letter; on cancel, stop at the next frame.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tessera_metering::ledger::now_ms;
use tessera_metering::{quote, AttemptRef, Outcome, PassTimes, Quote, TimingSource, UsageEvent};

use super::group::Member;
use super::jobs::{ArchivedOutput, Job};
use super::retry::{backoff, random_unit};
use super::Service;
use crate::encode::mux::{AviMuxer, Muxer, StreamInfo};
use crate::render::{FrameRenderer, Readback, SampledFrame};
use crate::spec::{JobSpec, RawSpec, SpecLimits};
use crate::usage::UsageRecorder;

/// Why an attempt did not succeed.
#[derive(Debug)]
pub struct AttemptError {
    message: String,
    /// False for errors a retry cannot fix (an invalid stored spec).
    retryable: bool,
}

impl AttemptError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }
}

fn retryable(message: impl Into<String>) -> AttemptError {
    AttemptError::retryable(message)
}

/// How an attempt that did not fail ended.
#[derive(Debug)]
pub enum Done {
    Succeeded,
    Cancelled,
}

/// Runs `job` (already claimed, leased and counted in flight) to its next state.
pub async fn run(svc: Arc<Service>, job: Job) {
    let lane = job.lane.clone();
    let wait_s = (now_ms() - job.not_before_ms.max(job.created_at_ms)).max(0) as f64 / 1000.0;
    svc.svc_metrics.queue_wait.with_label_values(&[&lane]).observe(wait_s);
    if job.attempts == 1 && wait_s > svc.config.lane(&lane).wait_slo.as_secs_f64() {
        svc.svc_metrics.sla_breaches.with_label_values(&[&lane]).inc();
    }
    svc.controller.lock().unwrap_or_else(|e| e.into_inner()).observe_wait(wait_s);
    let start = Instant::now();
    let result = attempt(svc.clone(), &job).await;
    svc.svc_metrics.run_time.with_label_values(&[&lane]).observe(start.elapsed().as_secs_f64());
    if result.is_ok() {
        let _ = svc.store.release(&job.id).await;
    }
    let outcome = match result {
        Ok(Done::Succeeded) => "succeeded",
        Ok(Done::Cancelled) => "cancelled",
        Err(e) => {
            let dead = !e.retryable || job.attempts >= job.max_attempts;
            let overload = svc.overload();
            let delay = backoff(job.attempts, svc.config.backoff_base, svc.config.backoff_cap, overload, random_unit());
            tracing::warn!(job = %job.id, attempt = job.attempts, dead, delay_ms = delay.as_millis() as u64, error = %e.message, "attempt failed");
            if let Err(db) = svc.jobs.fail(&job.id, &e.message, delay.as_millis() as i64, dead).await {
                tracing::error!(job = %job.id, error = %db, "could not record the failed attempt; the lease will expire");
            }
            if dead {
                let _ = svc.store.release(&job.id).await;
            }
            if dead {
                "dead"
            } else {
                "retried"
            }
        }
    };
    svc.svc_metrics.jobs.with_label_values(&[&lane, outcome]).inc();
    svc.finish_attempt();
}

async fn attempt(svc: Arc<Service>, job: &Job) -> Result<Done, AttemptError> {
    let fatal = |m: String| AttemptError { message: m, retryable: false };
    let raw: RawSpec = serde_json::from_str(&job.spec_json).map_err(|e| fatal(format!("stored spec: {e}")))?;
    let spec = raw.validate(&SpecLimits::from_price_book(&svc.book)).map_err(|e| fatal(e.to_string()))?;
    let tenant = svc
        .store
        .tenant(&job.tenant_id)
        .await
        .map_err(|e| retryable(e.to_string()))?
        .ok_or_else(|| fatal(format!("tenant {} no longer exists", job.tenant_id)))?;
    let q = quote(&svc.book, &spec.quote_request()).map_err(|e| fatal(e.to_string()))?;
    let attempt = AttemptRef {
        tenant_id: tenant.id.clone(),
        tier: tenant.tier.clone(),
        job_id: job.id.clone(),
        attempt: job.attempts,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let frames_done = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let heartbeat =
        tokio::spawn(heartbeat(svc.clone(), job.id.clone(), cancel.clone(), frames_done.clone(), finished.clone()));
    let (reply, result) = tokio::sync::oneshot::channel();
    let member = Member {
        job: job.clone(),
        spec,
        quote: q,
        attempt,
        cancel: cancel.clone(),
        frames_done: frames_done.clone(),
        reply,
    };
    svc.groups.join(&svc, member);
    let result = result.await.unwrap_or_else(|_| Err(retryable("the render thread stopped before the attempt ended")));
    finished.store(true, Ordering::Relaxed);
    heartbeat.abort();
    result
}

/// Renews the lease every third of its length, and picks up cancellation.
async fn heartbeat(
    svc: Arc<Service>,
    id: String,
    cancel: Arc<AtomicBool>,
    frames: Arc<AtomicU32>,
    finished: Arc<AtomicBool>,
) {
    let lease = svc.config.lease.as_millis() as i64;
    let period = (svc.config.lease / 3).max(Duration::from_millis(100));
    while !finished.load(Ordering::Relaxed) {
        tokio::time::sleep(period.min(Duration::from_millis(500))).await;
        match svc.jobs.heartbeat(&id, &svc.owner, lease, frames.load(Ordering::Relaxed)).await {
            Ok((ours, cancelled)) => {
                if cancelled || !ours {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => tracing::warn!(job = %id, error = %e, "heartbeat failed"),
        }
    }
}

/// How an attempt's rendering ended.
#[derive(Debug)]
pub(super) enum Rendered {
    Complete { frames: u32 },
    Cancelled { frames: u32 },
}

/// What [`ActiveJob::before_frame`] decided.
#[derive(Debug)]
pub(super) enum Step<'s> {
    Continue(ActiveJob<'s>),
    Ended(ActiveJob<'s>, Result<Rendered, AttemptError>),
}

/// An attempt being rendered by a group: its renderer, muxer and usage
/// recorder, and the next frame to render.
#[derive(Debug)]
pub(super) struct ActiveJob<'s> {
    member: Member,
    recorder: UsageRecorder<'s>,
    renderer: FrameRenderer<'s>,
    mux: AviMuxer,
    partial: PathBuf,
    next: u32,
}

fn gpu(e: crate::render::RenderError) -> AttemptError {
    retryable(format!("GPU: {e}"))
}

impl<'s> ActiveJob<'s> {
    /// Opens the attempt's renderer and partial clip; on failure the attempt
    /// ends (and is answered) here.
    pub fn start(svc: &'s Service, member: Member, rt: &tokio::runtime::Handle) -> Option<Self> {
        let timing = if svc.ctx.timestamps { TimingSource::Gpu } else { TimingSource::Host };
        let recorder = UsageRecorder::new(&svc.store, &svc.metrics, member.attempt.clone(), timing);
        let clips = svc.config.data.join("clips");
        let partial = clips.join(format!("{}.a{}.avi.partial", member.job.id, member.job.attempts));
        let opened = std::fs::create_dir_all(&clips)
            .map_err(|e| retryable(format!("creating {}: {e}", clips.display())))
            .and_then(|()| FrameRenderer::new(&svc.ctx, member.spec.render_plan()).map_err(gpu))
            .and_then(|renderer| {
                let mut mux = AviMuxer::new(&partial);
                let s = &member.spec;
                let info = StreamInfo { width: s.width, height: s.height, fps: s.fps, frames: s.frames };
                mux.write_header(&info).map_err(|e| retryable(e.to_string()))?;
                Ok((renderer, mux))
            });
        match opened {
            Ok((renderer, mux)) => Some(Self { member, recorder, renderer, mux, partial, next: 0 }),
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                let _ = rt.block_on(recorder.finish(&svc.book, &member.spec, &member.quote, Outcome::Failed));
                let _ = member.reply.send(Err(e));
                None
            }
        }
    }

    /// Ends the attempt before its next frame when the clip is complete, the job
    /// was cancelled, the worker is shutting down, or (tests) a fault is injected.
    pub fn before_frame(mut self, svc: &Service) -> Step<'s> {
        let cancelled = self.member.cancel.load(Ordering::Relaxed);
        if self.next >= self.member.spec.frames || cancelled || svc.shutting_down() {
            let result = self.end_clip(cancelled);
            return Step::Ended(self, result);
        }
        match injected_fault(&self.member.job, self.next) {
            Ok(()) => Step::Continue(self),
            Err(e) => Step::Ended(self, Err(e)),
        }
    }

    fn end_clip(&mut self, cancelled: bool) -> Result<Rendered, AttemptError> {
        self.mux.finish().map_err(|e| retryable(e.to_string()))?;
        let frames = self.next;
        if cancelled {
            return Ok(Rendered::Cancelled { frames });
        }
        if frames < self.member.spec.frames {
            return Err(retryable("worker shutting down; the job resumes on restart"));
        }
        let spec = &self.member.spec;
        let duration = f64::from(frames) / f64::from(spec.fps);
        if (duration - spec.duration_s).abs() > 0.5 / f64::from(spec.fps) + 1e-9 {
            return Err(retryable(format!("quality gate: clip lasts {duration} s, spec asked {} s", spec.duration_s)));
        }
        Ok(Rendered::Complete { frames })
    }

    /// Frame 0 is also the PSNR gate's sample: its RGBA frame comes back too.
    fn sample(&self) -> bool {
        self.next == 0
    }

    /// Renders the next frame in a submission of its own.
    pub fn render_alone(&mut self) -> Result<SampledFrame, AttemptError> {
        self.renderer.render_sampled(self.next, Readback::Jpeg, self.sample()).map_err(gpu)
    }

    /// Records the next frame into a submission shared with other jobs.
    pub fn record(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<(), AttemptError> {
        let sample = self.sample();
        self.renderer.record_frame(encoder, self.next, Readback::Jpeg, sample).map_err(gpu)
    }

    /// Reads back the recorded frame once the shared submission is done.
    pub fn collect(&mut self, submission: &wgpu::SubmissionIndex) -> Result<SampledFrame, AttemptError> {
        self.renderer.collect_frame(submission).map_err(gpu)
    }

    /// Meters the frame, checks the quality gates and appends it to the clip.
    pub fn accept(
        &mut self,
        svc: &Service,
        rt: &tokio::runtime::Handle,
        sampled: SampledFrame,
    ) -> Result<(), AttemptError> {
        let i = self.next;
        let frame = sampled.frame;
        // Metered first: a frame that fails a gate still used the GPU.
        rt.block_on(self.recorder.frame(i, &frame.times)).map_err(|e| retryable(e.to_string()))?;
        if let Some(rgba) = &sampled.rgba {
            psnr_gate(rgba, &frame.data, svc.config.psnr_floor_db)?;
        }
        if frame.nonzero_ac == Some(0) {
            return Err(retryable(format!("quality gate: frame {i} is blank (no detail at all)")));
        }
        self.mux.write_frame(&frame.data).map_err(|e| retryable(e.to_string()))?;
        self.next += 1;
        self.member.frames_done.store(self.next, Ordering::Relaxed);
        Ok(())
    }

    /// Archives or discards the clip, settles the usage and answers the attempt.
    pub fn end(self, svc: &Service, rt: &tokio::runtime::Handle, rendered: Result<Rendered, AttemptError>) {
        let Self { member, recorder, partial, .. } = self;
        let result = settle(svc, &member, recorder, &partial, rendered, rt);
        let _ = member.reply.send(result);
    }
}

fn settle(
    svc: &Service,
    member: &Member,
    recorder: UsageRecorder<'_>,
    partial: &Path,
    rendered: Result<Rendered, AttemptError>,
    rt: &tokio::runtime::Handle,
) -> Result<Done, AttemptError> {
    let (job, spec, q) = (&member.job, &member.spec, &member.quote);
    let frames_gpu = recorder.totals();
    match rendered {
        Ok(Rendered::Complete { frames }) => {
            let archived = match archive(svc, job, spec, q, partial, &recorder.attempt().tier, &frames_gpu) {
                Ok(a) => a,
                Err(e) => {
                    let _ = rt.block_on(recorder.finish(&svc.book, spec, q, Outcome::Failed));
                    return Err(e);
                }
            };
            rt.block_on(recorder.finish(&svc.book, spec, q, Outcome::Succeeded))
                .map_err(|e| retryable(e.to_string()))?;
            rt.block_on(svc.jobs.succeed(&job.id, &svc.owner, &archived)).map_err(|e| retryable(e.to_string()))?;
            svc.controller
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe_gpu(frames_gpu.total_ns(), u64::from(frames));
            Ok(Done::Succeeded)
        }
        Ok(Rendered::Cancelled { frames }) => {
            let _ = std::fs::remove_file(partial);
            // Billed for what it delivered: the frames rendered before the cancel.
            let mut delivered = spec.clone();
            delivered.frames = frames;
            let dq = quote(&svc.book, &delivered.quote_request()).map_err(|e| retryable(e.to_string()))?;
            rt.block_on(recorder.finish(&svc.book, &delivered, &dq, Outcome::Cancelled))
                .map_err(|e| retryable(e.to_string()))?;
            rt.block_on(svc.jobs.cancelled(&job.id, frames)).map_err(|e| retryable(e.to_string()))?;
            Ok(Done::Cancelled)
        }
        Err(e) => {
            let _ = std::fs::remove_file(partial);
            let _ = rt.block_on(recorder.finish(&svc.book, spec, q, Outcome::Failed));
            Err(e)
        }
    }
}

fn psnr_gate(rgba: &[u8], jpeg: &[u8], floor: f64) -> Result<(), AttemptError> {
    let decoded = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| retryable(format!("quality gate: encoded frame does not decode: {e}")))?
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
        return Err(retryable("quality gate: frame 0 is blank (one colour)"));
    }
    let psnr = if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0 * 255.0 / mse).log10() };
    if psnr < floor {
        return Err(retryable(format!("quality gate: encode PSNR {psnr:.1} dB is below the {floor} dB floor")));
    }
    Ok(())
}

/// Test-only GPU fault hook: `TESSERA_FAULTS=fail_attempts=K` makes attempts 1..=K
/// fail at frame 1 as if the device were lost. Compiled only with the
/// `fault-injection` feature, which only the test build enables.
#[cfg(feature = "fault-injection")]
fn injected_fault(job: &Job, frame: u32) -> Result<(), AttemptError> {
    let Ok(spec) = std::env::var("TESSERA_FAULTS") else { return Ok(()) };
    let limit = spec.strip_prefix("fail_attempts=").and_then(|k| k.parse::<u32>().ok()).unwrap_or(0);
    if frame == 1 && job.attempts <= limit {
        return Err(retryable(format!("injected GPU fault: device lost (attempt {})", job.attempts)));
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
fn injected_fault(_job: &Job, _frame: u32) -> Result<(), AttemptError> {
    Ok(())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Moves the finished clip into place and writes its sidecar, both atomically.
fn archive(
    svc: &Service,
    job: &Job,
    spec: &JobSpec,
    q: &Quote,
    partial: &Path,
    tier: &str,
    gpu: &PassTimes,
) -> Result<ArchivedOutput, AttemptError> {
    let io = |e: std::io::Error| retryable(format!("archive: {e}"));
    let clips = svc.config.data.join("clips");
    let path: PathBuf = clips.join(format!("{}.avi", job.id));
    std::fs::rename(partial, &path).map_err(io)?;
    let bytes = std::fs::metadata(&path).map_err(io)?.len() as i64;
    let sha256 = sha256_file(&path).map_err(io)?;
    let sidecar = serde_json::json!({
        "job_id": job.id,
        "tenant_id": job.tenant_id,
        "tier": tier,
        "licence": format!("tessera {tier} tier"),
        "template": spec.template.id(),
        "parameters": spec.params,
        "spec": serde_json::from_str::<serde_json::Value>(&job.spec_json).unwrap_or_default(),
        "spec_sha256": job.body_hash,
        "output": {"file": path.file_name().map(|n| n.to_string_lossy().into_owned()), "bytes": bytes, "sha256": sha256, "codec": "mjpeg", "container": "avi"},
        "width": spec.width, "height": spec.height, "fps": spec.fps, "frames": spec.frames,
        "duration_s": f64::from(spec.frames) / f64::from(spec.fps),
        "usage_ns": {"render": gpu.render_ns, "stitch": gpu.stitch_ns, "encode": gpu.encode_ns},
        "price": q.price.to_string(), "currency": q.currency,
        "attempt": job.attempts,
        "archived_at_ms": now_ms(),
    });
    let meta = clips.join(format!("{}.json", job.id));
    let tmp = clips.join(format!("{}.json.partial", job.id));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&sidecar).unwrap_or_default()).map_err(io)?;
    std::fs::rename(&tmp, &meta).map_err(io)?;
    Ok(ArchivedOutput {
        path: path.to_string_lossy().into_owned(),
        bytes,
        sha256,
        metadata_path: meta.to_string_lossy().into_owned(),
    })
}

/// Meters storage of every retained clip since the last period, and deletes
/// clips past the retention period.
pub async fn storage_and_retention(svc: &Service, period_index: u64, period: Duration) {
    let Ok(retained) = svc.jobs.retained_outputs().await else { return };
    let mut events = Vec::new();
    for job in &retained {
        let Some(bytes) = job.output_bytes else { continue };
        let Ok(Some(tenant)) = svc.store.tenant(&job.tenant_id).await else { continue };
        let a = AttemptRef {
            tenant_id: tenant.id.clone(),
            tier: tenant.tier.clone(),
            job_id: job.id.clone(),
            attempt: job.attempts,
        };
        let byte_seconds = bytes.saturating_mul(period.as_secs() as i64);
        events.push((UsageEvent::storage(&a, period_index, byte_seconds), tenant.id, byte_seconds));
    }
    let batch: Vec<UsageEvent> = events.iter().map(|e| e.0.clone()).collect();
    if let Ok(n) = svc.store.append(&batch).await {
        if n > 0 {
            for (_, tenant, bs) in &events {
                svc.metrics.record_storage(tenant, *bs as u64);
            }
        }
    }
    let cutoff = now_ms() - svc.config.retention.as_millis() as i64;
    if let Ok(expired) = svc.jobs.expired_outputs(cutoff).await {
        for job in expired {
            for p in [&job.output_path, &job.metadata_path].into_iter().flatten() {
                let _ = std::fs::remove_file(p);
            }
            let _ = svc.jobs.forget_output(&job.id).await;
        }
    }
}
