//! One load-test run: the open-loop sender, the job watcher, the progress
//! line, and the final read of every job and of the tenant's usage.
//!
//! Open loop: submission `i` leaves at t0 + i/rate in a task of its own, so a
//! slow or failing server never slows the arrivals (a closed loop would
//! measure the server at whatever rate it manages, hiding its queueing).
//! While jobs run, `GET /v1/jobs` pages (200 jobs a request, newest first)
//! tell which of ours are finished: one request a second or so, instead of
//! one per job, so polling barely touches the tenant's request budget. The
//! figures come at the end from each job's own `GET /v1/jobs/{id}`, which
//! alone has the job's metered GPU time.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::client::{Api, ApiFailure};
use crate::mix::{Mix, SplitMix64};
use crate::report::{EntryFigures, JobFigures, Measured, UsageSnapshot};

/// What to run.
#[derive(Debug)]
pub struct Plan {
    pub api: Api,
    pub mix: Mix,
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
    pub seed: u64,
    pub run_id: String,
}

/// How many sends fit in the window: every i with i/rate < duration. The
/// epsilon keeps 0.1/s × 10 s at one send (floating point makes it 1.0000000000000002).
pub fn planned_sends(rate: f64, duration: Duration) -> u64 {
    let n = (rate * duration.as_secs_f64() - 1e-9).ceil();
    if n.is_finite() && n > 0.0 {
        n as u64
    } else {
        0
    }
}

/// Planned instant of send `i`, after t0.
pub fn send_offset(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// A job we submitted and its last known state.
#[derive(Debug)]
struct Tracked {
    created_at_ms: i64,
    terminal: bool,
}

/// Counters shared by the sender's tasks, the watcher and the progress line.
#[derive(Debug, Default)]
struct Shared {
    sent: u64,
    errors: u64,
    max_lateness: Duration,
    entries: Vec<EntryFigures>,
    http_errors: BTreeMap<(u16, String), u64>,
    transport_errors: BTreeMap<String, u64>,
    jobs: HashMap<String, Tracked>,
    /// The first 401: the key is wrong (or was revoked); the run stops.
    unauthorized: Option<String>,
}

impl Shared {
    fn finished(&self) -> u64 {
        self.jobs.values().filter(|j| j.terminal).count() as u64
    }
}

type State = Arc<Mutex<Shared>>;

fn lock(s: &State) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "dead" | "cancelled")
}

/// The tenant's usage totals now. A 401 here, the first request, stops the
/// run before anything is sent.
pub async fn usage(api: &Api) -> anyhow::Result<(UsageSnapshot, String)> {
    let v = api.get_json("/v1/usage").await.map_err(|e| {
        if e.is_unauthorized() {
            anyhow!("the API key was refused ({e}); check --key")
        } else {
            anyhow!("GET {}/v1/usage: {e}", api.base())
        }
    })?;
    let dec = |field: &str| -> anyhow::Result<Decimal> {
        v.get(field)
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("GET /v1/usage: `{field}` is not a decimal string"))
    };
    let gpu_ns = v.get("gpu_ns").and_then(Value::as_object).map(|m| m.values().filter_map(Value::as_i64).sum());
    let snapshot = UsageSnapshot {
        currency: v.get("currency").and_then(Value::as_str).unwrap_or_default().to_string(),
        charges: dec("charges")?,
        output_seconds: dec("output_seconds")?,
        gpu_ns: gpu_ns.unwrap_or(0),
    };
    Ok((snapshot, v.get("tier").and_then(Value::as_str).unwrap_or_default().to_string()))
}

/// The entries of `mix` that the tenant's tier admits now, asked through
/// `POST /v1/quote` (its verdict is the server's price book, not ours).
pub async fn admissible(api: &Api, mix: Mix) -> anyhow::Result<Mix> {
    let mut kept = Vec::new();
    let mut refusals = Vec::new();
    for e in mix.entries {
        let reply = api
            .send(Method::POST, "/v1/quote", &[], e.body.clone())
            .await
            .map_err(|t| anyhow!("POST /v1/quote: {}", t.describe()))?;
        if !reply.status.is_success() {
            bail!("POST /v1/quote for the default mix's {}: {}", e.name, reply.describe());
        }
        let v: Value = serde_json::from_slice(&reply.body).context("POST /v1/quote: not JSON")?;
        if v.pointer("/admission/admissible").and_then(Value::as_bool) == Some(true) {
            kept.push(e);
        } else {
            let why = v.pointer("/admission/message").and_then(Value::as_str).unwrap_or("not admissible");
            refusals.push(format!("{} ({why})", e.name));
        }
    }
    if !refusals.is_empty() {
        eprintln!("default mix: leaving out {}", refusals.join(", "));
    }
    if kept.is_empty() {
        bail!("the tenant's tier admits none of the default mix; give one with --mix");
    }
    Mix::new(kept)
}

/// Sends one submission and files its answer.
async fn submit(api: Api, state: State, entry: usize, body: Bytes, key: String) {
    let reply = api.send(Method::POST, "/v1/jobs", &[("idempotency-key", key)], body).await;
    let mut s = lock(&state);
    match reply {
        Err(t) => {
            s.errors += 1;
            s.entries[entry].transport_errors += 1;
            *s.transport_errors.entry(t.as_str().to_string()).or_default() += 1;
        }
        Ok(r) if r.status.is_success() => {
            let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            match (v.get("id").and_then(Value::as_str), v.get("created_at_ms").and_then(Value::as_i64)) {
                (Some(id), Some(created)) => {
                    s.entries[entry].accepted += 1;
                    let done = v.get("state").and_then(Value::as_str).is_some_and(terminal);
                    s.jobs.insert(id.to_string(), Tracked { created_at_ms: created, terminal: done });
                }
                // A 2xx without a job is not the API this tool measures.
                _ => {
                    s.errors += 1;
                    s.entries[entry].rejected += 1;
                    *s.http_errors.entry((r.status.as_u16(), "no_job_in_body".into())).or_default() += 1;
                }
            }
        }
        Ok(r) => {
            s.errors += 1;
            s.entries[entry].rejected += 1;
            if r.status == StatusCode::UNAUTHORIZED && s.unauthorized.is_none() {
                s.unauthorized = Some(r.describe());
            }
            *s.http_errors.entry((r.status.as_u16(), r.error_code())).or_default() += 1;
        }
    }
}

/// Reads the tenant's job pages back to our oldest job and marks ours that finished.
async fn watch_once(api: &Api, state: &State) {
    let (oldest, pending) = {
        let s = lock(state);
        (s.jobs.values().map(|j| j.created_at_ms).min(), s.jobs.values().any(|j| !j.terminal))
    };
    let Some(oldest) = oldest.filter(|_| pending) else { return };
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=200&cursor={c}"),
            None => "/v1/jobs?limit=200".to_string(),
        };
        let Ok(reply) = api.send(Method::GET, &path, &[], Bytes::new()).await else { return };
        if reply.status == StatusCode::UNAUTHORIZED {
            lock(state).unauthorized.get_or_insert_with(|| reply.describe());
            return;
        }
        // Rate limited or busy: the next round will look again.
        let Ok(page) = serde_json::from_slice::<Value>(&reply.body) else { return };
        if !reply.status.is_success() {
            return;
        }
        let jobs = page.get("jobs").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut s = lock(state);
        let mut last_created = i64::MAX;
        for j in &jobs {
            last_created = j.get("created_at_ms").and_then(Value::as_i64).unwrap_or(last_created);
            let (Some(id), Some(st)) = (j.get("id").and_then(Value::as_str), j.get("state").and_then(Value::as_str))
            else {
                continue;
            };
            if let Some(t) = s.jobs.get_mut(id) {
                t.terminal = terminal(st);
            }
        }
        drop(s);
        cursor = page.get("next_cursor").and_then(Value::as_str).map(str::to_string);
        if cursor.is_none() || last_created < oldest {
            return;
        }
    }
}

/// The progress line: at a terminal, overwritten in place every second; in a
/// log, a plain line every 5 s (and one at the end either way).
struct Progress {
    tty: bool,
    duration: Duration,
    last_sent: u64,
    last_at: Instant,
}

impl Progress {
    /// The line now; `last`: the closing line, whose rate is the whole send window's.
    fn line(&mut self, s: &Shared, elapsed: Duration, last: bool) -> String {
        let dt = if last { elapsed.min(self.duration) } else { self.last_at.elapsed() }.as_secs_f64();
        let sent = if last { s.sent } else { s.sent - self.last_sent };
        let rate = if dt > 0.0 { sent as f64 / dt } else { 0.0 };
        self.last_sent = s.sent;
        self.last_at = Instant::now();
        let accepted = s.jobs.len() as u64;
        let finished = s.finished();
        let phase = if elapsed > self.duration { " draining" } else { "" };
        format!(
            "[{:>6.1}s/{}s{phase}] sent {} accepted {} in flight {} finished {} errors {} rate {:.1}/s",
            elapsed.as_secs_f64(),
            self.duration.as_secs_f64(),
            s.sent,
            accepted,
            accepted - finished,
            finished,
            s.errors,
            rate
        )
    }

    fn print(&self, line: &str, last: bool) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{line}\x1b[K{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

/// Runs the plan and gathers the raw figures.
pub async fn run(plan: Plan, url: String) -> anyhow::Result<Measured> {
    let (usage_before, _) = usage(&plan.api).await?;
    let planned = planned_sends(plan.rate, plan.duration);
    let entries = plan
        .mix
        .entries
        .iter()
        .map(|e| EntryFigures {
            name: e.name.clone(),
            lane: e.lane().to_string(),
            weight: e.weight,
            ..Default::default()
        })
        .collect();
    let state: State = Arc::new(Mutex::new(Shared { entries, ..Default::default() }));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();

    // The watcher and the progress line run until the drain ends.
    let watcher = {
        let (api, state, stop) = (plan.api.clone(), state.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                watch_once(&api, &state).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let mut progress =
        Progress { tty: std::io::stderr().is_terminal(), duration: plan.duration, last_sent: 0, last_at: t0 };
    let ticker = {
        let (state, stop) = (state.clone(), stop.clone());
        let mut progress = Progress { last_at: Instant::now(), ..progress };
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                n += 1;
                let line = progress.line(&lock(&state), t0.elapsed(), false);
                if progress.tty || n.is_multiple_of(5) {
                    progress.print(&line, false);
                }
            }
        })
    };
    progress.last_at = t0;

    // The open loop: the choice of entry happens here, in order, so a seed
    // gives the same sequence however the answers interleave.
    let mut rng = SplitMix64::new(plan.seed);
    let mut sends = JoinSet::new();
    let start = tokio::time::Instant::from_std(t0);
    for i in 0..planned {
        let due = start + send_offset(i, plan.rate);
        tokio::time::sleep_until(due).await;
        if lock(&state).unauthorized.is_some() {
            break;
        }
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        let entry = plan.mix.pick(rng.next_f64());
        {
            let mut s = lock(&state);
            s.sent += 1;
            s.entries[entry].sent += 1;
            s.max_lateness = s.max_lateness.max(late);
        }
        let body = plan.mix.entries[entry].body.clone();
        let key = format!("{}-{i}", plan.run_id);
        sends.spawn(submit(plan.api.clone(), state.clone(), entry, body, key));
        // Reap finished sends as we go so the set does not grow with the run.
        while sends.try_join_next().is_some() {}
    }
    while sends.join_next().await.is_some() {}

    // The drain: until every accepted job is finished, or --drain runs out.
    let drain_end = Instant::now() + plan.drain;
    loop {
        let (done, unauthorized) = {
            let s = lock(&state);
            (s.jobs.values().all(|j| j.terminal), s.unauthorized.clone())
        };
        if let Some(why) = unauthorized {
            stop.store(true, Ordering::Relaxed);
            watcher.abort();
            ticker.abort();
            bail!("the API key was refused ({why}); stopped after the first 401");
        }
        if done || Instant::now() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    watcher.abort();
    ticker.abort();
    let wall_s = t0.elapsed().as_secs_f64();
    {
        let s = lock(&state);
        let line = progress.line(&s, t0.elapsed(), true);
        progress.print(&line, true);
    }

    let ids: Vec<String> = lock(&state).jobs.keys().cloned().collect();
    let jobs = final_views(&plan.api, ids).await?;
    let (usage_after, _) = usage(&plan.api).await?;
    let s = lock(&state);
    Ok(Measured {
        run_id: plan.run_id.clone(),
        url,
        rate: plan.rate,
        duration_s: plan.duration.as_secs_f64(),
        seed: plan.seed,
        planned,
        max_lateness_ms: s.max_lateness.as_secs_f64() * 1000.0,
        entries: s.entries.clone(),
        http_errors: s.http_errors.clone(),
        transport_errors: s.transport_errors.clone(),
        jobs,
        usage_before,
        usage_after,
        wall_s,
    })
}

/// Each job's own view, four requests at a time (a fraction of the tenant's
/// request budget; 429s are waited out by `get_json`).
async fn final_views(api: &Api, ids: Vec<String>) -> anyhow::Result<Vec<JobFigures>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(4));
    let mut set = JoinSet::new();
    for id in ids {
        let (api, gate) = (api.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let v = api.get_json(&format!("/v1/jobs/{id}")).await;
            (id, v)
        });
    }
    let mut jobs = Vec::new();
    while let Some(r) = set.join_next().await {
        let (id, v) = r.context("a job read panicked")?;
        let v = v.map_err(|e: ApiFailure| anyhow!("GET /v1/jobs/{id}: {e}"))?;
        jobs.push(job_figures(&id, &v)?);
    }
    jobs.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    Ok(jobs)
}

/// The figures of one job view.
pub fn job_figures(id: &str, v: &Value) -> anyhow::Result<JobFigures> {
    let field = |name: &str| v.get(name).ok_or_else(|| anyhow!("GET /v1/jobs/{id}: no `{name}`"));
    let price: Decimal = field("price")?
        .as_str()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("GET /v1/jobs/{id}: `price` is not a decimal string"))?;
    let frames = field("frames_total")?.as_i64().unwrap_or(0);
    let fps = v.pointer("/spec/fps").and_then(Value::as_i64).filter(|f| *f > 0).unwrap_or(1);
    Ok(JobFigures {
        id: id.to_string(),
        lane: field("lane")?.as_str().unwrap_or("?").to_string(),
        state: field("state")?.as_str().unwrap_or("?").to_string(),
        created_at_ms: field("created_at_ms")?.as_i64().unwrap_or(0),
        started_at_ms: v.get("started_at_ms").and_then(Value::as_i64),
        finished_at_ms: v.get("finished_at_ms").and_then(Value::as_i64),
        gpu_ns: v
            .get("usage_gpu_ns")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, ns)| Some((k.clone(), ns.as_i64()?))).collect())
            .unwrap_or_default(),
        price,
        output_seconds: Decimal::from(frames) / Decimal::from(fps),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_covers_the_window() {
        assert_eq!(planned_sends(4.0, Duration::from_secs(2)), 8);
        assert_eq!(planned_sends(0.1, Duration::from_secs(10)), 1);
        assert_eq!(planned_sends(3.0, Duration::from_millis(500)), 2);
        assert_eq!(planned_sends(1.0, Duration::from_millis(1)), 1);
        assert_eq!(planned_sends(0.5, Duration::from_secs(60)), 30);
        assert_eq!(send_offset(3, 4.0), Duration::from_millis(750));
        assert_eq!(send_offset(0, 0.1), Duration::ZERO);
    }

    #[test]
    fn job_views_give_their_figures() {
        let v = serde_json::json!({"id": "j_1", "state": "succeeded", "lane": "bulk", "price": "0.01",
            "frames_total": 6, "spec": {"fps": 24}, "created_at_ms": 10, "started_at_ms": 20,
            "finished_at_ms": 35, "usage_gpu_ns": {"render": 5, "encode": 2}});
        let j = job_figures("j_1", &v).unwrap();
        assert_eq!((j.created_at_ms, j.started_at_ms, j.finished_at_ms), (10, Some(20), Some(35)));
        assert_eq!(j.output_seconds.to_string(), "0.25");
        assert_eq!(j.gpu_ns.values().sum::<i64>(), 7);
        let queued = serde_json::json!({"state": "queued", "lane": "bulk", "price": "0.01", "frames_total": 6,
            "created_at_ms": 10, "started_at_ms": null, "finished_at_ms": null});
        assert_eq!(job_figures("j_2", &queued).unwrap().started_at_ms, None);
        assert!(job_figures("j_3", &serde_json::json!({"price": 1})).is_err());
    }
}
