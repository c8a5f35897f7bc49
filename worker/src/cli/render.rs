//! `tessera render`: a clip or a frame, metered for a tenant when `--tenant` is given.
//!
//! `--frame N` (single-frame outputs) and `--frames FIRST..END` (clips) become
//! the spec's `frame_range`, the same preview a spec sent to the API asks for:
//! only those frames are rendered, reserved, quoted and billed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tessera_metering::clock::format_seconds;
use tessera_metering::event::now_ms;
use tessera_metering::{quote, AdmittedQuote, AttemptRef, Metrics, Outcome, PriceBook};
use tessera_store::{JobId, Reservation, Store, StoreError, Tenant};

use super::{load_price_book, read_spec, runtime, tokio_runtime, usage, CliError, StoreArgs};
use crate::encode::jpeg::gpu_entropy::Entropy;
use crate::encode::mux;
use crate::gpu::GpuContext;
use crate::render::clip::{self, ClipSummary};
use crate::render::ring::{DEFAULT_FRAMES_IN_FLIGHT, MAX_FRAMES_IN_FLIGHT};
use crate::spec::{JobSpec, RawFrameRange, RawSpec, SpecLimits};
use crate::usage::{job_id, Bill, UsageRecorder};

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Spec file (.json or .toml), or - for JSON on stdin; the built-in orbit demo when omitted.
    pub spec: Option<PathBuf>,
    /// Output: .avi (MJPEG, GPU-encoded) or .y4m write every frame; .jpg or .png one frame.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Single-frame outputs (.png, .jpg): the clip frame to write, counted
    /// from 0 (default: the spec's frame_range.first, else 0). Only that frame
    /// is rendered; with --tenant only it is billed (1/fps s of output).
    #[arg(long, value_name = "N", conflicts_with = "frames")]
    pub frame: Option<u32>,
    /// Clip outputs (.avi, .y4m): only clip frames FIRST..END (END exclusive,
    /// like 48..72), a preview rendered and billed as those frames alone. It
    /// replaces the spec's frame_range.
    #[arg(long, value_name = "FIRST..END", value_parser = parse_frames)]
    pub frames: Option<(u32, u32)>,
    /// Tile plan override, COLSxROWS (1x1 renders untiled).
    #[arg(long, value_parser = parse_tiles)]
    pub tiles: Option<(u32, u32)>,
    /// Tile overlap override, in pixels.
    #[arg(long)]
    pub overlap: Option<u32>,
    /// Meter the render for this tenant (name or id): admission, usage ledger, billing.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Where JPEG frames are Huffman-coded: `gpu` reads back only the
    /// compressed scan; `cpu` reads back the coefficients and codes them on
    /// the CPU (the reference; the same bytes).
    #[arg(long, value_enum, env = "TESSERA_ENTROPY", default_value_t = Entropy::Gpu)]
    pub entropy: Entropy,
    /// Frames rendered ahead while the host reads back and writes the last
    /// (1–3; 1 where passes are timed on the host, without GPU timestamps).
    #[arg(long, env = "TESSERA_FRAMES_IN_FLIGHT", default_value_t = DEFAULT_FRAMES_IN_FLIGHT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_FRAMES_IN_FLIGHT)))]
    pub frames_in_flight: u32,
    /// Also write the render's figures to this JSON file: frames, GPU ns per
    /// pass, host ns per stage, bytes read back and written, frames in flight.
    #[arg(long, value_name = "FILE.json")]
    pub stats: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_tiles(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("`{s}` is not a tile plan; write COLSxROWS, like 2x2");
    let (c, r) = s.split_once(['x', 'X']).ok_or_else(err)?;
    Ok((c.trim().parse().map_err(|_| err())?, r.trim().parse().map_err(|_| err())?))
}

fn parse_frames(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("`{s}` is not a frame range; write FIRST..END (END exclusive), like 0..24");
    let (a, b) = s.split_once("..").ok_or_else(err)?;
    let (a, b): (u32, u32) = (a.trim().parse().map_err(|_| err())?, b.trim().parse().map_err(|_| err())?);
    if b <= a {
        return Err(format!("`{s}` holds no frame: END must be past FIRST (END is exclusive)"));
    }
    Ok((a, b))
}

/// The spec of this render: the file's, with the command line's tile plan
/// and frame selection, validated. An invalid frame selection is reported
/// under the flag that made it.
fn spec_for(args: &RenderArgs, book: &PriceBook, clip_output: bool) -> Result<JobSpec, CliError> {
    let mut raw = read_spec(args.spec.as_deref())?;
    if let Some((cols, rows)) = args.tiles {
        raw.tiles.cols = i64::from(cols);
        raw.tiles.rows = i64::from(rows);
    }
    if let Some(px) = args.overlap {
        raw.tiles.overlap_px = i64::from(px);
    }
    let flag = select_frames(args, &mut raw, clip_output)?;
    raw.validate(&SpecLimits::from_price_book(book)).map_err(|e| {
        let by_flag = flag.filter(|_| e.field_errors().iter().any(|f| f.field.starts_with("frame_range")));
        match by_flag {
            Some(flag) => {
                usage(anyhow::Error::new(e).context(format!("{flag} asks for frames the clip does not have")))
            }
            None => usage(e),
        }
    })
}

/// Writes the output's frame selection into the spec's frame range, and
/// returns the flag that set it. A single-frame output always renders exactly
/// one frame: `--frame`, else the first of the spec's range, else frame 0.
fn select_frames(args: &RenderArgs, raw: &mut RawSpec, clip_output: bool) -> Result<Option<String>, CliError> {
    match (clip_output, args.frame, args.frames) {
        (false, _, Some(_)) => Err(usage(anyhow::anyhow!(
            "--frames is for clip outputs (.avi, .y4m); {} holds one frame: pick it with --frame N",
            args.output.display()
        ))),
        (true, Some(_), _) => Err(usage(anyhow::anyhow!(
            "--frame picks the frame of a single-frame output (.png, .jpg); for part of a clip use --frames FIRST..END"
        ))),
        (false, frame, None) => {
            let first = frame.map(i64::from).or(raw.frame_range.as_ref().map(|r| r.first)).unwrap_or(0);
            raw.frame_range = Some(RawFrameRange { first, count: 1 });
            Ok(frame.map(|n| format!("--frame {n}")))
        }
        (true, None, Some((first, end))) => {
            raw.frame_range = Some(RawFrameRange { first: i64::from(first), count: i64::from(end - first) });
            Ok(Some(format!("--frames {first}..{end}")))
        }
        (true, None, None) => Ok(None),
    }
}

/// A tenant's metering context for one render.
struct Metered {
    rt: tokio::runtime::Runtime,
    store: Store,
    tenant: Tenant,
    book: PriceBook,
    job: JobId,
}

impl Metered {
    /// Gives the reservation back (nothing was rendered).
    fn release(&self) {
        if let Err(e) = self.rt.block_on(self.store.finish_reserved(&self.job, &[])) {
            eprintln!("warning: could not release the reservation of {}: {e}", self.job);
        }
    }
}

/// Admits the render against the tenant's tier and caps: a reservation that
/// the render's end releases, in the transaction that records its usage.
fn admit(args: &RenderArgs, spec: &JobSpec, book: PriceBook, name: &str) -> Result<Metered, CliError> {
    let rt = tokio_runtime()?;
    let store = args.store.open(&rt)?;
    let tenant = rt
        .block_on(store.tenant(name))
        .map_err(runtime)?
        .ok_or_else(|| usage(anyhow::anyhow!("unknown tenant `{name}`; create it with `tessera tenants add`")))?;
    let q = quote(&book, &spec.quote_request()).map_err(usage)?;
    let job = job_id(&tenant, spec, &format!("{}:{}", args.output.display(), now_ms()));
    let req = spec.quote_request();
    let reservation = Reservation { job: &job, request: &req, lane: spec.lane, frames: spec.frames, price: q.price };
    let warnings = rt.block_on(store.reserve(&book, &tenant, &reservation)).map_err(|e| match e {
        StoreError::Admission(a) => usage(anyhow::anyhow!("admission refused: {a}")),
        e @ StoreError::UnknownTier { .. } => usage(e),
        other => runtime(other),
    })?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(Metered { rt, store, tenant, book, job })
}

pub(super) fn render(args: RenderArgs) -> Result<(), CliError> {
    let book = load_price_book(args.store.price_book.as_deref())?;
    let mut muxer = mux::for_path(&args.output).map_err(usage)?;
    let spec = spec_for(&args, &book, muxer.is_clip())?;
    let q = quote(&book, &spec.quote_request()).map_err(usage)?;
    let metered = match &args.tenant {
        Some(name) => Some(admit(&args, &spec, book, name)?),
        None => None,
    };
    let (ctx, bar) = match prepare(&args.output, u64::from(spec.frames), args.entropy) {
        Ok(prepared) => prepared,
        Err(e) => {
            // Admitted but never rendered: the reservation must not hold the caps.
            if let Some(m) = &metered {
                m.release();
            }
            return Err(e);
        }
    };
    let timing = ctx.timing_source();
    let Some(m) = metered else {
        let summary = clip::render_clip(&ctx, &spec, muxer.as_mut(), args.frames_in_flight, &mut |_, _| {
            bar.inc(1);
            Ok(())
        })
        .with_context(|| format!("rendering {}", args.output.display()))
        .map_err(runtime)?;
        bar.finish_and_clear();
        write_stats(&args, &spec, &summary)?;
        println!("{}", summary_line(&spec, &summary, &args.output));
        return Ok(());
    };
    let metrics = Metrics::new(&m.book.currency);
    let attempt = AttemptRef {
        tenant_id: m.tenant.id.to_string(),
        tier: m.tenant.tier.clone(),
        job_id: m.job.to_string(),
        attempt: 1,
        chunk: None,
    };
    let mut recorder = UsageRecorder::new(&m.store, &metrics, attempt, timing);
    let result = clip::render_clip(&ctx, &spec, muxer.as_mut(), args.frames_in_flight, &mut |i, times| {
        bar.inc(1);
        m.rt.block_on(recorder.frame(i, times)).map_err(Into::into)
    });
    bar.finish_and_clear();
    let closing = m.rt.block_on(recorder.close());
    let (outcome, bill) = match &result {
        Ok(_) => {
            let admitted = AdmittedQuote::new(&m.book, &spec.quote_request(), &q, spec.frames).map_err(usage)?;
            (Outcome::Succeeded, Some(Bill::whole(&spec, &admitted)))
        }
        Err(_) => (Outcome::Failed, None),
    };
    // The render's last usage, its billable output and the reservation's
    // release commit together.
    let events = closing.events(outcome, bill.as_ref());
    let inserted = m.rt.block_on(m.store.finish_reserved(&m.job, &events)).map_err(runtime)?;
    closing.record(&metrics, &m.book, outcome, &events, &inserted);
    let summary = result.with_context(|| format!("rendering {}", args.output.display())).map_err(runtime)?;
    write_stats(&args, &spec, &summary)?;
    println!(
        "{}; billed {} ({} s) {} {} to tenant {} as job {}",
        summary_line(&spec, &summary, &args.output),
        frame_count(spec.frames),
        // Exact seconds are in the ledger; six places are plenty to read.
        spec.output_seconds().round_dp(6).normalize(),
        q.price,
        m.book.currency,
        m.tenant.name,
        m.job
    );
    Ok(())
}

/// Writes `--stats FILE.json`, when asked for.
fn write_stats(args: &RenderArgs, spec: &JobSpec, summary: &ClipSummary) -> Result<(), CliError> {
    let Some(path) = &args.stats else { return Ok(()) };
    let text = serde_json::to_vec_pretty(&summary.stats(spec)).map_err(runtime)?;
    std::fs::write(path, text).with_context(|| format!("writing the stats to {}", path.display())).map_err(runtime)
}

/// The output's directory, the GPU and the progress bar.
fn prepare(output: &Path, frames: u64, entropy: Entropy) -> Result<(GpuContext, indicatif::ProgressBar), CliError> {
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display())).map_err(runtime)?;
    }
    let ctx = GpuContext::open().map_err(runtime)?;
    ctx.set_entropy(entropy);
    Ok((ctx, progress_bar(frames)?))
}

fn progress_bar(len: u64) -> Result<indicatif::ProgressBar, CliError> {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} frames ({per_sec}, eta {eta})",
        )
        .map_err(runtime)?,
    );
    Ok(bar)
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
    // Only a JPEG output codes and writes files on the host.
    let entropy = if s.host.entropy_ns > 0 {
        let host = match s.entropy {
            Entropy::Gpu => "host readback and JFIF (entropy coding on the GPU)",
            Entropy::Cpu => "host readback and CPU entropy coding",
        };
        let kib = |b: u64| b.div_ceil(1024);
        format!(
            " + {host} {}; {} KiB read back for {} KiB written",
            format_seconds(s.host.encode_ns()),
            kib(s.readback_bytes),
            kib(s.output_bytes)
        )
    } else {
        String::new()
    };
    // A preview says which part of the clip it is.
    let part = if spec.is_partial() {
        format!(" (clip frames {}..{} of {})", spec.first_frame, spec.first_frame + spec.frames, spec.clip_frames)
    } else {
        String::new()
    };
    format!(
        "{}{part} {}x{} of {} ({:?}), {tiles} -> {}: wall {:.3}s ({fps:.1} fps); GPU render {}, stitch {}, encode {}{entropy} (timing: {}, {} in flight)",
        frame_count(s.frames),
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
        s.frames_in_flight,
    )
}

/// "1 frame", "12 frames".
fn frame_count(n: u32) -> String {
    if n == 1 {
        "1 frame".to_string()
    } else {
        format!("{n} frames")
    }
}
