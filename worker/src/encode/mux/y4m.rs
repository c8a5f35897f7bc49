//! YUV4MPEG2: a text header, then `FRAME\n` and the I420 planes of each frame.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{io_err, MuxError, Muxer, StreamInfo};
use crate::encode::yuv::i420_len;
use crate::render::Readback;

#[derive(Debug)]
pub struct Y4mMuxer {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    frame_len: usize,
}

impl Y4mMuxer {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), out: None, frame_len: 0 }
    }

    fn out(&mut self) -> Result<&mut BufWriter<File>, MuxError> {
        let path = self.path.clone();
        self.out.as_mut().ok_or_else(|| io_err(&path)(std::io::Error::other("write_header was not called")))
    }
}

impl Muxer for Y4mMuxer {
    fn input(&self) -> Readback {
        Readback::Yuv420
    }

    fn is_clip(&self) -> bool {
        true
    }

    fn write_header(&mut self, info: &StreamInfo) -> Result<(), MuxError> {
        let file = File::create(&self.path).map_err(io_err(&self.path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Limited-range BT.601 with centred chroma, which is what the GPU pass writes.
        writeln!(
            out,
            "YUV4MPEG2 W{} H{} F{}:1 Ip A1:1 C420jpeg XCOLORRANGE=LIMITED",
            info.width, info.height, info.fps
        )
        .map_err(io_err(&self.path))?;
        self.frame_len = i420_len(info.width, info.height);
        self.out = Some(out);
        Ok(())
    }

    fn write_frame(&mut self, data: &[u8]) -> Result<(), MuxError> {
        if data.len() != self.frame_len {
            return Err(MuxError::FrameSize { got: data.len(), want: self.frame_len });
        }
        let path = self.path.clone();
        let out = self.out()?;
        out.write_all(b"FRAME\n").map_err(io_err(&path))?;
        out.write_all(data).map_err(io_err(&path))
    }

    fn finish(&mut self) -> Result<(), MuxError> {
        let path = self.path.clone();
        if let Some(mut out) = self.out.take() {
            out.flush().map_err(io_err(&path))?;
            out.get_ref().sync_all().map_err(io_err(&path))?;
        }
        Ok(())
    }
}
