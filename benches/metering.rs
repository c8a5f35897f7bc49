//! Cost of metering: the same frames rendered and encoded with and without the
//! usage recorder (a usage window per second of GPU work written in the
//! background, the attempt's end and output, Prometheus counters), alternating
//! runs, in one process.
//!
//! `cargo bench --bench metering`; `TESSERA_BENCH_FRAMES` (default 24) per run.

use std::time::Instant;

use anyhow::Context;
use tessera_metering::{quote, AdmittedQuote, AttemptRef, Metrics, Outcome, PriceBook, TimingSource};
use tessera_store::{JobId, Store, StoreUrl};
use tessera_worker::gpu::GpuContext;
use tessera_worker::render::{FrameRenderer, Readback};
use tessera_worker::spec::{RawSpec, SpecLimits};
use tessera_worker::usage::{Bill, UsageRecorder};

fn main() -> anyhow::Result<()> {
    let frames: u32 = std::env::var("TESSERA_BENCH_FRAMES").ok().map(|s| s.parse()).transpose()?.unwrap_or(24);
    let ctx = GpuContext::open().context("opening the GPU")?;
    let raw: RawSpec = serde_json::from_value(serde_json::json!({
        "template": "orbit", "resolution": {"width": 640, "height": 360}, "fps": 24, "duration_s": 60.0,
        "tiles": {"cols": 2, "rows": 2, "overlap_px": 32},
    }))?;
    let spec = raw.validate(&SpecLimits::default())?;
    let book = PriceBook::default_book();
    let q = quote(&book, &spec.quote_request())?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let store = rt.block_on(Store::open(&StoreUrl::in_data_dir(dir.path())))?;
    let tenant = rt.block_on(store.create_tenant(&book, "bench", "enterprise", None))?;
    let metrics = Metrics::new(&book.currency);
    let mut renderer = FrameRenderer::new(&ctx, spec.render_plan())?;
    renderer.render_frame(0, Readback::Jpeg)?;
    let timing = if ctx.timestamps { TimingSource::Gpu } else { TimingSource::Host };
    println!(
        "adapter: {} ({}), {frames} frames per run, 640x360 orbit@2 2x2, JPEG readback\n",
        ctx.adapter.name, ctx.adapter.backend
    );
    let (mut plain_s, mut metered_s) = (0.0, 0.0);
    for round in 0..3u32 {
        let start = Instant::now();
        for i in 0..frames {
            renderer.render_frame(i, Readback::Jpeg)?;
        }
        plain_s += start.elapsed().as_secs_f64();

        let job = format!("bench-{round}");
        let a = AttemptRef {
            tenant_id: tenant.id.to_string(),
            tier: tenant.tier.clone(),
            job_id: job.clone(),
            attempt: 1,
            chunk: None,
        };
        let start = Instant::now();
        let mut recorder = UsageRecorder::new(&store, &metrics, a, timing);
        for i in 0..frames {
            let f = renderer.render_frame(i, Readback::Jpeg)?;
            rt.block_on(recorder.frame(i, &f.times))?;
        }
        let closing = rt.block_on(recorder.close());
        let admitted = AdmittedQuote::new(&book, &spec.quote_request(), &q, spec.frames)?;
        let events = closing.events(Outcome::Succeeded, Some(&Bill::whole(&spec, &admitted)));
        let inserted = rt.block_on(store.finish_reserved(&JobId::new(job.as_str()), &events))?;
        closing.record(&metrics, &book, Outcome::Succeeded, &events, &inserted);
        metered_s += start.elapsed().as_secs_f64();
    }
    let n = f64::from(frames * 3);
    let (plain_fps, metered_fps) = (n / plain_s, n / metered_s);
    println!("| run | fps | vs off |");
    println!("|---|---|---|");
    println!("| metering off | {plain_fps:.2} | 1.000 |");
    println!("| metering on | {metered_fps:.2} | {:.3} |", metered_fps / plain_fps);
    println!("\nthroughput cost of metering: {:.2} %", (1.0 - metered_fps / plain_fps) * 100.0);
    Ok(())
}
