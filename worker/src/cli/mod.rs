//! The `tessera` command line.
//!
//! `render` (optionally metered for a tenant), `check`, `quote`, `tenants`,
//! `usage` (export, import, metrics), `templates`, `doctor`, `health` (an HTTP
//! probe for images without curl), and the subcommands of crates this library
//! does not depend on, through [`Extension`] (`loadtest`, in
//! `tessera-loadtest`, so the server carries no HTTP client). Exit codes: 0
//! success, 1 a runtime failure (GPU, disk, store), 2 invalid input (usage
//! error, bad spec, unreadable file, refused admission). Errors print their whole
//! chain on stderr; nothing panics on bad input.

mod billing;
mod health;
mod info;
mod render;
mod serve;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tessera_metering::PriceBook;
use tessera_store::{Store, StoreUrl};

use crate::spec::{self, JobSpec, RawSpec, SpecFormat, SpecLimits};

/// The spec `tessera render` uses when none is given.
pub const DEFAULT_SPEC: &str = include_str!("../../../examples/orbit.json");

/// The command line, with the extension subcommands `X` after the library's own.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about = "GPU render worker: tiled wgpu rendering, GPU encode, metered GPU time")]
pub struct Cli<X: Extension> {
    #[command(subcommand)]
    pub command: Command<X>,
    /// Log lines on stderr: `text` (colour only at a terminal) or `json`
    /// (one object per line, for collectors). `TESSERA_LOG` sets the filter.
    #[arg(long, global = true, env = "TESSERA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr. By default warnings and errors, plus the service's access
/// log (one line per request, target `access`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| "warn,access=info,wgpu_hal=off,wgpu_core=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests calling `main` twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        // Colour only for a person at a terminal: log files and collectors
        // get plain text, never ANSI escape codes.
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
    };
}

/// Where the data directory, the store and the price book are.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Data directory: clips and sidecars (shared by a fleet), and the
    /// embedded SQLite store unless --db names another.
    #[arg(long, env = "TESSERA_DATA", default_value = "tessera-data")]
    pub data: PathBuf,
    /// The store: sqlite://PATH or postgres://USER@HOST:PORT/DATABASE
    /// (default: sqlite://DATA/tessera.db).
    #[arg(long, env = "TESSERA_DB")]
    pub db: Option<String>,
    /// Price book TOML (default: the built-in config/price-book.toml).
    #[arg(long, env = "TESSERA_PRICE_BOOK")]
    pub price_book: Option<PathBuf>,
}

impl StoreArgs {
    /// The store's URL: `--db`, or SQLite in the data directory. A URL of
    /// another kind is a usage error.
    pub fn url(&self) -> Result<StoreUrl, CliError> {
        match &self.db {
            Some(url) => StoreUrl::parse(url).map_err(usage),
            None => Ok(StoreUrl::in_data_dir(&self.data)),
        }
    }

    /// Opens (and migrates) the store on `rt`.
    pub fn open(&self, rt: &tokio::runtime::Runtime) -> Result<Store, CliError> {
        let url = self.url()?;
        rt.block_on(Store::open(&url)).map_err(runtime)
    }
}

/// Subcommands that live in crates this library does not depend on (the load
/// test, in `tessera-loadtest`): the binary names them as the `X` of
/// [`Cli`], and they are listed after the library's own.
pub trait Extension: Subcommand + std::fmt::Debug {
    /// Runs the subcommand (after logging is set up).
    fn run(self) -> Result<(), CliError>;
}

#[derive(Debug, Subcommand)]
pub enum Command<X: Extension> {
    /// Render a clip spec (JSON or TOML) to an .avi (MJPEG) or .y4m clip, or a .jpg or .png frame.
    Render(render::RenderArgs),
    /// Validate a spec and print it with every default filled in.
    Check {
        /// Spec file (.json or .toml), or - for JSON on stdin.
        spec: PathBuf,
        #[arg(long, env = "TESSERA_PRICE_BOOK")]
        price_book: Option<PathBuf>,
    },
    /// Run the worker service: HTTP API, lanes, retries, crash recovery, metrics.
    Serve(serve::ServeArgs),
    /// Price a spec: the price tag, its line items and the operator's expected cost.
    Quote(billing::QuoteArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(billing::TenantsCommand),
    /// Usage ledger: export, import, metrics.
    #[command(subcommand)]
    Usage(billing::UsageCommand),
    /// List the scene templates.
    Templates {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the GPU adapters, the one tessera picks, its features and limits.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Probe a worker over HTTP (GET, default /readyz on 127.0.0.1:8080): exit 0 on a 2xx, 1 otherwise.
    Health(health::HealthArgs),
    #[command(flatten)]
    Extension(X),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub error: anyhow::Error,
}

/// A usage error: exit code 2.
pub fn usage(error: impl Into<anyhow::Error>) -> CliError {
    CliError { code: 2, error: error.into() }
}

/// A runtime failure: exit code 1.
pub fn runtime(error: impl Into<anyhow::Error>) -> CliError {
    CliError { code: 1, error: error.into() }
}

/// Entry point: parses arguments (the library's subcommands and `X`'s), runs,
/// prints errors; returns the exit code.
pub fn main<X: Extension>() -> i32 {
    let cli = match Cli::<X>::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => 0,
        Err(CliError { code, error }) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            code
        }
    }
}

pub fn run<X: Extension>(cli: Cli<X>) -> Result<(), CliError> {
    match cli.command {
        Command::Render(args) => render::render(args),
        Command::Check { spec, price_book } => {
            let book = load_price_book(price_book.as_deref())?;
            let spec = load_spec(Some(&spec), &book)?;
            println!("{}", serde_json::to_string_pretty(&spec).map_err(runtime)?);
            Ok(())
        }
        Command::Serve(args) => serve::serve(args),
        Command::Quote(args) => billing::quote(args),
        Command::Tenants(cmd) => billing::tenants(cmd),
        Command::Usage(cmd) => billing::usage_cmd(cmd),
        Command::Templates { json } => info::templates(json),
        Command::Doctor { json } => info::doctor(json),
        Command::Health(args) => health::health(args),
        Command::Extension(x) => x.run(),
    }
}

/// The price book at `path`, or the built-in one. An invalid book is refused.
pub fn load_price_book(path: Option<&Path>) -> Result<PriceBook, CliError> {
    match path {
        None => Ok(PriceBook::default_book()),
        Some(p) => PriceBook::load(p).map_err(usage),
    }
}

/// Reads, parses and validates a spec against the price book's frame rates
/// and features.
pub fn load_spec(path: Option<&Path>, book: &PriceBook) -> Result<JobSpec, CliError> {
    read_spec(path)?.validate(&SpecLimits::from_price_book(book)).map_err(usage)
}

/// Reads and parses a spec: a .json or .toml file, `-` for JSON on stdin, or
/// the built-in demo when there is none.
pub fn read_spec(path: Option<&Path>) -> Result<RawSpec, CliError> {
    let (text, format) = match path {
        None => (DEFAULT_SPEC.to_string(), SpecFormat::Json),
        Some(p) if p == Path::new("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading the spec from stdin").map_err(usage)?;
            (s, SpecFormat::Json)
        }
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading spec {}", p.display())).map_err(usage)?;
            let format = match p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
                Some("toml") => SpecFormat::Toml,
                Some("json") | None => SpecFormat::Json,
                Some(other) => {
                    return Err(usage(anyhow::anyhow!(
                        "spec {} has extension .{other}; use .json or .toml",
                        p.display()
                    )))
                }
            };
            (text, format)
        }
    };
    spec::parse(&text, format).map_err(usage)
}

/// A Tokio runtime for the store's async API (and the load test's client).
pub fn tokio_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(runtime)
}
