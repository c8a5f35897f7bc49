//! The OpenAPI 3.1 document served at `/openapi.json`, generated from the code:
//! operations, parameters and responses from the handlers' `#[utoipa::path]`
//! (collected by the same router that serves them, so the two cannot
//! disagree), response bodies from the typed views, and the job spec's schema
//! from the template catalog and the operator's price book, so every
//! constraint the validation checks field by field is in the document: each
//! template's parameters with their ranges, offered frame rates and
//! features, tier names, sizes, tile counts. Two rules span fields and are
//! stated in words only (JSON Schema cannot compare fields): the tile plan
//! must fit the frame, and a `frame_range` must lie within the clip.

use std::borrow::Cow;

use serde_json::{json, Value};
use tessera_metering::{Lane, PriceBook};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::render::catalog::{ParamKind, Template, TEMPLATES};
use crate::render::tiler::{MAX_TILES_PER_AXIS, POST_RADIUS, TILE_ALIGN};
use crate::spec::{SpecLimits, MAX_HEIGHT, MAX_WIDTH, MIN_SIDE};

/// The document's fixed part; the router adds every operation it serves.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "tessera",
        description = "GPU render worker with metered billing: submit clip jobs, follow them, download clips, read usage.",
        license(name = "MIT OR Apache-2.0"),
    ),
    modifiers(&Security),
    tags(
        (name = "jobs", description = "Clip jobs of the calling tenant"),
        (name = "billing", description = "Quotes and metered usage"),
        (name = "admin", description = "Operator operations (admin key)"),
        (name = "ops", description = "Health, readiness and this document"),
    )
)]
pub struct ApiDoc;

#[derive(Debug)]
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what.to_string())).build(),
            )
        };
        components.add_security_scheme("tenant_key", bearer("A tenant's API key (`tsk_…`), from `POST /v1/tenants`"));
        components.add_security_scheme("admin_key", bearer("The operator's key, `TESSERA_ADMIN_KEY`"));
    }
}

/// A job spec in a request body: the schema is built from the catalog and
/// the price book at start-up ([`spec_schemas`]), under this name.
#[derive(Debug)]
pub struct SpecBody;

impl PartialSchema for SpecBody {
    fn schema() -> RefOr<Schema> {
        // Replaced by `document`; a placeholder keeps utoipa's component list whole.
        RefOr::T(Schema::Object(utoipa::openapi::ObjectBuilder::new().build()))
    }
}

impl ToSchema for SpecBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobSpec")
    }
}

/// A tenant to create, in a request body (tiers from the price book).
#[derive(Debug)]
pub struct NewTenantBody;

impl PartialSchema for NewTenantBody {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(utoipa::openapi::ObjectBuilder::new().build()))
    }
}

impl ToSchema for NewTenantBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("NewTenant")
    }
}

/// Characters a tenant name may hold: anything but control characters (Cc).
pub const NAME_CHAR: &str = r"[^\u0000-\u001f\u007f-\u009f]";
/// A character that is neither a control character nor white space.
pub const NAME_VISIBLE: &str = r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// The served document: the router's operations plus the schemas built from
/// the catalog and `book`.
pub fn document(doc: utoipa::openapi::OpenApi, book: &PriceBook) -> Value {
    let mut v = serde_json::to_value(&doc).unwrap_or_else(|_| json!({}));
    v["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    if let Some(paths) = v.get_mut("paths").and_then(Value::as_object_mut) {
        paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.values_mut()).for_each(fix_operation);
    }
    let schemas = &mut v["components"]["schemas"];
    for (name, schema) in spec_schemas(book) {
        schemas[name] = schema;
    }
    add_examples(&mut v, book);
    let schemas = &mut v["components"]["schemas"];
    let tiers: Vec<&String> = book.tiers.keys().collect();
    let name_pattern = format!("^{NAME_CHAR}*{NAME_VISIBLE}{NAME_CHAR}*$");
    schemas["NewTenant"] = json!({
        "type": "object", "additionalProperties": false, "required": ["name", "tier"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": name_pattern,
                     "description": "1 to 64 characters, no control characters, not only white space; unique"},
            "tier": {"type": "string", "enum": tiers, "description": "A tier of the price book"},
        },
    });
    v
}

/// Request examples (the examples phase of a contract test sends them): a
/// small clip any tier admits, a tenant, a job id, a page query.
fn add_examples(v: &mut Value, book: &PriceBook) {
    let fps = book.frame_rates().first().copied().unwrap_or(24);
    let duration_s = (4.0 / f64::from(fps.max(1))).max(0.25);
    let spec = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": fps,
                      "duration_s": duration_s, "lane": "standard", "params": {"speed": 1.5}});
    for path in ["/v1/jobs", "/v1/quote"] {
        v["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"] = spec.clone();
    }
    let tier = book.tiers.keys().next().cloned().unwrap_or_default();
    v["paths"]["/v1/tenants"]["post"]["requestBody"]["content"]["application/json"]["example"] =
        json!({"name": "Example Studio", "tier": tier});
    let examples = [("id", json!("j_0123456789abcdef")), ("state", json!("succeeded")), ("limit", json!(10))];
    let Some(paths) = v.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for op in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.values_mut()) {
        for param in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some((_, example)) = examples.iter().find(|(name, _)| param["name"] == *name) {
                param["example"] = example.clone();
            }
        }
    }
}

/// Corrects what utoipa writes unlike OpenAPI 3.1: link fields in snake
/// case, and optional parameters typed `[T, "null"]` (a header or query
/// parameter is absent, never null).
fn fix_operation(op: &mut Value) {
    for param in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(types) = param.pointer_mut("/schema/type").and_then(Value::as_array_mut) {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types[0].clone();
                param["schema"]["type"] = only;
            }
        }
    }
    let responses = op.get_mut("responses").and_then(Value::as_object_mut);
    for resp in responses.into_iter().flat_map(|r| r.values_mut()) {
        for link in resp.get_mut("links").and_then(Value::as_object_mut).into_iter().flat_map(|l| l.values_mut()) {
            let Some(link) = link.as_object_mut() else { continue };
            for (snake, camel) in
                [("operation_id", "operationId"), ("operation_ref", "operationRef"), ("request_body", "requestBody")]
            {
                if let Some(x) = link.remove(snake) {
                    link.insert(camel.to_string(), x);
                }
            }
        }
    }
}

/// The job spec's schemas: one branch per template version (its parameters
/// differ), sharing resolution, tile plan and frame range.
fn spec_schemas(book: &PriceBook) -> Vec<(String, Value)> {
    let limits = SpecLimits::from_price_book(book);
    let mut out = vec![
        ("Resolution".to_string(), resolution_schema()),
        ("TilePlan".to_string(), tile_plan_schema()),
        ("FrameRange".to_string(), frame_range_schema()),
    ];
    let mut branches = Vec::new();
    for t in TEMPLATES {
        let name = format!("Spec_{}_{}", t.name, t.version);
        branches.push(json!({"$ref": format!("#/components/schemas/{name}")}));
        out.push((name, template_spec_schema(t, &limits)));
    }
    out.push((
        "JobSpec".to_string(),
        json!({
            "description": "A clip job. `template` picks the branch: each template has its own `params`.",
            "oneOf": branches,
        }),
    ));
    out
}

fn template_refs(t: &Template) -> Vec<String> {
    let latest = TEMPLATES.iter().filter(|o| o.name == t.name).all(|o| o.version <= t.version);
    let mut refs = vec![t.id()];
    if latest {
        refs.push(t.name.to_string());
    }
    refs
}

fn template_spec_schema(t: &Template, limits: &SpecLimits) -> Value {
    let mut params = serde_json::Map::new();
    for p in t.params {
        let schema = match p.kind {
            ParamKind::Color { .. } => json!({"type": "string", "pattern": "^#?[0-9a-fA-F]{6}$"}),
            ParamKind::Int { min, max, default } => {
                json!({"type": "integer", "minimum": min, "maximum": max, "default": default})
            }
            ParamKind::Float { min, max, default } => {
                json!({"type": "number", "minimum": min, "maximum": max, "default": default})
            }
        };
        let mut schema = schema;
        schema["description"] = json!(p.doc);
        params.insert(p.name.to_string(), schema);
    }
    let features = if limits.features.is_empty() {
        json!({"type": "array", "maxItems": 0})
    } else {
        json!({"type": "array", "uniqueItems": true, "items": {"type": "string", "enum": limits.features},
               "description": "Billable features (price book add-ons), each at most once"})
    };
    let min_fps = limits.allowed_fps.iter().copied().min().unwrap_or(1);
    // A spec without `fps` gets 30: where the book does not offer 30, it must be given.
    let mut required = vec!["template"];
    if !limits.allowed_fps.contains(&30) {
        required.push("fps");
    }
    json!({
        "type": "object",
        "description": t.description,
        "additionalProperties": false,
        "required": required,
        "properties": {
            "template": {"type": "string", "enum": template_refs(t),
                         "description": "`name` (latest version) or `name@version`"},
            "params": {"type": "object", "additionalProperties": false, "properties": params},
            "resolution": {"$ref": "#/components/schemas/Resolution"},
            "fps": {"type": "integer", "enum": limits.allowed_fps, "default": 30},
            "duration_s": {"type": "number", "minimum": limits.min_duration_s, "maximum": limits.max_duration_s,
                           "default": 4.0,
                           "description": format!("Seconds; at least one frame at the lowest offered rate ({min_fps} fps)")},
            "variant": {"type": "string", "enum": ["general", "advanced"], "default": "general"},
            "lane": {"type": "string", "enum": Lane::ALL.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
                     "default": "standard"},
            "tiles": {"$ref": "#/components/schemas/TilePlan"},
            "quality": {"type": "integer", "minimum": 1, "maximum": 100, "default": 90,
                        "description": "JPEG quality"},
            "seed": {"type": "integer", "minimum": 0, "maximum": u64::MAX, "default": 0},
            "features": features,
            "frame_range": {"anyOf": [{"$ref": "#/components/schemas/FrameRange"}, {"type": "null"}],
                            "description": "A preview of these frames only; null or absent: the whole clip"},
        },
    })
}

fn resolution_schema() -> Value {
    let side = |max: u32| json!({"type": "integer", "minimum": MIN_SIDE, "maximum": max, "multipleOf": 2});
    json!({
        "description": "A named size (any letter case) or an even width and height",
        "oneOf": [
            {"type": "string", "pattern": "^(720[pP]|1080[pP]|4[kK]|2160[pP])$"},
            {"type": "object", "additionalProperties": false, "required": ["width", "height"],
             "properties": {"width": side(MAX_WIDTH), "height": side(MAX_HEIGHT)}},
        ],
        "default": "1080p",
    })
}

fn tile_plan_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "description": format!(
            "How each frame is split into overlapping tiles. With one tile the overlap is ignored; with more, \
             the plan must fit the frame: overlap_px >= {POST_RADIUS}, and along each axis \
             size >= count x max({TILE_ALIGN}, 2 x overlap_px) (a 422 naming `tiles` otherwise)."),
        "properties": {
            "cols": {"type": "integer", "minimum": 1, "maximum": MAX_TILES_PER_AXIS, "default": 1},
            "rows": {"type": "integer", "minimum": 1, "maximum": MAX_TILES_PER_AXIS, "default": 1},
            "overlap_px": {"type": "integer", "minimum": 0, "maximum": 1024, "default": 32},
        },
    })
}

fn frame_range_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["count"],
        "description": "A preview: render and bill only frames first..first+count of the clip that \
                        `duration_s` x `fps` defines. It must lie within the clip (a 422 naming `frame_range` otherwise).",
        "properties": {
            "first": {"type": "integer", "minimum": 0, "maximum": i64::MAX, "default": 0},
            "count": {"type": "integer", "minimum": 1, "maximum": i64::MAX},
        },
    })
}
