//! Licence tiers: what each tier may render (its feature map) and how much per
//! month (its caps), and the admission checks built on them.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::lane::Lane;
use crate::price::{named_pixels, PriceBook, QuoteRequest};

/// Monthly caps of a tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    /// Output seconds a tenant may render per calendar month (UTC).
    #[serde(deserialize_with = "crate::price::exact::decimal")]
    pub monthly_output_seconds: Decimal,
    /// Optional spend cap per month: a warning at 80 %, refusal past 100 %.
    #[serde(default, deserialize_with = "crate::price::exact::option")]
    pub monthly_budget: Option<Decimal>,
}

/// One tier's feature map and caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    #[serde(default)]
    pub description: String,
    pub max_resolution: String,
    pub fps: Vec<u32>,
    pub variants: Vec<String>,
    pub lanes: Vec<String>,
    #[serde(deserialize_with = "crate::price::exact::decimal")]
    pub max_clip_seconds: Decimal,
    #[serde(default)]
    pub features: Vec<String>,
    /// Seconds of queue age a job of this tier is worth in the queue's score:
    /// within a lane, a job of a tier weighted 30 goes ahead of an otherwise
    /// equal job submitted up to 30 s earlier by a tier weighted 0.
    #[serde(default)]
    pub queue_weight_s: u32,
    pub caps: Caps,
}

/// Share of the budget at which admission starts warning.
pub const BUDGET_WARNING_PERCENT: u32 = 80;

/// Why a job was refused; every message names the limit, the tier and the usage.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "limit", rename_all = "snake_case")]
pub enum AdmissionError {
    #[error("unknown tenant `{tenant}`")]
    UnknownTenant { tenant: String },
    #[error("tier `{tier}` renders up to {max}; the job asks for {width}x{height}")]
    Resolution { tier: String, max: String, width: u32, height: u32 },
    #[error("tier `{tier}` offers {allowed} fps; the job asks for {fps}")]
    FrameRate { tier: String, allowed: String, fps: u32 },
    #[error("tier `{tier}` offers the {allowed} variant(s); the job asks for {variant}")]
    Variant { tier: String, allowed: String, variant: String },
    #[error("tier `{tier}` may use the {allowed} lane(s); the job asks for {lane}")]
    Lane { tier: String, allowed: String, lane: String },
    #[error("tier `{tier}` allows clips up to {max} s; the job is {seconds} s")]
    ClipLength {
        tier: String,
        #[schema(value_type = String)]
        max: Decimal,
        #[schema(value_type = String)]
        seconds: Decimal,
    },
    #[error("tier `{tier}` does not include feature `{feature}` (included: {included})")]
    Feature { tier: String, feature: String, included: String },
    #[error("monthly output cap of tier `{tier}` is {cap} s: {used} s used and {reserved} s reserved this month, so {requested} s more would exceed it")]
    OutputCap {
        tier: String,
        #[schema(value_type = String)]
        cap: Decimal,
        #[schema(value_type = String)]
        used: Decimal,
        #[schema(value_type = String)]
        reserved: Decimal,
        #[schema(value_type = String)]
        requested: Decimal,
    },
    #[error("monthly budget of tier `{tier}` is {budget}: {spent} spent and {reserved} reserved this month, so {requested} more would exceed it")]
    Budget {
        tier: String,
        #[schema(value_type = String)]
        budget: Decimal,
        #[schema(value_type = String)]
        spent: Decimal,
        #[schema(value_type = String)]
        reserved: Decimal,
        #[schema(value_type = String)]
        requested: Decimal,
    },
}

/// A tenant's use of the current month, for cap checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonthUsage {
    pub used_seconds: Decimal,
    pub reserved_seconds: Decimal,
    pub spent: Decimal,
    pub reserved_spend: Decimal,
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl Tier {
    pub(crate) fn validate(&self, name: &str, book: &PriceBook) -> Result<(), (String, String)> {
        let key = |k: &str| format!("tiers.{name}.{k}");
        if named_pixels(&self.max_resolution).is_none() {
            return Err((key("max_resolution"), format!("unknown resolution `{}`", self.max_resolution)));
        }
        let offered = book.frame_rates();
        if let Some(f) = self.fps.iter().find(|f| !offered.contains(f)) {
            return Err((key("fps"), format!("{f} fps has no price in price.fps")));
        }
        if let Some(v) = self.variants.iter().find(|v| !book.price.variant.contains_key(*v)) {
            return Err((key("variants"), format!("unknown variant `{v}`")));
        }
        if let Some(l) = self.lanes.iter().find(|l| l.parse::<Lane>().is_err()) {
            return Err((key("lanes"), format!("unknown lane `{l}` (urgent, standard, bulk)")));
        }
        if let Some(f) = self.features.iter().find(|f| !book.price.addons.contains_key(*f)) {
            return Err((key("features"), format!("feature `{f}` has no price in price.addons")));
        }
        if self.max_clip_seconds <= Decimal::ZERO {
            return Err((key("max_clip_seconds"), "must be greater than zero".into()));
        }
        if self.caps.monthly_output_seconds < Decimal::ZERO {
            return Err((key("caps.monthly_output_seconds"), "must not be negative".into()));
        }
        if self.caps.monthly_budget.is_some_and(|b| b < Decimal::ZERO) {
            return Err((key("caps.monthly_budget"), "must not be negative".into()));
        }
        Ok(())
    }

    /// Checks the feature map: resolution, frame rate, variant, lane, length, add-ons.
    pub fn check_features(&self, tier: &str, req: &QuoteRequest, lane: Lane) -> Result<(), AdmissionError> {
        let tier_s = tier.to_string();
        let pixels = u64::from(req.width) * u64::from(req.height);
        let max_pixels = named_pixels(&self.max_resolution).unwrap_or(0);
        if pixels > max_pixels {
            return Err(AdmissionError::Resolution {
                tier: tier_s,
                max: self.max_resolution.clone(),
                width: req.width,
                height: req.height,
            });
        }
        if !self.fps.contains(&req.fps) {
            return Err(AdmissionError::FrameRate { tier: tier_s, allowed: join(&self.fps), fps: req.fps });
        }
        let variant = if req.advanced { "advanced" } else { "general" };
        if !self.variants.iter().any(|v| v == variant) {
            return Err(AdmissionError::Variant {
                tier: tier_s,
                allowed: join(&self.variants),
                variant: variant.into(),
            });
        }
        if !self.lanes.iter().any(|l| l == lane.as_str()) {
            return Err(AdmissionError::Lane { tier: tier_s, allowed: join(&self.lanes), lane: lane.as_str().into() });
        }
        if req.output_seconds > self.max_clip_seconds {
            return Err(AdmissionError::ClipLength {
                tier: tier_s,
                max: self.max_clip_seconds.normalize(),
                seconds: req.output_seconds.normalize(),
            });
        }
        if let Some(f) = req.addons.iter().find(|f| !self.features.contains(f)) {
            return Err(AdmissionError::Feature { tier: tier_s, feature: f.clone(), included: join(&self.features) });
        }
        Ok(())
    }

    /// Checks the monthly caps for a job of `seconds` and `price`; returns warnings
    /// (budget past 80 %) when admitted.
    pub fn check_caps(
        &self,
        tier: &str,
        usage: &MonthUsage,
        seconds: Decimal,
        price: Decimal,
    ) -> Result<Vec<String>, AdmissionError> {
        let cap = self.caps.monthly_output_seconds;
        if usage.used_seconds + usage.reserved_seconds + seconds > cap {
            return Err(AdmissionError::OutputCap {
                tier: tier.into(),
                cap: cap.normalize(),
                used: usage.used_seconds.normalize(),
                reserved: usage.reserved_seconds.normalize(),
                requested: seconds.normalize(),
            });
        }
        let mut warnings = Vec::new();
        if let Some(budget) = self.caps.monthly_budget {
            let after = usage.spent + usage.reserved_spend + price;
            if after > budget {
                return Err(AdmissionError::Budget {
                    tier: tier.into(),
                    budget,
                    spent: usage.spent,
                    reserved: usage.reserved_spend,
                    requested: price,
                });
            }
            if after * Decimal::from(100) >= budget * Decimal::from(BUDGET_WARNING_PERCENT) {
                warnings.push(format!(
                    "tier `{tier}`: this job brings the month's spend to {after} of the {budget} budget (80 % warning)"
                ));
            }
        }
        Ok(warnings)
    }
}
