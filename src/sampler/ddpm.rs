//! Ancestral DDPM sampling (SPEC.md part 2), in the schedule's index convention (t = T-1 down to 0).

use tch::Tensor;

use super::{time_vector, Denoiser, FrameEvery, FrameRecorder, NoiseSource, SampleOutput};
use crate::schedule::NoiseSchedule;

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
            let eps = denoiser.predict(&x, &time_vector(n, schedule.normalized_time(t), device), class);
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
    use crate::rng::RunRng;
    use crate::sampler::dummies::Zero;
    use crate::schedule::ScheduleConfig;
    use tch::Kind;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("vec")
    }

    /// With a zero denoiser every step is linear: x_{t-1} = k_t x_t + sqrt(beta_t) z_t with
    /// k_t = coef_x0[t] / sqrt(alpha_bar[t]) + coef_xt[t]. Replayed here in f64 with the same noise stream.
    #[test]
    fn zero_denoiser_matches_the_scalar_recursion() {
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let out = sample(&Zero, &schedule, 2, None, &mut RunRng::new(5), FrameEvery(Some(100)));
        let mut rng = RunRng::new(5);
        let mut x: Vec<f64> = rng.normals(2 * 784).iter().map(|&v| v as f64).collect();
        for t in (0..300).rev() {
            let k =
                schedule.posterior_mean_coef_x0[t] / schedule.alpha_bar[t].sqrt() + schedule.posterior_mean_coef_xt[t];
            let z: Vec<f64> = if t > 0 {
                rng.normals(2 * 784).iter().map(|&v| v as f64).collect()
            } else {
                vec![0.0; 2 * 784]
            };
            for (xi, zi) in x.iter_mut().zip(&z) {
                *xi = k * *xi + schedule.betas[t].sqrt() * zi;
            }
        }
        let got = values(&out.images);
        for (g, e) in got.iter().zip(&x) {
            assert!((g - e.clamp(0.0, 1.0)).abs() < 1e-4, "{g} vs {e}");
        }
        // Frames: after step 1, every 100th step (100, 200, 300) and the final images.
        assert_eq!(out.frames.len(), 5);
    }

    /// An oracle that knows x0 predicts the exact noise; ancestral sampling must then land on x0 exactly (the last
    /// step has coef_x0 = 1, coef_xt = 0 and no noise).
    #[test]
    fn oracle_denoiser_recovers_x0() {
        struct Oracle {
            x0: Tensor,
            schedule: NoiseSchedule,
        }
        impl Denoiser for Oracle {
            fn predict(&self, x: &Tensor, t: &Tensor, _class: Option<&Tensor>) -> Tensor {
                let t = (f64::try_from(t.get(0)).expect("t") * 300.0).round() as usize;
                let ab = self.schedule.alpha_bar[t];
                (x - &self.x0 * ab.sqrt()) / (1.0 - ab).sqrt()
            }
        }
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let x0 = Tensor::rand([3, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let oracle = Oracle {
            x0: x0.shallow_clone(),
            schedule: schedule.clone(),
        };
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
