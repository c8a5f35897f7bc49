//! The `tessera` command line, run as a user would: y4m output read by ffprobe,
//! PNG output, summaries, previews (`--frame`, `--frames`) billed as the frames
//! they deliver, and exit code 2 with a message for bad input.

use std::process::Output;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::json;
use tessera_metering::price::{quote, QuoteRequest};
use tessera_metering::{EventKind, Pass};

use crate::util::{cents_per_frame_book, frame_md5s, http, psnr, render_rgba, rt, tessera, Server, TestStore};

fn run(args: &[&str]) -> Output {
    tessera().args(args).output().expect("tessera runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_spec(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn y4m_clip_is_read_by_ffprobe_with_the_specs_format() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "clip.json",
        r#"{"template": "dunes", "resolution": {"width": 192, "height": 108}, "fps": 24, "duration_s": 0.5,
            "tiles": {"cols": 2, "rows": 2, "overlap_px": 16}}"#,
    );
    let out = dir.path().join("clip.y4m");
    let o = run(&["render", &spec, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "render failed: {}", stderr(&o));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("12 frames 192x108 of dunes@1"), "summary: {summary}");
    assert!(summary.contains("4 tiles (2x2, 16 px overlap)") && summary.contains("GPU render"), "summary: {summary}");

    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries"])
        .arg("stream=width,height,r_frame_rate,nb_read_frames")
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(&out)
        .output()
        .expect("ffprobe is installed (apt-get install ffmpeg)");
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&probe.stderr));
    for want in ["width=192", "height=108", "r_frame_rate=24/1", "nb_read_frames=12"] {
        assert!(text.lines().any(|l| l == want), "ffprobe says:\n{text}\nmissing {want}");
    }
    // ffmpeg decodes every frame without complaint.
    let decode = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&out)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(decode.status.success() && decode.stderr.is_empty(), "ffmpeg: {}", String::from_utf8_lossy(&decode.stderr));
}

#[test]
fn png_frame_and_untiled_override() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "frame.toml",
        "template = \"orbit\"\nresolution = { width = 128, height = 72 }\nfps = 24\nduration_s = 1.0\n[tiles]\ncols = 2\nrows = 1\noverlap_px = 16\n",
    );
    let tiled = dir.path().join("tiled.png");
    let untiled = dir.path().join("nested/untiled.png");
    let o = run(&["render", &spec, "-o", tiled.to_str().unwrap(), "--frame", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["render", &spec, "-o", untiled.to_str().unwrap(), "--frame", "5", "--tiles", "1x1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("untiled"));
    let a = image::open(&tiled).unwrap().to_rgba8();
    let b = image::open(&untiled).unwrap().to_rgba8();
    assert_eq!(a.dimensions(), (128, 72));
    assert!(crate::util::psnr(a.as_raw(), b.as_raw()) >= 50.0);
}

#[test]
fn bad_input_exits_2_with_a_message_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_spec(
        dir.path(),
        "good.json",
        r#"{"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.25}"#,
    );
    let bad = write_spec(dir.path(), "bad.json", r#"{"template": "orbit", "fps": 25}"#);
    let garbage = write_spec(dir.path(), "garbage.json", "{{{{");
    let yaml = write_spec(dir.path(), "spec.yaml", "template: orbit");
    let past_end = write_spec(
        dir.path(),
        "past.json",
        r#"{"template": "orbit", "fps": 24, "duration_s": 0.25, "frame_range": {"first": 6, "count": 1}}"#,
    );
    let out = dir.path().join("x.png");
    let out = out.to_str().unwrap();
    let clip = dir.path().join("x.y4m").to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["render", &bad, "-o", out], "fps: 25 is not an offered frame rate"),
        (vec!["render", &garbage, "-o", out], "not valid JSON"),
        (vec!["render", &yaml, "-o", out], "use .json or .toml"),
        (vec!["render", "/nonexistent/spec.json", "-o", out], "reading spec /nonexistent/spec.json"),
        (vec!["render", &good, "-o", "clip.mp4"], "unsupported output extension `mp4`"),
        (vec!["render", &good, "-o", out, "--frame", "99"], "frame 99 is past the clip's last frame 5"),
        (vec!["render", &good, "-o", out, "--frame", "6"], "--frame 6 asks for frames the clip does not have"),
        (vec!["render", &good, "-o", &clip, "--frames", "2..9"], "frames 2..9 go past the clip's last frame 5"),
        (vec!["render", &good, "-o", &clip, "--frames", "3..3"], "`3..3` holds no frame"),
        (vec!["render", &good, "-o", &clip, "--frames", "3-5"], "`3-5` is not a frame range"),
        (vec!["render", &good, "-o", &clip, "--frame", "2"], "--frame picks the frame of a single-frame output"),
        (vec!["render", &good, "-o", out, "--frames", "0..1"], "--frames is for clip outputs"),
        (vec!["render", &good, "-o", out, "--frame", "1", "--frames", "0..1"], "cannot be used with"),
        (vec!["check", &past_end], "frame_range: frame 6 is past the clip's last frame 5"),
        (vec!["render", &good, "-o", out, "--tiles", "2by2"], "not a tile plan"),
        (vec!["render", &good, "-o", out, "--tiles", "9x1"], "tile columns do not fit"),
        (vec!["render", &good, "-o", out, "--tiles", "2x1", "--overlap", "1"], "below the post-process radius"),
        (vec!["render", &good], "--output"),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (vec!["check", &bad], "fps: 25"),
    ];
    for (args, want) in cases {
        let o = run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: exit {:?}, stderr: {err}", o.status.code());
        assert!(err.contains(want), "{args:?}: stderr lacks `{want}`:\n{err}");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    }
}

#[test]
fn templates_and_check_list_the_catalog_and_defaults() {
    let o = run(&["templates", "--json"]);
    assert!(o.status.success());
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["orbit", "pedestal", "dunes"]);
    assert_eq!(list[0]["params"][0]["kind"], "color");
    let o = run(&["templates"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("orbit@2"));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pedestal.toml");
    let o = run(&["check", example]);
    assert!(o.status.success(), "{}", stderr(&o));
    let spec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(spec["template"], "pedestal@1");
    assert_eq!(spec["frames"], 72);
    assert_eq!(spec["params"]["bevel"], 0.08);
}

#[test]
fn doctor_names_the_adapter() {
    let o = run(&["doctor", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report["chosen"]["adapter"]["name"].is_string());
    let o = tessera().args(["doctor"]).env("TESSERA_ADAPTER", "no-such-gpu").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no adapter name contains `no-such-gpu`"));
}

#[test]
fn logs_written_to_a_file_carry_no_ansi_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::util::TestStore::sqlite();
    let mut s = crate::util::Server::start_on(&db, dir.path(), &[], &[]);
    s.tenant("acme", "mid");
    s.kill9();
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("INFO"), "the worker logged nothing at info level:\n{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a log file:\n{log}");
}

/// The issue's case: `tessera render SPEC -o f.png --frame 3 --tenant T` of a
/// 10 s clip at 24 fps renders and bills one frame, 1/24 s at the one-frame
/// price, in the ledger and in `/v1/usage` of a worker on the same store; the
/// PNG is frame 3 of the whole clip.
#[test]
fn one_frame_of_a_clip_is_billed_as_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (book_path, book) = cents_per_frame_book(dir.path());
    let one_frame = Decimal::from_str("0.37").unwrap();
    let second_24th = Decimal::ONE / Decimal::from(24);
    let req =
        QuoteRequest { width: 64, height: 36, fps: 24, output_seconds: second_24th, advanced: false, addons: vec![] };
    assert_eq!(quote(&book, &req).unwrap().price, one_frame, "the book's own quote of 1/24 s");

    let db = TestStore::sqlite();
    let s = Server::start_on(&db, &data, &["--price-book", &book_path], &[]);
    let key = s.tenant("acme", "mid");
    let clip = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 10,
                      "seed": 3});
    let spec = write_spec(dir.path(), "clip.json", &clip.to_string());
    let png = dir.path().join("f.png");
    let url = db.url(&data);
    let args = ["render", &spec, "-o", png.to_str().unwrap(), "--frame", "3", "--tenant", "acme"];
    let o = run(&[&args[..], &["--db", &url, "--price-book", &book_path]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(line.starts_with("1 frame (clip frames 3..4 of 240) 64x36 of orbit@2"), "summary: {line}");
    assert!(line.contains("; billed 1 frame (0.041667 s) 0.37 USD to tenant acme as job j_"), "summary: {line}");

    // The ledger: one billable output of one frame at 24 fps, priced 0.37;
    // GPU time for one frame.
    let events = rt().block_on(async { db.open(&data).await.events(&Default::default()).await.unwrap() });
    let outputs: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Output).collect();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!((outputs[0].quantity, outputs[0].fps), (1, Some(24)), "{outputs:?}");
    assert_eq!(outputs[0].amount_micros, 370_000);
    let rendered: u32 =
        events.iter().filter(|e| e.kind == EventKind::Gpu && e.pass == Some(Pass::Render)).map(|e| e.frames).sum();
    assert_eq!(rendered, 1, "GPU time was metered for {rendered} frames");

    // What the tenant sees through the API of a worker on that store.
    let auth = format!("Bearer {key}");
    let usage = http(&s.api, "GET", "/v1/usage", &[("Authorization", &auth)], b"").json();
    let seconds = second_24th.normalize().to_string();
    assert_eq!(usage["output_seconds"], seconds.as_str(), "{usage}");
    assert_eq!(usage["charges"], one_frame.to_string(), "{usage}");
    assert_eq!(usage["this_month"]["output_seconds"], seconds.as_str(), "{usage}");
    assert_eq!(usage["this_month"]["reserved_seconds"], "0", "the reservation was not released: {usage}");

    // The picture is clip frame 3 (and frame 0 looks different enough for
    // the comparison to tell them apart).
    let full = crate::util::spec(clip);
    let got = image::open(&png).unwrap().to_rgba8();
    assert_eq!(got.dimensions(), (64, 36));
    assert!(psnr(got.as_raw(), &render_rgba(&full, 3)) >= 50.0, "the PNG is not frame 3 of the clip");
    assert!(psnr(got.as_raw(), &render_rgba(&full, 0)) < 50.0, "frame 0 matches frame 3 too");
}

/// `--frames FIRST..END` writes that part of the clip: the same JPEG frames
/// as the whole clip's, nothing else.
#[test]
fn a_clip_preview_holds_the_clips_frames() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "clip.json",
        r#"{"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.5}"#,
    );
    let (whole, part) = (dir.path().join("whole.avi"), dir.path().join("part.avi"));
    let o = run(&["render", &spec, "-o", whole.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["render", &spec, "-o", part.to_str().unwrap(), "--frames", "5..8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(line.starts_with("3 frames (clip frames 5..8 of 12) 64x36"), "summary: {line}");
    let (whole, part) = (frame_md5s(&whole), frame_md5s(&part));
    assert_eq!(whole.len(), 12);
    assert_eq!(part, whole[5..8], "the preview's frames are not clip frames 5..8");
    assert_ne!(part, whole[..3], "the clip's first frames look like frames 5..8: the test could not fail");
}

/// `--stats FILE.json`: the render's figures, consistent with the clip written.
#[test]
fn render_stats_describe_the_clip_written() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "clip.json",
        r#"{"template": "pedestal", "resolution": {"width": 96, "height": 54}, "fps": 24, "duration_s": 0.25,
            "tiles": {"cols": 2, "rows": 1, "overlap_px": 16}}"#,
    );
    let (avi, stats) = (dir.path().join("c.avi"), dir.path().join("stats.json"));
    let o = run(&["render", &spec, "-o", avi.to_str().unwrap(), "--stats", stats.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!((s["frames"].as_u64(), s["width"].as_u64(), s["height"].as_u64()), (Some(6), Some(96), Some(54)));
    assert_eq!((s["tiles"].as_u64(), s["entropy"].as_str()), (Some(2), Some("gpu")));
    let in_flight = s["frames_in_flight"].as_u64().unwrap();
    assert!((1..=3).contains(&in_flight), "{s}");
    let g = &s["gpu_ns"];
    let passes: u64 = ["render", "stitch", "encode"].iter().map(|p| g[p].as_u64().unwrap()).sum();
    assert!(passes > 0 && g["total"].as_u64() == Some(passes), "{g}");
    let h = &s["host_ns"];
    for stage in ["record", "wait", "readback", "entropy", "mux"] {
        assert!(h[stage].as_u64().unwrap() > 0, "host stage {stage} took no time: {h}");
    }
    assert!(h["ledger"].is_u64(), "{h}");
    let busy: u64 = ["record", "readback", "entropy", "mux", "ledger"].iter().map(|p| h[p].as_u64().unwrap()).sum();
    assert_eq!(h["busy"].as_u64(), Some(busy));
    // The frames written are the clip's packets, as ffprobe reads them.
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_entries", "packet=size", "-of", "csv=p=0"])
        .arg(&avi)
        .output()
        .expect("ffprobe is installed");
    let sizes: Vec<u64> = String::from_utf8_lossy(&probe.stdout).lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(sizes.len(), 6);
    assert_eq!(s["output_bytes"].as_u64(), Some(sizes.iter().sum::<u64>()), "{s}");
    assert!(s["readback_bytes"].as_u64().unwrap() > 0);
    let (wall, frame_loop) = (s["wall_ns"].as_u64().unwrap(), s["loop_ns"].as_u64().unwrap());
    assert!(frame_loop > 0 && frame_loop <= wall, "{s}");
    // More frames in flight than the ring holds is a usage error.
    let o = run(&["render", &spec, "-o", avi.to_str().unwrap(), "--frames-in-flight", "4"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--frames-in-flight"), "{}", stderr(&o));
}

/// `tessera health` against a live worker: 0 on its 200s with the status on
/// stdout; a path it answers with a 404 is exit 1 naming the status.
#[test]
fn health_passes_on_a_ready_worker_and_fails_on_a_non_2xx() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(&TestStore::sqlite(), dir.path(), &[], &[]);
    for path in ["/readyz", "/healthz"] {
        let url = format!("http://{}{path}", s.api);
        let o = run(&["health", "--url", &url]);
        assert_eq!(o.status.code(), Some(0), "{url}: {}\n{}", stderr(&o), s.log_tail(20));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("{url}: 200 OK"));
    }
    let url = format!("http://{}/no-such-page", s.api);
    let o = run(&["health", "--url", &url]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with(&format!("error: {url} answered 404 Not Found")), "{err}");
    assert_eq!(err.lines().count(), 1, "more than one line: {err}");
}

/// Nothing listening, or something that accepts and never answers: exit 1
/// with one line saying which, within the timeout.
#[test]
fn health_fails_with_one_line_on_a_closed_port_or_a_silent_server() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}/readyz");
    let o = run(&["health", "--url", &url]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with(&format!("error: {url}: connecting to {closed}: ")), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert_eq!(err.lines().count(), 1, "more than one line: {err}");

    // Accepted by the kernel (the backlog), never read: no answer in time.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/readyz", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let o = run(&["health", "--url", &url, "--timeout-s", "0.5"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no answer within 0.5 s"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    drop(silent);
}

/// A URL the probe cannot use is a usage error (exit 2) that says why.
#[test]
fn health_refuses_a_url_it_cannot_probe() {
    let cases = [
        ("https://127.0.0.1:8080/readyz", "https is not supported"),
        ("127.0.0.1:8080/readyz", "is not a URL"),
        ("http://:8080/readyz", "names no host"),
        ("http://127.0.0.1:80800/readyz", "`80800` is not a port"),
    ];
    for (url, want) in cases {
        let o = run(&["health", "--url", url]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains(want), "{url}: stderr lacks `{want}`: {err}");
    }
    let o = run(&["health", "--timeout-s", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--timeout-s must be a positive number"), "{}", stderr(&o));
}
