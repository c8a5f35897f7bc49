//! The GPU YUV 4:2:0 conversion matches its CPU reference.

use tessera_worker::encode::yuv::rgba_to_i420;
use tessera_worker::render::{FrameRenderer, Readback};

use crate::util::{ctx, small_spec};

#[test]
fn gpu_i420_matches_cpu_conversion_of_the_same_frame() {
    let spec = small_spec("orbit", 200, 114, 2, 2, 16);
    let mut r = FrameRenderer::new(ctx(), spec.render_plan()).unwrap();
    let rgba = r.render_frame(4, Readback::Rgba8).unwrap().data;
    let yuv = r.render_frame(4, Readback::Yuv420).unwrap();
    let want = rgba_to_i420(&rgba, 200, 114);
    assert_eq!(yuv.data.len(), want.len());
    let worst = yuv.data.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "GPU and CPU I420 differ by up to {worst}");
    assert!(yuv.times.encode_ns > 0, "the conversion pass was not timed");
}
