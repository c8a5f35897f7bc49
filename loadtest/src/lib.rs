//! tessera-loadtest: `tessera loadtest`, an open-loop load generator against
//! a deployed worker or fleet, over HTTP (never in-process, so it measures
//! what a client sees: the network, the API, admission, the queue and the
//! GPUs). A crate of its own so that the server library (`tessera-worker`)
//! carries no HTTP client; the `tessera` binary adds its subcommand,
//! [`Command`], to the library's command line (`tessera_worker::cli::Extension`).
//!
//! - [`mix`]: the weighted job specs and the seeded choice among them;
//! - [`client`]: the HTTP client (hyper), a deadline on every request;
//! - [`run`]: the sender, the watcher of finished jobs, the progress line;
//! - [`report`]: percentiles, rates, exact money, the JSON output;
//! - [`text`]: the text report.
//!
//! Exit codes as the rest of the CLI: 2 for bad arguments or a bad mix file
//! (before anything is sent), 1 when the run cannot go on (the key is
//! refused, the server cannot be reached at the start).

mod client;
mod mix;
mod report;
mod run;
mod text;

use std::path::PathBuf;
use std::time::Duration;

use tessera_worker::cli::{runtime, tokio_runtime, usage, CliError, Extension};

/// The subcommand this crate adds to the `tessera` command line.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Load a deployed worker or fleet over HTTP: open-loop submissions at a
    /// fixed rate, then queue wait, run time, throughput, errors and cost.
    Loadtest(LoadtestArgs),
}

impl Extension for Command {
    fn run(self) -> Result<(), CliError> {
        match self {
            Command::Loadtest(args) => loadtest(args),
        }
    }
}

/// Arguments of `tessera loadtest`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Without --mix, the built-in mix: 320x180 clips at 24 fps of
  orbit-standard  weight 6  orbit@2, 1 s, lane standard
  dunes-bulk      weight 3  dunes@1, 1 s, lane bulk
  orbit-urgent    weight 1  orbit@2, 0.5 s, lane urgent
keeping those the tenant's tier admits (asked with POST /v1/quote; the urgent
lane is enterprise-only in the built-in price book).

A mix file (.json or .toml) is a list of {weight, spec, name?}: JSON as an
array or {\"entries\": [...]}, TOML as [[entries]] tables; `spec` is a job spec
as POST /v1/jobs takes it (its `lane` decides the lane). See
examples/loadtest-mix.json.")]
pub struct LoadtestArgs {
    /// Base URL of a worker, or of a fleet's load balancer (a fleet shares one
    /// queue, so any worker's URL loads all of it): http://HOST:PORT. Plain
    /// HTTP only: use an in-cluster URL or a port-forward.
    #[arg(long, value_parser = client::parse_base_url)]
    pub url: String,
    /// The tenant's API key.
    #[arg(long, env = "TESSERA_API_KEY", hide_env_values = true, value_parser = parse_key)]
    pub key: String,
    /// Submissions per second (a decimal, e.g. 0.5); submission i is sent at
    /// t0 + i/RATE whatever happened to the earlier ones.
    #[arg(long, value_parser = parse_rate, allow_hyphen_values = true)]
    pub rate: f64,
    /// How long to send: 60, 60s, 2m, 500ms, 1h.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Duration,
    /// The job mix, .json or .toml (default: the built-in mix below).
    #[arg(long)]
    pub mix: Option<PathBuf>,
    /// Seed of the choice of mix entries: the same seed sends the same sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// After the last send, how long to wait for accepted jobs to finish
    /// (0: not at all); jobs still running then are reported unfinished.
    #[arg(long, default_value = "300s", value_parser = parse_drain)]
    pub drain: Duration,
    /// Deadline of each HTTP request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// One JSON object on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// `60`, `60s`, `2m`, `500ms`, `1h`, `1.5s` → a duration; zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_any(s)?;
    if d.is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(d)
}

fn parse_drain(s: &str) -> Result<Duration, String> {
    parse_duration_any(s)
}

fn parse_duration_any(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("`{s}`: a duration cannot be negative"));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use ms, s, m or h, e.g. 60s, 2m, 500ms)")),
    };
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 60, 60s, 2m, 500ms)"))?;
    let secs = n * scale;
    if !secs.is_finite() || secs > 7.0 * 86_400.0 {
        return Err(format!("`{s}` is out of range (at most a week)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Jobs per second: a finite number above 0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number (jobs per second, e.g. 2 or 0.5)"))?;
    if !r.is_finite() || r <= 0.0 {
        return Err(format!("must be a number of jobs per second above 0 (got {s})"));
    }
    if r > 10_000.0 {
        return Err(format!("{r} jobs/s is more than one generator should send (at most 10000)"));
    }
    Ok(r)
}

fn parse_key(s: &str) -> Result<String, String> {
    let k = s.trim();
    if k.is_empty() {
        return Err("the API key is empty".into());
    }
    if !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the API key must be visible ASCII characters".into());
    }
    Ok(k.to_string())
}

/// `tessera loadtest`.
pub fn loadtest(args: LoadtestArgs) -> Result<(), CliError> {
    // The mix file is checked before anything is sent.
    let file_mix = args.mix.as_deref().map(mix::load).transpose().map_err(usage)?;
    let api = client::Api::new(args.url.clone(), &args.key, args.timeout).map_err(usage)?;
    let mut id = [0u8; 4];
    getrandom::getrandom(&mut id).map_err(runtime)?;
    let run_id = format!("lt-{}", hex::encode(id));
    let rt = tokio_runtime()?;
    let measured = rt.block_on(async {
        let mix = match file_mix {
            Some(m) => m,
            None => {
                // A wrong key answers 401 here before the quotes: say so plainly.
                run::usage(&api).await?;
                run::admissible(&api, mix::default_mix()).await?
            }
        };
        let plan = run::Plan {
            api,
            mix,
            rate: args.rate,
            duration: args.duration,
            drain: args.drain,
            seed: args.seed,
            run_id,
        };
        run::run(plan, args.url.clone()).await
    });
    let report = report::Report::build(&measured.map_err(runtime)?);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(runtime)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0").unwrap_err().contains("longer than 0"));
        assert!(parse_duration("0s").unwrap_err().contains("longer than 0"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("").unwrap_err().contains("not a duration"));
        assert!(parse_duration("1e400").is_err());
        assert_eq!(parse_drain("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("4"), Ok(4.0));
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        for bad in ["0", "-1", "NaN", "inf", "x", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert!(parse_rate("0").unwrap_err().contains("above 0"));
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key(" tsk_1 "), Ok("tsk_1".into()));
        assert!(parse_key("").is_err());
        assert!(parse_key("a b").is_err());
    }
}
