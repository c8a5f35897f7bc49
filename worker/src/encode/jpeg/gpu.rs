//! The GPU half of the JPEG encoder (shaders/encode/jpeg.wgsl): one pass from the
//! stitched frame texture to quantised coefficients, then (with the GPU entropy
//! coder, the default) their Huffman coding on the device ([`GpuEntropy`]), and
//! the readback of the scan, or of the coefficients for the CPU coder.

use std::time::Instant;

use bytemuck::{Pod, Zeroable};

use super::gpu_entropy::{Entropy, GpuEntropy};
use super::jfif::{quant_tables, write_jpeg};
use super::{huffman, McuGrid, COEFFS_PER_MCU};
use crate::gpu::binding::{layout, module, pipeline, storage_entry, texture_entry, uniform_entry};
use crate::gpu::{readback, GpuContext, GpuError};
use crate::render::shaders::{compose, COMMON, JPEG};
use crate::render::stats::ns_since;

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
    entropy: Option<GpuEntropy>,
    pub grid: McuGrid,
    pub quality: u8,
}

/// A frame's JPEG file, and what it took.
#[derive(Debug, Clone)]
pub struct EncodedJpeg {
    pub data: Vec<u8>,
    /// Non-zero AC coefficients (the blank-frame gate).
    pub nonzero_ac: u64,
    /// Bytes read back from the GPU for it.
    pub readback_bytes: u64,
    /// Host ns mapping and copying the readback, and coding / writing the file.
    pub readback_ns: u64,
    pub entropy_ns: u64,
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
        let entropy = (ctx.entropy() == Entropy::Gpu).then(|| GpuEntropy::new(ctx, &coeffs, grid));
        Self { pipeline, group, coeffs, readback, entropy, grid, quality }
    }

    /// Where this pass's entropy coding runs.
    pub fn entropy(&self) -> Entropy {
        if self.entropy.is_some() {
            Entropy::Gpu
        } else {
            Entropy::Cpu
        }
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        // One workgroup per eight 8x8 blocks (shaders/encode/jpeg.wgsl).
        let groups = ((self.grid.mcu_count() * 6) as u32).div_ceil(8);
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        pass.dispatch_workgroups(groups.min(MAX_GROUPS_X), groups.div_ceil(MAX_GROUPS_X), 1);
        if let Some(entropy) = &self.entropy {
            entropy.record(pass);
        }
    }

    pub fn copy_out(&self, encoder: &mut wgpu::CommandEncoder) {
        match &self.entropy {
            Some(entropy) => entropy.copy_out(encoder),
            None => encoder.copy_buffer_to_buffer(&self.coeffs, 0, &self.readback, 0, self.coeffs.size()),
        }
    }

    /// The quantised coefficients, MCU order, zigzag within each block, once
    /// [`JpegPass::copy_out`] (CPU entropy) has been submitted in `after`.
    pub fn read(&self, ctx: &GpuContext, after: Option<&wgpu::SubmissionIndex>) -> Result<Vec<i16>, GpuError> {
        let bytes = readback::read_buffer(ctx, &self.readback, self.coeffs.size(), after)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The frame's JPEG file, once the submission `after` that held the pass
    /// and [`JpegPass::copy_out`] is done: the GPU's scan wrapped in JFIF, or
    /// the coefficients coded on the CPU (`--entropy cpu`, or a frame whose
    /// scan outgrew the GPU coder's scratch).
    pub fn encode(&self, ctx: &GpuContext, after: Option<&wgpu::SubmissionIndex>) -> Result<EncodedJpeg, GpuError> {
        let (mut readback_bytes, start) = (0, Instant::now());
        if let Some(entropy) = &self.entropy {
            if let Some(coded) = entropy.read(ctx, after)? {
                let readback_ns = ns_since(start);
                let start = Instant::now();
                let data = write_jpeg(&coded.scan, self.grid, self.quality, &coded.dht);
                return Ok(EncodedJpeg {
                    data,
                    nonzero_ac: coded.nonzero_ac,
                    readback_bytes: coded.readback_bytes,
                    readback_ns,
                    entropy_ns: ns_since(start),
                });
            }
            tracing::warn!(grid = ?self.grid, "a piece of the scan outgrew the GPU entropy coder's scratch; coding the frame on the CPU");
            readback_bytes += entropy.copied_bytes();
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&self.coeffs, 0, &self.readback, 0, self.coeffs.size());
            let submission = ctx.queue.submit([encoder.finish()]);
            return self.encode_on_cpu(ctx, Some(&submission), readback_bytes, start);
        }
        self.encode_on_cpu(ctx, after, readback_bytes, start)
    }

    fn encode_on_cpu(
        &self,
        ctx: &GpuContext,
        after: Option<&wgpu::SubmissionIndex>,
        readback_bytes: u64,
        start: Instant,
    ) -> Result<EncodedJpeg, GpuError> {
        let coeffs = self.read(ctx, after)?;
        let readback_ns = ns_since(start);
        let start = Instant::now();
        let nonzero_ac = coeffs.chunks_exact(64).map(|b| b[1..].iter().filter(|&&c| c != 0).count() as u64).sum();
        let coeffs = std::sync::Arc::new(coeffs);
        let (tables, scan) = huffman::encode_optimal(&coeffs, self.grid, huffman::default_threads());
        let data = write_jpeg(&scan, self.grid, self.quality, &tables.dht());
        Ok(EncodedJpeg {
            data,
            nonzero_ac,
            readback_bytes: readback_bytes + self.coeffs.size(),
            readback_ns,
            entropy_ns: ns_since(start),
        })
    }
}

fn buffer(ctx: &GpuContext, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
}
