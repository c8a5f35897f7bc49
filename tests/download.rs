//! Downloads over a real socket, on every store backend: a clip past 1 GiB
//! streamed whole while the worker's peak RSS barely moves, a Range from its
//! middle, a client that hangs up part-way metered for about what it got, and
//! one left open through a SIGTERM metered before the worker exits; and the
//! Range rules of RFC 9110 (a last position past the end clamped, however
//! many digits it has, the unit in any case, suffixes longer than the clip,
//! 416 and 400 where they belong), each range metered by its length.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use tessera_worker::service::download::CHUNK;

use crate::util::{http, rt, Server, TestStore};

crate::on_every_backend!(
    a_clip_past_a_gibibyte_streams_in_bounded_memory_and_is_metered_by_bytes_sent,
    ranges_follow_rfc_9110_and_are_metered_by_their_length,
);

/// The clip's size: past 1 GiB, and not a whole number of chunks.
const BIG: u64 = (1 << 30) + (100 << 20) + 12_345;
/// Bytes of known pattern at the start, the middle and the end; the rest is a hole.
const MARK: u64 = 1 << 20;
/// Growth of the worker's peak RSS allowed while it serves the whole clip.
const RSS_GROWTH_MAX: u64 = 64 << 20;
/// The receive buffer the hanging-up clients ask for (Linux doubles it).
const RCVBUF: u32 = 64 << 10;
/// hyper's default limit on its write buffer (`DEFAULT_MAX_BUFFER_SIZE`): it
/// takes another chunk from the body while it holds less than this.
const HYPER_WRITE_BUF: u64 = 8192 + 4096 * 100;

fn a_clip_past_a_gibibyte_streams_in_bounded_memory_and_is_metered_by_bytes_sent(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_on(db, dir.path(), &[], &[]);
    let key = s.tenant("acme", "mid");
    let spec = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.05});
    let id = s.submit(&key, &spec, None).json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.wait(&key, &id, Duration::from_secs(120))["state"], "succeeded");
    let clip = clip_file(dir.path(), &id);
    let want = big_clip(&clip);
    let path = format!("/v1/jobs/{id}/output");

    // Whole: the body hashed as it arrives, the worker's peak RSS reset first.
    let pid = s.child.id();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting the worker's peak RSS");
    let rss_before = proc_kib(pid, "VmRSS") << 10;
    let started = Instant::now();
    let mut whole = get(connect(&s.api, None), &path, &key, None);
    assert_eq!((whole.status, whole.header("content-length")), (200, Some(BIG.to_string().as_str())));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let (got, hash) = drain(&mut whole.body, BIG);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!((got, hash), (BIG, want), "the whole clip, byte for byte");
    let peak = proc_kib(pid, "VmHWM") << 10;
    let growth = peak.saturating_sub(rss_before);
    println!(
        "whole clip: {BIG} bytes in {secs:.2} s ({:.0} MiB/s); worker RSS {} MiB, peak {} MiB while serving (+{:.1} MiB)",
        BIG as f64 / secs / f64::from(1 << 20),
        rss_before >> 20,
        peak >> 20,
        growth as f64 / f64::from(1 << 20)
    );
    assert!(growth < RSS_GROWTH_MAX, "serving {BIG} bytes grew the worker's peak RSS by {growth} bytes");
    // Metered before the last chunk went out: no wait.
    assert_eq!(egress(&s, &key), BIG, "a whole download is metered exactly, by the time it is received");

    // A range from the middle.
    let (first, last) = (BIG / 2 - 400_000, BIG / 2 + 1_000_000);
    let mut part = get(connect(&s.api, None), &path, &key, Some(&format!("bytes={first}-{last}")));
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some(format!("bytes {first}-{last}/{BIG}").as_str()));
    let mut body = Vec::new();
    part.body.read_to_end(&mut body).unwrap();
    assert_eq!(body, read_at(&clip, first, last - first + 1), "the range's bytes");
    assert_eq!(egress(&s, &key), BIG + body.len() as u64, "a range is metered by its length");

    // A client that reads 64 MiB and hangs up: metered for at least what it
    // read, at most that plus what the sockets and hyper can hold.
    let metered = egress(&s, &key);
    let read = 64 << 20;
    let mut cut = get(connect(&s.api, Some(RCVBUF)), &path, &key, None);
    read_exactly(&mut cut.body, read);
    drop(cut);
    let sent = wait_for_more(&s, &key, metered) - metered;
    let bound = in_flight_bound();
    println!("hung up after {read} bytes: metered {sent} (at most {bound} more allowed)");
    assert!((read..=read + bound).contains(&sent), "read {read}, metered {sent}, in-flight bound {bound}");
    // The metric counts what the ledger took (recorded just after the write).
    let total = egress(&s, &key);
    wait_until("the egress metric to match the ledger", || metric_egress(&s) == total);

    // SIGTERM with a download open: the worker waits for the connection, and
    // the egress of the hang-up that follows lands before it exits.
    let mut open = get(connect(&s.api, Some(RCVBUF)), &path, &key, None);
    read_exactly(&mut open.body, read);
    let term = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(term.success());
    wait_until("the worker stops listening", || TcpStream::connect(&s.api).is_err());
    drop(open);
    let exit = wait_exit(&mut s.child);
    assert!(exit.success(), "a drain is a clean exit: {exit:?}\n{}", s.log_tail(20));
    let events = rt().block_on(async {
        let store = db.open(dir.path()).await;
        store.events(&tessera_store::EventFilter::default()).await.unwrap()
    });
    let mut egress: Vec<u64> =
        events.iter().filter(|e| e.kind == tessera_metering::EventKind::Egress).map(|e| e.quantity as u64).collect();
    let last = egress.iter().sum::<u64>() - total;
    assert!((read..=read + bound).contains(&last), "read {read} before the SIGTERM, metered {last}");
    // One event per download, each of what it sent.
    let mut want = vec![BIG, body.len() as u64, sent, last];
    egress.sort_unstable();
    want.sort_unstable();
    assert_eq!(egress, want);
    assert!(!s.log_tail(50).contains("NOT METERED"), "{}", s.log_tail(50));
}

/// The clip's size in the report of issue 19 (a 181 kB clip).
const CLIP: u64 = 181_034;

fn ranges_follow_rfc_9110_and_are_metered_by_their_length(db: &TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(db, dir.path(), &[], &[]);
    let key = s.tenant("acme", "mid");
    let spec = json!({"template": "orbit", "resolution": {"width": 64, "height": 36}, "fps": 24, "duration_s": 0.05});
    let id = s.submit(&key, &spec, None).json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.wait(&key, &id, Duration::from_secs(120))["state"], "succeeded");
    // The clip replaced with CLIP bytes of known pattern.
    let clip = pattern(7, CLIP as usize);
    std::fs::write(clip_file(dir.path(), &id), &clip).unwrap();
    let path = format!("/v1/jobs/{id}/output");
    let auth = format!("Bearer {key}");
    let get = |range: &str| http(&s.api, "GET", &path, &[("Authorization", &auth), ("Range", range)], b"");
    let mut metered = 0;

    // 206 for each: the Range, its first and last byte, what the answer says.
    let end = CLIP - 1;
    for (range, first, last, why) in [
        ("bytes=448-99999999999999999999999", 448, end, "a last position too large for 64 bits is the end"),
        ("bytes=448-999999", 448, end, "a last position past the end is the end"),
        ("BYTES=0-9", 0, 9, "the unit in capitals"),
        ("Bytes=10-19", 10, 19, "the unit capitalised"),
        ("bytes=-999999", 0, end, "a suffix longer than the clip is all of it"),
        ("bytes=-99999999999999999999999", 0, end, "however long"),
        ("bytes=-5", CLIP - 5, end, "the last five bytes"),
        ("bytes= 100-199", 100, 199, "white space after the ="),
        ("bytes=181000-", 181_000, end, "to the end"),
    ] {
        let r = get(range);
        assert_eq!(r.status, 206, "{range} ({why}): {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-range"), Some(format!("bytes {first}-{last}/{CLIP}").as_str()), "{range}");
        assert_eq!(r.header("content-length"), Some((last - first + 1).to_string().as_str()), "{range}");
        assert!(r.body == clip[first as usize..=last as usize], "{range}: the range's bytes");
        metered += r.body.len() as u64;
    }

    // 416, naming the clip's length: nothing to send, nothing metered.
    for range in [
        "bytes=181034-",
        "bytes=181034-181035",
        "bytes=99999999999999999999999-",
        "bytes=18446744073709551616-18446744073709551617",
        "bytes=-0",
        "bytes=5-3",
    ] {
        let r = get(range);
        assert_eq!(r.status, 416, "{range}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-range"), Some(format!("bytes */{CLIP}").as_str()), "{range}");
        assert_eq!(r.json()["error"]["code"], "bad_range", "{range}");
    }

    // 400 naming the field: a header that is not one byte range.
    for range in ["bytes=abc", "items=0-1", "bytes=0-1,5-6", "bytes=1 - 2", ""] {
        let r = get(range);
        assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("bad_range")), "Range {range:?}");
        assert_eq!(r.json()["error"]["fields"][0]["field"], "Range", "{range:?}");
    }

    // Each 206 was metered by its length, and nothing else was.
    assert_eq!(egress(&s, &key), metered);
}

/// The clip file of job `id` in the worker's data directory.
fn clip_file(data: &Path, id: &str) -> PathBuf {
    let clips: Vec<PathBuf> = std::fs::read_dir(data.join("clips"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().unwrap().to_str().unwrap().starts_with(id) && p.extension().is_some_and(|e| e == "avi")
        })
        .collect();
    assert_eq!(clips.len(), 1, "{clips:?}");
    clips.into_iter().next().unwrap()
}

/// Replaces the clip with a sparse file of `BIG` bytes, a known pattern at its
/// start, its middle (off any chunk boundary) and its end; returns its SHA-256
/// (read back from disk).
fn big_clip(path: &Path) -> [u8; 32] {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    f.set_len(BIG).unwrap();
    for at in [0, BIG / 2 - 300_001, BIG - MARK] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&pattern(at, MARK as usize)).unwrap();
    }
    drop(f);
    let (n, hash) = drain(&mut std::fs::File::open(path).unwrap(), BIG);
    assert_eq!(n, BIG);
    hash
}

/// `len` pseudo-random bytes seeded by where they go (xorshift64).
fn pattern(at: u64, len: usize) -> Vec<u8> {
    let mut x = at | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn read_at(path: &Path, at: u64, len: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Reads to the end (1 MiB at a time, never more in memory), hashing; checks
/// nothing follows `expected` bytes.
fn drain(r: &mut impl Read, expected: u64) -> (u64, [u8; 32]) {
    let (mut n, mut hash, mut buf) = (0u64, Sha256::new(), vec![0; 1 << 20]);
    loop {
        let got = r.read(&mut buf).unwrap();
        if got == 0 {
            break;
        }
        hash.update(&buf[..got]);
        n += got as u64;
        assert!(n <= expected, "more than {expected} bytes");
    }
    (n, hash.finalize().into())
}

fn read_exactly(r: &mut impl Read, n: u64) {
    let mut buf = vec![0; 1 << 20];
    let mut left = n;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..want]).unwrap();
        left -= want as u64;
    }
}

/// A connection to `addr`, with a receive buffer of `rcvbuf` bytes if given
/// (a small one keeps the bytes a client holds unread small and known).
fn connect(addr: &str, rcvbuf: Option<u32>) -> TcpStream {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let s = rt().block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        socket.connect(addr).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// A response whose head was read, its body left on the socket.
struct Download {
    status: u16,
    headers: Vec<(String, String)>,
    body: BufReader<TcpStream>,
}

impl Download {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn get(mut s: TcpStream, path: &str, key: &str, range: Option<&str>) -> Download {
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n{range}\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut body = BufReader::new(s);
    let mut line = String::new();
    body.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        body.read_line(&mut line).unwrap();
        match line.trim_end().split_once(':') {
            Some((k, v)) => headers.push((k.trim().to_string(), v.trim().to_string())),
            None => break,
        }
    }
    Download { status, headers, body }
}

/// The tenant's metered egress, from `/v1/usage`.
fn egress(s: &Server, key: &str) -> u64 {
    let usage = http(&s.api, "GET", "/v1/usage", &[("Authorization", &format!("Bearer {key}"))], b"").json();
    usage["egress_bytes"].as_u64().unwrap_or_else(|| panic!("{usage}"))
}

/// The tenant's egress once it has grown past `than` (an egress written from a
/// dropped body lands a moment after the hang-up).
fn wait_for_more(s: &Server, key: &str, than: u64) -> u64 {
    let mut now = than;
    wait_until("the hang-up's egress", || {
        now = egress(s, key);
        now > than
    });
    now
}

/// `tessera_egress_bytes_total`, over every tenant.
fn metric_egress(s: &Server) -> u64 {
    let text = String::from_utf8(http(&s.metrics, "GET", "/metrics", &[], b"").body).unwrap();
    text.lines()
        .filter(|l| l.starts_with("tessera_egress_bytes_total"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// The most bytes handed to hyper that a client that hung up may never have
/// read: its receive buffer (doubled by Linux), the worker's send buffer (at
/// most the kernel's `tcp_wmem` maximum), hyper's write buffer and the chunk
/// that overflowed it.
fn in_flight_bound() -> u64 {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap();
    let wmem_max: u64 = wmem.split_whitespace().nth(2).unwrap().parse().unwrap();
    2 * u64::from(RCVBUF) + wmem_max + HYPER_WRITE_BUF + CHUNK as u64
}

/// A field of `/proc/PID/status`, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let mut exit = None;
    wait_until("the worker to exit", || {
        exit = child.try_wait().unwrap();
        exit.is_some()
    });
    exit.unwrap()
}
