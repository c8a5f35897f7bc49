//! MJPEG in AVI, with the OpenDML extensions so that clips past 1 GiB stay valid.
//!
//! Layout:
//!
//! ```text
//! RIFF 'AVI '  LIST 'hdrl' { avih, LIST 'strl' { strh, strf (MJPG), indx }, LIST 'odml' { dmlh } }
//!              LIST 'movi' { 00dc... ix00 }  idx1
//! RIFF 'AVIX'  LIST 'movi' { 00dc... ix00 }          (one per further GiB)
//! ```
//!
//! `indx` is the super index (one entry per RIFF's `ix00`); `idx1` indexes the
//! first RIFF for players without OpenDML. Sizes and counts are written as
//! placeholders and patched by `finish`, so the writer streams frames and keeps
//! only the current RIFF's index in memory.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{io_err, MuxError, Muxer, StreamInfo};
use crate::render::Readback;

/// A RIFF is closed once it would grow past this (OpenDML readers handle 1 GiB
/// RIFFs; the first one must stay small for old readers).
pub const RIFF_LIMIT: u64 = 1 << 30;
/// Super-index entries reserved in the header: one per RIFF, so 1 TiB of clip.
const SUPER_INDEX_ENTRIES: u32 = 1024;
const AVIIF_KEYFRAME: u32 = 0x10;

#[derive(Debug)]
pub struct AviMuxer {
    path: PathBuf,
    riff_limit: u64,
    state: Option<State>,
}

#[derive(Debug)]
struct State {
    out: BufWriter<File>,
    info: StreamInfo,
    /// Offsets of fields patched at the end.
    avih_total_frames: u64,
    strh_length: u64,
    dmlh_total_frames: u64,
    indx_entries: u64,
    indx_in_use: u64,
    /// The RIFF being written: offset of its size field and of its 'movi' list.
    riff_size_at: u64,
    movi_size_at: u64,
    movi_data_start: u64,
    first_riff: bool,
    first_riff_frames: u32,
    /// (absolute offset of chunk data, size) of the current RIFF's frames.
    frames: Vec<(u64, u32)>,
    /// (offset, size, frames) of each written ix00, for the super index.
    std_indexes: Vec<(u64, u32, u32)>,
    /// idx1 entries of the first RIFF: (offset relative to 'movi' fourcc, size).
    legacy: Vec<(u32, u32)>,
    total_frames: u32,
    max_frame: u32,
}

impl AviMuxer {
    pub fn new(path: &Path) -> Self {
        Self::with_riff_limit(path, RIFF_LIMIT)
    }

    /// A muxer that starts a new RIFF past `limit` bytes (tests use small limits).
    pub fn with_riff_limit(path: &Path, limit: u64) -> Self {
        Self { path: path.to_path_buf(), riff_limit: limit, state: None }
    }
}

fn w32(out: &mut impl Write, v: u32) -> std::io::Result<()> {
    out.write_all(&v.to_le_bytes())
}
fn w16(out: &mut impl Write, v: u16) -> std::io::Result<()> {
    out.write_all(&v.to_le_bytes())
}
fn w64(out: &mut impl Write, v: u64) -> std::io::Result<()> {
    out.write_all(&v.to_le_bytes())
}

impl State {
    fn pos(&mut self) -> std::io::Result<u64> {
        self.out.stream_position()
    }

    fn patch32(&mut self, at: u64, v: u32) -> std::io::Result<()> {
        let here = self.pos()?;
        self.out.seek(SeekFrom::Start(at))?;
        w32(&mut self.out, v)?;
        self.out.seek(SeekFrom::Start(here))?;
        Ok(())
    }

    /// Opens `LIST`/`RIFF` with a placeholder size; returns the size field's offset.
    fn open_list(&mut self, kind: &[u8; 4], fourcc: &[u8; 4]) -> std::io::Result<u64> {
        self.out.write_all(kind)?;
        let at = self.pos()?;
        w32(&mut self.out, 0)?;
        self.out.write_all(fourcc)?;
        Ok(at)
    }

    fn close_list(&mut self, size_at: u64) -> std::io::Result<()> {
        let end = self.pos()?;
        let size = end - size_at - 4;
        self.patch32(size_at, u32::try_from(size).map_err(|_| std::io::Error::other("RIFF list over 4 GiB"))?)
    }

    fn write_headers(&mut self) -> std::io::Result<()> {
        let info = self.info;
        let usec_per_frame = 1_000_000 / info.fps;
        let hdrl = self.open_list(b"LIST", b"hdrl")?;
        // MainAVIHeader
        self.out.write_all(b"avih")?;
        w32(&mut self.out, 56)?;
        w32(&mut self.out, usec_per_frame)?;
        w32(&mut self.out, 0)?; // max bytes per sec
        w32(&mut self.out, 0)?; // padding granularity
        w32(&mut self.out, 0x10 | 0x100)?; // AVIF_HASINDEX | AVIF_ISINTERLEAVED
        self.avih_total_frames = self.pos()?;
        w32(&mut self.out, 0)?; // total frames (first RIFF), patched
        w32(&mut self.out, 0)?; // initial frames
        w32(&mut self.out, 1)?; // streams
        w32(&mut self.out, 0)?; // suggested buffer size
        w32(&mut self.out, info.width)?;
        w32(&mut self.out, info.height)?;
        for _ in 0..4 {
            w32(&mut self.out, 0)?;
        }
        let strl = self.open_list(b"LIST", b"strl")?;
        // AVIStreamHeader
        self.out.write_all(b"strh")?;
        w32(&mut self.out, 56)?;
        self.out.write_all(b"vids")?;
        self.out.write_all(b"MJPG")?;
        w32(&mut self.out, 0)?; // flags
        w16(&mut self.out, 0)?; // priority
        w16(&mut self.out, 0)?; // language
        w32(&mut self.out, 0)?; // initial frames
        w32(&mut self.out, 1)?; // scale
        w32(&mut self.out, info.fps)?; // rate: fps = rate / scale
        w32(&mut self.out, 0)?; // start
        self.strh_length = self.pos()?;
        w32(&mut self.out, 0)?; // length in frames, patched
        w32(&mut self.out, 0)?; // suggested buffer size
        w32(&mut self.out, u32::MAX)?; // quality: default
        w32(&mut self.out, 0)?; // sample size: varies
        w16(&mut self.out, 0)?;
        w16(&mut self.out, 0)?;
        w16(&mut self.out, info.width as u16)?;
        w16(&mut self.out, info.height as u16)?;
        // BITMAPINFOHEADER
        self.out.write_all(b"strf")?;
        w32(&mut self.out, 40)?;
        w32(&mut self.out, 40)?;
        w32(&mut self.out, info.width)?;
        w32(&mut self.out, info.height)?;
        w16(&mut self.out, 1)?; // planes
        w16(&mut self.out, 24)?; // bit count
        self.out.write_all(b"MJPG")?;
        w32(&mut self.out, info.width * info.height * 3)?;
        for _ in 0..4 {
            w32(&mut self.out, 0)?;
        }
        self.write_super_index_placeholder()?;
        self.close_list(strl)?;
        let odml = self.open_list(b"LIST", b"odml")?;
        self.out.write_all(b"dmlh")?;
        w32(&mut self.out, 248)?;
        self.dmlh_total_frames = self.pos()?;
        self.out.write_all(&[0u8; 248])?;
        self.close_list(odml)?;
        self.close_list(hdrl)
    }

    fn write_super_index_placeholder(&mut self) -> std::io::Result<()> {
        self.out.write_all(b"indx")?;
        w32(&mut self.out, 24 + SUPER_INDEX_ENTRIES * 16)?;
        w16(&mut self.out, 4)?; // longs per entry
        self.out.write_all(&[0, 0])?; // sub type, AVI_INDEX_OF_INDEXES
        self.indx_in_use = self.pos()?;
        w32(&mut self.out, 0)?; // entries in use, patched
        self.out.write_all(b"00dc")?;
        for _ in 0..3 {
            w32(&mut self.out, 0)?;
        }
        self.indx_entries = self.pos()?;
        self.out.write_all(&vec![0u8; SUPER_INDEX_ENTRIES as usize * 16])
    }

    fn start_riff(&mut self, first: bool) -> std::io::Result<()> {
        self.riff_size_at = self.open_list(b"RIFF", if first { b"AVI " } else { b"AVIX" })?;
        if first {
            self.write_headers()?;
        }
        self.movi_size_at = self.open_list(b"LIST", b"movi")?;
        self.movi_data_start = self.movi_size_at + 4; // the 'movi' fourcc
        self.first_riff = first;
        Ok(())
    }

    /// Writes this RIFF's `ix00` (and `idx1` for the first), closes it.
    fn end_riff(&mut self) -> std::io::Result<()> {
        let base = self.movi_data_start;
        let ix_at = self.pos()?;
        let n = self.frames.len() as u32;
        self.out.write_all(b"ix00")?;
        let ix_size = 24 + n * 8;
        w32(&mut self.out, ix_size)?;
        w16(&mut self.out, 2)?;
        self.out.write_all(&[0, 1])?; // sub type, AVI_INDEX_OF_CHUNKS
        w32(&mut self.out, n)?;
        self.out.write_all(b"00dc")?;
        w64(&mut self.out, base)?;
        w32(&mut self.out, 0)?;
        for &(data_at, size) in &self.frames {
            w32(&mut self.out, (data_at - base) as u32)?;
            w32(&mut self.out, size)?; // top bit clear: key frame
        }
        self.std_indexes.push((ix_at, ix_size + 8, n));
        self.close_list(self.movi_size_at)?;
        if self.first_riff {
            self.out.write_all(b"idx1")?;
            w32(&mut self.out, self.legacy.len() as u32 * 16)?;
            for &(offset, size) in &self.legacy {
                self.out.write_all(b"00dc")?;
                w32(&mut self.out, AVIIF_KEYFRAME)?;
                w32(&mut self.out, offset)?;
                w32(&mut self.out, size)?;
            }
            self.first_riff_frames = n;
        }
        self.close_list(self.riff_size_at)?;
        self.frames.clear();
        Ok(())
    }

    fn write_frame(&mut self, data: &[u8], riff_limit: u64) -> std::io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| std::io::Error::other("frame over 4 GiB"))?;
        let padded = u64::from(size) + u64::from(size % 2);
        let index_reserve = (self.frames.len() as u64 + 1) * 24 + 64;
        if !self.frames.is_empty() && self.pos()? + 8 + padded + index_reserve - self.riff_size_at > riff_limit {
            self.end_riff()?;
            self.start_riff(false)?;
        }
        let chunk_at = self.pos()?;
        self.out.write_all(b"00dc")?;
        w32(&mut self.out, size)?;
        self.out.write_all(data)?;
        if size % 2 == 1 {
            self.out.write_all(&[0])?;
        }
        self.frames.push((chunk_at + 8, size));
        if self.first_riff {
            self.legacy.push(((chunk_at - self.movi_data_start) as u32, size));
        }
        self.total_frames += 1;
        self.max_frame = self.max_frame.max(size);
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.end_riff()?;
        let end = self.pos()?;
        let (avih, strh, dmlh) = (self.avih_total_frames, self.strh_length, self.dmlh_total_frames);
        self.patch32(avih, self.first_riff_frames)?;
        self.patch32(avih + 12, self.max_frame + 8)?; // suggested buffer size
        self.patch32(strh, self.total_frames)?;
        self.patch32(strh + 4, self.max_frame + 8)?;
        self.patch32(dmlh, self.total_frames)?;
        if self.std_indexes.len() > SUPER_INDEX_ENTRIES as usize {
            return Err(std::io::Error::other("clip needs more RIFFs than the super index holds"));
        }
        self.patch32(self.indx_in_use, self.std_indexes.len() as u32)?;
        self.out.seek(SeekFrom::Start(self.indx_entries))?;
        for &(offset, size, frames) in &self.std_indexes {
            w64(&mut self.out, offset)?;
            w32(&mut self.out, size)?;
            w32(&mut self.out, frames)?; // duration in stream ticks (frames)
        }
        self.out.seek(SeekFrom::Start(end))?;
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}

impl Muxer for AviMuxer {
    fn input(&self) -> Readback {
        Readback::Jpeg
    }

    fn is_clip(&self) -> bool {
        true
    }

    fn write_header(&mut self, info: &StreamInfo) -> Result<(), MuxError> {
        let file = File::create(&self.path).map_err(io_err(&self.path))?;
        let mut state = State {
            out: BufWriter::with_capacity(1 << 20, file),
            info: *info,
            avih_total_frames: 0,
            strh_length: 0,
            dmlh_total_frames: 0,
            indx_entries: 0,
            indx_in_use: 0,
            riff_size_at: 0,
            movi_size_at: 0,
            movi_data_start: 0,
            first_riff: true,
            first_riff_frames: 0,
            frames: Vec::new(),
            std_indexes: Vec::new(),
            legacy: Vec::new(),
            total_frames: 0,
            max_frame: 0,
        };
        state.start_riff(true).map_err(io_err(&self.path))?;
        self.state = Some(state);
        Ok(())
    }

    fn write_frame(&mut self, data: &[u8]) -> Result<(), MuxError> {
        let limit = self.riff_limit;
        let state = self.state.as_mut().ok_or_else(|| io_err(&self.path)(std::io::Error::other("no header")))?;
        state.write_frame(data, limit).map_err(io_err(&self.path))
    }

    fn finish(&mut self) -> Result<(), MuxError> {
        match self.state.take() {
            Some(mut state) => state.finish().map_err(io_err(&self.path)),
            None => Ok(()),
        }
    }
}
