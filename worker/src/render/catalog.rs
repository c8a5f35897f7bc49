//! Template catalog: the scene templates a job can name, their versions, tags and
//! typed parameters.
//!
//! A template is one WGSL file under `shaders/templates/` that defines
//! `scene_color(pixel, u) -> vec3<f32>`; [`Template::shader_source`] composes it
//! with the shared WGSL (structs, SDF helpers, ray marcher, entry point) into the
//! module that the render pass compiles. Parameters are declared here with their
//! kind, range and default; [`ParamBlock`] packs resolved values into the slots the
//! shader reads (`u.colors[i]`, `u.scalars[i/4][i%4]`), in declaration order.

use std::fmt;

use serde::Serialize;

/// Largest number of colour and scalar parameters a template may declare
/// (the size of the uniform block the shaders read).
pub const MAX_COLOR_PARAMS: usize = 4;
pub const MAX_SCALAR_PARAMS: usize = 8;

/// The kind, range and default of one template parameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParamKind {
    /// An sRGB colour written `"#rrggbb"`.
    Color { default: [u8; 3] },
    /// A whole number in `min..=max`.
    Int { min: i64, max: i64, default: i64 },
    /// A finite number in `min..=max`.
    Float { min: f64, max: f64, default: f64 },
}

/// One declared parameter of a template.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ParamSpec {
    pub name: &'static str,
    #[serde(flatten)]
    pub kind: ParamKind,
    pub doc: &'static str,
}

/// One scene template at one version.
#[derive(Debug, Serialize)]
pub struct Template {
    pub name: &'static str,
    pub version: u32,
    pub tags: &'static [&'static str],
    pub description: &'static str,
    pub params: &'static [ParamSpec],
    #[serde(skip)]
    pub wgsl: &'static str,
    #[serde(skip)]
    pub file: &'static str,
}

impl Template {
    /// `name@version`, the form stored with archived clips.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The complete WGSL module of this template's render pass.
    pub fn shader_source(&self) -> String {
        crate::render::shaders::compose(&[
            crate::render::shaders::COMMON,
            crate::render::shaders::SDF,
            crate::render::shaders::RAYMARCH,
            self.wgsl,
            crate::render::shaders::TEMPLATE_ENTRY,
        ])
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// A resolved parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    Color([u8; 3]),
    Int(i64),
    Float(f64),
}

/// Resolved parameter values packed into the shader's slots.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ParamBlock {
    /// Linear-light RGB (the shader lights in linear space), alpha unused.
    pub colors: [[f32; 4]; MAX_COLOR_PARAMS],
    pub scalars: [f32; MAX_SCALAR_PARAMS],
}

impl ParamBlock {
    /// Packs `values` (one per declared parameter, in declaration order).
    pub fn pack(template: &Template, values: &[ParamValue]) -> Self {
        let mut block = ParamBlock::default();
        let (mut ci, mut si) = (0, 0);
        for (spec, value) in template.params.iter().zip(values) {
            match (spec.kind, value) {
                (ParamKind::Color { .. }, ParamValue::Color(rgb)) => {
                    block.colors[ci] = [srgb_to_linear(rgb[0]), srgb_to_linear(rgb[1]), srgb_to_linear(rgb[2]), 1.0];
                    ci += 1;
                }
                (_, ParamValue::Int(v)) => {
                    block.scalars[si] = *v as f32;
                    si += 1;
                }
                (_, ParamValue::Float(v)) => {
                    block.scalars[si] = *v as f32;
                    si += 1;
                }
                (_, ParamValue::Color(_)) => {}
            }
        }
        block
    }
}

fn srgb_to_linear(c: u8) -> f32 {
    let c = f32::from(c) / 255.0;
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// Parses `"#rrggbb"` (or `"rrggbb"`).
pub fn parse_color(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#').unwrap_or(s);
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

/// Formats a colour as `"#rrggbb"`.
pub fn format_color(rgb: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2])
}

const fn color(name: &'static str, default: [u8; 3], doc: &'static str) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Color { default }, doc }
}
const fn int(name: &'static str, min: i64, max: i64, default: i64, doc: &'static str) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Int { min, max, default }, doc }
}
const fn float(name: &'static str, min: f64, max: f64, default: f64, doc: &'static str) -> ParamSpec {
    ParamSpec { name, kind: ParamKind::Float { min, max, default }, doc }
}

/// Every template the worker can render, newest version of each name last.
pub static TEMPLATES: &[Template] = &[
    Template {
        name: "orbit",
        version: 2,
        tags: &["brand", "abstract", "loop"],
        description:
            "Glossy brand sphere with satellites on tilted orbits over a studio floor; the camera circles slowly.",
        params: &[
            color("primary", [0xff, 0x6a, 0x00], "colour of the central sphere"),
            color("secondary", [0x10, 0x18, 0x28], "backdrop and floor colour"),
            color("accent", [0x4f, 0xd1, 0xff], "colour of the orbiting satellites"),
            int("objects", 1, 12, 5, "number of orbiting satellites"),
            float("speed", 0.0, 4.0, 1.0, "orbit speed multiplier"),
            float("camera_height", 0.2, 3.0, 1.1, "camera height above the floor, in scene units"),
        ],
        wgsl: include_str!("../../../shaders/templates/orbit.wgsl"),
        file: "templates/orbit.wgsl",
    },
    Template {
        name: "pedestal",
        version: 1,
        tags: &["product", "logo", "studio"],
        description: "A bevelled logo plate spins above a pedestal ringed by a halo, lit by key and rim lights.",
        params: &[
            color("primary", [0xe6, 0x39, 0x46], "logo plate colour"),
            color("secondary", [0xf1, 0xfa, 0xee], "pedestal colour"),
            color("accent", [0x45, 0x7b, 0x9d], "rim light and halo colour"),
            float("spin", 0.0, 4.0, 1.0, "plate spin speed, turns per 8 seconds"),
            float("bevel", 0.0, 0.25, 0.08, "bevel radius of the plate"),
        ],
        wgsl: include_str!("../../../shaders/templates/pedestal.wgsl"),
        file: "templates/pedestal.wgsl",
    },
    Template {
        name: "dunes",
        version: 1,
        tags: &["landscape", "flyover", "outdoor"],
        description: "A low flyover of wind-carved dunes towards a setting sun, with haze and a graded sky.",
        params: &[
            color("sky", [0x2b, 0x4c, 0x7e], "zenith colour of the sky"),
            color("ground", [0xd9, 0x9a, 0x5b], "sand colour"),
            color("sun", [0xff, 0xc8, 0x6b], "sun and haze colour"),
            float("speed", 0.0, 4.0, 1.0, "flyover speed multiplier"),
            float("roughness", 0.0, 1.0, 0.5, "how ridged the dunes are"),
        ],
        wgsl: include_str!("../../../shaders/templates/dunes.wgsl"),
        file: "templates/dunes.wgsl",
    },
];

/// Errors from looking a template up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("unknown template `{name}` (available: {available})")]
    UnknownTemplate { name: String, available: String },
    #[error("template `{name}` has no version {version} (available: {available})")]
    UnknownVersion { name: String, version: String, available: String },
}

/// Looks up `name` or `name@version`; without a version the newest is taken.
pub fn lookup(reference: &str) -> Result<&'static Template, CatalogError> {
    let (name, version) = match reference.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (reference, None),
    };
    let versions: Vec<&Template> = TEMPLATES.iter().filter(|t| t.name == name).collect();
    if versions.is_empty() {
        let available = TEMPLATES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ");
        return Err(CatalogError::UnknownTemplate { name: name.to_string(), available });
    }
    let Some(version) = version else {
        return Ok(versions.iter().max_by_key(|t| t.version).copied().unwrap_or(versions[0]));
    };
    // Exactly the digits `Template::id` writes: no sign, no leading zero.
    let canonical = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) && !version.starts_with('0');
    let found =
        canonical.then(|| version.parse::<u32>().ok()).flatten().and_then(|v| versions.iter().find(|t| t.version == v));
    found.copied().ok_or_else(|| CatalogError::UnknownVersion {
        name: name.to_string(),
        version: version.to_string(),
        available: versions.iter().map(|t| t.id()).collect::<Vec<_>>().join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_pins_and_defaults_versions() {
        assert_eq!(lookup("orbit").unwrap().version, 2);
        assert_eq!(lookup("orbit@2").unwrap().name, "orbit");
        assert!(matches!(lookup("orbit@9"), Err(CatalogError::UnknownVersion { .. })));
        assert!(matches!(lookup("orbit@x"), Err(CatalogError::UnknownVersion { .. })));
        assert!(matches!(lookup("nope"), Err(CatalogError::UnknownTemplate { .. })));
    }

    #[test]
    fn templates_fit_the_uniform_block() {
        for t in TEMPLATES {
            let colors = t.params.iter().filter(|p| matches!(p.kind, ParamKind::Color { .. })).count();
            assert!(colors <= MAX_COLOR_PARAMS, "{t}");
            assert!(t.params.len() - colors <= MAX_SCALAR_PARAMS, "{t}");
        }
    }

    #[test]
    fn colors_round_trip() {
        assert_eq!(parse_color("#ff6a00"), Some([0xff, 0x6a, 0x00]));
        assert_eq!(parse_color("FF6A00"), Some([0xff, 0x6a, 0x00]));
        assert_eq!(parse_color("#ff6a0"), None);
        assert_eq!(parse_color("#gg6a00"), None);
        assert_eq!(format_color([1, 2, 255]), "#0102ff");
    }
}
