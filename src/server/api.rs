//! The API proper: the web page, the model list, and generation (queue a job, wait for the worker, encode).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;
use utoipa::ToSchema;

use crate::figures::gif::gif_bytes;
use crate::figures::grid::{digit_grid, png_bytes, GridSpec};
use crate::figures::FigureError;

use super::lifecycle::Phase;
use super::params::{self, Format, GenerateParams, GenerateQuery};
use super::worker::{Job, JobError, JobOutput};
use super::{error, AppState};

const INDEX_HTML: &str = include_str!("index.html");
/// Longest query string `/api/generate` reads.
const MAX_QUERY_LEN: usize = 2048;

/// Every error answer's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// The web page: pick digits, sampler and steps, and watch them appear.
#[utoipa::path(get, path = "/", tag = "api",
    responses((status = 200, description = "The web page", content_type = "text/html")))]
pub async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// The served model and its defaults.
#[utoipa::path(get, path = "/api/models", tag = "api",
    responses((status = 200, description = "A list with the one served model", content_type = "application/json")))]
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let c = &state.config;
    let defaults = crate::generate::SampleDefaults::for_objective(&c.objective);
    Json(json!([{
        "name": state.name,
        "objective": c.objective.name(),
        "hidden": c.model.hidden,
        "class_conditioned": c.model.class_cond,
        "default_sampler": defaults.sampler,
        "default_steps": defaults.steps,
        "default_guidance": defaults.guidance,
        "default_guidance_interval": defaults.guidance_interval,
        "timesteps": c.objective.schedule().map(|s| s.timesteps),
        "epochs": c.epochs,
        "dataset": c.dataset,
    }]))
    .into_response()
}

/// Draws digits.
#[utoipa::path(get, path = "/api/generate", tag = "api", params(GenerateQuery), responses(
    (status = 200, description = "A PNG grid, a GIF of the reverse process, or JSON with base64 PNGs and timings",
        content((Vec<u8> = "image/png"), (Vec<u8> = "image/gif"), (serde_json::Value = "application/json"))),
    (status = 400, description = "A parameter is unknown, repeated, malformed or out of range", body = ErrorBody),
    (status = 414, description = "Query string longer than 2048 bytes", body = ErrorBody),
    (status = 429, description = "This client is over its rate limit (see Retry-After)", body = ErrorBody),
    (status = 500, description = "Generation failed inside the server", body = ErrorBody),
    (status = 503, description = "Queue full, or the server is draining (see Retry-After)", body = ErrorBody),
    (status = 504, description = "Generation took longer than the request timeout", body = ErrorBody)))]
pub async fn generate(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    query: Result<Query<GenerateQuery>, QueryRejection>,
) -> Response {
    if uri.query().map_or(0, str::len) > MAX_QUERY_LEN {
        return error(StatusCode::URI_TOO_LONG, "query string too long");
    }
    let params = match params::parse(query, &state.config) {
        Ok(p) => p,
        Err(invalid) => return error(StatusCode::BAD_REQUEST, invalid.0),
    };
    if state.lifecycle.phase() == Phase::Draining {
        return unavailable("server is shutting down: retry on another replica");
    }
    // Counted from here to the answer, so a drain waits for this request.
    let _in_flight = state.lifecycle.track();
    let (reply, answer) = oneshot::channel();
    if state
        .jobs
        .try_send(Job {
            params: params.clone(),
            reply,
        })
        .is_err()
    {
        return unavailable("server busy: too many queued requests, retry shortly");
    }
    state.metrics.job_queued();
    let output = match tokio::time::timeout(state.timeout, answer).await {
        Ok(Ok(Ok(output))) => output,
        Ok(Ok(Err(JobError::Rejected(message)))) => return error(StatusCode::BAD_REQUEST, message),
        Ok(Ok(Err(crashed @ JobError::Crashed(_)))) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, crashed.to_string())
        }
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

/// 503 with a hint to retry in a second.
fn unavailable(message: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The OpenAPI 3 document of this server, generated from the routes and their parameter types.
#[utoipa::path(get, path = "/api/openapi.json", tag = "api",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::openapi_document()).into_response()
}

const SCALE: u32 = 3;
const GIF_DELAY_MS: u32 = 80;
const GIF_HOLD_MS: u32 = 2000;

fn grid_spec(n: usize) -> GridSpec {
    let cols = n.min(8);
    GridSpec::mnist(n.div_ceil(cols), cols).with_scale(SCALE)
}

/// [k, 1, 28, 28] -> flat pixels, padded with blank tiles to fill the grid.
fn grid_pixels(images: &tch::Tensor, spec: &GridSpec) -> Result<Vec<f32>, FigureError> {
    let mut pixels = crate::run_figures::to_pixels(images)?;
    pixels.resize(spec.rows * spec.cols * 28 * 28, 0.0);
    Ok(pixels)
}

fn grid_png(images: &tch::Tensor, n: usize) -> Result<Vec<u8>, FigureError> {
    let spec = grid_spec(n);
    png_bytes(&digit_grid(&grid_pixels(images, &spec)?, &spec)?)
}

fn animation(frames: &[tch::Tensor], n: usize) -> Result<Vec<u8>, FigureError> {
    let spec = grid_spec(n);
    let grids = frames
        .iter()
        .map(|f| digit_grid(&grid_pixels(f, &spec)?, &spec))
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
