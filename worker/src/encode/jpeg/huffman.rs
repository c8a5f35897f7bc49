//! Baseline Huffman coding of quantised blocks, one restart segment of
//! [`super::RESTART_MCUS`] MCUs at a time, segments on parallel threads: the
//! reference the GPU coder (shaders/encode/huffman.wgsl) matches byte for
//! byte, segments split among the jobs of the host pool. A frame is walked twice, as on the GPU: once to count its symbols
//! ([`histogram`]), from which [`super::optimal`] makes its tables, and once
//! to code it with them ([`encode_scan`]).

use std::ops::Range;
use std::sync::Arc;

use super::optimal::{FrameTables, SYMBOLS, TABLE_BASE};
use super::{McuGrid, COEFFS_PER_MCU};
use crate::host_pool::HostPool;

/// Where a walk over the blocks sends what it finds: a symbol (its index in
/// the histogram / code table) and a symbol's extra bits.
trait Sink {
    fn symbol(&mut self, index: usize);
    fn extra(&mut self, bits: u32, len: u32);
}

/// Codes symbols with a code table (code | length << 16 per symbol).
struct Coder<'a> {
    codes: &'a [u32],
    out: BitWriter,
}

impl Sink for Coder<'_> {
    #[inline]
    fn symbol(&mut self, index: usize) {
        let entry = self.codes[index];
        debug_assert!(entry >> 16 > 0, "symbol {index} has no code in the frame's tables");
        self.out.put(entry & 0xffff, entry >> 16);
    }

    #[inline]
    fn extra(&mut self, bits: u32, len: u32) {
        self.out.put(bits, len);
    }
}

/// Counts symbols.
struct Counter(Vec<u32>);

impl Sink for Counter {
    #[inline]
    fn symbol(&mut self, index: usize) {
        self.0[index] += 1;
    }

    #[inline]
    fn extra(&mut self, _: u32, _: u32) {}
}

/// Writes bits MSB first, stuffing a zero byte after every 0xFF.
#[derive(Debug, Default)]
pub struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    pub fn with_capacity(bytes: usize) -> Self {
        Self { out: Vec::with_capacity(bytes), acc: 0, n: 0 }
    }

    #[inline]
    pub fn put(&mut self, bits: u32, len: u32) {
        debug_assert!(len <= 24);
        self.acc = (self.acc << len) | u64::from(bits & ((1u32 << len) - 1));
        self.n += len;
        while self.n >= 8 {
            self.n -= 8;
            let byte = (self.acc >> self.n) as u8;
            self.out.push(byte);
            if byte == 0xFF {
                self.out.push(0);
            }
        }
    }

    /// Pads the last byte with 1-bits, as a segment's end requires.
    pub fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            let pad = 8 - self.n;
            self.put((1 << pad) - 1, pad);
        }
        self.out
    }
}

/// Bits needed for `v`'s magnitude: JPEG's category.
#[inline]
fn category(v: i32) -> u32 {
    32 - v.unsigned_abs().leading_zeros()
}

/// The category's extra bits: `v` itself, or `v - 1` in one's complement for negatives.
#[inline]
fn extra_bits(v: i32, cat: u32) -> u32 {
    let bits = if v < 0 { v - 1 } else { v };
    (bits as u32) & ((1u32 << cat) - 1)
}

/// Walks one block (64 coefficients, zigzag order) with table `table` (0
/// luma, 1 chroma); returns its DC for prediction.
fn walk_block(sink: &mut impl Sink, block: &[i16], prev_dc: i32, table: usize) -> i32 {
    let (dc_base, ac_base) = (TABLE_BASE[table], TABLE_BASE[2 + table]);
    let dc = i32::from(block[0]);
    let diff = dc - prev_dc;
    let cat = category(diff);
    sink.symbol(dc_base + cat as usize);
    if cat > 0 {
        sink.extra(extra_bits(diff, cat), cat);
    }
    let mut run = 0u32;
    for &coef in &block[1..] {
        let v = i32::from(coef);
        if v == 0 {
            run += 1;
            continue;
        }
        while run > 15 {
            sink.symbol(ac_base + 0xF0);
            run -= 16;
        }
        let cat = category(v);
        sink.symbol(ac_base + ((run << 4) | cat) as usize);
        sink.extra(extra_bits(v, cat), cat);
        run = 0;
    }
    if run > 0 {
        sink.symbol(ac_base);
    }
    dc
}

/// Walks restart segment `seg`. DC prediction starts from zero.
fn walk_segment(sink: &mut impl Sink, coeffs: &[i16], grid: McuGrid, seg: usize) {
    let per_segment = usize::from(grid.restart_interval()) * COEFFS_PER_MCU;
    let start = seg * per_segment;
    let end = (start + per_segment).min(grid.mcu_count() * COEFFS_PER_MCU);
    let mut pred = [0i32; 3];
    for mcu in coeffs[start..end].chunks_exact(COEFFS_PER_MCU) {
        for (k, block) in mcu.chunks_exact(64).enumerate() {
            let comp = k.saturating_sub(3); // 0..3 → Y, 4 → Cb, 5 → Cr
            pred[comp] = walk_block(sink, block, pred[comp], usize::from(comp > 0));
        }
    }
}

/// Codes restart segment `seg` with `codes`, padded to a byte.
pub fn encode_segment(coeffs: &[i16], grid: McuGrid, seg: usize, codes: &[u32]) -> Vec<u8> {
    let per_segment = usize::from(grid.restart_interval()) * COEFFS_PER_MCU;
    let mut coder = Coder { codes, out: BitWriter::with_capacity(per_segment / 4) };
    walk_segment(&mut coder, coeffs, grid, seg);
    coder.out.finish()
}

/// Jobs the entropy coder splits a frame into by default: one per thread of
/// the host pool.
pub fn default_threads() -> usize {
    HostPool::global().threads()
}

/// Runs `work` over the frame's segments as `parts` jobs of the host pool
/// ([`crate::host_pool`]), a contiguous run of segments each; the results in
/// segment order.
fn over_segments<T: Send + 'static>(
    grid: McuGrid,
    parts: usize,
    work: Arc<dyn Fn(Range<usize>) -> T + Send + Sync>,
) -> Vec<T> {
    let segments = grid.segments();
    let parts = parts.clamp(1, segments);
    let per_part = segments.div_ceil(parts);
    let jobs: Vec<Box<dyn FnOnce() -> T + Send>> = (0..parts)
        .map(|p| {
            let range = (p * per_part)..((p + 1) * per_part).min(segments);
            let work = Arc::clone(&work);
            Box::new(move || work(range)) as Box<dyn FnOnce() -> T + Send>
        })
        .collect();
    HostPool::global().run(jobs)
}

fn check_len(coeffs: &[i16], grid: McuGrid) {
    assert_eq!(coeffs.len(), grid.mcu_count() * COEFFS_PER_MCU, "coefficient count does not match the MCU grid");
}

/// The frame's symbol counts, indexed as [`super::optimal`]'s tables are,
/// counted in `parts` jobs.
pub fn histogram(coeffs: &Arc<Vec<i16>>, grid: McuGrid, parts: usize) -> Vec<u32> {
    check_len(coeffs, grid);
    let data = Arc::clone(coeffs);
    let counts = over_segments(
        grid,
        parts,
        Arc::new(move |range: Range<usize>| {
            let mut counter = Counter(vec![0; SYMBOLS]);
            for seg in range {
                walk_segment(&mut counter, &data, grid, seg);
            }
            counter.0
        }),
    );
    let mut total = vec![0u32; SYMBOLS];
    for part in counts {
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    total
}

/// Codes the whole scan with `tables` in `parts` jobs, joined with RST0..RST7
/// markers.
pub fn encode_scan(coeffs: &Arc<Vec<i16>>, grid: McuGrid, parts: usize, tables: &FrameTables) -> Vec<u8> {
    check_len(coeffs, grid);
    let (data, codes) = (Arc::clone(coeffs), Arc::new(tables.code_table()));
    let coded = over_segments(
        grid,
        parts,
        Arc::new(move |range: Range<usize>| {
            let mut out = Vec::new();
            for seg in range {
                if seg > 0 {
                    out.extend_from_slice(&[0xFF, 0xD0 + ((seg - 1) % 8) as u8]);
                }
                out.extend(encode_segment(&data, grid, seg, &codes));
            }
            out
        }),
    );
    coded.concat()
}

/// A frame's tables made from its own counts, and its scan coded with them.
pub fn encode_optimal(coeffs: &Arc<Vec<i16>>, grid: McuGrid, parts: usize) -> (FrameTables, Vec<u8>) {
    let tables = FrameTables::optimal(&histogram(coeffs, grid, parts));
    let scan = encode_scan(coeffs, grid, parts, &tables);
    (tables, scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_and_extra_bits() {
        assert_eq!(category(0), 0);
        assert_eq!(category(1), 1);
        assert_eq!(category(-1), 1);
        assert_eq!(category(-1023), 10);
        assert_eq!(extra_bits(-1, 1), 0);
        assert_eq!(extra_bits(-3, 2), 0b00);
        assert_eq!(extra_bits(3, 2), 0b11);
        assert_eq!(extra_bits(-2, 2), 0b01);
    }

    #[test]
    fn bit_writer_stuffs_and_pads() {
        let mut w = BitWriter::default();
        w.put(0xFF, 8);
        w.put(0b101, 3);
        assert_eq!(w.finish(), vec![0xFF, 0x00, 0b1011_1111]);
    }

    #[test]
    fn parallel_scan_equals_serial() {
        let grid = McuGrid::new(100, 70);
        let coeffs: Arc<Vec<i16>> =
            Arc::new((0..grid.mcu_count() * COEFFS_PER_MCU).map(|i| ((i * 7919) % 61) as i16 - 30).collect());
        assert_eq!(encode_optimal(&coeffs, grid, 1), encode_optimal(&coeffs, grid, 3));
        let standard = FrameTables::standard();
        assert_eq!(encode_scan(&coeffs, grid, 1, &standard), encode_scan(&coeffs, grid, 2, &standard));
    }
}
