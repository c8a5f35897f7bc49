//! Encode throughput on the same frames, in one run: the GPU JPEG encoder with
//! entropy coding on the GPU (only the scan read back) and on the CPU
//! (coefficients read back, parallel Huffman; the same bytes), the `jpeg-encoder` crate on the CPU,
//! and `ffmpeg -c:v mjpeg -pix_fmt yuvj420p` at the `-q:v` whose PSNR is closest to ours; at 1080p
//! and 4K. Prints a Markdown table with frames per second, bytes and PSNR.
//!
//! Then file size at equal PSNR: for each of ffmpeg's `-q:v` 2–5, the lowest
//! tessera quality whose frame reaches at least ffmpeg's PSNR, and the two
//! files' sizes (the same frame, encoded again at each quality tried); and
//! our size at exactly ffmpeg's PSNR, between that quality and the one below.
//!
//! Then a clip, rendered and written to an AVI as `tessera render` does, one,
//! two and three frames in flight: frames per second, the GPU's busy
//! fraction (GPU time of the passes over wall time), host time per frame by
//! stage, and bytes read back against bytes written. Where passes are timed
//! on the host the ring is one frame deep whatever is asked
//! (`TESSERA_TIMING=gpu` forces timestamps, as the small mode of
//! scripts/gpu-bench.sh does on lavapipe).
//!
//! `cargo bench --bench encode`; `TESSERA_BENCH_FRAMES` (default 10) frames per
//! case; `TESSERA_BENCH_SIZES=WxH[,WxH...]` (default `1920x1080,3840x2160`) the
//! frame sizes, each rendered with 2x2 tiles below 2560 px wide and 3x3 from
//! there (at least 128 px a side; 192 px with 3x3); `TESSERA_BENCH_CLIP_SIZE`
//! (default `3840x2160`) and `TESSERA_BENCH_CLIP_FRAMES` (default 24) the clip.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context};
use tessera_worker::encode::jpeg::gpu::JpegPass;
use tessera_worker::encode::jpeg::gpu_entropy::Entropy;
use tessera_worker::encode::mux;
use tessera_worker::gpu::GpuContext;
use tessera_worker::render::clip::render_clip;
use tessera_worker::render::ring::MAX_FRAMES_IN_FLIGHT;
use tessera_worker::render::{FrameRenderer, HostTimes, Readback};
use tessera_worker::spec::{RawSpec, SpecLimits};

const QUALITY: u8 = 90;

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let (mut sum, mut n) = (0.0f64, 0.0f64);
    for (pa, pb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for c in 0..3 {
            let d = f64::from(pa[c]) - f64::from(pb[c]);
            sum += d * d;
            n += 1.0;
        }
    }
    10.0 * (255.0f64 * 255.0 / (sum / n).max(1e-12)).log10()
}

fn decode(jpeg: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)?.to_rgba8().into_raw())
}

struct Row {
    name: String,
    fps: f64,
    bytes: usize,
    psnr: f64,
    note: String,
}

fn ffmpeg_mjpeg(rgba: &[u8], w: u32, h: u32, q: u32, frames: u32) -> anyhow::Result<(f64, Vec<u8>)> {
    let start = Instant::now();
    let mut child = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "rawvideo", "-pix_fmt", "rgba", "-s", &format!("{w}x{h}"), "-i", "-"])
        // 4:2:0 as tessera codes: from RGBA ffmpeg would pick 4:4:4.
        .args(["-c:v", "mjpeg", "-pix_fmt", "yuvj420p", "-q:v", &q.to_string(), "-f", "image2pipe", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running ffmpeg")?;
    let mut stdin = child.stdin.take().context("ffmpeg stdin")?;
    let frame = rgba.to_vec();
    let writer = std::thread::spawn(move || {
        for _ in 0..frames {
            if stdin.write_all(&frame).is_err() {
                break;
            }
        }
    });
    let out = child.wait_with_output()?;
    writer.join().ok();
    ensure!(out.status.success(), "ffmpeg failed");
    let fps = f64::from(frames) / start.elapsed().as_secs_f64();
    // The stream is `frames` JPEGs back to back; the first ends at its EOI.
    let end = out.stdout.windows(2).position(|w| w == [0xFF, 0xD9]).context("no EOI")? + 2;
    Ok((fps, out.stdout[..end].to_vec()))
}

/// ffmpeg's file at one `-q:v`, and the smallest of ours at no lower PSNR.
struct EqualPsnr {
    ffmpeg_q: u32,
    ffmpeg_bytes: usize,
    ffmpeg_psnr: f64,
    /// Our lowest quality reaching `ffmpeg_psnr`, its bytes and PSNR; `None`
    /// when even quality 100 does not.
    ours: Option<(u8, usize, f64)>,
    /// Our bytes at exactly `ffmpeg_psnr`: interpolated (log bytes, linear
    /// in PSNR) between the quality below `ours` and `ours`, since one
    /// quality step moves PSNR by about 0.1 dB.
    at_equal: Option<f64>,
}

/// The frame in `frame` as a JPEG at `quality` (entropy coded where the
/// context says), apart from any renderer.
fn encode_at(ctx: &GpuContext, frame: &wgpu::Texture, quality: u8) -> anyhow::Result<Vec<u8>> {
    let pass = JpegPass::new(ctx, frame, quality);
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut compute = encoder.begin_compute_pass(&Default::default());
        pass.record(&mut compute);
    }
    pass.copy_out(&mut encoder);
    let submission = ctx.queue.submit([encoder.finish()]);
    Ok(pass.encode(ctx, Some(&submission))?.data)
}

/// Bytes and PSNR of the frame in `frame` at quality `q`.
fn measure(ctx: &GpuContext, frame: &wgpu::Texture, rgba: &[u8], q: u8) -> anyhow::Result<(u8, usize, f64)> {
    let jpeg = encode_at(ctx, frame, q)?;
    Ok((q, jpeg.len(), psnr(rgba, &decode(&jpeg)?)))
}

/// Our bytes at exactly `target` dB, between `below` and `above` (log bytes
/// linear in PSNR).
fn bytes_at(below: (u8, usize, f64), above: (u8, usize, f64), target: f64) -> f64 {
    let (lo, hi) = ((below.1 as f64).ln(), (above.1 as f64).ln());
    if above.2 <= below.2 {
        return above.1 as f64;
    }
    let t = ((target - below.2) / (above.2 - below.2)).clamp(0.0, 1.0);
    (lo + t * (hi - lo)).exp()
}

/// The lowest quality whose PSNR on `rgba` is at least `target`, by bisection
/// (PSNR rises with quality), with its bytes and PSNR.
fn lowest_quality_reaching(
    ctx: &GpuContext,
    frame: &wgpu::Texture,
    rgba: &[u8],
    target: f64,
) -> anyhow::Result<Option<(u8, usize, f64)>> {
    let measure = |q: u8| measure(ctx, frame, rgba, q);
    let top = measure(100)?;
    if top.2 < target {
        return Ok(None);
    }
    let (mut lo, mut best) = (1u8, top);
    let mut hi = 100u8;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let m = measure(mid)?;
        if m.2 >= target {
            best = m;
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(best))
}

fn bench_size(ctx: &GpuContext, w: u32, h: u32, tiles: u32, frames: u32) -> anyhow::Result<(Vec<Row>, Vec<EqualPsnr>)> {
    let raw: RawSpec = serde_json::from_value(serde_json::json!({
        "template": "orbit", "resolution": {"width": w, "height": h}, "fps": 30, "quality": QUALITY,
        "tiles": {"cols": tiles, "rows": tiles, "overlap_px": 32}, "seed": 7,
    }))?;
    let spec = raw.validate(&SpecLimits::default())?;
    let mut renderer = FrameRenderer::new(ctx, spec.render_plan())?;
    let rgba = renderer.render_frame(12, Readback::Rgba8)?.data;
    let mut rows = Vec::new();

    let mut ours = Vec::new();
    for entropy in [Entropy::Gpu, Entropy::Cpu] {
        ctx.set_entropy(entropy);
        let first = renderer.encode_current(Readback::Jpeg)?; // warm-up (pipeline creation)
        let start = Instant::now();
        let (mut gpu_ns, mut host, mut read) = (0u64, HostTimes::default(), 0u64);
        for _ in 0..frames {
            let f = renderer.encode_current(Readback::Jpeg)?;
            gpu_ns += f.times.encode_ns;
            host.merge(&f.host);
            read += f.readback_bytes;
        }
        let fps = f64::from(frames) / start.elapsed().as_secs_f64();
        let per = |ns: u64| ns as f64 / 1e6 / f64::from(frames);
        let coder = if entropy == Entropy::Gpu { "JFIF" } else { "Huffman + JFIF" };
        rows.push(Row {
            name: format!("tessera GPU encode, {} entropy coding", entropy.as_str()),
            fps,
            bytes: first.data.len(),
            psnr: psnr(&rgba, &decode(&first.data)?),
            note: format!(
                "GPU {:.2} ms, {:.2} ms with the wait and readback; host per frame: wait {:.2} ms, readback {:.2} ms, {coder} {:.2} ms; {:.0} KiB read back per frame ({:.2} x the file)",
                per(gpu_ns),
                per(host.wait_ns + host.readback_ns),
                per(host.wait_ns),
                per(host.readback_ns),
                per(host.entropy_ns),
                read as f64 / 1024.0 / f64::from(frames),
                read as f64 / f64::from(frames) / first.data.len() as f64
            ),
        });
        ours.push(first.data);
    }
    ctx.set_entropy(Entropy::Gpu);
    ensure!(ours[0] == ours[1], "the GPU and CPU entropy coders wrote different files");
    let ours_psnr = psnr(&rgba, &decode(&ours[0])?);

    let start = Instant::now();
    let mut bytes = Vec::new();
    for _ in 0..frames {
        bytes.clear();
        let mut enc = jpeg_encoder::Encoder::new(&mut bytes, QUALITY);
        enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
        enc.encode(&rgba, w as u16, h as u16, jpeg_encoder::ColorType::Rgba)?;
    }
    let fps = f64::from(frames) / start.elapsed().as_secs_f64();
    rows.push(Row {
        name: "jpeg-encoder crate (CPU, 1 thread)".into(),
        fps,
        bytes: bytes.len(),
        psnr: psnr(&rgba, &decode(&bytes)?),
        note: format!("quality {QUALITY}, 4:2:0"),
    });

    let mut best: Option<(u32, f64, Vec<u8>, f64)> = None;
    let mut equal = Vec::new();
    // -q:v 1 is -q:v 2: ffmpeg's default qmin is 2.
    for q in 2..=6 {
        let (fps, jpeg) = ffmpeg_mjpeg(&rgba, w, h, q, frames)?;
        let p = psnr(&rgba, &decode(&jpeg)?);
        if q <= 5 {
            let frame = renderer.frame_texture();
            let ours = lowest_quality_reaching(ctx, frame, &rgba, p)?;
            let at_equal = match ours {
                Some(above) if above.0 > 1 => Some(bytes_at(measure(ctx, frame, &rgba, above.0 - 1)?, above, p)),
                Some(above) => Some(above.1 as f64),
                None => None,
            };
            equal.push(EqualPsnr { ffmpeg_q: q, ffmpeg_bytes: jpeg.len(), ffmpeg_psnr: p, ours, at_equal });
        }
        if best.as_ref().is_none_or(|b| (p - ours_psnr).abs() < (b.1 - ours_psnr).abs()) {
            best = Some((q, p, jpeg, fps));
        }
    }
    let (q, p, jpeg, fps) = best.context("ffmpeg produced nothing")?;
    rows.push(Row {
        name: "ffmpeg -c:v mjpeg".into(),
        fps,
        bytes: jpeg.len(),
        psnr: p,
        note: format!("-q:v {q} (closest PSNR), includes piping raw frames"),
    });
    Ok((rows, equal))
}

/// A clip rendered into an AVI at each depth of the frame ring.
fn bench_clip(ctx: &GpuContext, w: u32, h: u32, tiles: u32, frames: u32) -> anyhow::Result<()> {
    let fps = 24;
    let raw: RawSpec = serde_json::from_value(serde_json::json!({
        "template": "orbit", "resolution": {"width": w, "height": h}, "fps": fps, "quality": QUALITY,
        "duration_s": f64::from(frames) / f64::from(fps),
        "tiles": {"cols": tiles, "rows": tiles, "overlap_px": 32}, "seed": 7,
    }))?;
    let spec = raw.validate(&SpecLimits::default())?;
    let dir = tempfile::tempdir()?;
    println!("\n{w}x{h} clip, {frames} frames, written to an AVI (GPU entropy coding):\n");
    println!("| frames in flight | fps | vs 1 | GPU busy | host busy ms/frame | wait ms/frame | readback / output |");
    println!("|---|---|---|---|---|---|---|");
    let mut base = None;
    for depth in 1..=MAX_FRAMES_IN_FLIGHT {
        let path = dir.path().join(format!("clip{depth}.avi"));
        let mut muxer = mux::for_path(&path)?;
        let summary = render_clip(ctx, &spec, muxer.as_mut(), depth, &mut |_, _| Ok(()))?;
        let stats = summary.stats(&spec);
        // Frames per second of the frame loop: the renderers' set-up is not in it.
        let clip_fps = f64::from(stats.frames) / (stats.loop_ns as f64 / 1e9);
        let base_fps = *base.get_or_insert(clip_fps);
        let per = |ns: u64| ns as f64 / 1e6 / f64::from(stats.frames);
        println!(
            "| {}{} | {clip_fps:.1} | {:.2}x | {:.0} % | {:.2} | {:.2} | {:.3} |",
            stats.frames_in_flight,
            if stats.frames_in_flight == depth { String::new() } else { format!(" (asked {depth})") },
            clip_fps / base_fps,
            100.0 * stats.gpu_busy_fraction(),
            per(stats.host_ns.busy),
            per(stats.host_ns.wait),
            stats.readback_bytes as f64 / stats.output_bytes.max(1) as f64
        );
    }
    Ok(())
}

/// `WxH` from `TESSERA_BENCH_CLIP_SIZE`, else 4K, with its tiles.
fn clip_size_from_env() -> anyhow::Result<(u32, u32, u32)> {
    let raw = std::env::var("TESSERA_BENCH_CLIP_SIZE").unwrap_or_else(|_| "3840x2160".into());
    parse_sizes(&raw)?.pop().context("TESSERA_BENCH_CLIP_SIZE names no size")
}

/// `WxH[,WxH...]` from `TESSERA_BENCH_SIZES`, else 1080p and 4K; with the tiles
/// each is rendered with (the frame encoded is the stitched whole).
fn sizes_from_env() -> anyhow::Result<Vec<(u32, u32, u32)>> {
    parse_sizes(&std::env::var("TESSERA_BENCH_SIZES").unwrap_or_else(|_| "1920x1080,3840x2160".into()))
}

fn parse_sizes(raw: &str) -> anyhow::Result<Vec<(u32, u32, u32)>> {
    raw.split(',')
        .map(|s| {
            let (w, h) = s.trim().split_once('x').with_context(|| format!("`{s}` is not WxH"))?;
            let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
            anyhow::Ok((w, h, if w >= 2560 { 3 } else { 2 }))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("`{raw}`: expected WxH[,WxH...]"))
}

fn main() -> anyhow::Result<()> {
    let frames: u32 = std::env::var("TESSERA_BENCH_FRAMES").ok().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let sizes = sizes_from_env()?;
    let ctx = GpuContext::open().context("opening the GPU")?;
    println!(
        "adapter: {} ({}, {}), timing {}, {frames} frames per case, quality {QUALITY}\n",
        ctx.adapter.name,
        ctx.adapter.backend,
        ctx.adapter.driver_info,
        if ctx.timestamps { "gpu" } else { "host" }
    );
    println!("| size | encoder | fps | vs GPU | bytes | PSNR dB | notes |");
    println!("|---|---|---|---|---|---|---|");
    let clip_frames: u32 =
        std::env::var("TESSERA_BENCH_CLIP_FRAMES").ok().map(|s| s.parse()).transpose()?.unwrap_or(24);
    let clip = clip_size_from_env()?;
    let mut equal_psnr = Vec::new();
    for (w, h, tiles) in sizes {
        let (rows, equal) = bench_size(&ctx, w, h, tiles, frames)?;
        equal_psnr.push((w, h, equal));
        let gpu_fps = rows[0].fps;
        for r in rows {
            println!(
                "| {w}x{h} | {} | {:.1} | {:.2}x | {} | {:.2} | {} |",
                r.name,
                r.fps,
                r.fps / gpu_fps,
                r.bytes,
                r.psnr,
                r.note
            );
        }
    }
    println!("\nFile size at equal PSNR: the lowest tessera quality reaching ffmpeg's PSNR (same frame):\n");
    println!("| size | ffmpeg -q:v | ffmpeg bytes | ffmpeg PSNR dB | tessera quality | tessera bytes | tessera PSNR dB | tessera / ffmpeg | at equal PSNR |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (w, h, equal) in equal_psnr {
        for e in equal {
            let ours = match (e.ours, e.at_equal) {
                (Some((q, bytes, p)), Some(at)) => format!(
                    "{q} | {bytes} | {p:.2} | {:.3} | {:.3}",
                    bytes as f64 / e.ffmpeg_bytes as f64,
                    at / e.ffmpeg_bytes as f64
                ),
                _ => "- | - | - | not reached at quality 100 | -".into(),
            };
            println!("| {w}x{h} | {} | {} | {:.2} | {ours} |", e.ffmpeg_q, e.ffmpeg_bytes, e.ffmpeg_psnr);
        }
    }
    bench_clip(&ctx, clip.0, clip.1, clip.2, clip_frames)?;
    Ok(())
}
