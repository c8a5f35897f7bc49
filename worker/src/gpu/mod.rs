//! GPU context: adapter selection, device creation and the helpers every pass
//! shares (error capture, readback, timing).
//!
//! GPU errors belong to the job whose commands raised them: each job's work
//! runs inside error scopes on the thread doing it ([`scope`]), so one job's
//! bad commands fail its attempt and nobody else's. Only a lost device is
//! device-wide: it fails every job's GPU work from then on and the worker
//! reports itself not ready.
//!
//! The Vulkan backend is the default because it is what GPU nodes (NVIDIA) and
//! CI (Mesa lavapipe) both offer; `TESSERA_BACKEND` picks another and
//! `TESSERA_ADAPTER` picks an adapter by case-insensitive name substring.

pub mod binding;
pub mod pipeline_cache;
pub mod readback;
pub mod scope;
pub mod timing;

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Errors opening the GPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found on the {backends} backend; install a driver: `apt-get install mesa-vulkan-drivers` for software rendering (lavapipe), or the NVIDIA driver on a GPU node")]
    NoAdapter { backends: String },
    #[error("no adapter name contains `{wanted}` (TESSERA_ADAPTER); adapters found: {found}")]
    AdapterNotFound { wanted: String, found: String },
    #[error("TESSERA_BACKEND=`{0}` is not one of vulkan, gl, metal, dx12, all")]
    BadBackend(String),
    #[error("could not open a device on adapter `{adapter}`: {source}")]
    RequestDevice { adapter: String, source: wgpu::RequestDeviceError },
    #[error("GPU error: {0}")]
    Device(String),
    #[error("GPU readback failed: {0}")]
    Readback(String),
    /// Caught by a job's error scope: that job's commands were invalid.
    #[error("GPU validation error: {0}")]
    Validation(String),
    /// Caught by a job's error scope: an allocation for that job failed.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// Caught by a job's error scope: the driver failed that job's work.
    #[error("internal GPU error: {0}")]
    Internal(String),
    /// The device is gone, for every job: nothing more runs on it.
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
}

/// GPU errors raised on one device since it was opened, by kind: what each
/// job's error scopes caught ([`GpuContext::scoped`]), the device loss (at most
/// one), and errors outside every scope. Exported as `tessera_gpu_errors_total`.
#[derive(Debug, Default)]
pub struct GpuErrorCounts {
    pub validation: AtomicU64,
    pub out_of_memory: AtomicU64,
    pub internal: AtomicU64,
    pub device_lost: AtomicU64,
    pub uncaptured: AtomicU64,
}

impl GpuErrorCounts {
    /// The label values of `kind`, in a fixed order.
    pub const KINDS: [&'static str; 5] = ["validation", "out_of_memory", "internal", "device_lost", "uncaptured"];

    /// The counts in the order of [`GpuErrorCounts::KINDS`].
    pub fn snapshot(&self) -> [u64; 5] {
        [&self.validation, &self.out_of_memory, &self.internal, &self.device_lost, &self.uncaptured]
            .map(|c| c.load(Ordering::Relaxed))
    }

    fn count(&self, e: &wgpu::Error) {
        let counter = match e {
            wgpu::Error::Validation { .. } => &self.validation,
            wgpu::Error::OutOfMemory { .. } => &self.out_of_memory,
            wgpu::Error::Internal { .. } => &self.internal,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One adapter as `tessera doctor` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
}

impl AdapterReport {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        }
    }
}

/// An open device and queue, with what the rest of the worker needs to know
/// about them.
pub struct GpuContext {
    pub adapter: AdapterReport,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Whether passes are timed with GPU timestamp queries (else host timing).
    pub timestamps: bool,
    /// Why the device was lost, once it is: sticky, device-wide.
    lost: Arc<Mutex<Option<String>>>,
    /// GPU errors raised on this device, by kind (`tessera_gpu_errors_total`).
    errors: Arc<GpuErrorCounts>,
    /// Compiled pipelines by key, reused across clips: compiling a ray-marching
    /// template takes seconds on some drivers.
    pipelines: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
    /// Off only to measure what reuse saves (benches/load.rs).
    pipeline_reuse: std::sync::atomic::AtomicBool,
    /// Where JPEG frames are Huffman-coded (`--entropy`): 0 GPU, 1 CPU.
    entropy_on_cpu: std::sync::atomic::AtomicBool,
    info: wgpu::AdapterInfo,
    /// Serialises host-timed submissions ([`GpuContext::exclusive`]).
    host_timed: Mutex<()>,
    disk_cache: std::sync::OnceLock<pipeline_cache::DiskPipelineCache>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext").field("adapter", &self.adapter).field("timestamps", &self.timestamps).finish()
    }
}

/// Whether to time passes with GPU timestamp queries on this adapter.
///
/// Software rasterisers (lavapipe) write a compute pass's timestamps without
/// waiting for its dispatches: on llvmpipe a 1080p template pass that takes
/// 690 ms reads 30 µs. Metering must not under-count, so CPU adapters are timed
/// on the host. `TESSERA_TIMING=gpu` or `=host` overrides the choice.
pub fn timestamps_trusted(info: &wgpu::AdapterInfo) -> bool {
    match std::env::var("TESSERA_TIMING").map(|v| v.to_ascii_lowercase()).as_deref() {
        Ok("gpu") => true,
        Ok("host") => false,
        _ => info.device_type != wgpu::DeviceType::Cpu,
    }
}

/// The backends named by `TESSERA_BACKEND` (default: Vulkan).
pub fn backends_from_env() -> Result<wgpu::Backends, GpuError> {
    let raw = std::env::var("TESSERA_BACKEND").unwrap_or_else(|_| "vulkan".into());
    match raw.to_ascii_lowercase().as_str() {
        "vulkan" | "" => Ok(wgpu::Backends::VULKAN),
        "gl" => Ok(wgpu::Backends::GL),
        "metal" => Ok(wgpu::Backends::METAL),
        "dx12" => Ok(wgpu::Backends::DX12),
        "all" => Ok(wgpu::Backends::all()),
        _ => Err(GpuError::BadBackend(raw)),
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter on `backends`, best first (discrete, integrated, virtual, CPU).
pub fn list_adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance(backends).enumerate_adapters(backends));
    adapters.sort_by_key(|a| rank(a.get_info().device_type));
    adapters
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Picks the adapter: the first whose name contains `wanted`, else the best.
pub fn choose_adapter(
    adapters: Vec<wgpu::Adapter>,
    wanted: Option<&str>,
    backends: wgpu::Backends,
) -> Result<wgpu::Adapter, GpuError> {
    if adapters.is_empty() {
        return Err(GpuError::NoAdapter { backends: format!("{backends:?}") });
    }
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        return Ok(adapters.into_iter().next().expect("checked non-empty"));
    };
    let needle = wanted.to_lowercase();
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    adapters
        .into_iter()
        .find(|a| a.get_info().name.to_lowercase().contains(&needle))
        .ok_or_else(|| GpuError::AdapterNotFound { wanted: wanted.to_string(), found: names.join(", ") })
}

impl GpuContext {
    /// Opens the adapter chosen by `TESSERA_BACKEND` and `TESSERA_ADAPTER`.
    pub fn open() -> Result<Self, GpuError> {
        let backends = backends_from_env()?;
        let wanted = std::env::var("TESSERA_ADAPTER").ok();
        let adapter = choose_adapter(list_adapters(backends), wanted.as_deref(), backends)?;
        Self::from_adapter(&adapter)
    }

    /// Opens like [`GpuContext::open`], with GPU timestamps on or off whatever
    /// the adapter (tests and benches of grouped submissions on software adapters).
    pub fn open_timed(gpu_timestamps: bool) -> Result<Self, GpuError> {
        let backends = backends_from_env()?;
        let wanted = std::env::var("TESSERA_ADAPTER").ok();
        let adapter = choose_adapter(list_adapters(backends), wanted.as_deref(), backends)?;
        Self::with_timing(&adapter, gpu_timestamps)
    }

    /// Opens a device on `adapter` with its full limits and, where offered and
    /// trusted, timestamp queries.
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self, GpuError> {
        Self::with_timing(adapter, timestamps_trusted(&adapter.get_info()))
    }

    fn with_timing(adapter: &wgpu::Adapter, gpu_timestamps: bool) -> Result<Self, GpuError> {
        let info = adapter.get_info();
        let timing = if gpu_timestamps { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
        let wanted = timing | wgpu::Features::PIPELINE_CACHE;
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("tessera"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|source| GpuError::RequestDevice { adapter: info.name.clone(), source })?;
        let errors: Arc<GpuErrorCounts> = Arc::default();
        let count = errors.clone();
        // Every job's GPU work runs inside its own error scopes (see `scope`), so
        // an error that reaches this handler was raised outside any job: shared
        // setup such as the pipeline cache, or a call site that forgot its scope.
        // It cannot be attributed, and failing whichever job happens to check
        // next would fail an innocent one (the bug this replaced): it is logged
        // and counted, and fails nothing. The default handler would panic.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            count.uncaptured.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "GPU error outside any job's error scope; no job is failed for it");
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = lost.clone();
        let count = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            tracing::error!(?reason, %msg, "GPU device lost: every job on it fails");
            let mut lost = sink.lock().unwrap_or_else(|e| e.into_inner());
            if lost.is_none() {
                count.device_lost.fetch_add(1, Ordering::Relaxed);
                *lost = Some(format!("{reason:?}: {msg}"));
            }
        });
        Ok(Self {
            adapter: AdapterReport::from_info(&info),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            info,
            host_timed: Mutex::new(()),
            disk_cache: std::sync::OnceLock::new(),
            device,
            queue,
            features,
            limits,
            lost,
            errors,
            pipelines: Mutex::default(),
            pipeline_reuse: std::sync::atomic::AtomicBool::new(true),
            entropy_on_cpu: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The cached value under `key`, made by `make` on first use.
    pub fn cached<T: Any + Send + Sync>(&self, key: &str, make: impl FnOnce() -> T) -> Arc<T> {
        if !self.pipeline_reuse.load(std::sync::atomic::Ordering::Relaxed) {
            return Arc::new(make());
        }
        let mut map = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = map.get(key).and_then(|v| v.clone().downcast::<T>().ok()) {
            return found;
        }
        let made = Arc::new(make());
        map.insert(key.to_string(), made.clone());
        made
    }

    /// Persists compiled pipelines under `dir` (where the driver supports it):
    /// loads what an earlier run saved; [`GpuContext::save_pipeline_cache`] writes.
    /// Returns whether a cache is in use. Call before creating pipelines.
    pub fn enable_disk_pipeline_cache(&self, dir: &std::path::Path) -> bool {
        if let Some(c) = pipeline_cache::DiskPipelineCache::open(&self.device, &self.info, self.features, dir) {
            let _ = self.disk_cache.set(c);
        }
        self.disk_cache.get().is_some()
    }

    /// The driver pipeline cache new pipelines go into, if enabled.
    pub fn pipeline_cache(&self) -> Option<&wgpu::PipelineCache> {
        self.disk_cache.get().map(|c| {
            c.mark_dirty();
            &c.cache
        })
    }

    /// Saves the pipeline cache if it changed; returns whether it wrote.
    pub fn save_pipeline_cache(&self) -> std::io::Result<bool> {
        match self.disk_cache.get() {
            Some(c) => c.save(),
            None => Ok(false),
        }
    }

    /// Where JPEG frames encoded from now on are Huffman-coded.
    pub fn set_entropy(&self, entropy: crate::encode::jpeg::gpu_entropy::Entropy) {
        let cpu = entropy == crate::encode::jpeg::gpu_entropy::Entropy::Cpu;
        self.entropy_on_cpu.store(cpu, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where JPEG frames are Huffman-coded (the GPU unless set otherwise).
    pub fn entropy(&self) -> crate::encode::jpeg::gpu_entropy::Entropy {
        use crate::encode::jpeg::gpu_entropy::Entropy;
        if self.entropy_on_cpu.load(std::sync::atomic::Ordering::Relaxed) {
            Entropy::Cpu
        } else {
            Entropy::Gpu
        }
    }

    /// Turns reuse of compiled pipelines across clips on or off.
    pub fn set_pipeline_reuse(&self, on: bool) {
        self.pipeline_reuse.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why the device was lost, if it was. A lost device stays lost: every
    /// job's GPU work fails from then on.
    pub fn device_lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the GPU can still take work (readiness): fails once the device
    /// is lost, for good. A job's own GPU errors are its attempt's business
    /// ([`GpuContext::scoped`]), and errors outside any job are only logged
    /// ([`GpuContext::uncaptured_errors`]): neither makes the worker unready.
    pub fn check_errors(&self) -> Result<(), GpuError> {
        match self.device_lost() {
            Some(why) => Err(GpuError::DeviceLost(why)),
            None => Ok(()),
        }
    }

    /// How many GPU errors were raised outside every job's error scopes (logged, failing nothing).
    pub fn uncaptured_errors(&self) -> u64 {
        self.errors.uncaptured.load(Ordering::Relaxed)
    }

    /// How this device's passes are timed: the `timing` label of every GPU-time
    /// metric and ledger event it produces.
    pub fn timing_source(&self) -> tessera_metering::TimingSource {
        if self.timestamps {
            tessera_metering::TimingSource::Gpu
        } else {
            tessera_metering::TimingSource::Host
        }
    }

    /// Every GPU error raised on this device so far, by kind.
    pub fn error_counts(&self) -> &GpuErrorCounts {
        &self.errors
    }

    /// Blocks until submission `index` is done (`None`: the latest submission),
    /// not waiting for work that other jobs submitted after it. Fails only when
    /// the device is lost: errors in the work waited for are caught by the
    /// error scopes of the job that recorded it.
    pub fn wait_for(&self, index: Option<&wgpu::SubmissionIndex>) -> Result<(), GpuError> {
        let poll = wgpu::PollType::Wait { submission_index: index.cloned(), timeout: None };
        let polled = self.device.poll(poll);
        self.check_errors()?;
        polled.map(drop).map_err(|e| GpuError::Device(e.to_string()))
    }

    /// The GPU to oneself, for host timing: a pass timed on the host from submit
    /// to completion must not queue behind, or run beside, another job's work,
    /// or that job's time would be billed to it. Every host-timed submission
    /// holds this until its work is done.
    pub fn exclusive(&self) -> std::sync::MutexGuard<'_, ()> {
        self.host_timed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Largest storage buffer one binding may hold on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }
}
