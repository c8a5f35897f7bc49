//! One frame as a baseline JPEG file, encoded on the GPU.

use std::path::{Path, PathBuf};

use super::{io_err, MuxError, Muxer, StreamInfo};
use crate::render::Readback;

#[derive(Debug)]
pub struct JpgMuxer {
    path: PathBuf,
}

impl JpgMuxer {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf() }
    }
}

impl Muxer for JpgMuxer {
    fn input(&self) -> Readback {
        Readback::Jpeg
    }

    fn is_clip(&self) -> bool {
        false
    }

    fn write_header(&mut self, _info: &StreamInfo) -> Result<(), MuxError> {
        Ok(())
    }

    fn write_frame(&mut self, data: &[u8]) -> Result<(), MuxError> {
        std::fs::write(&self.path, data).map_err(io_err(&self.path))
    }

    fn finish(&mut self) -> Result<(), MuxError> {
        Ok(())
    }
}
