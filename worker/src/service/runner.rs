//! Runs one attempt of a claimed job: render and encode every frame on the GPU,
//! check the quality gates, archive the clip with its sidecar, and meter it; on
//! failure, retry with backoff or dead-letter; on cancel, stop at the next frame.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tessera_metering::ledger::now_ms;
use tessera_metering::{quote, AttemptRef, Outcome, PassTimes, Quote, TimingSource, UsageEvent};

use super::jobs::{ArchivedOutput, Job};
use super::retry::{backoff, random_unit};
use super::Service;
use crate::encode::mux::{AviMuxer, Muxer, StreamInfo};
use crate::render::{FrameRenderer, Readback};
use crate::spec::{JobSpec, RawSpec, SpecLimits};
use crate::usage::UsageRecorder;

/// Why an attempt did not succeed.
#[derive(Debug)]
struct AttemptError {
    message: String,
    /// False for errors a retry cannot fix (an invalid stored spec).
    retryable: bool,
}

fn retryable(message: impl Into<String>) -> AttemptError {
    AttemptError { message: message.into(), retryable: true }
}

enum Done {
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
    let handle = tokio::runtime::Handle::current();
    let (svc2, job2, cancel2, done2) = (svc.clone(), job.clone(), cancel.clone(), frames_done.clone());
    let result = tokio::task::spawn_blocking(move || {
        render_attempt(&svc2, &job2, &spec, &q, attempt, &cancel2, &done2, &handle)
    })
    .await
    .unwrap_or_else(|e| Err(retryable(format!("render task panicked: {e}"))));
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

/// The frames of an attempt, rendered and muxed; what happened.
enum Rendered {
    Complete { frames: u32 },
    Cancelled { frames: u32 },
}

#[allow(clippy::too_many_arguments)]
fn render_attempt(
    svc: &Service,
    job: &Job,
    spec: &JobSpec,
    q: &Quote,
    attempt: AttemptRef,
    cancel: &AtomicBool,
    frames_done: &AtomicU32,
    rt: &tokio::runtime::Handle,
) -> Result<Done, AttemptError> {
    let timing = if svc.ctx.timestamps { TimingSource::Gpu } else { TimingSource::Host };
    let mut recorder = UsageRecorder::new(&svc.store, &svc.metrics, attempt, timing);
    let clips = svc.config.data.join("clips");
    let partial = clips.join(format!("{}.a{}.avi.partial", job.id, job.attempts));
    let rendered = std::fs::create_dir_all(&clips)
        .map_err(|e| retryable(format!("creating {}: {e}", clips.display())))
        .and_then(|()| render_frames(svc, job, spec, &partial, &mut recorder, cancel, frames_done, rt));
    let frames_gpu = recorder.totals();
    match rendered {
        Ok(Rendered::Complete { frames }) => {
            let archived = archive(svc, job, spec, q, &partial, &recorder.attempt().tier, &frames_gpu);
            let archived = match archived {
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
            let _ = std::fs::remove_file(&partial);
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
            let _ = std::fs::remove_file(&partial);
            let _ = rt.block_on(recorder.finish(&svc.book, spec, q, Outcome::Failed));
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn render_frames(
    svc: &Service,
    job: &Job,
    spec: &JobSpec,
    partial: &Path,
    recorder: &mut UsageRecorder<'_>,
    cancel: &AtomicBool,
    frames_done: &AtomicU32,
    rt: &tokio::runtime::Handle,
) -> Result<Rendered, AttemptError> {
    let gpu = |e: crate::render::RenderError| retryable(format!("GPU: {e}"));
    let mut renderer = FrameRenderer::new(&svc.ctx, spec.render_plan()).map_err(gpu)?;
    let mut mux = AviMuxer::new(partial);
    let info = StreamInfo { width: spec.width, height: spec.height, fps: spec.fps, frames: spec.frames };
    mux.write_header(&info).map_err(|e| retryable(e.to_string()))?;
    for i in 0..spec.frames {
        if cancel.load(Ordering::Relaxed) || svc.shutting_down() {
            mux.finish().map_err(|e| retryable(e.to_string()))?;
            if svc.shutting_down() && !cancel.load(Ordering::Relaxed) {
                return Err(retryable("worker shutting down; the job resumes on restart"));
            }
            return Ok(Rendered::Cancelled { frames: i });
        }
        injected_fault(job, i)?;
        let frame = if i == 0 {
            // Frame 0 is also the PSNR gate's sample: compare the encoded JPEG with the RGB frame.
            let rgba = renderer.render_frame(0, Readback::Rgba8).map_err(gpu)?;
            let mut jpeg = renderer.encode_current(Readback::Jpeg).map_err(gpu)?;
            jpeg.times.merge(&rgba.times);
            psnr_gate(&rgba.data, &jpeg.data, svc.config.psnr_floor_db)?;
            jpeg
        } else {
            renderer.render_frame(i, Readback::Jpeg).map_err(gpu)?
        };
        if frame.nonzero_ac == Some(0) {
            return Err(retryable(format!("quality gate: frame {i} is blank (no detail at all)")));
        }
        mux.write_frame(&frame.data).map_err(|e| retryable(e.to_string()))?;
        rt.block_on(recorder.frame(i, &frame.times)).map_err(|e| retryable(e.to_string()))?;
        frames_done.store(i + 1, Ordering::Relaxed);
    }
    mux.finish().map_err(|e| retryable(e.to_string()))?;
    // Frame count and duration as specified.
    let duration = f64::from(spec.frames) / f64::from(spec.fps);
    if (duration - spec.duration_s).abs() > 0.5 / f64::from(spec.fps) + 1e-9 {
        return Err(retryable(format!("quality gate: clip lasts {duration} s, spec asked {} s", spec.duration_s)));
    }
    Ok(Rendered::Complete { frames: spec.frames })
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
