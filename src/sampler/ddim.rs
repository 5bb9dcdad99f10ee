//! Deterministic DDIM sampling (eta = 0) over any number of steps, so users can trade steps for time.
//!
//! The visited timesteps are `steps` indices evenly spaced over 0..T-1 (rounded), visited noisiest first; the
//! step from t to the next visited t' is x_{t'} = sqrt(alpha_bar[t']) x0_hat + sqrt(1 - alpha_bar[t']) eps, and the
//! final step goes to alpha_bar = 1 (x = x0_hat). With steps = T it visits every timestep.

use tch::Tensor;

use super::{time_vector, Denoiser, FrameEvery, FrameRecorder, NoiseSource, SampleOutput};
use crate::schedule::NoiseSchedule;

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
            let eps = denoiser.predict(&x, &time_vector(n, schedule.normalized_time(t), device), class);
            let alpha_bar = schedule.alpha_bar[t];
            let alpha_bar_next = visit.get(i + 1).map_or(1.0, |&next| schedule.alpha_bar[next]);
            // 1. x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
            let x0_hat = (&x - &eps * (1.0 - alpha_bar).sqrt()) / alpha_bar.sqrt();
            // 2. x_{t'} = sqrt(alpha_bar_t') x0_hat + sqrt(1 - alpha_bar_t') eps
            x = x0_hat * alpha_bar_next.sqrt() + eps * (1.0 - alpha_bar_next).sqrt();
            recorder.offer(&x, i + 1);
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
}
