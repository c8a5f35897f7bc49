//! Pass timing: GPU timestamp queries around each compute pass, resolved and
//! converted to integer nanoseconds by [`tessera_metering::GpuClock`]; or, on
//! adapters without timestamp queries, host time around a submit and its wait.

use tessera_metering::{GpuClock, Pass, PassTimes, TimingSource};

use super::{readback, GpuContext, GpuError};

/// Passes timed per frame, in the order their query pairs are laid out.
pub const TIMED_PASSES: [Pass; 3] = [Pass::Render, Pass::Stitch, Pass::Encode];

/// Timestamp queries for the passes of one submission.
#[derive(Debug)]
pub struct GpuTimer {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    clock: GpuClock,
    used: [bool; TIMED_PASSES.len()],
}

const QUERY_BYTES: u64 = 8;

impl GpuTimer {
    /// `None` when the device has no timestamp queries: callers fall back to host timing.
    pub fn new(ctx: &GpuContext) -> Result<Option<Self>, GpuError> {
        if !ctx.timestamps {
            return Ok(None);
        }
        let count = (TIMED_PASSES.len() * 2) as u32;
        let clock = GpuClock::new(ctx.queue.get_timestamp_period()).map_err(|e| GpuError::Device(e.to_string()))?;
        let size = u64::from(count) * QUERY_BYTES;
        let query_set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("pass timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Some(Self { query_set, resolve, readback, clock, used: [false; 3] }))
    }

    fn slot(pass: Pass) -> u32 {
        TIMED_PASSES.iter().position(|&p| p == pass).expect("every pass is timed") as u32
    }

    /// Timestamp writes for a compute pass of kind `pass`.
    pub fn writes(&mut self, pass: Pass) -> wgpu::ComputePassTimestampWrites<'_> {
        let slot = Self::slot(pass);
        self.used[slot as usize] = true;
        wgpu::ComputePassTimestampWrites {
            query_set: &self.query_set,
            beginning_of_pass_write_index: Some(slot * 2),
            end_of_pass_write_index: Some(slot * 2 + 1),
        }
    }

    /// Records the resolve and copy of this submission's queries.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let count = (TIMED_PASSES.len() * 2) as u32;
        encoder.resolve_query_set(&self.query_set, 0..count, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, u64::from(count) * QUERY_BYTES);
    }

    /// Reads the timestamps once submission `after` finished; resets for the next one.
    pub fn collect(&mut self, ctx: &GpuContext, after: Option<&wgpu::SubmissionIndex>) -> Result<PassTimes, GpuError> {
        let size = (TIMED_PASSES.len() * 2) as u64 * QUERY_BYTES;
        let bytes = readback::read_buffer(ctx, &self.readback, size, after)?;
        let ticks: Vec<u64> =
            bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let mut times = PassTimes::default();
        for (i, pass) in TIMED_PASSES.iter().enumerate() {
            if !std::mem::take(&mut self.used[i]) {
                continue;
            }
            let ns =
                self.clock.interval_ns(ticks[i * 2], ticks[i * 2 + 1]).map_err(|e| GpuError::Device(e.to_string()))?;
            times.add(*pass, ns);
        }
        Ok(times)
    }
}

/// How a renderer times its passes.
pub fn timing_source(timer: &Option<GpuTimer>) -> TimingSource {
    if timer.is_some() {
        TimingSource::Gpu
    } else {
        TimingSource::Host
    }
}
