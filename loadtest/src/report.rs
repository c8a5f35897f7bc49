//! What a load test measured: the report, printed as one JSON object
//! ([`Report`], whose field names are stable) or as text (`text.rs`).
//!
//! Everything here is pure: [`Report::build`] turns the raw figures of a run
//! ([`Measured`]) into the report, so the arithmetic (percentiles, rates,
//! exact money) is unit-tested without a server.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

/// A job of the run as its final `GET /v1/jobs/{id}` showed it.
#[derive(Debug, Clone)]
pub struct JobFigures {
    pub id: String,
    pub lane: String,
    pub state: String,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub gpu_ns: BTreeMap<String, i64>,
    /// The quoted price (what a succeeded job is billed), exact.
    pub price: Decimal,
    /// frames_total / fps, exact.
    pub output_seconds: Decimal,
}

impl JobFigures {
    fn terminal(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "dead" | "cancelled")
    }
}

/// Submissions of one mix entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EntryFigures {
    pub name: String,
    pub lane: String,
    pub weight: f64,
    pub sent: u64,
    /// Answered 2xx (a job exists).
    pub accepted: u64,
    /// Answered non-2xx.
    pub rejected: u64,
    /// No answer (timeout, connect, broken connection).
    pub transport_errors: u64,
}

/// `GET /v1/usage` at one moment: the ledger's totals for the tenant.
#[derive(Debug, Clone, Default)]
pub struct UsageSnapshot {
    pub currency: String,
    pub charges: Decimal,
    pub output_seconds: Decimal,
    pub gpu_ns: i64,
}

/// The raw figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub run_id: String,
    pub url: String,
    pub rate: f64,
    pub duration_s: f64,
    pub seed: u64,
    pub planned: u64,
    pub max_lateness_ms: f64,
    pub entries: Vec<EntryFigures>,
    /// (status, error.code) → submissions so answered.
    pub http_errors: BTreeMap<(u16, String), u64>,
    /// kind → submissions without an answer.
    pub transport_errors: BTreeMap<String, u64>,
    pub jobs: Vec<JobFigures>,
    pub usage_before: UsageSnapshot,
    pub usage_after: UsageSnapshot,
    /// From the first send to the end of the drain.
    pub wall_s: f64,
}

/// A send counts as behind schedule past this lateness: the generator (its
/// CPU, its runtime) rather than the server then shaped the arrival times.
pub const BEHIND_SCHEDULE_MS: f64 = 50.0;

/// The report. JSON field names are stable; times are milliseconds
/// (`*_ms`) or seconds (`*_s`), money and billed seconds exact decimal
/// strings.
///
/// - `run_id`: prefix of every Idempotency-Key of the run (`RUN-SEQ`).
/// - `schedule`: `planned` sends (rate × duration), `sent`, `max_lateness_ms`
///   (the latest a send left after its planned instant t0 + i/rate),
///   `behind_schedule` (max lateness over 50 ms: the generator, not the
///   server, limited the arrival rate).
/// - `submissions`: `sent`, `accepted` (2xx), `rejected` (non-2xx),
///   `transport_errors` (no answer).
/// - `throughput`: `submitted_per_s` and `accepted_per_s` over the send
///   window (`duration_s`); `finished_per_s` and
///   `output_seconds_per_wall_second` over `finish_span_s`, from the first
///   accepted job's `created_at_ms` to the last `finished_at_ms` (server clocks).
/// - `http_errors`: `[{status, code, count}]`, `code` the body's `error.code`
///   (`-` if none); `transport_errors`: `{timeout, connect, broken}`.
/// - `outcomes`: accepted jobs by final state (`unfinished`: not terminal
///   when the drain ended, listed in `unfinished_jobs`).
/// - `lanes`: per lane, job counts and `queue_wait_ms` (started − created)
///   and `run_ms` (finished − started) percentiles `{p50, p95, p99, max, n}`,
///   nearest rank, over the jobs that have both timestamps (null if none).
/// - `entries`: per mix entry, what its submissions got.
/// - `cost`: `gpu_ns` / `gpu_seconds` / `gpu_ns_by_pass`, the sum of this
///   run's jobs' own `usage_gpu_ns` (every attempt, this run only);
///   `charges` and `billed_output_seconds`, `GET /v1/usage` after − before
///   (the tenant's other traffic during the run is included);
///   `price_of_succeeded`, the sum of the succeeded jobs' prices;
///   `usage_gpu_ns_delta`, the ledger's GPU time after − before.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub url: String,
    pub rate: f64,
    pub duration_s: f64,
    pub seed: u64,
    pub schedule: Schedule,
    pub submissions: Submissions,
    pub throughput: Throughput,
    pub http_errors: Vec<HttpError>,
    pub transport_errors: BTreeMap<String, u64>,
    pub outcomes: Outcomes,
    pub unfinished_jobs: Vec<String>,
    pub lanes: Vec<LaneFigures>,
    pub entries: Vec<EntryFigures>,
    pub cost: Cost,
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    pub planned: u64,
    pub sent: u64,
    pub max_lateness_ms: f64,
    pub behind_schedule: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Submissions {
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub transport_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub submitted_per_s: f64,
    pub accepted_per_s: f64,
    pub finished_per_s: f64,
    pub output_seconds_per_wall_second: f64,
    pub finish_span_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpError {
    pub status: u16,
    pub code: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcomes {
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
    pub unfinished: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LaneFigures {
    pub lane: String,
    pub jobs: u64,
    #[serde(flatten)]
    pub outcomes: Outcomes,
    pub queue_wait_ms: Option<Percentiles>,
    pub run_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: i64,
    pub p95: i64,
    pub p99: i64,
    pub max: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub currency: String,
    pub gpu_ns: i64,
    pub gpu_seconds: String,
    pub gpu_ns_by_pass: BTreeMap<String, i64>,
    pub charges: String,
    pub billed_output_seconds: String,
    pub price_of_succeeded: String,
    pub usage_gpu_ns_delta: i64,
}

/// Nearest-rank percentile `p` (0 < p ≤ 100) of `sorted`, ascending.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p95, p99 and max of `values` (any order); `None` when empty.
pub fn percentiles(mut values: Vec<i64>) -> Option<Percentiles> {
    values.sort_unstable();
    Some(Percentiles {
        n: values.len(),
        p50: percentile(&values, 50.0)?,
        p95: percentile(&values, 95.0)?,
        p99: percentile(&values, 99.0)?,
        max: *values.last()?,
    })
}

/// One lane's jobs while the report is built.
#[derive(Debug, Default)]
struct LaneSamples {
    outcomes: Outcomes,
    jobs: u64,
    waits: Vec<i64>,
    runs: Vec<i64>,
}

fn count_outcome(o: &mut Outcomes, j: &JobFigures) {
    match j.state.as_str() {
        "succeeded" => o.succeeded += 1,
        "dead" => o.dead += 1,
        "cancelled" => o.cancelled += 1,
        _ => o.unfinished += 1,
    }
}

fn per_second(n: f64, s: f64) -> f64 {
    if s > 0.0 {
        n / s
    } else {
        0.0
    }
}

impl Report {
    pub fn build(m: &Measured) -> Self {
        let sent: u64 = m.entries.iter().map(|e| e.sent).sum();
        let accepted: u64 = m.entries.iter().map(|e| e.accepted).sum();
        let rejected: u64 = m.entries.iter().map(|e| e.rejected).sum();
        let transport: u64 = m.entries.iter().map(|e| e.transport_errors).sum();

        let mut outcomes = Outcomes::default();
        let mut lanes: BTreeMap<&str, LaneSamples> = BTreeMap::new();
        for j in &m.jobs {
            count_outcome(&mut outcomes, j);
            let lane = lanes.entry(j.lane.as_str()).or_default();
            count_outcome(&mut lane.outcomes, j);
            lane.jobs += 1;
            if let Some(started) = j.started_at_ms {
                lane.waits.push(started - j.created_at_ms);
                if let Some(finished) = j.finished_at_ms.filter(|_| j.terminal()) {
                    lane.runs.push(finished - started);
                }
            }
        }
        // Lanes in the API's priority order, then any other name.
        let order = |l: &str| ["urgent", "standard", "bulk"].iter().position(|x| *x == l).unwrap_or(3);
        let mut lanes: Vec<LaneFigures> = lanes
            .into_iter()
            .map(|(lane, acc)| LaneFigures {
                lane: lane.to_string(),
                jobs: acc.jobs,
                outcomes: acc.outcomes,
                queue_wait_ms: percentiles(acc.waits),
                run_ms: percentiles(acc.runs),
            })
            .collect();
        lanes.sort_by_key(|l| order(&l.lane));

        let finished: Vec<&JobFigures> = m.jobs.iter().filter(|j| j.terminal()).collect();
        let first_created = m.jobs.iter().map(|j| j.created_at_ms).min();
        let last_finished = finished.iter().filter_map(|j| j.finished_at_ms).max();
        let finish_span_s = match (first_created, last_finished) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
            _ => 0.0,
        };
        let output_done: Decimal = m.jobs.iter().filter(|j| j.state == "succeeded").map(|j| j.output_seconds).sum();
        let output_done_f = output_done.to_string().parse::<f64>().unwrap_or(0.0);

        let mut by_pass: BTreeMap<String, i64> = BTreeMap::new();
        for j in &m.jobs {
            for (pass, ns) in &j.gpu_ns {
                *by_pass.entry(pass.clone()).or_default() += ns;
            }
        }
        let gpu_ns: i64 = by_pass.values().sum();
        let price_of_succeeded: Decimal = m.jobs.iter().filter(|j| j.state == "succeeded").map(|j| j.price).sum();

        Report {
            run_id: m.run_id.clone(),
            url: m.url.clone(),
            rate: m.rate,
            duration_s: m.duration_s,
            seed: m.seed,
            schedule: Schedule {
                planned: m.planned,
                sent,
                max_lateness_ms: m.max_lateness_ms,
                behind_schedule: m.max_lateness_ms > BEHIND_SCHEDULE_MS,
            },
            submissions: Submissions { sent, accepted, rejected, transport_errors: transport },
            throughput: Throughput {
                submitted_per_s: per_second(sent as f64, m.duration_s),
                accepted_per_s: per_second(accepted as f64, m.duration_s),
                finished_per_s: per_second(finished.len() as f64, finish_span_s),
                output_seconds_per_wall_second: per_second(output_done_f, finish_span_s),
                finish_span_s,
            },
            http_errors: m
                .http_errors
                .iter()
                .map(|((status, code), count)| HttpError { status: *status, code: code.clone(), count: *count })
                .collect(),
            transport_errors: m.transport_errors.clone(),
            unfinished_jobs: m.jobs.iter().filter(|j| !j.terminal()).map(|j| j.id.clone()).collect(),
            outcomes,
            lanes,
            entries: m.entries.clone(),
            cost: Cost {
                currency: m.usage_after.currency.clone(),
                gpu_ns,
                gpu_seconds: Decimal::new(gpu_ns, 9).to_string(),
                gpu_ns_by_pass: by_pass,
                charges: (m.usage_after.charges - m.usage_before.charges).to_string(),
                billed_output_seconds: (m.usage_after.output_seconds - m.usage_before.output_seconds)
                    .normalize()
                    .to_string(),
                price_of_succeeded: price_of_succeeded.to_string(),
                usage_gpu_ns_delta: m.usage_after.gpu_ns - m.usage_before.gpu_ns,
            },
            wall_s: m.wall_s,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn job(
        id: &str,
        lane: &str,
        state: &str,
        times: (i64, Option<i64>, Option<i64>),
        gpu: i64,
        price: &str,
    ) -> JobFigures {
        JobFigures {
            id: id.into(),
            lane: lane.into(),
            state: state.into(),
            created_at_ms: times.0,
            started_at_ms: times.1,
            finished_at_ms: times.2,
            gpu_ns: BTreeMap::from([("render".to_string(), gpu), ("encode".to_string(), 1)]),
            price: price.parse().unwrap(),
            output_seconds: Decimal::ONE,
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 95.0), Some(95));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), Some(2));
        assert_eq!(percentiles(vec![30, 10, 20]), Some(Percentiles { n: 3, p50: 20, p95: 30, p99: 30, max: 30 }));
        assert_eq!(percentiles(vec![]), None);
    }

    pub(crate) fn measured() -> Measured {
        Measured {
            run_id: "lt-1".into(),
            url: "http://x:1".into(),
            rate: 2.0,
            duration_s: 2.0,
            seed: 1,
            planned: 4,
            max_lateness_ms: 1.5,
            entries: vec![EntryFigures {
                name: "a".into(),
                lane: "standard".into(),
                weight: 1.0,
                sent: 4,
                accepted: 3,
                rejected: 1,
                transport_errors: 0,
            }],
            http_errors: BTreeMap::from([((422, "invalid_spec".to_string()), 1)]),
            transport_errors: BTreeMap::new(),
            jobs: vec![
                job("j1", "standard", "succeeded", (1_000, Some(1_100), Some(2_000)), 10, "0.01"),
                job("j2", "bulk", "succeeded", (1_500, Some(2_500), Some(3_000)), 20, "0.02"),
                job("j3", "bulk", "queued", (1_600, None, None), 0, "0.03"),
            ],
            usage_before: UsageSnapshot {
                currency: "USD".into(),
                charges: "1.10".parse().unwrap(),
                ..Default::default()
            },
            usage_after: UsageSnapshot {
                currency: "USD".into(),
                charges: "1.13".parse().unwrap(),
                output_seconds: "2".parse().unwrap(),
                gpu_ns: 33,
            },
            wall_s: 9.0,
        }
    }

    #[test]
    fn the_report_adds_up() {
        let r = Report::build(&measured());
        assert_eq!((r.submissions.accepted, r.submissions.rejected), (3, 1));
        assert_eq!((r.outcomes.succeeded, r.outcomes.unfinished), (2, 1));
        assert_eq!(r.unfinished_jobs, ["j3"]);
        assert_eq!(r.lanes.iter().map(|l| l.lane.as_str()).collect::<Vec<_>>(), ["standard", "bulk"]);
        let bulk = &r.lanes[1];
        assert_eq!((bulk.jobs, bulk.outcomes.unfinished), (2, 1));
        assert_eq!(bulk.queue_wait_ms.unwrap().p50, 1_000);
        assert_eq!(bulk.run_ms.unwrap().max, 500);
        assert_eq!(r.lanes[0].queue_wait_ms.unwrap().p99, 100);
        // 2 finished between the first creation (1.0 s) and the last finish (3.0 s).
        assert_eq!((r.throughput.finish_span_s, r.throughput.finished_per_s), (2.0, 1.0));
        assert_eq!(r.throughput.output_seconds_per_wall_second, 1.0);
        assert_eq!(r.throughput.submitted_per_s, 2.0);
        // Money is exact: 1.13 - 1.10, never 0.029999.
        assert_eq!((r.cost.charges.as_str(), r.cost.price_of_succeeded.as_str()), ("0.03", "0.03"));
        assert_eq!((r.cost.gpu_ns, r.cost.gpu_seconds.as_str()), (33, "0.000000033"));
        assert_eq!(r.cost.gpu_ns_by_pass["render"], 30);
        assert_eq!(r.cost.usage_gpu_ns_delta, 33);
        assert!(!r.schedule.behind_schedule);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["http_errors"][0], serde_json::json!({"status": 422, "code": "invalid_spec", "count": 1}));
        assert_eq!(json["lanes"][1]["unfinished"], 1);
    }
}
