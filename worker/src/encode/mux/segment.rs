//! Segments: the encoded frames of one chunk, in the order rendered, joined
//! later into the clip's AVI without re-encoding (MJPEG frames are independent).
//!
//! Layout: the magic `TSEG0001`, then per frame its length (u32, little
//! endian) and its JPEG bytes. The container is only tessera's own hand-over
//! between workers; the store records each finished segment's size and
//! SHA-256, and the join checks both before it trusts a byte of it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{io_err, AviMuxer, MuxError, Muxer, StreamInfo};
use crate::render::Readback;

const MAGIC: &[u8; 8] = b"TSEG0001";

/// Writes a segment.
#[derive(Debug)]
pub struct SegmentWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl SegmentWriter {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), out: None }
    }
}

impl Muxer for SegmentWriter {
    fn input(&self) -> Readback {
        Readback::Jpeg
    }

    fn is_clip(&self) -> bool {
        true
    }

    fn write_header(&mut self, _info: &StreamInfo) -> Result<(), MuxError> {
        let mut out = BufWriter::new(File::create(&self.path).map_err(io_err(&self.path))?);
        out.write_all(MAGIC).map_err(io_err(&self.path))?;
        self.out = Some(out);
        Ok(())
    }

    fn write_frame(&mut self, data: &[u8]) -> Result<(), MuxError> {
        let out = self.out.as_mut().ok_or_else(|| MuxError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other("segment written before its header"),
        })?;
        let len =
            u32::try_from(data.len()).map_err(|_| MuxError::FrameSize { got: data.len(), want: u32::MAX as usize })?;
        out.write_all(&len.to_le_bytes()).and_then(|()| out.write_all(data)).map_err(io_err(&self.path))
    }

    /// Flushes and syncs: a finished segment survives a crash of its worker.
    fn finish(&mut self) -> Result<(), MuxError> {
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| io_err(&self.path)(e.into_error()))?;
            file.sync_all().map_err(io_err(&self.path))?;
        }
        Ok(())
    }
}

/// Why a segment cannot be joined.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("cannot read segment {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("segment {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    #[error(transparent)]
    Mux(#[from] MuxError),
}

/// Reads a segment's frames one at a time.
#[derive(Debug)]
pub struct SegmentReader {
    path: PathBuf,
    input: BufReader<File>,
}

impl SegmentReader {
    pub fn open(path: &Path) -> Result<Self, SegmentError> {
        let io = |source| SegmentError::Io { path: path.display().to_string(), source };
        let mut input = BufReader::new(File::open(path).map_err(io)?);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(io)?;
        if &magic != MAGIC {
            return Err(SegmentError::Damaged { path: path.display().to_string(), reason: "not a segment".into() });
        }
        Ok(Self { path: path.to_path_buf(), input })
    }

    /// The next frame, `None` at the end.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, SegmentError> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => return Err(SegmentError::Io { path: self.path.display().to_string(), source }),
        }
        let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
        self.input.read_exact(&mut frame).map_err(|e| SegmentError::Damaged {
            path: self.path.display().to_string(),
            reason: format!("a frame is cut short: {e}"),
        })?;
        if !frame.starts_with(&[0xFF, 0xD8]) || !frame.ends_with(&[0xFF, 0xD9]) {
            return Err(SegmentError::Damaged {
                path: self.path.display().to_string(),
                reason: "a frame is not a whole JPEG".into(),
            });
        }
        Ok(Some(frame))
    }
}

/// Joins `segments` (each with the frames it must hold) into one AVI at `out`,
/// its OpenDML index built for the whole clip, in constant memory (a frame at
/// a time). Returns the frames written; `sample` frames are handed back too.
pub fn join(
    segments: &[(PathBuf, u32)],
    out: &Path,
    info: StreamInfo,
    riff_limit: u64,
    mut sample: impl FnMut(u32, &[u8]),
) -> Result<u32, SegmentError> {
    let mut mux = AviMuxer::with_riff_limit(out, riff_limit);
    mux.write_header(&info)?;
    let mut written = 0u32;
    for (path, frames) in segments {
        let mut reader = SegmentReader::open(path)?;
        let mut n = 0u32;
        while let Some(frame) = reader.next_frame()? {
            sample(written, &frame);
            mux.write_frame(&frame)?;
            n += 1;
            written += 1;
        }
        if n != *frames {
            return Err(SegmentError::Damaged {
                path: path.display().to_string(),
                reason: format!("holds {n} frames, its chunk rendered {frames}"),
            });
        }
    }
    mux.finish()?;
    Ok(written)
}
