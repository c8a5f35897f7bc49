//! The GPU half of entropy coding (shaders/encode/huffman.wgsl): the JPEG
//! pass's symbols are counted, optimal tables built from the counts and the
//! coefficients Huffman-coded with them on the device, a piece of
//! [`PIECE_MCUS`] MCUs per invocation, the pieces of each restart interval
//! joined and byte-stuffed, the intervals placed by a prefix sum and
//! compacted with their RST markers, so only the tables (the DHT body), the finished scan and three
//! header words are read back. [`super::huffman`] and [`super::optimal`] are
//! the reference: the same bytes for the same coefficients, and the fallback
//! for a frame whose piece outgrows its scratch (never seen on real
//! pictures; the frame is then coded on the CPU).

use std::sync::atomic::{AtomicU64, Ordering};

use bytemuck::{Pod, Zeroable};

use super::optimal::SYMBOLS;
use super::{McuGrid, COEFFS_PER_MCU, PIECE_MCUS};
use crate::gpu::binding::{layout, module, pipeline, storage_entry, uniform_entry};
use crate::gpu::{readback, GpuContext, GpuError};
use crate::render::shaders::{compose, COMMON, HUFFMAN};

/// Mirror of `HuffmanUniforms` in shaders/shared/common.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct HuffmanUniforms {
    pub mcu_count: u32,
    pub restart: u32,
    pub segments: u32,
    pub cap_words: u32,
}
const _: () = assert!(size_of::<HuffmanUniforms>() == 16);

/// What `scan[0]` holds when a piece or an interval outgrew its scratch.
const OVERFLOW: u32 = u32::MAX;
/// Header words before what is read back: its length in bytes (DHT body and
/// scan), the non-zero AC count, the DHT body's length.
const HEADER_WORDS: u64 = 3;
/// Words per table after the counts in the `tables` buffer (see the shader).
const TABLE_WORDS: u64 = 273;
/// Tables of a frame: DC and AC, luma and chroma.
const TABLES: u32 = 4;
/// Invocations per workgroup of `count_segments`, `code_segments` and
/// `join_segments`.
const CODE_GROUP: u32 = 64;

/// Where the entropy coder runs (`--entropy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Entropy {
    /// Huffman coding on the GPU; only the compressed scan is read back.
    #[default]
    Gpu,
    /// The coefficients are read back and coded on the CPU (the reference).
    Cpu,
}

impl Entropy {
    pub fn as_str(self) -> &'static str {
        match self {
            Entropy::Gpu => "gpu",
            Entropy::Cpu => "cpu",
        }
    }
}

/// A frame's scan as the GPU coded it, and its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodedScan {
    /// The DHT segment's body ([`super::optimal::FrameTables::dht`]).
    pub dht: Vec<u8>,
    pub scan: Vec<u8>,
    /// Non-zero AC coefficients of the frame (the blank-frame gate).
    pub nonzero_ac: u64,
    /// Bytes read back for it (header words included).
    pub readback_bytes: u64,
}

/// The entropy passes of one frame size, over the JPEG pass's coefficients.
#[derive(Debug)]
pub struct GpuEntropy {
    count: std::sync::Arc<wgpu::ComputePipeline>,
    build: std::sync::Arc<wgpu::ComputePipeline>,
    code: std::sync::Arc<wgpu::ComputePipeline>,
    join: std::sync::Arc<wgpu::ComputePipeline>,
    place: std::sync::Arc<wgpu::ComputePipeline>,
    compact: std::sync::Arc<wgpu::ComputePipeline>,
    group: wgpu::BindGroup,
    compact_group: wgpu::BindGroup,
    scan: wgpu::Buffer,
    dispatch: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Restart intervals of the frame, and pieces (invocations) coding them.
    segments: u32,
    pieces: u32,
    /// Bytes the last frame's scan took (header included), which sizes the
    /// next frame's copy; and the bytes the current frame's copy moves.
    last_bytes: AtomicU64,
    copied: AtomicU64,
}

impl GpuEntropy {
    /// The passes for `grid`, each piece given as many bytes of scratch as
    /// its coefficients take (i16 each): more than any picture codes to, even
    /// with the standard tables; noise past it falls back to the CPU.
    pub fn new(ctx: &GpuContext, coeffs: &wgpu::Buffer, grid: McuGrid) -> Self {
        let cap_words = PIECE_MCUS * (COEFFS_PER_MCU as u32) / 2;
        Self::with_scratch(ctx, coeffs, grid, cap_words)
    }

    /// The passes with `cap_words` words of scratch per piece (and as many
    /// per piece of an interval for the interval's stuffed bytes).
    pub fn with_scratch(ctx: &GpuContext, coeffs: &wgpu::Buffer, grid: McuGrid, cap_words: u32) -> Self {
        let entries = [
            uniform_entry(0),
            storage_entry(1, true),
            storage_entry(2, false),
            storage_entry(3, false),
            storage_entry(4, false),
            storage_entry(5, false),
            storage_entry(6, false),
            storage_entry(7, false),
            storage_entry(8, false),
        ];
        // The compaction is dispatched from `dispatch` (binding 7): its bind
        // group must not hold that buffer writable (one usage per buffer in a
        // dispatch).
        let without_dispatch = |e: &[wgpu::BindGroupLayoutEntry]| -> Vec<wgpu::BindGroupLayoutEntry> {
            e.iter().filter(|e| e.binding != 7).copied().collect()
        };
        let layouts = [layout(ctx, "huffman", &entries), layout(ctx, "huffman compact", &without_dispatch(&entries))];
        let make = |entry: &'static str, l: usize| {
            ctx.cached(&format!("encode/huffman/{entry}"), || {
                let module = module(&ctx.device, "huffman", &compose(&[COMMON, HUFFMAN]));
                pipeline(ctx, &layouts[l], &module, entry)
            })
        };
        let (count, build) = (make("count_segments", 0), make("build_tables", 0));
        let (code, join) = (make("code_segments", 0), make("join_segments", 0));
        let (place, compact) = (make("place_segments", 0), make("compact", 1));
        let restart = u32::from(grid.restart_interval());
        let mcus = grid.mcu_count() as u32;
        let segments = mcus.div_ceil(restart);
        let pieces = segments * restart.div_ceil(PIECE_MCUS);
        // The intervals' stuffed bytes, `cap_words` per piece of theirs.
        let scratch_words = u64::from(pieces) * u64::from(cap_words);
        // Header, the DHT body (at most 4 × 273 bytes) and the scan (its
        // intervals' bytes and their RST markers); before the compaction,
        // the pieces' bits, which take no more.
        let scan_words = HEADER_WORDS + u64::from(TABLES) * TABLE_WORDS / 4 + 1 + scratch_words + u64::from(segments);
        let usage = wgpu::BufferUsages::STORAGE;
        let u = HuffmanUniforms { mcu_count: mcus, restart, segments, cap_words };
        let uniforms = buffer(ctx, "huffman uniforms", 16, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        ctx.queue.write_buffer(&uniforms, 0, bytemuck::bytes_of(&u));
        let codes = buffer(ctx, "huffman codes", (SYMBOLS * 4) as u64, usage);
        // Counts start at zero (buffers are created zeroed); each frame's
        // `place_segments` clears them for the next.
        let tables = buffer(ctx, "huffman tables", (SYMBOLS as u64 + u64::from(TABLES) * TABLE_WORDS) * 4, usage);
        let scratch = buffer(ctx, "huffman scratch", scratch_words * 4, usage);
        let sizes = buffer(ctx, "huffman sizes", (u64::from(segments) + u64::from(pieces)) * 8, usage);
        let offsets = buffer(ctx, "huffman offsets", (u64::from(segments) + 1) * 4, usage);
        let scan = buffer(ctx, "jpeg scan", scan_words * 4, usage | wgpu::BufferUsages::COPY_SRC);
        let dispatch = buffer(ctx, "huffman dispatch", 12, usage | wgpu::BufferUsages::INDIRECT);
        let readback = buffer(
            ctx,
            "jpeg scan readback",
            scan_words * 4,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let bound = [&uniforms, coeffs, &codes, &scratch, &sizes, &offsets, &scan, &dispatch, &tables];
        let entries: Vec<wgpu::BindGroupEntry<'_>> = bound
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("huffman"),
            layout: &code.get_bind_group_layout(0),
            entries: &entries,
        });
        let compact_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("huffman compact"),
            layout: &compact.get_bind_group_layout(0),
            entries: &entries.iter().filter(|e| e.binding != 7).cloned().collect::<Vec<_>>(),
        });
        // The first frame's copy: 1/32 byte per coefficient (a 4K frame at
        // quality 90 codes to about 1/50, at 95 to 1/32); a frame that takes
        // more costs one more copy. Later frames follow the one before.
        let first = (HEADER_WORDS * 4 + grid.mcu_count() as u64 * COEFFS_PER_MCU as u64 / 32).min(scan_words * 4);
        Self {
            count,
            build,
            code,
            join,
            place,
            compact,
            group,
            compact_group,
            scan,
            dispatch,
            readback,
            segments,
            pieces,
            last_bytes: AtomicU64::new(first),
            copied: AtomicU64::new(0),
        }
    }

    /// Records the passes, after the JPEG pass, in the same compute pass:
    /// count, build the tables, code, join, place, compact.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_bind_group(0, &self.group, &[]);
        pass.set_pipeline(&self.count);
        pass.dispatch_workgroups(self.pieces.div_ceil(CODE_GROUP), 1, 1);
        pass.set_pipeline(&self.build);
        pass.dispatch_workgroups(TABLES, 1, 1);
        pass.set_pipeline(&self.code);
        pass.dispatch_workgroups(self.pieces.div_ceil(CODE_GROUP), 1, 1);
        pass.set_pipeline(&self.join);
        pass.dispatch_workgroups(self.segments.div_ceil(CODE_GROUP), 1, 1);
        pass.set_pipeline(&self.place);
        pass.dispatch_workgroups(1, 1, 1);
        pass.set_pipeline(&self.compact);
        pass.set_bind_group(0, &self.compact_group, &[]);
        pass.dispatch_workgroups_indirect(&self.dispatch, 0);
    }

    /// Copies the header and as much of the scan as the last frame's size
    /// suggests, and a margin of 3 % and 1 KiB; [`GpuEntropy::read`] fetches
    /// any rest (a frame that grew past the margin costs a second copy).
    pub fn copy_out(&self, encoder: &mut wgpu::CommandEncoder) {
        let last = self.last_bytes.load(Ordering::Relaxed);
        let want = (last + last / 32 + 1024).next_multiple_of(4).min(self.scan.size());
        encoder.copy_buffer_to_buffer(&self.scan, 0, &self.readback, 0, want);
        self.copied.store(want, Ordering::Relaxed);
    }

    /// Bytes the current frame's first copy moves (header included).
    pub fn copied_bytes(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }

    /// The frame's scan, or `None` when a piece or an interval overflowed its scratch.
    pub fn read(&self, ctx: &GpuContext, after: Option<&wgpu::SubmissionIndex>) -> Result<Option<CodedScan>, GpuError> {
        let copied = self.copied.load(Ordering::Relaxed);
        let mut bytes = readback::read_buffer(ctx, &self.readback, copied, after)?;
        let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (total, nonzero, dht) = (word(0), word(4), word(8));
        if total == OVERFLOW {
            return Ok(None);
        }
        let needed = (HEADER_WORDS * 4 + u64::from(total)).next_multiple_of(4);
        if needed > self.scan.size() {
            return Err(GpuError::Readback(format!("the scan claims {total} bytes, past its buffer")));
        }
        let mut readback_bytes = copied;
        if needed > copied {
            // Larger than the last frame by more than the margin: fetch the rest.
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&self.scan, copied, &self.readback, copied, needed - copied);
            let submission = ctx.queue.submit([encoder.finish()]);
            bytes = readback::read_buffer(ctx, &self.readback, needed, Some(&submission))?;
            readback_bytes += needed - copied;
        }
        self.last_bytes.store(needed, Ordering::Relaxed);
        if dht > total {
            return Err(GpuError::Readback(format!("the tables claim {dht} of the scan's {total} bytes")));
        }
        let start = (HEADER_WORDS * 4) as usize;
        bytes.truncate(start + total as usize);
        bytes.drain(..start);
        let scan = bytes.split_off(dht as usize);
        Ok(Some(CodedScan { dht: bytes, scan, nonzero_ac: u64::from(nonzero), readback_bytes }))
    }
}

fn buffer(ctx: &GpuContext, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
}
