//! `diffuse bench`: training and sampling throughput and peak memory, measured the way `bench/pytorch_ref.py`
//! measures PyTorch (random batches made in advance, the objective's own noise drawn inside each step, warm-up
//! steps untimed), so the two print comparable rows.

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::generate::{generate, GenerateError, GenerateOptions, Request, SampleDefaults, SamplerKind};
use crate::model::{Arch, Model};
use crate::run::ModelKind;
use crate::run::TrainConfig;
use crate::runtime::layout::Layout;
use crate::runtime::precision::Precision;
use crate::train::{TrainError, Trainer};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub model: ModelKind,
    pub arch: Arch,
    pub hidden: i64,
    pub batch: usize,
    pub precision: Precision,
    pub layout: Layout,
    /// What sampling is timed in: the choice `diffuse sample` makes, which can differ from training's.
    pub sample_precision: Precision,
    pub sample_layout: Layout,
    pub warmup: usize,
    pub steps: usize,
    /// Sampler steps timed (extrapolated to a full 300-step DDPM run of 40 digits).
    pub sample_steps: usize,
}

/// One row of results (the JSON fields that `bench/compare.sh` reads).
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub engine: &'static str,
    pub model: &'static str,
    pub arch: Arch,
    pub hidden: i64,
    pub batch: usize,
    pub precision: Precision,
    pub layout: Layout,
    pub threads: usize,
    pub device: String,
    pub train_img_per_s: f64,
    pub sample_precision: Precision,
    pub sample_layout: Layout,
    /// Digits per second of a full sampling run of 40 digits (guidance batched): DDPM 300 steps for ddpm/cfg,
    /// Euler 50 steps for flow.
    pub sample_img_per_s: Option<f64>,
    pub sample_ms_per_step: Option<f64>,
    /// Seconds for the same 40 digits drawn as `diffuse sample` draws them by default ([`SampleDefaults`]: its
    /// sampler, steps and guidance interval), timed whole after an untimed run of the same.
    pub sample_default_s: Option<f64>,
    pub peak_rss_mb: f64,
}

/// Digits drawn per sampling benchmark (the assignment: 4 of each digit).
const SAMPLE_DIGITS: usize = 40;
/// Euler steps of the flow reference job.
const FLOW_REFERENCE_STEPS: usize = 50;

/// A benchmark that could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

pub fn run(config: &BenchConfig, device: Device) -> Result<BenchRow, BenchError> {
    let mut train_config = config.model.spec_config();
    train_config.model.hidden = config.hidden;
    train_config.model.arch = config.arch;
    train_config.batch_size = config.batch;
    train_config.precision = config.precision;
    train_config.layout = config.layout;
    let mut trainer = Trainer::in_memory(train_config.clone(), device)?;
    let b = config.batch as i64;
    let x0 = Tensor::rand([b, 1, 28, 28], (Kind::Float, device));
    let labels = Tensor::randint(10, [b], (Kind::Int64, device));
    let lr = train_config.lr;
    // Reading the last loss waits for the device, so the clock stops when the work is done.
    let run = |trainer: &mut Trainer, steps: usize| {
        let losses: Vec<Tensor> = (0..steps).map(|_| trainer.train_step(&x0, &labels, lr)).collect();
        losses.last().map(|l| l.double_value(&[]))
    };
    run(&mut trainer, config.warmup);
    let started = Instant::now();
    run(&mut trainer, config.steps);
    let train_img_per_s = (config.steps * config.batch) as f64 / started.elapsed().as_secs_f64();

    // Sampling runs in its own choice of layout, like `diffuse sample`: the trained weights, copied when it differs.
    let in_sample_layout =
        (config.sample_layout != trainer.model.layout()).then(|| trainer.model.in_layout(config.sample_layout));
    let sampler = Sampling {
        model: in_sample_layout.as_ref().unwrap_or(&trainer.model),
        config: &trainer.config,
        precision: config.sample_precision,
    };
    let sample_ms_per_step = match config.model {
        ModelKind::Denoiser => None,
        _ => Some(time_sampler_step(&sampler, config)?),
    };
    // The reference job that bench/pytorch_ref.py also times: DDPM's 300 steps, or 50 Euler steps for flow.
    let full_steps = if config.model == ModelKind::Flow {
        FLOW_REFERENCE_STEPS as f64
    } else {
        300.0
    };
    let sample_default_s = match config.model {
        ModelKind::Denoiser => None,
        _ => Some(time_default_job(&sampler)?),
    };
    Ok(BenchRow {
        engine: "diffuse",
        model: config.model.name(),
        arch: config.arch,
        hidden: config.hidden,
        batch: config.batch,
        precision: config.precision,
        layout: config.layout,
        threads: crate::runtime::device::threads(),
        device: match crate::runtime::cuda::applies(device) {
            true => format!("{} with CUDA graphs", crate::runtime::device::describe(device)),
            false => crate::runtime::device::describe(device),
        },
        train_img_per_s,
        sample_precision: config.sample_precision,
        sample_layout: config.sample_layout,
        sample_img_per_s: sample_ms_per_step.map(|ms| SAMPLE_DIGITS as f64 / (full_steps * ms / 1000.0)),
        sample_ms_per_step,
        sample_default_s,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// What the sampling benchmarks draw from, and in what precision.
struct Sampling<'a> {
    model: &'a Model,
    config: &'a TrainConfig,
    precision: Precision,
}

impl Sampling<'_> {
    /// The 40 digits every sampling benchmark draws: 4 of each class, or 40 unconditional ones.
    fn request(&self) -> Request {
        if self.config.model.class_cond {
            Request::Classes((0..SAMPLE_DIGITS).map(|i| (i % 10) as u8).collect())
        } else {
            Request::Unconditional(SAMPLE_DIGITS)
        }
    }

    /// Seconds to draw `request` with `options` (in this precision), the device waited for before the clock stops.
    fn time(&self, request: &Request, options: GenerateOptions) -> Result<f64, GenerateError> {
        let options = GenerateOptions {
            precision: self.precision,
            ..options
        };
        let started = Instant::now();
        let out = generate(self.model, self.config, request, &options)?;
        let _ = out.images.sum(Kind::Float).double_value(&[]);
        Ok(started.elapsed().as_secs_f64())
    }

    fn device(&self) -> Device {
        self.model.device()
    }
}

/// Milliseconds per sampler step of the reference job, as `bench/pytorch_ref.py` runs it: 40 class-conditioned
/// digits guided at every step (one forward of 80), or 40 plain ones.
fn time_sampler_step(sampling: &Sampling, config: &BenchConfig) -> Result<f64, BenchError> {
    let request = sampling.request();
    let run = |steps: usize| {
        let sampler = if config.model == ModelKind::Flow {
            SamplerKind::Euler
        } else {
            SamplerKind::Ddim
        };
        let options = GenerateOptions {
            sampler: Some(sampler),
            steps: Some(steps),
            // Guided throughout, not only in the default interval: the reference guides every step.
            guidance_interval: None,
            ..Default::default()
        };
        sampling.time(&request, options)
    };
    // The first generation also fills cuDNN's algorithm cache for the sampling batch shapes: not timed.
    run(2)?;
    let steps = config.sample_steps.max(1);
    let seconds = run(steps)?;
    // With CUDA graphs every generation first runs one evaluation eagerly and captures the next: count only the
    // replays, the difference from a 2-step run.
    Ok(match crate::runtime::cuda::applies(sampling.device()) {
        true if steps > 2 => (seconds - run(2)?) * 1000.0 / (steps - 2) as f64,
        _ => seconds * 1000.0 / steps as f64,
    })
}

/// Seconds for 40 digits drawn as `diffuse sample` draws them by default. The first generation (which also fills
/// cuDNN's algorithm cache for the batch shapes) is not timed.
fn time_default_job(sampling: &Sampling) -> Result<f64, BenchError> {
    let request = sampling.request();
    let options = SampleDefaults::for_objective(&sampling.config.objective).options();
    sampling.time(&request, options.clone())?;
    Ok(sampling.time(&request, options)?)
}

/// Peak resident memory of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
