//! Render throughput: frames per second of each template at 1080p untiled vs
//! 2x2 tiles with 32 px overlap (ratio from the same run), and 4K with 3x3 tiles.
//!
//! `cargo bench --bench render` prints a Markdown table for BENCHMARKS.md.
//! `TESSERA_BENCH_FRAMES` (default 6) sets frames per case (half as many, rounded
//! up, for the 3x3 case), `TESSERA_BENCH_VARIANT` (`general` or `advanced`) the
//! variant, and `TESSERA_BENCH_SIZES=WxH,WxH` (default `1920x1080,3840x2160`)
//! the two frame sizes: the first for untiled vs 2x2, the second for 3x3 (at
//! least 128 and 192 px a side, for the tiles' 32 px overlap). Frames stay on
//! the GPU (no readback), so the figures are the render and stitch passes.

use std::time::Instant;

use anyhow::Context;
use tessera_worker::gpu::GpuContext;
use tessera_worker::render::{FrameRenderer, Readback, TEMPLATES};
use tessera_worker::spec::{RawSpec, SpecLimits};

struct Case {
    fps: f64,
    gpu_ms: f64,
}

fn run_case(
    ctx: &GpuContext,
    template: &str,
    variant: &str,
    size: (u32, u32),
    tiles: (u32, u32),
    frames: u32,
) -> anyhow::Result<Case> {
    let raw: RawSpec = serde_json::from_value(serde_json::json!({
        "template": template, "variant": variant,
        "resolution": {"width": size.0, "height": size.1}, "fps": 30, "duration_s": 60.0,
        "tiles": {"cols": tiles.0, "rows": tiles.1, "overlap_px": 32}, "seed": 7,
    }))?;
    let spec = raw.validate(&SpecLimits::default())?;
    let mut renderer = FrameRenderer::new(ctx, spec.render_plan())?;
    renderer.render_frame(0, Readback::None)?; // warm-up: pipeline creation, first-use allocation
    let start = Instant::now();
    let mut gpu_ns = 0u64;
    for i in 1..=frames {
        let f = renderer.render_frame(i * 7, Readback::None)?;
        gpu_ns += f.times.render_ns + f.times.stitch_ns;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(Case { fps: f64::from(frames) / wall, gpu_ms: gpu_ns as f64 / 1e6 / f64::from(frames) })
}

/// `WxH,WxH` from `TESSERA_BENCH_SIZES`, else 1080p and 4K.
fn sizes_from_env() -> anyhow::Result<[(u32, u32); 2]> {
    let Ok(raw) = std::env::var("TESSERA_BENCH_SIZES") else {
        return Ok([(1920, 1080), (3840, 2160)]);
    };
    let sizes = raw
        .split(',')
        .map(|s| {
            let (w, h) = s.trim().split_once('x').with_context(|| format!("`{s}` is not WxH"))?;
            anyhow::Ok((w.parse()?, h.parse()?))
        })
        .collect::<anyhow::Result<Vec<(u32, u32)>>>()
        .with_context(|| format!("TESSERA_BENCH_SIZES=`{raw}`: expected WxH,WxH"))?;
    <[(u32, u32); 2]>::try_from(sizes)
        .map_err(|s| anyhow::anyhow!("TESSERA_BENCH_SIZES=`{raw}`: expected two sizes, got {}", s.len()))
}

/// The name of a frame size in the table's header: 1080p and 4K by name.
fn label((w, h): (u32, u32)) -> String {
    match (w, h) {
        (1920, 1080) => "1080p".into(),
        (3840, 2160) => "4K".into(),
        _ => format!("{w}x{h}"),
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let frames: u32 = std::env::var("TESSERA_BENCH_FRAMES").ok().map(|s| s.parse()).transpose()?.unwrap_or(6);
    let variant = std::env::var("TESSERA_BENCH_VARIANT").unwrap_or_else(|_| "general".into());
    let [small, large] = sizes_from_env()?;
    let ctx = GpuContext::open().context("opening the GPU")?;
    println!(
        "adapter: {} ({}, {}), {frames} frames per case, variant {variant}\n",
        ctx.adapter.name, ctx.adapter.backend, ctx.adapter.driver_info
    );
    let (s, l) = (label(small), label(large));
    println!("| template | {s} 1x1 fps | {s} 2x2/32 fps | 2x2 / 1x1 | GPU ms/frame 1x1 | GPU ms/frame 2x2 | {l} 3x3/32 fps | {l} GPU ms/frame |");
    println!("|---|---|---|---|---|---|---|---|");
    for t in TEMPLATES {
        let untiled = run_case(&ctx, t.name, &variant, small, (1, 1), frames)?;
        let tiled = run_case(&ctx, t.name, &variant, small, (2, 2), frames)?;
        let uhd = run_case(&ctx, t.name, &variant, large, (3, 3), frames.div_ceil(2))?;
        println!(
            "| {} | {:.2} | {:.2} | {:.3} | {:.1} | {:.1} | {:.2} | {:.1} |",
            t.id(),
            untiled.fps,
            tiled.fps,
            tiled.fps / untiled.fps,
            untiled.gpu_ms,
            tiled.gpu_ms,
            uhd.fps,
            uhd.gpu_ms
        );
    }
    Ok(())
}
