//! The tables of the JPEG files: quantisation steps by quality, the zigzag
//! order, and the standard Huffman tables of ITU-T T.81 Annex K (the CPU
//! coder's tests and the restart-segment checks use them; frames are coded
//! with tables built for each frame, `optimal.rs`).
//!
//! Quantisation follows MPEG-1's intra matrix rather than JPEG's Annex K
//! example tables. Annex K steepens fast towards high frequencies (steps 10 to
//! 121 at quality 50), a guess at what the eye forgives; the MPEG matrix is
//! flatter (8 to 83) and keeps edges and text, which rendered brand clips are
//! full of. On the bench frames it gives the same PSNR in 20–30 % fewer bytes,
//! and smaller files than ffmpeg's MJPEG (which also quantises with the MPEG
//! matrix, one table for all planes) at equal or better PSNR:
//! BENCHMARKS.md, "Encode throughput".

/// MPEG-1's default intra quantiser matrix (ISO/IEC 11172-2), natural
/// (row-major) order: the shape of every AC step.
pub const MPEG_INTRA: [u16; 64] = [
    8, 16, 19, 22, 26, 27, 29, 34, 16, 16, 22, 24, 27, 29, 34, 37, 19, 22, 26, 27, 29, 34, 34, 38, 22, 22, 26, 27, 29,
    34, 37, 40, 22, 26, 27, 29, 32, 35, 40, 48, 26, 27, 29, 32, 35, 40, 48, 58, 26, 27, 29, 34, 38, 46, 56, 69, 27, 29,
    35, 38, 46, 56, 69, 83,
];

/// The DC step below quality 99. The DC coefficient is 8 × a block's mean
/// (the DCT is orthonormal), so a step of 8 is one grey level: a flat block
/// decodes to whole levels, where a step of 4 leaves half levels that every
/// decoder rounds to 8 bits (measured: step 4 costs more bytes *and* PSNR than 8).
const DC_STEP: u16 = 8;

/// `ZIGZAG[k]` is the natural-order index of the k-th coefficient in zigzag order.
pub const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// The steps at `quality`, in percent of quality 50's: from 50 up, libjpeg's
/// scaling (`jpeg_quality_scaling`, 200 − 2q, 0 at 100); below 50,
/// `2050 / q + 59` rather than libjpeg's `5000 / q`. The MPEG steps are
/// coarser than Annex K's at 50, so libjpeg's curve below it would leave low
/// qualities a dB or more under the PSNR they had with Annex K tables (at
/// thumbnail sizes, under the 25 dB quality gate from quality 18 down); this
/// one keeps every quality at or above it.
fn quality_percent(quality: u8) -> u32 {
    let q = u32::from(quality.clamp(1, 100));
    if q < 50 {
        2050 / q + 59
    } else {
        200 - 2 * q
    }
}

/// Quantisation steps for `quality` 1–100, luma then chroma, natural order,
/// clamped to 1..=255 (baseline 8-bit tables).
///
/// AC steps are the MPEG intra matrix × 1.75 at quality 50, scaled by
/// [`quality_percent`]: quality 90 quantises luma with 0.35 × the matrix (steps 6 to 29),
/// which lands on the PSNR the Annex K tables gave at quality 90. Chroma steps
/// are 0.8 × luma's: PSNR is measured in RGB, where an error in a 4:2:0 chroma
/// sample spreads over four pixels and two or three channels. DC is
/// [`DC_STEP`] up to quality 98 and 1 at 99 and 100, which are near-lossless.
pub fn quant_tables(quality: u8) -> [[u16; 64]; 2] {
    let percent = quality_percent(quality);
    let dc = if percent >= 4 { DC_STEP } else { 1 };
    // luma: matrix × 1.75 × percent / 100; chroma: 0.8 of that.
    let step = |m: u16, num: u32, den: u32| ((u32::from(m) * percent * num + den / 2) / den).clamp(1, 255) as u16;
    let mut tables = [[0u16; 64]; 2];
    for (i, &m) in MPEG_INTRA.iter().enumerate() {
        tables[0][i] = step(m, 7, 400);
        tables[1][i] = step(m, 7, 500);
    }
    tables[0][0] = dc;
    tables[1][0] = dc;
    tables
}

/// A Huffman table as JPEG's DHT stores it: code counts per length 1..=16, symbols.
#[derive(Debug, Clone, Copy)]
pub struct HuffmanSpec {
    pub bits: [u8; 16],
    pub values: &'static [u8],
}

pub const DC_LUMA: HuffmanSpec = HuffmanSpec {
    bits: [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    values: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
};

pub const DC_CHROMA: HuffmanSpec = HuffmanSpec {
    bits: [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    values: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
};

pub const AC_LUMA: HuffmanSpec = HuffmanSpec {
    bits: [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
    values: &[
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71,
        0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72,
        0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37,
        0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
        0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3,
        0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
        0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
        0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
};

pub const AC_CHROMA: HuffmanSpec = HuffmanSpec {
    bits: [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
    values: &[
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22,
        0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1,
        0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36,
        0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
        0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a,
        0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
        0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
        0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
};

/// Code and length of every symbol of a table (Annex C).
#[derive(Debug, Clone)]
pub struct HuffmanCodes {
    pub code: [u16; 256],
    pub len: [u8; 256],
}

impl HuffmanCodes {
    /// The codes of a table given as DHT stores it: counts per length, symbols.
    pub fn new(bits: &[u8; 16], values: &[u8]) -> Self {
        let mut codes = HuffmanCodes { code: [0; 256], len: [0; 256] };
        let mut code: u16 = 0;
        let mut k = 0;
        for (i, &count) in bits.iter().enumerate() {
            for _ in 0..count {
                let sym = values[k] as usize;
                codes.code[sym] = code;
                codes.len[sym] = i as u8 + 1;
                code += 1;
                k += 1;
            }
            code <<= 1;
        }
        codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consistent() {
        for spec in [DC_LUMA, DC_CHROMA, AC_LUMA, AC_CHROMA] {
            assert_eq!(spec.bits.iter().map(|&b| usize::from(b)).sum::<usize>(), spec.values.len());
        }
        let mut seen = [false; 64];
        for &z in &ZIGZAG {
            seen[z] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn quality_scales_the_mpeg_matrix_as_libjpeg_scales() {
        let [luma, chroma] = quant_tables(50);
        assert_eq!((luma[0], luma[1], luma[63]), (8, 28, 145)); // 16 × 1.75, 83 × 1.75
        assert_eq!((chroma[0], chroma[1], chroma[63]), (8, 22, 116)); // 0.8 of luma's
        let [luma, chroma] = quant_tables(90);
        assert_eq!((luma[1], luma[63], chroma[63]), (6, 29, 23)); // 20 % of quality 50's
        assert_eq!(quant_tables(100), [[1; 64]; 2]);
        assert_eq!(quant_tables(99)[0][0], 1);
        assert_eq!(quant_tables(98)[0][0], 8);
        assert_eq!(quant_tables(1)[0][63], 255);
        assert_eq!(quant_tables(0), quant_tables(1));
    }

    #[test]
    fn steps_never_get_coarser_as_quality_rises() {
        for q in 1..100u8 {
            let (lo, hi) = (quant_tables(q), quant_tables(q + 1));
            for t in 0..2 {
                for i in 1..64 {
                    assert!(hi[t][i] <= lo[t][i], "quality {} step {i} of table {t}", q + 1);
                }
            }
        }
    }

    #[test]
    fn standard_codes_are_prefix_free() {
        let c = HuffmanCodes::new(&AC_LUMA.bits, AC_LUMA.values);
        assert_eq!((c.code[0x00], c.len[0x00]), (0b1010, 4)); // EOB
        assert_eq!((c.code[0xf0], c.len[0xf0]), (0b111_1111_1001, 11)); // ZRL
        let d = HuffmanCodes::new(&DC_LUMA.bits, DC_LUMA.values);
        assert_eq!((d.code[0], d.len[0]), (0b00, 2));
    }
}
