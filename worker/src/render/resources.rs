//! The GPU resources of a frame renderer: the compiled pipelines of a template
//! (shared by every clip of that template version) and each tile's buffers and
//! bind groups, including the stitch bindings to its neighbours.

use super::catalog::Template;
use super::frame::{FrameUniforms, PostUniforms, RenderPlan, StitchUniforms, FRAME_FORMAT, TILE_PIXEL_BYTES};
use super::tiler::{Tile, Tiler, POST_RADIUS};
use crate::gpu::binding::{layout, module, pipeline, storage_entry, uniform_entry};
use crate::gpu::GpuContext;

#[derive(Debug)]
pub(super) struct TileGpu {
    pub(super) tile: Tile,
    pub(super) uniforms: wgpu::Buffer,
    pub(super) hdr: wgpu::Buffer,
    pub(super) template_group: wgpu::BindGroup,
    pub(super) bloom_group: wgpu::BindGroup,
    pub(super) stitch_group: Option<wgpu::BindGroup>,
    pub(super) stitch_region: super::TileRect,
}

#[derive(Debug)]
pub(super) struct Pipelines {
    pub(super) template: wgpu::ComputePipeline,
    pub(super) bloom_x: wgpu::ComputePipeline,
    pub(super) bloom_y: wgpu::ComputePipeline,
    pub(super) stitch: wgpu::ComputePipeline,
}

impl Pipelines {
    pub(super) fn new(ctx: &GpuContext, template: &Template) -> Self {
        use super::shaders::{compose, BLOOM, COMMON, STITCH};
        let d = &ctx.device;
        let template_layout = layout(ctx, "template", &[uniform_entry(0), storage_entry(1, false)]);
        let bloom_layout = layout(ctx, "bloom", &[uniform_entry(0), storage_entry(1, false), storage_entry(2, false)]);
        let mut stitch_entries = vec![uniform_entry(0)];
        stitch_entries.extend((1..=4).map(|b| storage_entry(b, true)));
        stitch_entries.push(wgpu::BindGroupLayoutEntry {
            binding: 5,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::StorageTexture {
                access: wgpu::StorageTextureAccess::WriteOnly,
                format: FRAME_FORMAT,
                view_dimension: wgpu::TextureViewDimension::D2,
            },
            count: None,
        });
        let stitch_layout = layout(ctx, "stitch", &stitch_entries);
        let template_module = module(d, &template.id(), &template.shader_source());
        let bloom_module = module(d, "bloom", &compose(&[COMMON, BLOOM]));
        let stitch_module = module(d, "stitch", &compose(&[COMMON, STITCH]));
        Self {
            template: pipeline(ctx, &template_layout, &template_module, "main"),
            bloom_x: pipeline(ctx, &bloom_layout, &bloom_module, "bright_blur_x"),
            bloom_y: pipeline(ctx, &bloom_layout, &bloom_module, "composite_y"),
            stitch: pipeline(ctx, &stitch_layout, &stitch_module, "main"),
        }
    }
}

fn buffer(ctx: &GpuContext, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
}

pub(super) fn create_tiles(ctx: &GpuContext, plan: &RenderPlan, pipelines: &Pipelines) -> Vec<TileGpu> {
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let uniform = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
    plan.tiler
        .tiles()
        .into_iter()
        .map(|tile| {
            let bytes = tile.rect.area() * TILE_PIXEL_BYTES;
            let uniforms = buffer(ctx, "frame uniforms", std::mem::size_of::<FrameUniforms>() as u64, uniform);
            let hdr = buffer(ctx, "tile hdr", bytes, storage);
            let scratch = buffer(ctx, "tile scratch", bytes, storage);
            let post = PostUniforms {
                tile_size: [tile.rect.width, tile.rect.height],
                radius: POST_RADIUS,
                _pad0: 0,
                threshold: 0.9,
                strength: 0.6,
                exposure: 1.0,
                _pad1: 0.0,
            };
            let post_buf = buffer(ctx, "post uniforms", std::mem::size_of::<PostUniforms>() as u64, uniform);
            ctx.queue.write_buffer(&post_buf, 0, bytemuck::bytes_of(&post));
            let template_group = bind(ctx, &pipelines.template, &[&uniforms, &hdr]);
            let bloom_group = bind(ctx, &pipelines.bloom_x, &[&post_buf, &hdr, &scratch]);
            let stitch_region = plan.tiler.stitch_region(tile.col, tile.row);
            TileGpu { tile, uniforms, hdr, template_group, bloom_group, stitch_group: None, stitch_region }
        })
        .collect()
}

fn bind(ctx: &GpuContext, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

pub(super) fn bind_stitch(
    ctx: &GpuContext,
    tiler: &Tiler,
    pipelines: &Pipelines,
    tiles: &mut [TileGpu],
    frame: &wgpu::Texture,
) {
    let view = frame.create_view(&Default::default());
    let uniform = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
    for i in 0..tiles.len() {
        let t = tiles[i].tile;
        let has_right = t.col + 1 < tiler.cols;
        let has_below = t.row + 1 < tiler.rows;
        // Absent neighbours get weight zero; the tile itself stands in for their binding.
        let pick = |dc: u32, dr: u32, present: bool| if present { tiler.index(t.col + dc, t.row + dr) } else { i };
        let neighbours = [i, pick(1, 0, has_right), pick(0, 1, has_below), pick(1, 1, has_right && has_below)];
        let rect = |k: usize| {
            let r = tiles[neighbours[k]].tile.rect;
            [r.x, r.y, r.width, r.height]
        };
        let region = tiles[i].stitch_region;
        let u = StitchUniforms {
            region_origin: [region.x, region.y],
            region_size: [region.width, region.height],
            seam: [tiler.xs[t.col as usize + 1], tiler.ys[t.row as usize + 1]],
            has_next: [u32::from(has_right), u32::from(has_below)],
            blend_half: tiler.blend_half(),
            _pad: [0; 3],
            rects: [rect(0), rect(1), rect(2), rect(3)],
        };
        let ubuf = buffer(ctx, "stitch uniforms", std::mem::size_of::<StitchUniforms>() as u64, uniform);
        ctx.queue.write_buffer(&ubuf, 0, bytemuck::bytes_of(&u));
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: ubuf.as_entire_binding() }];
        for (k, &n) in neighbours.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: k as u32 + 1, resource: tiles[n].hdr.as_entire_binding() });
        }
        entries.push(wgpu::BindGroupEntry { binding: 5, resource: wgpu::BindingResource::TextureView(&view) });
        let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("stitch"),
            layout: &pipelines.stitch.get_bind_group_layout(0),
            entries: &entries,
        });
        tiles[i].stitch_group = Some(group);
    }
}
