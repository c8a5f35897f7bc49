//! One clip over many GPUs: three `tessera serve` workers on one PostgreSQL
//! and one shared data directory render a clip in chunks of 24 frames; the
//! worker holding a running chunk is `kill -9`ed mid-clip. Only that chunk
//! runs again, more than one worker renders the clip, the joined AVI is the
//! same file (and the same JPEG bytes, frame by frame) as `tessera render` of
//! the spec in one piece, it decodes in ffmpeg with every frame, and the job
//! is billed once. A preview split into chunks renders each range at its
//! place in the clip.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_metering::EventKind;

use crate::util::{frame_md5s, http, rt, tessera, Server, TestStore};

const ARGS: &[&str] =
    &["--lease-s", "2", "--concurrency", "1", "--max-concurrency", "1", "--chunk-frames", "24", "--group-max", "1"];

/// Worker `n` with [`ARGS`], but for the options `extra` sets.
fn start_with(db: &TestStore, data: &Path, n: usize, extra: &[&str]) -> Server {
    let cache = data.join(format!("cache-{n}"));
    let mut args: Vec<&str> =
        ARGS.chunks(2).filter(|kv| !extra.contains(&kv[0])).flat_map(|kv| kv.iter().copied()).collect();
    args.extend(["--pipeline-cache", cache.to_str().unwrap()]);
    args.extend(extra);
    Server::start_on(db, data, &args, &[])
}

/// Waits until the registry shows `n` live workers with nothing in flight,
/// and one registry period more, so every worker has counted its peers.
fn wait_for_registry(s: &Server, n: usize) {
    let start = Instant::now();
    loop {
        let r = http(&s.api, "GET", "/v1/workers", &[("Authorization", "Bearer admin-secret")], b"").json();
        let alive = r["workers"].as_array().map_or(0, |w| w.iter().filter(|w| w["alive"] == true).count());
        if alive >= n {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the registry never showed {n} workers: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1_500));
}

fn worker_id(s: &Server) -> String {
    http(&s.api, "GET", "/readyz", &[], b"").json()["worker"].as_str().unwrap().to_string()
}

/// Job `id`'s output is, byte for byte, `tessera render` of `spec` in one piece.
fn assert_output_is_the_whole_render(s: &Server, dir: &Path, key: &str, id: &str, spec: &serde_json::Value) {
    let (file, solo) = (dir.join("spec.json"), dir.join("solo.avi"));
    std::fs::write(&file, spec.to_string()).unwrap();
    let o = tessera().args(["render", file.to_str().unwrap(), "-o", solo.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let auth = format!("Bearer {key}");
    let got = http(&s.api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth)], b"");
    assert!(got.body == std::fs::read(&solo).unwrap(), "the clip differs from the whole render");
}

#[test]
fn a_clip_in_chunks_over_three_workers_is_the_whole_render_and_survives_a_kill() {
    let Some(db) = TestStore::postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shared");
    // Room for eight attempts per worker: enough that whichever worker woke
    // first could take the whole clip, if claims did not spread.
    let spread = ["--concurrency", "8", "--max-concurrency", "8"];
    let mut fleet: Vec<Server> = (0..3).map(|n| start_with(&db, &data, n, &spread)).collect();
    let key = fleet[0].tenant("acme", "mid");
    wait_for_registry(&fleet[0], 3);
    // 144 frames: 6 ranges of 24 and a join; each worker's share is 2 ranges.
    let spec = json!({"template": "dunes", "resolution": {"width": 256, "height": 144}, "fps": 24, "duration_s": 6,
                      "tiles": {"cols": 2, "rows": 1, "overlap_px": 16}});
    let r = fleet[1].submit(&key, &spec, None);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();

    // Every range is claimed, over all three workers; a worker holding its
    // whole share with one chunk part-way is killed.
    let start_at = Instant::now();
    let mut holders = BTreeSet::new();
    let (victim, held) = loop {
        let j = fleet[0].job(&key, &id);
        let chunks = j["chunks"].as_array().unwrap().clone();
        let ranges: Vec<_> = chunks.iter().filter(|c| c["kind"] == "range").collect();
        holders.extend(ranges.iter().filter_map(|c| c["worker"].as_str().map(str::to_string)));
        let all_claimed = ranges.iter().all(|c| c["state"] == "running" || c["state"] == "done");
        let running_on = |w: &str| -> Vec<u64> {
            let on = ranges.iter().filter(|c| c["state"] == "running" && c["worker"] == w);
            on.map(|c| c["index"].as_u64().unwrap()).collect()
        };
        let candidate = ranges.iter().find(|c| {
            let n = c["frames_done"].as_u64().unwrap();
            c["state"] == "running" && (1..16).contains(&n) && running_on(c["worker"].as_str().unwrap()).len() == 2
        });
        if let (true, Some(c)) = (all_claimed, candidate) {
            let w = c["worker"].as_str().unwrap().to_string();
            break (w.clone(), running_on(&w));
        }
        assert!(start_at.elapsed() < Duration::from_secs(120), "the ranges never spread: {j}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(holders.len(), 3, "the clip's ranges did not spread over the three workers: {holders:?}");
    let victim_chunks: BTreeSet<u64> = held.into_iter().collect();
    let n = fleet.iter().position(|s| worker_id(s) == victim).expect("the victim is one of ours");
    fleet[n].kill9();
    fleet[n] = start_with(&db, &data, n, &spread);

    let done = fleet[2].wait(&key, &id, Duration::from_secs(300));
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["frames_done"], 144);
    let chunks = done["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 7, "{done}");
    // Only what the killed worker held ran again (a chunk it finished between
    // the look and the kill is done, and not run again either).
    let mut rerun = BTreeSet::new();
    for c in chunks.iter().filter(|c| c["kind"] == "range") {
        let (index, attempts) = (c["index"].as_u64().unwrap(), c["attempts"].as_u64().unwrap());
        if attempts >= 2 {
            rerun.insert(index);
        }
        assert_eq!(c["state"], "done");
    }
    assert!(
        !rerun.is_empty() && rerun.is_subset(&victim_chunks),
        "ran again: {rerun:?}, the killed worker held {victim_chunks:?}: {done}"
    );
    let workers: BTreeSet<&str> = chunks.iter().map(|c| c["worker"].as_str().unwrap()).collect();
    assert!(workers.len() >= 2, "one worker rendered every chunk: {workers:?}");

    // The same spec rendered in one piece by `tessera render`.
    let (file, solo) = (dir.path().join("spec.json"), dir.path().join("solo.avi"));
    std::fs::write(&file, spec.to_string()).unwrap();
    let o = tessera().args(["render", file.to_str().unwrap(), "-o", solo.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let auth = format!("Bearer {key}");
    let got = http(&fleet[0].api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth)], b"");
    assert_eq!(got.status, 200);
    let joined = dir.path().join("joined.avi");
    std::fs::write(&joined, &got.body).unwrap();
    let (a, b) = (frame_md5s(&joined), frame_md5s(&solo));
    assert_eq!(a.len(), 144, "ffmpeg reads {} frames", a.len());
    assert_eq!(a, b, "a frame of the chunked clip differs from the whole render");
    assert!(got.body == std::fs::read(&solo).unwrap(), "the joined file differs from the whole render");
    let decode = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&joined)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(decode.status.success() && decode.stderr.is_empty(), "{}", String::from_utf8_lossy(&decode.stderr));

    // The sidecar lists the chunks with their workers and GPU time.
    let meta = http(&fleet[1].api, "GET", &format!("/v1/jobs/{id}/metadata"), &[("Authorization", &auth)], b"");
    let meta = meta.json();
    let listed = meta["chunks"].as_array().unwrap_or_else(|| panic!("no chunks in the sidecar: {meta}"));
    assert_eq!(listed.len(), 7);
    let listed_workers: BTreeSet<&str> = listed.iter().filter_map(|c| c["worker"].as_str()).collect();
    assert!(listed_workers.len() >= 2, "{meta}");
    let ns =
        |v: &serde_json::Value| -> u64 { ["render", "stitch", "encode"].iter().map(|p| v[p].as_u64().unwrap()).sum() };
    let per_chunk: u64 = listed.iter().map(|c| ns(&c["usage_ns"])).sum();
    assert!(listed[..6].iter().all(|c| ns(&c["usage_ns"]) > 0), "{meta}");

    // Billed once, at the join; the job's GPU time is its chunks' sum.
    // One runtime for the store: its pool lives as long as the runtime.
    let rt = rt();
    let store = rt.block_on(db.open(&data));
    let events = rt.block_on(store.events(&Default::default())).unwrap();
    let outputs: Vec<_> = events.iter().filter(|e| e.job_id == id && e.kind == EventKind::Output).collect();
    assert_eq!(outputs.len(), 1, "billed {} times", outputs.len());
    assert_eq!(outputs[0].quantity, 144);
    let gpu: i64 = events.iter().filter(|e| e.job_id == id && e.kind == EventKind::Gpu).map(|e| e.quantity).sum();
    // Every GPU event id names its chunk: exactly-once across chunks, retries and workers.
    let unnamed: Vec<&str> = events
        .iter()
        .filter(|e| e.job_id == id && e.kind == EventKind::Gpu && !e.id.starts_with(&format!("{id}/c")))
        .map(|e| e.id.as_str())
        .collect();
    assert!(unnamed.is_empty(), "GPU events without their chunk: {unnamed:?}");
    let by_chunk: i64 = rt.block_on(store.chunk_gpu_ns(&tessera_store::JobId::new(id.clone()))).unwrap().values().sum();
    assert_eq!(gpu, by_chunk);
    assert!(per_chunk as i64 <= gpu, "the sidecar counts more GPU time than the ledger");
    // Segments are gone once joined (a killed worker's `.seg.partial` is
    // the upkeep sweep's, two leases later).
    assert!(rt.block_on(store.segments()).unwrap().is_empty());
    let left: Vec<String> = std::fs::read_dir(data.join("clips"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert!(left.is_empty(), "segments left after the join: {left:?}");
}

/// A segment damaged on the shared volume before the join reads it: the join
/// finds it by its hash, removes it, and sends only that range back; the clip
/// is still the whole render, billed once.
#[test]
fn a_damaged_segment_is_rendered_again_not_the_clip() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestStore::sqlite();
    let s = Server::start_on(&db, dir.path(), &["--chunk-frames", "6"], &[("TESSERA_FAULTS", "damage_segment")]);
    let key = s.tenant("acme", "mid");
    // 18 frames: 3 ranges of 6 and a join.
    let spec = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.75});
    let id = s.submit(&key, &spec, None).json()["id"].as_str().unwrap().to_string();
    let done = s.wait(&key, &id, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log_tail(30));
    assert_eq!((done["failures"].as_u64(), done["interruptions"].as_u64()), (Some(0), Some(1)), "{done}");
    let attempts: Vec<u64> =
        done["chunks"].as_array().unwrap().iter().map(|c| c["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts, vec![2, 1, 1, 2], "only the damaged range (and the join) ran again: {done}");
    let errors = done["errors"].to_string();
    assert!(errors.contains("does not match its recorded hash") && errors.contains("[0]"), "{errors}");
    assert_output_is_the_whole_render(&s, dir.path(), &key, &id, &spec);
    let events = rt().block_on(async { db.open(dir.path()).await.events(&Default::default()).await.unwrap() });
    assert_eq!(events.iter().filter(|e| e.job_id == id && e.kind == EventKind::Output).count(), 1);
}

/// Frames in flight in the service: with GPU timestamps (forced on lavapipe)
/// and three frames in flight, a chunked clip's chunks and a whole clip of
/// another size render side by side in render groups, and each is the same
/// file as `tessera render` makes in one piece, one frame at a time. The
/// whole clip's sidecar says how deep its ring was.
#[test]
fn clips_rendered_three_frames_deep_in_groups_are_the_whole_render() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestStore::sqlite();
    let args = ["--chunk-frames", "5", "--frames-in-flight", "3", "--group-max", "4", "--concurrency", "4"];
    let s = Server::start_on(&db, dir.path(), &args, &[("TESSERA_TIMING", "gpu")]);
    let key = s.tenant("acme", "mid");
    // 12 frames in ranges of 5, 5 and 2, and a join; 4 frames of another size whole.
    let chunked = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.5});
    let whole = json!({"template": "orbit", "resolution": {"width": 96, "height": 54}, "fps": 24, "duration_s": 0.125});
    let ids: Vec<String> = [&chunked, &whole]
        .iter()
        .map(|spec| s.submit(&key, spec, None).json()["id"].as_str().unwrap().to_string())
        .collect();
    let auth = format!("Bearer {key}");
    for (n, (id, spec)) in ids.iter().zip([&chunked, &whole]).enumerate() {
        let done = s.wait(&key, id, Duration::from_secs(120));
        assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log_tail(30));
        let (file, solo) = (dir.path().join(format!("spec{n}.json")), dir.path().join(format!("solo{n}.avi")));
        std::fs::write(&file, spec.to_string()).unwrap();
        let o = tessera()
            .args(["render", file.to_str().unwrap(), "-o", solo.to_str().unwrap(), "--frames-in-flight", "1"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = http(&s.api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth)], b"");
        assert_eq!(got.status, 200);
        let clip = dir.path().join(format!("got{n}.avi"));
        std::fs::write(&clip, &got.body).unwrap();
        assert_eq!(frame_md5s(&clip), frame_md5s(&solo), "job {n}: a frame differs from the whole render");
        assert!(got.body == std::fs::read(&solo).unwrap(), "job {n}: the clip differs from the whole render");
    }
    let meta = http(&s.api, "GET", &format!("/v1/jobs/{}/metadata", ids[1]), &[("Authorization", &auth)], b"").json();
    assert_eq!((&meta["stats"]["frames"], &meta["stats"]["frames_in_flight"]), (&json!(3), &json!(3)), "{meta}");
}

/// A worker whose chunks run one after the other renders them all with the
/// frame ring its first chunk made: the group keeps the ring and waits for the
/// job's next chunk (a long wait here, so the test does not race the
/// scheduler). The clip is still the whole render.
#[test]
fn chunks_run_one_after_another_reuse_the_first_chunks_frame_ring() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestStore::sqlite();
    let args = ["--chunk-frames", "2", "--concurrency", "1", "--max-concurrency", "1"];
    let s = Server::start_on(&db, dir.path(), &args, &[("TESSERA_SPARE_RING_LINGER_MS", "120000")]);
    let key = s.tenant("acme", "mid");
    // 6 frames: ranges of 2, 2 and 2, then the join (which checks a frame with a ring of its own).
    let spec = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.25});
    let id = s.submit(&key, &spec, None).json()["id"].as_str().unwrap().to_string();
    let done = s.wait(&key, &id, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log_tail(30));
    assert_eq!(done["chunks"].as_array().map(Vec::len), Some(4), "{done}");
    let scrape = String::from_utf8(http(&s.metrics, "GET", "/metrics", &[], b"").body).unwrap();
    let rings = |source: &str| -> f64 {
        let name = format!("tessera_frame_rings_total{{source=\"{source}\"}} ");
        scrape.lines().find_map(|l| l.strip_prefix(&name)).and_then(|v| v.trim().parse().ok()).unwrap()
    };
    assert_eq!((rings("new"), rings("reused")), (1.0, 2.0), "three ranges, one ring");

    assert_output_is_the_whole_render(&s, dir.path(), &key, &id, &spec);
}

/// A preview (`frame_range`) long enough to be split into chunks: every range
/// renders its frames at their place in the clip and the join's check (its
/// sample frame rendered again) agrees, so the joined clip is the whole
/// clip's frames 4..9, billed once as 5 frames.
#[test]
fn a_preview_in_chunks_is_the_clips_frames() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestStore::sqlite();
    let s = Server::start_on(&db, dir.path(), &["--chunk-frames", "2"], &[]);
    let key = s.tenant("acme", "mid");
    // 18 frames; the preview is 5 of them: ranges of 2, 2 and 1, and a join.
    let whole = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.75});
    let mut preview = whole.clone();
    preview["frame_range"] = json!({"first": 4, "count": 5});
    let id = s.submit(&key, &preview, None).json()["id"].as_str().unwrap().to_string();
    let done = s.wait(&key, &id, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log_tail(30));
    let chunks: Vec<(u64, u64)> = done["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["first_frame"].as_u64().unwrap(), c["frames"].as_u64().unwrap()))
        .collect();
    assert_eq!(chunks[..3], [(0, 2), (2, 2), (4, 1)], "chunk frames count from the preview's first: {done}");
    assert_eq!(chunks.len(), 4, "{done}");

    let (file, solo) = (dir.path().join("spec.json"), dir.path().join("solo.avi"));
    std::fs::write(&file, whole.to_string()).unwrap();
    let o = tessera().args(["render", file.to_str().unwrap(), "-o", solo.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let auth = format!("Bearer {key}");
    let got = http(&s.api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth)], b"");
    let joined = dir.path().join("joined.avi");
    std::fs::write(&joined, &got.body).unwrap();
    let (part, all) = (frame_md5s(&joined), frame_md5s(&solo));
    assert_eq!(all.len(), 18);
    assert_eq!(part, all[4..9], "the chunked preview's frames are not clip frames 4..9");
    let events = rt().block_on(async { db.open(dir.path()).await.events(&Default::default()).await.unwrap() });
    let outputs: Vec<i64> =
        events.iter().filter(|e| e.job_id == id && e.kind == EventKind::Output).map(|e| e.quantity).collect();
    assert_eq!(outputs, [5], "billed other than once for 5 frames");
}

/// A chunked clip cancelled mid-way delivers what it bills: its frames from
/// the first up to where the cancel stopped them (the first range whole, the
/// second as far as it got), joined into a partial clip whose frames are the
/// whole render's first frames, downloadable, and billed exactly those frames.
#[test]
fn a_cancelled_chunked_clip_delivers_and_bills_its_first_frames() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestStore::sqlite();
    let args = ["--chunk-frames", "6", "--concurrency", "1", "--max-concurrency", "1", "--group-max", "1"];
    let s = Server::start_on(&db, dir.path(), &args, &[]);
    let key = s.tenant("acme", "mid");
    let auth = format!("Bearer {key}");
    // 48 frames: 8 ranges of 6 rendered one at a time, in order, and a join.
    let spec = json!({"template": "dunes", "resolution": {"width": 192, "height": 108}, "fps": 24, "duration_s": 2,
                      "tiles": {"cols": 2, "rows": 1, "overlap_px": 16}});
    let id = s.submit(&key, &spec, None).json()["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    while s.job(&key, &id)["frames_done"].as_u64().unwrap_or(0) < 8 {
        assert!(start.elapsed() < Duration::from_secs(120), "the clip never got going");
        std::thread::sleep(Duration::from_millis(60)); // within the tenant's rate limit
    }
    let c = http(&s.api, "POST", &format!("/v1/jobs/{id}/cancel"), &[("Authorization", &auth)], b"").json();
    assert_eq!(c["cancel_requested"], true, "{c}");
    let done = s.wait(&key, &id, Duration::from_secs(120));
    assert_eq!(done["state"], "cancelled", "{done}\n{}", s.log_tail(30));
    let billed = done["billed_frames"].as_u64().expect("the delivered frames are billed");
    assert!((8..48).contains(&billed), "billed {billed} frames: {done}");

    let (file, solo) = (dir.path().join("spec.json"), dir.path().join("solo.avi"));
    std::fs::write(&file, spec.to_string()).unwrap();
    let o = tessera().args(["render", file.to_str().unwrap(), "-o", solo.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = http(&s.api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth)], b"");
    assert_eq!(got.status, 200, "the partial clip is downloadable");
    let partial = dir.path().join("partial.avi");
    std::fs::write(&partial, &got.body).unwrap();
    let (part, all) = (frame_md5s(&partial), frame_md5s(&solo));
    assert_eq!(part.len() as u64, billed, "the clip holds the frames billed");
    assert_eq!(part, all[..part.len()], "the partial clip's frames are not the whole render's first frames");
    let meta = http(&s.api, "GET", &format!("/v1/jobs/{id}/metadata"), &[("Authorization", &auth)], b"").json();
    assert_eq!(
        (meta["partial"]["reason"].as_str(), meta["frame_range"]["count"].as_u64()),
        (Some("cancelled"), Some(billed))
    );
    let events = rt().block_on(async { db.open(dir.path()).await.events(&Default::default()).await.unwrap() });
    let outputs: Vec<i64> =
        events.iter().filter(|e| e.job_id == id && e.kind == EventKind::Output).map(|e| e.quantity).collect();
    assert_eq!(outputs, [billed as i64], "billed other than once for the delivered frames");
    // The segments are gone once delivered.
    let left = std::fs::read_dir(dir.path().join("clips")).unwrap().filter_map(|e| e.ok());
    let segs: Vec<String> =
        left.map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".seg")).collect();
    assert!(segs.is_empty(), "segments left: {segs:?}");
}
