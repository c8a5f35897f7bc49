//! GPU clock: timestamp ticks to integer nanoseconds, accumulated per pass.
//!
//! Timestamp queries report ticks; the queue's timestamp period says how many
//! nanoseconds one tick lasts (1.0 on most Vulkan drivers, other values on some).
//! The conversion is done once per interval in 128-bit integer arithmetic from a
//! period expressed in femtoseconds per tick, so sums never drift the way repeated
//! `f64` additions would.

use std::fmt;

/// The GPU passes that are metered separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// Template pass and its neighbourhood post-process, per tile.
    Render,
    /// Seam-blended assembly of the tiles into the frame.
    Stitch,
    /// Colour conversion and encoding of the stitched frame.
    Encode,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Render, Pass::Stitch, Pass::Encode];

    pub fn as_str(self) -> &'static str {
        match self {
            Pass::Render => "render",
            Pass::Stitch => "stitch",
            Pass::Encode => "encode",
        }
    }
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a duration came from: GPU timestamp queries, or host timing around
/// submission and completion on adapters without timestamp queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimingSource {
    Gpu,
    Host,
}

impl TimingSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TimingSource::Gpu => "gpu",
            TimingSource::Host => "host",
        }
    }
}

/// Errors from converting timestamps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    #[error("timestamp period {0} ns/tick is not a positive finite number; the adapter reported a broken clock")]
    BadPeriod(String),
    #[error("GPU timestamps went backwards (begin {begin} > end {end}); the interval is discarded rather than billed")]
    Backwards { begin: u64, end: u64 },
}

/// Converts raw timestamp ticks to nanoseconds for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuClock {
    femtos_per_tick: u128,
}

impl GpuClock {
    /// `period_ns` is `Queue::get_timestamp_period()`: nanoseconds per tick.
    pub fn new(period_ns: f32) -> Result<Self, ClockError> {
        if !period_ns.is_finite() || period_ns <= 0.0 {
            return Err(ClockError::BadPeriod(period_ns.to_string()));
        }
        // The period is itself an f32 from the driver; fixing it to whole
        // femtoseconds once keeps every later conversion in integers.
        let femtos = (f64::from(period_ns) * 1e6).round() as u128;
        Ok(Self { femtos_per_tick: femtos.max(1) })
    }

    /// Nanoseconds between two timestamps, rounded to the nearest nanosecond.
    pub fn interval_ns(&self, begin: u64, end: u64) -> Result<u64, ClockError> {
        if end < begin {
            return Err(ClockError::Backwards { begin, end });
        }
        let ticks = u128::from(end - begin);
        let ns = (ticks * self.femtos_per_tick + 500_000) / 1_000_000;
        Ok(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// Integer nanoseconds accumulated per pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PassTimes {
    pub render_ns: u64,
    pub stitch_ns: u64,
    pub encode_ns: u64,
}

impl PassTimes {
    pub fn add(&mut self, pass: Pass, ns: u64) {
        let slot = match pass {
            Pass::Render => &mut self.render_ns,
            Pass::Stitch => &mut self.stitch_ns,
            Pass::Encode => &mut self.encode_ns,
        };
        *slot = slot.saturating_add(ns);
    }

    pub fn get(&self, pass: Pass) -> u64 {
        match pass {
            Pass::Render => self.render_ns,
            Pass::Stitch => self.stitch_ns,
            Pass::Encode => self.encode_ns,
        }
    }

    pub fn merge(&mut self, other: &PassTimes) {
        for pass in Pass::ALL {
            self.add(pass, other.get(pass));
        }
    }

    pub fn total_ns(&self) -> u64 {
        Pass::ALL.iter().map(|&p| self.get(p)).fold(0, u64::saturating_add)
    }
}

/// Formats integer nanoseconds as seconds with millisecond precision, for humans.
pub fn format_seconds(ns: u64) -> String {
    format!("{}.{:03}s", ns / 1_000_000_000, (ns % 1_000_000_000) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_period_is_identity() {
        let clock = GpuClock::new(1.0).unwrap();
        assert_eq!(clock.interval_ns(100, 1_100).unwrap(), 1_000);
    }

    #[test]
    fn fractional_period_rounds_per_interval() {
        let clock = GpuClock::new(41.666_668).unwrap();
        // 24 ticks of ~41.67 ns = 1000 ns.
        assert_eq!(clock.interval_ns(0, 24).unwrap(), 1_000);
        assert_eq!(clock.interval_ns(0, 0).unwrap(), 0);
    }

    #[test]
    fn bad_period_and_backwards_are_errors() {
        assert!(GpuClock::new(0.0).is_err());
        assert!(GpuClock::new(f32::NAN).is_err());
        let clock = GpuClock::new(1.0).unwrap();
        assert_eq!(clock.interval_ns(5, 4), Err(ClockError::Backwards { begin: 5, end: 4 }));
    }

    #[test]
    fn pass_times_accumulate_exactly() {
        let mut t = PassTimes::default();
        for _ in 0..1000 {
            t.add(Pass::Render, 333_333);
            t.add(Pass::Stitch, 1);
        }
        assert_eq!(t.render_ns, 333_333_000);
        assert_eq!(t.stitch_ns, 1_000);
        assert_eq!(t.total_ns(), 333_334_000);
        assert_eq!(format_seconds(1_234_567_890), "1.234s");
    }
}
