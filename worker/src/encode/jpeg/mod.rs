//! JPEG encoding: the GPU does colour conversion, subsampling, DCT, quantisation
//! and zigzag ([`gpu::JpegPass`], shaders/encode/jpeg.wgsl), counts the
//! frame's symbols, builds optimal Huffman tables from the counts
//! ([`optimal`]) and codes the coefficients with them, a piece of
//! [`PIECE_MCUS`] MCUs per invocation, joined into restart intervals of
//! [`RESTART_MCUS`] ([`gpu_entropy`],
//! shaders/encode/huffman.wgsl), so only the tables and the compressed scan
//! are read back; the host wraps them in a baseline JFIF file ([`jfif`]).
//! With `--entropy cpu` the coefficients (i16) are read back and counted,
//! tabled and coded on the CPU in parallel ([`huffman`], the reference: the
//! same bytes).

pub mod gpu;
pub mod gpu_entropy;
pub mod huffman;
pub mod jfif;
pub mod optimal;
pub mod tables;

/// Coefficients per MCU: four luma blocks and one block each of Cb and Cr (4:2:0).
pub const COEFFS_PER_MCU: usize = 6 * 64;

/// MCUs per restart interval (the scan's segments between RST markers, a CPU
/// thread's share of the coding). Each marker costs its two bytes, the
/// padding before it and the DC prediction it resets, about 5 bytes: with 8
/// MCUs per interval that was 6 % of a 1080p frame and 10 % of a 4K frame at
/// quality 90; with 64 it is under 1 %.
pub const RESTART_MCUS: u32 = 64;

/// MCUs per piece: what one GPU invocation codes (`shaders/encode/huffman.wgsl`
/// has the same constant). Eight MCUs give a 4K frame (32400 MCUs, 507
/// intervals) 4050 pieces to code side by side; the pieces of an interval are then joined bit by bit.
pub const PIECE_MCUS: u32 = 8;

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

    /// The restart interval in MCUs: [`RESTART_MCUS`], or every MCU of a
    /// frame with fewer (decoders expect an interval the frame can fill).
    pub fn restart_interval(&self) -> u16 {
        (RESTART_MCUS as usize).min(self.mcu_count()).max(1) as u16
    }

    /// Restart segments of the frame; the last may be short.
    pub fn segments(&self) -> usize {
        self.mcu_count().div_ceil(usize::from(self.restart_interval()))
    }
}

/// Encodes a frame's quantised coefficients (MCU order, zigzag, as the GPU pass
/// writes them) into a complete JPEG file, with tables made for the frame.
pub fn encode_coefficients(coeffs: &[i16], grid: McuGrid, quality: u8) -> Vec<u8> {
    let coeffs = std::sync::Arc::new(coeffs.to_vec());
    let (tables, scan) = huffman::encode_optimal(&coeffs, grid, huffman::default_threads());
    jfif::write_jpeg(&scan, grid, quality, &tables.dht())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shader_codes_pieces_of_the_same_size() {
        let line = format!("const PIECE_MCUS: u32 = {PIECE_MCUS}u;");
        assert!(crate::render::shaders::HUFFMAN.contains(&line), "huffman.wgsl lacks `{line}`");
    }

    #[test]
    fn small_frames_are_one_interval_and_large_ones_end_short() {
        assert_eq!((McuGrid::new(16, 16).restart_interval(), McuGrid::new(16, 16).segments()), (1, 1));
        assert_eq!((McuGrid::new(1000, 8).restart_interval(), McuGrid::new(1000, 8).segments()), (63, 1));
        let hd = McuGrid::new(1920, 1080);
        assert_eq!((hd.mcu_count(), hd.restart_interval(), hd.segments()), (8160, 64, 128));
    }
}
