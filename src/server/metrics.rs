//! Prometheus metrics, served at `/metrics` in the text exposition format.
//!
//! The HTTP side records requests (by matched route, so unknown paths cannot blow up the label set) and their
//! latency; the model worker records the queue it drains, the batches it runs and the digits it draws. All names
//! carry the `diffuse_` prefix and follow Prometheus's conventions (`_total` counters, `_seconds` units).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::AppState;

/// What `diffuse_model_info` says about the served model (its labels).
pub struct ModelInfo {
    pub name: String,
    /// The training objective: ddpm, cfg or flow.
    pub kind: String,
    pub parameters: i64,
    pub precision: String,
    pub device: String,
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    queue_depth: IntGauge,
    batch_digits: Histogram,
    images: IntCounter,
    generation_seconds: Histogram,
    worker_panics: IntCounter,
    batches_stopped: IntCounter,
}

/// Request latency buckets, 1 ms to 2 min: health checks sit at the bottom, a 64-digit DDPM grid near the top.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];
/// Batch sizes in digits, up to the worker's cap.
const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

impl Metrics {
    pub fn new(model: &ModelInfo) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "diffuse_http_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["route", "status"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "diffuse_http_request_duration_seconds",
                "Time to answer an HTTP request",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let queue_depth = IntGauge::new(
            "diffuse_queue_depth",
            "Generation jobs accepted and waiting for the model worker",
        )?;
        let batch_digits = Histogram::with_opts(
            HistogramOpts::new("diffuse_batch_digits", "Digits per batch run by the model worker")
                .buckets(BATCH_BUCKETS.to_vec()),
        )?;
        let images = IntCounter::new("diffuse_images_generated_total", "Digits generated and answered")?;
        let generation_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "diffuse_generation_seconds",
                "Wall time of one batch in the model worker",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let worker_panics = IntCounter::new(
            "diffuse_worker_panics_total",
            "Batches whose generation panicked (answered 500; the worker kept serving)",
        )?;
        let batches_stopped = IntCounter::new(
            "diffuse_batches_stopped_total",
            "Batches stopped before they finished because every request in them had gone (timed out or disconnected)",
        )?;
        let info = IntGaugeVec::new(
            Opts::new("diffuse_model_info", "The served model (always 1)"),
            &["name", "kind", "parameters", "precision", "device"],
        )?;
        info.with_label_values(&[
            model.name.as_str(),
            model.kind.as_str(),
            &model.parameters.to_string(),
            model.precision.as_str(),
            model.device.as_str(),
        ])
        .set(1);
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(batch_digits.clone()))?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(generation_seconds.clone()))?;
        registry.register(Box::new(worker_panics.clone()))?;
        registry.register(Box::new(batches_stopped.clone()))?;
        registry.register(Box::new(info))?;
        Ok(Self {
            registry,
            requests,
            request_seconds,
            queue_depth,
            batch_digits,
            images,
            generation_seconds,
            worker_panics,
            batches_stopped,
        })
    }

    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        self.requests.with_label_values(&[route, &status.to_string()]).inc();
        self.request_seconds.with_label_values(&[route]).observe(seconds);
    }

    pub fn job_queued(&self) {
        self.queue_depth.inc();
    }

    /// A job left the queue: taken by the worker (run or dropped because its caller left).
    pub fn job_dequeued(&self) {
        self.queue_depth.dec();
    }

    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.get()
    }

    pub fn batch_done(&self, digits: usize, seconds: f64) {
        self.batch_digits.observe(digits as f64);
        self.images.inc_by(digits as u64);
        self.generation_seconds.observe(seconds);
    }

    pub fn worker_panicked(&self) {
        self.worker_panics.inc();
    }

    pub fn batch_stopped(&self) {
        self.batches_stopped.inc();
    }

    /// Everything, in the text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

/// Prometheus scrape endpoint.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in Prometheus's text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric_and_the_model() {
        let metrics = Metrics::new(&ModelInfo {
            name: "cfg-d64".into(),
            kind: "cfg".into(),
            parameters: 1234,
            precision: "fp32".into(),
            device: "cpu".into(),
        })
        .expect("metrics");
        metrics.observe_request("/api/generate", 200, 0.3);
        metrics.job_queued();
        metrics.batch_done(5, 0.2);
        let text = metrics.render().expect("render");
        for line in [
            "diffuse_http_requests_total{route=\"/api/generate\",status=\"200\"} 1",
            "diffuse_http_request_duration_seconds_count{route=\"/api/generate\"} 1",
            "diffuse_queue_depth 1",
            "diffuse_batch_digits_bucket{le=\"4\"} 0",
            "diffuse_batch_digits_bucket{le=\"8\"} 1",
            "diffuse_images_generated_total 5",
            "diffuse_generation_seconds_sum 0.2",
            "diffuse_worker_panics_total 0",
            "diffuse_batches_stopped_total 0",
            "diffuse_model_info{device=\"cpu\",kind=\"cfg\",name=\"cfg-d64\",parameters=\"1234\",precision=\"fp32\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
