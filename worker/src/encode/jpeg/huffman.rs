//! Baseline Huffman coding of quantised blocks with the standard tables, one
//! restart segment of [`super::RESTART_MCUS`] MCUs at a time, segments on
//! parallel threads: the reference the GPU coder
//! (shaders/encode/huffman.wgsl) matches byte for byte.

use std::sync::OnceLock;

use super::tables::{HuffmanCodes, AC_CHROMA, AC_LUMA, DC_CHROMA, DC_LUMA};
use super::{McuGrid, COEFFS_PER_MCU};

struct Codes {
    dc: [HuffmanCodes; 2],
    ac: [HuffmanCodes; 2],
}

fn codes() -> &'static Codes {
    static CODES: OnceLock<Codes> = OnceLock::new();
    CODES.get_or_init(|| Codes {
        dc: [HuffmanCodes::new(&DC_LUMA), HuffmanCodes::new(&DC_CHROMA)],
        ac: [HuffmanCodes::new(&AC_LUMA), HuffmanCodes::new(&AC_CHROMA)],
    })
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

/// Codes one block (64 coefficients, zigzag order); returns its DC for prediction.
fn encode_block(w: &mut BitWriter, block: &[i16], prev_dc: i32, table: usize) -> i32 {
    let c = codes();
    let (dc_codes, ac_codes) = (&c.dc[table], &c.ac[table]);
    let dc = i32::from(block[0]);
    let diff = dc - prev_dc;
    let cat = category(diff);
    w.put(u32::from(dc_codes.code[cat as usize]), u32::from(dc_codes.len[cat as usize]));
    if cat > 0 {
        w.put(extra_bits(diff, cat), cat);
    }
    let mut run = 0u32;
    for &coef in &block[1..] {
        let v = i32::from(coef);
        if v == 0 {
            run += 1;
            continue;
        }
        while run > 15 {
            w.put(u32::from(ac_codes.code[0xF0]), u32::from(ac_codes.len[0xF0]));
            run -= 16;
        }
        let cat = category(v);
        let sym = ((run << 4) | cat) as usize;
        w.put(u32::from(ac_codes.code[sym]), u32::from(ac_codes.len[sym]));
        w.put(extra_bits(v, cat), cat);
        run = 0;
    }
    if run > 0 {
        w.put(u32::from(ac_codes.code[0]), u32::from(ac_codes.len[0]));
    }
    dc
}

/// Codes restart segment `seg`. DC prediction starts from zero.
pub fn encode_segment(coeffs: &[i16], grid: McuGrid, seg: usize) -> Vec<u8> {
    let per_segment = usize::from(grid.restart_interval()) * COEFFS_PER_MCU;
    let start = seg * per_segment;
    let end = (start + per_segment).min(grid.mcu_count() * COEFFS_PER_MCU);
    let mut w = BitWriter::with_capacity(per_segment / 4);
    let mut pred = [0i32; 3];
    for mcu in coeffs[start..end].chunks_exact(COEFFS_PER_MCU) {
        for (k, block) in mcu.chunks_exact(64).enumerate() {
            let comp = k.saturating_sub(3); // 0..3 → Y, 4 → Cb, 5 → Cr
            let table = usize::from(comp > 0);
            pred[comp] = encode_block(&mut w, block, pred[comp], table);
        }
    }
    w.finish()
}

/// Threads the entropy coder uses by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Codes the whole scan: segments in parallel, joined with RST0..RST7 markers.
pub fn encode_scan(coeffs: &[i16], grid: McuGrid, threads: usize) -> Vec<u8> {
    assert_eq!(coeffs.len(), grid.mcu_count() * COEFFS_PER_MCU, "coefficient count does not match the MCU grid");
    let segments = grid.segments();
    let threads = threads.clamp(1, segments);
    let per_thread = segments.div_ceil(threads);
    let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let first = t * per_thread;
                let last = ((t + 1) * per_thread).min(segments);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for seg in first..last {
                        if seg > 0 {
                            out.extend_from_slice(&[0xFF, 0xD0 + ((seg - 1) % 8) as u8]);
                        }
                        out.extend(encode_segment(coeffs, grid, seg));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("entropy thread panicked")).collect()
    });
    parts.concat()
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
        let coeffs: Vec<i16> = (0..grid.mcu_count() * COEFFS_PER_MCU).map(|i| ((i * 7919) % 61) as i16 - 30).collect();
        assert_eq!(encode_scan(&coeffs, grid, 1), encode_scan(&coeffs, grid, 3));
    }
}
