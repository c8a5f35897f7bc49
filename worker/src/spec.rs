//! Job specs: the clip a job asks for, parsed from JSON or TOML and validated
//! before any GPU work.
//!
//! [`parse`] turns text into a [`RawSpec`] (serde, unknown fields rejected, type
//! errors reported with the field's path); [`RawSpec::validate`] checks every
//! field against the catalog and [`SpecLimits`] and returns a [`JobSpec`], or
//! every problem found, one message per field.
//!
//! A spec may ask for part of its clip, `frame_range` (a preview): the clip's
//! timeline is still `duration_s` × `fps`, but the job renders, delivers and
//! bills only frames `first .. first + count` of it, each the same picture as
//! in the whole clip.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::render::catalog::{self, ParamBlock, ParamKind, ParamValue, Template};
use crate::render::frame::RenderPlan;
use crate::render::tiler::{Tiler, MAX_TILES_PER_AXIS};

pub use tessera_metering::Lane;

/// Bounds a spec is validated against: the frame rates and billable features
/// come from the operator's price book.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecLimits {
    pub allowed_fps: Vec<u32>,
    /// One frame at the lowest offered rate, so every clip has a frame.
    pub min_duration_s: f64,
    pub max_duration_s: f64,
    pub features: Vec<String>,
}

impl SpecLimits {
    pub fn from_price_book(book: &tessera_metering::PriceBook) -> Self {
        let allowed_fps = book.frame_rates();
        let min_fps = allowed_fps.iter().copied().min().unwrap_or(1);
        Self {
            allowed_fps,
            min_duration_s: 1.0 / f64::from(min_fps),
            max_duration_s: 3600.0,
            features: book.price.addons.keys().cloned().collect(),
        }
    }
}

impl Default for SpecLimits {
    /// The limits of the built-in price book.
    fn default() -> Self {
        Self::from_price_book(&tessera_metering::PriceBook::default_book())
    }
}

pub const MIN_SIDE: u32 = 16;
pub const MAX_WIDTH: u32 = 7680;
pub const MAX_HEIGHT: u32 = 4320;

/// A resolution as written in a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawResolution {
    Named(String),
    Size(RawSize),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSize {
    #[serde(deserialize_with = "whole::i64")]
    pub width: i64,
    #[serde(deserialize_with = "whole::i64")]
    pub height: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    General,
    Advanced,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::General => "general",
            Variant::Advanced => "advanced",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTiles {
    #[serde(default = "one", deserialize_with = "whole::i64")]
    pub cols: i64,
    #[serde(default = "one", deserialize_with = "whole::i64")]
    pub rows: i64,
    #[serde(default = "default_overlap", deserialize_with = "whole::i64")]
    pub overlap_px: i64,
}

impl Default for RawTiles {
    fn default() -> Self {
        Self { cols: 1, rows: 1, overlap_px: default_overlap() }
    }
}

/// Part of a clip, as written: frames `first .. first + count` of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrameRange {
    #[serde(default, deserialize_with = "whole::i64")]
    pub first: i64,
    #[serde(deserialize_with = "whole::i64")]
    pub count: i64,
}

fn one() -> i64 {
    1
}
fn default_overlap() -> i64 {
    32
}
fn default_resolution() -> RawResolution {
    RawResolution::Named("1080p".into())
}
fn default_fps() -> i64 {
    30
}
fn default_duration() -> f64 {
    4.0
}
fn default_quality() -> i64 {
    90
}

/// A spec as written, before validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub template: String,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    #[serde(default = "default_resolution")]
    pub resolution: RawResolution,
    #[serde(default = "default_fps")]
    #[serde(deserialize_with = "whole::i64")]
    pub fps: i64,
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    #[serde(default = "variant_general")]
    pub variant: Variant,
    #[serde(default = "lane_standard")]
    pub lane: Lane,
    #[serde(default)]
    pub tiles: RawTiles,
    #[serde(default = "default_quality")]
    #[serde(deserialize_with = "whole::i64")]
    pub quality: i64,
    #[serde(default, deserialize_with = "whole::u64")]
    pub seed: u64,
    /// Independently billable features the job uses (price book `price.addons`).
    #[serde(default)]
    pub features: Vec<String>,
    /// Only these frames of the clip are rendered, delivered and billed. Not
    /// written out when absent, so a whole clip's spec (and its body hash, its
    /// idempotency key's job id) is what it was before previews existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_range: Option<RawFrameRange>,
}

fn variant_general() -> Variant {
    Variant::General
}
fn lane_standard() -> Lane {
    Lane::Standard
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("job spec is not valid {format}: {message}")]
    Syntax { format: &'static str, message: String },
    #[error("invalid job spec: {0}")]
    Field(FieldError),
    #[error("invalid job spec:{}", .0.iter().map(|e| format!("\n  - {e}")).collect::<String>())]
    Invalid(Vec<FieldError>),
}

impl SpecError {
    /// Every field problem, for API bodies.
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            SpecError::Syntax { message, .. } => vec![FieldError { field: String::new(), message: message.clone() }],
            SpecError::Field(e) => vec![e.clone()],
            SpecError::Invalid(v) => v.clone(),
        }
    }
}

/// Text formats a spec may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Json,
    Toml,
}

/// Parses spec text. Type errors name the field by its path (`tiles.cols`).
pub fn parse(text: &str, format: SpecFormat) -> Result<RawSpec, SpecError> {
    match format {
        SpecFormat::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let raw: RawSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| path_error("JSON", e))?;
            de.end().map_err(|e| SpecError::Syntax { format: "JSON", message: e.to_string() })?;
            Ok(raw)
        }
        SpecFormat::Toml => {
            let de = toml::Deserializer::new(text);
            serde_path_to_error::deserialize(de).map_err(|e| path_error("TOML", e))
        }
    }
}

/// Whole-number fields: JSON has one number type, so `32.0` is the integer
/// 32 (as JSON Schema's `integer` says) and a client that writes whole numbers
/// with a fraction is not refused. The value keeps its place in the spec, so
/// duplicate keys are still refused and stored specs hash as before.
mod whole {
    use serde::de::{self, Deserializer, Visitor};

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = i128;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
            Ok(v.into())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
            Ok(v.into())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
            // Exactly representable and in range of both targets' union.
            if v.fract() == 0.0 && v.abs() < 2f64.powi(64) {
                Ok(v as i128)
            } else {
                Err(E::invalid_type(de::Unexpected::Float(v), &self))
            }
        }
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let v = d.deserialize_any(Whole)?;
        i64::try_from(v).map_err(|_| de::Error::custom(format!("{v} is out of range for a 64-bit integer")))
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = d.deserialize_any(Whole)?;
        u64::try_from(v).map_err(|_| de::Error::custom(format!("{v} is out of range 0..=18446744073709551615")))
    }
}

fn path_error<E: fmt::Display>(format: &'static str, e: serde_path_to_error::Error<E>) -> SpecError {
    let field = e.path().to_string();
    let message = e.inner().to_string();
    let message = message.lines().next().unwrap_or("").to_string();
    if matches!(field.as_str(), "." | "?" | "") {
        SpecError::Syntax { format, message }
    } else if message.contains("did not match any variant of untagged enum RawResolution") {
        SpecError::Field(FieldError {
            field,
            message: "expected \"720p\", \"1080p\", \"4k\" or {\"width\": W, \"height\": H}".into(),
        })
    } else {
        SpecError::Field(FieldError { field, message })
    }
}

/// A validated job spec: everything needed to render, price and schedule it.
#[derive(Debug, Clone, Serialize)]
pub struct JobSpec {
    #[serde(serialize_with = "template_id")]
    pub template: &'static Template,
    pub params: BTreeMap<String, ParamValue>,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub duration_s: f64,
    /// Frames delivered and billed: the whole clip, or a frame range's count.
    pub frames: u32,
    /// The clip frame the output starts at: output frame i is clip frame
    /// `first_frame + i` (0 for a whole clip).
    pub first_frame: u32,
    /// Frames of the whole clip, `duration_s` × `fps` rounded.
    pub clip_frames: u32,
    pub variant: Variant,
    pub lane: Lane,
    pub tiler: Tiler,
    pub quality: u8,
    pub seed: u64,
    pub features: Vec<String>,
}

fn template_id<S: serde::Serializer>(t: &&'static Template, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.id())
}

impl JobSpec {
    /// Whether the job delivers only part of its clip.
    pub fn is_partial(&self) -> bool {
        self.frames < self.clip_frames
    }

    /// How long the delivered output lasts, for the clip-length quality gate:
    /// the spec's duration for a whole clip, frames / fps for part of one.
    pub fn delivered_duration_s(&self) -> f64 {
        if self.is_partial() {
            f64::from(self.frames) / f64::from(self.fps)
        } else {
            self.duration_s
        }
    }

    /// Seconds of output, exactly frames / fps.
    pub fn output_seconds(&self) -> rust_decimal::Decimal {
        rust_decimal::Decimal::from(self.frames) / rust_decimal::Decimal::from(self.fps)
    }

    /// What pricing and admission need.
    pub fn quote_request(&self) -> tessera_metering::QuoteRequest {
        tessera_metering::QuoteRequest {
            width: self.width,
            height: self.height,
            fps: self.fps,
            output_seconds: self.output_seconds(),
            advanced: self.variant == Variant::Advanced,
            addons: self.features.clone(),
        }
    }

    /// What the GPU passes need.
    pub fn render_plan(&self) -> RenderPlan {
        let values: Vec<ParamValue> = self.template.params.iter().map(|p| self.params[p.name]).collect();
        RenderPlan {
            template: self.template,
            params: ParamBlock::pack(self.template, &values),
            tiler: self.tiler.clone(),
            advanced: self.variant == Variant::Advanced,
            seed: self.seed,
            fps: self.fps,
            first_frame: self.first_frame,
            quality: self.quality,
        }
    }
}

impl RawSpec {
    /// Checks every field; all problems are reported together.
    pub fn validate(&self, limits: &SpecLimits) -> Result<JobSpec, SpecError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| errors.push(FieldError { field: field.into(), message });

        let template = catalog::lookup(&self.template).map_err(|e| err("template", e.to_string())).ok();
        let params = template.and_then(|t| validate_params(t, &self.params, &mut err));
        let size = validate_resolution(&self.resolution, &mut err);
        let fps = validate_fps(self.fps, limits, &mut err);
        let duration = validate_duration(self.duration_s, limits, &mut err);
        let quality = match u8::try_from(self.quality) {
            Ok(q) if (1..=100).contains(&q) => Some(q),
            _ => {
                err("quality", format!("must be a whole number from 1 to 100, got {}", self.quality));
                None
            }
        };
        let tiler = size.and_then(|(w, h)| validate_tiles(&self.tiles, w, h, &mut err));
        for (i, f) in self.features.iter().enumerate() {
            if !limits.features.contains(f) {
                err(
                    &format!("features[{i}]"),
                    format!("unknown feature `{f}` (offered: {})", limits.features.join(", ")),
                );
            }
            if self.features[..i].contains(f) {
                err(&format!("features[{i}]"), format!("feature `{f}` is listed twice"));
            }
        }
        let clip_frames = match (fps, duration) {
            (Some(f), Some(d)) => frame_count(f, d, &mut err),
            _ => None,
        };
        let clip = clip_frames.zip(fps).zip(duration).map(|((n, f), d)| ClipLength { frames: n, fps: f, seconds: d });
        let range = match &self.frame_range {
            None => clip.map(|c| (0, c.frames)),
            Some(r) => validate_frame_range(r, clip, &mut err),
        };
        match (template, params, size, fps, duration, quality, tiler, clip_frames, range) {
            (
                Some(template),
                Some(params),
                Some((width, height)),
                Some(fps),
                Some(duration_s),
                Some(quality),
                Some(tiler),
                Some(clip_frames),
                Some((first_frame, frames)),
            ) if errors.is_empty() => Ok(JobSpec {
                template,
                params,
                width,
                height,
                fps,
                duration_s,
                frames,
                first_frame,
                clip_frames,
                variant: self.variant,
                lane: self.lane,
                tiler,
                quality,
                seed: self.seed,
                features: self.features.clone(),
            }),
            _ => Err(SpecError::Invalid(errors)),
        }
    }
}

fn validate_params(
    template: &Template,
    given: &BTreeMap<String, serde_json::Value>,
    err: &mut impl FnMut(&str, String),
) -> Option<BTreeMap<String, ParamValue>> {
    let mut ok = true;
    for name in given.keys() {
        if template.param(name).is_none() {
            let known: Vec<&str> = template.params.iter().map(|p| p.name).collect();
            err(&format!("params.{name}"), format!("unknown parameter for {template} (known: {})", known.join(", ")));
            ok = false;
        }
    }
    let mut values = BTreeMap::new();
    for spec in template.params {
        let field = format!("params.{}", spec.name);
        let value = match given.get(spec.name) {
            None => Ok(default_value(spec.kind)),
            Some(v) => param_value(spec.kind, v),
        };
        match value {
            Ok(v) => {
                values.insert(spec.name.to_string(), v);
            }
            Err(message) => {
                err(&field, message);
                ok = false;
            }
        }
    }
    ok.then_some(values)
}

fn default_value(kind: ParamKind) -> ParamValue {
    match kind {
        ParamKind::Color { default } => ParamValue::Color(default),
        ParamKind::Int { default, .. } => ParamValue::Int(default),
        ParamKind::Float { default, .. } => ParamValue::Float(default),
    }
}

fn param_value(kind: ParamKind, v: &serde_json::Value) -> Result<ParamValue, String> {
    match kind {
        ParamKind::Color { .. } => {
            let s = v.as_str().ok_or_else(|| format!("expected a colour string like \"#ff6a00\", got {v}"))?;
            catalog::parse_color(s)
                .map(ParamValue::Color)
                .ok_or_else(|| format!("`{s}` is not a colour; write six hex digits like \"#ff6a00\""))
        }
        ParamKind::Int { min, max, .. } => {
            // `9.0` is the whole number 9 in JSON; the spec keeps it as written.
            let whole = v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 2f64.powi(63)).map(|f| f as i64);
            let n =
                v.as_i64().or(whole).ok_or_else(|| format!("expected a whole number from {min} to {max}, got {v}"))?;
            if (min..=max).contains(&n) {
                Ok(ParamValue::Int(n))
            } else {
                Err(format!("{n} is out of range {min}..={max}"))
            }
        }
        ParamKind::Float { min, max, .. } => {
            let n = v
                .as_f64()
                .filter(|n| n.is_finite())
                .ok_or_else(|| format!("expected a number from {min} to {max}, got {v}"))?;
            if (min..=max).contains(&n) {
                Ok(ParamValue::Float(n))
            } else {
                Err(format!("{n} is out of range {min}..={max}"))
            }
        }
    }
}

fn validate_resolution(res: &RawResolution, err: &mut impl FnMut(&str, String)) -> Option<(u32, u32)> {
    match res {
        RawResolution::Named(name) => match name.to_ascii_lowercase().as_str() {
            "720p" => Some((1280, 720)),
            "1080p" => Some((1920, 1080)),
            "4k" | "2160p" => Some((3840, 2160)),
            _ => {
                err("resolution", format!("unknown resolution `{name}`; use \"720p\", \"1080p\", \"4k\" or {{\"width\": W, \"height\": H}}"));
                None
            }
        },
        RawResolution::Size(RawSize { width, height }) => {
            let mut ok = true;
            for (field, v, max) in [("resolution.width", *width, MAX_WIDTH), ("resolution.height", *height, MAX_HEIGHT)]
            {
                if v < i64::from(MIN_SIDE) || v > i64::from(max) {
                    err(field, format!("{v} is out of range {MIN_SIDE}..={max}"));
                    ok = false;
                } else if v % 2 != 0 {
                    err(field, format!("{v} is odd; 4:2:0 video needs even sizes"));
                    ok = false;
                }
            }
            ok.then_some((*width as u32, *height as u32))
        }
    }
}

fn validate_fps(fps: i64, limits: &SpecLimits, err: &mut impl FnMut(&str, String)) -> Option<u32> {
    match u32::try_from(fps) {
        Ok(f) if limits.allowed_fps.contains(&f) => Some(f),
        _ => {
            let allowed: Vec<String> = limits.allowed_fps.iter().map(|f| f.to_string()).collect();
            err("fps", format!("{fps} is not an offered frame rate (one of {})", allowed.join(", ")));
            None
        }
    }
}

fn validate_duration(d: f64, limits: &SpecLimits, err: &mut impl FnMut(&str, String)) -> Option<f64> {
    if !d.is_finite() {
        err("duration_s", format!("must be a finite number of seconds, got {d}"));
        None
    } else if d < limits.min_duration_s {
        err(
            "duration_s",
            format!("must be at least {} s (one frame at the lowest offered rate), got {d}", limits.min_duration_s),
        );
        None
    } else if d > limits.max_duration_s {
        err("duration_s", format!("{d} s is longer than the {} s limit", limits.max_duration_s));
        None
    } else {
        Some(d)
    }
}

fn frame_count(fps: u32, duration: f64, err: &mut impl FnMut(&str, String)) -> Option<u32> {
    let frames = (duration * f64::from(fps)).round();
    if frames < 1.0 {
        err("duration_s", format!("{duration} s at {fps} fps is less than one frame"));
        return None;
    }
    Some(frames as u32)
}

/// How long a clip is, for checking a frame range against it.
#[derive(Debug, Clone, Copy)]
struct ClipLength {
    frames: u32,
    fps: u32,
    seconds: f64,
}

/// `(first, count)` of a frame range: its own bounds first, then (when the
/// clip's length is known) that it ends within the clip.
fn validate_frame_range(
    r: &RawFrameRange,
    clip: Option<ClipLength>,
    err: &mut impl FnMut(&str, String),
) -> Option<(u32, u32)> {
    let first = u64::try_from(r.first).ok();
    if first.is_none() {
        err("frame_range.first", format!("must be a frame index, 0 or more, got {}", r.first));
    }
    let count = u64::try_from(r.count).ok().filter(|c| *c >= 1);
    if count.is_none() {
        err("frame_range.count", format!("must be at least 1 frame, got {}", r.count));
    }
    let (first, count, clip) = (first?, count?, clip?);
    let end = first.saturating_add(count);
    if end > u64::from(clip.frames) {
        let (last, length) =
            (clip.frames - 1, format!("{} frames: {} s at {} fps", clip.frames, clip.seconds, clip.fps));
        let message = if count == 1 {
            format!("frame {first} is past the clip's last frame {last} ({length})")
        } else {
            format!("frames {first}..{end} go past the clip's last frame {last} ({length}); first + count must be at most {}", clip.frames)
        };
        err("frame_range", message);
        return None;
    }
    // Both fit: first + count is at most the clip's frame count, a u32.
    Some((first as u32, count as u32))
}

fn validate_tiles(t: &RawTiles, width: u32, height: u32, err: &mut impl FnMut(&str, String)) -> Option<Tiler> {
    let max = i64::from(MAX_TILES_PER_AXIS);
    let mut ok = true;
    for (field, v) in [("tiles.cols", t.cols), ("tiles.rows", t.rows)] {
        if !(1..=max).contains(&v) {
            err(field, format!("{v} is out of range 1..={max}"));
            ok = false;
        }
    }
    if !(0..=1024).contains(&t.overlap_px) {
        err("tiles.overlap_px", format!("{} is out of range 0..=1024", t.overlap_px));
        ok = false;
    }
    if !ok {
        return None;
    }
    Tiler::new(width, height, t.cols as u32, t.rows as u32, t.overlap_px as u32)
        .map_err(|e| err("tiles", e.to_string()))
        .ok()
}
