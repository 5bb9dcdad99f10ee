//! The sampling pipeline: a trained model + its run config + what the user asked for -> digits.
//!
//! This is the only place that wires a model, a schedule, guidance and a sampler together; the `sample`
//! command, training-time figures and the server all go through [`generate`].

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use thiserror::Error;

use crate::model::Model;
use crate::precision::{autocast, Precision};
use crate::rng::RunRng;
use crate::sampler::guidance::Guided;
use crate::sampler::{ddim, ddpm, euler, Denoiser, FrameEvery, NoiseSource, SampleOutput};
use crate::schedule::NoiseSchedule;
use crate::train::{Objective, TrainConfig};

/// The `--sampler` flag.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Ancestral DDPM over every timestep.
    #[default]
    Ddpm,
    /// Deterministic DDIM (eta = 0) over --steps timesteps.
    Ddim,
    /// Euler steps along a rectified-flow velocity field (flow models).
    Euler,
}

impl SamplerKind {
    /// How the sampler is written in titles and tables.
    pub fn label(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "DDPM",
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Euler => "Euler",
        }
    }

    /// The sampler a run's objective uses when none is asked for.
    pub fn default_for(objective: &Objective) -> Self {
        match objective {
            Objective::Flow { .. } => SamplerKind::Euler,
            _ => SamplerKind::Ddpm,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// [default: DDPM for diffusion models, Euler for flow models]
    pub sampler: Option<SamplerKind>,
    /// DDIM / Euler step count (default 50); DDPM always takes every timestep.
    pub steps: Option<usize>,
    /// Guidance scale gamma for class-conditioned models (1 = no guidance).
    pub guidance: f64,
    pub seed: u64,
    /// Keep an animation frame every k steps.
    pub frame_every: Option<usize>,
    pub precision: Precision,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            sampler: None,
            steps: None,
            guidance: 5.0,
            seed: 0,
            frame_every: None,
            precision: Precision::Fp32,
        }
    }
}

/// DDIM and Euler steps when --steps is not given.
pub const DEFAULT_STEPS: usize = 50;

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("this run trains a one-step `denoiser`, which does not generate digits; sample from a ddpm or cfg run")]
    NotGenerative,
    #[error("this `{0}` model is not class-conditioned: it cannot be asked for specific digits (drop --digits)")]
    NotConditioned(&'static str),
    #[error("digit {0} is not a class (0..9)")]
    BadDigit(u8),
    #[error("{0}")]
    BadRequest(String),
    #[error("the {sampler:?} sampler does not apply to a `{objective}` model (use {suggestion})")]
    WrongSampler {
        sampler: SamplerKind,
        objective: &'static str,
        suggestion: &'static str,
    },
}

/// What to draw: `n` unconditional samples, or one sample per entry of `classes`.
#[derive(Clone, Debug)]
pub enum Request {
    Unconditional(usize),
    Classes(Vec<u8>),
    /// Per image: a digit, or None for "any digit" (the no-class input).
    Mixed(Vec<Option<u8>>),
}

impl Request {
    pub fn len(&self) -> usize {
        match self {
            Request::Unconditional(n) => *n,
            Request::Classes(c) => c.len(),
            Request::Mixed(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Draws digits from `model` (trained with `config`), with noise from `options.seed`.
pub fn generate(
    model: &Model,
    config: &TrainConfig,
    request: &Request,
    options: &GenerateOptions,
) -> Result<SampleOutput, GenerateError> {
    generate_with_noise(model, config, request, options, &mut RunRng::new(options.seed))
}

/// [`generate`] with the noise drawn from `noise` (e.g. one stream per batched server request).
pub fn generate_with_noise(
    model: &Model,
    config: &TrainConfig,
    request: &Request,
    options: &GenerateOptions,
    noise: &mut dyn NoiseSource,
) -> Result<SampleOutput, GenerateError> {
    if matches!(config.objective, Objective::Denoiser { .. }) {
        return Err(GenerateError::NotGenerative);
    }
    let sampler = options
        .sampler
        .unwrap_or_else(|| SamplerKind::default_for(&config.objective));
    let is_flow = matches!(config.objective, Objective::Flow { .. });
    if is_flow != (sampler == SamplerKind::Euler) {
        let suggestion = if is_flow {
            "--sampler euler"
        } else {
            "--sampler ddpm or ddim"
        };
        return Err(GenerateError::WrongSampler {
            sampler,
            objective: config.objective.name(),
            suggestion,
        });
    }
    let schedule = config.objective.schedule().map(NoiseSchedule::new);
    if request.is_empty() {
        return Err(GenerateError::BadRequest("nothing to generate (n = 0)".into()));
    }
    if !(options.guidance.is_finite()) {
        return Err(GenerateError::BadRequest(format!(
            "guidance must be a finite number, got {}",
            options.guidance
        )));
    }
    let device = Denoiser::device(model);
    let class = match (request, config.model.class_cond) {
        (Request::Classes(classes), true) => {
            if let Some(&bad) = classes.iter().find(|&&c| c > 9) {
                return Err(GenerateError::BadDigit(bad));
            }
            Some(class_vectors(
                &classes.iter().map(|&c| Some(c)).collect::<Vec<_>>(),
                device,
            ))
        }
        (Request::Mixed(labels), true) => {
            if let Some(bad) = labels.iter().flatten().find(|&&c| c > 9) {
                return Err(GenerateError::BadDigit(*bad));
            }
            Some(class_vectors(labels, device))
        }
        (Request::Classes(_) | Request::Mixed(_), false) => {
            return Err(GenerateError::NotConditioned(config.objective.name()))
        }
        // An unconditional draw from a class-conditioned model: the "no class" vector.
        (Request::Unconditional(n), true) => Some(Tensor::zeros([*n as i64, 10], (Kind::Float, device))),
        (Request::Unconditional(_), false) => None,
    };
    let n = request.len() as i64;
    let guided = Guided {
        inner: model,
        gamma: options.guidance,
    };
    let frames = FrameEvery(options.frame_every);
    let steps = options.steps.unwrap_or(DEFAULT_STEPS);
    let output = autocast(options.precision, device, || match (sampler, &schedule) {
        (SamplerKind::Ddpm, Some(schedule)) => ddpm::sample(&guided, schedule, n, class.as_ref(), noise, frames),
        (SamplerKind::Ddim, Some(schedule)) => ddim::sample(&guided, schedule, steps, n, class.as_ref(), noise, frames),
        _ => euler::sample(&guided, steps, n, class.as_ref(), noise, frames),
    });
    Ok(output)
}

/// [N, 10]: the one-hot of each digit, all zeros for None.
fn class_vectors(labels: &[Option<u8>], device: tch::Device) -> Tensor {
    let mut values = vec![0f32; labels.len() * 10];
    for (i, label) in labels.iter().enumerate() {
        if let Some(c) = label {
            values[i * 10 + *c as usize] = 1.0;
        }
    }
    Tensor::from_slice(&values)
        .view([labels.len() as i64, 10])
        .to_device(device)
}

/// The number of network evaluations a sampler will make (for frame spacing and titles).
pub fn step_count(config: &TrainConfig, options: &GenerateOptions) -> usize {
    let total = config.objective.schedule().map_or(usize::MAX, |s| s.timesteps);
    match options
        .sampler
        .unwrap_or_else(|| SamplerKind::default_for(&config.objective))
    {
        SamplerKind::Ddpm => total,
        SamplerKind::Ddim => options.steps.unwrap_or(DEFAULT_STEPS).min(total),
        SamplerKind::Euler => options.steps.unwrap_or(DEFAULT_STEPS).max(1),
    }
}
