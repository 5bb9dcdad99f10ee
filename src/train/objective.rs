//! Turning a batch of clean digits into (network input, conditioning, target) for each objective.
//!
//! Every random draw comes from the run's [`RunRng`], so the same seed gives the same batches and a resumed run
//! continues the same stream.

use tch::{Device, Kind, Tensor};

use crate::rng::RunRng;
use crate::schedule::NoiseSchedule;

use super::config::Objective;

/// What one training step feeds the network and compares its output with.
pub struct TrainingBatch {
    /// [N, 1, 28, 28]
    pub input: Tensor,
    /// [N] in [0, 1], for time-conditioned objectives.
    pub t: Option<Tensor>,
    /// [N, 10] one-hot (zeros for dropped classes), for class-conditioned objectives.
    pub class: Option<Tensor>,
    /// [N, 1, 28, 28]
    pub target: Tensor,
}

/// An objective with its precomputed schedule.
pub struct Prepared {
    objective: Objective,
    schedule: Option<NoiseSchedule>,
}

impl Prepared {
    pub fn new(objective: &Objective) -> Self {
        Self {
            objective: objective.clone(),
            schedule: objective.schedule().map(NoiseSchedule::new),
        }
    }

    /// x0: [N, 1, 28, 28] in [0, 1]; labels: [N] int64 digits.
    pub fn batch(&self, x0: &Tensor, labels: &Tensor, rng: &mut RunRng) -> TrainingBatch {
        let n = x0.size()[0];
        let device = x0.device();
        let eps = rng.normal_tensor(&x0.size(), device);
        match (&self.objective, &self.schedule) {
            (Objective::Denoiser { sigma }, _) => TrainingBatch {
                input: x0 + eps * *sigma,
                t: None,
                class: None,
                target: x0.shallow_clone(),
            },
            (Objective::Ddpm { .. }, Some(schedule)) | (Objective::Cfg { .. }, Some(schedule)) => {
                let steps = rng.integers(n as usize, schedule.timesteps() as i64);
                let t_index = Tensor::from_slice(&steps).to_device(device);
                let input = schedule.add_noise(x0, &t_index, &eps);
                let t_norm: Vec<f32> = steps
                    .iter()
                    .map(|&t| schedule.normalized_time(t as usize) as f32)
                    .collect();
                let t = Some(Tensor::from_slice(&t_norm).to_device(device));
                let class = match self.objective {
                    Objective::Cfg { p_uncond, .. } => {
                        let keep: Vec<f32> = rng
                            .bernoullis(n as usize, p_uncond)
                            .iter()
                            .map(|&drop| if drop { 0.0 } else { 1.0 })
                            .collect();
                        let keep = Tensor::from_slice(&keep).to_device(device).view([-1, 1]);
                        Some(one_hot(labels, device) * keep)
                    }
                    _ => None,
                };
                TrainingBatch {
                    input,
                    t,
                    class,
                    target: eps,
                }
            }
            _ => unreachable!("schedule is built for every diffusion objective"),
        }
    }
}

/// labels [N] int64 -> [N, 10] float one-hot.
pub fn one_hot(labels: &Tensor, device: Device) -> Tensor {
    labels.to_device(device).one_hot(10).to_kind(Kind::Float)
}
