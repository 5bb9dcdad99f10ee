//! The model worker: one thread owns the model, takes queued jobs, and runs compatible ones as one batch.
//!
//! Jobs that share sampler, steps and guidance are concatenated (up to [`MAX_BATCH`] digits) into one sampler run;
//! each job keeps its own noise stream ([`PerRequestNoise`]), so a request's digits depend on its seed, not on what
//! it was batched with. Memory stays bounded: the queue has a fixed capacity and a batch a fixed size. Jobs whose
//! caller already gave up (timeout, disconnect) are dropped before any work is spent on them, and a running batch
//! whose every caller has gone stops before its next network evaluation, so it does not hold up the queue.
//!
//! Before the first job the worker draws one digit with one step (the warm-up: first-call allocations and kernel
//! selection happen here, not in a user's request) and only then marks the server ready. A panic while running a
//! batch is caught: that batch is answered 500 and the worker goes on with the next.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Tensor};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::generate::{
    generate_until, generate_with_noise, GenerateError, GenerateOptions, Request, SampleDefaults, SamplerKind,
};
use crate::run::Loaded;
use crate::runtime::precision::Precision;
use crate::runtime::rng::RunRng;
use crate::sampler::PerRequestNoise;

use super::lifecycle::Lifecycle;
use super::metrics::Metrics;
use super::params::GenerateParams;

/// Most digits run through the model at once.
pub const MAX_BATCH: usize = 64;

/// Test-only fault injection: a batch holding a request with this seed panics inside the panic boundary. Read once,
/// by the worker only; never set it in production.
pub const PANIC_ON_SEED_ENV: &str = "DIFFUSE_TEST_PANIC_ON_SEED";
/// Test-only: milliseconds the warm-up sleeps first, so a test can see the server listening but not ready.
pub const WARMUP_DELAY_ENV: &str = "DIFFUSE_TEST_WARMUP_DELAY_MS";
/// Test-only: milliseconds every batch sleeps before it runs, so a test can make generation slow on any hardware.
pub const BATCH_DELAY_ENV: &str = "DIFFUSE_TEST_BATCH_DELAY_MS";
/// Test-only: milliseconds every network evaluation of a batch waits first, so a test can make one batch long on any
/// hardware.
pub const STEP_DELAY_ENV: &str = "DIFFUSE_TEST_STEP_DELAY_MS";

pub struct Job {
    pub params: GenerateParams,
    pub reply: oneshot::Sender<Result<JobOutput, JobError>>,
}

#[derive(Clone, Debug, Error)]
pub enum JobError {
    /// The request cannot be served as asked (400).
    #[error("{0}")]
    Rejected(String),
    /// Generation failed inside the server (500); the worker goes on.
    #[error("generation failed inside the server: {0}")]
    Crashed(String),
}

/// What the worker shares with the rest of the server.
pub struct WorkerContext {
    pub precision: Precision,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
}

/// What a job gets back, on the CPU.
pub struct JobOutput {
    /// [n, 1, 28, 28] in [0, 1]
    pub images: Tensor,
    /// Reverse-process frames, each [n, 1, 28, 28], when frames were recorded for its batch.
    pub frames: Vec<Tensor>,
    /// Wall time of the batch this job ran in.
    pub ms: f64,
    /// How many digits shared the batch.
    pub batch_digits: usize,
}

/// Jobs batch together when these agree.
fn batch_key(p: &GenerateParams) -> (crate::generate::SamplerKind, Option<usize>, u64, Option<(u64, u64)>) {
    let interval = p.guidance_interval.map(|(lo, hi)| (lo.to_bits(), hi.to_bits()));
    (p.sampler, p.steps, p.guidance.to_bits(), interval)
}

fn wants_frames(p: &GenerateParams) -> bool {
    p.format == super::params::Format::Gif || p.animate
}

/// Warms up, then runs the worker loop on the current thread until every sender is gone.
pub fn run(loaded: Loaded, mut jobs: mpsc::Receiver<Job>, context: WorkerContext) {
    let faults = Faults::from_env();
    match warm_up(&loaded, context.precision, faults.warmup_delay_ms) {
        Ok(ms) => {
            tracing::info!(target: "diffuse::server", ms, "warm-up done: ready");
            context.lifecycle.set_ready();
        }
        Err(message) => {
            context.lifecycle.fail(format!("model warm-up failed: {message}"));
            return;
        }
    }
    let metrics = &context.metrics;
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut receive = |wait: bool| {
        let job = if wait {
            jobs.blocking_recv()
        } else {
            jobs.try_recv().ok()
        };
        if job.is_some() {
            metrics.job_dequeued();
        }
        job
    };
    loop {
        let first = match pending.pop_front() {
            Some(job) => job,
            None => match receive(true) {
                Some(job) => job,
                None => return,
            },
        };
        let key = batch_key(&first.params);
        let mut batch = vec![first];
        let mut digits = batch[0].params.n;
        // Take whatever else is already waiting and fits; keep the rest for the next round, in order.
        let mut skipped = VecDeque::new();
        while let Some(job) = pending.pop_front().or_else(|| receive(false)) {
            if batch_key(&job.params) == key && digits + job.params.n <= MAX_BATCH {
                digits += job.params.n;
                batch.push(job);
            } else {
                skipped.push_back(job);
                if skipped.len() >= MAX_BATCH {
                    break;
                }
            }
        }
        pending = skipped;
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        run_guarded(&loaded, batch, &context, &faults);
    }
}

/// Runs one batch inside the panic boundary: a panic answers the whole batch 500 and leaves the worker serving.
fn run_guarded(loaded: &Loaded, batch: Vec<Job>, context: &WorkerContext, faults: &Faults) {
    let seeds: Vec<u64> = batch.iter().map(|j| j.params.seed).collect();
    let (replies, params): (Vec<_>, Vec<_>) = batch.into_iter().map(|j| (j.reply, j.params)).unzip();
    let started = Instant::now();
    let everyone_gone = || {
        if faults.step_delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(faults.step_delay_ms));
        }
        replies.iter().all(|reply| reply.is_closed())
    };
    // The model and tensors are only read; a panic mid-batch leaves nothing half-updated that a later batch uses.
    let result = catch_unwind(AssertUnwindSafe(|| {
        if let Some(seed) = faults.panic_on_seed.filter(|s| seeds.contains(s)) {
            panic!("injected test fault ({PANIC_ON_SEED_ENV}={seed})");
        }
        std::thread::sleep(std::time::Duration::from_millis(faults.batch_delay_ms));
        run_batch(loaded, &params, context.precision, &everyone_gone)
    }));
    let seconds = started.elapsed().as_secs_f64();
    let answers: Vec<Result<JobOutput, JobError>> = match result {
        Ok(Ok(None)) => {
            context.metrics.batch_stopped();
            tracing::info!(
                target: "diffuse::server",
                seeds = ?seeds,
                seconds,
                "stopped a batch whose every caller had gone"
            );
            return;
        }
        Ok(Ok(Some(outputs))) => {
            context.metrics.batch_done(params.iter().map(|p| p.n).sum(), seconds);
            outputs.into_iter().map(Ok).collect()
        }
        Ok(Err(rejected)) => replies.iter().map(|_| Err(rejected.clone())).collect(),
        Err(panic) => {
            context.metrics.worker_panicked();
            let message = panic_message(panic.as_ref());
            tracing::error!(target: "diffuse::server", seeds = ?seeds, "a batch panicked: {message}");
            replies
                .iter()
                .map(|_| Err(JobError::Crashed(message.clone())))
                .collect()
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// One digit, one step: the cheapest generation that still goes through every layer.
fn warm_up(loaded: &Loaded, precision: Precision, delay_ms: u64) -> Result<f64, String> {
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let started = Instant::now();
    let config = &loaded.config;
    let sampler = match SamplerKind::default_for(&config.objective) {
        SamplerKind::Ddpm => SamplerKind::Ddim,
        other => other,
    };
    let request = if config.model.class_cond {
        Request::Mixed(vec![None])
    } else {
        Request::Unconditional(1)
    };
    let options = GenerateOptions {
        sampler: Some(sampler),
        steps: Some(1),
        precision,
        ..GenerateOptions::default()
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        generate_with_noise(&loaded.model, config, &request, &options, &mut RunRng::new(0))
            .map(|output| output.images.to_device(Device::Cpu))
    }));
    match result {
        Ok(Ok(_)) => Ok(started.elapsed().as_secs_f64() * 1000.0),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic_message(panic.as_ref())),
    }
}

/// The test-only fault hooks, read from the environment once.
#[derive(Default)]
struct Faults {
    panic_on_seed: Option<u64>,
    warmup_delay_ms: u64,
    batch_delay_ms: u64,
    step_delay_ms: u64,
}

impl Faults {
    fn from_env() -> Self {
        let read = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
        Self {
            panic_on_seed: read(PANIC_ON_SEED_ENV),
            warmup_delay_ms: read(WARMUP_DELAY_ENV).unwrap_or(0),
            batch_delay_ms: read(BATCH_DELAY_ENV).unwrap_or(0),
            step_delay_ms: read(STEP_DELAY_ENV).unwrap_or(0),
        }
    }
}

/// Runs `batch` (its jobs' parameters, in order) as one sampler run: one output per job, or one error for all; None
/// when `stop` said to give up (asked before every network evaluation).
fn run_batch(
    loaded: &Loaded,
    batch: &[GenerateParams],
    precision: Precision,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Vec<JobOutput>>, JobError> {
    let started = Instant::now();
    let first = &batch[0];
    let frames = batch.iter().any(wants_frames);
    let class_cond = loaded.config.model.class_cond;
    // Conditioned requests ask for a digit; "any" uses the no-class input (a zero one-hot), which the guided
    // sampler leaves unguided.
    let request = if class_cond {
        Request::Mixed(batch.iter().flat_map(|p| std::iter::repeat_n(p.digit, p.n)).collect())
    } else {
        Request::Unconditional(batch.iter().map(|p| p.n).sum())
    };
    let mut noise = PerRequestNoise(batch.iter().map(|p| (RunRng::new(p.seed), p.n as i64)).collect());
    let options = GenerateOptions {
        sampler: Some(first.sampler),
        steps: first.steps,
        guidance: first.guidance,
        guidance_interval: first.guidance_interval,
        seed: 0,
        frame_every: None,
        precision,
        ..GenerateOptions::default()
    };
    let steps = crate::generate::step_count(&loaded.config, &options);
    let options = GenerateOptions {
        frame_every: frames.then(|| SampleDefaults::frame_every(steps)),
        ..options
    };
    let output = match generate_until(&loaded.model, &loaded.config, &request, &options, &mut noise, stop) {
        Ok(output) => output,
        Err(GenerateError::Stopped) => return Ok(None),
        Err(e) => return Err(JobError::Rejected(e.to_string())),
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let digits: usize = batch.iter().map(|p| p.n).sum();
    let images = output.images.to_device(Device::Cpu);
    let mut offset = 0;
    let mut outputs = Vec::with_capacity(batch.len());
    for params in batch {
        let n = params.n as i64;
        let take = |t: &Tensor| t.narrow(0, offset, n).copy();
        let frames = if wants_frames(params) {
            output.frames.iter().map(take).collect()
        } else {
            Vec::new()
        };
        outputs.push(JobOutput {
            images: take(&images),
            frames,
            ms,
            batch_digits: digits,
        });
        offset += n;
    }
    Ok(Some(outputs))
}
