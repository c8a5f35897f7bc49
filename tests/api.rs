//! The API's contract, over a real socket: `/openapi.json` against the router
//! that serves it (every documented operation answers with a documented
//! status, every other method is 405), the job spec's schema against the
//! template catalog, the access log in both formats (never a key), a
//! tenant whose tier left the price book (a clear 409, never a panic), and
//! the listeners' guards: connections that send half a request header are
//! closed after the header read timeout, and past the connection cap new
//! connections wait for a free slot while the other listener answers.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_worker::render::catalog::TEMPLATES;

use crate::util::{http, Server, TestStore};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn admin_path(path: &str) -> bool {
    matches!(path, "/v1/tenants" | "/v1/workers")
}

#[test]
fn the_served_document_and_the_router_agree() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(&TestStore::sqlite(), dir.path(), &[], &[]);
    let key = s.tenant("acme", "mid");
    let doc = http(&s.api, "GET", "/openapi.json", &[], b"").json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{paths:?}");
    let mut operation_ids = BTreeSet::new();
    for (path, item) in paths {
        let concrete = path.replace("{id}", "j_0123456789abcdef");
        for method in METHODS {
            let key = if admin_path(path) { "admin-secret".to_string() } else { key.clone() };
            let auth = format!("Bearer {key}");
            let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
            let body: &[u8] = if method == "GET" { b"" } else { b"{}" };
            let r = http(&s.api, method, &concrete, &headers, body);
            match item.get(method.to_lowercase()) {
                Some(op) => {
                    let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
                    assert!(
                        documented.contains(&&r.status.to_string()),
                        "{method} {path} answered {}, which its document does not list ({documented:?}): {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    );
                    assert!(r.status != 405 && r.status != 404 || r.json()["error"]["message"] != "route not found");
                    assert!(operation_ids.insert(op["operationId"].as_str().unwrap().to_string()), "duplicate id");
                    if path.starts_with("/v1/") {
                        let scheme = if admin_path(path) { "admin_key" } else { "tenant_key" };
                        assert_eq!(op["security"], json!([{scheme: []}]), "{method} {path}");
                        assert!(op["responses"].get("401").is_some(), "{method} {path} documents 401");
                    }
                }
                None => {
                    assert_eq!(r.status, 405, "{method} {path} is not documented, so it must be 405");
                    assert_eq!(r.json()["error"]["code"], "method_not_allowed");
                    let allow = r.header("allow").unwrap_or_default().to_lowercase();
                    for documented in item.as_object().unwrap().keys().filter(|k| METHODS.contains(&&*k.to_uppercase()))
                    {
                        assert!(allow.contains(documented.as_str()), "{path}: Allow `{allow}` lacks {documented}");
                    }
                }
            }
        }
    }
    // An unknown route is a JSON 404.
    let r = http(&s.api, "GET", "/v1/nothing", &[], b"");
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("not_found")));
    // Creation links every follow-up operation, by id from the body.
    let created = &doc["paths"]["/v1/jobs"]["post"]["responses"]["201"];
    assert!(created["headers"].get("Location").is_some());
    let links = created["links"].as_object().unwrap();
    let linked: BTreeSet<&str> = links.values().map(|l| l["operationId"].as_str().unwrap()).collect();
    assert_eq!(linked, BTreeSet::from(["get_job", "cancel_job", "get_output", "get_metadata"]));
    for link in links.values() {
        assert!(operation_ids.contains(link["operationId"].as_str().unwrap()));
        assert_eq!(link["parameters"]["id"], "$response.body#/id");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        (&schemes["tenant_key"]["scheme"], &schemes["admin_key"]["scheme"]),
        (&json!("bearer"), &json!("bearer"))
    );
    spec_schema_follows_the_catalog(&doc);
}

/// One spec branch per template version, its parameters and their ranges
/// exactly the catalog's; no object accepts unknown fields.
fn spec_schema_follows_the_catalog(doc: &Value) {
    let schemas = &doc["components"]["schemas"];
    let branches = schemas["JobSpec"]["oneOf"].as_array().unwrap();
    assert_eq!(branches.len(), TEMPLATES.len());
    for t in TEMPLATES {
        let branch = &schemas[format!("Spec_{}_{}", t.name, t.version)];
        assert_eq!(branch["additionalProperties"], false);
        assert!(branch["properties"]["template"]["enum"].as_array().unwrap().contains(&json!(t.id())));
        let params = &branch["properties"]["params"];
        assert_eq!(params["additionalProperties"], false);
        let names: BTreeSet<&str> = params["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(names, t.params.iter().map(|p| p.name).collect::<BTreeSet<_>>(), "{}", t.id());
    }
    for name in ["TilePlan", "FrameRange", "NewTenant"] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
    assert_eq!(schemas["NewTenant"]["properties"]["tier"]["enum"], json!(["enterprise", "mid", "short"]));
}

#[test]
fn every_request_leaves_one_access_log_line_without_its_key() {
    for format in ["json", "text"] {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start_on(&TestStore::sqlite(), dir.path(), &["--log-format", format], &[]);
        let key = s.tenant("acme", "mid");
        let spec =
            json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.05});
        let id = s.submit(&key, &spec, None).json()["id"].as_str().unwrap().to_string();
        let auth = format!("Bearer {key}");
        assert_eq!(http(&s.api, "GET", &format!("/v1/jobs/{id}"), &[("Authorization", &auth)], b"").status, 200);
        assert_eq!(http(&s.api, "GET", "/v1/jobs/j_0000000000000000", &[("Authorization", &auth)], b"").status, 404);
        let log = std::fs::read_to_string(&s.log).unwrap();
        assert!(!log.contains(&key) && !log.contains("admin-secret"), "a key reached the log:\n{log}");
        assert!(!log.contains('\x1b'), "ANSI codes in a log file");
        let access: Vec<&str> = log.lines().filter(|l| l.contains("access")).collect();
        assert_eq!(access.len(), 4, "one line per request (tenant, submit, get, 404):\n{log}");
        if format == "json" {
            let get: Value = serde_json::from_str(access[2]).expect("a JSON line");
            assert_eq!(get["target"], "access");
            assert_eq!(
                (&get["method"], &get["route"], &get["status"]),
                (&json!("GET"), &json!("/v1/jobs/{id}"), &json!(200))
            );
            assert_eq!(get["job"], json!(id));
            assert!(get["tenant"].as_str().is_some_and(|t| t.starts_with("t_")), "{get}");
            assert!(get["latency_ms"].as_f64().is_some());
            let missing: Value = serde_json::from_str(access[3]).unwrap();
            assert_eq!((&missing["status"], &missing["error"]), (&json!(404), &json!("not_found")));
            // Every line tessera writes is JSON (a driver may print its own to stderr).
            for line in log.lines().filter(|l| l.starts_with('{') || l.contains("\"level\"")) {
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
            assert!(log.lines().filter(|l| l.starts_with('{')).count() >= 4);
        } else {
            assert!(access[2].contains("method=GET") && access[2].contains("route=\"/v1/jobs/{id}\""), "{}", access[2]);
            assert!(access[2].contains("status=200") && access[2].contains(&format!("job=\"{id}\"")), "{}", access[2]);
        }
    }
}

#[test]
fn a_tier_removed_from_the_price_book_is_a_clear_409_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestStore::sqlite();
    let key = {
        let s = Server::start_on(&db, dir.path(), &[], &[]);
        s.tenant("acme", "mid")
    };
    // The operator drops tier `mid` from the book.
    let book = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/price-book.toml")).unwrap();
    let (head, rest) = book.split_once("[tiers.mid]").unwrap();
    let tail = &rest[rest.find("[tiers.enterprise]").unwrap()..];
    let path = dir.path().join("book.toml");
    std::fs::write(&path, format!("{head}{tail}")).unwrap();
    let s = Server::start_on(&db, dir.path(), &["--price-book", path.to_str().unwrap()], &[]);
    let auth = format!("Bearer {key}");
    let spec = json!({"template": "orbit", "resolution": "720p", "duration_s": 1.0});
    for (method, path, body) in [("POST", "/v1/jobs", spec.to_string()), ("POST", "/v1/quote", spec.to_string())] {
        let r = http(&s.api, method, path, &[("Authorization", &auth)], body.as_bytes());
        assert_eq!(r.status, 409, "{path}: {}", String::from_utf8_lossy(&r.body));
        let e = r.json();
        assert_eq!(e["error"]["code"], "tier_unavailable");
        assert!(e["error"]["message"].as_str().unwrap().contains("`mid`"), "{e}");
    }
    // What does not need the tier still answers, and the worker is healthy.
    assert_eq!(http(&s.api, "GET", "/v1/usage", &[("Authorization", &auth)], b"").status, 200);
    assert_eq!(http(&s.api, "GET", "/v1/jobs", &[("Authorization", &auth)], b"").status, 200);
    assert_eq!(http(&s.api, "GET", "/readyz", &[], b"").status, 200);
    assert!(!std::fs::read_to_string(&s.log).unwrap().contains("panicked"));
}

/// The start of a request whose head never ends.
const HALF_A_HEADER: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ";

/// A connection to `addr` that has sent half a request header.
fn half_a_header(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(HALF_A_HEADER).unwrap();
    s
}

/// Reads from a connection the server should close without answering: waits
/// up to `limit` for the close, and returns how many bytes came first (`None`
/// if it is still open).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<usize> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = 0;
    let mut buf = [0; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got += n,
            // Reset rather than closed: closed all the same.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
            Err(e) => panic!("reading: {e}"),
        }
    }
}

#[test]
fn connections_that_send_half_a_header_are_closed_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(1500);
    let ms = timeout.as_millis().to_string();
    let mut s = Server::start_on(&TestStore::sqlite(), dir.path(), &["--header-read-timeout-ms", &ms], &[]);
    let opened = Instant::now();
    let mut held: Vec<TcpStream> = (0..50).map(|_| half_a_header(&s.api)).collect();
    held.extend((0..5).map(|_| half_a_header(&s.metrics)));
    // Whole requests are served meanwhile, on both listeners.
    assert_eq!(http(&s.api, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(http(&s.metrics, "GET", "/metrics", &[], b"").status, 200);
    // Every half-sent request is cut off: closed without an answer, by the
    // timeout (never before it; the bound after it is generous).
    for (n, c) in held.iter_mut().enumerate() {
        let got = read_until_closed(c, Duration::from_secs(60));
        assert_eq!(got, Some(0), "connection {n} of {}: still open after 60 s, or answered", held.len());
    }
    assert!(opened.elapsed() >= timeout, "closed before the header read timeout");
    // A client that sends nothing at all is cut off too.
    let mut silent = TcpStream::connect(&s.api).unwrap();
    assert_eq!(read_until_closed(&mut silent, Duration::from_secs(60)), Some(0));
    assert_eq!(http(&s.api, "GET", "/healthz", &[], b"").status, 200, "the worker is as healthy as before");

    // A SIGTERM with half-sent requests open: they hold the exit back no
    // longer than the header read timeout, and the exit is clean.
    let _held: Vec<TcpStream> = (0..10).map(|_| half_a_header(&s.api)).collect();
    let term = std::process::Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = s.child.try_wait().unwrap() {
            break exit;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "the worker never exited\n{}", s.log_tail(20));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "a drain is a clean exit: {exit:?}\n{}", s.log_tail(20));
}

#[test]
fn past_the_connection_cap_new_connections_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    // A header read timeout far longer than the test: only the cap is at play.
    let args = ["--max-connections", "4", "--header-read-timeout-ms", "600000"];
    let s = Server::start_on(&TestStore::sqlite(), dir.path(), &args, &[]);
    // Four connections hold every slot of the API listener.
    let mut held: Vec<TcpStream> = (0..4).map(|_| half_a_header(&s.api)).collect();
    // A fifth connects (the kernel's backlog takes it) and sends a whole
    // request, which waits: no answer while the four are open.
    let mut fifth = TcpStream::connect(&s.api).unwrap();
    fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(read_until_closed(&mut fifth, Duration::from_secs(1)), None, "answered past the cap");
    // The metrics listener has slots of its own.
    assert_eq!(http(&s.metrics, "GET", "/metrics", &[], b"").status, 200);
    // One of the four hangs up: its slot goes to the fifth, which is answered.
    drop(held.pop());
    fifth.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut answer = Vec::new();
    fifth.read_to_end(&mut answer).expect("the waiting request is answered once a slot is free");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The fifth closed: its slot is free again for a plain request.
    assert_eq!(http(&s.api, "GET", "/healthz", &[], b"").status, 200);
    drop(held);
    assert!(s.log_tail(50).contains("connection cap"), "the cap is logged:\n{}", s.log_tail(50));
}
