//! `diffuse serve`: an HTTP API and a small web page over one trained model.
//!
//! Requests are validated ([`params`]), queued on a bounded channel, and run by a single model worker that batches
//! compatible requests ([`worker`]). A full queue answers 503, a request that waits too long 504, bad input 400,
//! always with a JSON `{"error": ...}` body. Every request is logged as one structured line.

pub mod params;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::figures::gif::gif_bytes;
use crate::figures::grid::{digit_grid, png_bytes, GridSpec};
use crate::figures::FigureError;
use crate::precision::Precision;
use crate::pretrained::Loaded;
use crate::train::TrainConfig;
use params::{Format, GenerateParams};
use worker::{Job, JobOutput};

/// How the server is run.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Jobs that may wait for the model; more get 503.
    pub queue: usize,
    pub timeout: Duration,
    pub precision: Precision,
}

struct AppState {
    name: String,
    config: TrainConfig,
    jobs: mpsc::Sender<Job>,
    timeout: Duration,
}

const INDEX_HTML: &str = include_str!("index.html");

/// Serves `loaded` until ctrl-c; prints `listening on http://ADDR` (the bound address) on stdout first.
pub fn run(loaded: Loaded, name: String, options: ServeOptions) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel(options.queue.max(1));
    let state = Arc::new(AppState {
        name,
        config: loaded.config.clone(),
        jobs: tx,
        timeout: options.timeout,
    });
    let precision = options.precision;
    let worker = std::thread::Builder::new()
        .name("model".into())
        .spawn(move || worker::run(loaded, rx, precision))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.addr).await?;
        println!("listening on http://{}", listener.local_addr()?);
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
    })?;
    let _ = worker.join();
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/healthz", get(healthz))
        .route("/api/models", get(models))
        .route("/api/generate", get(generate))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .with_state(state)
        .layer(middleware::from_fn(log_request))
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// One structured log line per request.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().chars().take(200).collect::<String>();
    let query = request
        .uri()
        .query()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    let response = next.run(request).await;
    tracing::info!(
        target: "diffuse::server",
        %method,
        path,
        query,
        status = response.status().as_u16(),
        ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let waiting = state.jobs.max_capacity() - state.jobs.capacity();
    Json(json!({ "status": "ok", "model": state.name, "queued": waiting })).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.config;
    Json(json!([{
        "name": state.name,
        "objective": c.objective.name(),
        "hidden": c.model.hidden,
        "class_conditioned": c.model.class_cond,
        "default_sampler": crate::generate::SamplerKind::default_for(&c.objective),
        "timesteps": c.objective.schedule().map(|s| s.timesteps),
        "epochs": c.epochs,
        "dataset": c.dataset,
    }]))
    .into_response()
}

async fn generate(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    if query.len() > 2048 {
        return error(StatusCode::URI_TOO_LONG, "query string too long");
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let params = match params::parse(&pairs, &state.config) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let (reply, answer) = oneshot::channel();
    if state
        .jobs
        .try_send(Job {
            params: params.clone(),
            reply,
        })
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy: too many queued requests, retry shortly",
        );
    }
    let output = match tokio::time::timeout(state.timeout, answer).await {
        Ok(Ok(Ok(output))) => output,
        Ok(Ok(Err(message))) => return error(StatusCode::BAD_REQUEST, message),
        Ok(Err(_)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the model worker stopped"),
        Err(_) => {
            let secs = state.timeout.as_secs_f64();
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("generation took longer than {secs:.0} s; ask for fewer digits or steps"),
            );
        }
    };
    let name = state.name.clone();
    match tokio::task::spawn_blocking(move || encode(&params, &output, &name)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

const SCALE: u32 = 3;
const GIF_DELAY_MS: u32 = 80;
const GIF_HOLD_MS: u32 = 2000;

fn grid_spec(n: usize) -> GridSpec {
    let cols = n.min(8);
    GridSpec::mnist(n.div_ceil(cols), cols).with_scale(SCALE)
}

/// [k, 1, 28, 28] -> flat pixels, padded with blank tiles to fill the grid.
fn grid_pixels(images: &tch::Tensor, spec: &GridSpec) -> Vec<f32> {
    let mut pixels = crate::run_figures::to_pixels(images);
    pixels.resize(spec.rows * spec.cols * 28 * 28, 0.0);
    pixels
}

fn grid_png(images: &tch::Tensor, n: usize) -> Result<Vec<u8>, FigureError> {
    let spec = grid_spec(n);
    png_bytes(&digit_grid(&grid_pixels(images, &spec), &spec)?)
}

fn animation(frames: &[tch::Tensor], n: usize) -> Result<Vec<u8>, FigureError> {
    let spec = grid_spec(n);
    let grids = frames
        .iter()
        .map(|f| digit_grid(&grid_pixels(f, &spec), &spec))
        .collect::<Result<Vec<_>, _>>()?;
    gif_bytes(&grids, GIF_DELAY_MS, GIF_HOLD_MS)
}

fn encode(params: &GenerateParams, output: &JobOutput, model: &str) -> Result<Response, FigureError> {
    let n = params.n;
    Ok(match params.format {
        Format::Png => ([(header::CONTENT_TYPE, "image/png")], grid_png(&output.images, n)?).into_response(),
        Format::Gif => ([(header::CONTENT_TYPE, "image/gif")], animation(&output.frames, n)?).into_response(),
        Format::Json => {
            let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
            let images = (0..n as i64)
                .map(|i| Ok(b64(grid_png(&output.images.narrow(0, i, 1), 1)?)))
                .collect::<Result<Vec<_>, FigureError>>()?;
            let gif = if params.animate {
                Some(b64(animation(&output.frames, n)?))
            } else {
                None
            };
            Json(json!({
                "model": model,
                "params": params,
                "ms": output.ms,
                "batch_digits": output.batch_digits,
                "grid_png": b64(grid_png(&output.images, n)?),
                "images_png": images,
                "gif": gif,
            }))
            .into_response()
        }
    })
}
