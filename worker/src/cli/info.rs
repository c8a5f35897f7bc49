//! `tessera templates` and `tessera doctor`.

use super::{runtime, usage, CliError};
use crate::gpu::{self, GpuContext};
use crate::render::catalog::{format_color, ParamKind, TEMPLATES};

pub(super) fn templates(json: bool) -> Result<(), CliError> {
    if json {
        println!("{}", serde_json::to_string_pretty(TEMPLATES).map_err(runtime)?);
        return Ok(());
    }
    for t in TEMPLATES {
        println!("{}  [{}]\n    {}", t.id(), t.tags.join(", "), t.description);
        for p in t.params {
            let kind = match p.kind {
                ParamKind::Color { default } => format!("colour, default {}", format_color(default)),
                ParamKind::Int { min, max, default } => format!("integer {min}..={max}, default {default}"),
                ParamKind::Float { min, max, default } => format!("number {min}..={max}, default {default}"),
            };
            println!("    {:<14} {kind}: {}", p.name, p.doc);
        }
    }
    Ok(())
}

pub(super) fn doctor(json: bool) -> Result<(), CliError> {
    let backends = gpu::backends_from_env().map_err(usage)?;
    let all: Vec<gpu::AdapterReport> = gpu::list_adapters(wgpu::Backends::all())
        .iter()
        .map(|a| {
            let info = a.get_info();
            gpu::AdapterReport {
                name: info.name,
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: info.driver,
                driver_info: info.driver_info,
            }
        })
        .collect();
    let ctx = GpuContext::open();
    if json {
        let chosen = ctx.as_ref().ok().map(|c| {
            serde_json::json!({
                "adapter": c.adapter,
                "timestamps": c.timestamps,
                "features": format!("{:?}", c.features),
                "max_storage_buffer_binding_size": c.limits.max_storage_buffer_binding_size,
                "max_buffer_size": c.limits.max_buffer_size,
                "max_texture_dimension_2d": c.limits.max_texture_dimension_2d,
            })
        });
        let out = serde_json::json!({ "backends": format!("{backends:?}"), "adapters": all, "chosen": chosen,
            "error": ctx.as_ref().err().map(|e| e.to_string()) });
        println!("{}", serde_json::to_string_pretty(&out).map_err(runtime)?);
    } else {
        println!("adapters (all backends):");
        for a in &all {
            println!("  - {} [{} {}] driver: {} {}", a.name, a.backend, a.device_type, a.driver, a.driver_info);
        }
        if let Ok(c) = &ctx {
            println!("chosen ({backends:?}): {} [{} {}]", c.adapter.name, c.adapter.backend, c.adapter.device_type);
            println!(
                "  timing: {}",
                if c.timestamps {
                    "GPU timestamp queries"
                } else {
                    "host (adapter lacks trustworthy timestamp queries; TESSERA_TIMING=gpu overrides)"
                }
            );
            println!("  requested features: {:?}", c.features);
            println!("{:#?}", c.limits);
        }
    }
    ctx.map(|_| ()).map_err(runtime)
}
