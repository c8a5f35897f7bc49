//! What a frame and a clip cost the host, stage by stage, beside the GPU time
//! the metering records: the figures of `tessera render --stats FILE.json`,
//! of an archived clip's sidecar and of the encode bench.

use serde::Serialize;
use tessera_metering::PassTimes;

use crate::encode::jpeg::gpu_entropy::Entropy;

/// Host time of a frame's stages, in ns (wall time on the host, not GPU time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HostTimes {
    /// Writing uniforms and recording the frame's commands, and submitting them.
    pub record_ns: u64,
    /// Blocked on the GPU: waiting for the frame's submission to finish.
    pub wait_ns: u64,
    /// Mapping the read-back buffers and copying out of them.
    pub readback_ns: u64,
    /// Entropy coding on the CPU (`--entropy cpu`) and writing the JFIF file.
    pub entropy_ns: u64,
    /// Writing the frame to its container.
    pub mux_ns: u64,
    /// Metering the frame: its usage into the recorder (and the ledger's batches).
    pub ledger_ns: u64,
}

impl HostTimes {
    pub fn merge(&mut self, other: &HostTimes) {
        self.record_ns += other.record_ns;
        self.wait_ns += other.wait_ns;
        self.readback_ns += other.readback_ns;
        self.entropy_ns += other.entropy_ns;
        self.mux_ns += other.mux_ns;
        self.ledger_ns += other.ledger_ns;
    }

    /// Every stage but the wait: what the host itself spent on the frames.
    pub fn busy_ns(&self) -> u64 {
        self.record_ns + self.readback_ns + self.entropy_ns + self.mux_ns + self.ledger_ns
    }

    /// Host work after the GPU: readback and entropy coding / JFIF.
    pub fn encode_ns(&self) -> u64 {
        self.readback_ns + self.entropy_ns
    }
}

/// Nanoseconds since `start`, saturating.
pub fn ns_since(start: std::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// GPU time per pass, in ns, with the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuNs {
    pub render: u64,
    pub stitch: u64,
    pub encode: u64,
    pub total: u64,
}

impl From<&PassTimes> for GpuNs {
    fn from(t: &PassTimes) -> Self {
        Self { render: t.render_ns, stitch: t.stitch_ns, encode: t.encode_ns, total: t.total_ns() }
    }
}

/// Host time per stage, in ns, with the total of the host's own work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostNs {
    pub record: u64,
    pub wait: u64,
    pub readback: u64,
    pub entropy: u64,
    pub mux: u64,
    pub ledger: u64,
    /// Every stage but `wait`.
    pub busy: u64,
}

impl From<&HostTimes> for HostNs {
    fn from(h: &HostTimes) -> Self {
        Self {
            record: h.record_ns,
            wait: h.wait_ns,
            readback: h.readback_ns,
            entropy: h.entropy_ns,
            mux: h.mux_ns,
            ledger: h.ledger_ns,
            busy: h.busy_ns(),
        }
    }
}

/// A clip render's figures, as `--stats` writes them and the sidecar holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderStats {
    pub frames: u32,
    pub width: u32,
    pub height: u32,
    pub tiles: usize,
    /// Frames rendered ahead of the one being read back (1: none ahead).
    pub frames_in_flight: u32,
    pub entropy: Entropy,
    /// How the GPU times were taken: `gpu` timestamps or `host` clocks.
    pub timing: &'static str,
    /// Wall time of the whole render, and of its frame loop alone (from the
    /// first frame taken to the last written: no renderer set-up).
    pub wall_ns: u64,
    pub loop_ns: u64,
    pub gpu_ns: GpuNs,
    pub host_ns: HostNs,
    /// Bytes read back from the GPU for the frames, and bytes of the frames written.
    pub readback_bytes: u64,
    pub output_bytes: u64,
}

impl RenderStats {
    /// The share of the frame loop's wall time the GPU spent on this clip's
    /// passes: its busy fraction when nothing else shares the GPU.
    pub fn gpu_busy_fraction(&self) -> f64 {
        self.gpu_ns.total as f64 / (self.loop_ns as f64).max(1.0)
    }
}
