//! `diffuse serve`: an HTTP API and a small web page over one trained model, run like a service.
//!
//! Requests are validated ([`params`]), queued on a bounded channel, and run by a single model worker that batches
//! compatible requests ([`worker`]). A full queue answers 503, a request that waits too long 504, bad input 400, a
//! client over its rate limit 429 ([`rate_limit`]), always with a JSON `{"error": ...}` body. Probes
//! ([`lifecycle`]), Prometheus metrics ([`metrics`]) and an OpenAPI document make it deployable behind a load
//! balancer; every request gets an id and one access-log line ([`access`]). SIGTERM or SIGINT drains: new work is
//! refused, accepted work is answered (within `drain`), then the process exits 0.

pub mod access;
pub mod api;
pub mod lifecycle;
pub mod metrics;
pub mod params;
pub mod rate_limit;
pub mod worker;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use thiserror::Error;
use tokio::sync::mpsc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::run::Loaded;
use crate::run::TrainConfig;
use access::LogFormat;
use lifecycle::Lifecycle;
use metrics::{Metrics, ModelInfo};
use rate_limit::{Limiter, RateLimit};
use worker::{Job, WorkerContext};

/// How the server is run.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Jobs that may wait for the model; more get 503.
    pub queue: usize,
    pub timeout: Duration,
    /// After a stop signal, how long accepted requests may take before the process exits anyway.
    pub drain: Duration,
    pub rate_limit: Option<RateLimit>,
    pub log_format: LogFormat,
    pub precision: crate::runtime::precision::Precision,
    /// Where the model runs, as `diffuse_model_info` reports it.
    pub device: String,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Fatal(String),
}

pub struct AppState {
    pub name: String,
    pub config: TrainConfig,
    pub jobs: mpsc::Sender<Job>,
    pub timeout: Duration,
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
    pub limiter: Option<Limiter>,
    pub log_format: LogFormat,
}

/// Serves `loaded` until SIGTERM or SIGINT, then drains and returns. Prints `listening on http://ADDR` (the bound
/// address) on stdout once the model is warmed up and the server is ready; it accepts connections (and answers
/// `/livez`) from the moment it is bound.
pub fn run(loaded: Loaded, name: String, options: ServeOptions) -> Result<(), ServeError> {
    let info = ModelInfo {
        name: name.clone(),
        kind: loaded.config.objective.name().to_string(),
        parameters: loaded.model.parameter_count(),
        precision: format!("{:?}", options.precision).to_lowercase(),
        device: options.device.clone(),
    };
    let metrics = Arc::new(Metrics::new(&info)?);
    let lifecycle = Arc::new(Lifecycle::default());
    let (tx, rx) = mpsc::channel(options.queue.max(1));
    let state = Arc::new(AppState {
        name,
        config: loaded.config.clone(),
        jobs: tx,
        timeout: options.timeout,
        lifecycle: lifecycle.clone(),
        metrics: metrics.clone(),
        limiter: options.rate_limit.map(Limiter::new),
        log_format: options.log_format,
    });
    let context = WorkerContext {
        precision: options.precision,
        metrics,
        lifecycle: lifecycle.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Bound before the model thread starts: an address that cannot be served ends here, with nothing running.
    let listener = runtime.block_on(tokio::net::TcpListener::bind(options.addr))?;
    let worker = std::thread::Builder::new()
        .name("model".into())
        .spawn(move || worker::run(loaded, rx, context))?;
    let served = runtime.block_on(serve(state, listener, &options));
    // Blocking tasks (PNG encoding) of requests cut off by the drain deadline are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // With the runtime gone, so are the job queue's senders and every waiting caller: the worker stops its batch
    // before the next network evaluation and returns. libtorch must not be torn down at exit under a forward pass
    // still running on that thread (it crashed the process: SIGSEGV or "pure virtual method called").
    if !finished_within(&worker, WORKER_EXIT_WAIT) {
        tracing::warn!(
            target: "diffuse::server",
            "the model thread did not stop within {} s; exiting without waiting for it",
            WORKER_EXIT_WAIT.as_secs()
        );
        let code = i32::from(served.is_err() || lifecycle.fatal().is_some());
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        // SAFETY: ends the process at once, without running C++ static destructors under the running thread.
        unsafe { libc::_exit(code) };
    }
    let _ = worker.join();
    served?;
    if let Some(message) = lifecycle.fatal() {
        return Err(ServeError::Fatal(message));
    }
    Ok(())
}

/// How long the server waits at exit for the model thread to finish what it is doing.
const WORKER_EXIT_WAIT: Duration = Duration::from_secs(10);

/// Whether `thread` has returned, waiting for it at most `limit`.
fn finished_within(thread: &std::thread::JoinHandle<()>, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !thread.is_finished() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Serves on `listener` until a stop, drains. Returns whether every accepted request was answered.
async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    options: &ServeOptions,
) -> Result<bool, ServeError> {
    let lifecycle = state.lifecycle.clone();
    let local = listener.local_addr()?;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // Stop accepting once the stop signal came and every accepted generation request was answered.
    let stop_accepting = {
        let lifecycle = lifecycle.clone();
        async move {
            lifecycle.stopped().await;
            lifecycle.idle().await;
        }
    };
    let server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop_accepting).await });
    tokio::spawn({
        let lifecycle = lifecycle.clone();
        async move {
            lifecycle::stop_signal().await;
            tracing::info!(target: "diffuse::server", "stop signal: draining");
            lifecycle.request_stop();
        }
    });
    // Announce readiness (tests and scripts wait for this line), unless the warm-up failed first.
    tokio::select! {
        _ = wait_ready(&lifecycle) => {
            // Not println!: a closed stdout must not panic the server.
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "listening on http://{local}").and_then(|()| stdout.flush());
        }
        _ = lifecycle.stopped() => {}
    }
    lifecycle.stopped().await;
    if lifecycle.fatal().is_some() {
        server.abort();
        return Ok(false);
    }
    let deadline = tokio::time::sleep(options.drain);
    tokio::select! {
        finished = server => {
            finished.map_err(std::io::Error::other)??;
            Ok(true)
        }
        _ = deadline => {
            tracing::warn!(
                target: "diffuse::server",
                unanswered = lifecycle.in_flight(),
                "drain deadline of {:.0} s passed; exiting with requests unanswered",
                options.drain.as_secs_f64()
            );
            Ok(false)
        }
    }
}

async fn wait_ready(lifecycle: &Lifecycle) {
    while lifecycle.phase() == lifecycle::Phase::Starting {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The OpenAPI document's header; its paths come from the routers below.
#[derive(OpenApi)]
#[openapi(
    info(title = "diffuse", description = "Draw MNIST digits from a trained diffusion or flow model."),
    tags(
        (name = "api", description = "Generation and the web page"),
        (name = "operations", description = "Probes and metrics for orchestrators and monitoring")
    )
)]
struct ApiDoc;

/// Probes and metrics: never rate-limited, so an orchestrator is never refused.
fn operation_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::default()
        .routes(routes!(lifecycle::livez))
        .routes(routes!(lifecycle::readyz))
        .routes(routes!(lifecycle::healthz))
        .routes(routes!(metrics::metrics))
}

/// What clients use; rate-limited when `--rate-limit` is set.
fn api_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::default()
        .routes(routes!(api::index))
        .routes(routes!(api::models))
        .routes(routes!(api::generate))
        .routes(routes!(api::openapi_json))
}

/// The OpenAPI 3 document, built from the same routers the server serves.
pub fn openapi_document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
            .merge(operation_routes())
            .merge(api_routes())
            .split_for_parts();
        document
            .to_json()
            .unwrap_or_else(|e| json!({ "error": e.to_string() }).to_string())
    })
}

fn router(state: Arc<AppState>) -> Router {
    let (operations, _) = operation_routes().split_for_parts();
    let (api, _) = api_routes().split_for_parts();
    let api = api.layer(middleware::from_fn_with_state(state.clone(), rate_limit::limit));
    operations
        .merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .layer(middleware::from_fn_with_state(state.clone(), access::observe))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}
