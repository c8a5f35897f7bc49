//! A driver pipeline cache persisted on disk (wgpu `PIPELINE_CACHE`), so a
//! restarted worker does not pay the seconds of shader compilation again.
//!
//! The file is named by `wgpu::util::pipeline_cache_key` (adapter, driver and
//! wgpu's format) and stored with a SHA-256 of its bytes: data that does not
//! match its checksum is never handed to the driver.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

/// An open pipeline cache and where it is saved.
#[derive(Debug)]
pub struct DiskPipelineCache {
    pub cache: wgpu::PipelineCache,
    path: PathBuf,
    dirty: AtomicBool,
}

impl DiskPipelineCache {
    /// Opens the cache for this adapter under `dir`; `None` when the device has
    /// no pipeline cache support.
    pub fn open(device: &wgpu::Device, info: &wgpu::AdapterInfo, features: wgpu::Features, dir: &Path) -> Option<Self> {
        if !features.contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        let key = wgpu::util::pipeline_cache_key(info)?;
        let path = dir.join(key);
        let data = read_verified(&path);
        // SAFETY: `data` is only ever bytes that `PipelineCache::get_data` returned
        // for an adapter with this same cache key (the file name), written by
        // `save` and verified against the SHA-256 saved with them; anything else
        // is dropped. wgpu and the driver also validate the cache header, and
        // `fallback` starts an empty cache if they reject it.
        #[allow(unsafe_code)]
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("tessera pipeline cache"),
                data: data.as_deref(),
                fallback: true,
            })
        };
        Some(Self { cache, path, dirty: AtomicBool::new(data.is_none()) })
    }

    /// Notes that new pipelines went into the cache.
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Writes the cache if it changed: data file then checksum, each atomically.
    pub fn save(&self) -> std::io::Result<bool> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(false);
        }
        let Some(data) = self.cache.get_data() else { return Ok(false) };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Temporary names of this process: workers sharing a directory never
        // write into each other's half-written files (a data file and a
        // checksum from two writers simply fail verification on the next load).
        let pid = std::process::id();
        let tmp = self.path.with_extension(format!("tmp.{pid}"));
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, &self.path)?;
        let sum = self.path.with_extension("sha256");
        let tmp = self.path.with_extension(format!("sha256.tmp.{pid}"));
        std::fs::write(&tmp, hex::encode(Sha256::digest(&data)))?;
        std::fs::rename(&tmp, &sum)?;
        Ok(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_verified(path: &Path) -> Option<Vec<u8>> {
    let data = std::fs::read(path).ok()?;
    let want = std::fs::read_to_string(path.with_extension("sha256")).ok()?;
    if hex::encode(Sha256::digest(&data)) != want.trim() {
        tracing::warn!(path = %path.display(), "pipeline cache does not match its checksum; starting empty");
        return None;
    }
    Some(data)
}
