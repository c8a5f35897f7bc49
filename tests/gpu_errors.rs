//! GPU errors belong to the job whose commands caused them. Two jobs share a
//! device; one gets a genuine wgpu validation error injected into its
//! commands (an out-of-bounds buffer copy): only its attempt fails, the other
//! job's frames come out as if it had been alone, and the device stays usable.
//! Shown for one shared submission (the renderer API, then a worker's render
//! group), for attempts side by side in submissions of their own, for a
//! shared submit that fails as a whole, and for a lost device, which is the
//! one error that fails everyone.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tessera_worker::gpu::scope::submit_shared;
use tessera_worker::gpu::{readback, GpuContext, GpuError};
use tessera_worker::render::{FrameRenderer, Readback, RenderError};

use crate::util::{http, small_spec, Server, TestStore};

crate::on_every_backend!(
    a_poisoned_job_fails_alone_beside_another_attempt,
    a_poisoned_job_fails_alone_in_a_render_group
);

const T: Duration = Duration::from_secs(180);

#[test]
fn an_invalid_frame_fails_only_its_job_in_a_shared_submission() {
    // Sharing a submission needs per-job timestamps; lavapipe offers them.
    let ctx = GpuContext::open_timed(true).unwrap();
    if !ctx.timestamps {
        eprintln!("adapter has no timestamp queries; frames never share a submission on it");
        return;
    }
    let spec = small_spec("orbit", 96, 54, 2, 1, 16);
    let new = || FrameRenderer::new(&ctx, spec.render_plan()).unwrap();
    let mut jobs = [new(), new()];
    jobs[0].poison_next_frame();
    let shared = submit_shared(&ctx, &mut jobs, |r| r.record_commands(1, Readback::Jpeg, true));
    assert_eq!(shared.submissions, [1], "the clean job's frame was not submitted on its own");
    let [poisoned, clean]: [Result<_, RenderError>; 2] = shared.jobs.try_into().unwrap();
    match poisoned {
        Err(RenderError::Gpu(GpuError::Validation(msg))) => assert!(msg.contains("overrunning the bounds"), "{msg}"),
        other => panic!("the poisoned job's frame did not fail with its validation error: {other:?}"),
    }
    let got = jobs[1].collect_frame(&clean.unwrap()).unwrap();
    let alone = new().render_sampled(1, Readback::Jpeg, true).unwrap();
    assert!(got.frame.data == alone.frame.data, "the clean job's frame differs from a solo render");
    assert_eq!(got.rgba, alone.rgba);
    // The error was the poisoned job's alone: the device goes on, for both.
    let next = submit_shared(&ctx, &mut jobs, |r| r.record_commands(2, Readback::Jpeg, false));
    assert_eq!(next.submissions, [2]);
    for (r, submitted) in jobs.iter_mut().zip(next.jobs) {
        r.collect_frame(&submitted.unwrap()).unwrap();
    }
    assert!(ctx.check_errors().is_ok());
    assert_eq!(ctx.uncaptured_errors(), 0, "an error escaped the jobs' scopes");
}

/// A job of [`a_failed_shared_submit_is_sorted_out_job_by_job`]: copy four
/// bytes into `dst`; a `doomed` job destroys its source once recorded, which
/// wgpu finds only at `submit`, for the whole submission.
struct CopyJob {
    src: wgpu::Buffer,
    dst: wgpu::Buffer,
    doomed: bool,
}

#[test]
fn a_failed_shared_submit_is_sorted_out_job_by_job() {
    let ctx = GpuContext::open().unwrap();
    let job = |word: u32, doomed| {
        let src = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(if doomed { "doomed source" } else { "source" }),
            size: 4,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue.write_buffer(&src, 0, &word.to_le_bytes());
        let dst = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("destination"),
            size: 4,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        CopyJob { src, dst, doomed }
    };
    let mut jobs = [job(7, false), job(8, true), job(9, false)];
    let shared = submit_shared(&ctx, &mut jobs, |j: &mut CopyJob| {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&j.src, 0, &j.dst, 0, 4);
        let commands = encoder.finish();
        if j.doomed {
            j.src.destroy();
        }
        Ok::<_, GpuError>(commands)
    });
    // The shared submit failed; each job alone: the doomed one fails, the others run.
    assert_eq!(shared.submissions, [1, 1]);
    for ((j, submitted), want) in jobs.iter().zip(shared.jobs).zip([Some(7u32), None, Some(9)]) {
        match (submitted, want) {
            (Ok(index), Some(word)) => {
                let got = readback::read_buffer(&ctx, &j.dst, 4, Some(&index)).unwrap();
                assert_eq!(got, word.to_le_bytes());
            }
            (Err(GpuError::Validation(msg)), None) => assert!(msg.contains("doomed source"), "{msg}"),
            (other, want) => panic!("expected {want:?}, got {other:?}"),
        }
    }
    assert_eq!(ctx.uncaptured_errors(), 0, "an error escaped the jobs' scopes");
}

#[test]
fn a_lost_device_fails_every_job_and_readiness() {
    // A device of its own: this one is destroyed.
    let ctx = GpuContext::open().unwrap();
    let spec = small_spec("orbit", 64, 36, 1, 1, 0);
    let mut jobs = [0, 1].map(|_| FrameRenderer::new(&ctx, spec.render_plan()).unwrap());
    jobs[0].render_frame(0, Readback::Rgba8).unwrap();
    assert!(ctx.check_errors().is_ok());
    // wgpu reports a destroyed device lost once its queue is empty, at a poll;
    // a device the driver loses is reported at once.
    ctx.device.destroy();
    assert!(matches!(ctx.wait_for(None), Err(GpuError::DeviceLost(_))));
    for r in &mut jobs {
        match r.render_frame(1, Readback::Rgba8) {
            Err(RenderError::Gpu(GpuError::DeviceLost(_))) => {}
            other => panic!("a job on a lost device did not fail with the loss: {other:?}"),
        }
    }
    assert!(matches!(ctx.check_errors(), Err(GpuError::DeviceLost(_))));
    assert!(ctx.device_lost().is_some());
    // Counted once for `tessera_gpu_errors_total{kind="device_lost"}`, however many jobs it failed.
    let kinds = tessera_worker::gpu::GpuErrorCounts::KINDS;
    let counts: Vec<_> = kinds.iter().zip(ctx.error_counts().snapshot()).filter(|(_, n)| *n > 0).collect();
    assert_eq!(counts, [(&"device_lost", 1)]);
}

fn clip() -> serde_json::Value {
    json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 1.0,
           "lane": "bulk", "seed": 5})
}

/// A clean job and one whose second frame carries the injected fault
/// (`TESSERA_FAULTS=gpu_error=poisoned`, one attempt each), submitted side by
/// side to worker `s`: only the poisoned one fails, with its GPU error; the
/// clean one's clip plays and has the bytes of a later job rendered alone
/// (after which the worker is still ready).
fn only_the_poisoned_job_fails(s: &Server, dir: &Path) {
    let k = s.tenant("acme", "mid");
    let submit = |key: &str| s.submit(&k, &clip(), Some(key)).json()["id"].as_str().unwrap().to_string();
    let (clean, poisoned) = (submit("clean"), submit("poisoned"));
    let (clean, poisoned) = (s.wait(&k, &clean, T), s.wait(&k, &poisoned, T));
    assert_eq!((poisoned["state"].as_str(), poisoned["attempts"].as_u64()), (Some("dead"), Some(1)), "{poisoned}");
    let error = poisoned["errors"][0].as_str().unwrap_or_default();
    assert!(error.contains("GPU validation error") && error.contains("overrunning the bounds"), "{poisoned}");
    assert_eq!((clean["state"].as_str(), clean["attempts"].as_u64()), (Some("succeeded"), Some(1)), "{clean}");
    assert_eq!(clean["frames_done"], 24);
    assert_eq!(clean["errors"].as_array().map(Vec::len), Some(0), "{clean}");
    let span = |j: &serde_json::Value| (j["started_at_ms"].as_i64().unwrap(), j["finished_at_ms"].as_i64().unwrap());
    let (c, p) = (span(&clean), span(&poisoned));
    assert!(c.0 <= p.1 && p.0 <= c.1, "the two attempts did not run side by side: {c:?} {p:?}");
    // The clean clip plays, every frame.
    let auth = format!("Bearer {k}");
    let id = clean["id"].as_str().unwrap();
    let out = http(&s.api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth)], b"");
    assert_eq!(out.status, 200);
    let file = dir.join("clean.avi");
    std::fs::write(&file, &out.body).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", "stream=codec_name,nb_read_frames"])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(&file)
        .output()
        .expect("ffprobe is installed");
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(text.contains("codec_name=mjpeg") && text.contains("nb_read_frames=24"), "{text}");
    // The worker is still ready, and its device still renders: a later job
    // alone gets the clean job's bytes.
    let ready = http(&s.api, "GET", "/readyz", &[], b"");
    assert_eq!((ready.status, &ready.json()["gpu"]), (200, &json!(true)));
    let later = s.wait(&k, &submit("later"), T);
    assert_eq!(later["state"], "succeeded", "{later}");
    assert_eq!(later["output"]["sha256"], clean["output"]["sha256"], "the clean clip differs from a solo render");
}

fn a_poisoned_job_fails_alone_beside_another_attempt(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    // Host-timed (lavapipe's default): every attempt submits on its own, two at a time.
    let args = ["--concurrency", "2", "--max-attempts", "1", "--group-max", "1"];
    let s = Server::start_on(db, dir.path(), &args, &[("TESSERA_FAULTS", "gpu_error=poisoned")]);
    only_the_poisoned_job_fails(&s, dir.path());
}

fn a_poisoned_job_fails_alone_in_a_render_group(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    // GPU timing turns grouping on: the two jobs' frames share submissions.
    let args = ["--concurrency", "2", "--max-attempts", "1", "--group-max", "2"];
    let env = [("TESSERA_FAULTS", "gpu_error=poisoned"), ("TESSERA_TIMING", "gpu")];
    let s = Server::start_on(db, dir.path(), &args, &env);
    only_the_poisoned_job_fails(&s, dir.path());
    let text = String::from_utf8(http(&s.metrics, "GET", "/metrics", &[], b"").body).unwrap();
    let sample = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap()
    };
    let shared = sample("tessera_submission_jobs_count") - sample("tessera_submission_jobs_bucket{le=\"1\"}");
    assert!(shared > 0.0, "no submission held both jobs");
    // The poisoned job's error is counted, by kind, and nothing else is.
    assert!(sample("tessera_gpu_errors_total{kind=\"validation\"}") >= 1.0);
    assert_eq!(sample("tessera_gpu_errors_total{kind=\"uncaptured\"}"), 0.0);
    assert_eq!(sample("tessera_gpu_errors_total{kind=\"device_lost\"}"), 0.0);
}
