//! The server's life: starting (model loaded, warm-up running), ready, draining, stopped; and the probes that
//! report it.
//!
//! `/livez` answers 200 as long as the process can answer at all. `/readyz` (and its older alias `/healthz`)
//! answers 200 only once the worker has run its warm-up generation, and 503 again from the first SIGTERM or SIGINT,
//! so a load balancer stops sending work before the process goes away. While draining, new generation requests are
//! refused with 503 and the requests already accepted (queued or running) are answered; the listener closes once
//! none is left, or when the drain deadline passes.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::sync::watch;

use super::AppState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Listening; the model worker is warming up.
    Starting,
    Ready,
    /// A stop signal arrived: answering what was accepted, refusing new work.
    Draining,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ok",
            Phase::Draining => "draining",
        }
    }
}

/// Shared by the HTTP handlers, the model worker and the shutdown sequence.
pub struct Lifecycle {
    phase: AtomicU8,
    /// Generation requests accepted and not yet answered.
    in_flight: AtomicUsize,
    /// Turns true once, when the server is to stop.
    stop: watch::Sender<bool>,
    /// Why the server stops when it is not a signal (e.g. the warm-up failed).
    fatal: Mutex<Option<String>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            in_flight: AtomicUsize::new(0),
            stop: watch::channel(false).0,
            fatal: Mutex::new(None),
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// The worker finished its warm-up. A drain that already began stays a drain.
    pub fn set_ready(&self) {
        let _ = self.phase.compare_exchange(
            Phase::Starting as u8,
            Phase::Ready as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Begins the drain (idempotent).
    pub fn request_stop(&self) {
        self.phase.store(Phase::Draining as u8, Ordering::SeqCst);
        self.stop.send_replace(true);
    }

    /// The server cannot do its job (e.g. warm-up failed): stop now and report `message`.
    pub fn fail(&self, message: String) {
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(message);
        }
        self.request_stop();
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Resolves when a stop was requested.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Counts one accepted generation request until the guard drops.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Resolves when no accepted request is left. Polled: a drain lasts seconds, a 20 ms tick costs nothing.
    pub async fn idle(&self) {
        while self.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves on SIGTERM or SIGINT (ctrl-c).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Liveness: the process is up and its HTTP side answers.
#[utoipa::path(get, path = "/livez", tag = "operations",
    responses((status = 200, description = "The process is running", content_type = "application/json")))]
pub async fn livez() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

/// Readiness: 200 once the model is loaded and warmed up, 503 while starting or draining.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready for generation requests", content_type = "application/json"),
    (status = 503, description = "Starting (warm-up) or draining (stopping)", content_type = "application/json")))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    readiness(&state)
}

/// Readiness, as [`readyz`]; kept for clients of earlier versions.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses(
    (status = 200, description = "Ready (same as /readyz)", content_type = "application/json"),
    (status = 503, description = "Starting or draining", content_type = "application/json")))]
pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    readiness(&state)
}

fn readiness(state: &AppState) -> Response {
    let phase = state.lifecycle.phase();
    let status = if phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": phase.name(),
        "model": state.name,
        "queued": state.metrics.queue_depth(),
        "in_flight": state.lifecycle.in_flight(),
    });
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_move_forward_only() {
        let life = Lifecycle::default();
        assert_eq!(life.phase(), Phase::Starting);
        life.set_ready();
        assert_eq!(life.phase(), Phase::Ready);
        life.request_stop();
        assert_eq!(life.phase(), Phase::Draining);
        life.set_ready();
        assert_eq!(life.phase(), Phase::Draining, "a late warm-up must not undo a drain");
    }

    #[test]
    fn in_flight_counts_guards() {
        let life = Arc::new(Lifecycle::default());
        let a = life.track();
        let b = life.track();
        assert_eq!(life.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(life.in_flight(), 0);
    }

    #[test]
    fn the_first_failure_is_kept() {
        let life = Lifecycle::default();
        life.fail("warm-up failed".into());
        life.fail("later".into());
        life.request_stop();
        assert_eq!(life.fatal().as_deref(), Some("warm-up failed"));
        assert!(*life.stop.borrow());
    }
}
