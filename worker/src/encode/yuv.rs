//! GPU conversion of the stitched frame to planar YUV 4:2:0 (shaders/encode/yuv420.wgsl).

use bytemuck::{Pod, Zeroable};

use crate::gpu::binding::{layout, module, pipeline, storage_entry, texture_entry, uniform_entry};
use crate::gpu::{readback, GpuContext, GpuError};
use crate::render::shaders::{compose, COMMON, YUV420};

/// Mirror of `YuvUniforms` in shaders/shared/common.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct YuvUniforms {
    pub size: [u32; 2],
    pub words: u32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<YuvUniforms>() == 16);

const WORKGROUP: u32 = 256;
const MAX_GROUPS_X: u32 = 65535;

/// Bytes of an I420 frame.
pub fn i420_len(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * (w / 2) * (h / 2)
}

/// The conversion pass for one frame size, with its output and readback buffers.
#[derive(Debug)]
pub struct Yuv420Pass {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    planes: wgpu::Buffer,
    readback: wgpu::Buffer,
    words: u32,
    len: usize,
}

impl Yuv420Pass {
    pub fn new(ctx: &GpuContext, frame: &wgpu::Texture) -> Self {
        let (w, h) = (frame.width(), frame.height());
        let len = i420_len(w, h);
        let words = len.div_ceil(4) as u32;
        let layout = layout(ctx, "yuv420", &[uniform_entry(0), texture_entry(1), storage_entry(2, false)]);
        let module = module(&ctx.device, "yuv420", &compose(&[COMMON, YUV420]));
        let pipeline = pipeline(ctx, &layout, &module, "main");
        let bytes = u64::from(words) * 4;
        let planes = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("yuv planes"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("yuv readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let uniforms = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("yuv uniforms"),
            size: std::mem::size_of::<YuvUniforms>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let u = YuvUniforms { size: [w, h], words, _pad: 0 };
        ctx.queue.write_buffer(&uniforms, 0, bytemuck::bytes_of(&u));
        let view = frame.create_view(&Default::default());
        let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("yuv420"),
            layout: &layout.0,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: uniforms.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(&view) },
                wgpu::BindGroupEntry { binding: 2, resource: planes.as_entire_binding() },
            ],
        });
        Self { pipeline, group, planes, readback, words, len }
    }

    /// Records the conversion into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        let groups = self.words.div_ceil(WORKGROUP);
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        pass.dispatch_workgroups(groups.min(MAX_GROUPS_X), groups.div_ceil(MAX_GROUPS_X), 1);
    }

    /// Records the copy of the planes into the readback buffer.
    pub fn copy_out(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_buffer(&self.planes, 0, &self.readback, 0, u64::from(self.words) * 4);
    }

    /// Reads the planes once submission `after` is done.
    pub fn read(&self, ctx: &GpuContext, after: Option<&wgpu::SubmissionIndex>) -> Result<Vec<u8>, GpuError> {
        let mut data = readback::read_buffer(ctx, &self.readback, u64::from(self.words) * 4, after)?;
        data.truncate(self.len);
        Ok(data)
    }
}

/// CPU reference of the conversion, for tests: I420 from tightly packed RGBA8.
pub fn rgba_to_i420(rgba: &[u8], width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let px = |x: usize, y: usize| {
        let i = (y * w + x) * 4;
        [f32::from(rgba[i]) / 255.0, f32::from(rgba[i + 1]) / 255.0, f32::from(rgba[i + 2]) / 255.0]
    };
    let luma = |c: [f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    let mut out = Vec::with_capacity(i420_len(width, height));
    for y in 0..h {
        for x in 0..w {
            out.push((16.0 + 219.0 * luma(px(x, y))).round() as u8);
        }
    }
    for is_v in [false, true] {
        for y in (0..h).step_by(2) {
            for x in (0..w).step_by(2) {
                let mut c = [0.0f32; 3];
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let p = px(x + dx, y + dy);
                    for k in 0..3 {
                        c[k] += 0.25 * p[k];
                    }
                }
                let yv = luma(c);
                let d = if is_v { (c[0] - yv) / 1.402 } else { (c[2] - yv) / 1.772 };
                out.push((128.0 + 224.0 * d).clamp(16.0, 240.0).round() as u8);
            }
        }
    }
    out
}
