//! Clip downloads, `GET /v1/jobs/{id}/output`: streamed from disk [`CHUNK`]
//! bytes at a time, so a clip past a gigabyte costs the worker about a
//! megabyte of memory, with single-range requests, and metered by the bytes
//! actually handed to the connection.
//!
//! Metering: a download is one egress event in the ledger, named by this
//! worker and a sequence number taken when the request arrives (unique per
//! download, so a retried write is idempotent), written when the body ends:
//! - a body sent whole is metered before its last chunk goes out, so a client
//!   that has every byte also finds them in `/v1/usage`;
//! - a body dropped part-way (the client hung up, the file shrank underneath,
//!   the drain ran out of time) is metered for the bytes handed to hyper so
//!   far, by a task spawned from the drop.
//!
//! "Handed to hyper" bounds what the client got from above: hyper's write
//! buffer (under 400 KiB plus a chunk), the kernel's send buffer and the
//! client's receive buffer may hold bytes it never read. A download that
//! handed over nothing (a HEAD request, a client gone before the first chunk)
//! writes no event: there is nothing to bill, and a zero row is noise. A
//! failed write is retried with backoff; one that never lands is logged as an
//! error with what it takes to bill it by hand. On shutdown `serve` waits for
//! the writes in flight ([`settle`]).
//!
//! Ranges ([`parse_range`], RFC 9110 §14): one `bytes=` range, the unit in
//! any case (`bytes`, `BYTES`, `Bytes`), white space around the range and
//! empty list elements (`bytes= 0-99 ,`) tolerated:
//! - `a-b` is 206 of bytes `a` to `b`, a `b` past the end (however many digits
//!   it has) clamped to the last byte; `a-` is `a` to the end;
//! - `-n` is the last `n` bytes, all of the clip when `n` is larger (206, as
//!   any range);
//! - 416 with `Content-Range: bytes */LENGTH` when the range cannot be served:
//!   a first position at or past the end (including one too large for 64
//!   bits), `-0`, a last position before the first (`5-3`), any range of an
//!   empty clip;
//! - 400 `bad_range` naming `Range` for a header that is not one byte range:
//!   empty, another unit, not a number (`abc`, `+5`, a space inside), or
//!   several ranges. RFC 9110 would allow ignoring such a header and
//!   answering with the whole clip, but that bills a client for a gigabyte it
//!   did not ask for.
//!
//! There is no `If-Range`: an attempt's clip is written once, under a name of
//! its own.

use std::io::SeekFrom;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tessera_metering::{AttemptRef, UsageEvent};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::http::views::{ErrorBody, TenantErrors};
use super::http::{own_job, tenant, ApiError};
use super::Service;

/// Bytes read from disk and handed to hyper at a time: large enough that a
/// gigabyte is a few thousand reads, small enough that a download holds about
/// a megabyte (this chunk, the file's read buffer, hyper's write buffer).
pub const CHUNK: usize = 256 * 1024;

/// Tries of an egress write: the first retry after 100 ms, each next one after
/// twice as long (3 s in all), enough to ride out a store restart's blip.
const WRITE_TRIES: u32 = 5;

/// Egress writes in flight, for [`settle`].
#[derive(Debug, Default)]
pub struct EgressWrites(AtomicUsize);

/// The clip of a finished job (MJPEG AVI), whole or one byte range, streamed
/// from storage; egress is metered by the bytes sent.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/output", tag = "jobs", operation_id = "get_output",
    params(
        ("id" = String, Path, pattern = "^j_[0-9a-fA-F]{16}$", description = "Job id"),
        ("Range" = Option<String>, Header, pattern = "^[Bb][Yy][Tt][Ee][Ss][ \\t]*=[ \\t]*([0-9]+-[0-9]*|-[0-9]+)[ \\t]*$",
            description = "One byte range: `bytes=FIRST-LAST` (a LAST past the end is the end), `bytes=FIRST-` \
                or `bytes=-SUFFIX` (the last SUFFIX bytes, all of them if the clip is shorter); the unit in any case"),
    ),
    responses(
        (status = 200, description = "The whole clip", content_type = "video/x-msvideo", body = Vec<u8>,
            headers(("Accept-Ranges" = String, description = "`bytes`"))),
        (status = 206, description = "The requested range", content_type = "video/x-msvideo", body = Vec<u8>,
            headers(("Content-Range" = String, description = "`bytes FIRST-LAST/LENGTH`"))),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 409, description = "The job has no output (yet)", body = ErrorBody),
        (status = 410, description = "The output is no longer retained", body = ErrorBody),
        (status = 400, description = "A malformed Range header (one range only)", body = ErrorBody),
        (status = 416, description = "The range is not satisfiable: its first byte at or past the clip's end, \
            `-0`, a last byte before the first, or an empty clip", body = ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */LENGTH`"))),
        TenantErrors,
    ),
    security(("tenant_key" = []))
)]
pub(crate) async fn output(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let t = tenant(&svc, &headers).await?;
    let j = own_job(&svc, &t, id).await?;
    let path =
        j.output.as_ref().map(|o| o.path.clone()).ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "not_ready", format!("job is {}, no output", j.state))
        })?;
    let expired = || ApiError::new(StatusCode::GONE, "expired", "output is no longer retained");
    let mut file = tokio::fs::File::open(&path).await.map_err(|_| expired())?;
    let len = file.metadata().await.map_err(|_| expired())?.len();
    // A Range the client sent but that is not one documented range (empty,
    // not text, several ranges) is a 400, and one the clip cannot serve a
    // 416: never the whole clip billed in full for a request that asked for less.
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(r) => match r.to_str().map_or(RangeRequest::Malformed, |text| parse_range(text, len)) {
            RangeRequest::Bytes { first, last } => Some((first, last)),
            RangeRequest::Unsatisfiable => return Ok(unsatisfiable(len)),
            RangeRequest::Malformed => {
                return Err(ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "bad_range",
                    "Range",
                    "must be one range: bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX",
                ))
            }
        },
    };
    let (start, count) = range.map_or((0, len), |(s, e)| (s, e - s + 1));
    let content_range = match range {
        Some((s, e)) => Some(HeaderValue::from_str(&format!("bytes {s}-{e}/{len}")).map_err(ApiError::internal)?),
        None => None,
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.map_err(ApiError::internal)?;
    }
    let attempt = AttemptRef {
        tenant_id: t.id.to_string(),
        tier: t.tier.clone(),
        job_id: j.id.to_string(),
        attempt: j.attempts,
        chunk: None,
    };
    let meter = Meter { seq: svc.next_seq(), svc, attempt, sent: 0, spawned: false };
    let mut resp = Response::new(Body::from_stream(chunks(file, count, meter)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/x-msvideo"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The body's length is not known to hyper (a stream): this header is.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Some(v) = content_range {
        h.insert(header::CONTENT_RANGE, v);
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(resp)
}

/// 416, naming the clip's length so the client can ask again.
fn unsatisfiable(len: u64) -> Response {
    let message = format!("range not satisfiable: one range of bytes 0-{} may be asked for", len.saturating_sub(1));
    let mut resp = ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "bad_range", message).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp
}

/// What a `Range` header asks of a representation of some length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// One range the representation can serve: inclusive byte offsets, `first
    /// <= last < len` (206).
    Bytes { first: u64, last: u64 },
    /// One well-formed byte range the representation cannot serve (416).
    Unsatisfiable,
    /// Not one byte range: another unit, not numbers, several ranges, empty (400).
    Malformed,
}

/// Reads a `Range` header (RFC 9110 §14.1.1 and §14.2) against a
/// representation of `len` bytes:
///
/// ```text
/// Range       = range-unit "=" range-set     ; "bytes", in any case
/// range-set   = 1#range-spec                 ; exactly one here, see below
/// range-spec  = first-pos "-" [ last-pos ] / "-" suffix-length
/// ```
///
/// - `a-b`: `a` to `b`, a `b` past the end (even past `u64::MAX`) clamped to
///   the last byte; `a-`: `a` to the end; a first position at or past the
///   end (even past `u64::MAX`) is [`RangeRequest::Unsatisfiable`], and so is
///   `b < a` (an invalid range-spec, which RFC 9110 lets a server refuse with
///   416);
/// - `-n`: the last `n` bytes, all of them when `n >= len`; `-0` is
///   unsatisfiable;
/// - nothing is satisfiable in an empty representation.
///
/// Lenient where RFC 9110 asks recipients to be: spaces and tabs around the
/// unit, the `=` and the range, and empty list elements (`bytes=,0-5,`).
/// Numbers are ASCII digits only (no sign, no space inside). More than one
/// range is [`RangeRequest::Malformed`], like any text that is not one byte
/// range; no arithmetic here can overflow.
pub fn parse_range(h: &str, len: u64) -> RangeRequest {
    use RangeRequest::{Bytes, Malformed, Unsatisfiable};
    fn ows(s: &str) -> &str {
        s.trim_matches([' ', '\t'])
    }
    let Some((unit, set)) = h.split_once('=') else { return Malformed };
    if !ows(unit).eq_ignore_ascii_case("bytes") {
        return Malformed;
    }
    let mut specs = set.split(',').map(ows).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else { return Malformed };
    let Some((first, last)) = spec.split_once('-') else { return Malformed };
    let well_formed = match (first.is_empty(), last.is_empty()) {
        (true, true) => false,
        (true, false) => is_digits(last),
        (false, _) => is_digits(first) && is_digits(last),
    };
    if !well_formed {
        return Malformed;
    }
    if len == 0 {
        return Unsatisfiable;
    }
    let end = len - 1;
    if first.is_empty() {
        // A suffix: the last n bytes (n too large for u64 is all of them too).
        return match saturating_u64(last) {
            0 => Unsatisfiable,
            n => Bytes { first: len - n.min(len), last: end },
        };
    }
    // A first position too large for u64 is past any end: `None` is 416.
    let Ok(first) = first.parse::<u64>() else { return Unsatisfiable };
    let last = if last.is_empty() { end } else { saturating_u64(last) };
    if first > end || last < first {
        return Unsatisfiable;
    }
    Bytes { first, last: last.min(end) }
}

/// Whether `s` is ASCII digits only (empty included): `u64::from_str` would
/// also take a sign.
fn is_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// A run of ASCII digits as a number, `u64::MAX` when it is larger (a last
/// position or suffix length that large is clamped to the representation).
fn saturating_u64(digits: &str) -> u64 {
    digits.parse().unwrap_or(u64::MAX)
}

/// A download's body: what is left to send of it and its meter.
struct Sending {
    file: tokio::fs::File,
    left: u64,
    meter: Meter,
}

/// `count` bytes of `file` from where it stands, in chunks of [`CHUNK`].
fn chunks(file: tokio::fs::File, count: u64, meter: Meter) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    let sending = Sending { file, left: count, meter };
    futures_util::stream::try_unfold(sending, |mut s| async move {
        if s.left == 0 {
            return Ok(None);
        }
        // `serve` waits for open connections: one that a slow client keeps
        // open must not hold the worker past its drain (it resumes with Range).
        if s.meter.svc.drain_expired() {
            return Err(std::io::Error::other("the worker is shutting down; resume with a Range request"));
        }
        let mut chunk = vec![0; s.left.min(CHUNK as u64) as usize];
        // A clip shorter than its length (deleted by retention underneath)
        // ends in an error: hyper then closes the connection rather than
        // sending fewer bytes than Content-Length promised.
        s.file.read_exact(&mut chunk).await?;
        s.left -= chunk.len() as u64;
        s.meter.sent += chunk.len() as u64;
        if s.left == 0 {
            s.meter.finish().await;
        }
        Ok(Some((Bytes::from(chunk), s)))
    })
}

/// One download's egress: the bytes handed to hyper, written to the ledger
/// once, at the end of the body or when it is dropped.
struct Meter {
    svc: Arc<Service>,
    attempt: AttemptRef,
    seq: u64,
    sent: u64,
    spawned: bool,
}

impl Meter {
    /// Spawns the ledger write of the bytes sent so far, the first time only,
    /// and only if there are some.
    fn spawn_write(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        if std::mem::replace(&mut self.spawned, true) || self.sent == 0 {
            return None;
        }
        let bytes = i64::try_from(self.sent).unwrap_or(i64::MAX);
        let event = UsageEvent::egress(&self.attempt, self.svc.worker.as_str(), self.seq, bytes);
        let pending = Pending::new(self.svc.clone(), event);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => Some(rt.spawn(pending.write())),
            // Dropping `pending` logs the event as not metered.
            Err(_) => None,
        }
    }

    /// Writes the egress of a body sent whole, before its last chunk goes out.
    async fn finish(&mut self) {
        if let Some(task) = self.spawn_write() {
            // The write is a task of its own: a client that hangs up now
            // drops this future, not the write.
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the egress write task failed");
            }
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // Detached: the write outlives the body; `serve` waits for it.
        drop(self.spawn_write());
    }
}

/// An egress event on its way to the ledger. It counts in [`EgressWrites`]
/// from creation to drop, and one dropped unwritten (retries spent, or a
/// runtime that stopped under it) is logged as an error.
struct Pending {
    svc: Arc<Service>,
    event: UsageEvent,
    written: bool,
}

impl Pending {
    fn new(svc: Arc<Service>, event: UsageEvent) -> Self {
        svc.egress.0.fetch_add(1, Ordering::SeqCst);
        Self { svc, event, written: false }
    }

    async fn write(mut self) {
        let mut delay = Duration::from_millis(100);
        let mut failed = false;
        for n in 1..=WRITE_TRIES {
            match self.svc.store.append(std::slice::from_ref(&self.event)).await {
                Ok(taken) => {
                    // Already there after a failed try: that try committed
                    // before its error came back, and was never counted.
                    if taken.first() == Some(&true) || failed {
                        let bytes = u64::try_from(self.event.quantity).unwrap_or(0);
                        self.svc.metrics.record_egress(&self.svc.book, &self.event.tenant_id, &self.event.tier, bytes);
                    }
                    self.written = true;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, id = %self.event.id, "egress write failed (try {n} of {WRITE_TRIES})");
                    failed = true;
                    if n < WRITE_TRIES {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.written {
            let e = &self.event;
            tracing::error!(
                id = %e.id, tenant = %e.tenant_id, job = %e.job_id, bytes = e.quantity,
                "egress NOT METERED: the ledger write never landed; bill it by hand"
            );
        }
        self.svc.egress.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits, up to `limit`, for the egress writes in flight. `serve` calls it
/// once the API server has stopped, so no download can start another.
pub(crate) async fn settle(svc: &Service, limit: Duration) {
    let start = Instant::now();
    loop {
        let pending = svc.egress.0.load(Ordering::SeqCst);
        if pending == 0 {
            return;
        }
        if start.elapsed() > limit {
            tracing::error!(pending, "exiting with egress writes in flight; each is logged as not metered");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    use super::RangeRequest::{self, Bytes, Malformed, Unsatisfiable};

    fn bytes(first: u64, last: u64) -> RangeRequest {
        Bytes { first, last }
    }

    /// The length of the clip in the issue's report: 181 kB.
    const CLIP: u64 = 181_034;

    #[test]
    fn one_range_in_each_form() {
        assert_eq!(parse_range("bytes=0-11", 100), bytes(0, 11));
        assert_eq!(parse_range("bytes=10-", 100), bytes(10, 99));
        assert_eq!(parse_range("bytes=-4", 100), bytes(96, 99));
        assert_eq!(parse_range("bytes=99-99", 100), bytes(99, 99));
        assert_eq!(parse_range("bytes=0-0", 1), bytes(0, 0));
        assert_eq!(parse_range("bytes=007-010", 100), bytes(7, 10), "leading zeros are digits like any");
    }

    #[test]
    fn the_unit_is_case_insensitive() {
        for unit in ["bytes", "BYTES", "Bytes", "bYtEs"] {
            assert_eq!(parse_range(&format!("{unit}=5-6"), 100), bytes(5, 6), "{unit}");
        }
    }

    #[test]
    fn a_last_position_past_the_end_is_clamped_to_the_last_byte() {
        assert_eq!(parse_range("bytes=50-1000", 100), bytes(50, 99));
        assert_eq!(parse_range("bytes=50-100", 100), bytes(50, 99), "one past the end");
        assert_eq!(parse_range(&format!("bytes=0-{}", u64::MAX), 100), bytes(0, 99));
        let big = 1u64 << 40;
        assert_eq!(parse_range(&format!("bytes={}-", big / 2), big), bytes(big / 2, big - 1));
    }

    #[test]
    fn a_last_position_too_large_for_u64_is_clamped_too() {
        // The issue's report: a 416 before, a 206 of bytes 448 to the end now.
        assert_eq!(parse_range("bytes=448-99999999999999999999999", CLIP), bytes(448, CLIP - 1));
        assert_eq!(parse_range("bytes=0-18446744073709551616", 100), bytes(0, 99), "u64::MAX + 1");
        let many = "9".repeat(1000);
        assert_eq!(parse_range(&format!("bytes=99-{many}"), 100), bytes(99, 99));
        assert_eq!(parse_range(&format!("bytes={}-{many}", u64::MAX - 1), u64::MAX), bytes(u64::MAX - 1, u64::MAX - 1));
    }

    #[test]
    fn a_first_position_at_or_past_the_end_is_unsatisfiable() {
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range(&format!("bytes={CLIP}-"), CLIP), Unsatisfiable);
        assert_eq!(parse_range(&format!("bytes={}-", u64::MAX), 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable, "an empty clip has no bytes to range over");
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
    }

    #[test]
    fn a_first_position_too_large_for_u64_is_unsatisfiable_not_malformed() {
        assert_eq!(parse_range("bytes=18446744073709551616-", 100), Unsatisfiable, "u64::MAX + 1");
        assert_eq!(parse_range("bytes=99999999999999999999999-", CLIP), Unsatisfiable);
        assert_eq!(parse_range("bytes=99999999999999999999999-99999999999999999999999", CLIP), Unsatisfiable);
    }

    #[test]
    fn a_suffix_longer_than_the_clip_is_all_of_it() {
        assert_eq!(parse_range("bytes=-1000", 100), bytes(0, 99));
        assert_eq!(parse_range("bytes=-100", 100), bytes(0, 99));
        assert_eq!(parse_range("bytes=-99", 100), bytes(1, 99));
        assert_eq!(parse_range("bytes=-99999999999999999999999", CLIP), bytes(0, CLIP - 1), "past u64 too");
        assert_eq!(parse_range(&format!("bytes=-{}", u64::MAX), u64::MAX), bytes(0, u64::MAX - 1));
    }

    #[test]
    fn an_empty_suffix_is_unsatisfiable() {
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-000", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable, "nor is any suffix of an empty clip");
    }

    #[test]
    fn a_last_position_before_the_first_is_unsatisfiable() {
        // An invalid range-spec: 416 as before (RFC 9110 §15.5.17 allows it).
        assert_eq!(parse_range("bytes=5-3", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=1-0", 100), Unsatisfiable);
    }

    #[test]
    fn white_space_around_the_range_and_empty_list_elements_are_tolerated() {
        for h in [
            "bytes= 5-6",
            "bytes=5-6 ",
            " bytes=5-6",
            "bytes =5-6",
            "bytes = \t5-6\t ",
            "bytes=,5-6",
            "bytes=5-6,",
            "bytes= , 5-6 , ,",
        ] {
            assert_eq!(parse_range(h, 100), bytes(5, 6), "{h:?}");
        }
        assert_eq!(parse_range("bytes= -4 ", 100), bytes(96, 99));
        assert_eq!(parse_range("bytes= 448-99999999999999999999999 ", CLIP), bytes(448, CLIP - 1));
    }

    #[test]
    fn several_ranges_are_malformed() {
        for h in ["bytes=0-1,5-6", "bytes=0-1, 5-6", "bytes=-1,0-", "bytes=0-0,0-0"] {
            assert_eq!(parse_range(h, 100), Malformed, "{h}");
        }
    }

    #[test]
    fn anything_else_is_malformed() {
        for h in [
            "",
            " ",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=abc",
            "bytes=abc-",
            "bytes=0-abc",
            "bytes=-abc",
            "bytes=+5-",
            "bytes=5-+6",
            "bytes=-+5",
            "bytes=5--6",
            "bytes=--5",
            "bytes=5",
            "bytes= 5 - 6",
            "bytes=5 -6",
            "bytes=0x10-",
            "bytes=\u{0663}-",
            "items=0-1",
            "byte=0-1",
            "bytesx=0-1",
            "bytes 0-1",
            "0-1",
            "=0-1",
        ] {
            assert_eq!(parse_range(h, 100), Malformed, "{h:?}");
        }
        assert_eq!(parse_range("items=0-1", 0), Malformed, "malformed before unsatisfiable");
        assert_eq!(parse_range("bytes=abc", 0), Malformed);
    }
}
