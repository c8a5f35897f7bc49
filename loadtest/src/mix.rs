//! The job mix of a load test: weighted job specs, and the seeded choice of
//! one per submission.
//!
//! A mix file (`.json` or `.toml`) holds a list of entries
//! `{weight, spec, name?}`: JSON as a bare array or `{"entries": [...]}`,
//! TOML as `[[entries]]` tables. `spec` is a job spec exactly as
//! `POST /v1/jobs` takes it and is sent as written: the server judges it, so a
//! mix may hold a deliberately invalid spec to measure how refusals are
//! answered. Only the file's own shape is checked here, up front, with the
//! offending field named.
//!
//! The choice uses SplitMix64 rather than a library RNG so that a seed picks
//! the same sequence of entries in every tessera version (library generators
//! do not promise a stable stream across releases).

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use hyper::body::Bytes;
use serde_json::{json, Value};

/// One kind of submission.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub weight: f64,
    /// The spec as sent (its `lane` decides the lane; absent means `standard`).
    pub spec: Value,
    /// `spec` serialized once, the request body of every submission of it.
    pub body: Bytes,
}

impl Entry {
    pub fn new(name: String, weight: f64, spec: Value) -> Self {
        let body = Bytes::from(spec.to_string());
        Self { name, weight, spec, body }
    }

    /// The lane the spec asks for, as the server defaults it.
    pub fn lane(&self) -> &str {
        self.spec.get("lane").and_then(Value::as_str).unwrap_or("standard")
    }
}

/// Weighted entries and their cumulative weights, for the choice.
#[derive(Debug, Clone)]
pub struct Mix {
    pub entries: Vec<Entry>,
    cumulative: Vec<f64>,
}

impl Mix {
    /// A mix of `entries`, each with a positive finite weight (checked by the caller's parser).
    pub fn new(entries: Vec<Entry>) -> anyhow::Result<Self> {
        if entries.is_empty() {
            bail!("entries: the mix has no entries");
        }
        let mut total = 0.0;
        let cumulative = entries
            .iter()
            .map(|e| {
                total += e.weight;
                total
            })
            .collect();
        Ok(Self { entries, cumulative })
    }

    /// The entry for a uniform draw `u` in [0, 1).
    pub fn pick(&self, u: f64) -> usize {
        let total = *self.cumulative.last().expect("a mix is never empty");
        let x = u * total;
        // The first entry whose cumulative weight passes x.
        self.cumulative.partition_point(|&c| c <= x).min(self.entries.len() - 1)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and stable forever.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Reads and checks a mix file; its format is taken from the extension.
pub fn load(path: &Path) -> anyhow::Result<Mix> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading mix file {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let value: Value = match ext.as_deref() {
        Some("json") => {
            serde_json::from_str(&text).with_context(|| format!("mix file {} is not JSON", path.display()))?
        }
        Some("toml") => {
            let t: toml::Value =
                toml::from_str(&text).with_context(|| format!("mix file {} is not TOML", path.display()))?;
            serde_json::to_value(t)?
        }
        _ => bail!("mix file {} must end in .json or .toml", path.display()),
    };
    parse(value).with_context(|| format!("mix file {}", path.display()))
}

/// Checks a mix document (already JSON) and builds the mix. Errors name the
/// field: `entries[2].weight`.
pub fn parse(doc: Value) -> anyhow::Result<Mix> {
    let list = match doc {
        Value::Array(list) => list,
        Value::Object(mut o) => match o.remove("entries") {
            Some(Value::Array(list)) => {
                if let Some(k) = o.keys().next() {
                    bail!("{k}: unknown field (a mix has only `entries`)");
                }
                list
            }
            Some(_) => bail!("entries: must be a list of {{weight, spec, name}}"),
            None => bail!("entries: missing (a list of {{weight, spec, name}})"),
        },
        _ => bail!("entries: a mix is a list of {{weight, spec, name}}"),
    };
    let mut entries = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let at = |field: &str| format!("entries[{i}].{field}");
        let Value::Object(mut o) = item else { bail!("entries[{i}]: must be an object {{weight, spec, name}}") };
        let weight = match o.remove("weight") {
            None => bail!("{}: missing", at("weight")),
            Some(w) => w.as_f64().ok_or_else(|| anyhow!("{}: must be a number", at("weight")))?,
        };
        if !(weight.is_finite() && weight > 0.0) {
            bail!("{}: must be greater than 0 (got {weight})", at("weight"));
        }
        let spec = match o.remove("spec") {
            None => bail!("{}: missing", at("spec")),
            Some(s @ Value::Object(_)) => s,
            Some(_) => bail!("{}: must be a job spec object", at("spec")),
        };
        let name = match o.remove("name") {
            None => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
            Some(_) => bail!("{}: must be a non-empty string", at("name")),
        };
        if let Some(k) = o.keys().next() {
            bail!("{}: unknown field (expected weight, spec, name)", at(k));
        }
        let template = spec.get("template").and_then(Value::as_str).unwrap_or("?");
        let lane = spec.get("lane").and_then(Value::as_str).unwrap_or("standard");
        let name = name.unwrap_or_else(|| format!("{template}/{lane}"));
        entries.push(Entry::new(name, weight, spec));
    }
    // Names key the per-entry figures of the report, so they must differ.
    for i in 0..entries.len() {
        if entries[..i].iter().any(|e| e.name == entries[i].name) {
            let n = format!("{}#{i}", entries[i].name);
            entries[i].name = n;
        }
    }
    Mix::new(entries)
}

/// The built-in mix (see `--mix` in `tessera loadtest --help`): small clips in
/// every lane; the caller keeps those the tenant's tier admits.
pub fn default_mix() -> Mix {
    let clip = |template: &str, duration: f64, lane: &str| {
        json!({"template": template, "resolution": {"width": 320, "height": 180}, "fps": 24,
               "duration_s": duration, "lane": lane, "seed": 7})
    };
    let entries = vec![
        Entry::new("orbit-standard".into(), 6.0, clip("orbit@2", 1.0, "standard")),
        Entry::new("dunes-bulk".into(), 3.0, clip("dunes@1", 1.0, "bulk")),
        Entry::new("orbit-urgent".into(), 1.0, clip("orbit@2", 0.5, "urgent")),
    ];
    Mix::new(entries).expect("the default mix has entries")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(doc: Value) -> String {
        format!("{:#}", parse(doc).unwrap_err())
    }

    #[test]
    fn a_valid_mix_parses_in_both_shapes() {
        let entries = json!([{"weight": 2, "spec": {"template": "orbit", "lane": "bulk"}},
                             {"weight": 0.5, "spec": {"template": "dunes"}, "name": "d"}]);
        let m = parse(entries.clone()).unwrap();
        assert_eq!(m.entries.len(), 2);
        assert_eq!((m.entries[0].name.as_str(), m.entries[0].lane()), ("orbit/bulk", "bulk"));
        assert_eq!((m.entries[1].name.as_str(), m.entries[1].lane()), ("d", "standard"));
        assert_eq!(parse(json!({"entries": entries})).unwrap().entries.len(), 2);
    }

    #[test]
    fn bad_mixes_name_the_field() {
        assert!(err(json!([])).contains("no entries"));
        assert!(err(json!({"entries": []})).contains("no entries"));
        assert!(err(json!({"jobs": []})).contains("entries: missing"));
        assert!(err(json!([{"spec": {}}])).contains("entries[0].weight: missing"));
        assert!(err(json!([{"weight": 1, "spec": {}}, {"weight": 0, "spec": {}}])).contains("entries[1].weight"));
        assert!(err(json!([{"weight": -1, "spec": {}}])).contains("greater than 0"));
        assert!(err(json!([{"weight": "2", "spec": {}}])).contains("must be a number"));
        assert!(err(json!([{"weight": 1}])).contains("entries[0].spec: missing"));
        assert!(err(json!([{"weight": 1, "spec": "orbit"}])).contains("entries[0].spec"));
        assert!(err(json!([{"weight": 1, "spec": {}, "lane": "bulk"}])).contains("entries[0].lane: unknown"));
    }

    #[test]
    fn duplicate_names_are_told_apart() {
        let m =
            parse(json!([{"weight": 1, "spec": {"template": "orbit"}}, {"weight": 1, "spec": {"template": "orbit"}}]))
                .unwrap();
        assert_eq!(m.entries[1].name, "orbit/standard#1");
    }

    #[test]
    fn toml_and_json_files_load() {
        let dir = tempfile_dir();
        let toml_path = dir.join("mix.toml");
        std::fs::write(&toml_path, "[[entries]]\nweight = 3\nspec = { template = \"orbit\", duration_s = 0.5 }\n")
            .unwrap();
        let m = load(&toml_path).unwrap();
        assert_eq!(m.entries[0].spec["duration_s"], 0.5);
        let yaml = dir.join("mix.yaml");
        std::fs::write(&yaml, "").unwrap();
        assert!(format!("{:#}", load(&yaml).unwrap_err()).contains(".json or .toml"));
        assert!(format!("{:#}", load(&dir.join("absent.json")).unwrap_err()).contains("reading mix file"));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-mix-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_choice_follows_the_weights_and_the_seed() {
        let m = parse(json!([{"weight": 1, "spec": {}}, {"weight": 3, "spec": {}}])).unwrap();
        assert_eq!(m.pick(0.0), 0);
        assert_eq!(m.pick(0.2499), 0);
        assert_eq!(m.pick(0.25), 1);
        assert_eq!(m.pick(0.9999999), 1);
        let draw = |seed| {
            let mut r = SplitMix64::new(seed);
            (0..4000).map(|_| m.pick(r.next_f64())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7), "a seed gives the same sequence");
        assert_ne!(draw(7), draw(8));
        let ones = draw(7).iter().filter(|&&i| i == 1).count();
        assert!((2800..3200).contains(&ones), "about 3/4 of the draws: {ones}");
    }

    #[test]
    fn splitmix_matches_its_reference_stream() {
        // First outputs for seed 1234567 from the reference C implementation.
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn the_default_mix_covers_every_lane() {
        let m = default_mix();
        let lanes: Vec<&str> = m.entries.iter().map(Entry::lane).collect();
        assert_eq!(lanes, ["standard", "bulk", "urgent"]);
    }
}
