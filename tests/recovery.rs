//! Faults a worker must ride out and recover from by itself: twenty `kill -9`
//! of the only worker during a batch (every backend), and a data directory on
//! a filesystem that fills up (SQLite, on a small tmpfs): clear errors while
//! it lasts, an API that keeps answering, and every job succeeding, billed
//! once, once space is freed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_metering::EventKind;

use crate::util::{http, rt, Server, TestStore};

crate::on_every_backend!(twenty_kills_of_one_worker_lose_nothing_and_bill_each_job_once);

fn job(i: usize) -> serde_json::Value {
    let (template, lane) = (["orbit", "dunes", "pedestal"][i % 3], ["standard", "bulk"][i % 2]);
    json!({"template": template, "resolution": {"width": 96, "height": 54},
           "fps": 24, "duration_s": 0.5 + 0.25 * (i % 3) as f64, "seed": i, "lane": lane})
}

/// Exactly one billable output per job, from the job's final attempt.
fn assert_billed_once(db: &TestStore, data: &Path, jobs: &[(String, serde_json::Value)]) {
    let events = rt().block_on(async { db.open(data).await.events(&Default::default()).await.unwrap() });
    for (id, view) in jobs {
        let outputs: Vec<_> = events.iter().filter(|e| &e.job_id == id && e.kind == EventKind::Output).collect();
        assert_eq!(outputs.len(), 1, "job {id} billed {} times", outputs.len());
        assert_eq!(
            u64::from(outputs[0].attempt),
            view["attempts"].as_u64().unwrap(),
            "{id} billed from a lost attempt"
        );
    }
}

fn twenty_kills_of_one_worker_lose_nothing_and_bill_each_job_once(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--lease-s", "1", "--concurrency", "4", "--backoff-base-ms", "50"];
    let mut s = Server::start_on(db, dir.path(), &args, &[]);
    let key = s.tenant("acme", "mid");
    let ids: Vec<String> = (0..12)
        .map(|i| s.submit(&key, &job(i), Some(&format!("batch-{i}"))).json()["id"].as_str().unwrap().to_string())
        .collect();
    for kill in 0..20u64 {
        // Between 0.4 and 1.2 s: sometimes before the lost leases expire, sometimes after.
        std::thread::sleep(Duration::from_millis(400 + (kill * 373) % 800));
        s.kill9();
        s = Server::start_on(db, dir.path(), &args, &[]);
    }
    let mut jobs = Vec::new();
    let mut interruptions = 0;
    for id in &ids {
        let v = s.wait(&key, id, Duration::from_secs(180));
        assert_eq!(v["state"], "succeeded", "{v}");
        assert_eq!(v["failures"], 0, "a kill spent the failure budget: {v}");
        interruptions += v["interruptions"].as_u64().unwrap();
        jobs.push((id.clone(), v));
    }
    eprintln!("20 kills: {} jobs succeeded after {interruptions} interrupted attempts", ids.len());
    assert!(interruptions >= 5, "the kills hardly landed ({interruptions} interruptions): the test proved little");
    assert_billed_once(db, dir.path(), &jobs);
    let auth = format!("Bearer {key}");
    let usage = http(&s.api, "GET", "/v1/usage", &[("Authorization", &auth)], b"").json();
    let want: f64 = (0..12).map(|i| (12 + 6 * (i % 3)) as f64 / 24.0).sum();
    let got: f64 = usage["output_seconds"].as_str().unwrap().parse().unwrap();
    assert!((got - want).abs() < 1e-9, "billed {got} s of output for {want} s of clips");
}

/// A tmpfs of `mib` MiB mounted at a fresh directory, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts one, or `None` (skipped loudly) where this process may not mount;
    /// `TESSERA_REQUIRE_MOUNT=1` (CI) makes that a failure instead.
    fn mount(mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { path, _dir: dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("TESSERA_REQUIRE_MOUNT").as_deref() != Ok("1"),
                    "TESSERA_REQUIRE_MOUNT=1 but a tmpfs cannot be mounted: {why}"
                );
                eprintln!("SKIPPED (full disk): cannot mount a small tmpfs here ({why}); run as root");
                None
            }
        }
    }

    /// Fills the free space with one file; returns it.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Whatever partial chunk fitted: the disk is now full to the byte.
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount").arg("-l").arg(&self.path).status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not unmount {}", self.path.display());
        }
    }
}

#[test]
fn a_full_disk_interrupts_attempts_clearly_and_they_succeed_once_space_is_freed() {
    let Some(disk) = SmallDisk::mount(24) else { return };
    let db = TestStore::sqlite();
    let args = ["--lease-s", "2", "--backoff-base-ms", "200", "--backoff-cap-ms", "1000"];
    let s = Server::start_on(&db, &disk.path, &args, &[]);
    let key = s.tenant("acme", "mid");
    let auth = format!("Bearer {key}");
    let spec = |i: usize| json!({"template": "orbit", "resolution": {"width": 320, "height": 180}, "fps": 24, "duration_s": 2.0, "seed": i});
    let ids: Vec<String> =
        (0..4).map(|i| s.submit(&key, &spec(i), None).json()["id"].as_str().unwrap().to_string()).collect();
    // Fill the disk while the clips are being written.
    let start = Instant::now();
    while s.job(&key, &ids[0])["frames_done"].as_u64().unwrap_or(0) < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "the first job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let filler = disk.fill();
    // While it is full: the API answers; reads work; a submission is a clear
    // 503, never a 500 or a hang.
    let outage = Instant::now();
    let mut refused = None;
    while outage.elapsed() < Duration::from_secs(4) {
        for id in &ids {
            let r = http(&s.api, "GET", &format!("/v1/jobs/{id}"), &[("Authorization", &auth)], b"");
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
        let r = s.submit(&key, &spec(99), None);
        assert!(r.status == 503 || r.status == 201, "{} {}", r.status, String::from_utf8_lossy(&r.body));
        if r.status == 503 {
            assert_eq!(r.header("retry-after"), Some("1"));
            refused = Some(r.json()["error"]["message"].as_str().unwrap().to_string());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(http(&s.api, "GET", "/healthz", &[], b"").status, 200);
    std::fs::remove_file(filler).unwrap();
    // Space is back: every job succeeds by itself, none stays running.
    let mut jobs = Vec::new();
    let mut no_space = 0;
    for id in &ids {
        let v = s.wait(&key, id, Duration::from_secs(120));
        assert_eq!(v["state"], "succeeded", "{v}\n{}", s.log_tail(40));
        assert_eq!(v["failures"], 0, "a full disk spent the failure budget: {v}");
        if v["errors"].to_string().contains("no space") {
            no_space += 1;
        }
        jobs.push((id.clone(), v));
    }
    assert!(no_space >= 1, "no attempt reported the full disk: {jobs:?}");
    if let Some(message) = &refused {
        assert!(message.contains("no space") || message.contains("full"), "{message}");
    }
    let running = http(&s.api, "GET", "/v1/jobs?state=running", &[("Authorization", &auth)], b"").json();
    assert_eq!(running["jobs"].as_array().unwrap().len(), 0, "{running}");
    eprintln!("full disk: {no_space} of {} jobs reported it; submissions during the outage: {refused:?}", ids.len());
    drop(s);
    assert_billed_once(&db, &disk.path, &jobs[..]);
}
