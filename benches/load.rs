//! Load bench for `tessera serve`, run by hand: an in-process worker on an
//! ephemeral port, driven over HTTP with many small jobs across the three lanes.
//! Prints throughput, p50/p95/p99 queue wait and run time per lane, and the
//! per-job overhead with and without pipeline reuse and with and without
//! grouping jobs into shared GPU submissions, all measured in the same run.
//!
//! `cargo bench --bench load`; `TESSERA_BENCH_JOBS` (default 60) jobs per round,
//! `TESSERA_BENCH_CONCURRENCY` (default 8) the starting concurrency limit (the
//! maximum is twice that), `TESSERA_BENCH_GROUP` (default 8) the most jobs per
//! shared submission, `TESSERA_BENCH_SUBMIT_FRAMES` (default 24) frames per job
//! in the GPU-level submissions table.
//! Grouping needs GPU timestamps: on a software adapter (lavapipe) run it with
//! `TESSERA_TIMING=gpu` to measure it (its timestamps then meter too little).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use anyhow::{ensure, Context};
use tessera_metering::PriceBook;
use tessera_worker::gpu::scope::submit_shared;
use tessera_worker::gpu::GpuContext;
use tessera_worker::render::{FrameRenderer, Readback};
use tessera_worker::service::{self, ServeConfig, Service};

use common::request;
use tessera_worker::spec::{RawSpec, SpecLimits};

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

struct Round {
    seconds: f64,
    jobs: Vec<serde_json::Value>,
}

fn round(addr: &str, key: &str, n: usize) -> anyhow::Result<Round> {
    let lanes = ["urgent", "standard", "bulk"];
    let start = Instant::now();
    let mut ids = Vec::new();
    for i in 0..n {
        let template = ["orbit", "pedestal", "dunes"][i % 3];
        let spec = serde_json::json!({"template": template, "resolution": {"width": 96, "height": 54}, "fps": 24,
            "duration_s": 0.25, "lane": lanes[(i / 3) % 3]});
        let v = request(addr, "POST", "/v1/jobs", key, &spec.to_string())?;
        ids.push(v["id"].as_str().context("submit failed")?.to_string());
    }
    let mut jobs = Vec::new();
    for id in &ids {
        loop {
            let j = request(addr, "GET", &format!("/v1/jobs/{id}"), key, "")?;
            if j["state"] == "succeeded" {
                jobs.push(j);
                break;
            }
            ensure!(j["state"] != "dead", "job died: {j}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(Round { seconds: start.elapsed().as_secs_f64(), jobs })
}

fn report(name: &str, r: &Round) {
    println!("\n{name}: {} jobs in {:.2} s = {:.2} jobs/s", r.jobs.len(), r.seconds, r.jobs.len() as f64 / r.seconds);
    println!("| lane | jobs | wait p50 ms | wait p95 ms | wait p99 ms | run p50 ms | run p95 ms | run p99 ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for lane in ["urgent", "standard", "bulk"] {
        let js: Vec<_> = r.jobs.iter().filter(|j| j["lane"] == lane).collect();
        let mut wait: Vec<f64> = js
            .iter()
            .map(|j| j["started_at_ms"].as_f64().unwrap_or(0.0) - j["created_at_ms"].as_f64().unwrap_or(0.0))
            .collect();
        let mut run: Vec<f64> = js
            .iter()
            .map(|j| j["finished_at_ms"].as_f64().unwrap_or(0.0) - j["started_at_ms"].as_f64().unwrap_or(0.0))
            .collect();
        println!(
            "| {lane} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            js.len(),
            pct(&mut wait, 0.5),
            pct(&mut wait, 0.95),
            pct(&mut wait, 0.99),
            pct(&mut run, 0.5),
            pct(&mut run, 0.95),
            pct(&mut run, 0.99)
        );
    }
}

fn mean_run_ms(r: &Round) -> f64 {
    let runs: Vec<f64> = r
        .jobs
        .iter()
        .map(|j| j["finished_at_ms"].as_f64().unwrap_or(0.0) - j["started_at_ms"].as_f64().unwrap_or(0.0))
        .collect();
    runs.iter().sum::<f64>() / runs.len().max(1) as f64
}

fn main() -> anyhow::Result<()> {
    let env = |name: &str, default: usize| -> anyhow::Result<usize> {
        Ok(std::env::var(name).ok().map(|s| s.parse()).transpose()?.unwrap_or(default))
    };
    let n = env("TESSERA_BENCH_JOBS", 60)?;
    let concurrency = env("TESSERA_BENCH_CONCURRENCY", 8)?;
    let group_max = env("TESSERA_BENCH_GROUP", 8)?;
    let submit_frames = u32::try_from(env("TESSERA_BENCH_SUBMIT_FRAMES", 24)?)?;
    anyhow::ensure!(submit_frames > 0, "TESSERA_BENCH_SUBMIT_FRAMES must be at least 1");
    let dir = tempfile::tempdir()?;
    let ctx = Arc::new(GpuContext::open()?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut config = ServeConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    config.rate_limit_per_s = 100_000;
    config.initial_concurrency = concurrency;
    config.max_concurrency = concurrency * 2;
    let svc = rt.block_on(Service::new(config, ctx.clone(), PriceBook::default_book()))?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    let app = service::http::app(svc.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    let runner = svc.clone();
    rt.spawn(async move { service::run_background(runner).await });
    let key = "bench-key";
    rt.block_on(svc.store.create_tenant(&svc.book, "bench", "enterprise", Some(&service::http::hash_key(key))))?;
    println!(
        "adapter: {} ({}), {n} jobs per round (96x54, 6 frames, templates and lanes mixed), concurrency {concurrency}..{}",
        ctx.adapter.name,
        ctx.adapter.backend,
        concurrency * 2
    );

    if ctx.timestamps {
        submission_overhead(&ctx, submit_frames)?;
    }
    ctx.set_pipeline_reuse(false);
    svc.groups.set_max(1);
    let cold = round(&addr, key, n)?;
    ctx.set_pipeline_reuse(true);
    let _warm_up = round(&addr, key, 3)?;
    let warm = round(&addr, key, n)?;
    report("without pipeline reuse (every job compiles its pipelines), no grouping", &cold);
    report("with pipeline reuse (compiled once per template version), no grouping", &warm);
    let mut rows = vec![("no reuse, no grouping", &cold), ("reuse, no grouping", &warm)];
    let grouped;
    if ctx.timestamps {
        svc.groups.set_max(group_max);
        grouped = round(&addr, key, n)?;
        report(&format!("with pipeline reuse and grouping (up to {group_max} jobs per submission)"), &grouped);
        rows.push(("reuse and grouping", &grouped));
    } else {
        println!("\ngrouping skipped: passes are timed on the host on this adapter (TESSERA_TIMING=gpu to measure it)");
    }
    println!("\n| mode | jobs/s | wall ms per job | mean run ms | saved vs first row, ms per job |");
    println!("|---|---|---|---|---|");
    let base = wall_ms_per_job(&cold);
    for (name, r) in rows {
        let w = wall_ms_per_job(r);
        println!(
            "| {name} | {:.2} | {w:.0} | {:.0} | {:.0} ({:.0} %) |",
            r.jobs.len() as f64 / r.seconds,
            mean_run_ms(r),
            base - w,
            (base - w) / base * 100.0
        );
    }
    Ok(())
}

/// GPU level, without the service: the next frame of `k` jobs rendered one
/// submission each, then all in one submission, `frames` times; milliseconds
/// per job-frame.
fn submission_overhead(ctx: &GpuContext, frames: u32) -> anyhow::Result<()> {
    println!("\nGPU submissions (orbit, JPEG readback, {frames} frames per job, best of 3):");
    println!(
        "| frame | jobs | one submission per job, ms per job-frame | one shared submission | saved per job-frame |"
    );
    println!("|---|---|---|---|---|");
    for (w, h) in [(32u32, 32u32), (96, 54), (320, 180)] {
        let raw: RawSpec = serde_json::from_value(serde_json::json!({"template": "orbit",
            "resolution": {"width": w, "height": h}, "fps": 24, "duration_s": 1.0}))?;
        let spec = raw.validate(&SpecLimits::default())?;
        for k in [1usize, 4, 8] {
            let mut jobs: Vec<FrameRenderer<'_>> =
                (0..k).map(|_| FrameRenderer::new(ctx, spec.render_plan())).collect::<Result<_, _>>()?;
            for r in &mut jobs {
                r.render_frame(0, Readback::Jpeg)?;
            }
            let per_job_frame = |t: Instant| t.elapsed().as_secs_f64() * 1000.0 / (frames as usize * k) as f64;
            let (mut alone, mut shared) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..3 {
                let t = Instant::now();
                for i in 0..frames {
                    for r in &mut jobs {
                        r.render_frame(i, Readback::Jpeg)?;
                    }
                }
                alone = alone.min(per_job_frame(t));
                let t = Instant::now();
                for i in 0..frames {
                    // As the worker's render groups do: a command buffer per job, one submit.
                    let shared = submit_shared(ctx, &mut jobs, |r| r.record_commands(i, Readback::Jpeg, false));
                    for (r, submitted) in jobs.iter_mut().zip(shared.jobs) {
                        r.collect_frame(&submitted?)?;
                    }
                }
                shared = shared.min(per_job_frame(t));
            }
            println!(
                "| {w}x{h} | {k} | {alone:.3} | {shared:.3} | {:.3} ms ({:.1} %) |",
                alone - shared,
                (alone - shared) / alone * 100.0
            );
        }
    }
    Ok(())
}

/// Wall time per job at the round's throughput: the per-job cost, overhead included.
fn wall_ms_per_job(r: &Round) -> f64 {
    r.seconds * 1000.0 / r.jobs.len().max(1) as f64
}
