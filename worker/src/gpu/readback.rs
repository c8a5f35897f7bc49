//! Reading GPU buffers back to the host.

use super::{GpuContext, GpuError};

/// Maps `buffer` (MAP_READ) after the GPU is done with it and copies `len`
/// bytes out. The caller has submitted the copy into `buffer` already, in
/// submission `after` (`None`: wait for the latest submission of all).
pub fn read_buffer(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    len: u64,
    after: Option<&wgpu::SubmissionIndex>,
) -> Result<Vec<u8>, GpuError> {
    let slice = buffer.slice(..len);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait_for(after)?;
    rx.recv()
        .map_err(|_| GpuError::Readback("map callback dropped".into()))?
        .map_err(|e| GpuError::Readback(e.to_string()))?;
    let data = {
        let view = slice.get_mapped_range().map_err(|e| GpuError::Readback(e.to_string()))?;
        view.to_vec()
    };
    buffer.unmap();
    Ok(data)
}

/// Bytes per row of a texture copy, padded to the 256-byte alignment wgpu needs.
pub fn padded_row_bytes(width: u32, bytes_per_pixel: u32) -> u32 {
    let unpadded = width * bytes_per_pixel;
    let align = wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
    unpadded.div_ceil(align) * align
}

/// Removes the row padding of a texture copy.
pub fn unpad_rows(data: &[u8], width: u32, height: u32, bytes_per_pixel: u32) -> Vec<u8> {
    let padded = padded_row_bytes(width, bytes_per_pixel) as usize;
    let row = (width * bytes_per_pixel) as usize;
    let mut out = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        out.extend_from_slice(&data[y * padded..y * padded + row]);
    }
    out
}
