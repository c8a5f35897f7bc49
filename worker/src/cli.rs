//! The `tessera` command line: `render`, `check`, `templates`, `doctor`.
//!
//! Exit codes: 0 success, 1 a runtime failure (GPU, disk), 2 invalid input (a
//! usage error, a bad spec, an unreadable spec file). Errors print their whole
//! chain on stderr; nothing panics on bad input.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tessera_metering::clock::format_seconds;

use crate::encode::mux;
use crate::gpu::{self, GpuContext};
use crate::render::catalog::{format_color, ParamKind, TEMPLATES};
use crate::render::clip::{self, ClipSummary};
use crate::spec::{self, JobSpec, RawSpec, SpecFormat, SpecLimits};

/// The spec `tessera render` uses when none is given.
pub const DEFAULT_SPEC: &str = include_str!("../../examples/orbit.json");

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "GPU render worker: tiled wgpu rendering, seam-blended stitching, metered GPU time"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render a clip spec (JSON or TOML) to an .avi (MJPEG) or .y4m clip, or a .jpg or .png frame.
    Render(RenderArgs),
    /// Validate a spec and print it with every default filled in.
    Check {
        /// Spec file (.json or .toml), or - for JSON on stdin.
        spec: PathBuf,
    },
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
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Spec file (.json or .toml), or - for JSON on stdin; the built-in orbit demo when omitted.
    pub spec: Option<PathBuf>,
    /// Output: .avi (MJPEG, GPU-encoded) or .y4m write every frame; .jpg or .png one frame.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Frame to write for single-frame outputs.
    #[arg(long, default_value_t = 0)]
    pub frame: u32,
    /// Tile plan override, COLSxROWS (1x1 renders untiled).
    #[arg(long, value_parser = parse_tiles)]
    pub tiles: Option<(u32, u32)>,
    /// Tile overlap override, in pixels.
    #[arg(long)]
    pub overlap: Option<u32>,
}

fn parse_tiles(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("`{s}` is not a tile plan; write COLSxROWS, like 2x2");
    let (c, r) = s.split_once(['x', 'X']).ok_or_else(err)?;
    Ok((c.trim().parse().map_err(|_| err())?, r.trim().parse().map_err(|_| err())?))
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub error: anyhow::Error,
}

fn usage(error: impl Into<anyhow::Error>) -> CliError {
    CliError { code: 2, error: error.into() }
}

fn runtime(error: impl Into<anyhow::Error>) -> CliError {
    CliError { code: 1, error: error.into() }
}

/// Entry point: parses arguments, runs, prints errors; returns the exit code.
pub fn main() -> i32 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
                .unwrap_or_else(|_| "warn,wgpu_hal=off,wgpu_core=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
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

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Render(args) => render(args),
        Command::Check { spec } => {
            let spec = load_spec(Some(&spec), None, None)?;
            println!("{}", serde_json::to_string_pretty(&spec).map_err(runtime)?);
            Ok(())
        }
        Command::Templates { json } => templates(json),
        Command::Doctor { json } => doctor(json),
    }
}

/// Reads, parses, overrides and validates a spec.
pub fn load_spec(path: Option<&Path>, tiles: Option<(u32, u32)>, overlap: Option<u32>) -> Result<JobSpec, CliError> {
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
    let mut raw: RawSpec = spec::parse(&text, format).map_err(usage)?;
    if let Some((cols, rows)) = tiles {
        raw.tiles.cols = i64::from(cols);
        raw.tiles.rows = i64::from(rows);
    }
    if let Some(px) = overlap {
        raw.tiles.overlap_px = i64::from(px);
    }
    raw.validate(&SpecLimits::default()).map_err(usage)
}

fn render(args: RenderArgs) -> Result<(), CliError> {
    let spec = load_spec(args.spec.as_deref(), args.tiles, args.overlap)?;
    let mut muxer = mux::for_path(&args.output).map_err(usage)?;
    let frames = clip::frame_range(&spec, muxer.as_ref(), args.frame).map_err(usage)?;
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display())).map_err(runtime)?;
    }
    let ctx = GpuContext::open().map_err(runtime)?;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(frames.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} frames ({per_sec}, eta {eta})",
        )
        .map_err(runtime)?,
    );
    let summary = clip::render_clip(&ctx, &spec, muxer.as_mut(), frames, &mut |_| bar.inc(1))
        .with_context(|| format!("rendering {}", args.output.display()))
        .map_err(runtime)?;
    bar.finish_and_clear();
    println!("{}", summary_line(&spec, &summary, &args.output));
    Ok(())
}

/// The one line `tessera render` prints at the end.
pub fn summary_line(spec: &JobSpec, s: &ClipSummary, output: &Path) -> String {
    let t = &spec.tiler;
    let tiles = if s.tiles == 1 {
        "untiled".to_string()
    } else {
        format!("{} tiles ({}x{}, {} px overlap)", s.tiles, t.cols, t.rows, t.overlap)
    };
    let fps = s.frames as f64 / s.wall.as_secs_f64().max(1e-9);
    let entropy = if s.cpu_encode_ns > 0 {
        format!(" + CPU entropy coding {}", format_seconds(s.cpu_encode_ns))
    } else {
        String::new()
    };
    format!(
        "{} frames {}x{} of {} ({:?}), {tiles} -> {}: wall {:.3}s ({fps:.1} fps); GPU render {}, stitch {}, encode {}{entropy} (timing: {})",
        s.frames,
        spec.width,
        spec.height,
        spec.template,
        spec.variant,
        output.display(),
        s.wall.as_secs_f64(),
        format_seconds(s.gpu.render_ns),
        format_seconds(s.gpu.stitch_ns),
        format_seconds(s.gpu.encode_ns),
        s.timing.as_str(),
    )
}

fn templates(json: bool) -> Result<(), CliError> {
    if json {
        println!("{}", serde_json::to_string_pretty(TEMPLATES).map_err(runtime)?);
        return Ok(());
    }
    for t in TEMPLATES {
        println!("{}  [{}]\n    {}", t.id(), t.tags.join(", "), t.description);
        for p in t.params {
            let kind = match p.kind {
                ParamKind::Color { default } => format!("colour, default {}", format_color(default)),
                ParamKind::Int { min, max, default } => format!("integer {min}..={max}, default {default}"),
                ParamKind::Float { min, max, default } => format!("number {min}..={max}, default {default}"),
            };
            println!("    {:<14} {kind}: {}", p.name, p.doc);
        }
    }
    Ok(())
}

fn doctor(json: bool) -> Result<(), CliError> {
    let backends = gpu::backends_from_env().map_err(usage)?;
    let all: Vec<gpu::AdapterReport> = gpu::list_adapters(wgpu::Backends::all())
        .iter()
        .map(|a| {
            let info = a.get_info();
            gpu::AdapterReport {
                name: info.name,
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: info.driver,
                driver_info: info.driver_info,
            }
        })
        .collect();
    let ctx = GpuContext::open();
    if json {
        let chosen = ctx.as_ref().ok().map(|c| {
            serde_json::json!({
                "adapter": c.adapter,
                "timestamps": c.timestamps,
                "features": format!("{:?}", c.features),
                "max_storage_buffer_binding_size": c.limits.max_storage_buffer_binding_size,
                "max_buffer_size": c.limits.max_buffer_size,
                "max_texture_dimension_2d": c.limits.max_texture_dimension_2d,
            })
        });
        let out = serde_json::json!({ "backends": format!("{backends:?}"), "adapters": all, "chosen": chosen,
            "error": ctx.as_ref().err().map(|e| e.to_string()) });
        println!("{}", serde_json::to_string_pretty(&out).map_err(runtime)?);
    } else {
        println!("adapters (all backends):");
        for a in &all {
            println!("  - {} [{} {}] driver: {} {}", a.name, a.backend, a.device_type, a.driver, a.driver_info);
        }
        if let Ok(c) = &ctx {
            println!("chosen ({backends:?}): {} [{} {}]", c.adapter.name, c.adapter.backend, c.adapter.device_type);
            println!(
                "  timing: {}",
                if c.timestamps {
                    "GPU timestamp queries"
                } else {
                    "host (adapter lacks trustworthy timestamp queries; TESSERA_TIMING=gpu overrides)"
                }
            );
            println!("  requested features: {:?}", c.features);
            println!("{:#?}", c.limits);
        }
    }
    ctx.map(|_| ()).map_err(runtime)
}
