//! Usage events: what the ledger records, with deterministic ids.
//!
//! Event ids are built from what an event is (`job/attempt/gpu/pass/first-frame`,
//! `job/output`, ...), so a retry or a restart that re-sends events never records
//! one twice: the store ignores an id it already holds. GPU events of an attempt
//! are the operator's cost; an attempt's outcome is its own `attempt_end` event;
//! the one `output` event of a job is what the customer is billed.
//!
//! GPU time is recorded per attempt, pass and window of frames (about one second
//! of GPU work each, see the worker's usage recorder), not per frame: a fleet of
//! a thousand GPUs then writes thousands of rows a second, not hundreds of
//! thousands, and every nanosecond is still an integer in exactly one event.
//! This module holds no storage: the `tessera-store` crate persists events.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::clock::{Pass, TimingSource};
use crate::price::to_micros;

/// What an event measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// GPU nanoseconds of one pass over a window of frames (operator cost).
    Gpu,
    /// Frames delivered for a job (customer-billable), with its price.
    Output,
    /// The end of an attempt, with its outcome.
    AttemptEnd,
    /// Byte-seconds of archived output retained (operator cost).
    Storage,
    /// Bytes served (operator cost).
    Egress,
}

impl EventKind {
    pub const ALL: [EventKind; 5] =
        [EventKind::Gpu, EventKind::Output, EventKind::AttemptEnd, EventKind::Storage, EventKind::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Gpu => "gpu",
            EventKind::Output => "output",
            EventKind::AttemptEnd => "attempt_end",
            EventKind::Storage => "storage",
            EventKind::Egress => "egress",
        }
    }

    /// The unit of `quantity`.
    pub fn unit(self) -> &'static str {
        match self {
            EventKind::Gpu => "ns",
            EventKind::Output => "frames",
            EventKind::AttemptEnd => "",
            EventKind::Storage => "byte_seconds",
            EventKind::Egress => "bytes",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown event kind `{s}`"))
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// Lost to something that was not the job's fault: a vanished or paused
    /// worker (lease expired), a drain, a full disk. Requeued without spending
    /// the job's failure budget.
    Interrupted,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled, Outcome::Interrupted];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
        }
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s).ok_or_else(|| format!("unknown outcome `{s}`"))
    }
}

/// One attempt of one job of one tenant: what every event of it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRef {
    pub tenant_id: String,
    pub tier: String,
    pub job_id: String,
    pub attempt: u32,
    /// The chunk of a clip split into chunks (its attempt ids name it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u32>,
}

impl AttemptRef {
    /// What names the attempt in its events' ids: `JOB/ATTEMPT`, or
    /// `JOB/cCHUNK/ATTEMPT` for a chunk of a split clip.
    fn key(&self) -> String {
        match self.chunk {
            Some(c) => format!("{}/c{c}/{}", self.job_id, self.attempt),
            None => format!("{}/{}", self.job_id, self.attempt),
        }
    }
}

/// One usage event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub id: String,
    pub tenant_id: String,
    pub tier: String,
    pub job_id: String,
    pub attempt: u32,
    pub kind: EventKind,
    #[serde(default)]
    pub pass: Option<Pass>,
    /// The first frame of a GPU window, the period of a storage event, the
    /// request number of an egress event.
    pub seq: u64,
    /// Frames a GPU event covers (`seq` .. `seq + frames`); 0 for other kinds.
    #[serde(default)]
    pub frames: u32,
    pub quantity: i64,
    #[serde(default)]
    pub fps: Option<u32>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    /// Money in micro-units: the price of an output event.
    #[serde(default)]
    pub amount_micros: i64,
    #[serde(default)]
    pub timing: Option<TimingSource>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    pub occurred_at_ms: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Where the store and the service read the time: months (caps, reservations,
/// bills), leases, retention and storage periods all follow one clock, so a
/// test can set it (the last second of a month, a leap day, a later year) and
/// nothing it checks depends on the day it runs.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock (UTC), what production runs on.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock a test sets and advances by hand. Only with the `testing` feature.
#[cfg(feature = "testing")]
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

#[cfg(feature = "testing")]
impl ManualClock {
    pub fn new(ms: i64) -> Self {
        Self(std::sync::atomic::AtomicI64::new(ms))
    }

    /// At `rfc3339`, e.g. `2026-11-30T23:59:59Z`; panics on a malformed time (tests only).
    pub fn at(rfc3339: &str) -> Self {
        let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("ManualClock::at({rfc3339}): {e}"));
        Self::new((t.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    pub fn set(&self, ms: i64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(feature = "testing")]
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl UsageEvent {
    fn base(a: &AttemptRef, id: String, kind: EventKind, seq: u64, quantity: i64) -> Self {
        Self {
            id,
            tenant_id: a.tenant_id.clone(),
            tier: a.tier.clone(),
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            kind,
            pass: None,
            seq,
            frames: 0,
            quantity,
            fps: None,
            resolution: None,
            variant: None,
            amount_micros: 0,
            timing: None,
            outcome: None,
            occurred_at_ms: now_ms(),
        }
    }

    /// GPU time of `pass` over `frames` frames starting at frame `first`. The
    /// windows of one attempt never overlap, so the first frame names the event.
    pub fn gpu(a: &AttemptRef, pass: Pass, first: u64, frames: u32, ns: u64, timing: TimingSource) -> Self {
        let id = format!("{}/gpu/{}/{first}", a.key(), pass.as_str());
        let mut e = Self::base(a, id, EventKind::Gpu, first, i64::try_from(ns).unwrap_or(i64::MAX));
        e.pass = Some(pass);
        e.frames = frames;
        e.timing = Some(timing);
        e
    }

    /// The billable output of a job: one per job, whatever attempt delivered it.
    pub fn output(a: &AttemptRef, frames: u32, fps: u32, resolution: &str, variant: &str, price: Decimal) -> Self {
        let mut e = Self::base(a, format!("{}/output", a.job_id), EventKind::Output, 0, i64::from(frames));
        e.fps = Some(fps);
        e.resolution = Some(resolution.into());
        e.variant = Some(variant.into());
        e.amount_micros = to_micros(price);
        e
    }

    pub fn attempt_end(a: &AttemptRef, outcome: Outcome) -> Self {
        let mut e = Self::base(a, format!("{}/end", a.key()), EventKind::AttemptEnd, 0, 0);
        e.outcome = Some(outcome);
        e
    }

    /// A tenant's storage over the period `[start_ms, start_ms + period_ms)`:
    /// the byte-seconds of everything it kept during it, one event per tenant
    /// and period (no job: `job_id` is empty). Dated at the period's start, so
    /// a period never counts in the month after it (periods divide a day).
    pub fn storage_period(tenant_id: &str, tier: &str, start_ms: i64, period_ms: i64, byte_seconds: i64) -> Self {
        let a = AttemptRef {
            tenant_id: tenant_id.into(),
            tier: tier.into(),
            job_id: String::new(),
            attempt: 0,
            chunk: None,
        };
        let seq = u64::try_from(start_ms.div_euclid(period_ms.max(1))).unwrap_or(0);
        let mut e = Self::base(&a, format!("storage/{tenant_id}/{start_ms}"), EventKind::Storage, seq, byte_seconds);
        e.occurred_at_ms = start_ms;
        e
    }

    /// Bytes served by request `seq` of the worker `server` (ids of two workers
    /// never collide, whatever their sequence numbers).
    pub fn egress(a: &AttemptRef, server: &str, seq: u64, bytes: i64) -> Self {
        Self::base(a, format!("{}/egress/{server}/{seq}", a.job_id), EventKind::Egress, seq, bytes)
    }
}

/// A time that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad time `{0}`: use RFC 3339, like 2026-11-25T00:00:00Z")]
pub struct BadTime(pub String);

/// `YYYY-MM` of a Unix-ms time, UTC.
pub fn month_of(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}", t.year(), u8::from(t.month()))
}

/// RFC 3339 of a Unix-ms time.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses RFC 3339 to Unix ms.
pub fn parse_time(s: &str) -> Result<i64, BadTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| BadTime(s.into()))
}

/// Output seconds of `frames` at `fps`, exact.
pub fn output_seconds(frames: i64, fps: u32) -> Decimal {
    Decimal::from(frames) / Decimal::from(fps.max(1))
}

/// FNV-1a, for short stable ids.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunks_attempt_ids_name_the_chunk() {
        let mut a =
            AttemptRef { tenant_id: "t".into(), tier: "mid".into(), job_id: "j".into(), attempt: 7, chunk: None };
        assert_eq!(UsageEvent::gpu(&a, Pass::Render, 48, 24, 9, TimingSource::Gpu).id, "j/7/gpu/render/48");
        a.chunk = Some(2);
        assert_eq!(UsageEvent::gpu(&a, Pass::Render, 48, 24, 9, TimingSource::Gpu).id, "j/c2/7/gpu/render/48");
        assert_eq!(UsageEvent::attempt_end(&a, Outcome::Succeeded).id, "j/c2/7/end");
        // One billable output per job, whichever chunk's attempt settles it.
        assert_eq!(UsageEvent::output(&a, 1, 24, "720p", "general", Decimal::ONE).id, "j/output");
    }

    #[test]
    fn kinds_and_outcomes_round_trip_their_names() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
        }
        for o in Outcome::ALL {
            assert_eq!(o.as_str().parse::<Outcome>(), Ok(o));
        }
        assert!("gpus".parse::<EventKind>().is_err());
    }

    #[test]
    fn ids_name_what_an_event_is() {
        let a = AttemptRef { tenant_id: "t".into(), tier: "mid".into(), job_id: "j_1".into(), attempt: 3, chunk: None };
        assert_eq!(UsageEvent::gpu(&a, Pass::Stitch, 48, 24, 5, TimingSource::Gpu).id, "j_1/3/gpu/stitch/48");
        assert_eq!(UsageEvent::output(&a, 1, 24, "720p", "general", Decimal::ONE).id, "j_1/output");
        assert_eq!(UsageEvent::attempt_end(&a, Outcome::Interrupted).id, "j_1/3/end");
        assert_eq!(UsageEvent::egress(&a, "w_ab", 7, 10).id, "j_1/egress/w_ab/7");
        assert_eq!(month_of(parse_time("2026-02-28T23:59:59Z").unwrap()), "2026-02");
    }
}
