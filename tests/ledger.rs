//! The usage ledger from the outside: `tessera usage import` SIGKILLed
//! mid-write loses and duplicates nothing (on every backend), and the
//! Prometheus exposition passes promtool. Idempotent appends, append-only
//! rows and admission under concurrency are in the store's conformance suite
//! (`store/tests/conformance.rs`), which runs them on every backend.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use tessera_metering::{AttemptRef, Metrics, Outcome, Pass, TimingSource, UsageEvent};
use tessera_store::EventFilter;

use crate::util::{rt, tessera, TestStore};

crate::on_every_backend!(sigkill_during_ledger_writes_loses_and_duplicates_nothing);

fn attempt(tenant: &str, job: &str, n: u32) -> AttemptRef {
    AttemptRef { tenant_id: tenant.into(), tier: "mid".into(), job_id: job.into(), attempt: n, chunk: None }
}

/// Writes `n` distinct events as JSON lines.
fn spool(path: &std::path::Path, n: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let a = attempt("t_crash", &format!("job{}", i / 300), 1);
        let e = UsageEvent::gpu(
            &a,
            [Pass::Render, Pass::Stitch, Pass::Encode][(i % 3) as usize],
            i / 3,
            1,
            1_000_000 + i,
            TimingSource::Gpu,
        );
        writeln!(f, "{}", serde_json::to_string(&e).unwrap()).unwrap();
    }
}

fn sigkill_during_ledger_writes_loses_and_duplicates_nothing(store: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = store.url(&data);
    let file = dir.path().join("spool.jsonl");
    const N: u64 = 3000;
    spool(&file, N);
    let mut acked = std::collections::BTreeSet::new();
    let mut cut_short = 0;
    for round in 0..8u64 {
        let mut child = tessera()
            .args(["usage", "import", file.to_str().unwrap(), "--batch", "7", "--db", &db])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Let it get a varying way in: replays skip what is there, so new acks come later each round.
        let stop_after = 40 + round * 37;
        let mut seen = 0;
        while let Some(Ok(line)) = lines.next() {
            if let Some(id) = line.strip_prefix("ack ") {
                acked.insert(id.to_string());
            }
            seen += 1;
            if seen >= stop_after {
                break;
            }
        }
        // SIGKILL: no chance to clean up.
        child.kill().unwrap();
        child.wait().unwrap();
        let events = rt().block_on(async { store.open(&data).await.events(&EventFilter::default()).await.unwrap() });
        let ids: std::collections::BTreeSet<String> = events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), events.len(), "round {round}: duplicate events");
        let missing: Vec<_> = acked.iter().filter(|id| !ids.contains(*id)).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged but lost: {:?}", &missing[..missing.len().min(5)]);
        if (ids.len() as u64) < N {
            cut_short += 1;
        }
    }
    assert!(cut_short > 0, "no kill landed mid-import, so nothing was tested");
    // A last run completes; every event is there exactly once.
    let o = tessera().args(["usage", "import", file.to_str().unwrap(), "--db", &db]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events = rt().block_on(async { store.open(&data).await.events(&EventFilter::default()).await.unwrap() });
    assert_eq!(events.len() as u64, N);
    let total: i64 = events.iter().map(|e| e.quantity).sum();
    assert_eq!(total as u64, (0..N).map(|i| 1_000_000 + i).sum::<u64>());
}

#[test]
fn exposition_passes_promtool() {
    let m = Metrics::new("USD");
    let a = AttemptRef { tenant_id: "t_1".into(), tier: "mid".into(), job_id: "j".into(), attempt: 1, chunk: None };
    let mut t = tessera_metering::PassTimes::default();
    t.add(Pass::Render, 1_234_567_891);
    t.add(Pass::Stitch, 1);
    m.record_accrued(&a, TimingSource::Gpu, &t);
    m.record_attempt(&a, Outcome::Succeeded, TimingSource::Gpu, &t);
    m.record_output(&a, "1080p", 30, "general", 120, 2_380_000);
    m.record_charge(&a, "compute", 2469);
    let book = tessera_metering::PriceBook::default_book();
    m.record_storage(&book, "t_1", "mid", 1 << 40);
    m.record_egress(&book, "t_1", "mid", 123_456);
    let text = m.render();
    // The operator's storage and egress cost at the book's rates, rounded to
    // micro-units: 1099.51 GB-s at 0.000000008 and 0.000123 GB at 0.09.
    let cost = |bucket: &str| {
        let series =
            format!("tessera_charges_total{{tenant=\"t_1\",tier=\"mid\",bucket=\"{bucket}\",currency=\"USD\"}} ");
        text.lines().find_map(|l| l.strip_prefix(series.as_str())).map(|v| v.parse::<f64>().unwrap())
    };
    assert_eq!(cost("storage"), Some(0.000009), "{text}");
    assert_eq!(cost("egress"), Some(0.000011), "{text}");
    for name in [
        tessera_metering::prom::GPU_SECONDS_TOTAL,
        tessera_metering::prom::GPU_ACCRUED_SECONDS_TOTAL,
        tessera_metering::prom::OUTPUT_SECONDS_TOTAL,
        tessera_metering::prom::CHARGES_TOTAL,
        tessera_metering::prom::STORAGE_BYTE_SECONDS_TOTAL,
        tessera_metering::prom::EGRESS_BYTES_TOTAL,
    ] {
        assert!(text.contains(&format!("# TYPE {name} counter")), "{name} missing:\n{text}");
    }
    assert!(text.contains("pass=\"render\"") && text.contains("} 1.234567891\n"), "{text}");
    assert!(text.contains("fps=\"30\",variant=\"general\"} 4\n"), "120 frames at 30 fps is 4 s:\n{text}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
