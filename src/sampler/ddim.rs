//! Deterministic DDIM sampling (eta = 0) over any number of steps, so users can trade steps for time.
//!
//! The visited timesteps are `steps` indices evenly spaced over 0..T-1 (rounded), visited noisiest first; the
//! step from t to the next visited t' is x_{t'} = sqrt(alpha_bar[t']) x0_hat + sqrt(1 - alpha_bar[t']) eps, and the
//! final step goes to alpha_bar = 1 (x = x0_hat). With steps = T it visits every timestep. DDIM is the first-order
//! solver of the probability-flow ODE (DPM-Solver-1), so its error halves when the steps double.

use tch::Tensor;

use super::levels::Level;
use super::{Denoiser, FrameEvery, FrameRecorder, NoiseSource, SampleOutput};
use crate::diffusion::schedule::NoiseSchedule;

/// The timesteps DDIM visits, noisiest first: round(i (T-1) / (steps-1)) for i = steps-1 .. 0, deduplicated.
pub fn timesteps(total: usize, steps: usize) -> Vec<usize> {
    let steps = steps.clamp(1, total);
    let mut ts: Vec<usize> = if steps == 1 {
        vec![total - 1]
    } else {
        (0..steps)
            .map(|i| (i as f64 * (total - 1) as f64 / (steps - 1) as f64).round() as usize)
            .collect()
    };
    ts.dedup();
    ts.reverse();
    ts
}

/// One DDIM step of x (at level `from`, with predicted noise `eps`) to level `to`.
pub fn step(x: &Tensor, eps: &Tensor, from: Level, to: Level) -> Tensor {
    // 1. x0_hat = (x - sigma eps) / alpha
    let x0_hat = (x - eps * from.sigma) / from.alpha;
    // 2. x' = alpha' x0_hat + sigma' eps
    x0_hat * to.alpha + eps * to.sigma
}

/// Draws `n` samples in `steps` steps. Only x_T is random, so the result is a deterministic function of the seed.
pub fn sample(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    steps: usize,
    n: i64,
    class: Option<&Tensor>,
    noise: &mut dyn NoiseSource,
    frames: FrameEvery,
) -> SampleOutput {
    let device = denoiser.device();
    let visit = timesteps(schedule.timesteps(), steps);
    let mut recorder = FrameRecorder::new(frames);
    tch::no_grad(|| {
        let mut x = noise.images(n, device); // [n, 1, 28, 28]
        for (i, &t) in visit.iter().enumerate() {
            let eps = denoiser.predict(&x, schedule.normalized_time(t), class);
            // The level after the last visited timestep is clean data (alpha_bar = 1).
            let next = visit.get(i + 1).map_or(Level::DATA, |&next| Level::at(schedule, next));
            x = step(&x, &eps, Level::at(schedule, t), next);
            recorder.offer(&x, i + 1);
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
    use crate::sampler::toy;
    use tch::Kind;

    #[test]
    fn visited_timesteps() {
        assert_eq!(timesteps(300, 300), (0..300).rev().collect::<Vec<_>>());
        let ten = timesteps(300, 10);
        assert_eq!(ten.len(), 10);
        assert_eq!((ten[0], ten[9]), (299, 0));
        // numpy: np.linspace(0, 299, 10).round() -> 0, 33, 66, 100, 133, 166, 199, 233, 266, 299
        assert_eq!(ten, vec![299, 266, 233, 199, 166, 133, 100, 66, 33, 0]);
        assert_eq!(timesteps(300, 1), vec![299]);
        assert_eq!(timesteps(300, 1000).len(), 300);
    }

    /// With zero predicted noise, each step scales x by sqrt(alpha_bar[t'] / alpha_bar[t]); the product telescopes
    /// to x0 = x_T / sqrt(alpha_bar[T-1]) whatever the step count.
    /// Python: `1 / np.sqrt(np.prod(1 - np.linspace(1e-4, 0.02, 300)))` = 4.56157915426768
    #[test]
    fn zero_denoiser_telescopes_to_the_closed_form() {
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let scale = 4.56157915426768;
        for steps in [300, 50, 7] {
            let mut rng = RunRng::new(3);
            let x_t: Vec<f32> = RunRng::new(3).normals(784);
            let out = sample(&Zero, &schedule, steps, 1, None, &mut rng, FrameEvery(None));
            let got: Vec<f32> = Vec::try_from(out.images.flatten(0, -1).to_kind(Kind::Float)).expect("vec");
            for (g, x) in got.iter().zip(&x_t) {
                let expected = (*x as f64 * scale).clamp(0.0, 1.0);
                assert!((*g as f64 - expected).abs() < 2e-3, "steps {steps}: {g} vs {expected}");
            }
        }
    }

    /// With a noise prediction that is exact for point-mass data at x0 (eps = (x - alpha x0) / sigma), x0_hat = x0 at
    /// every step, so DDIM lands on x0 whatever the step count; a wrong coefficient on eps would miss it.
    #[test]
    fn oracle_noise_lands_on_x0() {
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let x0 = Tensor::rand([3, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let oracle = Oracle::noise(&x0, &schedule);
        for steps in [1, 4, 50, 300] {
            let out = sample(
                &oracle,
                &schedule,
                steps,
                3,
                None,
                &mut RunRng::new(4),
                FrameEvery(None),
            );
            let err = f64::try_from((&out.images - &x0).abs().max()).expect("max");
            assert!(err < 1e-4, "{steps} steps: {err}");
        }
    }

    /// On the Gaussian toy (exact noise prediction, exact solution in closed form), between two finite noise levels:
    /// DDIM is first order, so doubling the steps halves the error.
    #[test]
    fn first_order_on_the_gaussian_toy() {
        let z = toy::z();
        let (u_start, u_end) = (0.7, 0.1);
        let counts = [10, 20, 40];
        let errors: Vec<f64> = counts
            .iter()
            .map(|&steps| {
                let levels: Vec<Level> = (0..=steps)
                    .map(|i| toy::vp_level(u_start + (u_end - u_start) * i as f64 / steps as f64))
                    .collect();
                let mut x = toy::vp_state(&z, levels[0]);
                for pair in levels.windows(2) {
                    x = step(&x, &toy::vp_eps(&x, pair[0]), pair[0], pair[1]);
                }
                toy::max_error(&x, &toy::vp_state(&z, levels[steps]))
            })
            .collect();
        toy::assert_ratios("DDIM", &counts, &errors, 1.6..=2.6);
        assert!(errors[2] < 2e-2, "{errors:?}");
    }
}
