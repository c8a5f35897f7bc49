//! Shared helpers: one GPU context per test process, rendering a spec to RGBA,
//! image metrics, the store backends a test runs on, and `tessera serve`
//! child processes over real sockets.

use std::sync::OnceLock;

use tessera_worker::gpu::GpuContext;
use tessera_worker::render::{FrameRenderer, Readback};
use tessera_worker::spec::{JobSpec, RawSpec, SpecLimits};

/// The GPU context shared by every test; compiled pipelines are cached in it.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        GpuContext::open()
            .unwrap_or_else(|e| panic!("GPU tests need an adapter (CI installs mesa-vulkan-drivers): {e}"))
    })
}

/// Validates a JSON spec.
pub fn spec(value: serde_json::Value) -> JobSpec {
    let raw: RawSpec = serde_json::from_value(value).expect("spec parses");
    raw.validate(&SpecLimits::default()).expect("spec is valid")
}

/// Renders frame `frame` of `spec` to tightly packed RGBA8.
pub fn render_rgba(spec: &JobSpec, frame: u32) -> Vec<u8> {
    let mut r = FrameRenderer::new(ctx(), spec.render_plan()).expect("renderer");
    r.render_frame(frame, Readback::Rgba8).expect("frame renders").data
}

/// A small spec for `template` at `w x h` with a `cols x rows` plan.
pub fn small_spec(template: &str, w: u32, h: u32, cols: u32, rows: u32, overlap: u32) -> JobSpec {
    spec(serde_json::json!({
        "template": template,
        "resolution": {"width": w, "height": h},
        "fps": 24, "duration_s": 1.0, "seed": 7,
        "tiles": {"cols": cols, "rows": rows, "overlap_px": overlap},
    }))
}

/// PSNR over the RGB channels of two RGBA8 images, in dB (infinite when equal).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (pa, pb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for c in 0..3 {
            let d = f64::from(pa[c]) - f64::from(pb[c]);
            sum += d * d;
            n += 1;
        }
    }
    let mse = sum / n as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Largest per-channel absolute difference over RGB.
pub fn max_abs_diff(a: &[u8], b: &[u8]) -> u8 {
    a.chunks_exact(4)
        .zip(b.chunks_exact(4))
        .flat_map(|(pa, pb)| (0..3).map(move |c| pa[c].abs_diff(pb[c])))
        .max()
        .unwrap_or(0)
}

/// Seam metric: mean absolute gradient across the tile-boundary columns and rows
/// divided by the mean absolute gradient across all other columns and rows.
/// `xs` and `ys` are the interior core boundaries.
pub fn seam_ratio(img: &[u8], w: u32, h: u32, xs: &[u32], ys: &[u32]) -> f64 {
    let px = |x: u32, y: u32, c: usize| f64::from(img[((y * w + x) * 4) as usize + c]);
    let col_grad =
        |x: u32| (0..h).map(|y| (0..3).map(|c| (px(x, y, c) - px(x - 1, y, c)).abs()).sum::<f64>()).sum::<f64>();
    let row_grad =
        |y: u32| (0..w).map(|x| (0..3).map(|c| (px(x, y, c) - px(x, y - 1, c)).abs()).sum::<f64>()).sum::<f64>();
    let (mut seam, mut seam_n, mut other, mut other_n) = (0.0, 0.0, 0.0, 0.0);
    for x in 1..w {
        if xs.contains(&x) {
            seam += col_grad(x);
            seam_n += f64::from(h);
        } else {
            other += col_grad(x);
            other_n += f64::from(h);
        }
    }
    for y in 1..h {
        if ys.contains(&y) {
            seam += row_grad(y);
            seam_n += f64::from(w);
        } else {
            other += row_grad(y);
            other_n += f64::from(w);
        }
    }
    (seam / seam_n) / (other / other_n)
}

/// A Tokio runtime for tests that drive the store.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

/// The store a test runs on: SQLite in the test's data directory, or a
/// database of its own on the PostgreSQL server of `TESSERA_TEST_POSTGRES`.
pub enum TestStore {
    Sqlite,
    Postgres(tessera_store::testing::TestDatabase),
}

impl TestStore {
    pub fn sqlite() -> Self {
        TestStore::Sqlite
    }

    /// A fresh PostgreSQL database, or `None` (skipped loudly) without a server.
    pub fn postgres() -> Option<Self> {
        let server = tessera_store::testing::postgres_server()?;
        let db = rt().block_on(tessera_store::testing::TestDatabase::create(&server)).expect("a test database");
        Some(TestStore::Postgres(db))
    }

    /// The `--db` URL for a worker whose data directory is `data`.
    pub fn url(&self, data: &std::path::Path) -> String {
        match self {
            TestStore::Sqlite => format!("sqlite://{}", data.join("tessera.db").display()),
            TestStore::Postgres(db) => db.url().to_string(),
        }
    }

    /// Opens the store (as a worker with data directory `data` would).
    pub async fn open(&self, data: &std::path::Path) -> tessera_store::Store {
        let url = tessera_store::StoreUrl::parse(&self.url(data)).unwrap();
        tessera_store::Store::open(&url).await.expect("the test store opens")
    }
}

/// Declares each listed test (a `fn(&TestStore)`) once per backend:
/// `sqlite::NAME` and `postgres::NAME` (skipped loudly without a server).
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::util::TestStore::sqlite());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(db) = $crate::util::TestStore::postgres() {
                        super::$name(&db);
                    }
                }
            )*
        }
    };
}

/// The path of the `tessera` binary under test.
pub fn tessera() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
}

/// The MD5 of every packet (JPEG frame) of a clip, as ffmpeg reads them.
pub fn frame_md5s(path: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v", "-c", "copy", "-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg is installed (apt-get install ffmpeg)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().filter(|l| !l.starts_with('#')).map(|l| l.rsplit(',').next().unwrap().trim().to_string()).collect()
}

/// The built-in price book with a base rate at which one frame costs whole
/// cents: 8.88/s × 1/24 s = 0.37 (R = 1.0 up to 720p, F = 1.0 at 24 fps,
/// M = 1.0 general), so a preview's price tells its frames apart (a 10 s clip
/// would cost 88.80). Written to `dir/book.toml`; its path and the book.
pub fn cents_per_frame_book(dir: &std::path::Path) -> (String, tessera_metering::PriceBook) {
    use tessera_metering::price::DEFAULT_PRICE_BOOK;
    let from = "base_per_output_second = \"0.012\"";
    assert!(DEFAULT_PRICE_BOOK.contains(from), "fixture drifted: {from}");
    let text = DEFAULT_PRICE_BOOK.replacen(from, "base_per_output_second = \"8.88\"", 1);
    let path = dir.join("book.toml");
    std::fs::write(&path, &text).expect("writing the price book");
    let book = tessera_metering::PriceBook::parse(&text, "book.toml").expect("the edited book is valid");
    (path.to_string_lossy().into_owned(), book)
}

/// A minimal HTTP/1.1 client for the real-socket tests: one request per connection.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
    out
}

/// A `tessera serve` child process on ephemeral ports.
pub struct Server {
    pub child: std::process::Child,
    pub api: String,
    pub metrics: String,
    /// Its stderr (info level), for a failing test to show.
    pub log: std::path::PathBuf,
}

impl Server {
    /// A worker on `store` with data directory `data`.
    pub fn start_on(store: &TestStore, data: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut cmd = tessera();
        cmd.args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--db",
            &store.url(data),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("TESSERA_ADMIN_KEY", "admin-secret")
        .env("TESSERA_LOG", "info,wgpu_hal=off,wgpu_core=warn")
        .stdout(std::process::Stdio::piped());
        static LOGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LOGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Every start is a worker of its own (a restarted one too), unless the test names it.
        if !extra.contains(&"--worker-id") {
            cmd.args(["--worker-id", &format!("w-test-{}-{n}", std::process::id())]);
        }
        let log = std::env::temp_dir().join(format!("tessera-test-{}-{n}.log", std::process::id()));
        cmd.stderr(std::fs::File::create(&log).expect("a log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("tessera serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = |after: &str| line.split(after).nth(1).unwrap().split([' ', ')', '/']).next().unwrap().to_string();
        let api = addr("http://");
        let metrics = line.split("metrics on http://").nth(1).unwrap().split('/').next().unwrap().to_string();
        Server { child, api, metrics, log }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A tenant and its API key.
    pub fn tenant(&self, name: &str, tier: &str) -> String {
        let body = serde_json::json!({"name": name, "tier": tier}).to_string();
        let r = http(&self.api, "POST", "/v1/tenants", &[("Authorization", "Bearer admin-secret")], body.as_bytes());
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["api_key"].as_str().unwrap().to_string()
    }

    pub fn submit(&self, key: &str, spec: &serde_json::Value, idem: Option<&str>) -> HttpResponse {
        let auth = format!("Bearer {key}");
        let mut h = vec![("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        if let Some(k) = idem {
            h.push(("Idempotency-Key", k));
        }
        http(&self.api, "POST", "/v1/jobs", &h, spec.to_string().as_bytes())
    }

    pub fn job(&self, key: &str, id: &str) -> serde_json::Value {
        let auth = format!("Bearer {key}");
        http(&self.api, "GET", &format!("/v1/jobs/{id}"), &[("Authorization", &auth)], b"").json()
    }

    /// Polls until the job reaches a final state.
    pub fn wait(&self, key: &str, id: &str, timeout: std::time::Duration) -> serde_json::Value {
        let start = std::time::Instant::now();
        loop {
            let j = self.job(key, id);
            if ["succeeded", "dead", "cancelled"].contains(&j["state"].as_str().unwrap_or("")) {
                return j;
            }
            assert!(start.elapsed() < timeout, "job {id} still {} after {timeout:?}", j["state"]);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Server {
    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log); // a temp file: nothing to keep once the test passed
    }
}
