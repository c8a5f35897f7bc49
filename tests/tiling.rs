//! Tiled renders match untiled ones and show no seams, for every template.

use tessera_worker::render::TEMPLATES;

use crate::util::{max_abs_diff, psnr, render_rgba, seam_ratio, small_spec};

const FRAME: u32 = 9;

fn compare_plans(template: &str, w: u32, h: u32) {
    let untiled = render_rgba(&small_spec(template, w, h, 1, 1, 32), FRAME);
    for (cols, rows) in [(1, 1), (2, 2), (3, 3), (4, 3)] {
        let spec = small_spec(template, w, h, cols, rows, 32);
        let tiled = render_rgba(&spec, FRAME);
        let p = psnr(&untiled, &tiled);
        let d = max_abs_diff(&untiled, &tiled);
        let t = &spec.tiler;
        let xs = &t.xs[1..t.xs.len() - 1];
        let ys = &t.ys[1..t.ys.len() - 1];
        // The seam ratio of a scene also measures its content (orbit's horizon lies on
        // the 2x2 seam row, so even the untiled frame scores 2.5 there); dividing by
        // the untiled frame's ratio at the same rows and columns leaves what tiling
        // added. tests/stitch.rs checks the plain ratio on content without edges.
        let (seam_tiled, seam_untiled) = if xs.is_empty() && ys.is_empty() {
            (1.0, 1.0)
        } else {
            (seam_ratio(&tiled, w, h, xs, ys), seam_ratio(&untiled, w, h, xs, ys))
        };
        let seam = seam_tiled / seam_untiled;
        eprintln!(
            "{template} {w}x{h} {cols}x{rows}: PSNR {p:.1} dB, max diff {d}, seam ratio {seam_tiled:.3} \
             (untiled {seam_untiled:.3}, relative {seam:.4})"
        );
        assert!(p >= 50.0, "{template} {w}x{h} {cols}x{rows}: PSNR {p:.2} dB < 50");
        assert!(d <= 2, "{template} {w}x{h} {cols}x{rows}: max abs diff {d} > 2");
        assert!(seam <= 1.05, "{template} {w}x{h} {cols}x{rows}: relative seam ratio {seam:.3} > 1.05");
    }
}

#[test]
fn tiled_matches_untiled_orbit() {
    compare_plans("orbit", 384, 216);
    compare_plans("orbit", 1000, 562);
}

#[test]
fn tiled_matches_untiled_pedestal() {
    compare_plans("pedestal", 384, 216);
    compare_plans("pedestal", 1000, 562);
}

#[test]
fn tiled_matches_untiled_dunes() {
    compare_plans("dunes", 384, 216);
    compare_plans("dunes", 1000, 562);
}

#[test]
fn every_template_is_covered() {
    let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
    assert_eq!(names, ["orbit", "pedestal", "dunes"], "add a tiled-vs-untiled test for each new template");
}

#[test]
fn advanced_variant_tiles_cleanly_and_differs_from_general() {
    let spec = |variant: &str, cols: u32| {
        crate::util::spec(serde_json::json!({
            "template": "pedestal", "resolution": {"width": 256, "height": 144}, "fps": 24,
            "variant": variant, "tiles": {"cols": cols, "rows": 2, "overlap_px": 16}, "seed": 3,
        }))
    };
    let untiled = render_rgba(&spec("advanced", 1), 5);
    let tiled = render_rgba(&spec("advanced", 3), 5);
    assert!(psnr(&untiled, &tiled) >= 50.0);
    assert!(max_abs_diff(&untiled, &tiled) <= 2);
    let general = render_rgba(&spec("general", 1), 5);
    assert!(psnr(&untiled, &general) < 45.0, "advanced should not look like general");
}
