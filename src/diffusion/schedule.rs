//! The DDPM noise schedule: plain math, no weights.
//!
//! **Timestep convention (the only place it is written down):** timesteps are indices `t = 0..T-1`.
//! `beta[t]` is linear from `beta_start` (t = 0) to `beta_end` (t = T-1); `alpha[t] = 1 - beta[t]`;
//! `alpha_bar[t] = prod_{s <= t} alpha[s]`, so `x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps` is one
//! noising step past x0 at t = 0 and the noisiest at t = T-1. "Before the first step" is `alpha_bar_prev[0] = 1`
//! (x_{-1} is x0). The network sees t as `t / T` in [0, 1). Sampling runs t = T-1 down to 0.
//!
//! Everything is computed once in f64 and only converted to f32 when tensors are built.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::runtime::device::upload;

/// Hyperparameters of a linear beta schedule (the assignment: T = 300, 1e-4 .. 0.02).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScheduleConfig {
    pub timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            timesteps: 300,
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    pub alpha_bar: Vec<f64>,
    /// `alpha_bar[t - 1]`, with 1 at t = 0.
    pub alpha_bar_prev: Vec<f64>,
    /// Variance of q(x_{t-1} | x_t, x0): beta[t] (1 - alpha_bar_prev[t]) / (1 - alpha_bar[t]).
    pub posterior_variance: Vec<f64>,
    /// Coefficient of x0 in the posterior mean: sqrt(alpha_bar_prev[t]) beta[t] / (1 - alpha_bar[t]).
    pub posterior_mean_coef_x0: Vec<f64>,
    /// Coefficient of x_t in the posterior mean: sqrt(alpha[t]) (1 - alpha_bar_prev[t]) / (1 - alpha_bar[t]).
    pub posterior_mean_coef_xt: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(config: &ScheduleConfig) -> Self {
        let n = config.timesteps;
        let betas: Vec<f64> = (0..n)
            .map(|i| {
                let frac = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
                config.beta_start + frac * (config.beta_end - config.beta_start)
            })
            .collect();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alpha_bar: Vec<f64> = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        let alpha_bar_prev: Vec<f64> = std::iter::once(1.0).chain(alpha_bar.iter().copied()).take(n).collect();
        let posterior_variance = (0..n)
            .map(|t| betas[t] * (1.0 - alpha_bar_prev[t]) / (1.0 - alpha_bar[t]))
            .collect();
        let posterior_mean_coef_x0 = (0..n)
            .map(|t| alpha_bar_prev[t].sqrt() * betas[t] / (1.0 - alpha_bar[t]))
            .collect();
        let posterior_mean_coef_xt = (0..n)
            .map(|t| alphas[t].sqrt() * (1.0 - alpha_bar_prev[t]) / (1.0 - alpha_bar[t]))
            .collect();
        Self {
            betas,
            alphas,
            alpha_bar,
            alpha_bar_prev,
            posterior_variance,
            posterior_mean_coef_x0,
            posterior_mean_coef_xt,
        }
    }

    pub fn timesteps(&self) -> usize {
        self.betas.len()
    }

    /// What the network is shown for timestep index `t`: t / T.
    pub fn normalized_time(&self, t: usize) -> f64 {
        t as f64 / self.timesteps() as f64
    }

    /// x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps, per sample.
    /// x0, eps: [N, C, H, W]; steps: the N timestep indices, drawn on the host. Each sample's two coefficients are
    /// looked up here and only they reach x0's device, [N, 1, 1, 1] to broadcast over its image.
    pub fn add_noise(&self, x0: &Tensor, steps: &[i64], eps: &Tensor) -> Tensor {
        let per_sample = |coefficient: fn(f64) -> f64| {
            let values: Vec<f32> = steps
                .iter()
                .map(|&t| coefficient(self.alpha_bar[t as usize]) as f32)
                .collect();
            upload(Tensor::from_slice(&values), x0.device()).view([-1, 1, 1, 1])
        };
        x0 * per_sample(f64::sqrt) + eps * per_sample(|ab| (1.0 - ab).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn spec() -> NoiseSchedule {
        NoiseSchedule::new(&ScheduleConfig::default())
    }

    #[test]
    fn betas_are_linear_and_not_integer_divided() {
        let s = spec();
        assert_eq!(s.timesteps(), 300);
        assert!((s.betas[0] - 1e-4).abs() < 1e-15);
        assert!((s.betas[299] - 0.02).abs() < 1e-15);
        // numpy.linspace(1e-4, 0.02, 300)[150] = 0.010083277591973243
        assert!((s.betas[150] - 0.010083277591973243).abs() < 1e-15);
    }

    #[test]
    fn alpha_bar_is_decreasing_and_ends_at_the_closed_form() {
        let s = spec();
        assert!(s.alpha_bar.windows(2).all(|w| w[1] < w[0]));
        // numpy: np.prod(1 - np.linspace(1e-4, 0.02, 300)) = 0.04805842894429403
        assert!(
            (s.alpha_bar[299] - 0.04805842894429403).abs() < 1e-12,
            "{}",
            s.alpha_bar[299]
        );
        assert!((s.alpha_bar[299].sqrt() - 0.2192).abs() < 1e-3);
        assert!((s.alpha_bar[0] - (1.0 - 1e-4)).abs() < 1e-15);
        assert_eq!(s.alpha_bar_prev[0], 1.0);
        assert_eq!(s.alpha_bar_prev[10], s.alpha_bar[9]);
    }

    #[test]
    fn posterior_terms_match_their_formulas() {
        let s = spec();
        // At t = 0 the posterior is exact (x_{-1} = x0): no variance, mean is x0.
        assert!(s.posterior_variance[0].abs() < 1e-15);
        assert!((s.posterior_mean_coef_x0[0] - 1.0).abs() < 1e-12);
        assert!(s.posterior_mean_coef_xt[0].abs() < 1e-12);
        for t in [1usize, 57, 299] {
            let (b, a) = (s.betas[t], s.alphas[t]);
            let ab: f64 = s.alphas[..=t].iter().product();
            let ab_prev: f64 = s.alphas[..t].iter().product();
            assert!((s.posterior_variance[t] - b * (1.0 - ab_prev) / (1.0 - ab)).abs() < 1e-15);
            assert!((s.posterior_mean_coef_x0[t] - ab_prev.sqrt() * b / (1.0 - ab)).abs() < 1e-12);
            assert!((s.posterior_mean_coef_xt[t] - a.sqrt() * (1.0 - ab_prev) / (1.0 - ab)).abs() < 1e-12);
            assert!(s.posterior_variance[t] < b);
        }
    }

    #[test]
    fn add_noise_uses_each_samples_own_timestep() {
        let s = spec();
        let x0 = Tensor::ones([2, 1, 2, 2], (Kind::Float, Device::Cpu));
        let eps = Tensor::ones([2, 1, 2, 2], (Kind::Float, Device::Cpu)) * 2.0;
        let x = s.add_noise(&x0, &[0, 299], &eps);
        let expect = |t: usize| s.alpha_bar[t].sqrt() + 2.0 * (1.0 - s.alpha_bar[t]).sqrt();
        let got: Vec<f32> = Vec::try_from(x.flatten(0, -1)).expect("vec");
        assert!((got[0] as f64 - expect(0)).abs() < 1e-5);
        assert!((got[7] as f64 - expect(299)).abs() < 1e-5);
    }
}
