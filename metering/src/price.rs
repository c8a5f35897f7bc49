//! The price book and quotes.
//!
//! [`PriceBook::parse`] reads the operator's TOML (see `config/price-book.toml`)
//! and refuses it with a message naming the key when anything is off. [`quote`]
//! prices a clip: `B x t x R x F x M`, plus add-ons per output second, rounded
//! half-up to cents in decimal arithmetic, with each factor as a line item and
//! the operator's expected cost split into compute, encode, storage and egress.

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::tiers::Tier;

/// Exact decimals from a price book: strings (`"0.012"`) or integers; binary
/// floats are refused because `0.1` is not exact in them.
pub mod exact {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::str::FromStr;

    use rust_decimal::Decimal;
    use serde::de::{self, Deserializer, Visitor};
    use serde::Deserialize;

    struct ExactVisitor;

    impl Visitor<'_> for ExactVisitor {
        type Value = Decimal;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal string like \"0.012\" or a whole number")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
            Decimal::from_str(v.trim()).map_err(|_| E::custom(format!("`{v}` is not a decimal number")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
            Err(E::custom(format!("write {v} as a string (\"{v}\"): binary floats are not exact")))
        }
    }

    #[derive(Deserialize)]
    struct Exact(#[serde(deserialize_with = "decimal")] Decimal);

    pub fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        d.deserialize_any(ExactVisitor)
    }

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Option::<Exact>::deserialize(d).map(|o| o.map(|e| e.0))
    }

    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Decimal>, D::Error> {
        BTreeMap::<String, Exact>::deserialize(d).map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

/// The price book embedded in the binary, used when none is configured.
pub const DEFAULT_PRICE_BOOK: &str = include_str!("../../config/price-book.toml");

/// Named resolutions a price book may list, with their pixel sizes.
pub const NAMED_RESOLUTIONS: [(&str, u32, u32); 5] =
    [("720p", 1280, 720), ("1080p", 1920, 1080), ("1440p", 2560, 1440), ("4k", 3840, 2160), ("8k", 7680, 4320)];

/// Pixel count of a named resolution.
pub fn named_pixels(name: &str) -> Option<u64> {
    NAMED_RESOLUTIONS.iter().find(|r| r.0 == name).map(|r| u64::from(r.1) * u64::from(r.2))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    #[serde(deserialize_with = "exact::decimal")]
    pub base_per_output_second: Decimal,
    #[serde(deserialize_with = "exact::map")]
    pub resolution: BTreeMap<String, Decimal>,
    #[serde(deserialize_with = "exact::map")]
    pub fps: BTreeMap<String, Decimal>,
    #[serde(deserialize_with = "exact::map")]
    pub variant: BTreeMap<String, Decimal>,
    #[serde(default, deserialize_with = "exact::map")]
    pub addons: BTreeMap<String, Decimal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostEstimate {
    #[serde(deserialize_with = "exact::map")]
    pub gpu_seconds_per_output_second: BTreeMap<String, Decimal>,
    #[serde(deserialize_with = "exact::decimal")]
    pub advanced_gpu_factor: Decimal,
    #[serde(deserialize_with = "exact::decimal")]
    pub encode_seconds_per_output_second: Decimal,
    pub bytes_per_output_second: u64,
    pub retention_days: u32,
    #[serde(deserialize_with = "exact::decimal")]
    pub downloads_per_clip: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostTable {
    #[serde(deserialize_with = "exact::decimal")]
    pub compute_per_gpu_second: Decimal,
    #[serde(deserialize_with = "exact::decimal")]
    pub encode_per_gpu_second: Decimal,
    #[serde(deserialize_with = "exact::decimal")]
    pub storage_per_gb_second: Decimal,
    #[serde(deserialize_with = "exact::decimal")]
    pub egress_per_gb: Decimal,
    pub estimate: CostEstimate,
}

/// The whole price book.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceBook {
    pub currency: String,
    pub price: PriceTable,
    pub cost: CostTable,
    pub tiers: BTreeMap<String, Tier>,
}

/// Why a price book was refused; the message names the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriceBookError {
    #[error("price book {source_name}: {key}: {message}")]
    Invalid { source_name: String, key: String, message: String },
    #[error("cannot read price book {path}: {message}")]
    Read { path: String, message: String },
}

impl PriceBook {
    /// The embedded default.
    pub fn default_book() -> Self {
        Self::parse(DEFAULT_PRICE_BOOK, "(built-in)").expect("the built-in price book is valid")
    }

    /// Reads `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, PriceBookError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PriceBookError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, PriceBookError> {
        let invalid = |key: String, message: String| PriceBookError::Invalid {
            source_name: source_name.to_string(),
            key,
            message,
        };
        let de = toml::Deserializer::new(text);
        let book: PriceBook = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().message().trim().to_string();
            invalid(if key == "." { "(file)".into() } else { key }, message)
        })?;
        book.validate().map_err(|(key, message)| invalid(key, message))?;
        Ok(book)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let positive = |key: String, v: Decimal| {
            if v > Decimal::ZERO {
                Ok(())
            } else {
                Err((key, format!("must be greater than zero, got {v}")))
            }
        };
        let non_negative = |key: String, v: Decimal| {
            if v >= Decimal::ZERO {
                Ok(())
            } else {
                Err((key, format!("must not be negative, got {v}")))
            }
        };
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(("currency".into(), format!("`{}` is not an ISO 4217 code like USD", self.currency)));
        }
        positive("price.base_per_output_second".into(), self.price.base_per_output_second)?;
        if self.price.resolution.is_empty() {
            return Err(("price.resolution".into(), "lists no resolution".into()));
        }
        for (name, &m) in &self.price.resolution {
            if named_pixels(name).is_none() {
                let known: Vec<&str> = NAMED_RESOLUTIONS.iter().map(|r| r.0).collect();
                return Err((
                    format!("price.resolution.{name}"),
                    format!("unknown resolution (known: {})", known.join(", ")),
                ));
            }
            positive(format!("price.resolution.{name}"), m)?;
        }
        if self.price.fps.is_empty() {
            return Err(("price.fps".into(), "lists no frame rate".into()));
        }
        for (fps, &m) in &self.price.fps {
            match fps.parse::<u32>() {
                Ok(f) if (1..=240).contains(&f) => {}
                _ => {
                    return Err((format!("price.fps.{fps}"), "frame rate must be a whole number from 1 to 240".into()))
                }
            }
            positive(format!("price.fps.{fps}"), m)?;
        }
        for v in ["general", "advanced"] {
            let m =
                self.price.variant.get(v).ok_or_else(|| (format!("price.variant.{v}"), "is missing".to_string()))?;
            positive(format!("price.variant.{v}"), *m)?;
        }
        if let Some(extra) = self.price.variant.keys().find(|k| !["general", "advanced"].contains(&k.as_str())) {
            return Err((format!("price.variant.{extra}"), "unknown variant (general, advanced)".into()));
        }
        for (name, &p) in &self.price.addons {
            non_negative(format!("price.addons.{name}"), p)?;
        }
        let c = &self.cost;
        non_negative("cost.compute_per_gpu_second".into(), c.compute_per_gpu_second)?;
        non_negative("cost.encode_per_gpu_second".into(), c.encode_per_gpu_second)?;
        non_negative("cost.storage_per_gb_second".into(), c.storage_per_gb_second)?;
        non_negative("cost.egress_per_gb".into(), c.egress_per_gb)?;
        for name in self.price.resolution.keys() {
            let key = format!("cost.estimate.gpu_seconds_per_output_second.{name}");
            let v = c
                .estimate
                .gpu_seconds_per_output_second
                .get(name)
                .ok_or_else(|| (key.clone(), "is missing".to_string()))?;
            non_negative(key, *v)?;
        }
        positive("cost.estimate.advanced_gpu_factor".into(), c.estimate.advanced_gpu_factor)?;
        non_negative("cost.estimate.downloads_per_clip".into(), c.estimate.downloads_per_clip)?;
        if self.tiers.is_empty() {
            return Err(("tiers".into(), "defines no tier".into()));
        }
        for (name, tier) in &self.tiers {
            tier.validate(name, self)?;
        }
        Ok(())
    }

    /// Frame rates offered, ascending.
    pub fn frame_rates(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.price.fps.keys().filter_map(|k| k.parse().ok()).collect();
        v.sort_unstable();
        v
    }

    /// A short fingerprint of the whole book (FNV-1a of its canonical JSON):
    /// which book a quote was made with, shown with every admitted job.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{:016x}", crate::event::fnv1a(json.as_bytes()))
    }

    /// The named resolution whose multiplier a `width x height` frame takes: the
    /// smallest listed one with at least as many pixels, else the largest.
    pub fn resolution_bucket(&self, width: u32, height: u32) -> &str {
        let pixels = u64::from(width) * u64::from(height);
        let mut listed: Vec<(&str, u64)> =
            self.price.resolution.keys().filter_map(|k| named_pixels(k).map(|p| (k.as_str(), p))).collect();
        listed.sort_by_key(|r| r.1);
        listed.iter().find(|r| r.1 >= pixels).or(listed.last()).map(|r| r.0).unwrap_or("1080p")
    }
}

/// What a quote needs to know about a clip.
#[derive(Debug, Clone, PartialEq)]
pub struct QuoteRequest {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Output seconds (frames / fps), exact.
    pub output_seconds: Decimal,
    pub advanced: bool,
    pub addons: Vec<String>,
}

/// One line of a quote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineItem {
    pub name: String,
    pub detail: String,
    /// Running amount after this line, unrounded.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub amount: Decimal,
}

/// The operator's expected cost of a clip.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CostBreakdown {
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub compute: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub encode: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub storage: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub egress: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub total: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub gpu_seconds: Decimal,
}

/// A price tag with its breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Quote {
    pub currency: String,
    /// The price, rounded half-up to cents.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub output_seconds: Decimal,
    pub resolution_bucket: String,
    pub line_items: Vec<LineItem>,
    pub cost: CostBreakdown,
    /// Price minus expected cost.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub margin: Decimal,
}

/// Why a quote could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuoteError {
    #[error("fps {0} is not in the price book (offered: {1})")]
    UnknownFps(u32, String),
    #[error("feature `{0}` has no price in the price book (priced: {1})")]
    UnknownAddon(String, String),
}

/// A quote as admitted, stored with its job: what the job is billed whatever
/// book a later worker runs with. A whole delivery is billed `price`, the
/// quoted amount itself; a partial one (a cancel part-way) is billed the same
/// rates for the frames delivered ([`AdmittedQuote::price_of`]). A new price
/// book applies to jobs admitted after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdmittedQuote {
    pub currency: String,
    /// The quoted price of every frame ordered, rounded half-up to cents: what
    /// was reserved against the tenant's caps and what a whole delivery bills.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub price: Decimal,
    /// Price per output second, unrounded: `B x R x F x M` plus add-ons.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub rate_per_output_second: Decimal,
    /// Frames ordered, at `fps`.
    pub frames: u32,
    pub fps: u32,
    pub resolution_bucket: String,
    /// [`PriceBook::fingerprint`] of the book the quote was made with.
    pub book: String,
    /// The quote's lines (each factor), as quoted.
    pub line_items: Vec<LineItem>,
}

impl AdmittedQuote {
    /// Freezes `quote`, made from `book` for `req` (`frames` frames).
    pub fn new(book: &PriceBook, req: &QuoteRequest, quote: &Quote, frames: u32) -> Result<Self, QuoteError> {
        Ok(Self {
            currency: quote.currency.clone(),
            price: quote.price,
            rate_per_output_second: rate_per_output_second(book, req)?,
            frames,
            fps: req.fps,
            resolution_bucket: quote.resolution_bucket.clone(),
            book: book.fingerprint(),
            line_items: quote.line_items.clone(),
        })
    }

    /// The price of `delivered` frames: the quoted price when every frame
    /// ordered was delivered, else `rate x delivered / fps` rounded half-up to
    /// cents (never more than the quote), and nothing for no frame.
    pub fn price_of(&self, delivered: u32) -> Decimal {
        if delivered >= self.frames {
            return self.price;
        }
        if delivered == 0 || self.fps == 0 {
            return Decimal::ZERO;
        }
        let part = round_cents(self.rate_per_output_second * Decimal::from(delivered) / Decimal::from(self.fps));
        part.min(self.price)
    }
}

/// `B x R x F x M` plus add-ons: the price of one output second, unrounded.
pub fn rate_per_output_second(book: &PriceBook, req: &QuoteRequest) -> Result<Decimal, QuoteError> {
    let q = quote(book, &QuoteRequest { output_seconds: Decimal::ONE, ..req.clone() })?;
    Ok(q.line_items.last().map(|l| l.amount).unwrap_or_default())
}

/// Rounds money half-up (away from zero) to cents.
pub fn round_cents(v: Decimal) -> Decimal {
    v.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Prices a clip.
pub fn quote(book: &PriceBook, req: &QuoteRequest) -> Result<Quote, QuoteError> {
    let p = &book.price;
    let bucket = book.resolution_bucket(req.width, req.height).to_string();
    let r = p.resolution[&bucket];
    let f = *p.fps.get(&req.fps.to_string()).ok_or_else(|| {
        let offered: Vec<String> = book.frame_rates().iter().map(u32::to_string).collect();
        QuoteError::UnknownFps(req.fps, offered.join(", "))
    })?;
    let variant = if req.advanced { "advanced" } else { "general" };
    let m = p.variant[variant];
    let t = req.output_seconds;
    let mut items = Vec::new();
    let mut amount = p.base_per_output_second * t;
    items.push(LineItem { name: "base".into(), detail: format!("B {} x t {t} s", p.base_per_output_second), amount });
    for (name, detail, factor) in [
        ("resolution", format!("R {r} ({bucket}, {}x{})", req.width, req.height), r),
        ("frame_rate", format!("F {f} ({} fps)", req.fps), f),
        ("variant", format!("M {m} ({variant})"), m),
    ] {
        amount *= factor;
        items.push(LineItem { name: name.into(), detail, amount });
    }
    for addon in &req.addons {
        let per_s = *p.addons.get(addon).ok_or_else(|| {
            QuoteError::UnknownAddon(addon.clone(), p.addons.keys().cloned().collect::<Vec<_>>().join(", "))
        })?;
        amount += per_s * t;
        items.push(LineItem { name: format!("addon:{addon}"), detail: format!("{per_s} x t {t} s"), amount });
    }
    let price = round_cents(amount);
    let cost = expected_cost(book, req, &bucket);
    Ok(Quote {
        currency: book.currency.clone(),
        price,
        output_seconds: t,
        resolution_bucket: bucket,
        line_items: items,
        margin: (price - cost.total).normalize(),
        cost,
    })
}

fn expected_cost(book: &PriceBook, req: &QuoteRequest, bucket: &str) -> CostBreakdown {
    let c = &book.cost;
    let e = &c.estimate;
    let t = req.output_seconds;
    let pixels = Decimal::from(u64::from(req.width) * u64::from(req.height));
    let bucket_pixels = Decimal::from(named_pixels(bucket).unwrap_or(1));
    let mut gpu_seconds = t * e.gpu_seconds_per_output_second[bucket] * pixels / bucket_pixels;
    if req.advanced {
        gpu_seconds *= e.advanced_gpu_factor;
    }
    let micro = |v: Decimal| v.round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero).normalize();
    let compute = micro(gpu_seconds * c.compute_per_gpu_second);
    let encode = micro(t * e.encode_seconds_per_output_second * c.encode_per_gpu_second);
    let gb = Decimal::from(e.bytes_per_output_second) * t / Decimal::from(1_000_000_000u64);
    let retained_s = Decimal::from(u64::from(e.retention_days) * 86_400);
    let storage = micro(gb * retained_s * c.storage_per_gb_second);
    let egress = micro(gb * e.downloads_per_clip * c.egress_per_gb);
    CostBreakdown {
        compute,
        encode,
        storage,
        egress,
        total: (compute + encode + storage + egress).normalize(),
        gpu_seconds: gpu_seconds.round_dp(6).normalize(),
    }
}

/// Money as integer micro-units (exact for anything rounded to 6 places or fewer).
pub fn to_micros(v: Decimal) -> i64 {
    let scaled = (v * Decimal::from(1_000_000)).round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    i64::try_from(scaled.mantissa() / 10i128.pow(scaled.scale())).unwrap_or(i64::MAX)
}

/// Integer micro-units back to money.
pub fn from_micros(micros: i64) -> Decimal {
    Decimal::new(micros, 6).normalize()
}
