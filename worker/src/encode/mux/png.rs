//! One frame as an 8-bit RGBA PNG.

use std::path::{Path, PathBuf};

use super::{MuxError, Muxer, StreamInfo};
use crate::render::Readback;

#[derive(Debug)]
pub struct PngMuxer {
    path: PathBuf,
    size: (u32, u32),
    written: bool,
}

impl PngMuxer {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), size: (0, 0), written: false }
    }
}

impl Muxer for PngMuxer {
    fn input(&self) -> Readback {
        Readback::Rgba8
    }

    fn is_clip(&self) -> bool {
        false
    }

    fn write_header(&mut self, info: &StreamInfo) -> Result<(), MuxError> {
        self.size = (info.width, info.height);
        Ok(())
    }

    fn write_frame(&mut self, data: &[u8]) -> Result<(), MuxError> {
        let (w, h) = self.size;
        let want = (w * h * 4) as usize;
        if data.len() != want {
            return Err(MuxError::FrameSize { got: data.len(), want });
        }
        image::save_buffer(&self.path, data, w, h, image::ExtendedColorType::Rgba8)
            .map_err(|source| MuxError::Png { path: self.path.display().to_string(), source })?;
        self.written = true;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), MuxError> {
        Ok(())
    }
}
