//! Shared helpers: one GPU context per test process, rendering a spec to RGBA,
//! image metrics.

use std::sync::OnceLock;

use tessera_worker::gpu::GpuContext;
use tessera_worker::render::{FrameRenderer, Readback};
use tessera_worker::spec::{JobSpec, RawSpec, SpecLimits};

/// The GPU context shared by every test; compiled pipelines are cached in it.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        GpuContext::open()
            .unwrap_or_else(|e| panic!("GPU tests need an adapter (CI installs mesa-vulkan-drivers): {e}"))
    })
}

/// Validates a JSON spec.
pub fn spec(value: serde_json::Value) -> JobSpec {
    let raw: RawSpec = serde_json::from_value(value).expect("spec parses");
    raw.validate(&SpecLimits::default()).expect("spec is valid")
}

/// Renders frame `frame` of `spec` to tightly packed RGBA8.
pub fn render_rgba(spec: &JobSpec, frame: u32) -> Vec<u8> {
    let mut r = FrameRenderer::new(ctx(), spec.render_plan()).expect("renderer");
    r.render_frame(frame, Readback::Rgba8).expect("frame renders").data
}

/// A small spec for `template` at `w x h` with a `cols x rows` plan.
pub fn small_spec(template: &str, w: u32, h: u32, cols: u32, rows: u32, overlap: u32) -> JobSpec {
    spec(serde_json::json!({
        "template": template,
        "resolution": {"width": w, "height": h},
        "fps": 24, "duration_s": 1.0, "seed": 7,
        "tiles": {"cols": cols, "rows": rows, "overlap_px": overlap},
    }))
}

/// PSNR over the RGB channels of two RGBA8 images, in dB (infinite when equal).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (pa, pb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for c in 0..3 {
            let d = f64::from(pa[c]) - f64::from(pb[c]);
            sum += d * d;
            n += 1;
        }
    }
    let mse = sum / n as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Largest per-channel absolute difference over RGB.
pub fn max_abs_diff(a: &[u8], b: &[u8]) -> u8 {
    a.chunks_exact(4)
        .zip(b.chunks_exact(4))
        .flat_map(|(pa, pb)| (0..3).map(move |c| pa[c].abs_diff(pb[c])))
        .max()
        .unwrap_or(0)
}

/// Seam metric: mean absolute gradient across the tile-boundary columns and rows
/// divided by the mean absolute gradient across all other columns and rows.
/// `xs` and `ys` are the interior core boundaries.
pub fn seam_ratio(img: &[u8], w: u32, h: u32, xs: &[u32], ys: &[u32]) -> f64 {
    let px = |x: u32, y: u32, c: usize| f64::from(img[((y * w + x) * 4) as usize + c]);
    let col_grad =
        |x: u32| (0..h).map(|y| (0..3).map(|c| (px(x, y, c) - px(x - 1, y, c)).abs()).sum::<f64>()).sum::<f64>();
    let row_grad =
        |y: u32| (0..w).map(|x| (0..3).map(|c| (px(x, y, c) - px(x, y - 1, c)).abs()).sum::<f64>()).sum::<f64>();
    let (mut seam, mut seam_n, mut other, mut other_n) = (0.0, 0.0, 0.0, 0.0);
    for x in 1..w {
        if xs.contains(&x) {
            seam += col_grad(x);
            seam_n += f64::from(h);
        } else {
            other += col_grad(x);
            other_n += f64::from(h);
        }
    }
    for y in 1..h {
        if ys.contains(&y) {
            seam += row_grad(y);
            seam_n += f64::from(w);
        } else {
            other += row_grad(y);
            other_n += f64::from(w);
        }
    }
    (seam / seam_n) / (other / other_n)
}

/// The path of the `tessera` binary under test.
pub fn tessera() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
}
