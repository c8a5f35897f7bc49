//! A real Prometheus (Debian's `prometheus`) scrapes a two-worker fleet on
//! PostgreSQL every second, with `deploy/prometheus`'s recording and alert
//! rules loaded, while jobs run through both workers. Its HTTP API must then
//! agree with the ledger, read independently from the store:
//!
//! - `increase()` of the billing counters (money by bucket, GPU seconds) over
//!   the run, evaluated per worker at that worker's last scrape, equals the
//!   ledger's totals (the series exist at zero before the first job, so there
//!   is nothing to extrapolate);
//! - evaluated once for the whole fleet at an arbitrary instant, it lies
//!   within the documented extrapolation error: at least the ledger's total,
//!   at most `1 + 1.1 × scrape interval / window` times it (README, "Operate");
//! - the recording rules produce series, every rule evaluates without error,
//!   and no alert fires on a healthy fleet.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_metering::{EventKind, Metrics, PriceBook};
use tessera_store::EventFilter;

use crate::util::{http, rt, Server, TestStore};

/// Seconds between scrapes and between rule evaluations.
const SCRAPE_S: f64 = 1.0;

#[test]
fn prometheus_increase_over_a_fleet_run_equals_the_ledger() {
    let Some(db) = TestStore::postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let workers = [start(&db, &data, 0), start(&db, &data, 1)];
    let tenants = [tenant(&workers[0], "acme", "mid"), tenant(&workers[1], "globex", "enterprise")];
    // Both workers show both tenants' series at zero (the registry is read every 5 s).
    for w in &workers {
        wait_for(Duration::from_secs(20), "both tenants' zero series on every worker", || {
            let text = String::from_utf8_lossy(&http(&w.metrics, "GET", "/metrics", &[], b"").body).into_owned();
            tenants.iter().all(|(id, _)| text.contains(&format!("tenant=\"{id}\"")))
        });
    }
    let prom = Prometheus::start(dir.path(), &[&workers[0].metrics, &workers[1].metrics]);
    wait_for(Duration::from_secs(30), "Prometheus to scrape both workers' zero series", || {
        prom.scalar("count(tessera_charges_total{bucket=\"price\"} == 0)") == Some(4.0)
    });
    let started = prom.scalar("time()").unwrap();

    // Jobs of both tenants through both workers, and one download.
    let specs = [
        json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.25}),
        json!({"template": "dunes", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.5,
               "lane": "bulk"}),
        json!({"template": "pedestal", "resolution": {"width": 96, "height": 54}, "fps": 30, "duration_s": 0.2,
               "tiles": {"cols": 2, "rows": 1, "overlap_px": 16}}),
    ];
    let mut jobs = Vec::new();
    for (i, spec) in specs.iter().cycle().take(8).enumerate() {
        let (w, (_, key)) = (&workers[i % 2], &tenants[i % 2]);
        let r = w.submit(key, spec, None);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        jobs.push((i, r.json()["id"].as_str().unwrap().to_string()));
    }
    for (i, id) in &jobs {
        let done = workers[i % 2].wait(&tenants[i % 2].1, id, Duration::from_secs(300));
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let (i, id) = &jobs[0];
    let auth = format!("Bearer {}", tenants[i % 2].1);
    let clip = http(&workers[1].api, "GET", &format!("/v1/jobs/{id}/output"), &[("Authorization", &auth)], b"");
    assert_eq!(clip.status, 200);

    // The ledger, read from the store.
    let events = rt().block_on(async { db.open(&data).await.events(&EventFilter::default()).await.unwrap() });
    let price_micros: i64 = events.iter().filter(|e| e.kind == EventKind::Output).map(|e| e.amount_micros).sum();
    let gpu_ns: i64 = events.iter().filter(|e| e.kind == EventKind::Gpu).map(|e| e.quantity).sum();
    assert!(price_micros > 0 && gpu_ns > 0);
    assert!(events.iter().any(|e| e.kind == EventKind::Egress));
    let ledger = ledger_buckets(&events);
    assert_eq!(ledger["price"], price_micros as f64 / 1e6, "the replayed ledger's price is its events' sum");

    // Prometheus has the workers' final counters once the sums stop moving
    // and equal the ledger's (the counters hold the ledger's integers).
    let price_now = format!("sum(tessera_charges_total{{bucket=\"price\"}}) == {}", price_micros as f64 / 1e6);
    wait_for(Duration::from_secs(30), "the final counters in Prometheus", || prom.scalar(&price_now).is_some());
    std::thread::sleep(Duration::from_secs_f64(2.5 * SCRAPE_S));
    let now = prom.scalar("time()").unwrap();
    let window = (now - started).ceil() as u64 + 2;

    // Per worker at its own last scrape: exact.
    for (bucket, expected) in &ledger {
        let got = per_instance_sum(&prom, &workers, |i| {
            format!("sum(increase(tessera_charges_total{{bucket=\"{bucket}\",instance=\"{i}\"}}[{window}s]))")
        });
        assert_close(got, *expected, 1e-9, &format!("{bucket} charges, per worker at its last scrape"));
    }
    let gpu_s = gpu_ns as f64 / 1e9;
    let got = per_instance_sum(&prom, &workers, |i| {
        format!("sum(increase(tessera_gpu_seconds_total{{instance=\"{i}\"}}[{window}s]))")
    });
    assert_close(got, gpu_s, 1e-9, "GPU seconds, per worker at its last scrape");

    // The fleet at one instant: within the documented extrapolation error.
    let bound = 1.0 + 1.1 * SCRAPE_S / (window as f64 - 2.0 * SCRAPE_S);
    for (what, expr, expected) in [
        ("price", format!("sum(increase(tessera_charges_total{{bucket=\"price\"}}[{window}s]))"), ledger["price"]),
        ("GPU seconds", format!("sum(increase(tessera_gpu_seconds_total[{window}s]))"), gpu_s),
    ] {
        let got = prom.scalar(&expr).unwrap();
        assert!(
            got >= expected * (1.0 - 1e-9) && got <= expected * bound,
            "{what}: increase() {got} outside [{expected}, {expected} x {bound:.4}]"
        );
    }
    // Output seconds: their series are born with a resolution's first job (a
    // label no worker can know beforehand), so `increase()` misses that job;
    // the counters themselves, from workers started for this run, are exact.
    let output_s: f64 = events
        .iter()
        .filter(|e| e.kind == EventKind::Output)
        .map(|e| e.quantity as f64 / f64::from(e.fps.unwrap()))
        .sum();
    assert_close(prom.scalar("sum(tessera_output_seconds_total)").unwrap(), output_s, 1e-9, "output seconds");
    // The ledger's own total, as the workers read it from the store.
    assert_close(prom.scalar("max(tessera_ledger_charges_total)").unwrap(), ledger["price"], 1e-9, "ledger metric");
    assert_eq!(prom.scalar("max(tessera_fleet_workers{state=\"alive\"})"), Some(2.0));

    // The rules: all evaluate cleanly, the billing and fleet ones have series, nothing fires.
    std::thread::sleep(Duration::from_secs_f64(2.0 * SCRAPE_S));
    let rules = prom.get("/api/v1/rules");
    let mut recorded = Vec::new();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "rule {} failed: {}", rule["name"], rule["lastError"]);
            if rule["type"] == "recording" {
                recorded.push(rule["name"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(recorded.len() >= 6, "recording rules loaded: {recorded:?}");
    let empty: Vec<&String> = recorded
        .iter()
        .filter(|r| ["gpu_seconds", "output_seconds", "charges", "busy", "in_flight"].iter().any(|k| r.contains(k)))
        // The ledger's hour is a difference with its value an hour ago: empty
        // until Prometheus has an hour of it (documented in the rule).
        .filter(|r| !r.contains("ledger"))
        .filter(|r| prom.scalar(&format!("count({r})")).is_none())
        .collect();
    assert!(empty.is_empty(), "billing and fleet recording rules without series: {empty:?}");
    let alerts = prom.get("/api/v1/alerts");
    let firing: Vec<&Value> =
        alerts["data"]["alerts"].as_array().unwrap().iter().filter(|a| a["state"] == "firing").collect();
    assert!(firing.is_empty(), "alerts firing on a healthy fleet: {firing:?}");
}

fn start(db: &TestStore, data: &Path, n: usize) -> Server {
    let cache = data.join(format!("cache-{n}"));
    let args = ["--ledger-metrics-s", "1", "--pipeline-cache", cache.to_str().unwrap()];
    Server::start_on(db, data, &args, &[])
}

/// A tenant created through worker `w`: its id and key.
fn tenant(w: &Server, name: &str, tier: &str) -> (String, String) {
    let body = json!({"name": name, "tier": tier}).to_string();
    let r = http(&w.api, "POST", "/v1/tenants", &[("Authorization", "Bearer admin-secret")], body.as_bytes());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    (v["id"].as_str().unwrap().to_string(), v["api_key"].as_str().unwrap().to_string())
}

/// The ledger's money by bucket (currency units), as `tessera usage metrics` rebuilds it.
fn ledger_buckets(events: &[tessera_metering::UsageEvent]) -> BTreeMap<String, f64> {
    let m = Metrics::new("USD");
    m.replay(&PriceBook::default_book(), events);
    let mut buckets = BTreeMap::new();
    for line in m.render().lines().filter(|l| l.starts_with("tessera_charges_total{")) {
        let bucket = line.split("bucket=\"").nth(1).and_then(|b| b.split('"').next()).unwrap().to_string();
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *buckets.entry(bucket).or_insert(0.0) += value;
    }
    // Egress of a tiny clip costs less than a micro-unit: present, maybe zero.
    assert!(buckets.contains_key("egress"), "no egress in the ledger: {buckets:?}");
    for b in ["price", "compute", "encode"] {
        assert!(buckets.get(b).is_some_and(|v| *v > 0.0), "no {b} in the ledger: {buckets:?}");
    }
    buckets
}

/// `expr(instance)` summed over the workers, each evaluated at the timestamp
/// of that worker's last scrape.
fn per_instance_sum(prom: &Prometheus, workers: &[Server], expr: impl Fn(&str) -> String) -> f64 {
    workers
        .iter()
        .map(|w| {
            let at = prom.scalar(&format!("timestamp(up{{instance=\"{}\"}})", w.metrics)).unwrap();
            prom.scalar_at(&expr(&w.metrics), at).unwrap_or(0.0)
        })
        .sum()
}

fn assert_close(got: f64, expected: f64, rel: f64, what: &str) {
    assert!(
        (got - expected).abs() <= expected.abs() * rel + 1e-12,
        "{what}: Prometheus says {got}, the ledger {expected}"
    );
}

fn wait_for(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A Prometheus server on a free port with its own TSDB in a temp dir.
struct Prometheus {
    child: std::process::Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[&str]) -> Prometheus {
        // The rules as shipped, but with every group evaluated each scrape
        // (the billing group runs once a minute in production).
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
        let mut rule_files = Vec::new();
        for name in ["recording.rules.yml", "alerts.rules.yml"] {
            let text = std::fs::read_to_string(shipped.join(name)).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, text.replace("interval: 1m", &format!("interval: {SCRAPE_S}s"))).unwrap();
            rule_files.push(format!("  - {}\n", path.display()));
        }
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: tessera\n    static_configs:\n      - targets: [{}]\n",
            rule_files.concat(),
            targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", "),
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("Prometheus is installed (apt-get install prometheus)");
        let p = Prometheus { child, addr };
        wait_for(Duration::from_secs(30), "Prometheus to be ready", || {
            std::net::TcpStream::connect(&p.addr).is_ok() && http(&p.addr, "GET", "/-/ready", &[], b"").status == 200
        });
        p
    }

    fn get(&self, path: &str) -> Value {
        let r = http(&self.addr, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// The single value of an instant query now, or `None` when it has no result.
    fn scalar(&self, expr: &str) -> Option<f64> {
        self.query(&format!("/api/v1/query?query={}", encode(expr)))
    }

    fn scalar_at(&self, expr: &str, at: f64) -> Option<f64> {
        self.query(&format!("/api/v1/query?query={}&time={at:.3}", encode(expr)))
    }

    fn query(&self, path: &str) -> Option<f64> {
        let v = self.get(path);
        let data = &v["data"];
        let value = match data["resultType"].as_str() {
            Some("scalar") => &data["result"][1],
            Some("vector") => {
                let result = data["result"].as_array().unwrap();
                assert!(result.len() <= 1, "{path}: more than one series: {v}");
                &result.first()?["value"][1]
            }
            _ => panic!("{path}: unexpected answer {v}"),
        };
        value.as_str().unwrap().parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill(); // a test fixture: nothing to report if it already exited
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
