//! The same spec renders to the same bytes, and the seed and time matter.

use crate::util::{render_rgba, small_spec, spec};

#[test]
fn same_spec_gives_identical_bytes() {
    for template in ["orbit", "pedestal", "dunes"] {
        let s = small_spec(template, 192, 108, 2, 2, 16);
        let a = render_rgba(&s, 17);
        let b = render_rgba(&s, 17);
        assert!(a == b, "{template}: two renders of the same spec differ");
    }
}

#[test]
fn frames_animate_and_seeds_vary_the_scene() {
    let s = small_spec("orbit", 192, 108, 1, 1, 0);
    assert!(render_rgba(&s, 0) != render_rgba(&s, 12), "frames 0 and 12 are identical: nothing animates");
    let other_seed = spec(serde_json::json!({
        "template": "orbit", "resolution": {"width": 192, "height": 108}, "fps": 24, "seed": 8,
    }));
    assert!(render_rgba(&s, 0) != render_rgba(&other_seed, 0), "seed does not change the scene");
}

#[test]
fn pipeline_cache_persists_across_contexts_and_ignores_corruption() {
    use tessera_worker::gpu::GpuContext;
    use tessera_worker::render::{FrameRenderer, Readback};
    let dir = tempfile::tempdir().unwrap();
    let s = small_spec("pedestal", 96, 54, 1, 1, 0);
    let render = |ctx: &GpuContext| {
        FrameRenderer::new(ctx, s.render_plan()).unwrap().render_frame(3, Readback::Rgba8).unwrap().data
    };
    let first = GpuContext::open().unwrap();
    if !first.enable_disk_pipeline_cache(dir.path()) {
        eprintln!("adapter has no PIPELINE_CACHE; nothing to test");
        return;
    }
    let want = render(&first);
    assert!(first.save_pipeline_cache().unwrap(), "nothing was saved");
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
    let data = files.iter().find(|p| p.extension().is_none_or(|e| e != "sha256")).expect("cache file").clone();
    assert!(std::fs::metadata(&data).unwrap().len() > 0);
    // A second process loads it and renders the same bytes.
    let second = GpuContext::open().unwrap();
    assert!(second.enable_disk_pipeline_cache(dir.path()));
    assert!(render(&second) == want);
    // A corrupted cache is refused by its checksum and rendering still works.
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let third = GpuContext::open().unwrap();
    assert!(third.enable_disk_pipeline_cache(dir.path()));
    assert!(render(&third) == want);
}
