//! Ancestral DDPM sampling (the assignment's part 2), in the schedule's index convention (t = T-1 down to 0).

use tch::Tensor;

use super::{Denoiser, FrameEvery, FrameRecorder, NoiseSource, SampleOutput};
use crate::diffusion::schedule::NoiseSchedule;

/// Draws `n` samples. `class` is [n, 10] (or None for unconditional models). Noise comes from `rng`: x_T first,
/// then one z per step with t > 0, so the same seed gives the same samples.
pub fn sample(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    n: i64,
    class: Option<&Tensor>,
    noise: &mut dyn NoiseSource,
    frames: FrameEvery,
) -> SampleOutput {
    let device = denoiser.device();
    let total = schedule.timesteps();
    let mut recorder = FrameRecorder::new(frames);
    tch::no_grad(|| {
        let mut x = noise.images(n, device); // x_{T-1} ~ N(0, I), [n, 1, 28, 28]
        for (done, t) in (0..total).rev().enumerate() {
            let eps = denoiser.predict(&x, schedule.normalized_time(t), class);
            // 1. x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
            let alpha_bar = schedule.alpha_bar[t];
            let x0_hat = (&x - eps * (1.0 - alpha_bar).sqrt()) / alpha_bar.sqrt();
            // 2. posterior mean: coef_x0 x0_hat + coef_xt x_t
            let mean = x0_hat * schedule.posterior_mean_coef_x0[t] + &x * schedule.posterior_mean_coef_xt[t];
            // 3. x_{t-1} = mean + sqrt(beta_t) z, no noise on the last step
            x = if t > 0 {
                mean + noise.images(n, device) * schedule.betas[t].sqrt()
            } else {
                mean
            };
            recorder.offer(&x, done + 1);
        }
        recorder.finish(&x)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::schedule::ScheduleConfig;
    use crate::runtime::rng::RunRng;
    use crate::sampler::dummies::{Oracle, Zero};
    use tch::Kind;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("vec")
    }

    /// Predicts eps = 0.3 x_t + 0.2 t: non-zero, and different at every step and pixel.
    struct Linear;
    impl Denoiser for Linear {
        fn predict(&self, x: &Tensor, t: f64, _class: Option<&Tensor>) -> Tensor {
            x * 0.3 + t * 0.2
        }
    }

    /// The whole reverse process against an f64 implementation written here from the equations of Ho et al.
    /// (2020), not from the schedule's tables: beta linear from 1e-4 to 0.02 over T = 300 (index 0 is the paper's
    /// t = 1), alpha_bar the running product, eq. (15) for x0_hat, eq. (7) for the posterior mean
    /// mu~ = sqrt(alpha_bar_prev) beta / (1 - alpha_bar) x0 + sqrt(alpha) (1 - alpha_bar_prev) / (1 - alpha_bar) x_t,
    /// and sigma_t^2 = beta_t (Algorithm 2). The same noise stream: x_T first, then one z per step with t > 0.
    #[test]
    fn matches_an_f64_implementation_of_the_paper() {
        const T: usize = 300;
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let out = sample(&Linear, &schedule, 2, None, &mut RunRng::new(5), FrameEvery(Some(100)));

        let beta: Vec<f64> = (0..T)
            .map(|i| 1e-4 + (0.02 - 1e-4) * i as f64 / (T - 1) as f64)
            .collect();
        let mut alpha_bar = Vec::with_capacity(T);
        let mut product = 1.0;
        for b in &beta {
            product *= 1.0 - b;
            alpha_bar.push(product);
        }
        let mut rng = RunRng::new(5);
        let mut x: Vec<f64> = rng.normals(2 * 784).iter().map(|&v| v as f64).collect();
        for t in (0..T).rev() {
            let (ab, b) = (alpha_bar[t], beta[t]);
            let ab_prev = if t == 0 { 1.0 } else { alpha_bar[t - 1] };
            let z: Vec<f64> = if t > 0 {
                rng.normals(2 * 784).iter().map(|&v| v as f64).collect()
            } else {
                vec![0.0; 2 * 784]
            };
            for (xi, zi) in x.iter_mut().zip(&z) {
                let eps = 0.3 * *xi + 0.2 * (t as f64 / T as f64);
                let x0_hat = (*xi - (1.0 - ab).sqrt() * eps) / ab.sqrt();
                let mean =
                    ab_prev.sqrt() * b / (1.0 - ab) * x0_hat + (1.0 - b).sqrt() * (1.0 - ab_prev) / (1.0 - ab) * *xi;
                *xi = mean + b.sqrt() * zi;
            }
        }
        let got = values(&out.images);
        let mut inside = 0;
        for (g, e) in got.iter().zip(&x) {
            assert!((g - e.clamp(0.0, 1.0)).abs() < 1e-3, "{g} vs {e}");
            inside += usize::from(*e > 0.05 && *e < 0.95);
        }
        // The comparison must not be decided by the clamp alone.
        assert!(inside > 100, "only {inside} pixels inside (0, 1)");
        // Frames: after step 1, every 100th step (100, 200, 300) and the final images.
        assert_eq!(out.frames.len(), 5);
    }

    /// An oracle that knows x0 predicts the exact noise; ancestral sampling must then land on x0 exactly (the last
    /// step has coef_x0 = 1, coef_xt = 0 and no noise).
    #[test]
    fn oracle_denoiser_recovers_x0() {
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let x0 = Tensor::rand([3, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let oracle = Oracle::noise(&x0, &schedule);
        let out = sample(&oracle, &schedule, 3, None, &mut RunRng::new(1), FrameEvery(None));
        let err = f64::try_from((&out.images - &x0).abs().max()).expect("max");
        assert!(err < 1e-4, "{err}");
        assert!(out.frames.is_empty());
    }

    #[test]
    fn same_seed_same_samples() {
        let schedule = NoiseSchedule::new(&ScheduleConfig {
            timesteps: 20,
            ..Default::default()
        });
        let a = sample(&Zero, &schedule, 2, None, &mut RunRng::new(9), FrameEvery(None));
        let b = sample(&Zero, &schedule, 2, None, &mut RunRng::new(9), FrameEvery(None));
        let c = sample(&Zero, &schedule, 2, None, &mut RunRng::new(10), FrameEvery(None));
        assert!(a.images.equal(&b.images));
        assert!(!a.images.equal(&c.images));
    }
}
