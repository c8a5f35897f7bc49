//! `tessera quote`, `tessera tenants`, `tessera usage`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use rust_decimal::Decimal;
use tessera_metering::event::parse_time;
use tessera_metering::export::{self, Bucket, Format};
use tessera_metering::{quote as price_quote, Metrics, UsageEvent};
use tessera_store::{tier_of, EventFilter, StoreError};

use super::{load_price_book, load_spec, runtime, tokio_runtime, usage, CliError, StoreArgs};

#[derive(Debug, clap::Args)]
pub struct QuoteArgs {
    /// Spec file (.json or .toml).
    pub spec: PathBuf,
    /// Also check the tenant's tier and monthly caps (nothing is reserved).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Override the base price per output second (B), as a decimal.
    #[arg(long)]
    pub base_rate: Option<Decimal>,
    /// Machine-readable output; `price` is a decimal string.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub(super) fn quote(args: QuoteArgs) -> Result<(), CliError> {
    let mut book = load_price_book(args.store.price_book.as_deref())?;
    if let Some(b) = args.base_rate {
        if b <= Decimal::ZERO {
            return Err(usage(anyhow::anyhow!("--base-rate must be greater than zero, got {b}")));
        }
        book.price.base_per_output_second = b;
    }
    let spec = load_spec(Some(&args.spec), &book)?;
    let req = spec.quote_request();
    let q = price_quote(&book, &req).map_err(usage)?;
    let admission = match &args.tenant {
        None => None,
        Some(name) => Some(check_tenant(&args.store, &book, name, &spec, &req, q.price)?),
    };
    if args.json {
        let mut v = serde_json::to_value(&q).map_err(runtime)?;
        v["template"] = serde_json::json!(spec.template.id());
        if let Some(a) = &admission {
            v["admission"] = a.clone();
        }
        println!("{}", serde_json::to_string_pretty(&v).map_err(runtime)?);
        return Ok(());
    }
    println!(
        "{} {}x{} {} fps {} s {} -> {} {}",
        spec.template,
        spec.width,
        spec.height,
        spec.fps,
        q.output_seconds.normalize(),
        spec.variant.as_str(),
        q.price,
        q.currency
    );
    for item in &q.line_items {
        println!("  {:<22} {:<40} {}", item.name, item.detail, item.amount.normalize());
    }
    println!("  {:<22} {:<40} {}", "price", "rounded half-up to cents", q.price);
    let c = &q.cost;
    println!(
        "expected operator cost: compute {} + encode {} + storage {} + egress {} = {} {} ({} GPU s); margin {}",
        c.compute, c.encode, c.storage, c.egress, c.total, q.currency, c.gpu_seconds, q.margin
    );
    if let Some(a) = admission {
        println!("tenant: {}", a["summary"].as_str().unwrap_or_default());
    }
    Ok(())
}

fn check_tenant(
    store_args: &StoreArgs,
    book: &tessera_metering::PriceBook,
    name: &str,
    spec: &crate::spec::JobSpec,
    req: &tessera_metering::QuoteRequest,
    price: Decimal,
) -> Result<serde_json::Value, CliError> {
    let rt = tokio_runtime()?;
    let store = store_args.open(&rt)?;
    let tenant = rt
        .block_on(store.tenant(name))
        .map_err(runtime)?
        .ok_or_else(|| usage(anyhow::anyhow!("unknown tenant `{name}`; create it with `tessera tenants add`")))?;
    let tier = tier_of(book, &tenant.tier).map_err(usage)?;
    let usage_now = rt.block_on(store.month_usage(&tenant.id)).map_err(runtime)?;
    let verdict = match tier.check_features(&tenant.tier, req, spec.lane) {
        Ok(()) => tier.check_caps(&tenant.tier, &usage_now, req.output_seconds, price),
        Err(e) => Err(e),
    };
    Ok(match verdict {
        Ok(warnings) => serde_json::json!({
            "admissible": true, "tenant": tenant.name, "tier": tenant.tier, "warnings": warnings,
            "summary": format!("{} (tier {}): admissible{}", tenant.name, tenant.tier,
                if warnings.is_empty() { String::new() } else { format!("; {}", warnings.join("; ")) }),
        }),
        Err(e) => serde_json::json!({
            "admissible": false, "tenant": tenant.name, "tier": tenant.tier, "refusal": e,
            "summary": format!("{} (tier {}): would be refused: {e}", tenant.name, tenant.tier),
        }),
    })
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant with a tier from the price book.
    Add {
        name: String,
        #[arg(long)]
        tier: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub(super) fn tenants(cmd: TenantsCommand) -> Result<(), CliError> {
    let rt = tokio_runtime()?;
    match cmd {
        TenantsCommand::Add { name, tier, store } => {
            if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(usage(anyhow::anyhow!("tenant name must be 1 to 64 printable characters")));
            }
            let book = load_price_book(store.price_book.as_deref())?;
            let db = store.open(&rt)?;
            let t = rt.block_on(db.create_tenant(&book, &name, &tier, None)).map_err(|e| match e {
                StoreError::TenantExists(_) | StoreError::UnknownTier { .. } => usage(e),
                other => runtime(other),
            })?;
            println!("created tenant {} ({}) with tier {}", t.name, t.id, t.tier);
        }
        TenantsCommand::List { json, store } => {
            let db = store.open(&rt)?;
            let list = rt.block_on(db.tenants()).map_err(runtime)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).map_err(runtime)?);
            } else {
                for t in list {
                    println!("{}  {}  {}", t.id, t.name, t.tier);
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Csv,
    Cloudevents,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BucketArg {
    Second,
    Minute,
    Hour,
}

#[derive(Debug, clap::Subcommand)]
pub enum UsageCommand {
    /// Export usage events, raw or summed per time bucket.
    Export {
        /// Start of the window (RFC 3339, inclusive).
        #[arg(long)]
        from: Option<String>,
        /// End of the window (RFC 3339, exclusive).
        #[arg(long)]
        to: Option<String>,
        /// Only this tenant (name or id).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum)]
        bucket: Option<BucketArg>,
        #[arg(long, value_enum)]
        format: FormatArg,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Append usage events from a JSON-lines file (for example a spool from
    /// another node). Idempotent: events already recorded are skipped. Prints
    /// `ack ID` once each event is durable.
    Import {
        file: PathBuf,
        /// Events per transaction.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the Prometheus exposition rebuilt from the ledger.
    Metrics {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Ledger events read per page by `usage export`.
const EXPORT_PAGE: u32 = 5_000;

pub(super) fn usage_cmd(cmd: UsageCommand) -> Result<(), CliError> {
    let rt = tokio_runtime()?;
    match cmd {
        UsageCommand::Export { from, to, tenant, bucket, format, output, store } => {
            let filter = EventFilter {
                from_ms: from.as_deref().map(parse_time).transpose().map_err(usage)?,
                to_ms: to.as_deref().map(parse_time).transpose().map_err(usage)?,
                tenant,
            };
            let db = store.open(&rt)?;
            let format = match format {
                FormatArg::Csv => Format::Csv,
                FormatArg::Cloudevents => Format::CloudEvents,
            };
            let bucket = bucket.map(|b| match b {
                BucketArg::Second => Bucket::Second,
                BucketArg::Minute => Bucket::Minute,
                BucketArg::Hour => Bucket::Hour,
            });
            // Streamed a page of the ledger at a time: memory stays flat
            // however long the range (the file is written whole or not at all).
            let (mut sink, written): (Box<dyn Write>, Option<(PathBuf, PathBuf)>) = match &output {
                Some(p) => {
                    let tmp = p.with_extension("partial");
                    let f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()));
                    (Box::new(std::io::BufWriter::new(f.map_err(runtime)?)), Some((tmp, p.clone())))
                }
                None => (Box::new(std::io::BufWriter::new(std::io::stdout().lock())), None),
            };
            let mut exporter = export::Exporter::new(format, bucket);
            let mut after = None;
            loop {
                let page = rt.block_on(db.events_page(&filter, after.take(), EXPORT_PAGE)).map_err(runtime)?;
                sink.write_all(exporter.page(&page).as_bytes()).map_err(runtime)?;
                match page.last() {
                    Some(last) if page.len() == EXPORT_PAGE as usize => {
                        after = Some((last.occurred_at_ms, last.id.clone()))
                    }
                    _ => break,
                }
            }
            sink.write_all(exporter.finish().as_bytes()).map_err(runtime)?;
            sink.flush().map_err(runtime)?;
            drop(sink);
            if let Some((tmp, path)) = written {
                std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display())).map_err(runtime)?;
            }
        }
        UsageCommand::Import { file, batch, store } => {
            let f = std::fs::File::open(&file).with_context(|| format!("reading {}", file.display())).map_err(usage)?;
            let db = store.open(&rt)?;
            let mut pending: Vec<UsageEvent> = Vec::new();
            let stdout = std::io::stdout();
            let flush = |pending: &mut Vec<UsageEvent>| -> Result<(), CliError> {
                rt.block_on(db.append(pending)).map_err(runtime)?;
                let mut out = stdout.lock();
                for e in pending.drain(..) {
                    writeln!(out, "ack {}", e.id).map_err(runtime)?;
                }
                out.flush().map_err(runtime)
            };
            for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.map_err(runtime)?;
                if line.trim().is_empty() {
                    continue;
                }
                let event: UsageEvent = serde_json::from_str(&line)
                    .with_context(|| format!("{}:{}: not a usage event", file.display(), n + 1))
                    .map_err(usage)?;
                pending.push(event);
                if pending.len() >= batch.max(1) {
                    flush(&mut pending)?;
                }
            }
            flush(&mut pending)?;
        }
        UsageCommand::Metrics { store } => {
            let book = load_price_book(store.price_book.as_deref())?;
            let db = store.open(&rt)?;
            let events = rt.block_on(db.events(&EventFilter::default())).map_err(runtime)?;
            let metrics = Metrics::new(&book.currency);
            metrics.replay(&book, &events);
            print!("{}", metrics.render());
        }
    }
    Ok(())
}
