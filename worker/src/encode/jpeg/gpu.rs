//! The GPU half of the JPEG encoder (shaders/encode/jpeg.wgsl): one pass from the
//! stitched frame texture to quantised coefficients, and their readback.

use bytemuck::{Pod, Zeroable};

use super::jfif::quant_tables;
use super::{McuGrid, COEFFS_PER_MCU};
use crate::gpu::binding::{layout, module, pipeline, storage_entry, texture_entry, uniform_entry};
use crate::gpu::{readback, GpuContext, GpuError};
use crate::render::shaders::{compose, COMMON, JPEG};

/// Mirror of `JpegUniforms` in shaders/shared/common.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct JpegUniforms {
    pub size: [u32; 2],
    pub mcus_x: u32,
    pub mcu_count: u32,
    pub quant: [[f32; 4]; 32],
}
const _: () = assert!(size_of::<JpegUniforms>() == 528);

const MAX_GROUPS_X: u32 = 65535;

/// The encode pass for one frame size and quality.
#[derive(Debug)]
pub struct JpegPass {
    pipeline: std::sync::Arc<wgpu::ComputePipeline>,
    group: wgpu::BindGroup,
    coeffs: wgpu::Buffer,
    readback: wgpu::Buffer,
    pub grid: McuGrid,
    pub quality: u8,
}

impl JpegPass {
    pub fn new(ctx: &GpuContext, frame: &wgpu::Texture, quality: u8) -> Self {
        let grid = McuGrid::new(frame.width(), frame.height());
        let layout = layout(ctx, "jpeg", &[uniform_entry(0), texture_entry(1), storage_entry(2, false)]);
        let pipeline = ctx.cached("encode/jpeg", || {
            let module = module(&ctx.device, "jpeg", &compose(&[COMMON, JPEG]));
            pipeline(ctx, &layout, &module, "main")
        });
        let bytes = (grid.mcu_count() * COEFFS_PER_MCU * 2) as u64;
        let coeffs =
            buffer(ctx, "jpeg coefficients", bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
        let readback = buffer(ctx, "jpeg readback", bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let uniforms = buffer(
            ctx,
            "jpeg uniforms",
            size_of::<JpegUniforms>() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        let mut quant = [[0f32; 4]; 32];
        for (t, table) in quant_tables(quality).iter().enumerate() {
            for (i, &q) in table.iter().enumerate() {
                quant[t * 16 + i / 4][i % 4] = f32::from(q);
            }
        }
        let u = JpegUniforms {
            size: [grid.width, grid.height],
            mcus_x: grid.mcus_x,
            mcu_count: grid.mcu_count() as u32,
            quant,
        };
        ctx.queue.write_buffer(&uniforms, 0, bytemuck::bytes_of(&u));
        let view = frame.create_view(&Default::default());
        let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("jpeg"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: uniforms.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(&view) },
                wgpu::BindGroupEntry { binding: 2, resource: coeffs.as_entire_binding() },
            ],
        });
        Self { pipeline, group, coeffs, readback, grid, quality }
    }

    /// Bytes read back per frame.
    pub fn readback_bytes(&self) -> u64 {
        self.coeffs.size()
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        // One workgroup per eight 8x8 blocks (shaders/encode/jpeg.wgsl).
        let groups = ((self.grid.mcu_count() * 6) as u32).div_ceil(8);
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        pass.dispatch_workgroups(groups.min(MAX_GROUPS_X), groups.div_ceil(MAX_GROUPS_X), 1);
    }

    pub fn copy_out(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_buffer(&self.coeffs, 0, &self.readback, 0, self.coeffs.size());
    }

    /// The quantised coefficients, MCU order, zigzag within each block.
    pub fn read(&self, ctx: &GpuContext, after: Option<&wgpu::SubmissionIndex>) -> Result<Vec<i16>, GpuError> {
        let bytes = readback::read_buffer(ctx, &self.readback, self.coeffs.size(), after)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

fn buffer(ctx: &GpuContext, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
}
