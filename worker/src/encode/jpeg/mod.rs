//! JPEG encoding: the GPU does colour conversion, subsampling, DCT, quantisation
//! and zigzag ([`gpu::JpegPass`], shaders/encode/jpeg.wgsl); the CPU reads back
//! only the quantised coefficients (i16) and Huffman-codes them in parallel, one
//! restart segment per MCU row ([`huffman`]), then wraps the scan in a baseline
//! JFIF file ([`jfif`]).

pub mod gpu;
pub mod huffman;
pub mod jfif;
pub mod tables;

/// Coefficients per MCU: four luma blocks and one block each of Cb and Cr (4:2:0).
pub const COEFFS_PER_MCU: usize = 6 * 64;

/// The MCU grid of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McuGrid {
    pub width: u32,
    pub height: u32,
    pub mcus_x: u32,
    pub mcus_y: u32,
}

impl McuGrid {
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, mcus_x: width.div_ceil(16), mcus_y: height.div_ceil(16) }
    }

    pub fn mcu_count(&self) -> usize {
        self.mcus_x as usize * self.mcus_y as usize
    }

    /// The restart interval: one MCU row per entropy-coded segment.
    pub fn restart_interval(&self) -> u16 {
        self.mcus_x as u16
    }
}

/// Encodes a frame's quantised coefficients (MCU order, zigzag, as the GPU pass
/// writes them) into a complete JPEG file.
pub fn encode_coefficients(coeffs: &[i16], grid: McuGrid, quality: u8) -> Vec<u8> {
    let scan = huffman::encode_scan(coeffs, grid, huffman::default_threads());
    jfif::write_jpeg(&scan, grid, quality)
}
