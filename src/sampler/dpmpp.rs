//! DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver of the probability-flow ODE for
//! noise-prediction models, which needs far fewer steps than DDIM for the same error.
//!
//! It steps in lambda = log(alpha / sigma) on the data prediction x0_hat = (x - sigma eps) / alpha, and reuses the
//! previous step's x0_hat to correct the slope, so each step costs one network evaluation. The first step has no
//! previous x0_hat and the final step to clean data (sigma = 0, lambda = infinity) has no finite step ratio, so both
//! are first order ("lower order final" in diffusers); the final step lands on x0_hat, as DDIM's does.
//!
//! The SDE variant (SDE-DPM-Solver++(2M), same paper, section 5) solves the reverse diffusion SDE instead: the same
//! data-prediction slope, with part of x replaced by fresh noise at every step, which like ancestral DDPM corrects
//! earlier errors rather than carrying them to the end.

use tch::Tensor;

use super::levels::Level;
use super::{Denoiser, FrameEvery, FrameRecorder, NoiseSource, SampleOutput};
use crate::diffusion::schedule::NoiseSchedule;

/// Integrates x from `levels[0]` through every level to the last (noisiest first). `eps(x, i)` predicts the noise
/// in x at `levels[i]`; it is called once per step (`levels.len() - 1` times). `on_step(x, k)` sees x after k steps.
/// With `noise` (standard normal noise shaped like x, drawn once per step that does not end at sigma = 0) it solves
/// the SDE, without it the ODE.
pub fn solve(
    mut x: Tensor,
    levels: &[Level],
    mut eps: impl FnMut(&Tensor, usize) -> Tensor,
    mut noise: Option<&mut dyn FnMut() -> Tensor>,
    mut on_step: impl FnMut(&Tensor, usize),
) -> Tensor {
    // (x0_hat, lambda) at the previous level.
    let mut previous: Option<(Tensor, f64)> = None;
    for (i, pair) in levels.windows(2).enumerate() {
        let (from, to) = (pair[0], pair[1]);
        let lambda = from.lambda();
        // 1. x0_hat = (x - sigma eps) / alpha
        let x0_hat = (&x - eps(&x, i) * from.sigma) / from.alpha;
        // 2. D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_prev with r = h_prev / h, h = lambda' - lambda (second
        //    order); D = x0_hat on the first step and the step to sigma = 0 (first order).
        let d = match &previous {
            Some((x0_prev, lambda_prev)) if to.sigma > 0.0 => {
                let r = (lambda - lambda_prev) / (to.lambda() - lambda);
                &x0_hat * (1.0 + 0.5 / r) - x0_prev * (0.5 / r)
            }
            _ => x0_hat.shallow_clone(),
        };
        // 3. e^{-h} = (sigma' / alpha') / (sigma / alpha), which is 0 at sigma' = 0
        let exp_neg_h = (to.sigma / to.alpha) / (from.sigma / from.alpha);
        x = match noise.as_mut() {
            // 4. ODE: x' = (sigma' / sigma) x - alpha' (e^{-h} - 1) D
            None => &x * (to.sigma / from.sigma) - d * (to.alpha * (exp_neg_h - 1.0)),
            // 4. SDE: x' = (sigma' / sigma) e^{-h} x + alpha' (1 - e^{-2h}) D + sigma' sqrt(1 - e^{-2h}) z
            Some(draw) => {
                let kept = 1.0 - exp_neg_h * exp_neg_h;
                let drift = &x * (to.sigma / from.sigma * exp_neg_h) + d * (to.alpha * kept);
                if to.sigma > 0.0 {
                    drift + draw() * (to.sigma * kept.sqrt())
                } else {
                    drift
                }
            }
        };
        previous = Some((x0_hat, lambda));
        on_step(&x, i + 1);
    }
    x
}

/// Draws `n` samples visiting `timesteps` (noisiest first, e.g. from [`super::levels::Spacing::timesteps`]), then
/// steps to clean data: one network evaluation per timestep. With `sde` false only x_T is random; with `sde` true
/// each step but the last draws fresh noise from `noise` after it.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    denoiser: &dyn Denoiser,
    schedule: &NoiseSchedule,
    timesteps: &[usize],
    sde: bool,
    n: i64,
    class: Option<&Tensor>,
    noise: &mut dyn NoiseSource,
    frames: FrameEvery,
) -> SampleOutput {
    let device = denoiser.device();
    let levels: Vec<Level> = timesteps
        .iter()
        .map(|&t| Level::at(schedule, t))
        .chain(std::iter::once(Level::DATA))
        .collect();
    let mut recorder = FrameRecorder::new(frames);
    tch::no_grad(|| {
        let x = noise.images(n, device); // x_T ~ N(0, I), [n, 1, 28, 28]
        let mut draw = || noise.images(n, device);
        let x = solve(
            x,
            &levels,
            |x, i| denoiser.predict(x, schedule.normalized_time(timesteps[i]), class),
            sde.then_some(&mut draw as &mut dyn FnMut() -> Tensor),
            |x, done| recorder.offer(x, done),
        );
        recorder.finish(&x)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::schedule::ScheduleConfig;
    use crate::runtime::rng::RunRng;
    use crate::sampler::dummies::{Oracle, Zero};
    use crate::sampler::levels::Spacing;
    use crate::sampler::toy;
    use tch::{Device, Kind};

    /// Max error after `steps` steps (even) between u = 0.7 and u = 0.1 of the toy's continuous schedule
    /// (alpha^2 from 0.0071 to 0.90). The steps alternate between widths 1 and 2 (in u), so the step ratio r is far
    /// from 1 at every step: a solver that ignored it would lose its second order.
    fn toy_error(steps: usize) -> f64 {
        let z = toy::z();
        let widths: Vec<f64> = (0..steps).map(|i| if i % 2 == 0 { 1.0 } else { 2.0 }).collect();
        let unit = 0.6 / widths.iter().sum::<f64>();
        let mut u = 0.7;
        let mut levels = vec![toy::vp_level(u)];
        for w in &widths {
            u -= w * unit;
            levels.push(toy::vp_level(u));
        }
        let x = solve(
            toy::vp_state(&z, levels[0]),
            &levels,
            |x, i| toy::vp_eps(x, levels[i]),
            None,
            |_, _| {},
        );
        toy::max_error(&x, &toy::vp_state(&z, levels[steps]))
    }

    /// On the Gaussian toy, between two finite noise levels: second order, so doubling the steps cuts the error about
    /// 4x. A first-order slip (a wrong 1/(2r) weight, r taken as 1, a stale lambda) shows up as a ratio near 2.
    #[test]
    fn second_order_on_the_gaussian_toy() {
        let counts = [10, 20, 40];
        let errors: Vec<f64> = counts.iter().map(|&s| toy_error(s)).collect();
        toy::assert_ratios("DPM-Solver++(2M)", &counts, &errors, 3.0..=5.5);
        assert!(errors[2] < 1e-3, "{errors:?}");
    }

    #[test]
    fn first_step_is_ddim() {
        let z = toy::z();
        let levels = [toy::vp_level(0.6), toy::vp_level(0.4)];
        let x = toy::vp_state(&z, levels[0]);
        let eps = toy::vp_eps(&x, levels[0]);
        let ddim = crate::sampler::ddim::step(&x, &eps, levels[0], levels[1]);
        let ours = solve(x, &levels, |_, _| eps.shallow_clone(), None, |_, _| {});
        assert!(toy::max_error(&ours, &ddim) < 1e-12);
    }

    /// With the exact noise of point-mass data at x0, every step stays on the trajectory and the final step returns
    /// x0, for both spacings and any step count (through the real sampler, including the step to sigma = 0).
    #[test]
    fn oracle_noise_lands_on_x0() {
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let x0 = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        let oracle = Oracle::noise(&x0, &schedule);
        // With the SDE the noise terms cancel against the drift, so it lands on x0 too.
        for (spacing, sde) in [
            (Spacing::Trailing, false),
            (Spacing::Leading, false),
            (Spacing::Trailing, true),
        ] {
            for steps in [1, 2, 7, 25] {
                let visit = spacing.timesteps(300, steps);
                let out = sample(
                    &oracle,
                    &schedule,
                    &visit,
                    sde,
                    2,
                    None,
                    &mut RunRng::new(6),
                    FrameEvery(None),
                );
                let err = f64::try_from((&out.images - &x0).abs().max()).expect("max");
                assert!(err < 1e-4, "{spacing:?} sde {sde}, {steps} steps: {err}");
            }
        }
    }

    /// With zero predicted noise x0_hat = x / alpha, and each step maps x to alpha' x0_hat (the terms telescope), so
    /// the result is x_T / sqrt(alpha_bar[first visited]) whatever the order of the steps.
    /// Python: `1 / np.sqrt(np.prod(1 - np.linspace(1e-4, 0.02, 300)))` = 4.56157915426768
    #[test]
    fn zero_denoiser_telescopes_and_records_frames() {
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let visit = Spacing::Trailing.timesteps(300, 10);
        let out = sample(
            &Zero,
            &schedule,
            &visit,
            false,
            1,
            None,
            &mut RunRng::new(3),
            FrameEvery(Some(5)),
        );
        let x_t: Vec<f32> = RunRng::new(3).normals(784);
        let got: Vec<f32> = Vec::try_from(out.images.flatten(0, -1).to_kind(Kind::Float)).expect("vec");
        for (g, x) in got.iter().zip(&x_t) {
            let expected = (*x as f64 * 4.56157915426768).clamp(0.0, 1.0);
            assert!((*g as f64 - expected).abs() < 2e-3, "{g} vs {expected}");
        }
        assert_eq!(out.frames.len(), 4); // after steps 1, 5, 10, and the final images
    }

    /// The SDE from pure noise to data with the exact noise of the Gaussian toy N(M, S^2): the end points must be
    /// distributed as the data, up to a discretization error that shrinks with the step count (ancestral steps
    /// leave out the variance of x0 given x_t, an O(h) error). 200,000 draws: the statistical error of the mean is
    /// about 0.0005, of the sd about 0.0003.
    #[test]
    fn sde_lands_on_the_data_distribution() {
        let draws = 200_000;
        let moments = |steps: usize, seed: u64| {
            let levels: Vec<Level> = (0..=steps)
                .map(|k| toy::vp_level(1.0 - k as f64 / steps as f64))
                .collect();
            let mut rng = RunRng::new(seed);
            let z = Tensor::from_slice(&rng.normals(draws)).to_kind(Kind::Double);
            let mut draw = || Tensor::from_slice(&rng.normals(draws)).to_kind(Kind::Double);
            let x = solve(
                toy::vp_state(&z, levels[0]),
                &levels,
                |x, i| toy::vp_eps(x, levels[i]),
                Some(&mut draw),
                |_, _| {},
            );
            (x.mean(Kind::Double).double_value(&[]), x.std(true).double_value(&[]))
        };
        let (mean_25, sd_25) = moments(25, 1);
        let (mean_100, sd_100) = moments(100, 2);
        eprintln!("SDE-DPM-Solver++(2M) on N({}, {}^2): 25 steps {mean_25:.4} +- {sd_25:.4}, 100 steps {mean_100:.4} +- {sd_100:.4}", toy::M, toy::S);
        assert!((mean_100 - toy::M).abs() < 0.003, "{mean_100}");
        assert!((sd_100 - toy::S).abs() < 0.005, "{sd_100}");
        assert!((sd_100 - toy::S).abs() <= (sd_25 - toy::S).abs() + 0.001);
    }

    /// SDE: fresh noise at every step, so another seed gives other samples (the ODE differs only through x_T).
    #[test]
    fn sde_draws_fresh_noise_at_every_step() {
        let schedule = NoiseSchedule::new(&ScheduleConfig::default());
        let zero = |seed| {
            sample(
                &Zero,
                &schedule,
                &visit10(),
                true,
                1,
                None,
                &mut RunRng::new(seed),
                FrameEvery(None),
            )
        };
        assert!(zero(1).images.equal(&zero(1).images));
        assert!(!zero(1).images.equal(&zero(2).images));
    }

    fn visit10() -> Vec<usize> {
        Spacing::Trailing.timesteps(300, 10)
    }
}
