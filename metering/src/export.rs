//! Usage export: ledger events, raw or summed into time buckets, as CSV or as
//! CloudEvents 1.0 JSON lines (ready for OpenMeter-style meters). Quantities stay
//! integers; seconds and money are exact decimal strings derived from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rust_decimal::Decimal;
use serde_json::json;

use crate::event::{fnv1a, output_seconds, rfc3339, EventKind, UsageEvent};
use crate::price::from_micros;

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    CloudEvents,
}

/// Width of a time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Second,
    Minute,
    Hour,
}

impl Bucket {
    pub fn millis(self) -> i64 {
        match self {
            Bucket::Second => 1_000,
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
        }
    }
}

/// Events summed over one bucket and one combination of dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub tenant_id: String,
    pub tier: String,
    pub kind: EventKind,
    pub pass: String,
    pub outcome: String,
    pub fps: Option<u32>,
    pub quantity: i64,
    pub amount_micros: i64,
    pub events: u64,
}

/// A bucket row's key: its start, then its dimensions (the rows' order).
type BucketKey = (i64, String, String, &'static str, String, String, Option<u32>);

/// Sums events into buckets.
pub fn bucketize(events: &[UsageEvent], bucket: Bucket) -> Vec<BucketRow> {
    let mut rows = BTreeMap::new();
    add_to_buckets(&mut rows, events, bucket);
    rows.into_values().collect()
}

fn add_to_buckets(rows: &mut BTreeMap<BucketKey, BucketRow>, events: &[UsageEvent], bucket: Bucket) {
    let w = bucket.millis();
    for e in events.iter().filter(|e| e.kind != EventKind::AttemptEnd) {
        let start = e.occurred_at_ms.div_euclid(w) * w;
        let pass = e.pass.map(|p| p.as_str().to_string()).unwrap_or_default();
        let outcome = e.outcome.map(|o| o.as_str().to_string()).unwrap_or_default();
        let key = (start, e.tenant_id.clone(), e.tier.clone(), e.kind.as_str(), pass.clone(), outcome.clone(), e.fps);
        let row = rows.entry(key).or_insert_with(|| BucketRow {
            start_ms: start,
            end_ms: start + w,
            tenant_id: e.tenant_id.clone(),
            tier: e.tier.clone(),
            kind: e.kind,
            pass,
            outcome,
            fps: e.fps,
            quantity: 0,
            amount_micros: 0,
            events: 0,
        });
        row.quantity += e.quantity;
        row.amount_micros += e.amount_micros;
        row.events += 1;
    }
}

/// An export written a page of events at a time (pages in time order, as
/// the store reads them), so a ledger of any size exports in bounded memory:
/// raw events go out as they come, and a bucket goes out once a later page
/// has passed it. The text is exactly [`render`]'s of all the events at once.
#[derive(Debug)]
pub struct Exporter {
    format: Format,
    bucket: Option<Bucket>,
    open: BTreeMap<BucketKey, BucketRow>,
    started: bool,
}

impl Exporter {
    pub fn new(format: Format, bucket: Option<Bucket>) -> Self {
        Self { format, bucket, open: BTreeMap::new(), started: false }
    }

    fn header(&mut self) -> &'static str {
        if std::mem::replace(&mut self.started, true) || self.format == Format::CloudEvents {
            return "";
        }
        match self.bucket {
            None => EVENTS_CSV_HEADER,
            Some(_) => BUCKETS_CSV_HEADER,
        }
    }

    fn rows(&self, rows: &[BucketRow]) -> String {
        match self.format {
            Format::Csv => buckets_csv_rows(rows),
            Format::CloudEvents => buckets_cloudevents(rows),
        }
    }

    /// The text for the next page of events (later than every earlier page's).
    pub fn page(&mut self, events: &[UsageEvent]) -> String {
        let mut out = self.header().to_string();
        let Some(bucket) = self.bucket else {
            out.push_str(&match self.format {
                Format::Csv => events_csv_rows(events),
                Format::CloudEvents => events_cloudevents(events),
            });
            return out;
        };
        add_to_buckets(&mut self.open, events, bucket);
        // Buckets before the last event's are complete: no later page adds to them.
        if let Some(last) = events.last() {
            let w = bucket.millis();
            let current = last.occurred_at_ms.div_euclid(w) * w;
            let still_open =
                self.open.split_off(&(current, String::new(), String::new(), "", String::new(), String::new(), None));
            let done: Vec<BucketRow> = std::mem::replace(&mut self.open, still_open).into_values().collect();
            out.push_str(&self.rows(&done));
        }
        out
    }

    /// The text left when every page was given: the last buckets.
    pub fn finish(mut self) -> String {
        let mut out = self.header().to_string();
        let rows: Vec<BucketRow> = std::mem::take(&mut self.open).into_values().collect();
        out.push_str(&self.rows(&rows));
        out
    }
}

/// Exact seconds of a GPU event's nanoseconds.
fn gpu_seconds(kind: EventKind, quantity: i64) -> String {
    if kind == EventKind::Gpu {
        Decimal::new(quantity, 9).normalize().to_string()
    } else {
        String::new()
    }
}

fn out_seconds(kind: EventKind, quantity: i64, fps: Option<u32>) -> String {
    match (kind, fps) {
        (EventKind::Output, Some(f)) => output_seconds(quantity, f).normalize().to_string(),
        _ => String::new(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

const EVENTS_CSV_HEADER: &str = "id,time,tenant_id,tier,job_id,attempt,kind,pass,seq,frames,quantity,unit,gpu_seconds,output_seconds,fps,resolution,variant,amount,timing,outcome\n";

const BUCKETS_CSV_HEADER: &str =
    "bucket_start,bucket_end,tenant_id,tier,kind,pass,outcome,fps,quantity,unit,gpu_seconds,output_seconds,amount,events\n";

/// Raw events as CSV (header included).
pub fn events_csv(events: &[UsageEvent]) -> String {
    format!("{EVENTS_CSV_HEADER}{}", events_csv_rows(events))
}

fn events_csv_rows(events: &[UsageEvent]) -> String {
    let mut out = String::new();
    for e in events {
        let fields = [
            e.id.clone(),
            rfc3339(e.occurred_at_ms),
            e.tenant_id.clone(),
            e.tier.clone(),
            e.job_id.clone(),
            e.attempt.to_string(),
            e.kind.as_str().into(),
            e.pass.map(|p| p.as_str().to_string()).unwrap_or_default(),
            e.seq.to_string(),
            e.frames.to_string(),
            e.quantity.to_string(),
            e.kind.unit().into(),
            gpu_seconds(e.kind, e.quantity),
            out_seconds(e.kind, e.quantity, e.fps),
            e.fps.map(|f| f.to_string()).unwrap_or_default(),
            e.resolution.clone().unwrap_or_default(),
            e.variant.clone().unwrap_or_default(),
            from_micros(e.amount_micros).to_string(),
            e.timing.map(|t| t.as_str().to_string()).unwrap_or_default(),
            e.outcome.map(|o| o.as_str().to_string()).unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        let _ = writeln!(out, "{}", line.join(","));
    }
    out
}

/// Bucketed rows as CSV.
pub fn buckets_csv(rows: &[BucketRow]) -> String {
    format!("{BUCKETS_CSV_HEADER}{}", buckets_csv_rows(rows))
}

fn buckets_csv_rows(rows: &[BucketRow]) -> String {
    let mut out = String::new();
    for r in rows {
        let fields = [
            rfc3339(r.start_ms),
            rfc3339(r.end_ms),
            r.tenant_id.clone(),
            r.tier.clone(),
            r.kind.as_str().into(),
            r.pass.clone(),
            r.outcome.clone(),
            r.fps.map(|f| f.to_string()).unwrap_or_default(),
            r.quantity.to_string(),
            r.kind.unit().into(),
            gpu_seconds(r.kind, r.quantity),
            out_seconds(r.kind, r.quantity, r.fps),
            from_micros(r.amount_micros).to_string(),
            r.events.to_string(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        let _ = writeln!(out, "{}", line.join(","));
    }
    out
}

fn cloud_event(id: String, kind: EventKind, subject: &str, time_ms: i64, data: serde_json::Value) -> String {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "tessera",
        "type": format!("io.tessera.usage.{}", kind.as_str()),
        "subject": subject,
        "time": rfc3339(time_ms),
        "datacontenttype": "application/json",
        "data": data,
    })
    .to_string()
}

/// Raw events as CloudEvents JSON lines; the event id is the ledger id.
pub fn events_cloudevents(events: &[UsageEvent]) -> String {
    let mut out = String::new();
    for e in events {
        let data = json!({
            "tier": e.tier, "job_id": e.job_id, "attempt": e.attempt,
            "pass": e.pass.map(|p| p.as_str()), "seq": e.seq, "frames": e.frames,
            "quantity": e.quantity, "unit": e.kind.unit(),
            "gpu_seconds": gpu_seconds(e.kind, e.quantity),
            "output_seconds": out_seconds(e.kind, e.quantity, e.fps),
            "fps": e.fps, "resolution": e.resolution, "variant": e.variant,
            "amount": from_micros(e.amount_micros).to_string(),
            "timing": e.timing.map(|t| t.as_str()), "outcome": e.outcome.map(|o| o.as_str()),
        });
        out.push_str(&cloud_event(e.id.clone(), e.kind, &e.tenant_id, e.occurred_at_ms, data));
        out.push('\n');
    }
    out
}

/// Bucketed rows as CloudEvents JSON lines, with ids derived from the bucket's key.
pub fn buckets_cloudevents(rows: &[BucketRow]) -> String {
    let mut out = String::new();
    for r in rows {
        let key = format!("{}|{}|{}|{}|{}|{:?}", r.start_ms, r.tenant_id, r.kind.as_str(), r.pass, r.outcome, r.fps);
        let data = json!({
            "tier": r.tier, "pass": r.pass, "outcome": r.outcome, "fps": r.fps,
            "quantity": r.quantity, "unit": r.kind.unit(),
            "gpu_seconds": gpu_seconds(r.kind, r.quantity),
            "output_seconds": out_seconds(r.kind, r.quantity, r.fps),
            "amount": from_micros(r.amount_micros).to_string(),
            "events": r.events, "bucket_end": rfc3339(r.end_ms),
        });
        out.push_str(&cloud_event(
            format!("bucket-{:016x}", fnv1a(key.as_bytes())),
            r.kind,
            &r.tenant_id,
            r.start_ms,
            data,
        ));
        out.push('\n');
    }
    out
}

/// Renders events in `format`, bucketed when `bucket` is given.
pub fn render(events: &[UsageEvent], format: Format, bucket: Option<Bucket>) -> String {
    match (format, bucket) {
        (Format::Csv, None) => events_csv(events),
        (Format::Csv, Some(b)) => buckets_csv(&bucketize(events, b)),
        (Format::CloudEvents, None) => events_cloudevents(events),
        (Format::CloudEvents, Some(b)) => buckets_cloudevents(&bucketize(events, b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AttemptRef;
    use crate::{Pass, TimingSource};

    fn events(n: usize) -> Vec<UsageEvent> {
        (0..n)
            .map(|i| {
                let a = AttemptRef {
                    tenant_id: format!("t_{}", i % 3),
                    tier: "mid".into(),
                    job_id: format!("j_{}", i % 7),
                    attempt: 1,
                    chunk: None,
                };
                let mut e = UsageEvent::gpu(&a, Pass::ALL[i % 3], i as u64, 1, 1_000 + i as u64, TimingSource::Gpu);
                e.occurred_at_ms = 1_800_000_000_000 + (i as i64) * 7_919;
                e
            })
            .collect()
    }

    #[test]
    fn an_export_in_pages_is_the_export_at_once() {
        let all = events(500);
        for format in [Format::Csv, Format::CloudEvents] {
            for bucket in [None, Some(Bucket::Second), Some(Bucket::Minute), Some(Bucket::Hour)] {
                for page in [1, 7, 100, 1_000] {
                    let mut x = Exporter::new(format, bucket);
                    let mut text: String = all.chunks(page).map(|p| x.page(p)).collect();
                    text.push_str(&x.finish());
                    assert_eq!(text, render(&all, format, bucket), "{format:?} {bucket:?} pages of {page}");
                }
            }
            let empty = Exporter::new(format, None);
            assert_eq!(empty.finish(), render(&[], format, None));
        }
    }
}
