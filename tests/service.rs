//! `tessera serve` over real sockets, every test on every store backend: the
//! API end to end, hostile input, cancel, lanes under load, retries with
//! injected GPU faults, kill -9 recovery, grouping, and a scrape that promtool
//! accepts. (Aging is in the store's conformance suite, which drives the
//! queue directly.)

use std::time::Duration;

use serde_json::json;

use crate::util::{cents_per_frame_book, frame_md5s, http, rt, tessera, Server, TestStore};

crate::on_every_backend!(
    sigterm_drains_and_the_next_worker_finishes_the_job,
    api_end_to_end_over_a_real_socket,
    hostile_requests_get_a_json_4xx_and_never_a_5xx,
    cancel_a_queued_and_a_running_job,
    an_urgent_job_starts_before_fifty_queued_bulk_jobs,
    retries_back_off_and_dead_letter_with_their_errors,
    kill9_mid_render_then_restart_completes_every_job_exactly_once,
    metrics_endpoint_passes_promtool,
    jobs_sharing_a_template_share_gpu_submissions_and_match_a_solo_render,
    a_frame_range_preview_delivers_and_bills_only_its_frames,
);

fn tiny(lane: &str) -> serde_json::Value {
    json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.05, "lane": lane})
}

fn clip(frames_s: f64, w: u32, h: u32) -> serde_json::Value {
    json!({"template": "orbit", "resolution": {"width": w, "height": h}, "fps": 24, "duration_s": frames_s,
           "tiles": {"cols": 2, "rows": 1, "overlap_px": 16}})
}

const T: Duration = Duration::from_secs(120);

fn api_end_to_end_over_a_real_socket(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(db, dir.path(), &[], &[]);
    let ka = s.tenant("acme", "mid");
    let kb = s.tenant("globex", "mid");
    let spec = clip(0.5, 160, 90);
    // Idempotency: the same key and body give the same job; another body is 409.
    let first = s.submit(&ka, &spec, Some("order-1"));
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    let id = first.json()["id"].as_str().unwrap().to_string();
    let again = s.submit(&ka, &spec, Some("order-1"));
    assert_eq!((again.status, again.json()["id"].as_str().unwrap()), (200, id.as_str()));
    let other = s.submit(&ka, &clip(1.0, 160, 90), Some("order-1"));
    assert_eq!(other.status, 409);
    assert_eq!(other.json()["error"]["code"], "idempotency_conflict");
    // The same key from another tenant is another job.
    let b_job = s.submit(&kb, &spec, Some("order-1"));
    assert_eq!(b_job.status, 201);
    assert_ne!(b_job.json()["id"].as_str().unwrap(), id);

    let done = s.wait(&ka, &id, T);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["frames_done"], 12);
    assert!(done["usage_gpu_ns"]["render"].as_i64().unwrap() > 0);
    let auth = format!("Bearer {ka}");
    let out = http(&s.api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth)], b"");
    assert_eq!(out.status, 200);
    let file = dir.path().join("download.avi");
    std::fs::write(&file, &out.body).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", "stream=codec_name,width,height,nb_read_frames"])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    for want in ["codec_name=mjpeg", "width=160", "height=90", "nb_read_frames=12"] {
        assert!(text.lines().any(|l| l == want), "{text}");
    }
    // Range requests.
    let part = http(
        &s.api,
        "GET",
        &format!("/v1/jobs/{id}/output"),
        &[("Authorization", &auth), ("Range", "bytes=0-11")],
        b"",
    );
    assert_eq!(part.status, 206);
    assert_eq!(&part.body[..], &out.body[..12]);
    assert_eq!(part.header("content-range"), Some(format!("bytes 0-11/{}", out.body.len()).as_str()));
    let tail =
        http(&s.api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth), ("Range", "bytes=-4")], b"");
    assert_eq!(&tail.body[..], &out.body[out.body.len() - 4..]);
    let bad = http(
        &s.api,
        "GET",
        &format!("/v1/jobs/{id}/output"),
        &[("Authorization", &auth), ("Range", "bytes=999999999-")],
        b"",
    );
    assert_eq!(bad.status, 416);
    // A Range header that is no range (empty, or several) is refused, naming it.
    for range in ["", "bytes=0-1,4-5"] {
        let r =
            http(&s.api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth), ("Range", range)], b"");
        assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("bad_range")), "Range {range:?}");
        assert_eq!(r.json()["error"]["fields"][0]["field"], "Range");
    }
    // The sidecar.
    let meta = http(&s.api, "GET", &format!("/v1/jobs/{id}/metadata"), &[("Authorization", &auth)], b"").json();
    assert_eq!(meta["template"], "orbit@2");
    assert_eq!(meta["output"]["bytes"].as_i64().unwrap() as usize, out.body.len());
    assert_eq!(meta["tier"], "mid");
    // The render's figures: its frames, GPU time as metered, host stages, bytes.
    let stats = &meta["stats"];
    assert_eq!(stats["frames"], meta["frames"], "{stats}");
    let metered: u64 = ["render", "stitch", "encode"].iter().map(|p| meta["usage_ns"][p].as_u64().unwrap()).sum();
    assert_eq!(stats["gpu_ns"]["total"].as_u64(), Some(metered), "{stats}");
    for stage in ["wait", "readback", "entropy", "mux", "ledger"] {
        assert!(stats["host_ns"][stage].as_u64().unwrap() > 0, "host stage {stage}: {stats}");
    }
    let output = stats["output_bytes"].as_u64().unwrap();
    assert!(output > 0 && output < out.body.len() as u64, "{stats}");
    // Egress was metered: full download + 12 + 4 bytes.
    let usage = http(&s.api, "GET", "/v1/usage", &[("Authorization", &auth)], b"").json();
    assert_eq!(usage["egress_bytes"].as_u64().unwrap() as usize, out.body.len() + 16);
    assert_eq!(usage["output_seconds"], "0.5");
    // Isolation: globex sees none of acme's job.
    let authb = format!("Bearer {kb}");
    for path in [format!("/v1/jobs/{id}"), format!("/v1/jobs/{id}/output"), format!("/v1/jobs/{id}/metadata")] {
        let r = http(&s.api, "GET", &path, &[("Authorization", &authb)], b"");
        assert_eq!(r.status, 404, "{path}");
    }
    assert_eq!(http(&s.api, "POST", &format!("/v1/jobs/{id}/cancel"), &[("Authorization", &authb)], b"").status, 404);
    let list = http(&s.api, "GET", "/v1/jobs?state=succeeded", &[("Authorization", &authb)], b"").json();
    assert!(list["jobs"].as_array().unwrap().iter().all(|j| j["id"] != id.as_str()));
    // Bad keys.
    assert_eq!(http(&s.api, "GET", "/v1/jobs", &[], b"").status, 401);
    assert_eq!(http(&s.api, "GET", "/v1/jobs", &[("Authorization", "Bearer nope")], b"").status, 401);
    assert_eq!(http(&s.api, "GET", "/v1/jobs", &[("Authorization", "Basic abc")], b"").status, 401);
    let t = http(&s.api, "POST", "/v1/tenants", &[("Authorization", &auth)], br#"{"name":"x","tier":"mid"}"#);
    assert_eq!(t.status, 403);
    assert_eq!(http(&s.api, "GET", "/v1/jobs", &[("Authorization", "Bearer admin-secret")], b"").status, 403);
    // Health, readiness, the OpenAPI document.
    assert_eq!(http(&s.api, "GET", "/healthz", &[], b"").status, 200);
    let ready = http(&s.api, "GET", "/readyz", &[], b"").json();
    assert_eq!((&ready["store"], &ready["draining"]), (&json!(true), &json!(false)));
    // The worker registry, for the admin only: this worker, alive, with its adapter.
    let workers = http(&s.api, "GET", "/v1/workers", &[("Authorization", "Bearer admin-secret")], b"").json();
    let me: Vec<_> = workers["workers"].as_array().unwrap().iter().filter(|w| w["this"] == true).collect();
    assert_eq!(me.len(), 1, "{workers}");
    assert_eq!((&me[0]["id"], &me[0]["alive"]), (&ready["worker"], &json!(true)));
    assert!(me[0]["adapter"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(done["worker"], ready["worker"], "the job names the worker that ran it");
    assert_eq!(http(&s.api, "GET", "/v1/workers", &[("Authorization", &auth)], b"").status, 403);
    assert_eq!(http(&s.api, "GET", "/openapi.json", &[], b"").json()["openapi"], "3.1.0");
}

fn hostile_requests_get_a_json_4xx_and_never_a_5xx(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(db, dir.path(), &[], &[]);
    let k = s.tenant("acme", "short");
    let auth = format!("Bearer {k}");
    let a: &[(&str, &str)] = &[("Authorization", &auth)];
    let huge = vec![b'x'; 200 * 1024];
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("POST", "/v1/jobs".into(), b"{not json".to_vec()),
        ("POST", "/v1/jobs".into(), b"".to_vec()),
        ("POST", "/v1/jobs".into(), b"[]".to_vec()),
        ("POST", "/v1/jobs".into(), huge.clone()),
        ("POST", "/v1/jobs".into(), deep.into_bytes()),
        ("POST", "/v1/jobs".into(), vec![0xff, 0xfe, 0x00]),
        ("POST", "/v1/jobs".into(), br#"{"template": 5}"#.to_vec()),
        ("POST", "/v1/jobs".into(), br#"{"template": "orbit", "fps": "thirty"}"#.to_vec()),
        ("POST", "/v1/jobs".into(), br#"{"template": "orbit", "duration_s": -1}"#.to_vec()),
        ("POST", "/v1/jobs".into(), br#"{"template": "orbit", "resolution": {"width": 99999, "height": 2}}"#.to_vec()),
        ("POST", "/v1/jobs".into(), br#"{"template": "../../etc/passwd"}"#.to_vec()),
        ("POST", "/v1/jobs".into(), br#"{"template": "orbit", "admin": true}"#.to_vec()),
        ("POST", "/v1/jobs".into(), br#"{"template": "orbit", "resolution": "4k"}"#.to_vec()),
        ("POST", "/v1/jobs".into(), br#"{"template": "orbit", "lane": "urgent"}"#.to_vec()),
        ("GET", "/v1/jobs/../../etc/passwd".into(), vec![]),
        ("GET", "/v1/jobs/%2e%2e%2fconfig".into(), vec![]),
        ("GET", "/v1/jobs/j_0000000000000000".into(), vec![]),
        ("GET", "/v1/jobs/not-a-job".into(), vec![]),
        ("GET", format!("/v1/jobs/{}", "a".repeat(4000)), vec![]),
        ("POST", "/v1/jobs/j_zzzzzzzzzzzzzzzz/cancel".into(), vec![]),
        ("DELETE", "/v1/jobs/j_0000000000000000".into(), vec![]),
        ("GET", "/v1/jobs?state=exploded".into(), vec![]),
        ("GET", "/v1/jobs?limit=100000".into(), vec![]),
        ("GET", "/v1/jobs?cursor=abc".into(), vec![]),
        ("GET", "/v1/jobs?unknown=1".into(), vec![]),
        ("PUT", "/v1/jobs".into(), vec![]),
        ("GET", "/v1/nothing-here".into(), vec![]),
        ("POST", "/v1/quote".into(), b"{\"template\": \"orbit\", \"fps\": 25}".to_vec()),
        ("POST", "/v1/tenants".into(), br#"{"name": "x"}"#.to_vec()),
    ];
    assert!(cases.len() >= 20);
    for (method, path, body) in &cases {
        let r = http(&s.api, method, path, a, body);
        assert!((400..500).contains(&r.status), "{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert!(v["error"]["code"].is_string(), "{method} {path}: {v}");
    }
    // Field errors name the field.
    let r = http(&s.api, "POST", "/v1/jobs", a, br#"{"template": "orbit", "fps": 25, "quality": 0}"#);
    let fields: Vec<String> = r.json()["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fields, ["fps", "quality"]);
    // A bad Idempotency-Key.
    let r = http(
        &s.api,
        "POST",
        "/v1/jobs",
        &[("Authorization", &auth), ("Idempotency-Key", "")],
        tiny("standard").to_string().as_bytes(),
    );
    assert_eq!(r.status, 400);
    // Still alive and well.
    assert_eq!(http(&s.api, "GET", "/healthz", &[], b"").status, 200);
}

fn cancel_a_queued_and_a_running_job(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(db, dir.path(), &["--concurrency", "1", "--max-concurrency", "1"], &[]);
    let k = s.tenant("acme", "mid");
    let auth = format!("Bearer {k}");
    let long = s.submit(&k, &clip(6.0, 240, 136), None).json()["id"].as_str().unwrap().to_string();
    let queued = s.submit(&k, &tiny("bulk"), None).json()["id"].as_str().unwrap().to_string();
    // Wait for the long job to be running with some frames done.
    let start = std::time::Instant::now();
    loop {
        let j = s.job(&k, &long);
        if j["state"] == "running" && j["frames_done"].as_u64().unwrap() >= 3 {
            break;
        }
        assert!(start.elapsed() < T, "long job never got going: {j}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = http(&s.api, "POST", &format!("/v1/jobs/{queued}/cancel"), &[("Authorization", &auth)], b"").json();
    assert_eq!(c["state"], "cancelled");
    let c = http(&s.api, "POST", &format!("/v1/jobs/{long}/cancel"), &[("Authorization", &auth)], b"").json();
    assert_eq!(c["cancel_requested"], true);
    let l = s.wait(&k, &long, T);
    assert_eq!(l["state"], "cancelled", "{l}");
    let done = l["frames_done"].as_u64().unwrap();
    assert!((3..144).contains(&done), "stopped after {done} frames");
    let q = s.job(&k, &queued);
    assert_eq!((q["state"].as_str(), q["attempts"].as_u64()), (Some("cancelled"), Some(0)), "the queued job ran: {q}");
    // Billed only for what it used: the frames delivered before the cancel.
    let usage = http(&s.api, "GET", "/v1/usage", &[("Authorization", &auth)], b"").json();
    let seconds: f64 = usage["output_seconds"].as_str().unwrap().parse().unwrap();
    assert!((seconds - done as f64 / 24.0).abs() < 1e-9, "billed {seconds} s for {done} frames");
    // ... and those frames are delivered: a partial clip that ffmpeg decodes
    // with exactly the frames billed, its sidecar saying what it is.
    let clip = http(&s.api, "GET", &format!("/v1/jobs/{long}/output"), &[("Authorization", &auth)], b"");
    assert_eq!(clip.status, 200, "a cancelled job's delivered frames are downloadable");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &clip.body).unwrap();
    assert_eq!(frame_md5s(file.path()).len() as u64, done, "the partial clip holds the frames billed");
    let meta = http(&s.api, "GET", &format!("/v1/jobs/{long}/metadata"), &[("Authorization", &auth)], b"").json();
    assert_eq!(meta["partial"]["reason"], "cancelled", "{meta}");
    assert_eq!((meta["frame_range"]["first"].as_u64(), meta["frame_range"]["count"].as_u64()), (Some(0), Some(done)));
    // The bill is the quote's rates for those frames, shown on the job.
    let quote: serde_json::Value = l["quote"].clone();
    let rate: rust_decimal::Decimal = quote["rate_per_output_second"].as_str().unwrap().parse().unwrap();
    let part = (rate * rust_decimal::Decimal::from(done) / rust_decimal::Decimal::from(24))
        .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    let billed: rust_decimal::Decimal = l["billed"].as_str().unwrap().parse().unwrap();
    assert_eq!((billed, l["billed_frames"].as_u64()), (part, Some(done)), "{l}");
    assert_eq!(meta["price"].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap(), part);
    // The job cancelled in the queue delivered nothing, and is billed nothing.
    let q = s.job(&k, &queued);
    assert_eq!((q["billed"].clone(), q["output"].clone()), (json!(null), json!(null)), "{q}");
    let none = http(&s.api, "GET", &format!("/v1/jobs/{queued}/output"), &[("Authorization", &auth)], b"");
    assert_eq!(none.status, 409);
}

fn an_urgent_job_starts_before_fifty_queued_bulk_jobs(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(db, dir.path(), &["--concurrency", "1", "--max-concurrency", "1"], &[]);
    let k = s.tenant("acme", "enterprise");
    // A blocker keeps the single slot busy while the queue fills.
    let blocker = s.submit(&k, &clip(2.0, 160, 90), None).json()["id"].as_str().unwrap().to_string();
    let bulk: Vec<String> =
        (0..50).map(|_| s.submit(&k, &tiny("bulk"), None).json()["id"].as_str().unwrap().to_string()).collect();
    let urgent = s.submit(&k, &tiny("urgent"), None).json()["id"].as_str().unwrap().to_string();
    let u = s.wait(&k, &urgent, T);
    let urgent_start = u["started_at_ms"].as_i64().unwrap();
    let mut later = 0;
    for id in &bulk {
        let b = s.wait(&k, id, T);
        assert_eq!(b["state"], "succeeded");
        let started = b["started_at_ms"].as_i64().unwrap();
        // Every bulk job not already running when the urgent one arrived starts after it.
        if started >= u["created_at_ms"].as_i64().unwrap() {
            assert!(started >= urgent_start, "bulk {id} started at {started}, before the urgent job at {urgent_start}");
            later += 1;
        }
    }
    assert!(later >= 45, "only {later} bulk jobs were still queued: the test proved little");
    s.wait(&k, &blocker, T);
}

fn retries_back_off_and_dead_letter_with_their_errors(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    // Two injected device losses, then success: one bill, two failed attempts kept as cost.
    let s = Server::start_on(
        db,
        dir.path(),
        &["--max-attempts", "3", "--backoff-base-ms", "100", "--backoff-cap-ms", "400"],
        &[("TESSERA_FAULTS", "fail_attempts=2")],
    );
    let k = s.tenant("acme", "mid");
    let id = s.submit(&k, &clip(0.25, 64, 36), None).json()["id"].as_str().unwrap().to_string();
    let j = s.wait(&k, &id, T);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["attempts"], 3);
    let errors = j["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert!(errors[0].as_str().unwrap().contains("attempt 1: injected GPU fault"), "{errors:?}");
    drop(s);
    // Always failing: dead-lettered after exactly max attempts, with every error.
    let dir2 = tempfile::tempdir().unwrap();
    let s = Server::start_on(
        db,
        dir2.path(),
        &["--max-attempts", "3", "--backoff-base-ms", "50", "--backoff-cap-ms", "200"],
        &[("TESSERA_FAULTS", "fail_attempts=99")],
    );
    let k = s.tenant("acme-2", "mid");
    let id = s.submit(&k, &clip(0.25, 64, 36), None).json()["id"].as_str().unwrap().to_string();
    let j = s.wait(&k, &id, T);
    assert_eq!((j["state"].as_str(), j["attempts"].as_u64()), (Some("dead"), Some(3)), "{j}");
    assert_eq!(j["errors"].as_array().unwrap().len(), 3);
    let auth = format!("Bearer {k}");
    let usage = http(&s.api, "GET", "/v1/usage", &[("Authorization", &auth)], b"").json();
    assert_eq!(usage["charges"], "0", "a dead job was billed");
    // A spec that cannot be rendered is refused up front, never retried.
    let r = s.submit(&k, &json!({"template": "orbit", "fps": 7}), None);
    assert_eq!(r.status, 422);
}

fn kill9_mid_render_then_restart_completes_every_job_exactly_once(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    // A killed worker's leases expire after 2 s; the restarted worker (a new
    // worker id) reaps them like any other worker's.
    let args = ["--concurrency", "2", "--backoff-base-ms", "50", "--lease-s", "2"];
    let mut s = Server::start_on(db, dir.path(), &args, &[]);
    let k = s.tenant("acme", "mid");
    let ids: Vec<String> = (0..4)
        .map(|i| {
            s.submit(&k, &clip(1.0 + f64::from(i) * 0.25, 160, 90), Some(&format!("crash-{i}"))).json()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(700 + round * 300));
        s.kill9();
        s = Server::start_on(db, dir.path(), &args, &[]);
    }
    let mut interrupted = 0;
    for id in &ids {
        let j = s.wait(&k, id, T);
        assert_eq!(j["state"], "succeeded", "{j}");
        // A kill is an interruption, never one of the job's failures.
        assert_eq!(j["failures"], 0, "{j}");
        interrupted += j["interruptions"].as_u64().unwrap();
    }
    assert!(interrupted > 0, "no kill landed mid-render: the test proved nothing");
    // The partial clips of killed attempts are swept once no attempt owns them.
    let partials = || -> Vec<String> {
        std::fs::read_dir(dir.path().join("clips"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect()
    };
    let start = std::time::Instant::now();
    while !partials().is_empty() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(partials().is_empty(), "partial files left: {:?}", partials());
    drop(s);
    // Exactly one billable output per job, from its last attempt.
    let events = rt().block_on(async { db.open(dir.path()).await.events(&Default::default()).await.unwrap() });
    for id in &ids {
        let outputs: Vec<_> =
            events.iter().filter(|e| &e.job_id == id && e.kind == tessera_metering::EventKind::Output).collect();
        assert_eq!(outputs.len(), 1, "job {id} billed {} times", outputs.len());
    }
    let clips = std::fs::read_dir(dir.path().join("clips")).unwrap().count();
    assert_eq!(clips, ids.len() * 2, "one clip and one sidecar per job");
}

fn metrics_endpoint_passes_promtool(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(db, dir.path(), &["--ledger-metrics-s", "1"], &[]);
    let k = s.tenant("acme", "mid");
    let id = s.submit(&k, &tiny("standard"), None).json()["id"].as_str().unwrap().to_string();
    let done = s.wait(&k, &id, T);
    let charged: f64 = done["price"].as_str().map(|c| c.parse().unwrap()).unwrap_or_else(|| panic!("{done}"));
    // The registry and the ledger are read every second here (the fleet metrics every 5 s).
    std::thread::sleep(Duration::from_millis(5500));
    let text = String::from_utf8(http(&s.metrics, "GET", "/metrics", &[], b"").body).unwrap();
    for name in [
        "tessera_queue_depth",
        "tessera_jobs_total",
        "tessera_queue_wait_seconds_bucket",
        "tessera_concurrency_limit",
        "tessera_gpu_seconds_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    };
    assert_eq!(value("tessera_jobs_submitted_total{lane=\"standard\"}"), 1.0);
    assert_eq!(value("tessera_lane_max_wait_seconds{lane=\"urgent\"}"), 60.0);
    assert_eq!(value("tessera_lane_max_wait_seconds{lane=\"bulk\"}"), 3600.0);
    assert_eq!(value("tessera_fleet_workers{state=\"alive\"}"), 1.0);
    assert_eq!(value("tessera_fleet_workers{state=\"missing\"}"), 0.0);
    for kind in ["validation", "out_of_memory", "internal", "device_lost", "uncaptured"] {
        assert_eq!(value(&format!("tessera_gpu_errors_total{{kind=\"{kind}\"}}")), 0.0);
    }
    // The ledger's total is the price counter's, and the tenant's other
    // buckets exist at zero before they are ever used.
    let price_line =
        text.lines().find(|l| l.starts_with("tessera_charges_total{") && l.contains("bucket=\"price\"")).unwrap();
    let tenant = price_line.split("tenant=\"").nth(1).and_then(|t| t.split('"').next()).unwrap();
    let bucket = |b: &str| {
        value(&format!("tessera_charges_total{{tenant=\"{tenant}\",tier=\"mid\",bucket=\"{b}\",currency=\"USD\"}}"))
    };
    assert_eq!(value("tessera_ledger_charges_total{currency=\"USD\"}"), charged);
    assert_eq!(bucket("price"), charged);
    assert_eq!(bucket("egress"), 0.0);
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from the scrape"))
}

fn jobs_sharing_a_template_share_gpu_submissions_and_match_a_solo_render(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    // lavapipe's timestamps are not trusted for billing, so the worker groups
    // nothing there by default; forcing GPU timing turns grouping on.
    let s = Server::start_on(db, dir.path(), &["--concurrency", "4", "--group-max", "4"], &[("TESSERA_TIMING", "gpu")]);
    let k = s.tenant("acme", "mid");
    let spec = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 1.0,
                      "lane": "bulk", "seed": 3});
    let submit = |key: &str| s.submit(&k, &spec, Some(key)).json()["id"].as_str().unwrap().to_string();
    let ids: Vec<String> = (0..4).map(|i| submit(&format!("grouped-{i}"))).collect();
    let jobs: Vec<_> = ids.iter().map(|id| s.wait(&k, id, T)).collect();
    let text = String::from_utf8(http(&s.metrics, "GET", "/metrics", &[], b"").body).unwrap();
    let submissions = sample(&text, "tessera_submission_jobs_count");
    let alone = sample(&text, "tessera_submission_jobs_bucket{le=\"1\"}");
    let over_4 = submissions - sample(&text, "tessera_submission_jobs_bucket{le=\"4\"}");
    assert!(submissions > alone, "no submission held more than one job ({submissions} submissions)");
    assert_eq!(over_4, 0.0, "a submission held more than --group-max jobs");
    // A fifth job with the same spec, alone: the same bytes as the grouped ones.
    let solo = s.wait(&k, &submit("solo"), T);
    let hash = |j: &serde_json::Value| j["output"]["sha256"].as_str().unwrap().to_string();
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["frames_done"], 24);
        assert_eq!(hash(j), hash(&solo), "a grouped clip differs from the solo clip");
        // Metered on its own timestamps, every pass.
        for pass in ["render", "stitch", "encode"] {
            assert!(j["usage_gpu_ns"][pass].as_i64().unwrap() > 0, "{pass}: {j}");
        }
    }
    // Billed once each: five one-second clips.
    let usage = http(&s.api, "GET", "/v1/usage", &[("Authorization", &format!("Bearer {k}"))], b"").json();
    assert_eq!(usage["output_seconds"], "5", "{usage}");
}

fn sigterm_drains_and_the_next_worker_finishes_the_job(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_on(db, dir.path(), &[], &[]);
    let k = s.tenant("acme", "mid");
    let submitted = s.submit(&k, &clip(4.0, 160, 90), Some("drain")).json();
    let (id, quoted) = (submitted["id"].as_str().unwrap().to_string(), submitted["price"].clone());
    let start = std::time::Instant::now();
    while s.job(&k, &id)["frames_done"].as_u64().unwrap_or(0) < 2 {
        assert!(start.elapsed() < T, "the job never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let term = std::process::Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let exit = s.child.wait().unwrap();
    assert!(exit.success(), "a drain is a clean exit: {exit:?}\n{}", s.log_tail(20));
    // Requeued at once, as an interruption: no failure spent, no lease held.
    let (view, now) = rt().block_on(async {
        let store = db.open(dir.path()).await;
        (store.job(&tessera_store::JobId::parse(&id).unwrap()).await.unwrap().unwrap(), store.now_ms())
    });
    // A 4 s clip is two chunks of 2 s: each one running here was interrupted.
    assert_eq!(view.state, tessera_store::JobState::Queued, "{view:?}");
    let interrupted = view.interruptions;
    assert!((1..=2).contains(&interrupted) && view.failures == 0, "{:?}", view.errors);
    assert!(view.errors.iter().all(|e| e.contains("draining")), "{:?}", view.errors);
    assert!(view.not_before_ms <= now, "a drained job waits for nothing");
    // The registry knows the drained worker stopped; the next worker, deployed
    // with a new price book (740 times the base price), finishes the job and
    // bills the quote the job was admitted with, not its own book's price.
    let (book, _) = cents_per_frame_book(dir.path());
    s = Server::start_on(db, dir.path(), &["--price-book", &book], &[]);
    let done = s.wait(&k, &id, T);
    let auth = format!("Bearer {k}");
    let today =
        http(&s.api, "POST", "/v1/quote", &[("Authorization", &auth)], clip(4.0, 160, 90).to_string().as_bytes());
    assert_ne!(today.json()["price"], quoted, "the new book must price the clip differently");
    assert_eq!((done["price"].clone(), done["billed"].clone()), (quoted.clone(), quoted.clone()), "{done}");
    assert_eq!(done["billed_frames"], 96, "{done}");
    // Every chunk once (two ranges and the join), and the interrupted ones again.
    let attempts = 3 + u64::from(interrupted);
    assert_eq!((done["state"].as_str(), done["attempts"].as_u64()), (Some("succeeded"), Some(attempts)), "{done}");
    let per_chunk: u64 = done["chunks"].as_array().unwrap().iter().map(|c| c["attempts"].as_u64().unwrap()).sum();
    assert_eq!(per_chunk, attempts, "{done}");
    let workers = http(&s.api, "GET", "/v1/workers", &[("Authorization", "Bearer admin-secret")], b"").json();
    let stopped = workers["workers"].as_array().unwrap().iter().filter(|w| w["stopped_at_ms"].is_number()).count();
    assert_eq!(stopped, 1, "{workers}");
}

/// A preview through the API: a spec with `frame_range` is quoted, rendered,
/// delivered and billed as those frames only, and they are the whole clip's
/// (the same JPEG frames as `tessera render` of the whole spec). A range past
/// the clip's end is a 422 naming `frame_range`, from both endpoints.
fn a_frame_range_preview_delivers_and_bills_only_its_frames(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let (book, _) = cents_per_frame_book(dir.path());
    let s = Server::start_on(db, &dir.path().join("data"), &["--price-book", &book], &[]);
    let key = s.tenant("acme", "mid");
    let auth = format!("Bearer {key}");
    let post = |path: &str, body: &serde_json::Value| {
        http(&s.api, "POST", path, &[("Authorization", &auth)], body.to_string().as_bytes())
    };
    // 12 frames; the preview is frames 5, 6, 7: 3/24 s at 8.88/s = 1.11.
    let whole = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.5});
    let mut preview = whole.clone();
    preview["frame_range"] = json!({"first": 5, "count": 3});
    let q = post("/v1/quote", &preview);
    assert_eq!(q.status, 200, "{}", String::from_utf8_lossy(&q.body));
    assert_eq!((&q.json()["price"], &q.json()["admission"]["admissible"]), (&json!("1.11"), &json!(true)));

    let r = s.submit(&key, &preview, None);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!((&r.json()["frames_total"], &r.json()["price"]), (&json!(3), &json!("1.11")));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = s.wait(&key, &id, T);
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log_tail(30));
    assert_eq!((&done["frames_done"], &done["frames_total"]), (&json!(3), &json!(3)));

    let out = http(&s.api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth)], b"");
    assert_eq!(out.status, 200);
    let got = dir.path().join("preview.avi");
    std::fs::write(&got, &out.body).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&got)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "3", "{}", String::from_utf8_lossy(&probe.stderr));
    let (spec, solo) = (dir.path().join("whole.json"), dir.path().join("whole.avi"));
    std::fs::write(&spec, whole.to_string()).unwrap();
    let o = tessera().args(["render", spec.to_str().unwrap(), "-o", solo.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (part, all) = (frame_md5s(&got), frame_md5s(&solo));
    assert_eq!(all.len(), 12);
    assert_eq!(part, all[5..8], "the preview's frames are not clip frames 5..8");
    assert_ne!(part, all[..3], "the clip's first frames look like frames 5..8: the test could not fail");
    let meta = http(&s.api, "GET", &format!("/v1/jobs/{id}/metadata"), &[("Authorization", &auth)], b"").json();
    assert_eq!(meta["frame_range"], json!({"first": 5, "count": 3}), "{meta}");
    assert_eq!((&meta["frames"], &meta["clip_frames"]), (&json!(3), &json!(12)), "{meta}");

    // Billed 3/24 s, in the ledger and in /v1/usage.
    let usage = http(&s.api, "GET", "/v1/usage", &[("Authorization", &auth)], b"").json();
    assert_eq!((&usage["output_seconds"], &usage["charges"]), (&json!("0.125"), &json!("1.11")), "{usage}");
    let events = rt().block_on(async { db.open(&dir.path().join("data")).await.events(&Default::default()).await });
    let outputs: Vec<_> =
        events.unwrap().into_iter().filter(|e| e.kind == tessera_metering::EventKind::Output).collect();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!((outputs[0].quantity, outputs[0].fps, outputs[0].amount_micros), (3, Some(24), 1_110_000));

    // Ranges the clip does not have, refused before anything is queued.
    for (range, field, message) in [
        (json!({"first": 10, "count": 5}), "frame_range", "frames 10..15 go past the clip's last frame 11"),
        (json!({"first": 12, "count": 1}), "frame_range", "frame 12 is past the clip's last frame 11"),
        (json!({"count": 0}), "frame_range.count", "must be at least 1 frame, got 0"),
        (json!({"first": -1, "count": 2}), "frame_range.first", "must be a frame index, 0 or more, got -1"),
    ] {
        let mut bad = whole.clone();
        bad["frame_range"] = range;
        for r in [s.submit(&key, &bad, None), post("/v1/quote", &bad)] {
            assert_eq!(r.status, 422, "{bad}: {}", String::from_utf8_lossy(&r.body));
            let fields = r.json()["error"]["fields"].clone();
            let named = fields
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["field"] == field && f["message"].as_str().unwrap().contains(message));
            assert!(named, "{bad}: no `{field}` error saying `{message}`: {fields}");
        }
    }
    let list = http(&s.api, "GET", "/v1/jobs", &[("Authorization", &auth)], b"").json();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "a refused preview was queued: {list}");
}
