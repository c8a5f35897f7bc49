//! The same spec renders to the same bytes, alone or sharing a submission with
//! other jobs, and the seed and time matter.

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

#[test]
fn frames_of_several_jobs_in_one_submission_match_their_solo_renders() {
    use tessera_worker::gpu::GpuContext;
    use tessera_worker::render::{FrameRenderer, Readback};
    // Grouping needs per-job timestamp queries; lavapipe offers them (untrusted for billing).
    let ctx = GpuContext::open_timed(true).unwrap();
    if !ctx.timestamps {
        eprintln!("adapter has no timestamp queries; grouping never runs on it");
        return;
    }
    let specs = [
        (small_spec("orbit", 96, 54, 2, 1, 16), 0u32, true),
        (small_spec("pedestal", 64, 48, 1, 1, 0), 5, false),
        (small_spec("orbit", 80, 72, 1, 2, 16), 9, false),
    ];
    let mut grouped: Vec<FrameRenderer<'_>> =
        specs.iter().map(|(s, _, _)| FrameRenderer::new(&ctx, s.render_plan()).unwrap()).collect();
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    for (r, (_, frame, sample)) in grouped.iter_mut().zip(&specs) {
        r.record_frame(&mut encoder, *frame, Readback::Jpeg, *sample).unwrap();
    }
    let submission = ctx.queue.submit([encoder.finish()]);
    for (r, (s, frame, sample)) in grouped.iter_mut().zip(&specs) {
        let shared = r.collect_frame(&submission).unwrap();
        let alone =
            FrameRenderer::new(&ctx, s.render_plan()).unwrap().render_sampled(*frame, Readback::Jpeg, *sample).unwrap();
        assert!(
            shared.frame.data == alone.frame.data,
            "{}: the grouped JPEG differs from the solo one",
            s.template.id()
        );
        assert_eq!(shared.rgba, alone.rgba);
        assert_eq!(shared.rgba.is_some(), *sample);
        assert_eq!(shared.frame.nonzero_ac, alone.frame.nonzero_ac);
        // Each job's passes carry their own timestamps.
        for pass in tessera_metering::Pass::ALL {
            assert!(shared.frame.times.get(pass) > 0, "{}: no {pass:?} time", s.template.id());
        }
    }
    // Collecting twice, or recording on a host-timed renderer, is an error, not a panic.
    assert!(grouped[0].collect_frame(&submission).is_err());
    let host = GpuContext::open_timed(false).unwrap();
    let mut r = FrameRenderer::new(&host, specs[1].0.render_plan()).unwrap();
    let mut encoder = host.device.create_command_encoder(&Default::default());
    let err = r.record_frame(&mut encoder, 0, Readback::Jpeg, false).unwrap_err();
    assert!(err.to_string().contains("GPU timestamps"), "{err}");
}

/// Frames in flight change when the host reads a frame back, not what the
/// GPU renders: a clip is the same bytes one, two and three frames deep, and
/// the same as where passes are timed on the host (one deep).
#[test]
fn a_clip_is_the_same_bytes_at_one_two_and_three_frames_in_flight() {
    use tessera_worker::encode::mux;
    use tessera_worker::gpu::GpuContext;
    use tessera_worker::render::clip::render_clip;
    let dir = tempfile::tempdir().unwrap();
    let s = spec(serde_json::json!({
        "template": "dunes", "resolution": {"width": 128, "height": 72}, "fps": 24, "duration_s": 0.5,
        "tiles": {"cols": 2, "rows": 2, "overlap_px": 16}, "seed": 4,
    }));
    let render = |ctx: &GpuContext, depth: u32| {
        let path = dir.path().join(format!("d{depth}-{}.avi", ctx.timestamps));
        let mut muxer = mux::for_path(&path).unwrap();
        let summary = render_clip(ctx, &s, muxer.as_mut(), depth, &mut |_, _| Ok(())).unwrap();
        (summary, std::fs::read(&path).unwrap())
    };
    let timed = GpuContext::open_timed(true).unwrap();
    let (one, want) = render(&timed, 1);
    assert_eq!((one.frames, one.frames_in_flight), (12, 1));
    for depth in [2, 3] {
        let (summary, got) = render(&timed, depth);
        assert_eq!(summary.frames_in_flight, depth);
        assert_eq!(summary.output_bytes, one.output_bytes);
        assert!(got == want, "{depth} frames in flight wrote another clip than one");
    }
    let host = GpuContext::open_timed(false).unwrap();
    let (summary, got) = render(&host, 3);
    assert_eq!(summary.frames_in_flight, 1, "host-timed passes need the GPU to themselves");
    assert!(got == want, "the host-timed render wrote another clip");
    // The frames differ from each other: a ring that repeated a slot's frame would show.
    let frames = crate::util::frame_md5s(&dir.path().join("d3-true.avi"));
    assert_eq!(frames.iter().collect::<std::collections::HashSet<_>>().len(), frames.len());
}

/// The ring's steps as a render group takes them: a frame recorded again
/// before it is submitted (a failed shared submit, retried alone) keeps its
/// slot; a full ring refuses another frame; a frame never submitted is
/// forgotten; frames come back in the order taken, each the frame rendered alone.
#[test]
fn a_frame_ring_steps_keep_their_slots_and_order() {
    use tessera_worker::gpu::GpuContext;
    use tessera_worker::render::{FrameRenderer, FrameRing, Readback, RenderError};
    let ctx = GpuContext::open_timed(true).unwrap();
    let s = small_spec("pedestal", 96, 54, 1, 1, 0);
    let alone =
        |i: u32| FrameRenderer::new(&ctx, s.render_plan()).unwrap().render_frame(i, Readback::Jpeg).unwrap().data;
    let mut ring = FrameRing::new(&ctx, s.render_plan(), 2, Readback::Jpeg).unwrap();
    assert_eq!(ring.depth(), 2);
    let _first_try = ring.record(0, false).unwrap(); // its submit "failed": dropped
    let again = ring.record(0, false).unwrap(); // recorded again: the same slot
    assert_eq!(ring.in_flight(), 1);
    ring.submitted(&ctx.queue.submit([again]));
    let second = ring.record(1, false).unwrap();
    ring.submitted(&ctx.queue.submit([second]));
    assert!(ring.is_full());
    assert!(matches!(ring.record(2, false), Err(RenderError::RingFull)));
    let (i0, f0) = ring.collect().unwrap().unwrap();
    let _unsent = ring.record(2, false).unwrap();
    ring.drop_unsubmitted();
    assert_eq!(ring.in_flight(), 1);
    let (i1, f1) = ring.collect().unwrap().unwrap();
    assert!(ring.collect().is_none());
    assert_eq!((i0, i1), (0, 1));
    assert!(f0.frame.data == alone(0) && f1.frame.data == alone(1), "a ring frame differs from its solo render");
    assert!(f0.frame.data != f1.frame.data);
}
