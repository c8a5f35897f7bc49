//! Muxers write rendered frames to a file. As in rav1e, a [`Muxer`] has
//! `write_header`, `write_frame` and `finish`, and [`for_path`] picks one by the
//! output's extension. A muxer says which readback it wants, so the GPU does the
//! colour conversion and the CPU only copies bytes.

mod avi;
mod jpg;
mod png;
pub mod segment;
mod y4m;

use std::path::Path;

pub use avi::{AviMuxer, RIFF_LIMIT};
pub use jpg::JpgMuxer;
pub use png::PngMuxer;
pub use segment::{SegmentReader, SegmentWriter};
pub use y4m::Y4mMuxer;

use crate::render::Readback;

/// What every output file gets told before the first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: u32,
}

/// Errors writing output.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot encode PNG {path}: {source}")]
    Png { path: String, source: image::ImageError },
    #[error("unsupported output extension `{ext}` for {path}; use .avi (MJPEG) or .y4m for clips, .jpg or .png for one frame")]
    UnknownExtension { path: String, ext: String },
    #[error("frame has {got} bytes, expected {want}")]
    FrameSize { got: usize, want: usize },
}

/// A container writer.
pub trait Muxer: std::fmt::Debug {
    /// The frame layout this muxer takes.
    fn input(&self) -> Readback;
    /// Whether the file holds every frame (else one).
    fn is_clip(&self) -> bool;
    fn write_header(&mut self, info: &StreamInfo) -> Result<(), MuxError>;
    fn write_frame(&mut self, data: &[u8]) -> Result<(), MuxError>;
    fn finish(&mut self) -> Result<(), MuxError>;
}

/// The muxer for `path`, by extension (case-insensitive).
pub fn for_path(path: &Path) -> Result<Box<dyn Muxer>, MuxError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "y4m" => Ok(Box::new(Y4mMuxer::new(path))),
        "png" => Ok(Box::new(PngMuxer::new(path))),
        "avi" => Ok(Box::new(AviMuxer::new(path))),
        "jpg" | "jpeg" => Ok(Box::new(JpgMuxer::new(path))),
        _ => Err(MuxError::UnknownExtension { path: path.display().to_string(), ext }),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MuxError + '_ {
    move |source| MuxError::Io { path: path.display().to_string(), source }
}
