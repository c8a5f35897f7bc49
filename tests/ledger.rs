//! The usage ledger: idempotent appends, append-only rows, admission under
//! concurrency, crash safety under SIGKILL, and a Prometheus exposition that
//! promtool accepts.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;

use rust_decimal::Decimal;
use tessera_metering::ledger::{EventFilter, LedgerError, Reservation, Store};
use tessera_metering::tiers::AdmissionError;
use tessera_metering::{AttemptRef, Metrics, Outcome, Pass, PriceBook, QuoteRequest, TimingSource, UsageEvent};

use crate::util::tessera;

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

fn attempt(tenant: &str, job: &str, n: u32) -> AttemptRef {
    AttemptRef { tenant_id: tenant.into(), tier: "mid".into(), job_id: job.into(), attempt: n }
}

#[test]
fn appends_are_idempotent_and_rows_append_only() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let store = Store::open(dir.path()).await.unwrap();
        let a = attempt("t1", "j1", 1);
        let events: Vec<UsageEvent> =
            (0..10).map(|i| UsageEvent::gpu(&a, Pass::Render, i, 1_000 + i, TimingSource::Gpu)).collect();
        assert_eq!(store.append(&events).await.unwrap(), 10);
        assert_eq!(store.append(&events).await.unwrap(), 0, "a retry recorded events twice");
        assert_eq!(store.append(&events[3..5]).await.unwrap(), 0);
        let all = store.events(&EventFilter::default()).await.unwrap();
        assert_eq!(all.len(), 10);
        let upd = sqlx::query("UPDATE usage_events SET quantity = 0").execute(store.pool()).await;
        assert!(upd.unwrap_err().to_string().contains("append-only"));
        let del = sqlx::query("DELETE FROM usage_events").execute(store.pool()).await;
        assert!(del.is_err());
        // The billable output of a job is one event whatever attempt delivers it.
        let out1 = UsageEvent::output(&a, 24, 24, "720p", "general", Decimal::from_str("0.01").unwrap());
        let out2 = UsageEvent::output(&attempt("t1", "j1", 2), 24, 24, "720p", "general", Decimal::ONE);
        assert_eq!(store.append(&[out1]).await.unwrap(), 1);
        assert_eq!(store.append(&[out2]).await.unwrap(), 0);
        assert!(store.has_output("j1").await.unwrap());
    });
}

#[test]
fn concurrent_admissions_never_exceed_a_cap() {
    // The short tier caps output at 600 s a month: 40 jobs of 30 s arriving at
    // once must admit exactly 20.
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (store, tenant) = rt.block_on(async {
        let store = Store::open(dir.path()).await.unwrap();
        let tenant = store.create_tenant(&PriceBook::default_book(), "racer", "short").await.unwrap();
        (store, tenant)
    });
    let book = Arc::new(PriceBook::default_book());
    let req = QuoteRequest {
        width: 1280,
        height: 720,
        fps: 24,
        output_seconds: Decimal::from(30),
        advanced: false,
        addons: vec![],
    };
    let results = rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(40));
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (store, tenant, book, req, barrier) =
                    (store.clone(), tenant.clone(), book.clone(), req.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let job = format!("job{i}");
                    let r = Reservation {
                        job_id: &job,
                        request: &req,
                        lane: "standard",
                        frames: 720,
                        price: Decimal::new(36, 2),
                    };
                    store.admit(&book, &tenant, r).await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 20, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        match r {
            LedgerError::Admission(refusal) => match refusal.as_ref() {
                AdmissionError::OutputCap { tier, cap, .. } => {
                    assert_eq!((tier.as_str(), *cap), ("short", Decimal::from(600)));
                    assert!(r.to_string().contains("600 s reserved"), "{r}");
                }
                other => panic!("unexpected refusal: {other}"),
            },
            other => panic!("unexpected refusal: {other}"),
        }
    }
    // Releasing an admitted job frees its seconds for the next one.
    let first = results.iter().position(|r| r.is_ok()).unwrap();
    rt.block_on(async {
        store.release(&format!("job{first}")).await.unwrap();
        let r = Reservation {
            job_id: "job-next",
            request: &req,
            lane: "standard",
            frames: 720,
            price: Decimal::new(36, 2),
        };
        let again = store.admit(&book, &tenant, r).await;
        assert!(again.is_ok(), "{again:?}");
        let usage = store.month_usage(&tenant.id).await.unwrap();
        assert_eq!(usage.reserved_seconds, Decimal::from(600));
    });
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
            1_000_000 + i,
            TimingSource::Gpu,
        );
        writeln!(f, "{}", serde_json::to_string(&e).unwrap()).unwrap();
    }
}

#[test]
fn sigkill_during_ledger_writes_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("spool.jsonl");
    const N: u64 = 3000;
    spool(&file, N);
    let mut acked = std::collections::BTreeSet::new();
    let mut cut_short = 0;
    for round in 0..8u64 {
        let mut child = tessera()
            .args(["usage", "import", file.to_str().unwrap(), "--batch", "7", "--data", data.to_str().unwrap()])
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
        let events = rt().block_on(async {
            let store = Store::open(&data).await.unwrap();
            store.events(&EventFilter::default()).await.unwrap()
        });
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
    let o =
        tessera().args(["usage", "import", file.to_str().unwrap(), "--data", data.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success());
    let events =
        rt().block_on(async { Store::open(&data).await.unwrap().events(&EventFilter::default()).await.unwrap() });
    assert_eq!(events.len() as u64, N);
    let total: i64 = events.iter().map(|e| e.quantity).sum();
    assert_eq!(total as u64, (0..N).map(|i| 1_000_000 + i).sum::<u64>());
}

#[test]
fn exposition_passes_promtool() {
    let m = Metrics::new("USD");
    let a = AttemptRef { tenant_id: "t_1".into(), tier: "mid".into(), job_id: "j".into(), attempt: 1 };
    let mut t = tessera_metering::PassTimes::default();
    t.add(Pass::Render, 1_234_567_891);
    t.add(Pass::Stitch, 1);
    m.record_accrued(&a, TimingSource::Gpu, &t);
    m.record_attempt(&a, Outcome::Succeeded, TimingSource::Gpu, &t);
    m.record_output(&a, "1080p", 30, "general", 120, 2_380_000);
    m.record_charge(&a, "compute", 2469);
    m.record_storage("t_1", 1 << 40);
    m.record_egress("t_1", 123_456);
    let text = m.render();
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
