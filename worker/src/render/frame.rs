//! The GPU passes of one frame, recorded per tile: template pass → bloom (two
//! dispatches) → stitch → optional readback or YUV conversion.
//!
//! Every tile owns its buffers (`hdr`, `scratch`), so no binding ever holds more
//! than one tile and tiles could be sent to other queues. All passes of a frame
//! go into one submission with timestamp queries around each pass kind; without
//! timestamp queries each pass kind is submitted and waited on separately and
//! timed on the host.
//!
//! With timestamp queries a frame can also be recorded into a command encoder
//! that other renderers record into too ([`FrameRenderer::record_frame`], then
//! [`FrameRenderer::collect_frame`] after the one shared submission): this is how
//! the worker groups jobs. Each renderer owns its query set, so every job's
//! passes are still timed on their own.
//!
//! Each renderer is one job's: everything it does on the GPU runs inside that
//! job's error scopes ([`GpuContext::scoped`]), so a GPU error comes back from
//! the call whose commands raised it and from no other renderer's. A frame
//! meant to share a submission is best recorded with
//! [`FrameRenderer::record_commands`], into a command buffer of its own: wgpu
//! validates commands when their encoder is finished, and an encoder that
//! several jobs recorded into fails as a whole.

use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use tessera_metering::{Pass, PassTimes, TimingSource};

use super::catalog::{ParamBlock, Template};
use super::resources::{bind_stitch, create_tiles, Pipelines, TileGpu};
use super::stats::{ns_since, HostTimes};
use super::tiler::Tiler;
use crate::encode::jpeg::gpu::JpegPass;
use crate::encode::yuv::Yuv420Pass;
use crate::gpu::timing::{timing_source, GpuTimer};
use crate::gpu::{readback, GpuContext, GpuError};

/// Bytes per pixel of a tile buffer: RGBA as four f16.
pub const TILE_PIXEL_BYTES: u64 = 8;
/// Format of the stitched frame.
pub const FRAME_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

/// Mirror of `FrameUniforms` in shaders/shared/common.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct FrameUniforms {
    pub frame_size: [u32; 2],
    pub tile_origin: [u32; 2],
    pub tile_size: [u32; 2],
    pub frame_index: u32,
    pub variant: u32,
    pub time_s: f32,
    pub seed: u32,
    pub _pad: [u32; 2],
    pub colors: [[f32; 4]; 4],
    pub scalars: [[f32; 4]; 2],
}
const _: () = assert!(std::mem::size_of::<FrameUniforms>() == 144);

/// Mirror of `PostUniforms`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct PostUniforms {
    pub tile_size: [u32; 2],
    pub radius: u32,
    pub _pad0: u32,
    pub threshold: f32,
    pub strength: f32,
    pub exposure: f32,
    pub _pad1: f32,
}
const _: () = assert!(std::mem::size_of::<PostUniforms>() == 32);

/// Mirror of `StitchUniforms`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct StitchUniforms {
    pub region_origin: [u32; 2],
    pub region_size: [u32; 2],
    pub seam: [u32; 2],
    pub has_next: [u32; 2],
    pub blend_half: u32,
    pub _pad: [u32; 3],
    pub rects: [[u32; 4]; 4],
}
const _: () = assert!(std::mem::size_of::<StitchUniforms>() == 112);

/// Everything the passes need to know about a clip, resolved from a job spec.
#[derive(Debug, Clone)]
pub struct RenderPlan {
    pub template: &'static Template,
    pub params: ParamBlock,
    pub tiler: Tiler,
    pub advanced: bool,
    pub seed: u64,
    pub fps: u32,
    /// The clip frame of the plan's frame 0: frame i is timed and seeded as
    /// clip frame `first_frame + i`, so a preview's frames are the whole clip's.
    pub first_frame: u32,
    /// JPEG quality 1–100 for encoded outputs.
    pub quality: u8,
}

/// Errors rendering frames.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("tile ({col}, {row}) needs a {need_mib} MiB buffer but this GPU allows {limit_mib} MiB per binding; split the frame into more tiles (--tiles)")]
    TileTooLarge { col: u32, row: u32, need_mib: u64, limit_mib: u64 },
    #[error("frame {width}x{height} exceeds this GPU's largest texture side, {max} px")]
    FrameTooLarge { width: u32, height: u32, max: u32 },
    #[error("stitch input for tile {index} has {got} pixels, expected {want}")]
    BadTileData { index: usize, got: usize, want: usize },
    #[error("frames can share a submission only where GPU timestamps time each job's passes (this adapter is timed on the host)")]
    GroupNeedsTimestamps,
    #[error("collect_frame called with no recorded frame")]
    NothingRecorded,
    #[error("every slot of the frame ring holds a frame; read one back first")]
    RingFull,
}

/// What to read back after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readback {
    /// Nothing: the frame stays on the GPU (benchmarks).
    None,
    /// Tightly packed RGBA8 rows.
    Rgba8,
    /// Planar YUV 4:2:0 (I420), BT.601 limited range.
    Yuv420,
    /// A baseline JPEG file at the plan's quality, encoded on the GPU.
    Jpeg,
}

/// One rendered frame: the bytes asked for and the GPU time of each pass.
#[derive(Debug, Clone)]
pub struct RenderedFrame {
    pub data: Vec<u8>,
    pub times: PassTimes,
    /// Host time of the frame's stages: recording, waiting for the GPU,
    /// readback, entropy coding / JFIF (mux and ledger are the frame loop's).
    pub host: HostTimes,
    /// For JPEG frames: how many AC coefficients are non-zero (0 means a flat, blank frame).
    pub nonzero_ac: Option<u64>,
    /// Bytes read back from the GPU for the frame's output.
    pub readback_bytes: u64,
}

/// A frame and, when asked for, the RGBA8 frame it was encoded from (the
/// sample a quality gate compares the encoded frame with).
#[derive(Debug, Clone)]
pub struct SampledFrame {
    pub frame: RenderedFrame,
    pub rgba: Option<Vec<u8>>,
}

/// What a recorded frame reads back once its submission is done.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    readback: Readback,
    sample_rgba: bool,
}

/// What [`FrameRenderer::read_with_stats`] read, and what it took.
struct FrameRead {
    data: Vec<u8>,
    nonzero_ac: Option<u64>,
    readback_bytes: u64,
    readback_ns: u64,
    entropy_ns: u64,
}

/// The encode pass a frame's readback needs, made on first use.
#[derive(Debug)]
enum FrameEncoder {
    Yuv(Yuv420Pass),
    Jpeg(JpegPass),
}

/// Renders the frames of one clip; pipelines and buffers are made once.
#[derive(Debug)]
pub struct FrameRenderer<'a> {
    ctx: &'a GpuContext,
    plan: RenderPlan,
    pipelines: std::sync::Arc<Pipelines>,
    tiles: Vec<TileGpu>,
    frame: wgpu::Texture,
    rgba_readback: wgpu::Buffer,
    encoder: Option<FrameEncoder>,
    timer: Option<GpuTimer>,
    recorded: Option<Recorded>,
    /// The submission holding the latest copies out; reads wait for it alone.
    submitted: Option<wgpu::SubmissionIndex>,
    /// Test-only: the next frame's commands carry an invalid copy.
    #[cfg(feature = "fault-injection")]
    poisoned: bool,
}

impl<'a> FrameRenderer<'a> {
    /// Compiles (or reuses) the plan's pipelines and makes its buffers; an
    /// allocation or pipeline that fails is this renderer's error.
    pub fn new(ctx: &'a GpuContext, plan: RenderPlan) -> Result<Self, RenderError> {
        ctx.scoped(|| Self::create(ctx, plan))
    }

    fn create(ctx: &'a GpuContext, plan: RenderPlan) -> Result<Self, RenderError> {
        let (width, height) = (plan.tiler.width, plan.tiler.height);
        let max_side = ctx.limits.max_texture_dimension_2d;
        if width > max_side || height > max_side {
            return Err(RenderError::FrameTooLarge { width, height, max: max_side });
        }
        check_tile_sizes(ctx, &plan.tiler)?;
        let pipelines =
            ctx.cached(&format!("frame-pipelines/{}", plan.template.id()), || Pipelines::new(ctx, plan.template));
        let frame = ctx.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("stitched frame"),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: FRAME_FORMAT,
            usage: wgpu::TextureUsages::STORAGE_BINDING
                | wgpu::TextureUsages::TEXTURE_BINDING
                | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let rgba_readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("rgba readback"),
            size: u64::from(readback::padded_row_bytes(width, 4)) * u64::from(height),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut tiles = create_tiles(ctx, &plan, &pipelines);
        bind_stitch(ctx, &plan.tiler, &pipelines, &mut tiles, &frame);
        let timer = GpuTimer::new(ctx)?;
        Ok(Self {
            ctx,
            plan,
            pipelines,
            tiles,
            frame,
            rgba_readback,
            encoder: None,
            timer,
            recorded: None,
            submitted: None,
            #[cfg(feature = "fault-injection")]
            poisoned: false,
        })
    }

    pub fn plan(&self) -> &RenderPlan {
        &self.plan
    }

    pub fn timing_source(&self) -> TimingSource {
        timing_source(&self.timer)
    }

    /// The stitched frame texture (valid after a render).
    pub fn frame_texture(&self) -> &wgpu::Texture {
        &self.frame
    }

    /// Renders frame `index` of the output (clip frame `first_frame + index`)
    /// and reads back what `readback` asks for.
    pub fn render_frame(&mut self, index: u32, readback: Readback) -> Result<RenderedFrame, RenderError> {
        Ok(self.render_sampled(index, readback, false)?.frame)
    }

    /// Renders frame `index`; with `sample_rgba`, also reads the stitched frame
    /// back as RGBA8 from the same render.
    pub fn render_sampled(
        &mut self,
        index: u32,
        readback: Readback,
        sample_rgba: bool,
    ) -> Result<SampledFrame, RenderError> {
        let ctx = self.ctx;
        ctx.scoped(|| {
            if self.timer.is_some() {
                let start = Instant::now();
                let commands = self.record_commands(index, readback, sample_rgba)?;
                let submission = ctx.queue.submit([commands]);
                let record_ns = ns_since(start);
                let mut sampled = self.collect_frame(&submission)?;
                sampled.frame.host.record_ns += record_ns;
                return Ok(sampled);
            }
            let start = Instant::now();
            self.write_uniforms(index);
            self.prepare_encoder(readback);
            let mut host = HostTimes { record_ns: ns_since(start), ..HostTimes::default() };
            let times = self.submit_host_timed(readback, sample_rgba, &mut host)?;
            self.collect(times, host, Recorded { readback, sample_rgba })
        })
    }

    /// Records frame `index` like [`FrameRenderer::record_frame`], into a
    /// command buffer of its own, finished inside this job's error scopes: a
    /// frame whose commands are invalid fails here, and the buffer returned is
    /// valid to submit beside other jobs' buffers.
    pub fn record_commands(
        &mut self,
        index: u32,
        readback: Readback,
        sample_rgba: bool,
    ) -> Result<wgpu::CommandBuffer, RenderError> {
        let ctx = self.ctx;
        ctx.scoped(|| {
            let mut encoder =
                ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("frame") });
            self.record_frame(&mut encoder, index, readback, sample_rgba)?;
            Ok(encoder.finish())
        })
    }

    /// Records frame `index` (uniforms, passes, copies, timestamp resolve) into
    /// `encoder` for a submission that other renderers' frames may share; after
    /// it is submitted and done, [`FrameRenderer::collect_frame`] reads it back.
    /// Needs GPU timestamps: host timing cannot tell the jobs of one submission apart.
    /// wgpu validates what is recorded here when `encoder` is finished: an
    /// error then goes to the scopes of whoever finishes it, for every job in it.
    pub fn record_frame(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        index: u32,
        readback: Readback,
        sample_rgba: bool,
    ) -> Result<(), RenderError> {
        if self.timer.is_none() {
            return Err(RenderError::GroupNeedsTimestamps);
        }
        self.write_uniforms(index);
        self.prepare_encoder(readback);
        self.record_poison(encoder);
        for &kind in Self::passes(readback) {
            self.record_pass(encoder, kind);
        }
        if sample_rgba && readback != Readback::Rgba8 {
            self.copy_frame_out(encoder);
        }
        self.record_copies(encoder, readback);
        if let Some(timer) = &self.timer {
            timer.resolve(encoder);
        }
        self.recorded = Some(Recorded { readback, sample_rgba });
        Ok(())
    }

    /// Reads back the frame [`FrameRenderer::record_frame`] recorded, with its
    /// pass times, once `submission` (the one that held it) is done.
    /// Errors mapping the readbacks are this job's (caught by its scopes on the calling thread).
    pub fn collect_frame(&mut self, submission: &wgpu::SubmissionIndex) -> Result<SampledFrame, RenderError> {
        let ctx = self.ctx;
        ctx.scoped(|| {
            let recorded = self.recorded.take().ok_or(RenderError::NothingRecorded)?;
            self.submitted = Some(submission.clone());
            let timer = self.timer.as_mut().ok_or(RenderError::GroupNeedsTimestamps)?;
            let start = Instant::now();
            let times = timer.collect(ctx, Some(submission))?;
            let host = HostTimes { wait_ns: ns_since(start), ..HostTimes::default() };
            self.collect(times, host, recorded)
        })
    }

    fn collect(
        &mut self,
        times: PassTimes,
        mut host: HostTimes,
        recorded: Recorded,
    ) -> Result<SampledFrame, RenderError> {
        let Recorded { readback, sample_rgba } = recorded;
        // An RGBA readback is its own sample; other readbacks copy the frame out too.
        let copied = sample_rgba && readback != Readback::Rgba8;
        let start = Instant::now();
        let rgba = if copied { Some(self.read(Readback::Rgba8)?) } else { None };
        host.readback_ns += ns_since(start);
        let read = self.read_with_stats(readback)?;
        host.readback_ns += read.readback_ns;
        host.entropy_ns += read.entropy_ns;
        let rgba = rgba.or_else(|| sample_rgba.then(|| read.data.clone()));
        let frame = RenderedFrame {
            data: read.data,
            times,
            host,
            nonzero_ac: read.nonzero_ac,
            readback_bytes: read.readback_bytes,
        };
        Ok(SampledFrame { frame, rgba })
    }

    /// Encodes the frame already in the frame texture again, without rendering:
    /// what encode benchmarks time. Only `Yuv420` and `Jpeg` run a pass.
    pub fn encode_current(&mut self, readback: Readback) -> Result<RenderedFrame, RenderError> {
        let ctx = self.ctx;
        ctx.scoped(|| self.encode_again(readback))
    }

    fn encode_again(&mut self, readback: Readback) -> Result<RenderedFrame, RenderError> {
        self.prepare_encoder(readback);
        let mut times = PassTimes::default();
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        self.record_pass(&mut encoder, Pass::Encode);
        self.record_copies(&mut encoder, readback);
        if let Some(timer) = &self.timer {
            timer.resolve(&mut encoder);
        }
        let exclusive = self.timer.is_none().then(|| self.ctx.exclusive());
        let start = Instant::now();
        let submission = self.ctx.queue.submit([encoder.finish()]);
        match self.timer.as_mut() {
            Some(timer) => times = timer.collect(self.ctx, Some(&submission))?,
            None => {
                self.ctx.wait_for(Some(&submission))?;
                times.add(Pass::Encode, ns_since(start));
            }
        }
        let wait_ns = ns_since(start);
        drop(exclusive);
        self.submitted = Some(submission);
        let read = self.read_with_stats(readback)?;
        let host =
            HostTimes { wait_ns, readback_ns: read.readback_ns, entropy_ns: read.entropy_ns, ..HostTimes::default() };
        Ok(RenderedFrame {
            data: read.data,
            times,
            host,
            nonzero_ac: read.nonzero_ac,
            readback_bytes: read.readback_bytes,
        })
    }

    fn prepare_encoder(&mut self, readback: Readback) {
        let fits = match (&self.encoder, readback) {
            (Some(FrameEncoder::Yuv(_)), Readback::Yuv420) => true,
            (Some(FrameEncoder::Jpeg(jpeg)), Readback::Jpeg) => jpeg.entropy() == self.ctx.entropy(),
            _ => false,
        };
        if fits {
            return;
        }
        self.encoder = match readback {
            Readback::Yuv420 => Some(FrameEncoder::Yuv(Yuv420Pass::new(self.ctx, &self.frame))),
            Readback::Jpeg => Some(FrameEncoder::Jpeg(JpegPass::new(self.ctx, &self.frame, self.plan.quality))),
            Readback::None | Readback::Rgba8 => self.encoder.take(),
        };
    }

    fn write_uniforms(&self, index: u32) {
        let plan = &self.plan;
        let seed = (plan.seed ^ (plan.seed >> 32)) as u32;
        // Where the frame is on the clip's timeline, not in the output.
        let index = plan.first_frame.saturating_add(index);
        let time_s = (f64::from(index) / f64::from(plan.fps)) as f32;
        let p = &plan.params;
        for t in &self.tiles {
            let u = FrameUniforms {
                frame_size: [plan.tiler.width, plan.tiler.height],
                tile_origin: [t.tile.rect.x, t.tile.rect.y],
                tile_size: [t.tile.rect.width, t.tile.rect.height],
                frame_index: index,
                variant: u32::from(plan.advanced),
                time_s,
                seed,
                _pad: [0; 2],
                colors: p.colors,
                scalars: [
                    [p.scalars[0], p.scalars[1], p.scalars[2], p.scalars[3]],
                    [p.scalars[4], p.scalars[5], p.scalars[6], p.scalars[7]],
                ],
            };
            self.ctx.queue.write_buffer(&t.uniforms, 0, bytemuck::bytes_of(&u));
        }
    }

    fn record_render(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipelines.template);
        for t in &self.tiles {
            pass.set_bind_group(0, &t.template_group, &[]);
            pass.dispatch_workgroups(t.tile.rect.width.div_ceil(8), t.tile.rect.height.div_ceil(8), 1);
        }
        for pipeline in [&self.pipelines.bloom_x, &self.pipelines.bloom_y] {
            pass.set_pipeline(pipeline);
            for t in &self.tiles {
                pass.set_bind_group(0, &t.bloom_group, &[]);
                pass.dispatch_workgroups(t.tile.rect.width.div_ceil(8), t.tile.rect.height.div_ceil(8), 1);
            }
        }
    }

    fn record_stitch(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipelines.stitch);
        for t in &self.tiles {
            let Some(group) = &t.stitch_group else { continue };
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(t.stitch_region.width.div_ceil(8), t.stitch_region.height.div_ceil(8), 1);
        }
    }

    fn record_pass(&mut self, encoder: &mut wgpu::CommandEncoder, kind: Pass) {
        let timestamp_writes = self.timer.as_mut().map(|t| t.writes(kind));
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kind.as_str()), timestamp_writes });
        match kind {
            Pass::Render => self.record_render(&mut pass),
            Pass::Stitch => self.record_stitch(&mut pass),
            Pass::Encode => match &self.encoder {
                Some(FrameEncoder::Yuv(yuv)) => yuv.record(&mut pass),
                Some(FrameEncoder::Jpeg(jpeg)) => jpeg.record(&mut pass),
                None => {}
            },
        }
    }

    fn passes(readback: Readback) -> &'static [Pass] {
        match readback {
            Readback::Yuv420 | Readback::Jpeg => &[Pass::Render, Pass::Stitch, Pass::Encode],
            _ => &[Pass::Render, Pass::Stitch],
        }
    }

    fn record_copies(&self, encoder: &mut wgpu::CommandEncoder, readback: Readback) {
        match readback {
            Readback::None => {}
            Readback::Rgba8 => self.copy_frame_out(encoder),
            Readback::Yuv420 | Readback::Jpeg => match &self.encoder {
                Some(FrameEncoder::Yuv(yuv)) => yuv.copy_out(encoder),
                Some(FrameEncoder::Jpeg(jpeg)) => jpeg.copy_out(encoder),
                None => {}
            },
        }
    }

    /// Without timestamp queries: one submission per pass kind, timed from
    /// submit to completion on the host, with the GPU to itself
    /// ([`GpuContext::exclusive`]) until the frame's copies are done too.
    /// Recording goes to `host.record_ns`, submit-to-completion to `wait_ns`.
    fn submit_host_timed(
        &mut self,
        readback: Readback,
        sample_rgba: bool,
        host: &mut HostTimes,
    ) -> Result<PassTimes, RenderError> {
        let mut times = PassTimes::default();
        let _exclusive = self.ctx.exclusive();
        for &kind in Self::passes(readback) {
            let recording = Instant::now();
            let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
            self.record_poison(&mut encoder);
            self.record_pass(&mut encoder, kind);
            let commands = encoder.finish();
            host.record_ns += ns_since(recording);
            let start = Instant::now();
            let submission = self.ctx.queue.submit([commands]);
            self.ctx.wait_for(Some(&submission))?;
            let ns = ns_since(start);
            times.add(kind, ns);
            host.wait_ns += ns;
        }
        let recording = Instant::now();
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        if sample_rgba && readback != Readback::Rgba8 {
            self.copy_frame_out(&mut encoder);
        }
        self.record_copies(&mut encoder, readback);
        let commands = encoder.finish();
        host.record_ns += ns_since(recording);
        let start = Instant::now();
        let submission = self.ctx.queue.submit([commands]);
        self.ctx.wait_for(Some(&submission))?;
        host.wait_ns += ns_since(start);
        self.submitted = Some(submission);
        Ok(times)
    }

    fn copy_frame_out(&self, encoder: &mut wgpu::CommandEncoder) {
        let (w, h) = (self.plan.tiler.width, self.plan.tiler.height);
        encoder.copy_texture_to_buffer(
            self.frame.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &self.rgba_readback,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(readback::padded_row_bytes(w, 4)),
                    rows_per_image: Some(h),
                },
            },
            wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
        );
    }

    /// Reads back, and for JPEG counts the non-zero AC coefficients on the
    /// way; also says how many bytes came back from the GPU.
    fn read_with_stats(&self, readback: Readback) -> Result<FrameRead, RenderError> {
        if let (Readback::Jpeg, Some(FrameEncoder::Jpeg(jpeg))) = (readback, &self.encoder) {
            let e = jpeg.encode(self.ctx, self.submitted.as_ref())?;
            return Ok(FrameRead {
                data: e.data,
                nonzero_ac: Some(e.nonzero_ac),
                readback_bytes: e.readback_bytes,
                readback_ns: e.readback_ns,
                entropy_ns: e.entropy_ns,
            });
        }
        let start = Instant::now();
        let data = self.read(readback)?;
        let readback_bytes = data.len() as u64;
        Ok(FrameRead { data, nonzero_ac: None, readback_bytes, readback_ns: ns_since(start), entropy_ns: 0 })
    }

    fn read(&self, readback: Readback) -> Result<Vec<u8>, RenderError> {
        let (w, h) = (self.plan.tiler.width, self.plan.tiler.height);
        match readback {
            Readback::None => {
                self.ctx.wait_for(self.submitted.as_ref())?;
                Ok(Vec::new())
            }
            Readback::Rgba8 => {
                let size = u64::from(readback::padded_row_bytes(w, 4)) * u64::from(h);
                let padded = readback::read_buffer(self.ctx, &self.rgba_readback, size, self.submitted.as_ref())?;
                Ok(readback::unpad_rows(&padded, w, h, 4))
            }
            Readback::Yuv420 | Readback::Jpeg => match &self.encoder {
                Some(FrameEncoder::Yuv(yuv)) => Ok(yuv.read(self.ctx, self.submitted.as_ref())?),
                Some(FrameEncoder::Jpeg(jpeg)) => Ok(jpeg.encode(self.ctx, self.submitted.as_ref())?.data),
                None => Ok(Vec::new()),
            },
        }
    }

    /// Runs only the stitch pass on given tile contents (RGBA per pixel of each
    /// tile's rect, tiles in [`Tiler::tiles`] order) and returns the RGBA8 frame.
    /// This is how the GPU stitch is diffed against [`super::stitch::cpu_stitch`].
    pub fn stitch_tiles(&mut self, contents: &[Vec<[f32; 4]>]) -> Result<Vec<u8>, RenderError> {
        let ctx = self.ctx;
        ctx.scoped(|| self.stitch_only(contents))
    }

    fn stitch_only(&mut self, contents: &[Vec<[f32; 4]>]) -> Result<Vec<u8>, RenderError> {
        for (index, (t, data)) in self.tiles.iter().zip(contents).enumerate() {
            let want = t.tile.rect.area() as usize;
            if data.len() != want {
                return Err(RenderError::BadTileData { index, got: data.len(), want });
            }
            let packed: Vec<u16> = data.iter().flatten().map(|&v| half::f16::from_f32(v).to_bits()).collect();
            self.ctx.queue.write_buffer(&t.hdr, 0, bytemuck::cast_slice(&packed));
        }
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.record_stitch(&mut pass);
        }
        self.copy_frame_out(&mut encoder);
        self.submitted = Some(self.ctx.queue.submit([encoder.finish()]));
        self.read(Readback::Rgba8)
    }

    /// Test-only GPU fault: the next frame's commands carry a buffer copy past
    /// the end of its buffers, a genuine wgpu validation error raised when
    /// the encoder holding it is finished. Compiled only with `fault-injection`.
    #[cfg(feature = "fault-injection")]
    pub fn poison_next_frame(&mut self) {
        self.poisoned = true;
    }

    #[cfg(feature = "fault-injection")]
    fn record_poison(&mut self, encoder: &mut wgpu::CommandEncoder) {
        if !std::mem::take(&mut self.poisoned) {
            return;
        }
        let buffer = |label, usage| {
            self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 4,
                usage,
                mapped_at_creation: false,
            })
        };
        let src = buffer("injected fault: source", wgpu::BufferUsages::COPY_SRC);
        let dst = buffer("injected fault: destination", wgpu::BufferUsages::COPY_DST);
        encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, 256);
    }

    #[cfg(not(feature = "fault-injection"))]
    fn record_poison(&mut self, _encoder: &mut wgpu::CommandEncoder) {}
}

fn check_tile_sizes(ctx: &GpuContext, tiler: &Tiler) -> Result<(), RenderError> {
    let limit = ctx.max_binding_bytes();
    for t in tiler.tiles() {
        let need = t.rect.area() * TILE_PIXEL_BYTES;
        if need > limit {
            return Err(RenderError::TileTooLarge {
                col: t.col,
                row: t.row,
                need_mib: need.div_ceil(1 << 20),
                limit_mib: limit >> 20,
            });
        }
    }
    Ok(())
}
