//! Every WGSL module parses and validates with naga, without a GPU, and every
//! file under shaders/ is part of a validated module.

use std::collections::BTreeSet;
use std::path::Path;

use tessera_worker::render::shaders::all_modules;

fn wgsl_files(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("shaders dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            wgsl_files(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "wgsl") {
            out.insert(path.strip_prefix(base).expect("under base").to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn every_module_validates_with_naga() {
    let mut failures = Vec::new();
    for m in all_modules() {
        let module = match naga::front::wgsl::parse_str(&m.source) {
            Ok(module) => module,
            Err(e) => {
                failures.push(format!("{}: {}", m.name, e.emit_to_string(&m.source)));
                continue;
            }
        };
        // wgpu grants f16 packing in f32 shaders on every native backend.
        let caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
        if let Err(e) = validator.validate(&module) {
            failures.push(format!("{}: {}", m.name, e.emit_to_string(&m.source)));
        }
    }
    assert!(failures.is_empty(), "invalid WGSL:\n{}", failures.join("\n"));
}

#[test]
fn every_wgsl_file_is_part_of_a_validated_module() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk = BTreeSet::new();
    wgsl_files(&base, &base, &mut on_disk);
    let used: BTreeSet<String> = all_modules().iter().flat_map(|m| m.files.iter().map(|f| f.to_string())).collect();
    let unused: Vec<_> = on_disk.difference(&used).collect();
    assert!(unused.is_empty(), "WGSL files no module includes (so never validated): {unused:?}");
    assert!(on_disk.len() >= 9, "found only {on_disk:?}");
}

#[test]
fn a_broken_shader_is_caught() {
    // The validation above must be able to fail: a type error is rejected.
    let bad = "fn f() -> f32 { return vec2<f32>(1.0); }";
    let module = naga::front::wgsl::parse_str(bad);
    let invalid = match module {
        Err(_) => true,
        Ok(m) => naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&m)
            .is_err(),
    };
    assert!(invalid);
}
