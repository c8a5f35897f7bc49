//! The WGSL sources, embedded at build time, and how they compose into modules.
//!
//! WGSL has no `#include`; a pipeline's module is the concatenation of the shared
//! files it needs and its own file. Module-scope declarations may come in any
//! order, so a shared file may call a function (`map`, `scene_color`) that the
//! file composed after it defines.

pub const COMMON: &str = include_str!("../../../shaders/shared/common.wgsl");
pub const SDF: &str = include_str!("../../../shaders/shared/sdf.wgsl");
pub const RAYMARCH: &str = include_str!("../../../shaders/shared/raymarch.wgsl");
pub const TEMPLATE_ENTRY: &str = include_str!("../../../shaders/shared/template_entry.wgsl");
pub const BLOOM: &str = include_str!("../../../shaders/post/bloom.wgsl");
pub const STITCH: &str = include_str!("../../../shaders/stitch.wgsl");
pub const YUV420: &str = include_str!("../../../shaders/encode/yuv420.wgsl");
pub const JPEG: &str = include_str!("../../../shaders/encode/jpeg.wgsl");
pub const HUFFMAN: &str = include_str!("../../../shaders/encode/huffman.wgsl");

/// Joins sources into one module.
pub fn compose(parts: &[&str]) -> String {
    parts.join("\n")
}

/// A named, complete WGSL module that some pipeline compiles, with the files it
/// is built from (relative to `shaders/`).
#[derive(Debug, Clone)]
pub struct ModuleSource {
    pub name: String,
    pub files: Vec<&'static str>,
    pub source: String,
}

/// Every module the worker compiles, so a test can validate them all with naga
/// and check that every file under `shaders/` is part of one.
pub fn all_modules() -> Vec<ModuleSource> {
    let mut modules: Vec<ModuleSource> = super::catalog::TEMPLATES
        .iter()
        .map(|t| ModuleSource {
            name: t.id(),
            files: vec![
                "shared/common.wgsl",
                "shared/sdf.wgsl",
                "shared/raymarch.wgsl",
                t.file,
                "shared/template_entry.wgsl",
            ],
            source: t.shader_source(),
        })
        .collect();
    let fixed = [
        ("bloom", "post/bloom.wgsl", BLOOM),
        ("stitch", "stitch.wgsl", STITCH),
        ("yuv420", "encode/yuv420.wgsl", YUV420),
        ("jpeg", "encode/jpeg.wgsl", JPEG),
        ("huffman", "encode/huffman.wgsl", HUFFMAN),
    ];
    for (name, file, src) in fixed {
        modules.push(ModuleSource {
            name: name.to_string(),
            files: vec!["shared/common.wgsl", file],
            source: compose(&[COMMON, src]),
        });
    }
    modules
}
