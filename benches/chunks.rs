//! Chunking overhead on one worker: the same clip rendered unchunked and in
//! one-second chunks (ranges, segments and the join), one job at a time on
//! one in-process worker, alternating rounds so drift hits both alike.
//! Prints frames per second of each, their ratio (goal ≥ 0.95), and the
//! measured pieces BENCHMARKS.md turns into the critical path of a long clip
//! on many GPUs: milliseconds per frame, per chunk claim-to-settle overhead,
//! and the join.
//!
//! `cargo bench --bench chunks`; `TESSERA_BENCH_SIZE=WxH` (default 640x360),
//! `TESSERA_BENCH_SECONDS` (default 8), `TESSERA_BENCH_ROUNDS` (default 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use anyhow::{ensure, Context};
use tessera_metering::PriceBook;
use tessera_worker::gpu::GpuContext;
use tessera_worker::service::{self, ServeConfig, Service};

use common::request;

/// One in-process worker on its own data directory, with `chunk_frames`.
struct Worker {
    addr: String,
    _dir: tempfile::TempDir,
}

const KEY: &str = "bench-key";

fn worker(rt: &tokio::runtime::Runtime, ctx: &Arc<GpuContext>, chunk_frames: u32) -> anyhow::Result<Worker> {
    let dir = tempfile::tempdir()?;
    let mut config = ServeConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    config.rate_limit_per_s = 100_000;
    config.initial_concurrency = 1;
    config.max_concurrency = 1;
    config.chunk_frames = Some(chunk_frames);
    let svc = rt.block_on(Service::new(config, ctx.clone(), PriceBook::default_book()))?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    let app = service::http::app(svc.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    let runner = svc.clone();
    rt.spawn(async move { service::run_background(runner).await });
    rt.block_on(svc.store.create_tenant(&svc.book, "bench", "enterprise", Some(&service::http::hash_key(KEY))))?;
    Ok(Worker { addr, _dir: dir })
}

/// A clip's wall time, submission to success, and its join's (ranges done to success).
struct Run {
    seconds: f64,
    join_s: Option<f64>,
}

fn run(w: &Worker, spec: &serde_json::Value) -> anyhow::Result<Run> {
    let start = Instant::now();
    let v = request(&w.addr, "POST", "/v1/jobs", KEY, &spec.to_string())?;
    let id = v["id"].as_str().with_context(|| format!("submit failed: {v}"))?.to_string();
    let mut ranges_done = None;
    loop {
        let j = request(&w.addr, "GET", &format!("/v1/jobs/{id}"), KEY, "")?;
        if j["state"] == "succeeded" {
            let seconds = start.elapsed().as_secs_f64();
            return Ok(Run { seconds, join_s: ranges_done.map(|t: Instant| t.elapsed().as_secs_f64()) });
        }
        ensure!(!["dead", "cancelled"].contains(&j["state"].as_str().unwrap_or("")), "job ended: {j}");
        let chunks = j["chunks"].as_array().cloned().unwrap_or_default();
        let ranges: Vec<_> = chunks.iter().filter(|c| c["kind"] == "range").collect();
        if ranges_done.is_none() && !ranges.is_empty() && ranges.iter().all(|c| c["state"] == "done") {
            ranges_done = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() -> anyhow::Result<()> {
    let size = std::env::var("TESSERA_BENCH_SIZE").unwrap_or_else(|_| "640x360".into());
    let (w, h) = size.split_once('x').context("TESSERA_BENCH_SIZE is WxH")?;
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    let seconds: u32 = std::env::var("TESSERA_BENCH_SECONDS").ok().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let rounds: usize = std::env::var("TESSERA_BENCH_ROUNDS").ok().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let fps = 24;
    let frames = f64::from(seconds * fps);
    let ctx = Arc::new(GpuContext::open()?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let whole = worker(&rt, &ctx, 0)?;
    let chunked = worker(&rt, &ctx, fps)?;
    let spec = serde_json::json!({"template": "dunes", "resolution": {"width": w, "height": h}, "fps": fps,
        "duration_s": seconds, "tiles": {"cols": 2, "rows": 2, "overlap_px": 32}, "lane": "standard"});
    println!(
        "adapter: {} ({}), {w}x{h} at {fps} fps, {seconds} s ({frames} frames), {rounds} rounds, one job at a time",
        ctx.adapter.name, ctx.adapter.backend
    );
    // Warm-up: pipelines compiled, store files created.
    run(&whole, &spec)?;
    run(&chunked, &spec)?;
    let (mut t_whole, mut t_chunked, mut t_join) = (0.0, 0.0, 0.0);
    for r in 0..rounds {
        let a = run(&whole, &spec)?;
        let b = run(&chunked, &spec)?;
        let join = b.join_s.unwrap_or(f64::NAN);
        println!(
            "round {r}: unchunked {:.2} s, in {seconds} one-second chunks {:.2} s (join {:.0} ms)",
            a.seconds,
            b.seconds,
            join * 1e3
        );
        (t_whole, t_chunked, t_join) = (t_whole + a.seconds, t_chunked + b.seconds, t_join + join);
    }
    let n = rounds as f64;
    let (fps_whole, fps_chunked) = (frames * n / t_whole, frames * n / t_chunked);
    let per_frame_ms = t_whole / n / frames * 1e3;
    let per_chunk_ms = ((t_chunked - t_whole) / n - t_join / n) / f64::from(seconds) * 1e3;
    println!("\n| mode | frames/s | ms per frame | ratio to unchunked |");
    println!("|---|---|---|---|");
    println!("| unchunked | {fps_whole:.1} | {per_frame_ms:.1} | 1.000 |");
    println!("| one-second chunks | {fps_chunked:.1} | {:.1} | {:.3} |", 1e3 / fps_chunked, fps_chunked / fps_whole);
    println!(
        "\nmeasured pieces: {per_frame_ms:.1} ms per frame; join {:.0} ms for {frames} frames ({:.2} ms per frame); \
         per-chunk overhead (claim, segment, settle) {per_chunk_ms:.0} ms",
        t_join / n * 1e3,
        t_join / n * 1e3 / frames
    );
    Ok(())
}
