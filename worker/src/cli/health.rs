//! `tessera health`: an HTTP probe with nothing but the standard library, for
//! images that ship no curl (the Dockerfile's `HEALTHCHECK`, an exec probe,
//! a script waiting for a worker to come up).
//!
//! One plain HTTP/1.1 `GET` with `Connection: close` over a
//! [`std::net::TcpStream`]; the status line decides. A 2xx exits 0 and prints
//! the status on stdout; anything else exits 1 with one line on stderr saying
//! why: the connection was refused, nothing answered in time, or the answer
//! was not a 2xx (with the start of its body, which for `/readyz` names the
//! part that is not ready). A URL it cannot probe is a usage error, exit 2.
//!
//! No TLS, on purpose: the probe is meant for the worker's own port on the
//! loopback interface, where the API speaks plain HTTP; an `https://` URL is
//! refused rather than sent in clear text.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{runtime, usage, CliError};

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The URL to GET: http://HOST[:PORT][/PATH] (plain HTTP; default port 80).
    #[arg(long, env = "TESSERA_HEALTH_URL", default_value = "http://127.0.0.1:8080/readyz")]
    pub url: String,
    /// Seconds for the whole probe: name lookup, connect, request and answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout_s: f64,
}

/// The most of an answer read: a status line, headers and a body start are
/// far less, and a probe pointed at a large resource must not read it all.
const MAX_ANSWER: usize = 64 * 1024;
/// How much of a non-2xx body goes into the one-line reason.
const BODY_IN_REASON: usize = 200;

pub(super) fn health(args: HealthArgs) -> Result<(), CliError> {
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        return Err(usage(anyhow::anyhow!("--timeout-s must be a positive number of seconds, not {}", args.timeout_s)));
    }
    let target = Target::parse(&args.url).map_err(usage)?;
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let answer = probe(&target, timeout).map_err(|reason| runtime(anyhow::anyhow!("{}: {reason}", args.url)))?;
    let status_line = answer.status_line();
    if (200..300).contains(&answer.status) {
        println!("{}: {status_line}", args.url);
        Ok(())
    } else {
        let body = answer.body_start();
        let sep = if body.is_empty() { "" } else { ": " };
        Err(runtime(anyhow::anyhow!("{} answered {status_line}{sep}{body}", args.url)))
    }
}

/// Where to send the request.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Host as written (brackets removed from an IPv6 literal).
    host: String,
    port: u16,
    /// `HOST[:PORT]` as written: the `Host` header.
    authority: String,
    /// Path and query, `/` when the URL has none.
    path: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Target> {
        let scheme_end =
            url.find("://").ok_or_else(|| anyhow::anyhow!("`{url}` is not a URL; use http://HOST:PORT/PATH"))?;
        let scheme = url[..scheme_end].to_ascii_lowercase();
        match scheme.as_str() {
            "http" => {}
            "https" => anyhow::bail!(
                "`{url}`: https is not supported; the probe speaks plain HTTP to the worker's own port (use http://)"
            ),
            _ => anyhow::bail!("`{url}`: scheme `{scheme}` is not supported; use http://HOST:PORT/PATH"),
        }
        let rest = &url[scheme_end + 3..];
        // The fragment is the client's business, never sent.
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            anyhow::bail!("`{url}`: credentials in the URL are not supported");
        }
        if path.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
            anyhow::bail!("`{url}`: the path holds a space or a control character; percent-encode it");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) =
                v6.split_once(']').ok_or_else(|| anyhow::anyhow!("`{url}`: an IPv6 address misses its `]`"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| anyhow::anyhow!("`{url}`: `{p}` after the IPv6 address"))?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            anyhow::bail!("`{url}` names no host");
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => anyhow::bail!("`{url}`: `{p}` is not a port (1 to 65535)"),
            },
        };
        Ok(Target { host: host.to_string(), port, authority: authority.to_string(), path })
    }
}

/// What came back: the status and the bytes read (head and body start).
struct Answer {
    status: u16,
    raw: Vec<u8>,
}

impl Answer {
    /// `503 Service Unavailable`: the status line without its version.
    fn status_line(&self) -> String {
        let line = self.head().lines().next().unwrap_or_default().to_string();
        line.split_once(' ').map(|(_, rest)| rest.trim().to_string()).unwrap_or(line)
    }

    fn head(&self) -> String {
        let end = self.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(self.raw.len());
        String::from_utf8_lossy(&self.raw[..end]).into_owned()
    }

    /// The body's first bytes on one line (a chunked body shows its first
    /// chunk size too: enough to say what went wrong).
    fn body_start(&self) -> String {
        let Some(start) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else { return String::new() };
        let body = String::from_utf8_lossy(&self.raw[start + 4..]);
        let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
        match one_line.char_indices().nth(BODY_IN_REASON) {
            Some((cut, _)) => format!("{}...", &one_line[..cut]),
            None => one_line,
        }
    }
}

/// Sends the request and reads the answer, all within `timeout`. The error is
/// the reason, for one line.
fn probe(target: &Target, timeout: Duration) -> Result<Answer, String> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
    let timed_out = || format!("no answer within {} s", timeout.as_secs_f64());
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{}`: {e}", target.host))?
        .collect();
    let mut stream = None;
    let mut last_error = format!("`{}` resolves to no address", target.host);
    for addr in &addrs {
        let Some(wait) = left() else { return Err(timed_out()) };
        match TcpStream::connect_timeout(addr, wait) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => last_error = format!("connecting to {addr}: {}", timed_out()),
            Err(e) => last_error = format!("connecting to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_error)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tessera-health/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority,
        env!("CARGO_PKG_VERSION")
    );
    stream.set_write_timeout(left()).map_err(|e| e.to_string())?;
    stream.write_all(request.as_bytes()).map_err(|e| io_reason("sending the request", &e, &timed_out))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while raw.len() < MAX_ANSWER {
        let Some(wait) = left() else { break };
        stream.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A server that has sent its whole head and then stalls (or
            // resets) still gave its status: judge by what arrived.
            Err(_) if raw.windows(4).any(|w| w == b"\r\n\r\n") => break,
            Err(e) => return Err(io_reason("reading the answer", &e, &timed_out)),
        }
    }
    if raw.is_empty() {
        return Err(if left().is_none() {
            timed_out()
        } else {
            "the server closed the connection without answering".into()
        });
    }
    let first = String::from_utf8_lossy(raw.split(|&b| b == b'\n').next().unwrap_or_default()).trim_end().to_string();
    let status = match first.split_whitespace().collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/") && code.len() == 3 => code.parse::<u16>().ok(),
        _ => None,
    };
    let shown: String = first.chars().take(80).collect();
    let status = status.ok_or_else(|| format!("the answer is not HTTP: `{shown}`"))?;
    Ok(Answer { status, raw })
}

/// An I/O error as a reason; a read or write timeout says how long it waited.
fn io_reason(doing: &str, e: &std::io::Error, timed_out: &dyn Fn() -> String) -> String {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!("{doing}: {}", timed_out()),
        _ => format!("{doing}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    fn target(host: &str, port: u16, authority: &str, path: &str) -> Target {
        Target { host: host.into(), port, authority: authority.into(), path: path.into() }
    }

    #[test]
    fn urls_it_probes() {
        let cases = [
            ("http://127.0.0.1:8080/readyz", target("127.0.0.1", 8080, "127.0.0.1:8080", "/readyz")),
            ("HTTP://worker/", target("worker", 80, "worker", "/")),
            ("http://worker", target("worker", 80, "worker", "/")),
            ("http://w:9/readyz?x=1#frag", target("w", 9, "w:9", "/readyz?x=1")),
            ("http://w:9?x=1", target("w", 9, "w:9", "/?x=1")),
            ("http://[::1]:8080/healthz", target("::1", 8080, "[::1]:8080", "/healthz")),
            ("http://[::1]/", target("::1", 80, "[::1]", "/")),
        ];
        for (url, want) in cases {
            assert_eq!(Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}")), want, "{url}");
        }
    }

    #[test]
    fn urls_it_refuses_say_why() {
        let cases = [
            ("https://127.0.0.1:8080/readyz", "https is not supported"),
            ("127.0.0.1:8080/readyz", "is not a URL"),
            ("ftp://host/", "scheme `ftp` is not supported"),
            ("http:///readyz", "names no host"),
            ("http://:8080/", "names no host"),
            ("http://host:99999/", "`99999` is not a port"),
            ("http://host:0/", "`0` is not a port"),
            ("http://host:x/", "`x` is not a port"),
            ("http://[::1/", "misses its `]`"),
            ("http://[::1]x/", "`x` after the IPv6 address"),
            ("http://u:p@host/", "credentials"),
            ("http://host/a b", "percent-encode"),
        ];
        for (url, want) in cases {
            let e = Target::parse(url).expect_err(url).to_string();
            assert!(e.contains(want), "{url}: `{e}` lacks `{want}`");
        }
    }
}
