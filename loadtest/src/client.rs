//! The load generator's HTTP/1.1 client: hyper-util's pooled client over
//! plain TCP, one deadline per request (connect, send, and the whole body).
//!
//! Plain `http://` only: a load test is meant to run next to the workers
//! (in-cluster, or through a port-forward), and leaving TLS out keeps the
//! client's own cost out of the figures and a TLS stack out of the binary.

use std::time::Duration;

use anyhow::anyhow;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Checks a `--url`: `http://HOST[:PORT][/PREFIX]`. Returns it without a
/// trailing slash, ready for `/v1/...` to be appended.
pub fn parse_base_url(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err("https:// is not supported: tessera loadtest speaks plain HTTP; point it at the worker's \
                    in-cluster http:// URL or at a port-forward (e.g. `kubectl port-forward svc/tessera 8080` \
                    and --url http://127.0.0.1:8080)"
            .into());
    }
    if !lower.starts_with("http://") {
        return Err(format!("`{s}` is not an http:// URL (expected http://HOST:PORT)"));
    }
    let uri: hyper::Uri = s.parse().map_err(|e| format!("`{s}` is not a valid URL: {e}"))?;
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("`{s}` has no host (expected http://HOST:PORT)")),
    }
    if uri.query().is_some() {
        return Err(format!("`{s}` has a query string; give the worker's base URL only"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// A request that got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// No answer within `--timeout`.
    Timeout,
    /// The connection could not be made (refused, unreachable, DNS).
    Connect,
    /// The connection broke (reset, closed mid-response).
    Broken,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Timeout => "timeout",
            Transport::Connect => "connect",
            Transport::Broken => "broken",
        }
    }

    /// In words, for an error message.
    pub fn describe(self) -> &'static str {
        match self {
            Transport::Timeout => "no answer within --timeout",
            Transport::Connect => "could not connect (refused, unreachable or unknown host)",
            Transport::Broken => "the connection broke before the answer was complete",
        }
    }
}

/// An HTTP answer, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub retry_after: Option<Duration>,
}

impl Reply {
    /// The body's `error.code`, or `-` when the body is not the API's error JSON.
    pub fn error_code(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.pointer("/error/code").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "-".into())
    }

    fn error_message(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).chars().take(200).collect())
    }

    /// `401 unauthenticated: unknown API key`.
    pub fn describe(&self) -> String {
        format!("{} {}: {}", self.status.as_u16(), self.error_code(), self.error_message())
    }
}

/// The API of one worker (or a fleet's load balancer), as one tenant.
#[derive(Debug, Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    auth: HeaderValue,
    timeout: Duration,
}

impl Api {
    pub fn new(base: String, key: &str, timeout: Duration) -> anyhow::Result<Self> {
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| anyhow!("--key: not a valid header value"))?;
        auth.set_sensitive(true);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client, base, auth, timeout })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; the deadline covers the whole exchange.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Reply, Transport> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        req = req.header(AUTHORIZATION, self.auth.clone());
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        // The path and headers are ours and valid; a bad one is a bug, not a transport error.
        let req = req.body(Full::new(body)).expect("a well-formed request");
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    Transport::Connect
                } else {
                    Transport::Broken
                }
            })?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp.into_body().collect().await.map_err(|_| Transport::Broken)?.to_bytes();
            Ok(Reply { status, body, retry_after })
        };
        tokio::time::timeout(self.timeout, exchange).await.unwrap_or(Err(Transport::Timeout))
    }

    /// GET `path` and its JSON. Rate limits and store outages (429, 503) are
    /// waited out, a few times: the figures this reads are needed after the run
    /// whatever the load did to the tenant's request budget.
    pub async fn get_json(&self, path: &str) -> Result<Value, ApiFailure> {
        let mut tries = 0;
        loop {
            tries += 1;
            let reply = self.send(Method::GET, path, &[], Bytes::new()).await.map_err(ApiFailure::Transport)?;
            let busy = matches!(reply.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
            if busy && tries < 8 {
                let wait = reply.retry_after.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(5));
                tokio::time::sleep(wait).await;
                continue;
            }
            if !reply.status.is_success() {
                return Err(ApiFailure::Status(reply));
            }
            return serde_json::from_slice(&reply.body)
                .map_err(|e| ApiFailure::Other(format!("GET {path}: the answer is not JSON: {e}")));
        }
    }
}

/// Why a `get_json` did not return JSON.
#[derive(Debug)]
pub enum ApiFailure {
    Transport(Transport),
    Status(Reply),
    Other(String),
}

impl ApiFailure {
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ApiFailure::Status(r) if r.status == StatusCode::UNAUTHORIZED)
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiFailure::Transport(t) => f.write_str(t.describe()),
            ApiFailure::Status(r) => f.write_str(&r.describe()),
            ApiFailure::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ApiFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(parse_base_url("http://127.0.0.1:8080/").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(parse_base_url("http://gpu-1:8080/tessera").unwrap(), "http://gpu-1:8080/tessera");
        let https = parse_base_url("https://tessera.example.com").unwrap_err();
        assert!(https.contains("https:// is not supported") && https.contains("port-forward"), "{https}");
        assert!(parse_base_url("127.0.0.1:8080").unwrap_err().contains("not an http:// URL"));
        assert!(parse_base_url("ftp://x").unwrap_err().contains("not an http:// URL"));
        assert!(parse_base_url("http://").is_err());
        assert!(parse_base_url("http://a b").unwrap_err().contains("not a valid URL"));
        assert!(parse_base_url("http://h:1/?x=1").unwrap_err().contains("query"));
    }

    #[test]
    fn error_codes_come_from_the_body() {
        let r = Reply {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: Bytes::from_static(br#"{"error": {"code": "invalid_spec", "message": "bad fps", "fields": []}}"#),
            retry_after: None,
        };
        assert_eq!(r.error_code(), "invalid_spec");
        assert_eq!(r.describe(), "422 invalid_spec: bad fps");
        let plain = Reply { status: StatusCode::BAD_GATEWAY, body: Bytes::from_static(b"upstream"), retry_after: None };
        assert_eq!((plain.error_code().as_str(), plain.describe().as_str()), ("-", "502 -: upstream"));
    }
}
