//! Archiving a finished clip: the partial file becomes `clips/JOB.aN.avi`
//! beside its JSON sidecar `clips/JOB.aN.json`, each moved into place
//! atomically. The names carry the attempt, so on a shared data directory a
//! stale worker's late clip never replaces the clip of the attempt that won;
//! the settlement records which one the job's output is, and the loser's
//! files are removed.
//!
//! The sidecar records which frames of the spec's clip the file holds
//! (`frame_range`, `clip_frames`): a preview's are a part of it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_metering::AdmittedQuote;
use tessera_metering::PassTimes;
use tessera_store::{ArchivedOutput, Claimed, Lease};

use super::{AttemptError, Member};
use crate::render::RenderStats;
use crate::service::Service;
use crate::spec::JobSpec;

pub(super) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// What a clip's sidecar describes.
pub(super) struct ClipOf<'a> {
    pub claimed: &'a Claimed,
    pub spec: &'a JobSpec,
    pub quote: &'a AdmittedQuote,
    pub tier: &'a str,
    /// A chunked clip's chunks: frame range, worker, attempts, GPU time per pass.
    pub chunks: Option<serde_json::Value>,
    /// Why the clip holds only part of the frames ordered (`cancelled`):
    /// `spec.frames` are the frames it holds, from the spec's first frame.
    pub partial: Option<&'static str>,
    /// The render's figures (host time per stage, bytes read back and
    /// written), for a clip one attempt rendered.
    pub stats: Option<RenderStats>,
}

impl<'a> ClipOf<'a> {
    pub fn member(m: &'a Member) -> Self {
        Self {
            claimed: &m.claimed,
            spec: &m.spec,
            quote: &m.quote,
            tier: &m.attempt.tier,
            chunks: None,
            partial: None,
            stats: None,
        }
    }
}

/// The final paths of an attempt's clip and sidecar.
pub(super) fn final_paths(svc: &Service, lease: &Lease) -> (PathBuf, PathBuf) {
    let clips = svc.config.data.join("clips");
    (
        clips.join(format!("{}.a{}.avi", lease.job, lease.attempt)),
        clips.join(format!("{}.a{}.json", lease.job, lease.attempt)),
    )
}

/// Moves the finished clip into place and writes its sidecar, both atomically.
pub(super) fn archive(
    svc: &Service,
    clip: &ClipOf<'_>,
    partial: &Path,
    gpu: &PassTimes,
) -> Result<ArchivedOutput, AttemptError> {
    let io = |what: &str, e: std::io::Error| AttemptError::io(&format!("archive: {what}"), &e);
    let (job, spec, q) = (&clip.claimed.job, clip.spec, clip.quote);
    let (path, meta) = final_paths(svc, &clip.claimed.lease);
    std::fs::rename(partial, &path).map_err(|e| io("moving the clip into place", e))?;
    let bytes = std::fs::metadata(&path).map_err(|e| io("reading the clip", e))?.len() as i64;
    let sha256 = sha256_file(&path).map_err(|e| io("hashing the clip", e))?;
    let tier = clip.tier;
    let mut sidecar = serde_json::json!({
        "job_id": job.id,
        "tenant_id": job.tenant_id,
        "tier": tier,
        "licence": format!("tessera {tier} tier"),
        "template": spec.template.id(),
        "parameters": spec.params,
        "spec": serde_json::from_str::<serde_json::Value>(&job.spec_json).unwrap_or_default(),
        "spec_sha256": job.body_hash,
        "output": {"file": path.file_name().map(|n| n.to_string_lossy().into_owned()), "bytes": bytes,
                   "sha256": sha256, "codec": "mjpeg", "container": "avi"},
        "width": spec.width, "height": spec.height, "fps": spec.fps, "frames": spec.frames,
        "duration_s": f64::from(spec.frames) / f64::from(spec.fps),
        // Which frames of the clip these are: all of them, or a preview's.
        "frame_range": {"first": spec.first_frame, "count": spec.frames},
        "clip_frames": spec.clip_frames, "clip_duration_s": spec.duration_s,
        "usage_ns": {"render": gpu.render_ns, "stitch": gpu.stitch_ns, "encode": gpu.encode_ns},
        "price": q.price_of(spec.frames).to_string(), "currency": q.currency, "price_book": q.book,
        "attempt": clip.claimed.lease.attempt,
        "failed_attempts": job.failures,
        "interrupted_attempts": job.interruptions,
        "worker": svc.worker,
        "adapter": svc.ctx.adapter.name,
        "archived_at_ms": svc.store.now_ms(),
    });
    if let Some(chunks) = &clip.chunks {
        sidecar["chunks"] = chunks.clone();
    }
    if let Some(stats) = &clip.stats {
        sidecar["stats"] = serde_json::to_value(stats).map_err(|e| AttemptError::failed(format!("sidecar: {e}")))?;
    }
    if let Some(reason) = clip.partial {
        // What a partial clip is: these frames of the order, billed as such.
        sidecar["partial"] = serde_json::json!({
            "reason": reason, "frames_ordered": job.frames_total,
            "price_ordered": q.price.to_string(), "price": q.price_of(spec.frames).to_string(),
        });
    }
    let tmp = meta.with_extension("json.partial");
    let text = serde_json::to_vec_pretty(&sidecar).map_err(|e| AttemptError::failed(format!("sidecar: {e}")))?;
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &meta));
    if let Err(e) = written {
        for p in [&tmp, &path] {
            let _ = std::fs::remove_file(p); // best effort: the attempt is failing anyway
        }
        return Err(io("writing the sidecar", e));
    }
    Ok(ArchivedOutput {
        path: path.to_string_lossy().into_owned(),
        bytes,
        sha256,
        metadata_path: meta.to_string_lossy().into_owned(),
    })
}

/// Removes an attempt's files (clip and sidecar, or segment) that the store did not take.
pub(super) fn discard(files: &[String]) {
    for p in files {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p, error = %e, "could not remove a clip the store did not take");
            }
        }
    }
}
