//! The GPU JPEG encoder: frames decode with two independent decoders (the
//! `image` crate's zune-jpeg and ffmpeg), quality behaves, odd sizes work, and it
//! holds up against the `jpeg-encoder` crate as a CPU reference; the GPU
//! entropy coder writes the CPU coder's bytes, byte for byte.

use std::process::Command;

use tessera_worker::encode::jpeg::gpu_entropy::{CodedScan, Entropy, GpuEntropy};
use tessera_worker::encode::jpeg::{encode_coefficients, huffman, McuGrid, COEFFS_PER_MCU, PIECE_MCUS};
use tessera_worker::render::{FrameRenderer, Readback};

use crate::util::{ctx, psnr, spec};

fn frame_spec(w: u32, h: u32, quality: u8) -> tessera_worker::spec::JobSpec {
    let tiles = if w.min(h) >= 64 { 2 } else { 1 };
    spec(serde_json::json!({
        "template": "pedestal", "resolution": {"width": w, "height": h}, "fps": 24,
        "tiles": {"cols": tiles, "rows": tiles, "overlap_px": 16}, "quality": quality, "seed": 5,
    }))
}

/// The rendered RGBA and the GPU JPEG of the same frame.
fn rgba_and_jpeg(w: u32, h: u32, quality: u8) -> (Vec<u8>, Vec<u8>) {
    let mut r = FrameRenderer::new(ctx(), frame_spec(w, h, quality).render_plan()).unwrap();
    let rgba = r.render_frame(6, Readback::Rgba8).unwrap().data;
    let jpeg = r.render_frame(6, Readback::Jpeg).unwrap();
    assert!(jpeg.times.encode_ns > 0, "the encode pass was not timed");
    (rgba, jpeg.data)
}

fn decode_image(jpeg: &[u8]) -> Vec<u8> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).expect("image/zune-jpeg decodes");
    img.to_rgba8().into_raw()
}

/// Decodes with ffmpeg: first alone at trace level, failing on any warning or
/// error the decoder prints and on a scan that does not end at the EOI marker;
/// then converted to RGBA for comparison (at error level, since swscale warns
/// about the JPEG-range pixel format itself, not about the stream).
fn decode_ffmpeg(jpeg: &[u8], w: u32, h: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.jpg");
    std::fs::write(&path, jpeg).unwrap();
    assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9], "the file does not end in EOI");
    let (ok, log) = ffmpeg_trace(&path);
    assert!(ok, "ffmpeg failed: {log}");
    let problems = ffmpeg_decoder_problems(&log);
    assert!(problems.is_empty(), "ffmpeg: {}", problems.join("; "));
    decode_rgba(&path, w, h)
}

/// Decodes the file to nothing with ffmpeg at `level+trace`: whether it
/// exited 0, and its log.
fn ffmpeg_trace(path: &std::path::Path) -> (bool, String) {
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "level+trace", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg is installed");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What ffmpeg's MJPEG decoders said at warning level or above, from a
/// `level+trace` log. ffmpeg opens a decoder to probe the stream and another
/// to decode it (one context address each). The probe skips the scan and, for
/// a scan with at most one stuffed byte, steps past the EOI marker and warns
/// "EOI missing, emulating": ffmpeg 5.1 does so for files of its own MJPEG
/// encoder too (seen with `-c:v mjpeg` at 34x18). That one message from a
/// decoder that decoded no scan is not the stream's fault; anything else is,
/// and so is a decoder that decoded the scan without reaching EOI.
fn ffmpeg_decoder_problems(log: &str) -> Vec<String> {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Decoder<'a> {
        decoded_scan: bool,
        reached_eoi: bool,
        said: Vec<&'a str>,
    }
    let mut decoders: BTreeMap<&str, Decoder<'_>> = BTreeMap::new();
    let mut problems = Vec::new();
    for line in log.lines() {
        // "[mjpeg @ 0x55…] [debug] marker=d9 …", or "[error] …" without a context.
        let (context, rest) = match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
            Some((ctx, rest)) if ctx.contains(" @ ") => (Some(ctx), rest),
            _ => (None, line),
        };
        let Some((level, message)) = rest.strip_prefix('[').and_then(|r| r.split_once("] ")) else {
            continue;
        };
        let decoder = context.and_then(|c| c.strip_prefix("mjpeg @ "));
        let is_problem = matches!(level, "warning" | "error" | "fatal" | "panic");
        match decoder {
            Some(addr) => {
                let d = decoders.entry(addr).or_default();
                d.decoded_scan |= message.starts_with("component: ");
                d.reached_eoi |= message.starts_with("marker=d9");
                if is_problem {
                    d.said.push(message);
                }
            }
            None if is_problem => problems.push(line.to_string()),
            None => {}
        }
    }
    for (addr, d) in &decoders {
        if d.decoded_scan && !d.reached_eoi {
            problems.push(format!("decoder {addr} decoded the scan but never reached EOI"));
        }
        for said in &d.said {
            let probe_quirk = !d.decoded_scan && *said == "EOI missing, emulating";
            if !probe_quirk {
                problems.push(format!("decoder {addr}: {said}"));
            }
        }
    }
    if !decoders.values().any(|d| d.decoded_scan) {
        problems.push("no decoder decoded the scan".into());
    }
    problems
}

#[test]
fn the_ffmpeg_check_passes_the_probe_quirk_and_fails_a_broken_scan() {
    let dir = tempfile::tempdir().unwrap();
    let check = |jpeg: &[u8]| {
        let path = dir.path().join("c.jpg");
        std::fs::write(&path, jpeg).unwrap();
        ffmpeg_decoder_problems(&ffmpeg_trace(&path).1)
    };
    // ffmpeg's own encoder: a 34x18 frame (a fixed seed: the same file on
    // every run) whose scan has no stuffed byte, the case in which ffmpeg's
    // probe warns.
    let reference = dir.path().join("ref.jpg");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "cellauto=s=34x18:rule=2:seed=7,format=yuvj420p"])
        .args(["-frames:v", "1", "-q:v", "12"])
        .arg(&reference)
        .status()
        .unwrap();
    assert!(made.success());
    let good = std::fs::read(&reference).unwrap();
    assert_eq!(check(&good), Vec::<String>::new());
    assert_eq!(good.windows(2).filter(|w| w == &[0xFF, 0x00]).count(), 0, "the fixed seed gave another file");
    // The same file cut half-way through its scan: the decoder warns or errs.
    let sos = good.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let mut cut = good[..sos + (good.len() - sos) / 2].to_vec();
    cut.extend_from_slice(&[0xFF, 0xD9]);
    assert!(!check(&cut).is_empty(), "a truncated scan passed the check");
}

/// The file as RGBA through ffmpeg, which must print no error.
fn decode_rgba(path: &std::path::Path, w: u32, h: u32) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-sws_flags", "bicubic+accurate_rnd+full_chroma_int"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgba", "-"])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), (w * h * 4) as usize, "ffmpeg decoded a frame of another size");
    out.stdout
}

#[test]
fn gpu_jpeg_decodes_everywhere_and_psnr_rises_with_quality() {
    // 640x360: at thumbnail sizes 4:2:0 chroma alone caps PSNR near 36 dB on this
    // scene's saturated edges, for any encoder (jpeg-encoder scores 34.7 at 320x176).
    let (w, h) = (640, 360);
    let mut last = 0.0;
    for quality in [50u8, 75, 90, 95] {
        let (rgba, jpeg) = rgba_and_jpeg(w, h, quality);
        let by_image = psnr(&rgba, &decode_image(&jpeg));
        let by_ffmpeg = psnr(&rgba, &decode_ffmpeg(&jpeg, w, h));
        eprintln!("q{quality}: {} bytes, PSNR {by_image:.2} dB (zune-jpeg), {by_ffmpeg:.2} dB (ffmpeg)", jpeg.len());
        assert!(by_image > last, "q{quality}: PSNR {by_image:.2} did not rise above {last:.2}");
        assert!((by_image - by_ffmpeg).abs() < 1.0, "decoders disagree: {by_image:.2} vs {by_ffmpeg:.2}");
        if quality >= 90 {
            assert!(by_image >= 38.0, "q{quality}: PSNR {by_image:.2} dB < 38");
        }
        last = by_image;
    }
}

/// jpeg-encoder's 4:2:0 JPEG of the same pixels.
fn reference_jpeg(rgba: &[u8], w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    enc.encode(rgba, w as u16, h as u16, jpeg_encoder::ColorType::Rgba).unwrap();
    out
}

#[test]
fn sizes_that_are_not_multiples_of_16_encode_correctly() {
    // Edge MCUs repeat the last row and column; a wrong edge shows up as a PSNR
    // collapse against the CPU reference, which pads the same way.
    for (w, h) in [(1000, 562), (250, 142), (18, 16), (16, 18), (34, 50)] {
        let (rgba, jpeg) = rgba_and_jpeg(w, h, 90);
        let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (w, h));
        let p = psnr(&rgba, &img.to_rgba8().into_raw());
        let f = psnr(&rgba, &decode_ffmpeg(&jpeg, w, h));
        let r = psnr(&rgba, &decode_image(&reference_jpeg(&rgba, w, h, 90)));
        eprintln!("{w}x{h}: PSNR {p:.2} (zune-jpeg) / {f:.2} (ffmpeg), reference {r:.2} dB");
        assert!(p >= r - 0.5 && f >= r - 1.0, "{w}x{h}: PSNR {p:.2} / {f:.2} dB vs reference {r:.2}");
        if w * h >= 640 * 360 {
            assert!(p >= 38.0, "{w}x{h}: PSNR {p:.2} dB < 38");
        }
    }
}

#[test]
fn gpu_encoder_is_on_par_with_the_cpu_reference() {
    let (w, h) = (640, 360);
    let (rgba, ours) = rgba_and_jpeg(w, h, 90);
    let reference = reference_jpeg(&rgba, w, h, 90);
    let p_ours = psnr(&rgba, &decode_image(&ours));
    let p_ref = psnr(&rgba, &decode_image(&reference));
    eprintln!(
        "q90 {w}x{h}: GPU {} bytes {p_ours:.2} dB; jpeg-encoder {} bytes {p_ref:.2} dB",
        ours.len(),
        reference.len()
    );
    assert!(p_ours >= p_ref - 1.0, "GPU encoder PSNR {p_ours:.2} far below reference {p_ref:.2}");
    assert!(ours.len() as f64 <= reference.len() as f64 * 1.25, "GPU output much larger than the reference");
}

#[test]
fn restart_segments_decode_from_synthetic_coefficients() {
    // Large random coefficients exercise every Huffman category and byte
    // stuffing; 65 x 5 MCUs make five restart intervals and a short sixth.
    let grid = McuGrid::new(1040, 80);
    let mut state = 12345u32;
    let coeffs: Vec<i16> = (0..grid.mcu_count() * COEFFS_PER_MCU)
        .map(|i| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let k = i % 64;
            let range = if k == 0 {
                60
            } else if k < 10 {
                400
            } else {
                3
            };
            ((state >> 8) % (2 * range + 1)) as i16 - range as i16
        })
        .collect();
    let jpeg = encode_coefficients(&coeffs, grid, 75);
    assert_eq!(jpeg.windows(2).filter(|m| m[0] == 0xFF && (0xD0..=0xD7).contains(&m[1])).count(), 5, "RST markers");
    let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((img.width(), img.height()), (1040, 80));
    decode_ffmpeg(&jpeg, 1040, 80);
}

/// A GPU context of this file's own: the entropy tests switch its coder, which
/// must not change what other tests' frames go through.
fn entropy_ctx() -> &'static tessera_worker::gpu::GpuContext {
    static CTX: std::sync::OnceLock<tessera_worker::gpu::GpuContext> = std::sync::OnceLock::new();
    CTX.get_or_init(|| tessera_worker::gpu::GpuContext::open().expect("a GPU adapter"))
}

/// Coefficients (MCU order, zigzag) with a DC walk and ACs up to `ac` in the
/// first ten positions, small ones after: every category up to `ac`'s, long
/// zero runs (ZRL) and, at random, bytes of 0xFF to stuff.
fn synthetic_coefficients(grid: McuGrid, ac: i32, seed: u32) -> Vec<i16> {
    let mut state = seed;
    (0..grid.mcu_count() * COEFFS_PER_MCU)
        .map(|i| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let k = i % 64;
            let range = match k {
                0 => 1000,
                1..=9 => ac,
                _ if (state >> 28) < 3 => 2,
                _ => 0,
            };
            ((state >> 8) % (2 * range as u32 + 1)) as i16 - range as i16
        })
        .collect()
}

/// Codes `coeffs` with the GPU entropy passes alone (coefficients uploaded,
/// not rendered): the scan, or `None` when a piece outgrew its scratch.
fn gpu_scan(coeffs: &[i16], grid: McuGrid) -> Option<CodedScan> {
    let cap_words = PIECE_MCUS * COEFFS_PER_MCU as u32 / 2;
    gpu_scan_with_scratch(coeffs, grid, cap_words)
}

fn gpu_scan_with_scratch(coeffs: &[i16], grid: McuGrid, cap_words: u32) -> Option<CodedScan> {
    use wgpu::util::DeviceExt;
    let ctx = entropy_ctx();
    let buffer = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test coefficients"),
        contents: bytemuck::cast_slice(coeffs),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let entropy = GpuEntropy::with_scratch(ctx, &buffer, grid, cap_words);
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        entropy.record(&mut pass);
    }
    entropy.copy_out(&mut encoder);
    let submission = ctx.queue.submit([encoder.finish()]);
    entropy.read(ctx, Some(&submission)).expect("the scan reads back")
}

#[test]
fn gpu_entropy_codes_coefficients_as_the_cpu_coder_does() {
    // Odd sizes; one MCU; frames of fewer MCUs than a restart interval (63),
    // one MCU more than an interval (a one-MCU last interval), and 1080p (a
    // last interval of 32 MCUs, half its pieces empty); 4K (507 intervals,
    // the last of 16 MCUs).
    let mut stuffed = 0;
    for (w, h) in [(1, 1), (16, 16), (33, 17), (100, 50), (1000, 8), (1040, 16), (1920, 1080), (3840, 2160)] {
        let grid = McuGrid::new(w, h);
        let coeffs = synthetic_coefficients(grid, 200, w * 31 + h);
        let (tables, want) = huffman::encode_optimal(&std::sync::Arc::new(coeffs.clone()), grid, 3);
        let got = gpu_scan(&coeffs, grid).unwrap_or_else(|| panic!("{w}x{h}: the GPU coder overflowed"));
        assert!(got.dht == tables.dht(), "{w}x{h}: the GPU built other tables than the CPU");
        let nonzero: u64 = coeffs.chunks_exact(64).map(|b| b[1..].iter().filter(|&&c| c != 0).count() as u64).sum();
        assert_eq!(got.nonzero_ac, nonzero, "{w}x{h}: non-zero AC count");
        assert_eq!(got.scan.len(), want.len(), "{w}x{h}: scan length");
        assert!(got.scan == want, "{w}x{h}: the GPU scan differs from the CPU's");
        stuffed += want.windows(2).filter(|p| p == &[0xFF, 0x00]).count();
        if w * h <= 100 * 50 {
            decode_ffmpeg(&tessera_worker::encode::jpeg::jfif::write_jpeg(&got.scan, grid, 75, &got.dht), w, h);
        }
    }
    assert!(stuffed > 100, "only {stuffed} stuffed bytes exercised");
}

#[test]
fn a_segment_that_outgrows_the_gpu_coder_is_reported_not_truncated() {
    // Tables made for the frame code even every coefficient at its largest
    // magnitude in fewer bytes than its i16s; 16 bytes of scratch per
    // segment are too few for these, at any table.
    let grid = McuGrid::new(64, 32);
    let coeffs: Vec<i16> =
        (0..grid.mcu_count() * COEFFS_PER_MCU).map(|i| if i % 2 == 0 { 1023 } else { -1023 }).collect();
    assert_eq!(gpu_scan_with_scratch(&coeffs, grid, 4), None);
    // With room, the same coefficients code as on the CPU.
    let (tables, scan) = huffman::encode_optimal(&std::sync::Arc::new(coeffs.clone()), grid, 2);
    let coded = gpu_scan(&coeffs, grid).expect("room enough");
    assert!(coded.scan == scan && coded.dht == tables.dht());
}

#[test]
fn gpu_entropy_equals_the_cpu_coder_on_every_template() {
    let ctx = entropy_ctx();
    for template in ["orbit", "pedestal", "dunes"] {
        // Odd sizes, and 4K in 2x2 tiles.
        for (w, h) in [(64, 36), (34, 18), (98, 70), (3840, 2160)] {
            for quality in [50u8, 95] {
                let tiles = if w >= 1000 { 2 } else { 1 };
                let spec = spec(serde_json::json!({
                    "template": template, "resolution": {"width": w, "height": h}, "fps": 24,
                    "tiles": {"cols": tiles, "rows": tiles, "overlap_px": 16}, "quality": quality, "seed": 3,
                }));
                let mut r = FrameRenderer::new(ctx, spec.render_plan()).unwrap();
                let rgba = r.render_frame(5, Readback::Rgba8).unwrap().data;
                ctx.set_entropy(Entropy::Gpu);
                let gpu = r.encode_current(Readback::Jpeg).unwrap();
                ctx.set_entropy(Entropy::Cpu);
                let cpu = r.encode_current(Readback::Jpeg).unwrap();
                ctx.set_entropy(Entropy::Gpu);
                let case = format!("{template} {w}x{h} q{quality}");
                assert_eq!(gpu.nonzero_ac, cpu.nonzero_ac, "{case}: non-zero AC count");
                assert!(gpu.data == cpu.data, "{case}: GPU and CPU entropy coders wrote different files");
                // What both decoders see is the frame, not a stream that went astray.
                let p = psnr(&rgba, &decode_ffmpeg(&gpu.data, w, h));
                let z = psnr(&rgba, &decode_image(&gpu.data));
                let reference = psnr(&rgba, &decode_image(&reference_jpeg(&rgba, w, h, quality)));
                eprintln!(
                    "{case}: {} bytes, PSNR {p:.1} dB (ffmpeg) / {z:.1} dB (zune-jpeg), jpeg-encoder {reference:.1} dB",
                    gpu.data.len()
                );
                assert!(p >= reference - 1.0 && z >= reference - 1.0, "{case}: decoded to {p:.1} / {z:.1} dB");
            }
        }
    }
}

/// Low qualities pass the service's frame gates on every template at a
/// thumbnail size: detail left at quality 1 (the blank-frame gate counts
/// non-zero AC coefficients), PSNR rising with quality, and above the 25 dB
/// floor (`psnr_floor_db`) from quality 10 (where Annex K tables, before the
/// MPEG matrix, reached 24.5–28 dB).
#[test]
fn low_qualities_keep_detail_and_clear_the_psnr_floor_on_every_template() {
    for t in tessera_worker::render::TEMPLATES {
        let mut last = 0.0;
        for quality in [1u8, 5, 10, 20] {
            let spec = spec(serde_json::json!({
                "template": t.id(), "resolution": {"width": 160, "height": 90}, "fps": 24,
                "tiles": {"cols": 2, "rows": 2, "overlap_px": 16}, "quality": quality, "seed": 7,
            }));
            let mut r = FrameRenderer::new(ctx(), spec.render_plan()).unwrap();
            let rgba = r.render_frame(6, Readback::Rgba8).unwrap().data;
            let jpeg = r.render_frame(6, Readback::Jpeg).unwrap();
            let nonzero = jpeg.nonzero_ac.expect("JPEG frames count their AC coefficients");
            let p = psnr(&rgba, &decode_image(&jpeg.data));
            eprintln!("{} q{quality}: {} bytes, {nonzero} non-zero AC, PSNR {p:.2} dB", t.name, jpeg.data.len());
            assert!(nonzero > 0, "{} q{quality}: no detail left: the blank-frame gate would fail it", t.name);
            assert!(p > last, "{} q{quality}: PSNR {p:.2} dB did not rise above {last:.2}", t.name);
            if quality >= 10 {
                assert!(p >= 25.0, "{} q{quality}: {p:.2} dB is under the quality gate's 25 dB floor", t.name);
            }
            last = p;
        }
    }
}
