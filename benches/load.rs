//! Load bench for `tessera serve`, run by hand: an in-process worker on an
//! ephemeral port, driven over HTTP with many small jobs across the three lanes.
//! Prints throughput, p50/p95/p99 queue wait and run time per lane, and the
//! per-job overhead with and without pipeline reuse, measured in the same run.
//!
//! `cargo bench --bench load`; `TESSERA_BENCH_JOBS` (default 60) jobs per round.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use tessera_metering::PriceBook;
use tessera_worker::gpu::GpuContext;
use tessera_worker::service::{self, ServeConfig, Service};

fn request(addr: &str, method: &str, path: &str, key: &str, body: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let json = raw.split_once("\r\n\r\n").context("no body")?.1;
    Ok(serde_json::from_str(json)?)
}

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
    let n: usize = std::env::var("TESSERA_BENCH_JOBS").ok().map(|s| s.parse()).transpose()?.unwrap_or(60);
    let dir = tempfile::tempdir()?;
    let ctx = Arc::new(GpuContext::open()?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut config = ServeConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    config.rate_limit_per_s = 100_000;
    config.initial_concurrency = 4;
    config.max_concurrency = 8;
    let svc = rt.block_on(Service::new(config, ctx.clone(), PriceBook::default_book()))?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    let app = service::http::app(svc.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    let runner = svc.clone();
    rt.spawn(async move { service::run_background(runner).await });
    let tenant = rt.block_on(svc.store.create_tenant(&svc.book, "bench", "enterprise"))?;
    let key = "bench-key";
    rt.block_on(
        sqlx::query("UPDATE tenants SET api_key_hash = ? WHERE id = ?")
            .bind(service::http::hash_key(key))
            .bind(&tenant.id)
            .execute(svc.store.pool()),
    )?;
    println!(
        "adapter: {} ({}), {n} jobs per round (96x54, 6 frames, templates and lanes mixed), concurrency 4..8",
        ctx.adapter.name, ctx.adapter.backend
    );

    ctx.set_pipeline_reuse(false);
    let cold = round(&addr, key, n)?;
    ctx.set_pipeline_reuse(true);
    let _warm_up = round(&addr, key, 3)?;
    let warm = round(&addr, key, n)?;
    report("without pipeline reuse (every job compiles its pipelines)", &cold);
    report("with pipeline reuse (compiled once per template version)", &warm);
    let (c, w) = (mean_run_ms(&cold), mean_run_ms(&warm));
    println!(
        "\nmean run time per job: {c:.0} ms without reuse, {w:.0} ms with: reuse saves {:.0} ms per job ({:.0} %)",
        c - w,
        (c - w) / c * 100.0
    );
    println!(
        "throughput: {:.2} vs {:.2} jobs/s ({:.2}x)",
        cold.jobs.len() as f64 / cold.seconds,
        warm.jobs.len() as f64 / warm.seconds,
        cold.seconds / warm.seconds
    );
    Ok(())
}
