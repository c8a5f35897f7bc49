//! Pricing and tiers: the brief's examples exactly, held-out cases, properties of
//! the formula, refused price books, and each tier's feature map and caps.

use std::str::FromStr;

use proptest::prelude::*;
use rust_decimal::Decimal;
use tessera_metering::price::{quote, round_cents, PriceBook, PriceBookError, QuoteRequest, DEFAULT_PRICE_BOOK};
use tessera_metering::tiers::{AdmissionError, MonthUsage};

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn req(w: u32, h: u32, fps: u32, seconds: &str, advanced: bool) -> QuoteRequest {
    QuoteRequest { width: w, height: h, fps, output_seconds: d(seconds), advanced, addons: vec![] }
}

fn book_with_base(base: &str) -> PriceBook {
    let mut b = PriceBook::default_book();
    b.price.base_per_output_second = d(base);
    b
}

#[test]
fn brief_examples_come_out_exactly() {
    // A: B=0.012, t=150, R=1.2, F=1.1, M=1.0 -> 2.376 -> 2.38
    let a = quote(&book_with_base("0.012"), &req(1920, 1080, 30, "150", false)).unwrap();
    assert_eq!(a.line_items.last().unwrap().amount, d("2.376"));
    assert_eq!(a.price.to_string(), "2.38");
    // B: B=0.02, t=300, R=1.5, F=1.25, M=1.15 -> 12.9375 -> 12.94
    let b = quote(&book_with_base("0.02"), &req(3840, 2160, 60, "300", true)).unwrap();
    assert_eq!(b.line_items.last().unwrap().amount, d("12.9375"));
    assert_eq!(b.price.to_string(), "12.94");
}

#[test]
fn held_out_cases() {
    let cases = [
        // (base, w, h, fps, t, advanced, expected)
        ("0.012", 1280, 720, 24, "10", false, "0.12"),  // 0.12 exactly
        ("0.4", 1280, 720, 24, "8", false, "3.20"),     // Veo-style 0.40/s
        ("0.15", 1920, 1080, 60, "8", true, "2.07"),    // 0.15*8*1.2*1.25*1.15 = 2.07
        ("0.001", 1280, 720, 24, "5", false, "0.01"),   // 0.005: half rounds up
        ("0.001", 1280, 720, 24, "4.9", false, "0.00"), // 0.0049 rounds down
        ("0.013", 1000, 562, 30, "3.5", false, "0.05"), // explicit size takes 720p: 0.013*3.5*1.0*1.1 = 0.05005
        ("0.02", 3000, 2000, 30, "60", false, "1.98"),  // 6 MP > 4k? no: 6.0 MP < 8.3 MP -> 4k: 0.02*60*1.5*1.1
        ("0.02", 7680, 4320, 24, "2", true, "0.07"),    // beyond 4k takes the largest: 0.02*2*1.5*1.15 = 0.069
    ];
    for (base, w, h, fps, t, adv, want) in cases {
        let q = quote(&book_with_base(base), &req(w, h, fps, t, adv)).unwrap();
        assert_eq!(q.price, d(want), "B={base} {w}x{h} {fps} fps {t} s advanced={adv}: {:?}", q.line_items);
    }
}

#[test]
fn addons_are_priced_per_output_second() {
    let mut r = req(1280, 720, 24, "10", false);
    r.addons = vec!["style_controls".into(), "analytics".into()];
    let q = quote(&PriceBook::default_book(), &r).unwrap();
    // 0.012*10 + 0.001*10 + 0.0005*10 = 0.135 -> 0.14
    assert_eq!(q.price, d("0.14"));
    assert_eq!(q.line_items.len(), 6);
    r.addons = vec!["teleport".into()];
    assert!(quote(&PriceBook::default_book(), &r).is_err());
}

#[test]
fn quote_splits_the_operator_cost() {
    let q = quote(&PriceBook::default_book(), &req(1920, 1080, 30, "10", false)).unwrap();
    let c = &q.cost;
    assert_eq!(c.gpu_seconds, d("12")); // 1.2 GPU s per output s at 1080p
    assert_eq!(c.compute, d("0.024"));
    assert_eq!(c.encode, d("0.0003")); // 0.05 * 10 * 0.0006
    assert_eq!(c.total, c.compute + c.encode + c.storage + c.egress);
    assert_eq!(q.margin, q.price - c.total);
}

/// The formula computed independently in scaled integers, for the properties.
fn integer_price(base: i64, t_tenths: i64, r: i64, f: i64, m: i64) -> i128 {
    // base in 1e-4, t in 1e-1, r/f/m in 1e-2: product scale 1e-11; cents = 1e-2.
    let exact = i128::from(base) * i128::from(t_tenths) * i128::from(r) * i128::from(f) * i128::from(m);
    let scale = 1_000_000_000i128; // 1e-11 -> 1e-2
    (exact + scale / 2) / scale
}

proptest! {
    #[test]
    fn price_matches_exact_integer_formula(base in 1i64..5000, t in 1i64..36000, r in 50i64..300, f in 50i64..300, m in 50i64..300) {
        let mut book = PriceBook::default_book();
        book.price.base_per_output_second = Decimal::new(base, 4);
        book.price.resolution.insert("720p".into(), Decimal::new(r, 2));
        book.price.fps.insert("24".into(), Decimal::new(f, 2));
        book.price.variant.insert("general".into(), Decimal::new(m, 2));
        let q = quote(&book, &QuoteRequest { width: 1280, height: 720, fps: 24, output_seconds: Decimal::new(t, 1), advanced: false, addons: vec![] }).unwrap();
        prop_assert_eq!(q.price, Decimal::new(integer_price(base, t, r, f, m) as i64, 2));
    }

    #[test]
    fn price_is_monotone_in_seconds_and_multipliers(t in 1i64..20000, dt in 0i64..500, bump in 0i64..100) {
        let book = PriceBook::default_book();
        let at = |t: i64, res: (u32, u32), fps: u32, adv: bool| quote(&book, &QuoteRequest {
            width: res.0, height: res.1, fps, output_seconds: Decimal::new(t, 1), advanced: adv, addons: vec![],
        }).unwrap().price;
        let base = at(t, (1280, 720), 24, false);
        prop_assert!(at(t + dt, (1280, 720), 24, false) >= base);
        prop_assert!(at(t, (1920, 1080), 24, false) >= base);
        prop_assert!(at(t, (3840, 2160), 24, false) >= at(t, (1920, 1080), 24, false));
        prop_assert!(at(t, (1280, 720), 30, false) >= base);
        prop_assert!(at(t, (1280, 720), 60, false) >= at(t, (1280, 720), 30, false));
        prop_assert!(at(t, (1280, 720), 24, true) >= base);
        // A larger base rate never lowers the price.
        let mut richer = book.clone();
        richer.price.base_per_output_second += Decimal::new(bump, 4);
        let r = quote(&richer, &QuoteRequest { width: 1280, height: 720, fps: 24, output_seconds: Decimal::new(t, 1), advanced: false, addons: vec![] }).unwrap().price;
        prop_assert!(r >= base);
    }

    #[test]
    fn rounding_never_drifts(cents in 0i64..10_000_000, sub in 0i64..10_000) {
        // round_cents(x) is within half a cent of x, and exact cents stay put.
        let x = Decimal::new(cents * 10_000 + sub, 6);
        let r = round_cents(x);
        prop_assert!((r - x).abs() <= Decimal::new(5, 3));
        prop_assert_eq!(round_cents(Decimal::new(cents, 2)), Decimal::new(cents, 2));
        prop_assert_eq!(r.scale() <= 2, true);
    }
}

fn refuse(edit: &str, replace_with: &str, key: &str) {
    assert!(DEFAULT_PRICE_BOOK.contains(edit), "fixture drifted: {edit}");
    let text = DEFAULT_PRICE_BOOK.replacen(edit, replace_with, 1);
    match PriceBook::parse(&text, "test.toml") {
        Err(PriceBookError::Invalid { key: k, message, .. }) => {
            assert!(k.contains(key), "refused under `{k}` ({message}), expected `{key}`")
        }
        other => panic!("accepted a price book with {replace_with:?}: {other:?}"),
    }
}

#[test]
fn invalid_price_books_name_the_key() {
    refuse("base_per_output_second = \"0.012\"", "base_per_output_second = \"-1\"", "price.base_per_output_second");
    refuse("base_per_output_second = \"0.012\"", "base_per_output_second = \"abc\"", "price.base_per_output_second");
    refuse("\"4k\" = \"1.5\"", "\"5k\" = \"1.5\"", "price.resolution.5k");
    refuse("60 = \"1.25\"", "sixty = \"1.25\"", "price.fps.sixty");
    refuse("advanced = \"1.15\"\n", "", "price.variant.advanced");
    refuse("egress_per_gb = \"0.09\"", "egress_per_gb = \"0.09\"\negress_per_tb = \"90\"", "cost");
    refuse("features = [\"clip_creation\"]", "features = [\"teleport\"]", "tiers.short.features");
    refuse("max_resolution = \"720p\"", "max_resolution = \"480p\"", "tiers.short.max_resolution");
    refuse("fps = [24, 30]", "fps = [24, 25]", "tiers.short.fps");
    refuse("lanes = [\"standard\", \"bulk\"]", "lanes = [\"express\"]", "tiers.short.lanes");
    refuse(
        "monthly_output_seconds = \"600\"",
        "monthly_output_seconds = 600.5",
        "tiers.short.caps.monthly_output_seconds",
    );
    refuse("currency = \"USD\"", "currency = \"dollars\"", "currency");
}

#[test]
fn each_tier_has_its_feature_map() {
    let book = PriceBook::default_book();
    let check = |tier: &str, r: &QuoteRequest, lane: &str| {
        book.tiers[tier].check_features(tier, r, lane.parse::<tessera_metering::Lane>().unwrap())
    };
    let ok = req(1280, 720, 24, "10", false);
    for tier in ["short", "mid", "enterprise"] {
        check(tier, &ok, "standard").unwrap_or_else(|e| panic!("{tier}: {e}"));
    }
    // short: 720p, 24/30 fps, general, standard/bulk, 30 s, clip_creation only.
    assert!(matches!(
        check("short", &req(1920, 1080, 24, "10", false), "standard"),
        Err(AdmissionError::Resolution { .. })
    ));
    assert!(matches!(
        check("short", &req(1280, 720, 60, "10", false), "standard"),
        Err(AdmissionError::FrameRate { .. })
    ));
    assert!(matches!(check("short", &req(1280, 720, 24, "10", true), "standard"), Err(AdmissionError::Variant { .. })));
    assert!(matches!(check("short", &ok, "urgent"), Err(AdmissionError::Lane { .. })));
    assert!(matches!(check("short", &req(1280, 720, 24, "31", false), "bulk"), Err(AdmissionError::ClipLength { .. })));
    let mut styled = ok.clone();
    styled.addons = vec!["style_controls".into()];
    let e = check("short", &styled, "standard").unwrap_err();
    assert!(e.to_string().contains("tier `short` does not include feature `style_controls`"), "{e}");
    // mid: 1080p and advanced, not 4k, not urgent, no licensing workflows.
    check("mid", &req(1920, 1080, 60, "300", true), "bulk").unwrap();
    assert!(matches!(
        check("mid", &req(3840, 2160, 30, "10", false), "standard"),
        Err(AdmissionError::Resolution { .. })
    ));
    assert!(matches!(check("mid", &ok, "urgent"), Err(AdmissionError::Lane { .. })));
    let mut licensed = ok.clone();
    licensed.addons = vec!["licensing_workflows".into()];
    assert!(check("mid", &licensed, "standard").is_err());
    // enterprise: 4k, urgent, licensing workflows, an hour.
    check(
        "enterprise",
        &{
            let mut r = req(3840, 2160, 60, "3600", true);
            r.addons = vec!["licensing_workflows".into()];
            r
        },
        "urgent",
    )
    .unwrap();
}

#[test]
fn caps_and_budget_name_limit_tier_and_usage() {
    let book = PriceBook::default_book();
    let short = &book.tiers["short"];
    let usage =
        MonthUsage { used_seconds: d("500"), reserved_seconds: d("90"), spent: d("10"), reserved_spend: d("1") };
    let e = short.check_caps("short", &usage, d("20"), d("0.5")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "monthly output cap of tier `short` is 600 s: 500 s used and 90 s reserved this month, so 20 s more would exceed it"
    );
    assert!(short.check_caps("short", &usage, d("10"), d("0.5")).unwrap().is_empty()); // exactly at the cap
                                                                                       // Budget 25.00: warning from 80 % (20.00), refusal past 100 %.
    let spend = |spent: &str| MonthUsage { spent: d(spent), ..Default::default() };
    assert!(short.check_caps("short", &spend("10"), d("1"), d("5")).unwrap().is_empty());
    let w = short.check_caps("short", &spend("19"), d("1"), d("1.5")).unwrap();
    assert_eq!(w.len(), 1, "no warning at 82 %");
    let e = short.check_caps("short", &spend("24"), d("1"), d("1.01")).unwrap_err();
    assert!(matches!(e, AdmissionError::Budget { .. }));
    assert!(e.to_string().contains("monthly budget of tier `short` is 25.00: 24 spent"), "{e}");
    // Enterprise has no budget cap.
    assert!(book.tiers["enterprise"].check_caps("enterprise", &spend("100000"), d("1"), d("1000")).is_ok());
}
