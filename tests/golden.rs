//! Golden images: one small frame per template, compared with a tolerance that
//! absorbs driver differences in transcendental functions but not a changed scene.
//!
//! Regenerate after an intended visual change with
//! `TESSERA_BLESS=1 cargo test --test tests golden`, then look at the PNGs in
//! tests/golden/ before committing them.

use std::path::PathBuf;

use tessera_worker::render::TEMPLATES;

use crate::util::{psnr, render_rgba, small_spec};

const W: u32 = 160;
const H: u32 = 90;
const FRAME: u32 = 12;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.png"))
}

#[test]
fn every_template_matches_its_golden_image() {
    let bless = std::env::var_os("TESSERA_BLESS").is_some();
    let mut failures = Vec::new();
    for t in TEMPLATES {
        let spec = small_spec(&t.id(), W, H, 2, 2, 16);
        let got = render_rgba(&spec, FRAME);
        let path = golden_path(t.name);
        if bless {
            image::save_buffer(&path, &got, W, H, image::ExtendedColorType::Rgba8).unwrap();
            continue;
        }
        let want = image::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; create it with TESSERA_BLESS=1", path.display()))
            .to_rgba8()
            .into_raw();
        let p = psnr(&got, &want);
        let off = got
            .chunks_exact(4)
            .zip(want.chunks_exact(4))
            .filter(|(a, b)| (0..3).any(|c| a[c].abs_diff(b[c]) > 12))
            .count();
        let off_pct = 100.0 * off as f64 / f64::from(W * H);
        eprintln!("{}: PSNR {p:.1} dB vs golden, {off_pct:.2}% of pixels off by more than 12", t.name);
        if p < 35.0 || off_pct > 1.0 {
            let actual = path.with_extension("actual.png");
            image::save_buffer(&actual, &got, W, H, image::ExtendedColorType::Rgba8).unwrap();
            failures.push(format!("{}: PSNR {p:.1} dB, {off_pct:.2}% pixels off (wrote {})", t.name, actual.display()));
        }
    }
    assert!(failures.is_empty(), "golden mismatch:\n{}", failures.join("\n"));
}
