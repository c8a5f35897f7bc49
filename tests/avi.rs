//! MJPEG AVI: ffprobe reads what `tessera render -o clip.avi` writes, and clips
//! past 1 GiB stay valid through the OpenDML extension.

use std::path::Path;
use std::process::Command;

use tessera_worker::encode::jpeg::{encode_coefficients, McuGrid, COEFFS_PER_MCU};
use tessera_worker::encode::mux::{AviMuxer, Muxer, StreamInfo};

use crate::util::tessera;

fn probe(path: &Path, entries: &str, count: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", count, "-select_streams", "v:0", "-show_entries", entries])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("ffprobe is installed");
    assert!(out.status.success(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_lines(text: &str, want: &[&str]) {
    for w in want {
        assert!(text.lines().any(|l| l == *w), "ffprobe says:\n{text}\nmissing {w}");
    }
}

fn ffmpeg_decode_is_silent(path: &Path) {
    let out = Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(path).args(["-f", "null", "-"]).output().unwrap();
    assert!(out.status.success(), "ffmpeg failed");
    assert!(out.stderr.is_empty(), "ffmpeg printed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn rendered_avi_is_mjpeg_with_the_specs_format() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("clip.json");
    std::fs::write(
        &spec,
        r#"{"template": "orbit", "resolution": {"width": 250, "height": 142}, "fps": 30, "duration_s": 0.5,
            "tiles": {"cols": 2, "rows": 2, "overlap_px": 16}, "quality": 85}"#,
    )
    .unwrap();
    let out = dir.path().join("clip.avi");
    let o = tessera().args(["render", spec.to_str().unwrap(), "-o", out.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("encode") && summary.contains("entropy coding on the GPU"), "{summary}");
    let text = probe(&out, "stream=codec_name,width,height,r_frame_rate,nb_read_frames,duration", "-count_frames");
    assert_lines(
        &text,
        &["codec_name=mjpeg", "width=250", "height=142", "r_frame_rate=30/1", "nb_read_frames=15", "duration=0.500000"],
    );
    ffmpeg_decode_is_silent(&out);
}

/// A frame of about `approx_bytes` (random coefficients code to high entropy).
fn synthetic_jpeg(grid: McuGrid, seed: u32) -> Vec<u8> {
    let mut state = seed;
    let coeffs: Vec<i16> = (0..grid.mcu_count() * COEFFS_PER_MCU)
        .map(|i| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let range = if i % 64 < 12 { 200 } else { 2 };
            ((state >> 8) % (2 * range + 1)) as i16 - range as i16
        })
        .collect();
    encode_coefficients(&coeffs, grid, 90)
}

fn write_clip(path: &Path, grid: McuGrid, frames: u32, riff_limit: u64) {
    let frame_a = synthetic_jpeg(grid, 1);
    let frame_b = synthetic_jpeg(grid, 2);
    let mut mux = AviMuxer::with_riff_limit(path, riff_limit);
    mux.write_header(&StreamInfo { width: grid.width, height: grid.height, fps: 24, frames }).unwrap();
    for i in 0..frames {
        mux.write_frame(if i % 2 == 0 { &frame_a } else { &frame_b }).unwrap();
    }
    mux.finish().unwrap();
}

fn count_riffs(path: &Path) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    let (mut pos, len, mut n) = (0u64, f.metadata().unwrap().len(), 0);
    while pos + 12 <= len {
        let mut head = [0u8; 12];
        f.seek(SeekFrom::Start(pos)).unwrap();
        f.read_exact(&mut head).unwrap();
        assert_eq!(&head[0..4], b"RIFF", "chunk at {pos} is not a RIFF");
        n += 1;
        pos += 8 + u64::from(u32::from_le_bytes(head[4..8].try_into().unwrap()));
    }
    assert_eq!(pos, len, "RIFF sizes do not add up to the file size");
    n
}

#[test]
fn opendml_riffs_stay_valid_with_a_small_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.avi");
    write_clip(&path, McuGrid::new(64, 48), 40, 64 << 10);
    assert!(count_riffs(&path) > 2, "expected several AVIX RIFFs");
    let text = probe(&path, "stream=nb_read_frames,r_frame_rate", "-count_frames");
    assert_lines(&text, &["nb_read_frames=40", "r_frame_rate=24/1"]);
    ffmpeg_decode_is_silent(&path);
}

#[test]
fn clips_past_one_gib_keep_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.avi");
    let grid = McuGrid::new(1920, 1088);
    let frame = synthetic_jpeg(grid, 1).len() as u64;
    let frames = ((1u64 << 30) / frame + 40) as u32; // past 1 GiB
    write_clip(&path, grid, frames, tessera_worker::encode::mux::RIFF_LIMIT);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 1 << 30, "clip is only {size} bytes");
    assert!(count_riffs(&path) >= 2, "a clip past 1 GiB needs an AVIX RIFF");
    let text = probe(&path, "stream=nb_read_packets", "-count_packets");
    assert_lines(&text, &[&format!("nb_read_packets={frames}")]);
    let text = probe(&path, "stream=nb_read_frames", "-count_frames");
    assert_lines(&text, &[&format!("nb_read_frames={frames}")]);
}

/// Writes `frames` alternating frames (as [`write_clip`]) into segments of
/// `sizes` frames each; returns each segment with its frame count.
fn write_segments(dir: &Path, grid: McuGrid, sizes: &[u32]) -> Vec<(std::path::PathBuf, u32)> {
    use tessera_worker::encode::mux::SegmentWriter;
    let frames = [synthetic_jpeg(grid, 1), synthetic_jpeg(grid, 2)];
    let mut i = 0u32;
    sizes
        .iter()
        .enumerate()
        .map(|(n, &size)| {
            let path = dir.join(format!("c{n}.seg"));
            let mut seg = SegmentWriter::new(&path);
            seg.write_header(&StreamInfo { width: grid.width, height: grid.height, fps: 24, frames: size }).unwrap();
            for _ in 0..size {
                seg.write_frame(&frames[(i % 2) as usize]).unwrap();
                i += 1;
            }
            seg.finish().unwrap();
            (path, size)
        })
        .collect()
}

fn sha256_of(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    hex::encode(h.finalize())
}

#[test]
fn joined_segments_are_the_clip_written_in_one_pass_even_past_one_gib() {
    use tessera_worker::encode::mux::segment::join;
    let dir = tempfile::tempdir().unwrap();
    let grid = McuGrid::new(1920, 1088);
    let frame = synthetic_jpeg(grid, 1).len() as u64;
    let frames = ((1u64 << 30) / frame + 40) as u32; // past 1 GiB: the AVIX RIFF starts inside a segment
    let sizes = [frames / 3, frames / 3, frames - 2 * (frames / 3)];
    let segments = write_segments(dir.path(), grid, &sizes);
    let joined = dir.path().join("joined.avi");
    let info = StreamInfo { width: grid.width, height: grid.height, fps: 24, frames };
    let mut seen = 0;
    let n = join(&segments, &joined, info, tessera_worker::encode::mux::RIFF_LIMIT, |_, _| seen += 1).unwrap();
    assert_eq!((n, seen), (frames, frames));
    for (path, _) in &segments {
        std::fs::remove_file(path).unwrap();
    }
    let whole = dir.path().join("whole.avi");
    write_clip(&whole, grid, frames, tessera_worker::encode::mux::RIFF_LIMIT);
    assert!(std::fs::metadata(&joined).unwrap().len() > 1 << 30);
    assert_eq!(sha256_of(&joined), sha256_of(&whole), "the joined clip differs from the one-pass clip");
    std::fs::remove_file(&whole).unwrap();
    assert!(count_riffs(&joined) >= 2);
    let text = probe(&joined, "stream=nb_read_packets", "-count_packets");
    assert_lines(&text, &[&format!("nb_read_packets={frames}")]);
}

#[test]
fn a_damaged_or_short_segment_is_refused() {
    use tessera_worker::encode::mux::segment::{join, SegmentError};
    let dir = tempfile::tempdir().unwrap();
    let grid = McuGrid::new(64, 48);
    let mut segments = write_segments(dir.path(), grid, &[4, 3]);
    let info = StreamInfo { width: 64, height: 48, fps: 24, frames: 7 };
    let out = dir.path().join("out.avi");
    // Small RIFFs: the join's OpenDML index spans several RIFFs.
    join(&segments, &out, info, 64 << 10, |_, _| {}).unwrap();
    assert_lines(&probe(&out, "stream=nb_read_frames", "-count_frames"), &["nb_read_frames=7"]);
    ffmpeg_decode_is_silent(&out);
    segments[1].1 = 4;
    let short = join(&segments, &out, info, 64 << 10, |_, _| {}).unwrap_err();
    assert!(short.to_string().contains("holds 3 frames, its chunk rendered 4"), "{short}");
    let bytes = std::fs::read(&segments[0].0).unwrap();
    std::fs::write(&segments[0].0, &bytes[..bytes.len() - 10]).unwrap();
    let cut = join(&segments, &out, info, 64 << 10, |_, _| {}).unwrap_err();
    assert!(matches!(cut, SegmentError::Damaged { .. }), "{cut}");
}
