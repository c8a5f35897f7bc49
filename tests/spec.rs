//! Spec validation: a table of invalid specs, each refused with its own message
//! naming the field; valid specs in both formats; and frame ranges
//! (previews), whose frames are the whole clip's.

use rust_decimal::Decimal;
use tessera_worker::spec::{parse, SpecError, SpecFormat, SpecLimits};

fn check(text: &str, format: SpecFormat) -> Result<tessera_worker::spec::JobSpec, SpecError> {
    parse(text, format)?.validate(&SpecLimits::default())
}

const BASE: &str = r#""template": "orbit", "resolution": {"width": 320, "height": 180}"#;
/// One second at 24 fps: 24 frames, the last is frame 23.
const SECOND: &str = r#""template": "orbit", "fps": 24, "duration_s": 1"#;

#[test]
fn invalid_specs_each_get_a_specific_message() {
    use SpecFormat::{Json, Toml};
    let cases: Vec<(&str, String, SpecFormat, &str, &str)> = vec![
        ("not json", "{template: orbit".into(), Json, "", "not valid JSON"),
        ("unknown field", format!("{{{BASE}, \"colour\": 1}}"), Json, "", "unknown field `colour`"),
        ("unknown template", r#"{"template": "nebula"}"#.into(), Json, "template", "unknown template `nebula`"),
        ("unknown version", r#"{"template": "orbit@9"}"#.into(), Json, "template", "has no version 9"),
        ("unknown param", format!("{{{BASE}, \"params\": {{\"glow\": 1}}}}"), Json, "params.glow", "unknown parameter"),
        (
            "bad colour",
            format!("{{{BASE}, \"params\": {{\"primary\": \"#ff6a0z\"}}}}"),
            Json,
            "params.primary",
            "is not a colour",
        ),
        (
            "colour wrong type",
            format!("{{{BASE}, \"params\": {{\"primary\": 255}}}}"),
            Json,
            "params.primary",
            "expected a colour string",
        ),
        (
            "int out of range",
            format!("{{{BASE}, \"params\": {{\"objects\": 40}}}}"),
            Json,
            "params.objects",
            "40 is out of range 1..=12",
        ),
        (
            "int wrong type",
            format!("{{{BASE}, \"params\": {{\"objects\": 2.5}}}}"),
            Json,
            "params.objects",
            "expected a whole number",
        ),
        (
            "float out of range",
            format!("{{{BASE}, \"params\": {{\"speed\": -1}}}}"),
            Json,
            "params.speed",
            "-1 is out of range",
        ),
        (
            "named resolution",
            r#"{"template": "orbit", "resolution": "1440p"}"#.into(),
            Json,
            "resolution",
            "unknown resolution `1440p`",
        ),
        (
            "odd width",
            r#"{"template": "orbit", "resolution": {"width": 1001, "height": 562}}"#.into(),
            Json,
            "resolution.width",
            "is odd",
        ),
        (
            "too small",
            r#"{"template": "orbit", "resolution": {"width": 8, "height": 562}}"#.into(),
            Json,
            "resolution.width",
            "8 is out of range 16..=7680",
        ),
        (
            "too large",
            r#"{"template": "orbit", "resolution": {"width": 640, "height": 9000}}"#.into(),
            Json,
            "resolution.height",
            "9000 is out of range 16..=4320",
        ),
        (
            "resolution type",
            r#"{"template": "orbit", "resolution": 1080}"#.into(),
            Json,
            "resolution",
            "expected \"720p\"",
        ),
        ("fps not offered", format!("{{{BASE}, \"fps\": 25}}"), Json, "fps", "25 is not an offered frame rate"),
        ("fps wrong type", format!("{{{BASE}, \"fps\": \"30\"}}"), Json, "fps", "invalid type: string"),
        ("zero duration", format!("{{{BASE}, \"duration_s\": 0}}"), Json, "duration_s", "must be at least 0.041666666666666664 s (one frame at the lowest offered rate), got 0"),
        (
            "negative duration",
            format!("{{{BASE}, \"duration_s\": -3}}"),
            Json,
            "duration_s",
            "(one frame at the lowest offered rate), got -3",
        ),
        (
            "absurd duration",
            format!("{{{BASE}, \"duration_s\": 1e9}}"),
            Json,
            "duration_s",
            "longer than the 3600 s limit",
        ),
        (
            "NaN duration",
            "template = \"orbit\"\nduration_s = nan\n".into(),
            Toml,
            "duration_s",
            "must be a finite number",
        ),
        ("below one frame", format!("{{{BASE}, \"duration_s\": 0.001}}"), Json, "duration_s", "one frame at the lowest offered rate), got 0.001"),
        ("bad variant", format!("{{{BASE}, \"variant\": \"ultra\"}}"), Json, "variant", "unknown variant `ultra`"),
        ("bad lane", format!("{{{BASE}, \"lane\": \"asap\"}}"), Json, "lane", "unknown variant `asap`"),
        ("quality", format!("{{{BASE}, \"quality\": 0}}"), Json, "quality", "from 1 to 100, got 0"),
        (
            "zero tiles",
            format!("{{{BASE}, \"tiles\": {{\"cols\": 0}}}}"),
            Json,
            "tiles.cols",
            "0 is out of range 1..=16",
        ),
        (
            "too many tiles",
            format!("{{{BASE}, \"tiles\": {{\"cols\": 12, \"rows\": 1}}}}"),
            Json,
            "tiles",
            "12 tile columns do not fit a frame 320 px wide",
        ),
        (
            "overlap too large",
            format!("{{{BASE}, \"tiles\": {{\"cols\": 2, \"rows\": 2, \"overlap_px\": 100}}}}"),
            Json,
            "tiles",
            "twice the 100 px overlap",
        ),
        (
            "overlap too small",
            format!("{{{BASE}, \"tiles\": {{\"cols\": 2, \"rows\": 2, \"overlap_px\": 2}}}}"),
            Json,
            "tiles",
            "below the post-process radius",
        ),
        ("negative seed", format!("{{{BASE}, \"seed\": -1}}"), Json, "seed", "-1 is out of range 0..=18446744073709551615"),
        (
            "unknown tiles field",
            format!("{{{BASE}, \"tiles\": {{\"columns\": 2}}}}"),
            Json,
            "tiles",
            "unknown field `columns`",
        ),
        (
            "frame range past the end",
            format!("{{{SECOND}, \"frame_range\": {{\"first\": 20, \"count\": 5}}}}"),
            Json,
            "frame_range",
            "frames 20..25 go past the clip's last frame 23 (24 frames: 1 s at 24 fps); first + count must be at most 24",
        ),
        (
            "frame past the end",
            format!("{{{SECOND}, \"frame_range\": {{\"first\": 24, \"count\": 1}}}}"),
            Json,
            "frame_range",
            "frame 24 is past the clip's last frame 23",
        ),
        (
            "empty frame range",
            format!("{{{SECOND}, \"frame_range\": {{\"first\": 2, \"count\": 0}}}}"),
            Json,
            "frame_range.count",
            "must be at least 1 frame, got 0",
        ),
        (
            "negative first frame",
            "template = \"orbit\"\n[frame_range]\nfirst = -1\ncount = 3\n".into(),
            Toml,
            "frame_range.first",
            "must be a frame index, 0 or more, got -1",
        ),
        (
            "frame range without count",
            format!("{{{SECOND}, \"frame_range\": {{\"first\": 2}}}}"),
            Json,
            "frame_range",
            "missing field `count`",
        ),
        (
            "unknown frame range field",
            format!("{{{SECOND}, \"frame_range\": {{\"count\": 2, \"step\": 2}}}}"),
            Json,
            "frame_range",
            "unknown field `step`",
        ),
        (
            "frame range wrong type",
            format!("{{{SECOND}, \"frame_range\": {{\"count\": \"3\"}}}}"),
            Json,
            "frame_range.count",
            "invalid type: string",
        ),
    ];
    assert!(cases.len() >= 15);
    let mut messages = std::collections::BTreeSet::new();
    for (name, text, format, field, fragment) in &cases {
        let err = match check(text, *format) {
            Ok(_) => panic!("{name}: accepted {text}"),
            Err(e) => e,
        };
        let shown = err.to_string();
        assert!(shown.contains(fragment), "{name}: message `{shown}` lacks `{fragment}`");
        let fields = err.field_errors();
        assert!(fields.iter().any(|f| f.field.starts_with(field)), "{name}: no error names `{field}`: {fields:?}");
        assert!(messages.insert(shown.clone()), "{name}: message `{shown}` is shared with another case");
    }
}

#[test]
fn several_problems_are_reported_together() {
    let err =
        check(r#"{"template": "orbit", "fps": 25, "duration_s": -1, "quality": 101}"#, SpecFormat::Json).unwrap_err();
    let fields: Vec<String> = err.field_errors().into_iter().map(|f| f.field).collect();
    assert_eq!(fields, ["fps", "duration_s", "quality"]);
}

#[test]
fn valid_specs_parse_in_both_formats_with_defaults() {
    let json = check(
        r##"{"template": "orbit", "params": {"primary": "#ff6a00", "secondary": "#101828", "objects": 5},
            "resolution": "1080p", "fps": 30, "duration_s": 4.0, "variant": "general",
            "lane": "standard", "tiles": {"cols": 2, "rows": 2, "overlap_px": 32}, "quality": 90, "seed": 7}"##,
        SpecFormat::Json,
    )
    .unwrap();
    assert_eq!((json.width, json.height, json.frames), (1920, 1080, 120));
    assert_eq!(json.template.id(), "orbit@2");
    let toml =
        check("template = \"dunes@1\"\nresolution = \"4k\"\nfps = 60\nduration_s = 0.5\n", SpecFormat::Toml).unwrap();
    assert_eq!((toml.width, toml.height, toml.frames, toml.tiler.len()), (3840, 2160, 30, 1));
    for example in ["orbit.json", "dunes.json", "pedestal.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(example);
        let format = if example.ends_with("toml") { SpecFormat::Toml } else { SpecFormat::Json };
        check(&std::fs::read_to_string(path).unwrap(), format).unwrap_or_else(|e| panic!("{example}: {e}"));
    }
}

#[test]
fn a_frame_range_delivers_part_of_the_clip() {
    let whole = check(&format!("{{{SECOND}}}"), SpecFormat::Json).unwrap();
    assert_eq!((whole.frames, whole.first_frame, whole.clip_frames, whole.is_partial()), (24, 0, 24, false));
    let part =
        check(&format!("{{{SECOND}, \"frame_range\": {{\"first\": 3, \"count\": 2}}}}"), SpecFormat::Json).unwrap();
    assert_eq!((part.frames, part.first_frame, part.clip_frames, part.is_partial()), (2, 3, 24, true));
    // Priced and billed as its frames, exactly 2/24 s.
    assert_eq!(part.output_seconds(), Decimal::from(2) / Decimal::from(24));
    assert_eq!(part.quote_request().output_seconds, part.output_seconds());
    assert_eq!(part.delivered_duration_s(), 2.0 / 24.0);
    assert_eq!(part.render_plan().first_frame, 3);
    // `first` defaults to 0; TOML says the same; the last frame alone is fine.
    let toml =
        check("template = \"orbit\"\nfps = 24\nduration_s = 1\n[frame_range]\ncount = 24\n", SpecFormat::Toml).unwrap();
    assert_eq!((toml.frames, toml.first_frame, toml.is_partial()), (24, 0, false));
    let last =
        check(&format!("{{{SECOND}, \"frame_range\": {{\"first\": 23, \"count\": 1}}}}"), SpecFormat::Json).unwrap();
    assert_eq!((last.frames, last.first_frame), (1, 23));
    // A spec without a range is written back without one: its body hash (and
    // the job id of an idempotency key) is what it was before ranges existed.
    let raw = parse(&format!("{{{SECOND}}}"), SpecFormat::Json).unwrap();
    assert!(serde_json::to_value(&raw).unwrap().get("frame_range").is_none());
}

/// Frame i of a preview is clip frame first + i, bit for bit (same process,
/// same adapter): the render plan times and seeds it on the clip's timeline.
#[test]
fn a_previews_frames_are_the_clips_frames() {
    use crate::util::{render_rgba, spec};
    let clip = serde_json::json!({"template": "dunes", "resolution": {"width": 64, "height": 36}, "fps": 24,
                                  "duration_s": 0.5, "seed": 9});
    let mut preview = clip.clone();
    preview["frame_range"] = serde_json::json!({"first": 7, "count": 2});
    let (clip, preview) = (spec(clip), spec(preview));
    assert!(render_rgba(&preview, 1) == render_rgba(&clip, 8), "preview frame 1 is not clip frame 8");
    assert!(render_rgba(&preview, 0) != render_rgba(&clip, 0), "frame 7 looks like frame 0: the test could not fail");
}

#[test]
fn whole_numbers_written_with_a_fraction_are_integers_and_specs_keep_their_form() {
    // JSON Schema's `integer` takes 24.0, so the API must too (the contract run checks it).
    let text = r#"{"template": "orbit", "fps": 24.0, "duration_s": 1, "quality": 80.0, "seed": 7.0,
                   "resolution": {"width": 320.0, "height": 180}, "tiles": {"cols": 2.0, "rows": 1, "overlap_px": 16.0},
                   "params": {"objects": 9.0, "speed": 2.0}}"#;
    let js = check(text, SpecFormat::Json).expect("whole numbers are integers");
    assert_eq!((js.fps, js.quality, js.seed, js.width, js.tiler.cols), (24, 80, 7, 320, 2));
    for bad in [r#""quality": 80.5"#, r#""seed": -1"#, r#""fps": 1e300"#] {
        let e = check(&format!("{{{SECOND}, {bad}}}"), SpecFormat::Json).unwrap_err();
        assert!(!e.field_errors().is_empty(), "{bad}: {e}");
    }
    // The stored spec (and so an Idempotency-Key's body hash) keeps parameters as written.
    let raw = parse(text, SpecFormat::Json).unwrap();
    let stored = serde_json::to_string(&raw).unwrap();
    assert!(stored.contains(r#""speed":2.0"#) && stored.contains(r#""objects":9.0"#), "{stored}");
    // A key given twice is still refused, not silently the last one.
    let e = check(&format!("{{{SECOND}, \"fps\": 30}}"), SpecFormat::Json).unwrap_err();
    assert!(e.to_string().contains("duplicate field"), "{e}");
}
