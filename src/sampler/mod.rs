//! Samplers: turning noise into digits with a trained denoiser.
//!
//! A sampler only knows the [`Denoiser`] interface, (x_t, t, class) -> prediction, never the UNet, so DDPM, DDIM,
//! DPM-Solver++, the flow ODE solvers and guidance are swappable and tested with dummy denoisers. Sampling runs in
//! eval mode under no-grad; the loop stays on the device and only copies to the host to grab animation frames.

pub mod ddim;
pub mod ddpm;
pub mod dpmpp;
pub mod graphed;
pub mod guidance;
pub mod levels;
pub mod ode;
#[cfg(test)]
mod toy;

use tch::{Device, Kind, Tensor};

use crate::model::Model;
use crate::runtime::rng::RunRng;

/// What a sampler calls at every step.
pub trait Denoiser {
    /// x [N, 1, 28, 28] at normalized time t in [0, 1] (one time for the whole batch, known on the host, so a
    /// wrapper can decide things per step without reading the device), class [N, 10] one-hot (zeros =
    /// unconditional) -> [N, 1, 28, 28].
    fn predict(&self, x: &Tensor, t: f64, class: Option<&Tensor>) -> Tensor;

    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// A trained model seen as a denoiser: eval mode (BatchNorm running statistics).
impl Denoiser for Model {
    fn predict(&self, x: &Tensor, t: f64, class: Option<&Tensor>) -> Tensor {
        let t = time_vector(x.size()[0], t, x.device()); // [N]
        self.forward_t(x, Some(&t), class, false)
    }

    fn device(&self) -> Device {
        Model::device(self)
    }
}

/// Which intermediate states to keep for an animation.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameEvery(pub Option<usize>);

/// A sampler's result.
pub struct SampleOutput {
    /// [N, 1, 28, 28], clamped to [0, 1].
    pub images: Tensor,
    /// Intermediate x_t (clamped to [0, 1], on CPU), noisiest first, ending with the final images.
    pub frames: Vec<Tensor>,
}

impl SampleOutput {
    /// The outputs of consecutive parts of one request (the same sampler and steps, so the same frames) as one.
    pub fn concat(parts: Vec<SampleOutput>) -> SampleOutput {
        let images: Vec<&Tensor> = parts.iter().map(|p| &p.images).collect();
        let frame_count = parts.first().map_or(0, |p| p.frames.len());
        let frames = (0..frame_count)
            .map(|k| Tensor::cat(&parts.iter().map(|p| &p.frames[k]).collect::<Vec<_>>(), 0))
            .collect();
        SampleOutput {
            images: Tensor::cat(&images, 0),
            frames,
        }
    }
}

/// Collects animation frames every `every` steps (host copies happen only here).
pub(crate) struct FrameRecorder {
    every: Option<usize>,
    frames: Vec<Tensor>,
    /// The count of the previous offer (0 before the first).
    last: usize,
}

impl FrameRecorder {
    pub(crate) fn new(every: FrameEvery) -> Self {
        Self {
            every: every.0.map(|k| k.max(1)),
            frames: Vec::new(),
            last: 0,
        }
    }

    /// Offers the state after `done` network evaluations. Keeps the first state offered, then one each time the
    /// count passes a multiple of k (a step of a two-stage solver makes two evaluations, so counts may skip).
    pub(crate) fn offer(&mut self, x: &Tensor, done: usize) {
        if let Some(k) = self.every {
            if self.last == 0 || done / k > self.last / k {
                self.frames.push(to_display(x).to_device(Device::Cpu));
            }
            self.last = done;
        }
    }

    pub(crate) fn finish(mut self, x: &Tensor) -> SampleOutput {
        let images = to_display(x);
        if self.every.is_some() {
            self.frames.push(images.to_device(Device::Cpu));
        }
        SampleOutput {
            images,
            frames: self.frames,
        }
    }
}

/// Images for display: float, clamped to [0, 1].
pub fn to_display(x: &Tensor) -> Tensor {
    x.to_kind(Kind::Float).clamp(0.0, 1.0)
}

/// Where a sampler's Gaussian noise comes from: one stream for the whole batch, or one stream per request when the
/// server batches several requests together, so each request's digits depend only on its own seed.
pub trait NoiseSource {
    /// [n, 1, 28, 28] standard normal noise for the whole batch.
    fn images(&mut self, n: i64, device: Device) -> Tensor;
}

impl NoiseSource for RunRng {
    fn images(&mut self, n: i64, device: Device) -> Tensor {
        self.normal_tensor(&[n, 1, 28, 28], device)
    }
}

/// Concatenated noise of several requests: `(stream, images)` parts, in batch order.
pub struct PerRequestNoise(pub Vec<(RunRng, i64)>);

impl NoiseSource for PerRequestNoise {
    fn images(&mut self, n: i64, device: Device) -> Tensor {
        debug_assert_eq!(n, self.0.iter().map(|(_, k)| k).sum::<i64>());
        let parts: Vec<Tensor> = self
            .0
            .iter_mut()
            .map(|(rng, k)| rng.normal_tensor(&[*k, 1, 28, 28], device))
            .collect();
        Tensor::cat(&parts, 0)
    }
}

/// A constant time vector [n] for the network.
fn time_vector(n: i64, t: f64, device: Device) -> Tensor {
    Tensor::full([n], t, (Kind::Float, device))
}

#[cfg(test)]
pub(crate) mod dummies {
    //! Denoisers with known outputs, for golden tests.
    use super::*;

    /// Predicts zero noise everywhere.
    pub struct Zero;
    impl Denoiser for Zero {
        fn predict(&self, x: &Tensor, _t: f64, _class: Option<&Tensor>) -> Tensor {
            x.zeros_like()
        }
    }

    /// Knows the data: a point mass at `x0`, so its predictions are exact and every sampler must land on x0.
    pub struct Oracle {
        x0: Tensor,
        /// alpha_bar of the schedule for a noise prediction; None for a flow velocity.
        alpha_bar: Option<Vec<f64>>,
    }

    impl Oracle {
        /// eps = (x - sqrt(alpha_bar[t]) x0) / sqrt(1 - alpha_bar[t]) at timestep t = round(normalized time * T).
        pub fn noise(x0: &Tensor, schedule: &crate::diffusion::schedule::NoiseSchedule) -> Self {
            Self {
                x0: x0.shallow_clone(),
                alpha_bar: Some(schedule.alpha_bar.clone()),
            }
        }

        /// v = (x - x0) / t on the straight path x_t = (1 - t) x0 + t eps.
        pub fn velocity(x0: &Tensor) -> Self {
            Self {
                x0: x0.shallow_clone(),
                alpha_bar: None,
            }
        }
    }

    impl Denoiser for Oracle {
        fn predict(&self, x: &Tensor, t: f64, _class: Option<&Tensor>) -> Tensor {
            match &self.alpha_bar {
                Some(alpha_bar) => {
                    let ab = alpha_bar[(t * alpha_bar.len() as f64).round() as usize];
                    (x - &self.x0 * ab.sqrt()) / (1.0 - ab).sqrt()
                }
                None => (x - &self.x0) / t,
            }
        }
    }
}
