//! Turning a batch of clean digits into (network input, conditioning, target) for each objective.
//!
//! Every random draw comes from the run's [`RunRng`], so the same seed gives the same batches and a resumed run
//! continues the same stream.

use tch::{Device, Kind, Tensor};

use crate::diffusion::flow_path;
use crate::diffusion::schedule::NoiseSchedule;
use crate::runtime::device::upload;
use crate::runtime::rng::RunRng;

use crate::run::Objective;

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

impl TrainingBatch {
    /// A copy in fresh memory (the inputs of a captured training step).
    pub fn copy(&self) -> Self {
        Self {
            input: self.input.copy(),
            t: self.t.as_ref().map(Tensor::copy),
            class: self.class.as_ref().map(Tensor::copy),
            target: self.target.copy(),
        }
    }

    /// Overwrites this batch's tensors in place with `other`'s (same shapes and presence).
    pub fn copy_from(&mut self, other: &TrainingBatch) {
        self.input.copy_(&other.input);
        self.target.copy_(&other.target);
        for (to, from) in [(&mut self.t, &other.t), (&mut self.class, &other.class)] {
            if let (Some(to), Some(from)) = (to, from) {
                to.copy_(from);
            }
        }
    }
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
            (Objective::Ddpm { .. } | Objective::Cfg { .. }, Some(schedule)) => {
                let steps = rng.integers(n as usize, schedule.timesteps() as i64);
                let input = schedule.add_noise(x0, &steps, &eps);
                let t: Vec<f32> = steps
                    .iter()
                    .map(|&t| schedule.normalized_time(t as usize) as f32)
                    .collect();
                let class = self.class_with_dropout(labels, n, rng);
                TrainingBatch {
                    input,
                    t: Some(upload(Tensor::from_slice(&t), device)),
                    class,
                    target: eps,
                }
            }
            (Objective::Flow { .. }, _) => {
                let t = upload(Tensor::from_slice(&rng.uniforms(n as usize)), device); // [N] in [0, 1)
                let input = flow_path::interpolate(x0, &eps, &t);
                let class = self.class_with_dropout(labels, n, rng);
                TrainingBatch {
                    input,
                    t: Some(t),
                    class,
                    target: flow_path::velocity(x0, &eps),
                }
            }
            (Objective::Ddpm { .. } | Objective::Cfg { .. }, None) => {
                unreachable!("Prepared::new builds a schedule for every DDPM objective")
            }
        }
    }

    /// The one-hot class, replaced by zeros with probability p_uncond, for class-conditioned objectives.
    fn class_with_dropout(&self, labels: &Tensor, n: i64, rng: &mut RunRng) -> Option<Tensor> {
        let p_uncond = match self.objective {
            Objective::Cfg { p_uncond, .. } | Objective::Flow { p_uncond } => p_uncond,
            _ => return None,
        };
        let device = labels.device();
        let keep: Vec<f32> = rng
            .bernoullis(n as usize, p_uncond)
            .iter()
            .map(|&drop| f32::from(u8::from(!drop)))
            .collect();
        Some(one_hot(labels, device) * upload(Tensor::from_slice(&keep), device).view([-1, 1]))
    }
}

/// labels [N] int64 -> [N, 10] float one-hot.
pub fn one_hot(labels: &Tensor, device: Device) -> Tensor {
    labels.to_device(device).one_hot(10).to_kind(Kind::Float)
}
