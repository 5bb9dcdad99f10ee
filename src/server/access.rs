//! One observation per request: a request id, one access-log line, and the request metrics.
//!
//! The request id is the caller's `X-Request-Id` when it is short and plain, else a fresh one (a per-process random
//! prefix and a counter); it is echoed in the response's `X-Request-Id` header and on the log line, so a client's
//! report can be matched to the server's log. `--log-format json` writes each access line as one JSON object on
//! stderr (for log collectors); `text` sends it through the process's `tracing` subscriber like every other event.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;

use super::AppState;

/// How access lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines through the process's log subscriber.
    #[default]
    Text,
    /// One JSON object per line on stderr.
    Json,
}

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest caller-supplied request id that is kept.
const MAX_ID_LEN: usize = 64;
/// Paths and queries are capped on the log line, so a huge URL cannot flood the log.
const MAX_LOGGED_CHARS: usize = 200;

/// The caller's id when it is usable, else a new one.
fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_ID_LEN
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// `PREFIX-N`: PREFIX is random per process (so replicas do not collide), N counts requests.
fn new_request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    // std seeds every RandomState from the OS: a random number without another dependency.
    let prefix = *PREFIX.get_or_init(|| std::collections::hash_map::RandomState::new().build_hasher().finish() as u32);
    format!("{prefix:08x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn capped(s: &str) -> String {
    s.chars().take(MAX_LOGGED_CHARS).collect()
}

/// Middleware around every route: id in, metrics and one log line out.
pub async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    let method = request.method().clone();
    let path = capped(request.uri().path());
    let query = capped(request.uri().query().unwrap_or(""));
    // The route pattern, not the raw path, labels the metrics: unknown paths share one label.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let mut response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    state.metrics.observe_request(&route, status, seconds);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let ms = (seconds * 1e4).round() / 10.0;
    match state.log_format {
        LogFormat::Text => tracing::info!(
            target: "diffuse::server",
            request_id = %id,
            %method,
            path,
            query,
            status,
            ms,
            "request"
        ),
        LogFormat::Json => {
            let line = json!({
                "ts": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                "level": "INFO",
                "msg": "request",
                "request_id": id,
                "method": method.as_str(),
                "path": path,
                "query": query,
                "route": route,
                "status": status,
                "ms": ms,
            });
            // One write per line, so lines from concurrent requests never interleave.
            let _ = std::io::stderr().lock().write_all(format!("{line}\n").as_bytes());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: &str) -> Request {
        Request::builder()
            .header("x-request-id", value)
            .body(axum::body::Body::empty())
            .expect("request")
    }

    #[test]
    fn keeps_plain_caller_ids_and_replaces_others() {
        assert_eq!(request_id(&with_header("abc-123_x.y")), "abc-123_x.y");
        for bad in ["", "has space", "quote\"", &"x".repeat(65)] {
            let id = request_id(&with_header(bad));
            assert_ne!(id, bad);
            assert!(id.contains('-') && id.len() < 30, "{id}");
        }
        assert_ne!(new_request_id(), new_request_id());
    }
}
