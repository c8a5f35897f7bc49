//! Metering end to end on the GPU: several jobs for two tenants (one with a
//! failed attempt and a retry) reconcile to the nanosecond between the ledger
//! (on every backend), the live Prometheus counters, the usage export and
//! counters rebuilt from the ledger; metered GPU time tracks an independent
//! wall clock; the CLI quotes the brief's examples.

use std::collections::BTreeMap;
use std::time::Instant;

use tessera_metering::export::{self, Bucket, Format};
use tessera_metering::{quote, AdmittedQuote, AttemptRef, EventKind, Metrics, Outcome, Pass, PriceBook, TimingSource};
use tessera_store::{EventFilter, JobId, Reservation, Store, Tenant};
use tessera_worker::render::{FrameRenderer, Readback};
use tessera_worker::spec::JobSpec;
use tessera_worker::usage::{Bill, UsageRecorder};

use crate::util::{ctx, rt, spec, tessera, TestStore};

crate::on_every_backend!(ledger_metrics_and_export_reconcile_to_the_nanosecond, cli_metered_render_bills_and_exports);

struct Env<'a> {
    store: &'a Store,
    metrics: &'a Metrics,
    book: &'a PriceBook,
}

/// Runs one attempt of `spec`; `fail_after` ends it as failed after that many frames.
async fn run_attempt(env: &Env<'_>, tenant: &Tenant, job: &str, attempt: u32, spec: &JobSpec, fail_after: Option<u32>) {
    let Env { store, metrics, book } = *env;
    let q = quote(book, &spec.quote_request()).unwrap();
    let id = JobId::new(job);
    // Reserving a job id again (its retry) changes nothing.
    let (req, lane, frames) = (spec.quote_request(), spec.lane, spec.frames);
    let r = Reservation { job: &id, request: &req, lane, frames, price: q.price };
    store.reserve(book, tenant, &r).await.unwrap();
    let timing = if ctx().timestamps { TimingSource::Gpu } else { TimingSource::Host };
    let a = AttemptRef {
        tenant_id: tenant.id.to_string(),
        tier: tenant.tier.clone(),
        job_id: job.into(),
        attempt,
        chunk: None,
    };
    let mut recorder = UsageRecorder::new(store, metrics, a, timing);
    let mut renderer = FrameRenderer::new(ctx(), spec.render_plan()).unwrap();
    let frames = fail_after.unwrap_or(spec.frames);
    for i in 0..frames {
        let f = renderer.render_frame(i, Readback::Jpeg).unwrap();
        recorder.frame(i, &f.times).await.unwrap();
    }
    let closing = recorder.close().await;
    // A failed attempt records its usage and keeps the reservation for its
    // retry; a successful one bills and releases it in one transaction.
    let (events, inserted, outcome) = if fail_after.is_some() {
        let events = closing.events(Outcome::Failed, None);
        let inserted = store.append(&events).await.unwrap();
        (events, inserted, Outcome::Failed)
    } else {
        let admitted = AdmittedQuote::new(book, &spec.quote_request(), &q, spec.frames).unwrap();
        let events = closing.events(Outcome::Succeeded, Some(&Bill::whole(spec, &admitted)));
        let inserted = store.finish_reserved(&id, &events).await.unwrap();
        (events, inserted, Outcome::Succeeded)
    };
    closing.record(metrics, book, outcome, &events, &inserted);
}

/// Sums of an exposed counter, as integers after scaling back (ns for seconds).
fn scrape(text: &str, metric: &str, scale: f64, keys: &[&str]) -> BTreeMap<Vec<String>, i64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&format!("{metric}{{"))) {
        let (labels, value) = line.rsplit_once(' ').unwrap();
        let labels = &labels[metric.len() + 1..labels.len() - 1];
        let map: BTreeMap<&str, &str> = labels
            .split("\",")
            .map(|kv| {
                let (k, v) = kv.split_once("=\"").unwrap();
                (k, v.trim_end_matches('"'))
            })
            .collect();
        let key: Vec<String> = keys.iter().map(|k| map[k].to_string()).collect();
        *out.entry(key).or_insert(0) += (value.parse::<f64>().unwrap() * scale).round() as i64;
    }
    out
}

fn ledger_metrics_and_export_reconcile_to_the_nanosecond(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    // One runtime: a PostgreSQL pool lives on the runtime that opened it.
    let runtime = rt();
    let book = PriceBook::default_book();
    let metrics = Metrics::new(&book.currency);
    let small = |template: &str, variant: &str| {
        spec(serde_json::json!({
            "template": template, "resolution": {"width": 128, "height": 72}, "fps": 24, "duration_s": 0.5,
            "variant": variant, "tiles": {"cols": 2, "rows": 1, "overlap_px": 16},
        }))
    };
    let store = runtime.block_on(async {
        let store = db.open(dir.path()).await;
        let a = store.create_tenant(&book, "acme", "mid", None).await.unwrap();
        let b = store.create_tenant(&book, "globex", "enterprise", None).await.unwrap();
        let env = Env { store: &store, metrics: &metrics, book: &book };
        run_attempt(&env, &a, "job-a1", 1, &small("orbit", "general"), None).await;
        run_attempt(&env, &a, "job-a2", 1, &small("pedestal", "advanced"), None).await;
        run_attempt(&env, &b, "job-b1", 1, &small("dunes", "general"), Some(5)).await;
        // A failed attempt that will be retried keeps its cap reservation.
        let reserved = store.month_usage(&b.id).await.unwrap().reserved_seconds;
        assert_eq!(reserved, rust_decimal::Decimal::new(5, 1));
        run_attempt(&env, &b, "job-b1", 2, &small("dunes", "general"), None).await;
        // Billed: the output now counts as used, not reserved.
        let u = store.month_usage(&b.id).await.unwrap();
        assert_eq!(
            (u.used_seconds, u.reserved_seconds),
            (rust_decimal::Decimal::new(5, 1), rust_decimal::Decimal::ZERO)
        );
        store
    });
    let (ledger, events) = runtime.block_on(async {
        (store.gpu_ns_totals().await.unwrap(), store.events(&EventFilter::default()).await.unwrap())
    });
    // Ledger per (tenant, pass), over outcomes.
    let mut by_pass: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for ((tenant, pass, _), ns) in &ledger {
        *by_pass.entry(vec![tenant.clone(), pass.clone()]).or_insert(0) += ns;
    }
    assert_eq!(by_pass.len(), 6, "two tenants x three passes: {by_pass:?}");
    // The failed attempt's GPU time is kept apart as the operator's cost.
    assert!(ledger.keys().any(|(_, _, outcome)| outcome == "failed"));
    // Live counters, in memory and as scraped.
    let text = metrics.render();
    let scraped = scrape(&text, tessera_metering::prom::GPU_SECONDS_TOTAL, 1e9, &["tenant", "pass"]);
    assert_eq!(scraped, by_pass, "scraped counters differ from the ledger");
    for (k, ns) in &by_pass {
        let pass = match k[1].as_str() {
            "render" => Pass::Render,
            "stitch" => Pass::Stitch,
            _ => Pass::Encode,
        };
        assert_eq!(metrics.gpu_ns(&k[0], pass) as i64, *ns);
    }
    let accrued = scrape(&text, tessera_metering::prom::GPU_ACCRUED_SECONDS_TOTAL, 1e9, &["tenant", "pass"]);
    assert_eq!(accrued, by_pass, "accrued counters differ from the ledger");
    // The export sums to the same.
    let csv = export::render(&events, Format::Csv, Some(Bucket::Minute));
    let mut exported: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f[4] == "gpu" {
            *exported.entry(vec![f[2].to_string(), f[5].to_string()]).or_insert(0) += f[8].parse::<i64>().unwrap();
        }
    }
    assert_eq!(exported, by_pass, "export differs from the ledger");
    // Counters rebuilt from the ledger equal the live ones.
    let replayed = Metrics::new(&book.currency);
    replayed.replay(&book, &events);
    let replay_text = replayed.render();
    for metric in [tessera_metering::prom::GPU_SECONDS_TOTAL, tessera_metering::prom::OUTPUT_SECONDS_TOTAL] {
        let keys: &[&str] = &["tenant", "tier"];
        assert_eq!(scrape(&replay_text, metric, 1e9, keys), scrape(&text, metric, 1e9, keys), "{metric}");
    }
    // One billable output per job: the retried job is billed once.
    let outputs: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Output).collect();
    assert_eq!(outputs.len(), 3);
    let out_ms = scrape(&text, tessera_metering::prom::OUTPUT_SECONDS_TOTAL, 1e3, &["tenant"]);
    assert_eq!(out_ms.values().sum::<i64>(), 1500, "three clips of 12 frames at 24 fps");
}

#[test]
fn metered_gpu_time_tracks_the_wall_clock() {
    // GPU-bound frames: metered render + stitch time against an independent wall
    // clock around each whole frame (which also holds recording and submission).
    let s = spec(serde_json::json!({
        "template": "pedestal", "resolution": {"width": 640, "height": 360}, "fps": 24, "duration_s": 1.0,
        "variant": "advanced", "tiles": {"cols": 2, "rows": 2, "overlap_px": 16},
    }));
    // A device of its own: on the shared one, host-timed frames of tests running
    // beside this one take turns on the GPU, and the wall clock would count the
    // turns this test's frames waited for (not GPU time, rightly not metered).
    let own = tessera_worker::gpu::GpuContext::open().unwrap();
    let mut renderer = FrameRenderer::new(&own, s.render_plan()).unwrap();
    renderer.render_frame(0, Readback::None).unwrap();
    let (mut metered, mut wall, mut per_frame) = (0u64, 0u128, Vec::new());
    for i in 1..=6 {
        let start = Instant::now();
        let f = renderer.render_frame(i * 3, Readback::None).unwrap();
        let w = start.elapsed().as_nanos();
        let m = f.times.render_ns + f.times.stitch_ns;
        per_frame.push((w as f64 - m as f64).abs() / w as f64 * 100.0);
        wall += w;
        metered += m;
    }
    let diff = (wall as f64 - metered as f64).abs() / wall as f64 * 100.0;
    per_frame.sort_by(f64::total_cmp);
    let median = (per_frame[2] + per_frame[3]) / 2.0;
    eprintln!(
        "metered {:.3} s vs wall {:.3} s: {diff:.2} % apart over 6 frames, median frame {median:.2} % (timing {})",
        metered as f64 / 1e9,
        wall as f64 / 1e9,
        renderer.timing_source().as_str()
    );
    // The median frame keeps a test thread that other tests preempt from failing
    // a bound that is about metering, not about this machine's load.
    assert!(median < 2.0, "metered GPU time is {median:.2} % off the wall clock on the median frame");
}

#[test]
fn cli_quotes_the_brief_and_refuses_bad_price_books_and_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let a = write("a.json", r#"{"template": "orbit", "resolution": "1080p", "fps": 30, "duration_s": 150}"#);
    let b = write(
        "b.toml",
        "template = \"orbit\"\nresolution = \"4k\"\nfps = 60\nduration_s = 300\nvariant = \"advanced\"\n",
    );
    let o = tessera().args(["quote", &a, "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["price"], "2.38");
    assert!(v["cost"]["compute"].is_string() && v["line_items"].as_array().unwrap().len() == 4);
    let o = tessera().args(["quote", &b, "--json", "--base-rate", "0.02"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["price"], "12.94");
    // A broken price book is refused at start, naming the key, exit 2.
    let broken = write(
        "book.toml",
        &tessera_metering::price::DEFAULT_PRICE_BOOK.replace("\"1080p\" = \"1.2\"", "\"1080p\" = 1.2"),
    );
    let o = tessera().args(["quote", &a, "--price-book", &broken]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("price.resolution.1080p") && err.contains("binary floats"), "{err}");
    // Tenants: a short-tier tenant may not render 1080p; the refusal names tier and limit.
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let o = tessera().args(["tenants", "add", "acme", "--tier", "short", "--data", data]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tessera().args(["tenants", "add", "acme", "--tier", "short", "--data", data]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "a duplicate tenant was accepted");
    let o = tessera().args(["tenants", "add", "x", "--tier", "platinum", "--data", data]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown tier `platinum`"));
    let o = tessera().args(["render", &a, "-o", "x.avi", "--tenant", "acme", "--data", data]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("admission refused: tier `short` renders up to 720p"), "{err}");
    let o = tessera().args(["quote", &a, "--tenant", "acme", "--data", data, "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["admission"]["admissible"], false);
    assert_eq!(v["admission"]["refusal"]["limit"], "resolution");
}

fn cli_metered_render_bills_and_exports(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Every command that opens the store takes --db.
    let url = db.url(&data);
    let url = url.as_str();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"template": "orbit", "resolution": {"width": 96, "height": 54}, "fps": 24, "duration_s": 0.25}"#,
    )
    .unwrap();
    let out = dir.path().join("c.avi");
    assert!(tessera().args(["tenants", "add", "acme", "--tier", "mid", "--db", url]).status().unwrap().success());
    let o = tessera().args(["tenants", "list", "--json", "--db", url]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["name"], "acme");
    let o = tessera()
        .args(["render", spec.to_str().unwrap(), "-o", out.to_str().unwrap(), "--tenant", "acme", "--db", url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("; billed 6 frames (0.25 s) 0.00 USD to tenant acme as job j_"));
    let o =
        tessera().args(["quote", spec.to_str().unwrap(), "--tenant", "acme", "--db", url, "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["admission"]["admissible"], true, "{v}");
    let o = tessera()
        .args(["usage", "export", "--db", url, "--format", "cloudevents", "--tenant", "acme"])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().all(|e| e["specversion"] == "1.0" && e["id"].is_string() && e["time"].is_string()));
    assert_eq!(lines.iter().filter(|e| e["type"] == "io.tessera.usage.output").count(), 1);
    // Six frames in one window: one GPU event per pass, each covering all six.
    let gpu: Vec<_> = lines.iter().filter(|e| e["type"] == "io.tessera.usage.gpu").collect();
    assert_eq!(gpu.len(), 3, "{gpu:?}");
    assert!(gpu.iter().all(|e| e["data"]["frames"] == 6 && e["data"]["seq"] == 0), "{gpu:?}");
    let o =
        tessera().args(["usage", "export", "--db", url, "--format", "csv", "--from", "yesterday"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = tessera().args(["usage", "metrics", "--db", url]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("tessera_gpu_seconds_total{"));
    // A store URL of another kind is a usage error that says what to write.
    let o = tessera().args(["tenants", "list", "--db", "mysql://root:hunter2@db/tessera"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("postgres://") && !err.contains("hunter2"), "{err}");
}

#[test]
fn concurrent_jobs_on_a_host_timed_gpu_are_never_billed_for_each_others_work() {
    // Host timing measures submit-to-done; if passes of several jobs shared the
    // queue, each would be billed for the others' work too. Host-timed passes
    // hold the GPU to themselves, so the time billed to all jobs together fits
    // inside the wall time they ran in.
    if ctx().timestamps {
        eprintln!("passes are timed with GPU timestamps on this adapter; nothing to test");
        return;
    }
    let s = spec(serde_json::json!({
        "template": "pedestal", "resolution": {"width": 320, "height": 180}, "fps": 24, "duration_s": 1.0,
    }));
    let mut renderers: Vec<FrameRenderer<'_>> =
        (0..3).map(|_| FrameRenderer::new(ctx(), s.render_plan()).unwrap()).collect();
    for r in &mut renderers {
        r.render_frame(0, Readback::Jpeg).unwrap();
    }
    let start = Instant::now();
    let billed: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = renderers
            .iter_mut()
            .map(|r| {
                scope.spawn(move || {
                    (1..=6).map(|i| r.render_frame(i, Readback::Jpeg).unwrap().times.total_ns()).sum::<u64>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let wall = start.elapsed().as_nanos() as u64;
    eprintln!("3 concurrent jobs: {:.3} s billed in {:.3} s of wall time", billed as f64 / 1e9, wall as f64 / 1e9);
    assert!(billed > 0 && billed <= wall, "billed {billed} ns of GPU time in {wall} ns of wall time");
}
