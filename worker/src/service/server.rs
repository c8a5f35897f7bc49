//! The accept loop of `tessera serve`'s two listeners (the API and
//! `/metrics`), in place of `axum::serve`, which takes no settings: it serves
//! HTTP/1 with hyper's defaults and no timer, so a client that sends half a
//! request header (or nothing) holds its connection, and a descriptor, for as
//! long as it likes, and every connection is accepted.
//!
//! Here each listener has:
//! - a **header read timeout** ([`ConnLimits::header_read_timeout`], hyper's
//!   `http1::Builder::header_read_timeout` on a Tokio timer): a request head
//!   not complete that long after the server started reading it (at accept,
//!   or when the previous response of a keep-alive connection ended) closes
//!   the connection, without a response. An idle keep-alive connection is
//!   therefore closed after that long too. Request bodies and responses are
//!   not timed: a download to a slow client may take as long as it takes.
//! - a **connection cap** ([`ConnLimits::max_connections`], one per listener,
//!   so a flood on one port cannot starve the other): a connection takes a
//!   permit before it is accepted and holds it until it closes. At the cap
//!   the loop stops accepting: further connections wait in the kernel's
//!   listen backlog (1024 by Tokio's default; past that the kernel drops
//!   SYNs and clients retry), and are served, in order, as connections close.
//!   Accepting and closing them at once instead would cost an accept and a
//!   descriptor per try and turn a flood into a busy loop; waiting costs the
//!   worker nothing, and the header timeout bounds how long a slot can be
//!   held by a client that sends nothing.
//!
//! Shutdown is `axum::serve`'s graceful shutdown: once `stop` turns true the
//! listener is closed (new connections are refused), each open connection
//! finishes its request in flight and closes (idle ones at once), and [`run`]
//! returns when the last one has closed.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Default of `--max-connections`: open connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;

/// Default of `--header-read-timeout-ms`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long between two warnings that a listener is at its cap.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(30);

/// How a listener guards itself against clients that hold connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once (at least 1).
    pub max_connections: u32,
    /// Longest a request head may take to arrive.
    pub header_read_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self { max_connections: DEFAULT_MAX_CONNECTIONS, header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT }
    }
}

/// Serves `app` on `listener` until `stop` turns true (or its sender is
/// gone), then waits for the open connections to finish (see the module doc).
/// `name` names the listener in logs.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    name: &'static str,
    stop: watch::Receiver<bool>,
) {
    let max = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max as usize));
    let mut stopping = pin!(stopped(stop.clone()));
    let mut warned: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if warned.is_none_or(|t| t.elapsed() >= CAP_WARNING_EVERY) {
                    tracing::warn!(
                        listener = name,
                        max_connections = max,
                        "{name} listener at its connection cap: new connections wait in the listen backlog \
                         (--max-connections)"
                    );
                    warned = Some(Instant::now());
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break, // never closed
                    },
                    () = &mut stopping => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // The permit goes back; the next turn takes it again.
                    tokio::select! {
                        () = accept_error(name, e) => continue,
                        () = &mut stopping => break,
                    }
                }
            },
            () = &mut stopping => break,
        };
        tokio::spawn(connection(stream, app.clone(), limits.header_read_timeout, stop.clone(), permit));
    }
    // New connections are refused from here on.
    drop(listener);
    // Every open connection holds a permit until it closes: holding them all
    // means the last one has closed.
    let _all = permits.acquire_many(max).await;
}

/// One connection, HTTP/1 with the header read timeout, shut down gracefully
/// when `stop` turns true; `_permit` is its place under the cap.
async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    header_read_timeout: Duration,
    stop: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app)));
    let mut stopping = pin!(stopped(stop));
    let mut shutting_down = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    // A client that timed out, hung up or sent garbage: its
                    // business, not the worker's.
                    tracing::debug!(error = %e, timeout = e.is_timeout(), "connection ended with an error");
                }
                return;
            }
            () = &mut stopping, if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves once `rx` holds true, or its sender is gone.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _closed = rx.wait_for(|s| *s).await;
}

/// An accept that failed. A connection reset before it was accepted is the
/// client's; anything else (out of descriptors, above all) is logged and
/// waited out for a second, as `axum::serve` does, rather than spun on.
async fn accept_error(name: &str, e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "{name} listener: accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Warns when the process's descriptor limit is lower than what both
/// listeners at their cap would hold, plus room for the store, clips and the
/// GPU driver: the cap would then not be what stops a flood, `EMFILE` would.
pub fn check_descriptor_limit(limits: &ConnLimits) {
    let Some(soft) = open_files_limit() else { return };
    let needed = 2 * u64::from(limits.max_connections) + 256;
    if soft < needed {
        tracing::warn!(
            open_files_limit = soft,
            max_connections = limits.max_connections,
            "the open-files limit ({soft}) is below what two listeners at --max-connections {} need \
             (about {needed}): raise it (ulimit -n) or lower --max-connections",
            limits.max_connections
        );
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux).
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}
