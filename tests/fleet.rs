//! A fleet: three `tessera serve` processes (each with its own lavapipe device
//! and pipeline cache) on one PostgreSQL and one shared data directory, with a
//! short lease. 63 jobs across lanes and three tenants are submitted through
//! different workers while workers are `kill -9`ed and restarted at random and
//! one is paused (SIGSTOP) past its lease and resumed. Every job must succeed
//! exactly once, be billed once from its final attempt, download from every
//! worker byte-identical to the same spec rendered alone by `tessera render`,
//! and decode in ffmpeg; the paused worker's late work must reach nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use tessera_metering::EventKind;

use crate::util::{http, rt, tessera, Server, TestStore};

/// The four distinct clips of the run (the lane is added per job).
fn clips() -> Vec<serde_json::Value> {
    vec![
        json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.25}),
        json!({"template": "dunes", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.5}),
        json!({"template": "pedestal", "resolution": {"width": 96, "height": 54}, "fps": 24, "duration_s": 0.25,
               "tiles": {"cols": 2, "rows": 1, "overlap_px": 16}}),
        json!({"template": "orbit", "resolution": {"width": 80, "height": 46}, "fps": 30, "duration_s": 0.4, "seed": 5}),
    ]
}

const ARGS: &[&str] = &["--lease-s", "2", "--concurrency", "3", "--max-concurrency", "3", "--backoff-base-ms", "100"];

fn start(db: &TestStore, data: &Path, n: usize) -> Server {
    let cache = data.join(format!("cache-{n}"));
    let mut args = ARGS.to_vec();
    args.extend(["--pipeline-cache", cache.to_str().unwrap()]);
    Server::start_on(db, data, &args, &[])
}

fn signal(s: &Server, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &s.child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

/// A job submitted, and what it must come out as.
struct Submitted {
    id: String,
    key: String,
    clip: usize,
}

struct Tenants {
    keys: Vec<String>,
}

impl Tenants {
    fn lanes(t: usize) -> &'static [&'static str] {
        // Only the enterprise tier may use the urgent lane.
        if t == 1 {
            &["urgent", "standard", "bulk"]
        } else {
            &["standard", "bulk"]
        }
    }
}

fn submit(fleet: &[Server], tenants: &Tenants, i: usize) -> Submitted {
    let (t, clip) = (i % 3, (i / 3) % 4);
    let lanes = Tenants::lanes(t);
    let mut spec = clips()[clip].clone();
    spec["lane"] = json!(lanes[(i / 12) % lanes.len()]);
    let key = format!("fleet-{i}");
    let r = fleet[i % fleet.len()].submit(&tenants.keys[t], &spec, Some(&key));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    Submitted { id: r.json()["id"].as_str().unwrap().to_string(), key: tenants.keys[t].clone(), clip }
}

/// Restarts worker `n` after a `kill -9`.
fn kill_and_restart(fleet: &mut [Server], db: &TestStore, data: &Path, n: usize) {
    fleet[n].kill9();
    fleet[n] = start(db, data, n);
}

fn running_on(s: &Server, keys: &[String], worker: &str) -> Vec<(String, u64)> {
    let mut held = Vec::new();
    for k in keys {
        let auth = format!("Bearer {k}");
        let list = http(&s.api, "GET", "/v1/jobs?state=running&limit=200", &[("Authorization", &auth)], b"").json();
        for j in list["jobs"].as_array().unwrap() {
            if j["worker"] == worker {
                held.push((j["id"].as_str().unwrap().to_string(), j["attempts"].as_u64().unwrap()));
            }
        }
    }
    held
}

fn worker_id(s: &Server) -> String {
    http(&s.api, "GET", "/readyz", &[], b"").json()["worker"].as_str().unwrap().to_string()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn three_workers_on_one_postgres_survive_kills_and_a_pause_billing_every_job_once() {
    let Some(db) = TestStore::postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shared");
    let mut fleet: Vec<Server> = (0..3).map(|n| start(&db, &data, n)).collect();
    let tenants = Tenants {
        keys: vec![
            fleet[0].tenant("acme", "mid"),
            fleet[1].tenant("globex", "enterprise"),
            fleet[2].tenant("initech", "short"),
        ],
    };
    // A seed for the order of kills, printed so a failing run can be replayed.
    let seed = std::env::var("TESSERA_FLEET_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("fleet test seed: TESSERA_FLEET_SEED={seed}");
    let mut rng = seed;
    let mut pick = move || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) as usize % 3
    };
    let mut jobs: Vec<Submitted> = (0..24).map(|i| submit(&fleet, &tenants, i)).collect();

    // The same Idempotency-Key through another worker is the same job; through
    // a third with another body, a 409. Three workers racing one new key: one job.
    let mut first = clips()[0].clone();
    first["lane"] = json!("standard");
    let again = fleet[1].submit(&tenants.keys[0], &first, Some("fleet-0"));
    assert_eq!((again.status, again.json()["id"].as_str().unwrap()), (200, jobs[0].id.as_str()));
    let conflict = fleet[2].submit(&tenants.keys[0], &clips()[1], Some("fleet-0"));
    assert_eq!(conflict.status, 409);
    let racers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> =
            fleet.iter().map(|w| s.spawn(|| w.submit(&tenants.keys[1], &clips()[2], Some("fleet-race")))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: BTreeSet<String> = racers.iter().map(|r| r.json()["id"].as_str().unwrap().to_string()).collect();
    let created = racers.iter().filter(|r| r.status == 201).count();
    assert_eq!((ids.len(), created), (1, 1), "one key through three workers made {} jobs", ids.len());
    jobs.push(Submitted { id: ids.into_iter().next().unwrap(), key: tenants.keys[1].clone(), clip: 2 });

    std::thread::sleep(Duration::from_millis(600));
    let n = pick();
    kill_and_restart(&mut fleet, &db, &data, n);
    jobs.extend((24..44).map(|i| submit(&fleet, &tenants, i)));

    // Pause a worker that holds running attempts past its lease, then resume it.
    let paused = pick();
    let paused_id = worker_id(&fleet[paused]);
    let start_wait = Instant::now();
    let held = loop {
        let held = running_on(&fleet[(paused + 1) % 3], &tenants.keys, &paused_id);
        if !held.is_empty() {
            break held;
        }
        assert!(start_wait.elapsed() < Duration::from_secs(60), "worker {paused_id} never held a running job");
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(&fleet[paused], "-STOP");
    std::thread::sleep(Duration::from_secs(5));
    signal(&fleet[paused], "-CONT");

    jobs.extend((44..62).map(|i| submit(&fleet, &tenants, i)));
    std::thread::sleep(Duration::from_millis(800));
    let mut n = pick();
    if n == paused {
        n = (n + 1) % 3; // keep the resumed worker alive to see its late work refused
    }
    kill_and_restart(&mut fleet, &db, &data, n);
    assert!(jobs.len() >= 60);

    // Every job succeeds, on some worker, without one failed attempt.
    let deadline = Duration::from_secs(240);
    let mut done = BTreeMap::new();
    for j in &jobs {
        let v = fleet[0].wait(&j.key, &j.id, deadline);
        assert_eq!(v["state"], "succeeded", "{v}");
        assert_eq!(v["failures"], 0, "{v}");
        done.insert(j.id.clone(), v);
    }
    let renderers: BTreeSet<&str> = done.values().map(|v| v["worker"].as_str().unwrap()).collect();
    assert!(renderers.len() >= 2, "one worker rendered everything: {renderers:?}");

    // The paused worker's attempts were taken over; it learned so and gave up.
    for (id, attempt) in &held {
        let v = &done[id];
        assert!(v["attempts"].as_u64().unwrap() > *attempt, "{id} was not taken over: {v}");
        assert!(v["interruptions"].as_u64().unwrap() >= 1, "{v}");
        assert!(v["errors"].to_string().contains("lease expired"), "{v}");
    }
    let abandoned = || -> f64 {
        let scrape = String::from_utf8(http(&fleet[paused].metrics, "GET", "/metrics", &[], b"").body).unwrap();
        scrape
            .lines()
            .filter(|l| l.starts_with("tessera_jobs_total{") && l.contains("outcome=\"abandoned\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let start_wait = Instant::now();
    while abandoned() < 1.0 && start_wait.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let abandoned = abandoned();
    assert!(abandoned >= 1.0, "the resumed worker did not abandon its lost attempts:\n{}", fleet[paused].log_tail(60));

    let interruptions: u64 = done.values().map(|v| v["interruptions"].as_u64().unwrap()).sum();
    eprintln!(
        "fleet: {} jobs on {} workers, {interruptions} interrupted attempts, {} attempts taken from the paused worker, {abandoned} abandoned by it",
        jobs.len(),
        renderers.len(),
        held.len()
    );

    // The same specs rendered alone, and decoded by ffmpeg.
    let solo: Vec<Vec<u8>> = clips()
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let (file, out) = (dir.path().join(format!("spec{i}.json")), dir.path().join(format!("solo{i}.avi")));
            std::fs::write(&file, spec.to_string()).unwrap();
            let o = tessera().args(["render", file.to_str().unwrap(), "-o", out.to_str().unwrap()]).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            std::fs::read(out).unwrap()
        })
        .collect();
    // Every clip from every worker: the same bytes as the solo render.
    let mut downloads = 0;
    for j in &jobs {
        let auth = format!("Bearer {}", j.key);
        let mut first: Option<Vec<u8>> = None;
        for w in &fleet {
            let r = http(&w.api, "GET", &format!("/v1/jobs/{}/output", j.id), &[("Authorization", &auth)], b"");
            assert_eq!(r.status, 200, "{} from {}", j.id, w.api);
            assert_eq!(sha256(&r.body), sha256(&solo[j.clip]), "{} differs from its solo render", j.id);
            first.get_or_insert(r.body);
            downloads += 1;
        }
        assert_eq!(done[&j.id]["output"]["sha256"], sha256(&solo[j.clip]));
        let file = dir.path().join("download.avi");
        std::fs::write(&file, first.unwrap()).unwrap();
        let decode = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&file)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        assert!(decode.status.success() && decode.stderr.is_empty(), "{}", String::from_utf8_lossy(&decode.stderr));
        let probe = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
            .arg(&file)
            .output()
            .unwrap();
        let frames: u64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap();
        assert_eq!(frames, done[&j.id]["frames_total"].as_u64().unwrap(), "{}", j.id);
    }

    // The ledger: one billable output per job, from its final attempt, at its
    // price; every download metered once, by the worker that served it.
    let events = rt().block_on(async { db.open(&data).await.events(&Default::default()).await.unwrap() });
    for j in &jobs {
        let v = &done[&j.id];
        let outputs: Vec<_> = events.iter().filter(|e| e.job_id == j.id && e.kind == EventKind::Output).collect();
        assert_eq!(outputs.len(), 1, "{} billed {} times", j.id, outputs.len());
        assert_eq!(
            u64::from(outputs[0].attempt),
            v["attempts"].as_u64().unwrap(),
            "{} billed from a stale attempt",
            j.id
        );
        let price: rust_decimal::Decimal = v["price"].as_str().unwrap().parse().unwrap();
        assert_eq!(outputs[0].amount_micros, tessera_metering::price::to_micros(price));
    }
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::Egress).count(), downloads);
    // Each tenant's bill is the sum of its jobs' output seconds, whatever worker it asks.
    for (t, key) in tenants.keys.iter().enumerate() {
        let want: rust_decimal::Decimal = jobs
            .iter()
            .filter(|j| &j.key == key)
            .map(|j| {
                let v = &done[&j.id];
                rust_decimal::Decimal::from(v["frames_total"].as_u64().unwrap())
                    / rust_decimal::Decimal::from(v["spec"]["fps"].as_u64().unwrap())
            })
            .sum();
        for w in &fleet {
            let usage = http(&w.api, "GET", "/v1/usage", &[("Authorization", &format!("Bearer {key}"))], b"").json();
            let got: rust_decimal::Decimal = usage["output_seconds"].as_str().unwrap().parse().unwrap();
            assert_eq!(got, want.normalize(), "tenant {t} on {}", w.api);
        }
    }

    // The registry: the three live workers, and the killed ones as not alive.
    let list = http(&fleet[2].api, "GET", "/v1/workers", &[("Authorization", "Bearer admin-secret")], b"").json();
    let workers = list["workers"].as_array().unwrap();
    let alive: BTreeSet<&str> =
        workers.iter().filter(|w| w["alive"] == true).map(|w| w["id"].as_str().unwrap()).collect();
    let live: BTreeSet<String> = fleet.iter().map(worker_id).collect();
    assert_eq!(alive, live.iter().map(String::as_str).collect(), "{list}");
    assert!(workers.len() >= 5, "killed workers should stay in the registry, not alive: {list}");
    let known: BTreeSet<&str> = workers.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert!(renderers.is_subset(&known), "a job names a worker the registry does not know");
    assert_eq!(
        http(&fleet[0].api, "GET", "/v1/workers", &[("Authorization", &format!("Bearer {}", tenants.keys[0]))], b"")
            .status,
        403
    );

    // The losers' clips are gone: one clip and one sidecar per job remain.
    let start_wait = Instant::now();
    let files = || std::fs::read_dir(data.join("clips")).unwrap().flatten().count();
    while files() != jobs.len() * 2 && start_wait.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(files(), jobs.len() * 2, "stale clips or partial files remain in the shared directory");
}

/// The sum of a counter over every series of a worker's `/metrics`.
fn counter_sum(s: &Server, name: &str) -> f64 {
    let scrape = String::from_utf8(http(&s.metrics, "GET", "/metrics", &[], b"").body).unwrap();
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Counters = ledger after a pause: a worker paused past its lease while it
/// renders, then resumed, has its attempts reaped by the other worker (which
/// counts what the ledger held then) and abandons them (recording, with its
/// counters, what the reaper could not have seen). Once the fleet is quiet,
/// `tessera_gpu_seconds_total` summed over both workers is the ledger's GPU time.
#[test]
fn a_paused_then_resumed_worker_leaves_the_counters_equal_to_the_ledger() {
    let Some(db) = TestStore::postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shared");
    let fleet: Vec<Server> = (0..2).map(|n| start(&db, &data, n)).collect();
    let key = fleet[0].tenant("acme", "mid");
    let keys = vec![key.clone()];
    let spec = json!({"template": "dunes", "resolution": {"width": 320, "height": 180}, "fps": 24, "duration_s": 3,
                      "tiles": {"cols": 2, "rows": 1, "overlap_px": 16}});
    let ids: Vec<String> =
        (0..4).map(|i| fleet[i % 2].submit(&key, &spec, None).json()["id"].as_str().unwrap().to_string()).collect();
    // Pause worker 1 while it holds running attempts, past its 2 s lease and
    // past a usage window's ten seconds of wall time. (Whether it flushes a
    // window before it learns of the reap depends on timing; the store's
    // conformance suite refuses such a late window deterministically.)
    let paused_id = worker_id(&fleet[1]);
    let start_wait = Instant::now();
    while running_on(&fleet[0], &keys, &paused_id).is_empty() {
        assert!(start_wait.elapsed() < Duration::from_secs(60), "worker {paused_id} never held a running job");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&fleet[1], "-STOP");
    std::thread::sleep(Duration::from_secs(11));
    signal(&fleet[1], "-CONT");
    for id in &ids {
        let v = fleet[0].wait(&key, id, Duration::from_secs(240));
        assert_eq!(v["state"], "succeeded", "{v}");
    }
    // Quiet: no attempt left anywhere, and the resumed worker has given up its lost ones.
    let ledger_gpu_s = || -> f64 {
        let events = rt().block_on(async { db.open(&data).await.events(&Default::default()).await.unwrap() });
        let ns: i64 = events.iter().filter(|e| e.kind == EventKind::Gpu).map(|e| e.quantity).sum();
        ns as f64 / 1e9
    };
    let start_wait = Instant::now();
    let (mut ledger, mut counted) = (0.0, -1.0);
    while start_wait.elapsed() < Duration::from_secs(30) {
        ledger = ledger_gpu_s();
        counted = fleet.iter().map(|s| counter_sum(s, "tessera_gpu_seconds_total")).sum::<f64>();
        if (ledger - counted).abs() < 1e-6 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(ledger > 0.0);
    let abandoned: f64 = String::from_utf8(http(&fleet[1].metrics, "GET", "/metrics", &[], b"").body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("tessera_jobs_total{") && l.contains("outcome=\"abandoned\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        abandoned >= 1.0,
        "the paused worker abandoned nothing: the test proved nothing\n{}",
        fleet[1].log_tail(40)
    );
    assert!(
        (ledger - counted).abs() < 1e-6,
        "the fleet counted {counted} GPU s, the ledger holds {ledger} s\n{}",
        fleet[1].log_tail(40)
    );
}
