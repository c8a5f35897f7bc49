//! `tessera loadtest` against a real `tessera serve` over a socket: its report
//! checked against the server's own figures (the tenant's job list, each job's
//! view, `/v1/usage`), refused submissions counted under their status and
//! never becoming jobs, bad arguments exiting 2, and a wrong key stopping at
//! the first 401.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::util::{cents_per_frame_book, http, tessera, Server, TestStore};

fn tiny(lane: &str) -> Value {
    json!({"template": "orbit@2", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.25,
           "lane": lane, "seed": 7})
}

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap_or_else(|| panic!("not a decimal string: {v}")).parse().unwrap()
}

/// Every job of the tenant, from the API's own list (every page).
fn all_jobs(s: &Server, key: &str) -> Vec<Value> {
    let auth = format!("Bearer {key}");
    let (mut jobs, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=200&cursor={c}"),
            None => "/v1/jobs?limit=200".into(),
        };
        let page = http(&s.api, "GET", &path, &[("Authorization", &auth)], b"").json();
        jobs.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return jobs,
        }
    }
}

#[test]
fn a_run_reports_what_the_server_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // A price book where a frame costs whole cents: the built-in one rounds
    // these tiny clips to 0.00, which would make the money checks vacuous.
    let (book, _) = cents_per_frame_book(dir.path());
    let s = Server::start_on(&TestStore::sqlite(), dir.path(), &["--price-book", &book], &[]);
    let key = s.tenant("loadtest", "mid");
    // fps 25 is not an offered frame rate: every submission of it is a 422.
    let mut bad = tiny("standard");
    bad["fps"] = json!(25);
    let mix = json!({"entries": [
        {"name": "tiny-standard", "weight": 2, "spec": tiny("standard")},
        {"name": "tiny-bulk", "weight": 1, "spec": tiny("bulk")},
        {"name": "bad-fps", "weight": 1, "spec": bad},
    ]});
    let mix_path = dir.path().join("mix.json");
    std::fs::write(&mix_path, mix.to_string()).unwrap();

    let out = tessera()
        .args(["loadtest", "--url", &format!("http://{}", s.api), "--key", &key, "--rate", "4", "--duration", "2s"])
        .args(["--drain", "120s", "--seed", "3", "--json", "--mix"])
        .arg(&mix_path)
        .env_remove("TESSERA_API_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed: {stderr}\nserver: {}", s.log_tail(30));
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    // The progress line, a plain line when stderr is not a terminal.
    assert!(
        stderr.lines().any(|l| l.contains("sent 8 accepted") && l.contains("finished") && l.contains("errors")),
        "{stderr}"
    );

    // The schedule: 4/s for 2 s is 8 sends, every one answered.
    assert_eq!(r["schedule"]["planned"], 8, "{r:#}");
    assert_eq!(r["submissions"]["sent"], 8);
    assert_eq!(r["submissions"]["transport_errors"], 0);
    let entry = |name: &str| r["entries"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap().clone();
    let (bad_sent, ok_sent) = (
        entry("bad-fps")["sent"].as_u64().unwrap(),
        entry("tiny-standard")["sent"].as_u64().unwrap() + entry("tiny-bulk")["sent"].as_u64().unwrap(),
    );
    assert!(bad_sent > 0 && ok_sent > 0, "seed 3 must send both kinds: {r:#}");
    assert_eq!(entry("bad-fps")["accepted"], 0);
    assert_eq!(entry("bad-fps")["rejected"], bad_sent);
    assert_eq!(r["http_errors"], json!([{"status": 422, "code": "invalid_spec", "count": bad_sent}]));

    // Accepted jobs: exactly the tenant's jobs as the API lists them, all finished.
    let jobs = all_jobs(&s, &key);
    assert_eq!(r["submissions"]["accepted"].as_u64().unwrap(), jobs.len() as u64);
    assert_eq!(jobs.len() as u64, ok_sent, "each valid submission is one job");
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{jobs:#?}");
    assert!(jobs.iter().all(|j| j["spec"]["fps"] == 24), "no job of the refused entry exists");
    assert_eq!(r["outcomes"], json!({"succeeded": jobs.len(), "dead": 0, "cancelled": 0, "unfinished": 0}));
    assert_eq!(r["unfinished_jobs"], json!([]));

    // Per lane: the counts the list gives, and timings from its timestamps.
    let mut by_lane: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for j in &jobs {
        by_lane.entry(j["lane"].as_str().unwrap().to_string()).or_default().push(j);
    }
    let lanes = r["lanes"].as_array().unwrap();
    assert_eq!(lanes.len(), by_lane.len(), "{r:#}");
    for l in lanes {
        let listed = &by_lane[l["lane"].as_str().unwrap()];
        assert_eq!(l["jobs"].as_u64().unwrap(), listed.len() as u64);
        assert_eq!(l["succeeded"].as_u64().unwrap(), listed.len() as u64);
        let max_wait =
            listed.iter().map(|j| j["started_at_ms"].as_i64().unwrap() - j["created_at_ms"].as_i64().unwrap()).max();
        assert_eq!(l["queue_wait_ms"]["max"].as_i64(), max_wait);
        let max_run =
            listed.iter().map(|j| j["finished_at_ms"].as_i64().unwrap() - j["started_at_ms"].as_i64().unwrap()).max();
        assert_eq!(l["run_ms"]["max"].as_i64(), max_run);
        assert_eq!(l["run_ms"]["n"].as_u64().unwrap(), listed.len() as u64);
    }

    // Money and GPU time: exactly the ledger's (a fresh tenant, so its totals
    // are this run's), and exactly the jobs' own figures.
    let auth = format!("Bearer {key}");
    let usage = http(&s.api, "GET", "/v1/usage", &[("Authorization", &auth)], b"").json();
    let cost = &r["cost"];
    assert_eq!(dec(&cost["charges"]), dec(&usage["charges"]), "{cost:#} vs {usage:#}");
    // 0.37 a frame, 6 frames a job.
    assert_eq!(dec(&usage["charges"]), Decimal::new(222, 2) * Decimal::from(jobs.len()));
    let prices: Decimal = jobs.iter().map(|j| dec(&j["price"])).sum();
    assert_eq!(dec(&cost["price_of_succeeded"]), prices);
    assert_eq!(dec(&cost["billed_output_seconds"]), dec(&usage["output_seconds"]));
    let ledger_gpu: i64 = usage["gpu_ns"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum();
    let views_gpu: i64 = jobs
        .iter()
        .map(|j| s.job(&key, j["id"].as_str().unwrap()))
        .map(|v| v["usage_gpu_ns"].as_object().unwrap().values().map(|n| n.as_i64().unwrap()).sum::<i64>())
        .sum();
    assert!(ledger_gpu > 0);
    assert_eq!(cost["gpu_ns"].as_i64().unwrap(), views_gpu);
    assert_eq!(cost["gpu_ns"].as_i64().unwrap(), ledger_gpu);
    assert_eq!(cost["usage_gpu_ns_delta"].as_i64().unwrap(), ledger_gpu);
    assert_eq!(dec(&cost["gpu_seconds"]), Decimal::new(ledger_gpu, 9));
}

#[test]
fn bad_arguments_exit_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let zero_weight = dir.path().join("zero.json");
    std::fs::write(&zero_weight, r#"[{"weight": 1, "spec": {"template": "orbit"}}, {"weight": 0, "spec": {}}]"#)
        .unwrap();
    let zero_weight = zero_weight.to_str().unwrap();
    let missing = dir.path().join("absent.toml");
    let missing = missing.to_str().unwrap();
    let base = ["--url", "http://127.0.0.1:9", "--key", "k", "--rate", "1", "--duration", "1s"];
    let cases: &[(&[&str], &str)] = &[
        (&["--rate", "0"], "above 0"),
        (&["--rate", "-2"], "above 0"),
        (&["--rate", "NaN"], "above 0"),
        (&["--duration", "0"], "longer than 0"),
        (&["--duration", "5 days"], "unknown unit"),
        (&["--url", "https://tessera.example.com"], "port-forward"),
        (&["--url", "localhost:8080"], "not an http:// URL"),
        (&["--mix", zero_weight], "entries[1].weight"),
        (&["--mix", missing], "reading mix file"),
    ];
    for (extra, message) in cases {
        // Later flags replace nothing in clap: build the line without the base's copy of a flag.
        let mut args: Vec<&str> = vec!["loadtest"];
        for pair in base.chunks(2) {
            if !extra.contains(&pair[0]) {
                args.extend_from_slice(pair);
            }
        }
        args.extend_from_slice(extra);
        let out = tessera().args(&args).env_remove("TESSERA_API_KEY").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
    }
    let out = tessera()
        .args(["loadtest", "--url", "http://127.0.0.1:9", "--rate", "1", "--duration", "1s"])
        .env_remove("TESSERA_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key"));
}

#[test]
fn a_wrong_key_stops_at_the_first_401() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(&TestStore::sqlite(), dir.path(), &[], &[]);
    let start = Instant::now();
    let out = tessera()
        .args(["loadtest", "--url", &format!("http://{}", s.api), "--key", "tsk_not_a_key"])
        .args(["--rate", "50", "--duration", "20s", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("API key was refused") && stderr.contains("401"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(10), "it stopped instead of sending for 20 s");
    assert!(out.stdout.is_empty(), "no report for a run that never started");
    // One request, the usage read; no submission reached the server.
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("/v1/usage") && log.contains("401"), "{log}");
    assert!(!log.contains("method=POST"), "{log}");
}
