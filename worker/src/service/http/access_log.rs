//! One access-log line per request, at target `access`: method, route
//! template (never the raw path, so a line is cheap to aggregate), status,
//! latency to the response head, the tenant and job it concerned, and the
//! error code of an error. Never a key or a header. The handlers note the
//! tenant and job in a task-local slot as they learn them.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

use super::ErrorCode;

/// What a request concerned, as the handler found out.
#[derive(Debug, Default)]
struct Noted {
    tenant: Option<String>,
    job: Option<String>,
}

tokio::task_local! {
    static NOTED: Arc<Mutex<Noted>>;
}

fn note(f: impl FnOnce(&mut Noted)) {
    // Outside a request (a handler called directly) there is nothing to log.
    let _ = NOTED.try_with(|n| f(&mut n.lock().unwrap_or_else(|e| e.into_inner())));
}

/// The request was made by this tenant.
pub(crate) fn note_tenant(tenant: &str) {
    note(|n| n.tenant = Some(tenant.to_string()));
}

/// The request concerned this job.
pub(crate) fn note_job(job: &str) {
    note(|n| n.job = Some(job.to_string()));
}

/// The middleware: runs the request, then logs it.
pub(crate) async fn log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let noted = Arc::new(Mutex::new(Noted::default()));
    let resp = NOTED.scope(noted.clone(), next.run(req)).await;
    let n = noted.lock().unwrap_or_else(|e| e.into_inner());
    let latency_ms = start.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        target: "access",
        method = %method,
        route = route.as_deref().unwrap_or("(unmatched)"),
        status = resp.status().as_u16(),
        latency_ms = (latency_ms * 1000.0).round() / 1000.0,
        tenant = n.tenant.as_deref(),
        job = n.job.as_deref(),
        error = resp.extensions().get::<ErrorCode>().map(|c| c.0),
        "request"
    );
    resp
}
