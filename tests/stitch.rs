//! The stitch: the CPU reference on random tile contents, its failure modes, and
//! the GPU pass diffed against it.

use rand::{rngs::SmallRng, Rng, SeedableRng};
use tessera_worker::render::stitch::{cpu_stitch, cpu_stitch_with, tile_weight, BlendError};
use tessera_worker::render::{FrameRenderer, Tiler};

use crate::util::{ctx, small_spec};

fn random_tiles(tiler: &Tiler, seed: u64) -> Vec<Vec<[f32; 4]>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    tiler.tiles().iter().map(|t| (0..t.rect.area()).map(|_| [rng.gen(), rng.gen(), rng.gen(), 1.0]).collect()).collect()
}

#[test]
fn cpu_reference_weights_sum_to_one_on_random_tiles() {
    for (w, h, c, r, o) in [(200, 120, 3, 2, 24), (1000, 562, 4, 3, 32), (160, 96, 2, 2, 8), (96, 64, 1, 1, 0)] {
        let tiler = Tiler::new(w, h, c, r, o).unwrap();
        let tiles = random_tiles(&tiler, 1);
        let out = cpu_stitch(&tiler, &tiles).unwrap_or_else(|e| panic!("{w}x{h} {c}x{r}: {e}"));
        // Away from seams the output is exactly the owning tile's pixel.
        let half = tiler.blend_half();
        for (i, t) in tiler.tiles().iter().enumerate() {
            let x = t.core.x + if t.col > 0 { half } else { 0 };
            let y = t.core.y + if t.row > 0 { half } else { 0 };
            let local = ((y - t.rect.y) * t.rect.width + (x - t.rect.x)) as usize;
            assert_eq!(out[(y * w + x) as usize], tiles[i][local], "{w}x{h} {c}x{r} tile {i}");
        }
    }
}

#[test]
fn no_ramp_at_the_frame_border() {
    // Tiles filled with distinct constants: along the frame border, away from
    // seams, every pixel must be exactly its tile's constant.
    let tiler = Tiler::new(320, 192, 3, 2, 32).unwrap();
    let consts: Vec<[f32; 4]> = (0..tiler.len()).map(|i| [i as f32 / 8.0, 0.5, 1.0 - i as f32 / 8.0, 1.0]).collect();
    let tiles: Vec<Vec<[f32; 4]>> =
        tiler.tiles().iter().zip(&consts).map(|(t, c)| vec![*c; t.rect.area() as usize]).collect();
    let out = cpu_stitch(&tiler, &tiles).unwrap();
    let h = tiler.blend_half();
    for t in tiler.tiles() {
        for x in [0u32, tiler.width - 1] {
            for y in (t.core.y + h)..(t.core.bottom().saturating_sub(h)) {
                if t.core.contains(x, y) {
                    assert_eq!(out[(y * tiler.width + x) as usize], consts[tiler.index(t.col, t.row)], "({x},{y})");
                }
            }
        }
    }
}

#[test]
fn reference_fails_on_weights_that_do_not_sum_to_one_or_ramp_at_the_border() {
    let tiler = Tiler::new(200, 120, 2, 2, 24).unwrap();
    let tiles = random_tiles(&tiler, 2);
    // A linear ramp on one side of the seam and a raised cosine on the other.
    let mismatched = |t: &Tiler, col: u32, row: u32, x: u32, y: u32| {
        let w = tile_weight(t, col, row, x, y);
        if col == 1 {
            let lin =
                ((x as f32 + 0.5 - (t.xs[1] - t.blend_half()) as f32) / (2 * t.blend_half()) as f32).clamp(0.0, 1.0);
            lin * tile_weight(t, 0, row, 0, y)
        } else {
            w
        }
    };
    assert!(matches!(cpu_stitch_with(&tiler, &tiles, mismatched), Err(BlendError::SumNotOne { .. })));
    // A ramp at the frame's left border.
    let border_ramp = |t: &Tiler, col: u32, row: u32, x: u32, y: u32| {
        tile_weight(t, col, row, x, y) * if col == 0 { ((x as f32 + 0.5) / 16.0).min(1.0) } else { 1.0 }
    };
    match cpu_stitch_with(&tiler, &tiles, border_ramp) {
        Err(BlendError::SumNotOne { x, .. }) => assert!(x < 16),
        other => panic!("border ramp not detected: {:?}", other.map(|_| ())),
    }
    // Weight where the tile's output is not exact (inside its halo's post radius).
    let too_wide = |t: &Tiler, col: u32, row: u32, x: u32, y: u32| {
        let mut wide = t.clone();
        wide.overlap += 12;
        tile_weight(&wide, col, row, x, y)
    };
    assert!(matches!(cpu_stitch_with(&tiler, &tiles, too_wide), Err(BlendError::WeightOutsideTile { .. })));
}

#[test]
fn gpu_stitch_matches_cpu_reference() {
    for (w, h, c, r, o) in [(200, 120, 3, 2, 24), (1000, 562, 4, 3, 32), (160, 96, 2, 2, 8)] {
        let spec = small_spec("orbit", w, h, c, r, o);
        let tiler = spec.tiler.clone();
        let tiles = random_tiles(&tiler, 42);
        // The GPU tile buffers are f16: round the reference's inputs the same way.
        let tiles: Vec<Vec<[f32; 4]>> = tiles
            .into_iter()
            .map(|t| t.into_iter().map(|p| p.map(|v| half::f16::from_f32(v).to_f32())).collect())
            .collect();
        let want = cpu_stitch(&tiler, &tiles).unwrap();
        let mut renderer = FrameRenderer::new(ctx(), spec.render_plan()).unwrap();
        let got = renderer.stitch_tiles(&tiles).unwrap();
        let mut worst = 0.0f32;
        for (i, px) in want.iter().enumerate() {
            for ch in 0..3 {
                let g = f32::from(got[i * 4 + ch]) / 255.0;
                worst = worst.max((g - px[ch].clamp(0.0, 1.0)).abs());
            }
        }
        assert!(worst <= 1.0 / 255.0 + 1e-4, "{w}x{h} {c}x{r}: GPU stitch differs from CPU by {}", worst * 255.0);
    }
}

/// Smooth content shared by all tiles plus a small per-tile bias, as tiles from
/// different GPUs or with tile-local effects would differ.
fn biased_smooth_tiles(tiler: &Tiler, bias: f32) -> Vec<Vec<[f32; 4]>> {
    tiler
        .tiles()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let b = if i % 2 == 0 { bias } else { -bias };
            (0..t.rect.height)
                .flat_map(|ly| (0..t.rect.width).map(move |lx| (t.rect.x + lx, t.rect.y + ly)))
                .map(|(x, y)| {
                    let v = 0.5 + 0.35 * (x as f32 * 0.045).sin() * (y as f32 * 0.06).cos() + b;
                    [v, 0.8 - 0.5 * v, 0.3 + 0.2 * v, 1.0]
                })
                .collect()
        })
        .collect()
}

#[test]
fn blended_seams_stay_invisible_where_tiles_disagree() {
    // Tiles that disagree by 4/255: with the raised-cosine blend over the halo the
    // seam metric stays under 1.05; with a hard cut (overlap = post radius, so no
    // blend zone) the same tiles show their seams and the metric catches it.
    let (w, h) = (384u32, 216u32);
    let ratio = |overlap: u32| {
        let spec = small_spec("orbit", w, h, 3, 2, overlap);
        let tiles = biased_smooth_tiles(&spec.tiler, 2.0 / 255.0);
        let mut renderer = FrameRenderer::new(ctx(), spec.render_plan()).unwrap();
        let frame = renderer.stitch_tiles(&tiles).unwrap();
        let t = &spec.tiler;
        crate::util::seam_ratio(&frame, w, h, &t.xs[1..t.xs.len() - 1], &t.ys[1..t.ys.len() - 1])
    };
    let blended = ratio(32);
    let hard = ratio(tessera_worker::render::tiler::POST_RADIUS);
    eprintln!("seam ratio: blended {blended:.3}, hard cut {hard:.3}");
    assert!(blended <= 1.05, "blended seams: ratio {blended:.3}");
    assert!(hard > 1.05, "a hard cut should show: ratio {hard:.3}");
}
