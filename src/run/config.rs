//! What a training run is: the serialisable, validated configuration saved beside every checkpoint.
//!
//! A resumed run rebuilds everything from this (nanoGPT's rule), never from the command line.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::data::dataset::Dataset;
use crate::diffusion::schedule::ScheduleConfig;
use crate::model::UNetConfig;
use crate::runtime::layout::Layout;
use crate::runtime::precision::Precision;

/// What the network learns to predict, and from what.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Objective {
    /// Part 1: z = x + sigma eps -> x, with L2 loss.
    Denoiser { sigma: f64 },
    /// Part 2: x_t -> eps, time-conditioned.
    Ddpm { schedule: ScheduleConfig },
    /// Part 3: x_t, class -> eps, with the class dropped (zeros) with probability `p_uncond`.
    Cfg { schedule: ScheduleConfig, p_uncond: f64 },
    /// Rectified flow: x_t = (1 - t) x0 + t eps -> eps - x0, class-conditioned with the same dropout as `Cfg`.
    Flow { p_uncond: f64 },
}

impl Objective {
    /// The name used on the command line and in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Objective::Denoiser { .. } => "denoiser",
            Objective::Ddpm { .. } => "ddpm",
            Objective::Cfg { .. } => "cfg",
            Objective::Flow { .. } => "flow",
        }
    }

    pub fn schedule(&self) -> Option<&ScheduleConfig> {
        match self {
            Objective::Denoiser { .. } | Objective::Flow { .. } => None,
            Objective::Ddpm { schedule } | Objective::Cfg { schedule, .. } => Some(schedule),
        }
    }
}

/// The kinds of model the tool trains (the `diffuse train KIND` subcommands and `--model` of `diffuse bench`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Denoiser,
    Ddpm,
    Cfg,
    Flow,
}

impl ModelKind {
    /// The assignment's configuration for this kind: part 1 D=128, batch 256, 5 epochs, Adam 1e-4, sigma 0.5; parts 2
    /// and 3 D=64, batch 128, 20 epochs, Adam 1e-3 decaying to a tenth, T=300, p_uncond 0.1.
    pub fn spec_config(self) -> TrainConfig {
        let schedule = ScheduleConfig::default();
        let (objective, hidden, epochs, batch_size, lr, lr_final_ratio, time, class) = match self {
            ModelKind::Denoiser => (Objective::Denoiser { sigma: 0.5 }, 128, 5, 256, 1e-4, 1.0, false, false),
            ModelKind::Ddpm => (Objective::Ddpm { schedule }, 64, 20, 128, 1e-3, 0.1, true, false),
            ModelKind::Cfg => (
                Objective::Cfg {
                    schedule,
                    p_uncond: 0.1,
                },
                64,
                20,
                128,
                1e-3,
                0.1,
                true,
                true,
            ),
            // Rectified flow (an extra): the cfg recipe with the flow objective.
            ModelKind::Flow => (Objective::Flow { p_uncond: 0.1 }, 64, 20, 128, 1e-3, 0.1, true, true),
        };
        TrainConfig {
            objective,
            model: UNetConfig::new(hidden, time, class),
            dataset: Dataset::Mnist,
            epochs,
            batch_size,
            lr,
            lr_final_ratio,
            lr_decay_epochs: None,
            adam: AdamConfig::default(),
            subset: None,
            seed: 0,
            precision: Precision::Fp32,
            layout: Layout::ChannelsLast,
            ema: None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Denoiser => "denoiser",
            ModelKind::Ddpm => "ddpm",
            ModelKind::Cfg => "cfg",
            ModelKind::Flow => "flow",
        }
    }
}

/// Adam's constants (the learning rate is the run's, per epoch).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// A configuration value out of its range, named by its flag.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub objective: Objective,
    pub model: UNetConfig,
    pub dataset: Dataset,
    pub epochs: usize,
    pub batch_size: usize,
    /// Learning rate of the first epoch.
    pub lr: f64,
    /// The learning rate decays exponentially, once per epoch, to `lr * lr_final_ratio` in the last epoch's
    /// successor: gamma = lr_final_ratio^(1/epochs). 1 means constant.
    pub lr_final_ratio: f64,
    /// The epoch count the decay was planned over, when a finished run was extended past it (`--resume RUN
    /// --epochs N`): gamma stays lr_final_ratio^(1/planned), so the rate keeps falling by the same factor per epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay_epochs: Option<usize>,
    pub adam: AdamConfig,
    /// Train on the first N training images only.
    pub subset: Option<usize>,
    pub seed: u64,
    pub precision: Precision,
    /// Memory layout of activations and convolution weights (runs from before the choice: channels-last).
    #[serde(default)]
    pub layout: Layout,
    /// Decay of an exponential moving average of the weights, used for sampling (None = off).
    #[serde(default)]
    pub ema: Option<f64>,
}

impl TrainConfig {
    /// The per-epoch decay factor gamma.
    pub fn lr_gamma(&self) -> f64 {
        self.lr_final_ratio
            .powf(1.0 / self.lr_decay_epochs.unwrap_or(self.epochs) as f64)
    }

    /// Learning rate used during epoch `epoch` (0-based): lr * gamma^epoch.
    pub fn lr_at_epoch(&self, epoch: usize) -> f64 {
        self.lr * self.lr_gamma().powi(epoch as i32)
    }

    /// Checks every value once, before any tensor exists.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(InvalidConfig(format!("--{name} must be a positive number, got {v}")))
            }
        };
        if self.epochs == 0 {
            return Err(InvalidConfig("--epochs must be at least 1".into()));
        }
        if self.batch_size < 2 {
            return Err(InvalidConfig(format!(
                "--batch-size must be at least 2 (BatchNorm needs 2 images), got {}",
                self.batch_size
            )));
        }
        if self.model.hidden < 1 || self.model.hidden > 1024 {
            return Err(InvalidConfig(format!(
                "--hidden must be between 1 and 1024, got {}",
                self.model.hidden
            )));
        }
        positive("lr", self.lr)?;
        positive("lr-final-ratio", self.lr_final_ratio)?;
        if let Some(decay) = self.ema {
            if !(decay > 0.0 && decay < 1.0) {
                return Err(InvalidConfig(format!("--ema must be in (0, 1), got {decay}")));
            }
        }
        if self.subset == Some(0) {
            return Err(InvalidConfig("--subset must be at least 1".into()));
        }
        match &self.objective {
            Objective::Denoiser { sigma } => {
                if !(sigma.is_finite() && *sigma >= 0.0) {
                    return Err(InvalidConfig(format!(
                        "--sigma must be a non-negative number, got {sigma}"
                    )));
                }
            }
            Objective::Flow { .. } => {}
            Objective::Ddpm { schedule } | Objective::Cfg { schedule, .. } => {
                if schedule.timesteps < 2 || schedule.timesteps > 10_000 {
                    return Err(InvalidConfig(format!(
                        "--timesteps must be between 2 and 10000, got {}",
                        schedule.timesteps
                    )));
                }
                let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
                if !ok(schedule.beta_start) || !ok(schedule.beta_end) || schedule.beta_start > schedule.beta_end {
                    return Err(InvalidConfig(
                        "betas must satisfy 0 < beta_start <= beta_end < 1".into(),
                    ));
                }
            }
        }
        if let Objective::Cfg { p_uncond, .. } | Objective::Flow { p_uncond } = self.objective {
            if !(0.0..=1.0).contains(&p_uncond) {
                return Err(InvalidConfig(format!("--p-uncond must be in [0, 1], got {p_uncond}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cfg recipe: 1e-3 decaying to 1e-4 over 20 epochs, gamma = 0.1^(1/20). Extended to 30 epochs, the rate keeps
    /// falling by the same gamma: 1e-3 * 0.1^(29/20) in the last epoch, 1e-4 still at epoch index 20.
    #[test]
    fn an_extended_run_keeps_its_learning_rate_decay() {
        let mut config = ModelKind::Cfg.spec_config();
        let planned: Vec<f64> = (0..20).map(|e| config.lr_at_epoch(e)).collect();
        assert!((config.lr_at_epoch(20) - 1e-4).abs() < 1e-15);
        config.lr_decay_epochs = Some(config.epochs);
        config.epochs = 30;
        for (e, lr) in planned.iter().enumerate() {
            assert_eq!(config.lr_at_epoch(e), *lr);
        }
        assert!((config.lr_at_epoch(20) - 1e-4).abs() < 1e-15);
        assert!((config.lr_at_epoch(29) - 1e-3 * 0.1f64.powf(29.0 / 20.0)).abs() < 1e-15);
    }
}
