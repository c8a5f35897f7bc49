//! The adaptive concurrency limit under rising offered load, run by hand:
//! `cargo bench --bench concurrency`. A simulation (no GPU, no clock): a GPU
//! whose per-frame time is constant up to a saturation concurrency C* and then
//! grows linearly with the jobs in flight (they share it: its throughput is
//! flat past C*, at the ceiling C* / t0), fed 1, 2, 4, 8, 16 and 32 jobs per
//! 2 s window in turn. Each window the controller's limit caps the jobs in
//! flight, the model gives each frame its GPU time, the finished jobs feed the
//! controller, and it adjusts, as the worker's scheduler does.
//!
//! Two controllers run the same load: the worker's ([`ConcurrencyController`],
//! GPU time per frame and errors) and, as the baseline, the policy it replaced
//! ([`WaitDriven`], copied here: it also cut on a rising p95 queue wait).
//! Prints per load step the limit, jobs in flight, GPU time per frame,
//! throughput against the ceiling and the queue, then the share of the
//! ceiling each achieved while the offered load exceeded it.
//!
//! `TESSERA_BENCH_WINDOWS` (default 30) windows per load step.

use tessera_worker::service::metrics::{ConcurrencyController, FrameKind};

/// One window: the scheduler adjusts the limit every 2 s.
const WINDOW_S: f64 = 2.0;
/// Simulation steps per window.
const STEPS: usize = 40;
/// GPU time of a frame while the GPU is not saturated.
const T0_S: f64 = 0.020;
/// Jobs in flight past which frames share the GPU.
const SATURATION: usize = 8;
const FRAMES_PER_JOB: f64 = 60.0;
/// The worker's defaults (`--concurrency`, `--max-concurrency`).
const INITIAL: usize = 16;
const MAX: usize = 32;
const OFFERED: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// The GPU: a frame's time with `in_flight` jobs sharing it.
fn frame_time(in_flight: usize) -> f64 {
    T0_S * (in_flight as f64 / SATURATION as f64).max(1.0)
}

/// Frames per second the GPU can deliver at best.
fn ceiling() -> f64 {
    SATURATION as f64 / T0_S
}

/// What the simulation needs of a controller.
trait Controller {
    fn name(&self) -> &'static str;
    fn limit(&self) -> usize;
    /// A job started after waiting `wait_s` in the queue.
    fn started(&mut self, wait_s: f64);
    /// A job finished: its GPU time over its frames.
    fn finished(&mut self, ns: u64, frames: u64);
    fn adjust(&mut self, in_flight: usize) -> usize;
}

struct GpuDriven {
    c: ConcurrencyController,
    kind: FrameKind,
}

impl Controller for GpuDriven {
    fn name(&self) -> &'static str {
        "GPU-driven (ConcurrencyController)"
    }
    fn limit(&self) -> usize {
        self.c.limit
    }
    fn started(&mut self, _wait_s: f64) {}
    fn finished(&mut self, ns: u64, frames: u64) {
        self.c.observe_gpu(&self.kind, ns, frames);
    }
    fn adjust(&mut self, in_flight: usize) -> usize {
        self.c.adjust(in_flight)
    }
}

/// The controller the worker had before, copied as it was: cut the limit when
/// in-flight work passes ~65 % of it while p95 queue wait or GPU time per
/// frame rises; grow it when they fall.
struct WaitDriven {
    limit: usize,
    min: usize,
    max: usize,
    prev_wait_p95: Option<f64>,
    prev_gpu_per_frame: Option<f64>,
    waits: Vec<f64>,
    gpu_ns: u64,
    frames: u64,
}

impl WaitDriven {
    fn new(initial: usize, max: usize) -> Self {
        Self {
            limit: initial.clamp(1, max.max(1)),
            min: 1,
            max: max.max(1),
            prev_wait_p95: None,
            prev_gpu_per_frame: None,
            waits: Vec::new(),
            gpu_ns: 0,
            frames: 0,
        }
    }
}

fn percentile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    Some(v[i])
}

impl Controller for WaitDriven {
    fn name(&self) -> &'static str {
        "wait-driven (the policy replaced)"
    }
    fn limit(&self) -> usize {
        self.limit
    }
    fn started(&mut self, wait_s: f64) {
        self.waits.push(wait_s);
    }
    fn finished(&mut self, ns: u64, frames: u64) {
        self.gpu_ns += ns;
        self.frames += frames;
    }
    fn adjust(&mut self, in_flight: usize) -> usize {
        let p95 = percentile(&mut self.waits, 0.95);
        let per_frame = (self.frames > 0).then(|| self.gpu_ns as f64 / self.frames as f64);
        let rising = |now: Option<f64>, before: Option<f64>| matches!((now, before), (Some(n), Some(b)) if n > b * 1.1);
        let falling =
            |now: Option<f64>, before: Option<f64>| matches!((now, before), (Some(n), Some(b)) if n < b * 0.9);
        let busy = in_flight as f64 >= 0.65 * self.limit as f64;
        if busy && (rising(p95, self.prev_wait_p95) || rising(per_frame, self.prev_gpu_per_frame)) {
            self.limit = (self.limit * 3 / 4).max(self.min);
        } else if falling(p95, self.prev_wait_p95) || (busy && !rising(per_frame, self.prev_gpu_per_frame)) {
            self.limit = (self.limit + 1).min(self.max);
        }
        if p95.is_some() {
            self.prev_wait_p95 = p95;
        }
        if per_frame.is_some() {
            self.prev_gpu_per_frame = per_frame;
        }
        self.waits.clear();
        self.gpu_ns = 0;
        self.frames = 0;
        self.limit
    }
}

/// A deterministic stream of pseudo-random numbers (same every run).
struct Lcg(u64);

impl Lcg {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Job {
    arrived_s: f64,
    frames_left: f64,
    gpu_s: f64,
    /// This job's frames cost this much more or less (±5 %): noise.
    cost: f64,
}

/// One load step's figures.
#[derive(Default)]
struct Row {
    offered: usize,
    limit_min: usize,
    limit_max: usize,
    limit_end: usize,
    /// Jobs in flight, summed over the simulation's steps.
    in_flight_steps: usize,
    gpu_s: f64,
    frames_finished: f64,
    frames_rendered: f64,
    queue: usize,
}

fn simulate(ctl: &mut dyn Controller, windows: usize) -> Vec<Row> {
    let h = WINDOW_S / STEPS as f64;
    let mut rng = Lcg(42);
    let (mut queue, mut running) = (std::collections::VecDeque::<Job>::new(), Vec::<Job>::new());
    let mut now = 0.0;
    let mut rows = Vec::new();
    for offered in OFFERED {
        let mut row = Row { offered, limit_min: usize::MAX, ..Row::default() };
        for _ in 0..windows {
            for step in 0..STEPS {
                // The window's arrivals, spread evenly over it.
                let due = |s: usize| (s * offered).div_ceil(STEPS);
                for _ in due(step)..due(step + 1) {
                    let cost = 0.95 + 0.1 * rng.unit();
                    queue.push_back(Job { arrived_s: now, frames_left: FRAMES_PER_JOB, gpu_s: 0.0, cost });
                }
                dispatch(ctl, &mut queue, &mut running, now);
                row.in_flight_steps += running.len();
                // The GPU: every job in flight runs for the step; its frames
                // take longer the more jobs share the GPU.
                let t = frame_time(running.len());
                for job in &mut running {
                    let frames = (h / (t * job.cost)).min(job.frames_left);
                    job.frames_left -= frames;
                    job.gpu_s += frames * t * job.cost;
                    row.frames_rendered += frames;
                }
                now += h;
                running.retain(|job| {
                    if job.frames_left > 1e-9 {
                        return true;
                    }
                    ctl.finished((job.gpu_s * 1e9) as u64, FRAMES_PER_JOB as u64);
                    row.gpu_s += job.gpu_s;
                    row.frames_finished += FRAMES_PER_JOB;
                    false
                });
                dispatch(ctl, &mut queue, &mut running, now);
            }
            let limit = ctl.adjust(running.len());
            row.limit_min = row.limit_min.min(limit);
            row.limit_max = row.limit_max.max(limit);
            row.limit_end = limit;
        }
        row.queue = queue.len();
        rows.push(row);
    }
    rows
}

/// Starts queued jobs while the limit allows.
fn dispatch(ctl: &mut dyn Controller, queue: &mut std::collections::VecDeque<Job>, running: &mut Vec<Job>, now: f64) {
    while running.len() < ctl.limit() {
        let Some(job) = queue.pop_front() else { break };
        ctl.started(now - job.arrived_s);
        running.push(job);
    }
}

fn main() {
    let windows: usize = std::env::var("TESSERA_BENCH_WINDOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let kind = FrameKind::new("orbit@2/general", 1, 1920, 1080);
    let mut controllers: Vec<Box<dyn Controller>> = vec![
        Box::new(GpuDriven { c: ConcurrencyController::new(INITIAL, MAX), kind }),
        Box::new(WaitDriven::new(INITIAL, MAX)),
    ];
    let ceiling = ceiling();
    let jobs_per_window = ceiling * WINDOW_S / FRAMES_PER_JOB;
    println!(
        "Simulated GPU: {:.0} ms per frame up to {SATURATION} jobs in flight, then × in flight / {SATURATION}; \
         ceiling {ceiling:.0} frames/s ({jobs_per_window:.1} jobs of {FRAMES_PER_JOB:.0} frames per {WINDOW_S:.0} s \
         window). Limit starts at {INITIAL}, max {MAX}; {windows} windows per load step.",
        T0_S * 1000.0
    );
    let mut summary = Vec::new();
    for ctl in &mut controllers {
        let started = std::time::Instant::now();
        let rows = simulate(ctl.as_mut(), windows);
        let elapsed = started.elapsed();
        println!();
        println!("{}:", ctl.name());
        println!();
        println!(
            "| offered (jobs/window) | limit at end (range) | in flight (mean) | GPU ms/frame | throughput (frames/s) | of ceiling | queued at end |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        let (mut over_frames, mut over_windows) = (0.0, 0);
        for r in &rows {
            let seconds = windows as f64 * WINDOW_S;
            let throughput = r.frames_rendered / seconds;
            let per_frame_ms = if r.frames_finished > 0.0 { r.gpu_s / r.frames_finished * 1000.0 } else { f64::NAN };
            println!(
                "| {} | {} ({}–{}) | {:.1} | {:.1} | {:.0} | {:.0} % | {} |",
                r.offered,
                r.limit_end,
                r.limit_min,
                r.limit_max,
                r.in_flight_steps as f64 / (windows * STEPS) as f64,
                per_frame_ms,
                throughput,
                throughput / ceiling * 100.0,
                r.queue
            );
            if r.offered as f64 > jobs_per_window {
                over_frames += r.frames_rendered;
                over_windows += windows;
            }
        }
        let share = over_frames / (over_windows as f64 * WINDOW_S) / ceiling;
        summary.push((ctl.name(), share, elapsed));
    }
    println!();
    for (name, share, elapsed) in summary {
        println!(
            "{name}: {:.0} % of the ceiling while the offered load exceeded it (simulated in {:.1} ms).",
            share * 100.0,
            elapsed.as_secs_f64() * 1000.0
        );
    }
}
