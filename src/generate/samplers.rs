//! Which samplers exist, which models each can draw from, and what every front end draws with by default.

use serde::{Deserialize, Serialize};

use super::GenerateOptions;
use crate::run::Objective;
use crate::sampler::ode::FlowSolver;

/// The `--sampler` flag.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Ancestral DDPM over every timestep.
    #[default]
    Ddpm,
    /// Deterministic DDIM (eta = 0) over --steps timesteps.
    Ddim,
    /// DPM-Solver++(2M) over --steps timesteps placed by --spacing (diffusion models).
    #[serde(rename = "dpmpp-2m")]
    #[value(name = "dpmpp-2m")]
    DpmPP2M,
    /// DPM-Solver++(2M) on the reverse SDE: fresh noise at every step, like ancestral DDPM (diffusion models).
    #[serde(rename = "dpmpp-2m-sde")]
    #[value(name = "dpmpp-2m-sde")]
    DpmPP2MSde,
    /// Euler steps along a rectified-flow velocity field (flow models).
    Euler,
    /// Heun steps (second order, 2 evaluations per step, Euler on the last) along the velocity field (flow models).
    Heun,
    /// Explicit midpoint steps (second order, 2 evaluations per step) along the velocity field (flow models).
    Midpoint,
}

impl SamplerKind {
    /// How the sampler is written in titles and tables.
    pub fn label(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "DDPM",
            SamplerKind::Ddim => "DDIM",
            SamplerKind::DpmPP2M => "DPM-Solver++(2M)",
            SamplerKind::DpmPP2MSde => "DPM-Solver++(2M) SDE",
            SamplerKind::Euler => "Euler",
            SamplerKind::Heun => "Heun",
            SamplerKind::Midpoint => "midpoint",
        }
    }

    /// The name on the command line and in the API (`--sampler NAME`, `sampler=NAME`).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::DpmPP2M => "dpmpp-2m",
            SamplerKind::DpmPP2MSde => "dpmpp-2m-sde",
            SamplerKind::Euler => "euler",
            SamplerKind::Heun => "heun",
            SamplerKind::Midpoint => "midpoint",
        }
    }

    /// The sampler called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::value_variants()
            .iter()
            .copied()
            .find(|k| k.name() == name)
    }

    /// The ODE solver of a flow sampler; None for the samplers that read a noise prediction.
    pub fn flow_solver(self) -> Option<FlowSolver> {
        match self {
            SamplerKind::Ddpm | SamplerKind::Ddim | SamplerKind::DpmPP2M | SamplerKind::DpmPP2MSde => None,
            SamplerKind::Euler => Some(FlowSolver::Euler),
            SamplerKind::Heun => Some(FlowSolver::Heun),
            SamplerKind::Midpoint => Some(FlowSolver::Midpoint),
        }
    }

    /// Whether this sampler can draw from a model trained with `objective`: noise-prediction samplers need a
    /// diffusion objective (ddpm, cfg), flow samplers a flow one.
    pub fn fits(self, objective: &Objective) -> bool {
        match objective {
            Objective::Denoiser { .. } => false,
            Objective::Ddpm { .. } | Objective::Cfg { .. } => self.flow_solver().is_none(),
            Objective::Flow { .. } => self.flow_solver().is_some(),
        }
    }

    /// The samplers that fit `objective`, in declaration order.
    pub fn fitting(objective: &Objective) -> Vec<Self> {
        <Self as clap::ValueEnum>::value_variants()
            .iter()
            .copied()
            .filter(|k| k.fits(objective))
            .collect()
    }

    /// The sampler a run's objective uses when none is asked for ([`SampleDefaults`]).
    pub fn default_for(objective: &Objective) -> Self {
        SampleDefaults::for_objective(objective).sampler
    }
}

/// What every front end draws with when it is not told otherwise: `diffuse sample`, `diffuse eval`, the training
/// figures, the server and its page, and `diffuse bench`. Chosen by the measured sweep in README (Evaluation): the
/// fewest network evaluations whose quality matches ancestral DDPM over all 300 steps on the shipped models.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleDefaults {
    pub sampler: SamplerKind,
    /// Steps of every sampler but DDPM.
    pub steps: usize,
    /// Guidance scale for class-conditioned models.
    pub guidance: f64,
    /// Guide only at normalized times in [lo, hi] (1 = pure noise); None = at every step.
    pub guidance_interval: Option<(f64, f64)>,
}

impl SampleDefaults {
    /// For noise-prediction models (ddpm, cfg).
    pub const DIFFUSION: Self = Self {
        sampler: SamplerKind::DpmPP2MSde,
        steps: 10,
        guidance: 2.0,
        // Guiding only the less noisy half: FD 8.40 against 12.00 guided throughout, same accuracy (README).
        guidance_interval: Some((0.0, 0.5)),
    };
    /// For rectified-flow models.
    pub const FLOW: Self = Self {
        sampler: SamplerKind::Heun,
        steps: 10,
        guidance: 2.0,
        // The same interval: FD 8.05 against 13.38 guided throughout, 99.3% accuracy (README).
        guidance_interval: Some((0.0, 0.5)),
    };

    pub fn for_objective(objective: &Objective) -> Self {
        match objective {
            Objective::Flow { .. } => Self::FLOW,
            _ => Self::DIFFUSION,
        }
    }

    /// About this many animation frames per reverse process, whatever its length.
    pub const ANIMATION_FRAMES: usize = 30;

    /// Keep an animation frame every this many of `evaluations` network evaluations.
    pub fn frame_every(evaluations: usize) -> usize {
        (evaluations / Self::ANIMATION_FRAMES).max(1)
    }

    /// Generation options with these defaults (seed 0, fp32, no frames).
    pub fn options(self) -> GenerateOptions {
        GenerateOptions {
            sampler: Some(self.sampler),
            steps: Some(self.steps),
            guidance: self.guidance,
            guidance_interval: self.guidance_interval,
            ..GenerateOptions::default()
        }
    }
}
